"""Head modules: the ``nn.Module`` form of every head, saved as safetensors + ``{kind, config}`` and loaded back by kind.

A head module maps backbone features ``(N, D)`` to logits ``(N, C)``. Its class is registered in
:data:`HEAD_MODULES` under a ``kind`` and rebuilds itself from :meth:`config`, so a run stores any head (linear,
MLP, prototypes, class-embedding heads, ...) without pickle, and predict and export need no special case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_bytes, file_digest
from ..errors import TransferkitError
from ..registry import Registry

__all__ = ["HeadModule", "HEAD_MODULES", "save_head", "load_head", "head_metadata", "HEAD_FORMAT"]

HEAD_FORMAT = "transferkit-head/2"

#: head module classes by kind (``forward(x, return_features=False)``, ``config()``, ``from_config(config)``)
HEAD_MODULES: Registry[nn.Module] = Registry("head module kind")


@HEAD_MODULES.register("mlp")
class HeadModule(nn.Module):
    """Standardise features, then linear layers with ReLU between them; returns logits (a linear head without
    hidden layers).

    Shape:
        ``(N, D)`` -> ``(N, num_classes)``; with ``return_features=True`` also the last layer's input ``(N, H)``.
    """

    kind = "mlp"

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (), dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        dims = [in_features, *hidden, num_classes]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            layers.append(nn.Linear(a, b))
        self.layers = nn.Sequential(*layers)
        self._config = {"in_features": int(in_features), "num_classes": int(num_classes), "hidden": list(hidden),
                        "dropout": float(dropout)}

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return self._config["num_classes"]

    def config(self) -> dict[str, Any]:
        """What rebuilds the architecture (JSON)."""
        return dict(self._config)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "HeadModule":
        """A linear layer (the head of a fine-tuned network) as a head module with the same outputs."""
        m = cls(linear.in_features, linear.out_features)
        with torch.no_grad():
            m.layers[0].weight.copy_(linear.weight)
            m.layers[0].bias.copy_(linear.bias)
        return m.eval()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HeadModule":
        """The architecture of a saved head (weights loaded separately)."""
        return cls(int(config["in_features"]), int(config["num_classes"]), tuple(config.get("hidden", ())),
                   float(config.get("dropout", 0.0)))

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        h = (x - self.mean) / self.scale
        for layer in self.layers[:-1]:
            h = layer(h)
        logits = self.layers[-1](h)
        return (logits, h) if return_features else logits


def save_head(directory: str | Path, module: nn.Module, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write ``head.safetensors`` into ``directory``; return ``{kind, config, file, sha256}`` for the run's model.json.

    ``metadata`` (strings) is stored inside the weights file, e.g. the class names, so an edit of model.json that
    the weights do not know about is caught on loading.

    Raises:
        TransferkitError: the module's class is not registered in :data:`HEAD_MODULES`.
    """
    from safetensors.torch import save

    kind = getattr(module, "kind", None)
    if not kind or kind not in HEAD_MODULES:
        raise TransferkitError(f"head module {type(module).__name__} cannot be saved: register its class with "
                               "@HEAD_MODULES.register(kind) and give it config() / from_config()")
    d = Path(directory)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    path = d / "head.safetensors"
    atomic_write_bytes(path, save(state, metadata={"format": HEAD_FORMAT, "kind": kind, **(metadata or {})}))
    return {"kind": kind, "config": module.config(), "file": path.name, "sha256": file_digest(path)}


def load_head(directory: str | Path, info: dict[str, Any]) -> nn.Module:
    """Rebuild a head from ``info`` (what :func:`save_head` returned) and the weights file in ``directory``, checked
    against its recorded digest.

    Raises:
        TransferkitError: unknown kind, a file missing, changed or outside ``directory``, or weights that do not fit.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    name = str(info.get("file", "head.safetensors"))
    path = d / name
    if Path(name).is_absolute() or ".." in Path(name).parts or Path(name).name != name:
        raise TransferkitError(f"{d}: the head file {name!r} is outside the run's model folder; a run only reads its "
                               "own files")
    if not path.is_file():
        raise TransferkitError(f"{path} is missing: the run's head weights are gone; fit the model again")
    if info.get("sha256") and file_digest(path) != info["sha256"]:
        raise TransferkitError(f"{path} does not match the digest recorded when the run was saved (the file is damaged "
                               "or was changed); fit the model again or restore the file")
    cls = HEAD_MODULES.get(str(info.get("kind")))
    try:
        module = cls.factory.from_config(dict(info.get("config") or {}))
        module.load_state_dict(load_file(str(path)), strict=True)
    except TransferkitError:
        raise
    except Exception as e:  # wrong shapes, missing keys, corrupt tensors
        raise TransferkitError(f"{path}: the head weights do not fit its recorded {info.get('kind')} configuration "
                               f"{json.dumps(info.get('config'))} ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
                               ) from e
    return module.eval()


def head_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored inside a head's weights file (empty when it cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - a damaged file is reported by load_head, which runs first
        return {}
