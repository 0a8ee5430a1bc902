"""Closed-form ("shallow") domain adaptation in feature space: CORAL, Subspace Alignment, TCA.

Each class takes labelled source features ``(Xs, ys)`` and unlabelled target features ``Xt``, maps the two
domains so that they look alike, and fits a classifier on the mapped source. ``predict`` / ``predict_proba``
then take **target-domain** inputs and map them the target's way before classifying::

    from transferkit.adapt.feature_space import CORAL
    clf = CORAL().fit(Xs, ys, Xt)
    clf.predict(Xt_new)          # Xt_new comes from the target domain

Target labels are never used: ``fit`` accepts ``yt`` only so that the call reads like the other adapters in
this package, and ignores it. Nothing here learns by gradient descent; every method is a few matrix
decompositions, so it runs in seconds on backbone features.

The algorithms follow the papers cited in each class:

- CORAL: Sun, Feng & Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI 2016.
- Subspace Alignment: Fernando, Habrard, Sebban & Tuytelaars, "Unsupervised Visual Domain Adaptation Using
  Subspace Alignment", ICCV 2013.
- TCA: Pan, Tsang, Kwok & Yang, "Domain Adaptation via Transfer Component Analysis", IEEE Transactions on
  Neural Networks 22(2), 2011.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg

from ..errors import DataError, NotFittedError
from .methods import METHODS

__all__ = ["NoAdaptation", "CORAL", "SubspaceAlignment", "TCA"]

_DOMAINS = ("source", "target")


# --------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------

def _features(X: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """``X`` as a finite 2-d float64 array, or a DataError naming ``name``."""
    if X is None:
        raise DataError(f"{name} is missing (got None); pass a 2-d (samples, features) array")
    try:
        A = np.asarray(X)
    except Exception as e:  # ragged lists and the like
        raise DataError(f"{name} could not be read as an array ({e}); pass a 2-d (samples, features) array") from None
    if A.ndim != 2 or A.dtype.kind not in "biuf":
        raise DataError(f"{name} must be a 2-d numeric (samples, features) array; got shape {A.shape}, dtype "
                        f"{A.dtype}. Reshape it (one row per sample) or convert it to numbers")
    if A.shape[0] < min_rows:
        raise DataError(f"{name} has {A.shape[0]} samples (shape {A.shape}); at least {min_rows} are needed. "
                        f"Pass more {name} rows")
    if A.shape[1] == 0:
        raise DataError(f"{name} has 0 features (shape {A.shape}); pass at least one feature column")
    A = np.asarray(A, dtype=np.float64)
    finite = np.isfinite(A)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        raise DataError(f"{name} holds NaN or inf in {len(bad)} of {A.shape[0]} rows (rows "
                        f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); drop or impute those "
                        "rows first")
    return A


def _labels(y: Any, n_rows: int) -> np.ndarray:
    if y is None:
        raise DataError("ys is missing (got None); pass one class label per row of Xs")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"ys must be 1-d (one label per row of Xs); got shape {y.shape}. Flatten it, or pass "
                        "class indices instead of one-hot rows")
    if len(y) != n_rows:
        raise DataError(f"Xs has {n_rows} rows but ys has {len(y)} labels; they must have the same length (one "
                        "label per source sample)")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"ys holds {int((~np.isfinite(y)).sum())} NaN/inf labels; drop those source rows first")
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"ys holds {len(classes)} class{'es' if len(classes) != 1 else ''} "
                        f"({', '.join(map(repr, classes.tolist()))}); at least 2 are needed to train a classifier. "
                        "Pass labelled source samples of at least two classes")
    return y


def _check_same_width(Xs: np.ndarray, Xt: np.ndarray) -> None:
    if Xs.shape[1] != Xt.shape[1]:
        raise DataError(f"Xs has {Xs.shape[1]} features but Xt has {Xt.shape[1]}; source and target must be "
                        "described by the same features (same backbone, same layer)")


def _positive(value: Any, name: str, *, allow_zero: bool = False, integer: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        ok = np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        what = "integer" if integer else "number"
        bound = ">= 0" if allow_zero else "> 0"
        raise DataError(f"{name} must be a finite {what} {bound}; got {value!r}")
    return int(value) if integer else float(value)


def standardize_stats(X: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (constant features get scale 1, so they stay 0)."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0, ddof=ddof) if len(X) > ddof else np.zeros(X.shape[1])
    scale = np.where(scale > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), scale, 1.0)
    return mean, scale


def _sym_power(C: np.ndarray, power: float) -> np.ndarray:
    """``C ** power`` for a symmetric positive definite ``C`` through its eigendecomposition."""
    vals, vecs = linalg.eigh(C)
    vals = np.maximum(vals, np.finfo(np.float64).tiny)
    return (vecs * vals ** power) @ vecs.T


def _default_estimator() -> Any:
    """``LogisticRegression(max_iter=2000)``; with the default the mapped features are standardised with the
    statistics of mapped source and mapped target *pooled* (``output_mean_``, ``output_scale_``). A scaler fitted on
    the mapped source alone would re-scale the target by source statistics and undo part of the alignment."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000)


class _FeatureSpaceAdapter:
    """Shared plumbing: validation, the classifier on the mapped source, predict on target inputs."""

    _fitted_attr = "estimator_"

    def fit(self, Xs: Any, ys: Any, Xt: Any, yt: Any = None) -> "_FeatureSpaceAdapter":
        """Learn the mapping from ``Xs`` and ``Xt`` and fit the classifier on the mapped source.

        Args:
            Xs: source features, ``(n_s, D)``.
            ys: source labels, ``(n_s,)``; at least two classes.
            Xt: unlabelled target features, ``(n_t, D)``.
            yt: ignored (target labels are never used; the argument exists for a uniform call signature).

        Returns:
            ``self``.
        """
        del yt  # never used: the adaptation is unsupervised on the target side
        self._validate_params()
        Xs = _features(Xs, "Xs", min_rows=2)
        y = _labels(ys, len(Xs))
        Xt = _features(Xt, "Xt", min_rows=2)
        _check_same_width(Xs, Xt)
        self.n_features_in_ = Xs.shape[1]
        self._fit_mapping(Xs, Xt)
        from sklearn.base import clone

        Ms = self._map(Xs, "source")
        if self.estimator is None:
            est = _default_estimator()
            self.output_mean_, self.output_scale_ = standardize_stats(np.vstack([Ms, self._map(Xt, "target")]),
                                                                       ddof=0)
        else:
            est = clone(self.estimator)
            self.output_mean_ = self.output_scale_ = None
        est.fit(self._classifier_input(Ms), y)
        self.estimator_ = est
        self.classes_ = np.asarray(getattr(est, "classes_", np.unique(y)))
        return self

    # -- subclasses fill these in --
    def _validate_params(self) -> None:  # pragma: no cover - overridden
        pass

    def _fit_mapping(self, Xs: np.ndarray, Xt: np.ndarray) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- shared API --
    def _classifier_input(self, M: np.ndarray) -> np.ndarray:
        """Mapped features as the classifier sees them (pooled standardisation with the default estimator)."""
        return M if self.output_mean_ is None else (M - self.output_mean_) / self.output_scale_

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, self._fitted_attr):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(Xs, ys, Xt) before "
                                 f"{what}")

    def _input(self, X: Any, name: str = "X") -> np.ndarray:
        X = _features(X, name)
        if X.shape[1] != self.n_features_in_:
            raise DataError(f"{name} has {X.shape[1]} features but {type(self).__name__} was fitted on "
                            f"{self.n_features_in_}; pass features from the same backbone and layer")
        return X

    def transform(self, X: Any, domain: str = "target") -> np.ndarray:
        """Map ``X`` into the adapted space, the way the given domain's samples are mapped.

        Args:
            X: features, ``(n, D)``.
            domain: ``"target"`` (default) or ``"source"``.

        Returns:
            The mapped features, ``(n, D')``.
        """
        self._check_fitted("transform")
        if domain not in _DOMAINS:
            raise DataError(f"domain must be 'source' or 'target'; got {domain!r}")
        return self._map(self._input(X), domain)

    def predict(self, X: Any) -> np.ndarray:
        """Classes of target-domain inputs ``X`` (mapped as target), ``(n,)``."""
        self._check_fitted("predict")
        return self.estimator_.predict(self._classifier_input(self._map(self._input(X), "target")))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of target-domain inputs ``X``, ``(n, n_classes)`` in the order of ``classes_``."""
        self._check_fitted("predict_proba")
        if not hasattr(self.estimator_, "predict_proba"):
            raise AttributeError(f"the estimator {type(self.estimator_).__name__} has no predict_proba; pass one "
                                 "that has (e.g. LogisticRegression)")
        return self.estimator_.predict_proba(self._classifier_input(self._map(self._input(X), "target")))

    def score(self, X: Any, y: Any) -> float:
        """Accuracy on target-domain inputs ``X`` with labels ``y`` (for evaluation only)."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def _params(self) -> dict[str, Any]:  # pragma: no cover - overridden
        return {}

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """The constructor arguments (sklearn convention)."""
        return self._params()

    def set_params(self, **params: Any) -> "_FeatureSpaceAdapter":
        """Set constructor arguments (sklearn convention)."""
        valid = self._params()
        for k, v in params.items():
            if k not in valid:
                raise DataError(f"{type(self).__name__} has no parameter {k!r}; valid ones are {sorted(valid)}")
            setattr(self, k, v)
        return self


# --------------------------------------------------------------------------------------------------------------
# CORAL
# --------------------------------------------------------------------------------------------------------------

@METHODS.register("source-only-linear", family="baseline", level="shallow", needs_target_labels=False,
                  task="classification", baseline="source-only-linear",
                  paper="no adaptation: the shallow methods' classifier on the source features")
class NoAdaptation(_FeatureSpaceAdapter):
    """The baseline of the shallow methods: no mapping, the same classifier on the source features.

    With the default estimator the features are standardised with source and target pooled and a
    ``LogisticRegression(max_iter=2000)`` is fitted on the source, exactly the classifier that :class:`CORAL`,
    :class:`SubspaceAlignment`, :class:`TCA` and the instance-based methods fit after their mapping or weighting;
    so the difference between any of them and this one is what the adaptation did.
    """

    def __init__(self, estimator: Any = None):
        self.estimator = estimator

    def _params(self) -> dict[str, Any]:
        return {"estimator": self.estimator}

    def _fit_mapping(self, Xs: np.ndarray, Xt: np.ndarray) -> None:
        pass

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        return X


@METHODS.register("coral-closed", family="feature space", level="shallow", needs_target_labels=False,
                  task="classification", baseline="source-only-linear",
                  paper="Sun, Feng & Saenko, AAAI 2016 (CORAL)")
class CORAL(_FeatureSpaceAdapter):
    """CORrelation ALignment: recolour the source so its feature covariance matches the target's.

    Closed-form CORAL of Sun, Feng & Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI 2016
    (Algorithm 1). What is done here:

    1. each domain is standardised with its **own** per-feature mean and standard deviation (ddof=1), as the
       paper assumes zero-mean, normalised features in both domains; this removes mean and scale shifts;
    2. ``Cs = cov(Zs) + reg * I`` and ``Ct = cov(Zt) + reg * I`` (ddof=1; the paper's "+ eye", i.e. reg=1);
    3. the standardised source is whitened and re-coloured, ``Zs @ Cs^(-1/2) @ Ct^(1/2)``, so that
       ``A.T @ (cov(Zs) + reg*I) @ A == cov(Zt) + reg*I`` for ``A = Cs^(-1/2) Ct^(1/2)``;
    4. ``estimator`` is fitted on the re-coloured source. Target inputs are only standardised with the target
       statistics (no further transform).

    Args:
        estimator: sklearn-style classifier, cloned before fitting. Default: ``LogisticRegression(max_iter=2000)``
            on the mapped features standardised with pooled (mapped source + mapped target) statistics.
        reg: the ridge added to both covariances (> 0). 1.0 as in the paper, which suits standardised features.

    Fitted attributes:
        source_mean_, source_scale_, target_mean_, target_scale_: the per-domain standardisation, ``(D,)``.
        source_cov_, target_cov_: covariances of the standardised domains (without ``reg``), ``(D, D)``.
        coral_matrix_: ``A = (Cs + reg I)^(-1/2) (Ct + reg I)^(1/2)``, ``(D, D)``; source rows map as ``Zs @ A``.
        estimator_: the fitted classifier. classes_: its classes. n_features_in_: ``D``. output_mean_, output_scale_:
            the pooled standardisation of the mapped features (None with a user estimator).
    """

    def __init__(self, estimator: Any = None, reg: float = 1.0):
        self.estimator = estimator
        self.reg = reg

    def _params(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "reg": self.reg}

    def _validate_params(self) -> None:
        _positive(self.reg, "reg")

    def _fit_mapping(self, Xs: np.ndarray, Xt: np.ndarray) -> None:
        reg = float(self.reg)
        self.source_mean_, self.source_scale_ = standardize_stats(Xs)
        self.target_mean_, self.target_scale_ = standardize_stats(Xt)
        Zs = (Xs - self.source_mean_) / self.source_scale_
        Zt = (Xt - self.target_mean_) / self.target_scale_
        eye = np.eye(Xs.shape[1])
        self.source_cov_ = np.atleast_2d(np.cov(Zs, rowvar=False))
        self.target_cov_ = np.atleast_2d(np.cov(Zt, rowvar=False))
        whiten = _sym_power(self.source_cov_ + reg * eye, -0.5)
        recolour = _sym_power(self.target_cov_ + reg * eye, 0.5)
        self.coral_matrix_ = whiten @ recolour

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        if domain == "source":
            return ((X - self.source_mean_) / self.source_scale_) @ self.coral_matrix_
        return (X - self.target_mean_) / self.target_scale_


# --------------------------------------------------------------------------------------------------------------
# Subspace Alignment
# --------------------------------------------------------------------------------------------------------------

def _pca_basis(Z: np.ndarray, d: int) -> np.ndarray:
    """The ``d`` leading principal directions of the (already centred) rows of ``Z`` as columns, ``(D, d)``.

    Signs are fixed (largest-magnitude entry of each direction positive) so that results are reproducible.
    """
    _, _, vt = linalg.svd(Z, full_matrices=False)
    P = vt[:d].T
    idx = np.argmax(np.abs(P), axis=0)
    signs = np.sign(P[idx, np.arange(P.shape[1])])
    signs[signs == 0] = 1.0
    return P * signs


@METHODS.register("sa", family="feature space", level="shallow", needs_target_labels=False,
                  task="classification", baseline="source-only-linear",
                  paper="Fernando et al., ICCV 2013 (subspace alignment)")
class SubspaceAlignment(_FeatureSpaceAdapter):
    """Subspace Alignment: align the source PCA basis with the target PCA basis by a linear map.

    Fernando, Habrard, Sebban & Tuytelaars, "Unsupervised Visual Domain Adaptation Using Subspace Alignment",
    ICCV 2013. Each domain is standardised with its own per-feature mean and standard deviation, then its
    ``d`` leading principal directions form ``Ps`` and ``Pt`` (``(D, d)``, orthonormal columns). The alignment
    ``M = Ps.T @ Pt`` minimises ``||Ps M - Pt||_F``; the source is represented as ``Zs @ Ps @ M`` and the target
    as ``Zt @ Pt``, and ``estimator`` is fitted on the aligned source.

    Args:
        estimator: sklearn-style classifier, cloned before fitting. Default: ``LogisticRegression(max_iter=2000)``
            on the mapped features standardised with pooled (mapped source + mapped target) statistics.
        n_components: ``d``. Default ``min(50, D, n_s - 1, n_t - 1)``; at most ``min(D, n_s - 1, n_t - 1)``.

    Fitted attributes:
        source_mean_, source_scale_, target_mean_, target_scale_: the per-domain standardisation, ``(D,)``.
        source_components_, target_components_: ``Ps``, ``Pt``, ``(D, d)``.
        alignment_matrix_: ``M``, ``(d, d)``. n_components_: ``d``.
        estimator_, classes_, n_features_in_, output_mean_, output_scale_ (see CORAL).
    """

    def __init__(self, estimator: Any = None, n_components: int | None = None):
        self.estimator = estimator
        self.n_components = n_components

    def _params(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "n_components": self.n_components}

    def _validate_params(self) -> None:
        if self.n_components is not None:
            _positive(self.n_components, "n_components", integer=True)

    def _fit_mapping(self, Xs: np.ndarray, Xt: np.ndarray) -> None:
        D = Xs.shape[1]
        limit = min(D, len(Xs) - 1, len(Xt) - 1)
        if self.n_components is None:
            d = min(50, limit)
        else:
            d = int(self.n_components)
            if d > limit:
                raise DataError(f"n_components={d} is larger than possible: at most min(n_features={D}, "
                                f"n_source-1={len(Xs) - 1}, n_target-1={len(Xt) - 1}) = {limit} principal "
                                f"directions exist here; pass n_components <= {limit} (or None for "
                                f"{min(50, limit)})")
        self.source_mean_, self.source_scale_ = standardize_stats(Xs)
        self.target_mean_, self.target_scale_ = standardize_stats(Xt)
        Zs = (Xs - self.source_mean_) / self.source_scale_
        Zt = (Xt - self.target_mean_) / self.target_scale_
        self.source_components_ = _pca_basis(Zs, d)
        self.target_components_ = _pca_basis(Zt, d)
        self.alignment_matrix_ = self.source_components_.T @ self.target_components_
        self.n_components_ = d

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        if domain == "source":
            Z = (X - self.source_mean_) / self.source_scale_
            return Z @ (self.source_components_ @ self.alignment_matrix_)
        return ((X - self.target_mean_) / self.target_scale_) @ self.target_components_


# --------------------------------------------------------------------------------------------------------------
# TCA
# --------------------------------------------------------------------------------------------------------------

def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d, 0.0)


@METHODS.register("tca", family="feature space", level="shallow", needs_target_labels=False,
                  task="classification", baseline="source-only-linear",
                  paper="Pan et al., IEEE TNN 2011 (TCA)")
class TCA(_FeatureSpaceAdapter):
    """Transfer Component Analysis: a kernel embedding in which the two domains' means (MMD) nearly coincide.

    Unsupervised TCA of Pan, Tsang, Kwok & Yang, "Domain Adaptation via Transfer Component Analysis", IEEE
    Transactions on Neural Networks 22(2), 2011 (Section IV). On the pooled samples ``X = [Xs; Xt]``
    (``n = n_s + n_t``) with kernel matrix ``K``, MMD matrix ``L`` (``1/n_s^2`` within the source,
    ``1/n_t^2`` within the target, ``-1/(n_s n_t)`` across) and centring matrix ``H = I - 11'/n``, the transfer
    components ``W`` (``(n, m)``) are the ``m`` leading eigenvectors of ``(K L K + mu I)^(-1) K H K``, found
    as the generalized symmetric eigenproblem ``K H K w = lambda (K L K + mu I) w``. A sample ``x`` of either
    domain is embedded as ``k(x, X) @ W`` (the paper's out-of-sample extension), so new target points need no
    refit; ``transform`` maps both domains the same way.

    What is done beyond the paper, for speed and scale:

    - features are standardised with one mean and standard deviation computed on the **pooled** source and
      target (the same map for both, so the domain shift is left for TCA to remove);
    - at most ``max_samples`` samples **per domain** (a random subset, seed 0, so results are reproducible)
      enter ``K``: the eigenproblem costs ``O(n^3)``. The classifier is then fitted on **all** source samples,
      embedded through the out-of-sample extension.

    Args:
        estimator: sklearn-style classifier, cloned before fitting. Default: ``LogisticRegression(max_iter=2000)``
            on the embedding standardised with pooled source + target statistics (its scale is arbitrary).
        n_components: ``m``, at most ``n - 1`` (and at most ``D`` for the linear kernel, whose ``K`` has rank
            ``<= D``); None: ``min(30, that limit)``.
        mu: the trade-off ``mu > 0``: weight of ``tr(W'W)`` against the MMD term ``tr(W'KLKW)``. Larger
            values keep more variance and remove less of the domain gap; RBF kernels (values in [0, 1]) may
            need a smaller ``mu`` than the linear kernel.
        kernel: ``"linear"`` (``x.y``) or ``"rbf"`` (``exp(-gamma ||x - y||^2)``).
        gamma: RBF width; default ``1 / (2 s^2)`` with ``s`` the median distance between the pooled (subsampled,
            standardised) samples. Ignored by the linear kernel.
        max_samples: samples per domain used to build ``K`` (``None``: all).

    Fitted attributes:
        mean_, scale_: the pooled standardisation, ``(D,)``. X_fit_: the standardised samples in ``K``,
        ``(n, D)`` (source rows first); n_source_fit_, n_target_fit_: their counts. components_: ``W``,
        ``(n, m)``. eigenvalues_: ``(m,)``, descending. gamma_: the RBF width used (None for linear).
        n_components_, estimator_, classes_, n_features_in_, output_mean_, output_scale_ (see CORAL).
    """

    def __init__(self, estimator: Any = None, n_components: int | None = None, mu: float = 1.0, kernel: str = "linear",
                 gamma: float | None = None, max_samples: int | None = 1000):
        self.estimator = estimator
        self.n_components = n_components
        self.mu = mu
        self.kernel = kernel
        self.gamma = gamma
        self.max_samples = max_samples

    def _params(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "n_components": self.n_components, "mu": self.mu,
                "kernel": self.kernel, "gamma": self.gamma, "max_samples": self.max_samples}

    def _validate_params(self) -> None:
        if self.kernel not in ("linear", "rbf"):
            raise DataError(f"kernel must be 'linear' or 'rbf'; got {self.kernel!r}")
        if self.n_components is not None:
            _positive(self.n_components, "n_components", integer=True)
        _positive(self.mu, "mu")
        if self.gamma is not None:
            _positive(self.gamma, "gamma")
        if self.max_samples is not None:
            m = _positive(self.max_samples, "max_samples", integer=True)
            if m < 2:
                raise DataError(f"max_samples must be at least 2 (samples per domain in the kernel matrix), or None "
                                f"for all; got {self.max_samples!r}")

    def _kernel(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        if self.kernel == "linear":
            return A @ B.T
        return np.exp(-self.gamma_ * _sq_dists(A, B))

    def _fit_mapping(self, Xs: np.ndarray, Xt: np.ndarray) -> None:
        rng = np.random.default_rng(0)

        def subsample(X: np.ndarray) -> np.ndarray:
            if self.max_samples is None or len(X) <= self.max_samples:
                return X
            return X[np.sort(rng.choice(len(X), int(self.max_samples), replace=False))]

        Ss, St = subsample(Xs), subsample(Xt)
        ns, nt = len(Ss), len(St)
        n = ns + nt
        D = Xs.shape[1]
        limit = n - 1 if self.kernel == "rbf" else min(n - 1, D)
        m = min(30, limit) if self.n_components is None else int(self.n_components)
        if m > limit:
            why = (f"n_source+n_target-1 = {ns}+{nt}-1 = {n - 1} samples in the kernel matrix"
                   if self.kernel == "rbf" or limit == n - 1 else
                   f"n_features={D} (a linear kernel has rank <= n_features)")
            raise DataError(f"n_components={m} is larger than possible: at most {limit} transfer components exist "
                            f"here ({why}); pass n_components <= {limit}"
                            + (" or kernel='rbf'" if self.kernel == "linear" and limit == D < n - 1 else ""))

        self.mean_, self.scale_ = standardize_stats(np.vstack([Xs, Xt]), ddof=0)
        Xfit = (np.vstack([Ss, St]) - self.mean_) / self.scale_
        if self.kernel == "rbf":
            if self.gamma is None:
                iu = np.triu_indices(n, k=1)
                med = float(np.median(np.sqrt(_sq_dists(Xfit, Xfit)[iu])))
                self.gamma_ = 1.0 / (2.0 * med * med) if med > 0 else 1.0
            else:
                self.gamma_ = float(self.gamma)
        else:
            self.gamma_ = None
        K = self._kernel(Xfit, Xfit)
        K = 0.5 * (K + K.T)
        # L = e e' with e = (1/ns, ..., -1/nt, ...), so K L K = (K e)(K e)'
        e = np.concatenate([np.full(ns, 1.0 / ns), np.full(nt, -1.0 / nt)])
        Ke = K @ e
        KH = K - K.mean(axis=1, keepdims=True)  # K H (H is symmetric and idempotent, so K H K = (K H)(H K))
        A = KH @ KH.T
        B = np.outer(Ke, Ke) + float(self.mu) * np.eye(n)
        vals, vecs = linalg.eigh(0.5 * (A + A.T), B, subset_by_index=[n - m, n - 1])
        order = np.argsort(vals)[::-1]
        self.eigenvalues_ = vals[order]
        self.components_ = vecs[:, order]
        self.X_fit_ = Xfit
        self.n_source_fit_, self.n_target_fit_ = ns, nt
        self.n_components_ = m

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        # one embedding for both domains: the kernel against the (pooled) training samples, then W
        Z = (X - self.mean_) / self.scale_
        return self._kernel(Z, self.X_fit_) @ self.components_
