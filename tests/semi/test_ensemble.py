"""Ensembles of semi-supervised heads (SemiConfig(ensemble=K), Lakshminarayanan et al. 2017): the mean-probability
module against a hand computation, its save/load, member 0 as the single head, and a saved run predicting with every
member."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY
from tests.semi.test_semi import C, _banks, _blobs
from transferkit import load_run
from transferkit.data import collect_inputs
from transferkit.errors import TransferkitError
from transferkit.heads import HeadModule, load_head, save_head
from transferkit.heads.ensemble import MeanProbabilityModule
from transferkit.heads.fewshot import NormedLinearModule
from transferkit.pipeline import fit_run
from transferkit.semi.fit import SemiConfig, head_proba, member_seed, train_semi_head


def _linear(w: list[list[float]]) -> HeadModule:
    m = HeadModule(2, len(w))
    with torch.no_grad():
        m.layers[0].weight.copy_(torch.tensor(w))
        m.layers[0].bias.zero_()
    return m.eval()


def test_the_ensemble_predicts_the_mean_of_its_members_probabilities_and_can_overturn_a_member():
    # member a: logits (2, 0) -> p = (0.881, 0.119); member b: logits (0, 3) -> (0.047, 0.953)
    a, b = _linear([[1.0, 0.0], [0.0, 0.0]]), _linear([[0.0, 0.0], [0.0, 1.0]])
    ens = MeanProbabilityModule([a, b]).eval()
    x = torch.tensor([[2.0, 3.0]])
    pa = np.array([np.exp(2) / (np.exp(2) + 1), 1 / (np.exp(2) + 1)])
    pb = np.array([1 / (1 + np.exp(3)), np.exp(3) / (1 + np.exp(3))])
    with torch.no_grad():
        p = torch.softmax(ens(x).double(), 1).numpy()[0]
    np.testing.assert_allclose(p, (pa + pb) / 2, atol=1e-6)
    assert p.argmax() == 1 and pa.argmax() == 0, "the more confident member decides against member a"
    out, feats = ens(x, return_features=True)
    assert out.shape == (1, 2) and torch.equal(feats, x)


def test_an_ensemble_saves_and_loads_with_every_member(tmp_path):
    torch.manual_seed(0)
    members = [NormedLinearModule(5, 3, "cl2n", 30.0, bias=False, cosine=True) for _ in range(3)]
    ens = MeanProbabilityModule(members).eval()
    info = save_head(tmp_path, ens)
    assert info["kind"] == "mean-probability" and len(info["config"]["members"]) == 3
    back = load_head(tmp_path, json.loads(json.dumps(info)))
    x = torch.randn(7, 5)
    with torch.no_grad():
        assert torch.allclose(back(x), ens(x))


def test_bad_ensembles_fail_with_a_clear_message():
    with pytest.raises(TransferkitError, match="same number of classes"):
        MeanProbabilityModule([_linear([[1.0, 0.0], [0.0, 1.0]]), _linear([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])])
    with pytest.raises(TransferkitError, match="at least one"):
        MeanProbabilityModule([])
    for bad in (0, True, 2.0):
        with pytest.raises(TransferkitError, match="ensemble must be an integer"):
            SemiConfig(ensemble=bad).validate()


def test_member_zero_is_the_single_head_and_the_ensemble_averages_different_members(tmp_path, monkeypatch):
    import transferkit.semi.graph as graph

    calls, real = [], graph.propagate_labels
    monkeypatch.setattr(graph, "propagate_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(1)
    X, y = _blobs(rng, 60)
    Xt, _ = _blobs(rng, 30)
    lab, unl = np.arange(2 * C), np.arange(2 * C, len(y))
    bl, bu = _banks(X[lab], rng), _banks(X[unl], rng)
    cfg = dict(steps=40, eval_every=20, batch_size=4, mu=2, draws=2, seed=5)
    one = train_semi_head(bl, y[lab], bu, "fixmatch", n_classes=C, config=SemiConfig(**cfg, ensemble=1))
    ens = train_semi_head(bl, y[lab], bu, "fixmatch", n_classes=C, config=SemiConfig(**cfg, ensemble=3),
                          run_dir=tmp_path / "run")
    assert len(ens.members) == 3 and not one.members
    assert len(calls) == 2  # the members share one label propagation (they start from the same head)
    assert all(torch.equal(a, b) for a, b in zip(one.head.state_dict().values(),
                                                  ens.members[0].head.state_dict().values()))
    assert ens.history == ens.members[0].history
    assert [member_seed(5, k) for k in range(3)] == [5, 1005, 2005]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["member-0", "member-1", "member-2"]
    probs = [head_proba(m.head)(Xt) for m in ens.members]
    assert max(abs(probs[0] - p).max() for p in probs[1:]) > 1e-3, "the members differ (their seeds)"
    np.testing.assert_allclose(head_proba(ens.head)(Xt), np.mean(probs, axis=0), atol=1e-5)


def test_a_saved_run_predicts_with_every_member_as_it_was_tested(image_folder, tmp_path):
    small = {"steps": 20, "eval_every": 10, "draws": 2, "batch_size": 4, "mu": 2, "ensemble": 2}
    fit_run(str(image_folder), backbone=TINY, strategy="fixmatch", labels_per_class=2, unlabelled="rest",
            semi_config=small, out=tmp_path / "run", progress=False, baseline=False, report=False)
    model = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    head = model.get("head", model)
    assert head["kind"] == "mean-probability" and len(head["config"]["members"]) == 2, head
    test = pd.read_csv(tmp_path / "run" / "predictions.csv")
    pred = load_run(tmp_path / "run").predict(collect_inputs(list(test["input"])))
    assert list(pred["prediction"]) == list(test["prediction"])
    np.testing.assert_allclose(pred.filter(like="p_").to_numpy(), test.filter(like="p_").to_numpy(), atol=1e-5)
