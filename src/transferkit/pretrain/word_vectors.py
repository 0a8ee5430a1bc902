"""word2vec and fastText on the user's corpus (gensim), as :data:`~transferkit.pretrain.PRETRAINERS` methods.

The training itself is :meth:`transferkit.backbones.wordvec.WordVectors.fit`; these entries give it a name, settings
checked before any work, and the cache of :func:`~transferkit.pretrain.pretrain_text`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..backbones.base import Backbone
from ..backbones.wordvec import POOLINGS, WordVectors, WordVectorSettings
from ..data.corpus import Corpus
from ..errors import TransferkitError
from . import PRETRAINERS, Pretrainer

__all__ = ["Word2VecPretrainer", "FastTextPretrainer"]


class _WordVectorPretrainer(Pretrainer):
    algo = "word2vec"

    def __init__(self, dim: int = 100, window: int = 10, min_count: int = 2, negative: int = 5, epochs: int = 15,
                 sample: float = 1e-4, sg: int = 1, seed: int = 0, workers: int = 1,
                 stopwords: str = "english-keep-negations", pooling: str = "sif", init: str | None = None,
                 sif_a: float = 1e-3, bucket: int = 50_000, min_n: int = 3, max_n: int = 5):
        if pooling not in POOLINGS:
            raise TransferkitError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        given = dict(dim=dim, window=window, min_count=min_count, negative=negative, epochs=epochs, sample=sample,
                     sg=sg, seed=seed, workers=workers, stopwords=stopwords, init=init, sif_a=sif_a)
        if self.algo == "fasttext":
            given.update(bucket=bucket, min_n=min_n, max_n=max_n)
        self.settings = {**WordVectorSettings.make(algo=self.algo, **given), "pooling": pooling}
        if self.algo != "fasttext":
            for k in ("bucket", "min_n", "max_n"):
                self.settings.pop(k, None)
        self.settings.pop("algo", None)

    def train(self, corpus: Corpus, base: Backbone | None, *, progress: bool = False,
              log: Callable[[str], None] | None = None) -> Backbone:
        s = {k: v for k, v in self.settings.items() if k != "pooling"}
        bb = WordVectors.untrained(self.algo, pooling=self.settings["pooling"], **s)
        return bb.fit(corpus, log=log)


@PRETRAINERS.register("word2vec", needs_base=False, library="gensim",
                      paper="Mikolov et al., Distributed Representations of Words and Phrases, NeurIPS 2013")
class Word2VecPretrainer(_WordVectorPretrainer):
    """word2vec skip-gram with negative sampling on the corpus (stop words out, negations kept), pooled per text
    (``sif`` by default; ``mean`` as in the classic recipe, or ``mean+max``).

    Args:
        dim: vector size; window: context words on each side; min_count: rarer words are dropped; negative: negative
            samples; epochs: passes over the corpus; sample: down-sampling of frequent words; sg: 1 skip-gram, 0 CBOW.
        seed: the seed; workers: gensim threads (1: bit-for-bit reproducible; more: faster, not reproducible).
        stopwords: ``english-keep-negations`` (default), ``english`` or ``none``.
        pooling: ``sif``, ``mean`` or ``mean+max``; sif_a: SIF's smoothing weight.
        init: start from a pretrained word-vector backbone of the same ``dim`` (e.g. ``glove-50d`` with ``dim=50``).

    References:
        Mikolov et al., NeurIPS 2013; Arora, Liang & Ma, ICLR 2017 (SIF).
    """

    name = "word2vec"
    algo = "word2vec"


@PRETRAINERS.register("fasttext", needs_base=False, library="gensim",
                      paper="Bojanowski et al., Enriching Word Vectors with Subword Information, TACL 2017")
class FastTextPretrainer(_WordVectorPretrainer):
    """fastText skip-gram over words and character n-grams (``min_n`` to ``max_n`` characters, hashed into
    ``bucket`` rows): words the corpus never saw get vectors from their n-grams. Same settings as word2vec, plus
    ``bucket``, ``min_n``, ``max_n`` (50,000 buckets: 20 MB of n-gram vectors at 100 dimensions; fastText's own
    default of 2 million would be 800 MB).

    References:
        Bojanowski, Grave, Joulin & Mikolov, TACL 2017.
    """

    name = "fasttext"
    algo = "fasttext"
