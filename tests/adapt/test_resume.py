"""Domain adaptation resumes like fine-tuning: killed (even with SIGKILL) and rerun with resume=True, a fit ends with
the same history, the same chosen checkpoint and the same predictions as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.adapt import AdaptConfig, DomainAdapter

ROOT = Path(__file__).resolve().parents[2]
CFG = dict(steps=200, batch_size=32, eval_every=50, bottleneck=16, lr=0.03, selection="dev", seed=3)


def blobs(n, shift, rot, seed):
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    X = np.array([[0, 3], [3, -2], [-3, -2]], float)[y] + r.normal(0, 0.7, (n, 2))
    c, s = np.cos(rot), np.sin(rot)
    return (X @ np.array([[c, -s], [s, c]]).T + shift).astype(np.float32), y


SRC = blobs(300, 0.0, 0.0, 1)
TGT = blobs(300, np.array([1.0, 1.0]), 0.8, 2)


class Interrupt(Exception):
    pass


def fit(method, run_dir, resume=False, log=None):
    return DomainAdapter(None, method, config=AdaptConfig(**CFG), run_dir=run_dir, resume=resume,
                         log=log).fit(SRC, TGT[0])


def same_fit(a, b):
    keys = [k for k in a.fit_.history[0] if k != "seconds"]
    assert [[r[k] for k in keys] for r in a.fit_.history] == [[r[k] for k in keys] for r in b.fit_.history]
    assert a.fit_.selected_step == b.fit_.selected_step and a.fit_.selected_by == b.fit_.selected_by
    sa, sb = a.fit_.net.state_dict(), b.fit_.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(a.decision_function(TGT[0]), b.decision_function(TGT[0]))


@pytest.fixture(scope="module")
def dann_full(tmp_path_factory):
    return fit("dann", tmp_path_factory.mktemp("dann") / "run")


def test_kill_9_during_a_domain_adaptation_fit_then_resume_gives_the_same_result(tmp_path, dann_full):
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, threading, torch
        torch.set_num_threads({torch.get_num_threads()})
        from tests.adapt.test_resume import fit

        def log(line):
            if line.startswith("step 100 "):  # after the checkpoint of the second evaluation
                os.kill(os.getpid(), signal.SIGKILL)  # at once: a timer can lose the race to a fast finish

        fit("dann", {str(run)!r}, log=log)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    from transferkit.train.loop import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] >= 2
    with pytest.raises(Exception, match="already holds a training checkpoint"):
        fit("dann", run)  # without resume a checkpoint is never overwritten
    same_fit(dann_full, fit("dann", run, resume=True))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_a_two_stage_method_resumes_inside_its_second_stage(tmp_path):
    """ADDA: stopped at the first evaluation of its adversarial stage, resumed, equal to an uninterrupted fit."""
    full = fit("adda", tmp_path / "full")

    def stop(line):
        if line.startswith("step 50 (adversarial)"):
            raise Interrupt(line)

    with pytest.raises(Interrupt):
        fit("adda", tmp_path / "run", log=stop)
    assert (tmp_path / "run" / "stage1-source" / "checkpoints" / "last.ckpt").is_file()
    same_fit(full, fit("adda", tmp_path / "run", resume=True))


def test_two_ddp_processes_train_the_same_network_as_one():
    """DDP (2 CPU processes, gloo): each process takes half of every global batch of both domains; with a network
    free of batch norm and dropout (whose statistics and masks are per process) the result equals one process."""
    from torch import nn

    from transferkit.adapt.methods import create_method
    from transferkit.adapt.trainer import AdaptNet, train_adapter

    def net():
        torch.manual_seed(0)
        n = AdaptNet(2, 3, 16)
        n.bottleneck = nn.Sequential(nn.Linear(2, 16), nn.ReLU())
        return n

    cfg = AdaptConfig(steps=40, batch_size=32, eval_every=20, bottleneck=16, lr=0.03, selection="last", seed=0,
                      device="cpu")
    one = train_adapter(net(), create_method("source-only"), SRC[0], SRC[1], TGT[0], cfg)
    two = train_adapter(net(), create_method("source-only"), SRC[0], SRC[1], TGT[0],
                        AdaptConfig(**{**cfg.to_dict(), "devices": 2}))
    assert [r["step"] for r in one.history] == [r["step"] for r in two.history] == [20, 40]
    for a, b in zip(one.history, two.history):
        assert a["cls_loss"] == pytest.approx(b["cls_loss"], rel=1e-4)
    from transferkit.adapt.trainer import predict_logits

    np.testing.assert_allclose(predict_logits(one.net, TGT[0]), predict_logits(two.net, TGT[0]), atol=1e-4)
