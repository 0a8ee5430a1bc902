"""Small convolutional networks trained from random weights: the yardsticks and the digit-protocol encoder.

- :class:`LeNet`: the feature extractor of the published digit domain-adaptation protocol (32 px inputs, 1600
  features): DANN (Ganin et al., JMLR 2016) and TLlib's digit benchmarks; LeCun, Bottou, Bengio & Haffner,
  "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998, for the architecture family.
- :class:`SmallCNN`: three conv-BN-ReLU-pool blocks (about 0.1M parameters) on 64 px inputs: the from-scratch
  baseline beside every transfer result.

Both take images through the same views as every backbone, with preprocessing that squashes the whole image to the
input size (no crop) and scales pixels to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.views import ImagePreprocessing
from .base import BACKBONE_KINDS, Backbone

__all__ = ["LeNet", "SmallCNN", "lenet", "lenet_fc", "small_cnn"]


def _squash(size: int, interpolation: str) -> ImagePreprocessing:
    return ImagePreprocessing(input_size=size, interpolation=interpolation, crop_pct=1.0, crop_mode="squash",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@BACKBONE_KINDS.register("lenet")
class LeNet(Backbone):
    """LeNet-style feature extractor: ``(N, 3, 32, 32)`` -> ``(N, 1600)``; two 5x5 convolutions (32 and 64 channels),
    max-pooling, ReLU, dropout; random init. With ``hidden=H`` (the ``lenet-fc`` backbone) two fully connected
    layers of ``H`` units follow (DANN's digit classifier without its last layer), and the features are ``(N, H)``.

    Shape:
        forward: ``(N, 3, 32, 32)`` -> ``(N, 1600)`` (``(N, H)`` with ``hidden``).
    """

    modality = "image"
    kind = "lenet"

    def __init__(self, name: str = "lenet", hidden: int | None = None):
        super().__init__()
        self.name = name
        self.source = "random-init"
        self.hidden = None if hidden is None else int(hidden)
        self.num_features = 64 * 5 * 5 if self.hidden is None else self.hidden
        self.preprocessing = _squash(32, "bilinear")
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())
        if self.hidden is not None:  # DANN's classifier trunk: two fully connected layers before the last one
            self.fc = nn.Sequential(nn.Linear(64 * 5 * 5, self.hidden), nn.ReLU(), nn.Dropout(0.5),
                                    nn.Linear(self.hidden, self.hidden), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.net(x)
        return x if self.hidden is None else self.fc(x)

    def config(self) -> dict[str, Any]:
        return {} if self.hidden is None else {"hidden": self.hidden}

    @classmethod
    def from_saved(cls, directory: Path, meta: dict[str, Any]) -> "LeNet":
        hidden = (meta.get("config") or {}).get("hidden")
        return cls(name=str(meta.get("name", "lenet")), hidden=None if hidden is None else int(hidden))


@BACKBONE_KINDS.register("small-cnn")
class SmallCNN(Backbone):
    """Three conv blocks (conv-BN-ReLU-pool) and global average pooling; ``4 * width`` features.

    Shape:
        forward: ``(N, 3, S, S)`` -> ``(N, 4 * width)``.
    """

    modality = "image"
    kind = "small-cnn"

    def __init__(self, width: int = 32, name: str = "small-cnn"):
        super().__init__()
        self.name = name
        self.source = "random-init"
        self.width = int(width)
        self.num_features = 4 * self.width
        self.preprocessing = _squash(64, "bicubic")

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2))

        w = self.width
        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.features(x)

    def config(self) -> dict[str, Any]:
        return {"width": self.width}

    @classmethod
    def from_saved(cls, directory: Path, meta: dict[str, Any]) -> "SmallCNN":
        return cls(width=int((meta.get("config") or {}).get("width", 32)), name=str(meta.get("name", "small-cnn")))


def lenet(seed: int = 0) -> LeNet:
    """A LeNet with random weights seeded by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LeNet()


def lenet_fc(seed: int = 0, hidden: int = 100) -> LeNet:
    """A LeNet with two fully connected layers of ``hidden`` units (the whole DANN digit network but its last
    layer), random weights seeded by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LeNet(name="lenet-fc", hidden=hidden)


def small_cnn(seed: int = 0, width: int = 32) -> SmallCNN:
    """A :class:`SmallCNN` with random weights seeded by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(width=width)
