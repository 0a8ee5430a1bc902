"""Transferability scores: how well a backbone suits a labelled target task, computed from features, no fine-tuning.

Every score is a pure function over arrays (numpy, float64 inside). Higher is better for all of them. The
feature-based ones (LogME, H-score, kNN, probe) need only the backbone's features of the target data; LEEP and
NCE also need the backbone's *source* classifier outputs (ImageNet probabilities), which only backbones that
kept their pretraining classifier have (see :func:`transferkit.transferability.source_probabilities`).

Use :func:`compute_scores` to get several at once with the time each took; :data:`SCORES` describes them.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ScoreError, UnknownNameError

__all__ = ["logme", "leep", "nce", "h_score", "knn_accuracy", "probe_accuracy", "ScoreInfo", "SCORES", "Scores",
           "compute_scores", "SOURCE_PROBS_HINT", "as_features", "as_labels", "as_probs", "logme_checked",
           "knn_checked", "probe_checked", "few_threads"]

_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny

SOURCE_PROBS_HINT = (
    "Only backbones that kept the classifier of their pretraining task have source probabilities: the ImageNet "
    "image backbones (lite0, lite1, lite2, timm:<arch>; random:<arch> and lite*-random have a random one). Get them "
    "from cached features with transferkit.transferability.source_probabilities(backbone, features). Text "
    "backbones (minilm, glove-50d, hf:...) and file: checkpoints have none; use a feature-based score instead "
    "(logme, h_score, knn, probe)")


# -- input checks --------------------------------------------------------------------------------------------------
def as_labels(labels: Any, n: int | None, what: str, rows: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Labels -> (integer codes, class values); checks 1-d, length, finite, >= 2 classes, more samples than classes."""
    if labels is None:
        raise ScoreError(f"{what}: labels are missing; give one target label per sample")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ScoreError(f"{what}: labels must be 1-d (one label per sample); got an array of shape {y.shape}")
    if n is not None and len(y) != n:
        raise ScoreError(f"{what}: {n} rows of {rows} but {len(y)} labels; give exactly one label per row")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ScoreError(f"{what}: {int((~np.isfinite(y)).sum())} labels are NaN or inf; drop those samples")
    try:
        classes, codes = np.unique(y, return_inverse=True)
    except TypeError as e:
        raise ScoreError(f"{what}: labels must be all of one comparable type (all strings or all numbers): {e}") from e
    if len(classes) < 2:
        shown = repr(classes[0].item() if hasattr(classes[0], "item") else classes[0]) if len(classes) else "none"
        raise ScoreError(f"{what}: the labels hold {len(classes)} class ({shown}); a transferability score compares "
                         "classes, so it needs labels of at least 2 classes")
    if len(y) <= len(classes):
        raise ScoreError(f"{what}: {len(y)} samples for {len(classes)} classes; the scores need more samples than "
                         "classes (at least one class seen twice), and are only reliable with several per class")
    return codes.reshape(-1).astype(np.int64), classes


def as_features(features: Any, what: str, n: int | None = None) -> np.ndarray:
    """Features -> float64 (N, D) array. Checks 2-d, non-empty, row count, finite."""
    if features is None:
        raise ScoreError(f"{what}: features are missing; give an (N, D) array of backbone features")
    X = np.asarray(features)
    if X.ndim != 2:
        hint = " (for one feature per sample, use features.reshape(-1, 1))" if X.ndim == 1 else ""
        raise ScoreError(f"{what}: features must be a 2-d (samples, dimensions) array; got shape {X.shape}{hint}")
    if X.dtype.kind not in "biuf":
        raise ScoreError(f"{what}: features must be numbers; got dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ScoreError(f"{what}: features are empty (shape {X.shape})")
    if n is not None and X.shape[0] != n:
        raise ScoreError(f"{what}: {X.shape[0]} rows of features but {n} labels; give exactly one label per row")
    X = np.asarray(X, dtype=np.float64)
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ScoreError(f"{what}: features hold NaN or inf in {len(bad)} of {len(X)} rows (rows "
                         f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); drop those rows first "
                         "(for cached features, Features.good lists the rows that were read)")
    return X


def _task(features: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    y0 = np.asarray(labels) if labels is not None else None
    X = as_features(features, what, None)
    y, classes = as_labels(y0, X.shape[0], what)
    return X, y, len(classes)


def as_probs(source_probs: Any, n: int, what: str) -> np.ndarray:
    """Source-classifier probabilities -> float64 (N, Z) rows that sum to 1; checks shape, range and finiteness."""
    if source_probs is None:
        raise ScoreError(f"{what} needs the source model's class probabilities (an (N, Z) array of softmax outputs "
                         f"over its own Z classes), and none were given. {SOURCE_PROBS_HINT}")
    P = np.asarray(source_probs)
    if P.ndim != 2 or P.dtype.kind not in "biuf":
        raise ScoreError(f"{what}: source probabilities must be a 2-d numeric (samples, source classes) array; "
                         f"got shape {P.shape}, dtype {P.dtype}")
    if P.shape[0] != n:
        raise ScoreError(f"{what}: {P.shape[0]} rows of source probabilities but {n} labels; give one row per sample")
    P = np.asarray(P, dtype=np.float64)
    if not np.isfinite(P).all():
        raise ScoreError(f"{what}: source probabilities hold NaN or inf; drop those rows first")
    sums = P.sum(axis=1)
    if P.min() < -1e-6 or np.abs(sums - 1).max() > 1e-3:
        raise ScoreError(f"{what}: source probabilities must be non-negative with rows summing to 1 (got values down "
                         f"to {P.min():.3g}, row sums {sums.min():.3g}..{sums.max():.3g}); pass softmax outputs, not "
                         "logits: scipy.special.softmax(logits, axis=1)")
    P = np.clip(P, 0.0, None)
    return P / P.sum(axis=1, keepdims=True)


def _one_hot(y: np.ndarray, c: int) -> np.ndarray:
    Y = np.zeros((len(y), c))
    Y[np.arange(len(y)), y] = 1.0
    return Y


# -- LogME ---------------------------------------------------------------------------------------------------------
def logme(features: Any, labels: Any) -> float:
    """LogME: the log marginal evidence of a Bayesian linear model from features to one-hot labels, per sample.

    For each class ``c``, the one-vs-rest target ``y_c`` is modelled as ``y_c = F w + noise`` with prior
    ``w ~ N(0, I / alpha)`` and noise ``N(0, 1 / beta)``; the score is the mean over classes of
    ``max_{alpha, beta} log p(y_c | F, alpha, beta) / N``. Everything is computed in the eigenbasis of ``F^T F``
    (or ``F F^T`` when ``N <= D``), one decomposition shared by all classes, so that evaluating the evidence for
    any ``alpha, beta`` costs ``O(min(N, D))``. Higher is better. The score is invariant to relabelling the
    classes and to scaling all features by one constant (the prior rescales); not to scaling single features.

    Differences from the reference implementation (thuml/LogME), which iterates MacKay's fixed point
    ``alpha = gamma / |m|^2, beta = (N - gamma) / |y - F m|^2`` at most 11 times: here the evidence, profiled over
    ``beta`` (``beta = N / |y|^2_{I - F (F^T F + t I)^-1 F^T}`` for ``t = alpha / beta``), is maximised over
    ``log t`` directly (grid, then golden-section search to 1e-10), because the fixed point can need thousands of
    steps (on random features ``t`` drifts off to infinity); the maximiser is the same stationary point, so the
    values agree wherever the reference has converged (within about 1e-3 on random features, where it has not).
    And the log-determinant counts the ``D - rank(F)`` zero eigenvalues of ``F^T F`` (the fast reference version
    omits them, reference issue thuml/LogME#23, wrong when ``N < D`` or with duplicated / constant-zero columns).

    Args:
        features: target-data features, ``(N, D)``.
        labels: one class label per sample, ``(N,)`` (any hashable values).

    Returns:
        The LogME score (mean log evidence per sample; typically between about -1 and 3 for one-hot targets).

    Raises:
        ScoreError: wrong shapes, NaN/inf features, a single class, or no more samples than classes.

    Shape:
        features ``(N, D)``, labels ``(N,)`` -> scalar.

    References:
        You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021;
        You et al., "Ranking and Tuning Pre-trained Models: A New Paradigm for Exploiting Model Hubs", JMLR 2022
        (the eigenbasis evaluation).
    """
    X, y, c = _task(features, labels, "logme")
    return logme_checked(X, y, c)


def logme_checked(X: np.ndarray, y: np.ndarray, c: int, *, tol: float = 1e-10, max_iter: int = 200) -> float:
    """:func:`logme` on arrays already checked by :func:`as_features` / :func:`as_labels` (``c`` classes)."""
    n, d = X.shape
    Y = _one_hot(y, c)
    if n > d:  # eigenbasis of the D x D Gram matrix
        lam, V = np.linalg.eigh(X.T @ X)
        keep = lam > lam.max() * max(n, d) * _EPS if lam.max() > 0 else np.zeros(len(lam), bool)
        lam, V = lam[keep], V[:, keep]
        x2 = (V.T @ (X.T @ Y)) ** 2 / lam[:, None]  # (u_i^T y_c)^2 with u_i = X v_i / sqrt(lam_i)
    else:  # eigenbasis of the N x N Gram matrix
        lam, U = np.linalg.eigh(X @ X.T)
        keep = lam > lam.max() * max(n, d) * _EPS if lam.max() > 0 else np.zeros(len(lam), bool)
        lam, U = lam[keep], U[:, keep]
        x2 = (U.T @ Y) ** 2
    rest = np.maximum(Y.sum(axis=0) - x2.sum(axis=0), 0.0)  # |y_c|^2 outside the span of the features
    const = -n / 2 * (1 + np.log(2 * np.pi))
    if len(lam) == 0:  # all-zero features: y_c ~ N(0, 1/beta) alone
        return float(np.mean((-n / 2 * np.log(np.maximum(rest, _TINY) / n) + const) / n))
    lam_ = lam[:, None, None]
    x2_ = x2[:, None, :]

    def profile(log_t: np.ndarray) -> np.ndarray:
        """Evidence maximised over beta for alpha = t * beta, per sample; log_t (G, C) -> (G, C)."""
        t = np.exp(log_t)[None]
        q = (x2_ * (t / (t + lam_))).sum(axis=0) + rest  # y^T (I - F (F^T F + t I)^-1 F^T) y = N / beta*
        return (-0.5 * np.log1p(lam_ / t).sum(axis=0) - n / 2 * np.log(np.maximum(q, _TINY) / n) + const) / n

    # The maximiser satisfies MacKay's fixed-point equations alpha = gamma / |m|^2, beta = (N - gamma) / |y - Fm|^2,
    # but iterating them can take thousands of steps (random features: t = alpha / beta drifts off to infinity), so
    # the 1-d evidence profile in log t is maximised directly: a grid of factor-e steps across 1e-20..1e20 of the
    # largest eigenvalue (scale-equivariant), then golden-section search around the best grid point.
    centre = np.log(lam.max())
    grid = centre + np.arange(-46.0, 46.5, 1.0)
    vals = profile(np.broadcast_to(grid[:, None], (len(grid), c)))
    best = vals.argmax(axis=0)
    lo, hi = grid[np.maximum(best - 1, 0)], grid[np.minimum(best + 1, len(grid) - 1)]
    g = (np.sqrt(5.0) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = profile(a[None])[0], profile(b[None])[0]
    for _ in range(int(max_iter)):
        if np.max(hi - lo) <= tol:
            break
        left = fa >= fb  # the maximum lies in [lo, b]
        hi, lo = np.where(left, b, hi), np.where(left, lo, a)
        a_new, b_new = hi - g * (hi - lo), lo + g * (hi - lo)
        fa, fb = np.where(left, profile(a_new[None])[0], fb), np.where(left, fa, profile(b_new[None])[0])
        a, b = a_new, b_new
    ev = np.maximum(profile(((lo + hi) / 2)[None])[0], vals.max(axis=0))
    return float(np.mean(ev))


# -- LEEP and NCE --------------------------------------------------------------------------------------------------
def leep(source_probs: Any, labels: Any) -> float:
    """LEEP: log expected empirical prediction of the source classifier re-used through ``P(y | z)``.

    With ``theta_i`` the source model's probabilities over its ``Z`` classes for sample ``i``, the empirical joint
    ``P(y, z) = 1/N sum_{i: y_i = y} theta_i(z)`` gives ``P(y | z) = P(y, z) / P(z)``, and
    ``LEEP = 1/N sum_i log sum_z P(y_i | z) theta_i(z)``. It is at most 0 and at least ``-H(Y)`` (up to sampling),
    higher is better; invariant to relabelling the target classes.

    Args:
        source_probs: the source model's softmax outputs over its own classes (e.g. 1000 ImageNet classes).
        labels: target class labels.

    Returns:
        The LEEP score (``<= 0``).

    Raises:
        ScoreError: ``source_probs`` missing (backbone without a source classifier), not probabilities, wrong
            shapes, a single class, or no more samples than classes.

    Shape:
        source_probs ``(N, Z)``, labels ``(N,)`` -> scalar.

    References:
        Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
        Representations", ICML 2020.
    """
    n = None if source_probs is None or np.ndim(source_probs) != 2 else np.shape(source_probs)[0]
    if source_probs is None:
        as_probs(None, 0, "leep")
    y, classes = as_labels(labels, n, "leep", "source probabilities")
    P = as_probs(source_probs, len(y), "leep")
    return _leep(P, y, len(classes))


def _leep(P: np.ndarray, y: np.ndarray, c: int) -> float:
    joint = _one_hot(y, c).T @ P / len(y)  # (C, Z)
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z); unused z get 0
    eep = np.einsum("nz,nz->n", P, cond[y])  # sum_z theta_i(z) P(y_i | z)
    return float(np.mean(np.log(np.maximum(eep, _TINY))))


def nce(source_labels: Any, labels: Any) -> float:
    """NCE: negative conditional entropy ``-H(Y | Z)`` of target labels given the source model's hard predictions.

    ``-H(Y | Z) = sum_{y, z} P(y, z) log P(y | z)`` with empirical frequencies over the ``N`` samples. It is at
    most 0 (``Z`` determines ``Y``) and at least ``-H(Y)`` (``Z`` says nothing); higher is better; invariant to
    relabelling either the target or the source classes.

    Args:
        source_labels: the source model's predicted class per sample; an ``(N, Z)`` probability array is also
            accepted and its row-wise argmax used.
        labels: target class labels.

    Returns:
        The NCE score (``<= 0``).

    Raises:
        ScoreError: missing source predictions, wrong shapes, a single class, or no more samples than classes.

    Shape:
        source_labels ``(N,)`` or ``(N, Z)``, labels ``(N,)`` -> scalar.

    References:
        Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
    """
    if source_labels is None:
        raise ScoreError("nce needs the source model's predicted classes (or its class probabilities), and none "
                         f"were given. {SOURCE_PROBS_HINT}")
    z = np.asarray(source_labels)
    if z.ndim == 2:
        z = as_probs(z, z.shape[0], "nce").argmax(axis=1)
    if z.ndim != 1:
        raise ScoreError(f"nce: source predictions must be 1-d (one source class per sample); got shape {z.shape}")
    y, classes = as_labels(labels, len(z), "nce", "source predictions")
    _, zc = np.unique(z, return_inverse=True)
    return _nce(zc.reshape(-1), y)


def _nce(z: np.ndarray, y: np.ndarray) -> float:
    n = len(y)
    pairs, counts = np.unique(np.stack([y, z]), axis=1, return_counts=True)
    nz = np.bincount(z)
    return float(np.sum(counts * np.log(counts / nz[pairs[1]])) / n)


# -- H-score -------------------------------------------------------------------------------------------------------
def h_score(features: Any, labels: Any, shrinkage: bool = False) -> float:
    """H-score: ``tr(cov(f)^-1 cov(E[f | y]))``, how much of the feature variance the class means explain.

    Features are centred; both covariances use the ``1/N`` normalisation. Without shrinkage the inverse is a
    pseudo-inverse dropping eigenvalues below ``max(N, D) * eps`` of the largest (constant or duplicated columns
    are harmless); the score then lies in ``[0, C - 1]`` and is invariant to any invertible linear map of the
    features (in particular to scaling single features). It is unstable when ``N`` is not much larger than ``D``,
    and with ``N <= D`` it saturates at ``C - 1`` whatever the features (the class means always fit);
    ``shrinkage=True`` gives the regularised H-score, ``tr(cov_a(f)^-1 (1 - a) cov(E[f | y]))`` with ``cov_a`` the
    Ledoit-Wolf shrunk covariance and ``a`` its shrinkage, which is invariant to a common scaling of the features
    only. Higher is better; invariant to relabelling the classes.

    Args:
        features: target-data features.
        labels: target class labels.
        shrinkage: use the Ledoit-Wolf regularised version.

    Returns:
        The H-score.

    Raises:
        ScoreError: wrong shapes, NaN/inf features, a single class, or no more samples than classes.

    Shape:
        features ``(N, D)``, labels ``(N,)`` -> scalar.

    References:
        Bao, Li, Huang, Zheng, Wang, Tao & Zamir, "An Information-theoretic Approach to Transferability in Task
        Transfer Learning", ICIP 2019; with ``shrinkage=True``: Ibrahim, Ponomareva & Mazumder, "Newer is not always
        better: Rethinking transferability metrics, their peculiarities, stability and performance", ECML-PKDD 2022.
    """
    X, y, c = _task(features, labels, "h_score")
    return _h_score(X, y, c, shrinkage=shrinkage)


def _h_score(X: np.ndarray, y: np.ndarray, c: int, *, shrinkage: bool = False) -> float:
    n, d = X.shape
    Xc = X - X.mean(axis=0)
    counts = np.bincount(y, minlength=c).astype(np.float64)
    A = _one_hot(y, c) * (np.sqrt(counts / n) / counts)  # (N, C): M = A^T Xc, cov(E[f | y]) = M^T M
    # Eigenpairs (w_i, v_i) of cov(f) = Xc^T Xc / N and p_i = |M v_i|^2, from whichever Gram matrix is smaller;
    # M lies in the row span of Xc, so directions outside it (w_i = 0) add nothing, shrunk or not.
    if n > d:
        w, V = np.linalg.eigh(Xc.T @ Xc / n)
        p = ((A.T @ Xc) @ V) ** 2
    else:  # v_i = Xc^T u_i / sqrt(lam_i), M v_i = sqrt(lam_i) A^T u_i
        lam, U = np.linalg.eigh(Xc @ Xc.T)
        w = lam / n
        p = np.maximum(lam, 0.0)[None, :] * (A.T @ U) ** 2
    p = p.sum(axis=0)
    if w.max() <= 0:  # all features constant
        return 0.0
    keep = w > w.max() * max(n, d) * _EPS
    w, p = w[keep], p[keep]
    if shrinkage:  # the shrunk covariance (1 - a) cov + a mu I has the same eigenvectors
        a, mu = _ledoit_wolf_shrinkage(Xc, w, d)
        return float(np.sum((1.0 - a) * p / ((1.0 - a) * w + a * mu)))
    return float(np.sum(p / w))


def _ledoit_wolf_shrinkage(Xc: np.ndarray, w: np.ndarray, d: int) -> tuple[float, float]:
    """Ledoit-Wolf shrinkage ``a`` towards ``mu I`` (``mu`` the mean variance) of centred data, as scikit-learn's
    ``ledoit_wolf`` computes it, but from the nonzero covariance eigenvalues ``w`` in ``O(N D)`` (scikit-learn's
    blocked version costs two more ``D x D`` products).

    References:
        Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", J. Multivariate
        Analysis 2004.
    """
    n = Xc.shape[0]
    trace = float(np.sum(w))
    mu = trace / d
    if d == 1:
        return 0.0, mu
    frob2 = float(np.sum(w * w))  # ||cov||_F^2
    row2 = np.einsum("ij,ij->i", Xc, Xc)  # squared norm of each sample
    beta = (float(np.sum(row2 ** 2)) / n - frob2) / (d * n)  # estimated squared error of cov
    delta = (frob2 - 2.0 * mu * trace + d * mu ** 2) / d  # squared distance of cov from mu I
    beta = min(beta, delta)
    a = 0.0 if beta <= 0 else beta / delta
    return float(min(max(a, 0.0), 1.0)), mu


# -- empirical references -----------------------------------------------------------------------------------------
def knn_accuracy(features: Any, labels: Any, k: int = 5, metric: str = "cosine") -> float:
    """Leave-one-out k-nearest-neighbour accuracy of the features: the simplest empirical check.

    Each sample is classified by a majority vote of its ``k`` nearest other samples (ties go to the class whose
    voters are nearest). With ``metric="cosine"`` rows are L2-normalised first (invariant to scaling single
    samples and all features together); ``"euclidean"`` uses the raw features.

    Args:
        features: target-data features.
        labels: target class labels.
        k: neighbours per vote (capped at ``N - 1``).
        metric: ``"cosine"`` or ``"euclidean"``.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ScoreError: bad inputs, or an unknown metric.

    Shape:
        features ``(N, D)``, labels ``(N,)`` -> scalar.

    References:
        Cover & Hart, "Nearest neighbor pattern classification", IEEE Trans. Information Theory 1967; kNN accuracy
        as a transferability reference: Kornblith, Shlens & Le, "Do Better ImageNet Models Transfer Better?",
        CVPR 2019.
    """
    X, y, c = _task(features, labels, "knn_accuracy")
    return knn_checked(X, y, c, k=k, metric=metric)


def knn_checked(X: np.ndarray, y: np.ndarray, c: int, *, k: int = 5, metric: str = "cosine") -> float:
    """:func:`knn_accuracy` on arrays already checked by :func:`as_features` / :func:`as_labels`."""
    from sklearn.neighbors import NearestNeighbors

    if metric not in ("cosine", "euclidean"):
        raise ScoreError(f"knn_accuracy: metric must be 'cosine' or 'euclidean'; got {metric!r}")
    if int(k) < 1:
        raise ScoreError(f"knn_accuracy: k must be at least 1; got {k}")
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)
    k = min(int(k), len(X) - 1)
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X)
    idx = nn.kneighbors(return_distance=False)  # X=None: each sample's neighbours exclude itself
    votes = np.zeros((len(X), c))
    weight = 1.0 + 1e-6 * (k - np.arange(k)) / k  # one vote each; nearer voters break ties
    np.add.at(votes, (np.repeat(np.arange(len(X)), k), y[idx].reshape(-1)), np.tile(weight, len(X)))
    return float(np.mean(votes.argmax(axis=1) == y))


def probe_accuracy(features: Any, labels: Any, folds: int = 5, C: float = 1.0, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic-regression probe on standardised features: the empirical reference.

    Stratified ``folds``-fold cross-validation (fewer folds when the smallest class is smaller); the accuracy is
    over the pooled out-of-fold predictions. Invariant to scaling single features (they are standardised).

    Args:
        features: target-data features.
        labels: target class labels.
        folds: number of cross-validation folds (at least 2).
        C: inverse L2 regularisation strength of the logistic regression.
        seed: shuffling seed of the folds.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ScoreError: bad inputs, or a class with a single sample (nothing to cross-validate on).

    Shape:
        features ``(N, D)``, labels ``(N,)`` -> scalar.

    References:
        Kornblith, Shlens & Le, "Do Better ImageNet Models Transfer Better?", CVPR 2019 (linear probes).
    """
    X, y, c = _task(features, labels, "probe_accuracy")
    return probe_checked(X, y, c, folds=folds, C=C, seed=seed)


def probe_checked(X: np.ndarray, y: np.ndarray, c: int, *, folds: int = 5, C: float = 1.0, seed: int = 0) -> float:
    """:func:`probe_accuracy` on arrays already checked by :func:`as_features` / :func:`as_labels`."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y, minlength=c)
    if int(folds) < 2:
        raise ScoreError(f"probe_accuracy: folds must be at least 2; got {folds}")
    if counts.min() < 2:
        raise ScoreError(f"probe_accuracy: class number {int(counts.argmin())} has a single sample; cross-validation "
                         "needs at least 2 samples in every class")
    cv = StratifiedKFold(n_splits=int(min(folds, counts.min())), shuffle=True, random_state=int(seed))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe that has not fully converged still ranks
        pred = cross_val_predict(model, X, y, cv=cv)
    return float(np.mean(pred == y))


# -- registry and the all-at-once entry point ----------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreInfo:
    """What a score is.

    Attributes:
        name: key in :data:`SCORES` and in result rows.
        label: column title.
        needs_source_probs: needs the backbone's source-classifier probabilities (LEEP, NCE).
        higher_is_better: always True here; kept so callers need not assume it.
        kind: ``"score"`` (no training) or ``"empirical"`` (trains something small: the references).
        description: one line.
        reference: the paper.
    """

    name: str
    label: str
    needs_source_probs: bool
    higher_is_better: bool
    kind: str
    description: str
    reference: str


SCORES: dict[str, ScoreInfo] = {s.name: s for s in [
    ScoreInfo("logme", "LogME", False, True, "score", "log marginal evidence of a Bayesian linear model per sample",
              "You et al., ICML 2021"),
    ScoreInfo("h_score", "H-score", False, True, "score", "tr(cov(f)^-1 cov(E[f|y]))", "Bao et al., ICIP 2019"),
    ScoreInfo("h_score_shrinkage", "H-score (LW)", False, True, "score",
              "H-score with a Ledoit-Wolf shrunk feature covariance", "Ibrahim et al., ECML-PKDD 2022"),
    ScoreInfo("leep", "LEEP", True, True, "score", "log expected empirical prediction of the source classifier",
              "Nguyen et al., ICML 2020"),
    ScoreInfo("nce", "NCE", True, True, "score", "-H(Y|Z), Z the source classifier's prediction",
              "Tran et al., ICCV 2019"),
    ScoreInfo("knn", "kNN acc", False, True, "empirical", "leave-one-out 5-NN accuracy (cosine)",
              "Cover & Hart 1967"),
    ScoreInfo("probe", "probe acc", False, True, "empirical",
              "5-fold cross-validated logistic-regression accuracy on standardised features",
              "Kornblith et al., CVPR 2019"),
]}


class Scores(dict):
    """Score name -> value, as returned by :func:`compute_scores`.

    Attributes:
        seconds: score name -> seconds it took.
        skipped: score name -> why it was not computed (only when the names were chosen automatically).
    """

    def __init__(self, values: dict[str, float], seconds: dict[str, float], skipped: dict[str, str]):
        super().__init__(values)
        self.seconds = seconds
        self.skipped = skipped

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={v:.4g} ({self.seconds[k]:.2f}s)" for k, v in self.items())
        skip = f"; skipped: {', '.join(self.skipped)}" if self.skipped else ""
        return f"Scores({vals}{skip})"


def compute_scores(features: Any, labels: Any, source_probs: Any = None, names: Sequence[str] | None = None, *,
                   seed: int = 0) -> Scores:
    """Several scores at once, each timed; inputs are checked once.

    Args:
        features: target-data features (may be None when only LEEP / NCE are asked for).
        labels: target class labels.
        source_probs: the backbone's source-classifier probabilities, or None when it has none.
        names: which scores (keys of :data:`SCORES`). None: every score that applies, i.e. LEEP and NCE only when
            ``source_probs`` is given, and a score that cannot use these data (e.g. the probe when a class has one
            sample) is left out and listed in ``Scores.skipped`` instead of raising.
        seed: seed of the probe's folds.

    Returns:
        A :class:`Scores` dict, name -> value, with ``.seconds`` and ``.skipped``.

    Raises:
        UnknownNameError: a name not in :data:`SCORES`.
        ScoreError: bad inputs, or LEEP / NCE asked for without ``source_probs``.

    Shape:
        features ``(N, D)``, labels ``(N,)``, source_probs ``(N, Z)``.
    """
    auto = names is None
    if auto:
        names = [n for n, s in SCORES.items() if source_probs is not None or not s.needs_source_probs]
    else:
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in SCORES]
        if unknown:
            raise UnknownNameError(f"unknown score(s) {', '.join(map(repr, unknown))}; choose from "
                                   f"{', '.join(SCORES)}")
        need = [n for n in names if SCORES[n].needs_source_probs]
        if need and source_probs is None:
            raise ScoreError(f"{' and '.join(s.upper() for s in need)} need(s) the source model's class "
                             f"probabilities, and none were given. {SOURCE_PROBS_HINT}")
    y0 = np.asarray(labels) if labels is not None else None
    feature_based = [n for n in names if not SCORES[n].needs_source_probs]
    X = None
    if feature_based:
        X = as_features(features, "compute_scores", None)
        y, classes = as_labels(y0, X.shape[0], "compute_scores")
    else:
        n = np.shape(source_probs)[0] if np.ndim(source_probs) == 2 else None
        y, classes = as_labels(y0, n, "compute_scores", "source probabilities")
    c = len(classes)
    P = as_probs(source_probs, len(y), "compute_scores") if any(SCORES[n].needs_source_probs for n in names) else None
    if X is not None and P is not None and len(P) != len(X):
        raise ScoreError(f"compute_scores: {len(X)} rows of features but {len(P)} rows of source probabilities")
    impl = {
        "logme": lambda: logme_checked(X, y, c),
        "h_score": lambda: _h_score(X, y, c),
        "h_score_shrinkage": lambda: _h_score(X, y, c, shrinkage=True),
        "leep": lambda: _leep(P, y, c),
        "nce": lambda: _nce(P.argmax(axis=1), y),
        "knn": lambda: knn_checked(X, y, c),
        "probe": lambda: probe_checked(X, y, c, seed=seed),
    }
    values: dict[str, float] = {}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    size = len(y) * (X.shape[1] if X is not None else P.shape[1])
    with few_threads(size):
        for name in names:
            t = time.perf_counter()
            try:
                values[name] = impl[name]()
            except ScoreError as e:
                if not auto:
                    raise
                skipped[name] = str(e)
                continue
            seconds[name] = time.perf_counter() - t
    return Scores(values, seconds, skipped)


@contextlib.contextmanager
def few_threads(size: int, limit: int = 4_000_000):
    """One BLAS / OpenMP thread for small problems: threads do not help there, and on a busy machine they thrash
    (a 49 x 1280 probe took 0.8 s with one thread and 7 s with two while other jobs ran)."""
    if size >= limit:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
