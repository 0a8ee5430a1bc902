"""Fine-tuning: a pretrained backbone and a new linear head trained together, with a strategy.

:func:`finetune` turns its arguments into a :class:`~transferkit.train.loop.Plan` for the one training loop
(:mod:`transferkit.train.loop`): the model (backbone + head), the objective (cross-entropy with label smoothing plus
any regularizer terms, :mod:`transferkit.train.regularizers`), the labelled stream with the ``train`` view, the
validation stream that chooses the epoch, and the strategy (:mod:`transferkit.train.strategies`) that says which
layer groups train in which epoch and at which learning rate. Everything the loop guarantees holds: devices,
precision and DDP through Lightning Fabric, atomic checkpoints and bit-identical resume after ``kill -9``, NaN stop,
selection on the validation split only.

What a run leaves in ``run_dir``::

    checkpoints/last.ckpt    written atomically after every epoch (see the loop)
    epochs.csv               one row per epoch: train loss, extra-loss terms, val loss/accuracy, lr, time, speed
    finetune.json            the configuration, layer groups and parameter counts
    model/                   the best model: the fine-tuned backbone (backbone/) and the head, read by load_run
    selection/               with TrainConfig.refit: the run on the training split that chose the epoch count (the
                             files above are then the refit's, trained on train + val for that many epochs)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..backbones.base import Backbone
from ..data.sources import DataSource
from ..data.splits import Splits
from ..errors import DataError, ModalityError, TransferkitError
from .loop import PRECISION_NAMES, PRECISIONS, LoopSettings, Plan, ValidationAccuracy, run_loop
from .model import TransferModel, layer_groups, parameter_counts, prepare_backbone
from .objectives import CrossEntropy, Objectives, Outputs, as_objective
from .strategies import Strategy, create_strategy, group_lr
from .streams import ItemStream, derive_seed, stack

__all__ = ["TrainConfig", "FinetuneResult", "finetune", "FinetunePlan", "cosine_warmup", "save_finetuned"]

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
        augment: random training augmentation (the ``train`` view of :mod:`transferkit.data.views`: timm's
            ``create_transform(is_training=True)``); off: the evaluation view.
        crop_scale: area range of the random resized crop.
        hflip: probability of a horizontal flip (0 for digits, text in images, ...).
        image_size: train and evaluate at this side instead of the backbone's default input size.
        head_dropout: dropout on the features before the head.
        eval_batch_size: batch size for validation and test (None: twice ``batch_size``).
        safe: a safe-transfer step before fine-tuning (:data:`transferkit.safe.SAFE_METHODS`): ``"remos"`` zeroes
            the ``prune`` share of the backbone's conv weights least relevant to the training split (ReMoS, Zhang et
            al., ICSE 2022) so a teacher's defect (a backdoor) is less inherited; None: off.
        prune: share of the backbone's conv weights ``safe="remos"`` drops (0.05 in the paper's backdoor setting).
        refit: after the run on ``train`` has chosen its epoch E on ``val`` (early stopping), train again from the
            same initialisation and seed on every labelled item (``train`` + ``val``) for exactly E epochs of the
            same learning-rate schedule (its length stays ``epochs``), and keep that last epoch's weights: the
            validation part then also trains the model (the usual refit after model selection, e.g. Goodfellow,
            Bengio and Courville, *Deep Learning*, MIT Press 2016, section 7.8). The selection run is kept in
            ``run_dir/selection``; the test split is predicted by both. Needs a validation split.
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
    safe: str | None = None
    prune: float = 0.05
    refit: bool = False

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
        need(self.precision in PRECISIONS,
             f"precision must be one of {', '.join(PRECISION_NAMES)} (got {self.precision!r})")
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
        from ..safe.remos import check_safe

        need(isinstance(self.refit, bool), f"refit must be True or False (got {self.refit!r})")
        bad += check_safe(self.safe, self.prune)
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
        model_path: the run's saved model folder (``model/``: the fine-tuned backbone and the head, which
            :func:`transferkit.load_run` reads) or None.
        resumed_from: the epoch the run resumed after (None for a fresh run).
        model: the trained :class:`TransferModel` with the best weights, on CPU, in eval mode.
        config: the run configuration (training settings, strategy, backbone, losses, data) and its hash.
        preprocessing: the evaluation preprocessing (timm data config or tokenizer settings).
        parameters: parameter counts: ``backbone``, ``head``, ``total``, ``trainable`` (what the optimizer trains)
            and ``trainable_fraction``.
        selection: with ``TrainConfig.refit``, the selection run (trained on ``train`` only; its test predictions
            too); the fields above are then the refit's, except ``val_accuracy`` and ``best_epoch`` (the selection
            run's choice, which the refit trained for). None without refit.
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
    parameters: dict[str, Any] = field(default_factory=dict)
    selection: "FinetuneResult | None" = field(default=None, repr=False)


def cosine_warmup(warmup_steps: int, schedule: str = "cosine", min_ratio: float = 0.01) -> Callable[[int, int], float]:
    """Learning-rate factor: linear warmup over ``warmup_steps``, then a cosine decay to ``min_ratio`` (or
    constant)."""

    def fn(step: int, total: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


# ---------------------------------------------------------------------------------------------------------
# the entry point
def finetune(source: DataSource, y: np.ndarray, splits: Splits, backbone: str | Backbone = "lite0",
             strategy: str | Strategy = "finetune", config: TrainConfig | None = None,
             run_dir: str | Path | None = None, *, resume: bool = False, strategy_params: dict[str, Any] | None = None,
             extra_losses: Sequence[Any] = (), classes: Sequence[str] | None = None,
             callbacks: Sequence[Callable[[dict[str, Any]], None]] = (), progress: bool = False,
             log: Callable[[str], None] | None = None, export: bool = True, unlabelled: Any = None,
             unlabelled_ratio: int = 7, ema_decay: float | None = None,
             train_epochs: int | None = None) -> FinetuneResult:
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
        extra_losses: objective terms added to the cross-entropy (:class:`~transferkit.train.regularizers.L2SP`,
            :class:`~transferkit.train.regularizers.BSS`, any :class:`~transferkit.train.objectives.Objective`, or a
            function ``fn(net, step) -> scalar``).
        classes: class names (for the exported model); default ``"0"..."C-1"``.
        callbacks: called after every epoch's checkpoint with ``{"epoch", "row", "history", "checkpoint",
            "model", "rank"}`` (on every process).
        progress: show a progress bar per epoch (loss, images/s) on stderr.
        log: called with one line per epoch (e.g. ``print``).
        export: save the best model in ``run_dir/model`` (the run format :func:`transferkit.load_run` reads).
        unlabelled: unlabelled inputs for a semi-supervised objective among ``extra_losses`` (the ``unlabelled``
            stream, in its ``weak`` and ``strong`` views): positions in ``source``, or another DataSource. An epoch
            is then one pass over them; the labelled stream cycles.
        unlabelled_ratio: unlabelled items per labelled item in a step (FixMatch's mu).
        ema_decay: evaluate and return the moving average of the weights (FixMatch's EMA model); None: the raw ones.
        train_epochs: train exactly this many epochs of the configured learning-rate schedule (its length stays
            ``config.epochs``), without early stopping, and keep the last epoch's weights: a model trained with an
            epoch count chosen elsewhere (a cross-validated race's fold, which trains for the epochs its split
            chose). Needs splits without a validation part; None: choose the epoch on ``val``.

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
    cfg = (config if config is not None else TrainConfig())
    if not isinstance(cfg, TrainConfig):
        raise TransferkitError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    strat = create_strategy(strategy, **(strategy_params or {}))
    if cfg.safe is not None:
        from .strategies import STRATEGIES

        frozen = strat.name in STRATEGIES.names() and STRATEGIES.get(strat.name).cap("backbone_frozen")
        if source.modality != "image":
            raise TransferkitError(f"safe={cfg.safe!r} (ReMoS) measures neuron coverage of image backbones; "
                                   f"{source.origin or source.name} holds {source.modality}: leave out safe")
        if frozen or strat.name == "scratch":
            raise TransferkitError(
                f"safe={cfg.safe!r} changes the pretrained backbone before it is fine-tuned, but strategy "
                f"{strat.name!r} {'never trains the backbone' if frozen else 'starts from random weights'}; use "
                "strategy 'finetune' (or partial, gradual), or leave out safe")
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
    if train_epochs is not None and (not isinstance(train_epochs, (int, np.integer)) or isinstance(train_epochs, bool)
                                     or not 1 <= train_epochs <= cfg.epochs or len(splits.val) or cfg.refit):
        raise DataError(f"train_epochs must be an integer from 1 to epochs={cfg.epochs}, with no validation split and "
                        f"without refit (it trains a fixed number of epochs; nothing is chosen on validation); got "
                        f"{train_epochs!r} with {len(splits.val)} validation items{' and refit' if cfg.refit else ''}")
    if cfg.refit and len(splits.val) == 0:
        raise DataError("refit=True retrains for the number of epochs chosen on the validation split, but the "
                        "validation split is empty (with labels per class, a class needs at least 5 labelled items "
                        "to keep any for validation); give one (labels_per_class=5 or more, and val_fraction above "
                        "0) or leave out refit")
    num_classes = len(classes) if classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"labels must be class indices in 0..{num_classes - 1}; got {int(y.min())}..{int(y.max())}")
    if num_classes < 2:
        raise DataError("a classifier needs at least 2 classes")
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
    from ..backbones import backbone_modality

    modality = backbone_modality(backbone)
    if modality != source.modality:
        name = backbone if isinstance(backbone, str) else backbone.name
        raise ModalityError(f"{source.origin or source.name} holds {source.modality} data but backbone {name!r} takes "
                            f"{modality}s; choose a {source.modality} backbone (see `transferkit backbones`)")
    if len(splits.train) < 2 * cfg.devices:
        raise DataError(f"the training split has {len(splits.train)} samples: too few for {cfg.devices} process(es) "
                        f"(at least {2 * cfg.devices})")
    from ..runs import default_run_dir, prepare_run_dir

    # a folder of this run kind is accepted (fit prepares it first); the loop refuses a checkpoint without resume
    out_dir = prepare_run_dir(run_dir if run_dir is not None else
                              default_run_dir(source.name, backbone if isinstance(backbone, str) else backbone.name),
                              "fit", resume=True)
    terms = [as_objective(t) for t in extra_losses]
    if unlabelled is not None and not isinstance(unlabelled, DataSource):
        unlabelled = np.asarray(unlabelled, dtype=np.int64)
        if len(unlabelled) == 0 or unlabelled.min() < 0 or unlabelled.max() >= len(source):
            raise DataError(f"unlabelled must hold positions in 0..{len(source) - 1} (got {len(unlabelled)} positions)")
    if not isinstance(unlabelled_ratio, int) or unlabelled_ratio < 1:
        raise DataError(f"unlabelled_ratio must be an integer >= 1, got {unlabelled_ratio!r}")
    job = FinetunePlan(source=source, y=y, splits=splits, backbone=backbone, strategy=strat, cfg=cfg, losses=terms,
                       classes=classes, unlabelled=unlabelled, unlabelled_ratio=unlabelled_ratio, progress=progress,
                       train_epochs=None if train_epochs is None else int(train_epochs))
    settings = LoopSettings(epochs=cfg.epochs, seed=cfg.seed, max_grad_norm=cfg.max_grad_norm, patience=cfg.patience,
                            precision=cfg.precision, accelerator=cfg.accelerator, devices=cfg.devices,
                            num_workers=_workers(cfg), eval_batch_size=cfg.eval_batch_size or 2 * cfg.batch_size,
                            progress="epoch" if progress else None, label=strat.name,
                            unit="images" if source.modality == "image" else "texts", ema_decay=ema_decay)
    if train_epochs is not None:  # a fixed length of the configured schedule, the last epoch kept
        settings = replace(settings, epochs=int(train_epochs), patience=None, schedule_epochs=cfg.epochs)
    selection = None
    if cfg.refit:  # the selection run (train only, epoch chosen on val), then the same run on train + val
        sel = run_loop(job, settings, out_dir / "selection", resume=resume, callbacks=callbacks, log=log)
        selection = _result(sel, splits, out_dir / "selection", len(classes))
        labelled = np.concatenate([np.asarray(splits.train, np.int64), np.asarray(splits.val, np.int64)])
        job = replace(job, splits=Splits(labelled, np.zeros(0, np.int64), np.asarray(splits.test, np.int64)),
                      refit_of={"epochs": sel.best_epoch, "selection_run": "selection",
                                "selection_val_accuracy": sel.best_scores.get("val_accuracy"),
                                "labelled": int(len(labelled))})
        settings = replace(settings, epochs=sel.best_epoch, patience=None, schedule_epochs=cfg.epochs)
    r = run_loop(job, settings, out_dir, resume=resume, callbacks=callbacks, log=log)
    out = _result(r, splits, out_dir, len(classes))
    if selection is not None:  # the epoch and its validation score are the selection run's
        out.val_accuracy, out.best_epoch, out.selection = selection.val_accuracy, selection.best_epoch, selection
    if export and r.model is not None:
        save_finetuned(out_dir, r.model, strat, out.config["backbone"], classes,
                       extra={"strategy": strat.config(), "config_hash": out.config["hash"], "best_epoch": r.best_epoch,
                              **({"refit": True} if cfg.refit else {})})
        out.model_path = out_dir / "model"
    return out


def _result(r: Any, splits: Splits, run_dir: Path, num_classes: int) -> "FinetuneResult":
    """A :class:`FinetuneResult` from one loop run (its test predictions, history and ``finetune.json``)."""
    logits = r.predictions["test"].logits if "test" in r.predictions else np.zeros((0, num_classes), np.float32)
    proba = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
    info = json.loads((run_dir / "finetune.json").read_text())
    identity, config_hash = info["identity"], info["config_hash"]
    return FinetuneResult(
        test_index=np.asarray(splits.test), y_pred=proba.argmax(1) if len(proba) else np.zeros(0, np.int64),
        proba=proba, val_accuracy=r.best_scores.get("val_accuracy"), best_epoch=r.best_epoch, epochs_run=r.epochs_run,
        stop_reason=r.stop_reason, history=r.history, seconds=r.seconds, train_seconds=r.train_seconds,
        run_dir=run_dir, checkpoint=r.checkpoint, model_path=None, resumed_from=r.resumed_from, model=r.model,
        config={**identity, "hash": config_hash}, preprocessing=r.model.backbone.data_config(),
        parameters=info.get("parameters", {}))


def save_finetuned(run_dir: Path, model: TransferModel, strategy: "Strategy | dict[str, Any] | None",
                   base: dict[str, Any], classes: Sequence[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save a fine-tuned network as the run's ``model/``: the head, and the whole trained backbone, or for a
    parameter-efficient strategy (``saves_delta``) only its delta with the base backbone's name and weights digest.

    Args:
        run_dir: the run directory.
        model: the trained network.
        strategy: the strategy it was trained with (or its :meth:`~Strategy.config`).
        base: the base backbone's identity before training (``{"name", "weights"}``, as in the run's config).
        classes: class names.
        extra: more model.json fields.

    Returns:
        The model.json document (:func:`transferkit.runs.writer.save_model`).
    """
    from ..heads.modules import HeadModule
    from ..runs.writer import rebuildable, save_model

    if isinstance(strategy, dict):  # another trainer's record (setfit, semi-supervised) may name no strategy here
        from .strategies import STRATEGIES

        spec = dict(strategy)
        name = spec.pop("name", None)
        strategy = create_strategy(name, **spec) if name in STRATEGIES.names() else None
    # a plain linear layer (fine-tuning) is saved as a head module; a head that is one already (SetFit's
    # logistic head on unit-norm embeddings) as it is
    head = HeadModule.from_linear(model.head) if isinstance(model.head, torch.nn.Linear) else model.head
    bb, delta = model.backbone, None
    if strategy is not None and strategy.saves_delta:
        from .efficient import delta_state, merge

        if rebuildable(str(base.get("name"))):
            delta = {"strategy": strategy.config(), "state": delta_state(strategy, bb), "base": base}
        else:  # a backbone read from files: the run keeps the merged network itself
            bb = merge(strategy, bb)
    return save_model(run_dir, head, bb, list(classes), kind="finetuned", backbone_trained=True, extra=extra,
                      delta=delta)


def _workers(cfg: TrainConfig) -> int:
    from ..features.store import default_num_workers

    return default_num_workers() if cfg.num_workers is None else cfg.num_workers


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


@dataclass
class FinetunePlan:
    """Builds the loop's :class:`~transferkit.train.loop.Plan` of one fine-tuning run (in each process)."""

    source: DataSource
    y: np.ndarray
    splits: Splits
    backbone: str | Backbone
    strategy: Strategy
    cfg: TrainConfig
    losses: list
    classes: list[str]
    unlabelled: Any = None
    unlabelled_ratio: int = 7
    progress: bool = False
    #: the refit phase of ``TrainConfig.refit`` (its epochs, the selection run): recorded in identity and info
    refit_of: dict[str, Any] | None = None
    #: ``finetune``'s ``train_epochs``: the epochs the run trains, shown in its epoch lines (the loop's identity
    #: records them)
    train_epochs: int | None = None

    def build_model(self) -> tuple[TransferModel, dict[str, Any], list, list[str]]:
        """The model (pretrained backbone + seeded head), the backbone's identity, its groups and unused params."""
        if isinstance(self.backbone, str):
            from ..backbones import create_backbone

            bb = create_backbone(self.backbone)
        else:
            bb = copy.deepcopy(self.backbone)
        if self.cfg.image_size and bb.modality == "image":
            bb = bb.with_preprocessing(input_size=self.cfg.image_size)
        identity = {"name": bb.name, "class": type(bb).__name__, "weights": bb.weights_digest()}
        prepare_backbone(bb)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, 11))
            model = TransferModel(bb, len(self.classes), dropout=self.cfg.head_dropout)
        groups, unused = layer_groups(bb, getattr(self.strategy, "granularity", "coarse"))
        return model, identity, groups, unused

    def safe_step(self, bb: Backbone, view: Any, collate: Callable, rank: int = 0) -> dict[str, Any] | None:
        """The ``safe`` step on the built backbone, before training (``cfg.safe``; None when off): ReMoS measures
        neuron coverage on the *training* split only (evaluation view) and zeroes ``cfg.prune`` of the conv weights.
        Every process computes the same pruning; only rank 0 shows the progress bar."""
        if self.cfg.safe is None:
            return None
        from .._progress import progress_bar
        from ..safe.remos import apply_remos

        idx = np.asarray(self.splits.train, dtype=np.int64)
        size = self.cfg.eval_batch_size or 2 * self.cfg.batch_size

        def batches():
            for s in range(0, len(idx), size):
                yield collate([view(self.source.load(int(i))) for i in idx[s:s + size]])

        with progress_bar(len(idx), "ReMoS: neuron coverage on the training split", unit="images",
                          enabled=self.progress and rank == 0) as bar:
            report = apply_remos(bb, batches(), self.cfg.prune, advance=bar.advance)
        bb.forget_digest()
        return report.to_dict()

    def __call__(self, fabric: Any) -> Plan:
        cfg, sp = self.cfg, self.splits
        model, bb_identity, groups, unused = self.build_model()
        strategy = copy.deepcopy(self.strategy)
        strategy.bind(groups)
        bb_params = dict(model.backbone.named_parameters())
        group_params = [[bb_params[n] for n in g.params] for g in groups]
        for n in unused:
            bb_params[n].requires_grad_(False)
        strategy.prepare(model, cfg.seed)
        delta = [p for _, p in strategy.delta_parameters(model.backbone)]  # parameter-efficient: trains every epoch
        if delta:
            ids = {id(p) for p in delta}
            group_params = [[p for p in ps if id(p) not in ids] for ps in group_params]
        objective = Objectives(CrossEntropy(label_smoothing=cfg.label_smoothing), *copy.deepcopy(self.losses))
        bb = model.backbone
        train_view = bb.transform("train", scale=tuple(cfg.crop_scale), hflip=float(cfg.hflip)) if cfg.augment \
            else bb.transform("eval")
        eval_view = bb.transform("eval")
        collate = stack if bb.modality == "image" else bb.collate
        safe_info = self.safe_step(bb, eval_view, collate, rank=getattr(fabric, "global_rank", 0))

        def stream(name: str, idx: np.ndarray, view: Any) -> ItemStream:
            return ItemStream(name, self.source, idx, self.y[idx], views={"train": view, "eval": eval_view},
                              collate=collate, batch_size=cfg.batch_size, seed=cfg.seed)

        labelled = stream("labelled", sp.train, train_view)
        streams = {"labelled": labelled}
        if self.unlabelled is not None:  # semi-supervised: an epoch is a pass over the unlabelled items
            src = self.unlabelled if isinstance(self.unlabelled, DataSource) else self.source
            pos = np.arange(len(src)) if isinstance(self.unlabelled, DataSource) else self.unlabelled
            views = {"weak": bb.transform("weak"), "strong": bb.transform("strong"), "eval": eval_view}
            streams = {"unlabelled": ItemStream("unlabelled", src, pos, None, views=views, collate=collate,
                                                batch_size=cfg.batch_size * self.unlabelled_ratio, seed=cfg.seed),
                       **streams}
        val = stream("val", sp.val, eval_view) if len(sp.val) else None
        final = {"test": stream("test", sp.test, eval_view)} if len(sp.test) else {}
        # parameter groups: the head at lr, each backbone group at lr x its strategy scale, the objective's own
        wd = 0.0 if objective.replaces_weight_decay else cfg.weight_decay
        entries = [("head", list(model.head.parameters()), cfg.lr)]
        ever, scales = strategy.ever_trainable(), strategy.lr_scales(cfg.backbone_lr_scale)
        for g, group in enumerate(groups):
            if ever[g]:
                entries.append((group.name, group_params[g], group_lr(cfg.lr, scales[g])))
        if delta:
            entries.append(("delta", delta, group_lr(cfg.lr, strategy.delta_lr_scale(model.backbone))))
        own = [p for p in objective.parameters() if p.requires_grad]
        if own:
            entries.append(("objective", own, cfg.lr))
        param_groups = []
        for name, params, lr in entries:
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            if decay:
                param_groups.append({"params": decay, "lr": lr, "weight_decay": wd, "name": name})
            if no_decay:
                param_groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}:no_decay"})
        primary = next(iter(streams.values()))
        warm = int(round(cfg.warmup_epochs * _steps_per_epoch(len(primary), primary.batch_size, cfg.devices)))
        # without a safe step the identity is the one runs had before the option existed (their resume still works)
        unset = (("safe", "prune") if cfg.safe is None else ()) + (() if cfg.refit else ("refit",))
        identity = {
            "train": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_HASHED + unset},
            "strategy": strategy.config(),
            "backbone": bb_identity,
            "data": {"items": self.source.fingerprint(), "labels": _digest(self.y.tobytes()),
                     "train": _digest(np.asarray(sp.train, np.int64).tobytes()),
                     "val": _digest(np.asarray(sp.val, np.int64).tobytes()), "num_classes": len(self.classes)},
        }
        frozen_all = [g.name for g, f in zip(groups, strategy.ever_trainable()) if not f]
        info = {"layer_groups": [g.name for g in groups], "never_trained_groups": frozen_all,
                "learning_rates": {name: lr for name, _, lr in entries},
                "parameters": {"backbone": sum(p.numel() for p in model.backbone.parameters()),
                               "head": sum(p.numel() for p in model.head.parameters()),
                               **parameter_counts(model, [p for _, ps, _ in entries for p in ps])},
                "preprocessing": bb.data_config()}
        if safe_info is not None:
            info["safe"] = safe_info
        if self.refit_of is not None:  # the refit phase: it trains for the selection run's epoch count
            identity["refit"] = {k: v for k, v in self.refit_of.items() if k != "selection_val_accuracy"}
            info["refit"] = self.refit_of
        if self.unlabelled is not None:
            identity["unlabelled"] = {"items": (self.unlabelled.fingerprint() if isinstance(self.unlabelled, DataSource)
                                                else _digest(np.asarray(self.unlabelled).tobytes())),
                                      "ratio": self.unlabelled_ratio}
        return Plan(model=model, objective=objective, streams=streams, param_groups=param_groups,
                    optimizer=lambda groups_: torch.optim.AdamW(groups_, lr=cfg.lr, weight_decay=cfg.weight_decay),
                    schedule=cosine_warmup(warm, cfg.schedule, cfg.min_lr_ratio),
                    evaluator=ValidationAccuracy(val, None if val is None else self.y[sp.val],
                                                 extras=objective.validation_metrics),
                    trainable=group_params + ([delta] if delta else []),
                    trainable_at=_with_delta(strategy.trainable) if delta else strategy.trainable,
                    settled_epoch=strategy.settled_epoch(),
                    final=final, identity=identity, info=info,
                    describe=_epoch_line(self.refit_of["epochs"] if self.refit_of else self.train_epochs or cfg.epochs,
                                         bb.modality),
                    info_name="finetune.json")


class _with_delta:
    """A strategy's per-epoch group flags, plus one always-true flag for its delta parameters."""

    def __init__(self, trainable: Callable[[int], list[bool]]):
        self.trainable = trainable

    def __call__(self, epoch: int) -> list[bool]:
        return [*self.trainable(epoch), True]


def _steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    full, rem = divmod(n, batch_size)
    return full + (1 if rem and (rem >= 2 * world or full == 0) else 0)


class _EpochLine:
    def __init__(self, epochs: int, modality: str):
        self.epochs, self.unit = epochs, "images" if modality == "image" else "texts"

    def __call__(self, row: dict[str, Any]) -> str:
        val = (f", val loss {row['val_loss']:.4f}, val acc {100 * row['val_accuracy']:.1f}%"
               if row.get("val_accuracy") is not None else "")
        extra = "".join(f", {k[5:]} {v:.4g}" for k, v in row.items() if k.startswith("loss_") and k != "loss_ce")
        extra += "".join(f", {k[7:].replace('_', ' ')} {100 * v:.1f}%" if k.endswith("rate") else
                         f", {k[7:].replace('_', ' ')} {v:.3g}" for k, v in row.items()
                         if k.startswith("metric_") and isinstance(v, (int, float)))
        if row.get("val_pseudo_accuracy") is not None:
            extra += f", val pseudo-label acc {100 * row['val_pseudo_accuracy']:.1f}%"
        return (f"epoch {row['epoch']}/{self.epochs}: train loss {row['train_loss']:.4f}{extra}{val}"
                f"{' (best)' if row.get('best') and row.get('val_accuracy') is not None else ''}, "  # no val: no choice
                f"{row['samples_per_s']:.1f} {self.unit}/s, {row['seconds']:.1f}s")


def _epoch_line(epochs: int, modality: str) -> _EpochLine:
    return _EpochLine(epochs, modality)
