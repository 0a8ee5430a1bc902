"""The one contract every backbone follows."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["Backbone", "state_dict_digest"]


def state_dict_digest(module: nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, shapes, dtypes and bytes), in key order.

    Two modules with the same architecture and the same weights get the same digest; any changed
    weight changes it. Used in feature-cache keys.
    """
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Backbone(nn.Module):
    """A pretrained network that turns a batch of inputs into an ``(N, D)`` feature matrix.

    Subclasses set:
        name: the registry name the backbone was created from (e.g. ``"lite0"``, ``"timm:resnet18"``).
        modality: ``"image"`` or ``"text"``.
        num_features: ``D``, the size of the penultimate-layer features.
        source: a short description of the pretraining (``"imagenet-1k"``, ``"random-init"``, ...).

    Image backbones also provide :meth:`data_config` (timm's preprocessing dict) and :meth:`transform`
    (PIL image -> tensor); text backbones provide :meth:`collate` (list of strings -> model inputs).

    Shape:
        forward: image batch ``(N, 3, H, W)`` or tokenized text -> ``(N, num_features)``.
    """

    name: str = ""
    modality: str = "image"
    num_features: int = 0
    source: str = ""

    def __init__(self) -> None:
        super().__init__()
        self._digest: str | None = None

    # -- preprocessing ---------------------------------------------------------------------------
    def data_config(self) -> dict[str, Any]:
        """Preprocessing settings (JSON-serialisable). Image backbones: timm's data config."""
        return {}

    def transform(self) -> Callable[[Any], torch.Tensor] | None:
        """Eval-mode transform from one PIL RGB image to a tensor; None for text backbones."""
        return None

    def collate(self, items: Sequence[Any]) -> Any:
        """Batch a list of transformed items into model inputs (images: stack; text: tokenize)."""
        return torch.stack(list(items))

    # -- identity --------------------------------------------------------------------------------
    def weights_digest(self) -> str:
        """Digest of the current weights (computed once; weights of a backbone do not change in place)."""
        if self._digest is None:
            self._digest = state_dict_digest(self)
        return self._digest

    def identity(self) -> dict[str, Any]:
        """Everything that determines the features this backbone produces for a given input."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "modality": self.modality,
            "num_features": self.num_features,
            "weights": self.weights_digest(),
            "preprocessing": self.data_config(),
        }

    def identity_key(self) -> str:
        """A short hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, modality={self.modality}, num_features={self.num_features}"
