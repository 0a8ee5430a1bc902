"""The classic semi-supervised baselines on features (scikit-learn), run beside the consistency methods on the same
splits so a user sees what the unlabelled data bought: self-training with a confidence threshold, and label
spreading over a k-nearest-neighbour graph."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

__all__ = ["self_training", "label_spreading"]


def _check(X_l: np.ndarray, y_l: np.ndarray, X_u: np.ndarray) -> None:
    if len(X_l) != len(y_l):
        raise DataError(f"{len(X_l)} labelled feature rows but {len(y_l)} labels")
    if len(np.unique(y_l)) < 2:
        raise DataError("the labelled items hold fewer than 2 classes")
    if len(X_u) == 0:
        raise DataError("the unlabelled pool is empty")


def self_training(X_l: np.ndarray, y_l: np.ndarray, X_u: np.ndarray, *, threshold: float = 0.75,
                  C: float = 1.0, max_iter: int = 10):
    """A logistic regression retrained on its own confident predictions of the unlabelled items, round after round
    (scikit-learn's ``SelfTrainingClassifier``); returns a fitted model whose ``predict`` takes raw features.

    References:
        Yarowsky, "Unsupervised Word Sense Disambiguation Rivaling Supervised Methods", ACL 1995; Scudder,
        "Probability of error of some adaptive pattern-recognition machines", IEEE Trans. Inf. Theory 1965.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.semi_supervised import SelfTrainingClassifier

    _check(X_l, y_l, X_u)
    X = np.concatenate([X_l, X_u])
    y = np.concatenate([np.asarray(y_l, dtype=np.int64), np.full(len(X_u), -1)])
    scaler = StandardScaler().fit(X)
    model = SelfTrainingClassifier(LogisticRegression(C=C, max_iter=2000), threshold=threshold, max_iter=max_iter)
    return _Fitted(scaler, model.fit(scaler.transform(X), y))


def label_spreading(X_l: np.ndarray, y_l: np.ndarray, X_u: np.ndarray, *, n_neighbors: int = 10,
                    alpha: float = 0.2):
    """Labels spread over a symmetric k-nearest-neighbour graph of all items (scikit-learn's ``LabelSpreading``),
    on standardised features; returns a fitted model whose ``predict`` takes raw features.

    References:
        Zhou, Bousquet, Lal, Weston & Schoelkopf, "Learning with Local and Global Consistency", NeurIPS 2003.
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.semi_supervised import LabelSpreading

    _check(X_l, y_l, X_u)
    X = np.concatenate([X_l, X_u])
    y = np.concatenate([np.asarray(y_l, dtype=np.int64), np.full(len(X_u), -1)])
    scaler = StandardScaler().fit(X)
    k = int(min(n_neighbors, len(X) - 1))
    return _Fitted(scaler, LabelSpreading(kernel="knn", n_neighbors=k, alpha=alpha, max_iter=100).fit(
        scaler.transform(X), y))


class _Fitted:
    """A fitted scikit-learn model behind the scaler it was fitted with."""

    def __init__(self, scaler, model):
        self.scaler, self.model = scaler, model

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted classes of raw features."""
        return self.model.predict(self.scaler.transform(np.asarray(X, dtype=np.float64)))
