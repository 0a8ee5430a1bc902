"""Stratified, seeded train / validation / test / unlabelled splits, with an optional labels-per-class budget."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

__all__ = ["Splits", "make_splits", "stratified_subset", "cross_folds"]


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


def cross_folds(y: np.ndarray, splits: Splits, *, k: int | None = None, seed: int = 0) -> list[Splits]:
    """``k`` folds of a split's labelled items, for cross-validating a choice that one validation split is too
    small to make (``--strategy auto``'s race).

    Fold 0 is ``splits`` itself. Each further fold holds out one of ``k - 1`` stratified, seeded groups of the
    split's **training** items (each class's training items are dealt into the groups in turn) and trains on every
    other labelled item; its test split is empty. Every labelled item is held out exactly once over the ``k``
    folds. With a labels-per-class budget and the default 20 % validation share, ``k = 5`` and every fold holds out
    as many items of each class as the split's own validation part, so each fold trains on as many items as the
    model the split finally trains.

    Args:
        y: class index per item.
        splits: the split whose labelled items (``train`` + ``val``) are folded; ``val`` must not be empty.
        k: the number of folds (at least 2); None: ``round(labelled / val)``, 5 with a 20 % validation share.
        seed: the seed of the grouping.

    Returns:
        ``k`` :class:`Splits` (fold 0 first); their held-out parts partition ``splits.labelled``.

    Raises:
        DataError: no validation split, or ``k`` below 2 or above the training items.
    """
    y = np.asarray(y)
    train, val = np.asarray(splits.train, np.int64), np.asarray(splits.val, np.int64)
    if not len(val):
        raise DataError("cross_folds needs a split with a validation part (it is fold 0's held-out part)")
    if k is None:
        k = max(2, int(round((len(train) + len(val)) / len(val))))
    if not isinstance(k, (int, np.integer)) or not 2 <= k <= len(train) + 1:
        raise DataError(f"k must be an integer from 2 to {len(train) + 1} (the training items + 1), got {k!r}")
    rng = np.random.default_rng(seed)
    groups: list[list[np.ndarray]] = [[] for _ in range(k - 1)]
    start = 0
    for c in np.unique(y[train]):
        members = train[y[train] == c]
        members = members[rng.permutation(len(members))]
        for j in range(k - 1):  # dealt in turn from where the last class stopped: group sizes stay even
            groups[(start + j) % (k - 1)].append(members[j::k - 1])
        start = (start + len(members)) % (k - 1)
    labelled = np.concatenate([train, val])
    folds = [splits]
    for parts in groups:
        held = np.sort(np.concatenate(parts)).astype(np.int64)
        folds.append(Splits(np.sort(np.setdiff1d(labelled, held)).astype(np.int64), held, _empty()))
    return folds
