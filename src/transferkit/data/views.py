"""Preprocessing as typed objects, and the one builder of every input **view** (the only resize/normalise code).

Every backbone carries a preprocessing config: :class:`ImagePreprocessing` (size, crop, interpolation, mean/std,
the fields of timm's data config) or :class:`TextPreprocessing` (tokenizer settings). A **view** is what a model sees
of an item, built from that config by :func:`make_view` over ``timm.data.create_transform``:

- ``eval``: resize and centre crop (the backbone's own evaluation transform);
- ``train``: timm's training augmentation (random resized crop, flip, colour jitter);
- ``weak``: flip and a mild random crop, no colour change (the weak view of FixMatch-style methods);
- ``strong``: ``weak`` plus RandAugment and one random erasing box (the strong view: RandAugment + Cutout).

Another size or crop is an **overlay**, never a write into a private attribute::

    prep = backbone.preprocessing.overlay(input_size=64, crop_pct=1.0, crop_mode="squash")
    transform = make_view(prep, "eval")

Views of text backbones are the texts themselves (their tokenizer runs in the backbone's ``collate``).

References:
    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020
    (weak and strong views); Cubuk et al., "RandAugment", CVPR-W 2020; DeVries & Taylor, "Improved Regularization of
    Convolutional Neural Networks with Cutout", 2017.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from ..errors import TransferkitError
from ..registry import Registry

__all__ = ["ImagePreprocessing", "TextPreprocessing", "Preprocessing", "VIEWS", "make_view", "preprocessing_from_dict",
           "render"]

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
_CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image backbone wants its inputs (the fields of timm's data config).

    Attributes:
        input_size: side of the square input, in pixels.
        interpolation: resize filter (``bicubic``, ``bilinear``, ...).
        crop_pct: the centre crop's share of the resized image (1.0: no crop).
        crop_mode: ``center`` (resize the short side, crop the centre), ``squash`` (resize both sides, no crop at
            1.0) or ``border``.
        mean, std: per-channel normalisation after scaling pixels to [0, 1].
    """

    input_size: int = 224
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    modality = "image"

    def __post_init__(self) -> None:
        bad = []
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size < 8:
            bad.append(f"input_size must be an integer >= 8 (got {self.input_size!r})")
        if self.interpolation not in _INTERPOLATIONS:
            bad.append(f"interpolation must be one of {', '.join(_INTERPOLATIONS)} (got {self.interpolation!r})")
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            bad.append(f"crop_pct must be in (0, 1] (got {self.crop_pct!r})")
        if self.crop_mode not in _CROP_MODES:
            bad.append(f"crop_mode must be one of {', '.join(_CROP_MODES)} (got {self.crop_mode!r})")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(tuple(v)) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                bad.append(f"{name} must be 3 finite numbers (got {v!r})")
        if not bad and min(self.std) <= 0:
            bad.append(f"std must be positive (got {self.std!r})")
        if bad:
            raise TransferkitError("invalid image preprocessing: " + "; ".join(bad))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    def overlay(self, **changes: Any) -> "ImagePreprocessing":
        """A copy with some fields changed (``input_size`` may also be timm's ``(3, H, W)``)."""
        if "input_size" in changes:
            changes["input_size"] = _side(changes["input_size"])
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TransferkitError(f"image preprocessing has no field {', '.join(unknown)}; fields: "
                                   f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """timm's data-config dict (JSON-ready): ``input_size`` as ``[3, S, S]``."""
        return {"input_size": [3, self.input_size, self.input_size], "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> "ImagePreprocessing":
        """From timm's ``resolve_model_data_config`` dict (or :meth:`to_dict`)."""
        return cls(input_size=_side(cfg.get("input_size", 224)), interpolation=str(cfg.get("interpolation", "bicubic")),
                   crop_pct=float(cfg.get("crop_pct") or 0.875), crop_mode=str(cfg.get("crop_mode") or "center"),
                   mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))))


@dataclass(frozen=True)
class TextPreprocessing:
    """How a text backbone reads texts.

    Attributes:
        tokenizer: the tokenizer's name (class name, or ``lowercase-words``).
        pooling: how token vectors become one vector (``mean``, ``mean+max``, ``sif``).
        vocab_size: vocabulary size.
        max_length: tokens kept per text (None: all).
    """

    tokenizer: str
    pooling: str = "mean"
    vocab_size: int = 0
    max_length: int | None = None

    modality = "text"

    def overlay(self, **changes: Any) -> "TextPreprocessing":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (``max_length`` only when set)."""
        d = {"tokenizer": self.tokenizer, "max_length": self.max_length, "pooling": self.pooling,
             "vocab_size": int(self.vocab_size)}
        return {k: v for k, v in d.items() if v is not None}


Preprocessing = ImagePreprocessing | TextPreprocessing


def preprocessing_from_dict(d: dict[str, Any]) -> Preprocessing:
    """The typed config from its :meth:`to_dict` form (as stored in runs and caches)."""
    if "tokenizer" in d:
        return TextPreprocessing(**{f.name: d[f.name] for f in fields(TextPreprocessing) if f.name in d})
    return ImagePreprocessing.from_timm(d)


def _side(size: Any) -> int:
    if isinstance(size, (tuple, list)):
        if len(size) == 3:
            size = size[1:]
        if len(size) != 2 or int(size[0]) != int(size[1]):
            raise TransferkitError(f"input_size must be square (S, S) or (3, S, S), got {tuple(size)!r}")
        return int(size[0])
    return int(size)


# ---------------------------------------------------------------------------------------------------------------
# views
VIEWS: Registry[Callable[..., Any]] = Registry("view")


def _timm(prep: ImagePreprocessing, is_training: bool, **kw: Any) -> Callable[[Any], Any]:
    import timm.data

    cfg = {**prep.to_dict(), "input_size": (3, prep.input_size, prep.input_size)}
    cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    return timm.data.create_transform(**cfg, is_training=is_training, **kw)


@VIEWS.register("eval", random=False)
def eval_view(prep: ImagePreprocessing) -> Callable[[Any], Any]:
    """Resize and centre crop as the backbone was trained, then normalise (deterministic)."""
    return _timm(prep, False)


@VIEWS.register("train", random=True)
def train_view(prep: ImagePreprocessing, scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5,
               color_jitter: float = 0.4) -> Callable[[Any], Any]:
    """timm's training augmentation: random resized crop (area ``scale``), horizontal flip, colour jitter."""
    return _timm(prep, True, scale=tuple(scale), hflip=float(hflip), color_jitter=color_jitter)


@VIEWS.register("weak", random=True)
def weak_view(prep: ImagePreprocessing, scale: tuple[float, float] = (0.6, 1.0), hflip: float = 0.5) -> Callable:
    """Flip and a mild random crop, no colour change (FixMatch's weak augmentation)."""
    return _timm(prep, True, scale=tuple(scale), ratio=(0.9, 1.1), hflip=float(hflip), color_jitter=0.0)


@VIEWS.register("strong", random=True)
def strong_view(prep: ImagePreprocessing, scale: tuple[float, float] = (0.6, 1.0), hflip: float = 0.5,
                magnitude: int = 10) -> Callable:
    """``weak`` plus RandAugment (2 operations, magnitude ``magnitude`` with noise) and one random erasing box
    (Cutout): FixMatch's strong augmentation."""
    return _timm(prep, True, scale=tuple(scale), ratio=(0.9, 1.1), hflip=float(hflip), color_jitter=0.0,
                 auto_augment=f"rand-m{int(magnitude)}-n2-mstd0.5", re_prob=1.0, re_mode="const", re_count=1)


def make_view(prep: Preprocessing, view: str = "eval", **params: Any) -> Callable[[Any], Any] | None:
    """The transform of ``view`` for a preprocessing config (None for text: the text is its own view).

    Raises:
        UnknownNameError: an unknown view (the message lists them).
    """
    entry = VIEWS.get(view)
    if isinstance(prep, TextPreprocessing):
        return None
    return VIEWS.create(entry.name, prep=prep, **params)


def render(source: Any, transform: Callable[[Any], Any], index: Any = None, *, progress: bool = False,
           label: str = "images") -> Any:
    """Items of an image source through a view, stacked: a float32 array ``(N, 3, S, S)`` (for networks trained end
    to end on in-memory tensors: the from-scratch CNN, LeNet).

    Args:
        source: a :class:`~transferkit.data.sources.DataSource` of images.
        transform: a view (:func:`make_view`).
        index: which items (default: all, in order).
        progress: a progress bar on stderr.
        label: the progress bar's text.
    """
    import numpy as np

    from .._progress import progress_bar

    idx = range(len(source)) if index is None else [int(i) for i in index]
    out: Any = None
    with progress_bar(len(idx), label, unit="images", enabled=progress) as bar:
        for j, i in enumerate(idx):
            x = np.asarray(transform(source.load(i)), dtype=np.float32)
            if out is None:
                out = np.empty((len(idx), *x.shape), dtype=np.float32)
            out[j] = x
            bar.advance()
    return out if out is not None else np.zeros((0, 3, 1, 1), np.float32)
