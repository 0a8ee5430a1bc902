"""Source-model outputs (e.g. ImageNet class probabilities) from cached features, for LEEP and NCE.

An image backbone built on timm keeps the classifier of its pretraining task, and its cached features are that
classifier's input (``forward_head(pre_logits=True)``), so the source probabilities of cached data are one
linear layer and a softmax away: no second pass over the images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ScoreError

if TYPE_CHECKING:  # torch is imported when used, so that importing the scores stays light
    import torch

    from ..backbones.base import Backbone

__all__ = ["source_classifier", "source_probabilities"]


def source_classifier(backbone: "Backbone") -> "torch.nn.Module | None":
    """The module that maps a backbone's features to its source-class logits, or None when it has none.

    A backbone may provide its own through a ``source_classifier()`` method; otherwise a :class:`TimmBackbone`
    with a classifier (``num_source_classes > 0``) uses timm's ``model.get_classifier()``. Backbones without one:
    text encoders, ``file:`` checkpoints (their head is dropped), and timm models whose classifier is not a single
    module taking the pooled features (e.g. distilled ViTs with two heads).

    Random-init backbones (``lite0-random``, ``random:<arch>``) do have one, with random weights: LEEP / NCE over it
    are legitimate numbers that measure no transfer (LEEP near ``-H(Y)``), which is the point of the control, so it
    is returned like any other.
    """
    import torch

    from ..backbones.vision import TimmBackbone

    hook = getattr(backbone, "source_classifier", None)
    if callable(hook):
        return hook()

    if not isinstance(backbone, TimmBackbone) or not backbone.num_source_classes:
        return None
    head = backbone.model.get_classifier()
    if not isinstance(head, torch.nn.Module) or isinstance(head, torch.nn.Identity):
        return None
    in_features = getattr(head, "in_features", None)
    if in_features is not None and int(in_features) != backbone.num_features:
        return None
    return head


def source_probabilities(backbone: "Backbone", features: Any, *, batch_size: int = 8192) -> np.ndarray | None:
    """The backbone's source-classifier probabilities (softmax over e.g. the 1000 ImageNet classes) from its features.

    Equal to ``softmax(backbone.source_logits(x))`` for the inputs ``x`` the features were extracted from (the
    features are the classifier's input in eval mode), up to float32 rounding.

    Args:
        backbone: the backbone that produced ``features``.
        features: its features (e.g. ``FeatureStore.get(...).X``, memory-mapped is fine).
        batch_size: rows per matrix product.

    Returns:
        float64 probabilities, or None when the backbone has no source classifier (see :func:`source_classifier`).

    Raises:
        ScoreError: features of the wrong width for this backbone, or NaN/inf rows.

    Shape:
        features ``(N, num_features)`` -> ``(N, num_source_classes)``.

    References:
        Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020
        (the source model's "dummy label" distribution).
    """
    import torch

    head = source_classifier(backbone)
    if head is None:
        return None
    X = np.asarray(features) if not isinstance(features, np.ndarray) else features
    if X.ndim != 2 or X.shape[1] != backbone.num_features:
        raise ScoreError(f"source_probabilities: backbone {backbone.name!r} produces {backbone.num_features}-d "
                         f"features; got an array of shape {X.shape}")
    parts = []
    with torch.inference_mode():
        param = next(head.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        for i in range(0, X.shape[0], int(batch_size)):
            chunk = np.array(X[i:i + int(batch_size)], dtype=np.float32)  # a copy: torch wants writable memory
            if not np.isfinite(chunk).all():
                bad = i + np.flatnonzero(~np.isfinite(chunk).all(axis=1))
                raise ScoreError("source_probabilities: features hold NaN or inf in rows "
                                 f"{', '.join(map(str, bad[:5]))}"
                                 f"{', ...' if len(bad) > 5 else ''}; drop them first (Features.good lists the rows "
                                 "that were read)")
            logits = head(torch.as_tensor(chunk, device=device, dtype=dtype))
            parts.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, int(getattr(head, "out_features", 0) or 0)))
