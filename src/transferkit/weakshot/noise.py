"""The weak-shot split: clean base classes, noisy novel classes, a clean novel test split.

Two ways to a noisy novel training set:

- **web labels** (:func:`split_from_web_labels`): real noisy labels, e.g. a column of the labels images were
  collected under (a web search term). Items with a web label in a novel class are the noisy training set; items
  with a true (clean) label and no web label form the base classes' training data and the novel classes' test split.
- **injected noise** (:func:`inject_noise`), for evaluation: each novel class keeps ``1 - rate`` of its training
  items; the other ``rate`` are replaced by items of *another novel class* (``flip``), by items from outside every
  novel class (``outlier``: other classes of the data, other datasets, photo crops; see
  :mod:`transferkit.weakshot.outliers`), or half and half (``mixed``). The true label of every noisy item is kept,
  so the noise rate is measured and an oracle (the clean subset alone) can be reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import DataError

__all__ = ["WeakShotSplit", "inject_noise", "split_from_web_labels", "NOISE_KINDS", "resolve_classes"]

NOISE_KINDS = ("flip", "outlier", "mixed")
#: ``novel_true`` of an item whose true class is outside the novel classes (an outlier)
OUTSIDE = -1
#: ``novel_true`` of an item whose true class is unknown (a real web label that nobody checked)
UNKNOWN = -2


@dataclass
class WeakShotSplit:
    """Indices into one item table (the data's items, then any outlier pools) and the labels of each part.

    Attributes:
        base_classes, novel_classes: class names.
        base_train, base_val: rows of the base classes' clean training and validation items; ``base_y_train`` and
            ``base_y_val`` their labels ``0 .. len(base_classes)-1``.
        novel_train: rows of the novel classes' noisy training items (an outlier row may appear once per class).
        novel_noisy: their noisy labels ``0 .. len(novel_classes)-1``.
        novel_true: their true novel label, :data:`OUTSIDE` (-1) for an item of no novel class, :data:`UNKNOWN`
            (-2) when nobody knows.
        novel_test, novel_y_test: rows and true labels of the clean novel test split.
        noise: how the noise was made and what it measures (rate, kind, counts).
    """

    base_classes: list[str]
    novel_classes: list[str]
    base_train: np.ndarray
    base_y_train: np.ndarray
    base_val: np.ndarray
    base_y_val: np.ndarray
    novel_train: np.ndarray
    novel_noisy: np.ndarray
    novel_true: np.ndarray
    novel_test: np.ndarray
    novel_y_test: np.ndarray
    noise: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> np.ndarray | None:
        """True where a noisy label is the item's true class (None when any true class is unknown)."""
        if (self.novel_true == UNKNOWN).any():
            return None
        return self.novel_true == self.novel_noisy

    def sizes(self) -> dict[str, int]:
        """Items per part."""
        return {"base_train": len(self.base_train), "base_val": len(self.base_val),
                "novel_train": len(self.novel_train), "novel_test": len(self.novel_test)}


def resolve_classes(classes: Sequence[str], base: Sequence[str] | str | None,
                    novel: Sequence[str] | str | None) -> tuple[list[str], list[str]]:
    """Base and novel class names from what a user gave (comma-separated or lists); missing ones default to the
    rest, or to alternate classes when neither is given.

    Raises:
        DataError: unknown names, a class in both, or fewer than 2 classes on either side.
    """
    def parse(v: Sequence[str] | str | None) -> list[str] | None:
        if v is None:
            return None
        items = v.split(",") if isinstance(v, str) else list(v)
        return [str(s).strip() for s in items if str(s).strip()]

    classes = [str(c) for c in classes]
    b, n = parse(base), parse(novel)
    for what, names in (("base", b), ("novel", n)):
        unknown = [c for c in names or [] if c not in classes]
        if unknown:
            raise DataError(f"{what} class(es) {unknown} are not in the data; its classes are {classes}")
    if b is None and n is None:
        b, n = classes[::2], classes[1::2]
    elif b is None:
        b = [c for c in classes if c not in n]
    elif n is None:
        n = [c for c in classes if c not in b]
    both = sorted(set(b) & set(n))
    if both:
        raise DataError(f"class(es) {both} are both base and novel; a class is one or the other")
    if len(b) < 2 or len(n) < 2:
        raise DataError(f"weak-shot learning needs at least 2 base and 2 novel classes; got base={b}, novel={n}")
    return b, n


def _base_split(y: np.ndarray, rows: np.ndarray, val_fraction: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    train, val = [], []
    for c in np.unique(y[rows]):
        r = rng.permutation(rows[y[rows] == c])
        k = max(1, int(round(val_fraction * len(r)))) if len(r) >= 3 else 0
        val.append(r[:k])
        train.append(r[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def inject_noise(y: np.ndarray, classes: Sequence[str], base: Sequence[str], novel: Sequence[str], *, rate: float,
                 kind: str = "flip", outlier_rows: np.ndarray | None = None, seed: int = 0,
                 test_fraction: float = 0.3, val_fraction: float = 0.2) -> WeakShotSplit:
    """A weak-shot split of clean labels with noise injected into the novel classes' training items.

    Args:
        y: ``(N,)`` class index of each row of the data (``-1``: unlabelled, never used).
        classes: class names of ``y``.
        base, novel: the base and novel class names.
        rate: share of each novel class's training items that are noisy, in ``[0, 1)``.
        kind: ``flip`` (items of other novel classes), ``outlier`` (items from ``outlier_rows``) or ``mixed``.
        outlier_rows: rows of the item table that may serve as outliers (other classes, other datasets, photos).
        seed: the split's seed.
        test_fraction: share of each novel class held out (clean) for testing.
        val_fraction: share of each base class held out to choose the base models' checkpoints.

    Raises:
        DataError: a bad rate or kind, no outlier rows for an outlier kind, or classes too small to split.
    """
    if kind not in NOISE_KINDS:
        raise DataError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}; got {kind!r}")
    if not 0 <= rate < 1:
        raise DataError(f"noise must be a rate in [0, 1); got {rate}")
    y = np.asarray(y, np.int64)
    classes = [str(c) for c in classes]
    rng = np.random.default_rng(seed)
    b_idx = [classes.index(c) for c in base]
    n_idx = [classes.index(c) for c in novel]
    base_rows = np.flatnonzero(np.isin(y, b_idx))
    bt, bv = _base_split(y, base_rows, val_fraction, rng)
    remap_b = {c: i for i, c in enumerate(b_idx)}
    keep, dropped, test = {}, [], []
    for k, c in enumerate(n_idx):
        r = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(r)))
        if n_test < 1 or len(r) - n_test < 2:
            raise DataError(f"novel class {classes[c]!r} has {len(r)} items: too few for a test split and a noisy "
                            "training set")
        test.append(r[:n_test])
        pool = r[n_test:]
        m = int(round(rate * len(pool)))
        keep[k] = pool[:len(pool) - m]
        dropped += [(int(i), k) for i in pool[len(pool) - m:]]
    need = {k: sum(d[1] == k for d in dropped) for k in range(len(n_idx))}
    flips = {k: (need[k] if kind == "flip" else need[k] // 2 if kind == "mixed" else 0) for k in need}
    outs = {k: need[k] - flips[k] for k in need}
    rows, noisy, true = [], [], []
    for k in range(len(n_idx)):
        rows += list(keep[k])
        noisy += [k] * len(keep[k])
        true += [k] * len(keep[k])
    # flips: the dropped items of the other novel classes, each used once; kept items of other classes if short
    free = [dropped[i] for i in rng.permutation(len(dropped))]
    reused = 0
    for k in sorted(flips, key=lambda k: -flips[k]):
        take = [d for d in free if d[1] != k][:flips[k]]
        for d in take:
            free.remove(d)
        short = flips[k] - len(take)
        if short > 0:
            others = [(int(i), j) for j in keep if j != k for i in keep[j]]
            take += [others[p] for p in rng.choice(len(others), short, replace=len(others) < short)]
            reused += short
        rows += [d[0] for d in take]
        noisy += [k] * len(take)
        true += [d[1] for d in take]
    total_out = sum(outs.values())
    with_replacement = False
    if total_out:
        if outlier_rows is None or len(outlier_rows) == 0:
            raise DataError(f"noise_kind={kind!r} needs outliers, and none are available: name outlier sources "
                            "(outliers=...) or keep some classes outside base and novel")
        pool = rng.permutation(np.asarray(outlier_rows, np.int64))
        if len(pool) < total_out:
            pool = np.concatenate([pool, rng.choice(pool, total_out - len(pool), replace=True)])
            with_replacement = True
        s = 0
        for k in range(len(n_idx)):
            rows += list(pool[s:s + outs[k]])
            noisy += [k] * outs[k]
            true += [OUTSIDE] * outs[k]
            s += outs[k]
    rows_a, noisy_a, true_a = (np.asarray(v, np.int64) for v in (rows, noisy, true))
    order = rng.permutation(len(rows_a))
    test_a = np.concatenate(test)
    y_test = np.asarray([n_idx.index(int(c)) for c in y[test_a]], np.int64)
    measured = float(np.mean(true_a[order] != noisy_a[order])) if len(rows_a) else 0.0
    noise = {"source": "injected", "rate": float(rate), "kind": kind, "measured_rate": measured,
             "flipped": int(sum(flips.values())), "outliers": int(total_out),
             "flips_reusing_clean_items": int(reused), "outliers_with_replacement": with_replacement}
    return WeakShotSplit(list(base), list(novel), bt, np.asarray([remap_b[int(c)] for c in y[bt]], np.int64), bv,
                         np.asarray([remap_b[int(c)] for c in y[bv]], np.int64), rows_a[order], noisy_a[order],
                         true_a[order], test_a, y_test, noise)


def split_from_web_labels(y_true: np.ndarray, web: np.ndarray, classes: Sequence[str], base: Sequence[str],
                          novel: Sequence[str], *, seed: int = 0, val_fraction: float = 0.2) -> WeakShotSplit:
    """A weak-shot split from real noisy labels.

    Args:
        y_true: ``(N,)`` index into ``classes`` of each row's checked label, ``-1`` where there is none.
        web: ``(N,)`` index into ``classes`` of each row's web (noisy) label, ``-1`` where there is none.
        classes, base, novel: class names.

    Rows with a web label in a novel class are the noisy training set (their true label, when present, measures
    the noise); rows without a web label and with a true label form the base training data (base classes) and the
    novel test split (novel classes).

    Raises:
        DataError: a novel class without web-labelled items or without test items, or base classes without items.
    """
    y_true = np.asarray(y_true, np.int64)
    web = np.asarray(web, np.int64)
    classes = [str(c) for c in classes]
    rng = np.random.default_rng(seed)
    b_idx = [classes.index(c) for c in base]
    n_idx = [classes.index(c) for c in novel]
    clean_rows = web < 0
    base_rows = np.flatnonzero(clean_rows & np.isin(y_true, b_idx))
    for c in b_idx:
        if not (y_true[base_rows] == c).any():
            raise DataError(f"base class {classes[c]!r} has no item with a checked label and no web label")
    bt, bv = _base_split(y_true, base_rows, val_fraction, rng)
    remap_b = {c: i for i, c in enumerate(b_idx)}
    train = np.flatnonzero(np.isin(web, n_idx))
    test = np.flatnonzero(clean_rows & np.isin(y_true, n_idx))
    for c in n_idx:
        if not (web[train] == c).any():
            raise DataError(f"novel class {classes[c]!r} has no item with that web label")
        if not (y_true[test] == c).any():
            raise DataError(f"novel class {classes[c]!r} has no checked item without a web label to test on")
    noisy = np.asarray([n_idx.index(int(c)) for c in web[train]], np.int64)
    true = np.asarray([n_idx.index(int(c)) if c in n_idx else (OUTSIDE if c >= 0 else UNKNOWN)
                       for c in y_true[train]], np.int64)
    known = true != UNKNOWN
    noise = {"source": "web labels", "checked": int(known.sum()),
             "measured_rate": float(np.mean(true[known] != noisy[known])) if known.any() else None}
    return WeakShotSplit(list(base), list(novel), bt, np.asarray([remap_b[int(c)] for c in y_true[bt]], np.int64), bv,
                         np.asarray([remap_b[int(c)] for c in y_true[bv]], np.int64), train, noisy, true, test,
                         np.asarray([n_idx.index(int(c)) for c in y_true[test]], np.int64), noise)
