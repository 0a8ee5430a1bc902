"""DomainAdapter (arrays, lenet end to end, shallow methods), adapt_compare (table, report, resume, negative
transfer), target labels never read, bad input, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.adapt.test_methods import SRC, TGT
from transferkit.adapt import AdaptConfig, DomainAdapter, adapt_compare
from transferkit.adapt.experiment import _rows
from transferkit.data.sources import from_arrays
from transferkit.errors import DataError, NotFittedError, UnknownNameError

FAST = AdaptConfig(steps=30, batch_size=16, eval_every=15, bottleneck=16, lr=0.03)


def digits_like(n: int, seed: int, colour: bool = False, classes=("a", "b", "c")):
    """Tiny 12x12 'digits': a bright bar whose position is the class; the target domain is inverted/coloured."""
    r = np.random.default_rng(seed)
    y = r.integers(0, len(classes), n)
    X = r.integers(0, 60, (n, 12, 12, 3)).astype(np.uint8)
    for i, c in enumerate(y):
        X[i, :, 2 + 3 * c: 4 + 3 * c] = 230
    if colour:
        X = (255 - X) // 2 + np.array([60, 0, 30], np.uint8)
    return from_arrays(X, [classes[c] for c in y], name=f"toy{seed}")


def test_domain_adapter_on_feature_arrays_predicts_class_names():
    ys = np.array(["x", "y", "z"])[SRC[1]]
    da = DomainAdapter(None, "dann", config=FAST).fit((SRC[0], ys), TGT[0])
    pred = da.predict(TGT[0])
    assert set(pred) <= {"x", "y", "z"} and da.classes_ == ["x", "y", "z"] and len(pred) == len(TGT[0])
    p = da.predict_proba(TGT[0][:5])
    assert p.shape == (5, 3) and np.allclose(p.sum(1), 1)
    assert da.selection_ == "dev" and da.fit_.selected_step in (15, 30)
    with pytest.raises(NotFittedError):
        DomainAdapter(None, "dann").predict(TGT[0])
    from sklearn.base import clone

    c = clone(DomainAdapter(None, "cdan", config=FAST))
    assert c.get_params()["method"] == "cdan" and not hasattr(c, "seconds_")


@pytest.mark.parametrize("method", ["coral-closed", "sa", "tca", "iw", "kmm"])
def test_shallow_methods_run_through_the_adapter(method):
    X = np.c_[SRC[0], np.random.default_rng(0).normal(size=(len(SRC[0]), 3))]
    Xt = np.c_[TGT[0], np.random.default_rng(1).normal(size=(len(TGT[0]), 3))]
    da = DomainAdapter(None, method).fit((X, SRC[1]), Xt)
    assert da.estimator_ is not None and da.fit_ is None
    assert np.mean(da.predict(Xt).astype(int) == TGT[1]) > 0.4


def test_tradaboost_and_finetune_target_need_target_labels():
    for m in ("tradaboost", "finetune-target"):
        with pytest.raises(DataError, match="needs a few labelled target samples"):
            DomainAdapter(None, m, config=FAST).fit((SRC[0], SRC[1]), TGT[0])
    da = DomainAdapter(None, "finetune-target", config=FAST).fit((SRC[0], SRC[1]), TGT[0],
                                                                  target_labelled=(TGT[0][:15], TGT[1][:15]))
    assert da.fit_.history[-1].get("phase") == "target fine-tune"
    da = DomainAdapter(None, "tradaboost").fit((SRC[0], SRC[1]), TGT[0], target_labelled=(TGT[0][:30], TGT[1][:30]))
    assert da.predict(TGT[0]).shape == (len(TGT[0]),)


def test_bad_inputs_name_the_problem():
    with pytest.raises(UnknownNameError, match="Valid: source-only"):
        DomainAdapter(None, "dnn").fit((SRC[0], SRC[1]), TGT[0])
    with pytest.raises(DataError, match="regression method"):
        DomainAdapter(None, "tradaboost-r2").fit((SRC[0], SRC[1]), TGT[0], target_labelled=(TGT[0][:9], TGT[1][:9]))
    with pytest.raises(DataError, match="classification method"):
        DomainAdapter(None, "dann").fit((SRC[0], SRC[0][:, 0] * 0.37), TGT[0])
    with pytest.raises(DataError, match="target domain has no samples"):
        DomainAdapter(None, "dann", config=FAST).fit((SRC[0], SRC[1]), TGT[0][:0])
    with pytest.raises(DataError, match=r"only in the source \['c'\], only in the target \['d'\]"):
        adapt_compare(digits_like(30, 0), digits_like(30, 1, classes=("a", "b", "d")), backbone="lenet",
                      config=FAST)
    with pytest.raises(DataError, match="sa work.*on cached features, not end to end"):
        adapt_compare(digits_like(30, 0), digits_like(30, 1), methods=["sa"], backbone="lenet", config=FAST)
    with pytest.raises(DataError, match="need.*labelled target"):
        adapt_compare(digits_like(30, 0), digits_like(30, 1), methods=["tradaboost"], backbone="lenet", config=FAST)


def test_lenet_end_to_end_never_reads_target_labels():
    """Poisoned target labels (all one class, or shuffled) give exactly the same model and predictions."""
    src, tgt = digits_like(60, 0), digits_like(60, 1, colour=True)
    poisoned = from_arrays(np.stack([np.asarray(tgt.load(i)) for i in range(len(tgt))]), ["a"] * len(tgt))
    a = DomainAdapter("lenet", "dann", config=FAST).fit(src, tgt)
    b = DomainAdapter("lenet", "dann", config=FAST).fit(src, poisoned)
    assert a.fit_.selected_step == b.fit_.selected_step
    assert np.array_equal(a.decision_function(tgt), b.decision_function(poisoned))


def test_adapt_compare_table_report_resume_and_flags(tmp_path):
    src, tgt = digits_like(90, 0), digits_like(90, 1, colour=True)
    out = tmp_path / "run"
    res = adapt_compare(src, tgt, methods=["dann", "coral"], backbone="lenet", seeds=[0, 1], config=FAST, out=out)
    assert [r["method"] for r in res.rows] == ["source-only", "dann", "coral"]
    assert len(res.cells) == 6 and all(0 <= c["accuracy"] <= 1 and c["n_eval"] == 27 for c in res.cells)
    assert set(res.diagnostics) == {"source-only", "dann", "coral"}
    assert all("proxy_a_distance" in d for d in res.diagnostics.values())
    page = (out / "report.html").read_text()
    for needle in ("Accuracy by method", "Domain distances before / after", "Per-class target accuracy",
                   "checkpoint chosen by"):
        assert needle in page
    saved = json.loads((out / "adapt.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["source-only", "dann", "coral"]
    again = adapt_compare(src, tgt, methods=["dann", "coral"], backbone="lenet", seeds=[0, 1], config=FAST, out=out,
                          diagnostics=False)
    assert all(c["reused"] for c in again.cells) and again.rows == res.rows
    assert "source-only" in res.table() and "dann" in res.table()


def test_negative_transfer_rows_are_flagged_with_the_gap_when_significant():
    from transferkit.report.metrics import pack_outcomes

    def cell(m, s, correct):
        correct = np.asarray(correct, bool)
        return {"method": m, "seed": s, "accuracy": float(correct.mean()), "seconds": 1.0, "selection": "dev",
                "correct": pack_outcomes(correct)}

    ones = np.ones(100, bool)
    cells = [cell("source-only", s, np.r_[ones[:70], ~ones[:30]]) for s in (0, 1)]  # 70 %
    cells += [cell("dann", s, np.r_[ones[:50], ~ones[:50]]) for s in (0, 1)]  # 50 %: 20 items worse, every seed
    cells += [cell("jan", s, np.r_[ones[:80], ~ones[:20]]) for s in (0, 1)]  # 80 %
    cells += [cell("cdan", s, np.r_[ones[:69], ~ones[:31]]) for s in (0, 1)]  # 69 %: 2 of 200 items, noise
    rows, warnings = _rows(cells, ["source-only", "dann", "jan", "cdan"])
    assert [r.get("negative", False) for r in rows] == [False, True, False, False]
    assert len(warnings) == 1 and warnings[0].startswith("negative transfer: dann scores 50.0% on the target "
                                                         "evaluation split, 20.0 points below source-only (70.0%)")
    assert "paired over 200 target items" in warnings[0] and "McNemar p" in warnings[0]
    cdan = rows[3]["difference"]
    assert cdan["diff"] == pytest.approx(-0.01) and cdan["low"] < 0 < cdan["high"]



def test_shallow_methods_are_judged_against_their_own_classifier_without_adaptation():
    """iw beats the deep source-only but not the logistic regression it re-weights: that is negative transfer;
    a deep method is still judged against source-only."""
    from transferkit.report.metrics import pack_outcomes

    cells = [{"method": m, "seed": 0, "accuracy": a, "seconds": 1.0, "selection": "dev",
              "correct": pack_outcomes(np.arange(300) < round(300 * a))}
             for m, a in [("source-only", 0.5), ("source-only-linear", 0.7), ("iw", 0.6), ("dann", 0.55)]]
    rows, warnings = _rows(cells, ["source-only", "source-only-linear", "iw", "dann"])
    flags = {r["method"]: (r.get("baseline"), r.get("negative", False)) for r in rows}
    assert flags == {"source-only": (None, False), "source-only-linear": (None, False),
                     "iw": ("source-only-linear", True), "dann": ("source-only", False)}
    assert len(warnings) == 1 and warnings[0].startswith(
        "negative transfer: iw scores 60.0% on the target evaluation split, 10.0 points below source-only-linear "
        "(70.0%)")


def test_no_adaptation_baseline_is_the_shallow_methods_classifier():
    from transferkit.adapt.feature_space import NoAdaptation

    da = DomainAdapter(None, "source-only-linear").fit((SRC[0], SRC[1]), TGT[0])
    ref = NoAdaptation().fit(*_scaled(da, SRC[0], SRC[1], TGT[0]))
    assert np.allclose(da.estimator_.predict_proba((TGT[0] - da.mean_) / da.std_),
                       ref.predict_proba((TGT[0] - da.mean_) / da.std_))
    assert np.allclose(da.estimator_.output_mean_, ((np.r_[SRC[0], TGT[0]] - da.mean_) / da.std_).mean(0), atol=1e-6)


def _scaled(da, Xs, ys, Xt):
    return (Xs - da.mean_) / da.std_, ys.astype(str), (Xt - da.mean_) / da.std_


def test_cli_adapt_runs_and_reports_bad_input(tmp_path):
    from tests.test_cli import assert_user_error, tk

    for name, seed, colour in (("src", 0, False), ("tgt", 1, True)):
        ds = digits_like(30, seed, colour=colour)
        for i in range(len(ds)):
            d = tmp_path / name / ds.labels[i]
            d.mkdir(parents=True, exist_ok=True)
            ds.load(i).save(d / f"{i}.png")
    p = tk("adapt", "--source", tmp_path / "src", "--target", tmp_path / "tgt", "--backbone", "lenet", "--method",
           "dann", "--steps", "10", "--out", tmp_path / "out", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "source-only" in p.stdout and "dann" in p.stdout and (tmp_path / "out" / "report.html").is_file()
    assert_user_error(tk("adapt", "--source", tmp_path / "src", "--target", tmp_path / "tgt", "--method", "dnn",
                         "--backbone", "lenet"), "unknown method", "dann")
    assert_user_error(tk("adapt", "--source", tmp_path / "src"), "--target")
    assert_user_error(tk("adapt", "--source", tmp_path / "src", "--target", tmp_path / "tgt", "--precision", "8"),
                      "precision must be one of 32, bf16-mixed, 16-mixed")


def test_one_table_split_into_domains_by_its_domain_column(tmp_path):
    import pandas as pd

    rows = []
    for dom, seed, colour in (("paper", 0, False), ("screen", 1, True)):
        ds = digits_like(30, seed, colour=colour)
        for i in range(len(ds)):
            path = tmp_path / f"{dom}-{i}.png"
            ds.load(i).save(path)
            rows.append({"image": str(path), "label": ds.labels[i], "domain": dom})
    table = tmp_path / "all.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    res = adapt_compare(table, None, methods=["dann"], backbone="lenet", config=FAST, out=tmp_path / "o",
                        domain_column="domain", source_domain="paper", target_domain="screen", diagnostics=False)
    assert res.settings["source_name"].endswith("[paper]") and res.cells[0]["n_source"] == 30
    assert res.cells[0]["n_adapt"] + res.cells[0]["n_eval"] == 30
    with pytest.raises(DataError, match="values: paper, screen"):
        adapt_compare(table, None, backbone="lenet", config=FAST, domain_column="domain", source_domain="paper",
                      target_domain="phone")


def test_end_to_end_adaptation_of_a_timm_backbone():
    from tests.conftest import TINY

    src, tgt = digits_like(24, 0), digits_like(24, 1, colour=True)
    da = DomainAdapter(TINY, "dan", finetune=True, image_size=32, config=FAST).fit(src, tgt)
    assert da.fit_.net.feature.__class__.__name__ != "Identity"
    feats = [p for p in da.fit_.net.feature.parameters()]
    assert feats and all(p.requires_grad for p in feats)
    assert da.predict(tgt).shape == (24,)


def test_adda_trains_the_target_encoder_against_a_frozen_source_encoder_and_keeps_the_classifier(monkeypatch):
    import copy

    import transferkit.adapt.trainer as trainer

    entering: dict[str, dict] = {}  # stage -> the classifier's weights when the stage starts
    real = trainer.run_loop

    def spy(plan, *a, **k):
        entering[plan.stage] = copy.deepcopy(plan.net.classifier.state_dict())
        return real(plan, *a, **k)

    monkeypatch.setattr(trainer, "run_loop", spy)
    cfg = AdaptConfig(steps=500, batch_size=32, eval_every=250, bottleneck=32, lr=0.03, selection="last")
    accs = {}
    for m in ("source-only", "adda"):
        accs[m] = []
        for seed in (0, 1):
            da = DomainAdapter(None, m, config=AdaptConfig(**{**cfg.to_dict(), "seed": seed})).fit(
                (SRC[0], SRC[1]), TGT[0])
            accs[m].append(np.mean(da.predict(TGT[0]).astype(int) == TGT[1]))
            if m == "adda":
                assert [h["phase"] for h in da.fit_.history] == ["source", "source", "adversarial", "adversarial"]
                after = da.fit_.net.classifier.state_dict()
                assert all(torch.equal(after[k], entering["adversarial"][k]) for k in after)  # frozen in stage 2
                assert not all(torch.equal(after[k], entering["source"][k]) for k in after)  # trained in stage 1
    # measured (seeds 0 / 1): adda 0.640 / 0.722 against source-only 0.638 / 0.720; ADDA hardly moves this 2-D toy,
    # so the check is that the adversarial stage does not undo what the source stage learned
    assert np.mean(accs["adda"]) >= np.mean(accs["source-only"]) - 0.01, accs


def test_an_unlabelled_target_is_used_whole_and_no_accuracy_is_claimed(tmp_path):
    tgt = digits_like(30, 1, colour=True)
    unlabelled = from_arrays(np.stack([np.asarray(tgt.load(i)) for i in range(len(tgt))]))
    res = adapt_compare(digits_like(30, 0), unlabelled, methods=["dann"], backbone="lenet", config=FAST,
                        out=tmp_path / "u", diagnostics=False)
    assert all(c["n_adapt"] == 30 and c["n_eval"] == 0 and "accuracy" not in c for c in res.cells)
    assert all(r["accuracy_mean"] is None for r in res.rows) and not res.warnings


def test_a_feature_constant_on_the_source_does_not_blow_up_the_target():
    """ReLU features that are ~0 on the source but active on the target once made the head learn nothing."""
    r = np.random.default_rng(0)
    Xs = np.c_[SRC[0], np.full((len(SRC[0]), 4), 0.5) + r.normal(0, 1e-7, (len(SRC[0]), 4))].astype(np.float32)
    Xt = np.c_[TGT[0], r.uniform(0, 50, (len(TGT[0]), 4))].astype(np.float32)
    da = DomainAdapter(None, "dann", config=AdaptConfig(steps=200, batch_size=32, eval_every=100, bottleneck=32,
                                                        lr=0.03)).fit((Xs, SRC[1]), Xt)
    assert da.fit_.history[-1]["source-val"] > 0.9 and np.abs(da.transform_inputs(Xt)).max() < 1e4


def test_importance_weighting_survives_global_metadata_routing():
    """skada switches scikit-learn's metadata routing on for the whole process; our weighted fits must still work."""
    import sklearn

    with sklearn.config_context(enable_metadata_routing=True):
        da = DomainAdapter(None, "iw").fit((SRC[0], SRC[1]), TGT[0])
    assert da.predict(TGT[0]).shape == (len(TGT[0]),)
