"""Deep domain adaptation on the training loop, on cached features or end to end.

``AdaptNet`` = feature module (identity on cached features, or a trainable network such as
:class:`~transferkit.backbones.small.LeNet` on image tensors) -> bottleneck (linear, batch norm, ReLU, dropout)
-> linear classifier. :func:`train_adapter` hands the training loop (:mod:`transferkit.train.loop`) a plan with two
streams, a labelled ``labelled`` (source) stream and an unlabelled ``target`` stream (and optionally a few labelled
target samples, ``target_labelled``); each step draws a batch of each, runs them through the network *together*
(batch norm sees both domains; the source-only baseline draws no target batch: it is trained on the source alone,
as the literature's source-only baseline is), and minimises

    cross-entropy(source) [+ cross-entropy(labelled target, if given)] + trade_off * method(step)

with one SGD optimizer (momentum 0.9, Nesterov, the DANN learning-rate annealing ``lr (1 + 10 p)^-0.75``) over the
network and the method's own modules (discriminators sit behind gradient reversal layers). Lightning Fabric places
the work on the device(s) and runs the precision, DDP included. Every ``eval_every`` steps the checkpoint is scored
by every selector of :mod:`transferkit.adapt.selection` (source validation split and unlabelled target only: the
loop never receives target labels) and the best checkpoint of the chosen ``selection`` is returned. With a
``run_dir`` every evaluation writes an atomic checkpoint, and ``resume=True`` continues a killed run to the same
result. Methods with several stages (ADDA, finetune-target) run each stage through the same loop, in order.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DataError, TransferkitError
from ..train.loop import PRECISION_NAMES, PRECISIONS, Evaluator, LoopSettings, Plan, run_loop
from ..train.objectives import Objective, Outputs, Step
from ..train.streams import TensorStream, derive_seed
from .methods import DomainStep, Method
from .selection import SELECTORS, score_checkpoint

__all__ = ["AdaptConfig", "AdaptNet", "AdaptFit", "Adaptation", "train_adapter", "predict_logits", "features_of"]


@dataclass
class AdaptConfig:
    """Settings of :func:`train_adapter` (defaults: TLlib's digit settings scaled to a CPU).

    Attributes:
        steps: optimisation steps (one source + one target batch each), rounded up to a multiple of ``eval_every``.
        batch_size: per domain.
        lr: base learning rate of SGD (momentum 0.9, Nesterov), annealed as in DANN.
        feature_lr_scale: learning-rate factor of the feature module (0.1 for a pretrained backbone; 1 for a
            network trained from scratch such as LeNet; irrelevant on cached features).
        weight_decay: L2 weight decay.
        bottleneck: width of the bottleneck layer the alignment acts on.
        trade_off: weight of the method's term.
        eval_every: steps between checkpoint evaluations (and checkpoints).
        val_fraction: share of each source class held out for validation (selection, DEV).
        selection: which scorer picks the checkpoint: ``dev`` (default), ``snd``, ``entropy``, ``source-val``,
            or ``last``.
        seed: seeds the split, the initialisation and the batches.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        devices: processes (more than one trains with DDP).
        precision: ``"32"`` (default), ``"bf16-mixed"`` or ``"16-mixed"`` (GPU), through Lightning Fabric.
        source_loss_weight: weight of the source cross-entropy (0 in ADDA's second stage).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.01
    feature_lr_scale: float = 1.0
    weight_decay: float = 5e-4
    bottleneck: int = 256
    trade_off: float = 1.0
    eval_every: int = 200
    val_fraction: float = 0.2
    selection: str = "dev"
    seed: int = 0
    device: str = "auto"
    source_loss_weight: float = 1.0
    precision: str = "32"
    devices: int = 1

    def validate(self) -> None:
        """Raise a clear error for settings that cannot work."""
        if self.selection not in (*SELECTORS, "last"):
            raise TransferkitError(f"selection {self.selection!r} is not one of {', '.join((*SELECTORS, 'last'))}")
        for k in ("steps", "batch_size", "bottleneck", "eval_every", "devices"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise TransferkitError(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        if not 0 < self.val_fraction < 1:
            raise TransferkitError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.precision not in PRECISIONS:
            raise TransferkitError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {self.precision!r}")
        if not (self.lr > 0 and self.trade_off >= 0 and math.isfinite(self.lr) and math.isfinite(self.trade_off)):
            raise TransferkitError(f"lr must be > 0 and trade_off >= 0 (got lr={self.lr}, trade_off={self.trade_off})")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise TransferkitError(f"seed must be an integer >= 0, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for config.json)."""
        return asdict(self)


class AdaptNet(nn.Module):
    """Feature module -> bottleneck -> classifier.

    ``forward(x)`` returns the logits; ``forward(x, return_features=True)`` returns ``(logits, bottleneck features)``
    (the same in training and evaluation mode).
    """

    def __init__(self, in_dim: int, n_classes: int, bottleneck: int = 256, feature: nn.Module | None = None):
        super().__init__()
        self.feature = feature if feature is not None else nn.Identity()
        self.bottleneck = nn.Sequential(nn.Linear(in_dim, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(),
                                        nn.Dropout(0.5))
        self.classifier = nn.Linear(bottleneck, n_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102
        z = self.bottleneck(self.feature(x))
        logits = self.classifier(z)
        return (logits, z) if return_features else logits


@dataclass
class AdaptFit:
    """What :func:`train_adapter` returns.

    Attributes:
        net: the network with the selected checkpoint's weights (eval mode, CPU).
        history: one dict per evaluated checkpoint: ``step``, ``cls_loss`` and ``transfer_loss`` (means since the
            last one), every selector's score (and ``phase`` for methods with several stages).
        selected_step: the step of the returned checkpoint.
        selection: the selector that chose it.
        selected_by: selector -> the step it would have chosen (all computed, for the report).
        seconds: wall time of the loop.
        source_val: indices (into the source arrays) of the held-out source validation split.
    """

    net: AdaptNet
    history: list[dict[str, Any]] = field(default_factory=list)
    selected_step: int = 0
    selection: str = "dev"
    selected_by: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    source_val: np.ndarray | None = None


class Adaptation(Objective):
    """The objective of every deep method: source cross-entropy (and labelled-target cross-entropy) plus
    ``trade_off`` times the method's alignment term, from one joint forward pass of the domains' batches.

    Args:
        method: a built :class:`~transferkit.adapt.methods.Method` (a submodule: trained, checkpointed).
        trade_off: weight of the method's term.
        source_loss_weight: weight of the source cross-entropy.
        labelled_target: read the ``target_labelled`` stream too.
    """

    name = "adapt"

    def __init__(self, method: Method, trade_off: float = 1.0, source_loss_weight: float = 1.0,
                 labelled_target: bool = False):
        super().__init__()
        self.method = method
        self.trade_off, self.source_loss_weight = float(trade_off), float(source_loss_weight)
        # a method without an alignment term (source-only) never reads the unlabelled target: no target batch is
        # drawn or forwarded, as in the source-only baselines of DANN, TLlib, skada and DomainBed
        self.uses_target = bool(getattr(method, "uses_target", True))
        self.streams = (("labelled",) + (("target",) if self.uses_target else ())
                        + (("target_labelled",) if labelled_target else ()))

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        outs = dict(zip(self.streams, step.outputs(*self.streams)))
        s = outs["labelled"]
        y_s = step.y("labelled")
        cls = self.source_loss_weight * F.cross_entropy(s.logits.float(), y_s)
        if "target_labelled" in outs:
            cls = cls + F.cross_entropy(outs["target_labelled"].logits.float(), step.y("target_labelled"))
        if not self.uses_target:
            return {"cls": cls, "transfer": cls.new_zeros(())}
        t = outs["target"]
        transfer = self.method(DomainStep(s.features, t.features, s.logits, t.logits, y_s, step.progress,
                                          x_s=step.x("labelled"), x_t=step.x("target")))
        return {"cls": cls, "transfer": self.trade_off * transfer}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method.name, "trade_off": self.trade_off,
                "source_loss_weight": self.source_loss_weight, "streams": list(self.streams)}


class SelectorScores(Evaluator):
    """Every selector's score of a checkpoint (:func:`~transferkit.adapt.selection.score_checkpoint`) from the
    source validation split, a subsample of the source training split and a subsample of the unlabelled target; the
    best checkpoint is the highest score of ``selection`` (``last``: the latest)."""

    features = True

    def __init__(self, source_val: TensorStream, source_train: TensorStream, target: TensorStream, y_val: np.ndarray,
                 selection: str, seed: int):
        self.streams = {"source_val": source_val, "source_train": source_train, "target": target}
        self.y_val, self.selection, self.seed = np.asarray(y_val, dtype=np.int64), selection, seed

    def evaluate(self, predict: Callable[[str], Outputs], epoch: int) -> dict[str, float | None]:
        val, tr, t = predict("source_val"), predict("source_train"), predict("target")
        loss_val = F.cross_entropy(torch.from_numpy(val.logits), torch.from_numpy(self.y_val), reduction="none").numpy()
        return score_checkpoint({"logits_val": val.logits, "y_val": self.y_val, "loss_val": loss_val,
                                 "z_val": val.features, "z_train": tr.features, "logits_t": t.logits,
                                 "z_t": t.features}, seed=self.seed)


def _stratified_val(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    val = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        val.extend(idx[: max(1, k) if len(idx) > 1 else 0])
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(y)), val), val


def _dann_annealing(step: int, total: int) -> float:
    """DANN's learning-rate annealing ``(1 + 10 p)^-0.75`` at training progress ``p``."""
    return (1 + 10 * step / max(total - 1, 1)) ** -0.75


@dataclass
class _AdaptPlan:
    """Builds the loop's plan of one stage (in each process; picklable)."""

    net: AdaptNet
    method: Method
    cfg: AdaptConfig
    Xs: np.ndarray
    ys: np.ndarray
    Xt: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    sub_train: np.ndarray
    sub_t: np.ndarray
    Xtl: np.ndarray | None = None
    ytl: np.ndarray | None = None
    stage: str = "adapt"
    freeze: tuple[str, ...] = ()

    def __call__(self, fabric: Any) -> Plan:
        cfg = self.cfg
        net = copy.deepcopy(self.net)
        for part in self.freeze:
            for p in getattr(net, part).parameters():
                p.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, 13))
            method = copy.deepcopy(self.method).build(net.bottleneck[0].out_features, net.classifier.out_features)
        labelled_t = self.Xtl is not None and self.ytl is not None and len(self.ytl) > 0
        objective = Adaptation(method, cfg.trade_off, cfg.source_loss_weight, labelled_target=labelled_t)
        streams = {"labelled": TensorStream("labelled", self.Xs[self.train_idx], self.ys[self.train_idx],
                                            batch_size=cfg.batch_size),
                   "target": TensorStream("target", self.Xt, batch_size=cfg.batch_size)}
        if labelled_t:
            streams["target_labelled"] = TensorStream("target_labelled", self.Xtl, self.ytl,
                                                      batch_size=min(cfg.batch_size, len(self.ytl)))
        evaluator = SelectorScores(TensorStream("source_val", self.Xs[self.val_idx]),
                                   TensorStream("source_train", self.Xs[self.sub_train]),
                                   TensorStream("target", self.Xt[self.sub_t]), self.ys[self.val_idx], cfg.selection,
                                   cfg.seed)
        trainable = [p for p in net.parameters() if p.requires_grad]
        feature = {id(p) for p in net.feature.parameters()}
        groups = [{"params": [p for p in trainable if id(p) not in feature], "lr": cfg.lr, "name": "head"},
                  {"params": [p for p in method.parameters() if p.requires_grad], "lr": cfg.lr, "name": "method"},
                  {"params": [p for p in trainable if id(p) in feature], "lr": cfg.lr * cfg.feature_lr_scale,
                   "name": "feature"}]
        identity = {"stage": self.stage, "method": self.method.name,
                    "config": {k: v for k, v in cfg.to_dict().items() if k not in ("device",)},
                    "data": {"source": _digest(self.Xs), "labels": _digest(self.ys), "target": _digest(self.Xt),
                             "labelled_target": None if self.Xtl is None else _digest(self.Xtl)}}
        return Plan(model=net, objective=objective, streams=streams, param_groups=groups,
                    optimizer=lambda g: torch.optim.SGD(g, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                                                        nesterov=True, foreach=True),
                    schedule=_dann_annealing, evaluator=evaluator, identity=identity, describe=_Line(cfg, self.stage),
                    info={"method": self.method.name, "stage": self.stage}, info_name="adapt.json")


def _digest(a: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.shape}|{a.dtype}|".encode() + a.tobytes()).hexdigest()[:16]


class _Line:
    def __init__(self, cfg: AdaptConfig, stage: str):
        self.every, self.stage = cfg.eval_every, stage

    def __call__(self, row: dict[str, Any]) -> str:
        return (f"step {row['epoch'] * self.every} ({self.stage}): cls {row.get('loss_cls', 0):.3f} transfer "
                f"{row.get('loss_transfer', 0):.4f} | source-val {100 * row['source-val']:.1f}% entropy "
                f"{row['entropy']:.3f} snd {row['snd']:.3f} dev {row['dev']:.3f}")


def train_adapter(net: AdaptNet, method: Method, Xs: Any, ys: Any, Xt: Any, config: AdaptConfig | None = None, *,
                  Xt_labelled: Any = None, yt_labelled: Any = None, run_dir: str | Path | None = None,
                  resume: bool = False, progress: bool = False, log: Callable[[str], None] | None = None) -> AdaptFit:
    """Train ``net`` on labelled source and unlabelled target with ``method``'s alignment term; select a checkpoint
    without target labels.

    Args:
        net: an :class:`AdaptNet` (not changed: a trained copy is returned; the method is built for its width here).
        method: an unbuilt :class:`~transferkit.adapt.methods.Method` (its stages run in order).
        Xs: source inputs (features ``(N, D)`` or images ``(N, C, H, W)``), float.
        ys: source labels, integers in ``[0, n_classes)``.
        Xt: unlabelled target inputs, same trailing shape as ``Xs``.
        config: :class:`AdaptConfig`.
        Xt_labelled, yt_labelled: optional few labelled target samples (semi-supervised DA): their cross-entropy is
            added to the loss (and a ``target``-labelled stage trains on them).
        run_dir: where each stage's checkpoints and ``epochs.csv`` go (``<run_dir>/<stage>``); None: in memory.
        resume: continue from the checkpoints in ``run_dir`` (same settings only).
        progress: rich progress bar.
        log: one line per evaluation.

    Returns:
        An :class:`AdaptFit`.

    Raises:
        DataError: empty domains, mismatched shapes or lengths, non-finite inputs.
        TrainingError: the loss became NaN/inf (the message names the step and the terms).
    """
    cfg = config or AdaptConfig()
    cfg.validate()
    Xs_np, Xt_np = np.asarray(Xs, dtype=np.float32), np.asarray(Xt, dtype=np.float32)
    ys_np = np.asarray(ys, dtype=np.int64)
    if len(Xt_np) == 0:
        raise DataError("the target domain has no samples: give at least a batch of unlabelled target inputs")
    if len(Xs_np) != len(ys_np):
        raise DataError(f"source: {len(Xs_np)} inputs but {len(ys_np)} labels")
    if Xs_np.shape[1:] != Xt_np.shape[1:]:
        raise DataError(f"source inputs have shape {Xs_np.shape[1:]} per sample but target inputs {Xt_np.shape[1:]}")
    for name, a in (("source", Xs_np), ("target", Xt_np)):
        if not np.isfinite(a).all():
            raise DataError(f"{name} inputs contain NaN or inf values ({int((~np.isfinite(a)).sum())} entries)")
    Xtl = None if Xt_labelled is None else np.asarray(Xt_labelled, np.float32)
    ytl = None if yt_labelled is None else np.asarray(yt_labelled, np.int64)
    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx = _stratified_val(ys_np, cfg.val_fraction, rng)
    sub_train = train_idx[rng.permutation(len(train_idx))[:2000]]
    sub_t = np.sort(rng.permutation(len(Xt_np))[:2000])
    t0 = time.perf_counter()
    stages = method.stages()
    history: list[dict[str, Any]] = []
    current, result, stage_cfg, offset = net, None, cfg, 0
    for k, stage in enumerate(stages):
        stage_cfg = stage.config(cfg)
        stage_cfg.validate()
        m = stage.method(current)
        if stage.labelled == "target":
            if ytl is None or len(ytl) == 0:
                raise DataError(f"{method.name} needs a few labelled target samples for its stage {stage.name!r}")
            S_X, S_y, s_train, s_val = Xtl, ytl, np.arange(len(ytl)), np.arange(len(ytl))
            plan_ytl = None
        else:
            S_X, S_y, s_train, s_val = Xs_np, ys_np, train_idx, val_idx
            plan_ytl = ytl
        plan = _AdaptPlan(current, m, stage_cfg, S_X, S_y, Xt_np, s_train, s_val, sub_train if stage.labelled ==
                          "source" else s_train, sub_t, None if plan_ytl is None else Xtl, plan_ytl, stage.name,
                          stage.freeze)
        epochs = -(-stage_cfg.steps // stage_cfg.eval_every)
        settings = LoopSettings(epochs=epochs, steps_per_epoch=stage_cfg.eval_every, seed=stage_cfg.seed,
                                precision=stage_cfg.precision, accelerator=stage_cfg.device,
                                devices=stage_cfg.devices, progress="run" if progress else None,
                                label=f"adapt ({method.name}{'' if len(stages) == 1 else ', ' + stage.name})",
                                unit="steps", eval_batch_size=512)
        sub = None if run_dir is None else Path(run_dir) / (f"stage{k + 1}-{stage.name.replace(' ', '-')}"
                                                            if len(stages) > 1 else "")
        result = run_loop(plan, settings, sub, resume=resume, log=log)
        for row in result.history:
            history.append({"step": offset + row["epoch"] * stage_cfg.eval_every, "cls_loss": row.get("loss_cls"),
                            "transfer_loss": row.get("loss_transfer"),
                            **{s: row.get(s) for s in SELECTORS}, "seconds": row.get("seconds"),
                            **({"phase": stage.name} if len(stages) > 1 else {})})
        current = result.model
        offset += epochs * stage_cfg.eval_every
    assert result is not None
    last_rows = history[-result.epochs_run:] if result.epochs_run else history
    selected_by = {s: max(last_rows, key=lambda r: r[s])["step"] for s in SELECTORS}
    selected_by["last"] = last_rows[-1]["step"]
    selected = offset - epochs * stage_cfg.eval_every + result.best_epoch * stage_cfg.eval_every
    sel = stage_cfg.selection
    if len(stages) > 1 and stages[-1].labelled == "target":
        sel = f"{cfg.selection} (source phase), last (target phase)"
    return AdaptFit(net=current.eval(), history=history, selected_step=selected, selection=sel,
                    selected_by=selected_by, seconds=time.perf_counter() - t0, source_val=val_idx)


@torch.no_grad()
def _outputs(net: AdaptNet, X: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    dev = next(net.parameters()).device
    net.eval()
    zs, ls = [], []
    for i in range(0, len(X), batch):
        lg, z = net(torch.from_numpy(np.asarray(X[i:i + batch], np.float32)).to(dev), return_features=True)
        zs.append(z.float().cpu().numpy())
        ls.append(lg.float().cpu().numpy())
    return np.concatenate(zs), np.concatenate(ls)


def predict_logits(net: AdaptNet, X: Any, batch: int = 512) -> np.ndarray:
    """Logits of ``net`` (eval mode) on inputs ``X``."""
    return _outputs(net, np.asarray(X, np.float32), batch)[1]


def features_of(net: AdaptNet, X: Any, batch: int = 512) -> np.ndarray:
    """Bottleneck features of ``net`` (eval mode) on inputs ``X`` (for the before/after diagnostics)."""
    return _outputs(net, np.asarray(X, np.float32), batch)[0]
