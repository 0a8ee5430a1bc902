"""L2-SP and BSS equal a hand computation, and plug into the engine as loss terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.errors import TransferkitError, UnknownNameError
from transferkit.train.objectives import Outputs, Step
from transferkit.train.streams import Batch
from transferkit.train.regularizers import BSS, L2SP, bss_penalty, create_regularizer, l2sp_penalty


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.head = nn.Linear(2, 1)


def test_l2sp_equals_hand_computation():
    m = _Tiny()
    with torch.no_grad():
        m.backbone.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        m.backbone.bias.copy_(torch.tensor([0.5, -0.5]))
        m.head.weight.copy_(torch.tensor([[2.0, -1.0]]))
        m.head.bias.fill_(3.0)
    reg = L2SP(alpha=0.1, beta=0.01)
    reg.setup(m)  # w0 = the weights above
    with torch.no_grad():
        m.backbone.weight += torch.tensor([[1.0, 0.0], [0.0, -2.0]])  # moved by 1 and -2
        m.backbone.bias += torch.tensor([0.0, 3.0])  # moved by 3
    # alpha/2 * (1 + 4 + 9) + beta/2 * (4 + 1 + 9)
    expected = 0.05 * 14 + 0.005 * 14
    value = reg.penalty(m)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()  # gradient of alpha/2 ||w - w0||^2 is alpha (w - w0)
    torch.testing.assert_close(m.backbone.weight.grad, 0.1 * torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    torch.testing.assert_close(m.head.weight.grad, 0.01 * torch.tensor([[2.0, -1.0]]))
    assert reg.replaces_weight_decay
    # frozen backbone parameters are left out
    m.backbone.weight.requires_grad_(False)
    assert reg.penalty(m).item() == pytest.approx(0.05 * 9 + 0.005 * 14, rel=1e-6)
    assert l2sp_penalty([(torch.ones(3), torch.zeros(3))], [], 2.0, 1.0).item() == pytest.approx(3.0)


def test_bss_equals_hand_computation():
    # singular values of diag(3, 2, 1) stacked over a zero row are 3, 2, 1
    F = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 0, 0]])
    assert bss_penalty(F, k=1).item() == pytest.approx(1.0)
    assert bss_penalty(F, k=2).item() == pytest.approx(1.0 + 4.0)
    assert bss_penalty(F, k=10).item() == pytest.approx(14.0)  # k capped at min(N, D)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4))
    s = np.linalg.svd(X, compute_uv=False)
    feats = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    step = Step(lambda x, return_features=True: (torch.zeros(len(x), 2), feats), {
        "labelled": Batch({"train": torch.zeros(6, 1)}, None, torch.arange(6), 6)}, 0, 0, 0.0)
    value = BSS(eta=0.01, k=2)(step)["bss"]  # the features of the labelled batch, from the step's shared outputs
    assert value.item() == pytest.approx(0.01 * (s[-1] ** 2 + s[-2] ** 2), rel=1e-5)
    value.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    with pytest.raises(TransferkitError, match=r"\(N, D\).*\(2, 3, 4\)"):
        bss_penalty(torch.zeros(2, 3, 4))


def test_regularizer_registry():
    assert isinstance(create_regularizer("l2sp", alpha=0.1), L2SP)
    assert create_regularizer("bss", eta=0.1, k=2).config() == {"name": "bss", "eta": 0.1, "k": 2}
    with pytest.raises(UnknownNameError, match="unknown regularizer.*Valid: l2sp, bss"):
        create_regularizer("l2-sp2000")
    with pytest.raises(TransferkitError, match="takes alpha, beta"):
        create_regularizer("l2sp", gamma=1)


def _distance(model, start) -> float:
    return sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in model.backbone.named_parameters())


def test_l2sp_and_bss_plug_into_the_engine(shapes, tmp_path, finetuned):
    from tests.conftest import TINY
    from transferkit.backbones import create_backbone
    from transferkit.train.model import prepare_backbone

    start = prepare_backbone(create_backbone(TINY)).state_dict()
    r = shapes.fit(tmp_path / "l2sp", "finetune", extra_losses=[L2SP(alpha=10.0, beta=0.01), BSS(eta=0.01)])
    assert {"loss_l2sp", "loss_bss"} <= set(r.history[0])
    ce = [k for k in r.history[0] if k.startswith("loss_") and k not in ("loss_l2sp", "loss_bss")]
    assert ce and r.history[-1][ce[0]] < r.history[0][ce[0]], "the classification term goes down"
    assert r.history[0]["train_loss"] == pytest.approx(sum(r.history[0][k] for k in r.history[0]
                                                           if k.startswith("loss_")))  # every term
    assert shapes.test_accuracy(r) >= 0.6
    # the starting-point penalty keeps the backbone much closer to where it started than plain fine-tuning
    assert _distance(r.model, start) < 0.25 * _distance(finetuned.model, start)
    assert r.config["objective"]["terms"][1:] == [{"name": "l2sp", "alpha": 10.0, "beta": 0.01},
                                                  {"name": "bss", "eta": 0.01, "k": 1}]
