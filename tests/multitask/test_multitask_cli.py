"""``transferkit fit DATA --tasks ...``: the multitask table, a run that `predict` reads for every task, and clear
errors for tasks that do not exist or options that do not apply."""

from __future__ import annotations

import pandas as pd

from tests.conftest import TINY
from tests.test_cli import assert_user_error, tk


def test_fit_with_tasks_prints_delta_m_and_predict_gives_every_task(table, tmp_path):
    run = tmp_path / "run"
    p = tk("fit", table, "-b", TINY, "--tasks", "shape,brightness:regression", "--weighting", "equal,dwa",
           "--epochs", "8", "--out", run, "--quiet", "--workers", "0")
    assert p.returncode == 0, p.stderr
    assert "Δm" in p.stdout and "single-task" in p.stdout and "(kept)" in p.stdout
    out_csv = tmp_path / "pred.csv"
    p = tk("predict", run, table, "-o", out_csv, "--quiet", "--workers", "0")
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(out_csv)
    assert len(df) == 36 and {"shape", "shape_confidence", "p_shape=disc", "brightness"} <= set(df.columns)
    assert df["brightness"].between(0, 1).mean() > 0.9  # a value in the task's units, not a class


def test_fit_with_tasks_names_what_is_wrong(image_folder, tmp_path):
    assert_user_error(tk("fit", "clipart", "--tasks", "category,colour", "--out", tmp_path / "a"),
                      "clipart has no task 'colour'; its tasks are category, super")
    assert_user_error(tk("fit", image_folder, "--tasks", "shape", "--out", tmp_path / "b"), "a table")
    assert_user_error(tk("fit", "clipart", "--tasks", "category,super", "--head", "mlp"), "--head does not apply",
                      "leave it out")
    assert_user_error(tk("fit", "clipart", "--tasks", "category,super", "--refit", "--resume"),
                      "--resume, --refit do not apply to a multitask fit", "leave them out")
    assert_user_error(tk("fit", "clipart", "--tasks", "category,super", "--weighting", "gradnrom", "--out",
                         tmp_path / "c"), "unknown multitask loss weighting 'gradnrom'", "gradnorm")
