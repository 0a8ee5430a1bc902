"""CLIP-style image-text models (transformers ``CLIPModel``): the image tower as an image backbone, the text tower
for class prompts, so zero-shot classification is prompt similarity in one embedding space.

``clip:<repo or folder>`` loads ``CLIPModel`` and ``CLIPProcessor`` (e.g. ``clip:openai/clip-vit-base-patch32``:
it needs the Hugging Face hub or the model in the local cache; offline it fails at once with a clear message). No
CLIP-like model installs offline here; the tests build a tiny random one from a small ``CLIPConfig``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.views import ImagePreprocessing
from ..errors import BackboneUnavailableError
from .base import BACKBONE_KINDS, Backbone

__all__ = ["CLIPBackbone", "clip_model", "clip_preprocessing"]

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _size(value: Any, *keys: str) -> int | None:
    for k in keys:
        v = value.get(k) if isinstance(value, dict) else getattr(value, k, None)
        if v:
            return int(v)
    return int(value) if isinstance(value, int) else None


def clip_preprocessing(image_processor: Any) -> ImagePreprocessing:
    """The image processor's settings as transferkit's typed preprocessing: resize the short side, centre-crop to
    the model's input size, normalise with CLIP's mean and std."""
    crop = _size(getattr(image_processor, "crop_size", None) or {}, "height", "shortest_edge") or 224
    short = _size(getattr(image_processor, "size", None) or {}, "shortest_edge", "height") or crop
    do_crop = bool(getattr(image_processor, "do_center_crop", True))
    resample = getattr(image_processor, "resample", 3)
    interp = _RESAMPLE.get(int(getattr(resample, "value", resample)), "bicubic")
    return ImagePreprocessing(input_size=crop, interpolation=interp, crop_pct=(crop / short) if do_crop else 1.0,
                              crop_mode="center" if do_crop else "squash",
                              mean=tuple(float(v) for v in image_processor.image_mean),
                              std=tuple(float(v) for v in image_processor.image_std))


def _pooled(out: Any) -> torch.Tensor:
    """``get_image_features`` / ``get_text_features`` return a tensor (transformers 4) or an output whose
    ``pooler_output`` holds the projected embedding (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@BACKBONE_KINDS.register("clip")
class CLIPBackbone(Backbone):
    """The image tower of a CLIP model (projected image embeddings) as an image backbone, with its text tower
    behind :meth:`encode_text` and its learnt temperature behind :meth:`logit_scale`.

    References:
        Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021.

    Shape:
        forward: ``(N, 3, S, S)`` -> ``(N, projection_dim)``; encode_text: ``N`` texts -> ``(N, projection_dim)``.
    """

    modality = "image"
    kind = "clip"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, name: str, source: str):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        self.source = source
        self.num_features = int(model.config.projection_dim)
        self.preprocessing = clip_preprocessing(image_processor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class
        return _pooled(self.model.get_image_features(pixel_values=x))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings of ``texts`` (the text tower)."""
        max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return _pooled(self.model.get_text_features(input_ids=batch["input_ids"].to(device),
                                                        attention_mask=batch["attention_mask"].to(device)))

    def logit_scale(self) -> float:
        """CLIP's learnt inverse temperature ``exp(logit_scale)``."""
        return float(self.model.logit_scale.detach().exp())

    def config(self) -> dict[str, Any]:
        return {}

    def _save_files(self, directory: Path) -> list[str]:
        self.model.config.save_pretrained(str(directory))
        written = [Path(p).name for p in self.tokenizer.save_pretrained(str(directory))]
        self.image_processor.save_pretrained(str(directory))
        names = {"config.json", "preprocessor_config.json", *written}
        return sorted(n for n in names if (directory / n).is_file())

    @classmethod
    def from_saved(cls, directory: Path, meta: dict[str, Any]) -> "CLIPBackbone":
        try:
            from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel
        except ImportError as e:
            raise BackboneUnavailableError("clip backbones need transformers: pip install 'transferkit[text]'") from e
        model = CLIPModel(CLIPConfig.from_pretrained(str(directory)))
        return cls(model, AutoTokenizer.from_pretrained(str(directory)),
                   CLIPImageProcessor.from_pretrained(str(directory)), name=str(meta.get("name", "")),
                   source=str(meta.get("source", "")))


def clip_model(repo: str) -> CLIPBackbone:
    """``clip:<repo or folder>``: a transformers ``CLIPModel`` with its processor, from the hub (needs internet or
    the local cache) or a local folder (``save_pretrained`` of the model and the processor).

    Raises:
        BackboneUnavailableError: transformers missing, or the model cannot be loaded (offline, wrong folder).
    """
    try:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
    except ImportError as e:
        raise BackboneUnavailableError("clip backbones need transformers: pip install 'transferkit[text]'") from e
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from ._hub import offline_unless_reachable

    try:
        if os.path.isdir(repo):
            parts = (CLIPModel.from_pretrained(repo), AutoTokenizer.from_pretrained(repo),
                     CLIPImageProcessor.from_pretrained(repo))
        else:
            with offline_unless_reachable():
                parts = (CLIPModel.from_pretrained(repo), AutoTokenizer.from_pretrained(repo),
                         CLIPImageProcessor.from_pretrained(repo))
    except Exception as e:  # hub, file and format errors come in many types
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise BackboneUnavailableError(
            f"could not load the CLIP model {repo!r} ({type(e).__name__}: {msg}). A hub name needs internet access or "
            "the model in the local HF cache; a folder needs CLIPModel's and CLIPProcessor's save_pretrained files"
        ) from e
    return CLIPBackbone(*parts, name=f"clip:{repo}", source=repo)
