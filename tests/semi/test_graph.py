"""Graph pseudo-labels: Iscen et al.'s label propagation (its weights against a hand computation, and the method on a
toy set where the unlabelled pool carries the signal), CoMatch's memory smoothing of the pseudo-labels, and soft
(sharpened) pseudo-labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.errors import DataError, TransferkitError
from transferkit.semi import SEMI_METHODS
from transferkit.semi.fit import SemiConfig, train_semi_head
from transferkit.semi.graph import knn_affinity, knn_neighbours, propagate_labels
from transferkit.semi.masks import FixedThreshold
from transferkit.semi.objective import PseudoLabelConsistency


def test_knn_neighbours_exclude_the_item_and_raise_the_cosine_to_gamma():
    z = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    nn, aff = knn_neighbours(z, k=1, gamma=2.0)
    assert nn[:, 0].tolist() == [1, 0, 1, 2]  # item 3's best is item 2 (cos 0 beats cos -1)
    assert aff[:, 0] == pytest.approx([0.64, 0.64, 0.36, 0.0])
    w = knn_affinity(z, k=1, gamma=2.0).toarray()
    assert w[0, 1] == pytest.approx(1.28) and w[1, 2] == pytest.approx(0.36) and w[2, 3] == 0.0
    assert np.allclose(w, w.T)
    with pytest.raises(TransferkitError, match="k .neighbours."):
        knn_neighbours(z, k=0)
    from transferkit.semi.masks import GraphWeights  # the label propagation rule checks the same settings

    for bad, needle in (({"k": 2.5}, "k .neighbours."), ({"gamma": 0}, "gamma must be > 0"),
                        ({"alpha": 1.0}, r"alpha must be in \(0, 1\)")):
        with pytest.raises(TransferkitError, match=needle):
            GraphWeights(**bad)


def test_label_propagation_matches_a_hand_computation():
    """Two labelled items at 0 and 90 degrees, one unlabelled at 20 degrees; k = 2 connects all three. cos^3
    affinities: (l0, u) cos(20)^3 = 0.82978, (l1, u) sin(20)^3 = 0.04001, (l0, l1) 0, each counted twice in
    W = A + A^T. Z = (I - alpha D^-1/2 W D^-1/2)^-1 Y by hand below; u's row normalised gives the certainty."""
    a = math.cos(math.radians(20)) ** 3
    b = math.sin(math.radians(20)) ** 3
    z_l = np.array([[1.0, 0.0], [0.0, 1.0]])
    z_u = np.array([[math.cos(math.radians(20)), math.sin(math.radians(20))]])
    g = propagate_labels(z_l, np.array([0, 1]), z_u, 2, k=2, gamma=3.0, alpha=0.5)
    W = np.array([[0, 0, 2 * a], [0, 0, 2 * b], [2 * a, 2 * b, 0]])
    d = W.sum(1)
    S = W / np.sqrt(np.outer(d, d))
    Z = np.linalg.solve(np.eye(3) - 0.5 * S, np.array([[1.0, 0], [0, 1], [0, 0]]))
    zu = Z[2] / Z[2].sum()
    assert g.labels.tolist() == [0]
    assert g.scores[0] == pytest.approx(zu, rel=1e-4)
    assert g.weights[0] == pytest.approx(1 + (zu * np.log(zu)).sum() / math.log(2), rel=1e-4)
    # class 0 holds 2 items (one labelled, u), class 1 one: weights 1/2 and 1, scaled so u's weight is 1
    assert g.class_weights.tolist() == pytest.approx([1.0, 2.0])
    assert g.item_weights()[0] == pytest.approx(g.weights[0])
    with pytest.raises(DataError, match="but 3 labels"):
        propagate_labels(z_l, np.array([0, 1, 1]), z_u, 2)
    with pytest.raises(TransferkitError, match="alpha"):
        propagate_labels(z_l, np.array([0, 1]), z_u, 2, alpha=1.0)


C, D = 3, 16


def _banks(X, rng, draws=2):
    return {"eval": X, "weak": np.stack([X + rng.normal(0, 0.1, X.shape).astype(np.float32) for _ in range(draws)]),
            "strong": np.stack([X + rng.normal(0, 0.5, X.shape).astype(np.float32) for _ in range(draws)])}


@pytest.fixture(scope="module")
def toy():
    """Three clusters, one label per class, each labelled item pushed by 8 along a direction of its own that the
    clusters do not vary in: the default cosine head on the three labels alone scores about 89 % on test, the
    unlabelled pool's neighbour graph shows the clusters."""
    rng = np.random.default_rng(0)

    def blobs(n):
        y = np.arange(n) % C
        X = rng.normal(0, 0.7, (n, D))
        X[np.arange(n), y] += 3.0
        return X.astype(np.float32), y

    X, y = blobs(200)
    Xt, yt = blobs(400)
    lab, unl = np.arange(C), np.arange(C, len(y))
    U = rng.normal(0, 1, (C, D))
    U[:, :C] = 0
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    X[lab] += 8.0 * U[y[lab]].astype(np.float32)
    return {"bl": _banks(X[lab], rng), "yl": y[lab], "bu": _banks(X[unl], rng), "Xt": Xt, "yt": yt}


# graph_weight 0: each option is checked alone (the label propagation term, on by default, on its own below)
CFG = dict(steps=150, eval_every=150, batch_size=4, mu=8, ema_decay=0.99, graph_weight=0.0, ensemble=1)


def _acc(fit, toy) -> float:
    with torch.no_grad():
        return float((fit.head(torch.as_tensor(toy["Xt"])).argmax(1).numpy() == toy["yt"]).mean())


@pytest.fixture(scope="module")
def only(toy):
    """The default head's test accuracy on the three labels alone."""
    return _acc(train_semi_head(toy["bl"], toy["yl"], toy["bu"], "fixmatch", n_classes=C, config=SemiConfig(**CFG),
                                lambda_u=0.0), toy)


@pytest.mark.parametrize("method,extra", [("labelprop", {}), ("fixmatch", {"smoothing": 0.9})])
def test_graph_pseudo_labels_learn_from_the_unlabelled_pool(toy, only, method, extra):
    fit = train_semi_head(toy["bl"], toy["yl"], toy["bu"], method, n_classes=C, config=SemiConfig(**CFG, **extra))
    assert only < 0.93
    assert _acc(fit, toy) >= only + 0.05, (method, _acc(fit, toy), only)
    assert fit.history[-1]["metric_mask_rate"] > 0


def test_memory_smoothing_matches_a_hand_computation():
    """Pool of 3, 2 classes, alpha 0.8. Item 0's neighbours are 1 and 2 with affinities 1 and 3 (normalised to
    1/4, 3/4), item 1's is 0. Memory starts at m1 = (0.2, 0.8), m2 = (0.6, 0.4), m0 = (0.5, 0.5)."""
    obj = PseudoLabelConsistency(FixedThreshold(0.8))
    obj.mask.setup(3, 2)
    obj.set_neighbours([[1, 2], [0, 0], [0, 1]], [[1.0, 3.0], [1.0, 0.0], [0.0, 0.0]],
                       [[0.5, 0.5], [0.2, 0.8], [0.6, 0.4]], smoothing=0.8)
    p = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    q = obj._smoothed(p, torch.tensor([0, 2]))
    neigh0 = 0.25 * np.array([0.2, 0.8]) + 0.75 * np.array([0.6, 0.4])  # (0.5, 0.5)
    assert q[0].tolist() == pytest.approx((0.8 * np.array([0.9, 0.1]) + 0.2 * neigh0).tolist())  # (0.82, 0.18)
    assert q[1].tolist() == pytest.approx([0.3, 0.7])  # item 2 has no neighbour weight: unsmoothed
    assert obj.memory[0].tolist() == pytest.approx(q[0].tolist())
    assert obj.memory[1].tolist() == pytest.approx([0.2, 0.8])
    # item 1 now reads item 0's new memory: 0.8 * (0.1, 0.9) + 0.2 * (0.82, 0.18)
    q1 = obj._smoothed(torch.tensor([[0.1, 0.9]]), torch.tensor([1]))
    assert q1[0].tolist() == pytest.approx([0.08 + 0.164, 0.72 + 0.036])
    # a confident prediction whose neighbours disagree falls below FixMatch's threshold
    assert obj.mask(q1, torch.tensor([1])).tolist() == [0.0]
    assert obj.mask(torch.tensor([[0.1, 0.9]]), torch.tensor([1])).tolist() == [1.0]


def test_graph_settings_fail_with_a_clear_message(toy):
    with pytest.raises(TransferkitError, match="smoothing"):
        SemiConfig(smoothing=1.5).validate()
    with pytest.raises(TransferkitError, match="head='cosine'"):
        SemiConfig(smoothing=0.9, head="linear", init="random").validate()
    with pytest.raises(TransferkitError, match="neighbours"):
        SemiConfig(neighbours=0).validate()
    with pytest.raises(TransferkitError, match="set_neighbours"):
        PseudoLabelConsistency(FixedThreshold(), smoothing=0.5)._smoothed(torch.ones(1, 2) / 2, torch.tensor([0]))
    with pytest.raises(TransferkitError, match="cosine"):
        train_semi_head(toy["bl"], toy["yl"], toy["bu"], "labelprop", n_classes=C,
                        config=SemiConfig(**CFG, head="linear", init="random"))
    assert SEMI_METHODS.get("labelprop").cap("needs_features") is True
    with pytest.raises(TransferkitError, match="no graph"):
        SEMI_METHODS.create("labelprop").mask(torch.ones(1, 2) / 2, torch.tensor([0]))


def _step(weak_logits, strong_logits):
    """A training step whose model returns its input as the logits (weak and strong views given directly)."""
    from transferkit.train.objectives import Step
    from transferkit.train.streams import Batch

    weak, strong = torch.tensor(weak_logits), torch.tensor(strong_logits)
    batch = Batch(x={"weak": weak, "strong": strong}, y=None, index=torch.arange(len(weak)), global_size=len(weak))
    return Step(lambda x, return_features=False: (x, x), {"unlabelled": batch}, 0, 0, 0.0)


def test_soft_pseudo_labels_match_a_hand_computation():
    """Weak probabilities (0.6, 0.4) (logits ln 1.5, 0) sharpened at T = 0.5: (0.36, 0.16) / 0.52 = (9/13, 4/13);
    strong logits (0, 0): the loss is -(9/13 ln 1/2 + 4/13 ln 1/2) = ln 2 times the mask (threshold 0.5 admits it);
    the hard target would give the same ln 2 here, so a second item tells them apart: strong logits (ln 3, 0),
    log-probabilities (ln 3/4, ln 1/4): soft -(9/13 ln 0.75 + 4/13 ln 0.25), hard -ln 0.75."""
    weak = [[math.log(1.5), 0.0], [math.log(1.5), 0.0]]
    strong = [[0.0, 0.0], [math.log(3.0), 0.0]]
    soft = PseudoLabelConsistency(FixedThreshold(0.5), sharpen=0.5)
    soft.mask.setup(2, 2)
    hard = PseudoLabelConsistency(FixedThreshold(0.5))
    hard.mask.setup(2, 2)
    got_soft = float(soft(_step(weak, strong))["unlabelled"])
    got_hard = float(hard(_step(weak, strong))["unlabelled"])
    want_soft = (math.log(2) - (9 / 13 * math.log(0.75) + 4 / 13 * math.log(0.25))) / 2
    assert got_soft == pytest.approx(want_soft, rel=1e-5)
    assert got_hard == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-5)
    assert soft.config()["sharpen"] == 0.5 and "sharpen" not in hard.config()
    with pytest.raises(TransferkitError, match="sharpen"):
        SemiConfig(sharpen=0.0).validate()


class _Lin(torch.nn.Module):
    """y = w * x on one feature, as the loop calls a model."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[w]]))

    def forward(self, x, return_features=False):
        out = x @ self.w.T
        return (out, x) if return_features else out


def test_the_ema_teacher_pseudo_labels_the_weak_view_with_the_moving_average_of_the_weights():
    """Teacher copied at w = 1; the network moves to w = 3. At the first update the warm-up decay is
    min(0.9, 2/11) = 2/11: the teacher's w = 2/11 * 1 + 9/11 * 3 = 29/11; at the second min(0.9, 3/12) = 1/4 with the
    network back at 1: 1/4 * 29/11 + 3/4 * 1 = 62/44. The weak view's logits are the teacher's, the strong the
    network's."""
    from transferkit.semi.masks import FixedThreshold
    from transferkit.train.objectives import Step
    from transferkit.train.streams import Batch

    net = _Lin(1.0)
    obj = PseudoLabelConsistency(FixedThreshold(0.5), teacher_decay=0.9)
    obj.mask.setup(1, 1)
    obj.setup(net)
    x = torch.tensor([[1.0]])
    batch = Batch(x={"weak": x, "strong": x}, y=None, index=torch.tensor([0]), global_size=1)
    with torch.no_grad():
        net.w.fill_(3.0)
    assert float(obj._teacher_logits(Step(net, {"unlabelled": batch}, 0, 0, 0.0, net=net))) == pytest.approx(29 / 11)
    with torch.no_grad():
        net.w.fill_(1.0)
    assert float(obj._teacher_logits(Step(net, {"unlabelled": batch}, 0, 1, 0.0, net=net))) == pytest.approx(62 / 44)
    assert float(net.w.detach()) == 1.0 and not obj.teacher.w.requires_grad
    assert "teacher.w" in obj.state_dict() and obj.config()["teacher_decay"] == 0.9
    with pytest.raises(TransferkitError, match="teacher_decay"):
        SemiConfig(teacher_decay=1.0).validate()


def test_a_run_with_the_ema_teacher_learns_from_the_unlabelled_pool(toy, only):
    fit = train_semi_head(toy["bl"], toy["yl"], toy["bu"], "fixmatch", n_classes=C,
                          config=SemiConfig(**CFG, teacher_decay=0.999))
    assert _acc(fit, toy) >= only + 0.05


def test_the_label_propagation_term_adds_to_a_method_and_keeps_its_logs(toy, only):
    """FixMatch's own term switched off (lambda_u 0): with graph_weight 1 the graph's pseudo-labels alone move the
    head; the thresholds logged stay FixMatch's 0.95 and the graph term's mean weight is logged on its own."""
    fit = train_semi_head(toy["bl"], toy["yl"], toy["bu"], "fixmatch", n_classes=C,
                          config=SemiConfig(**{**CFG, "graph_weight": None}), lambda_u=0.0)  # the default: 1
    assert _acc(fit, toy) >= only + 0.05
    last = fit.history[-1]
    assert last["thresholds"] == [0.95] * C and 0 < last["metric_graph_weight"] <= 3
    with pytest.raises(TransferkitError, match="graph_weight"):
        SemiConfig(graph_weight=-1.0).validate()
