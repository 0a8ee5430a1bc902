"""Heads: scikit-learn estimator checks, learning on separable data, memory-mapped input, export equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from transferkit.errors import UnknownNameError
from transferkit.heads import HEADS, LinearHead, LogisticHead, MLPHead, create_head


@parametrize_with_checks([LogisticHead(), LinearHead(epochs=60), MLPHead(hidden=(16,), epochs=100, lr=1e-2, dropout=0.0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _blobs(n=60, d=20, k=3, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * shift
    y = np.arange(n) % k
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("name", list(HEADS))
def test_head_learns_and_exports(name):
    X, y = _blobs()
    Xt, yt = _blobs(seed=1)
    Xt = Xt  # same centers? no: regenerate with the same centers below
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20)) * 3.0
    Xt = (centers[yt] + np.random.default_rng(5).normal(size=(60, 20))).astype(np.float32)
    head = create_head(name).fit(X[:45], y[:45], eval_set=(X[45:], y[45:]))
    assert head.score(Xt, yt) > 0.9, "well separated blobs must be learned"
    module = head.to_module()
    with torch.no_grad():
        p = torch.softmax(module(torch.as_tensor(Xt)), 1).numpy()
    assert np.allclose(p, head.predict_proba(Xt), atol=1e-5), "the exported module gives the head's probabilities"


def test_logistic_auto_C_uses_validation_and_binary_export():
    X, y = _blobs(k=2)
    head = LogisticHead().fit(X[:40], y[:40], eval_set=(X[40:], y[40:]))
    assert set(head.scores_) == set(head.Cs) and head.C_ in head.Cs
    with torch.no_grad():
        p = torch.softmax(head.to_module()(torch.as_tensor(X)), 1).numpy()
    assert np.allclose(p, head.predict_proba(X), atol=1e-6)
    assert LogisticHead(C=0.5).fit(X, y).C_ == 0.5


def test_mlp_early_stopping_keeps_best_epoch():
    X, y = _blobs(n=90)
    head = MLPHead(hidden=(32,), epochs=300, patience=5).fit(X[:60], y[:60], eval_set=(X[60:], y[60:]))
    assert len(head.history_) < 300, "training stops early once validation accuracy stalls"
    accs = [h["val_accuracy"] for h in head.history_]
    assert head.best_epoch_ == int(np.argmax(accs)) + 1
    assert head.history_[-1]["train_loss"] < head.history_[0]["train_loss"]


def test_memmap_features_train_without_loading(tmp_path):
    X, y = _blobs(n=300)
    path = tmp_path / "f.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    head = LinearHead(batch_size=32, epochs=30).fit(mm, y)
    assert head.score(X, y) > 0.9
    assert head.n_features_in_ == 20


def test_unknown_head():
    with pytest.raises(UnknownNameError, match="unknown head.*Valid: logreg, linear, mlp"):
        create_head("svm")
