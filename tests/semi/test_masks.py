"""The masking rules of FixMatch, FlexMatch and FreeMatch against hand computations, and FreeMatch's fairness term."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.errors import TransferkitError
from transferkit.semi import SEMI_METHODS, create_semi_objective
from transferkit.semi.masks import FixedThreshold, FlexThreshold, SelfAdaptiveThreshold, scaled_momentum
from transferkit.semi.objective import fairness_term


def test_fixed_threshold_keeps_exactly_the_confident_predictions():
    m = FixedThreshold(0.9)
    m.setup(4, 3)
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8]])
    assert m(probs, torch.arange(4)).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert m.thresholds().tolist() == pytest.approx([0.9] * 3)


def test_flexmatch_thresholds_follow_the_learning_status_with_warmup():
    """Pool of 6 items, 3 classes, tau 0.9. Batch 1 (items 0-3): items 0, 1 confidently class 0, item 2 confidently
    class 1, item 3 unsure. Its mask uses the status *before* the batch (all unused: beta = 0, thresholds 0: every
    item passes). After it: counts [unused 3, c0 2, c1 1, c2 0]; warm-up denominator max(counts) = 3, so
    beta = [2/3, 1/3, 0] and thresholds tau * beta / (2 - beta) = [0.9 * (2/3) / (4/3), 0.9 * (1/3) / (5/3), 0]."""
    m = FlexThreshold(tau=0.9, warmup=True)
    m.setup(6, 3)
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.92, 0.05, 0.03], [0.02, 0.96, 0.02], [0.4, 0.35, 0.25]])
    mask = m(probs, torch.tensor([0, 1, 2, 3]))
    assert mask.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert m.status.tolist() == [0, 0, 1, -1, -1, -1]
    expected = [0.9 * (2 / 3) / (2 - 2 / 3), 0.9 * (1 / 3) / (2 - 1 / 3), 0.0]
    assert m.thresholds().tolist() == pytest.approx(expected)
    # batch 2 (items 3, 4): item 3 is class 1 at 0.5 (threshold 0.18: passes), item 4 class 0 at 0.5 (0.45: passes);
    # item 5 class 0 at 0.4 (below 0.45: masked). None is confident, so the status does not change.
    probs2 = torch.tensor([[0.3, 0.5, 0.2], [0.5, 0.3, 0.2], [0.4, 0.3, 0.3]])
    assert m(probs2, torch.tensor([3, 4, 5])).tolist() == [1.0, 1.0, 0.0]
    assert m.thresholds().tolist() == pytest.approx(expected)
    # without warm-up the denominator is the largest class count (2): beta = [1, 1/2, 0]
    n = FlexThreshold(tau=0.9, warmup=False)
    n.setup(6, 3)
    n(probs, torch.tensor([0, 1, 2, 3]))
    assert n.thresholds().tolist() == pytest.approx([0.9 * 1 / 1, 0.9 * 0.5 / 1.5, 0.0])


def test_flexmatch_status_is_updated_from_the_gathered_global_batch():
    """Under DDP the status takes every process's items: the gather hook is honoured."""
    m = FlexThreshold(tau=0.9)
    m.setup(4, 2)
    # another process saw item 3 confidently as class 1: the gather hook appends its picked class, then its index
    others = [torch.tensor([1]), torch.tensor([3])]

    def gather(t):
        return torch.cat([t, others.pop(0).to(t.dtype)])

    m(torch.tensor([[0.97, 0.03]]), torch.tensor([0]), gather)
    assert m.status.tolist() == [0, -1, -1, 1]


def test_freematch_thresholds_match_the_running_means():
    """m = 0.5, 2 classes: start tau = 1/2, p = [1/2, 1/2]. Batch probs [[0.9, 0.1], [0.3, 0.7]]: mean max prob 0.8,
    so tau = 0.5 * 0.5 + 0.5 * 0.8 = 0.65; mean p = [0.6, 0.4], p = [0.55, 0.45]; thresholds tau * p / max p =
    [0.65, 0.65 * 0.45 / 0.55]. The mask is taken after the update: item 0 (0.9 >= 0.65) passes, item 1 (0.7 >=
    0.532) passes; a third item at [0.6, 0.4] would not."""
    m = SelfAdaptiveThreshold(momentum=0.5)
    m.setup(10, 2)
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    mask = m(probs, torch.tensor([0, 1]))
    assert float(m.global_threshold) == pytest.approx(0.65)
    assert m.class_prob.tolist() == pytest.approx([0.55, 0.45])
    assert m.thresholds().tolist() == pytest.approx([0.65, 0.65 * 0.45 / 0.55])
    assert mask.tolist() == [1.0, 1.0]
    assert m.select(torch.tensor([[0.6, 0.4]])).tolist() == [0.0]
    assert m.label_hist.tolist() == pytest.approx([0.5, 0.5])  # one prediction of each class, averaged with 1/2


def test_freematch_momentum_is_scaled_to_the_run_unless_given():
    assert scaled_momentum(2000) == pytest.approx(0.99)
    assert scaled_momentum(100) == pytest.approx(0.9)
    assert scaled_momentum(10 ** 6) == pytest.approx(0.999)
    obj = create_semi_objective("freematch", 50, 4, steps=2000)
    assert obj.mask.momentum == pytest.approx(0.99)
    assert create_semi_objective("freematch", 50, 4, steps=2000, momentum=0.999).mask.momentum == 0.999


def test_fairness_term_matches_numpy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    class_prob = torch.tensor([0.5, 0.3, 0.2])
    hist = torch.tensor([0.4, 0.4, 0.2])
    p = torch.softmax(logits[mask.bool()], 1).numpy()
    h = np.bincount(p.argmax(1), minlength=3) / 3
    tgt = class_prob.numpy() / hist.numpy()
    tgt /= tgt.sum()
    with np.errstate(divide="ignore"):
        inv = np.where(h > 0, 1 / np.where(h > 0, h, 1), 0)
    mean = p.mean(0) * inv
    mean /= mean.sum()
    expected = float((tgt * np.log(mean + 1e-12)).sum())
    assert float(fairness_term(mask, logits, class_prob, hist)) == pytest.approx(expected, rel=1e-5)
    assert float(fairness_term(torch.zeros(4), logits, class_prob, hist)) == 0.0


def test_methods_are_registered_with_their_papers_and_reject_bad_parameters():
    assert set(SEMI_METHODS.names()) >= {"fixmatch", "flexmatch", "freematch"}
    for name in SEMI_METHODS.names():
        assert SEMI_METHODS.get(name).paper
    with pytest.raises(TransferkitError, match="tau=1.5"):
        SEMI_METHODS.create("fixmatch", tau=1.5)
    with pytest.raises(TransferkitError, match="momentum"):
        SEMI_METHODS.create("freematch", momentum=1.0)
    assert math.isclose(SEMI_METHODS.create("flexmatch").mask.tau, 0.95)


def test_flexmatch_warmup_can_end_by_schedule():
    """Pool of 6, 3 classes, tau 0.9, a run of 4 steps with the warm-up ending at half of it (step 2). Batch 1 makes
    items 0, 1 confidently class 0 and item 2 class 1 (counts: unused 3, c0 2, c1 1): after the first step the
    warm-up denominator is the unused count 3 (beta [2/3, 1/3, 0]); after the second (step 2, nothing new) the
    warm-up is over and the denominator is the largest class count 2 (beta [1, 1/2, 0]), as without warm-up."""
    m = FlexThreshold(tau=0.9, warmup=True, warmup_end=0.5)
    m.setup(6, 3, steps=4)
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.92, 0.05, 0.03], [0.02, 0.96, 0.02], [0.4, 0.35, 0.25]])
    m(probs, torch.tensor([0, 1, 2, 3]))
    assert m.thresholds().tolist() == pytest.approx([0.9 * (2 / 3) / (4 / 3), 0.9 * (1 / 3) / (5 / 3), 0.0])
    m(torch.tensor([[0.4, 0.35, 0.25]]), torch.tensor([4]))
    assert m.thresholds().tolist() == pytest.approx([0.9, 0.9 * 0.5 / 1.5, 0.0])
    assert m.config()["warmup_end"] == 0.5
    with pytest.raises(TransferkitError, match="warmup_end"):
        FlexThreshold(warmup_end=1.5)
    with pytest.raises(TransferkitError, match="number of steps"):
        FlexThreshold(warmup_end=0.5).setup(6, 3)


def test_size_aware_flexmatch_compares_rates_of_the_predicted_class_sizes():
    """Pool of 6, 3 classes, tau 0.9. Latest predictions [0, 0, 0, 1, 2, 2], confident (>= 0.9) for items 0, 1
    (class 0) and 3 (class 1): counts sigma = [2, 1, 0], predicted sizes n = [3, 1, 2], rates [2/3, 1, 0].
    Without warm-up beta = rates / max rate = [2/3, 1, 0] (the paper's counts give [1, 1/2, 0]: class 1 is fully
    learnt but small). With warm-up the denominator is max(1, C * unused / N = 3 * 3 / 6 = 1.5)."""
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.92, 0.05, 0.03], [0.5, 0.3, 0.2], [0.02, 0.96, 0.02],
                          [0.3, 0.2, 0.5], [0.2, 0.3, 0.5]])
    expected = {False: [2 / 3, 1.0, 0.0], True: [4 / 9, 2 / 3, 0.0]}
    for warmup, beta in expected.items():
        m = FlexThreshold(tau=0.9, warmup=warmup, size_aware=True)
        m.setup(6, 3)
        m(probs, torch.arange(6))
        assert m.predicted.tolist() == [0, 0, 0, 1, 2, 2]
        assert m.beta.tolist() == pytest.approx(beta)
        assert m.thresholds().tolist() == pytest.approx([0.9 * b / (2 - b) for b in beta])
    paper = FlexThreshold(tau=0.9, warmup=False)
    paper.setup(6, 3)
    paper(probs, torch.arange(6))
    assert paper.beta.tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_size_aware_freematch_scales_by_the_mean_confidence_of_each_predicted_class():
    """m = 0.5, 2 classes, batch [[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]]: global tau = 0.25 + 0.5 * 0.8 = 0.65.
    Class 0 is predicted for items 0 and 2 (mean confidence 0.85), class 1 for item 1 (0.7): class_conf =
    [0.25 + 0.425, 0.25 + 0.35] = [0.675, 0.6], thresholds 0.65 * [1, 0.6 / 0.675]. The paper's class_prob is
    [0.25 + 0.5 * 2/3, 0.25 + 0.5 * 1/3] and gives class 1 the lower 0.65 * (5/12) / (7/12). A batch without class 1
    leaves its confidence as it was."""
    m = SelfAdaptiveThreshold(momentum=0.5, size_aware=True)
    m.setup(10, 2)
    m(torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]]), torch.arange(3))
    assert float(m.global_threshold) == pytest.approx(0.65)
    assert m.class_conf.tolist() == pytest.approx([0.675, 0.6])
    assert m.thresholds().tolist() == pytest.approx([0.65, 0.65 * 0.6 / 0.675])
    assert m.class_prob.tolist() == pytest.approx([7 / 12, 5 / 12])  # kept for the fairness term
    m(torch.tensor([[0.9, 0.1]]), torch.tensor([3]))
    assert m.class_conf.tolist() == pytest.approx([0.675 * 0.5 + 0.45, 0.6])
    paper = SelfAdaptiveThreshold(momentum=0.5)
    paper.setup(10, 2)
    paper(torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]]), torch.arange(3))
    assert paper.thresholds().tolist() == pytest.approx([0.65, 0.65 * 5 / 7])


def test_softmatch_weights_are_a_gaussian_truncated_at_the_running_mean_confidence():
    """SoftMatch, m = 0.5, n_sigma 2, 3 classes: mu_0 = 1/3, var_0 = 1. Batch confidences [0.9, 0.6, 0.4, 0.5]:
    mean 0.6, unbiased variance ((0.3^2 + 0 + 0.2^2 + 0.1^2) / 3) = 0.14 / 3; mu_1 = (1/3 + 0.6) / 2,
    var_1 = (1 + 0.14 / 3) / 2; weight 1 at or above mu_1, else exp(-(conf - mu_1)^2 / (2 var_1 / 4))."""
    from transferkit.semi.masks import TruncatedGaussian

    m = TruncatedGaussian(momentum=0.5, n_sigma=2.0)
    m.setup(10, 3, steps=100)
    assert float(m.mu) == pytest.approx(1 / 3) and float(m.var) == pytest.approx(1.0)
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    w = m(probs, torch.arange(4)).numpy()
    mu, var = (1 / 3 + 0.6) / 2, (1 + 0.14 / 3) / 2
    conf = np.array([0.9, 0.6, 0.4, 0.5])
    want = np.where(conf >= mu, 1.0, np.exp(-(conf - mu) ** 2 / (2 * var / 4)))
    np.testing.assert_allclose(w, want, rtol=1e-5)
    assert float(m.mu) == pytest.approx(mu) and float(m.var) == pytest.approx(var, rel=1e-5)
    assert m.thresholds().tolist() == pytest.approx([mu] * 3)
    assert m.select(probs).tolist() == [1.0, 1.0, 0.0, 1.0]  # full weight: conf >= mu_1 = 0.467
    obj = create_semi_objective("softmatch", 10, 3, 1000)
    assert obj.mask.momentum == pytest.approx(scaled_momentum(1000))
    assert SEMI_METHODS.get("softmatch").paper.startswith("Chen et al., SoftMatch")
    with pytest.raises(TransferkitError, match="n_sigma must be > 0"):
        TruncatedGaussian(n_sigma=0)


@pytest.mark.parametrize("method,params,needle", [
    ("softmatch", {"n_sigma": "wide"}, "n_sigma must be a number > 0, got 'wide'"),
    ("freematch", {"momentum": "fast"}, "momentum must be a number in [0, 1), got 'fast'"),
    ("fixmatch", {"tau": None}, "tau must be a number in (0, 1], got None"),
    ("flexmatch", {"warmup_end": "half"}, "warmup_end must be a share in [0, 1], got 'half'"),
    ("softmatch", {"lambda_u": -1.0}, "lambda_u is the weight of a loss term, a number >= 0; got -1.0"),
    ("freematch", {"fairness": float("nan")}, "fairness is the weight of a loss term, a number >= 0; got nan")])
def test_a_methods_bad_parameters_fail_with_the_setting_named(method, params, needle):
    """A method's parameters (Python's ``strategy_params`` or a config) that are not numbers, or negative loss
    weights, raise a TransferkitError naming the setting, not a bare ValueError or a silently inverted loss."""
    with pytest.raises(TransferkitError) as e:
        create_semi_objective(method, 10, 3, 100, **params)
    assert needle in str(e.value)
