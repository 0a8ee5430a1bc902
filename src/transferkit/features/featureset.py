"""``FeatureSet``: a dataset's cached features with its labels, classes, splits and skipped inputs, built by one
function (:func:`build_featureset`) that every command uses: fit, compare, rank, advise, adapt, the estimators and
predict.

Building one: read the data (a built-in name, a folder, a table, arrays, or a :class:`DataSource`), check the
backbone takes its modality, check image headers, get the features from the :class:`FeatureStore` (extracting only
what is missing), leave out or refuse unreadable inputs, encode the labels and split (train / validation / test /
unlabelled, stratified and seeded). Nothing already extracted is lost when an input turns out to be bad.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..backbones.base import Backbone
from ..data.sources import DataSource
from ..data.splits import Splits, make_splits
from ..errors import BadInputError, DataError, ModalityError, bad_inputs_message
from .store import FeatureStore

__all__ = ["FeatureSet", "build_featureset", "ON_BAD_INPUT"]

ON_BAD_INPUT = ("error", "skip")


@dataclass
class FeatureSet:
    """Features of a dataset from one backbone, and what the heads and scores need beside them.

    Attributes:
        X: ``(N, D)`` float32 features of the kept items (memory-mapped from the cache when nothing was left out).
        y: ``(N,)`` integer class indices (``-1`` for unlabelled items), or None for unlabelled data.
        classes: class names (the label ``y == k`` is ``classes[k]``).
        splits: train / val / test / unlabelled index arrays into ``X`` (None when not split).
        source: the kept items.
        backbone: the backbone the features come from.
        skipped: ``(input, reason)`` of every input left out.
        extracted: items that needed a forward pass in this call (0 on a full cache hit).
        seconds: time spent getting the features.
        path: the cached view the features come from.
        positions: for each row of ``X``, the index of its item in the data as given (before skipping).
    """

    X: np.ndarray
    y: np.ndarray | None
    classes: list[str]
    splits: Splits | None
    source: DataSource
    backbone: Backbone
    skipped: list[tuple[str, str]] = field(default_factory=list)
    extracted: int = 0
    seconds: float = 0.0
    path: Path | None = None
    positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.X)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(X, y)`` of a split: ``train``, ``val``, ``test``, ``unlabelled`` or ``labelled`` (train + val), as
        in-memory float32 arrays."""
        if self.splits is None:
            raise DataError("this feature set was built without splits (split=False)")
        idx = self.splits.labelled if name == "labelled" else getattr(self.splits, name)
        return np.asarray(self.X[idx], dtype=np.float32), (None if self.y is None else self.y[idx])


def build_featureset(data: Any, backbone: Backbone, *, store: FeatureStore | None = None,
                     cache_dir: str | Path | None = None, labels: str = "required", split: bool = True,
                     labels_per_class: int | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                     unlabelled_fraction: float = 0.0, seed: int = 0, on_bad_input: str = "error",
                     batch_size: int = 64, num_workers: int | None = None, device: str = "auto",
                     input_column: str | None = None, label_column: str | None = None, encoding: str | None = None,
                     progress: bool = False, log: Callable[[str], None] | None = None, engine: str = "auto",
                     feature_precision: str = "32") -> FeatureSet:
    """The one way to a dataset's features: load, check, extract (or read the cache), skip bad inputs, split.

    Args:
        data: a built-in dataset name, a folder, a table file, in-memory inputs, or a :class:`DataSource`.
        backbone: the backbone (its preprocessing is part of the cache key).
        store: the feature cache (default: one at ``cache_dir``).
        cache_dir: the cache folder when no ``store`` is given.
        labels: ``"required"`` (at least 2 classes), ``"optional"`` (kept when present) or ``"ignore"``.
        split: make train / val / test (/ unlabelled) splits (needs labels).
        labels_per_class, val_fraction, test_fraction, unlabelled_fraction, seed: the split
            (:func:`~transferkit.data.splits.make_splits`).
        on_bad_input: ``"error"`` (stop, naming the unreadable inputs; extracted features stay cached) or
            ``"skip"`` (leave them out; they are listed in ``skipped``).
        batch_size, num_workers, device, progress, engine, feature_precision: extraction settings
            (:meth:`FeatureStore.get`).
        input_column, label_column: table columns (detected when None).
        encoding: a table's text encoding (detected when None).
        log: called with one-line progress messages.

    Raises:
        DataError: unreadable data, missing labels, too few classes or samples for the split.
        ModalityError: text data for an image backbone or the other way round.
        BadInputError: unreadable inputs with ``on_bad_input="error"``.
    """
    from ..data.load import load_data

    say = log or (lambda m: None)
    if on_bad_input not in ON_BAD_INPUT:
        raise DataError(f"on_bad_input must be one of {', '.join(ON_BAD_INPUT)}; got {on_bad_input!r}")
    if labels not in ("required", "optional", "ignore"):
        raise DataError(f"labels must be 'required', 'optional' or 'ignore'; got {labels!r}")
    source = load_data(data, input_column=input_column, label_column=label_column, on_bad_input=on_bad_input,
                       require_labels=labels == "required", encoding=encoding)
    if labels == "required":
        source.require_labels()
    where = source.origin or source.name
    if source.modality != backbone.modality:
        raise ModalityError(f"{where} holds {source.modality} data but backbone {backbone.name!r} takes "
                            f"{backbone.modality}s; pick a{'n' if source.modality == 'image' else ''} {source.modality} "
                            "backbone (see `transferkit backbones`)")
    skipped = list(source.skipped)
    positions = np.arange(len(source))
    header_bad = source.check_inputs()
    if header_bad:
        if on_bad_input == "error":
            raise BadInputError(bad_inputs_message([(0, p, r) for p, r in header_bad]), header_bad)
        bad_set = {p for p, _ in header_bad}
        positions = np.asarray([i for i, p in enumerate(source.items) if p not in bad_set], dtype=np.int64)
        source = source.subset(positions)
        skipped += header_bad
    store = store if store is not None else FeatureStore(cache_dir)
    feats = store.get(backbone, source, batch_size=batch_size, num_workers=num_workers, device=device,
                      progress=progress, engine=engine, feature_precision=feature_precision, log=log)
    say(f"features: {backbone.name} ({backbone.num_features}-d) " + (
        f"extracted {feats.extracted} in {feats.seconds:.1f}s" if feats.extracted
        else f"read from the cache in {feats.seconds:.2f}s"))
    if feats.bad:
        if on_bad_input == "error":
            raise BadInputError(bad_inputs_message(feats.bad), [(b[1], b[2]) for b in feats.bad])
        skipped += [(b[1], b[2]) for b in feats.bad]
    keep = feats.good
    X = feats.X if len(keep) == len(source) else np.asarray(feats.X[keep])
    kept = source if len(keep) == len(source) else source.subset(keep)
    positions = positions[keep]
    y, classes, splits = None, [], None
    if labels != "ignore" and kept.labels is not None:
        classes = source.classes
        y = kept.encoded_labels(classes)
        if labels == "required" and len(np.unique(y[y >= 0])) < 2:
            raise DataError(f"{where}: fewer than 2 classes are left after skipping bad inputs")
    if split:
        if y is None:
            raise DataError(f"{where} has no labels: splitting into train / validation / test needs them")
        splits = make_splits(y, labels_per_class=labels_per_class, val_fraction=val_fraction,
                             test_fraction=test_fraction, seed=seed, classes=classes,
                             unlabelled_fraction=unlabelled_fraction)
    return FeatureSet(X=X, y=y, classes=classes, splits=splits, source=kept, backbone=backbone, skipped=skipped,
                      extracted=feats.extracted, seconds=feats.seconds, path=feats.path, positions=positions)
