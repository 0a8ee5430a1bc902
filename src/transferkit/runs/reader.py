"""Reading run directories back: :func:`load_run` and :class:`Run` (predict, the whole network for export).

A run only reads files inside itself, each checked against the SHA-256 recorded when it was written, and a backbone
either by a registered name that reads no files (its weights digest checked) or from the folder the run saved; a
damaged or edited run is refused with a message naming the file, never used silently. No pickle is involved.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import BadInputError, TransferkitError, bad_inputs_message
from .writer import MODEL_FORMAT

__all__ = ["Run", "load_run"]

_OLD_FORMAT = "transferkit-head/1"


class Run:
    """A finished run loaded from disk: its config, metrics, and the model for prediction.

    Use :func:`load_run` to get one.
    """

    def __init__(self, path: Path):
        self.path = path
        self.config: dict[str, Any] = _read_json(path / "config.json", required=False) or {}
        self.metrics: dict[str, Any] = _read_json(path / "metrics.json", required=False) or {}
        self.model_info: dict[str, Any] = _read_json(path / "model" / "model.json")
        fmt = self.model_info.get("format")
        if fmt not in (MODEL_FORMAT, _OLD_FORMAT):
            raise TransferkitError(f"{path}/model/model.json is not a transferkit model (format {fmt!r}, expected "
                                   f"{MODEL_FORMAT!r})")
        classes = self.model_info.get("classes")
        if not isinstance(classes, list) or len(classes) < 2:
            raise TransferkitError(f"{path}/model/model.json has no valid class list; the run is damaged: fit it again")
        self.classes: list[str] = [str(c) for c in classes]
        self._head = None
        self._backbone = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, backbone={self.backbone_name!r}, classes={len(self.classes)})"

    @property
    def tasks(self) -> list[dict[str, Any]] | None:
        """The tasks of a multitask run (name, kind, classes), in the order of the head's outputs; None for a run
        with one task."""
        tasks = self.model_info.get("tasks")
        return list(tasks) if isinstance(tasks, list) and tasks else None

    @property
    def kind(self) -> str:
        """``probe`` or ``finetuned``."""
        return str(self.model_info.get("kind", "probe"))

    @property
    def backbone_name(self) -> str:
        """The backbone's name as recorded."""
        b = self.model_info.get("backbone")
        return str(b.get("name") if isinstance(b, dict) else b)

    @property
    def head(self) -> Any:
        """The trained head as a torch module (features -> logits), its weights checked against their digest."""
        if self._head is None:
            from ..heads.modules import load_head

            info = self.model_info.get("head")
            if self.model_info.get("format") == _OLD_FORMAT:
                info = {"kind": "mlp", "config": info, "file": "head.safetensors"}
            if not isinstance(info, dict):
                raise TransferkitError(f"{self.path}/model/model.json has no head entry; the run is damaged")
            head = load_head(self.path / "model", info)
            n_out = int(getattr(head, "num_classes", len(self.classes)))
            if n_out != len(self.classes):
                raise TransferkitError(f"{self.path}/model/model.json lists {len(self.classes)} classes but the head "
                                       f"has {n_out} outputs: the run is damaged or was edited; fit it again")
            from ..heads.modules import head_metadata

            saved = head_metadata(self.path / "model" / str(info.get("file", "head.safetensors"))).get("classes")
            if saved is not None and json.loads(saved) != self.classes:
                raise TransferkitError(f"{self.path}/model/model.json lists the classes {self.classes[:6]} but the head "
                                       f"was saved with {json.loads(saved)[:6]}: the class list was edited; restore it "
                                       "or fit the run again")
            self._head = head
        return self._head

    @property
    def backbone(self):
        """The run's backbone: a registered one rebuilt by name (checked to have the same weights as when the run was
        trained) or the one saved inside the run (every file checked against its digest)."""
        if self._backbone is None:
            self._backbone = self._load_backbone()
            n_in = self.model_info.get("num_features")
            if n_in is not None and int(n_in) != int(self._backbone.num_features):
                raise TransferkitError(f"{self.path}/model/model.json says {n_in} features but the backbone gives "
                                       f"{self._backbone.num_features}: the run is damaged or was edited")
        return self._backbone

    def _load_backbone(self):
        from ..backbones import BACKBONES, create_backbone, load_backbone

        ref = self.model_info.get("backbone")
        if isinstance(ref, str):  # the first model format: a name and a separate digest
            ref = {"name": ref, "weights": self.model_info.get("backbone_weights")}
        if not isinstance(ref, dict):
            raise TransferkitError(f"{self.path}/model/model.json has no backbone entry; the run is damaged")
        if ref.get("path") is not None:
            sub = str(ref["path"])
            if Path(sub).is_absolute() or ".." in Path(sub).parts:
                raise TransferkitError(f"{self.path}/model/model.json points its backbone at {sub!r}, outside the run; "
                                       "a run only reads files inside it")
            bb = load_backbone(self.path / "model" / sub, root=self.path)
        else:
            name = str(ref.get("name"))
            entry = BACKBONES.get(name)
            if entry.cap("reads_files", False):
                raise TransferkitError(f"{self.path}/model/model.json names the backbone {name!r}, which reads files "
                                       "outside the run; a run only reads files inside it (fit it again: the backbone "
                                       "is then saved inside the run)")
            bb = create_backbone(name)
        self._check_weights(bb, ref.get("weights"))
        if isinstance(ref.get("delta"), dict):
            bb = self._apply_delta(bb, ref["delta"])
        return bb

    def _apply_delta(self, bb: Any, info: dict[str, Any], merged: bool = True) -> Any:
        """A parameter-efficient run's backbone: the base (already checked) with the saved delta re-applied and merged
        (:func:`transferkit.train.efficient.apply_delta`); the delta file checked against its digest."""
        from safetensors.torch import load_file

        from .._io import file_digest
        from ..train.efficient import apply_delta
        from ..train.strategies import create_strategy

        name = str(info.get("file", ""))
        path = self.path / "model" / name
        if not name or Path(name).name != name or not path.is_file():
            raise TransferkitError(f"{self.path}/model/model.json names the delta file {name!r}, which is not in "
                                   f"{self.path}/model; the run is damaged: fit it again")
        if file_digest(path) != info.get("sha256"):
            raise TransferkitError(f"{path} does not match the digest recorded when it was written; the run is "
                                   "damaged or was edited: fit it again")
        spec = dict(info.get("strategy") or {})
        strategy = create_strategy(str(spec.pop("name", "")), **spec)
        if info.get("input_size") is not None and bb.modality == "image":
            bb = bb.with_preprocessing(input_size=int(info["input_size"]))
        return apply_delta(bb, strategy, load_file(str(path)), merged=merged)

    def unmerged_backbone(self) -> Any:
        """A parameter-efficient run's backbone with its delta kept apart from the base weights (LoRA layers not
        merged): what the run trained, for checking the merged one (:attr:`backbone`) against it."""
        ref = self.model_info.get("backbone")
        if not isinstance(ref, dict) or not isinstance(ref.get("delta"), dict):
            raise TransferkitError(f"{self.path} is not a parameter-efficient run (no delta in model/model.json)")
        from ..backbones import create_backbone

        base = create_backbone(str(ref.get("name")))
        self._check_weights(base, ref.get("weights"))
        return self._apply_delta(base, ref["delta"], merged=False)

    def _check_weights(self, bb: Any, expected: str | None) -> None:
        if expected and bb.weights_digest() != expected:
            raise TransferkitError(f"the backbone {bb.name!r} has other weights than the run {self.path} was trained "
                                   "with; install the same version of its weights package (or fit the run again)")

    def predict(self, inputs: Any, *, on_bad_input: str = "error", batch_size: int = 64,
                num_workers: int | None = None, cache_dir: str | None = None, device: str = "auto",
                progress: bool = False, input_column: str | None = None, engine: str = "auto",
                feature_precision: str = "32") -> pd.DataFrame:
        """Predict classes and probabilities for new inputs.

        Args:
            inputs: file paths, folders, a table file, a built-in dataset name, or in-memory images / texts.
            on_bad_input: ``"error"`` stops at unreadable inputs (listing them); ``"skip"`` leaves their rows
                with an empty prediction and the reason in the ``error`` column.
            engine, feature_precision: the feature-extraction engine and precision (:meth:`FeatureStore.get`):
                ``auto`` runs the fastest engine that matches eager PyTorch within the stated tolerance.

        Returns:
            One row per input: ``input``, ``prediction``, ``confidence``, one ``p_<class>`` column per class,
            and ``error``; for a multitask run (:attr:`tasks`), the columns of every task instead of
            ``prediction``, ``confidence`` and ``p_<class>`` (see :meth:`_task_frame`).
        """
        import torch

        from ..data import collect_inputs
        from ..features import FeatureStore

        source = collect_inputs(inputs, input_column=input_column, on_bad_input=on_bad_input)
        head, bb = self.head, self.backbone
        feats = FeatureStore(cache_dir).get(bb, source, batch_size=batch_size, num_workers=num_workers, device=device,
                                            progress=progress, engine=engine, feature_precision=feature_precision)
        if feats.bad and on_bad_input != "skip":
            raise BadInputError(bad_inputs_message(feats.bad), [(b[1], b[2]) for b in feats.bad])
        good = feats.good
        if self.tasks is not None:
            outputs = np.full((len(source), len(self.classes)), np.nan)
            if len(good):
                with torch.no_grad():
                    outputs[good] = head(torch.as_tensor(np.array(feats.X[good], dtype=np.float32))).double().numpy()
            return self._task_frame(source, outputs, feats.bad)
        proba = np.full((len(source), len(self.classes)), np.nan)
        if len(good):
            with torch.no_grad():
                X = torch.as_tensor(np.array(feats.X[good], dtype=np.float32))
                proba[good] = torch.softmax(head(X), 1).double().numpy()
        return self._frame(source, proba, feats.bad)

    def _task_frame(self, source: Any, outputs: np.ndarray, bad: Sequence[tuple[int, str, str]]) -> pd.DataFrame:
        """A multitask run's predictions: per classification task ``<task>`` (the class), ``<task>_confidence`` and
        ``p_<task>=<class>`` columns; per regression task ``<task>`` (the value)."""
        head = self.head
        if [t.get("name") for t in self.tasks or []] != [t["name"] for t in getattr(head, "tasks", [])]:
            raise TransferkitError(f"{self.path}/model/model.json lists other tasks than its head holds: the run is "
                                   "damaged or was edited; fit it again")
        ok = ~np.isnan(outputs).any(1)
        decoded = head.decode(np.nan_to_num(outputs))
        df = pd.DataFrame({"input": [source.describe(i) for i in range(len(source))]})
        for t in head.tasks:
            d = decoded[t["name"]]
            if t["kind"] == "classification":
                df[t["name"]] = [t["classes"][int(k)] if g else "" for k, g in zip(d["pred"], ok)]
                df[f"{t['name']}_confidence"] = np.where(ok, d["proba"].max(1), np.nan)
                for j, c in enumerate(t["classes"]):
                    df[f"p_{t['name']}={c}"] = np.where(ok, d["proba"][:, j], np.nan)
            else:
                df[t["name"]] = np.where(ok, d["pred"], np.nan)
        errors = {b[0]: b[2] for b in bad}
        df["error"] = [errors.get(i, "") for i in range(len(source))]
        return df

    def network(self) -> Any:
        """The run's whole network (backbone + head) as one :class:`~transferkit.train.model.TransferModel` that maps
        preprocessed inputs to logits, ready for ONNX or TorchScript export."""
        from ..train.model import TransferModel, prepare_backbone

        bb = prepare_backbone(copy.deepcopy(self.backbone))
        return TransferModel(bb, len(self.classes), head=copy.deepcopy(self.head)).eval()

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


def _read_json(path: Path, required: bool = True) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise TransferkitError(f"{path} not found: is {path.parent.parent if path.parent.name == 'model' else path.parent} "
                                   "a transferkit run directory (made by `transferkit fit`)?")
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TransferkitError(f"cannot read {path}: {e}; the run is damaged") from e
    if not isinstance(doc, dict):
        raise TransferkitError(f"{path} does not hold a JSON object; the run is damaged")
    return doc


def load_run(path: str | Path) -> Run:
    """Load a run directory written by ``transferkit fit`` (no pickle involved)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise TransferkitError(f"run directory not found: {p}")
    return Run(p)
