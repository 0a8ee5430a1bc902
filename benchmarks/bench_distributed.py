"""Extraction over N CPU processes (``extract_distributed``, Lightning Fabric) against one process, same total threads.

One process with ``--threads`` torch threads; N processes with ``--threads // N`` each (Fabric forks them; each
extracts its share of the batches into the same fresh cache). Wall time includes starting the processes. The
features are compared bit for bit.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/bench_distributed.py --n 128 --devices 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="clipart")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_distributed.md"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.data import load_data
    from transferkit.features.distributed import extract_distributed
    from transferkit.features.featureset import build_featureset

    info, cmd = machine_info(), command_line()
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-dist-"))
    try:
        src = load_data(args.data)
        images = np.stack([np.asarray(src.load(i)) for i in range(min(args.n, len(src)))])
        folder = tmp / "images"  # a folder of PNGs every process can load
        from PIL import Image

        for i, a in enumerate(images):
            (folder / "x").mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(folder / "x" / f"{i:05d}.png")
        torch.set_num_threads(args.threads)
        t = time.perf_counter()
        one = build_featureset(str(folder), create_backbone(args.backbone), cache_dir=tmp / "one", labels="ignore",
                               split=False, batch_size=args.batch_size, num_workers=0, device="cpu",
                               engine=args.engine)
        t_one = time.perf_counter() - t
        log(f"1 process, {args.threads} threads: {t_one:.1f}s")
        torch.set_num_threads(args.threads)  # each rank divides it by the processes of the machine
        t = time.perf_counter()
        many = extract_distributed(str(folder), args.backbone, devices=args.devices, accelerator="cpu",
                                   cache_dir=tmp / "many", batch_size=args.batch_size, num_workers=0,
                                   engine=args.engine)
        t_many = time.perf_counter() - t
        log(f"{args.devices} processes: {t_many:.1f}s")
        same = bool(np.array_equal(np.asarray(one.X), np.asarray(many.X)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(one.X)
    rows = [["1 process", f"{args.threads}", f"{t_one:.1f}", f"{n / t_one:.1f}", "1.00"],
            [f"{args.devices} processes (Fabric, fork)", f"{max(1, args.threads // args.devices)} each",
             f"{t_many:.1f}", f"{n / t_many:.1f}", f"{t_one / t_many:.2f}"]]
    text = (f"### bench_distributed\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n{args.backbone} (engine "
            f"{args.engine}) on {n} {args.data} images saved as PNG, batch {args.batch_size}. Features of the two "
            f"runs identical bit for bit: **{same}**.\n\n"
            + md_table(["run", "torch threads", "seconds (wall, incl. start-up)", "images/s", "speed-up"], rows) + "\n")
    atomic_write_text(args.out, text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(
        {"command": cmd, "machine": info, "n": n, "one_s": t_one, "many_s": t_many, "identical": same,
         "devices": args.devices, "threads": args.threads}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
