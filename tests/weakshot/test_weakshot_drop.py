"""Which of a class's items SimTrans leaves out: only the significantly confusable ones (flips) or the low component
of a two-component mixture of the weights; each against a hand computation and on a toy set of flips and
outliers where the rule must rank the noisy items below the clean ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.errors import TransferkitError
from transferkit.weakshot import NovelSet, WeakShotConfig, weight_auc
from transferkit.weakshot.methods import create_method
from transferkit.weakshot.similarity import PrecomputedSimilarity
from transferkit.weakshot.simtrans import confusable, drop_items, low_component, similarity_weights


def _flips_and_outliers(seed: int):
    """3 classes of 20 noisy items: 12 clean, 4 flips from the next class, 4 outliers that resemble no class.
    Similarity 0.8 within a true class, 0.2 otherwise, plus uniform noise of +-0.1."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 20)
    kind = np.tile(np.r_[np.zeros(12), np.ones(4), 2 * np.ones(4)], 3).astype(int)  # 0 clean, 1 flip, 2 outlier
    true = np.where(kind == 1, (y + 1) % 3, np.where(kind == 2, -1, y))
    P = np.where((true[:, None] == true[None, :]) & (true[:, None] >= 0), 0.8, 0.2) + rng.uniform(-.1, .1, (60, 60))
    np.fill_diagonal(P, 1.0)
    return NovelSet(np.arange(60, dtype=np.float32)[:, None], y, PrecomputedSimilarity(P)), kind


def test_confusable_is_a_welch_test_of_the_other_class_against_the_own_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    P = np.array([[0, .9, .3, .2, .1, .3],
                  [.9, 0, .2, .2, .2, .2],
                  [.3, .2, 0, .6, .9, .8],  # item 2 looks like class 1
                  [.2, .2, .6, 0, .8, .7],
                  [.1, .2, .9, .8, 0, .9],
                  [.3, .2, .8, .7, .9, 0]])
    # item 2 by hand: its own class (itself left out) {0, 1}: .3, .2; class 1: .6, .9, .8
    own, other = np.array([.3, .2]), np.array([.6, .9, .8])
    t = (other.mean() - own.mean()) / np.sqrt(other.var(ddof=1) / 3 + own.var(ddof=1) / 2)
    assert t == pytest.approx(5.0964, abs=1e-3)
    assert confusable(P, y, z=t - 0.01).tolist() == [False, False, True, False, False, False]
    assert not confusable(P, y, z=t + 0.01).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusable_drops_the_flips_and_keeps_outliers_that_resemble_no_class(seed):
    novel, kind = _flips_and_outliers(seed)
    w = similarity_weights(novel, "contrast", drop=0.4, drop_rule="confusable")
    assert (w[kind == 1] == 0).all()  # every flip left out
    assert (w[kind == 0] > 0).all() and (w[kind == 2] > 0).all()  # clean items and outliers kept (soft weights)
    assert weight_auc(w, kind == 0) > 0.9  # the outliers still weigh less than the clean items
    lowest = similarity_weights(novel, "contrast", drop=0.4, drop_rule="lowest")
    assert (lowest[kind == 2] == 0).sum() > 6  # the plain rule drops the outliers too
    for c in range(3):
        assert w[novel.y == c].mean() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_mixture_rule_drops_the_noisy_component_and_no_clean_item(seed):
    novel, kind = _flips_and_outliers(seed)
    w = similarity_weights(novel, "contrast", drop=0.5, drop_rule="mixture")
    assert (w[kind > 0] == 0).all() and (w[kind == 0] > 0).all()
    assert weight_auc(w, kind == 0) == 1.0
    capped = similarity_weights(novel, "contrast", drop=0.2, drop_rule="mixture")  # at most 4 of each class's 20
    assert ((capped == 0).reshape(3, 20).sum(1) == 4).all()


def test_low_component_by_hand_and_on_values_without_two_groups():
    v = np.r_[np.full(6, 1.2), np.full(3, 0.3)] + np.linspace(0, 0.01, 9)
    assert low_component(v).tolist() == [False] * 6 + [True] * 3
    assert not low_component(np.ones(8)).any()
    assert not low_component(np.array([0.1, 2.0, 1.0])).any()  # too few to fit two components
    y = np.zeros(9, int)
    want = [1.5] * 6 + [0.0] * 3  # mean 1 over the class
    assert drop_items(v, y, 0.5, "mixture").tolist() == pytest.approx(want, rel=1e-2)


def test_the_config_passes_the_drop_rule_and_rejects_bad_ones():
    m = create_method("simtrans", WeakShotConfig(sim_drop=0.4, sim_drop_rule="confusable"))
    assert m.drop_rule == "confusable"
    novel, kind = _flips_and_outliers(0)  # the method's weights apply the rule: the outliers kept, the flips dropped
    w = m.weights(novel)
    np.testing.assert_array_equal(w, similarity_weights(novel, "contrast", drop=0.4, drop_rule="confusable"))
    assert (w[kind == 2] > 0).all() and (w[kind == 1] == 0).all()
    with pytest.raises(TransferkitError, match="sim_drop_rule"):
        WeakShotConfig(sim_drop_rule="median").validate()
    with pytest.raises(TransferkitError, match="sim_drop=0 leaves none out"):
        WeakShotConfig(sim_drop=0.0, sim_drop_rule="mixture").validate()
    WeakShotConfig(sim_drop=0.0).validate()  # no drop with the default rule: the paper's setting
    with pytest.raises(TransferkitError, match=r"eye must be a number \(got None\); sim_drop must be a number"):
        WeakShotConfig(sim_drop="0.1", eye=None).validate()  # not a bare TypeError from the range checks
    novel, _ = _flips_and_outliers(0)
    with pytest.raises(TransferkitError, match="drop_rule must be one of"):
        similarity_weights(novel, "contrast", drop=0.2, drop_rule="median")
    with pytest.raises(TransferkitError, match="needs each item's flag"):
        drop_items(np.ones(4), np.zeros(4, int), 0.5, "confusable")


def test_a_precomputed_similarity_refuses_matrices_and_items_that_do_not_fit():
    with pytest.raises(TransferkitError, match=r"square \(N, N\) matrix.*got shape \(2, 3\)"):
        PrecomputedSimilarity(np.zeros((2, 3)))
    with pytest.raises(TransferkitError, match="NaN or inf"):
        PrecomputedSimilarity(np.array([[0.0, np.nan], [np.nan, 0.0]]))
    sim = PrecomputedSimilarity(np.array([[0.0, 0.3], [0.3, 0.0]]))
    np.testing.assert_allclose(sim.matrix(torch.tensor([[1.0], [0.0]])).numpy(), [[0.0, 0.3], [0.3, 0.0]], rtol=1e-6)
    with pytest.raises(TransferkitError, match="similarity of 2 items.*rows 0..5"):
        sim.matrix(torch.tensor([[0.0], [5.0]]))
