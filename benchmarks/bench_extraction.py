"""Extraction throughput: the full FeatureStore pipeline vs the raw forward pass of the same model.

* raw: the N images are transformed beforehand (the backbone's timm eval transform, untimed), stacked into
  batches of ``--batch-size``, and only ``backbone(batch)`` under ``torch.inference_mode`` is timed, after
  ``--warmup`` warm-up batches. Measured before and after the pipeline rows (CPU speed drifts); the reference
  is the mean of the two (each the median of ``--repeats``).
* pipeline: ``FeatureStore(<fresh temp dir>).get(backbone, source, batch_size=..., num_workers=w, device="cpu")``,
  i.e. decode + transform in DataLoader workers, forward, shard writes and the view assembly, timed around the
  call; one fresh cache dir per measurement. ``w`` in ``--workers`` (``default`` = the package's
  ``default_num_workers()``). The backbone's weight digest (part of the cache key) is computed once before
  timing, so it is not charged to the first row (its cost is reported separately).

Same process, same torch thread count for both. Ratio = pipeline images/s / raw images/s (target >= 0.9).

    python benchmarks/bench_extraction.py --n 630 --batch-size 64 --workers default,0,1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
    ap.add_argument("--n", type=int, default=0, help="number of images (default: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", default="default,0,1", help="comma list of num_workers values; 'default' = None")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per row (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up batches before the raw measure")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: leave torch's)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_extraction.md"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.data import load_data
    from transferkit.features import FeatureStore, default_num_workers

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    cmd = command_line()
    source = load_data(args.data)
    n = args.n or len(source)
    if n < len(source):
        source = source.subset(np.arange(n))
    n_unique = len(np.unique(source.item_keys(), axis=0))
    bb = create_backbone(args.backbone).eval()
    t = time.perf_counter()
    bb.weights_digest()
    digest_s = time.perf_counter() - t
    threads = torch.get_num_threads()
    default_w = default_num_workers()

    # ready tensors for the raw measure (transform not timed)
    tf = bb.transform()
    t = time.perf_counter()
    tensors = [tf(source.load(i)) for i in range(n)]
    prep_s = time.perf_counter() - t
    batches = [torch.stack(tensors[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
    del tensors

    def raw_once() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for b in batches:
                bb(b)
            return n / (time.perf_counter() - t0)

    with torch.inference_mode():
        for b in (batches * args.warmup)[:max(args.warmup, 0)]:
            bb(b)

    def raw_measure(tag: str) -> tuple[float, list[float], float]:
        load = os.getloadavg()[0]
        vals = [raw_once() for _ in range(args.repeats)]
        log(f"raw {tag}: {[round(v, 1) for v in vals]} images/s (load {load:.2f})")
        return statistics.median(vals), vals, load

    def pipeline_once(w: int | None) -> tuple[float, float, int]:
        tmp = Path(tempfile.mkdtemp(prefix="tk-bench-extract-"))
        try:
            store = FeatureStore(tmp)
            t0 = time.perf_counter()
            f = store.get(bb, source, batch_size=args.batch_size, num_workers=w, device="cpu", progress=False)
            wall = time.perf_counter() - t0
            # identical inputs share one cache entry and one forward pass: count what was really extracted
            assert f.extracted == n_unique and f.X.shape == (n, bb.num_features) and not f.bad, (f.extracted, f.X.shape)
            return n_unique / wall, wall, f.extracted
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    settings = []
    for s in args.workers.split(","):
        s = s.strip()
        if s:
            settings.append(None if s == "default" else int(s))

    raw_before = raw_measure("before")
    pipe: dict[str, list[float]] = {str(w): [] for w in settings}
    loads: dict[str, list[float]] = {str(w): [] for w in settings}
    for rep in range(args.repeats):  # interleave the settings so drift hits them alike
        for w in settings:
            loads[str(w)].append(os.getloadavg()[0])
            ips, wall, _ = pipeline_once(w)
            pipe[str(w)].append(ips)
            log(f"pipeline num_workers={w} rep {rep}: {ips:.1f} images/s ({wall:.2f}s)")
    raw_after = raw_measure("after")
    raw_ref = (raw_before[0] + raw_after[0]) / 2

    rows = [["raw forward (before)", "–", f"{raw_before[0]:.1f}", ", ".join(f"{v:.1f}" for v in raw_before[1]), "–",
             f"{raw_before[2]:.2f}"],
            ["raw forward (after)", "–", f"{raw_after[0]:.1f}", ", ".join(f"{v:.1f}" for v in raw_after[1]), "–",
             f"{raw_after[2]:.2f}"],
            ["raw forward (mean of before/after)", "–", f"{raw_ref:.1f}", "", "1.00", ""]]
    for w in settings:
        vals = pipe[str(w)]
        med = statistics.median(vals)
        label = f"default ({default_w})" if w is None else (f"{w}" + (" (= default)" if w == default_w else ""))
        rows.append([f"FeatureStore.get, fresh cache", label, f"{med:.1f}", ", ".join(f"{v:.1f}" for v in vals),
                     f"{med / raw_ref:.2f}", f"{statistics.mean(loads[str(w)]):.2f}"])
    table = md_table(["measure", "num_workers", "images/s (median)", "all repeats", "ratio to raw (target ≥ 0.9)",
                      "load avg (1 min) at start"], rows)
    text = (f"### bench_extraction\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n"
            f"{args.backbone} on {n} images of {args.data}, batch size {args.batch_size}, torch threads {threads}, "
            f"{args.repeats} repeats per row; default num_workers on this machine = {default_w} "
            f"(`default_num_workers()`). Untimed: transforming the images for the raw measure took {prep_s:.2f}s "
            f"({n / prep_s:.0f} images/s on one core); the weight digest (cache key) {digest_s:.2f}s.\n\n{table}\n")
    atomic_write_text(args.out, text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(
        {"command": cmd, "machine": info, "raw_before": raw_before, "raw_after": raw_after, "pipeline": pipe,
         "loads": loads, "default_num_workers": default_w, "n": n, "batch_size": args.batch_size,
         "threads": threads, "prep_s": prep_s, "digest_s": digest_s}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
