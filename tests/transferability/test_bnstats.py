"""The batch-norm statistics shift: a hand computation on one layer, pooling over batches, the layers left out,
unreadable items, and the order on real data with the shipped ImageNet backbone (clip art nearer than MNIST)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.errors import BadInputError
from transferkit.transferability.bnstats import bn_layers, bn_shift, bn_shift_of


def _one_layer(var: float) -> torch.nn.Module:
    """A network that is one BatchNorm2d over 2 channels, with learned running variance ``var`` (mean 0)."""
    bn = torch.nn.BatchNorm2d(2)
    bn.running_var.fill_(var)
    return torch.nn.Sequential(bn)


def test_the_shift_by_hand_on_one_layer():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 8, 8, generator=g)
    net = _one_layer(4.0)
    # the inputs' variance over batch and positions, per channel, against the running variance 4
    var = x.double().var(dim=(0, 2, 3), unbiased=False)
    eps = net[0].eps
    expected = float(torch.log((var + eps) / (4.0 + eps)).abs().mean())
    assert bn_shift(net, x) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(math.log(4), abs=0.05)  # unit-variance inputs, variance 4 expected
    assert bn_shift(net, 2 * x) < 0.05  # twice the inputs: variance 4, as the source's
    # pooled over every input, not averaged per batch: one input per batch gives the same number
    assert bn_shift(net, x, batch_size=1) == pytest.approx(bn_shift(net, x, batch_size=64), rel=1e-9)
    assert net.training  # the model's mode is restored


def test_batches_of_any_size_pool_to_the_whole_inputs_variance():
    """Unequal batches (7, 7, ..., 1) pooled exactly, even far from zero mean (where E[x^2] - E[x]^2 cancels)."""
    g = torch.Generator().manual_seed(1)
    x = 1000 + 0.5 * torch.randn(64, 2, 8, 8, generator=g)
    net = _one_layer(4.0)
    var = x.double().var(dim=(0, 2, 3), unbiased=False)
    expected = float(torch.log((var + net[0].eps) / (4.0 + net[0].eps)).abs().mean())
    assert expected == pytest.approx(math.log(16), abs=0.05)  # variance 0.25 against 4
    for batch_size in (1, 7, 64):
        assert bn_shift(net, x, batch_size=batch_size) == pytest.approx(expected, rel=1e-9), batch_size


def test_each_layers_mode_is_restored_and_buffer_only_models_work():
    net = torch.nn.Sequential(_one_layer(4.0)[0], torch.nn.BatchNorm2d(2))
    net[1].running_var.fill_(2.0)
    net.train()
    net[1].eval()  # a frozen part of a model being trained
    before = [b.clone() for b in net.buffers()]
    assert bn_shift(net, torch.randn(8, 2, 4, 4)) is not None
    assert net.training and net[0].training and not net[1].training
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))  # measured in eval mode: stats unchanged
    bare = torch.nn.BatchNorm2d(2, affine=False)  # running statistics, no parameter
    bare.running_var.fill_(4.0)
    x = torch.randn(16, 2, 4, 4)
    var = x.double().var(dim=(0, 2, 3), unbiased=False)
    expected = float(torch.log((var + bare.eps) / (4.0 + bare.eps)).abs().mean())
    assert bn_shift(torch.nn.Sequential(bare), x) == pytest.approx(expected, rel=1e-9)


def test_layers_without_learned_statistics_are_left_out():
    fresh = torch.nn.Sequential(torch.nn.BatchNorm2d(3))  # mean 0, variance 1: never trained
    assert bn_layers(fresh) == [] and bn_shift(fresh, torch.randn(4, 3, 2, 2)) is None
    assert bn_shift(torch.nn.Sequential(torch.nn.LayerNorm(3)), torch.randn(4, 3)) is None  # text encoders
    net = _one_layer(4.0)
    net[0].running_var[0] = 0.0  # a dead channel: its log-ratio is meaningless, so it is skipped
    x = torch.randn(32, 2, 4, 4)
    v1 = float(x[:, 1].double().var(unbiased=False))
    assert bn_shift(net, x) == pytest.approx(abs(math.log((v1 + 1e-5) / (4 + 1e-5))), rel=1e-6)
    assert bn_shift(_one_layer(4.0), torch.empty(0, 2, 4, 4)) is None


class _Items:
    """A data source of images whose item 1 cannot be read."""

    modality = "image"

    def __init__(self, n: int):
        self.n = n

    def load(self, i: int):
        if i == 1:
            raise BadInputError("unreadable", bad=[("1.png", "truncated")])
        return torch.full((2, 4, 4), float(i))


class _Net(torch.nn.Module):
    """A backbone-like module: a transform, a collate and one learned batch-norm layer."""

    def __init__(self):
        super().__init__()
        self.model = _one_layer(4.0)
        self.seen: list[int] = []

    def transform(self):
        return lambda x: x

    def collate(self, items):
        self.seen += [int(t[0, 0, 0]) for t in items]
        return torch.stack(items)

    def forward(self, x):
        return self.model(x)


def test_bn_shift_of_skips_unreadable_items_and_subsamples():
    net = _Net()
    assert bn_shift_of(net, _Items(6), np.arange(6)) is not None
    assert sorted(net.seen) == [0, 2, 3, 4, 5]  # item 1 skipped, the others all read
    net.seen.clear()
    bn_shift_of(net, _Items(600), np.arange(600), max_inputs=50, seed=3)
    assert len(net.seen) == 50 and len(set(net.seen)) == 50
    texts = _Items(3)
    texts.modality = "text"
    assert bn_shift_of(net, texts, np.arange(3)) is None


def test_bn_shift_of_reads_one_batch_at_a_time():
    """Items are read, transformed and measured a batch at a time (never all decoded at once), and the number is
    the one of all the readable inputs together."""
    events: list = []

    class Logged(_Items):
        def load(self, i: int):
            events.append("load")
            return super().load(i)

    class LoggedNet(_Net):
        def forward(self, x):
            events.append(len(x))
            return super().forward(x)

    net = LoggedNet()
    shift = bn_shift_of(net, Logged(20), np.arange(20), batch_size=8)
    assert [e for e in events if e != "load"] == [8, 8, 3]  # item 1 unreadable: 19 inputs
    assert events.index(8) == 9  # 8 readable items (and the unreadable one) read before the first pass
    together = torch.stack([_Items(20).load(i) for i in range(20) if i != 1])
    assert shift == pytest.approx(bn_shift(_one_layer(4.0), together), rel=1e-9)


def test_clip_art_is_nearer_to_imagenet_than_handwritten_digits():
    from transferkit.backbones import create_backbone
    from transferkit.data import load_builtin

    torch.manual_seed(0)
    bb = create_backbone("lite0").with_preprocessing(input_size=(3, 64, 64))
    shifts = {}
    for name in ("clipart", "digits"):
        src = load_builtin(name)
        shifts[name] = bn_shift_of(bb, src, np.arange(len(src)), max_inputs=24, seed=0)
    # measured on 60 inputs at 64 px: clip art 0.51, scikit-learn's 8x8 digits 0.92 (the advisor's threshold: 0.6)
    assert shifts["clipart"] < 0.6 <= shifts["digits"], shifts
    random = create_backbone("lite0-random")  # random weights: no source statistics, no measure
    assert bn_shift_of(random, load_builtin("digits"), np.arange(8)) is None
