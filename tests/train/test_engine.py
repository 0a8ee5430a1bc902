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


class _Recording:
    """Wraps a source's ``load`` to record which items a run reads (in-process: ``num_workers=0``)."""

    def __init__(self, source):
        from dataclasses import replace

        self.seen: list[int] = []
        self.source = replace(source)
        inner = self.source.load
        self.source.load = lambda i: (self.seen.append(int(i)), inner(i))[1]


def test_refit_retrains_on_every_labelled_item_for_the_chosen_epochs_of_the_same_schedule(shapes, tmp_path,
                                                                                          monkeypatch):
    from transferkit.train.engine import FinetunePlan, _steps_per_epoch, cosine_warmup, finetune

    rec, phases, starts = _Recording(shapes.source), [], []
    build = FinetunePlan.build_model

    def recording_build(self):  # the weights each run starts from
        out = build(self)
        starts.append({k: v.detach().clone() for k, v in out[0].state_dict().items()})
        return out

    monkeypatch.setattr(FinetunePlan, "build_model", recording_build)

    def per_epoch(info):  # what each epoch read, by run folder (the selection run is run_dir/selection)
        phases.append((Path(info["checkpoint"]).parents[1].name, info["epoch"], set(rec.seen)))
        rec.seen.clear()

    cfg = shapes.config(epochs=8, patience=2, lr=3e-2, refit=True)
    r = finetune(rec.source, shapes.y, shapes.splits, "random:test_efficientnet", "finetune", cfg, tmp_path / "run",
                 classes=shapes.classes, callbacks=[per_epoch])
    sel, e = r.selection, r.selection.best_epoch
    assert sel.stop_reason == "early stopping" and e < sel.epochs_run  # the refit is shorter than the selection run
    assert r.best_epoch == e and r.val_accuracy == sel.val_accuracy and sel.run_dir == tmp_path / "run" / "selection"
    assert r.epochs_run == e == len(r.history) and r.stop_reason == "max epochs"
    labelled = set(shapes.splits.train) | set(shapes.splits.val)
    refit = [seen for name, _, seen in phases if name == "run"]
    # every labelled item, every refit epoch (the first also holds the selection run's final test predictions)
    assert len(refit) == e and all(seen - set(shapes.splits.test) == labelled for seen in refit)
    assert sum(name == "selection" for name, _, _ in phases) == sel.epochs_run
    # the refit follows the selection run's schedule (length cfg.epochs), not one squeezed into its e epochs
    steps = _steps_per_epoch(len(labelled), cfg.batch_size, 1)
    factor = cosine_warmup(round(cfg.warmup_epochs * steps), cfg.schedule, cfg.min_lr_ratio)(e * steps,
                                                                                             cfg.epochs * steps)
    assert r.history[-1]["lr"] == pytest.approx(cfg.lr * factor) and factor > 2 * cfg.min_lr_ratio
    assert r.config["refit"]["epochs"] == e and r.config["refit"]["labelled"] == len(labelled)
    assert not np.array_equal(r.proba, sel.proba)  # two models: the refit's predictions are the result
    # the refit starts from the selection run's initialisation (same pretrained backbone, same seeded head)
    assert len(starts) == 2 and starts[0].keys() == starts[1].keys()
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def test_refit_without_a_validation_split_is_refused(shapes, tmp_path):
    from transferkit.data.splits import Splits
    from transferkit.train.engine import finetune

    sp = Splits(shapes.splits.train, np.zeros(0, np.int64), shapes.splits.test)
    with pytest.raises(DataError, match="refit"):
        finetune(shapes.source, shapes.y, sp, "random:test_efficientnet", "finetune",
                 shapes.config(refit=True), tmp_path / "run")
    with pytest.raises(TransferkitError, match="refit must be True or False"):
        shapes.config(refit="yes").validate()


def test_train_epochs_trains_that_many_epochs_of_the_configured_schedule_and_keeps_the_last(shapes, tmp_path):
    """A cross-validated race's fold trains for the epoch count its split chose: exactly ``train_epochs`` epochs of
    the ``epochs``-long schedule, no early stopping, nothing chosen on validation (there is none)."""
    from transferkit.data.splits import Splits
    from transferkit.train.engine import _steps_per_epoch, cosine_warmup, finetune

    sp = Splits(shapes.splits.train, np.zeros(0, np.int64), shapes.splits.val)  # the held-out items as the test
    cfg = shapes.config(epochs=8, patience=2, lr=3e-2)
    lines = []
    r = finetune(shapes.source, shapes.y, sp, "random:test_efficientnet", "finetune", cfg, tmp_path / "run",
                 classes=shapes.classes, train_epochs=3, export=False, log=lines.append)
    assert r.epochs_run == 3 == len(r.history) == r.best_epoch and r.stop_reason == "max epochs"
    epoch_lines = [ln.split(":")[0] for ln in lines if ln.startswith("epoch ")]
    assert epoch_lines == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]  # counts to the epochs it trains, not to 8
    assert not any("(best)" in ln for ln in lines)  # nothing is chosen without a validation split
    again = finetune(shapes.source, shapes.y, sp, "random:test_efficientnet", "finetune", cfg, tmp_path / "run",
                     classes=shapes.classes, train_epochs=3, export=False, resume=True)
    assert again.resumed_from == 3 and np.array_equal(again.y_pred, r.y_pred)  # a finished fold is reused as it is
    with pytest.raises(ResumeMismatchError, match="epochs"):  # another epoch count never resumes this run
        finetune(shapes.source, shapes.y, sp, "random:test_efficientnet", "finetune", cfg, tmp_path / "run",
                 classes=shapes.classes, train_epochs=2, export=False, resume=True)
    assert np.array_equal(r.test_index, shapes.splits.val) and len(r.y_pred) == len(shapes.splits.val)
    steps = _steps_per_epoch(len(sp.train), cfg.batch_size, 1)
    factor = cosine_warmup(round(cfg.warmup_epochs * steps), cfg.schedule, cfg.min_lr_ratio)(3 * steps, 8 * steps)
    assert r.history[-1]["lr"] == pytest.approx(cfg.lr * factor) and factor > 0.5  # not squeezed into 3 epochs
    for bad, why in ((0, "from 1 to epochs=8"), (9, "from 1 to epochs=8"), (True, "integer")):
        with pytest.raises(DataError, match=why):
            finetune(shapes.source, shapes.y, sp, "random:test_efficientnet", "finetune", cfg, tmp_path / "x",
                     train_epochs=bad)
    with pytest.raises(DataError, match="with 12 validation items"):
        finetune(shapes.source, shapes.y, shapes.splits, "random:test_efficientnet", "finetune", cfg,
                 tmp_path / "y", train_epochs=2)
