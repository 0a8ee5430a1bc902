"""Episodic evaluation: the sampler (no support item among the queries, no class outside the given ones,
reproducible), the confidence interval, every head beating chance on toy Gaussian classes, nearest class mean with
CL2N against a hand computation, and batched episode training equal to training each episode alone."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.errors import DataError, TransferkitError
from transferkit.fewshot import DEFAULT_EPISODE_HEADS, evaluate_episodes, sample_episodes


def _labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_sampler_never_leaks_support_into_queries_nor_leaves_the_given_classes():
    y = _labels([9, 12, 10, 11, 8, 30])
    allowed = [1, 2, 4, 5]
    eps = sample_episodes(y, allowed, ways=3, shots=2, queries=5, episodes=300, seed=3)
    assert eps.support.shape == (300, 6) and eps.query.shape == (300, 15) and eps.classes.shape == (300, 3)
    for e in range(300):
        s, q, cls = eps.support[e], eps.query[e], eps.classes[e]
        assert not set(s) & set(q), "a support item is also a query"
        assert len(set(s)) == len(s) and len(set(q)) == len(q)
        assert len(set(cls)) == 3 and set(cls) <= set(allowed)
        # episode label j is class cls[j], for support and queries alike
        assert (y[s] == cls[eps.support_labels[e]]).all() and (y[q] == cls[eps.query_labels[e]]).all()
    assert set(eps.classes.ravel()) == set(allowed), "every allowed class is drawn in 300 episodes"
    again = sample_episodes(y, allowed, ways=3, shots=2, queries=5, episodes=300, seed=3)
    assert (again.support == eps.support).all() and (again.query == eps.query).all()
    other = sample_episodes(y, allowed, ways=3, shots=2, queries=5, episodes=300, seed=4)
    assert not (other.support == eps.support).all()


def test_sampler_and_evaluation_refuse_what_cannot_be_drawn():
    y = _labels([6, 6, 20])
    with pytest.raises(DataError, match=r"ways=3 but only 2"):
        sample_episodes(y, [0, 1], ways=3, shots=1, queries=2, episodes=5)
    with pytest.raises(DataError, match=r"class '0' has 6 item\(s\): too few for shots=5 plus queries=2.*queries=1"):
        sample_episodes(y, [0, 1, 2], ways=2, shots=5, queries=2, episodes=5)
    with pytest.raises(TransferkitError, match=r"ways must be an integer >= 2; got 1"):
        sample_episodes(y, [0, 1, 2], ways=1, shots=1, queries=2, episodes=5)
    X = np.zeros((len(y), 4), np.float32)
    names = np.asarray(["a"] * 6 + ["b"] * 6 + ["c"] * 20)
    with pytest.raises(DataError, match=r"novel='a,x' names the class 'x'.*Its classes are: a, b, c"):
        evaluate_episodes(X, names, novel=["a", "x"], ways=2, episodes=2, queries=2, shots=1)
    with pytest.raises(DataError, match=r"'a' are in both novel and base"):
        evaluate_episodes(X, names, novel=["a", "b"], base=["a"], ways=2, episodes=2, queries=2, shots=1)
    with pytest.raises(TransferkitError, match=r"unknown head 'ncm'"):
        evaluate_episodes(X, names, ways=2, episodes=2, queries=2, shots=1, heads=["ncm"])


def _gaussian_classes(k=8, d=24, n=40, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread + 2.0  # an offset shared by every class: what centring removes
    y = np.repeat(np.arange(k), n)
    return (centers[y] + rng.normal(size=(len(y), d))).astype(np.float32), y


def test_every_head_beats_chance_on_toy_gaussian_classes_and_the_interval_is_right():
    X, y = _gaussian_classes()
    res = evaluate_episodes(X, y, novel=[4, 5, 6, 7], base=[0, 1, 2, 3], ways=4, shots=(1, 3), queries=4, episodes=20,
                            seed=1)
    chance = 1 / 4
    for label in DEFAULT_EPISODE_HEADS:
        one, three = res.row(label, 1), res.row(label, 3)
        assert one["mean"] > chance + 0.2, (label, one["mean"])
        assert three["mean"] > chance + 0.4, (label, three["mean"])
        acc = res.accuracies[label][3]
        assert len(acc) == 20 and three["ci95"] == pytest.approx(1.96 * acc.std(ddof=1) / np.sqrt(20))
    assert res.leaders(3)[0] == max(DEFAULT_EPISODE_HEADS, key=lambda h: res.row(h, 3)["mean"])


def test_episode_results_do_not_depend_on_how_episodes_are_batched():
    X, y = _gaussian_classes(seed=2)
    heads = ["ncm-cl2n", ("b++", "chen-baseline++", {"epochs": 10}), ("lr", "logreg-l2n", {})]
    runs = [evaluate_episodes(X, y, ways=3, shots=1, queries=3, episodes=12, seed=5, heads=heads, chunk=c)
            for c in (12, 5)]
    for label in ("ncm-cl2n", "b++", "lr"):
        assert np.array_equal(runs[0].accuracies[label][1], runs[1].accuracies[label][1])
    assert runs[0].settings["novel"] == [str(c) for c in range(8)]


def test_ncm_cl2n_matches_a_hand_computation():
    from transferkit.heads import create_head

    S = np.array([[3.0, 1.0], [1.0, 3.0], [4.0, 0.0], [0.0, 5.0]], np.float32)
    y = np.array(["u", "v", "u", "v"])
    base = np.array([[1.0, 1.0], [3.0, 3.0]], np.float32)  # mean (2, 2)
    q = np.array([[5.0, 2.0], [2.0, 6.0]], np.float32)
    # by hand: centre at (2, 2), unit length
    z = lambda p: (p - 2.0) / np.linalg.norm(p - 2.0, axis=1, keepdims=True)  # noqa: E731
    zs = z(S)  # (1,-1)/r2, (-1,1)/r2, (2,-2)/r8=(1,-1)/r2, (-2,3)/r13
    proto_u = zs[[0, 2]].mean(0)
    proto_v = zs[[1, 3]].mean(0)
    d = np.stack([((z(q) - proto_u) ** 2).sum(1), ((z(q) - proto_v) ** 2).sum(1)], 1)
    expected = np.exp(-10 * d) / np.exp(-10 * d).sum(1, keepdims=True)
    head = create_head("ncm-cl2n").fit(S, y, base=base)
    assert head.center_from_ == "base"
    np.testing.assert_allclose(head.predict_proba(q), expected, rtol=1e-5, atol=1e-7)
    assert list(head.predict(q)) == ["u", "v"]
    # without base classes the centre is the mean of the features being fitted
    mean_s = S.mean(0)
    zs2 = (S - mean_s) / np.linalg.norm(S - mean_s, axis=1, keepdims=True)
    zq2 = (q - mean_s) / np.linalg.norm(q - mean_s, axis=1, keepdims=True)
    d2 = np.stack([((zq2 - zs2[[0, 2]].mean(0)) ** 2).sum(1), ((zq2 - zs2[[1, 3]].mean(0)) ** 2).sum(1)], 1)
    p2 = create_head("ncm-cl2n").fit(S, y).predict_proba(q)
    np.testing.assert_allclose(p2, np.exp(-10 * d2) / np.exp(-10 * d2).sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    # the batched episode form gives the same numbers as fitting the episode
    batched = head.fit_predict_episodes(S[None], (y == "v").astype(int)[None], q[None], base=base)
    np.testing.assert_allclose(batched[0], expected, rtol=1e-5, atol=1e-7)


def test_batched_episode_training_equals_training_each_episode_alone():
    from transferkit.heads.fewshot import train_episode_classifiers

    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(3, 6, 10)).astype(np.float32)
    ys = np.tile(np.repeat(np.arange(3), 2), (3, 1))
    for cosine in (False, True):
        together = train_episode_classifiers(Xs, ys, 3, cosine=cosine, epochs=15, episode_ids=[4, 5, 6], seed=2)
        w = together.effective_weight().detach()
        for e in range(3):
            alone = train_episode_classifiers(Xs[e:e + 1], ys[e:e + 1], 3, cosine=cosine, epochs=15,
                                              episode_ids=[4 + e], seed=2)
            assert np.array_equal(alone.effective_weight().detach()[0].numpy(), w[e].numpy())
        assert not np.allclose(w[0].numpy(), w[1].numpy())
        start = train_episode_classifiers(Xs, ys, 3, cosine=cosine, epochs=1, episode_ids=[4, 5, 6], seed=2)
        assert not np.allclose(start.effective_weight().detach().numpy(), w.numpy()), "training moved the weights"
