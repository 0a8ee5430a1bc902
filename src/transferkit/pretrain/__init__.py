"""Learning from the user's own unlabelled text before the few labels: word vectors trained on a corpus (word2vec,
fastText) and a sentence encoder adapted to it (unsupervised SimCSE).

:func:`pretrain_text` reads the corpus (:func:`~transferkit.data.corpus.read_corpus`: a text file, a folder of text
files, a table column, or texts in memory), runs a method of :data:`PRETRAINERS`, and returns the trained backbone.
The result is cached in the feature-cache folder under ``pretrained/<method>-<key>/`` (the key hashes the corpus,
the method's settings, the base encoder's weights and the package version), so the same corpus and settings train
once; with ``out=`` a copy is saved where the user wants it, loadable by name (``word2vec:<dir>``,
``fasttext:<dir>``, ``file:<dir>``).

A method is one file in this package that registers a :class:`Pretrainer` subclass::

    @PRETRAINERS.register("my-method", needs_base=True, paper="Author et al., Venue Year")
    class MyMethod(Pretrainer):
        def train(self, corpus, base, *, progress=False, log=None): ...   # -> a Backbone

The backbone registry names a method with the ``corpus_method`` capability (``word2vec``, ``fasttext``,
``simcse:<encoder>``): ``fit(..., corpus=...)`` pretrains those first, reading the capability.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from .._io import atomic_write_bytes, default_cache_dir
from ..backbones.base import Backbone, load_backbone
from ..data.corpus import Corpus, read_corpus
from ..errors import OutputError, TransferkitError
from ..registry import Registry, import_submodules

__all__ = ["PRETRAINERS", "Pretrainer", "PretrainResult", "pretrain_text", "pretrain_for_backbone", "PRETRAIN_DIR"]

#: text pretraining methods; capabilities: ``needs_base`` (adapts an existing encoder), ``library``
PRETRAINERS: Registry["Pretrainer"] = Registry("text pretraining method")
#: the folder under the cache root that holds pretrained backbones
PRETRAIN_DIR = "pretrained"
_META = "pretrain.json"


class Pretrainer:
    """Base class of a text pretraining method: ``__init__`` takes its settings, :meth:`train` makes the backbone.

    Subclasses store their settings in ``self.settings`` (JSON): they are part of the cache key.
    """

    name: str = ""
    settings: dict[str, Any]

    def train(self, corpus: Corpus, base: Backbone | None, *, progress: bool = False,
              log: Callable[[str], None] | None = None) -> Backbone:
        """Train on ``corpus`` (adapting ``base`` when the method needs one) and return the new backbone."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The method's name and settings (JSON)."""
        return {"method": self.name, **self.settings}


@dataclass
class PretrainResult:
    """What :func:`pretrain_text` returns.

    Attributes:
        backbone: the trained backbone (eval mode).
        path: the cached folder it is saved in (None with ``cache=False``).
        out: the user's copy (None without ``out``).
        cached: True when it was read from the cache (nothing trained).
        seconds: training time (0 on a cache hit; see ``info["train_seconds"]`` for the original run's).
        texts: texts in the corpus trained on.
        info: what ``pretrain.json`` records: method, settings, corpus origin and digest, key, timings.
    """

    backbone: Backbone
    path: Path | None
    out: Path | None
    cached: bool
    seconds: float
    texts: int
    info: dict[str, Any]


def pretrain_text(corpus: Any, method: str = "word2vec", *, backbone: str | Backbone | None = None,
                  extra_texts: Any = None, out: str | Path | None = None, cache_dir: str | Path | None = None,
                  cache: bool = True, column: str | None = None, encoding: str | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None, **settings: Any) -> PretrainResult:
    """Train word vectors on, or adapt an encoder to, an unlabelled corpus; cached by corpus and settings.

    Args:
        corpus: a text file, a folder of text files, a table (``column``), a list of texts or a
            :class:`~transferkit.data.corpus.Corpus`.
        method: a :data:`PRETRAINERS` name: ``word2vec``, ``fasttext`` or ``simcse``.
        backbone: the encoder a ``needs_base`` method adapts (``simcse``: default ``minilm``).
        extra_texts: more texts added to the corpus (e.g. the dataset's own texts, without their labels).
        out: also save the backbone in this folder (new or empty, or holding this same result).
        cache_dir: the cache root (default ``$TRANSFERKIT_CACHE``).
        cache: read and write the cache.
        column, encoding: how the corpus files are read.
        progress, log: progress bars and one-line messages.
        **settings: the method's settings (e.g. ``dim=100, epochs=15, pooling="sif", seed=0, workers=1`` for word
            vectors; ``steps``, ``lr``, ``batch_size`` for SimCSE). Unknown names are an error listing the valid ones.

    Returns:
        :class:`PretrainResult`.

    Raises:
        UnknownNameError: an unknown method.
        DataError: the corpus is missing, empty, binary or not in its encoding.
        OutputError: ``out`` holds something else.
        TransferkitError: bad settings, or a base encoder for a method that takes none.
    """
    say = log or (lambda m: None)
    entry = PRETRAINERS.get(method)
    m = PRETRAINERS.create(method, **settings)
    base = None
    if entry.cap("needs_base", False):
        from ..backbones import create_backbone

        base = create_backbone(backbone or "minilm") if not isinstance(backbone, Backbone) else backbone
        if base.modality != "text":
            raise TransferkitError(f"{method} adapts a text encoder; backbone {base.name!r} takes {base.modality}s")
    elif backbone is not None:
        raise TransferkitError(f"{method} trains from the corpus alone and takes no backbone (got {backbone!r}); "
                               "start word vectors from pretrained ones with init='glove-50d' instead")
    c = read_corpus(corpus, column=column, encoding=encoding)
    if extra_texts is not None:
        c = c + read_corpus(list(extra_texts) if not isinstance(extra_texts, (str, os.PathLike, Corpus))
                            else extra_texts, encoding=encoding)
    key_doc = {"config": m.config(), "corpus": c.digest(), "version": __version__,
               "base": None if base is None else {"name": base.name, "weights": base.weights_digest()}}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / PRETRAIN_DIR / f"{method}-{key}"
    out_path = _check_out(out, key)
    if cache and (path / _META).is_file():
        bb = load_backbone(path)
        info = json.loads((path / _META).read_text())
        say(f"{method}: read from the cache ({path}), trained before in {info.get('train_seconds', 0):.1f}s")
        cached, seconds = True, 0.0
    else:
        say(f"{method}: training on {len(c)} texts ({c.words()} words) from {c.origin}")
        t0 = time.perf_counter()
        bb = m.train(c, base, progress=progress, log=log)
        seconds = time.perf_counter() - t0
        bb.name = f"{method}-{key[:8]}" if base is None else f"{method}:{base.name}-{key[:8]}"
        info = {"method": method, "config": m.config(), "key": key, "corpus": {"origin": c.origin,
                "texts": len(c), "words": c.words(), "digest": c.digest(), "files": c.files[:50]},
                "base": key_doc["base"], "train_seconds": seconds, "transferkit": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        cached = False
        if cache:
            _save_folder(bb, info, path)
    if out_path is not None and not (out_path / _META).is_file():
        _save_folder(bb, info, out_path)
        say(f"{method}: saved in {out_path}")
    return PretrainResult(backbone=bb.eval(), path=path if cache else None, out=out_path, cached=cached,
                          seconds=seconds, texts=len(c), info=info)


def pretrain_for_backbone(name: str, corpus: Any, *, extra_texts: Any = None, cache_dir: str | Path | None = None,
                          encoding: str | None = None, progress: bool = False,
                          log: Callable[[str], None] | None = None) -> PretrainResult:
    """Pretrain the backbone a registry name stands for when its entry declares a ``corpus_method`` (``word2vec``,
    ``fasttext``, ``simcse:<encoder>``), with the method's default settings.

    Raises:
        TransferkitError: the backbone is not trained on a corpus, or neither a corpus nor texts were given.
    """
    from ..backbones import BACKBONES

    entry, arg = BACKBONES.resolve(name)
    method = entry.cap("corpus_method")
    if not method:
        raise TransferkitError(f"backbone {name!r} is pretrained elsewhere and is not trained on a corpus; for "
                               "corpus= use word2vec, fasttext or simcse:<encoder> (e.g. simcse:minilm)")
    if corpus is None and extra_texts is None:
        raise TransferkitError(f"backbone {name!r} is trained on your texts: give corpus= (a text file, folder or "
                               "table) or data with texts")
    if corpus is None:
        corpus, extra_texts = extra_texts, None
    return pretrain_text(corpus, method, backbone=arg, extra_texts=extra_texts, cache_dir=cache_dir,
                         encoding=encoding, progress=progress, log=log)


def _check_out(out: str | Path | None, key: str) -> Path | None:
    """The ``out`` folder, refused when it holds anything but this same result."""
    if out is None:
        return None
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"out={str(out)!r} is a file; choose a folder for the trained backbone")
    if p.is_dir() and any(p.iterdir()):
        try:
            same = json.loads((p / _META).read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            raise OutputError(f"out={str(out)!r} is not empty and does not hold this pretraining; choose a new or "
                              "empty folder")
    return p


def _save_folder(bb: Backbone, info: dict[str, Any], path: Path) -> None:
    """Save into a temporary folder beside ``path`` and rename it into place (a kill leaves no half folder)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        bb.save(tmp)
        atomic_write_bytes(tmp / _META, json.dumps(info, indent=2, default=str).encode())
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if path.exists():  # another process finished the same work first: keep theirs
            return
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write the trained backbone to {path} ({e.strerror or e}); choose another place "
                          "(out=, cache_dir=)") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


import_submodules(__name__, __path__)  # methods registered in their own files
