"""Distances between two domains' feature sets: kernel MMD (linear, Gaussian) and the proxy A-distance.

Both say how far the target data lies from the source data in a backbone's feature space: 0 when the two sets
cannot be told apart, growing with the shift. They are computed from features alone (no labels).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import ScoreError

__all__ = ["mmd", "median_bandwidth", "proxy_a_distance", "domain_distances"]


def _pair(source: Any, target: Any, what: str, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, X in (("source", source), ("target", target)):
        if X is None:
            raise ScoreError(f"{what}: {name} features are missing")
        X = np.asarray(X)
        if X.ndim != 2 or X.dtype.kind not in "biuf":
            raise ScoreError(f"{what}: {name} features must be a 2-d numeric (samples, dimensions) array; got shape "
                             f"{X.shape}, dtype {X.dtype}")
        if X.shape[0] < min_rows:
            raise ScoreError(f"{what}: {name} has {X.shape[0]} samples; at least {min_rows} are needed")
        X = np.asarray(X, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        if len(bad):
            raise ScoreError(f"{what}: {name} features hold NaN or inf in {len(bad)} rows (rows "
                             f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); drop them first")
        out.append(X)
    if out[0].shape[1] != out[1].shape[1]:
        raise ScoreError(f"{what}: source features are {out[0].shape[1]}-d but target features {out[1].shape[1]}-d; "
                         "both must come from the same backbone")
    return out[0], out[1]


def _subsample(X: np.ndarray, max_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_samples is None or len(X) <= max_samples:
        return X
    return X[np.sort(rng.choice(len(X), int(max_samples), replace=False))]


def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d, 0.0)


def median_bandwidth(features: Any, *, max_samples: int = 2000, seed: int = 0) -> float:
    """The median heuristic: the median Euclidean distance between distinct samples.

    Args:
        features: the pooled samples (both domains).
        max_samples: a seeded random subset of at most this many samples is used.
        seed: seed of the subset.

    Returns:
        The bandwidth ``sigma`` (1.0 when all samples coincide).

    Shape:
        features ``(N, D)`` -> scalar.

    References:
        Gretton, Borgwardt, Rasch, Schoelkopf & Smola, "A Kernel Two-Sample Test", JMLR 2012 (Section 8).
    """
    X = np.asarray(features, dtype=np.float64)
    X = _subsample(X, max_samples, np.random.default_rng(seed))
    d = _sq_dists(X, X)[np.triu_indices(len(X), k=1)]
    med = float(np.median(np.sqrt(d))) if len(d) else 0.0
    return med if med > 0 else 1.0


def mmd(source: Any, target: Any, *, kernel: str = "gaussian", bandwidth: float | None = None,
        unbiased: bool = False, max_samples: int | None = 2000, seed: int = 0) -> float:
    """Squared maximum mean discrepancy between two feature sets.

    ``MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t)``. ``kernel="linear"`` (``k = <x, y>``) gives the squared
    distance between the domain means, computed exactly in ``O(N D)`` whatever ``max_samples``;
    ``kernel="gaussian"`` (``k = exp(-|x - y|^2 / (2 sigma^2))``, ``sigma`` from :func:`median_bandwidth` of the
    pooled samples unless given) compares all moments, on seeded subsets of at most ``max_samples`` per domain.
    The default biased (V-statistic) estimate is never negative; ``unbiased=True`` leaves out the ``i = j``
    terms (Gretton et al. eq. 3) and can be slightly negative when the domains match.

    Args:
        source: source-domain features.
        target: target-domain features.
        kernel: ``"gaussian"`` or ``"linear"``.
        bandwidth: Gaussian ``sigma``; None for the median heuristic.
        unbiased: the unbiased U-statistic instead of the biased V-statistic.
        max_samples: Gaussian kernel only: subsample each domain to this many rows (None: all; cost ``O(N^2 D)``).
        seed: seed of the subsets.

    Returns:
        ``MMD^2`` (Gaussian: in ``[0, 2]`` when biased).

    Raises:
        ScoreError: bad shapes, different widths, NaN/inf, fewer than 2 samples in a domain, unknown kernel.

    Shape:
        source ``(Ns, D)``, target ``(Nt, D)`` -> scalar.

    References:
        Gretton, Borgwardt, Rasch, Schoelkopf & Smola, "A Kernel Two-Sample Test", JMLR 13, 2012.
    """
    S, T = _pair(source, target, "mmd")
    if kernel == "linear":
        ss, tt = S.sum(0), T.sum(0)
        m, n = len(S), len(T)
        if not unbiased:
            diff = ss / m - tt / n
            return float(diff @ diff)
        # sum_{i != j} <s_i, s_j> = |sum s|^2 - sum |s_i|^2
        k_ss = (ss @ ss - np.einsum("ij,ij->", S, S)) / (m * (m - 1))
        k_tt = (tt @ tt - np.einsum("ij,ij->", T, T)) / (n * (n - 1))
        return float(k_ss + k_tt - 2.0 * (ss @ tt) / (m * n))
    if kernel != "gaussian":
        raise ScoreError(f"mmd: kernel must be 'gaussian' or 'linear'; got {kernel!r}")
    rng = np.random.default_rng(seed)
    S, T = _subsample(S, max_samples, rng), _subsample(T, max_samples, rng)
    if bandwidth is None:
        bandwidth = median_bandwidth(np.concatenate([S, T]), max_samples=max_samples or len(S) + len(T), seed=seed)
    if not bandwidth > 0:
        raise ScoreError(f"mmd: bandwidth must be positive; got {bandwidth}")
    g = 1.0 / (2.0 * float(bandwidth) ** 2)
    K_ss, K_tt, K_st = (np.exp(-g * _sq_dists(A, B)) for A, B in ((S, S), (T, T), (S, T)))
    m, n = len(S), len(T)
    if unbiased:
        k_ss = (K_ss.sum() - np.trace(K_ss)) / (m * (m - 1))
        k_tt = (K_tt.sum() - np.trace(K_tt)) / (n * (n - 1))
    else:
        k_ss, k_tt = K_ss.mean(), K_tt.mean()
    return float(k_ss + k_tt - 2.0 * K_st.mean())


def proxy_a_distance(source: Any, target: Any, *, folds: int = 5, C: float = 1.0, seed: int = 0,
                     max_samples: int | None = None) -> float:
    """Proxy A-distance ``2 (1 - 2 err)``, ``err`` the cross-validated error of a linear domain classifier.

    A logistic regression on standardised features learns to tell source from target; ``err`` is its
    out-of-fold balanced error (so unequal domain sizes do not matter), capped at 0.5. The result is 0 when the
    domains cannot be told apart and 2 when they are linearly separable.

    Args:
        source: source-domain features.
        target: target-domain features.
        folds: stratified cross-validation folds (fewer when a domain is smaller).
        C: inverse L2 regularisation strength of the domain classifier.
        seed: seed of the folds (and of the subsets).
        max_samples: subsample each domain to at most this many rows (None: all).

    Returns:
        The proxy A-distance in ``[0, 2]``.

    Raises:
        ScoreError: bad shapes, different widths, NaN/inf, fewer than 2 samples in a domain.

    Shape:
        source ``(Ns, D)``, target ``(Nt, D)`` -> scalar.

    References:
        Ben-David, Blitzer, Crammer & Pereira, "Analysis of Representations for Domain Adaptation", NeurIPS 2007;
        Ben-David, Blitzer, Crammer, Kulesza, Pereira & Vaughan, "A theory of learning from different domains",
        Machine Learning 79, 2010.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    S, T = _pair(source, target, "proxy_a_distance")
    if int(folds) < 2:
        raise ScoreError(f"proxy_a_distance: folds must be at least 2; got {folds}")
    rng = np.random.default_rng(seed)
    S, T = _subsample(S, max_samples, rng), _subsample(T, max_samples, rng)
    X = np.concatenate([S, T])
    d = np.concatenate([np.zeros(len(S), np.int64), np.ones(len(T), np.int64)])
    cv = StratifiedKFold(n_splits=int(min(folds, len(S), len(T))), shuffle=True, random_state=int(seed))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pred = cross_val_predict(model, X, d, cv=cv)
    err = min(1.0 - balanced_accuracy_score(d, pred), 0.5)
    return float(2.0 * (1.0 - 2.0 * err))


def domain_distances(source: Any, target: Any, *, seed: int = 0) -> dict[str, float]:
    """All three distances with their defaults: ``mmd_linear``, ``mmd_gaussian`` and ``proxy_a_distance``.

    Shape:
        source ``(Ns, D)``, target ``(Nt, D)`` -> dict of scalars.

    References:
        Gretton et al., JMLR 2012; Ben-David et al., NeurIPS 2007 and Machine Learning 2010.
    """
    S, T = _pair(source, target, "domain_distances")
    return {"mmd_linear": mmd(S, T, kernel="linear"), "mmd_gaussian": mmd(S, T, kernel="gaussian", seed=seed),
            "proxy_a_distance": proxy_a_distance(S, T, seed=seed)}
