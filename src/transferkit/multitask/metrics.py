"""Scores of multitask results: each task's metric, the change against its single-task model (with an interval and
a negative-transfer flag), and the Δm summary.

Classification tasks are scored by accuracy (higher is better) and compared with McNemar's exact test on the same
test items (:func:`transferkit.report.metrics.negative_transfer`); regression tasks by the mean absolute error (lower
is better) and compared by the relative change of the error with a paired bootstrap interval over the test items,
flagged when the whole interval says worse.

References:
    Maninis, Radosavovic & Kokkinos, "Attentive Single-Tasking of Multiple Tasks", CVPR 2019 (Δm); Vandenhende et
    al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021 (Δm as the mean relative change).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["task_metrics", "primary_metric", "relative_change", "compare_to_single", "delta_m", "task_score"]


def primary_metric(kind: str) -> tuple[str, bool]:
    """``(metric, higher is better)`` of a task kind: accuracy for classification, MAE for regression."""
    return ("accuracy", True) if kind == "classification" else ("mae", False)


def task_metrics(kind: str, y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metrics of one task on the items that have its label (NaN labels are left out).

    Classification: ``accuracy``, ``macro_f1``; regression: ``mae``, ``rmse``, ``r2``; both: ``n``.
    """
    y = np.asarray(y_true, np.float64)
    p = np.asarray(pred, np.float64)
    m = ~np.isnan(y)
    y, p = y[m], p[m]
    if not len(y):
        return {"n": 0}
    if kind == "classification":
        from sklearn.metrics import f1_score

        yi, pi = y.astype(np.int64), p.astype(np.int64)
        return {"accuracy": float(np.mean(yi == pi)), "macro_f1": float(f1_score(yi, pi, average="macro",
                                                                               zero_division=0)), "n": int(len(y))}
    err = p - y
    var = float(np.var(y))
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "r2": float(1 - np.mean(err ** 2) / var) if var > 0 else 0.0, "n": int(len(y))}


def task_score(kind: str, metrics: dict[str, float], reference_mae: float | None = None) -> float | None:
    """One number per task where higher is better: accuracy, or ``1 - MAE / reference_mae`` (the reference: the
    error of predicting the training median) for regression; what checkpoint choice averages over tasks."""
    if kind == "classification":
        return metrics.get("accuracy")
    mae = metrics.get("mae")
    if mae is None:
        return None
    return 1.0 - mae / reference_mae if reference_mae else -mae


def relative_change(kind: str, multi: dict[str, float], single: dict[str, float]) -> float | None:
    """The multitask model's change against the single-task model in percent of the single-task metric, signed so
    that positive is better (``+100 (acc_m - acc_s) / acc_s``; ``-100 (mae_m - mae_s) / mae_s``)."""
    metric, higher = primary_metric(kind)
    a, b = multi.get(metric), single.get(metric)
    if a is None or b is None or b == 0:
        return None
    return 100.0 * (a - b) / b * (1 if higher else -1)


def delta_m(changes: Sequence[float | None]) -> float | None:
    """Δm: the mean over tasks of the signed relative changes (percent; positive: the multitask model is better)."""
    vals = [c for c in changes if c is not None]
    return float(np.mean(vals)) if vals else None


def compare_to_single(kind: str, y_true: np.ndarray, pred_multi: np.ndarray, pred_single: np.ndarray, *,
                      alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The multitask model against the single-task model of one task on the same test items.

    Classification: :func:`~transferkit.report.metrics.negative_transfer` (accuracy difference, its 95% interval,
    McNemar's p-value, ``flag``). Regression: the relative change of the MAE in percent (positive: better) with a
    paired bootstrap ``1 - alpha`` interval over the test items; ``flag`` when the whole interval is below 0.
    """
    y = np.asarray(y_true, np.float64)
    m = ~np.isnan(y)
    y = y[m]
    a = np.asarray(pred_multi, np.float64)[m]
    b = np.asarray(pred_single, np.float64)[m]
    if kind == "classification":
        from ..report.metrics import negative_transfer

        t = negative_transfer(a.astype(np.int64) == y.astype(np.int64), b.astype(np.int64) == y.astype(np.int64),
                              alpha=alpha)
        return {"kind": "mcnemar", **t}
    ea, eb = np.abs(a - y), np.abs(b - y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n_boot, len(y)))
    ma, mb = ea[idx].mean(1), eb[idx].mean(1)
    rel = -100.0 * (ma - mb) / np.maximum(mb, 1e-12)
    low, high = np.quantile(rel, [alpha / 2, 1 - alpha / 2])
    point = -100.0 * (ea.mean() - eb.mean()) / max(eb.mean(), 1e-12)
    return {"kind": "bootstrap", "change_percent": float(point), "low": float(low), "high": float(high),
            "n": int(len(y)), "flag": bool(high < 0), "confidence": 1 - alpha}
