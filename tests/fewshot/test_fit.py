"""One-shot as a first-class case: ``fit`` with one or two labels per class picks the few-shot head and says why (in
the result, config.json and the report); few-shot heads save, load and predict through a run like any other."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY
from transferkit import load_run
from transferkit.fewshot import FEWSHOT_HEAD, FEWSHOT_MAX_LABELS, FEWSHOT_PARAMS, choose_head, resolve_auto_head
from transferkit.heads import create_head
from transferkit.pipeline import fit_run


def test_choose_head_by_labels_per_class():
    head, why = choose_head(["a", "b", "c"])
    assert head == FEWSHOT_HEAD and why.startswith("1 label per class") and "validation" in why
    assert choose_head(["a", "a", "b", "b"])[0] == FEWSHOT_HEAD
    assert choose_head(["a", "b"] * FEWSHOT_MAX_LABELS)[0] == FEWSHOT_HEAD
    head, why = choose_head(["a"] * (FEWSHOT_MAX_LABELS + 1) + ["b"] * 8)
    assert head == "logreg" and why.startswith(f"{FEWSHOT_MAX_LABELS + 1} labels per class") and "C=1" in why
    head, why = choose_head(["a", "b", "c"], validation=True)  # validation labels: C is chosen on them
    assert head == "logreg" and "C chosen on validation" in why


def test_auto_gives_the_few_shot_head_its_parameters_unless_the_user_gave_them():
    params = {}
    assert resolve_auto_head(["a", "b"], params)[0] == FEWSHOT_HEAD and params == FEWSHOT_PARAMS
    params = {"C": 3.0}
    resolve_auto_head(["a", "b"], params)
    assert params == {**FEWSHOT_PARAMS, "C": 3.0}
    params = {}
    assert resolve_auto_head(["a"] * 9 + ["b"] * 9, params)[0] == "logreg" and params == {}


def test_the_shipped_default_is_the_benchmark_rule_s_choice_on_validation_episodes():
    """The default is not picked by hand: bench_fewshot's rule on validation episodes of base classes chose it
    (benchmarks/results/bench_fewshot.json, the run this package's numbers come from)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    raw = root / "results" / "bench_fewshot.json"
    if not raw.is_file():
        pytest.skip("benchmark results not in this checkout")
    sys.path.insert(0, str(root))
    try:
        from bench_fewshot import TEST_HEADS, choose_default
    finally:
        sys.path.remove(str(root))
    doc = json.loads(raw.read_text())
    cells = [doc["validation"][f"{c} base classes"] for c in ("clipart", "mnist5k")]
    choice = choose_default(cells, doc["settings"]["shots"])["choice"]
    assert next((h[1], h[2]) for h in TEST_HEADS if h[0] == choice) == (FEWSHOT_HEAD, FEWSHOT_PARAMS)


def test_fit_one_label_per_class_picks_the_few_shot_head_and_the_run_predicts_the_same(image_folder, tmp_path):
    res = fit_run(str(image_folder), backbone=TINY, labels_per_class=1, out=tmp_path / "run", baseline=False,
                  progress=False, num_workers=0)
    assert res.head == FEWSHOT_HEAD and res.head_reason.startswith("1 label per class")
    assert res.splits == {"train": 3, "val": 0, "test": 33}
    config = json.loads((res.run_dir / "config.json").read_text())
    assert config["head"] == FEWSHOT_HEAD and config["head_requested"] == "auto"
    assert config["head_reason"] == res.head_reason
    assert config["head_params"] == FEWSHOT_PARAMS and config["head_fitted"]["C"] == FEWSHOT_PARAMS["C"]
    report = (res.run_dir / "report.html").read_text()
    assert f"Why the {FEWSHOT_HEAD} head?" in report and "too few to hold out a validation split" in report
    assert res.metrics["accuracy"] > 0.5, "three very different synthetic classes from one example each (chance 1/3)"
    run = load_run(res.run_dir)
    assert run.model_info["head"]["kind"] == create_head(FEWSHOT_HEAD).fit(np.eye(2), [0, 1]).to_module().kind
    preds = pd.read_csv(res.run_dir / "predictions.csv")
    again = run.predict(list(preds["input"]), num_workers=0)
    assert (again["prediction"].to_numpy() == preds["prediction"].to_numpy()).all()
    np.testing.assert_allclose(again["p_discs"].to_numpy(), preds["p_discs"].to_numpy(), atol=1e-5)


def test_a_trained_few_shot_head_saves_loads_and_predicts_through_a_run(image_folder, tmp_path):
    res = fit_run(str(image_folder), backbone=TINY, head="chen-baseline++", labels_per_class=2, out=tmp_path / "run",
                  baseline=False, report=False, progress=False, num_workers=0)
    assert res.head == "chen-baseline++" and res.head_reason is None  # named, not chosen
    run = load_run(res.run_dir)
    assert run.model_info["head"]["kind"] == "normed-linear"
    preds = pd.read_csv(res.run_dir / "predictions.csv")
    again = run.predict(list(preds["input"]), num_workers=0)
    assert (again["prediction"].to_numpy() == preds["prediction"].to_numpy()).all()


def test_auto_with_parameters_the_chosen_head_does_not_take_is_refused(image_folder, tmp_path):
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match=rf"head='auto' chose {FEWSHOT_HEAD} .*does not take head_params "
                                               r"\{'hidden': \(8,\)\}"):
        fit_run(str(image_folder), backbone=TINY, labels_per_class=1, head_params={"hidden": (8,)}, out=tmp_path / "run",
                baseline=False, report=False, progress=False, num_workers=0)


def test_estimator_auto_head_by_labels_per_class():
    from transferkit import TransferClassifier
    from transferkit.data import load_builtin
    from transferkit.errors import TransferkitError

    src = load_builtin("digits")
    X, y = np.stack(src.items[:300]), np.asarray(src.labels[:300])
    one = np.asarray([np.flatnonzero(y == c)[0] for c in np.unique(y)])  # one example per class
    clf = TransferClassifier(backbone=TINY, num_workers=0).fit(X[one], y[one])
    assert clf.get_params()["head"] == "auto", "the argument is stored as given"
    assert clf.head_name_ == FEWSHOT_HEAD and clf.head_reason_.startswith("1 label per class")
    rest = np.setdiff1d(np.arange(300), one)
    assert clf.score(X[rest], y[rest]) > 0.15, "one example per digit, random tiny-net features: 5 sd above 10% chance"
    many = TransferClassifier(backbone=TINY, num_workers=0).fit(X[:200], y[:200])
    assert many.head_name_ == "logreg" and many.head_reason_.startswith(f"{np.bincount(y[:200].astype(int)).min()} labels")
    with pytest.raises(TransferkitError, match=rf"head='auto' chose {FEWSHOT_HEAD} .*does not take head_params"):
        TransferClassifier(backbone=TINY, num_workers=0, head_params={"hidden": (8,)}).fit(X[one], y[one])
