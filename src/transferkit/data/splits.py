"""Stratified, seeded train / validation / test / unlabelled splits, with an optional labels-per-class budget."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

__all__ = ["Splits", "make_splits", "stratified_subset"]


def _empty() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(frozen=True)
class Splits:
    """Index arrays into one data source. ``val`` may be empty (tiny budgets); ``unlabelled`` holds items whose
    labels are not used for training (unlabelled inputs, or labelled ones set aside as an unlabelled pool)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unlabelled: np.ndarray = field(default_factory=_empty)

    def sizes(self) -> dict[str, int]:
        """Items per split (``unlabelled`` only when there are some)."""
        out = {"train": int(len(self.train)), "val": int(len(self.val)), "test": int(len(self.test))}
        if len(self.unlabelled):
            out["unlabelled"] = int(len(self.unlabelled))
        return out

    @property
    def labelled(self) -> np.ndarray:
        """Train and validation together: every label the model may learn from."""
        return np.concatenate([self.train, self.val])


def make_splits(y: np.ndarray, *, labels_per_class: int | None = None, val_fraction: float = 0.2,
                test_fraction: float = 0.2, seed: int = 0, classes: list[str] | None = None,
                unlabelled_fraction: float | str = 0.0) -> Splits:
    """Split sample indices by class.

    With ``labels_per_class=N`` each class contributes exactly ``N`` labelled samples (``round(N *
    val_fraction)`` of them for validation when ``N >= 5``, the rest for training) and its other samples go to the
    test split (``unlabelled_fraction`` of them to the unlabelled pool first): the low-data scenario. Without it,
    each class is split into fractions. Items whose label is negative (no label) always go to ``unlabelled``.

    Args:
        y: integer class index per sample (``-1``: unlabelled).
        labels_per_class: the labelled budget per class, or None.
        val_fraction: share of the labelled samples held out for validation (early stopping, model choice).
        test_fraction: share of each class held out for testing (ignored with ``labels_per_class``).
        seed: the split's seed.
        classes: class names, for messages.
        unlabelled_fraction: with ``labels_per_class``, the share of each class's remaining samples moved to the
            unlabelled pool (their labels are not used for training); the rest stays the test split. ``"rest"``:
            every remaining sample except a test share of ``test_fraction`` of the class (at least one) goes to
            the unlabelled pool: the semi-supervised scenario.

    Raises:
        DataError: a class is too small for the requested budget or fractions.
    """
    y = np.asarray(y)
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1) and test_fraction in (0, 1); got {val_fraction}, {test_fraction}")
    if labels_per_class is not None and labels_per_class < 1:
        raise DataError(f"labels_per_class must be at least 1, got {labels_per_class}")
    rest_mode = isinstance(unlabelled_fraction, str)
    if rest_mode and unlabelled_fraction != "rest":
        raise DataError(f"unlabelled_fraction must be a number in [0, 1) or 'rest', got {unlabelled_fraction!r}")
    if not rest_mode and not 0 <= unlabelled_fraction < 1:
        raise DataError(f"unlabelled_fraction must be in [0, 1), got {unlabelled_fraction}")
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    unl = [np.flatnonzero(y < 0)]
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        name = classes[c] if classes is not None else str(c)
        if labels_per_class is not None:
            n = labels_per_class
            if len(idx) <= n:
                raise DataError(f"class {name!r} has {len(idx)} samples: too few for labels_per_class={n} "
                                f"with at least one left to test on; use at most {len(idx) - 1}")
            n_val = int(round(n * val_fraction)) if n >= 5 else 0
            val.append(idx[:n_val])
            train.append(idx[n_val:n])
            rest = idx[n:]
            if rest_mode:
                n_unl = max(len(rest) - max(1, int(round(len(idx) * test_fraction))), 0)
            else:
                n_unl = min(int(round(len(rest) * unlabelled_fraction)), len(rest) - 1)
            unl.append(rest[:n_unl])
            test.append(rest[n_unl:])
        else:
            n_test = max(1, int(round(len(idx) * test_fraction)))
            n_val = int(round(len(idx) * val_fraction))
            if len(idx) - n_test - n_val < 1:
                raise DataError(f"class {name!r} has {len(idx)} samples: too few to split into train, "
                                "validation and test; add samples or remove the class")
            test.append(idx[:n_test])
            val.append(idx[n_test:n_test + n_val])
            train.append(idx[n_test + n_val:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return Splits(cat(train), cat(val), cat(test), cat(unl))


def stratified_subset(idx: np.ndarray, y: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """At most ``max_samples`` of ``idx``, each class keeping its share (and at least 2 where it has them)."""
    if max_samples is None or len(idx) <= max_samples:
        return idx
    rng = np.random.default_rng(seed)
    frac = max_samples / len(idx)
    keep = []
    for c in np.unique(y[idx]):
        members = idx[y[idx] == c]
        k = min(len(members), max(2, int(round(len(members) * frac))))
        keep.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(keep))
