"""LeNet: the small CNN of the published digit domain-adaptation protocol, trained from random weights.

Two 5x5 convolutions (32 and 64 channels, max-pooling, ReLU, dropout) on 3-channel 32x32 inputs give 1600
features, the feature extractor of the digit experiments of DANN (Ganin et al., JMLR 2016) and of TLlib's digit
benchmarks (LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document Recognition",
Proc. IEEE 1998, for the architecture family). Inputs: :func:`images_to_tensor` (resized, RGB, scaled to
[-1, 1]), so grayscale and colour domains share one input format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

__all__ = ["LeNet", "images_to_tensor", "LENET_SIZE"]

LENET_SIZE = 32


class LeNet(nn.Module):
    """LeNet-style feature extractor: ``(N, 3, 32, 32)`` -> ``(N, 1600)``; random init, seeded by torch."""

    num_features = 64 * 5 * 5

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)


def images_to_tensor(source: Any, size: int = LENET_SIZE, progress: bool = False) -> np.ndarray:
    """Every image of a :class:`~transferkit.data.sources.DataSource` as float32 ``(N, 3, size, size)`` in
    [-1, 1] (bilinear resize, RGB)."""
    from PIL import Image

    from .._progress import progress_bar

    out = np.empty((len(source), 3, size, size), dtype=np.float32)
    with progress_bar(len(source), f"images -> {size}px", unit="images", enabled=progress) as bar:
        for i in range(len(source)):
            img = source.load(i).convert("RGB").resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
            bar.advance()
    return out
