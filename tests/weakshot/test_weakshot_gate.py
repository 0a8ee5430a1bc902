"""Round s8 of SimTrans: the open-set gate. When the items SimTrans's weights suspect are claimed by another novel
class significantly less often than clean-looking items are, the noise is open-set (harmless to plain training) and
SimTrans trains as plain training: every weight 1 and no graph term. Checked against a hand computation, on toy sets
with far outliers (the gate closes) and with flips (it stays open), and end to end through the training loop."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_cli import assert_user_error, tk
from tests.weakshot.conftest import FAST, base_and_similarity, blobs, toy_noisy_set
from transferkit.errors import DataError, TransferkitError
from transferkit.weakshot import WeakShotConfig, WeakShotData, inject_noise, train_novel
from transferkit.weakshot.methods import create_method
from transferkit.weakshot.similarity import PrecomputedSimilarity
from transferkit.weakshot.simtrans import open_set_test, similarity_weights


def _toy(seed: int, noise: str):
    """3 classes of 20 noisy items: 14 clean and 6 noisy. Similarity 0.8 within a true class, 0.2 between classes
    (+-0.05). ``far``: the noisy items resemble no class (0.1 to everything, 0.3 to each other); ``flip``: they are
    items of the next class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 20)
    noisy = np.tile(np.r_[np.zeros(14), np.ones(6)], 3).astype(bool)
    true = np.where(noisy, (y + 1) % 3 if noise == "flip" else -1, y)
    return toy_noisy_set(y, true, noisy if noise == "far" else np.zeros_like(noisy), rng), noisy


def test_open_set_test_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    w = np.array([1.2, 1.1, 0.7, 1.3, 1.0, 0.7])
    P = np.array([[0, .9, .3, .2, .1, .3],
                  [.9, 0, .2, .3, .2, .2],
                  [.3, .2, 0, .6, .9, .8],
                  [.2, .3, .6, 0, .8, .7],
                  [.1, .2, .9, .8, 0, .9],
                  [.3, .2, .8, .7, .9, 0]])
    # the suspects (lowest third of each class): items 2 and 5; claimed (test_claimed_by_hand): 1, 2, 3, 5 -> both
    # suspects claimed: P(X <= 2 | n=2, p=1/2) = 1
    t = open_set_test(P, y, w, 1 / 3)
    assert (t["suspects"], t["claimed"], t["share_claimed"]) == (2, 2, 1.0)
    assert t["p_value"] == pytest.approx(1.0) and not t["open_set"]
    # item 2 made far from class 1 (similarity 0.1 to its core): claim .1 < class 0's core median .2 -> not claimed;
    # item 5's similarities to class 0 lowered too: 1 of 2... make both unclaimed: P(X <= 0 | n=2) = 1/4
    Q = P.copy()
    Q[2, 3:5] = Q[3:5, 2] = 0.1
    Q[5, 0:2] = Q[0:2, 5] = 0.05
    t = open_set_test(Q, y, w, 1 / 3)
    assert (t["suspects"], t["claimed"]) == (2, 0)
    assert t["p_value"] == pytest.approx(0.25) and not t["open_set"]  # two suspects are too few to tell
    assert open_set_test(Q, y, w, 1 / 3, level=0.3)["open_set"]
    assert open_set_test(Q, y, w, 0.0) == {"level": 0.05, "suspects": 0, "claimed": 0, "share_claimed": None,
                                           "p_value": 1.0, "open_set": False}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_closes_on_far_outliers_and_stays_open_on_flips(seed):
    far, _ = _toy(seed, "far")
    w, t = similarity_weights(far, "contrast", drop=0.3, drop_rule="claimed", gate=0.05, return_gate=True)
    # 18 suspects (6 per class), the far outliers: claimed by no class -> p = 2**-18
    assert t["suspects"] == 18 and t["claimed"] == 0 and t["p_value"] == pytest.approx(0.5 ** 18)
    assert t["open_set"] and (w == 1).all()  # plain training
    assert not (similarity_weights(far, "contrast", drop=0.3, drop_rule="claimed") == 1).all()  # without the gate

    flip, noisy = _toy(seed, "flip")
    w, t = similarity_weights(flip, "contrast", drop=0.3, drop_rule="claimed", gate=0.05, return_gate=True)
    assert t["claimed"] == 18 and not t["open_set"]  # every suspect is a flip, claimed by its true class
    assert w == pytest.approx(similarity_weights(flip, "contrast", drop=0.3, drop_rule="claimed"))
    assert (w[noisy] == 0).all()


def test_gate_refuses_bad_levels():
    novel, _ = _toy(0, "far")
    for bad in (-0.1, 1.0, True, "0.05"):
        with pytest.raises(DataError, match="gate must be a test level in \\[0, 1\\)"):
            similarity_weights(novel, drop=0.1, gate=bad)
    with pytest.raises(TransferkitError, match="sim_gate must be a test level in \\[0, 1\\)"):
        WeakShotConfig(sim_gate=1.5).validate()
    with pytest.raises(TransferkitError, match="sim_gate must be a number"):
        WeakShotConfig(sim_gate="high").validate()


def _far_outliers() -> WeakShotData:
    """Blobs (8 base, 4 novel classes); 40 % of the novel items replaced by items of 4 further classes moved far from
    every class (open-set noise)."""
    X, y = blobs(seed=3)
    X[y >= 12] += 12.0
    classes = [f"c{i}" for i in range(16)]
    split = inject_noise(y, classes, classes[:8], classes[8:12], rate=0.4, kind="outlier",
                         outlier_rows=np.flatnonzero(y >= 12), seed=3)
    return WeakShotData(X, split, classes, [], None, "blobs")


def test_gated_simtrans_is_plain_training_through_the_loop():
    wd = _far_outliers()
    base, fit = base_and_similarity(wd)
    fast = WeakShotConfig(**{**FAST.to_dict(), "novel_epochs": 12, "sim_gate": 0.0})
    cfg = WeakShotConfig(**{**fast.to_dict(), "sim_gate": 0.05})
    plain = train_novel(wd, "plain", base, fit.net, cfg, seed=0)
    sim = train_novel(wd, "simtrans", base, fit.net, cfg, seed=0)
    assert sim.gate["open_set"] and sim.gate["p_value"] < 0.05
    assert (sim.weights == 1).all()
    assert np.array_equal(sim.y_pred, plain.y_pred)  # the same training: no weights, no graph term
    assert "gate" in sim.row() and "gate" not in plain.row()
    ungated = train_novel(wd, "simtrans", base, fit.net, fast, seed=0)
    assert ungated.gate is None and not (ungated.weights == 1).all()
    assert create_method("simtrans", cfg).gate == 0.05


def test_cli_refuses_bad_gate(tmp_path):
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--open-set-gate", "1.5"),
                      "--open-set-gate must be in [0, 1); got 1.5")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--drop", "0", "--open-set-gate", "0.05"),
                      "--open-set-gate 0.05 tests the items of the --drop share", "--drop 0 names none")


def test_graph_schedule_always_and_alternate():
    from transferkit.weakshot.objectives import graph_term

    sim = PrecomputedSimilarity(np.eye(4))
    Z = np.arange(4, dtype=np.float32)[:, None]
    always = graph_term(sim, Z, WeakShotConfig(), 40)  # the default since s8
    assert [always.active(e) for e in (0, 1, 19, 39)] == [True] * 4
    alt = graph_term(sim, Z, WeakShotConfig(graph_schedule="alternate"), 40)  # the reference code's
    assert [alt.active(e) for e in (0, 19, 20, 21, 22, 39)] == [False, False, True, False, True, False]
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--graph-schedule", "weekly"),
                      "--graph-schedule must be 'alternate' or 'always' (got 'weekly')")
