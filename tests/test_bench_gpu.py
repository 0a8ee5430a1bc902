"""benchmarks/bench_gpu.py: stops clearly without CUDA, and its measures run (on the CPU, tiny sizes) and report what
they measured."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(BENCH.parent))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_stops_with_a_clear_message(bench, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(["--out", str(tmp_path / "gpu.md")])
    assert e.value.code == 2
    assert "no CUDA GPU is visible here" in capsys.readouterr().err
    assert not (tmp_path / "gpu.md").exists()  # nothing measured, nothing written


def test_cpu_parts_measure_and_write_the_table(bench, tmp_path):
    out = tmp_path / "gpu.md"
    doc = bench.main(["--device", "cpu", "--precision", "32", "--backbones", TINY, "--n", "8", "--batch-size", "4",
                      "--size", "32", "--train-steps", "2", "--train-batch-size", "4", "--train-n", "12",
                      "--workers", "0", "--out", str(out)])
    r = doc["backbones"][TINY]
    assert r["raw_forward"] > 0 and r["pipeline"] > 0 and r["raw_train_steps_s"] > 0 and r["finetune_steps_s"] > 0
    assert "not a GPU result" in out.read_text() and TINY in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["backbones"][TINY]["workers"] == 0


def test_raw_forward_counts_the_images_it_ran(bench, monkeypatch):
    from transferkit.backbones import create_backbone

    bb = create_backbone(TINY)
    ticks = iter([0.0, 2.0] * 10)  # every timed stretch lasts 2 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    # 12 images in batches of 4: 3 batches of 4 per 2 s -> 6 images/s
    assert bench.raw_forward(bb, torch.device("cpu"), "32", 12, 4, 32) == pytest.approx(6.0)
