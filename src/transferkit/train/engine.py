"""The training engine: one loop of ours; Lightning Fabric handles devices, precision and DDP.

Every fine-tuning method is this loop with a different :class:`~transferkit.train.strategies.Strategy`
(which layers train, at which learning rate) and different ``extra_losses`` (regularizers, and later
domain-adaptation terms). Nothing else in the package imports ``torch.distributed``: Fabric sets up the
process group, gathers and reduces.

What a run leaves in ``run_dir``::

    checkpoints/last.ckpt    written atomically after every epoch: model, optimizer, scheduler, RNG states,
                             epoch, best-so-far weights and metrics, history, the configuration and its hash
    epochs.csv               one row per epoch: train loss, extra-loss terms, val loss/accuracy, lr, time, speed
    finetune.json            the configuration, layer groups and parameter counts
    model/finetuned.safetensors (+ .json)   the best model with its preprocessing (see export.py)

Reproducibility: the order of the training data, the augmentation of every item and the model's own
randomness (dropout) are functions of ``(seed, epoch)`` (and the item), never of how many epochs ran in
this process. So a run killed at any point (even ``kill -9``) and resumed from its last checkpoint ends with
the same weights and metrics as an uninterrupted run, and the number of data-loading workers does not
change the result. Under DDP the global batch is the same as with one process, split between processes,
and the loss is scaled so the averaged gradient equals the one-process gradient (BatchNorm statistics are
per process on CPU; on GPU they are synchronised).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import pickle
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..backbones.base import Backbone
from ..data.sources import DataSource
from ..data.splits import Splits
from .._io import atomic_write_bytes
from ..errors import DataError, ModalityError, ResumeMismatchError, TrainingError, TransferkitError
from .model import TransferModel, layer_groups, prepare_backbone
from .regularizers import describe_loss, loss_name
from .strategies import Strategy, create_strategy, group_lr, set_train_mode

__all__ = ["TrainConfig", "StepOutputs", "FinetuneResult", "finetune", "CHECKPOINT_FORMAT", "load_checkpoint"]

CHECKPOINT_FORMAT = "transferkit-train/1"
_PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
_NOT_HASHED = ("num_workers", "eval_batch_size")  # do not change the result


@dataclass
class TrainConfig:
    """Settings of one training run (defaults suit small data: tens to thousands of labelled samples).

    Checked on the built-in ``clipart`` set (12 classes, 10 labels per class, 240 test images): ``lite0``
    with ``finetune``, ``epochs=12, image_size=128`` and the other defaults reaches about 53% test accuracy
    (chance 8%) in 95 s on one CPU thread.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: global batch size (split between processes under DDP).
        lr: learning rate of the new head; backbone groups get ``lr * backbone_lr_scale`` (the strategy
            may change the scale: ``scratch`` uses 1, ``gradual`` a layer-wise decay).
        backbone_lr_scale: backbone learning rate relative to the head's.
        weight_decay: AdamW's decoupled weight decay (not on biases and norm weights).
        optimizer: ``"adamw"`` (the only one for now).
        schedule: ``"cosine"`` (decay to ``min_lr_ratio * lr``) or ``"constant"``, both after a linear warmup.
        warmup_epochs: length of the linear warmup, in epochs (fractions allowed).
        min_lr_ratio: the cosine schedule's final learning rate relative to the initial one.
        label_smoothing: label smoothing of the cross-entropy.
        max_grad_norm: clip the gradient norm to this (None: no clipping).
        patience: stop after this many epochs without a better validation score (None: never).
        seed: seeds initialisation, data order, augmentation and dropout.
        precision: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"`` (GPU; Fabric uses bf16 on CPU).
        devices: number of processes/devices; more than one trains with DDP (gloo on CPU, NCCL on GPU).
        accelerator: ``"auto"``, ``"cpu"``, ``"gpu"``/``"cuda"`` or ``"mps"``.
        num_workers: data-loading worker processes (None: one fewer than the CPUs, at most 8).
        augment: random training augmentation (the backbone's ``train_transform``: timm's
            ``create_transform(is_training=True)``); off: the evaluation transform.
        crop_scale: area range of the random resized crop.
        hflip: probability of a horizontal flip (0 for digits, text in images, ...).
        image_size: train and evaluate at this side instead of the backbone's default input size.
        head_dropout: dropout on the features before the head.
        eval_batch_size: batch size for validation and test (None: twice ``batch_size``).
    """

    epochs: int = 15
    batch_size: int = 16
    lr: float = 2e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    max_grad_norm: float | None = 1.0
    patience: int | None = 5
    seed: int = 0
    precision: str = "32"
    devices: int = 1
    accelerator: str = "auto"
    num_workers: int | None = None
    augment: bool = True
    crop_scale: tuple[float, float] = (0.25, 1.0)
    hflip: float = 0.5
    image_size: int | None = None
    head_dropout: float = 0.0
    eval_batch_size: int | None = None

    def validate(self) -> "TrainConfig":
        """Check every setting; raise one :class:`TransferkitError` listing all problems."""
        bad: list[str] = []

        def need(ok: bool, msg: str) -> None:
            if not ok:
                bad.append(msg)

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1 (got {self.epochs!r})")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be >= 1 (got {self.batch_size!r})")
        need(_pos(self.lr), f"lr must be a positive number (got {self.lr!r})")
        need(_pos(self.backbone_lr_scale), f"backbone_lr_scale must be positive (got {self.backbone_lr_scale!r})")
        need(_num(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0 (got {self.weight_decay!r})")
        need(self.optimizer == "adamw", f"optimizer must be 'adamw' (got {self.optimizer!r})")
        need(self.schedule in ("cosine", "constant"),
             f"schedule must be 'cosine' or 'constant' (got {self.schedule!r})")
        need(_num(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"warmup_epochs must be >= 0 (got {self.warmup_epochs!r})")
        need(_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
             f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio!r})")
        need(_num(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"label_smoothing must be in [0, 1) (got {self.label_smoothing!r})")
        need(self.max_grad_norm is None or _pos(self.max_grad_norm),
             f"max_grad_norm must be positive or None (got {self.max_grad_norm!r})")
        need(self.patience is None or (isinstance(self.patience, int) and self.patience >= 1),
             f"patience must be an integer >= 1 or None (got {self.patience!r})")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0 (got {self.seed!r})")
        need(self.precision in _PRECISIONS,
             f"precision must be one of {', '.join(_PRECISIONS)} (got {self.precision!r})")
        need(isinstance(self.devices, int) and self.devices >= 1,
             f"devices must be an integer >= 1 (got {self.devices!r})")
        need(self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"),
             f"accelerator must be auto, cpu, gpu, cuda or mps (got {self.accelerator!r})")
        need(self.num_workers is None or (isinstance(self.num_workers, int) and self.num_workers >= 0),
             f"num_workers must be >= 0 or None (got {self.num_workers!r})")
        need(isinstance(self.crop_scale, (tuple, list)) and len(self.crop_scale) == 2
             and all(_num(v) for v in self.crop_scale) and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             f"crop_scale must be (low, high) with 0 < low <= high <= 1 (got {self.crop_scale!r})")
        need(_num(self.hflip) and 0 <= self.hflip <= 1, f"hflip must be a probability (got {self.hflip!r})")
        need(self.image_size is None or (isinstance(self.image_size, int) and self.image_size >= 8),
             f"image_size must be an integer >= 8 or None (got {self.image_size!r})")
        need(_num(self.head_dropout) and 0 <= self.head_dropout < 1,
             f"head_dropout must be in [0, 1) (got {self.head_dropout!r})")
        need(self.eval_batch_size is None or (isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1),
             f"eval_batch_size must be >= 1 or None (got {self.eval_batch_size!r})")
        if bad:
            raise TransferkitError("invalid training configuration: " + "; ".join(bad))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-compatible values."""
        return json.loads(json.dumps(asdict(self)))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos(v: Any) -> bool:
    return _num(v) and v > 0


@dataclass
class StepOutputs:
    """What an extra loss sees at one training step (besides the model).

    Attributes:
        inputs: the batch as the model received it (image tensor or dict of token tensors).
        targets: ``(N,)`` class indices.
        logits: ``(N, C)``.
        features: ``(N, D)`` backbone features (the head's input).
        epoch: 0-based epoch.
        step: 0-based global step.
    """

    inputs: Any
    targets: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor
    epoch: int
    step: int


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        test_index: indices (into the source) of the test split, in the order of the rows below.
        y_pred: ``(n_test,)`` predicted class indices.
        proba: ``(n_test, C)`` class probabilities.
        val_accuracy: validation accuracy of the chosen (best) epoch; None without a validation split.
        best_epoch: the chosen epoch (1-based); the last one without a validation split.
        epochs_run: epochs trained in total (over all resumptions).
        stop_reason: ``"early stopping"`` or ``"max epochs"`` (resuming a finished run trains nothing and
            reports the reason it stopped; then ``resumed_from == epochs_run``).
        history: one dict per epoch (the rows of ``epochs.csv``).
        seconds: wall time of this call.
        train_seconds: training time summed over all epochs (also those before a resume).
        run_dir: the run directory.
        checkpoint: path of the last checkpoint.
        model_path: the exported model (``model/finetuned.safetensors``) or None.
        resumed_from: the epoch the run resumed after (None for a fresh run).
        model: the trained :class:`TransferModel` with the best weights, on CPU, in eval mode.
        config: the run configuration (training settings, strategy, backbone, losses, data) and its hash.
        preprocessing: the evaluation preprocessing (timm data config or tokenizer settings).
    """

    test_index: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray
    val_accuracy: float | None
    best_epoch: int
    epochs_run: int
    stop_reason: str
    history: list[dict[str, Any]]
    seconds: float
    train_seconds: float
    run_dir: Path
    checkpoint: Path
    model_path: Path | None
    resumed_from: int | None
    model: TransferModel | None = field(default=None, repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    preprocessing: dict[str, Any] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------------------------------------
# the entry point
def finetune(source: DataSource, y: np.ndarray, splits: Splits, backbone: str | Backbone = "lite0",
             strategy: str | Strategy = "finetune", config: TrainConfig | None = None,
             run_dir: str | Path | None = None, *, resume: bool = False, strategy_params: dict[str, Any] | None = None,
             extra_losses: Sequence[Callable] = (), classes: Sequence[str] | None = None,
             callbacks: Sequence[Callable[[dict[str, Any]], None]] = (), progress: bool = False,
             log: Callable[[str], None] | None = None, export: bool = True) -> FinetuneResult:
    """Train ``backbone`` + a linear head on ``source`` with a fine-tuning strategy; predict the test split.

    Args:
        source: the data (images or texts).
        y: integer class index of every item of ``source``.
        splits: train / val / test index arrays (:func:`transferkit.data.splits.make_splits`). The model is
            chosen on ``val`` only; ``test`` is predicted once, at the end.
        backbone: a registry name (``"lite0"``, ``"random:resnet18"``, ``"minilm"``) or a backbone (copied,
            not changed).
        strategy: ``finetune``, ``partial``, ``gradual``, ``scratch``, ``probe`` or a strategy object.
        config: training settings (:class:`TrainConfig`).
        run_dir: where checkpoints, ``epochs.csv`` and the model go (default ``runs/<date>-<data>-<backbone>``).
        resume: continue from the last checkpoint in ``run_dir`` (with the same settings; refused otherwise).
        strategy_params: parameters of a strategy given by name (``{"freeze": 2}``).
        extra_losses: loss terms ``term(model, outputs) -> scalar`` added to the cross-entropy
            (:class:`~transferkit.train.regularizers.L2SP`, :class:`~transferkit.train.regularizers.BSS`, ...).
        classes: class names (for the exported model); default ``"0"..."C-1"``.
        callbacks: called after every epoch's checkpoint with ``{"epoch", "row", "history", "checkpoint",
            "model", "rank"}`` (on every process).
        progress: show a progress bar per epoch (loss, images/s) on stderr.
        log: called with one line per epoch (e.g. ``print``).
        export: write the best model to ``run_dir/model/finetuned.safetensors`` (+ ``.json``).

    Returns:
        :class:`FinetuneResult`: test predictions and probabilities, validation accuracy, history, timings,
        and the trained model.

    Raises:
        TransferkitError: bad settings, labels or splits; UnknownNameError for an unknown strategy or
            freeze point; ModalityError when the data does not fit the backbone.
        TrainingError: the loss became NaN/inf (the last good checkpoint is kept), or ``run_dir`` already holds
            a checkpoint and ``resume`` is False.
        ResumeMismatchError: ``resume=True`` with other settings than the checkpoint's (lists the differences).
    """
    t0 = time.perf_counter()
    cfg = (config if config is not None else TrainConfig())
    if not isinstance(cfg, TrainConfig):
        raise TransferkitError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    strat = create_strategy(strategy, **(strategy_params or {}))
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(source) or y.dtype.kind not in "iu":
        raise DataError(f"y must hold one integer class index per item of {source.origin or source.name} "
                        f"({len(source)} items); got shape {y.shape} and dtype {y.dtype}")
    y = y.astype(np.int64)
    if isinstance(splits, (tuple, list)) and len(splits) == 3:
        splits = Splits(*(np.asarray(s, dtype=np.int64) for s in splits))
    for name in ("train", "val", "test"):
        idx = np.asarray(getattr(splits, name))
        if len(idx) and (idx.min() < 0 or idx.max() >= len(source)):
            raise DataError(f"splits.{name} holds indices outside 0..{len(source) - 1}")
    if len(splits.train) == 0:
        raise DataError("the training split is empty")
    num_classes = len(classes) if classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"labels must be class indices in 0..{num_classes - 1}; got {int(y.min())}..{int(y.max())}")
    if num_classes < 2:
        raise DataError("a classifier needs at least 2 classes")
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
    modality = _backbone_modality(backbone)
    if modality != source.modality:
        raise ModalityError(f"{source.origin or source.name} holds {source.modality} data but backbone "
                            f"{_backbone_name(backbone)!r} takes {modality}s; choose a {source.modality} backbone "
                            "(see `transferkit backbones`)")
    world = cfg.devices
    if len(splits.train) < 2 * world:
        raise DataError(f"the training split has {len(splits.train)} samples: too few for {world} process(es) "
                        f"(at least {2 * world})")
    from ..runs import default_run_dir, prepare_run_dir

    out_dir = prepare_run_dir(run_dir if run_dir is not None else
                              default_run_dir(source.name, _backbone_name(backbone)))
    losses = list(extra_losses)
    for term in losses:
        if not callable(term):
            raise TransferkitError(f"extra_losses must be callables term(model, outputs) -> scalar; got {term!r}")
    job = _Job(source=source, y=y, splits=splits, backbone=backbone, strategy=strat, cfg=cfg, run_dir=out_dir,
               resume=bool(resume), losses=losses, classes=classes, callbacks=list(callbacks), progress=progress,
               log=log, export=export)
    fabric, start_method = _make_fabric(cfg)
    if start_method:
        job.spawned = True
        if start_method == "spawn":
            if job.log is not None and not _picklable(job.log):
                job.log = _print_err
            try:
                pickle.dumps(job)
            except Exception as e:  # what fails to pickle varies: lambdas, open files, locks
                raise TransferkitError(
                    f"devices={world} starts new processes, which need the data, extra losses and callbacks to be "
                    f"picklable ({type(e).__name__}: {e}); use module-level functions or classes instead of lambdas "
                    "and closures") from e
        payload: Any = _Box(job)  # Lightning does not walk into it (it cannot copy frozen dataclasses)
    else:
        payload = job
    out = fabric.launch(_fit_worker, payload)
    if isinstance(out, dict) and "error" in out:
        raise out["error"]
    model = out.pop("model", None)
    if model is None:  # trained in other processes: rebuild from the checkpoint's best weights
        model = _model_from_checkpoint(job, Path(out["checkpoint"]))
    return FinetuneResult(model=model, seconds=time.perf_counter() - t0, **out)


def _backbone_name(backbone: str | Backbone) -> str:
    return backbone if isinstance(backbone, str) else backbone.name


def _backbone_modality(backbone: str | Backbone) -> str:
    if isinstance(backbone, Backbone):
        return backbone.modality
    from ..backbones import get_spec

    return get_spec(backbone)[0].modality


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # any pickling failure means "no"
        return False


def _print_err(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _make_fabric(cfg: TrainConfig):
    """A Fabric for the config, and how it starts processes (None: it starts none).

    One device: no new process. Several: DDP; under an external launcher (``torchrun``) Fabric joins its
    processes; otherwise Fabric starts them, by ``fork`` on CPU under Linux (fast: nothing is imported again;
    Lightning sets one thread per process) and by ``spawn`` elsewhere (CUDA cannot be forked).
    """
    import sys

    from lightning.fabric import Fabric
    from lightning.fabric.plugins.environments import TorchElasticEnvironment
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    start_method = None
    strategy = "auto"
    accelerator = "cuda" if cfg.accelerator == "gpu" else cfg.accelerator
    if cfg.devices > 1:
        if TorchElasticEnvironment.detect():
            strategy = "ddp"
        else:
            on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                               and not torch.backends.mps.is_available())
            start_method = "fork" if on_cpu and sys.platform.startswith("linux") else "spawn"
            strategy = f"ddp_{start_method}"
    try:
        fabric = Fabric(accelerator=accelerator, devices=cfg.devices, strategy=strategy,
                        precision=_PRECISIONS[cfg.precision])
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise TransferkitError(f"cannot train with accelerator={cfg.accelerator!r}, devices={cfg.devices}, "
                               f"precision={cfg.precision!r} here: {e}") from e
    return fabric, start_method


# ---------------------------------------------------------------------------------------------------------
# data
def _seed(*parts: int) -> int:
    """A 32-bit seed from integers (``SeedSequence`` mixing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class _Samples(torch.utils.data.Dataset):
    """Items ``positions`` of a source with their targets; with ``seeded`` the transform's randomness is a
    function of ``(seed, epoch, item)`` only (so neither workers nor resumption change it)."""

    def __init__(self, source: DataSource, positions: np.ndarray, targets: np.ndarray, transform: Callable | None,
                 seed: int, seeded: bool):
        self.source, self.positions, self.targets = source, np.asarray(positions), np.asarray(targets)
        self.transform, self.seed, self.seeded = transform, seed, seeded
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int):
        if j >= len(self.positions):  # padding of an evaluation shard
            x, t, _ = self[j % len(self.positions)]
            return x, t, -1
        i = int(self.positions[j])
        x = self.source.load(i)
        if self.transform is not None:
            if self.seeded:
                with _seeded_rng(_seed(self.seed, self.epoch, i, 7)):
                    x = self.transform(x)
            else:
                x = self.transform(x)
        return x, int(self.targets[j]), j


@contextlib.contextmanager
def _seeded_rng(seed: int):
    """Seed Python's, NumPy's and torch's CPU generators for a block, then restore them."""
    py, npst, tst = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(tst)


def _stack(items: list) -> torch.Tensor:
    return torch.stack(items)


class _Collate:
    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, batch):
        xs, ts, js = zip(*batch)
        return self.collate(list(xs)), torch.as_tensor(ts, dtype=torch.long), torch.as_tensor(js, dtype=torch.long)


class _TrainBatches:
    """Global batches over a permutation that depends on ``(seed, epoch)`` only; each process takes its
    contiguous part of every global batch (a sampler that shards itself, so Fabric leaves it alone).

    The last global batch is dropped when it would give a process fewer than 2 samples (BatchNorm needs 2).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        full, rem = divmod(n, batch_size)
        self.sizes = [batch_size] * full + ([rem] if rem and (rem >= 2 * world or full == 0) else [])

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        perm = np.random.default_rng(_seed(self.seed, self.epoch, 3)).permutation(self.n)
        start = 0
        for size in self.sizes:
            yield np.array_split(perm[start:start + size], self.world)[self.rank].tolist()
            start += size


class _EvalBatches:
    """This process's share of ``n`` items, padded so every process runs the same number of batches.

    Padding indices are ``>= n``: the dataset returns them with position -1, and they are dropped.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int):
        per = -(-n // world) if n else 0
        self.mine = np.arange(per * world)[rank * per:(rank + 1) * per]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.mine) // self.batch_size)

    def __iter__(self):
        for s in range(0, len(self.mine), self.batch_size):
            yield self.mine[s:s + self.batch_size].tolist()


def _transforms(backbone: Backbone, cfg: TrainConfig):
    """(train transform, eval transform, eval preprocessing dict) for image backbones; Nones for text."""
    if backbone.modality != "image":
        return None, None, dict(backbone.data_config())
    import timm.data

    data_cfg = dict(backbone.data_config())
    if cfg.image_size:
        data_cfg["input_size"] = [3, cfg.image_size, cfg.image_size]
        eval_tf = timm.data.create_transform(**data_cfg, is_training=False)
    else:
        eval_tf = backbone.transform()
    if cfg.augment and hasattr(backbone, "train_transform"):
        over: dict[str, Any] = {"scale": tuple(cfg.crop_scale), "hflip": float(cfg.hflip)}
        if cfg.image_size:
            over["input_size"] = (3, cfg.image_size, cfg.image_size)
        train_tf = backbone.train_transform(**over)
    else:
        train_tf = eval_tf
    return train_tf, eval_tf, data_cfg


# ---------------------------------------------------------------------------------------------------------
# the job and the worker
@dataclass
class _Job:
    source: DataSource
    y: np.ndarray
    splits: Splits
    backbone: str | Backbone
    strategy: Strategy
    cfg: TrainConfig
    run_dir: Path
    resume: bool
    losses: list
    classes: list[str]
    callbacks: list
    progress: bool
    log: Callable[[str], None] | None
    export: bool
    spawned: bool = False


class _Trainable(nn.Module):
    """What Fabric wraps: the model, and the extra-loss modules that have parameters (so DDP syncs them)."""

    def __init__(self, model: TransferModel, extras: list[nn.Module]):
        super().__init__()
        self.model = model
        self.extras = nn.ModuleList(extras)

    def forward(self, x: Any, return_features: bool = False):
        return self.model(x, return_features=return_features)


def _build_model(job: _Job) -> tuple[TransferModel, dict[str, Any], list, list[str]]:
    """The model (pretrained backbone + seeded head), the backbone's identity, its groups and unused params."""
    if isinstance(job.backbone, str):
        from ..backbones import create_backbone

        bb = create_backbone(job.backbone)
    else:
        bb = copy.deepcopy(job.backbone)
    identity = {"name": bb.name, "class": type(bb).__name__, "weights": bb.weights_digest()}
    prepare_backbone(bb)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(job.cfg.seed, 11))
        model = TransferModel(bb, len(job.classes), dropout=job.cfg.head_dropout)
    groups, unused = layer_groups(bb, getattr(job.strategy, "granularity", "coarse"))
    return model, identity, groups, unused


def _model_from_checkpoint(job: _Job, path: Path) -> TransferModel:
    model, _, _, _ = _build_model(job)
    state = load_checkpoint(path)
    model.load_state_dict(state["best"]["state"])
    return model.eval()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``torch.load(weights_only=True)``: no code is unpickled).

    Raises:
        TrainingError: the file is not a readable transferkit checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files fail in many ways
        raise TrainingError(f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); remove it to start "
                            "the run over") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a transferkit training checkpoint (format "
                            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                            f"expected {CHECKPOINT_FORMAT!r})")
    return state


class _Box:
    """An opaque holder for the job, handed to the processes Fabric starts."""

    def __init__(self, job: _Job):
        self.job = job


def _fit_worker(fabric, job: _Job | _Box) -> dict[str, Any]:
    if isinstance(job, _Box):
        job = job.job
    try:
        device = fabric.device
        with _rng_guard(device):
            return _Trainer(fabric, job).run()
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


class _Trainer:
    def __init__(self, fabric, job: _Job):
        self.fabric, self.job, self.cfg = fabric, job, job.cfg
        self.rank, self.world = int(fabric.global_rank), int(fabric.world_size)
        self.ckpt_path = job.run_dir / "checkpoints" / "last.ckpt"

    # -- setup -----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        job, cfg = self.job, self.cfg
        self.raw, bb_identity, self.groups, unused = _build_model(job)
        self.strategy = copy.deepcopy(job.strategy)
        self.strategy.bind(self.groups)
        bb_params = dict(self.raw.backbone.named_parameters())
        self.group_params = [[bb_params[n] for n in g.params] for g in self.groups]
        for n in unused:
            bb_params[n].requires_grad_(False)
        self.strategy.prepare(self.raw, cfg.seed)
        self.losses = list(job.losses)
        self.loss_names = _unique([loss_name(t) for t in self.losses])
        for term in self.losses:
            if hasattr(term, "setup"):
                term.setup(self.raw)
        extras = [t for t in self.losses if isinstance(t, nn.Module) and any(True for _ in t.parameters())]
        self.container = _Trainable(self.raw, extras)
        self.identity = {
            "train": {k: v for k, v in self.cfg.to_dict().items() if k not in _NOT_HASHED},
            "strategy": self.strategy.config(),
            "backbone": bb_identity,
            "losses": [describe_loss(t) for t in self.losses],
            "data": {"items": job.source.fingerprint(), "labels": _digest(job.y.tobytes()),
                     "train": _digest(np.asarray(job.splits.train, np.int64).tobytes()),
                     "val": _digest(np.asarray(job.splits.val, np.int64).tobytes()),
                     "num_classes": len(job.classes)},
        }
        self.identity = json.loads(json.dumps(self.identity, default=str))
        self.config_hash = _digest(json.dumps(self.identity, sort_keys=True).encode())
        # data
        bb = self.raw.backbone
        train_tf, eval_tf, self.preprocessing = _transforms(bb, cfg)
        collate = _Collate(_stack if bb.modality == "image" else bb.collate)
        sp = job.splits
        self.train_ds = _Samples(job.source, sp.train, job.y[sp.train], train_tf, cfg.seed, seeded=True)
        self.train_batches = _TrainBatches(len(sp.train), cfg.batch_size, cfg.seed, self.rank, self.world)
        self.steps_per_epoch = len(self.train_batches)
        from ..features.store import default_num_workers

        workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
        pin = self.fabric.device.type == "cuda"

        def loader(ds, batches):
            dl = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                             pin_memory=pin, persistent_workers=False)
            return self.fabric.setup_dataloaders(dl, use_distributed_sampler=False)

        self.train_loader = loader(self.train_ds, self.train_batches)
        ebs = cfg.eval_batch_size or 2 * cfg.batch_size
        self.eval = {}
        for name in ("val", "test"):
            pos = np.asarray(getattr(sp, name))
            ds = _Samples(job.source, pos, job.y[pos], eval_tf, cfg.seed, seeded=False)
            self.eval[name] = (loader(ds, _EvalBatches(len(pos), ebs, self.rank, self.world)) if len(pos) else None,
                               pos)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def _param_groups(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        wd = 0.0 if any(getattr(t, "replaces_weight_decay", False) for t in self.losses) else cfg.weight_decay
        entries = [("head", list(self.raw.head.parameters()), cfg.lr)]
        ever, scales = self.strategy.ever_trainable(), self.strategy.lr_scales(cfg.backbone_lr_scale)
        for g, group in enumerate(self.groups):
            if ever[g]:
                entries.append((group.name, self.group_params[g], group_lr(cfg.lr, scales[g])))
        for i, m in enumerate(self.container.extras):
            entries.append((f"loss{i}", list(m.parameters()), cfg.lr))
        out = []
        for name, params, lr in entries:
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            if decay:
                out.append({"params": decay, "lr": lr, "weight_decay": wd, "name": name})
            if no_decay:
                out.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}:no_decay"})
        return out

    def _lr_lambda(self):
        cfg = self.cfg
        total = cfg.epochs * self.steps_per_epoch
        warm = int(round(cfg.warmup_epochs * self.steps_per_epoch))

        def fn(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if cfg.schedule == "constant":
                return 1.0
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return fn

    def _apply_trainable(self, epoch: int) -> bool:
        flags = self.strategy.trainable(epoch)
        for f, params in zip(flags, self.group_params):
            for p in params:
                p.requires_grad_(f)
        changed = flags != getattr(self, "_flags", None)
        self._flags = flags
        return changed

    def _wrap(self) -> None:
        self.model = self.fabric.setup_module(self.container)

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._setup()
        job, cfg, fabric = self.job, self.cfg, self.fabric
        state = self._read_checkpoint()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "val_accuracy": None, "val_loss": None, "state": None}
        start, finished, stop_reason, resumed_from = 0, False, "", None
        if state is not None:
            self.raw.load_state_dict(state["model"])
            self.container.extras.load_state_dict(state["extras"])
            self.history = list(state["history"])
            self.best = dict(state["best"])
            start, finished, stop_reason = int(state["epoch"]), bool(state["finished"]), str(state["stop_reason"])
            resumed_from = start
        if self.raw.backbone.modality == "image" and cfg.devices > 1 and fabric.device.type == "cuda":
            from timm.layers import convert_sync_batchnorm

            self.container = convert_sync_batchnorm(self.container)
        self._apply_trainable(min(start, cfg.epochs - 1))
        self._wrap()
        optimizer = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda())
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
        while not finished and epoch < cfg.epochs:
            if self._apply_trainable(epoch) and self.world > 1:
                self._wrap()  # DDP tracks the parameters that require gradients when it wraps
            row = self._train_epoch(epoch)
            self.history.append(row)
            done = epoch + 1
            stop_reason = ""
            if self._stop_early(done):
                stop_reason = "early stopping"
            elif done >= cfg.epochs:
                stop_reason = "max epochs"
            finished = bool(stop_reason)
            self._save_checkpoint(done, finished, stop_reason)
            if self.rank == 0:
                _write_csv(job.run_dir / "epochs.csv", self.history)
                if job.log:
                    job.log(_epoch_line(row, cfg.epochs, self.raw.backbone.modality))
            for cb in job.callbacks:
                cb({"epoch": done, "row": row, "history": list(self.history), "checkpoint": self.ckpt_path,
                    "model": self.raw, "rank": self.rank})
            epoch += 1
        return self._finish(stop_reason or "max epochs", resumed_from)

    def _stop_early(self, done: int) -> bool:
        if self.cfg.patience is None or self.eval["val"][0] is None:
            return False
        since = done - max(int(self.best["epoch"]), self.strategy.settled_epoch())
        return since >= self.cfg.patience

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, fabric, job = self.cfg, self.fabric, self.job
        set_train_mode(self.container)
        torch.manual_seed(_seed(cfg.seed, epoch, self.rank, 1))
        random.seed(_seed(cfg.seed, epoch, self.rank, 2))
        np.random.seed(_seed(cfg.seed, epoch, self.rank, 4))
        self.train_ds.epoch = epoch
        self.train_batches.use_epoch(epoch)
        sizes = self.train_batches.sizes
        device = fabric.device
        ce_sum = torch.zeros((), device=device, dtype=torch.float64)
        term_sums = torch.zeros(len(self.losses), device=device, dtype=torch.float64)
        unit = "images" if self.raw.backbone.modality == "image" else "texts"
        t0 = time.perf_counter()
        from .._progress import progress_bar

        with progress_bar(sum(sizes), f"epoch {epoch + 1}/{cfg.epochs}", unit=unit,
                          enabled=job.progress and self.rank == 0) as bar:
            for step, (x, t, _) in enumerate(self.train_loader):
                gstep = epoch * self.steps_per_epoch + step
                logits, feats = self.model(x, return_features=True)
                ce = self.criterion(logits.float(), t)
                out = StepOutputs(x, t, logits, feats, epoch, gstep)
                terms = [_scalar(term(self.raw, out), name, device) for term, name in zip(self.losses, self.loss_names)]
                # every process's loss is scaled so DDP's gradient average is the global-batch mean
                loss = ce * (len(t) * self.world / sizes[step])
                for v in terms:
                    loss = loss + v
                check = loss.detach().float().reshape(1)
                if self.world > 1:
                    check = fabric.all_reduce(check, reduce_op="sum")
                if not bool(torch.isfinite(check).all()):
                    self._diverged(epoch, step, ce, terms)
                self.optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss, model=self.model)
                if cfg.max_grad_norm:
                    fabric.clip_gradients(self.model, self.optimizer, max_norm=cfg.max_grad_norm,
                                          error_if_nonfinite=False)
                self.optimizer.step()
                self.scheduler.step()
                ce_sum += ce.detach().double() * len(t)
                if terms:
                    term_sums += torch.stack([v.detach().double() for v in terms])
                bar.advance(sizes[step])
                if job.progress and self.rank == 0:
                    bar.set_description(f"epoch {epoch + 1}/{cfg.epochs} loss {ce.item():.4f}")
            if self.world > 1:
                ce_sum = fabric.all_reduce(ce_sum, reduce_op="sum")
                term_sums = fabric.all_reduce(term_sums, reduce_op="mean")
            train_seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(ce_sum) / sum(sizes)}
            for name, s in zip(self.loss_names, term_sums.tolist()):
                row[f"loss_{name}"] = s / len(sizes)
            val_loss, val_acc = self._validate()
            row.update(val_loss=val_loss, val_accuracy=val_acc,
                       lr=float(self.optimizer.param_groups[0]["lr"]),
                       trainable_groups=int(sum(self._flags)), seconds=time.perf_counter() - t0,
                       samples_per_s=sum(sizes) / max(train_seconds, 1e-9))
            bad = [k for k in ("train_loss", "val_loss") if row[k] is not None and not math.isfinite(row[k])]
            if bad:
                self._diverged(epoch, None, None, [], what=f"{bad[0].replace('_', ' ')} is {row[bad[0]]}")
            row["best"] = self._update_best(row)
            if job.progress and self.rank == 0:
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f}"
                                    + (f" val acc {val_acc:.3f}" if val_acc is not None else ""))
        return row

    def _validate(self) -> tuple[float | None, float | None]:
        loader, pos = self.eval["val"]
        if loader is None:
            return None, None
        logits = self._predict(loader, len(pos))
        y = torch.as_tensor(self.job.y[pos])
        lg = torch.as_tensor(logits, dtype=torch.float64)
        return float(nn.functional.cross_entropy(lg, y)), float((lg.argmax(1) == y).double().mean())

    def _update_best(self, row: dict[str, Any]) -> bool:
        acc, loss, best = row["val_accuracy"], row["val_loss"], self.best
        better = (acc is None or best["val_accuracy"] is None or acc > best["val_accuracy"]
                  or (acc == best["val_accuracy"] and loss < best["val_loss"]))
        if better:
            self.best = {"epoch": row["epoch"], "val_accuracy": acc, "val_loss": loss,
                         "state": {k: v.detach().to("cpu", copy=True) for k, v in self.raw.state_dict().items()}}
        return bool(better)

    @torch.no_grad()
    def _predict(self, loader, n: int) -> np.ndarray:
        self.container.eval()
        C = self.raw.num_classes
        outs, idxs = [], []
        for x, _, j in loader:
            outs.append(self.model(x).float())
            idxs.append(j)
        res = torch.zeros(n, C, dtype=torch.float32, device=self.fabric.device)
        if outs:
            L, J = torch.cat(outs), torch.cat(idxs).to(res.device)
            keep = J >= 0
            res[J[keep]] = L[keep]
        if self.world > 1:  # every row comes from exactly one process: a sum gathers them exactly
            res = self.fabric.all_reduce(res, reduce_op="sum")
        res = res.cpu()
        return res.numpy()

    def _diverged(self, epoch: int, step: int | None, ce, terms, what: str | None = None) -> None:
        if what is None:
            parts = [f"cross-entropy {float(ce.detach()):.4g}"] + [
                f"{n} {float(v.detach()):.4g}" for n, v in zip(self.loss_names, terms)]
            what = (f"the loss is not finite at epoch {epoch + 1}, step {step + 1} of {self.steps_per_epoch} "
                    f"({', '.join(parts)})")
        else:
            what = f"at epoch {epoch + 1} the {what}"
        last = len(self.history)
        kept = (f"the last good checkpoint, after epoch {last}, is kept at {self.ckpt_path}" if last
                else "no epoch finished, so there is no checkpoint")
        raise TrainingError(f"training diverged: {what}; {kept}. Lower the learning rate (lr={self.cfg.lr}), keep "
                            "max_grad_norm set, or train with precision='32'")

    def _finish(self, stop_reason: str, resumed_from: int | None) -> dict[str, Any]:
        job = self.job
        if self.best["state"] is not None:
            self.raw.load_state_dict(self.best["state"])
        loader, pos = self.eval["test"]
        logits = (self._predict(loader, len(pos)) if loader is not None
                  else np.zeros((0, self.raw.num_classes), np.float32))
        proba = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
        model_path = None
        model_cpu = copy.deepcopy(self.raw).cpu().eval() if (self.rank == 0 or not job.spawned) else None
        if job.export:
            model_path = job.run_dir / "model" / "finetuned.safetensors"
            if self.rank == 0:
                from .export import export_model

                export_model(model_cpu, self.preprocessing, job.classes, model_path, "safetensors",
                             extra={"strategy": self.strategy.config(), "config_hash": self.config_hash,
                                    "best_epoch": int(self.best["epoch"])})
            self.fabric.barrier()
        out = {
            "test_index": np.asarray(pos), "y_pred": proba.argmax(1) if len(proba) else np.zeros(0, np.int64),
            "proba": proba, "val_accuracy": self.best["val_accuracy"], "best_epoch": int(self.best["epoch"]),
            "epochs_run": len(self.history), "stop_reason": stop_reason, "history": list(self.history),
            "train_seconds": float(sum(r["seconds"] for r in self.history)), "run_dir": job.run_dir,
            "checkpoint": self.ckpt_path, "model_path": model_path, "resumed_from": resumed_from,
            "config": {**self.identity, "hash": self.config_hash}, "preprocessing": self.preprocessing,
        }
        if not job.spawned:
            out["model"] = model_cpu
        return out

    # -- checkpoints -----------------------------------------------------------------------------------
    def _read_checkpoint(self) -> dict[str, Any] | None:
        if self.rank == 0 and self.ckpt_path.parent.is_dir():  # a write cut short by a kill leaves a temp file
            for stale in self.ckpt_path.parent.glob(f".{self.ckpt_path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        if not self.ckpt_path.is_file():
            if self.job.resume and self.rank == 0 and self.job.log:
                self.job.log(f"no checkpoint in {self.job.run_dir}: starting a new run")
            return None
        if not self.job.resume:
            raise TrainingError(f"{self.job.run_dir} already holds a training checkpoint ({self.ckpt_path}); "
                                "resume it with resume=True (--resume), or choose a new run directory")
        state = load_checkpoint(self.ckpt_path)
        if state.get("config_hash") != self.config_hash:
            diffs = _differences(state.get("config", {}), self.identity)
            shown = "; ".join(f"{k}: {_short(a)} in the checkpoint, {_short(b)} now" for k, (a, b) in diffs.items())
            raise ResumeMismatchError(
                f"cannot resume {self.job.run_dir}: its checkpoint was made with other settings ({shown}). Resume "
                "with the same settings, or start a new run directory", diffs)
        return state

    def _save_checkpoint(self, epoch: int, finished: bool, stop_reason: str) -> None:
        if self.rank == 0:
            state = {
                "format": CHECKPOINT_FORMAT, "epoch": epoch, "finished": finished, "stop_reason": stop_reason,
                "config": self.identity, "config_hash": self.config_hash,
                "model": self.raw.state_dict(), "extras": self.container.extras.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "best": self.best, "history": self.history, "rng": _get_rng(self.fabric.device),
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write_bytes(self.ckpt_path, buf.getvalue())
        self.fabric.barrier()

    def _write_info(self) -> None:
        frozen_all = [g.name for g, f in zip(self.groups, self.strategy.ever_trainable()) if not f]
        info = {"config": self.identity, "config_hash": self.config_hash,
                "layer_groups": [g.name for g in self.groups], "never_trained_groups": frozen_all,
                "parameters": {"backbone": sum(p.numel() for p in self.raw.backbone.parameters()),
                               "head": sum(p.numel() for p in self.raw.head.parameters())},
                "steps_per_epoch": self.steps_per_epoch, "processes": self.world,
                "device": str(self.fabric.device), "preprocessing": self.preprocessing}
        atomic_write_bytes(self.job.run_dir / "finetune.json", json.dumps(info, indent=2, default=str).encode())


# ---------------------------------------------------------------------------------------------------------
# small helpers
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _scalar(value: Any, name: str, device: torch.device) -> torch.Tensor:
    """An extra loss's value as a 0-d tensor (numbers are accepted; anything else is an error)."""
    if not isinstance(value, torch.Tensor):
        if not isinstance(value, (int, float)):
            raise TransferkitError(f"extra loss {name!r} returned a {type(value).__name__}; it must return a "
                                   "scalar tensor")
        return torch.tensor(float(value), device=device)
    if value.numel() != 1:
        raise TransferkitError(f"extra loss {name!r} returned a tensor of shape {tuple(value.shape)}; it must "
                               "return a scalar (reduce it with .mean() or .sum())")
    return value.reshape(())


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        k, name = 1, n
        while name in out:
            k += 1
            name = f"{n}{k}"
        out.append(name)
    return out


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


def _epoch_line(row: dict[str, Any], epochs: int, modality: str) -> str:
    unit = "images" if modality == "image" else "texts"
    val = (f", val loss {row['val_loss']:.4f}, val acc {100 * row['val_accuracy']:.1f}%"
           if row.get("val_accuracy") is not None else "")
    extra = "".join(f", {k[5:]} {v:.4g}" for k, v in row.items() if k.startswith("loss_"))
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}{extra}{val}"
            f"{' (best)' if row.get('best') else ''}, {row['samples_per_s']:.1f} {unit}/s, {row['seconds']:.1f}s")


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

