"""Each domain-generalisation objective beats ERM on a toy shift built for it (tiny networks on 2-3 features, a
few hundred steps; the last checkpoint is scored so that selection plays no part)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch import nn

from transferkit.generalize import DGConfig, make_dg_net, train_generalizer
from transferkit.generalize.mixstyle import MixStyle


def spurious(n, agree, seed, reliable=0.75, scale=1.0):
    """Binary labels; x1 agrees with the label ``reliable`` of the time in every domain (invariant), x2 ``agree`` of
    the time (spurious: the share changes between domains), times ``scale``."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    inv = np.where(r.random(n) < reliable, y, 1 - y)
    sp = np.where(r.random(n) < agree, y, 1 - y)
    X = np.c_[(2 * inv - 1) + 0.3 * r.standard_normal(n), scale * ((2 * sp - 1) + 0.3 * r.standard_normal(n))]
    return X.astype(np.float32), y


def shortcut(n, sign, where, seed):
    """x1 reliable 75%; x2 = sign * label in a domain sitting at x3 = where (a domain-specific shortcut, which the
    interaction of x2 and x3 learns); sign 0: x2 is noise."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    inv = np.where(r.random(n) < 0.75, y, 1 - y)
    x2 = sign * (2 * y - 1) if sign else r.choice([-1, 1], n)
    X = np.c_[(2 * inv - 1), x2, np.full(n, where, float)] + 0.3 * r.standard_normal((n, 3))
    return X.astype(np.float32), y


def last_accuracy(method, domains, target, steps=300, **params):
    net = make_dg_net(method, 2, 16, in_dim=domains[0][0].shape[1], seed=0)
    cfg = DGConfig(steps=steps, eval_every=steps, batch_size=64, device="cpu", params={method: params})
    return train_generalizer(net, method, domains, cfg, target=target).last_accuracy


@pytest.fixture(scope="module")
def colour():
    """The IRM toy: the spurious feature agrees 90% and 80% in training, 10% in the target."""
    doms = [spurious(500, 0.9, 1), spurious(500, 0.8, 2)]
    return doms, spurious(500, 0.1, 3), last_accuracy("erm", doms, spurious(500, 0.1, 3), steps=500)


def test_irm_beats_erm_when_the_spurious_correlation_changes(colour):
    doms, target, erm = colour
    assert erm < 0.3  # ERM follows the spurious feature
    assert last_accuracy("irm", doms, target, steps=500, anneal_steps=100) > erm + 0.1


def test_vrex_beats_erm_when_the_spurious_correlation_changes(colour):
    doms, target, erm = colour
    assert last_accuracy("vrex", doms, target, lam=100.0, anneal_steps=50) > erm + 0.15


def test_groupdro_beats_erm_when_a_minority_domain_breaks_the_shortcut():
    # three domains where x2 agrees 95% with the label, one where it agrees 10%: the target is like that one
    doms = [spurious(300, 0.95, s, reliable=0.8) for s in (1, 2, 4)] + [spurious(300, 0.1, 5, reliable=0.8)]
    target = spurious(300, 0.1, 3, reliable=0.8)
    erm = last_accuracy("erm", doms, target)
    assert last_accuracy("groupdro", doms, target) > erm + 0.08


def test_coral_beats_erm_when_the_shortcut_changes_scale_between_domains():
    # x2's scale differs by domain (1 and 4): features that use it differ in covariance, which CORAL penalises
    doms = [spurious(300, 0.9, 1, scale=1.0), spurious(300, 0.9, 2, scale=4.0)]
    target = spurious(300, 0.1, 3, scale=2.0)
    erm = last_accuracy("erm", doms, target)
    assert last_accuracy("coral", doms, target, gamma=10.0) > erm + 0.2


def test_mixup_beats_erm_on_a_target_between_the_domains():
    # x2 = +label at x3 = -1 and -label at x3 = +1: ERM learns the interaction; the target sits at x3 = 0
    doms = [shortcut(300, 1, -1.0, 1), shortcut(300, -1, 1.0, 2)]
    target = shortcut(300, 0, 0.0, 3)
    erm = last_accuracy("erm", doms, target)
    assert last_accuracy("mixup", doms, target) > erm + 0.08


def tinted_bars(n, agree, seed, reliable=0.75, tint=1.0, size=8):
    """Images whose style is a per-channel statistic: content is a horizontal (0) or vertical (1) bright bar at a random
    place, agreeing with the label ``reliable`` of the time (invariant); style is a red (+tint on channel 0, -tint
    on channel 2) or blue tint, agreeing with the label ``agree`` of the time (spurious: it changes by domain)."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    content = np.where(r.random(n) < reliable, y, 1 - y)
    style = np.where(r.random(n) < agree, y, 1 - y)
    X = 0.3 * r.standard_normal((n, 3, size, size))
    pos = r.integers(1, size - 1, n)
    for k in range(n):
        if content[k]:
            X[k, :, :, pos[k]] += 1.5
        else:
            X[k, :, pos[k], :] += 1.5
    sign = (2 * style - 1)[:, None, None]
    X[:, 0] += tint * sign
    X[:, 2] -= tint * sign
    return X.astype(np.float32), y


class _BarNet(nn.Sequential):
    num_features = 8


def test_mixstyle_beats_erm_when_the_style_statistics_are_the_shortcut():
    # the tint lives in the input's channel means, where the MixStyle layer sits; mixing them across the batch
    # breaks the tint's tie to the label, so the network must read the bar (DomainBed's p 0.5, alpha 0.1)
    doms = [tinted_bars(300, 0.9, 1), tinted_bars(300, 0.8, 2)]
    target = tinted_bars(300, 0.1, 3)

    def run(method):
        torch.manual_seed(0)
        layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        feature = _BarNet(*([MixStyle()] if method == "mixstyle" else []), *layers)  # the same initial weights
        net = make_dg_net(method, 2, 16, feature=feature, seed=0)
        assert sum(isinstance(m, MixStyle) for m in net.modules()) == (method == "mixstyle")  # kept, not added
        cfg = DGConfig(steps=300, eval_every=300, batch_size=32, device="cpu")
        return train_generalizer(net, method, doms, cfg, target=target).last_accuracy

    erm = run("erm")
    assert erm < 0.3  # ERM follows the tint, which the target reverses
    assert run("mixstyle") > erm + 0.15
