"""Train one domain-generalisation method on several labelled training domains, through the one training loop.

The network is :class:`~transferkit.adapt.trainer.AdaptNet` (feature module -> bottleneck -> classifier): at probe
cost the feature module is the identity on cached backbone features; end to end it is a trainable network such as
:class:`~transferkit.backbones.small.LeNet` on image tensors (with :class:`~transferkit.generalize.mixstyle.MixStyle`
inserted for ``mixstyle``). :func:`train_generalizer` hands the loop (:mod:`transferkit.train.loop`) a plan with one
labelled stream per training domain (``domain0``, ...), the method's objective
(:mod:`transferkit.generalize.objectives`), Adam (DomainBed's optimiser) and an evaluator that scores every
``eval_every`` steps:

- **training-domain validation** (DomainBed's honest selection, the one that chooses the returned checkpoint): the
  mean accuracy over a validation split carved from each training domain (``val_fraction`` of each class);
- the **oracle** (reported beside it, never used to choose): the target domain is split into an oracle-selection
  part (``oracle_fraction``) and an evaluation part; the oracle picks the checkpoint with the best accuracy on the
  oracle part (DomainBed's test-domain validation). Both choices are scored on the same evaluation part.

The target's labels never reach the objective or the selection.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..adapt.experiment import split_target
from ..adapt.trainer import AdaptNet
from ..errors import DataError, TransferkitError
from ..train.loop import PRECISION_NAMES, PRECISIONS, Evaluator, LoopSettings, Plan, run_loop
from ..train.objectives import Outputs
from ..train.streams import TensorStream, derive_seed
from .mixstyle import insert_mixstyle
from .objectives import DG_METHODS, create_dg_objective

__all__ = ["DGConfig", "DGFit", "DomainValidation", "make_dg_net", "train_generalizer", "split_domain"]


@dataclass
class DGConfig:
    """Settings of :func:`train_generalizer` (DomainBed's optimiser: Adam, lr 1e-3, no weight decay).

    Attributes:
        steps: optimisation steps (one batch of every training domain each), rounded up to a multiple of
            ``eval_every``.
        batch_size: per training domain.
        lr: Adam's learning rate.
        weight_decay: Adam's L2 weight decay.
        bottleneck: width of the bottleneck layer (the features CORAL aligns).
        eval_every: steps between evaluations (checkpoint candidates).
        val_fraction: share of each class of each training domain held out for training-domain validation.
        oracle_fraction: share of each target class used only by the oracle to pick its checkpoint.
        seed: seeds the splits, the initialisation and the batches.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"``.
        params: method name -> its hyper-parameters overriding DomainBed's defaults
            (``{"groupdro": {"eta": 0.1}, "irm": {"anneal_steps": 100}}``); methods not named keep their defaults.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    bottleneck: int = 256
    eval_every: int = 100
    val_fraction: float = 0.2
    oracle_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    precision: str = "32"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise a clear error for settings that cannot work."""
        for m, p in self.params.items():
            if m not in DG_METHODS or not isinstance(p, dict):
                raise TransferkitError(f"params maps a method name ({', '.join(DG_METHODS)}) to a dict of its "
                                       f"hyper-parameters; got {m!r}: {p!r}")
        for k in ("steps", "batch_size", "bottleneck", "eval_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TransferkitError(f"{k} must be a positive integer, got {v!r}")
        for k in ("val_fraction", "oracle_fraction"):
            if not 0 < getattr(self, k) < 1:
                raise TransferkitError(f"{k} must be in (0, 1), got {getattr(self, k)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0 and self.weight_decay >= 0):
            raise TransferkitError(f"lr must be > 0 and weight_decay >= 0 (got lr={self.lr}, "
                                   f"weight_decay={self.weight_decay})")
        if self.precision not in PRECISIONS:
            raise TransferkitError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {self.precision!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise TransferkitError(f"seed must be an integer >= 0, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


@dataclass
class DGFit:
    """What :func:`train_generalizer` returns.

    Attributes:
        net: the network with the checkpoint chosen by training-domain validation (eval mode, CPU).
        method: the method's name.
        history: one dict per evaluation: ``step``, the loss terms, ``val_accuracy`` (mean over the training
            domains) and ``val_<k>`` per domain, and with a target ``target_accuracy`` (evaluation part) and
            ``oracle_val_accuracy`` (the oracle's selection part).
        selected_step: step chosen by training-domain validation; val_accuracy: its validation accuracy.
        target_accuracy: target accuracy (evaluation part) of that checkpoint (None without a target).
        oracle_step, oracle_accuracy: the oracle's checkpoint (best on the target's oracle part) and its accuracy on
            the same evaluation part (None without a target).
        last_accuracy: target accuracy of the last checkpoint.
        seconds: wall time of the loop.
    """

    net: AdaptNet
    method: str
    history: list[dict[str, Any]]
    selected_step: int
    val_accuracy: float
    target_accuracy: float | None = None
    oracle_step: int | None = None
    oracle_accuracy: float | None = None
    last_accuracy: float | None = None
    seconds: float = 0.0


def split_domain(y: np.ndarray, fraction: float, seed: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, held-out indices): ``fraction`` of each class held out, seeded by ``(seed, salt)``."""
    return split_target(np.asarray(y), len(y), fraction, int(derive_seed(seed, salt) % (2 ** 31)))


def make_dg_net(method: str, n_classes: int, bottleneck: int = 256, *, in_dim: int | None = None,
                feature: torch.nn.Module | None = None, seed: int = 0, params: dict[str, Any] | None = None) -> AdaptNet:
    """The network of a method: an :class:`AdaptNet` over cached features (``in_dim``) or over a trainable
    ``feature`` network (copied; MixStyle inserted for ``mixstyle``, with the ``p`` and ``alpha`` of ``params``),
    initialised from ``seed``.

    Raises:
        TransferkitError: an end-to-end-only method (mixstyle) without a trainable network.
    """
    entry = DG_METHODS.get(method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if feature is None:
            if entry.cap("end_to_end_only", False):
                raise TransferkitError(f"{method} changes the network's early stages, so it trains end to end (a "
                                       "backbone such as lenet); at probe cost on cached features use erm, coral, "
                                       "groupdro, irm, vrex or mixup")
            if in_dim is None:
                raise TransferkitError("make_dg_net needs in_dim (cached features) or a feature network")
            return AdaptNet(int(in_dim), n_classes, bottleneck)
        bb = copy.deepcopy(feature)
        for p in bb.parameters():
            p.requires_grad_(True)
        if entry.cap("end_to_end_only", False):
            spec = create_dg_objective(method, 1, **(params or {}))
            bb = insert_mixstyle(bb, p=spec.p, alpha=spec.alpha)
        return AdaptNet(int(bb.num_features), n_classes, bottleneck, feature=bb)


class DomainValidation(Evaluator):
    """Training-domain validation (chooses the checkpoint: the mean accuracy over the training domains' validation
    splits, ties broken by the lower mean loss) and, when a labelled target is given, the target's accuracy on its
    evaluation and oracle parts (history columns only: they never decide the choice)."""

    def __init__(self, vals: Sequence[tuple[np.ndarray, np.ndarray]], target: tuple[np.ndarray, np.ndarray] | None,
                 oracle: tuple[np.ndarray, np.ndarray] | None):
        self.selection = "val_accuracy"
        self.streams = {f"val{k}": TensorStream(f"val{k}", X) for k, (X, _) in enumerate(vals)}
        self.ys = {f"val{k}": np.asarray(y, np.int64) for k, (_, y) in enumerate(vals)}
        for name, part in (("target", target), ("oracle", oracle)):
            if part is not None and len(part[1]):
                self.streams[name] = TensorStream(name, part[0])
                self.ys[name] = np.asarray(part[1], np.int64)

    def evaluate(self, predict: Callable[[str], Outputs], epoch: int) -> dict[str, Any]:  # noqa: D102
        out: dict[str, Any] = {}
        accs, losses = [], []
        for name in self.streams:
            lg = torch.as_tensor(predict(name).logits, dtype=torch.float64)
            y = torch.as_tensor(self.ys[name])
            acc = float((lg.argmax(1) == y).double().mean())
            if name.startswith("val"):
                out[f"val_{name[3:]}"] = acc
                accs.append(acc)
                losses.append(float(F.cross_entropy(lg, y)))
            else:
                out["target_accuracy" if name == "target" else "oracle_val_accuracy"] = acc
        out["val_accuracy"] = float(np.mean(accs))
        out["val_loss"] = float(np.mean(losses))
        return out

    def key(self, scores: dict[str, Any]) -> tuple:  # noqa: D102
        return (scores["val_accuracy"], -scores["val_loss"])


def _digest(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}|{a.dtype}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class _DGPlan:
    """Builds the loop's plan (in each process; picklable)."""

    net: AdaptNet
    method: str
    cfg: DGConfig
    train: list[tuple[np.ndarray, np.ndarray]]
    vals: list[tuple[np.ndarray, np.ndarray]]
    target: tuple[np.ndarray, np.ndarray] | None
    oracle: tuple[np.ndarray, np.ndarray] | None

    def __call__(self, fabric: Any) -> Plan:
        cfg = self.cfg
        net = copy.deepcopy(self.net)
        objective = create_dg_objective(self.method, len(self.train), **cfg.params.get(self.method, {}))
        streams = {s: TensorStream(s, X, y, batch_size=cfg.batch_size)
                   for s, (X, y) in zip(objective.streams, self.train)}
        evaluator = DomainValidation(self.vals, self.target, self.oracle)
        params = [p for p in net.parameters() if p.requires_grad] + [p for p in objective.parameters()]
        identity = {"method": self.method, "objective": objective.config(),
                    "config": {k: v for k, v in cfg.to_dict().items() if k != "device"},
                    "data": _digest([a for pair in self.train for a in pair])}
        return Plan(model=net, objective=objective, streams=streams,
                    param_groups=[{"params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "all"}],
                    optimizer=lambda g: torch.optim.Adam(g, lr=cfg.lr, weight_decay=cfg.weight_decay),
                    evaluator=evaluator, identity=identity, info={"method": self.method}, info_name="generalize.json")


def _check_domain(name: str, X: np.ndarray, y: np.ndarray, n_classes: int, shape: tuple) -> None:
    if len(X) != len(y):
        raise DataError(f"domain {name}: {len(X)} inputs but {len(y)} labels")
    if len(X) < 4:
        raise DataError(f"domain {name} has {len(X)} samples; each training domain needs at least 4 (a training and "
                        "a validation part)")
    if X.shape[1:] != shape:
        raise DataError(f"domain {name} has inputs of shape {X.shape[1:]} per sample, domain 0 {shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"domain {name}: labels must be integers in [0, {n_classes}), got {y.min()}..{y.max()}")
    if not np.isfinite(X).all():
        raise DataError(f"domain {name}: inputs contain NaN or inf values")


def train_generalizer(net: AdaptNet, method: str, domains: Sequence[tuple[Any, Any]], config: DGConfig | None = None,
                      *, target: tuple[Any, Any] | None = None, run_dir: str | Path | None = None,
                      resume: bool = False, progress: bool = False,
                      log: Callable[[str], None] | None = None) -> DGFit:
    """Train ``net`` with ``method`` on the labelled training ``domains``; choose the checkpoint on their validation
    splits (and, with a labelled ``target``, report the target accuracy and the oracle's separately).

    Args:
        net: an :class:`AdaptNet` from :func:`make_dg_net` (not changed: a trained copy is returned).
        method: a name of :data:`~transferkit.generalize.objectives.DG_METHODS`.
        domains: ``(X, y)`` per training domain: inputs (features ``(N, D)`` or images ``(N, C, H, W)``) and
            integer labels in ``[0, n_classes)``.
        config: :class:`DGConfig`.
        target: ``(X, y)`` of the unseen domain, read only to score checkpoints (never to choose the returned one).
        run_dir: where checkpoints and ``epochs.csv`` go (None: in memory); resume: continue a killed run there.
        progress: progress bar; log: one line per evaluation.

    Returns:
        A :class:`DGFit`.

    Raises:
        DataError: fewer than one domain, mismatched shapes or lengths, non-finite inputs.
        UnknownNameError: an unknown method.
    """
    cfg = config or DGConfig()
    cfg.validate()
    DG_METHODS.get(method)
    if len(domains) < 1:
        raise DataError("domain generalisation needs at least one labelled training domain")
    n_classes = int(net.classifier.out_features)
    arrays = [(np.asarray(X, np.float32), np.asarray(y, np.int64)) for X, y in domains]
    for k, (X, y) in enumerate(arrays):
        _check_domain(str(k), X, y, n_classes, arrays[0][0].shape[1:])
    train, vals = [], []
    for k, (X, y) in enumerate(arrays):
        tr, va = split_domain(y, cfg.val_fraction, cfg.seed, 100 + k)
        train.append((X[tr], y[tr]))
        vals.append((X[va], y[va]))
    t_part = o_part = None
    if target is not None:
        Xt, yt = np.asarray(target[0], np.float32), np.asarray(target[1], np.int64)
        _check_domain("target", Xt, yt, n_classes, arrays[0][0].shape[1:])
        ev, orc = split_domain(yt, cfg.oracle_fraction, cfg.seed, 999)
        t_part, o_part = (Xt[ev], yt[ev]), (Xt[orc], yt[orc])
    plan = _DGPlan(net, method, cfg, train, vals, t_part, o_part)
    epochs = -(-cfg.steps // cfg.eval_every)
    settings = LoopSettings(epochs=epochs, steps_per_epoch=cfg.eval_every, seed=cfg.seed, precision=cfg.precision,
                            accelerator=cfg.device, progress="run" if progress else None,
                            label=f"generalize ({method})", unit="steps", eval_batch_size=512)
    t0 = time.perf_counter()
    res = run_loop(plan, settings, run_dir, resume=resume, log=log)
    history = [{"step": r["epoch"] * cfg.eval_every, **{k: v for k, v in r.items() if k != "epoch"}}
               for r in res.history]
    chosen = history[res.best_epoch - 1]
    fit = DGFit(net=res.model.eval(), method=method, history=history, selected_step=chosen["step"],
                val_accuracy=float(chosen["val_accuracy"]), seconds=time.perf_counter() - t0)
    if t_part is not None:
        orow = max(history, key=lambda r: r["oracle_val_accuracy"])  # the earliest of equal scores
        fit.target_accuracy = float(chosen["target_accuracy"])
        fit.oracle_step, fit.oracle_accuracy = orow["step"], float(orow["target_accuracy"])
        fit.last_accuracy = float(history[-1]["target_accuracy"])
    return fit
