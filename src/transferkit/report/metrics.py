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

__all__ = ["classification_metrics"]


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
