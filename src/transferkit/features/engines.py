"""Inference engines for feature extraction and prediction: eager PyTorch, channels-last, ONNX Runtime.

An **engine** runs a backbone's forward pass over batches of prepared inputs and returns float32 features.

- ``torch``: the backbone as it is (eager PyTorch). On a GPU: channels-last images, pinned host memory, and with
  ``precision="bf16"`` or ``"16"`` autocast.
- ``onnx``: the backbone exported once to ONNX (``<cache>/engines/<backbone key>/model.onnx``, written atomically)
  and run by ONNX Runtime; the session is kept for the life of the process. Needs the ``onnx`` extra
  (``pip install transferkit[onnx]``).
- ``auto`` (the default): the fastest of eager PyTorch, channels-last PyTorch and ONNX Runtime whose features
  match eager PyTorch within :data:`TOLERANCE` on a check batch. The check (export, comparison, timing) runs once
  per backbone, device and thread count, and its outcome is remembered in ``<cache>/engines/<backbone key>/``.
  With fewer than :data:`AUTO_MIN_ITEMS` items to extract and no remembered check, ``auto`` runs eager PyTorch
  (exporting would cost more than it saves).

Precision: ``"32"`` (default), ``"bf16"`` / ``"16"`` (autocast, mostly for GPUs) or ``"int8"`` (CPU, opt-in: dynamic
int8 quantisation of the ONNX model's matrix products and convolutions by ONNX Runtime, or of the ``Linear`` layers by
PyTorch under ``engine="torch"``). Engines at ``"32"`` that pass the check give the same features within the
tolerance and share one cache key; any other precision, or an ONNX model that fails the check, gets its own cache key
(:func:`engine_key`), so features that differ are never mixed.

References:
    ONNX Runtime (Microsoft, https://onnxruntime.ai); Jacob et al., "Quantization and Training of Neural Networks
    for Efficient Integer-Arithmetic-Only Inference", CVPR 2018 (int8 quantisation).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .._io import atomic_write
from ..errors import TransferkitError, TransferkitWarning

__all__ = ["ENGINES", "FEATURE_PRECISIONS", "TOLERANCE", "AUTO_MIN_ITEMS", "MAX_SESSIONS", "Engine", "TorchEngine",
           "OnnxEngine", "resolve_engine", "build_variant", "engine_folder", "cache_key", "to_device",
           "check_engine_options", "features_close", "onnx_available"]

ENGINES = ("auto", "torch", "onnx")
FEATURE_PRECISIONS = ("32", "bf16", "16", "int8")
#: features of another engine match eager PyTorch when max |a - b| <= atol + rtol * max |eager| on the check batch
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}
#: below this many items to extract, ``auto`` does not export a backbone it has not checked yet
AUTO_MIN_ITEMS = 256
_CHECK_BATCH = 8
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_SAMPLE_TEXTS = ["a short example sentence", "another one, with a comma", "x",
                 "the third sentence is rather longer than the others, to check other lengths work",
                 "numbers 1 2 3 and symbols !?", "the end", "yet another text for the batch", "final words"]


def check_engine_options(engine: str, precision: str) -> None:
    """Raise a clear error for an unknown engine or precision (before any work)."""
    if engine not in ENGINES:
        raise TransferkitError(f"engine={engine!r} is not an engine; choose one of {', '.join(ENGINES)}")
    if str(precision) not in FEATURE_PRECISIONS:
        raise TransferkitError(f"feature_precision={precision!r} is not a feature precision; choose one of "
                               f"{', '.join(FEATURE_PRECISIONS)}")


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's dependency are installed (the ``onnx`` extra)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def features_close(ref: np.ndarray, got: np.ndarray) -> tuple[bool, float, float]:
    """Whether ``got`` matches ``ref`` within :data:`TOLERANCE`; returns ``(match, max abs diff, tolerance)``."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return False, float("inf"), 0.0
    diff = float(np.abs(ref - got).max()) if ref.size else 0.0
    tol = TOLERANCE["atol"] + TOLERANCE["rtol"] * (float(np.abs(ref).max()) if ref.size else 0.0)
    return bool(diff <= tol), diff, tol


# ---------------------------------------------------------------------------------------------------------------
class Engine:
    """Runs a backbone on batches: ``engine(inputs) -> (N, D) float32 numpy``.

    Attributes:
        name: ``torch`` or ``onnx``.
        variant: what exactly runs (``eager``, ``channels-last``, ``onnxruntime``, ...).
        precision: ``32``, ``bf16``, ``16`` or ``int8``.
        check: the outcome of the comparison with eager PyTorch (None when not checked).
    """

    name = ""
    variant = ""
    precision = "32"
    check: dict[str, Any] | None = None
    pin_memory = False
    items_per_s: float | None = None  # measured by ``auto`` (used to size the data-loading workers)

    def __call__(self, inputs: Any) -> np.ndarray:
        raise NotImplementedError

    @contextlib.contextmanager
    def session(self) -> Iterator["Engine"]:
        """Prepare for a run of batches (device, memory format) and undo it afterwards."""
        yield self

    def describe(self) -> str:
        """One line: engine, variant, precision."""
        return f"{self.name} ({self.variant}, precision {self.precision})"


class TorchEngine(Engine):
    """Eager PyTorch: the reference. ``channels_last`` (images) and autocast for ``bf16`` / ``16``; ``int8``
    quantises the ``Linear`` layers dynamically (``torch.ao.quantization.quantize_dynamic``, CPU)."""

    name = "torch"

    def __init__(self, backbone: Any, device: torch.device, precision: str = "32", channels_last: bool = False):
        self.backbone, self.device, self.precision = backbone, torch.device(device), str(precision)
        self.channels_last = bool(channels_last) and backbone.modality == "image"
        self.variant = "channels-last" if self.channels_last else "eager"
        self.pin_memory = self.device.type == "cuda"
        self._module = backbone
        if self.precision == "int8":
            if self.device.type != "cpu":
                raise TransferkitError("feature_precision='int8' (dynamic quantisation) runs on the CPU; use device='cpu', "
                                       "or feature_precision='bf16' on a GPU")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import copy

                self._module = torch.ao.quantization.quantize_dynamic(copy.deepcopy(backbone).eval(),
                                                                      {torch.nn.Linear}, dtype=torch.qint8)
            self.variant = "dynamic-int8 (Linear layers)"

    @contextlib.contextmanager
    def session(self) -> Iterator["TorchEngine"]:
        self._module.to(self.device).eval()
        if self.channels_last:
            self._module.to(memory_format=torch.channels_last)
        try:
            yield self
        finally:
            if self.channels_last:
                self._module.to(memory_format=torch.contiguous_format)

    def __call__(self, inputs: Any) -> np.ndarray:
        x = to_device(inputs, self.device)
        if self.channels_last and isinstance(x, torch.Tensor):
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            return self._module(x).float().cpu().numpy()


#: ONNX Runtime sessions by model file, most recently used last. Bounded: each holds its memory arena (about 1.5 GB
#: for lite0 at batch 64), and every augmented view of a backbone is its own cache key and model file, so an unbounded
#: cache held one session per view (17 views of clipart reached the machine's 24 GB)
_SESSIONS: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
#: sessions kept alive at once (a process alternating between two models does not rebuild them)
MAX_SESSIONS = 2


class OnnxEngine(Engine):
    """The backbone exported once to ONNX and run by ONNX Runtime (CPU provider; CUDA when onnxruntime-gpu is
    installed). ``int8``: ONNX Runtime's dynamic quantisation of the exported model (a second cached file)."""

    name = "onnx"

    def __init__(self, backbone: Any, folder: Path, device: torch.device, precision: str = "32"):
        if not onnx_available():
            raise TransferkitError("engine='onnx' needs ONNX Runtime: pip install 'transferkit[onnx]' (or use "
                                   "engine='torch')")
        import onnxruntime as ort

        self.backbone, self.folder, self.device, self.precision = backbone, Path(folder), torch.device(device), str(precision)
        if self.precision in ("bf16", "16"):
            raise TransferkitError(f"engine='onnx' runs feature_precision 32 or int8; for feature_precision="
                                   f"{self.precision!r} use engine='torch' (autocast on a GPU)")
        self.providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TransferkitError("engine='onnx' on a GPU needs onnxruntime-gpu (pip install onnxruntime-gpu); "
                                       "or use engine='torch' there")
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif self.device.type != "cpu":
            raise TransferkitError(f"engine='onnx' runs on the CPU or a CUDA GPU, not on {self.device.type}; use "
                                   "engine='torch'")
        self.variant = "onnxruntime" + (" dynamic-int8" if self.precision == "int8" else "")
        self.path = self._model_file()
        self._names: list[str] | None = None

    def _model_file(self) -> Path:
        path = self.folder / "model.onnx"
        if not path.is_file():
            _export_backbone(self.backbone, path)
        if self.precision != "int8":
            return path
        q = self.folder / "model-int8.onnx"
        if not q.is_file():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            def write(tmp: Path) -> None:
                import logging

                root = logging.getLogger()
                level = root.level
                root.setLevel(logging.ERROR)  # the quantiser logs a warning per tensor it leaves in float
                try:
                    with _quiet():
                        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
                finally:
                    root.setLevel(level)

            atomic_write(q, write)
        return q

    def _session(self) -> Any:
        import onnxruntime as ort

        threads = torch.get_num_threads()
        real = self.path.resolve()  # one session per model file, however the cache folder was reached
        key = (str(real), real.stat().st_mtime_ns, threads, tuple(self.providers))
        sess = _SESSIONS.get(key)
        if sess is not None:
            _SESSIONS.move_to_end(key)
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting on shared CPUs
            sess = _SESSIONS[key] = ort.InferenceSession(str(self.path), opts, providers=self.providers)
            while len(_SESSIONS) > MAX_SESSIONS:
                _SESSIONS.popitem(last=False)  # the least recently used; freed once no engine call holds it
        return sess

    def __call__(self, inputs: Any) -> np.ndarray:
        sess = self._session()
        if self._names is None:
            self._names = [i.name for i in sess.get_inputs()]
        if isinstance(inputs, torch.Tensor):
            feed = {self._names[0]: inputs.detach().cpu().float().numpy()}
        else:
            feed = {n: inputs[n].detach().cpu().numpy().astype(np.int64) for n in self._names}
        return np.asarray(sess.run(None, feed)[0], dtype=np.float32)


def _quiet():
    from ..train.export import quiet_export

    return quiet_export()


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, or dict of tensors such as tokenizer outputs) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def check_inputs(backbone: Any, n: int = _CHECK_BATCH) -> Any:
    """A fixed batch of model inputs for the check (seeded noise images at the backbone's size; sample texts)."""
    if backbone.modality == "image":
        s = int(backbone.preprocessing.input_size)
        return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(0))
    return backbone.collate((_SAMPLE_TEXTS * (n // len(_SAMPLE_TEXTS) + 1))[:n])


def _export_backbone(backbone: Any, path: Path) -> None:
    """``torch.onnx.export`` of a backbone (features out), written atomically; text encoders take their tokenizer's
    tensors (``input_ids``, ``attention_mask``[, ``token_type_ids``])."""
    from ..errors import ExportError
    from ..train.export import PositionalInputs, write_verified

    example = check_inputs(backbone, 2)
    if isinstance(example, torch.Tensor):
        names, args = ["images"], (example,)
        axes = {"images": {0: "batch"}, "features": {0: "batch"}}
    else:
        if not isinstance(example, dict) or not set(example) <= set(_TEXT_INPUTS) or "input_ids" not in example:
            raise ExportError(f"backbone {backbone.name!r} cannot run under engine='onnx' (its inputs are "
                              f"{sorted(example) if isinstance(example, dict) else type(example).__name__}); use "
                              "engine='torch'")
        names = [k for k in _TEXT_INPUTS if k in example]
        args = tuple(example[k] for k in names)
        axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"features": {0: "batch"}}
    wrapper = PositionalInputs(backbone.cpu().eval(), names if backbone.modality == "text" else None).eval()
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with _quiet(), torch.no_grad():
            torch.onnx.export(wrapper, args, str(tmp), input_names=names, output_names=["features"],
                              dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)

    write_verified(path, "ONNX", write)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Choice:
    engine: Engine
    key: dict[str, Any] = field(default_factory=dict)


def cache_key(backbone: Any, engine: dict[str, Any] | None = None) -> str:
    """``<name>-<16 hex digits>``: a hash of the backbone's identity (name, weights, preprocessing), the package
    version, and the engine and precision when they change the features (what :func:`resolve_engine` adds)."""
    from .. import __version__

    doc: dict[str, Any] = {"identity": backbone.identity(), "transferkit": __version__}
    if engine:
        doc["engine"] = engine
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in backbone.name)[:40]
    return f"{slug}-{hashlib.sha256(blob).hexdigest()[:16]}"


def engine_folder(root: Path, backbone: Any) -> Path:
    """Where a backbone's exported models and remembered checks live: ``<cache>/engines/<backbone key>`` (the key of
    its features at precision 32)."""
    return Path(root) / "engines" / cache_key(backbone)


def _interleaved_speeds(engines: list[Engine], inputs: Any, rounds: int = 3) -> list[float]:
    """Items/s of each engine on ``inputs``: ``rounds`` alternating rounds (one call of each engine per round, after
    one warm-up call each), best time per engine, so that load from other processes hits them alike."""
    n = int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) else int(inputs["input_ids"].shape[0])
    best = [float("inf")] * len(engines)
    for r in range(rounds + 1):
        for k, e in enumerate(engines):
            with e.session():
                t = time.perf_counter()
                e(inputs)
                if r:  # round 0 warms up
                    best[k] = min(best[k], time.perf_counter() - t)
    return [n / b for b in best]


def _check(engine: Engine, reference: TorchEngine, folder: Path) -> dict[str, Any]:
    """Compare ``engine`` with eager PyTorch on the check batch (remembered in ``folder``)."""
    tag = f"{engine.variant}-{engine.precision}-{engine_device_tag(engine)}-t{torch.get_num_threads()}"
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    path = folder / f"check-{tag}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    inputs = check_inputs(engine.backbone)
    with reference.session():
        ref = reference(inputs)
    with engine.session():
        got = engine(inputs)
    match, diff, tol = features_close(ref, got)
    rec = {"engine": engine.name, "variant": engine.variant, "precision": engine.precision, "match": match,
           "max_abs_diff": diff, "tolerance": tol, "rule": f"max|a-b| <= {TOLERANCE['atol']} + "
                                                              f"{TOLERANCE['rtol']} * max|eager|",
           "batch": _CHECK_BATCH, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    folder.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda p: p.write_text(json.dumps(rec, indent=1)))
    except OSError:
        pass
    return rec


def engine_device_tag(engine: Engine) -> str:
    """``cpu`` / ``cuda`` (checks are remembered per device type)."""
    return engine.device.type


def resolve_engine(backbone: Any, engine: str = "auto", *, device: torch.device, precision: str = "32",
                   cache_root: Path, items: int | None = None, log: Any = None,
                   sample: Callable[[], Any] | None = None) -> _Choice:
    """The engine that extracts ``backbone``'s features, and what it adds to the cache key.

    Args:
        engine: ``auto``, ``torch`` or ``onnx`` (see the module's docstring).
        device: where it runs.
        precision: ``32``, ``bf16``, ``16`` or ``int8``.
        cache_root: the feature cache's root (exported models and remembered checks go under ``engines/``).
        items: how many items are to be extracted (None: unknown); ``auto`` skips an unchecked export below
            :data:`AUTO_MIN_ITEMS`.
        sample: returns a batch of the data to be extracted (model inputs); ``auto`` times the candidates on it
            (text lengths, image sizes as they will be), else on the fixed check batch.

    Raises:
        TransferkitError: an unknown engine or precision, or one this device / installation cannot run.
    """
    check_engine_options(engine, precision)
    precision = str(precision)
    device = torch.device(device)
    folder = engine_folder(cache_root, backbone)
    say = log or (lambda m: None)
    if engine == "torch":
        eng: Engine = TorchEngine(backbone, device, precision, channels_last=device.type == "cuda")
        return _Choice(eng, _key(eng))
    if engine == "onnx":
        eng = OnnxEngine(backbone, folder, device, precision)
        if precision == "32":
            rec = _check(eng, TorchEngine(backbone, device), folder)
            eng.check = rec
            if not rec["match"]:
                warnings.warn(f"engine='onnx': backbone {backbone.name!r} differs from eager PyTorch by up to "
                              f"{rec['max_abs_diff']:.3g} (tolerance {rec['tolerance']:.3g}); its features are cached "
                              "under their own key", TransferkitWarning, stacklevel=2)
                return _Choice(eng, {"engine": "onnx", "precision": precision, "unverified": True})
        return _Choice(eng, _key(eng))
    # auto
    if precision in ("bf16", "16") or (device.type not in ("cpu", "cuda")):
        eng = TorchEngine(backbone, device, precision, channels_last=device.type == "cuda")
        return _Choice(eng, _key(eng))
    if precision == "int8":
        eng = OnnxEngine(backbone, folder, device, precision) if _exportable(backbone) and device.type == "cpu" \
            else TorchEngine(backbone, device, precision)
        return _Choice(eng, _key(eng))
    remembered = folder / f"auto-{device.type}-t{torch.get_num_threads()}.json"
    eager = TorchEngine(backbone, device)
    if remembered.is_file():
        try:
            rec = json.loads(remembered.read_text())
            eng = build_variant(rec["choice"], backbone, folder, device)
            eng.items_per_s = next((c["items_per_s"] for c in rec["candidates"] if c["variant"] == rec["choice"]), None)
            return _Choice(eng, {})
        except (OSError, ValueError, KeyError, TransferkitError):
            pass
    exportable = _exportable(backbone) and (device.type == "cpu" or _ort_cuda())
    if (items is not None and items < AUTO_MIN_ITEMS) or (backbone.modality != "image" and not exportable):
        return _Choice(eager, {})  # too little work to pay for a check, or nothing to choose from
    candidates: list[Engine] = [eager]
    if backbone.modality == "image":
        candidates.append(TorchEngine(backbone, device, channels_last=True))
    if exportable:
        try:
            candidates.append(OnnxEngine(backbone, folder, device))
        except Exception as e:  # noqa: BLE001 - an export failure only removes the candidate
            say(f"engine auto: ONNX export of {backbone.name} failed ({type(e).__name__}: {e}); not a candidate")
    checks = [_check(cand, eager, folder) for cand in candidates]
    batch = None
    if sample is not None:
        try:
            batch = sample()
        except Exception:  # noqa: BLE001 - unreadable items: time on the fixed batch instead
            batch = None
    speeds = _interleaved_speeds(candidates, batch if batch is not None else check_inputs(backbone))
    results = [{"variant": cand.variant, "engine": cand.name, "match": rec["match"],
                "max_abs_diff": rec["max_abs_diff"], "items_per_s": ips}
               for cand, rec, ips in zip(candidates, checks, speeds)]
    for cand, r in zip(candidates, results):
        cand.items_per_s = r["items_per_s"]
    ok = [(r["items_per_s"], i) for i, r in enumerate(results) if r["match"]]
    best = candidates[max(ok)[1]] if ok else eager
    record = {"choice": best.variant, "candidates": results, "tolerance": TOLERANCE,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(remembered, lambda p: p.write_text(json.dumps(record, indent=1)))
    except OSError:
        pass
    say(f"engine auto: {best.describe()} for {backbone.name} (" + ", ".join(
        f"{r['variant']} {r['items_per_s']:.0f}/s{'' if r['match'] else ' (no match)'}" for r in results) + ")")
    return _Choice(best, {})


def build_variant(variant: str, backbone: Any, folder: Path, device: torch.device) -> Engine:
    """The precision-32 engine named by a remembered ``variant`` (``eager``, ``channels-last``, ``onnxruntime``)."""
    if variant == "onnxruntime":
        return OnnxEngine(backbone, folder, device)
    return TorchEngine(backbone, device, channels_last=variant == "channels-last")


def _key(engine: Engine) -> dict[str, Any]:
    """Cache-key additions: none for precision 32 (verified engines give the same features); else engine and
    precision."""
    return {} if engine.precision == "32" else {"engine": engine.name, "precision": engine.precision}


def _exportable(backbone: Any) -> bool:
    if not onnx_available():
        return False
    if backbone.modality == "image":
        return True
    try:
        ex = check_inputs(backbone, 2)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(ex, dict) and "input_ids" in ex and set(ex) <= set(_TEXT_INPUTS)


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()
