"""``TransferClassifier``: a pretrained backbone + cached features + shallow head, as a scikit-learn classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from .backbones import Backbone, create_backbone
from .data.sources import DataSource, from_arrays
from .errors import BadInputError, NotFittedError, TransferkitError
from .heads import create_head

__all__ = ["TransferClassifier"]

_BACKBONES: dict[str, Backbone] = {}


def _backbone(name: str) -> Backbone:
    """Backbones are built once per process (clones in GridSearchCV share them; they are never trained here)."""
    if name not in _BACKBONES:
        _BACKBONES[name] = create_backbone(name)
    return _BACKBONES[name]


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Classify images or texts with a shallow head on a pretrained backbone's cached features.

    Features are extracted once per (backbone, input) and cached on disk, so refitting with other head
    settings — e.g. inside ``GridSearchCV`` — does no forward passes.

    Args:
        backbone: backbone name (``"lite0"``, ``"minilm"``, ``"timm:<arch>"``, ...).
        head: a head of :data:`~transferkit.heads.HEADS` (``"logreg"``, ``"linear"``, ``"mlp"``, the few-shot heads
            such as ``"ncm-cl2n"``), or ``"auto"``: ``logreg``, or with 1-4 labels per class and no ``eval_set`` the
            few-shot default (:func:`~transferkit.fewshot.choose_head`); the choice and its reason are in ``head_name_`` and
            ``head_reason_``.
        head_params: keyword arguments of the head (e.g. ``{"C": 0.1}``).
        batch_size, num_workers, device: feature extraction settings.
        cache_dir: feature cache folder (default ``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``).
        on_bad_input: ``"error"`` or ``"skip"`` (unreadable training inputs are left out).
        progress: show a progress bar while extracting.

    Example:
        >>> clf = TransferClassifier(backbone="lite0").fit(images, labels)  # doctest: +SKIP
        >>> clf.predict(new_images)  # doctest: +SKIP
    """

    def __init__(self, backbone: str = "lite0", head: str = "auto", head_params: dict[str, Any] | None = None,
                 batch_size: int = 64, num_workers: int | None = None, cache_dir: str | None = None,
                 device: str = "auto", on_bad_input: str = "error", progress: bool = False):
        self.backbone = backbone
        self.head = head
        self.head_params = head_params
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.device = device
        self.on_bad_input = on_bad_input
        self.progress = progress

    def _features(self, X: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray, DataSource]:
        """Features of the kept inputs, their positions among the inputs given, and the source."""
        from .features.featureset import build_featureset

        source = X if isinstance(X, DataSource) else from_arrays(X, y, name="X")
        fs = build_featureset(source, _backbone(self.backbone), cache_dir=self.cache_dir, labels="ignore", split=False,
                              on_bad_input=self.on_bad_input, batch_size=self.batch_size,
                              num_workers=self.num_workers, device=self.device, progress=self.progress)
        return np.asarray(fs.X, dtype=np.float32), fs.positions, source

    def fit(self, X: Any, y: Any = None, eval_set: tuple[Any, Any] | None = None) -> "TransferClassifier":
        """Extract (or read cached) features of ``X`` and train the head on them.

        Args:
            X: images (numpy array ``(N, H, W[, C])``, list of PIL images or arrays, file paths), texts, or a
                labelled :class:`~transferkit.data.DataSource` (then ``y`` may be None).
            y: labels, one per input.
            eval_set: optional ``(X_val, y_val)`` for the head's model choice / early stopping.
        """
        if self.on_bad_input not in ("error", "skip"):
            raise TransferkitError(f"on_bad_input must be 'error' or 'skip', got {self.on_bad_input!r}")
        if y is None:
            if not isinstance(X, DataSource) or X.labels is None:
                raise TransferkitError("fit needs labels: pass y, or a labelled DataSource as X")
            y = X.labels
        from .data.sources import check_labels

        check_labels(list(y), "y")
        y = np.asarray(y)
        F, good, _ = self._features(X, y)
        params = dict(self.head_params or {})
        name, self.head_reason_ = self.head, None
        if name == "auto":
            from .fewshot import resolve_auto_head

            name, self.head_reason_ = resolve_auto_head(y[good], params, validation=eval_set is not None)
        self.head_name_ = name
        self.head_ = create_head(name, **params)
        ev = None
        if eval_set is not None:
            Fv, gv, _ = self._features(eval_set[0])
            ev = (Fv, np.asarray(eval_set[1])[gv])
        self.head_.fit(F, y[good], eval_set=ev)
        self.classes_ = self.head_.classes_
        self.n_skipped_ = int(len(y) - len(good))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, n_classes)``, columns in the order of ``classes_``."""
        self._check_fitted()
        F, good, source = self._features(X)
        if len(good) != len(source):
            raise BadInputError(f"{len(source) - len(good)} input(s) could not be read; predict_proba needs every "
                                "input")
        return self.head_.predict_proba(F)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each input."""
        self._check_fitted()
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def transform(self, X: Any) -> np.ndarray:
        """The backbone's features ``(N, D)`` (from the cache when present)."""
        return self._features(X)[0]

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as a run directory that :func:`transferkit.load_run` reads (no pickle)."""
        from .runs import prepare_run_dir, save_model

        self._check_fitted()
        run_dir = prepare_run_dir(path, "fit")
        save_model(run_dir, self.head_.to_module(), _backbone(self.backbone), [str(c) for c in self.classes_])
        return run_dir
