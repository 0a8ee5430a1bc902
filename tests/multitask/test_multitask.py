"""Multitask training: several heads over one trunk learn their tasks (with missing labels), a run with several
heads saves, loads and predicts every task, and the comparison with single-task models (relative change, Δm,
negative transfer) matches a hand computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY
from transferkit.multitask import (MultitaskConfig, Task, compare_to_single, delta_m, load_tasks, relative_change,
                                   split_items, train_multitask)
from transferkit.errors import DataError

FAST = MultitaskConfig(hidden=(32,), epochs=40, patience=None, batch_size=64, lr=3e-3)


def _toy(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    a = (X[:, 0] + X[:, 1] > 0).astype(float)
    b = np.digitize(X[:, 2], [-0.5, 0.5]).astype(float)
    r = 3 * X[:, 3] - X[:, 0] + 10 + rng.normal(scale=0.2, size=n)
    Y = np.stack([a, b, r], 1)
    Y[rng.random(n) < 0.4, 1] = np.nan  # task b: 40% of its labels missing
    tasks = [Task("a", "classification", ["no", "yes"]), Task("b", "classification", ["lo", "mid", "hi"]),
             Task("r", "regression")]
    return X, Y, tasks


def test_a_shared_trunk_learns_every_task_with_missing_labels():
    X, Y, tasks = _toy()
    sp = split_items(Y, tasks, seed=0)
    fit = train_multitask(X, Y, tasks, sp, "equal", config=FAST)
    m = fit.test_metrics
    assert m["a"]["accuracy"] > 0.85 and m["b"]["accuracy"] > 0.7  # chance 0.5 and 1/3
    assert m["b"]["n"] < len(sp.test)  # scored only where the label exists
    assert m["r"]["r2"] > 0.8 and abs(np.mean(fit.predictions["r"]) - 10) < 1.0  # in the task's own units


def test_relative_change_and_delta_m_by_hand():
    assert relative_change("classification", {"accuracy": 0.8}, {"accuracy": 0.75}) == pytest.approx(100 * 0.05 / 0.75)
    assert relative_change("regression", {"mae": 1.1}, {"mae": 1.0}) == pytest.approx(-10.0)
    assert delta_m([100 * 0.05 / 0.75, -10.0]) == pytest.approx((100 * 0.05 / 0.75 - 10.0) / 2)


def test_regression_negative_transfer_needs_the_whole_interval_below_zero():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    good = y + rng.normal(scale=0.1, size=300)
    bad = y + rng.normal(scale=0.5, size=300)
    worse = compare_to_single("regression", y, bad, good)
    assert worse["flag"] and worse["high"] < 0 and worse["change_percent"] < -100
    same = compare_to_single("regression", y, good + rng.normal(scale=0.01, size=300), good)
    assert not same["flag"] and same["low"] < 0 < same["high"]
    cls = compare_to_single("classification", np.r_[np.zeros(50), np.ones(50)], np.zeros(100), np.r_[np.zeros(50),
                                                                                                    np.ones(50)])
    assert cls["kind"] == "mcnemar" and cls["flag"] and cls["diff"] == pytest.approx(-0.5)


def test_tasks_from_a_table_detect_kinds_and_keep_missing_labels(tmp_path):
    p = tmp_path / "t.csv"
    pd.DataFrame({"text": [f"item {i}" for i in range(30)], "topic": ["x", "y", None] * 10,
                  "score": np.linspace(0, 1, 30), "stars": [1, 2, 3] * 10}).to_csv(p, index=False)
    td = load_tasks(p, "topic,score,stars:regression")
    assert [(t.name, t.kind) for t in td.tasks] == [("topic", "classification"), ("score", "regression"),
                                                    ("stars", "regression")]
    assert np.isnan(td.Y[:, 0]).sum() == 10 and td.tasks[0].classes == ["x", "y"]
    with pytest.raises(DataError, match="no column"):
        load_tasks(p, "topic,nothing")


def test_a_run_with_several_heads_saves_loads_and_predicts_every_task(table, tmp_path):
    from transferkit import load_run
    from transferkit.multitask import fit_multitask

    res = fit_multitask(table, "shape,brightness:regression,size", backbone=TINY, weighting="equal,uncertainty",
                        out=tmp_path / "run", progress=False, num_workers=0,
                        config=MultitaskConfig(hidden=(16,), epochs=15, patience=None, lr=3e-3))
    assert [r["weighting"] for r in res.rows] == ["equal", "uncertainty"]
    for r in res.rows:
        assert r["delta_m"] is not None and {t["task"] for t in r["tasks"]} == {"shape", "brightness", "size"}
    run = load_run(res.run_dir)
    assert [t["name"] for t in run.tasks] == ["shape", "brightness", "size"]
    preds = pd.read_csv(res.run_dir / "predictions.csv")
    inputs = [str(table.parent / p.split("/")[-1]) for p in preds["input"]]
    out = run.predict(inputs, num_workers=0)
    assert (out["shape"].to_numpy() == preds["shape_pred"].to_numpy()).all()
    assert np.allclose(out["brightness"].to_numpy(), preds["brightness_pred"].to_numpy(), atol=1e-5)
    assert (out["size"].to_numpy() == preds["size_pred"].to_numpy()).all()
    assert {"p_shape=disc", "p_size=big", "shape_confidence"} <= set(out.columns)
    assert np.allclose(out[["p_shape=disc", "p_shape=square", "p_shape=stripes"]].sum(axis=1), 1.0)



def test_end_to_end_training_with_gradnorm_learns_and_upweights_the_slower_task(table):
    """Backbone and heads trained together through the loop, GradNorm taking its per-task gradients on the shared
    layer inside the single backward: the validation score rises, the regression loss falls, and GradNorm gives more
    weight to the task whose loss fell least relative to its start (shape), the weights summing to the number of
    tasks."""
    from transferkit.multitask import train_multitask_end_to_end

    td = load_tasks(table, "shape,brightness:regression")
    sp = split_items(td.Y, td.tasks, val_fraction=0.2, test_fraction=0.2, seed=0)
    cfg = MultitaskConfig(hidden=(16,), e2e_epochs=8, e2e_batch_size=8, patience=None, lr=3e-3, image_size=32,
                          num_workers=0)
    fit = train_multitask_end_to_end(td.source, td.Y, td.tasks, sp, TINY, "gradnorm", config=cfg, seed=0)
    first, last = fit.history[0], fit.history[-1]
    assert last["val_score"] > first["val_score"] + 0.2
    assert last["loss_task_brightness"] < 0.5 * first["loss_task_brightness"]
    ratio = {t: last[f"loss_task_{t}"] / first[f"loss_task_{t}"] for t in ("shape", "brightness")}
    assert ratio["shape"] > ratio["brightness"]
    w = dict(zip(["shape", "brightness"], fit.weights))
    assert w["shape"] > w["brightness"] > 0 and sum(fit.weights) == pytest.approx(2.0, rel=1e-3)
