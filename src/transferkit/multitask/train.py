"""Training a multitask model through the one training loop: at probe cost (cached features, a shared trainable
trunk and one output per task) or end to end (the backbone trained with the same loss).

:func:`train_multitask` and :func:`train_multitask_end_to_end` both build a :class:`~transferkit.train.loop.Plan`
whose objective is :class:`~transferkit.multitask.objective.MultitaskLoss` (the per-task losses and a weighting of
:data:`~transferkit.multitask.weighting.WEIGHTINGS`) and whose evaluator chooses the epoch by the mean validation
task score; a single-task model is the same call with one task.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import DataError, TransferkitError
from ..heads.multitask import MultitaskHead
from ..train.loop import LoopSettings, Plan, run_loop
from ..train.streams import TensorStream, derive_seed
from .metrics import task_metrics
from .objective import MultitaskLoss, MultitaskValidation
from .tasks import MultitaskSplits, Task
from .weighting import WEIGHTINGS

__all__ = ["MultitaskConfig", "MultitaskFit", "train_multitask", "train_multitask_end_to_end", "task_specs"]


@dataclass
class MultitaskConfig:
    """Settings of multitask training (sized for a CPU; nothing tuned on a reported test split).

    Attributes:
        hidden: widths of the shared trunk.
        dropout: dropout after each trunk layer.
        lr, weight_decay, batch_size: AdamW settings (the head's learning rate end to end).
        epochs, patience: at most this many epochs, early stopping on the validation score.
        val_fraction, test_fraction: the split.
        end_to_end: ``epochs`` and ``batch_size`` of end-to-end training, the backbone's learning rate as a
            fraction of ``lr`` (``backbone_lr_scale``), the image side (``image_size``; None: the backbone's), data
            loading workers (``num_workers``).
    """

    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 100
    patience: int | None = 15
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    e2e_epochs: int = 4
    e2e_batch_size: int = 16
    backbone_lr_scale: float = 0.1
    image_size: int | None = None
    num_workers: int | None = None

    def validate(self) -> "MultitaskConfig":
        """Raise one :class:`TransferkitError` naming every bad setting."""
        bad = []
        for k in ("epochs", "batch_size", "e2e_epochs", "e2e_batch_size"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                bad.append(f"{k} must be an integer >= 1 (got {v!r})")
        if not self.lr > 0 or not self.backbone_lr_scale > 0:
            bad.append(f"lr and backbone_lr_scale must be > 0 (got {self.lr!r}, {self.backbone_lr_scale!r})")
        if not 0 <= self.dropout < 1:
            bad.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if bad:
            raise TransferkitError("multitask settings: " + "; ".join(bad))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def task_specs(tasks: Sequence[Task], Y_train: np.ndarray) -> list[dict[str, Any]]:
    """The head's task descriptions (regression: location and scale from the training labels) with each task's
    output columns (``start``, ``stop``)."""
    out, s = [], 0
    for j, t in enumerate(tasks):
        if t.kind == "classification":
            w = len(t.classes)
            out.append({"name": t.name, "kind": t.kind, "classes": list(t.classes), "start": s, "stop": s + w})
        else:
            v = Y_train[:, j]
            v = v[~np.isnan(v)]
            if not len(v):
                raise DataError(f"regression task {t.name!r} has no label in the training split")
            scale = float(np.std(v)) or 1.0
            w = 1
            out.append({"name": t.name, "kind": t.kind, "loc": float(np.mean(v)), "scale": scale, "start": s,
                        "stop": s + 1})
        s += w
    return out


def _reference_mae(tasks: Sequence[dict[str, Any]], Y_train: np.ndarray, Y_val: np.ndarray) -> list[float]:
    out = []
    for j, t in enumerate(tasks):
        if t["kind"] != "regression":
            out.append(1.0)
            continue
        med = float(np.nanmedian(Y_train[:, j]))
        v = Y_val[:, j]
        v = v[~np.isnan(v)]
        out.append(float(np.mean(np.abs(v - med))) if len(v) else 1.0)
    return out


@dataclass
class MultitaskFit:
    """One trained multitask (or single-task) model.

    Attributes:
        weighting: the weighting's name; tasks: the task descriptions (with output columns).
        model: the network (a :class:`~transferkit.heads.multitask.MultitaskHead` on features, or backbone + head),
            eval mode, CPU.
        test_outputs: ``(N_test, W)`` outputs on the test split.
        test_metrics: task name -> metrics on the test split.
        predictions: task name -> predicted class index or value per test item.
        best_epoch, epochs_run, val_scores: the chosen epoch and its validation scores.
        weights: the weighting's task weights at the last step.
        history: one row per epoch.
        seconds: training wall time.
    """

    weighting: str
    tasks: list[dict[str, Any]]
    model: Any
    test_outputs: np.ndarray
    test_metrics: dict[str, dict[str, float]]
    predictions: dict[str, np.ndarray]
    best_epoch: int
    epochs_run: int
    val_scores: dict[str, Any]
    weights: list[float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _decode(tasks: Sequence[dict[str, Any]], out: np.ndarray) -> dict[str, np.ndarray]:
    return {t["name"]: (out[:, t["start"]:t["stop"]].argmax(1) if t["kind"] == "classification"
                        else out[:, t["start"]]) for t in tasks}


def _groups(params: list, lr: float, wd: float, name: str) -> list[dict[str, Any]]:
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return ([{"params": decay, "lr": lr, "weight_decay": wd, "name": name}] if decay else []) + \
        ([{"params": rest, "lr": lr, "weight_decay": 0.0, "name": f"{name}:no_decay"}] if rest else [])


def _head(in_features: int, specs: Sequence[dict[str, Any]], cfg: MultitaskConfig, seed: int) -> MultitaskHead:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 41))
        return MultitaskHead(in_features, [{k: v for k, v in t.items() if k not in ("start", "stop")} for t in specs],
                             tuple(cfg.hidden), cfg.dropout)


@dataclass
class _FeaturePlan:
    """The loop's plan of a multitask head on cached features (picklable)."""

    X_train: np.ndarray
    Y_train: np.ndarray
    X_val: np.ndarray
    Y_val: np.ndarray
    X_test: np.ndarray
    specs: list[dict[str, Any]]
    weighting: str
    weighting_params: dict[str, Any]
    cfg: MultitaskConfig
    seed: int

    def __call__(self, fabric: Any) -> Plan:
        cfg = self.cfg
        net = _head(self.X_train.shape[1], self.specs, cfg, self.seed)
        with torch.no_grad():
            net.mean.copy_(torch.as_tensor(self.X_train.mean(0)))
            net.scale.copy_(torch.as_tensor(np.maximum(self.X_train.std(0), 1e-6)))
        objective = MultitaskLoss(self.Y_train, self.specs, WEIGHTINGS.create(self.weighting,
                                                                              **self.weighting_params))
        stream = TensorStream("labelled", self.X_train, batch_size=cfg.batch_size)
        ev = None
        if len(self.X_val):
            ev = MultitaskValidation(TensorStream("val", self.X_val), self.Y_val, self.specs,
                                     _reference_mae(self.specs, self.Y_train, self.Y_val))
        groups = _groups(list(net.parameters()), cfg.lr, cfg.weight_decay, "head")
        groups += objective.weighting.param_groups(cfg.lr)
        return Plan(model=net, objective=objective, streams={"labelled": stream}, param_groups=groups,
                    optimizer=lambda g: torch.optim.AdamW(g, lr=cfg.lr, weight_decay=cfg.weight_decay),
                    evaluator=ev, final={"test": TensorStream("test", self.X_test)},
                    identity={"stage": "multitask", "weighting": self.weighting,
                              "tasks": [t["name"] for t in self.specs]})


def _check(Y: np.ndarray, tasks: Sequence[Task], splits: MultitaskSplits, weighting: str) -> None:
    WEIGHTINGS.get(weighting)
    if Y.ndim != 2 or Y.shape[1] != len(tasks):
        raise DataError(f"Y must have one column per task ({len(tasks)}); got shape {Y.shape}")
    for j, t in enumerate(tasks):
        if np.isnan(Y[splits.train, j]).all():
            raise DataError(f"task {t.name!r} has no label in the training split")


def _fit(plan: Any, settings: LoopSettings, specs: list[dict[str, Any]], Y_test: np.ndarray, weighting: str,
         run_dir: Any = None, log: Callable[[str], None] | None = None) -> MultitaskFit:
    t0 = time.perf_counter()
    r = run_loop(plan, settings, run_dir, log=log)
    out = np.asarray(r.predictions["test"].logits, np.float64)
    preds = _decode(specs, out)
    metrics = {t["name"]: task_metrics(t["kind"], Y_test[:, j], preds[t["name"]]) for j, t in enumerate(specs)}
    w = r.objective.weighting.last_weights.tolist() if r.objective is not None else []
    return MultitaskFit(weighting, specs, r.model.eval(), out, metrics, preds, r.best_epoch, r.epochs_run,
                        dict(r.best_scores), [float(x) for x in w], r.history, time.perf_counter() - t0)


def train_multitask(X: np.ndarray, Y: np.ndarray, tasks: Sequence[Task], splits: MultitaskSplits,
                    weighting: str = "equal", *, weighting_params: dict[str, Any] | None = None,
                    config: MultitaskConfig | None = None, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> MultitaskFit:
    """A multitask head on cached features: a shared trunk (trainable) and one output per task.

    Args:
        X: ``(N, D)`` features of every item.
        Y: ``(N, T)`` labels (NaN: missing).
        tasks: the tasks of ``Y``'s columns (one task: a single-task model).
        splits: train / val / test positions (the epoch is chosen on ``val``; ``test`` is predicted once).
        weighting: a name of :data:`~transferkit.multitask.weighting.WEIGHTINGS`; ``weighting_params`` its
            parameters.
        config: :class:`MultitaskConfig`.
        seed: seeds the initialisation and the batches.

    Raises:
        DataError: labels that do not fit the tasks, a task without training labels.
        UnknownNameError: an unknown weighting.
    """
    cfg = (config or MultitaskConfig()).validate()
    Y = np.asarray(Y, np.float64)
    _check(Y, tasks, splits, weighting)
    train = splits.train[~np.isnan(Y[splits.train]).all(1)]
    specs = task_specs(tasks, Y[train])
    X = np.asarray(X)
    plan = _FeaturePlan(np.asarray(X[train], np.float32), Y[train], np.asarray(X[splits.val], np.float32),
                        Y[splits.val], np.asarray(X[splits.test], np.float32), specs, weighting,
                        dict(weighting_params or {}), cfg, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if len(train) * X.shape[1] < 4_000_000 else threads)
    try:
        return _fit(plan, LoopSettings(epochs=cfg.epochs, seed=seed, patience=cfg.patience, accelerator="cpu",
                                       label=f"multitask ({weighting})"), specs, Y[splits.test], weighting, log=log)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _EndToEndPlan:
    """The loop's plan of a backbone + multitask head trained end to end (picklable)."""

    source: Any
    Y: np.ndarray
    splits: MultitaskSplits
    train: np.ndarray
    backbone: Any
    specs: list[dict[str, Any]]
    weighting: str
    weighting_params: dict[str, Any]
    cfg: MultitaskConfig
    seed: int

    def __call__(self, fabric: Any) -> Plan:
        from ..train.engine import cosine_warmup
        from ..train.model import TransferModel, prepare_backbone
        from ..train.streams import ItemStream, stack

        cfg = self.cfg
        if isinstance(self.backbone, str):
            from ..backbones import create_backbone

            bb = create_backbone(self.backbone)
        else:
            bb = copy.deepcopy(self.backbone)
        if cfg.image_size and bb.modality == "image":
            bb = bb.with_preprocessing(input_size=cfg.image_size)
        prepare_backbone(bb)
        head = _head(int(bb.num_features), self.specs, cfg, self.seed)
        model = TransferModel(bb, head.num_classes, head=head)
        train_view = bb.transform("train", hflip=0.0) if bb.modality == "image" else bb.transform("train")
        eval_view = bb.transform("eval")
        collate = stack if bb.modality == "image" else bb.collate

        def stream(name: str, idx: np.ndarray, view: Any) -> ItemStream:
            return ItemStream(name, self.source, idx, views={"train": view, "eval": eval_view}, collate=collate,
                              batch_size=cfg.e2e_batch_size, seed=self.seed)

        objective = MultitaskLoss(self.Y[self.train], self.specs, WEIGHTINGS.create(self.weighting,
                                                                                    **self.weighting_params))
        sp = self.splits
        ev = None
        if len(sp.val):
            ev = MultitaskValidation(stream("val", sp.val, eval_view), self.Y[sp.val], self.specs,
                                     _reference_mae(self.specs, self.Y[self.train], self.Y[sp.val]))
        groups = _groups(list(head.parameters()), cfg.lr, cfg.weight_decay, "head")
        groups += _groups([p for p in bb.parameters() if p.requires_grad], cfg.lr * cfg.backbone_lr_scale,
                          cfg.weight_decay, "backbone")
        groups += objective.weighting.param_groups(cfg.lr)
        return Plan(model=model, objective=objective, streams={"labelled": stream("labelled", self.train, train_view)},
                    param_groups=groups,
                    optimizer=lambda g: torch.optim.AdamW(g, lr=cfg.lr, weight_decay=cfg.weight_decay),
                    schedule=cosine_warmup(0, "cosine", 0.05), evaluator=ev,
                    final={"test": stream("test", sp.test, eval_view)},
                    identity={"stage": "multitask-e2e", "weighting": self.weighting,
                              "tasks": [t["name"] for t in self.specs], "backbone": bb.name})


def train_multitask_end_to_end(source: Any, Y: np.ndarray, tasks: Sequence[Task], splits: MultitaskSplits,
                               backbone: Any = "lite0", weighting: str = "equal", *,
                               weighting_params: dict[str, Any] | None = None, config: MultitaskConfig | None = None,
                               seed: int = 0, run_dir: Any = None, progress: bool = False,
                               log: Callable[[str], None] | None = None) -> MultitaskFit:
    """A backbone + multitask head trained end to end on the items (images or texts) with the same loss as
    :func:`train_multitask`; the backbone at ``backbone_lr_scale`` of the head's learning rate.

    Args:
        source: the items (a :class:`~transferkit.data.sources.DataSource`).
        backbone: a registry name or a backbone (copied).
        run_dir: where the loop's checkpoints go (None: in memory).
        Other arguments: as :func:`train_multitask`.
    """
    cfg = (config or MultitaskConfig()).validate()
    Y = np.asarray(Y, np.float64)
    _check(Y, tasks, splits, weighting)
    train = splits.train[~np.isnan(Y[splits.train]).all(1)]
    specs = task_specs(tasks, Y[train])
    plan = _EndToEndPlan(source, Y, splits, train, backbone, specs, weighting, dict(weighting_params or {}), cfg,
                         seed)
    from ..features.store import default_num_workers

    settings = LoopSettings(epochs=cfg.e2e_epochs, seed=seed, patience=cfg.patience, accelerator="cpu",
                            num_workers=default_num_workers() if cfg.num_workers is None else cfg.num_workers,
                            progress="epoch" if progress else None, label=f"multitask end to end ({weighting})",
                            unit="images" if source.modality == "image" else "texts")
    return _fit(plan, settings, specs, Y[splits.test], weighting, run_dir, log)
