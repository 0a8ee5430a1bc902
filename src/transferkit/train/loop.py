"""The training loop: the only place in transferkit where gradients are computed and applied.

Fine-tuning strategies, regularizers (L2-SP, BSS), every deep domain-adaptation method, the shallow torch heads and
the from-scratch CNN all train here. What differs between them is a :class:`Plan`: the model, an
:class:`~transferkit.train.objectives.Objective` (named loss terms), the named data streams it reads
(:mod:`transferkit.train.streams`), the optimizer and learning-rate schedule, which parameter groups train in which
epoch, and an :class:`Evaluator` that scores the model on held-out data after every epoch and so chooses the
checkpoint that is returned (validation data only: never test labels).

Lightning Fabric runs the devices, the precision (``32``, ``bf16-mixed``, ``16-mixed``) and DDP; :func:`make_fabric`
is the only place a ``Fabric`` is made. With several processes every stream shards its own global batches, the loss
is scaled so DDP's gradient average is the global-batch mean, and results are gathered exactly.

What a run leaves in ``run_dir`` (when given)::

    checkpoints/last.ckpt   written atomically after every epoch: model, objective, optimizer, scheduler, RNG states,
                            epoch, best-so-far weights and scores, history, the plan's identity and its hash
    epochs.csv              one row per epoch: every loss term, every evaluation score, lr, time, speed

Reproducibility: the order of every stream, the augmentation of every item and the model's own randomness (dropout)
are functions of ``(seed, epoch)`` (and the item), never of how many epochs ran in this process. A run killed at
any point (even ``kill -9``) and resumed from its last checkpoint ends with the same weights and metrics as an
uninterrupted run; the number of data-loading workers does not change the result.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import os
import pickle
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_bytes
from ..errors import ResumeMismatchError, TrainingError, TransferkitError
from .objectives import Objective, Outputs, Step, scalar_term
from .streams import Stream, cycle_batches, derive_seed, epoch_batches, stream_key

__all__ = ["Plan", "Evaluator", "ValidationAccuracy", "LoopSettings", "LoopResult", "run_loop", "make_fabric", "load_checkpoint",
           "set_train_mode", "frozen_modules", "CHECKPOINT_FORMAT", "PRECISIONS", "PRECISION_NAMES"]

CHECKPOINT_FORMAT = "transferkit-train/2"
PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
#: the precision names shown to users (``32-true`` is accepted as Lightning's spelling of ``32``)
PRECISION_NAMES = ("32", "bf16-mixed", "16-mixed")


# ---------------------------------------------------------------------------------------------------------------
# what the loop is given
class Evaluator:
    """Scores the model on held-out streams after every epoch and says which epoch is best.

    Subclasses set ``streams`` (name -> evaluation stream) and implement :meth:`evaluate`; :meth:`key` orders scores
    (higher is better) and ``selection="last"`` keeps the latest epoch.
    """

    streams: dict[str, Stream] = {}
    selection: str = "score"
    features: bool = False

    def evaluate(self, predict: Callable[[str], Outputs], epoch: int) -> dict[str, float | None]:
        """Scores of the current model; ``predict(stream)`` gives the stream's logits and features (numpy)."""
        raise NotImplementedError

    def key(self, scores: dict[str, Any]) -> tuple:
        """Sort key of an epoch's scores (higher is better)."""
        v = scores.get(self.selection)
        return (-math.inf if v is None else float(v),)

    def is_better(self, scores: dict[str, Any], best: dict[str, Any] | None) -> bool:
        """Whether ``scores`` beat the best so far (always true for ``selection="last"`` or no best yet)."""
        if best is None or self.selection == "last":
            return True
        return self.key(scores) > self.key(best)


class ValidationAccuracy(Evaluator):
    """Accuracy and cross-entropy on a labelled validation stream; the best epoch has the highest accuracy, ties
    broken by the lower loss. Without validation data every epoch is "best" (the last one is kept).

    Args:
        stream: the validation stream (None: no validation split).
        y: its integer labels.
        tie_break: between equal accuracies, prefer the lower loss (False: only a higher accuracy is better, which
            lets early stopping end a run whose accuracy has settled).
        extras: computes more history columns from the validation probabilities and labels (an objective's
            ``validation_metrics``, e.g. pseudo-label accuracy); they never decide the choice.
    """

    selection = "val_accuracy"

    def __init__(self, stream: Stream | None, y: np.ndarray | None, tie_break: bool = True,
                 extras: Callable[[torch.Tensor, np.ndarray], dict[str, Any]] | None = None):
        self.streams = {} if stream is None else {"val": stream}
        self.y = None if y is None else np.asarray(y, dtype=np.int64)
        self.tie_break = tie_break
        self.extras = extras

    def evaluate(self, predict: Callable[[str], Outputs], epoch: int) -> dict[str, Any]:
        if not self.streams:
            return {"val_loss": None, "val_accuracy": None}
        lg = torch.as_tensor(predict("val").logits, dtype=torch.float64)
        y = torch.as_tensor(self.y)
        out: dict[str, Any] = {"val_loss": float(nn.functional.cross_entropy(lg, y)),
                               "val_accuracy": float((lg.argmax(1) == y).double().mean())}
        if self.extras is not None:
            out.update(self.extras(torch.softmax(lg.float(), 1), self.y))
        return out

    def key(self, scores: dict[str, Any]) -> tuple:
        return (scores["val_accuracy"], -scores["val_loss"]) if self.tie_break else (scores["val_accuracy"],)

    def is_better(self, scores: dict[str, Any], best: dict[str, Any] | None) -> bool:
        if best is None or scores.get("val_accuracy") is None or best.get("val_accuracy") is None:
            return True
        return self.key(scores) > self.key(best)


@dataclass
class Plan:
    """Everything one training run needs; built inside each process by the plan factory given to :func:`run_loop`.

    Attributes:
        model: the network; ``model(x, return_features=True) -> (logits, features)``.
        objective: the loss terms.
        streams: training streams by name (the first is the primary one of an epoch-based run).
        param_groups: optimizer groups (dicts with ``params``, ``lr``, ``weight_decay``, ``name``).
        optimizer: builds the optimizer from the groups.
        schedule: learning-rate factor of step ``k`` of ``total`` (a ``LambdaLR``), or None.
        evaluator: chooses the checkpoint (None: the last epoch).
        trainable: parameter lists whose ``requires_grad`` the loop sets per epoch from ``trainable_at``.
        trainable_at: epoch -> one flag per list in ``trainable`` (a fine-tuning strategy's schedule).
        settled_epoch: early stopping waits until this epoch (when the set of trainable groups stops changing).
        final: streams predicted once with the chosen weights at the end (e.g. the test split).
        identity: what a checkpoint must match to be resumed (JSON; its hash is stored).
        describe: epoch row -> one log line (None: a generic line).
        info: written to ``run_dir/<info_name>`` once (layer groups, parameter counts, ...).
    """

    model: nn.Module
    objective: Objective
    streams: dict[str, Stream]
    param_groups: list[dict[str, Any]]
    optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
    schedule: Callable[[int, int], float] | None = None
    evaluator: Evaluator | None = None
    trainable: list[list[nn.Parameter]] = field(default_factory=list)
    trainable_at: Callable[[int], list[bool]] | None = None
    settled_epoch: int = 0
    final: dict[str, Stream] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    describe: Callable[[dict[str, Any]], str] | None = None
    info: dict[str, Any] | None = None
    info_name: str = "train.json"


@dataclass
class LoopSettings:
    """How the loop runs (not what it trains).

    Attributes:
        epochs: maximum number of epochs (a step-based run's "epochs" are its evaluation intervals).
        steps_per_epoch: None: one pass over the primary stream; else a fixed number of steps (every stream cycles).
        seed: seeds data order, augmentation and the model's own randomness (per epoch).
        max_grad_norm: clip the gradient norm (None: no clipping).
        patience: stop after this many epochs without a better evaluation (None: never).
        precision: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"``.
        accelerator, devices: where to train; ``devices > 1`` trains with DDP.
        num_workers: data-loading worker processes for item streams.
        eval_batch_size: batch size of predictions.
        progress: ``"epoch"`` (a bar per epoch), ``"run"`` (one bar for the run) or None.
        label: what the progress bar and log lines call the run.
        unit: what the progress bar counts (``images``, ``texts``, ``steps``).
        ema_decay: keep an exponential moving average of the model's weights (decay per step, with the usual
            warm-up ``min(decay, (1 + t) / (10 + t))`` so a short run is not dominated by its initial weights); the
            evaluation, the chosen checkpoint and the returned model use the averaged weights (FixMatch's EMA model).
        schedule_epochs: the length, in epochs, of the learning-rate schedule and of every step's progress
            (``Step.progress``); None: ``epochs``. A refit run (``TrainConfig.refit``) trains ``epochs`` of a longer
            schedule, so it follows the learning rates of the run that chose its epoch count.
    """

    epochs: int = 1
    steps_per_epoch: int | None = None
    seed: int = 0
    max_grad_norm: float | None = None
    patience: int | None = None
    precision: str = "32"
    accelerator: str = "auto"
    devices: int = 1
    num_workers: int = 0
    eval_batch_size: int = 256
    progress: str | None = None
    label: str = "train"
    unit: str = "samples"
    ema_decay: float | None = None
    schedule_epochs: int | None = None

    @property
    def horizon(self) -> int:
        """The schedule's length in epochs (``schedule_epochs``, else ``epochs``)."""
        return self.epochs if self.schedule_epochs is None else max(self.epochs, int(self.schedule_epochs))


@dataclass
class LoopResult:
    """What :func:`run_loop` returns.

    Attributes:
        model: the model with the chosen epoch's weights, on CPU, eval mode (in the calling process).
        objective: the objective with its trained modules, on CPU.
        history: one dict per epoch (the rows of ``epochs.csv``).
        best_epoch: the chosen epoch (1-based); best_scores: its evaluation scores.
        stop_reason: ``"early stopping"`` or ``"max epochs"``.
        epochs_run: epochs trained in total (over all resumptions); resumed_from: the epoch resumed after, or None.
        train_seconds: training time summed over all epochs; seconds: wall time of this call.
        predictions: ``Plan.final`` stream -> logits and features with the chosen weights.
        checkpoint: path of the last checkpoint (None without ``run_dir``).
        device: where it trained.
    """

    model: nn.Module | None
    objective: Objective | None
    history: list[dict[str, Any]]
    best_epoch: int
    best_scores: dict[str, Any]
    stop_reason: str
    epochs_run: int
    resumed_from: int | None
    train_seconds: float
    seconds: float
    predictions: dict[str, Outputs]
    checkpoint: Path | None
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------------------------
# Fabric
def make_fabric(accelerator: str = "auto", devices: int = 1, precision: str = "32",
                num_nodes: int = 1) -> tuple[Any, str | None]:
    """The one place a Lightning ``Fabric`` is made; returns it and how it starts processes (None: it starts none).

    One device: no new process. Several: DDP; under an external launcher (``torchrun``, SLURM) Fabric joins its
    processes; otherwise Fabric starts them, by ``fork`` on CPU under Linux (nothing is imported again) and by
    ``spawn`` elsewhere (CUDA cannot be forked). Several machines (``num_nodes`` > 1) need such a launcher.

    Raises:
        TransferkitError: the device, count or precision is not available here.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.plugins.environments import TorchElasticEnvironment
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if precision not in PRECISIONS:
        raise TransferkitError(f"precision must be one of {', '.join(PRECISION_NAMES)} (got {precision!r})")
    start = None
    strategy = "auto"
    acc = "cuda" if accelerator == "gpu" else accelerator
    dev: Any = devices
    if isinstance(acc, str) and acc.startswith("cuda:"):
        acc, dev = "cuda", [int(acc.split(":", 1)[1])]
    if (acc == "cuda" or acc == "gpu") and not torch.cuda.is_available():
        raise TransferkitError(f"accelerator {accelerator!r} was asked for, but no CUDA GPU is visible here; use "
                               "'cpu' or 'auto'")
    from lightning.fabric.plugins.environments import SLURMEnvironment

    launched = TorchElasticEnvironment.detect() or SLURMEnvironment.detect()
    if num_nodes > 1 and not launched:
        raise TransferkitError(f"num_nodes={num_nodes}: several machines need a cluster launcher that starts the "
                               "processes on each of them: torchrun on every node, or srun under SLURM (see the README)")
    if devices > 1 or num_nodes > 1:
        if launched:
            strategy = "ddp"
        else:
            on_cpu = acc == "cpu" or (acc == "auto" and not torch.cuda.is_available()
                                       and not torch.backends.mps.is_available())
            start = "fork" if on_cpu and sys.platform.startswith("linux") else "spawn"
            strategy = f"ddp_{start}"
    try:
        fabric = Fabric(accelerator=acc, devices=dev, strategy=strategy, precision=PRECISIONS[precision],
                        num_nodes=num_nodes)
    except (MisconfigurationException, ValueError, RuntimeError, ImportError) as e:  # ImportError: e.g. no torch_xla
        raise TransferkitError(f"cannot train with accelerator={accelerator!r}, devices={devices}, "
                               f"precision={precision!r} here: {e}") from e
    return fabric, start


# ---------------------------------------------------------------------------------------------------------------
# the entry point
def run_loop(plan_factory: Callable[[Any], Plan], settings: LoopSettings, run_dir: str | Path | None = None, *,
             resume: bool = False, callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
             log: Callable[[str], None] | None = None) -> LoopResult:
    """Train the plan that ``plan_factory(fabric)`` builds; return the chosen weights and the history.

    Args:
        plan_factory: builds the :class:`Plan` in each process (picklable when several processes are spawned).
            Called with None in the parent to rebuild the model when the training ran in other processes.
        settings: :class:`LoopSettings`.
        run_dir: where ``checkpoints/last.ckpt`` and ``epochs.csv`` go (None: nothing is written, no resume).
        resume: continue from the last checkpoint in ``run_dir`` (refused when the plan's identity differs).
        callbacks: called after every epoch's checkpoint with ``{"epoch", "row", "history", "checkpoint", "model",
            "rank"}``.
        log: called with one line per epoch.

    Raises:
        TrainingError: a loss term became NaN/inf (the last good checkpoint is kept), or ``run_dir`` holds a
            checkpoint and ``resume`` is False.
        ResumeMismatchError: ``resume`` with a plan other than the checkpoint's (the differences are listed).
    """
    t0 = time.perf_counter()
    fabric, start = make_fabric(settings.accelerator, settings.devices, settings.precision)
    job = _Job(plan_factory, settings, None if run_dir is None else Path(run_dir), bool(resume), list(callbacks), log)
    if start:
        job.spawned = True
        if start == "spawn":
            if job.log is not None and not _picklable(job.log):
                job.log = _print_err
            try:
                pickle.dumps(job)
            except Exception as e:  # what fails to pickle varies: lambdas, open files, locks
                raise TransferkitError(
                    f"devices={settings.devices} starts new processes, which need the data, objective and callbacks "
                    f"to be picklable ({type(e).__name__}: {e}); use module-level functions or classes instead of "
                    "lambdas and closures") from e
        payload: Any = _Box(job)  # Lightning does not walk into it
    else:
        payload = job
    out = fabric.launch(_worker, payload)
    if isinstance(out, dict) and "error" in out:
        raise out["error"]
    state_file = out.pop("state_file", None)
    if out.get("model") is None:  # trained in other processes: rebuild the model and load the chosen weights
        plan = plan_factory(None)
        if state_file is not None:
            try:
                state = torch.load(state_file, map_location="cpu", weights_only=True)
            finally:
                os.unlink(state_file)
        else:
            state = load_checkpoint(Path(out["checkpoint"]))["best"]["state"]
        plan.model.load_state_dict(state["model"])
        plan.objective.load_state_dict(state["objective"])
        out["model"], out["objective"] = plan.model.eval(), plan.objective.eval()
    out["seconds"] = time.perf_counter() - t0
    return LoopResult(**out)


@dataclass
class _Job:
    plan_factory: Callable[[Any], Plan]
    settings: LoopSettings
    run_dir: Path | None
    resume: bool
    callbacks: list
    log: Callable[[str], None] | None
    spawned: bool = False


class _Box:
    """An opaque holder for the job, handed to the processes Fabric starts."""

    def __init__(self, job: _Job):
        self.job = job


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # any pickling failure means "no"
        return False


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _worker(fabric, job: _Job | _Box) -> dict[str, Any]:
    if isinstance(job, _Box):
        job = job.job
    try:
        with _rng_guard(fabric.device):
            return _Loop(fabric, job).run()
    except TransferkitError as e:
        if job.spawned:  # hand the error to the parent process, which raises it as it is
            return {"error": e}
        raise


@contextlib.contextmanager
def _rng_guard(device: torch.device):
    """Leave the caller's random generators as they were."""
    py, npst = random.getstate(), np.random.get_state()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npst)


class _Trainable(nn.Module):
    """What Fabric wraps: the model and the objective (so DDP synchronises the objective's parameters too)."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Any, return_features: bool = False):
        return self.model(x, return_features=return_features)


# ---------------------------------------------------------------------------------------------------------------
class _Loop:
    def __init__(self, fabric, job: _Job):
        self.fabric, self.job, self.s = fabric, job, job.settings
        self.rank, self.world = int(fabric.global_rank), int(fabric.world_size)
        self.ckpt_path = None if job.run_dir is None else job.run_dir / "checkpoints" / "last.ckpt"

    # -- setup ------------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        s, fabric = self.s, self.fabric
        with torch.random.fork_rng(devices=[]):
            self.plan = plan = self.job.plan_factory(fabric)
        self.raw, self.objective = plan.model, plan.objective
        self.objective.setup(self.raw)
        self.container = _Trainable(self.raw, self.objective)
        for name in self.objective.streams:
            if name not in plan.streams:
                raise TransferkitError(f"objective {self.objective.name!r} reads stream {name!r}, which this run does "
                                       f"not have (streams: {', '.join(plan.streams) or 'none'}); give it that data")
            plan.streams[name].check_views(self.objective.views_of(name))
        # in the plan's order: its first stream that the objective reads is the primary one of an epoch
        self.streams = {n: plan.streams[n] for n in plan.streams if n in self.objective.streams}
        workers = int(s.num_workers)
        for st in [*plan.streams.values(), *plan.final.values(),
                   *(plan.evaluator.streams.values() if plan.evaluator else [])]:
            st.setup(fabric, workers)
        primary = next(iter(self.streams.values()))
        if s.steps_per_epoch is None:
            if len(primary) < self.world:
                raise TransferkitError(f"stream {primary.name!r} has {len(primary)} items: too few for {self.world} "
                                       f"process(es)")
            self.steps_per_epoch = len(epoch_batches(len(primary), primary.batch_size, s.seed, 0, self.world))
        else:
            self.steps_per_epoch = int(s.steps_per_epoch)
        for st in self.streams.values():
            if len(st) == 0:
                raise TransferkitError(f"stream {st.name!r} is empty: give it at least one item")
        self.identity = json.loads(json.dumps({**plan.identity, "objective": self.objective.config(),
                                               "loop": {"epochs": s.epochs, "steps_per_epoch": s.steps_per_epoch,
                                                        "seed": s.seed, "max_grad_norm": s.max_grad_norm,
                                                        "precision": s.precision, "devices": s.devices,
                                                        "ema_decay": s.ema_decay,
                                                        # only when set: older checkpoints keep their identity
                                                        **({"schedule_epochs": s.schedule_epochs}
                                                           if s.schedule_epochs is not None else {})}},
                                              default=str))
        self.config_hash = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:20]

    def _batches(self, epoch: int) -> dict[str, list[np.ndarray]]:
        s, out = self.s, {}
        for k, (name, st) in enumerate(self.streams.items()):
            if s.steps_per_epoch is None and k == 0:
                out[name] = epoch_batches(len(st), st.batch_size, s.seed, epoch, self.world)
            else:
                out[name] = cycle_batches(len(st), st.batch_size, s.seed, stream_key(name), epoch * self.steps_per_epoch,
                                          self.steps_per_epoch)
        return out

    def _apply_trainable(self, epoch: int) -> bool:
        if self.plan.trainable_at is None:
            return False
        flags = self.plan.trainable_at(epoch)
        for f, params in zip(flags, self.plan.trainable):
            for p in params:
                p.requires_grad_(f)
        changed = flags != getattr(self, "_flags", None)
        self._flags = flags
        return changed

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._setup()
        s, fabric, plan, job = self.s, self.fabric, self.plan, self.job
        state = self._read_checkpoint()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "scores": None, "state": None}
        start, finished, stop_reason, resumed_from = 0, False, "", None
        if state is not None:
            self.raw.load_state_dict(state["model"])
            self.objective.load_state_dict(state["objective"])
            self.history, self.best = list(state["history"]), dict(state["best"])
            start, finished, stop_reason = int(state["epoch"]), bool(state["finished"]), str(state["stop_reason"])
            resumed_from = start
        if self.world > 1 and fabric.device.type == "cuda":
            self.container = nn.SyncBatchNorm.convert_sync_batchnorm(self.container)
        self._apply_trainable(min(start, s.epochs - 1))
        self.model = fabric.setup_module(self.container)
        self.forward_model = self._forward_model()
        self.ema = None
        self.ema_updates = 0
        if s.ema_decay:
            saved = state.get("ema") if state is not None else None
            self.ema = {k: (saved[k] if saved is not None else v).detach().clone().to(v.device)
                        for k, v in self.raw.state_dict().items()}
            self.ema_updates = int(state.get("ema_updates", 0)) if state is not None else 0
        optimizer = plan.optimizer([g for g in plan.param_groups if g["params"]])
        total = s.horizon * self.steps_per_epoch
        sched = plan.schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, (lambda k: sched(k, total)) if sched is not None else (lambda k: 1.0))
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            _set_rng(state["rng"])
        self.optimizer = fabric.setup_optimizers(optimizer)
        if self.rank == 0:
            self._write_info()
            if resumed_from is not None and job.log:
                job.log(f"resuming {job.run_dir} after epoch {resumed_from}")
        epoch = start
        with self._run_bar(start) as run_bar:
            while not finished and epoch < s.epochs:
                if self._apply_trainable(epoch) and self.world > 1:
                    self.model = fabric.setup_module(self.container)  # DDP tracks what requires gradients at wrap
                    self.forward_model = self._forward_model()
                row = self._train_epoch(epoch, run_bar)
                self.history.append(row)
                done = epoch + 1
                stop_reason = ""
                if self._stop_early(done):
                    stop_reason = "early stopping"
                elif done >= s.epochs:
                    stop_reason = "max epochs"
                finished = bool(stop_reason)
                self._save_checkpoint(done, finished, stop_reason)
                if self.rank == 0 and job.run_dir is not None:
                    _write_csv(job.run_dir / "epochs.csv", self.history)
                if self.rank == 0 and job.log:
                    job.log(plan.describe(row) if plan.describe else self._line(row))
                for cb in job.callbacks:
                    cb({"epoch": done, "row": row, "history": list(self.history), "checkpoint": self.ckpt_path,
                        "model": self.raw, "rank": self.rank})
                epoch += 1
        return self._finish(stop_reason or "max epochs", resumed_from)

    @contextlib.contextmanager
    def _run_bar(self, start: int):
        from .._progress import progress_bar

        s = self.s
        enabled = s.progress == "run" and self.rank == 0
        total = (s.epochs - start) * self.steps_per_epoch
        with progress_bar(total, s.label, unit="steps", enabled=enabled) as bar:
            yield bar if enabled else None

    def _forward_model(self) -> nn.Module:
        """What the training steps and evaluations call: Fabric's module wrapper, except for one process at 32-bit
        precision, where its work (casting inputs and outputs, a backward hook on every output) changes nothing and
        costs about 0.4 ms a step, a tenth of a small head's step on the CPU; the container itself is then called."""
        from lightning.fabric.plugins.precision import Precision
        from lightning.fabric.strategies import SingleDeviceStrategy

        strategy = self.fabric.strategy
        plain = (self.world == 1 and isinstance(strategy, SingleDeviceStrategy)
                 and type(strategy.precision) is Precision)
        return self.container if plain else self.model

    def _stop_early(self, done: int) -> bool:
        if self.s.patience is None or self.plan.evaluator is None or self.plan.evaluator.selection == "last":
            return False
        return done - max(int(self.best["epoch"]), self.plan.settled_epoch) >= self.s.patience

    def _train_epoch(self, epoch: int, run_bar: Any) -> dict[str, Any]:
        from .._progress import progress_bar

        s, fabric = self.s, self.fabric
        set_train_mode(self.container)
        torch.manual_seed(derive_seed(s.seed, epoch, self.rank, 1))
        random.seed(derive_seed(s.seed, epoch, self.rank, 2))
        np.random.seed(derive_seed(s.seed, epoch, self.rank, 4))
        batches = self._batches(epoch)
        primary = next(iter(batches))
        n_samples = sum(len(b) for b in batches[primary])
        loaders = [self.streams[n].loader(batches[n], self.objective.views_of(n), epoch, s.seed, self.rank, self.world)
                   for n in self.streams]
        device = fabric.device
        sums: dict[str, torch.Tensor] = {}
        msums: dict[str, float] = {}
        seen = 0
        total_steps = s.horizon * self.steps_per_epoch
        t0 = time.perf_counter()
        per_epoch = s.progress == "epoch" and self.rank == 0
        with progress_bar(n_samples, f"{s.label} epoch {epoch + 1}/{s.epochs}", unit=s.unit, enabled=per_epoch) as bar:
            for k, parts in enumerate(zip(*loaders)):
                gstep = epoch * self.steps_per_epoch + k
                step = Step(self.forward_model, dict(zip(self.streams, parts)), epoch, gstep,
                            gstep / max(total_steps, 1), self.world, net=self.raw, gather=self._gather)
                with fabric.autocast():
                    terms = {n: scalar_term(v, n).to(device) for n, v in self.objective(step).items()}
                if not terms:
                    raise TransferkitError(f"objective {self.objective.name!r} returned no loss terms")
                loss = sum(terms.values())
                if self.world > 1:
                    finite = bool(torch.isfinite(fabric.all_reduce(loss.detach().float().reshape(1), reduce_op="sum")))
                else:
                    finite = math.isfinite(float(loss.detach()))
                if not finite:
                    self._diverged(epoch, k, terms)
                self.optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss, model=self.model)
                if s.max_grad_norm:
                    fabric.clip_gradients(self.model, self.optimizer, max_norm=s.max_grad_norm,
                                          error_if_nonfinite=False)
                self.optimizer.step()
                self.scheduler.step()
                self._ema_update()
                for n, v in step.metrics.items():
                    msums[n] = msums.get(n, 0.0) + float(v)
                size = parts[0].global_size
                seen += size
                for n, v in terms.items():
                    sums[n] = sums.get(n, torch.zeros((), device=device, dtype=torch.float64)) + v.detach().double() * size
                bar.advance(size)
                if per_epoch:
                    bar.set_description(f"{s.label} epoch {epoch + 1}/{s.epochs} loss {float(loss.detach()):.4f}")
                if run_bar is not None:
                    run_bar.advance(1)
        names = list(sums)
        vec = torch.stack([sums[n] for n in names]) if names else torch.zeros(0, device=device, dtype=torch.float64)
        if self.world > 1 and names:
            vec = fabric.all_reduce(vec, reduce_op="mean")
        train_seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch + 1}
        values = [float(v) / max(seen, 1) for v in vec.tolist()]
        if names:
            row["train_loss"] = float(sum(values))  # every term; each also as loss_<name>
        for n, v in zip(names, values):
            row[f"loss_{n}"] = v
        if msums:  # what objectives measure without it being a loss (e.g. the share of pseudo-labels used)
            mvec = torch.tensor([msums[n] / max(self.steps_per_epoch, 1) for n in msums], device=device,
                                dtype=torch.float64)
            if self.world > 1:
                mvec = fabric.all_reduce(mvec, reduce_op="mean")
            row.update({f"metric_{n}": float(v) for n, v in zip(msums, mvec.tolist())})
        row.update(self.objective.epoch_state())  # e.g. per-class thresholds, with or without a validation split
        scores = self._evaluate(epoch)
        row.update(scores)
        row.update(lr=float(self.optimizer.param_groups[0]["lr"]), trainable_groups=int(sum(getattr(self, "_flags", []) or [])),
                   seconds=time.perf_counter() - t0, samples_per_s=n_samples / max(train_seconds, 1e-9))
        bad = [k for k, v in row.items() if isinstance(v, float) and (k.startswith("loss") or k == "train_loss"
                                                                      or k.endswith("_loss")) and not math.isfinite(v)]
        if bad:
            self._diverged(epoch, None, {}, what=f"{bad[0].replace('_', ' ')} is {row[bad[0]]}")
        row["best"] = self._update_best(epoch + 1, scores)
        if run_bar is not None:
            best = self.best["scores"] or {}
            sel = self.plan.evaluator.selection if self.plan.evaluator else None
            shown = f" best {sel} {best[sel]:.3f}" if sel and isinstance(best.get(sel), (int, float)) else ""
            run_bar.set_description(f"{s.label} epoch {epoch + 1}/{s.epochs}{shown}")
        return row

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor from every process, concatenated along the first dimension (itself with one process)."""
        if self.world == 1:
            return t
        return self.fabric.all_gather(t).reshape(-1, *t.shape[1:])

    @torch.no_grad()
    def _ema_update(self) -> None:
        if self.ema is None:
            return
        self.ema_updates += 1
        t = self.ema_updates
        d = min(float(self.s.ema_decay), (1 + t) / (10 + t))
        for k, v in self.raw.state_dict().items():
            if v.dtype.is_floating_point:
                self.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.ema[k].copy_(v)

    @contextlib.contextmanager
    def _averaged(self):
        """The model holds the averaged weights inside the block (nothing changes without an EMA)."""
        if self.ema is None:
            yield
            return
        current = {k: v.detach().clone() for k, v in self.raw.state_dict().items()}
        self.raw.load_state_dict(self.ema)
        try:
            yield
        finally:
            self.raw.load_state_dict(current)

    def _evaluate(self, epoch: int) -> dict[str, Any]:
        ev = self.plan.evaluator
        if ev is None:
            return {}
        self.container.eval()
        with torch.no_grad(), self._averaged():
            return dict(ev.evaluate(lambda name: self._predict(ev.streams[name], ev.features), epoch))

    def _update_best(self, epoch: int, scores: dict[str, Any]) -> bool:
        ev = self.plan.evaluator
        better = ev is None or ev.is_better(scores, self.best["scores"])
        if better:
            with self._averaged():
                self.best = {"epoch": epoch, "scores": dict(scores),
                             "state": {"model": _cpu_state(self.raw), "objective": _cpu_state(self.objective)}}
        return bool(better)

    @torch.no_grad()
    def _predict(self, stream: Stream, features: bool = False) -> Outputs:
        """Logits (and features) of every item of an evaluation stream, gathered over processes (exactly: each row
        comes from one process, so a sum gathers them)."""
        self.container.eval()
        n = len(stream)
        logit_parts, feat_parts, idx_parts = [], [], []
        for x, pos in stream.eval_batches(self.s.eval_batch_size, self.rank, self.world):
            with self.fabric.autocast():
                lg, ft = self.forward_model(x, return_features=True)
            logit_parts.append(lg.float())
            if features:
                feat_parts.append(ft.float())
            idx_parts.append(torch.as_tensor(np.asarray(pos), device=lg.device))
        device = self.fabric.device
        C = logit_parts[0].shape[1] if logit_parts else 0
        L = torch.zeros(n, C, device=device)
        F = torch.zeros(n, feat_parts[0].shape[1], device=device) if feat_parts else None
        if logit_parts:
            J = torch.cat(idx_parts).to(device)
            keep = J >= 0
            L[J[keep]] = torch.cat(logit_parts).to(device)[keep]
            if F is not None:
                F[J[keep]] = torch.cat(feat_parts).to(device)[keep]
        if self.world > 1:
            L = self.fabric.all_reduce(L, reduce_op="sum")
            if F is not None:
                F = self.fabric.all_reduce(F, reduce_op="sum")
        return Outputs(L.cpu().numpy(), None if F is None else F.cpu().numpy())

    def _diverged(self, epoch: int, step: int | None, terms: dict[str, torch.Tensor], what: str | None = None) -> None:
        if what is None:
            parts = [f"{n} {float(v.detach()):.4g}" for n, v in terms.items()]
            what = (f"the loss is not finite at epoch {epoch + 1}, step {step + 1} of {self.steps_per_epoch} "
                    f"({', '.join(parts)})")
        else:
            what = f"at epoch {epoch + 1} the {what}"
        last = len(self.history)
        if self.ckpt_path is None:
            kept = "nothing was saved (no run directory)"
        else:
            kept = (f"the last good checkpoint, after epoch {last}, is kept at {self.ckpt_path}" if last
                    else "no epoch finished, so there is no checkpoint")
        lr = self.optimizer.param_groups[0].get("initial_lr", self.optimizer.param_groups[0]["lr"])
        raise TrainingError(f"training diverged: {what}; {kept}. Lower the learning rate (lr={lr:.3g}), keep gradient "
                            "clipping on, or train with precision='32'")

    def _finish(self, stop_reason: str, resumed_from: int | None) -> dict[str, Any]:
        if self.best["state"] is not None:
            self.raw.load_state_dict(self.best["state"]["model"])
            self.objective.load_state_dict(self.best["state"]["objective"])
        preds = {name: self._predict(st, features=False) for name, st in self.plan.final.items()}
        keep = self.rank == 0 or not self.job.spawned
        out = {"history": list(self.history), "best_epoch": int(self.best["epoch"] or len(self.history)),
               "best_scores": dict(self.best["scores"] or {}), "stop_reason": stop_reason,
               "epochs_run": len(self.history), "resumed_from": resumed_from,
               "train_seconds": float(sum(r["seconds"] for r in self.history)), "predictions": preds,
               "checkpoint": self.ckpt_path, "device": str(self.fabric.device),
               "model": copy.deepcopy(self.raw).cpu().eval() if keep and not self.job.spawned else None,
               "objective": copy.deepcopy(self.objective).cpu().eval() if keep and not self.job.spawned else None}
        if self.job.spawned and self.rank == 0:
            # the chosen weights go back to the parent through a file: through the launcher's queue, tensors would
            # travel as shared-memory handles that die with this process, and a large payload blocks the pipe
            import tempfile

            fd, name = tempfile.mkstemp(prefix="transferkit-state-", suffix=".pt")
            with os.fdopen(fd, "wb") as f:
                torch.save({"model": _cpu_state(self.raw), "objective": _cpu_state(self.objective)}, f)
            out["state_file"] = name
        return out

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _read_checkpoint(self) -> dict[str, Any] | None:
        if self.ckpt_path is None:
            return None
        if self.rank == 0 and self.ckpt_path.parent.is_dir():  # a write cut short by a kill leaves a temp file
            for stale in self.ckpt_path.parent.glob(f".{self.ckpt_path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        if not self.ckpt_path.is_file():
            if self.job.resume and self.rank == 0 and self.job.log:
                self.job.log(f"no checkpoint in {self.job.run_dir}: starting a new run")
            return None
        if not self.job.resume:
            raise TrainingError(f"{self.job.run_dir} already holds a training checkpoint ({self.ckpt_path}); resume "
                                "it with resume=True, or choose a new run directory")
        state = load_checkpoint(self.ckpt_path)
        if state.get("config_hash") != self.config_hash:
            diffs = _differences(state.get("identity", {}), self.identity)
            shown = "; ".join(f"{k}: {_short(a)} in the checkpoint, {_short(b)} now" for k, (a, b) in diffs.items())
            raise ResumeMismatchError(
                f"cannot resume {self.job.run_dir}: its checkpoint was made with other settings ({shown}). Resume "
                "with the same settings, or start a new run directory", diffs)
        return state

    def _save_checkpoint(self, epoch: int, finished: bool, stop_reason: str) -> None:
        if self.ckpt_path is None:
            return
        if self.rank == 0:
            state = {
                "format": CHECKPOINT_FORMAT, "epoch": epoch, "finished": finished, "stop_reason": stop_reason,
                "identity": self.identity, "config_hash": self.config_hash,
                "model": self.raw.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "best": self.best, "history": self.history, "rng": _get_rng(self.fabric.device),
                "ema": None if self.ema is None else {k: v.detach().cpu() for k, v in self.ema.items()},
                "ema_updates": self.ema_updates,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write_bytes(self.ckpt_path, buf.getvalue())
        self.fabric.barrier()

    def _write_info(self) -> None:
        if self.job.run_dir is None or self.plan.info is None:
            return
        info = {**self.plan.info, "identity": self.identity, "config_hash": self.config_hash,
                "steps_per_epoch": self.steps_per_epoch, "processes": self.world, "device": str(self.fabric.device)}
        atomic_write_bytes(self.job.run_dir / self.plan.info_name, json.dumps(info, indent=2, default=str).encode())

    def _line(self, row: dict[str, Any]) -> str:
        s = self.s
        terms = ", ".join(f"{k[5:]} {v:.4g}" for k, v in row.items() if k.startswith("loss_"))
        skip = {"epoch", "train_loss", "lr", "trainable_groups", "seconds", "samples_per_s", "best"}
        def shown(k: str, v: Any) -> str:
            name = k[7:] if k.startswith("metric_") else k
            if name.endswith(("accuracy", "rate")) and 0 <= v <= 1:
                return f"{name.replace('_', ' ')} {100 * v:.1f}%"
            return f"{name.replace('_', ' ')} {v:.4g}"

        scores = ", ".join(shown(k, v) for k, v in row.items()
                           if k not in skip and not k.startswith("loss_") and isinstance(v, (int, float))
                           and not isinstance(v, bool))
        unit = "evaluation" if s.unit == "steps" else "epoch"
        return (f"{s.label} {unit} {row['epoch']}/{s.epochs}: {terms}" + (f" | {scores}" if scores else "")
                + f"{' (best)' if row.get('best') else ''}, {row['seconds']:.1f}s")


# ---------------------------------------------------------------------------------------------------------------
# helpers
def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``torch.load(weights_only=True)``: no code is unpickled).

    Raises:
        TrainingError: the file is not a readable transferkit checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files fail in many ways
        raise TrainingError(f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); remove it to start the run "
                            "over") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a transferkit training checkpoint of this version (format "
                            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, expected "
                            f"{CHECKPOINT_FORMAT!r}); remove it to start the run over")
    return state


def frozen_modules(model: nn.Module) -> list[str]:
    """Names of the largest sub-modules whose parameters are all frozen (and that have some)."""
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(prefix)
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return out


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, then eval mode for every fully frozen part and every layer marked ``keep_statistics``.

    Frozen BatchNorm layers keep their running statistics (and normalise with them), and dropout in frozen parts is
    off: a frozen part behaves as the fixed feature extractor it is meant to be. A normalisation layer whose bias
    trains but whose statistics must stay (BitFit) carries ``keep_statistics = True``.
    """
    model.train()
    for name in frozen_modules(model):
        (model.get_submodule(name) if name else model).eval()
    for m in model.modules():
        if getattr(m, "keep_statistics", False):
            m.eval()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_bytes(path, buf.getvalue().encode())


def _get_rng(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
