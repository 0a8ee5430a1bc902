"""SimTrans's similarity blended with the calibrated cosine of the frozen features, the weights re-estimated from
weighted classes, and the lowest-weighted items dropped: each against a hand computation or a real effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.weakshot.conftest import blobs, fake_step
from transferkit.errors import TransferkitError
from transferkit.weakshot import NovelSet, WeakShotConfig, weight_auc
from transferkit.weakshot.methods import create_method
from transferkit.weakshot.objectives import GraphRegularizer
from transferkit.weakshot.similarity import BlendedSimilarity, CosinePrior, SimilarityNet
from transferkit.weakshot.simtrans import drop_lowest, similarity_weights
from tests.weakshot.test_weakshot_simtrans import _FixedSimilarity


def test_the_cosine_prior_is_a_calibrated_sigmoid_of_the_centred_cosine_and_transfers_to_unseen_classes():
    from sklearn.metrics import roc_auc_score

    X, y = blobs(n_classes=12, per_class=40, dim=8, spread=1.0, seed=3)
    base = y < 8
    prior = CosinePrior.fit(X[base], y[base], seed=0)
    assert prior.a > 0  # a larger cosine means more likely the same class
    # by hand on two items
    u = X[[1, 300]] - X[base].mean(0)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos = float(u[0] @ u[1])
    got = prior.matrix(torch.as_tensor(X[[1]]), torch.as_tensor(X[[300]]))
    assert float(got[0, 0]) == pytest.approx(1 / (1 + np.exp(-(prior.a * cos + prior.b))), rel=1e-4)
    # calibrated: same and different base pairs sit on either side of 0.5 on average
    P = prior.matrix(torch.as_tensor(X[base])).numpy()
    same = y[base][:, None] == y[base][None, :]
    off = ~np.eye(len(P), dtype=bool)
    assert P[same & off].mean() > 0.5 > P[~same].mean()
    # novel classes it never saw: pairs ranked far above chance
    Q = prior.matrix(torch.as_tensor(X[~base])).numpy()
    s = (y[~base][:, None] == y[~base][None, :])
    iu = np.triu_indices(len(Q), 1)
    assert roc_auc_score(s[iu], Q[iu]) > 0.85
    with pytest.raises(TransferkitError, match="at least 2 classes"):
        CosinePrior.fit(X[:10], np.zeros(10))


def test_the_blend_mixes_the_two_probabilities_and_the_graph_term_reads_it():
    torch.manual_seed(0)
    X, y = blobs(n_classes=4, per_class=10, dim=6, seed=1)
    net = SimilarityNet(6, hidden=8).eval()
    prior = CosinePrior.fit(X, y)
    x = torch.as_tensor(X[:7])
    blend = BlendedSimilarity(net, prior, 0.3).eval()
    want = 0.3 * net.matrix(x) + 0.7 * prior.matrix(x)
    assert torch.allclose(blend.matrix(x), want, atol=1e-6)
    assert torch.allclose(BlendedSimilarity(net, prior, 1.0).matrix(x), net.matrix(x), atol=1e-6)
    assert torch.allclose(BlendedSimilarity(net, prior, 0.0).matrix(x), prior.matrix(x), atol=1e-6)
    with pytest.raises(TransferkitError, match="blend must be in"):
        BlendedSimilarity(net, prior, 1.5)
    # the graph term over the blend, by hand (relaxed with mu = -4, raw features, every ordered pair averaged)
    term = GraphRegularizer(blend, X, alpha=0.5, mu=-4.0)
    idx = torch.tensor([3, 0, 5, 6])
    f = torch.randn(4, 3)
    got = float(term(fake_step(idx, torch.tensor([0, 1, 0, 1]), f))["graph"])
    A = (torch.exp(-4 * want[idx][:, idx]) - 1) / (np.exp(-4) - 1)
    D = ((f[:, None] - f[None]) ** 2).sum(-1)
    assert got == pytest.approx(0.5 * float((A * D).mean()), rel=1e-4)


def _weights_by_hand(P, y, rounds):
    """The contrast weights with weighted class re-estimates, written with loops."""
    n = len(y)
    P = 0.5 * (P + P.T)
    classes = sorted(set(y))
    w = np.ones(n)
    for _ in range(rounds + 1):
        scores = np.empty(n)
        for i in range(n):
            S = []
            for c in classes:
                js = [j for j in range(n) if y[j] == c and j != i]
                S.append(sum(w[j] * P[i, j] for j in js) / sum(w[j] for j in js))
            scores[i] = S[classes.index(y[i])] / sum(S)
        new = np.empty(n)
        for c in classes:
            m = [i for i in range(n) if y[i] == c]
            new[m] = scores[m] / scores[m].mean()
        w = new
    return w


def test_reweighted_class_estimates_match_a_hand_computation_and_rank_flips_better():
    """Two classes of 6 labelled items; in each, items 4-5 are flips from the other class. The plain contrast
    weights rank the flips low but not at the bottom of every pair; re-estimating each class from its weighted items
    (flips counting less) separates them further."""
    rng = np.random.default_rng(0)
    true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    y = np.array([0] * 6 + [1] * 6)
    P = np.where(true[:, None] == true[None, :], 0.6, 0.35) + rng.uniform(-0.2, 0.2, (12, 12))
    np.fill_diagonal(P, 1.0)
    novel = NovelSet(np.arange(12, dtype=np.float32)[:, None], y, _FixedSimilarity(P))
    for rounds in (0, 1, 3):
        assert similarity_weights(novel, "contrast", rounds) == pytest.approx(_weights_by_hand(P, y, rounds), rel=1e-5)
    clean = true == y
    gap0 = np.subtract(*[similarity_weights(novel, "contrast", 0)[m].mean() for m in (clean, ~clean)])
    gap3 = np.subtract(*[similarity_weights(novel, "contrast", 3)[m].mean() for m in (clean, ~clean)])
    assert gap3 > gap0 > 0
    assert weight_auc(similarity_weights(novel, "contrast", 3), clean) >= weight_auc(
        similarity_weights(novel, "contrast", 0), clean)


def test_dropping_the_lowest_weighted_items_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    w = np.array([1.2, 0.4, 1.0, 1.4, 0.5, 1.5, 1.0])
    got = drop_lowest(w, y, 0.25)  # one of class 0's four, round(0.75) = 1 of class 1's three
    want = np.array([1.2, 0.0, 1.0, 1.4, 0.0, 1.5, 1.0])
    want[:4] /= want[:4].mean()
    want[4:] /= want[4:].mean()
    assert got == pytest.approx(want)
    assert drop_lowest(w, y, 0.9)[y == 1].tolist() == [0.0, 3.0, 0.0]  # at least one item kept per class
    novel = NovelSet(np.arange(7, dtype=np.float32)[:, None], y, _FixedSimilarity(np.full((7, 7), 0.5)))
    with pytest.raises(TransferkitError, match="drop must be"):
        similarity_weights(novel, "contrast", drop=1.0)
    with pytest.raises(TransferkitError, match="iterations must be"):
        similarity_weights(novel, "contrast", iterations=-1)


def test_the_config_passes_the_new_settings_to_simtrans_and_rejects_bad_ones():
    m = create_method("simtrans", WeakShotConfig(sim_iterations=2, sim_drop=0.1))
    assert (m.weighting, m.iterations, m.drop) == ("contrast", 2, 0.1)
    for bad, match in ((dict(sim_blend=1.2), "sim_blend"), (dict(sim_iterations=-1), "sim_iterations"),
                       (dict(sim_drop=1.0), "sim_drop")):
        with pytest.raises(TransferkitError, match=match):
            WeakShotConfig(**bad).validate()


def test_fit_similarity_blends_as_the_config_asks_and_its_weights_find_the_flips(flipped_fit):
    from dataclasses import replace

    from tests.weakshot.conftest import FAST
    from transferkit.weakshot import train_novel
    from transferkit.weakshot.similarity import fit_similarity

    wd, base, _ = flipped_fit
    cfg = replace(FAST, sim_blend=0.4, sim_iterations=2, sim_steps=20, sim_eval_every=20)  # a short net: speed
    fit = fit_similarity(wd.X, wd.split, cfg, 0, init=base)
    assert isinstance(fit.net, BlendedSimilarity) and fit.net.blend == 0.4
    assert fit.scores["blend"] == 0.4 and fit.scores["cosine_prior"]["a"] > 0
    r = train_novel(wd, "simtrans-weights", base, fit.net, cfg, seed=0)
    assert r.weights_auc > 0.8, r.weights_auc
    plain_fit = fit_similarity(wd.X, wd.split, replace(cfg, sim_blend=1.0), 0, init=base)
    assert isinstance(plain_fit.net, SimilarityNet)  # sim_blend 1: the net alone
