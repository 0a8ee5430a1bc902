"""GPU throughput: extraction and fine-tuning of lite0 and a ResNet-50 (random weights) in bf16 at 224 px, against the
raw model on ready tensors.

Per backbone (``--backbones``), all on one CUDA device, ``--precision`` (default bf16):

* raw forward: ready tensors on the GPU (``--n`` images in batches of ``--batch-size``), channels-last, autocast,
  ``torch.inference_mode``; only the forward is timed (after warm-up), with ``torch.cuda.synchronize``.
* pipeline: ``FeatureStore(<fresh folder>).get(backbone, images, engine="torch", feature_precision=..., device=cuda)``:
  decode + transform in DataLoader workers (pool sized from measured rates), pinned memory, forward, shard writes.
  The images are ``--n`` random 256x256 RGB arrays (JPEG-like decoding is not measured: arrays are decoded by
  PIL from memory).
* raw training: steps/s of backbone + linear head, AdamW, cross-entropy, autocast, channels-last, on ready GPU
  tensors of ``--train-batch-size`` (no data loading).
* fine-tuning: the package's ``finetune`` (strategy ``finetune``, ``TrainConfig(precision="bf16-mixed")``, one
  epoch over ``--train-n`` images, no export); steps/s = training steps / the epoch's seconds (the first epoch
  includes cuDNN autotuning; the row says so).

Without CUDA it stops with a clear message (exit 2). ``--device cpu --precision 32`` with tiny sizes runs the same
code on the CPU (what the tests do); such numbers are not GPU results.

    python benchmarks/bench_gpu.py --backbones lite0,random:resnet50 --n 4096 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

_AUTOCAST = {"bf16": "bfloat16", "16": "float16", "32": None}
_TRAIN_PRECISION = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32"}


class NoGPU(SystemExit):
    """Raised (exit code 2) when CUDA is asked for and not here."""


def require_device(device: str) -> "object":
    """The torch device, or a clear stop when CUDA is asked for and this machine has none."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.stderr.write("bench_gpu: no CUDA GPU is visible here (torch.cuda.is_available() is False). Run it on a "
                         "GPU machine; `--device cpu --precision 32` runs the same code on the CPU for checking "
                         "only.\n")
        raise NoGPU(2)
    return torch.device(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, precision: str):
    import torch

    dtype = _AUTOCAST[precision]
    return torch.autocast(device.type, dtype=getattr(torch, dtype) if dtype else torch.float32,
                          enabled=dtype is not None)


def raw_forward(bb, device, precision: str, n: int, batch_size: int, size: int, repeats: int = 3) -> float:
    """Images/s of the backbone's forward on ready tensors already on ``device`` (median of ``repeats``)."""
    import torch

    bb = bb.to(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    steps = max(1, n // batch_size)
    rates = []
    with torch.inference_mode(), _autocast(device, precision):
        for _ in range(2):
            bb(x)
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                bb(x)
            _sync(device)
            rates.append(steps * batch_size / (time.perf_counter() - t))
    bb.to(memory_format=torch.contiguous_format)
    return statistics.median(rates)


def raw_train(bb, device, precision: str, steps: int, batch_size: int, size: int, classes: int = 10) -> float:
    """Training steps/s (forward, backward, AdamW) of backbone + linear head on ready tensors on ``device``."""
    import copy

    import torch

    net = torch.nn.Sequential(copy.deepcopy(bb), torch.nn.Linear(bb.num_features, classes)).to(device).train()
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch_size,), device=device)

    def step():
        with _autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - t)


def synthetic_images(n: int, side: int = 256, seed: int = 0, classes: int = 10):
    """A DataSource of ``n`` random RGB arrays (``side`` x ``side``) with ``classes`` labels."""
    import numpy as np

    from transferkit.data import from_arrays

    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return from_arrays(imgs, [str(i % classes) for i in range(n)])


def pipeline(bb, source, device, precision: str, batch_size: int, workers: int | None = None) -> tuple[float, int]:
    """Images/s of ``FeatureStore.get`` into a fresh cache (engine torch at ``precision``); returns (rate, workers)."""
    from transferkit.features import FeatureStore

    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-gpu-"))
    said: list[str] = []
    try:
        t = time.perf_counter()
        f = FeatureStore(tmp).get(bb, source, batch_size=batch_size, num_workers=workers, device=device,
                                  engine="torch", feature_precision=precision, log=said.append)
        wall = time.perf_counter() - t
        assert f.extracted == len(source) and not f.bad
        return f.extracted / wall, workers if workers is not None else _workers_from(said)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _workers_from(lines: list[str]) -> int:
    for line in lines:
        if "worker(s)" in line:
            return int(line.split("->")[1].split("worker")[0])
    return 0


def package_finetune(bb, source, device, precision: str, batch_size: int) -> tuple[float, float]:
    """The package's fine-tuning, one epoch over ``source`` (train split only, no export): (steps/s, seconds)."""
    import numpy as np

    from transferkit.data.splits import Splits
    from transferkit.train.engine import TrainConfig, finetune

    n = len(source)
    y = np.asarray([int(c) for c in source.labels])
    idx = np.arange(n)
    splits = Splits(train=idx[: n - 2 * max(2, n // 50)], val=idx[n - 2 * max(2, n // 50): n - max(2, n // 50)],
                    test=idx[n - max(2, n // 50):])
    cfg = TrainConfig(epochs=1, batch_size=batch_size, precision=_TRAIN_PRECISION[precision],
                      accelerator="cuda" if device.type == "cuda" else "cpu", seed=0)
    run = Path(tempfile.mkdtemp(prefix="tk-bench-gpu-ft-"))
    try:
        t = time.perf_counter()
        finetune(source, y, splits, bb, "finetune", cfg, run, export=False)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(run, ignore_errors=True)
    steps = int(np.ceil(len(splits.train) / batch_size))
    return steps / wall, wall


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="lite0,random:resnet50")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=sorted(_AUTOCAST))
    ap.add_argument("--n", type=int, default=4096, help="images for the extraction measures")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--train-steps", type=int, default=50)
    ap.add_argument("--train-batch-size", type=int, default=128)
    ap.add_argument("--train-n", type=int, default=2048, help="images of the package fine-tuning epoch")
    ap.add_argument("--workers", type=int, default=None, help="pipeline workers (default: sized by the package)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_gpu.md"))
    args = ap.parse_args(argv)

    device = require_device(args.device)
    import torch

    from transferkit.backbones import create_backbone

    info, cmd = machine_info(), command_line()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU run: not a GPU result)"
    source = synthetic_images(args.n)
    train_source = synthetic_images(args.train_n, seed=1)
    rows, doc = [], {"command": cmd, "machine": info, "gpu": gpu, "args": vars(args), "backbones": {}}
    for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        bb = create_backbone(name).with_preprocessing(input_size=args.size)
        bb.weights_digest()
        raw = raw_forward(bb, device, args.precision, args.n, args.batch_size, args.size)
        pipe, workers = pipeline(bb, source, device, args.precision, args.batch_size, args.workers)
        log(f"{name}: raw {raw:.0f} images/s, pipeline {pipe:.0f} images/s ({workers} workers)")
        train = raw_train(bb, device, args.precision, args.train_steps, args.train_batch_size, args.size)
        ft, ft_s = package_finetune(bb, train_source, device, args.precision, args.train_batch_size)
        log(f"{name}: raw training {train:.2f} steps/s, package fine-tuning {ft:.2f} steps/s")
        rows.append([name, f"{raw:.0f}", f"{pipe:.0f}", f"{pipe / raw:.2f}", str(workers), f"{train:.2f}",
                     f"{ft:.2f}", f"{ft / train:.2f}"])
        doc["backbones"][name] = {"raw_forward": raw, "pipeline": pipe, "workers": workers, "raw_train_steps_s": train,
                                  "finetune_steps_s": ft, "finetune_s": ft_s}
    table = md_table(["backbone", "raw forward (img/s)", "pipeline (img/s)", "pipeline / raw (target >= 0.9)",
                      "workers", f"raw train (steps/s, batch {args.train_batch_size})", "package fine-tune (steps/s)",
                      "fine-tune / raw"], rows)
    text = (f"### bench_gpu\n\ncommand: `{cmd}`\n\n{machine_line(info)}; GPU: {gpu}\n\n"
            f"precision {args.precision}, {args.size} px, {args.n} images (batch {args.batch_size}) for extraction; "
            f"training batch {args.train_batch_size}. The package fine-tuning row is one epoch of {args.train_n} "
            f"images, validation included, first epoch (autotuning included).\n\n{table}\n")
    atomic_write_text(args.out, text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(doc, indent=1, default=str))
    print(text)
    return doc


if __name__ == "__main__":
    main()
