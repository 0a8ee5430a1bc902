"""Instance-based transfer: importance weighting, KMM, TrAdaBoost, two-stage TrAdaBoost.R2.

Every data set is synthetic numpy with a fixed seed; the whole file runs in a few seconds on one core.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from transferkit.adapt.instance import KMM, ImportanceWeighting, TrAdaBoost, TrAdaBoostR2
from transferkit.errors import DataError, NotFittedError, TransferkitError

# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


def covariate_shift(seed: int = 0, task: str = "classification"):
    """Source x ~ N(0, 1), target x ~ N(1.5, 0.5); p(y|x) is shared and non-linear.

    Classification: y = 1 on the band -0.8 < x < 1 (5% label noise). A linear model fitted on the source sees a
    band in the middle of its data and learns a nearly flat, mostly-1 rule; on the target (mostly x > 1, where y is
    0) it is badly wrong, while the weighted fit concentrates on x > 0 and finds the threshold near 1.
    Regression: y = x^2 + noise; the unweighted line is flat (the source is symmetric around 0), the weighted line
    is the tangent near 1.5.
    """
    rng = np.random.default_rng(seed)
    Xs = rng.normal(0.0, 1.0, (400, 1))
    Xt = rng.normal(1.5, 0.5, (300, 1))
    Xte = rng.normal(1.5, 0.5, (1000, 1))
    if task == "classification":
        def label(X):
            y = ((X[:, 0] > -0.8) & (X[:, 0] < 1.0)).astype(int)
            flip = rng.random(len(y)) < 0.05
            y[flip] = 1 - y[flip]
            return y
    else:
        def label(X):
            return X[:, 0] ** 2 + rng.normal(0.0, 0.1, len(X))
    return Xs, label(Xs), Xt, Xte, label(Xte)


GRID = np.array([(x, y) for y in (0.0, 2.0, 4.0) for x in (0.0, 2.0, 4.0)])
SOURCE_CLASSES = np.array([0, 1, 2, 1, 2, 0, 2, 0, 1])
TARGET_CLASSES = SOURCE_CLASSES.copy()
TARGET_CLASSES[4] = 0  # the centre blob belongs to another class in the target
NAMES = np.array(["ant", "bee", "cat"])


def shifted_blobs(seed: int):
    """Nine Gaussian blobs (sd 0.5) on a 3 x 3 grid, three classes in a checkerboard-like layout.

    The target blobs are shifted by (0.3, 0.3) and the centre blob changed class (cat -> ant): the rule is shared
    on 8 blobs and differs on one. 40 source samples per blob; 10 labelled target samples per class; 900 held-out
    target samples. Labels are strings, to exercise the label handling.
    """
    rng = np.random.default_rng(seed)

    def make(per_blob, classes, shift):
        blob = np.repeat(np.arange(9), per_blob)
        return GRID[blob] + shift + rng.normal(0.0, 0.5, (len(blob), 2)), NAMES[classes[blob]], blob

    Xs, ys, blob_s = make(40, SOURCE_CLASSES, 0.0)
    Xp, yp, _ = make(100, TARGET_CLASSES, 0.3)
    few = np.concatenate([rng.choice(np.flatnonzero(yp == c), 10, replace=False) for c in NAMES])
    Xte, yte, _ = make(100, TARGET_CLASSES, 0.3)
    return Xs, ys, blob_s, Xp[few], yp[few], Xte, yte


def f_source(X):
    return np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2


def drifted_regression(seed: int):
    """Source x ~ N(0, I_2), y = sin(2 x1) + x2^2 / 2; target x ~ N(0.5, I_2), y = the same + x1 / 2 (a drift).

    300 source samples, 30 labelled target samples, 1000 held-out target samples; noise sd 0.1.
    """
    rng = np.random.default_rng(seed)
    Xs = rng.normal(0.0, 1.0, (300, 2))
    Xt = rng.normal(0.5, 1.0, (30, 2))
    Xte = rng.normal(0.5, 1.0, (1000, 2))

    def f_target(X):
        return f_source(X) + 0.5 * X[:, 0]

    return (Xs, f_source(Xs) + rng.normal(0, 0.1, 300), Xt, f_target(Xt) + rng.normal(0, 0.1, 30), Xte,
            f_target(Xte) + rng.normal(0, 0.1, 1000))


def accuracy(model, X, y):
    return float(np.mean(model.predict(X) == y))


def mse(model, X, y):
    return float(np.mean((model.predict(X) - y) ** 2))


# ----------------------------------------------------------------------------------------------------------------
# importance weighting and KMM under covariate shift
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ImportanceWeighting, KMM])
def test_weighting_beats_unweighted_classifier_on_shifted_target(cls):
    Xs, ys, Xt, Xte, yte = covariate_shift(0, "classification")
    unweighted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xs, ys)
    model = cls().fit(Xs, ys, Xt)
    acc_source, acc_weighted = accuracy(unweighted, Xte, yte), accuracy(model, Xte, yte)
    # measured: unweighted 0.19, IW 0.89, KMM 0.89
    assert acc_source < 0.4
    assert acc_weighted > acc_source + 0.4
    assert acc_weighted > 0.85
    # the weights favour the source samples that lie where the target is
    w = model.weights_
    assert w.shape == (len(Xs),) and np.all(w >= 0)
    in_target = np.abs(Xs[:, 0] - 1.5) < 0.5
    far = Xs[:, 0] < 0.0
    assert w[in_target].mean() > 20 * w[far].mean()  # measured: IW 4.6 vs 0.036, KMM 4.9 vs 0.017
    assert list(model.classes_) == [0, 1]
    proba = model.predict_proba(Xte[:5])
    assert proba.shape == (5, 2) and np.allclose(proba.sum(1), 1.0)


@pytest.mark.parametrize("cls", [ImportanceWeighting, KMM])
def test_weighting_beats_unweighted_regressor_on_shifted_target(cls):
    Xs, ys, Xt, Xte, yte = covariate_shift(1, "regression")
    err_source = mse(LinearRegression().fit(Xs, ys), Xte, yte)
    err_weighted = mse(cls(estimator=LinearRegression()).fit(Xs, ys, Xt), Xte, yte)
    # measured: unweighted 6.0, IW 0.22, KMM 0.16
    assert err_weighted < 0.1 * err_source


def test_importance_weights_are_clipped_and_mean_one():
    Xs, ys, Xt, _, _ = covariate_shift(0)
    model = ImportanceWeighting(clip=2.0).fit(Xs, ys, Xt, yt=np.zeros(len(Xt)))  # yt is ignored
    p = model.domain_proba_
    assert p.shape == (len(Xs),) and np.all((p >= 0) & (p <= 1))
    raw = np.minimum(p / (1 - p) * len(Xs) / len(Xt), 2.0)  # the density ratio, clipped
    assert np.mean(raw == 2.0) > 0.1  # the clip is active on this shift
    assert np.allclose(model.weights_, raw / raw.mean())
    assert np.isclose(model.weights_.mean(), 1.0)
    unclipped = ImportanceWeighting(clip=None).fit(Xs, ys, Xt)
    assert unclipped.weights_.max() > 5 * model.weights_.max()


def test_pipeline_estimator_gets_the_weights():
    Xs, ys, Xt, Xte, yte = covariate_shift(2, "regression")
    pipe = make_pipeline(StandardScaler(), Ridge(alpha=1e-3))
    plain = mse(clone(pipe).fit(Xs, ys), Xte, yte)
    weighted = mse(ImportanceWeighting(estimator=pipe).fit(Xs, ys, Xt), Xte, yte)
    assert weighted < 0.2 * plain


# ----------------------------------------------------------------------------------------------------------------
# KMM: the weights solve the constrained QP
# ----------------------------------------------------------------------------------------------------------------

def kmm_objective(model, Xs, Xt):
    from transferkit.adapt.instance import _kernel

    if model.mean_ is not None:  # the QP is solved on the pooled-standardised inputs
        Xs, Xt = (Xs - model.mean_) / model.scale_, (Xt - model.mean_) / model.scale_
    K = _kernel(Xs, Xs, model.kernel, model.gamma_)
    kappa = len(Xs) / len(Xt) * _kernel(Xs, Xt, model.kernel, model.gamma_).sum(1)
    return lambda b: 0.5 * b @ K @ b - kappa @ b


@pytest.mark.parametrize("B, eps", [(1000.0, None), (3.0, 0.05), (2.0, 0.0)])
def test_kmm_weights_meet_the_constraints(B, eps):
    rng = np.random.default_rng(3)
    Xs = rng.normal(0, 1, (150, 2))
    Xt = rng.normal(1.0, 0.5, (100, 2))
    ys = (Xs[:, 0] > 0).astype(int)
    model = KMM(B=B, eps=eps).fit(Xs, ys, Xt)
    b, n = model.weights_, len(Xs)
    eps_used = (np.sqrt(n) - 1) / np.sqrt(n) if eps is None else eps
    assert np.isclose(model.eps_, eps_used)
    assert np.all(b >= 0) and np.all(b <= B + 1e-9)
    assert abs(b.sum() - n) <= n * eps_used + 1e-6
    # the QP was actually minimised: better than uniform weights and than a feasible perturbation of the solution
    f = kmm_objective(model, Xs, Xt)
    assert f(b) < f(np.ones(n)) - 1.0
    assert np.isclose(model.objective_, f(b))
    if B < 10:
        assert b.max() > B - 1e-6  # the box is active: the target region wants more weight than B allows
    if eps == 0.0:
        assert np.isclose(b.sum(), n)


def test_kmm_matches_a_reference_qp_solver():
    from scipy.optimize import minimize

    rng = np.random.default_rng(4)
    Xs, Xt = rng.normal(0, 1, (60, 2)), rng.normal(0.8, 0.6, (40, 2))
    ys = (Xs[:, 1] > 0).astype(int)
    model = KMM(B=5.0, eps=0.1, max_iter=5000, tol=0).fit(Xs, ys, Xt)
    f = kmm_objective(model, Xs, Xt)
    n = len(Xs)
    ref = minimize(f, np.ones(n), method="SLSQP", bounds=[(0, 5.0)] * n,
                   constraints=[{"type": "ineq", "fun": lambda b: n * 1.1 - b.sum()},
                                {"type": "ineq", "fun": lambda b: b.sum() - n * 0.9}],
                   options={"maxiter": 500, "ftol": 1e-12})
    assert f(model.weights_) <= ref.fun + 1e-4 * abs(ref.fun)


def test_kmm_subsamples_a_large_target():
    rng = np.random.default_rng(5)
    Xs, Xt = rng.normal(0, 1, (80, 2)), rng.normal(1, 1, (600, 2))
    ys = (Xs[:, 0] > 0).astype(int)
    small = KMM(max_target_samples=100).fit(Xs, ys, Xt)
    full = KMM(max_target_samples=1000).fit(Xs, ys, Xt)
    assert np.corrcoef(small.weights_, full.weights_)[0, 1] > 0.8
    assert KMM(kernel="linear").fit(Xs, ys, Xt).weights_.shape == (80,)
    assert KMM(kernel="laplacian").fit(Xs, ys, Xt).gamma_ > 0


# ----------------------------------------------------------------------------------------------------------------
# TrAdaBoost
# ----------------------------------------------------------------------------------------------------------------

def test_tradaboost_beats_source_only_and_target_only():
    rows = []
    for seed in range(5):
        Xs, ys, blob_s, Xt, yt, Xte, yte = shifted_blobs(seed)
        tree = DecisionTreeClassifier(max_depth=5, random_state=0)  # TrAdaBoost's default base learner
        acc_s = accuracy(clone(tree).fit(Xs, ys), Xte, yte)
        acc_t = accuracy(clone(tree).fit(Xt, yt), Xte, yte)
        model = TrAdaBoost().fit(Xs, ys, Xt, yt)
        rows.append((acc_s, acc_t, accuracy(model, Xte, yte)))
        # the source samples of the blob whose class changed lost weight relative to the others
        sw = model.source_weights_
        assert sw[blob_s == 4].mean() < sw[blob_s != 4].mean()
    acc = np.array(rows)
    # measured means over seeds 0-4: source-only 0.58, target-only 0.72, TrAdaBoost 0.87
    source_only, target_only, tradaboost = acc.mean(0)
    assert tradaboost > source_only + 0.15
    assert tradaboost > target_only + 0.08
    assert np.sum(acc[:, 2] > acc[:, 0]) >= 4 and np.sum(acc[:, 2] > acc[:, 1]) >= 4


def test_tradaboost_outputs():
    Xs, ys, _, Xt, yt, Xte, _ = shifted_blobs(0)
    model = TrAdaBoost(n_estimators=7).fit(Xs, ys, Xt, yt)
    assert list(model.classes_) == ["ant", "bee", "cat"]
    assert len(model.estimators_) == 7 and model.estimator_weights_.shape == (7,)
    proba = model.predict_proba(Xte)
    assert proba.shape == (len(Xte), 3) and np.allclose(proba.sum(1), 1.0)
    assert np.array_equal(model.classes_[proba.argmax(1)], model.predict(Xte))
    assert model.weights_.shape == (len(Xs) + len(Xt),) and np.isclose(model.weights_.sum(), 1.0)
    assert np.array_equal(model.weights_, np.r_[model.source_weights_, model.target_weights_])
    # binary labels with a linear base learner work too
    two = np.isin(ys, ["ant", "bee"]), np.isin(yt, ["ant", "bee"])
    lin = TrAdaBoost(LogisticRegression()).fit(Xs[two[0]], ys[two[0]], Xt[two[1]], yt[two[1]])
    assert set(lin.predict(Xte)) <= {"ant", "bee"}


# ----------------------------------------------------------------------------------------------------------------
# two-stage TrAdaBoost.R2
# ----------------------------------------------------------------------------------------------------------------

def test_tradaboostr2_beats_source_only_and_target_only():
    rows = []
    for seed in range(5):
        Xs, ys, Xt, yt, Xte, yte = drifted_regression(seed)
        tree = DecisionTreeRegressor(max_depth=4, random_state=0)  # TrAdaBoostR2's default base learner
        model = TrAdaBoostR2().fit(Xs, ys, Xt, yt)
        rows.append((mse(clone(tree).fit(Xs, ys), Xte, yte), mse(clone(tree).fit(Xt, yt), Xte, yte),
                     mse(model, Xte, yte)))
    err = np.array(rows)
    # Measured, mean test MSE over data seeds 0-4: source-only 0.76, target-only 0.61, TrAdaBoost.R2 0.48 (the
    # same with scikit-learn 1.3.2, 1.6.1, 1.7.2, 1.8.0 and 1.9.1, numpy 1.26 and 2.4). The stage is chosen by
    # cross-validation over 30 target samples, and trees break ties at random, so one fit is one draw: over
    # random_state 0-19 the mean ranges 0.43-0.54 (average 0.47; 0.63-0.71 x source-only, 0.70-0.88 x target-only),
    # and on one data seed in five a fit can pick a poor stage (seed 2, random_state 0: 0.84). The bounds below hold
    # for every one of those 20 random states, so they test the method, not a lucky draw. (The bounds this test had,
    # 0.8 x target-only and better than source-only on every seed, failed for 2 of the 20: random_state 0 and 1.)
    source_only, target_only, r2 = err.mean(0)
    assert r2 < 0.75 * source_only
    assert r2 < 0.9 * target_only
    assert np.sum(err[:, 2] < err[:, 0]) >= 4 and np.sum(err[:, 2] < err[:, 1]) >= 3


def test_tradaboostr2_stages():
    Xs, ys, Xt, yt, _, _ = drifted_regression(0)
    model = TrAdaBoostR2(n_estimators=5, steps=4, cv=3).fit(Xs, ys, Xt, yt)
    n_s, n = len(Xs), len(Xs) + len(Xt)
    shares = model.stage_weights_[:, n_s:].sum(1)
    # the target's share of the weight grows linearly from n_t / n to 1 (the last stage is target only)
    assert np.allclose(shares, len(Xt) / n + np.arange(4) / 3 * (1 - len(Xt) / n), atol=1e-6)
    assert np.allclose(model.stage_weights_[-1, :n_s], 0.0)
    assert model.cv_errors_.shape == (4,) and model.best_step_ == int(np.argmin(model.cv_errors_))
    assert np.isclose(model.weights_.sum(), 1.0) and len(model.estimators_) >= 1
    # AdaBoost.R2' leaves the source weights and the target's total as the chosen stage set them
    best = model.stage_weights_[model.best_step_]
    assert np.allclose(model.source_weights_, best[:n_s])
    assert np.isclose(model.target_weights_.sum(), best[n_s:].sum())
    assert model.predict(Xt).shape == (len(Xt),)


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(9)
XS, XT = RNG.normal(size=(40, 3)), RNG.normal(size=(20, 3))
YS_CLS, YT_CLS = np.arange(40) % 2, np.arange(20) % 2
YS_REG, YT_REG = RNG.normal(size=40), RNG.normal(size=20)
ALL = [ImportanceWeighting, KMM, TrAdaBoost, TrAdaBoostR2]
CLASSIFIERS = [ImportanceWeighting, KMM, TrAdaBoost]


def _args(cls):
    if cls is TrAdaBoostR2:
        return XS, YS_REG, XT, YT_REG
    return XS, YS_CLS, XT, YT_CLS


def _with_nan(X, where=(3, 1)):
    X = X.copy()
    X[where] = np.nan
    return X


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("case, change, pattern", [
    ("nan in Xs", lambda a: (_with_nan(a[0]),) + a[1:], r"Xs holds NaN or inf in 1 of 40 rows \(rows 3\)"),
    ("inf in Xt", lambda a: (a[0], a[1], np.where(np.arange(20)[:, None] == 7, np.inf, a[2]), a[3]),
     r"Xt holds NaN or inf in 1 of 20 rows \(rows 7\)"),
    ("short ys", lambda a: (a[0], a[1][:35]) + a[2:], r"Xs has 40 samples but ys has 35 values"),
    ("feature mismatch", lambda a: (a[0], a[1], a[2][:, :2], a[3]), r"Xs has 3 features but Xt has 2"),
    ("empty target", lambda a: (a[0], a[1], np.empty((0, 3)), a[3][:0]), r"Xt is empty \(0 samples\)"),
    ("1-d Xs", lambda a: (a[0][:, 0],) + a[1:], r"Xs is 1-d .*reshape\(-1, 1\)"),
    ("non-numeric Xs", lambda a: (np.full((40, 3), "x"),) + a[1:], r"Xs must be a 2-d numeric array"),
])
def test_bad_data_raises_data_error(cls, case, change, pattern):
    with pytest.raises(DataError, match=pattern):
        cls().fit(*change(_args(cls)))


@pytest.mark.parametrize("cls", [TrAdaBoost, TrAdaBoostR2])
def test_boosting_needs_target_labels(cls):
    Xs, ys, Xt, _ = _args(cls)
    with pytest.raises(DataError, match=rf"{cls.__name__} needs a few labelled target samples: pass yt"):
        cls().fit(Xs, ys, Xt)
    with pytest.raises(DataError, match=r"Xt has 20 samples but yt has 5 values"):
        cls().fit(Xs, ys, Xt, _args(cls)[3][:5])
    with pytest.raises(DataError, match=r"yt holds NaN or inf"):
        cls().fit(Xs, ys, Xt, np.where(np.arange(20) == 2, np.nan, 1.0))


def test_unlabelled_methods_ignore_yt():
    for cls in (ImportanceWeighting, KMM):
        cls().fit(XS, YS_CLS, XT)  # no yt
        cls().fit(XS, YS_CLS, XT, yt=np.array(["whatever"] * 20))


def test_regression_method_rejects_class_labels():
    with pytest.raises(DataError, match=r"TrAdaBoostR2 is a regression method but ys holds class labels"):
        TrAdaBoostR2().fit(XS, np.where(YS_CLS == 1, "yes", "no"), XT, YT_REG)
    with pytest.raises(DataError, match=r"TrAdaBoostR2 is a regression method but yt holds class labels"):
        TrAdaBoostR2().fit(XS, YS_REG, XT, np.array(["a", "b"] * 10, dtype=object))
    # same for a weighting method with a regressor
    with pytest.raises(DataError, match=r"KMM is a regression method but ys holds class labels"):
        KMM(estimator=LinearRegression()).fit(XS, np.where(YS_CLS == 1, "yes", "no"), XT)


@pytest.mark.parametrize("cls", CLASSIFIERS)
def test_classifier_rejects_continuous_target(cls):
    with pytest.raises(DataError, match=rf"{cls.__name__} is a classification method but ys is continuous"):
        cls().fit(XS, YS_REG, XT, YT_CLS)


def test_classifier_rejects_continuous_target_labels_and_unknown_classes():
    with pytest.raises(DataError, match=r"TrAdaBoost is a classification method but yt is continuous"):
        TrAdaBoost().fit(XS, YS_CLS, XT, YT_REG)
    with pytest.raises(DataError, match=r"yt holds classes that are not in the source labels ys: \[7\]"):
        TrAdaBoost().fit(XS, YS_CLS, XT, np.where(np.arange(20) == 0, 7, YT_CLS))
    with pytest.raises(DataError, match=r"ys holds a single class"):
        TrAdaBoost().fit(XS, np.zeros(40, int), XT, np.zeros(20, int))
    with pytest.raises(DataError, match=r"ys holds a single class"):
        ImportanceWeighting().fit(XS, np.zeros(40, int), XT)


def test_bad_settings_raise_transferkit_error():
    with pytest.raises(TransferkitError, match=r"KNeighborsClassifier does not accept sample_weight"):
        ImportanceWeighting(estimator=KNeighborsClassifier()).fit(XS, YS_CLS, XT)
    with pytest.raises(TransferkitError, match=r"kernel must be 'rbf', 'laplacian' or 'linear'; got 'poly'"):
        KMM(kernel="poly").fit(XS, YS_CLS, XT)
    with pytest.raises(TransferkitError, match=r"leave no feasible weights"):
        KMM(B=0.5, eps=0.1).fit(XS, YS_CLS, XT)
    with pytest.raises(TransferkitError, match=r"n_estimators must be an integer >= 1; got 0"):
        TrAdaBoost(n_estimators=0).fit(XS, YS_CLS, XT, YT_CLS)
    with pytest.raises(TransferkitError, match=r"estimator must be a regressor"):
        TrAdaBoostR2(estimator=DecisionTreeClassifier()).fit(XS, YS_REG, XT, YT_REG)
    with pytest.raises(TransferkitError, match=r"estimator must be a classifier"):
        TrAdaBoost(estimator=DecisionTreeRegressor()).fit(XS, YS_CLS, XT, YT_CLS)
    with pytest.raises(TransferkitError, match=r"clip must be a positive number or None"):
        ImportanceWeighting(clip=0).fit(XS, YS_CLS, XT)
    with pytest.raises(DataError, match=r"at least 2 samples of each domain"):
        ImportanceWeighting().fit(XS, YS_CLS, XT[:1])
    with pytest.raises(DataError, match=r"at least 2\s+labelled target samples"):
        TrAdaBoostR2().fit(XS, YS_REG, XT[:1], YT_REG[:1])


@pytest.mark.parametrize("cls", ALL)
def test_not_fitted(cls):
    model = cls()
    with pytest.raises(NotFittedError, match=rf"this {cls.__name__} is not fitted yet; call fit\(Xs, ys, Xt"):
        model.predict(XT)
    if cls is not TrAdaBoostR2:
        with pytest.raises(NotFittedError, match="not fitted yet"):
            model.predict_proba(XT)


@pytest.mark.parametrize("cls", ALL)
def test_predict_checks_features_and_init_only_stores(cls):
    model = cls()
    assert clone(model).get_params() == model.get_params()  # sklearn rules: __init__ stores, nothing else
    assert not [k for k in vars(model) if k.endswith("_")]
    model.fit(*_args(cls))
    with pytest.raises(DataError, match=rf"X has 2 features but this {cls.__name__} was fitted on 3"):
        model.predict(XT[:, :2])
    with pytest.raises(DataError, match=r"X holds NaN or inf"):
        model.predict(_with_nan(XT))
    assert model.predict(XT).shape == (20,)


@pytest.mark.parametrize("cls", ALL)
def test_same_seed_same_weights_and_none_seed_runs(cls):
    args = _args(cls)
    extra = {"steps": 3, "n_estimators": 4} if cls is TrAdaBoostR2 else {}
    a, b = cls(random_state=3, **extra).fit(*args), cls(random_state=3, **extra).fit(*args)
    assert np.array_equal(a.weights_, b.weights_)
    assert np.array_equal(a.predict(XT), b.predict(XT))
    assert cls(random_state=None, **extra).fit(*args).predict(XT).shape == (20,)


@pytest.mark.parametrize("cls", [ImportanceWeighting, KMM])
def test_pooled_standardisation_makes_units_irrelevant(cls):
    """Both domains are standardised with pooled statistics (never source-only ones): changing a feature's units
    in both domains changes nothing; without the standardisation it does."""
    Xs, ys, Xt, Xte, _ = covariate_shift(0, "classification")
    noise = np.random.default_rng(1)  # a second, uninformative feature whose units will change
    Xs, Xt, Xte = (np.c_[X, noise.normal(size=len(X))] for X in (Xs, Xt, Xte))
    model = cls().fit(Xs, ys, Xt)
    pooled = np.concatenate([Xs, Xt])
    assert np.allclose(model.mean_, pooled.mean(0)) and np.allclose(model.scale_, pooled.std(0))
    assert isinstance(model.estimator_, LogisticRegression)  # no scaler of its own, fitted on the source alone
    units = np.array([1.0] * (Xs.shape[1] - 1) + [1000.0])
    rescaled = cls().fit(Xs * units + 50, ys, Xt * units + 50)
    assert np.allclose(rescaled.weights_, model.weights_, atol=1e-6)
    assert np.array_equal(rescaled.predict(Xte * units + 50), model.predict(Xte))
    raw = cls(standardize=False).fit(Xs * units + 50, ys, Xt * units + 50)
    assert raw.mean_ is None and not np.allclose(raw.weights_, model.weights_, atol=1e-3)
