"""A semi-supervised method inside a fit run: the labelled split, an unlabelled pool (the rest of the data, or other
inputs without labels), at the cost of a probe (cached views, a head) or end to end (the backbone trains on weak and
strong views through the loop), and the classic baselines on the same split beside it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError, TransferkitError
from .algorithms import SEMI_METHODS, create_semi_objective
from .baselines import label_spreading, self_training
from .fit import SemiConfig, head_proba, train_semi_head, view_averaged_proba, view_banks

__all__ = ["SEMI_LEVELS", "SemiOutcome", "semi_fit", "semi_finetune", "baseline_rows", "history_summary"]

#: where a semi-supervised method trains: ``features`` (frozen backbone, cached views, a head: seconds after one
#: extraction) or ``end-to-end`` (the backbone too, on views of the raw inputs)
SEMI_LEVELS = ("features", "end-to-end")


@dataclass
class SemiOutcome:
    """What :func:`semi_fit` returns.

    Attributes:
        proba, y_pred: test probabilities and predictions (with ``SemiConfig(tta=True)``, averaged over the eval
            view and the cached weak views: then not what the saved run predicts from the eval view alone).
        head: the trained head module (``features``; with ``SemiConfig(ensemble=K > 1)`` the members' mean, a
            :class:`~transferkit.heads.ensemble.MeanProbabilityModule` the run saves whole) — None end to end.
        finetuned: the :class:`~transferkit.train.engine.FinetuneResult` (end to end) — None at probe cost.
        history: per evaluation: losses, the unlabelled pool's mask rate, validation accuracy, pseudo-label accuracy
            and mask rate on the validation items (their labels only), per-class thresholds.
        summary: method, level, pool sizes, wall time, the last mask rate and pseudo-label accuracy.
        other_features: eval-view features of the other unlabelled inputs (``features`` level with a folder or
            table of them), for the classic baselines; None otherwise.
    """

    proba: np.ndarray
    y_pred: np.ndarray
    head: Any = None
    finetuned: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    other_features: np.ndarray | None = None


def _unlabelled_source(unlabelled: Any, fs: Any, input_column: str | None, encoding: str | None) -> Any:
    """The other inputs without labels as a DataSource, checked against the labelled data's modality."""
    from ..data.load import collect_inputs

    src = collect_inputs(unlabelled, input_column=input_column, encoding=encoding)
    if src.modality != fs.source.modality:
        raise DataError(f"the unlabelled inputs {src.origin or src.name} hold {src.modality} data but the labelled "
                        f"data holds {fs.source.modality}; give unlabelled {fs.source.modality}s")
    if len(src) == 0:
        raise DataError(f"the unlabelled inputs {src.origin or src.name} hold no items")
    return src


def semi_fit(fs: Any, backbone: Any, store: Any, method: str = "fixmatch", *, level: str = "features",
             unlabelled: Any = None, config: SemiConfig | None = None, train_config: Any = None,
             method_params: dict[str, Any] | None = None, run_dir: str | Path | None = None, resume: bool = False,
             progress: bool = False, log: Callable[[str], None] | None = None, num_workers: int | None = None,
             batch_size: int = 64, input_column: str | None = None, encoding: str | None = None) -> SemiOutcome:
    """Train ``method`` on a feature set's labelled training split and an unlabelled pool; predict its test split.

    Args:
        fs: the :class:`~transferkit.features.FeatureSet` (its ``splits.unlabelled`` is the pool when
            ``unlabelled`` is None).
        backbone: the backbone of ``fs``.
        store: the feature cache (views of the inputs are cached there, per view and draw).
        method: a name of :data:`SEMI_METHODS`.
        level: ``features`` or ``end-to-end`` (:data:`SEMI_LEVELS`).
        unlabelled: other inputs without labels (a folder, a table, a DataSource) added to the pool.
        config: :class:`SemiConfig` (``features``).
        train_config: the engine's :class:`~transferkit.train.engine.TrainConfig` (``end-to-end``).
        method_params: the method's parameters (``tau``, ``lambda_u``, ...).
        run_dir: checkpoints go to ``run_dir/semi`` (``features``) or ``run_dir`` (``end-to-end``), so a killed run
            resumes with ``resume``.

    Raises:
        DataError: no unlabelled inputs, no labelled training items, text data; TransferkitError: a bad level.
    """
    if level not in SEMI_LEVELS:
        raise TransferkitError(f"unknown semi-supervised level {level!r}; choose one of {', '.join(SEMI_LEVELS)}")
    SEMI_METHODS.get(method)
    say = log or (lambda m: None)
    sp = fs.splits
    if sp is None or len(sp.train) == 0:
        raise DataError("semi-supervised training needs a labelled training split")
    other = _unlabelled_source(unlabelled, fs, input_column, encoding) if unlabelled is not None else None
    n_pool = len(sp.unlabelled) + (len(other) if other is not None else 0)
    if n_pool == 0:
        raise DataError("no unlabelled inputs: give other inputs without labels (unlabelled=PATH) or leave part of "
                        "the data unlabelled (unlabelled='rest' with a labels-per-class budget)")
    params = dict(method_params or {})
    t0 = time.perf_counter()
    say(f"semi-supervised: {method} ({level}) on {len(sp.train)} labelled and {n_pool} unlabelled inputs")
    if level == "features":
        out = _at_probe_cost(fs, backbone, store, method, other, config, params, run_dir, resume, progress, say,
                             num_workers, batch_size)
    else:
        out = _end_to_end(fs, backbone, method, other, train_config, params, run_dir, resume, progress, say)
    out.summary.update(history_summary(out.history))
    out.summary.update({"method": method, "level": level, "n_labelled": int(len(sp.train)),
                        "n_unlabelled": int(n_pool), "seconds": time.perf_counter() - t0,
                        "params": params, "paper": SEMI_METHODS.get(method).paper})
    return out


def _at_probe_cost(fs, backbone, store, method, other, config, params, run_dir, resume, progress, say, num_workers,
                   batch_size) -> SemiOutcome:
    cfg = config or SemiConfig()
    sp = fs.splits
    say(f"features of {cfg.draws} weak and {cfg.draws} strong views per input (cached after the first run)")
    banks = view_banks(fs.source, backbone, store=store, draws=cfg.draws, seed=0, progress=progress,
                       num_workers=num_workers, batch_size=batch_size)

    def rows(b: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: (v[:, idx] if v.ndim == 3 else v[idx]) for k, v in b.items()}

    banks_l = rows(banks, sp.train)
    banks_u = rows(banks, sp.unlabelled)
    if other is not None:
        more = view_banks(other, backbone, store=store, draws=cfg.draws, seed=0, progress=progress,
                          num_workers=num_workers, batch_size=batch_size)
        banks_u = {k: np.concatenate([banks_u[k], more[k]], axis=1 if more[k].ndim == 3 else 0) for k in banks_u}
    val = (banks["eval"][sp.val], fs.y[sp.val]) if len(sp.val) else None
    if cfg.ensemble > 1:
        say(f"an ensemble of {cfg.ensemble} heads (seeds {cfg.seed} + 1000 k), predicting their mean probability; the "
            "pseudo-label history shown is the first head's")
    fit = train_semi_head(banks_l, fs.y[sp.train], banks_u, method, n_classes=len(fs.classes), val=val, config=cfg,
                          run_dir=None if run_dir is None else Path(run_dir) / "semi", resume=resume,
                          progress=progress, log=say, **params)
    if cfg.tta:  # the test items' weak views are in the banks already (every item of the data is extracted)
        say(f"test predictions averaged over the eval view and {cfg.draws} cached weak views (tta); a saved run "
            "predicts new inputs from the eval view alone")
        proba = view_averaged_proba(head_proba(fit.head), rows(banks, sp.test))
    else:
        proba = head_proba(fit.head)(banks["eval"][sp.test])
    return SemiOutcome(proba=proba, y_pred=proba.argmax(1), head=fit.head, history=fit.history,
                       summary={"best_epoch": fit.best_epoch, "tta": bool(cfg.tta),
                                "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}},
                       other_features=None if other is None else more["eval"])


def semi_finetune(source: Any, y: np.ndarray, splits: Any, backbone: Any, method: str = "fixmatch", *,
                  unlabelled: Any = None, strategy: str = "finetune", train_config: Any = None, mu: int = 7,
                  ema_decay: float | None = 0.999, method_params: dict[str, Any] | None = None,
                  run_dir: str | Path | None = None, resume: bool = False, classes: list[str] | None = None,
                  progress: bool = False, log: Callable[[str], None] | None = None, export: bool = True) -> Any:
    """A semi-supervised method end to end: the backbone (as ``strategy`` lets it) and a linear head train through
    the loop on the labelled stream and an ``unlabelled`` stream in its ``weak`` and ``strong`` views (FixMatch's
    recipe: ``mu`` unlabelled per labelled item, the EMA of the weights evaluated and kept).

    Args:
        source, y, splits, backbone: as :func:`~transferkit.train.engine.finetune`.
        method: a name of :data:`SEMI_METHODS`; ``method_params`` its parameters.
        unlabelled: positions in ``source`` (default: ``splits.unlabelled``) or another DataSource.
        strategy: the fine-tuning strategy (``finetune``, ``partial``, ...).
        train_config: :class:`~transferkit.train.engine.TrainConfig`; an epoch is one pass over the unlabelled pool.

    Returns:
        The :class:`~transferkit.train.engine.FinetuneResult`.
    """
    from ..data import DataSource
    from ..train.engine import TrainConfig, finetune

    cfg = train_config if train_config is not None else TrainConfig()
    if isinstance(cfg, dict):
        cfg = TrainConfig(**cfg)
    pool = splits.unlabelled if unlabelled is None else unlabelled
    n_pool = len(pool)
    if n_pool == 0:
        raise DataError("no unlabelled inputs for the semi-supervised objective")
    per_step = cfg.batch_size * mu
    steps = cfg.epochs * max(1, -(-n_pool // per_step))
    n_classes = len(classes) if classes is not None else int(np.max(y[y >= 0])) + 1
    if SEMI_METHODS.get(method).cap("needs_features"):
        raise TransferkitError(f"{method} builds a graph of frozen features and runs at probe cost only: use "
                               "semi_level=features")
    objective = create_semi_objective(method, n_pool if not isinstance(pool, DataSource) else len(pool), n_classes,
                                      steps, **(method_params or {}))
    return finetune(source, y, splits, backbone, strategy, cfg, run_dir, resume=resume, extra_losses=[objective],
                    classes=classes, progress=progress, log=log, export=export, unlabelled=pool,
                    unlabelled_ratio=mu, ema_decay=ema_decay)


def _end_to_end(fs, backbone, method, other, train_config, params, run_dir, resume, progress, say) -> SemiOutcome:
    from ..data import DataSource

    if other is not None and len(fs.splits.unlabelled):
        raise DataError("end to end, the unlabelled pool is either the rest of the data or other inputs, not both; "
                        "give one")
    pool = other if isinstance(other, DataSource) else fs.splits.unlabelled
    ft = semi_finetune(fs.source, fs.y, fs.splits, backbone, method, unlabelled=pool, train_config=train_config,
                       method_params=params, run_dir=run_dir, resume=resume, classes=list(fs.classes),
                       progress=progress, log=say, export=False)
    return SemiOutcome(proba=ft.proba, y_pred=np.asarray(ft.y_pred), finetuned=ft, history=ft.history,
                       summary={"best_epoch": ft.best_epoch})


def history_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluation's mask rate on the unlabelled pool and pseudo-label accuracy on validation."""
    if not history:
        return {}
    last = history[-1]
    return {"mask_rate": last.get("metric_mask_rate"), "val_pseudo_accuracy": last.get("val_pseudo_accuracy"),
            "val_mask_rate": last.get("val_mask_rate"), "thresholds": last.get("thresholds")}


def baseline_rows(fs: Any, other_features: np.ndarray | None = None) -> list[tuple[str, np.ndarray, float]]:
    """The classic semi-supervised baselines on the same split and pool (eval-view features): self-training and
    label spreading, as ``(name, test predictions, seconds)``; ``other_features`` are the other unlabelled inputs'
    features, added to the split's unlabelled part."""
    sp = fs.splits
    X_l, y_l = np.asarray(fs.X[sp.train], dtype=np.float32), fs.y[sp.train]
    X_u = np.asarray(fs.X[sp.unlabelled], dtype=np.float32)
    if other_features is not None:
        X_u = np.concatenate([X_u, np.asarray(other_features, dtype=np.float32)])
    X_t = np.asarray(fs.X[sp.test], dtype=np.float32)
    out = []
    for name, fn in (("self-training", self_training), ("label spreading", label_spreading)):
        t = time.perf_counter()
        try:
            model = fn(X_l, y_l, X_u)
        except DataError:
            continue
        out.append((name, model.predict(X_t), time.perf_counter() - t))
    return out
