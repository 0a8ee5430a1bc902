"""The network the training engine fits: a backbone and a linear head, and the backbone's layer groups.

Layer groups are what strategies freeze, unfreeze and give learning rates to. They come from the backbone's
own library: timm's ``group_matcher()`` for image models (stem, stages, final layers), embeddings + encoder
layers for transformers encoders. No per-architecture lists live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from ..backbones.base import Backbone

__all__ = ["TransferModel", "LayerGroup", "layer_groups", "prepare_backbone", "parameter_counts"]


class TransferModel(nn.Module):
    """A backbone followed by a classification head (a new linear layer by default, or any head module).

    ``forward`` returns the same thing in training and evaluation mode: logits, or ``(logits, features)``
    when asked for the features (regularizers such as BSS need them).

    Args:
        backbone: any :class:`~transferkit.backbones.Backbone` (its forward gives ``(N, D)`` features).
        num_classes: number of target classes.
        dropout: dropout on the features before the head.
        head: a head module mapping ``(N, D)`` features to logits (default: ``nn.Linear(D, num_classes)``).

    Shape:
        forward: backbone input (``(N, 3, H, W)`` images or a dict of token tensors) -> ``(N, num_classes)``;
        with ``return_features=True`` -> ``((N, num_classes), (N, D))``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0, head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = head if head is not None else nn.Linear(int(backbone.num_features), self.num_classes)

    def forward(self, x: Any, return_features: bool = False):
        features = self.backbone(x)
        logits = self.head(self.dropout(features))
        return (logits, features) if return_features else logits


def prepare_backbone(backbone: Backbone) -> Backbone:
    """Make a backbone ready to be trained: drop a timm model's source classifier (unused by the features,
    and a parameter without gradient breaks DDP). Changes ``backbone`` in place and returns it."""
    model = getattr(backbone, "model", None)
    if model is not None and hasattr(model, "reset_classifier") and hasattr(model, "group_matcher"):
        model.reset_classifier(0)
    return backbone


@dataclass(frozen=True)
class LayerGroup:
    """A contiguous block of the backbone, from input to output order.

    Attributes:
        name: a readable name (``"stem"``, ``"blocks.3"``, ``"encoder.layer.5"``) used by ``freeze_until``.
        params: names of its parameters, relative to the backbone module.
    """

    name: str
    params: tuple[str, ...]


def layer_groups(backbone: Backbone, granularity: str = "coarse") -> tuple[list[LayerGroup], list[str]]:
    """The backbone's layer groups, input side first, and the parameters in none of them (unused ones).

    Image (timm) backbones use the model's ``group_matcher(coarse=...)`` through
    ``timm.models.group_parameters``: ``"coarse"`` gives stages, ``"fine"`` single blocks. Transformers
    encoders give ``embeddings`` then one group per encoder layer; a pooler (unused by mean pooling) is
    left out. Anything else is one group, ``"backbone"``.
    """
    model = getattr(backbone, "model", None)
    if model is not None and hasattr(model, "group_matcher"):
        return _timm_groups(model, granularity), []
    if model is not None and hasattr(model, "config") and hasattr(model.config, "hidden_size"):
        return _transformer_groups(backbone)
    names = tuple(n for n, _ in backbone.named_parameters())
    return ([LayerGroup("backbone", names)] if names else []), []


def _timm_groups(model: nn.Module, granularity: str) -> list[LayerGroup]:
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=granularity == "coarse")
    specs: list[tuple[str, re.Pattern, bool]] = []  # (key, pattern, belongs to the previous group)
    for key, spec in (matcher.items() if isinstance(matcher, dict) else []):
        for pat, suffix in ([(s[0], s[1]) for s in spec] if isinstance(spec, (list, tuple)) else [(spec, None)]):
            if pat:
                specs.append((key, re.compile(pat), suffix is not None))
    out: list[LayerGroup] = []
    seen: set[str] = set()
    for i, (_, names) in enumerate(sorted(group_parameters(model, matcher).items())):
        if not names:
            continue
        name = _group_name(names, specs)
        if name in seen:
            name = f"{name}#{i}"
        seen.add(name)
        out.append(LayerGroup(name, tuple(f"model.{n}" for n in names)))
    return out


def _group_name(names: list[str], specs: list[tuple[str, re.Pattern, bool]]) -> str:
    """Named after its first block (``"blocks.3"``, ``"layer2"``), or the matcher key (``"stem"``)."""
    key_name = None
    for n in names:
        for key, pat, prev in specs:
            m = pat.match(n)
            if m is None:
                continue
            if m.groups() and not prev:
                return m.group(0).rstrip(".")
            key_name = key_name or (key if not m.groups() else None)
            break
    return key_name or "head"


_HF_LAYER = re.compile(r"^(.*?\b(?:layer|layers|block|blocks|h)\.(\d+))\.")


def _transformer_groups(backbone: Backbone) -> tuple[list[LayerGroup], list[str]]:
    emb: list[str] = []
    layers: dict[int, tuple[str, list[str]]] = {}
    rest: list[str] = []
    unused: list[str] = []
    for name, _ in backbone.named_parameters():
        inner = name.split(".", 1)[1] if name.startswith("model.") else name
        m = _HF_LAYER.match(inner)
        if "embeddings" in inner.split(".")[:2]:
            emb.append(name)
        elif m:
            layers.setdefault(int(m.group(2)), (m.group(1), []))[1].append(name)
        elif inner.startswith("pooler"):
            unused.append(name)  # mean pooling does not use the [CLS] pooler
        else:
            rest.append(name)
    groups = [LayerGroup("embeddings", tuple(emb))] if emb else []
    groups += [LayerGroup(prefix, tuple(ps)) for _, (prefix, ps) in sorted(layers.items())]
    if rest:
        groups.append(LayerGroup("final", tuple(rest)))
    return groups, unused


def parameter_counts(model: nn.Module, trainable: Sequence[nn.Parameter]) -> dict[str, Any]:
    """``{"total", "trainable", "trainable_fraction"}`` of a model, given the parameters the optimizer trains."""
    total = sum(p.numel() for p in model.parameters())
    seen: set[int] = set()
    n = 0
    for p in trainable:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return {"total": int(total), "trainable": int(n), "trainable_fraction": float(n / total) if total else 0.0}
