"""CORAL, Subspace Alignment and TCA: they help on the shift each is built for, their algebra holds, and bad
input fails with a clear message. Synthetic numpy data with fixed seeds; no backbone, no torch."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferkit.adapt.feature_space import CORAL, TCA, NoAdaptation, SubspaceAlignment
from transferkit.errors import DataError, NotFittedError

METHODS = [CORAL, SubspaceAlignment, TCA, NoAdaptation]


def _plain(Xs, ys, Xt, yt) -> float:
    """No adaptation: standardise on the source, logistic regression on the source, score on the target."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xs, ys)
    return float(clf.score(Xt, yt))


def _zscore(X):
    return (X - X.mean(0)) / X.std(0, ddof=1)


def _rotation(rng, D):
    Q, R = np.linalg.qr(rng.normal(size=(D, D)))
    return Q * np.sign(np.diag(R))


def _small(seed=0, n=40, D=5):
    rng = np.random.default_rng(seed)
    Xs = rng.normal(size=(n, D))
    ys = (Xs[:, 0] > 0).astype(int)
    Xt = rng.normal(size=(n, D)) + 0.5
    return Xs, ys, Xt


def _make(cls, **kw):
    """An instance whose n_components fits the small data of the error tests."""
    if cls is TCA:
        kw.setdefault("n_components", 3)
    return cls(**kw)


# ------------------------------------------------------------------------------------------------------------
# each method on the shift it is built for
# ------------------------------------------------------------------------------------------------------------

def _coral_task(seed):
    """Two Gaussian classes; the target is the source under x -> x S + b with S = Q diag(0.2..5) Q'
    (a random rotation of the axes along which the data is stretched or squeezed) and a random offset b."""
    rng = np.random.default_rng(seed)
    D, n = 8, 500
    mu = np.zeros(D)
    mu[:2] = 1.0

    def blobs():
        y = rng.integers(0, 2, n)
        return rng.normal(size=(n, D)) + np.where(y[:, None] == 1, mu, -mu), y

    Xs, ys = blobs()
    Xt0, yt = blobs()
    Q = _rotation(rng, D)
    S = Q @ np.diag(np.geomspace(0.2, 5.0, D)) @ Q.T
    return Xs, ys, Xt0 @ S + rng.normal(0.0, 3.0, D), yt


def test_coral_beats_no_adaptation_on_a_covariance_shift():
    plain, zonly, coral = [], [], []
    for seed in range(3):
        Xs, ys, Xt, yt = _coral_task(seed)
        plain.append(_plain(Xs, ys, Xt, yt))
        # standardising each domain on its own (CORAL's first step, without the re-colouring)
        zonly.append(float(LogisticRegression(max_iter=2000).fit(_zscore(Xs), ys).score(_zscore(Xt), yt)))
        coral.append(CORAL().fit(Xs, ys, Xt).score(Xt, yt))
    p, z, c = np.mean(plain), np.mean(zonly), np.mean(coral)
    msg = (f"target accuracy, mean of 3 seeds: plain LR {p:.3f} {np.round(plain, 3)}, per-domain z-score LR {z:.3f} "
           f"{np.round(zonly, 3)}, CORAL {c:.3f} {np.round(coral, 3)}")
    print(msg)
    assert c >= p + 0.10, msg
    assert c >= z + 0.01, msg  # the covariance alignment itself helps, not only the standardisation
    assert min(coral) >= 0.85, msg


def _sa_task(seed, theta_deg=70.0):
    """The class lives in a 3-d high-variance subspace B of 20-d features; the target is the source rotated by
    ``theta`` in the 6-d subspace spanned by B and 3 further directions E (each b_i turns towards e_i), so the
    target's signal lies in a different 3-d subspace; isotropic noise is unchanged by the rotation."""
    rng = np.random.default_rng(seed)
    D, k, n = 20, 3, 400
    Q, _ = np.linalg.qr(rng.normal(size=(D, 2 * k)))
    B, E = Q[:, :k], Q[:, k:]
    c, s = np.cos(np.radians(theta_deg)), np.sin(np.radians(theta_deg))
    R = np.eye(D) + (c - 1) * (B @ B.T + E @ E.T) + s * (B @ E.T - E @ B.T)
    assert np.allclose(R @ R.T, np.eye(D)) and np.isclose(np.linalg.det(R), 1.0)

    def draw():
        y = rng.integers(0, 2, n)
        z = rng.normal(size=(n, k)) * np.array([3.0, 2.5, 2.0])
        z[:, 0] = 2.0 * (np.where(y == 1, 1.0, -1.0) + rng.normal(size=n))
        return z @ B.T + rng.normal(size=(n, D)), y

    Xs, ys = draw()
    Xt0, yt = draw()
    return Xs, ys, Xt0 @ R, yt


def test_subspace_alignment_beats_no_adaptation_on_a_subspace_rotation():
    plain, sa = [], []
    for seed in range(3):
        Xs, ys, Xt, yt = _sa_task(seed)
        plain.append(_plain(Xs, ys, Xt, yt))
        sa.append(SubspaceAlignment(n_components=3).fit(Xs, ys, Xt).score(Xt, yt))
    p, a = np.mean(plain), np.mean(sa)
    msg = f"target accuracy, mean of 3 seeds: plain LR {p:.3f} {np.round(plain, 3)}, SA {a:.3f} {np.round(sa, 3)}"
    print(msg)
    assert a >= p + 0.15, msg
    assert min(sa) >= 0.75, msg


_A = np.zeros(12)
_A[:5] = 1.0


def _tca_task(seed, n=300):
    """Two classes apart along a = (1,1,1,1,1,0,...) in 12-d; the target is shifted by 3 along dims 0, 1, 5, 6
    (partly along a, so a classifier trained on the source misreads the target)."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(12)
    shift[[0, 1, 5, 6]] = 3.0

    def draw(offset):
        y = rng.integers(0, 2, n)
        return rng.normal(size=(n, 12)) + np.where(y == 1, 1.0, -1.0)[:, None] * _A + offset, y

    Xs, ys = draw(0.0)
    Xt, yt = draw(shift)
    return Xs, ys, Xt, yt


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_tca_beats_no_adaptation_on_a_mean_shift(kernel):
    plain, tca = [], []
    for seed in range(3):
        Xs, ys, Xt, yt = _tca_task(seed)
        plain.append(_plain(Xs, ys, Xt, yt))
        tca.append(TCA(n_components=3, kernel=kernel).fit(Xs, ys, Xt).score(Xt, yt))
    p, t = np.mean(plain), np.mean(tca)
    msg = (f"target accuracy, mean of 3 seeds: plain LR {p:.3f} {np.round(plain, 3)}, TCA ({kernel}) {t:.3f} "
           f"{np.round(tca, 3)}")
    print(msg)
    assert t >= p + 0.20, msg
    assert min(tca) >= 0.85, msg


# ------------------------------------------------------------------------------------------------------------
# CORAL algebra
# ------------------------------------------------------------------------------------------------------------

def test_coral_matrix_by_hand_on_two_features():
    # both sets have zero mean and equal variances, so after z-scoring cov = correlation:
    # source rho = +1/3, target rho = -1/3
    Xs = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1], [1, 1], [-1, -1]], float)
    Xt = np.array([[1, -1], [-1, 1], [1, 1], [-1, -1], [1, -1], [-1, 1]], float)
    ys = np.array([0, 1, 0, 1, 0, 1])
    m = CORAL(reg=1.0).fit(Xs, ys, Xt)
    assert np.allclose(m.source_cov_, [[1, 1 / 3], [1 / 3, 1]])
    assert np.allclose(m.target_cov_, [[1, -1 / 3], [-1 / 3, 1]])
    # Cs + I has eigenvalues 7/3 on (1,1) and 5/3 on (1,-1); Ct + I the other way round, so
    # A = (Cs+I)^(-1/2) (Ct+I)^(1/2) = sqrt(5/7) uu' + sqrt(7/5) vv'
    p, q = np.sqrt(5 / 7), np.sqrt(7 / 5)
    expected = 0.5 * np.array([[p + q, p - q], [p - q, p + q]])
    assert np.allclose(m.coral_matrix_, expected, atol=1e-12)
    Zs = _zscore(Xs)
    assert np.allclose(m.transform(Xs, domain="source"), Zs @ expected)
    assert np.allclose(m.transform(Xt, domain="target"), _zscore(Xt))
    # covariance of the recoloured source, with the ridge, is the target's with the ridge
    Ys = m.transform(Xs, domain="source")
    assert np.allclose(np.cov(Ys, rowvar=False) + expected.T @ expected, m.target_cov_ + np.eye(2))


def test_coral_recoloured_source_covariance_equals_target_covariance():
    rng = np.random.default_rng(3)
    Xs = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    Xt = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 2.0
    ys = (Xs[:, 0] > np.median(Xs[:, 0])).astype(int)
    reg = 0.5
    m = CORAL(reg=reg).fit(Xs, ys, Xt)
    A, eye = m.coral_matrix_, np.eye(6)
    Cs = np.cov(_zscore(Xs), rowvar=False)
    Ct = np.cov(_zscore(Xt), rowvar=False)
    assert np.allclose(A.T @ (Cs + reg * eye) @ A, Ct + reg * eye, atol=1e-10)
    Ys = m.transform(Xs, domain="source")
    assert np.allclose(np.cov(Ys, rowvar=False) + reg * A.T @ A, Ct + reg * eye, atol=1e-10)


def test_coral_is_identity_when_domains_coincide():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 5)) @ rng.normal(size=(5, 5)) + 3.0
    y = (X[:, 1] > np.median(X[:, 1])).astype(int)
    m = CORAL().fit(X, y, X)
    assert np.allclose(m.coral_matrix_, np.eye(5), atol=1e-10)
    assert np.allclose(m.transform(X, domain="source"), _zscore(X), atol=1e-10)
    assert np.allclose(m.transform(X, domain="source"), m.transform(X, domain="target"), atol=1e-10)


# ------------------------------------------------------------------------------------------------------------
# SA and TCA algebra
# ------------------------------------------------------------------------------------------------------------

def test_sa_alignment_is_identity_when_domains_coincide():
    rng = np.random.default_rng(5)
    scales = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    Q = _rotation(rng, 6)
    X = (rng.normal(size=(300, 6)) * scales) @ Q
    y = (X[:, 0] > 0).astype(int)
    m = SubspaceAlignment(n_components=3).fit(X, y, X)
    assert m.alignment_matrix_.shape == (3, 3)
    assert np.allclose(m.alignment_matrix_, np.eye(3), atol=1e-10)
    # two independent samples of one distribution: M is the identity up to the sign of each direction
    X2 = (rng.normal(size=(300, 6)) * scales) @ Q
    M = SubspaceAlignment(n_components=3).fit(X, y, X2).alignment_matrix_
    assert np.allclose(np.abs(M), np.eye(3), atol=0.1), np.round(M, 3)
    Ps = m.source_components_
    assert np.allclose(Ps.T @ Ps, np.eye(3), atol=1e-10)


def test_sa_default_components_and_representations():
    Xs, ys, Xt = _small(n=30, D=8)
    m = SubspaceAlignment().fit(Xs, ys, Xt)
    assert m.n_components_ == 8  # min(50, D=8, 29, 29)
    assert m.transform(Xt).shape == (30, 8)
    assert m.transform(Xs, domain="source").shape == (30, 8)
    Zt = _zscore(Xt)
    assert np.allclose(m.transform(Xt), Zt @ m.target_components_)
    assert np.allclose(m.transform(Xs, domain="source"),
                       _zscore(Xs) @ m.source_components_ @ m.source_components_.T @ m.target_components_)


def _mean_gap(a, b):
    """Distance between the two domains' means, relative to the pooled spread."""
    return np.linalg.norm(a.mean(0) - b.mean(0)) / np.sqrt(np.concatenate([a, b]).var(0).sum())


def test_tca_out_of_sample_extension_and_mean_gap():
    Xs, ys, Xt, _ = _tca_task(0, n=150)
    for kernel in ("linear", "rbf"):
        m = TCA(n_components=2, kernel=kernel, max_samples=100).fit(Xs, ys, Xt)
        assert (m.n_source_fit_, m.n_target_fit_) == (100, 100)
        assert m.X_fit_.shape == (200, 12) and m.components_.shape == (200, 2)
        assert np.all(np.diff(m.eigenvalues_) <= 0)
        sq = ((m.X_fit_[:, None, :] - m.X_fit_[None, :, :]) ** 2).sum(-1)
        K = m.X_fit_ @ m.X_fit_.T if kernel == "linear" else np.exp(-m.gamma_ * sq)
        if kernel == "rbf":  # default gamma: median heuristic, 1 / (2 median distance^2)
            med = np.median(np.sqrt(sq[np.triu_indices(200, k=1)]))
            assert np.isclose(m.gamma_, 1 / (2 * med**2))
        # the training samples, pushed through transform (the out-of-sample route), give K W
        raw_fit = m.X_fit_ * m.scale_ + m.mean_
        assert np.allclose(m.transform(raw_fit), K @ m.components_, atol=1e-8)
        # W solves K H K w = lambda (K L K + mu I) w
        n = 200
        H = np.eye(n) - 1.0 / n
        e = np.r_[np.full(100, 1 / 100), np.full(100, -1 / 100)]
        lhs = K @ H @ K @ m.components_
        rhs = (K @ np.outer(e, e) @ K + m.mu * np.eye(n)) @ m.components_ * m.eigenvalues_
        assert np.allclose(lhs, rhs, rtol=1e-6, atol=1e-6 * np.abs(lhs).max())
        # the MMD term brings the domain means together; without it (mu -> inf: kernel PCA) they stay apart
        gap = _mean_gap(m.transform(Xs, domain="source"), m.transform(Xt))
        pca = TCA(n_components=2, kernel=kernel, mu=1e8, max_samples=100).fit(Xs, ys, Xt)
        gap_pca = _mean_gap(pca.transform(Xs, domain="source"), pca.transform(Xt))
        assert gap < 0.3 * gap_pca, (kernel, gap, gap_pca)


# ------------------------------------------------------------------------------------------------------------
# common interface
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", METHODS)
def test_interface_predict_proba_classes_and_yt_ignored(cls):
    Xs, ys, Xt = _small(seed=1, n=60, D=5)
    labels = np.array(["cat", "dog"])[ys]
    m = _make(cls).fit(Xs, labels, Xt)
    assert list(m.classes_) == ["cat", "dog"]
    proba = m.predict_proba(Xt)
    assert proba.shape == (60, 2) and np.allclose(proba.sum(1), 1.0)
    pred = m.predict(Xt)
    assert set(pred) <= {"cat", "dog"}
    assert np.array_equal(pred, m.classes_[proba.argmax(1)])
    # yt is never used: fitting with (even nonsensical) target labels changes nothing
    rng = np.random.default_rng(0)
    m2 = _make(cls).fit(Xs, labels, Xt, yt=rng.integers(0, 5, 60))
    assert np.allclose(m2.predict_proba(Xt), proba)
    # a user-given estimator is cloned, not fitted in place
    est = LogisticRegression(C=0.5)
    m3 = _make(cls, estimator=est).fit(Xs, ys, Xt)
    assert not hasattr(est, "coef_") and hasattr(m3.estimator_, "coef_")


@pytest.mark.parametrize("cls", [CORAL, SubspaceAlignment, TCA])  # NoAdaptation has no setting to validate
def test_init_only_stores_arguments(cls):
    kw = {"reg": -3} if cls is CORAL else {"n_components": 10_000}
    m = cls(**kw)  # no validation yet
    assert m.get_params()[next(iter(kw))] == next(iter(kw.values()))
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(m))
    with pytest.raises(DataError):
        m.fit(*_small())


@pytest.mark.parametrize("cls", METHODS)
def test_not_fitted(cls):
    m = _make(cls)
    X = np.zeros((3, 5))
    for call in (lambda: m.predict(X), lambda: m.predict_proba(X), lambda: m.transform(X)):
        with pytest.raises(NotFittedError, match=rf"{cls.__name__} is not fitted yet; call fit\(Xs, ys, Xt\)"):
            call()


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("case, pattern", [
    ("nan_source", r"Xs holds NaN or inf in 1 of 40 rows \(rows 3\); drop or impute"),
    ("inf_target", r"Xt holds NaN or inf in 2 of 40 rows \(rows 0, 7\)"),
    ("length", r"Xs has 40 rows but ys has 39 labels"),
    ("width", r"Xs has 5 features but Xt has 4"),
    ("empty_target", r"Xt has 0 samples \(shape \(0, 5\)\); at least 2 are needed"),
    ("one_class", r"ys holds 1 class \(1\); at least 2 are needed"),
    ("not_2d", r"Xs must be a 2-d numeric \(samples, features\) array; got shape \(40,\)"),
])
def test_bad_inputs(cls, case, pattern):
    Xs, ys, Xt = _small()
    if case == "nan_source":
        Xs[3, 1] = np.nan
    elif case == "inf_target":
        Xt[0, 0], Xt[7, 2] = np.inf, -np.inf
    elif case == "length":
        ys = ys[:-1]
    elif case == "width":
        Xt = Xt[:, :4]
    elif case == "empty_target":
        Xt = np.empty((0, 5))
    elif case == "one_class":
        ys = np.ones_like(ys)
    elif case == "not_2d":
        Xs = Xs[:, 0]
    with pytest.raises(DataError, match=pattern):
        _make(cls).fit(Xs, ys, Xt)


@pytest.mark.parametrize("cls", METHODS)
def test_bad_predict_input(cls):
    Xs, ys, Xt = _small()
    m = _make(cls).fit(Xs, ys, Xt)
    with pytest.raises(DataError, match=rf"X has 4 features but {cls.__name__} was fitted on 5"):
        m.predict(Xt[:, :4])
    bad = Xt.copy()
    bad[2, 2] = np.nan
    with pytest.raises(DataError, match=r"X holds NaN or inf"):
        m.predict_proba(bad)
    with pytest.raises(DataError, match=r"domain must be 'source' or 'target'; got 'both'"):
        m.transform(Xt, domain="both")


def test_too_many_components():
    Xs, ys, Xt = _small(n=40, D=5)
    with pytest.raises(DataError, match=r"n_components=6 is larger than possible: at most min\(n_features=5, "
                                        r"n_source-1=39, n_target-1=39\) = 5.*pass n_components <= 5"):
        SubspaceAlignment(n_components=6).fit(Xs, ys, Xt)
    with pytest.raises(DataError, match=r"n_components=30 is larger than possible: at most 5 .*n_features=5.*"
                                        r"pass n_components <= 5 or kernel='rbf'"):
        TCA(n_components=30).fit(Xs, ys, Xt)  # a linear kernel on 5 features has at most 5 components
    assert TCA().fit(Xs, ys, Xt).n_components_ == 5  # the default: min(30, what exists)
    with pytest.raises(DataError, match=r"n_components=80 is larger than possible: at most 69 .*40\+30-1 = 69"):
        TCA(n_components=80, kernel="rbf").fit(Xs, ys, Xt[:30])
    with pytest.raises(DataError, match=r"at most 19 .*10\+10-1 = 19"):  # max_samples caps the kernel matrix
        TCA(n_components=20, kernel="rbf", max_samples=10).fit(Xs, ys, Xt[:30])
    with pytest.raises(DataError, match=r"n_components must be a finite integer > 0; got 0"):
        SubspaceAlignment(n_components=0).fit(Xs, ys, Xt)


@pytest.mark.parametrize("make, pattern", [
    (lambda: CORAL(reg=0), r"reg must be a finite number > 0; got 0"),
    (lambda: CORAL(reg=float("nan")), r"reg must be a finite number > 0; got nan"),
    (lambda: TCA(n_components=2, kernel="poly"), r"kernel must be 'linear' or 'rbf'; got 'poly'"),
    (lambda: TCA(n_components=2, mu=-1.0), r"mu must be a finite number > 0; got -1.0"),
    (lambda: TCA(n_components=2, kernel="rbf", gamma=0.0), r"gamma must be a finite number > 0; got 0.0"),
    (lambda: TCA(n_components=2, max_samples=1), r"max_samples must be at least 2"),
    (lambda: TCA(n_components=2.5), r"n_components must be a finite integer > 0; got 2.5"),
])
def test_bad_parameters(make, pattern):
    with pytest.raises(DataError, match=pattern):
        make().fit(*_small())


@pytest.mark.parametrize("cls", METHODS)
def test_default_classifier_sees_pooled_standardised_mapped_features(cls):
    """The default logistic regression gets the mapped features standardised with mapped source and mapped target
    pooled (a scaler fitted on the mapped source alone would re-scale the target by source statistics)."""
    Xs, ys, Xt = _small(seed=2, n=60, D=5)
    m = _make(cls).fit(Xs, ys, Xt)
    M = np.vstack([m.transform(Xs, domain="source"), m.transform(Xt, domain="target")])
    assert np.allclose(m.output_mean_, M.mean(0)) and np.allclose(m.output_scale_, M.std(0))
    assert isinstance(m.estimator_, LogisticRegression)
    ref = m.estimator_.predict_proba((m.transform(Xt) - m.output_mean_) / m.output_scale_)
    assert np.allclose(m.predict_proba(Xt), ref)
    user = _make(cls, estimator=LogisticRegression()).fit(Xs, ys, Xt)
    assert user.output_mean_ is None
    assert np.allclose(user.predict_proba(Xt), user.estimator_.predict_proba(user.transform(Xt)))
