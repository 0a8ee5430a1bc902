"""Embedding class texts with a text encoder, and the source model a zero-shot image method builds on.

- :func:`encode_texts`: texts -> ``(N, Z)`` with any text backbone (a transformers sentence encoder such as
  ``minilm``, averaged word vectors such as ``glove-50d``) or the text tower of a ``clip:`` backbone.
- :func:`class_embeddings`: one unit vector per class: the mean of the unit embeddings of its prompted texts
  (prompt ensembling), normalised again.
- :class:`SourceModel` and :func:`source_model`: an image backbone's own classifier (e.g. lite0's ImageNet head) as
  weights over the cached features, with the embeddings of its class names: what ConSE averages and what the ridge
  map and ESZSL learn from when no class of the user's data is labelled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError, ModalityError, TransferkitError
from .prompts import ClassSpec, class_texts, prompt_templates

__all__ = ["encode_texts", "class_embeddings", "SourceModel", "source_model", "SOURCE_TEXTS"]

#: how a source class (an ImageNet synset) is put into words: its first name, all its names, or its names with the
#: WordNet gloss (``timm.data.ImageNetInfo``)
SOURCE_TEXTS = ("first-name", "names", "description")


def _is_text_encoder(encoder: Any) -> bool:
    return callable(getattr(encoder, "encode_text", None)) or getattr(encoder, "modality", None) == "text"


def encode_texts(encoder: Any, texts: Sequence[str], *, batch_size: int = 64, allow_empty: bool = False) -> np.ndarray:
    """Embed texts with a text backbone, or with the text tower of a backbone that has one (``encode_text``).

    Args:
        encoder: a text :class:`~transferkit.backbones.Backbone` (``minilm``, ``glove-50d``, ``hf:<dir>``) or a
            backbone with an ``encode_text(list[str]) -> tensor`` method (``clip:<model>``).
        texts: the texts.
        batch_size: texts per forward pass.
        allow_empty: keep all-zero embeddings (a word-vector model that knows none of a text's words) instead of
            failing.

    Returns:
        float32 ``(N, Z)`` embeddings (not normalised).

    Raises:
        ModalityError: an image backbone without a text tower.
        DataError: a text the encoder cannot represent (a word-vector model that knows none of its words).

    Shape:
        ``N`` texts -> ``(N, Z)``.
    """
    if not _is_text_encoder(encoder):
        raise ModalityError(f"text_backbone={getattr(encoder, 'name', encoder)!r} is an image backbone without a "
                            "text tower; class names need a text encoder: minilm, glove-50d, hf:<folder>, or a "
                            "clip: backbone")
    texts = [str(t) for t in texts]
    out = []
    encoder.eval()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            if callable(getattr(encoder, "encode_text", None)):
                e = encoder.encode_text(chunk)
            else:
                e = encoder(encoder.collate(chunk))
            out.append(e.detach().float().cpu().numpy())
    E = np.concatenate(out) if out else np.zeros((0, int(getattr(encoder, "num_features", 0))), np.float32)
    empty = np.flatnonzero(np.linalg.norm(E, axis=1) == 0)
    if len(empty) and not allow_empty:
        raise DataError(f"text_backbone={encoder.name!r} gives an empty (all-zero) embedding for {texts[empty[0]]!r}"
                        f"{f' and {len(empty) - 1} more' if len(empty) > 1 else ''}: none of its words is in its "
                        "vocabulary; describe the class in other words (classes=\"label=description\") or use minilm")
    return E.astype(np.float32)


def _unit(E: np.ndarray) -> np.ndarray:
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)


def class_embeddings(encoder: Any, classes: ClassSpec, prompt: str | Sequence[str] = "name", *,
                     batch_size: int = 64, allow_empty: bool = False) -> np.ndarray:
    """One unit-norm embedding per class: every description of the class through every template of ``prompt``,
    embedded, normalised, averaged and normalised again (the prompt ensembling of CLIP).

    Returns:
        float32 ``(C, Z)``, rows in ``classes.labels`` order (all-zero for a class none of whose texts the encoder
        can represent, with ``allow_empty``).

    References:
        Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
        (prompt ensembling).
    """
    groups = class_texts(classes, prompt)
    flat = [t for g in groups for t in g]
    E = _unit(encode_texts(encoder, flat, batch_size=batch_size, allow_empty=allow_empty))
    out, k = [], 0
    for g in groups:
        out.append(E[k:k + len(g)].mean(0))
        k += len(g)
    return _unit(np.stack(out)).astype(np.float32)


@dataclass
class SourceModel:
    """A backbone's source classifier over its features, and its classes in words.

    Attributes:
        weight: ``(K, D)`` classifier weights; bias: ``(K,)``.
        names: ``K`` texts naming the source classes (see ``SOURCE_TEXTS``).
        embeddings: ``(K, Z)`` unit embeddings of ``names`` (through the same encoder and prompt as the classes).
    """

    weight: np.ndarray
    bias: np.ndarray
    names: list[str]
    embeddings: np.ndarray

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the source classifier.

        Shape:
            ``(N, D)`` -> ``(N, K)``.
        """
        z = np.asarray(X, dtype=np.float64) @ self.weight.T.astype(np.float64) + self.bias
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)


def _cached_class_embeddings(encoder: Any, spec: ClassSpec, prompt: str | Sequence[str],
                             cache_dir: str | Path | None) -> np.ndarray:
    """:func:`class_embeddings` of many classes (e.g. the 1000 ImageNet names, a minute or two on a CPU), kept in
    ``<cache>/text-embeddings/`` under a digest of the encoder's name and weights and of every text embedded."""
    import hashlib

    from .._io import default_cache_dir

    groups = class_texts(spec, prompt)
    h = hashlib.sha256()
    digest = getattr(encoder, "weights_digest", None)
    h.update(str(getattr(encoder, "name", type(encoder).__name__)).encode())
    try:
        h.update(str(digest() if callable(digest) else "").encode())
    except Exception:  # noqa: BLE001 - a backbone without a digest is keyed by its name only
        pass
    for g in groups:
        h.update(("\x1e" + "\x1f".join(g)).encode("utf-8"))
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / "text-embeddings" / f"{h.hexdigest()[:32]}.npy"
    if path.is_file():
        try:
            E = np.load(path)
            if E.shape[0] == len(groups):
                return E
        except (OSError, ValueError):
            pass
    E = class_embeddings(encoder, spec, prompt, allow_empty=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, E)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the embeddings are still returned
        pass
    return E


def source_model(backbone: Any, encoder: Any, prompt: str | Sequence[str] = "name", *,
                 source_texts: str = "names", cache_dir: str | Path | None = None) -> SourceModel:
    """The source classifier of an image backbone (lite0's ImageNet head) with its class names embedded by
    ``encoder`` through ``prompt``.

    Args:
        backbone: an image backbone whose cached features feed a source classifier
            (:func:`transferkit.transferability.source.source_classifier`) and that names its source classes
            (``source_class_names()``).
        encoder: the text encoder of the class names.
        prompt: the prompt set, as for the target classes.
        source_texts: ``first-name`` (``"tench"``), ``names`` (``"tench, Tinca tinca"``) or ``description`` (the
            names and the WordNet gloss).
        cache_dir: where the source names' embeddings are kept (default: the feature cache).

    Raises:
        TransferkitError: the backbone has no source classifier or no names for its classes; an unknown
            ``source_texts``.
    """
    from ..transferability.source import source_classifier

    if source_texts not in SOURCE_TEXTS:
        raise TransferkitError(f"source_texts must be one of {', '.join(SOURCE_TEXTS)}; got {source_texts!r}")
    head = source_classifier(backbone)
    namer = getattr(backbone, "source_class_names", None)
    names = namer(detailed=source_texts == "description") if callable(namer) and head is not None else None
    if head is None or not names:
        raise TransferkitError(f"backbone={getattr(backbone, 'name', backbone)!r} has no source classifier with named "
                               "classes, which this zero-shot method needs (ConSE, the ridge map and ESZSL start "
                               "from an ImageNet classifier such as lite0's); use backbone=\"lite0\" or a clip: "
                               "backbone with method=\"clip\"")
    if source_texts == "first-name":
        names = [n.split(",")[0].strip() for n in names]
    weight = head.weight.detach().float().cpu().numpy()
    bias = head.bias.detach().float().cpu().numpy() if getattr(head, "bias", None) is not None else \
        np.zeros(len(weight), np.float32)
    if len(names) != len(weight):
        raise TransferkitError(f"backbone {backbone.name!r} names {len(names)} source classes but its classifier has "
                               f"{len(weight)} outputs")
    spec = ClassSpec([str(i) for i in range(len(names))], {str(i): [n] for i, n in enumerate(names)})
    prompt_templates(prompt)  # a bad prompt fails before the encoder runs
    E = _cached_class_embeddings(encoder, spec, prompt, cache_dir)  # a source class the encoder cannot name: zeros
    if not np.linalg.norm(E, axis=1).any():
        raise DataError(f"text_backbone={encoder.name!r} can represent none of the source class names")
    return SourceModel(weight, bias, list(names), E)
