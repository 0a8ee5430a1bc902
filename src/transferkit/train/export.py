"""Export a trained model (backbone + head) with its preprocessing, without pickle.

Formats:

- ``safetensors``: the weights, plus ``<file>.json`` with the backbone (name, timm architecture), classes and
  preprocessing. :func:`load_exported` rebuilds the model from the two files.
- ``onnx``: ``torch.onnx.export``; the file is run under onnxruntime and compared with PyTorch before the
  export counts as done. Input ``images`` ``(batch, 3, H, W)``, normalised as the JSON says (text models:
  ``input_ids``, ``attention_mask``[, ``token_type_ids``]); output ``logits`` ``(batch, C)``.
- ``torchscript``: ``torch.jit.trace``, reloaded and compared with PyTorch.

Every file is written to a temporary name and renamed into place. Each format gets a ``<file>.json``
sidecar with the preprocessing, so the exported model can be used without transferkit.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._io import atomic_write, atomic_write_bytes
from ..errors import ExportError, TransferkitError

__all__ = ["export_model", "load_exported", "EXPORT_FORMATS", "EXPORT_FORMAT", "PositionalInputs", "write_verified",
           "quiet_export"]

EXPORT_FORMAT = "transferkit-finetuned/1"
EXPORT_FORMATS = ("safetensors", "onnx", "torchscript")
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_model(model: nn.Module, preprocessing: dict[str, Any], classes: Sequence[str], path: str | Path,
                 format: str = "safetensors", *, verify: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a :class:`~transferkit.train.model.TransferModel`) to ``path`` in ``format``.

    Args:
        model: backbone + head; its forward maps a normalised image batch (or token tensors) to logits.
        preprocessing: how inputs are prepared (timm data config: ``input_size``, ``mean``, ``std``,
            ``interpolation``, ``crop_pct``, ...; or the tokenizer settings of a text model).
        classes: class names, in the order of the logits.
        path: the file to write; ``<path>.json`` gets the metadata.
        format: ``"safetensors"``, ``"onnx"`` or ``"torchscript"``.
        verify: ONNX / TorchScript: run the exported file on a fresh batch and compare with PyTorch.
        extra: more JSON fields for the metadata (strategy, config hash, ...).

    Returns:
        ``path``.

    Raises:
        ExportError: the export failed, or the exported model's outputs differ from PyTorch's.
    """
    if format not in EXPORT_FORMATS:
        raise TransferkitError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    path = Path(path).expanduser()
    num_classes = int(getattr(model, "num_classes", 0) or 0) or len(classes)
    if len(classes) != num_classes:
        raise TransferkitError(f"{len(classes)} class names for a model with {num_classes} outputs")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = _metadata(model, preprocessing, classes, format, extra or {})
    was_training = model.training
    model.eval()
    try:
        if format == "safetensors":
            from safetensors.torch import save

            state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
            atomic_write_bytes(path, save(state, metadata={"format": EXPORT_FORMAT, "meta": json.dumps(meta)}))
        else:
            example, check, names, axes = _examples(model, preprocessing, meta)
            wrapper = PositionalInputs(model, names if meta["modality"] == "text" else None).eval()
            if format == "onnx":
                meta["verified_max_abs_diff"] = _onnx(wrapper, example, check, names, axes, path, verify)
            else:
                meta["verified_max_abs_diff"] = _torchscript(wrapper, example, check, path, verify)
    finally:
        model.train(was_training)
    atomic_write_bytes(path.with_name(path.name + ".json"), json.dumps(meta, indent=2, default=str).encode())
    return path


def load_exported(path: str | Path):
    """Rebuild a :class:`~transferkit.train.model.TransferModel` from a safetensors export (eval mode).

    Image models are rebuilt from their timm architecture (no download); text models from their backbone
    name (for the tokenizer).

    Returns:
        ``(model, metadata)``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .model import TransferModel, prepare_backbone

    path = Path(path).expanduser()
    if not path.is_file():
        raise TransferkitError(f"exported model not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
        state = load_file(str(path))
    except Exception as e:  # corrupt or foreign files fail in many ways
        raise TransferkitError(f"cannot read {path} ({type(e).__name__}: {e})") from e
    if header.get("format") != EXPORT_FORMAT:
        raise TransferkitError(f"{path} is not a transferkit fine-tuned model (format {header.get('format')!r}, "
                               f"expected {EXPORT_FORMAT!r})")
    meta = json.loads(header["meta"])
    bb_meta = meta["backbone"]
    if meta["modality"] == "image" and bb_meta.get("arch"):
        import timm

        from ..backbones.vision import TimmBackbone

        from ..data.views import ImagePreprocessing

        net = timm.create_model(bb_meta["arch"], pretrained=False)
        bb = TimmBackbone(net, name=bb_meta["name"], arch=bb_meta["arch"], source=f"fine-tuned ({path.name})",
                          preprocessing=ImagePreprocessing.from_timm(meta["preprocessing"]))
    else:
        from ..backbones import create_backbone

        bb = create_backbone(bb_meta["name"])
    prepare_backbone(bb)
    model = TransferModel(bb, meta["num_classes"])
    model.load_state_dict(state, strict=True)
    return model.eval(), meta


# ---------------------------------------------------------------------------------------------------------
def _metadata(model: nn.Module, preprocessing: dict[str, Any], classes: Sequence[str], format: str,
              extra: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__

    bb = getattr(model, "backbone", None)
    modality = getattr(bb, "modality", "image")
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT, "file_format": format, "modality": modality,
        "classes": [str(c) for c in classes], "num_classes": len(classes),
        "backbone": {"name": getattr(bb, "name", ""), "class": type(bb).__name__ if bb is not None else None,
                     "arch": getattr(bb, "arch", None), "num_features": getattr(bb, "num_features", None)},
        "preprocessing": json.loads(json.dumps(preprocessing, default=list)),
        "output": {"name": "logits", "shape": ["batch", len(classes)], "note": "apply softmax for probabilities"},
        "transferkit": __version__, "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if modality == "image":
        size = list(preprocessing.get("input_size", (3, 224, 224)))[-3:]
        meta["input"] = {"name": "images", "shape": ["batch", *size], "dtype": "float32", "layout": "NCHW",
                         "note": "RGB resized/cropped per preprocessing, scaled to [0, 1], then (x - mean) / std"}
    else:
        meta["input"] = {"names": "tokenizer outputs", "dtype": "int64", "shape": ["batch", "sequence"]}
    meta.update(json.loads(json.dumps(extra, default=str)))
    return meta


class PositionalInputs(nn.Module):
    """Positional tensors in, logits out (what tracers need)."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None):
        super().__init__()
        self.model = model
        self.names = list(names) if names else None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.names is None:
            return self.model(inputs[0])
        return self.model(dict(zip(self.names, inputs)))


def _examples(model: nn.Module, preprocessing: dict[str, Any], meta: dict[str, Any]):
    """(trace inputs, other inputs to verify with, input names, dynamic axes)."""
    g = torch.Generator().manual_seed(0)
    if meta["modality"] == "image":
        c, h, w = list(preprocessing.get("input_size", (3, 224, 224)))[-3:]
        example = (torch.randn(2, c, h, w, generator=g),)
        check = (torch.randn(3, c, h, w, generator=g),)
        return example, check, ["images"], {"images": {0: "batch"}, "logits": {0: "batch"}}
    bb = model.backbone
    a = bb.collate(["a short example sentence", "another one"])
    b = bb.collate(["a third, rather longer sentence to check other lengths work", "x", "the end"])
    names = [k for k in _TEXT_INPUTS if k in a]
    if not names or set(a) - set(names):
        raise ExportError(f"ONNX/TorchScript export of text backbone {bb.name!r} is not supported (its inputs are "
                          f"{sorted(a)}); export it as safetensors")
    meta["input"] = {"names": names, "dtype": "int64", "shape": ["batch", "sequence"],
                     "note": "the backbone's tokenizer outputs (see preprocessing)"}
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    return tuple(a[n] for n in names), tuple(b[n] for n in names), names, axes


def _close(ref: torch.Tensor, got: np.ndarray, what: str) -> float:
    got_t = torch.as_tensor(np.asarray(got), dtype=torch.float32)
    if got_t.shape != ref.shape:
        raise ExportError(f"the {what} model gives shape {tuple(got_t.shape)}, PyTorch {tuple(ref.shape)}")
    diff = float((got_t - ref).abs().max()) if ref.numel() else 0.0
    tol = 1e-4 + 1e-3 * float(ref.abs().max()) if ref.numel() else 0.0
    if not diff <= tol:
        raise ExportError(f"the {what} model's outputs differ from PyTorch's by up to {diff:.3g} "
                          f"(tolerance {tol:.3g}); the export is not faithful for this architecture")
    return diff


@contextlib.contextmanager
def quiet_export():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        try:
            from torch.jit import TracerWarning

            warnings.simplefilter("ignore", category=TracerWarning)
        except ImportError:
            pass
        yield


def write_verified(path: Path, what: str, write: Callable[[Path], float | None]) -> float | None:
    """Run ``write(tmp)`` (export to ``tmp`` and verify it, returning the verified difference) and rename the
    file into place only when that succeeded; exporter failures become one clear :class:`ExportError`."""
    diff: list[float | None] = [None]

    def run(tmp: Path) -> None:
        diff[0] = write(tmp)

    try:
        atomic_write(path, run)
    except ExportError:
        raise
    except Exception as e:  # exporters and tracers fail with many error types
        raise ExportError(f"{what} export failed ({type(e).__name__}: {_first_line(e)})") from e
    return diff[0]


def _onnx(wrapper: nn.Module, example: tuple, check: tuple, names: list[str], axes: dict, path: Path,
          verify: bool) -> float | None:
    def write(tmp: Path) -> float | None:
        with quiet_export(), torch.no_grad():
            # the TorchScript-based exporter: the torch.export-based one needs the onnxscript package
            torch.onnx.export(wrapper, example, str(tmp), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
        if not verify:
            return None
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("verifying an ONNX export needs onnxruntime: pip install onnxruntime "
                              "(or pass verify=False)") from e
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], {n: t.numpy() for n, t in zip(names, check)})[0]
        with torch.no_grad():
            ref = wrapper(*check).float()
        return _close(ref, got, "ONNX")

    return write_verified(path, "ONNX", write)


def _torchscript(wrapper: nn.Module, example: tuple, check: tuple, path: Path, verify: bool) -> float | None:
    def write(tmp: Path) -> float | None:
        with quiet_export(), torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
        if not verify:
            return None
        with quiet_export(), torch.no_grad():
            loaded = torch.jit.load(str(tmp), map_location="cpu")
            got = loaded(*check).float().numpy()
            ref = wrapper(*check).float()
        return _close(ref, got, "TorchScript")

    return write_verified(path, "TorchScript", write)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:300] if str(e) else ""
