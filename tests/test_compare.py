"""compare_strategies: shared splits, aggregates, negative-transfer flags, resume, errors; to_grayscale."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import TINY
from transferkit.compare import (advisor_sentence, advisor_summary, aggregate_cells, cap_test, compare_strategies,
                                negative_transfer_flags, winners)
from transferkit.data.sources import from_arrays, from_folder
from transferkit.data.splits import make_splits
from transferkit.data.transforms import to_grayscale
from transferkit.transferability.advisor import race_choice
from transferkit.errors import DataError, UnknownNameError
from transferkit.train.engine import TrainConfig

STRATEGIES = ("scratch", "probe", "gradual", "partial", "finetune", "cnn")


def _config() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=8, image_size=32, num_workers=0, accelerator="cpu", patience=None,
                       warmup_epochs=0.5)


@pytest.fixture(scope="module", autouse=True)
def _fast_cnn():
    """The small-CNN baseline with a few epochs (its default trains 150)."""
    import transferkit.train.scratch as scratch

    real = scratch.train_scratch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scratch, "train_scratch", lambda *a, **k: real(*a, **{**k, "epochs": 3, "size": 32}))
        yield


def _run(data, out, **kw):
    args = dict(backbone=TINY, strategies=STRATEGIES, labels_per_class=(3, 5), seeds=(0, 1), config=_config(),
                out=out)
    return compare_strategies(data, **{**args, **kw})


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison (5 strategies x 2 budgets x 2 seeds) on 3 classes x 12 images, shared by two tests."""
    from tests.conftest import make_image

    folder = tmp_path_factory.mktemp("data") / "shapes"
    for c, name in enumerate(["squares", "discs", "stripes"]):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            make_image(c, seed=100 * c + i).save(folder / name / f"{i:02d}.png")
    out = tmp_path_factory.mktemp("cmp") / "out"
    return _run(folder, out, cache_dir=tmp_path_factory.mktemp("cache")), folder, out


def test_every_strategy_runs_on_the_same_split_and_aggregates_are_right(compared):
    res, folder, out = compared
    y = from_folder(folder).encoded_labels()
    assert len(res.cells) == len(STRATEGIES) * 2 * 2 and res.reused == 0
    for b in (3, 5):
        for s in (0, 1):
            cs = [c for c in res.cells if (c["budget"], c["seed"]) == (b, s)]
            assert sorted(c["strategy"] for c in cs) == sorted(STRATEGIES)
            sp = make_splits(y, labels_per_class=b, seed=s)
            assert {c["split"] for c in cs} == {cs[0]["split"]}  # one split shared by all strategies
            assert {(c["n_train"], c["n_val"], c["n_test"]) for c in cs} == {(len(sp.train), len(sp.val),
                                                                               len(sp.test))}
            assert all(0 <= c["accuracy"] <= 1 and 0 <= c["macro_f1"] <= 1 and c["seconds"] > 0 for c in cs)
    assert len({c["split"] for c in res.cells}) == 4  # and different splits per (budget, seed)
    for a in res.aggregates:  # mean and population std by hand
        accs = [c["accuracy"] for c in res.cells if (c["strategy"], c["budget"]) == (a["strategy"], a["budget"])]
        f1s = [c["macro_f1"] for c in res.cells if (c["strategy"], c["budget"]) == (a["strategy"], a["budget"])]
        assert a["n"] == 2 and a["seeds"] == [0, 1]
        assert a["accuracy_mean"] == pytest.approx((accs[0] + accs[1]) / 2)
        assert a["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2)
        assert a["macro_f1_mean"] == pytest.approx(sum(f1s) / 2)
    for b, s in res.winners.items():
        best = max(a["accuracy_mean"] for a in res.aggregates if a["budget"] == b)
        assert next(a for a in res.aggregates if (a["strategy"], a["budget"]) == (s, b))["accuracy_mean"] == best
    saved = json.loads((out / "compare.json").read_text())
    assert len(saved["cells"]) == 24 and len(saved["aggregates"]) == 12
    assert len((out / "cells.jsonl").read_text().splitlines()) == 24
    assert len((out / "compare.csv").read_text().splitlines()) == 25
    page = (out / "report.html").read_text()
    assert "Accuracy by strategy and budget" in page and page.count("data:image/png;base64") == 2
    assert not list(out.glob("cells/*/checkpoints/*.ckpt"))  # engine checkpoints are dropped once recorded


def test_a_rerun_with_the_same_out_skips_finished_cells(compared, monkeypatch):
    res, folder, out = compared
    import transferkit.heads as heads
    import transferkit.train.engine as engine
    import transferkit.train.scratch as scratch

    calls = {"engine": 0, "probe": 0, "cnn": 0}
    real_ft, real_head, real_cnn = engine.finetune, heads.create_head, scratch.train_scratch

    def count(kind, fn):
        def wrapped(*a, **k):
            calls[kind] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(engine, "finetune", count("engine", real_ft))
    monkeypatch.setattr(heads, "create_head", count("probe", real_head))
    monkeypatch.setattr(scratch, "train_scratch", count("cnn", real_cnn))
    again = _run(folder, out)
    assert calls == {"engine": 0, "probe": 0, "cnn": 0} and again.reused == 24
    assert again.aggregates == res.aggregates
    # a kill while the last cell was written: its (partial) line is dropped and only that cell is recomputed
    lines = (out / "cells.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    (out / "cells.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    third = _run(folder, out)
    assert third.reused == 23 and sum(calls.values()) == 1
    assert _run(folder, out).reused == 24  # the recomputed cell was not glued to the cut line
    assert calls[{"probe": "probe", "cnn": "cnn"}.get(last["strategy"], "engine")] == 1
    # other settings are other cells: nothing is reused
    calls.update(engine=0, probe=0, cnn=0)
    other = _run(folder, out, strategies=("probe",), labels_per_class=(3,), seeds=(0,), max_test=6)
    assert other.reused == 0 and calls["probe"] == 1 and other.cells[0]["n_test"] == 6


def test_auto_scores_the_advisors_pick_on_the_same_split_and_reuses_the_other_cells(compared, monkeypatch):
    res, folder, out = compared
    import transferkit.train.engine as engine
    from transferkit.data.splits import make_splits
    from transferkit.report.metrics import unpack_outcomes
    from transferkit.transferability.advisor import race_folds

    folds_trained = []

    def fold_only(source, y, splits, backbone, strategy, config, run_dir, **k):
        # the compared cells are reused: the engine trains only the race's folds, for the epochs fold 0 chose
        assert k.get("train_epochs") and len(splits.val) == 0, "auto must reuse the compared cells"
        folds_trained.append((strategy, config.seed, k["train_epochs"], splits))
        return SimpleNamespace(y_pred=y[splits.test] if strategy == "gradual" else 0 * splits.test, history=[],
                               resumed_from=None)

    monkeypatch.setattr(engine, "finetune", fold_only)
    again = _run(folder, out, strategies=("auto", *STRATEGIES))  # auto is run last whatever its position
    assert again.reused == 24 and len(again.cells) == 28
    by = {(c["strategy"], c["budget"], c["seed"]): c for c in again.cells}
    y = from_folder(folder).encoded_labels()
    for b in (3, 5):
        for s in (0, 1):
            a = by[("auto", b, s)]
            chosen = a["details"]["chosen"]
            assert chosen in ("probe", "gradual") and not a["details"]["trained_for_auto"]
            assert a["accuracy"] == by[(chosen, b, s)]["accuracy"] and a["split"] == by[("probe", b, s)]["split"]
            if b == 5:  # the race: cross-validated, the folds trained with the settings the compared cells chose
                ran = [(st, e, sp) for st, seed, e, sp in folds_trained if seed == s]
                assert [st for st, _, _ in ran] == ["gradual"] * 4
                assert all(e == by[("gradual", b, s)]["details"]["best_epoch"] for _, e, _ in ran)
                sp = make_splits(y, labels_per_class=5, seed=s, classes=from_folder(folder).classes)
                folds = race_folds(y, sp, seed=s)
                assert all(np.array_equal(f.train, r.train) and np.array_equal(f.val, r.test)
                           for f, (_, _, r) in zip(folds[1:], ran))
                held = {k: unpack_outcomes(v) for k, v in a["details"]["held_out"].items()}
                assert held["gradual"].all() and len(held["probe"]) == len(sp.train) and a["details"]["folds"] == 5
                val = {k: by[(k, b, s)]["details"]["val_accuracy"] for k in ("probe", "gradual")}
                assert a["details"]["val_accuracy"] == val
                assert chosen == race_choice(val, by[("gradual", b, s)]["n_val"], rule=a["details"]["rule"],
                                             held_out=held)[0]
                # the race's cost: the advice, both candidates' cells and their folds, not partial or finetune
                assert a["seconds"] == pytest.approx(a["details"]["advice_seconds"] + a["details"]["fold_seconds"]
                                                     + sum(by[(k, b, s)]["seconds"] for k in val))
    for s in (0, 1):  # no validation split: the rule decides, and auto costs the advice and its pick, nothing else
        a = by[("auto", 3, s)]
        assert a["details"]["chosen"] == "probe" and a["details"]["val_accuracy"] == {}
        assert a["seconds"] == pytest.approx(a["details"]["advice_seconds"] + by[("probe", 3, s)]["seconds"])
        assert a["details"]["extra_seconds"] == pytest.approx(a["details"]["advice_seconds"])
    assert "auto" not in again.winners.values()
    # judged on the test items against every compared candidate, by hand: a hit is the best accuracy of the four
    judged = {(b, s): {k: by[(k, b, s)]["accuracy"] for k in ("probe", "gradual", "partial", "finetune")}
              for b in (3, 5) for s in (0, 1)}
    hits = sum(acc[by[("auto", b, s)]["details"]["chosen"]] == max(acc.values()) for (b, s), acc in judged.items())
    loss = [100 * (max(acc.values()) - acc[by[("auto", b, s)]["details"]["chosen"]]) for (b, s), acc in judged.items()]
    assert again.advisor["n"] == 4 and again.advisor["hits"] == hits and again.advisor["hit_rate"] == hits / 4
    assert again.advisor["mean_loss_points"] == pytest.approx(np.mean(loss))
    page = (out / "report.html").read_text()
    assert "What auto chose" in page and "four more folds" in page  # the report says how the race decides
    assert json.loads((out / "compare.json").read_text())["advisor"]["n"] == 4


def test_auto_trains_the_candidates_that_are_not_compared_and_picks_on_validation(image_folder, tmp_path,
                                                                                   monkeypatch):
    import transferkit.train.engine as engine

    y = from_folder(image_folder).encoded_labels()
    trained, given, refits = [], [], []

    def fake(source, y_, splits, backbone, strategy, config, *a, **k):
        trained.append(strategy)  # gradual is perfect on validation and test
        given.append((source, splits))
        refits.append(config.refit)
        return SimpleNamespace(test_index=splits.test, y_pred=y[splits.test], best_epoch=1, epochs_run=1,
                               val_accuracy=1.0 if len(splits.val) else None, train_seconds=0.0, resumed_from=None,
                               history=[], fold=k.get("train_epochs"))

    import transferkit.transferability.advisor as advisor

    real = advisor.advise

    def says_partial(*a, **k):  # the size x similarity rule says fine-tune: gradual is the race's default
        adv = real(*a, **k)
        adv.strategy = "partial"
        return adv

    import transferkit.transferability.bnstats as bnstats

    measured = []

    def shift(backbone, source, positions, **k):  # the statistics are measured on the labelled inputs only
        measured.append((source, np.asarray(positions)))
        return 0.3

    monkeypatch.setattr(engine, "finetune", fake)
    monkeypatch.setattr(advisor, "advise", says_partial)
    monkeypatch.setattr(bnstats, "bn_shift_of", shift)
    res = _run(image_folder, tmp_path / "auto", strategies=("probe", "auto"), labels_per_class=(10,), seeds=(0,),
               config=replace(_config(), refit=True))
    assert refits == [True] + [False] * 4  # the split's run refits; a fold trains for the chosen epochs, no refit
    auto = next(c for c in res.cells if c["strategy"] == "auto")
    probe = next(c for c in res.cells if c["strategy"] == "probe")
    assert len(measured) == 1 and len(measured[0][1]) == probe["n_train"] + probe["n_val"]
    (source, sp), (measured_source, positions) = given[0], measured[0]
    # the split's train + validation items of the very source the engine trains on (so the same pixels, gray ones
    # with grayscale=True), never a test item
    assert measured_source is source and np.array_equal(positions, np.sort(np.concatenate([sp.train, sp.val])))
    assert auto["details"]["bn_shift"] == 0.3 and auto["details"]["votes"]["bn"] == "similar"
    # partial, finetune: not raced; gradual: its cell on the split, then 4 folds for its chosen epoch count
    assert trained == ["gradual"] * 5 and auto["details"]["trained_for_auto"] == ["gradual"]
    assert [len(sp.val) for _, sp in given[1:]] == [0] * 4  # the folds choose nothing on their held-out items
    held_out = np.concatenate([sp.test for _, sp in given[1:]])
    assert sorted(held_out) == sorted(given[0][1].train)  # each training item of the split held out once
    seen = auto["details"]["val_accuracy"]
    assert set(seen) == {"probe", "gradual"} and seen["gradual"] == 1.0 and seen["probe"] is not None
    # the advice says fine-tune, but the race starts from the probe: gradual wins only on a significant lead of its
    # held-out answers (here all right)
    from transferkit.report.metrics import unpack_outcomes
    from transferkit.transferability.advisor import paired_margin, race_choice

    assert auto["details"]["rule"] == "partial"
    held = {k: unpack_outcomes(v) for k, v in auto["details"]["held_out"].items()}
    assert held["gradual"].all() and len(held["probe"]) == len(held_out)
    significant = 1.0 - held["probe"].mean() > paired_margin(held["probe"], held["gradual"], 0.5)
    assert auto["details"]["chosen"] == ("gradual" if significant else "probe")
    assert auto["details"]["chosen"] == race_choice(seen, auto["n_val"], rule="partial", held_out=held)[0]
    assert auto["accuracy"] == (1.0 if significant else probe["accuracy"])  # gradual's test predictions are the labels
    assert res.advisor == {}  # only probe was compared: nothing to judge the pick against


def test_auto_keeps_a_finetuning_winner_retrained_on_every_labelled_item(image_folder, tmp_path, monkeypatch):
    """Rule 8: when gradual unfreezing wins the race, the model ``auto`` keeps trains again on the split's training
    *and* validation items, for the epoch count its compared cell chose, nothing chosen on the test items; the cell
    scores that model (here right on every test item, while the split's run answers class 0 everywhere), says what
    the split's run scored, and charges the extra run to the race."""
    import transferkit.train.engine as engine
    import transferkit.transferability.advisor as advisor

    y = from_folder(image_folder).encoded_labels()
    runs = []

    def fake(source, y_, splits, backbone, strategy, config, run_dir, **k):
        runs.append((run_dir.name, splits, k.get("train_epochs")))
        kept = run_dir.name.endswith("-all")
        e = k.get("train_epochs") or 2  # the split's run chooses its second epoch
        return SimpleNamespace(test_index=splits.test, y_pred=y[splits.test] if kept else 0 * splits.test,
                               best_epoch=e, epochs_run=e, val_accuracy=0.5 if len(splits.val) else None,
                               train_seconds=0.0, resumed_from=None, history=[])

    monkeypatch.setattr(engine, "finetune", fake)
    monkeypatch.setattr(advisor, "race_choice", lambda *a, **k: ("gradual", ["gradual led (forced)"]))
    res = _run(image_folder, tmp_path / "auto", strategies=("probe", "gradual", "auto"), labels_per_class=(10,),
               seeds=(0,), config=replace(_config(), epochs=3))
    by = {c["strategy"]: c for c in res.cells}
    sp = make_splits(y, labels_per_class=10, seed=0, classes=from_folder(image_folder).classes)
    names = [n for n, _, _ in runs]
    assert names[0].startswith("gradual-n10-s0-") and names[1:5] == [f"{names[0]}-fold{j}" for j in range(1, 5)]
    assert names[5:] == [f"{names[0]}-all"]  # trained once, after the race
    _, kept_split, epochs = runs[5]
    assert sorted(kept_split.train) == sorted(np.concatenate([sp.train, sp.val])) and len(kept_split.val) == 0
    assert np.array_equal(kept_split.test, sp.test) and epochs == by["gradual"]["details"]["best_epoch"] == 2
    auto = by["auto"]
    assert auto["details"]["chosen"] == "gradual" and auto["accuracy"] == 1.0 and by["gradual"]["accuracy"] < 0.5
    kept = auto["details"]["kept"]
    assert kept["trained_on"] == len(sp.train) + len(sp.val) and kept["epochs"] == 2
    assert kept["split_run_accuracy"] == by["gradual"]["accuracy"]
    assert auto["seconds"] == pytest.approx(auto["details"]["advice_seconds"] + auto["details"]["fold_seconds"]
                                            + by["probe"]["seconds"] + by["gradual"]["seconds"] + kept["seconds"])
    assert auto["details"]["extra_seconds"] == pytest.approx(auto["seconds"] - by["gradual"]["seconds"])
    # the probe winning keeps its cell: nothing retrained
    runs.clear()
    monkeypatch.setattr(advisor, "race_choice", lambda *a, **k: ("probe", ["forced"]))
    import transferkit.compare as compare

    monkeypatch.setattr(compare, "RULE_VERSION", compare.RULE_VERSION + 1)  # decide again
    again = _run(image_folder, tmp_path / "auto", strategies=("probe", "gradual", "auto"), labels_per_class=(10,),
                 seeds=(0,), config=replace(_config(), epochs=3))
    auto = next(c for c in again.cells if c["strategy"] == "auto")
    assert auto["details"]["kept"] is None and auto["accuracy"] == by["probe"]["accuracy"]
    assert not [n for n, _, _ in runs if n.endswith("-all")]


def test_a_new_advisor_rule_decides_again_on_a_resumed_comparison(image_folder, tmp_path, monkeypatch):
    import transferkit.compare as compare

    first = _run(image_folder, tmp_path / "c", strategies=("probe", "auto"), labels_per_class=(3,), seeds=(0,))
    assert first.reused == 0
    assert _run(image_folder, tmp_path / "c", strategies=("probe", "auto"), labels_per_class=(3,),
                seeds=(0,)).reused == 2  # the same rule: both cells reused
    monkeypatch.setattr(compare, "RULE_VERSION", compare.RULE_VERSION + 1)
    again = _run(image_folder, tmp_path / "c", strategies=("probe", "auto"), labels_per_class=(3,), seeds=(0,))
    assert again.reused == 1  # the probe's cell is reused; auto's decision is made again under the new rule


def test_advisor_summary_hit_rate_and_loss_by_hand():
    accs = {(5, 0): {"probe": 0.6, "partial": 0.5, "finetune": 0.4},
            (5, 1): {"probe": 0.5, "partial": 0.7, "finetune": 0.7},
            (20, 0): {"probe": 0.6, "partial": 0.8, "finetune": 0.9}}
    picks = {(5, 0): "probe", (5, 1): "finetune", (20, 0): "probe"}
    cells = [{"strategy": k, "budget": b, "seed": s, "accuracy": v} for (b, s), d in accs.items() for k, v in d.items()]
    cells += [{"strategy": "auto", "budget": b, "seed": s, "accuracy": accs[(b, s)][k], "details": {"chosen": k}}
              for (b, s), k in picks.items()]
    summ = advisor_summary(cells, choices=("probe", "partial", "finetune"))
    assert (summ["n"], summ["hits"], summ["near"]) == (3, 2, 2)  # a tie for the best counts as a hit
    assert summ["mean_loss_points"] == pytest.approx(10.0) and summ["max_loss_points"] == pytest.approx(30.0)
    assert summ["picked"] == {"probe": 2, "finetune": 1}
    assert summ["best"] == {"probe": 1, "partial": 1, "finetune": 2}
    assert summ["fixed"]["finetune"]["hit_rate"] == pytest.approx(2 / 3)
    assert summ["fixed"]["finetune"]["mean_loss_points"] == pytest.approx(20 / 3)
    assert summ["fixed"]["probe"]["mean_loss_points"] == pytest.approx((0 + 20 + 30) / 3)
    assert summ["mean_accuracy"] == pytest.approx((0.6 + 0.7 + 0.6) / 3)
    assert summ["fixed"]["probe"]["mean_accuracy"] == pytest.approx((0.6 + 0.5 + 0.6) / 3)
    assert "within 1 point of it on 2 of 3 splits (67%; the best on 2)" in advisor_sentence(summ)
    assert advisor_summary(cells[:9], choices=("probe", "partial", "finetune")) == {}
    # rule 8: the kept model (a fine-tuning winner retrained on every label) is judged, not the chosen cell: above
    # every candidate is a hit with no loss
    # (20, 0): partial picked, its cell 0.8 (10 points below finetune's), the model kept 0.92
    cells[-1] = {**cells[-1], "accuracy": 0.92, "details": {"chosen": "partial"}}
    summ = advisor_summary(cells, choices=("probe", "partial", "finetune"))
    assert (summ["hits"], summ["near"]) == (3, 3) and summ["per_split"][2]["loss_points"] == 0.0
    assert summ["mean_accuracy"] == pytest.approx((0.6 + 0.7 + 0.92) / 3)
    assert summ["picked"] == {"probe": 1, "finetune": 1, "partial": 1}


def test_auto_is_judged_against_the_strategies_it_no_longer_races():
    """``auto`` races the probe and gradual only, but its choice is judged (by default, and in ``compare.json``)
    against partial and finetune too: a split where partial was best is a miss even if auto beat the probe."""
    from transferkit.compare import ADVISOR_CHOICES
    from transferkit.transferability.advisor import RACE_CANDIDATES

    assert set(RACE_CANDIDATES) < set(ADVISOR_CHOICES) == {"probe", "gradual", "partial", "finetune"}
    accs = {"probe": 0.5, "gradual": 0.6, "partial": 0.75, "finetune": 0.7}
    cells = [{"strategy": k, "budget": 10, "seed": 0, "accuracy": v} for k, v in accs.items()]
    cells.append({"strategy": "auto", "budget": 10, "seed": 0, "accuracy": 0.6, "details": {"chosen": "gradual"}})
    summ = advisor_summary(cells)
    assert (summ["n"], summ["hits"], summ["near"]) == (1, 0, 0) and summ["best"] == {"partial": 1}
    assert summ["mean_loss_points"] == pytest.approx(15.0)
    assert advisor_summary(cells[:-2] + cells[-1:]) == {}  # finetune not compared: the split is not judged


def test_negative_transfer_is_flagged_with_the_gap_when_significant():
    from transferkit.report.metrics import pack_outcomes

    def outcomes(acc, n=100):
        return np.arange(n) < round(acc * n)  # nested: a lower accuracy loses items the higher one keeps

    cells = [{"strategy": s, "budget": b, "seed": k, "accuracy": acc, "macro_f1": acc, "seconds": 1.0,
              "correct": pack_outcomes(outcomes(acc))}
             for s, b, accs in [("scratch", 5, (0.50, 0.60)), ("finetune", 5, (0.40, 0.44)),
                                ("probe", 5, (0.70, 0.80)), ("scratch", 20, (0.70, 0.70)),
                                ("finetune", 20, (0.90, 0.80)), ("partial", 20, (0.69, 0.70))]
             for k, acc in enumerate(accs)]
    aggs = aggregate_cells(cells)
    flags = negative_transfer_flags(cells)
    assert [(f["strategy"], f["budget"]) for f in flags] == [("finetune", 5)]  # not partial: 1 item of 200 is noise
    assert flags[0]["gap_points"] == pytest.approx(13.0) and flags[0]["baseline"] == "scratch"
    assert flags[0]["difference"]["n"] == 200 and flags[0]["difference"]["high"] < 0
    assert winners(aggs) == {5: "probe", 20: "finetune"}
    assert negative_transfer_flags([c for c in cells if c["strategy"] != "scratch"]) == []


def test_negative_transfer_reaches_the_result_and_the_report(image_folder, tmp_path, monkeypatch):
    """Engine results replaced: scratch predicts every test item right, finetune every one wrong."""
    import transferkit.train.engine as engine

    y = from_folder(image_folder).encoded_labels()

    def fake(source, y_, splits, backbone, strategy, *a, **k):
        pred = y[splits.test] if strategy == "scratch" else (y[splits.test] + 1) % 3
        return SimpleNamespace(test_index=splits.test, y_pred=pred, best_epoch=1, epochs_run=1, val_accuracy=None,
                               train_seconds=0.0, resumed_from=None)

    monkeypatch.setattr(engine, "finetune", fake)
    res = _run(image_folder, tmp_path / "neg", strategies=("scratch", "finetune"))
    assert [(f["strategy"], f["budget"], round(f["gap_points"], 6)) for f in res.negative_transfer] == [
        ("finetune", 3, 100.0), ("finetune", 5, 100.0)]
    assert res.winners == {3: "scratch", 5: "scratch"}
    assert "100.0 points below" in res.warnings[0]
    assert "negative transfer" in (tmp_path / "neg" / "report.html").read_text()


def test_unknown_strategy_names_the_valid_ones(image_folder, tmp_path):
    with pytest.raises(UnknownNameError, match=r"'fintune'.*finetune, partial, gradual, scratch, probe, lora, adapter, bitfit, setfit, cnn, auto"):
        _run(image_folder, tmp_path / "x", strategies=("probe", "fintune"))
    with pytest.raises(DataError, match="smallest class has 12 samples"):
        _run(image_folder, tmp_path / "x", labels_per_class=(12,))


def test_cap_test_is_stratified_and_seeded():
    y = np.repeat([0, 1, 2], [100, 50, 10])
    test = np.arange(160)
    a = cap_test(test, y, 32, seed=0)
    assert len(a) == 32 and np.bincount(y[a]).tolist() == [20, 10, 2]
    assert np.array_equal(a, cap_test(test, y, 32, seed=0)) and not np.array_equal(a, cap_test(test, y, 32, seed=1))
    assert np.array_equal(cap_test(test, y, None, 0), test)


def test_to_grayscale_gives_gray_three_channel_items_with_new_keys(image_folder):
    src = from_folder(image_folder)
    gray = to_grayscale(src)
    img = gray.load(0)
    a = np.asarray(img)
    assert img.mode == "RGB" and a.shape == np.asarray(src.load(0)).shape
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])
    assert not np.array_equal(np.asarray(src.load(0)), a)
    assert list(gray.labels) == list(src.labels) and gray.name == f"{src.name}-gray"
    assert not (gray.item_keys() == src.item_keys()).all(axis=1).any()  # the feature cache cannot mix them
    assert gray.fingerprint() != src.fingerprint()
    sub = gray.subset([0, 2])
    assert np.array_equal(np.asarray(sub.load(1)), np.asarray(gray.load(2)))
    assert np.array_equal(sub.item_keys(), gray.item_keys()[[0, 2]])
    arrays = from_arrays(np.stack([np.asarray(src.load(i)) for i in range(3)]), [0, 1, 2])
    assert np.asarray(to_grayscale(arrays).load(1)).shape == (32, 32, 3)
    with pytest.raises(DataError, match="needs images"):
        to_grayscale(from_arrays(["a text", "another"], [0, 1]))


@pytest.mark.parametrize("compared", [True, False])
def test_a_killed_auto_cell_resumes_from_its_finished_folds(image_folder, tmp_path, monkeypatch, compared):
    """A comparison killed in the middle of auto's folds: the finished folds (and gradual's run on the split when
    auto trained it for the race, gradual not being compared) keep their checkpoints, so the rerun resumes them
    instead of training them again; once the cell has every answer, no checkpoint is left."""
    import transferkit.train.engine as engine

    y = from_folder(image_folder).encoded_labels()
    trained, resumed, kill = [], [], {"at": "gradual-fold3"}

    def fake(source, y_, splits, backbone, strategy, config, run_dir, **k):
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        name = run_dir.name.split("-")[0] + (f"-{run_dir.name.split('-')[-1]}" if "fold" in run_dir.name else "")
        if ckpt.exists():  # what the engine does with resume=True and a finished checkpoint: no training
            resumed.append(name)
        else:
            if name == kill["at"]:
                raise KeyboardInterrupt  # killed during this fold
            trained.append(name)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_bytes(b"finished")
        return SimpleNamespace(test_index=splits.test, y_pred=y[splits.test], best_epoch=1, epochs_run=1,
                               val_accuracy=1.0 if len(splits.val) else None, train_seconds=0.0,
                               resumed_from=1 if name in resumed else None, history=[{"seconds": 0.0}],
                               run_dir=run_dir)

    monkeypatch.setattr(engine, "finetune", fake)
    kw = dict(strategies=("probe", "gradual", "auto") if compared else ("probe", "auto"), labels_per_class=(5,),
              seeds=(0,))
    with pytest.raises(KeyboardInterrupt):
        _run(image_folder, tmp_path / "cmp", **kw)
    assert trained == ["gradual", "gradual-fold1", "gradual-fold2"]
    kept = sorted(p.parent.parent.name.split("-")[-1] for p in (tmp_path / "cmp").glob("cells/*/checkpoints/*"))
    # kept until the auto cell is done: the finished folds, and gradual's run on the split when auto trained it
    assert [k for k in kept if k.startswith("fold")] == ["fold1", "fold2"] and len(kept) == 2 + (not compared)
    kill["at"] = None
    trained.clear()
    res = _run(image_folder, tmp_path / "cmp", **kw)
    assert trained == ["gradual-fold3", "gradual-fold4"]
    assert resumed == ([] if compared else ["gradual"]) + ["gradual-fold1", "gradual-fold2"]
    assert next(c for c in res.cells if c["strategy"] == "auto")["details"]["folds"] == 5
    assert not list((tmp_path / "cmp").glob("cells/*/checkpoints/*"))  # every checkpoint dropped once recorded
