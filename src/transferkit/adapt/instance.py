"""Instance-based transfer: re-weight the source samples so that they serve the target domain.

Four estimators on numpy arrays, all with the same interface::

    from transferkit.adapt.instance import ImportanceWeighting, KMM, TrAdaBoost, TrAdaBoostR2

    model = KMM().fit(Xs, ys, Xt)                      # Xt unlabelled (covariate shift)
    model = TrAdaBoost().fit(Xs, ys, Xt_few, yt_few)   # a few labelled target samples
    model.predict(X_target)

``fit(Xs, ys, Xt, yt=None)`` takes the labelled source ``(Xs, ys)`` and the target inputs ``Xt``;

* :class:`ImportanceWeighting` and :class:`KMM` are *unsupervised* domain adaptation for covariate shift
  (``p(y|x)`` shared, ``p(x)`` shifted): ``Xt`` is unlabelled and ``yt`` is ignored. They estimate a weight per
  source sample, ``w(x) ~ p_target(x) / p_source(x)``, and fit an ordinary estimator on the source with
  ``sample_weight=w``. The estimator may be a classifier or a regressor.
* :class:`TrAdaBoost` (classification) and :class:`TrAdaBoostR2` (regression) are *supervised*: ``Xt, yt`` are the
  few labelled target samples, and boosting lowers the weight of source samples that disagree with the target.

After ``fit`` each model has ``weights_`` (the source weights for IW / KMM; the final source and target weights,
source first, for the boosting methods), ``predict``, and for classifiers ``classes_`` and ``predict_proba``.
Every data problem raises :class:`~transferkit.errors.DataError` naming the argument and the fix; a bad setting
raises :class:`~transferkit.errors.TransferkitError`; using a model before ``fit`` raises
:class:`~transferkit.errors.NotFittedError`.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone, is_classifier, is_regressor
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import has_fit_parameter

from ..errors import DataError, NotFittedError, TransferkitError
from .feature_space import standardize_stats
from .methods import METHODS

__all__ = ["ImportanceWeighting", "KMM", "TrAdaBoost", "TrAdaBoostR2"]


# ----------------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------------

def _rows(idx: np.ndarray) -> str:
    return ", ".join(map(str, idx[:5])) + (", ..." if len(idx) > 5 else "")


def _check_X(X: Any, name: str, owner: str) -> np.ndarray:
    """``X`` as a finite 2-d float64 array with at least one row, or a DataError naming ``name``."""
    if X is None:
        raise DataError(f"{owner}: {name} is missing; pass a 2-d numeric array of shape (samples, features)")
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{owner}: {name} must be a 2-d numeric array of shape (samples, features); it could not be "
                        f"converted to numbers ({e})") from None
    if A.ndim == 1:
        raise DataError(f"{owner}: {name} is 1-d (shape {A.shape}); pass a 2-d (samples, features) array, e.g. "
                        f"{name}.reshape(-1, 1) for a single feature")
    if A.ndim != 2:
        raise DataError(f"{owner}: {name} must be a 2-d (samples, features) array; got shape {A.shape}")
    if A.shape[0] == 0:
        raise DataError(f"{owner}: {name} is empty (0 samples); pass at least one row")
    if A.shape[1] == 0:
        raise DataError(f"{owner}: {name} has 0 features (shape {A.shape}); pass at least one column")
    bad = np.flatnonzero(~np.isfinite(A).all(axis=1))
    if len(bad):
        raise DataError(f"{owner}: {name} holds NaN or inf in {len(bad)} of {A.shape[0]} rows (rows {_rows(bad)}); "
                        "drop or impute those rows first")
    return A


def _check_y(y: Any, name: str, n_rows: int, xname: str, owner: str, task: str | None) -> np.ndarray:
    """``y`` as a 1-d array with one value per row of ``xname``; ``task`` is 'classification', 'regression' or None."""
    if y is None:
        raise DataError(f"{owner}: {name} is missing; pass one target value per row of {xname}")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise DataError(f"{owner}: {name} must be 1-d (one value per sample); got shape {y.shape}")
    if len(y) != n_rows:
        raise DataError(f"{owner}: {xname} has {n_rows} samples but {name} has {len(y)} values; pass exactly one "
                        f"value per row of {xname}")
    if y.dtype.kind == "f" or task == "regression":
        if y.dtype.kind not in "iuf":
            if task == "regression":
                example = y[0] if len(y) else None
                raise DataError(f"{owner} is a regression method but {name} holds class labels (dtype {y.dtype}, e.g. "
                                f"{example!r}); pass numeric targets, or use a classifier (TrAdaBoost, or "
                                "ImportanceWeighting / KMM with a classifier) for class labels")
        else:
            bad = np.flatnonzero(~np.isfinite(y.astype(np.float64)))
            if len(bad):
                raise DataError(f"{owner}: {name} holds NaN or inf at {len(bad)} positions (rows {_rows(bad)}); drop "
                                f"those rows of {xname} and {name} first")
    if y.dtype.kind == "O" and any(v is None for v in y):
        bad = np.flatnonzero([v is None for v in y])
        raise DataError(f"{owner}: {name} holds None at {len(bad)} positions (rows {_rows(bad)}); every sample needs a "
                        "label")
    if task == "regression":
        return y.astype(np.float64)
    if task == "classification":
        try:
            kind = type_of_target(y)
        except ValueError as e:
            raise DataError(f"{owner}: {name} is not a valid set of class labels ({e})") from None
        if kind == "continuous":
            vals = ", ".join(f"{v:g}" for v in np.unique(y)[:3])
            raise DataError(f"{owner} is a classification method but {name} is continuous (float values such as "
                            f"{vals}, ...); pass class labels, bin the target into classes, or use a regression "
                            "method (TrAdaBoostR2, or ImportanceWeighting / KMM with a regressor)")
        if kind not in ("binary", "multiclass"):
            raise DataError(f"{owner}: {name} must hold one class label per sample, all of one type (numbers or "
                            f"strings); type_of_target says {kind!r}")
    return y


def _check_same_features(Xs: np.ndarray, Xt: np.ndarray, owner: str) -> None:
    if Xs.shape[1] != Xt.shape[1]:
        raise DataError(f"{owner}: Xs has {Xs.shape[1]} features but Xt has {Xt.shape[1]}; source and target must "
                        "describe the samples with the same features, in the same order")


def _task_of(estimator: Any) -> str | None:
    if is_classifier(estimator):
        return "classification"
    if is_regressor(estimator):
        return "regression"
    return None


def _final_step(estimator: Any) -> Any:
    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


def _require_sample_weight(estimator: Any, owner: str) -> None:
    last = _final_step(estimator)
    if last is None or last == "passthrough" or not has_fit_parameter(last, "sample_weight"):
        raise TransferkitError(f"{owner}: the estimator {type(last).__name__} does not accept sample_weight in fit; "
                               f"{owner} needs one that does (e.g. LogisticRegression, Ridge, DecisionTreeClassifier, "
                               "DecisionTreeRegressor)")


def _fit_weighted(estimator: Any, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> Any:
    """Fit ``estimator`` with ``sample_weight=w``; for a Pipeline the steps are fitted one by one and only the
    last one gets the weights (``step__sample_weight`` routing breaks when another library, e.g. skada, has
    switched on scikit-learn's global metadata routing)."""
    if isinstance(estimator, Pipeline):
        Xt = X
        for _, step in estimator.steps[:-1]:
            if step is not None and step != "passthrough":
                Xt = step.fit_transform(Xt, y)
        estimator.steps[-1][1].fit(Xt, y, sample_weight=w)
        return estimator
    return estimator.fit(X, y, sample_weight=w)


def _offset(random_state: int | None, k: int) -> int | None:
    """Seed number ``k`` derived from ``random_state`` (None stays None: not reproducible, as in scikit-learn)."""
    return None if random_state is None else int(random_state) + k


def _seeded(estimator: Any, seed: int | None) -> Any:
    """A fresh clone of ``estimator``, its ``random_state`` (if any, also inside a Pipeline) set to ``seed``.

    With ``seed=None`` the estimator keeps its own ``random_state``.
    """
    est = clone(estimator)
    if seed is None:
        return est
    params = est.get_params()
    keys = [k for k in params if k == "random_state" or k.endswith("__random_state")]
    if keys:
        est.set_params(**{k: seed for k in keys})
    return est


def _check_positive_int(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TransferkitError(f"{owner}: {name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _default_classifier() -> LogisticRegression:
    """The default final and domain classifier of IW and KMM: logistic regression, no scaler of its own.

    A ``StandardScaler`` inside the estimator would be fitted on the source alone and re-standardise the target with
    source statistics, undoing the pooled standardisation (``standardize=True``) that puts both domains on one scale.
    """
    return LogisticRegression(max_iter=2000)


class _Base(BaseEstimator):
    """Shared predict / checks. Subclasses set ``estimator_`` (IW, KMM) or their ensemble in ``fit``."""

    _fitted_attr = "estimator_"

    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_attr):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(Xs, ys, Xt"
                                 f"{', yt' if isinstance(self, (TrAdaBoost, TrAdaBoostR2)) else ''}) first")

    def _check_predict_X(self, X: Any) -> np.ndarray:
        self._check_fitted()
        owner = f"{type(self).__name__}.predict"
        A = _check_X(X, "X", owner)
        if A.shape[1] != self.n_features_in_:
            raise DataError(f"{owner}: X has {A.shape[1]} features but this {type(self).__name__} was fitted on "
                            f"{self.n_features_in_}; pass data with the same features as Xs and Xt")
        return A


class _WeightedSourceModel(_Base):
    """IW and KMM: compute source weights, then fit ``estimator`` on the weighted source."""

    def _prepare(self, Xs: Any, ys: Any, Xt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """Checked ``Xs, ys, Xt`` (standardised with pooled statistics when ``standardize``) and the estimator."""
        owner = type(self).__name__
        estimator = _default_classifier() if self.estimator is None else clone(self.estimator)
        _require_sample_weight(estimator, owner)
        Xs = _check_X(Xs, "Xs", owner)
        Xt = _check_X(Xt, "Xt", owner)
        _check_same_features(Xs, Xt, owner)
        task = _task_of(estimator)
        ys = _check_y(ys, "ys", len(Xs), "Xs", owner, task)
        if task == "classification" and len(np.unique(ys)) < 2:
            raise DataError(f"{owner}: ys holds a single class ({np.unique(ys)[0]!r}); a classifier needs at least "
                            "two classes in the source")
        if self.standardize:
            self.mean_, self.scale_ = standardize_stats(np.concatenate([Xs, Xt]), ddof=0)  # pooled
            Xs, Xt = (Xs - self.mean_) / self.scale_, (Xt - self.mean_) / self.scale_
        else:
            self.mean_ = self.scale_ = None
        return Xs, ys, Xt, estimator

    def _fit_estimator(self, estimator: Any, Xs: np.ndarray, ys: np.ndarray, w: np.ndarray) -> None:
        self.estimator_ = _fit_weighted(_seeded(estimator, self.random_state), Xs, ys, w)
        self.n_features_in_ = Xs.shape[1]
        if hasattr(self.estimator_, "classes_"):
            self.classes_ = self.estimator_.classes_

    def _scaled(self, X: Any) -> np.ndarray:
        A = self._check_predict_X(X)
        return A if self.mean_ is None else (A - self.mean_) / self.scale_

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the estimator fitted on the weighted source, for the rows of ``X``."""
        A = self._scaled(X)  # checks fitted before estimator_ is touched
        return self.estimator_.predict(A)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``, columns in the order of ``classes_``.

        Only for an estimator with ``predict_proba`` (the default logistic regression has one).
        """
        A = self._scaled(X)
        if not hasattr(self.estimator_, "predict_proba"):
            raise TransferkitError(f"{type(self).__name__}.predict_proba: the estimator "
                                   f"{type(_final_step(self.estimator_)).__name__} has no predict_proba; use predict, "
                                   "or a probabilistic classifier")
        return self.estimator_.predict_proba(A)


# ----------------------------------------------------------------------------------------------------------------
# importance weighting with a domain classifier
# ----------------------------------------------------------------------------------------------------------------

@METHODS.register("iw", family="instance", level="shallow", needs_target_labels=False, task="classification",
                  baseline="source-only-linear", paper="Shimodaira 2000; Sugiyama et al. 2007 (importance weighting)")
class ImportanceWeighting(_WeightedSourceModel):
    """Covariate-shift importance weighting with a probabilistic domain classifier.

    Under covariate shift the loss on the target equals the source loss weighted by ``p_t(x) / p_s(x)``
    (Shimodaira, "Improving predictive inference under covariate shift by weighting the log-likelihood function",
    Journal of Statistical Planning and Inference, 2000). The density ratio is estimated discriminatively, as in
    Bickel, Brückner & Scheffer, "Discriminative learning under covariate shift", Journal of Machine Learning
    Research (JMLR) 10, 2009: a classifier ``d`` that tells target (1) from source (0) samples gives, by Bayes' rule,

        w(x) = p(target | x) / p(source | x) * n_s / n_t.

    The probabilities of the source samples are *out-of-fold* (``cross_val_predict`` with ``cv`` stratified folds),
    so that the domain classifier does not judge samples it was trained on. The weights are clipped to
    ``[0, clip]`` (a few huge weights would otherwise dominate; this bounds the variance) and then normalised to mean
    1. The ``estimator`` is finally fitted on the source with ``sample_weight=weights_``. Target labels are not used.

    Args:
        estimator: the model fitted on the weighted source; a classifier or a regressor that accepts
            ``sample_weight`` (routed to the last step of a Pipeline). Default: ``LogisticRegression(max_iter=2000)``
            (no scaler of its own: see ``standardize``).
        domain_estimator: a probabilistic classifier (``predict_proba``) for source vs target. Default:
            ``LogisticRegression(max_iter=2000)``.
        clip: upper bound of the raw weights before normalisation, or None for no clipping. Default 10.
        cv: number of folds of the out-of-fold domain probabilities (lowered to the size of the smaller domain
            when that is smaller). Default 5.
        standardize: standardise every feature with the mean and standard deviation of source and target pooled,
            before the domain classifier and the estimator (and in ``predict``). Default True. A scaler fitted on
            the source alone would put the target on the source's scale and hide part of the shift from the
            domain classifier while re-introducing it for the estimator.
        random_state: seed of the fold split and of estimators that have a ``random_state``.

    Attributes:
        weights_: ``(n_source,)`` importance weight of each source sample, mean 1.
        domain_proba_: ``(n_source,)`` out-of-fold ``p(target | x)`` of each source sample.
        mean_, scale_: the pooled standardisation (None when ``standardize=False``).
        estimator_: the fitted estimator. ``classes_``: its classes (classifiers). ``n_features_in_``.
    """

    def __init__(self, estimator: Any = None, domain_estimator: Any = None, clip: float | None = 10.0, cv: int = 5,
                 standardize: bool = True, random_state: int = 0):
        self.estimator = estimator
        self.domain_estimator = domain_estimator
        self.clip = clip
        self.cv = cv
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, Xs: Any, ys: Any, Xt: Any, yt: Any = None) -> "ImportanceWeighting":
        """Estimate the source weights from ``Xs`` vs ``Xt`` and fit the estimator on the weighted source.

        Args:
            Xs: source inputs ``(n_s, d)``. ys: source targets ``(n_s,)``.
            Xt: unlabelled target inputs ``(n_t, d)``, at least 2 rows. yt: ignored.
        """
        owner = "ImportanceWeighting"
        cv = _check_positive_int(self.cv, "cv", owner, minimum=2)
        if self.clip is not None and not (_is_number(self.clip) and self.clip > 0):
            raise TransferkitError(f"{owner}: clip must be a positive number or None; got {self.clip!r}")
        Xs, ys, Xt, estimator = self._prepare(Xs, ys, Xt)
        n_s, n_t = len(Xs), len(Xt)
        folds = min(cv, n_s, n_t)
        if folds < 2:
            raise DataError(f"{owner}: the domain classifier needs at least 2 samples of each domain for its "
                            f"cross-validation; got {n_s} source and {n_t} target samples")
        dom = _default_classifier() if self.domain_estimator is None else clone(self.domain_estimator)
        if not hasattr(dom, "predict_proba"):
            raise TransferkitError(f"{owner}: domain_estimator {type(dom).__name__} has no predict_proba; pass a "
                                   "probabilistic classifier (e.g. LogisticRegression)")
        dom = _seeded(dom, self.random_state)
        X = np.concatenate([Xs, Xt])
        d = np.r_[np.zeros(n_s, dtype=int), np.ones(n_t, dtype=int)]
        split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
        proba = cross_val_predict(dom, X, d, cv=split, method="predict_proba")[:n_s, 1]
        p = np.clip(proba, 1e-12, 1.0 - 1e-12)
        w = p / (1.0 - p) * (n_s / n_t)
        if self.clip is not None:
            w = np.clip(w, 0.0, float(self.clip))
        self.weights_ = w / w.mean()
        self.domain_proba_ = proba
        self._fit_estimator(estimator, Xs, ys, self.weights_)
        return self


# ----------------------------------------------------------------------------------------------------------------
# kernel mean matching
# ----------------------------------------------------------------------------------------------------------------

def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return np.maximum(d, 0.0)


def _kernel(A: np.ndarray, B: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    if kernel == "rbf":
        return np.exp(-gamma * _sq_dists(A, B))
    if kernel == "laplacian":
        return np.exp(-gamma * cdist(A, B, "cityblock"))
    return A @ B.T  # linear


def _project_box_sum(v: np.ndarray, B: float, lo: float, hi: float) -> np.ndarray:
    """Euclidean projection of ``v`` onto ``{b : 0 <= b <= B, lo <= sum(b) <= hi}`` (assumed non-empty).

    The projection is ``clip(v - lam, 0, B)`` for the shift ``lam`` (0 when the clipped vector already meets the
    sum constraint) that puts the sum on the violated bound; found by bisection (the sum is monotone in ``lam``).
    """
    c = np.clip(v, 0.0, B)
    s = c.sum()
    if lo <= s <= hi:
        return c
    target = hi if s > hi else lo
    a, b = float(v.min()) - B, float(v.max())  # sum(clip(v - a)) = n*B >= target, sum(clip(v - b)) = 0 <= target
    for _ in range(100):
        mid = 0.5 * (a + b)
        if np.clip(v - mid, 0.0, B).sum() > target:
            a = mid
        else:
            b = mid
        if b - a <= 1e-13 * max(1.0, abs(a)):
            break
    return np.clip(v - 0.5 * (a + b), 0.0, B)


@METHODS.register("kmm", family="instance", level="shallow", needs_target_labels=False, task="classification",
                  baseline="source-only-linear", paper="Huang et al., NeurIPS 2006 (kernel mean matching)")
class KMM(_WeightedSourceModel):
    """Kernel Mean Matching: source weights that match the kernel mean of the target.

    Huang, Gretton, Borgwardt, Schölkopf & Smola, "Correcting sample selection bias by unlabeled data", Advances in
    Neural Information Processing Systems (NIPS) 19, 2006. The weights ``beta`` minimise the squared distance, in
    the kernel's feature space, between the weighted source mean and the target mean, i.e. solve the QP

        min_b 1/2 b' K b - kappa' b   s.t.  0 <= b_i <= B,  |sum_i b_i - n_s| <= n_s * eps,

    with ``K_ij = k(xs_i, xs_j)`` and ``kappa_i = n_s / n_t * sum_j k(xs_i, xt_j)``. ``B`` bounds the influence of a
    single sample; ``eps`` lets the weights sum to a little more or less than ``n_s`` (so that the weights stay
    close to a density ratio). The QP is solved here by accelerated projected gradient descent (FISTA with adaptive
    restart, step ``1 / lambda_max(K)``) with an exact projection onto the box-and-sum constraint set, so the
    returned weights satisfy the constraints exactly (no QP solver dependency).

    Cost: ``K`` is ``n_s x n_s`` (memory and time ``O(n_s^2)`` per iteration, fine for a few thousand source
    samples). To keep ``kappa`` cheap the target is randomly subsampled to at most ``max_target_samples`` rows
    (default 1000), which estimates the target kernel mean well; the gamma heuristic also uses at most 1000 rows.

    Args:
        estimator: the model fitted on the weighted source (classifier or regressor accepting ``sample_weight``).
            Default: ``LogisticRegression(max_iter=2000)`` (no scaler of its own: see ``standardize``).
        kernel: ``"rbf"`` (``exp(-gamma ||x - x'||^2)``), ``"laplacian"`` (``exp(-gamma ||x - x'||_1)``) or
            ``"linear"`` (matches only the means). Default ``"rbf"``. The kernel works on the features as
            ``standardize`` leaves them.
        gamma: kernel width; default (None) the median heuristic, ``1 / (2 median ||x - x'||^2)`` for ``"rbf"`` and
            ``1 / median ||x - x'||_1`` for ``"laplacian"``, over pooled source and target rows.
        B: upper bound of each weight. Default 1000.
        eps: slack of the weight sum; default (None) ``(sqrt(n_s) - 1) / sqrt(n_s)``.
        max_iter: maximum number of projected-gradient iterations. Default 2000.
        tol: stop when an iteration moves the weights by less than ``tol * max(1, ||beta||)``. Default 1e-7.
        max_target_samples: the target is subsampled to at most this many rows for ``kappa``. Default 1000.
        standardize: standardise every feature with the mean and standard deviation of source and target pooled,
            before the kernel and the estimator (and in ``predict``). Default True.
        random_state: seed of the target subsample and of estimators that have a ``random_state``.

    Attributes:
        weights_: ``(n_source,)`` the weights ``beta`` (they meet the constraints above; mean close to 1).
        mean_, scale_: the pooled standardisation (None when ``standardize=False``).
        gamma_: the kernel width used. eps_: the slack used. n_iter_: iterations run. objective_: final QP value.
        estimator_, classes_ (classifiers), n_features_in_.
    """

    def __init__(self, estimator: Any = None, kernel: str = "rbf", gamma: float | None = None, B: float = 1000.0,
                 eps: float | None = None, max_iter: int = 2000, tol: float = 1e-7, max_target_samples: int = 1000,
                 standardize: bool = True, random_state: int = 0):
        self.estimator = estimator
        self.kernel = kernel
        self.gamma = gamma
        self.B = B
        self.eps = eps
        self.max_iter = max_iter
        self.tol = tol
        self.max_target_samples = max_target_samples
        self.standardize = standardize
        self.random_state = random_state

    def _median_gamma(self, Xs: np.ndarray, Xt: np.ndarray, rng: np.random.Generator) -> float:
        X = np.concatenate([Xs, Xt])
        if len(X) > 1000:
            X = X[rng.choice(len(X), 1000, replace=False)]
        if self.kernel == "rbf":
            d = _sq_dists(X, X)
        else:
            d = cdist(X, X, "cityblock")
        d = d[np.triu_indices(len(X), k=1)]
        d = d[d > 0]
        med = float(np.median(d)) if len(d) else 1.0
        return 1.0 / (2.0 * med) if self.kernel == "rbf" else 1.0 / med

    def fit(self, Xs: Any, ys: Any, Xt: Any, yt: Any = None) -> "KMM":
        """Solve the KMM QP for the source weights and fit the estimator on the weighted source.

        Args:
            Xs: source inputs ``(n_s, d)``. ys: source targets ``(n_s,)``.
            Xt: unlabelled target inputs ``(n_t, d)``. yt: ignored.
        """
        owner = "KMM"
        if self.kernel not in ("rbf", "laplacian", "linear"):
            raise TransferkitError(f"{owner}: kernel must be 'rbf', 'laplacian' or 'linear'; got {self.kernel!r}")
        if self.gamma is not None and not (_is_number(self.gamma) and self.gamma > 0):
            raise TransferkitError(f"{owner}: gamma must be a positive number or None (median heuristic); got "
                                   f"{self.gamma!r}")
        if not (_is_number(self.B) and self.B > 0):
            raise TransferkitError(f"{owner}: B must be a positive number; got {self.B!r}")
        if self.eps is not None and not (_is_number(self.eps) and self.eps >= 0):
            raise TransferkitError(f"{owner}: eps must be a number >= 0 or None; got {self.eps!r}")
        if not (_is_number(self.tol) and self.tol >= 0):
            raise TransferkitError(f"{owner}: tol must be a number >= 0; got {self.tol!r}")
        max_iter = _check_positive_int(self.max_iter, "max_iter", owner)
        max_t = _check_positive_int(self.max_target_samples, "max_target_samples", owner)
        Xs, ys, Xt, estimator = self._prepare(Xs, ys, Xt)
        n_s = len(Xs)
        eps = (math.sqrt(n_s) - 1.0) / math.sqrt(n_s) if self.eps is None else float(self.eps)
        B = float(self.B)
        lo, hi = max(0.0, n_s * (1.0 - eps)), n_s * (1.0 + eps)
        if n_s * B < lo:
            raise TransferkitError(f"{owner}: B={B:g} and eps={eps:g} leave no feasible weights (the weights must sum "
                                   f"to at least {lo:g} but can reach at most n_s * B = {n_s * B:g}); raise B to at "
                                   f"least 1 - eps = {1 - eps:g} or raise eps")
        rng = np.random.default_rng(self.random_state)
        if len(Xt) > max_t:
            Xt = Xt[rng.choice(len(Xt), max_t, replace=False)]
        n_t = len(Xt)
        gamma = 0.0 if self.kernel == "linear" else (
            float(self.gamma) if self.gamma is not None else self._median_gamma(Xs, Xt, rng))
        K = _kernel(Xs, Xs, self.kernel, gamma)
        K = 0.5 * (K + K.T)
        kappa = (n_s / n_t) * _kernel(Xs, Xt, self.kernel, gamma).sum(axis=1)
        L = self._lipschitz(K)

        def objective(b: np.ndarray) -> float:
            return float(0.5 * b @ (K @ b) - kappa @ b)

        b = _project_box_sum(np.ones(n_s), B, lo, hi)
        y, t = b.copy(), 1.0
        it = 0
        for it in range(1, max_iter + 1):
            b_new = _project_box_sum(y - (K @ y - kappa) / L, B, lo, hi)
            step = b_new - b
            if (y - b_new) @ step > 0:  # adaptive restart (O'Donoghue & Candes 2015): momentum points uphill
                t = 1.0
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            y = b_new + ((t - 1.0) / t_new) * step
            b, t = b_new, t_new
            if np.linalg.norm(step) <= self.tol * max(1.0, float(np.linalg.norm(b))):
                break
        self.weights_ = b
        self.gamma_ = gamma
        self.eps_ = eps
        self.n_iter_ = it
        self.objective_ = objective(b)
        self._fit_estimator(estimator, Xs, ys, b)
        return self

    @staticmethod
    def _lipschitz(K: np.ndarray) -> float:
        """The largest eigenvalue of the PSD matrix ``K`` (a safe upper bound), the gradient's Lipschitz constant."""
        n = len(K)
        if n <= 500:
            lam = float(np.linalg.eigvalsh(K)[-1])
        else:
            from scipy.sparse.linalg import eigsh

            try:
                lam = float(eigsh(K, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0])
            except Exception:  # no convergence: the Gershgorin bound is always safe
                lam = float(np.abs(K).sum(axis=1).max())
        return max(lam * 1.01, 1e-12)


# ----------------------------------------------------------------------------------------------------------------
# TrAdaBoost
# ----------------------------------------------------------------------------------------------------------------

def _check_labelled_target(Xs: Any, ys: Any, Xt: Any, yt: Any, owner: str, task: str,
                           what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    Xs = _check_X(Xs, "Xs", owner)
    if Xt is None:
        raise DataError(f"{owner} needs a few labelled target samples: pass Xt (their inputs) and yt (their {what})")
    Xt = _check_X(Xt, "Xt", owner)
    _check_same_features(Xs, Xt, owner)
    if yt is None:
        raise DataError(f"{owner} needs a few labelled target samples: pass yt, the {what} of the {len(Xt)} rows of Xt "
                        "(for unlabelled target data use ImportanceWeighting or KMM)")
    ys = _check_y(ys, "ys", len(Xs), "Xs", owner, task)
    yt = _check_y(yt, "yt", len(Xt), "Xt", owner, task)
    return Xs, ys, Xt, yt


@METHODS.register("tradaboost", family="instance", level="shallow", needs_target_labels=True, task="classification",
                  baseline="source-only-linear", paper="Dai et al., ICML 2007 (TrAdaBoost)")
class TrAdaBoost(ClassifierMixin, _Base):
    """TrAdaBoost: boosting for transfer learning with a few labelled target samples (classification).

    Dai, Yang, Xue & Yu, "Boosting for transfer learning", International Conference on Machine Learning (ICML),
    2007. Source ("diff-distribution") and target ("same-distribution") samples are pooled; each round trains the
    base learner on the weighted pool, measures its weighted error ``eps_t`` on the *target* samples only, and

    * increases the weight of misclassified target samples by ``beta_t^-1``, ``beta_t = eps_t / (1 - eps_t)``
      (AdaBoost; the multi-class form is below), and
    * decreases the weight of misclassified source samples by ``beta = 1 / (1 + sqrt(2 ln n_s / N))`` (Hedge): source
      samples that keep disagreeing with the target lose their influence.

    The prediction is the vote of the learners of the second half, rounds ``ceil(N/2) .. N``, each weighted by
    ``ln(1 / beta_t)`` — the paper's rule.

    Multi-class (``K > 2`` classes): the standard extension with the 0/1 loss — ``|h_t(x_i) - c(x_i)|`` becomes
    ``1[h_t(x_i) != y_i]`` and ``eps_t`` is the weighted misclassification rate on the target — with the SAMME
    correction of the learner's factor (Zhu, Zou, Rosset & Hastie, "Multi-class AdaBoost", Statistics and Its
    Interface, 2009): ``beta_t = eps_t / ((1 - eps_t) (K - 1))``, so that any learner better than chance
    (``eps_t < 1 - 1/K``) raises the weight of the target samples it misclassifies (the plain ``eps/(1 - eps)``
    would stall as soon as ``eps_t >= 1/2``, which a useful 3-class learner can reach). For ``K = 2`` this is the
    paper's ``beta_t`` exactly. The final rule is the weighted plurality vote
    ``argmax_k sum_t ln(1/beta_t) 1[h_t(x) = k]`` over the second half (for two classes the paper's rule).
    ``eps_t`` is clipped to ``[1e-10, 1 - 1/K - 1e-6]`` so that a perfect round does not divide by zero and a
    worse-than-chance round barely votes. The initial weights are uniform over the pooled samples, and the weights
    are renormalised to sum 1 after every round.

    Args:
        estimator: base classifier accepting ``sample_weight``. Default: ``DecisionTreeClassifier(max_depth=5)``
            — trees follow the changing weights (a linear model barely does) and fit non-linear boundaries, and
            depth 5 keeps them from memorising the few target samples at once (a perfect fit of the target makes
            ``eps_t = 0``: that learner dominates the vote and the target weights stop changing). On our 3-class blob
            benchmark (see the tests) depth 5 did better than 4, 6 or 8.
        n_estimators: number of boosting rounds ``N``. Default 10.
        random_state: seed of estimators that have a ``random_state`` (round ``t`` gets ``random_state + t``).

    Attributes:
        classes_: the class labels (those of ``ys``). estimators_: the ``N`` fitted learners.
        estimator_weights_: ``ln(1 / beta_t)`` of each round. estimator_errors_: ``eps_t`` of each round (before
        clipping). weights_: ``(n_s + n_t,)`` final normalised weights, source rows first, then target rows;
        source_weights_ / target_weights_: the two parts. n_features_in_.
    """

    _fitted_attr = "estimators_"

    def __init__(self, estimator: Any = None, n_estimators: int = 10, random_state: int = 0):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.random_state = random_state

    def fit(self, Xs: Any, ys: Any, Xt: Any, yt: Any = None) -> "TrAdaBoost":
        """Boost on the pooled source and labelled target samples.

        Args:
            Xs: source inputs ``(n_s, d)``. ys: source class labels ``(n_s,)``, at least two classes.
            Xt: labelled target inputs ``(n_t, d)`` (a few per class). yt: their class labels (required; every
                class must also occur in ``ys``).
        """
        owner = "TrAdaBoost"
        N = _check_positive_int(self.n_estimators, "n_estimators", owner)
        base = DecisionTreeClassifier(max_depth=5) if self.estimator is None else self.estimator
        if not is_classifier(base):
            raise TransferkitError(f"{owner}: estimator must be a classifier; got {type(base).__name__} (use "
                                   "TrAdaBoostR2 for regression)")
        _require_sample_weight(base, owner)
        Xs, ys, Xt, yt = _check_labelled_target(Xs, ys, Xt, yt, owner, "classification", "class labels")
        classes = np.unique(ys)
        if len(classes) < 2:
            raise DataError(f"{owner}: ys holds a single class ({classes[0]!r}); the source needs at least two classes")
        try:
            unseen = np.setdiff1d(np.unique(yt), classes)
        except TypeError:
            raise DataError(f"{owner}: ys and yt hold labels of different types ({ys.dtype} and {yt.dtype}); use the "
                            "same label values in both") from None
        if len(unseen):
            def show(values: np.ndarray) -> list:
                return [v.item() if hasattr(v, "item") else v for v in values[:10]]

            raise DataError(f"{owner}: yt holds classes that are not in the source labels ys: {show(unseen)}; "
                            f"TrAdaBoost can only predict the source classes {show(classes)} — drop those target "
                            "samples or relabel them")
        n_s, n_t = len(Xs), len(Xt)
        X = np.concatenate([Xs, Xt])
        y = np.searchsorted(classes, np.concatenate([ys, yt]))
        w = np.full(n_s + n_t, 1.0 / (n_s + n_t))
        K = len(classes)
        beta = 1.0 / (1.0 + math.sqrt(2.0 * math.log(n_s) / N)) if n_s > 1 else 0.5
        learners, alphas, errors = [], [], []
        for t in range(N):
            p = w / w.sum()
            h = _fit_weighted(_seeded(base, _offset(self.random_state, t)), X, y, p * len(p))
            miss = (h.predict(X) != y).astype(np.float64)
            eps_t = float(p[n_s:] @ miss[n_s:] / p[n_s:].sum())
            errors.append(eps_t)
            e = min(max(eps_t, 1e-10), 1.0 - 1.0 / K - 1e-6)
            beta_t = e / ((1.0 - e) * (K - 1))
            learners.append(h)
            alphas.append(math.log(1.0 / beta_t))
            w = p.copy()
            w[:n_s] *= beta ** miss[:n_s]
            w[n_s:] *= beta_t ** (-miss[n_s:])
            w /= w.sum()
        self.classes_ = classes
        self.estimators_ = learners
        self.estimator_weights_ = np.array(alphas)
        self.estimator_errors_ = np.array(errors)
        self.weights_ = w
        self.source_weights_, self.target_weights_ = w[:n_s], w[n_s:]
        self.n_features_in_ = X.shape[1]
        return self

    def _votes(self, A: np.ndarray) -> np.ndarray:
        N = len(self.estimators_)
        start = math.ceil(N / 2) - 1  # rounds ceil(N/2)..N, 1-based
        V = np.zeros((len(A), len(self.classes_)))
        rows = np.arange(len(A))
        for h, a in zip(self.estimators_[start:], self.estimator_weights_[start:]):
            V[rows, h.predict(A).astype(int)] += a
        return V

    def predict_proba(self, X: Any) -> np.ndarray:
        """Weighted vote shares ``(n_samples, n_classes)`` of the second-half learners, columns as ``classes_``.

        Each learner of rounds ``ceil(N/2)..N`` gives its vote weight ``ln(1/beta_t)`` to the class it predicts;
        the shares are normalised to sum 1 per row (coarse probabilities; ``predict`` is their argmax).
        """
        V = self._votes(self._check_predict_X(X))
        return V / np.maximum(V.sum(axis=1, keepdims=True), 1e-300)

    def predict(self, X: Any) -> np.ndarray:
        """The class with the largest weighted vote of the second-half learners (the paper's final hypothesis)."""
        V = self._votes(self._check_predict_X(X))
        return self.classes_[np.argmax(V, axis=1)]


# ----------------------------------------------------------------------------------------------------------------
# two-stage TrAdaBoost.R2
# ----------------------------------------------------------------------------------------------------------------

class _R2Ensemble:
    """An AdaBoost.R2 ensemble: the weighted median of its learners' predictions (Drucker 1997)."""

    def __init__(self, learners: list, alphas: list[float]):
        self.learners = learners
        self.alphas = np.asarray(alphas, dtype=np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        P = np.column_stack([h.predict(X) for h in self.learners])
        order = np.argsort(P, axis=1)
        cum = np.cumsum(self.alphas[order], axis=1)
        k = np.argmax(cum >= 0.5 * cum[:, -1:], axis=1)
        rows = np.arange(len(X))
        return P[rows, order[rows, k]]


@METHODS.register("tradaboost-r2", family="instance", level="shallow", needs_target_labels=True, task="regression",
                  baseline="source-only-linear", paper="Pardoe & Stone, ICML 2010 (TrAdaBoost.R2)")
class TrAdaBoostR2(RegressorMixin, _Base):
    """Two-stage TrAdaBoost.R2: boosting for regression transfer with a few labelled target samples.

    Pardoe & Stone, "Boosting for regression transfer", International Conference on Machine Learning (ICML), 2010
    (Algorithm 3). Source and labelled target samples are pooled with uniform weights. Then for each of ``steps``
    stages ``t = 1..S``:

    1. *Evaluate* the current weighting: AdaBoost.R2' — AdaBoost.R2 (Drucker, ICML 1997) in which the source
       weights stay fixed and only the target weights are boosted — with ``n_estimators`` rounds is scored by
       ``cv``-fold cross-validation over the target samples (the source is always in the training folds);
       the score is the mean squared error on the held-out target folds.
    2. *Re-weight* (stage 1): fit the base learner on the pool with the current weights, compute each sample's
       adjusted error ``e_i = |y_i - h(x_i)| / max_j |y_j - h(x_j)|`` (linear loss), multiply the source weights by
       ``beta_t^{e_i}`` and renormalise, with ``beta_t`` found by bisection so that the target's share of the
       total weight becomes ``n_t/(n_s+n_t) + t/(S-1) (1 - n_t/(n_s+n_t))``. The target share thus grows linearly
       from its natural share (stage 1) to 1 (stage S: target only), and the source samples that fit the target
       worst lose their weight first.

    The model returned is AdaBoost.R2' fitted on all samples with the weights of the stage of lowest
    cross-validated error (stage 2 of the paper's algorithm).

    Details of AdaBoost.R2' as implemented (the paper leaves them open): the learner sees the weights as
    ``sample_weight``; the linear loss is ``L_i = |y_i - h(x_i)| / D`` with ``D`` the largest residual over the
    training samples of non-zero weight (Drucker's sup over the training set); the average loss ``L_bar`` is the
    weighted mean of ``L_i`` over the target samples, the only ones whose weights change; the target weights are
    multiplied by ``beta^(1 - L_i)``, ``beta = L_bar / (1 - L_bar)``, and rescaled to keep the target's total
    weight (the share the stage set); boosting stops early when ``L_bar >= 0.5``; the prediction is the weighted
    median of the learners with weights ``ln(1/beta)``.

    Args:
        estimator: base regressor accepting ``sample_weight``. Default ``DecisionTreeRegressor(max_depth=4)``
            (fast; deep enough to fit non-linear targets, shallow enough not to memorise the few target samples).
        n_estimators: AdaBoost.R2' rounds ``N`` per evaluation. Default 10.
        steps: number of stages ``S``. Default 10.
        cv: folds of the target cross-validation, lowered to ``n_t`` when fewer target samples. Default 5.
        random_state: seed of the folds and of estimators that have a ``random_state``.

    Cost: about ``S * (cv + 1) * N`` fits of the base learner.

    Attributes:
        cv_errors_: ``(S,)`` cross-validated target MSE of each stage. best_step_: the chosen stage (0-based).
        stage_weights_: ``(S, n_s + n_t)`` the weights at the start of each stage (source rows first).
        estimators_: learners of the final AdaBoost.R2' ensemble; estimator_weights_: their ``ln(1/beta)``.
        weights_: ``(n_s + n_t,)`` final weights of the returned ensemble (source first, then target, sum 1);
        source_weights_ / target_weights_: the two parts. n_features_in_.
    """

    _fitted_attr = "estimators_"

    def __init__(self, estimator: Any = None, n_estimators: int = 10, steps: int = 10, cv: int = 5,
                 random_state: int = 0):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.steps = steps
        self.cv = cv
        self.random_state = random_state

    def _r2prime(self, base: Any, X: np.ndarray, y: np.ndarray, w: np.ndarray, n_src: int,
                 seed: int | None) -> tuple[_R2Ensemble, np.ndarray]:
        """AdaBoost.R2' on ``X, y`` (first ``n_src`` rows: source, weights frozen); returns the ensemble and weights."""
        w = w.astype(np.float64).copy()
        learners, alphas = [], []
        for k in range(self.n_estimators):
            h = _fit_weighted(_seeded(base, _offset(seed, k)), X, y, w / w.sum() * len(w))
            r_all = np.abs(h.predict(X) - y)
            D = float(r_all[w > 0].max())  # Drucker's sup over the (weighted) training set
            r = r_all[n_src:]
            wt = w[n_src:]
            if D <= 0.0:  # fits every sample: a perfect learner, it decides alone
                learners, alphas = [h], [1.0]
                break
            L = r / D
            Lbar = float(wt @ L / wt.sum())
            if Lbar >= 0.5:
                if not learners:
                    learners, alphas = [h], [1.0]
                break
            b = max(Lbar, 1e-10) / (1.0 - Lbar)
            learners.append(h)
            alphas.append(math.log(1.0 / b))
            new = wt * b ** (1.0 - L)
            w[n_src:] = new * (wt.sum() / new.sum())
        return _R2Ensemble(learners, alphas), w

    def fit(self, Xs: Any, ys: Any, Xt: Any, yt: Any = None) -> "TrAdaBoostR2":
        """Run the two stages and fit the AdaBoost.R2' ensemble of the best stage.

        Args:
            Xs: source inputs ``(n_s, d)``. ys: numeric source targets ``(n_s,)``.
            Xt: labelled target inputs ``(n_t, d)``, at least 2. yt: their numeric targets (required).
        """
        owner = "TrAdaBoostR2"
        _check_positive_int(self.n_estimators, "n_estimators", owner)
        S = _check_positive_int(self.steps, "steps", owner)
        cv = _check_positive_int(self.cv, "cv", owner, minimum=2)
        base = DecisionTreeRegressor(max_depth=4) if self.estimator is None else self.estimator
        if not is_regressor(base):
            raise TransferkitError(f"{owner}: estimator must be a regressor; got {type(base).__name__} (use TrAdaBoost "
                                   "for classification)")
        _require_sample_weight(base, owner)
        Xs, ys, Xt, yt = _check_labelled_target(Xs, ys, Xt, yt, owner, "regression", "numeric targets")
        n_s, n_t = len(Xs), len(Xt)
        if n_t < 2:
            raise DataError(f"{owner}: the stage choice cross-validates over the target, so it needs at least 2 "
                            f"labelled target samples; got {n_t} in Xt / yt")
        X = np.concatenate([Xs, Xt])
        y = np.concatenate([ys, yt])
        n = n_s + n_t
        folds = list(KFold(n_splits=min(cv, n_t), shuffle=True, random_state=self.random_state).split(Xt))
        w = np.full(n, 1.0 / n)
        share0 = n_t / n
        errors, history = [], []
        for t in range(S):
            history.append(w.copy())
            sq = 0.0
            for i, (tr, te) in enumerate(folds):
                rows = np.r_[np.arange(n_s), n_s + tr]
                model, _ = self._r2prime(base, X[rows], y[rows], w[rows], n_s,
                                         _offset(self.random_state, 1000 * (t + 1) + 100 * i))
                sq += float(((model.predict(Xt[te]) - yt[te]) ** 2).sum())
            errors.append(sq / n_t)
            if t == S - 1:
                break
            share = share0 + (t + 1) / (S - 1) * (1.0 - share0)
            target_mass = w[n_s:].sum()
            if share >= 1.0 - 1e-12:
                w[:n_s] = 0.0
            else:
                h = _fit_weighted(_seeded(base, _offset(self.random_state, 7919 * (t + 1))), X, y, w / w.sum() * n)
                r = np.abs(h.predict(X) - y)
                D = float(r.max())
                e = r[:n_s] / D if D > 0 else np.zeros(n_s)
                need = target_mass * (1.0 - share) / share  # source mass that gives the target its share
                lo, hi = 0.0, 1.0
                for _ in range(100):
                    mid = 0.5 * (lo + hi)
                    if (w[:n_s] * mid ** e).sum() > need:
                        hi = mid
                    else:
                        lo = mid
                w[:n_s] *= (0.5 * (lo + hi)) ** e
            w /= w.sum()
        best = int(np.argmin(errors))
        model, w_final = self._r2prime(base, X, y, history[best], n_s, self.random_state)
        w_final = w_final / w_final.sum()
        self.cv_errors_ = np.array(errors)
        self.best_step_ = best
        self.stage_weights_ = np.array(history)
        self.estimators_ = model.learners
        self.estimator_weights_ = model.alphas
        self.weights_ = w_final
        self.source_weights_, self.target_weights_ = w_final[:n_s], w_final[n_s:]
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The weighted median of the best stage's AdaBoost.R2' learners, for the rows of ``X``."""
        A = self._check_predict_X(X)
        return _R2Ensemble(self.estimators_, self.estimator_weights_).predict(A)
