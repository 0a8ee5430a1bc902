"""The one-hidden-layer head of the word-vector recipe: its weight count (4,098 for the article's sizes), its
activations, its saved form; learning and export are covered by the parametrised head tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.errors import DataError
from transferkit.heads import HEAD_MODULES, HEADS, create_head
from transferkit.heads.hidden import HiddenLayerModule, hidden_for_weights, hidden_layer_weights


def test_the_article_head_has_4098_weights():
    assert hidden_layer_weights(125, 32, 2) == 4098
    assert HiddenLayerModule(125, 2, hidden=32).n_weights() == 4098
    assert hidden_for_weights(4098, 125, 2) == 32
    X = np.random.default_rng(0).normal(size=(12, 125)).astype(np.float32)
    head = create_head("hidden", hidden=(32,), epochs=5).fit(X, np.arange(12) % 2)
    assert head.n_weights_ == 4098 and head.to_module().config()["hidden"] == 32


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_each_activation_learns_xor_like_data_a_linear_head_cannot(activation):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(400, 2)).astype(np.float32)
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)
    head = create_head("hidden", hidden=16, activation=activation, epochs=150, lr=5e-2, batch_size=300)
    head.fit(X[:300], y[:300])
    linear = create_head("logreg", C=1.0).fit(X[:300], y[:300])
    assert head.score(X[300:], y[300:]) > 0.85 > linear.score(X[300:], y[300:]) + 0.2


def test_the_module_rebuilds_from_its_config_and_bad_settings_are_clear():
    m = HiddenLayerModule(10, 3, hidden=4, activation="relu")
    back = HEAD_MODULES.get("hidden-layer").factory.from_config(m.config())
    back.load_state_dict(m.state_dict())
    x = torch.randn(5, 10)
    assert torch.equal(m(x), back(x))
    assert HEADS.get("hidden").caps["kind"] == "torch"
    X, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="activation must be one of sigmoid, relu, tanh"):
        create_head("hidden", activation="gelu").fit(X, y)
    with pytest.raises(DataError, match="one hidden layer"):
        create_head("hidden", hidden=(4, 4)).fit(X, y)
