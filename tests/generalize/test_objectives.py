"""Each domain-generalisation objective against a hand computation on a toy batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.errors import TransferkitError, UnknownNameError
from transferkit.generalize import (CORAL, ERM, IRM, DG_METHODS, GroupDRO, MixStyle, Mixup, VREx, create_dg_objective,
                                    insert_mixstyle, list_dg_methods, make_dg_net)

L1 = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, -1.0, 0.0]])
Y1 = torch.tensor([0, 1, 2, 1])
L2 = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [-1.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
Y2 = torch.tensor([1, 2, 0, 0])


def ce(logits, y):
    """Cross-entropy by hand (numpy)."""
    z = np.asarray(logits, float)
    lse = np.log(np.exp(z).sum(1))
    return float(np.mean(lse - z[np.arange(len(z)), np.asarray(y)]))


def test_registry_lists_every_method_with_its_paper():
    names = [n for n, _, _ in list_dg_methods()]
    assert names == ["erm", "coral", "groupdro", "irm", "vrex", "mixup", "mixstyle"]
    assert all(p for _, p, _ in list_dg_methods())
    assert [n for n, _, e2e in list_dg_methods() if e2e] == ["mixstyle"]
    with pytest.raises(UnknownNameError):
        create_dg_objective("dro", 2)
    with pytest.raises(TransferkitError, match="takes no parameter"):
        create_dg_objective("irm", 2, eta=1.0)


def test_defaults_are_domainbeds():
    assert create_dg_objective("groupdro", 3).eta == 0.01
    irm = create_dg_objective("irm", 3)
    assert (irm.lam, irm.anneal_steps) == (100.0, 500)
    assert create_dg_objective("mixup", 3).alpha == 0.2
    ms = create_dg_objective("mixstyle", 3)
    assert (ms.p, ms.alpha) == (0.5, 0.1)
    assert create_dg_objective("coral", 2).streams == ("domain0", "domain1")


def test_erm_is_the_pooled_cross_entropy():
    out = ERM(2).terms([L1, L2], [L1, L2], [Y1, Y2], None)
    want = ce(np.r_[L1.numpy(), L2.numpy()], np.r_[Y1.numpy(), Y2.numpy()])
    assert out["ce"].item() == pytest.approx(want, abs=1e-6)


def test_coral_is_mean_and_covariance_difference_over_domain_pairs():
    F1, F2 = L1[:, :2], L2[:, :2]
    F3 = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])

    def dist(a, b):
        a, b = a.numpy().astype(float), b.numpy().astype(float)
        ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # unbiased, as DomainBed
        return np.mean((a.mean(0) - b.mean(0)) ** 2) + np.mean((ca - cb) ** 2)

    out = CORAL(3, gamma=2.0).terms([L1, L2, L1], [F1, F2, F3], [Y1, Y2, Y1], None)
    want = 2.0 * (dist(F1, F2) + dist(F1, F3) + dist(F2, F3)) / 3
    assert out["coral"].item() == pytest.approx(want, rel=1e-5)
    assert out["ce"].item() == pytest.approx((2 * ce(L1, Y1) + ce(L2, Y2)) / 3, abs=1e-6)


def test_groupdro_reweights_domains_exponentially_by_their_loss():
    obj = GroupDRO(2, eta=0.5)
    l1, l2 = ce(L1, Y1), ce(L2, Y2)
    out = obj.terms([L1, L2], [L1, L2], [Y1, Y2], None)
    q = np.exp(0.5 * np.array([l1, l2]))
    q /= q.sum()
    assert out["dro"].item() == pytest.approx(q @ [l1, l2], rel=1e-6)
    out = obj.terms([L1, L2], [L1, L2], [Y1, Y2], None)  # the weights accumulate
    q = q * np.exp(0.5 * np.array([l1, l2]))
    q /= q.sum()
    assert out["dro"].item() == pytest.approx(q @ [l1, l2], rel=1e-6)
    assert obj.epoch_state()["q_1"] == pytest.approx(q[1], rel=1e-6)


def _irm_by_hand(z, y):
    """d CE(w z, y) / dw at w = 1 is mean(softmax(z) . z - z_y); the penalty multiplies it on even and odd rows."""
    z, y = z.numpy().astype(float), y.numpy()

    def g(zz, yy):
        p = np.exp(zz) / np.exp(zz).sum(1, keepdims=True)
        return np.mean((p * zz).sum(1) - zz[np.arange(len(zz)), yy])

    return g(z[0::2], y[0::2]) * g(z[1::2], y[1::2])


class _FakeStep:
    def __init__(self, step):
        self.step = step


def test_irm_penalty_and_its_annealing():
    want_pen = (_irm_by_hand(L1, Y1) + _irm_by_hand(L2, Y2)) / 2
    assert want_pen != 0
    obj = IRM(2, lam=100.0, anneal_steps=500)
    before = obj.terms([L1, L2], [L1, L2], [Y1, Y2], _FakeStep(499))
    after = obj.terms([L1, L2], [L1, L2], [Y1, Y2], _FakeStep(500))
    assert before["irm"].item() == pytest.approx(want_pen, rel=1e-5)
    assert after["irm"].item() == pytest.approx(100 * want_pen, rel=1e-5)
    assert after["ce"].item() == pytest.approx((ce(L1, Y1) + ce(L2, Y2)) / 2, abs=1e-6)


def test_vrex_is_the_variance_of_the_domain_risks():
    l1, l2 = ce(L1, Y1), ce(L2, Y2)
    out = VREx(2, lam=10.0, anneal_steps=0).terms([L1, L2], [L1, L2], [Y1, Y2], _FakeStep(0))
    assert out["ce"].item() == pytest.approx((l1 + l2) / 2, abs=1e-6)
    assert out["vrex"].item() == pytest.approx(10 * np.var([l1, l2]), rel=1e-5)


def test_mixup_mixes_inputs_and_labels_of_paired_domains():
    W = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]])

    def model(x, return_features=True):
        return x @ W.t(), x

    X1, X2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    y1, y2 = torch.tensor([0, 2]), torch.tensor([1, 1, 0])
    out = Mixup(2).mixed_loss(model, [X1, X2], [y1, y2], [(0, 1), (1, 0)], [0.3, 0.8])
    Wn = W.numpy()
    m1 = 0.3 * X1.numpy() + 0.7 * X2.numpy()[:2]  # the longer batch is cut to the shorter
    m2 = 0.8 * X2.numpy()[:2] + 0.2 * X1.numpy()
    want = (0.3 * ce(m1 @ Wn.T, y1) + 0.7 * ce(m1 @ Wn.T, y2[:2]) + 0.8 * ce(m2 @ Wn.T, y2[:2])
            + 0.2 * ce(m2 @ Wn.T, y1)) / 2
    assert out["mixup"].item() == pytest.approx(want, rel=1e-5)


def test_mixstyle_mixes_instance_statistics_and_is_the_identity_in_eval():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + 2
    ms = MixStyle(p=1.0, alpha=0.1, eps=0.0)
    perm = torch.tensor([2, 0, 1])
    lam = torch.tensor([0.25, 1.0, 0.6]).view(3, 1, 1, 1)
    got = ms.train()(x, perm=perm, lam=lam).numpy()
    a = x.numpy().astype(float)
    mu, sig = a.mean((2, 3), keepdims=True), a.std((2, 3), ddof=1, keepdims=True)
    lm = lam.numpy()
    want = ((a - mu) / sig) * (lm * sig + (1 - lm) * sig[perm.numpy()]) + lm * mu + (1 - lm) * mu[perm.numpy()]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], a[1], rtol=1e-5, atol=1e-5)  # lam = 1: itself
    assert torch.equal(ms.eval()(x), x)


def test_mixstyle_goes_into_the_early_stages_and_only_end_to_end():
    from transferkit.backbones.small import lenet, small_cnn

    net = make_dg_net("mixstyle", 4, 16, feature=lenet(0), params={"p": 0.3})
    mods = [m for m in net.feature.net if isinstance(m, MixStyle)]
    assert len(mods) == 1 and mods[0].p == 0.3 and isinstance(net.feature.net[3], MixStyle)
    sc = insert_mixstyle(small_cnn(0, width=4))
    assert sum(isinstance(m, MixStyle) for m in sc.features) == 2
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(TransferkitError, match="end to end"):
        make_dg_net("mixstyle", 4, 16, in_dim=8)
    with pytest.raises(TransferkitError, match="lenet or small-cnn"):
        insert_mixstyle(torch.nn.Linear(2, 2))
