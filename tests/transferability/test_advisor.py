"""The strategy advisor: its decision table (size x similarity) on constructed cases, the similarity votes and
their tie-break, the optional domain distance, input errors, and the data entry point over the feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY
from transferkit.errors import ScoreError
from transferkit.transferability.advisor import (BN_SIMILAR, FEW_LABELS_PER_CLASS, KNN_SIMILAR_SKILL,
                                                 LARGE_LABELS_PER_CLASS, PAD_DISSIMILAR, PAD_SIMILAR, SIMILAR_SKILL,
                                                 SOURCE_FAMILIAR, SOURCE_UNFAMILIAR, TINY_LABELS_PER_CLASS, advise,
                                                 advise_data)


def _task(per_class: int, kind: str, k: int = 4, d: int = 32, seed: int = 0):
    """Synthetic features of k classes: "similar" (class means far apart: probe and kNN near perfect), "dissimilar"
    (pure noise: both near chance), "linear_only" (the class signal hides under 30x louder noise dimensions: a
    standardised linear probe finds it, cosine kNN does not)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), per_class)
    X = rng.normal(size=(len(y), d))
    if kind == "similar":
        X[:, :k] += 6.0 * np.eye(k)[y]
    elif kind == "linear_only":
        X[:, k:] *= 30.0
        X[:, :k] += 4.0 * np.eye(k)[y]
    return X, y


def _source(n: int, confident: bool, z: int = 50, seed: int = 0) -> np.ndarray:
    """Source-classifier probabilities over z classes: 0.9 on one class (confident) or nearly uniform (flat)."""
    rng = np.random.default_rng(seed)
    if confident:
        P = np.full((n, z), 0.1 / (z - 1))
        P[np.arange(n), rng.integers(0, z, n)] = 0.9
        return P
    P = 1.0 + 0.1 * rng.random((n, z))
    return P / P.sum(1, keepdims=True)


@pytest.mark.parametrize("per_class,kind,source,expected", [
    (10, "similar", True, "probe"),                               # small & similar: freeze, train the head
    (10, "dissimilar", False, "partial"),                         # small & dissimilar: retrain the later layers
    (LARGE_LABELS_PER_CLASS, "similar", True, "partial"),         # large & similar: fine-tune the later layers
    (LARGE_LABELS_PER_CLASS, "dissimilar", False, "finetune"),    # large & dissimilar: fine-tune everything
    (10, "similar", None, "probe"),                               # no source classifier (text backbones)
    (LARGE_LABELS_PER_CLASS, "dissimilar", None, "finetune"),
    (TINY_LABELS_PER_CLASS - 1, "dissimilar", False, "probe"),    # too few labels to fine-tune anything
])
def test_decision_table(per_class, kind, source, expected):
    X, y = _task(per_class, kind)
    probs = None if source is None else _source(len(y), source)
    a = advise(X, y, source_probs=probs)
    assert a.strategy == expected, a.reasons
    ev = a.evidence
    assert ev["labels_per_class"] == per_class and ev["classes"] == 4 and ev["n_samples"] == len(y)
    assert ev["similarity"] == kind
    assert (ev["probe_skill"] >= SIMILAR_SKILL) == (kind == "similar"), ev["probe_skill"]
    assert (ev["knn_skill"] >= KNN_SIMILAR_SKILL) == (kind == "similar"), ev["knn_skill"]
    assert ev["size"] == ("tiny" if per_class < TINY_LABELS_PER_CLASS else
                          "large" if per_class >= LARGE_LABELS_PER_CLASS else "small")
    text = "\n".join(a.reasons)  # the reasons carry the numbers they are based on
    assert f"{per_class:g} labels per class over 4 classes" in text
    assert f"scores {100 * ev['probe_accuracy']:.1f}% (" in text and f"skill {ev['probe_skill']:.2f}" in text
    assert f"scores {100 * ev['knn_accuracy']:.1f}%:" in text and f"LogME {ev['logme']:.3f}" in text
    if source is None:
        assert ev["source_confidence"] is None and "source" not in ev["votes"]
    else:
        assert (ev["source_confidence"] >= SOURCE_FAMILIAR) if source else (ev["source_confidence"] < SOURCE_UNFAMILIAR)
        assert f"{100 * ev['source_confidence']:.1f}% confident" in text
        assert ev["votes"]["source"] == kind
    json.dumps(a.to_dict())  # plain JSON for config.json


def test_votes_outvote_the_probe_and_the_probe_breaks_ties():
    X, y = _task(20, "linear_only")  # the probe says similar, kNN dissimilar
    a = advise(X, y)
    assert a.evidence["votes"] == {"probe": "similar", "knn": "dissimilar"}
    assert a.strategy == "probe" and "a 1-1 tie, broken by the linear probe" in a.reasons[-1]
    flat = advise(X, y, source_probs=_source(len(y), False))  # the source classifier finds the inputs unfamiliar
    assert flat.strategy == "partial" and flat.evidence["similarity"] == "dissimilar"
    assert "(2 of 3 votes)" in flat.reasons[-1]
    sure = advise(X, y, source_probs=_source(len(y), True))
    assert sure.strategy == "probe" and "(2 of 3 votes)" in sure.reasons[-1]
    middle = np.full((len(y), 50), 0.75 / 49)  # 25% top-1: between the two thresholds, no vote
    middle[:, 0] = 0.25
    m = advise(X, y, source_probs=middle)
    assert m.evidence["votes"]["source"] is None and "no vote (in between)" in "\n".join(m.reasons)


def test_domain_distance_to_a_source_reference_votes():
    X, y = _task(20, "linear_only", seed=1)
    near = advise(X, y, target_vs_source=_task(20, "linear_only", seed=2)[0])  # same distribution
    assert near.evidence["domain"]["proxy_a_distance"] <= PAD_SIMILAR and near.evidence["votes"]["domain"] == "similar"
    far_ref = _task(20, "linear_only", seed=2)[0] + 200.0  # a shifted domain: linearly separable
    far = advise(X, y, target_vs_source=far_ref)
    assert far.evidence["domain"]["proxy_a_distance"] >= PAD_DISSIMILAR and far.strategy == "partial"
    assert f"proxy A-distance to the source reference {far.evidence['domain']['proxy_a_distance']:.2f}" in \
        "\n".join(far.reasons)
    given = advise(X, y, target_vs_source={"proxy_a_distance": 1.9})
    assert given.evidence["votes"]["domain"] == "dissimilar" and given.evidence["domain"] == {"proxy_a_distance": 1.9}
    with pytest.raises(ScoreError, match="proxy_a_distance"):
        advise(X, y, target_vs_source={"mmd_linear": 0.3})
    with pytest.raises(ScoreError, match="proxy_a_distance"):
        advise(X, y, target_vs_source={"proxy_a_distance": "far"})
    with pytest.raises(ScoreError, match="target features 32-d"):
        advise(X, y, target_vs_source=np.zeros((10, 8)))


@pytest.mark.parametrize("per_class,kind,shift,expected", [
    (10, "dissimilar", BN_SIMILAR - 0.01, "probe"),           # the label votes say dissimilar: the statistics decide
    (10, "similar", BN_SIMILAR, "partial"),                   # ... and the other way round (similar *below* 0.6)
    (LARGE_LABELS_PER_CLASS, "dissimilar", 0.2, "partial"),   # large & similar
    (LARGE_LABELS_PER_CLASS, "similar", 1.0, "finetune"),     # large & dissimilar
])
def test_the_batch_norm_shift_decides_the_similarity_alone(per_class, kind, shift, expected):
    X, y = _task(per_class, kind)
    a = advise(X, y, source_probs=_source(len(y), kind == "similar"), bn_shift=shift)
    assert a.strategy == expected, a.reasons
    ev = a.evidence
    assert ev["bn_shift"] == shift and ev["votes"]["bn"] == ev["similarity"]
    assert ev["similarity"] == ("similar" if shift < BN_SIMILAR else "dissimilar")
    assert ev["votes"]["probe"] == kind  # the other measures are still computed and reported
    assert f"shift {shift:.2f}" in a.reasons[-3] and "batch-norm statistics shift" in a.reasons[-1]
    with pytest.raises(ScoreError, match="bn_shift must be a non-negative number"):
        advise(X, y, bn_shift=-0.1)
    with pytest.raises(ScoreError, match="bn_shift must be a non-negative number"):
        advise(X, y, bn_shift="far")


def test_fewer_than_ten_labels_per_class_advise_the_probe():
    X, y = _task(FEW_LABELS_PER_CLASS - 1, "dissimilar")
    a = advise(X, y, source_probs=_source(len(y), False), bn_shift=1.2)  # dissimilar by every measure
    assert a.strategy == "probe" and a.evidence["size"] == "few" and a.evidence["similarity"] == "dissimilar"
    assert f"fewer than {FEW_LABELS_PER_CLASS} labels per class" in a.reasons[-1]
    assert "auto still races gradual unfreezing" in a.reasons[-1]
    assert advise(*_task(FEW_LABELS_PER_CLASS, "dissimilar"), bn_shift=1.2).strategy == "partial"
    assert advise(*_task(5, "dissimilar"), n_labelled_per_class=TINY_LABELS_PER_CLASS).evidence["size"] == "few"


def test_budget_subsample_and_input_errors():
    X, y = _task(300, "similar")
    a = advise(X, y, max_samples=200)  # measured on a subsample; the budget is still the full one
    assert a.evidence["n_samples"] == 200 and a.evidence["n_given"] == 1200 and a.strategy == "partial"
    assert "300 labels per class" in a.reasons[0] and "subsample of 200 of the 1200" in a.reasons[0]
    small = advise(X[::30], y[::30], n_labelled_per_class=LARGE_LABELS_PER_CLASS)  # a subsample of a large budget
    assert small.evidence["labels_per_class"] == LARGE_LABELS_PER_CLASS and small.evidence["size"] == "large"
    one = advise(*_task(2, "similar"), source_probs=_source(8, True), n_labelled_per_class=1)
    assert one.strategy == "probe" and one.evidence["size"] == "tiny"
    X1, y1 = X[[0, 300, 301, 600, 601]], y[[0, 300, 301, 600, 601]]  # class 0 has one sample: no CV probe
    b = advise(X1, y1)
    assert b.evidence["probe_accuracy"] is None and "probe" not in b.evidence["votes"] and b.strategy == "probe"
    with pytest.raises(ScoreError, match="at least 2 classes"):
        advise(X[:10], y[:10])
    with pytest.raises(ScoreError, match="one label per row"):
        advise(X, y[:-1])
    with pytest.raises(ScoreError, match="n_labelled_per_class must be a positive number"):
        advise(X, y, n_labelled_per_class=0)
    with pytest.raises(ScoreError, match="rows of source probabilities"):
        advise(X, y, source_probs=_source(10, True))


def test_advise_data_uses_the_labelled_split_and_the_cache(image_folder, tmp_path):
    logs: list[str] = []
    a = advise_data(str(image_folder), TINY, labels_per_class=8, cache_dir=tmp_path, log=logs.append)
    assert a.strategy in ("probe", "partial", "finetune") and a.evidence["labels_per_class"] == 8
    assert a.evidence["n_samples"] == a.evidence["n_labelled"] == 3 * 8  # never the 3 x 4 test images
    assert a.evidence["backbone"] == TINY and a.evidence["source_confidence"] is not None
    assert a.evidence["bn_shift"] is None  # random weights: no source statistics to compare with
    assert "extracted" in logs[0]
    again = advise_data(str(image_folder), TINY, labels_per_class=8, cache_dir=tmp_path, log=logs.append)
    assert "cache hit" in logs[1]
    assert again.strategy == a.strategy and again.reasons == a.reasons


def test_advise_data_measures_the_batch_norm_shift_on_the_labelled_split(image_folder, tmp_path, monkeypatch):
    """The shift is measured on the labelled items of the split ``fit`` makes (never a test item), with the
    backbone the features came from, and it decides the similarity."""
    import transferkit.transferability.bnstats as bnstats
    from transferkit.data.splits import make_splits

    measured = []

    def shift(backbone, source, positions, **k):
        measured.append((backbone, source, np.asarray(positions)))
        return 1.5

    monkeypatch.setattr(bnstats, "bn_shift_of", shift)
    a = advise_data(str(image_folder), TINY, labels_per_class=10, cache_dir=tmp_path, seed=1)
    assert a.evidence["bn_shift"] == 1.5 and a.evidence["similarity"] == "dissimilar" and a.strategy == "partial"
    assert a.evidence["seconds"]["bn_shift"] >= 0
    (backbone, source, positions), = measured
    assert backbone.name == TINY and len(source) == 3 * 12
    sp = make_splits(source.encoded_labels(source.classes), labels_per_class=10, seed=1, classes=source.classes)
    assert sorted(positions) == sorted(sp.labelled) and not set(positions) & set(sp.test)


def test_the_race_keeps_the_probe_unless_a_costlier_strategy_leads_by_more_than_the_noise():
    from transferkit.transferability.advisor import race_choice, race_margin

    # the margin by hand: 1.28 * sqrt((0.6*0.4 + 0.8*0.2) / 40) = 0.128
    assert race_margin(0.6, 0.8, 40) == pytest.approx(1.28 * ((0.24 + 0.16) / 40) ** 0.5)
    assert race_margin(1.0, 1.0, 10) == pytest.approx(1.28 * (0.1 / 10) ** 0.5)  # floor: one item's worth
    # on 200 items a 20-point lead is clear; among the clear ones the best validation score wins
    assert race_choice({"probe": 0.6, "gradual": 0.7, "partial": 0.8, "finetune": 0.75}, 200)[0] == "partial"
    choice, why = race_choice({"probe": 0.6, "gradual": 0.8, "partial": 0.8, "finetune": None}, 200)
    assert choice == "gradual" and "200 held-out" in why[0] and "more than the noise margin" in why[0]
    # on 12 items (clipart at 5 labels per class) two more right answers are noise: the probe stays
    choice, why = race_choice({"probe": 0.5, "gradual": 0.667, "partial": 0.417, "finetune": 0.5}, 12)
    assert choice == "probe" and "within the noise of 12 items" in why[0]
    assert race_choice({"probe": 0.5, "gradual": 0.667}, 12, z=0)[0] == "gradual"  # z=0: the plain arg-max
    assert race_choice({"probe": 0.9, "gradual": 0.9}, 12)[0] == "probe"  # a tie: the probe costs seconds
    # the lead is measured against the default (no rule: the probe), or the cheapest candidate scored without it
    assert race_choice({"probe": None, "gradual": 0.5, "finetune": 0.95}, 100)[0] == "finetune"
    # no validation split (fewer than 5 labels per class): the size x similarity rule decides
    choice, why = race_choice({"probe": None, "gradual": None}, 0, rule="partial")
    assert choice == "partial" and "no validation split" in why[0]
    assert race_choice({}, 0)[0] == "probe"


def test_the_race_keeps_the_probe_whatever_the_advice_says_when_there_is_a_validation_split():
    from transferkit.transferability.advisor import race_choice

    # the advice says fine-tune, yet the probe is the default: mnist5k seed 2 at 10 labels per class (20 validation
    # items), where rule 4 made gradual the default and kept it against the probe's 10-point validation lead
    # (gradual 50.7 % on the test items, the probe 74.8 %)
    for rule in ("partial", "finetune", "probe", None):
        choice, why = race_choice({"probe": 0.75, "gradual": 0.65}, 20, rule=rule)
        assert choice == "probe" and "nothing beats the default probe" in why[0]
    # gradual's 2-item lead on 12 items is noise whatever the advice
    choice, why = race_choice({"probe": 0.5, "gradual": 0.667}, 12, rule="finetune")
    assert choice == "probe" and "so the default probe stays" in why[0]
    # a significant lead still wins: gradual 20 points ahead on 200 items (mnist-m at 100 labels per class)
    choice, why = race_choice({"probe": 0.6, "gradual": 0.885}, 200, rule="probe")
    assert choice == "gradual" and "beats the default probe" in why[0]
    # the probe was not scored: the cheapest scored candidate stands in
    assert race_choice({"probe": None, "gradual": 0.7}, 40, rule="probe")[0] == "gradual"
    # no validation split: the advice alone
    assert race_choice({"probe": None, "gradual": None}, 0, rule="partial")[0] == "partial"


def test_the_cross_validated_race_compares_held_out_answers_item_by_item():
    from transferkit.transferability.advisor import RACE_CV_Z, paired_margin, race_choice, races

    assert races(12) and not races(0)  # rule 7: a race wherever there is a validation split (5+ labels per class)
    # by hand: 120 held-out items; gradual gets 6 right that the probe missed and misses 2 the probe got
    base = np.zeros(120, bool)
    base[:60] = True
    other = base.copy()
    other[60:66] = True
    other[:2] = False
    d = other.astype(float) - base
    assert paired_margin(base, other, 0.5) == pytest.approx(0.5 * np.sqrt(d.var(ddof=1) / 120))
    assert paired_margin(base, base, 0.5) == pytest.approx(0.5 / 120)  # floor: one item's worth of variance
    # 4 items (3.3 points) ahead, 1.2 points of paired margin: gradual; the split's own validation scores are ignored
    choice, why = race_choice({"probe": 0.9, "gradual": 0.5}, 24, held_out={"probe": base, "gradual": other})
    assert choice == "gradual" and "120 held-out labelled items (cross-validated)" in why[0]
    assert RACE_CV_Z == 0.5 and "noise margin 1.2" in why[0]
    # unpaired, the same lead on 120 items is noise (race_margin's 1.28 z: 8 points)
    assert race_choice({"probe": base.mean(), "gradual": other.mean()}, 120)[0] == "probe"
    # one item ahead while disagreeing on 41 items: within the noise, the probe stays
    noisy = base.copy()
    noisy[60:81] = True
    noisy[:20] = False
    choice, why = race_choice({"probe": 0.5, "gradual": 0.5}, 24, held_out={"probe": base, "gradual": noisy})
    assert choice == "probe" and "so the default probe stays" in why[0]
    with pytest.raises(ScoreError, match="different numbers of held-out items"):
        race_choice({}, 24, held_out={"probe": base, "gradual": other[:100]})
    with pytest.raises(ScoreError, match="two answers per held-out item"):
        paired_margin(base, other[:100])


def test_race_folds_train_each_fold_with_the_settings_fold_0_chose():
    """Folds 1..4 hold out the split's training items, each once; the probe trains on each fold's training part
    alone with the C it chose on the split's validation part (nothing chosen on the held-out items)."""
    from transferkit.data.splits import make_splits
    from transferkit.heads import create_head
    from transferkit.transferability.advisor import RACE_CV_BELOW, fold_heads, race_folds

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    X = rng.normal(size=(120, 6)) + y[:, None]
    sp = make_splits(y, labels_per_class=10, seed=2)
    folds = race_folds(y, sp, seed=2)
    assert len(folds) == 5 and folds[0] is sp
    held = np.concatenate([f.val for f in folds[1:]])
    assert sorted(held) == sorted(sp.train)  # each training item held out once; fold 0's validation is not pooled
    assert all(set(f.train) | set(f.val) == set(sp.labelled) and not set(f.train) & set(f.val) for f in folds)
    probe = create_head("logreg").fit(X[sp.train], y[sp.train], eval_set=(X[sp.val], y[sp.val]))
    answers = fold_heads(probe, X, y, folds)
    by_hand = np.concatenate([create_head("logreg", C=probe.C_).fit(X[f.train], y[f.train]).predict(X[f.val])
                              == y[f.val] for f in folds[1:]])
    assert np.array_equal(answers, by_hand) and len(answers) == len(sp.train) and 0.3 < answers.mean() < 1
    big_y = np.repeat(np.arange(2), 3000)
    big = make_splits(big_y, labels_per_class=2500, seed=0)
    assert len(big.val) >= RACE_CV_BELOW and race_folds(big_y, big) == [big]  # a large validation split decides


def test_fold_heads_train_a_torch_head_for_the_epochs_it_chose_on_fold_0(monkeypatch):
    """An MLP head stops early on the split's validation part; on the other folds (no validation) it trains for that
    epoch count, not for its 200-epoch maximum."""
    from transferkit.data.splits import make_splits
    from transferkit.heads import MLPHead, create_head
    from transferkit.transferability.advisor import fold_heads, race_folds

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = (rng.normal(size=(60, 4)) + 2 * y[:, None]).astype(np.float32)
    sp = make_splits(y, labels_per_class=10, seed=0)
    folds = race_folds(y, sp, seed=0)
    probe = create_head("mlp", hidden=(8,), epochs=60, patience=2, batch_size=8).fit(
        X[sp.train], y[sp.train], eval_set=(X[sp.val], y[sp.val]))
    assert probe.best_epoch_ < 60
    real, trained = MLPHead.fit, []

    def spy(self, X_, y_, eval_set=None):
        trained.append((self.epochs, eval_set))
        return real(self, X_, y_, eval_set=eval_set)

    monkeypatch.setattr(MLPHead, "fit", spy)
    answers = fold_heads(probe, X, y, folds)
    assert trained == [(probe.best_epoch_, None)] * 4 and len(answers) == len(sp.train)
