"""Domain distances: MMD against explicit sums, the median heuristic, proxy A-distance on matched and shifted data."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.errors import ScoreError
from transferkit.transferability import domain_distances, mmd, proxy_a_distance
from transferkit.transferability.domain import median_bandwidth


def _k(a, b, sigma):
    return np.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))


def test_mmd_matches_explicit_sums():
    rng = np.random.default_rng(0)
    S, T = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5
    assert mmd(S, T, kernel="linear") == pytest.approx(np.sum((S.mean(0) - T.mean(0)) ** 2), rel=1e-12)
    m, n = len(S), len(T)
    lin_u = (sum(S[i] @ S[j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
             + sum(T[i] @ T[j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
             - 2 * sum(s @ t for s in S for t in T) / (m * n))
    assert mmd(S, T, kernel="linear", unbiased=True) == pytest.approx(lin_u, rel=1e-10)
    sigma = 1.3
    kss = [_k(a, b, sigma) for a in S for b in S]
    ktt = [_k(a, b, sigma) for a in T for b in T]
    kst = [_k(a, b, sigma) for a in S for b in T]
    biased = np.mean(kss) + np.mean(ktt) - 2 * np.mean(kst)
    assert mmd(S, T, bandwidth=sigma) == pytest.approx(biased, rel=1e-10)
    unbiased = (np.sum(kss) - m) / (m * (m - 1)) + (np.sum(ktt) - n) / (n * (n - 1)) - 2 * np.mean(kst)
    assert mmd(S, T, bandwidth=sigma, unbiased=True) == pytest.approx(unbiased, rel=1e-10)
    # median heuristic: the median distance between distinct pooled samples
    P = np.concatenate([S, T])
    dists = [np.linalg.norm(P[i] - P[j]) for i in range(len(P)) for j in range(i + 1, len(P))]
    assert median_bandwidth(P) == pytest.approx(np.median(dists), rel=1e-10)
    assert mmd(S, T) == pytest.approx(mmd(S, T, bandwidth=np.median(dists)), rel=1e-10)


def test_distances_grow_with_the_shift():
    rng = np.random.default_rng(1)
    S = rng.standard_normal((200, 10))
    same = rng.standard_normal((200, 10))
    near = rng.standard_normal((200, 10)) + 0.3
    far = rng.standard_normal((200, 10)) + 3.0
    d_same, d_near, d_far = (domain_distances(S, T) for T in (same, near, far))
    for key in ("mmd_linear", "mmd_gaussian", "proxy_a_distance"):
        assert d_same[key] < d_near[key] < d_far[key], key
    assert d_same["proxy_a_distance"] < 0.3 and d_far["proxy_a_distance"] == pytest.approx(2.0)
    assert abs(mmd(S, same, unbiased=True)) < 0.01
    assert d_far["mmd_linear"] == pytest.approx(90.0, rel=0.1)  # |shift|^2 = 10 * 3^2
    assert 0 <= proxy_a_distance(S, same) <= 2


def test_domain_errors():
    S = np.zeros((5, 3))
    with pytest.raises(ScoreError, match="3-d but target features 4-d"):
        mmd(S, np.zeros((5, 4)))
    bad = np.ones((5, 3))
    bad[2, 0] = np.nan
    with pytest.raises(ScoreError, match="target features hold NaN"):
        proxy_a_distance(S, bad)
    with pytest.raises(ScoreError, match="source has 1 samples"):
        mmd(S[:1], S)
    with pytest.raises(ScoreError, match="kernel must be"):
        mmd(S, S, kernel="laplace")
