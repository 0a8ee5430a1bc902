"""Semi-supervised strategies through ``fit_run`` and the CLI: the unlabelled rest of the data or a folder of other
inputs, the comparison rows beside them, the run that predicts as trained, and the errors raised before any work."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from tests.conftest import TINY
from tests.test_cli import assert_user_error, tk
from transferkit import load_run
from transferkit.data import collect_inputs
from transferkit.errors import TransferkitError
from transferkit.pipeline import fit_run

# one head (the default trains three, SemiConfig(ensemble=3)): these tests are about the rest; the ensemble
# through fit is tests/semi/test_ensemble.py's
SMALL = {"steps": 30, "eval_every": 10, "draws": 2, "batch_size": 4, "mu": 2, "ensemble": 1}


def test_fixmatch_on_the_rest_of_the_data_reports_baselines_and_predicts_as_trained(image_folder, tmp_path):
    res = fit_run(str(image_folder), backbone=TINY, strategy="fixmatch", labels_per_class=2, unlabelled="rest",
                  semi_config=SMALL, out=tmp_path / "run", progress=False, baseline=False)
    names = [r["name"] for r in res.comparison]
    assert any("fixmatch" in n for n in names), names
    assert any("probe on the labels alone" in n for n in names), names
    assert any("self-training" in n for n in names) and any("label spreading" in n for n in names), names
    # the split: 2 labelled per class, a test share, the rest unlabelled (never the test items)
    assert res.splits["train"] + res.splits.get("val", 0) == 6 and res.splits["unlabelled"] > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    semi = config["semi"]
    assert semi["method"] == "fixmatch" and len(semi["history"]) == 3
    assert all(0 <= h["metric_mask_rate"] <= 1 for h in semi["history"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert "pseudo-label" in html.lower()
    test = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert res.metrics["accuracy"] == pytest.approx(test["correct"].mean())
    pred = load_run(tmp_path / "run").predict(collect_inputs(list(test["input"])))
    assert list(pred["prediction"]) == list(test["prediction"]), "the saved semi head predicts as it was tested"


def test_flexmatch_reads_a_folder_of_unlabelled_inputs(image_folder, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for p in sorted(image_folder.rglob("*.png"))[::3]:
        shutil.copy(p, pool / f"{p.parent.name}-{p.name}")
    res = fit_run(str(image_folder), backbone=TINY, strategy="flexmatch", labels_per_class=3, unlabelled=str(pool),
                  semi_config=SMALL, out=tmp_path / "run", progress=False, baseline=False, report=False)
    assert res.splits["unlabelled"] == len(list(pool.iterdir()))
    hist = json.loads((tmp_path / "run" / "config.json").read_text())["semi"]["history"]
    assert len(hist[-1]["thresholds"]) == 3


def test_softmatch_runs_through_fit_with_soft_weights(image_folder, tmp_path):
    res = fit_run(str(image_folder), backbone=TINY, strategy="softmatch", labels_per_class=2, unlabelled="rest",
                  semi_config=SMALL, out=tmp_path / "run", progress=False, baseline=False, report=False)
    semi = json.loads((tmp_path / "run" / "config.json").read_text())["semi"]
    assert semi["method"] == "softmatch" and res.splits["unlabelled"] > 0
    # soft weights: every item trains with a weight in (0, 1], so the logged mean weight is above 0
    assert all(0 < h["metric_mask_rate"] <= 1 for h in semi["history"])
    # ... and not a 0/1 mask: a hard mask's rate, averaged over eval_every steps of batch_size * mu unlabelled items,
    # is a multiple of 1 / (eval_every * batch_size * mu); a truncated Gaussian's mean weight is not
    grid = SMALL["eval_every"] * SMALL["batch_size"] * SMALL["mu"]
    assert any(abs(h["metric_mask_rate"] * grid - round(h["metric_mask_rate"] * grid)) > 1e-3
               for h in semi["history"]), [h["metric_mask_rate"] for h in semi["history"]]
    thresholds = [h["thresholds"] for h in semi["history"]]
    assert all(len(t) == 3 and len(set(t)) == 1 for t in thresholds)  # one running mean confidence for every class
    # a running mean that moves with the head's confidence (not a fixed tau such as FixMatch's 0.95), above 1/3
    assert len({t[0] for t in thresholds}) == len(thresholds) and all(1 / 3 < t[0] < 1 for t in thresholds)


def test_labelprop_and_graph_options_run_through_fit(image_folder, tmp_path):
    res = fit_run(str(image_folder), backbone=TINY, strategy="labelprop", labels_per_class=2, unlabelled="rest",
                  semi_config={**SMALL, "smoothing": 0.9, "sharpen": 0.5, "teacher_decay": 0.99},
                  out=tmp_path / "run", progress=False, baseline=False, report=False)
    semi = json.loads((tmp_path / "run" / "config.json").read_text())["semi"]
    assert semi["method"] == "labelprop" and res.splits["unlabelled"] > 0
    assert all(0 < h["metric_mask_rate"] <= 1 for h in semi["history"])  # certainty x class weights
    run = load_run(tmp_path / "run")
    assert len(run.predict(collect_inputs(sorted(str(p) for p in image_folder.rglob("*.png"))[:2]))) == 2


def test_end_to_end_semi_trains_the_backbone(image_folder, tmp_path):
    res = fit_run(str(image_folder), backbone=TINY, strategy="fixmatch", labels_per_class=3, unlabelled="rest",
                  semi_level="end-to-end", train_config={"epochs": 1, "batch_size": 4}, out=tmp_path / "run",
                  progress=False, baseline=False, report=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["semi"]["level"] == "end-to-end"
    assert 0 <= res.metrics["accuracy"] <= 1
    run = load_run(tmp_path / "run")
    assert len(run.predict(collect_inputs(sorted(str(p) for p in image_folder.rglob("*.png"))[:3]))) == 3
    # the backbone trained: the saved one differs from the (seeded) pretrained weights it started from
    from transferkit.backbones import create_backbone

    start = create_backbone(TINY).state_dict()
    trained = run.backbone.state_dict()
    shared = [k for k in trained if k in start and trained[k].is_floating_point()]
    assert len(shared) > 10  # the feature extractor's weights (the source classifier is dropped for the new head)
    assert any(not torch.equal(trained[k], start[k]) for k in shared)


@pytest.mark.parametrize("kwargs,needle", [
    ({"strategy": "probe", "unlabelled": "rest", "labels_per_class": 2}, "not by strategy 'probe'"),
    ({"strategy": "fixmatch"}, "learns from unlabelled inputs"),
    ({"strategy": "fixmatch", "unlabelled": "rest", "labels_per_class": None}, "needs a labels-per-class budget"),
    ({"strategy": "fixmatch", "unlabelled": "/no/such/pool", "labels_per_class": 2}, "no such folder or file"),
    ({"strategy": "fixmatch", "unlabelled": "rest", "labels_per_class": 2, "strategy_params": {"tau": 1.5}}, "tau"),
    ({"strategy": "flexmatch", "unlabelled": "rest", "labels_per_class": 2, "semi_config": {"stpes": 3}},
     "unknown semi-supervised setting(s) stpes"),
    ({"strategy": "fixmatch", "unlabelled": "rest", "labels_per_class": 2, "semi_level": "half"}, "semi_level"),
    ({"strategy": "labelprop", "unlabelled": "rest", "labels_per_class": 2, "semi_level": "end-to-end"},
     "probe cost only: use semi_level=features"),
    ({"strategy": "fixmatch", "unlabelled": "rest", "labels_per_class": 2, "semi_level": "end-to-end",
      "semi_config": {"ensemble": 2}}, "semi_config sets the head trained at semi_level='features'"),
])
def test_bad_semi_settings_fail_before_any_work(image_folder, tmp_path, kwargs, needle):
    with pytest.raises(TransferkitError) as e:
        fit_run(str(image_folder), backbone=TINY, out=tmp_path / "run", progress=False, **kwargs)
    assert needle in str(e.value)
    assert not (tmp_path / "run" / "config.json").exists()


def test_cli_fit_with_unlabelled_rest_and_clear_errors(image_folder, tmp_path):
    p = tk("fit", image_folder, "-b", TINY, "-s", "flexmatch", "-u", "rest", "-n", "2", "--steps", "20",
           "--ensemble", "2", "--no-baseline", "--no-report", "-o", tmp_path / "run")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "flexmatch" in p.stdout and "label spreading" in p.stdout
    head = json.loads((tmp_path / "run" / "model" / "model.json").read_text())["head"]
    assert head["kind"] == "mean-probability" and len(head["config"]["members"]) == 2  # --ensemble 2: two heads
    for bad in (("-s", "fixmatch", "-u", "rest", "--ensemble", "0"), ("--ensemble", "2"),
                ("-s", "fixmatch", "-u", "rest", "--ensemble", "2", "--semi-level", "end-to-end")):
        assert_user_error(tk("fit", image_folder, "-b", TINY, "-n", "2", *bad, "-o", tmp_path / "bad"), "--ensemble")
    assert_user_error(tk("fit", image_folder, "-b", TINY, "-s", "fixmatch", "-u", "rest", "-n", "2", "--tau", "2",
                         "-o", tmp_path / "r2"), "--tau")
    assert_user_error(tk("fit", image_folder, "-b", TINY, "-u", "rest", "-n", "2", "-o", tmp_path / "r3"),
                      "--unlabelled")
    assert_user_error(tk("fit", image_folder, "-b", TINY, "-s", "fixmatch", "-n", "2", "-o", tmp_path / "r4"),
                      "unlabelled")


def test_tta_averages_the_reported_test_probabilities_and_leaves_the_saved_run_on_the_eval_view(image_folder, tmp_path):
    for name, cfg in (("plain", SMALL), ("tta", {**SMALL, "tta": True})):
        fit_run(str(image_folder), backbone=TINY, strategy="fixmatch", labels_per_class=2, unlabelled="rest",
                semi_config=cfg, out=tmp_path / name, progress=False, baseline=False, report=False)
    assert json.loads((tmp_path / "tta" / "config.json").read_text())["semi"]["tta"] is True
    a, b = (pd.read_csv(tmp_path / n / "predictions.csv") for n in ("plain", "tta"))
    assert list(a["input"]) == list(b["input"])
    pa, pb = a.filter(like="p_").to_numpy(), b.filter(like="p_").to_numpy()
    assert abs(pb.sum(1) - 1).max() < 1e-6 and abs(pa - pb).max() > 1e-4, "tta changed the test probabilities"
    # training is unchanged: the saved tta run is the plain run's head, and predicts from the eval view as it
    saved = load_run(tmp_path / "tta").predict(collect_inputs(list(a["input"])))
    assert list(saved["prediction"]) == list(a["prediction"])
