"""Ours vs skada, wall time measured back to back under the same load (the time column of bench_adapt).

bench_adapt's cells are resumable, so ours and skada's were often timed hours apart on a busy 2-core machine; their
ratio mixes the code with the load. Here, for one seed per pair, each method runs ours then skada's immediately
after, on the same standardised cached lite0 features and the same 70/30 target split as bench_adapt (same
settings: ``AdaptConfig`` defaults, 1000 steps; skada.deep with our network shape and the same number of batches).
The accuracy of each run is printed too, as a check that the timed runs are the ones bench_adapt reports.

    OMP_NUM_THREADS=1 python benchmarks/bench_adapt_timing.py

Writes ``benchmarks/results/bench_adapt_timing.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402
from bench_adapt import PAIRS, SKADA, SKADA_DEEP, _csv, _subsample, run_skada, run_skada_deep  # noqa: E402


def _warm_up(cfg) -> None:
    """One tiny fit of each side before any timing: one-time costs of the process (importing Lightning, about
    5 s here, and skorch; first-call allocations) are then billed to neither side's first method."""
    from dataclasses import replace

    from transferkit.adapt import DomainAdapter

    rng = np.random.default_rng(0)
    Z, y = rng.normal(size=(60, 8)).astype(np.float32), np.arange(60) % 3
    DomainAdapter(None, "dann", config=replace(cfg, steps=4, eval_every=2)).fit((Z, y.astype(str)), Z[:30])
    run_skada_deep("dann", Z, y, Z[:30], Z[30:], y[30:], 0, 4, 16, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=PAIRS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="", help="only these of ours (comma-separated; default every shared one)")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_adapt_timing.md"))
    args = ap.parse_args()

    import torch

    from transferkit.adapt import AdaptConfig, DomainAdapter
    from transferkit.adapt.adapter import input_scaling
    from transferkit.adapt.experiment import split_target
    from transferkit.data import load_data

    torch.set_num_threads(args.threads)
    cfg = AdaptConfig(steps=args.steps, eval_every=max(args.steps // 5, 1), seed=args.seed)
    _warm_up(cfg)
    rows, cells = [], []
    started = machine_info()
    for pair in _csv(args.pairs):
        s_name, t_name = pair.split(":")
        src, tgt = _subsample(load_data(s_name), args.per_class), _subsample(load_data(t_name), args.per_class)
        prep = DomainAdapter("lite0", cache_dir=args.cache_dir)
        Xs, Xt = prep.prepare_inputs(src, "source"), prep.prepare_inputs(tgt, "target")
        classes = src.classes
        ys = np.array([classes.index(v) for v in src.labels])
        yt = np.array([classes.index(v) for v in tgt.labels])
        a_idx, e_idx = split_target(np.asarray(tgt.labels), len(tgt), 0.3, args.seed)
        mu, sd = input_scaling(Xs, Xt[a_idx])
        Zs, Zt = (Xs - mu) / sd, (Xt - mu) / sd
        for kind, table in (("shallow", SKADA), ("deep", SKADA_DEEP)):
            for m, theirs in table.items():
                if args.methods and m not in _csv(args.methods):
                    continue
                t, c = time.perf_counter(), time.process_time()
                da = DomainAdapter(None, m, config=cfg).fit((Zs, ys.astype(str)), Zt[a_idx])
                ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c
                ours_acc = float(np.mean(da.predict(Zt[e_idx]).astype(int) == yt[e_idx]))
                try:
                    if kind == "deep":
                        sk = run_skada_deep(m, Zs, ys, Zt[a_idx], Zt[e_idx], yt[e_idx], args.seed, cfg.steps,
                                            cfg.batch_size, cfg.bottleneck)
                    else:
                        sk = run_skada(m, Zs, ys, Zt[a_idx], Zt[e_idx], yt[e_idx], args.seed)
                except Exception as e:  # noqa: BLE001 - a failing reference method is recorded, not fatal
                    sk = {"error": f"{type(e).__name__}: {e}"}
                cell = {"pair": pair, "method": m, "skada": theirs, "kind": kind, "ours_seconds": ours_s,
                        "ours_cpu_seconds": ours_cpu,
                        "ours_accuracy": ours_acc, **{f"skada_{k}": v for k, v in sk.items()}}
                cells.append(cell)
                name = f"{theirs}{' (deep)' if kind == 'deep' else ''}"
                if "error" in sk:
                    log(f"{pair} {m}: ours {ours_s:.1f}s ({100 * ours_acc:.1f}%) | skada {theirs}: {sk['error'][:80]}")
                    rows.append([m, name, pair.replace(":", " → "), f"{ours_s:.1f}", "error", "–", f"{ours_cpu:.1f}",
                                 "error", "–", "–"])
                    continue
                ratio = sk["seconds"] / max(ours_s, 1e-9)
                cpu_ratio = sk["cpu_seconds"] / max(ours_cpu, 1e-9)
                log(f"{pair} {m}: ours {ours_s:.1f}s ({ours_cpu:.1f} CPU s, {100 * ours_acc:.1f}%) | skada {theirs} "
                    f"{sk['seconds']:.1f}s ({sk['cpu_seconds']:.1f} CPU s, {100 * sk['accuracy']:.1f}%): "
                    f"{ratio:.2f}x wall, {cpu_ratio:.2f}x CPU")
                rows.append([m, name, pair.replace(":", " → "), f"{ours_s:.1f}", f"{sk['seconds']:.1f}", f"{ratio:.2f}x",
                             f"{ours_cpu:.1f}", f"{sk['cpu_seconds']:.1f}", f"{cpu_ratio:.2f}x",
                             "yes" if min(ratio, cpu_ratio) >= 1.0 else "**no**"])
    text = (f"### bench_adapt_timing\n\ncommand: `{command_line()}`\n\n{machine_line(started)}\n\n"
            f"Seed {args.seed}, {args.per_class} items per class per domain, {args.steps} steps. Each row: ours, then "
            "skada's right after, same features, split and load. Ours includes its checkpoint evaluations (every "
            f"{cfg.eval_every} steps, five selectors); skada trains to the last epoch without evaluating. "
            "Wall seconds and process CPU seconds (user + system; one thread each, so CPU seconds are the work done, "
            "unaffected by other processes' load, which inflates wall time). As fast = both ratios >= 1.0.\n\n"
            + md_table(["ours", "skada", "pair", "ours s", "skada s", "wall ratio (skada / ours)", "ours CPU s",
                        "skada CPU s", "CPU ratio", "as fast"], rows)
            + "\n")
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"command": command_line(), "machine": started,
                                                           "cells": cells}, indent=1))
    atomic_write_text(out, text)
    print(text)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
