"""Zero-shot building blocks on synthetic data where the answer is known: class lists, the GZSL metrics by hand,
and every method recovering unseen classes from their name embeddings (and failing when the names are shuffled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.errors import DataError, TransferkitError, UnknownNameError
from transferkit.heads.class_embedding import ClassEmbeddingHead, ConSEHead
from transferkit.zeroshot import (ZeroShotTask, calibrated_stacking, create_method, fit_zeroshot, gzsl_accuracy,
                                  harmonic_mean, parse_classes, readable_name)
from transferkit.zeroshot.encode import SourceModel
from transferkit.zeroshot.methods import hinge_rank
from transferkit.zeroshot.prompts import class_texts, prompt_templates


# ---------------------------------------------------------------- class lists and prompts

def test_parse_classes_forms():
    s = parse_classes("cat, dog ,golden_retriever")
    assert s.labels == ["cat", "dog", "golden_retriever"]
    assert s.descriptions["golden_retriever"] == ["golden retriever"]
    d = parse_classes("fresh=a positive review|a good film,rotten=a negative review")
    assert d.labels == ["fresh", "rotten"]
    assert d.descriptions == {"fresh": ["a positive review", "a good film"], "rotten": ["a negative review"]}
    assert parse_classes({"a": "x", "b": None}).descriptions == {"a": ["x"], "b": ["b"]}


@pytest.mark.parametrize("spec, words", [("", "no classes"), ("cat,,dog", "empty name"), ("cat,dog,cat", "duplicate"),
                                         ("cat", "only one class"), ([], "no classes"), (3, "comma-separated")])
def test_parse_classes_errors_say_what_is_wrong(spec, words):
    with pytest.raises(DataError, match=words):
        parse_classes(spec)


def test_class_file(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\ncat: a small furry pet\ndog\n")
    s = parse_classes(str(f))
    assert s.labels == ["cat", "dog"] and s.descriptions["cat"] == ["a small furry pet"]
    with pytest.raises(DataError, match="not found"):
        parse_classes(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        parse_classes(str(bad))


def test_readable_names_and_prompts():
    assert readable_name("animals_birds") == "animals birds"
    assert readable_name("GoldenRetriever") == "golden retriever"
    assert prompt_templates("a photo of {}.") == ["a photo of {}."]
    assert len(prompt_templates("picture")) == 5
    with pytest.raises(UnknownNameError):
        prompt_templates("no-such-prompt-set")
    with pytest.raises(DataError, match="no '\\{\\}'"):
        prompt_templates(["a photo"])
    texts = class_texts(parse_classes("cat=kitten|cat,dog"), ["a {}.", "the {}"])
    assert texts == [["a kitten.", "the kitten", "a cat.", "the cat"], ["a dog.", "the dog"]]


# ---------------------------------------------------------------- GZSL metrics by hand

def test_harmonic_mean_and_gzsl_accuracy_by_hand():
    assert harmonic_mean(0.5, 0.25) == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert harmonic_mean(0.0, 0.0) == 0.0
    seen = np.array([True, True, False, False])
    y = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    p = np.array([0, 1, 1, 1, 2, 0, 0, 2])
    # seen: class 0 1/2, class 1 2/2 -> 0.75; unseen: class 2 1/3, class 3 0/1 -> 1/6
    g = gzsl_accuracy(y, p, seen)
    assert g["seen"] == pytest.approx(0.75) and g["unseen"] == pytest.approx(1 / 6)
    assert g["harmonic"] == pytest.approx(2 * 0.75 / 6 / (0.75 + 1 / 6))


def test_calibrated_stacking_lowers_seen_scores():
    scores = np.array([[1.0, 0.8], [1.0, 0.2]])
    seen = np.array([True, False])
    assert calibrated_stacking(scores, seen, 0.0).tolist() == [0, 0]
    assert calibrated_stacking(scores, seen, 0.5).tolist() == [1, 0]
    assert calibrated_stacking(scores, seen, 1.0).tolist() == [1, 1]


def test_hinge_rank_by_hand():
    s = torch.tensor([[0.5, 0.45, 0.1], [0.0, 1.0, 0.2]])
    y = torch.tensor([0, 2])
    # row 0: max(0, .1 - .5 + .45) + max(0, .1 - .5 + .1) = 0.05; row 1: max(0, .1 - .2 + 0) + max(0, .1 - .2 + 1) = 0.9
    assert float(hinge_rank(s, y, 0.1)) == pytest.approx((0.05 + 0.9) / 2, abs=1e-6)


# ---------------------------------------------------------------- methods on a world where names predict weights

def _world(seed=0, C=12, Z=5, D=16, n=40, noise=0.35):
    """Class name embeddings S (C, Z); true classifier weights W = S A; features = W_y + noise."""
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(C, Z))
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    A = rng.normal(size=(Z, D))
    W = S @ A
    y = np.repeat(np.arange(C), n)
    X = W[y] + noise * rng.normal(size=(len(y), D)) * np.linalg.norm(W, axis=1).mean() / np.sqrt(D)
    # a source classifier of 60 other classes in the same world (what ImageNet is to lite0)
    Ss = rng.normal(size=(60, Z))
    Ss /= np.linalg.norm(Ss, axis=1, keepdims=True)
    src = SourceModel((Ss @ A).astype(np.float32), np.zeros(60, np.float32), [f"s{i}" for i in range(60)],
                      Ss.astype(np.float32))
    return S.astype(np.float32), X.astype(np.float32), y, src


def _unseen_accuracy(method, S, X, y, src, seen_ids, **params):
    C = len(S)
    seen = np.isin(np.arange(C), seen_ids)
    tr = np.isin(y, seen_ids)
    task = ZeroShotTask([f"c{i}" for i in range(C)], S, seen if seen.any() else None,
                        X[tr] if seen.any() else None, y[tr] if seen.any() else None, source=src)
    head = create_method(method, **params).fit(task).head()
    with torch.no_grad():
        scores = head(torch.as_tensor(X)).numpy()
    unseen = np.flatnonzero(~seen)
    te = np.isin(y, unseen)
    pred = unseen[scores[te][:, unseen].argmax(1)]  # among the unseen classes only (conventional ZSL)
    return float((pred == y[te]).mean()), len(unseen)


@pytest.mark.parametrize("method, params, with_seen", [
    ("ridge", {"use_source": False}, True), ("ridge", {}, False), ("eszsl", {}, True), ("eszsl", {}, False),
    ("devise", {"epochs": 60, "margin": 0.1, "lr": 1e-2}, True), ("conse", {"top_k": 5}, False)])
def test_methods_recover_unseen_classes_and_fail_on_shuffled_names(method, params, with_seen):
    S, X, y, src = _world()
    seen_ids = np.arange(6) if with_seen else np.array([], int)
    acc, k = _unseen_accuracy(method, S, X, y, src, seen_ids, **params)
    assert acc > 0.6, f"{method}: unseen accuracy {acc:.2f} over {k} classes"
    # the names carry the signal: give the unseen classes each other's names and the method must fall apart
    S2 = S.copy()
    unseen = np.setdiff1d(np.arange(len(S)), seen_ids)
    S2[unseen] = S[np.roll(unseen, 1)]
    bad, _ = _unseen_accuracy(method, S2, X, y, src, seen_ids, **params)
    assert bad < 0.35, f"{method}: {bad:.2f} with shuffled names"


def test_methods_refuse_what_they_cannot_do():
    S, X, y, src = _world()
    task = ZeroShotTask([f"c{i}" for i in range(len(S))], S)
    with pytest.raises(TransferkitError, match="source classifier"):
        create_method("conse").fit(task)
    with pytest.raises(TransferkitError, match="labelled images of seen classes"):
        create_method("devise").fit(task)
    with pytest.raises(TransferkitError, match="not fitted"):
        create_method("ridge").head()
    with pytest.raises(UnknownNameError):
        create_method("no-such-method")


def test_gzsl_calibration_is_chosen_on_seen_classes_and_helps_unseen():
    S, X, y, src = _world(seed=1, C=10, Z=4, n=60)
    rng = np.random.default_rng(0)
    seen_ids = np.arange(5)
    seen = np.isin(np.arange(10), seen_ids)
    idx = rng.permutation(len(y))
    seen_items = idx[np.isin(y[idx], seen_ids)]
    tr, va, te_seen = np.array_split(seen_items, 3)
    task = ZeroShotTask([f"c{i}" for i in range(10)], S, seen, X[tr], y[tr], X[va], y[va])
    m = fit_zeroshot(task, "ridge", method_params={"use_source": False})
    assert m.gamma is not None and m.calibration["folds"]
    te = np.concatenate([te_seen, np.flatnonzero(~np.isin(y, seen_ids))])
    raw = fit_zeroshot(task, "ridge", method_params={"use_source": False}, calibrate=False)
    g_cal = gzsl_accuracy(y[te], m.logits(X[te]).argmax(1), seen)
    g_raw = gzsl_accuracy(y[te], raw.logits(X[te]).argmax(1), seen)
    assert g_cal["harmonic"] >= g_raw["harmonic"]
    assert g_cal["unseen"] > 0.3 and g_cal["seen"] > 0.5


def test_heads_rebuild_from_config():
    w = torch.randn(4, 6)
    h = ClassEmbeddingHead.from_weights(w, normalize=True, scale=10.0, class_bias=torch.arange(4.0))
    h2 = ClassEmbeddingHead.from_config(h.config())
    h2.load_state_dict(h.state_dict())
    x = torch.randn(3, 6)
    assert torch.allclose(h(x), h2(x))
    c = ConSEHead(6, 20, 5, 4, top_k=3, scale=5.0)
    with torch.no_grad():
        for b in (c.source_weight, c.source_embeddings, c.class_embeddings):
            b.copy_(torch.randn_like(b))
    c2 = ConSEHead.from_config(c.config())
    c2.load_state_dict(c.state_dict())
    assert torch.allclose(c(x), c2(x))
    # ConSE's embedding is the probability-weighted mean of the top-3 source embeddings, by hand
    p = torch.softmax(x @ c.source_weight.T + c.source_bias, 1)
    top, idx = p.topk(3, 1)
    ref = (top / top.sum(1, keepdim=True)).unsqueeze(2).mul(c.source_embeddings[idx]).sum(1)
    assert torch.allclose(c.embed(x), ref, atol=1e-6)


def test_transductive_prior_and_centring_by_hand():
    S, X, y, src = _world(seed=2)
    task = ZeroShotTask([f"c{i}" for i in range(len(S))], S, source=src, X_target=X)
    m = create_method("conse", top_k=4).fit(task)
    P = src.probabilities(X).mean(0)
    head = m.head()
    np.testing.assert_allclose(head.source_bias.numpy(), src.bias - np.log(P), rtol=1e-4, atol=1e-4)
    # the corrected source probabilities are p(s|x) / mean_x p(s|x), renormalised (Saerens et al. 2002)
    q = src.probabilities(X) / P
    q /= q.sum(1, keepdims=True)
    np.testing.assert_allclose(head.source_probabilities(torch.as_tensor(X)).numpy(), q, atol=1e-5)
    centred = fit_zeroshot(task, "conse", method_params={"top_k": 4}, center=True)
    assert centred.method["centred"] is True
    np.testing.assert_allclose(centred.logits(X).mean(0), 0.0, atol=1e-4)
    plain = fit_zeroshot(ZeroShotTask(task.classes, S, source=src), "conse", center=True)
    assert plain.method["centred"] is False  # no target inputs: nothing to centre on
