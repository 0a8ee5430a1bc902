"""Alignment losses against hand computations; zero for identical inputs; the gradient reversal layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.adapt.losses import (coral_loss, dann_schedule, entropy, grad_reverse, jmmd, mk_mmd, mmd,
                                      sliced_wasserstein)


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def test_mmd_matches_a_hand_computation():
    s, t = _t([[0.0], [1.0]]), _t([[3.0]])
    # kernel exp(-d^2 / 2): K_ss = [[1, e^-.5], [e^-.5, 1]], K_tt = [[1]], K_st = [e^-4.5, e^-2]
    want = (2 + 2 * math.exp(-0.5)) / 4 + 1 - 2 * (math.exp(-4.5) + math.exp(-2.0)) / 2
    assert float(mmd(s, t, bandwidth=2.0)) == pytest.approx(want, rel=1e-12)


def test_losses_are_zero_for_identical_inputs_and_positive_for_shifted_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = x + 2.0
    for fn in (mmd, mk_mmd, coral_loss, lambda a, b: jmmd([a], [b]), sliced_wasserstein):
        assert abs(float(fn(x, x.clone()))) < 1e-10
    assert float(mmd(x, y)) > 0.1 and float(mk_mmd(x, y)) > 0.1
    assert float(sliced_wasserstein(x, y)) > 0.5
    assert float(coral_loss(x, 3 * x)) > 0 and float(coral_loss(x, y)) == pytest.approx(0.0, abs=1e-10)  # covariance only


def test_coral_loss_by_hand():
    s = _t([[1.0, 0.0], [-1.0, 0.0]])  # covariance [[2, 0], [0, 0]]
    t = _t([[0.0, 1.0], [0.0, -1.0]])  # covariance [[0, 0], [0, 2]]
    assert float(coral_loss(s, t)) == pytest.approx((4 + 4) / (4 * 4))


def test_jmmd_is_the_product_kernel_mmd():
    g = torch.Generator().manual_seed(1)
    a1, b1 = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    a2, b2 = torch.rand(6, 2, generator=g, dtype=torch.float64), torch.rand(5, 2, generator=g, dtype=torch.float64)
    from transferkit.adapt.losses import _multi_bandwidths, gaussian_kernel

    bw1, bw2 = _multi_bandwidths(a1, b1, 1, 2.0), _multi_bandwidths(a2, b2, 1, 2.0)

    def k(x, y):
        return gaussian_kernel(x[0], y[0], bw1) * gaussian_kernel(x[1], y[1], bw2)

    want = k((a1, a2), (a1, a2)).mean() + k((b1, b2), (b1, b2)).mean() - 2 * k((a1, a2), (b1, b2)).mean()
    assert float(jmmd([a1, a2], [b1, b2], n_kernels=1)) == pytest.approx(float(want), rel=1e-12)


def test_sliced_wasserstein_of_a_shift_is_the_projected_shift():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sw = float(sliced_wasserstein(x, x + d, n_projections=500, generator=g1))
    theta = torch.randn(3, 500, generator=g2).double()
    theta = theta / theta.norm(dim=0, keepdim=True)
    assert sw == pytest.approx(float((theta[0] ** 2).mean()), rel=1e-6)  # E[(theta . d)^2]


def test_gradient_reversal_reverses_and_scales_the_gradient_numerically():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64)
    (grad_reverse(x, 0.7) @ w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w.expand(4, 3))
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)  # identity forward
    # finite differences of the forward pass agree with the *un*reversed gradient
    f = lambda z: float((grad_reverse(z, 0.7) @ w).sum())  # noqa: E731
    e = torch.zeros_like(x)
    e[0, 1] = 1e-6
    assert (f(x.detach() + e) - f(x.detach())) / 1e-6 == pytest.approx(float(w[1]), rel=1e-5)


def test_dann_schedule_and_entropy():
    assert dann_schedule(0.0) == 0.0 and dann_schedule(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert float(entropy(torch.zeros(3, 4))) == pytest.approx(math.log(4))
    assert float(entropy(torch.tensor([[100.0, 0.0]]))) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff([dann_schedule(p) for p in np.linspace(0, 1, 11)]) > 0)
