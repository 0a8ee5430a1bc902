"""Each loss weighting against a hand computation of one step (two or three tasks whose losses are simple functions
of one shared parameter vector, so every gradient is known in closed form)."""

from __future__ import annotations

import math

import pytest
import torch

from transferkit.multitask import WEIGHTINGS, WeightingStep, create_weighting


def _losses(W: torch.Tensor) -> torch.Tensor:
    """L1 = (a . W)^2, L2 = 3 (b . W)^2 with a = (1, 0), b = (1, 2): gradients 2 (a.W) a and 6 (b.W) b."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0])
    return torch.stack([(a @ W) ** 2, 3 * (b @ W) ** 2])


def _step(W, epoch=0, step=0, present=(True, True)):
    return WeightingStep(_losses(W), torch.tensor(present), [W], epoch, step)


def _total(terms):
    return sum(terms.values())


def _f(t) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def test_every_weighting_is_registered_with_a_paper():
    assert set(WEIGHTINGS) == {"equal", "normalised", "uncertainty", "gradnorm", "dwa", "random"}
    for name in WEIGHTINGS:
        assert WEIGHTINGS.get(name).paper, name


def test_equal_is_the_plain_sum():
    W = torch.tensor([1.0, 1.0], requires_grad=True)
    wt = create_weighting("equal").setup(["a", "b"], ["classification", "regression"])
    terms = wt(_step(W))
    assert set(terms) == {"task_a", "task_b"}
    assert _f(_total(terms)) == pytest.approx(1.0 + 27.0)
    _total(terms).backward()
    assert W.grad.tolist() == pytest.approx([2 + 18, 36])  # 2 (a.W) a + 6 (b.W) b


def test_normalised_divides_by_the_first_loss():
    W = torch.tensor([1.0, 1.0], requires_grad=True)
    wt = create_weighting("normalised").setup(["a", "b"], ["classification", "regression"])
    assert _f(_total(wt(_step(W)))) == pytest.approx(2.0)  # each task at 1 on its first batch
    W2 = torch.tensor([2.0, 0.5], requires_grad=True)  # L1 = 4, L2 = 3 * 9 = 27
    terms = wt(_step(W2, step=1))
    assert _f(terms["task_a"]) == pytest.approx(4.0 / 1.0)
    assert _f(terms["task_b"]) == pytest.approx(27.0 / 27.0)
    # a task absent from the first batch takes its first loss later
    wt = create_weighting("normalised").setup(["a", "b"], ["classification", "regression"])
    wt(_step(W, present=(True, False)))
    terms = wt(_step(W2, step=1))
    assert _f(terms["task_b"]) == pytest.approx(1.0)


def test_uncertainty_weighting_by_hand():
    W = torch.tensor([1.0, 1.0], requires_grad=True)
    wt = create_weighting("uncertainty").setup(["cls", "reg"], ["classification", "regression"])
    with torch.no_grad():
        wt.log_var.copy_(torch.tensor([0.5, -0.2]))
    terms = wt(_step(W))
    L1, L2 = 1.0, 27.0
    expected = math.exp(-0.5) * L1 + 0.5 * math.exp(0.2) * L2 + 0.5 * (0.5 - 0.2)
    assert _f(_total(terms)) == pytest.approx(expected, rel=1e-6)
    _total(terms).backward()
    # d/ds1 = -exp(-s1) L1 + 1/2 ; d/ds2 = -1/2 exp(-s2) L2 + 1/2
    assert wt.log_var.grad.tolist() == pytest.approx([-math.exp(-0.5) * L1 + 0.5, -0.5 * math.exp(0.2) * L2 + 0.5],
                                                     rel=1e-5)
    assert W.grad.tolist() == pytest.approx([math.exp(-0.5) * 2 + 0.5 * math.exp(0.2) * 18,
                                             0.5 * math.exp(0.2) * 36], rel=1e-5)


def test_gradnorm_by_hand():
    W = torch.tensor([1.0, 1.0], requires_grad=True)
    wt = create_weighting("gradnorm", alpha=1.5).setup(["a", "b"], ["classification", "regression"])
    terms = wt(_step(W))
    # g1 = ||2 (a.W) a|| = 2, g2 = ||6 (b.W) b|| = 18 sqrt(5); w = (1, 1); at step 0, r = 1: targets = mean(G)
    g = torch.tensor([2.0, 18 * math.sqrt(5)])
    target = g.mean()
    assert _f(terms["gradnorm"]) == pytest.approx(float((g - target).abs().sum()), rel=1e-5)
    assert _f(terms["task_a"] + terms["task_b"]) == pytest.approx(28.0)
    _total(terms).backward()
    # the weights learn from L_grad only: d/dw_i |w_i g_i - target_i| = sign(.) g_i
    assert wt.w.grad.tolist() == pytest.approx([-2.0, 18 * math.sqrt(5)], rel=1e-5)
    # the network from sum_i w_i L_i with the weights held constant
    assert W.grad.tolist() == pytest.approx([20.0, 36.0], rel=1e-5)
    # a later step: the loss ratios move the targets, and the weights are renormalised to sum to 2 first
    with torch.no_grad():
        wt.w.copy_(torch.tensor([3.0, 1.0]))
    W2 = torch.tensor([2.0, 0.5], requires_grad=True)  # L1 = 4 (ratio 4), L2 = 27 (ratio 1)
    terms = wt(_step(W2, step=1))
    w = torch.tensor([1.5, 0.5])
    assert wt.w.detach().tolist() == pytest.approx(w.tolist())
    g = torch.tensor([2 * 2.0, 6 * 3.0 * math.sqrt(5)])  # 2 (a.W) ||a||, 6 (b.W) ||b||
    G = w * g
    r = torch.tensor([4.0, 1.0]) / 2.5
    target = G.mean() * r ** 1.5
    assert _f(terms["gradnorm"]) == pytest.approx(float((G - target).abs().sum()), rel=1e-5)
    assert _f(terms["task_a"]) == pytest.approx(1.5 * 4.0)


def test_dwa_by_hand():
    wt = create_weighting("dwa", temperature=2.0).setup(["a", "b"], ["classification", "regression"])

    def run(epoch, l1, l2):
        losses = torch.tensor([l1, l2], requires_grad=True)
        return wt(WeightingStep(losses, torch.tensor([True, True]), [], epoch, 0))

    for epoch, pairs in ((0, [(2.0, 1.0), (4.0, 3.0)]), (1, [(1.0, 2.0), (2.0, 2.0)])):
        for l1, l2 in pairs:
            terms = run(epoch, l1, l2)
            assert _f(terms["task_a"]) == pytest.approx(l1)  # weight 1 in the first two epochs
    # epoch means: (3, 2) then (1.5, 2); r = (0.5, 1); lambda = 2 softmax(r / 2)
    terms = run(2, 1.0, 1.0)
    e = [math.exp(0.25), math.exp(0.5)]
    assert _f(terms["task_a"]) == pytest.approx(2 * e[0] / sum(e), rel=1e-6)
    assert _f(terms["task_b"]) == pytest.approx(2 * e[1] / sum(e), rel=1e-6)
    # the epoch state is in the state dict: a copy restored from it weighs the same
    again = create_weighting("dwa").setup(["a", "b"], ["classification", "regression"])
    again.load_state_dict(wt.state_dict())
    assert again.weights().tolist() == pytest.approx(wt.weights().tolist())


def test_random_weighting_by_hand():
    wt = create_weighting("random").setup(["a", "b", "c"], ["classification"] * 3)
    losses = torch.tensor([1.0, 2.0, 3.0])
    torch.manual_seed(7)
    terms = wt(WeightingStep(losses, torch.tensor([True] * 3), [], 0, 0))
    torch.manual_seed(7)
    w = torch.softmax(torch.randn(3), 0)
    assert [_f(terms[k]) for k in ("task_a", "task_b", "task_c")] == pytest.approx((w * losses).tolist())
    assert float(w.sum()) == pytest.approx(1.0)
