"""Round s6 of SimTrans: the ``claimed`` drop rule (leave out only the low-weighted items another novel class claims,
train the unclaimed ones as plain training does) and the graph term on the classifier's outputs; each against a hand
computation and on toy sets where the rule must tell flips from outliers that resemble no class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.weakshot.conftest import fake_step, toy_noisy_set
from transferkit.errors import TransferkitError
from transferkit.weakshot import WeakShotConfig
from transferkit.weakshot.objectives import GraphRegularizer, graph_term
from transferkit.weakshot.similarity import PrecomputedSimilarity
from transferkit.weakshot.simtrans import claimed, drop_items, similarity_weights


def _toy(seed: int, outliers_near: bool):
    """3 classes of 20 noisy items: 12 clean, 4 flips from the next class, 4 outliers. Similarity 0.8 within a true
    class, 0.2 between classes; the outliers resemble no class (0.1 to everything, 0.3 to each other) or, with
    ``outliers_near``, the class after the next (0.8 to its clean items: as a flip would); noise of +-0.05."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 20)
    kind = np.tile(np.r_[np.zeros(12), np.ones(4), 2 * np.ones(4)], 3).astype(int)  # 0 clean, 1 flip, 2 outlier
    true = np.where(kind == 1, (y + 1) % 3, np.where(kind == 2, -1, y))
    return toy_noisy_set(y, true, kind == 2, rng, near=(y + 2) % 3 if outliers_near else None), kind


def test_claimed_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    w = np.array([1.2, 1.1, 0.7, 1.3, 1.0, 0.7])  # cores (weight >= the class median): {0, 1} and {3, 4}
    P = np.array([[0, .9, .3, .2, .1, .3],
                  [.9, 0, .2, .3, .2, .2],
                  [.3, .2, 0, .6, .9, .8],  # item 2 looks like class 1
                  [.2, .3, .6, 0, .8, .7],
                  [.1, .2, .9, .8, 0, .9],
                  [.3, .2, .8, .7, .9, 0]])
    # claim = the mean similarity to the other class's core: item 0 (.2 + .1) / 2 = .15, item 1 .25, item 2 .75;
    # class 0's core claims {.15, .25}: median .2, so items 1 and 2 are claimed, item 0 not.
    # class 1: item 3 (.2 + .3) / 2 = .25, item 4 .15, item 5 .25; core {3, 4}: median .2, so 3 and 5 are claimed.
    assert claimed(P, y, w).tolist() == [False, True, True, True, False, True]
    # drop_items with the flags: the lowest third of each class (items 2 and 5) dropped where claimed (both),
    # the unclaimed items (0 and 4) raised to at least 1, then mean 1 per class
    got = drop_items(w, y, 1 / 3, "claimed", confusable=claimed(P, y, w))
    assert got.tolist() == pytest.approx([1.2 / 0.7667, 1.1 / 0.7667, 0, 1.3 / 0.7667, 1.0 / 0.7667, 0], rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_claimed_drops_the_flips_and_trains_far_outliers_like_plain(seed):
    novel, kind = _toy(seed, outliers_near=False)
    w = similarity_weights(novel, "contrast", drop=0.4, drop_rule="claimed")
    assert (w[kind == 1] == 0).all()  # every flip left out
    assert (w[kind == 2] > 0).all() and (w[kind == 0] > 0).all()
    soft = similarity_weights(novel, "contrast")
    for c in range(3):  # the far outliers get the floor (the class mean before renormalisation), not a low weight
        m = novel.y == c
        assert w[m].mean() == pytest.approx(1.0)
        far = w[m & (kind == 2)]
        assert far == pytest.approx(np.full(4, far[0]))  # all at the floor
        assert (far > 0.9).all() and (far > 1.3 * soft[m & (kind == 2)]).all()
    lowest = similarity_weights(novel, "contrast", drop=0.4, drop_rule="lowest")
    assert (lowest[kind == 2] == 0).sum() >= 6  # the plain rule drops the far outliers too


@pytest.mark.parametrize("seed", [0, 1])
def test_claimed_drops_outliers_that_look_like_another_class(seed):
    novel, kind = _toy(seed, outliers_near=True)
    w = similarity_weights(novel, "contrast", drop=0.4, drop_rule="claimed")
    assert (w[kind > 0] == 0).all() and (w[kind == 0] > 0).all()


def test_the_graph_term_on_outputs_matches_a_hand_computation_and_ignores_the_features():
    P = np.random.default_rng(0).uniform(0, 1, (6, 6))
    P = 0.5 * (P + P.T)
    sim = PrecomputedSimilarity(P)
    Z = np.arange(6, dtype=np.float32)[:, None]
    term = GraphRegularizer(sim, Z, alpha=2.0, mu=4.0, on="outputs")
    idx = torch.tensor([4, 0, 2, 5])
    logits = torch.randn(4, 3)
    got = float(term(fake_step(idx, torch.tensor([0, 1, 0, 1]), torch.randn(4, 5), logits))["graph"])
    A = (np.exp(4 * P[np.ix_(idx.numpy(), idx.numpy())]) - 1) / (np.exp(4) - 1)
    p = torch.softmax(logits, 1).numpy()
    D = ((p[:, None] - p[None]) ** 2).sum(-1)
    assert got == pytest.approx(2.0 * float((A * D).mean()), rel=1e-4)
    again = float(term(fake_step(idx, torch.tensor([0, 1, 0, 1]), 100 * torch.randn(4, 5), logits))["graph"])
    assert again == pytest.approx(got, rel=1e-6)  # the features do not enter
    assert got <= 2.0 * 2.0  # squared distances between probability vectors are at most 2


def test_the_config_passes_graph_on_and_rejects_bad_values():
    Z = np.zeros((4, 1), np.float32)
    sim = PrecomputedSimilarity(np.eye(4))
    assert graph_term(sim, Z, WeakShotConfig(graph_on="outputs"), 10).on == "outputs"
    assert graph_term(sim, Z, WeakShotConfig(), 10).config()["on"] == WeakShotConfig().graph_on
    with pytest.raises(TransferkitError, match="graph_on"):
        WeakShotConfig(graph_on="logits").validate()
    with pytest.raises(TransferkitError, match="graph term acts on"):
        GraphRegularizer(sim, Z, on="logits")
    with pytest.raises(TransferkitError, match="sim_drop_rule"):
        WeakShotConfig(sim_drop_rule="claim").validate()
