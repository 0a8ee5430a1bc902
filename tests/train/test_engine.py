"""The engine: kill-and-resume equals an uninterrupted run, refusals with clear messages, NaN stops, DDP."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.errors import DataError, ResumeMismatchError, TrainingError, TransferkitError
from transferkit.train.engine import TrainConfig
from transferkit.train.loop import load_checkpoint
from transferkit.train.regularizers import L2SP

ROOT = Path(__file__).resolve().parents[2]
# gradual: the head epoch, then the backbone unfrozen at epoch 2, so a resume after epoch 2 crosses the change
RESUMABLE = dict(strategy="gradual", epochs=4, strategy_params={"head_epochs": 1, "unfreeze_every": 1})


class Interrupt(Exception):
    pass


def _stop_after(k: int):
    def callback(info):
        if info["epoch"] == k:
            raise Interrupt(f"simulated kill after epoch {k}")
    return callback


def _same_run(a, b) -> None:
    keys = [k for k in a.history[0] if k not in ("seconds", "samples_per_s")]
    assert [[row[k] for k in keys] for row in a.history] == [[row[k] for k in keys] for row in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    np.testing.assert_array_equal(a.proba, b.proba)
    assert a.best_epoch == b.best_epoch and a.val_accuracy == b.val_accuracy


@pytest.fixture(scope="module")
def uninterrupted(shapes, tmp_path_factory):
    return shapes.fit(tmp_path_factory.mktemp("full") / "run", extra_losses=[L2SP(alpha=0.1)], **RESUMABLE)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(shapes, tmp_path, uninterrupted):
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        shapes.fit(run, extra_losses=[L2SP(alpha=0.1)], callbacks=[_stop_after(2)], **RESUMABLE)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 2
    resumed = shapes.fit(run, extra_losses=[L2SP(alpha=0.1)], resume=True, **RESUMABLE)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 4
    _same_run(uninterrupted, resumed)
    rows = list(csv.DictReader((run / "epochs.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["trainable_groups"]) for r in rows] == [0, 1, 2, 3]
    # resuming a finished run trains nothing and gives the same answer
    again = shapes.fit(run, extra_losses=[L2SP(alpha=0.1)], resume=True, **RESUMABLE)
    assert again.epochs_run == 4 and again.resumed_from == 4
    np.testing.assert_array_equal(again.proba, uninterrupted.proba)


def test_resume_after_kill_9_equals_an_uninterrupted_run(shapes, tmp_path, uninterrupted):
    """A real SIGKILL, at an unpredictable moment of epoch 3 (after the checkpoint of epoch 2)."""
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, threading, torch
        torch.set_num_threads(1)
        from tests.train.conftest import Shapes
        from tests.train.test_engine import RESUMABLE
        from transferkit.train.regularizers import L2SP

        def kill_soon(info):
            if info["epoch"] == 2:
                threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGKILL)).start()

        Shapes().fit({str(run)!r}, extra_losses=[L2SP(alpha=0.1)], callbacks=[kill_soon], **RESUMABLE)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] >= 2
    resumed = shapes.fit(run, extra_losses=[L2SP(alpha=0.1)], resume=True, **RESUMABLE)
    _same_run(uninterrupted, resumed)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_resume_with_other_settings_is_refused_naming_the_differences(shapes, uninterrupted):
    run = uninterrupted.run_dir
    with pytest.raises(ResumeMismatchError) as e:
        shapes.fit(run, extra_losses=[L2SP(alpha=0.5)], resume=True, lr=0.05,
                   **{**RESUMABLE, "strategy_params": {"head_epochs": 2, "unfreeze_every": 1}})
    msg = str(e.value)
    for key in ("train.lr", "strategy.head_epochs", "objective.terms"):
        assert key in msg, msg
    assert set(e.value.differences) == {"train.lr", "strategy.head_epochs", "objective.terms"}
    assert e.value.differences["train.lr"] == (0.01, 0.05)
    with pytest.raises(TrainingError, match="already holds a training checkpoint.*resume=True"):
        shapes.fit(run, extra_losses=[L2SP(alpha=0.1)], **RESUMABLE)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    def explode(model, out):
        return torch.tensor(float("nan")) if (out.epoch, out.step) == (1, 4) else torch.zeros(())

    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"not finite at epoch 2, step 2 of 3 .*explode nan.*after epoch 1"):
        shapes.fit(run, extra_losses=[explode])
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len(list(csv.DictReader((run / "epochs.csv").open()))) == 1


def test_bad_settings_fail_before_training(shapes, tmp_path):
    with pytest.raises(TransferkitError, match="epochs must be.*precision must be one of 32"):
        TrainConfig(epochs=0, precision="8").validate()
    with pytest.raises(DataError, match="one integer class index per item"):
        from transferkit.train.engine import finetune

        finetune(shapes.source, shapes.y[:5], shapes.splits, "random:test_efficientnet", config=shapes.config(),
                 run_dir=tmp_path / "r")
    with pytest.raises(TransferkitError, match="loss term 'vector' returned a tensor of shape \\(3,\\)"):
        def vector(model, out):
            return torch.ones(3)
        shapes.fit(tmp_path / "r2", extra_losses=[vector])


def test_two_ddp_processes_give_the_same_result_as_one(shapes, tmp_path):
    """DDP with 2 CPU processes (gloo): the same global batches, split between the processes, with the loss
    scaled so the averaged gradient is the one-process gradient. A GroupNorm model, because BatchNorm
    statistics are per process on CPU."""
    kw = dict(backbone="random:test_efficientnet_gn", epochs=3)
    one = shapes.fit(tmp_path / "one", **kw)
    two = shapes.fit(tmp_path / "two", devices=2, **kw)
    assert two.epochs_run == one.epochs_run == 3
    for a, b in zip(one.history, two.history):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    np.testing.assert_allclose(one.proba, two.proba, atol=1e-4)
    assert two.config["train"]["devices"] == 2


def test_early_stopping_restores_the_best_weights_chosen_on_validation(shapes, tmp_path):
    r = shapes.fit(tmp_path / "run", epochs=12, patience=2, lr=3e-2)
    assert r.stop_reason == "early stopping" and r.epochs_run < 12
    accs = [row["val_accuracy"] for row in r.history]
    assert r.val_accuracy == max(accs) and r.best_epoch == r.epochs_run - 2
    assert [row["best"] for row in r.history].count(True) >= 1 and r.history[r.best_epoch - 1]["best"]
    state = load_checkpoint(r.checkpoint)
    assert state["finished"] and state["best"]["epoch"] == r.best_epoch
    returned = r.model.state_dict()
    for k, v in state["best"]["state"]["model"].items():
        assert torch.equal(returned[k], v), k
    assert any(not torch.equal(returned[k], v) for k, v in state["model"].items())  # the last epoch's differ
