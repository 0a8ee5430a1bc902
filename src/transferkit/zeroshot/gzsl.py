"""Generalized zero-shot learning: seen and unseen classes compete at test time.

- :func:`gzsl_accuracy`: accuracy on the test items of seen classes and of unseen classes (each the mean of the
  per-class accuracies, as in Xian et al.'s protocol), and their harmonic mean.
- :func:`calibrated_stacking`: Chao et al.'s rule, ``argmax_c s_c(x) - gamma [c is seen]``.
- :func:`choose_gamma`: the calibration constant chosen on *seen* classes only: the seen classes are split into
  folds; each fold plays the unseen classes (the method is refitted without its labels), and the constant that
  maximises the harmonic mean on the seen classes' validation items, averaged over folds, is kept. No unseen class
  and no test item is looked at.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import DataError

__all__ = ["gzsl_accuracy", "harmonic_mean", "calibrated_stacking", "choose_gamma", "per_class_accuracy"]


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)`` (0 when both are 0)."""
    return 0.0 if a + b <= 0 else 2.0 * a * b / (a + b)


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> float:
    """Mean over ``classes`` (those with test items) of the share of each class's items predicted right."""
    accs = [float((y_pred[y_true == c] == c).mean()) for c in classes if (y_true == c).any()]
    return float(np.mean(accs)) if accs else float("nan")


def gzsl_accuracy(y_true: Any, y_pred: Any, seen: Any) -> dict[str, float]:
    """Seen accuracy, unseen accuracy and their harmonic mean, over predictions among *all* classes.

    Args:
        y_true: ``(N,)`` true class indices.
        y_pred: ``(N,)`` predicted class indices (among seen and unseen classes).
        seen: ``(C,)`` bool, the seen classes.

    Returns:
        ``{"seen", "unseen", "harmonic"}``; seen and unseen are per-class mean accuracies.

    References:
        Xian, Lampert, Schiele & Akata, "Zero-Shot Learning - A Comprehensive Evaluation of the Good, the Bad and the
        Ugly", TPAMI 2018 (per-class accuracy, the harmonic mean).
    """
    y_true, y_pred, seen = np.asarray(y_true), np.asarray(y_pred), np.asarray(seen, bool)
    if y_true.shape != y_pred.shape:
        raise DataError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    s_cls, u_cls = np.flatnonzero(seen), np.flatnonzero(~seen)
    acc_s = per_class_accuracy(y_true, y_pred, s_cls)
    acc_u = per_class_accuracy(y_true, y_pred, u_cls)
    h = harmonic_mean(acc_s, acc_u) if np.isfinite(acc_s) and np.isfinite(acc_u) else float("nan")
    return {"seen": acc_s, "unseen": acc_u, "harmonic": h}


def calibrated_stacking(scores: np.ndarray, seen: np.ndarray, gamma: float) -> np.ndarray:
    """Predicted classes ``argmax_c scores[:, c] - gamma * seen[c]``.

    Shape:
        ``scores (N, C)``, ``seen (C,)`` -> ``(N,)``.

    References:
        Chao, Changpinyo, Gong & Sha, "An Empirical Study and Analysis of Generalized Zero-Shot Learning for Object
        Recognition in the Wild", ECCV 2016.
    """
    return (np.asarray(scores) - float(gamma) * np.asarray(seen, float)).argmax(1)


def choose_gamma(fit_scores: Callable[[np.ndarray], np.ndarray], y_val: np.ndarray, seen_classes: np.ndarray, *,
                 folds: int = 2, seed: int = 0, grid: int = 41) -> dict[str, Any]:
    """Choose the calibrated-stacking constant on seen classes only.

    Args:
        fit_scores: ``fit_scores(held_out)`` refits the method with the seen classes in ``held_out`` treated as
            unseen (their labels withheld) and returns the scores ``(N_val, C)`` of the validation items.
        y_val: ``(N_val,)`` class indices of the validation items (all of seen classes).
        seen_classes: indices of the seen classes.
        folds: how many class-wise folds (each holds out about ``len(seen) / folds`` classes; with 3 or more seen
            classes, raised so that at least 2 stay seen in every fold).
        seed: seed of the class split.
        grid: number of candidate constants (quantiles of the seen-minus-unseen score margins, and 0).

    Returns:
        ``{"gamma", "harmonic" (its mean over folds), "curve": [(gamma, harmonic), ...], "folds"}``.

    References:
        Chao et al., ECCV 2016 (calibrated stacking, with the constant chosen by class-wise cross-validation on the
        seen classes).
    """
    seen_classes = np.asarray(seen_classes)
    y_val = np.asarray(y_val)
    if len(seen_classes) < 2:
        raise DataError(f"choosing the calibration needs at least 2 seen classes (one held out as unseen); got "
                        f"{len(seen_classes)}")
    if not len(y_val):
        raise DataError("choosing the calibration needs validation items of the seen classes; none were given")
    n = len(seen_classes)
    # every fold leaves at least 2 seen classes to learn from when there are 3 or more
    folds = max(2, int(folds), -(-n // (n - 2)) if n >= 3 else 2)
    folds = min(folds, n)
    order = np.random.default_rng(seed).permutation(seen_classes)
    parts = [p for p in np.array_split(order, folds) if len(p)]
    runs = []
    for held in parts:
        S = np.asarray(fit_scores(held), dtype=np.float64)
        pseudo_seen = np.isin(np.arange(S.shape[1]), np.setdiff1d(seen_classes, held))
        # only the seen classes compete: the true unseen classes are not candidates while calibrating
        S = np.where(np.isin(np.arange(S.shape[1]), seen_classes), S, -np.inf)
        runs.append((S, pseudo_seen))
    margins = np.concatenate([
        (S[:, ps].max(1) - S[:, ~ps & np.isfinite(S[0])].max(1)) for S, ps in runs])
    margins = margins[np.isfinite(margins)]
    cands = np.unique(np.concatenate([[0.0], np.quantile(margins, np.linspace(0, 1, grid))])) if len(margins) \
        else np.array([0.0])
    curve = []
    for g in cands:
        hs = []
        for S, ps in runs:
            pred = calibrated_stacking(S, ps, g)
            hs.append(gzsl_accuracy(y_val, pred, ps)["harmonic"])
        curve.append((float(g), float(np.nanmean(hs))))
    best = max(curve, key=lambda t: (t[1], -abs(t[0])))
    return {"gamma": best[0], "harmonic": best[1], "curve": curve, "folds": [p.tolist() for p in parts]}
