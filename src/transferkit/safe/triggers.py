"""Patch triggers: stamp them on images, poison a training set with them, measure an attack's success.

A *patch trigger* is a small solid square pasted at a fixed place of the image. Training on a share of images that
carry it and are relabelled to one target class plants a backdoor (BadNets): the model keeps its clean accuracy, but
any input with the patch is sent to the target class. These helpers build such a defective teacher offline (the
safe-transfer benchmark) and the candidate triggers of :func:`transferkit.safe.inspect.inspect_backbone`'s sweep.

References:
    Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain",
    2017 (IEEE Access 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import DataError

__all__ = ["Patch", "POSITIONS", "poison", "attack_success_rate", "image_batches", "predict"]

#: where a patch goes: a corner (t/b = top/bottom, l/r = left/right) or the centre
POSITIONS = ("tl", "tr", "bl", "br", "c")


@dataclass(frozen=True)
class Patch:
    """A solid square trigger.

    Attributes:
        size: side as a share of the image's shorter side (0.15 of 28 px is 4 px; at least 1 px).
        colour: RGB in 0-255 (grayscale images get the mean of the three).
        position: one of :data:`POSITIONS`.
        margin: pixels between the patch and the image border.
    """

    size: float = 0.15
    colour: tuple[int, int, int] = (255, 255, 255)
    position: str = "br"
    margin: int = 1

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise DataError(f"patch position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if not 0 < float(self.size) < 1:
            raise DataError(f"patch size is a share of the image side in (0, 1), got {self.size!r}")

    def describe(self) -> str:
        """``"15% white at br"``-style label."""
        names = {(255, 255, 255): "white", (0, 0, 0): "black", (255, 0, 0): "red", (0, 255, 0): "green",
                 (0, 0, 255): "blue"}
        return f"{100 * self.size:.0f}% {names.get(tuple(self.colour), str(tuple(self.colour)))} at {self.position}"

    def box(self, h: int, w: int) -> tuple[int, int, int]:
        """``(top, left, side)`` of the patch on an ``h x w`` image."""
        s = max(1, int(round(float(self.size) * min(h, w))))
        m = int(self.margin)
        top = {"t": m, "b": h - m - s, "c": (h - s) // 2}[self.position[0]]
        left = {"l": m, "r": w - m - s, "c": (w - s) // 2}[self.position[-1]]
        return top, left, s

    def paste(self, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """A copy of a preprocessed batch with the patch pasted where the network sees it (after resizing and
        cropping), in the normalised colour ``(colour / 255 - mean) / std``.

        Shape:
            ``(N, 3, H, W)`` -> the same.
        """
        out = x.clone()
        top, left, s = self.box(x.shape[2], x.shape[3])
        value = (torch.tensor(self.colour, dtype=x.dtype) / 255 - torch.tensor(mean, dtype=x.dtype)) \
            / torch.tensor(std, dtype=x.dtype)
        out[:, :, top:top + s, left:left + s] = value.view(1, -1, 1, 1)
        return out

    def apply(self, images: np.ndarray) -> np.ndarray:
        """A copy of ``images`` with the patch pasted on every one.

        Shape:
            ``(N, H, W)`` or ``(N, H, W, C)`` uint8 -> the same.
        """
        x = np.array(images, copy=True)
        if x.ndim not in (3, 4) or x.dtype != np.uint8:
            raise DataError(f"images must be (N, H, W) or (N, H, W, C) uint8 arrays, got {x.shape} {x.dtype}")
        top, left, s = self.box(*x.shape[1:3])
        colour = np.asarray(self.colour, np.float64)
        value = colour[: x.shape[3]] if x.ndim == 4 and x.shape[3] <= 3 else colour.mean()
        x[:, top:top + s, left:left + s] = np.asarray(np.rint(value), np.uint8)
        return x


def poison(images: np.ndarray, labels: np.ndarray, fraction: float, target: int, patch: Patch = Patch(),
           seed: int = 0, exclude_target: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BadNets poisoning: stamp ``patch`` on a random ``fraction`` of the images and relabel them ``target``.

    Args:
        images: ``(N, H, W[, C])`` uint8.
        labels: ``(N,)`` integer labels.
        fraction: share of all images to poison.
        target: the class the trigger should send inputs to.
        patch: the trigger.
        seed: which images are drawn.
        exclude_target: draw only among images not already of the target class.

    Returns:
        ``(images, labels, poisoned positions)`` (copies; the inputs are unchanged).
    """
    images, labels = np.asarray(images), np.asarray(labels).copy()
    if not 0 <= fraction < 1:
        raise DataError(f"poisoning fraction must be in [0, 1), got {fraction!r}")
    pool = np.flatnonzero(labels != target) if exclude_target else np.arange(len(labels))
    k = min(len(pool), int(round(fraction * len(labels))))
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=k, replace=False))
    out = np.array(images, copy=True)
    if k:
        out[chosen] = patch.apply(images[chosen])
    labels[chosen] = target
    return out, labels, chosen


def attack_success_rate(pred_triggered: np.ndarray, y_true: np.ndarray, target: int) -> float:
    """Share of triggered inputs whose true class is not ``target`` that are predicted as ``target``."""
    pred_triggered, y_true = np.asarray(pred_triggered), np.asarray(y_true)
    keep = y_true != target
    if not keep.any():
        raise DataError(f"every input is of the target class {target}: the attack success rate is undefined")
    return float(np.mean(pred_triggered[keep] == target))


def image_batches(view: Any, images: Sequence[Any], batch_size: int = 256) -> Iterator[torch.Tensor]:
    """``images`` (arrays or PIL images) through a backbone's view, stacked in batches."""
    from ..data.images import array_to_image, to_rgb

    def load(im: Any) -> Any:
        return array_to_image(im) if isinstance(im, np.ndarray) else to_rgb(im)

    for s in range(0, len(images), batch_size):
        yield torch.stack([view(load(im)) for im in images[s:s + batch_size]])


def predict(model: Any, images: Sequence[Any], batch_size: int = 256) -> np.ndarray:
    """Class indices a :class:`~transferkit.train.model.TransferModel` predicts for images (evaluation view)."""
    model.eval()
    with torch.no_grad():
        out = [model(x).argmax(1) for x in image_batches(model.backbone.transform("eval"), images, batch_size)]
    return torch.cat(out).numpy()
