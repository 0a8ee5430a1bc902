"""Word vectors trained on the user's own corpus (word2vec or fastText, with gensim), pooled into one vector per text.

A :class:`WordVectors` backbone is trained by :meth:`WordVectors.fit` on unlabelled texts: tokenise (lower-cased
words, English stop words removed by default, as in the word2vec text-classification recipe), train skip-gram with
negative sampling (Mikolov et al. 2013) or its subword variant (fastText, Bojanowski et al. 2017), and keep the word
vectors, the word counts and (fastText) the character n-gram vectors. A text's features pool its word vectors:

- ``mean``: the average of the known words' vectors;
- ``mean+max``: the average and the element-wise maximum, concatenated (``2 x dim`` features);
- ``sif``: smooth inverse frequency (Arora, Liang & Ma, "A Simple but Tough-to-Beat Baseline for Sentence
  Embeddings", ICLR 2017): weights ``a / (a + p(w))`` from the corpus word frequencies, then the corpus' first
  principal component removed.

A word the corpus never saw is skipped by word2vec, and built from its character n-grams by fastText; a text with
no known word gets zeros. Saved like every backbone (:meth:`~transferkit.backbones.base.Backbone.save`): the
vectors, n-gram table and principal component in ``weights.safetensors``, words and counts in ``vocab.json``; no
pickle. Loaded back with ``word2vec:<dir>``, ``fasttext:<dir>`` or ``file:<dir>``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._io import atomic_write_bytes
from ..data.views import TextPreprocessing
from ..errors import BackboneUnavailableError, DataError, TransferkitError
from .base import BACKBONE_KINDS, Backbone

__all__ = ["WordVectors", "ALGOS", "POOLINGS", "STOPWORDS", "word_tokens", "ngram_buckets", "load_word_vectors",
           "WordVectorSettings"]

ALGOS = ("word2vec", "fasttext")
POOLINGS = ("mean", "mean+max", "sif")
#: stop-word lists by name: ``english`` is scikit-learn's list; ``english-keep-negations`` keeps the words that flip
#: or grade an opinion (not, no, never, very, too, ...), which the plain list removes
STOPWORDS = ("english", "english-keep-negations", "none")
_NEGATIONS = frozenset({"not", "no", "nor", "never", "nothing", "none", "nobody", "nowhere", "cannot", "without",
                        "against", "but", "too", "very", "enough", "more", "most", "less", "least", "few", "only",
                        "much", "well"})
_WORD = re.compile(r"[\w']+", re.UNICODE)


def _stop_set(stopwords: str) -> frozenset[str]:
    if stopwords == "none":
        return frozenset()
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    if stopwords == "english":
        return frozenset(ENGLISH_STOP_WORDS)
    if stopwords == "english-keep-negations":
        return frozenset(ENGLISH_STOP_WORDS) - _NEGATIONS
    raise TransferkitError(f"stopwords must be one of {', '.join(STOPWORDS)}; got {stopwords!r}")


def word_tokens(text: str, stop: frozenset[str] = frozenset()) -> list[str]:
    """Lower-cased words of a text (letters, digits, apostrophes), stop words left out."""
    return [t for t in _WORD.findall(str(text).lower()) if t not in stop]


def _ft_hash(b: bytes) -> int:
    """fastText's FNV-1a hash of a byte string (as gensim computes it: each byte taken as a signed char)."""
    h = 2166136261
    for c in b:
        h = ((h ^ (c - 256 if c > 127 else c)) & 0xFFFFFFFF) * 16777619 & 0xFFFFFFFF
    return h


def ngram_buckets(word: str, min_n: int, max_n: int, bucket: int) -> list[int]:
    """The n-gram rows fastText gives a word: the hashes of the byte n-grams (``min_n`` to ``max_n`` characters) of
    ``<word>``, modulo ``bucket``.

    References:
        Bojanowski, Grave, Joulin & Mikolov, "Enriching Word Vectors with Subword Information", TACL 2017.
    """
    w = f"<{word}>"
    out = []
    for i in range(len(w)):  # gensim's order: by start position, then by length
        for n in range(min_n, max_n + 1):
            if i + n > len(w):
                break
            out.append(_ft_hash(w[i:i + n].encode("utf-8")) % bucket)
    return out


class WordVectorSettings(dict):
    """The training settings of word vectors (a dict, stored in the saved backbone and in cache keys)."""

    DEFAULTS = {"algo": "word2vec", "dim": 100, "window": 10, "min_count": 2, "negative": 5, "epochs": 15,
                "sample": 1e-4, "sg": 1, "seed": 0, "workers": 1, "stopwords": "english-keep-negations", "bucket": 50_000,
                "min_n": 3, "max_n": 5, "init": None, "sif_a": 1e-3}

    @classmethod
    def make(cls, **given: Any) -> "WordVectorSettings":
        """Defaults overlaid with ``given``; every value checked.

        Raises:
            TransferkitError: an unknown setting or a value out of range (all problems in one message).
        """
        unknown = sorted(set(given) - set(cls.DEFAULTS))
        if unknown:
            raise TransferkitError(f"unknown word-vector setting(s) {unknown}; valid: {', '.join(cls.DEFAULTS)}")
        s = cls({**cls.DEFAULTS, **{k: v for k, v in given.items() if v is not None or k == "init"}})
        bad = []

        def need(ok: bool, msg: str) -> None:
            if not ok:
                bad.append(msg)

        def pos_int(k: str, low: int = 1) -> None:
            need(isinstance(s[k], int) and not isinstance(s[k], bool) and s[k] >= low,
                 f"{k} must be an integer >= {low} (got {s[k]!r})")

        need(s["algo"] in ALGOS, f"algo must be one of {', '.join(ALGOS)} (got {s['algo']!r})")
        for k in ("dim", "window", "min_count", "negative", "epochs", "workers"):
            pos_int(k)
        pos_int("seed", 0)
        need(isinstance(s["sample"], (int, float)) and 0 <= s["sample"] < 1, f"sample must be in [0, 1) (got "
                                                                             f"{s['sample']!r})")
        need(s["sg"] in (0, 1), f"sg must be 1 (skip-gram) or 0 (CBOW) (got {s['sg']!r})")
        need(s["stopwords"] in STOPWORDS, f"stopwords must be one of {', '.join(STOPWORDS)} (got {s['stopwords']!r})")
        if s["algo"] == "fasttext":
            pos_int("bucket")
            pos_int("min_n")
            need(isinstance(s["max_n"], int) and s["max_n"] >= s["min_n"], f"max_n must be >= min_n (got "
                                                                           f"{s['max_n']!r})")
        need(isinstance(s["sif_a"], (int, float)) and s["sif_a"] > 0, f"sif_a must be > 0 (got {s['sif_a']!r})")
        if bad:
            raise TransferkitError("invalid word-vector settings: " + "; ".join(bad))
        return s


@BACKBONE_KINDS.register("trained-word-vectors")
class WordVectors(Backbone):
    """Word vectors trained on the user's corpus (word2vec or fastText), pooled per text by ``mean``, ``mean+max``
    or ``sif``.

    Build one untrained with :meth:`untrained` and train it with :meth:`fit`, or load a saved one with
    :func:`load_word_vectors` (``word2vec:<dir>``). The pooling is part of the preprocessing: change it with
    ``backbone.with_preprocessing(pooling="sif")`` (features are cached per pooling).

    Args:
        vectors: ``(V, D)`` word vectors (for fastText, the full vectors of the vocabulary words).
        words: the ``V`` words, in row order.
        counts: how often each word occurs in the corpus (for SIF's word frequencies).
        name: the backbone's name.
        source: what it was trained on.
        settings: the training settings (:class:`WordVectorSettings`).
        pooling: ``mean``, ``mean+max`` or ``sif``.
        ngrams: ``(bucket, D)`` fastText character n-gram vectors (None for word2vec).
        common: ``(D,)`` the first principal component of the corpus' SIF-weighted text vectors (zeros: none).

    References:
        Mikolov et al., "Distributed Representations of Words and Phrases and their Compositionality", NeurIPS
        2013; Bojanowski et al., "Enriching Word Vectors with Subword Information", TACL 2017; Arora, Liang & Ma,
        "A Simple but Tough-to-Beat Baseline for Sentence Embeddings", ICLR 2017.

    Shape:
        forward: a batch from :meth:`collate` -> ``(N, D)`` (``(N, 2D)`` for ``mean+max``).
    """

    modality = "text"
    kind = "trained-word-vectors"

    def __init__(self, vectors: np.ndarray, words: Sequence[str], counts: Sequence[int], *, name: str, source: str,
                 settings: dict[str, Any] | None = None, pooling: str = "mean", ngrams: np.ndarray | None = None,
                 common: np.ndarray | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise TransferkitError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.settings = WordVectorSettings.make(**(settings or {}))
        self.name, self.source = name, source
        self.words = [str(w) for w in words]
        self.counts = [int(c) for c in counts]
        if len(self.counts) != len(self.words):
            raise TransferkitError(f"{len(self.words)} words but {len(self.counts)} counts")
        self.vocab = {w: i for i, w in enumerate(self.words)}
        self.stop = _stop_set(self.settings["stopwords"])
        dim = int(self.settings["dim"]) if vectors is None else int(np.asarray(vectors).shape[1])
        self.dim = dim
        self.register_buffer("vectors", torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32)))
        ng = np.zeros((0, dim), np.float32) if ngrams is None else np.ascontiguousarray(ngrams, dtype=np.float32)
        self.register_buffer("ngrams", torch.as_tensor(ng))
        self.register_buffer("common", torch.as_tensor(np.zeros(dim, np.float32) if common is None
                                                       else np.asarray(common, dtype=np.float32)))
        total = max(1, sum(self.counts))
        a = float(self.settings["sif_a"])
        sif = np.asarray([a / (a + c / total) for c in self.counts], dtype=np.float32)
        self.register_buffer("sif_weight", torch.as_tensor(sif))
        self.preprocessing = TextPreprocessing(tokenizer=f"lowercase-words/stopwords={self.settings['stopwords']}",
                                               pooling=pooling, vocab_size=len(self.words))

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def untrained(cls, algo: str = "word2vec", *, pooling: str = "sif", name: str | None = None,
                  **settings: Any) -> "WordVectors":
        """A backbone with no vocabulary yet, to be trained with :meth:`fit` (``settings``: see
        :class:`WordVectorSettings`: ``dim``, ``window``, ``min_count``, ``negative``, ``epochs``, ``sample``,
        ``seed``, ``workers``, ``stopwords``, ``bucket``, ``min_n``, ``max_n``, ``init``, ``sif_a``)."""
        s = WordVectorSettings.make(algo=algo, **settings)
        return cls(np.zeros((0, s["dim"]), np.float32), [], [], name=name or algo, source="untrained", settings=s,
                   pooling=pooling)

    @property
    def num_features(self) -> int:  # type: ignore[override]
        """``dim``, or ``2 x dim`` with ``mean+max`` pooling."""
        return self.dim * (2 if self.preprocessing.pooling == "mean+max" else 1)

    @property
    def pooling(self) -> str:
        """How word vectors become one vector per text."""
        return self.preprocessing.pooling

    @property
    def algo(self) -> str:
        """``word2vec`` or ``fasttext``."""
        return str(self.settings["algo"])

    def is_trained(self) -> bool:
        """Whether the backbone has a vocabulary (it was trained or loaded)."""
        return len(self.words) > 0

    # -- training --------------------------------------------------------------------------------------------
    def fit(self, data: Any, *, progress: bool = False, log: Any = None) -> "WordVectors":  # type: ignore[override]
        """Train the vectors on an unlabelled corpus (replacing any earlier ones), with gensim.

        Args:
            data: a :class:`~transferkit.data.corpus.Corpus`, a list of texts, a text file, a folder or a table
                (read with :func:`~transferkit.data.corpus.read_corpus`).
            progress: unused (gensim reports through logging); kept for the common signature.
            log: called with one line when training ends.

        With ``workers=1`` (the default) the result is a function of the corpus and the settings only (same seed,
        same vectors, bit for bit); more workers train faster on a large corpus but not reproducibly.

        Raises:
            BackboneUnavailableError: gensim is not installed.
            DataError: no word of the corpus reaches ``min_count``.
        """
        from ..data.corpus import read_corpus

        corpus = read_corpus(data)
        try:
            import gensim  # noqa: F401
        except ImportError as e:
            raise BackboneUnavailableError("training word vectors needs gensim (the text-train extra): pip install "
                                           "'gensim>=4.4'") from e
        s = self.settings
        t0 = time.perf_counter()
        sentences = [toks for toks in (word_tokens(t, self.stop) for t in corpus.texts) if toks]
        words, counts, vectors, ngrams = _train_gensim(sentences, s)
        common = _first_component(vectors, counts, sentences, words, ngrams, s)
        self.__init__(vectors, words, counts, name=self.name, source=f"{s['algo']} on {corpus.origin}",
                      settings=s, pooling=self.pooling, ngrams=ngrams, common=common)
        self.train_seconds_ = time.perf_counter() - t0
        self.corpus_texts_ = len(corpus)
        self.corpus_tokens_ = sum(len(t) for t in sentences)
        if log is not None:
            log(f"{s['algo']}: {len(words)} words x {s['dim']} dimensions from {self.corpus_tokens_} tokens of "
                f"{len(corpus)} texts in {self.train_seconds_:.1f}s ({s['workers']} worker(s))")
        return self

    # -- saving ----------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"settings": dict(self.settings), "dim": self.dim}

    def _save_files(self, directory: Path) -> list[str]:
        doc = {"words": self.words, "counts": self.counts}
        atomic_write_bytes(directory / "vocab.json", json.dumps(doc, ensure_ascii=False).encode("utf-8"))
        return ["vocab.json"]

    @classmethod
    def from_saved(cls, directory: Path, meta: dict[str, Any]) -> "WordVectors":
        try:
            doc = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
            words, counts = doc["words"], doc["counts"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackboneUnavailableError(f"saved word vectors {directory}: vocab.json is unreadable ({e}); train "
                                           "them again") from e
        cfg = meta.get("config") or {}
        settings = cfg.get("settings") or {}
        dim = int(cfg.get("dim") or meta.get("num_features") or 1)
        pooling = (meta.get("preprocessing") or {}).get("pooling", "mean")
        bucket = int(settings.get("bucket", 0)) if settings.get("algo") == "fasttext" else 0
        return cls(np.zeros((len(words), dim), np.float32), words, counts, name=str(meta.get("name", "")),
                   source=str(meta.get("source", "")), settings=settings, pooling=pooling,
                   ngrams=np.zeros((bucket, dim), np.float32) if bucket else None)

    # -- features --------------------------------------------------------------------------------------------
    def tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` this backbone looks up (lower-cased words, its stop words left out)."""
        return word_tokens(text, self.stop)

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token rows of a batch of texts: vocabulary ids (``-1``: a fastText word built from its n-grams), the text
        each token belongs to, and the n-gram rows of the unknown words."""
        if not self.words:
            raise TransferkitError(f"backbone {self.name!r} has no vectors yet: train it on a corpus first "
                                   "(backbone.fit(texts), pretrain_text(corpus), or corpus= when fitting)")
        s = self.settings
        fast = len(self.ngrams) > 0
        tok_ids: list[int] = []
        tok_text: list[int] = []
        ng_ids: list[int] = []
        ng_off: list[int] = []
        for k, text in enumerate(items):
            for tok in self.tokens(text):
                j = self.vocab.get(tok)
                if j is None:
                    if not fast:
                        continue
                    rows = ngram_buckets(tok, int(s["min_n"]), int(s["max_n"]), len(self.ngrams))
                    if not rows:
                        continue
                    ng_off.append(len(ng_ids))
                    ng_ids.extend(rows)
                    j = -1
                tok_ids.append(j)
                tok_text.append(k)
        return {"tok_ids": torch.tensor(tok_ids, dtype=torch.long), "tok_text": torch.tensor(tok_text, dtype=torch.long),
                "ng_ids": torch.tensor(ng_ids, dtype=torch.long), "ng_off": torch.tensor(ng_off, dtype=torch.long),
                "n": torch.tensor(len(items), dtype=torch.long)}

    def token_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(T, D)``: the vector of every token of a collated batch."""
        ids = batch["tok_ids"]
        out = torch.zeros(len(ids), self.dim, dtype=self.vectors.dtype, device=self.vectors.device)
        known = ids >= 0
        if bool(known.any()):
            out[known] = self.vectors[ids[known]]
        if bool((~known).any()):
            out[~known] = torch.nn.functional.embedding_bag(batch["ng_ids"], self.ngrams, batch["ng_off"],
                                                            mode="mean")
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = int(batch["n"])
        ids, text = batch["tok_ids"], batch["tok_text"]
        tv = self.token_vectors(batch)
        count = torch.bincount(text, minlength=n).to(tv.dtype).clamp(min=1).unsqueeze(1)
        pooling = self.pooling
        if pooling == "sif":
            w = torch.where(ids >= 0, self.sif_weight[ids.clamp(min=0)], torch.ones_like(tv[:, 0]))
            tv = tv * w.unsqueeze(1)
        sums = torch.zeros(n, self.dim, dtype=tv.dtype, device=tv.device).index_add_(0, text, tv)
        mean = sums / count
        if pooling == "sif":
            u = self.common
            return mean - (mean @ u).unsqueeze(1) * u.unsqueeze(0)
        if pooling == "mean+max":
            mx = torch.zeros(n, self.dim, dtype=tv.dtype, device=tv.device)
            mx = mx.scatter_reduce(0, text.unsqueeze(1).expand_as(tv), tv, reduce="amax", include_self=False)
            return torch.cat([mean, mx], 1)
        return mean

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, algo={self.algo}, words={len(self.words)}, dim={self.dim}, "
                f"pooling={self.pooling}")


def _train_gensim(sentences: list[list[str]], s: dict[str, Any]):
    """gensim Word2Vec / FastText on tokenised sentences: words (by frequency), counts, vectors, n-gram vectors."""
    import logging

    from gensim.models import FastText, Word2Vec

    logging.getLogger("gensim").setLevel(logging.WARNING)
    if not sentences:
        raise DataError("the corpus has no words left after tokenising and removing stop words; give more text, or "
                        "keep the stop words (stopwords='none')")
    common = dict(vector_size=int(s["dim"]), window=int(s["window"]), min_count=int(s["min_count"]),
                  negative=int(s["negative"]), sample=float(s["sample"]), sg=int(s["sg"]), seed=int(s["seed"]),
                  workers=int(s["workers"]), epochs=int(s["epochs"]))
    if s["algo"] == "fasttext":
        model = FastText(min_n=int(s["min_n"]), max_n=int(s["max_n"]), bucket=int(s["bucket"]), **common)
    else:
        model = Word2Vec(**common)
    model.build_vocab(sentences)
    words = list(model.wv.index_to_key)
    if not words:
        raise DataError(f"no word occurs at least min_count={s['min_count']} times in the corpus "
                        f"({sum(map(len, sentences))} tokens); give more text or lower min_count")
    if s.get("init"):
        _init_from(model, s["init"])
    model.train(sentences, total_examples=model.corpus_count, epochs=model.epochs)
    counts = [int(model.wv.get_vecattr(w, "count")) for w in words]
    vectors = np.asarray(model.wv.vectors, dtype=np.float32).copy()
    ngrams = np.asarray(model.wv.vectors_ngrams, dtype=np.float32).copy() if s["algo"] == "fasttext" else None
    return words, counts, vectors, ngrams


def _init_from(model: Any, init: str) -> None:
    """Start the vectors of the words a pretrained backbone knows from its vectors (continued training on the
    domain corpus); the backbone must have the same dimension."""
    from . import create_backbone

    bb = create_backbone(init)
    table = getattr(bb, "embedding", None)
    matrix = table.weight.detach().cpu().numpy() if table is not None else getattr(bb, "vectors", None)
    vocab = getattr(bb, "vocab", None)
    if matrix is None or vocab is None:
        raise TransferkitError(f"init={init!r} is not a word-vector backbone; use glove-50d or saved word vectors")
    matrix = np.asarray(matrix)
    if matrix.shape[1] != model.wv.vector_size:
        raise TransferkitError(f"init={init!r} has {matrix.shape[1]}-d vectors but dim={model.wv.vector_size}; set "
                               f"dim={matrix.shape[1]} to start from it")
    target = model.wv.vectors_vocab if hasattr(model.wv, "vectors_vocab") else model.wv.vectors  # fastText: word part
    for w, i in model.wv.key_to_index.items():
        j = vocab.get(w)
        if j is not None:
            target[i] = matrix[j]


def _first_component(vectors: np.ndarray, counts: list[int], sentences: list[list[str]], words: list[str],
                     ngrams: np.ndarray | None, s: dict[str, Any]) -> np.ndarray:
    """The first principal direction (no centring, as in Arora et al.) of the corpus' SIF-weighted text vectors."""
    idx = {w: i for i, w in enumerate(words)}
    total = max(1, sum(counts))
    a = float(s["sif_a"])
    weight = np.asarray([a / (a + c / total) for c in counts], dtype=np.float64)
    rows = []
    for toks in sentences:
        ids = [idx[t] for t in toks if t in idx]
        if ids:
            rows.append((weight[ids, None] * vectors[ids]).sum(0) / len(ids))
    if not rows:
        return np.zeros(vectors.shape[1], np.float32)
    M = np.asarray(rows, dtype=np.float64)
    _, _, vt = np.linalg.svd(M, full_matrices=False)
    u = vt[0]
    return (u * (1 if u[np.argmax(np.abs(u))] >= 0 else -1)).astype(np.float32)  # a fixed sign


def load_word_vectors(directory: str, expect: str | None = None) -> WordVectors:
    """Saved word vectors (``word2vec:<dir>``, ``fasttext:<dir>``).

    Raises:
        BackboneUnavailableError: no saved backbone there, a damaged file, or vectors of another algorithm than
            ``expect``.
    """
    from .base import load_backbone

    d = Path(directory).expanduser()
    if not d.is_dir():
        raise BackboneUnavailableError(f"no folder {directory!r}: train word vectors into it first (pretrain_text, "
                                       f"algo={expect or 'word2vec'}, out={directory!r})")
    bb = load_backbone(d)
    if not isinstance(bb, WordVectors):
        raise BackboneUnavailableError(f"{directory} holds a {type(bb).__name__} backbone, not trained word vectors; "
                                       f"load it with file:{directory}")
    if expect is not None and bb.algo != expect:
        raise BackboneUnavailableError(f"{directory} holds {bb.algo} vectors, not {expect}; load them with "
                                       f"{bb.algo}:{directory}")
    return bb  # its saved name (e.g. word2vec-<key>): the same vectors keep one feature-cache key wherever they are


def _untrained(algo: str):
    def make() -> WordVectors:
        return WordVectors.untrained(algo)

    return make


def _register() -> None:
    from . import register_backbone

    for algo, what in (("word2vec", "skip-gram with negative sampling"),
                       ("fasttext", "skip-gram over words and character n-grams")):
        register_backbone(f"{algo}:", (lambda d, algo=algo: load_word_vectors(d, algo)), modality="text",
                          description=f"{algo} vectors trained on your corpus and saved in a folder "
                                      f"({algo}:<dir>), pooled per text", requires=("numpy",), reads_files=True)
        register_backbone(algo, _untrained(algo), modality="text", num_features=WordVectorSettings.DEFAULTS["dim"],
                          description=f"{algo} ({what}) trained on the fly on your corpus (corpus=) and the data's "
                                      "own texts, 100-d, SIF pooling", requires=("gensim",), pretrained=False,
                          reads_files=True, corpus_method=algo)


_register()
