"""Classification metrics as plain, JSON-serialisable Python values.

The numbers come from scikit-learn; this module only fixes the label set (every class of the task,
even those absent from a split), silences the zero-division warnings, and converts NumPy scalars to
``float``/``int`` so that the result can go straight into ``json.dumps`` or a report.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from transferkit.errors import DataError

__all__ = ["classification_metrics", "paired_difference", "negative_transfer", "difference_text", "pack_outcomes",
           "unpack_outcomes"]


def _as_index_array(values: Any, name: str, n_classes: int) -> np.ndarray:
    """Checks that ``values`` is a 1-D array of integer class indices in ``[0, n_classes)``.

    Args:
        values: The array-like to check.
        name: Argument name used in error messages.
        n_classes: Number of classes of the task.

    Returns:
        The values as a 1-D ``int64`` array.

    Raises:
        DataError: If the values are not 1-D integer class indices in range.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of class indices; got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(
                f"{name} must hold integer class indices; got dtype {arr.dtype}. "
                "Map class names to indices with classes.index(name) first."
            )
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise DataError(
            f"{name} holds class index {int(arr.min() if arr.min() < 0 else arr.max())}, outside "
            f"0..{n_classes - 1} for the {n_classes} classes given."
        )
    return arr


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Computes the headline and per-class metrics of a classifier on one split.

    Every class in ``classes`` is reported (with zeros where it has no samples or no predictions), so
    that results of different runs on the same task line up.

    Args:
        y_true: Integer class indices of the true labels, shape ``(n,)``.
        y_pred: Integer class indices of the predictions, shape ``(n,)``.
        classes: Class names; index ``i`` names class ``i``.

    Returns:
        A dict with ``accuracy``, ``macro_f1`` (mean F1 over all ``classes``), ``balanced_accuracy``
        (mean recall over the classes present in ``y_true``), ``n`` (number of samples),
        ``per_class`` (a list of dicts with ``class``, ``precision``, ``recall``, ``f1``,
        ``support``) and ``confusion_matrix`` (list of lists; rows are true classes, columns are
        predicted classes). All values are plain Python ``float``/``int``/``str``.

    Raises:
        DataError: If the inputs are empty, of different lengths, not integer indices, or out of
            range for ``classes``.
    """
    classes = [str(c) for c in classes]
    k = len(classes)
    if k == 0:
        raise DataError("classes is empty; pass the list of class names of the task.")
    yt = _as_index_array(y_true, "y_true", k)
    yp = _as_index_array(y_pred, "y_pred", k)
    if yt.shape != yp.shape:
        raise DataError(f"y_true and y_pred differ in length: {yt.shape[0]} vs {yp.shape[0]}.")
    if yt.size == 0:
        raise DataError("y_true and y_pred are empty; there is nothing to score.")

    labels = list(range(k))
    with warnings.catch_warnings():
        # balanced_accuracy_score warns when y_pred holds classes absent from y_true; that is expected.
        warnings.simplefilter("ignore", UserWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            yt, yp, labels=labels, zero_division=0
        )
        macro_f1 = f1_score(yt, yp, labels=labels, average="macro", zero_division=0)
        balanced = balanced_accuracy_score(yt, yp)
    cm = confusion_matrix(yt, yp, labels=labels)

    return {
        "accuracy": float(accuracy_score(yt, yp)),
        "macro_f1": float(macro_f1),
        "balanced_accuracy": float(balanced),
        "n": int(yt.size),
        "per_class": [
            {
                "class": classes[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        ],
        "confusion_matrix": [[int(v) for v in row] for row in cm],
    }


def paired_difference(correct_a: Any, correct_b: Any, *, confidence: float = 0.95) -> dict[str, Any]:
    """How much more often model A is right than model B on the same test items, with an interval and a test.

    The difference of accuracies ``acc_a - acc_b`` is estimated from the paired outcomes; its interval is the Wald
    interval for paired proportions (standard error ``sqrt(b + c - (b - c)^2 / n) / n``, where ``b`` items only A
    got right and ``c`` only B), and the p-value is McNemar's exact test (a two-sided binomial test of ``b`` against
    ``b + c`` trials at 1/2), which asks whether the disagreements lean one way more than chance allows.

    Args:
        correct_a, correct_b: booleans, one per test item, in the same order.
        confidence: the interval's level.

    Returns:
        ``diff``, ``low``, ``high`` (fractions), ``p_value``, ``n``, ``only_a`` (b), ``only_b`` (c), ``confidence``.

    Raises:
        DataError: the two sequences differ in length or are empty.

    References:
        McNemar, "Note on the sampling error of the difference between correlated proportions or percentages",
        Psychometrika 1947; Agresti, "Categorical Data Analysis" (2002), section 10.1.
    """
    from scipy.stats import binomtest, norm

    a = np.asarray(correct_a, dtype=bool).ravel()
    b_ = np.asarray(correct_b, dtype=bool).ravel()
    if len(a) != len(b_) or len(a) == 0:
        raise DataError(f"paired outcomes must be two equally long, non-empty sequences; got {len(a)} and {len(b_)}")
    n = len(a)
    only_a = int(np.sum(a & ~b_))
    only_b = int(np.sum(~a & b_))
    diff = (only_a - only_b) / n
    se = np.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n
    z = float(norm.ppf(0.5 + confidence / 2))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"diff": float(diff), "low": float(max(-1.0, diff - z * se)), "high": float(min(1.0, diff + z * se)),
            "p_value": p, "n": n, "only_a": only_a, "only_b": only_b, "confidence": confidence}


def negative_transfer(correct_transfer: Any, correct_baseline: Any, *, alpha: float = 0.05) -> dict[str, Any]:
    """Is a transfer result worse than its from-scratch (or no-adaptation) baseline on the same test items?

    Flagged only when it scores lower *and* McNemar's test says the difference is unlikely to be noise
    (``p < alpha``): a few test items more or less on a small test split do not make negative transfer.

    Returns:
        :func:`paired_difference` of transfer minus baseline, plus ``flag`` (bool) and ``alpha``.
    """
    d = paired_difference(correct_transfer, correct_baseline)
    return {**d, "flag": bool(d["diff"] < 0 and d["p_value"] < alpha), "alpha": alpha}


def difference_text(d: dict[str, Any]) -> str:
    """``-3.3 points (95% CI -8.1 to +1.5; McNemar p = 0.62)`` for a :func:`paired_difference`."""
    return (f"{100 * d['diff']:+.1f} points ({int(round(100 * d['confidence']))}% CI {100 * d['low']:+.1f} to "
            f"{100 * d['high']:+.1f}; McNemar p = {d['p_value']:.2g})")


def pack_outcomes(correct: Any) -> str:
    """Per-item right/wrong outcomes as a compact hex string (for journals); :func:`unpack_outcomes` reverses it."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return f"{len(bits)}:" + np.packbits(bits).tobytes().hex()


def unpack_outcomes(packed: str) -> np.ndarray:
    """The booleans :func:`pack_outcomes` packed."""
    n, hexed = packed.split(":", 1)
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexed), dtype=np.uint8))[: int(n)].astype(bool)
