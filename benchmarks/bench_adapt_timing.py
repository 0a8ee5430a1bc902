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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=PAIRS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
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
                t = time.perf_counter()
                da = DomainAdapter(None, m, config=cfg).fit((Zs, ys.astype(str)), Zt[a_idx])
                ours_s = time.perf_counter() - t
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
                        "ours_accuracy": ours_acc, **{f"skada_{k}": v for k, v in sk.items()}}
                cells.append(cell)
                name = f"{theirs}{' (deep)' if kind == 'deep' else ''}"
                if "error" in sk:
                    log(f"{pair} {m}: ours {ours_s:.1f}s ({100 * ours_acc:.1f}%) | skada {theirs}: {sk['error'][:80]}")
                    rows.append([m, name, pair.replace(":", " → "), f"{ours_s:.1f}", "error", "–", "–"])
                    continue
                log(f"{pair} {m}: ours {ours_s:.1f}s ({100 * ours_acc:.1f}%) | skada {theirs} {sk['seconds']:.1f}s "
                    f"({100 * sk['accuracy']:.1f}%)")
                ratio = sk["seconds"] / max(ours_s, 1e-9)
                rows.append([m, name, pair.replace(":", " → "), f"{ours_s:.1f}", f"{sk['seconds']:.1f}",
                             f"{ratio:.2f}x", "yes" if ratio >= 0.9 else "**no**"])
    text = (f"### bench_adapt_timing\n\ncommand: `{command_line()}`\n\n{machine_line(started)}\n\n"
            f"Seed {args.seed}, {args.per_class} items per class per domain, {args.steps} steps. Each row: ours, then "
            "skada's right after, same features, split and load. Ours includes its checkpoint evaluations (every "
            f"{cfg.eval_every} steps, five selectors); skada trains to the last epoch without evaluating. "
            "Time matches = at most 10% slower.\n\n"
            + md_table(["ours", "skada", "pair", "ours s", "skada s", "speed-up (skada / ours)", "time matches"], rows)
            + "\n")
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"command": command_line(), "machine": started,
                                                           "cells": cells}, indent=1))
    atomic_write_text(out, text)
    print(text)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
