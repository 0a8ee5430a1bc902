"""Cache speed-up of the whole ``transferkit fit`` job: first ``fit_run`` on a fresh cache vs the identical second call.

Two variants, each on its own fresh temporary cache dir, both calls in this process:

* ``full``: ``report=True, baseline=True`` (the baseline's result and the report's 2-D projection are cached too);
* ``bare``: ``report=False, baseline=False``.

The package's modules (torch, timm, scikit-learn, matplotlib via transferkit.report) are imported before any
timing, so the first call is not charged with one-off import time. With ``--profile N`` a third, identical
cache-hit call runs under cProfile and the N functions with the largest cumulative time are listed.

    python benchmarks/bench_cache.py --data clipart --backbone lite0 --labels-per-class 10 --profile 25
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

VARIANTS = {"full": dict(report=True, baseline=True), "bare": dict(report=False, baseline=False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="clipart")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--labels-per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="full,bare")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--profile", type=int, default=0, help="profile a third cache-hit call; list the top N functions")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache and run folders")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_cache.md"))
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")

    t = time.perf_counter()
    import torch  # noqa: F401
    import timm  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    import transferkit.backbones  # noqa: F401
    import transferkit.features  # noqa: F401
    import transferkit.heads  # noqa: F401
    import transferkit.report  # noqa: F401
    import transferkit.train.scratch  # noqa: F401
    from transferkit.pipeline import fit_run

    log(f"imports {time.perf_counter() - t:.1f}s (not timed below)")
    info = machine_info()
    cmd = command_line()

    rows, breakdown, profiles, raw = [], [], {}, {}
    for v in variants:
        tmp = Path(tempfile.mkdtemp(prefix=f"tk-bench-cache-{v}-"))
        kw = dict(backbone=args.backbone, labels_per_class=args.labels_per_class, seed=args.seed,
                  cache_dir=tmp / "cache", num_workers=args.num_workers, progress=False, **VARIANTS[v])
        try:
            results, walls = [], []
            for call in (1, 2):
                t = time.perf_counter()
                r = fit_run(args.data, out=tmp / f"run{call}", **kw)
                walls.append(time.perf_counter() - t)
                results.append(r)
                log(f"{v} call {call}: {walls[-1]:.2f}s, extracted {r.extracted}, "
                    f"acc {r.metrics['accuracy']:.3f}, timings {json.dumps({k: round(x, 2) for k, x in r.timings.items()})}")
            r1, r2 = results
            same = r1.metrics["accuracy"] == r2.metrics["accuracy"] and (
                (r1.baseline or {}).get("accuracy") == (r2.baseline or {}).get("accuracy"))
            rows.append([v, str(VARIANTS[v]).replace("'", ""), f"{walls[0]:.2f}", r1.extracted, f"{walls[1]:.2f}",
                         r2.extracted, f"{walls[0] / walls[1]:.1f}x", "yes" if same else "NO"])
            order = ["load", "features", "head", "baseline", "total_before_report", "report", "total"]
            keys = [k for k in order if k in r2.timings] + [k for k in r2.timings if k not in order]
            breakdown.append((v, keys, r1.timings, r2.timings))
            raw[v] = {"walls": walls, "first_timings": r1.timings, "second_timings": r2.timings,
                      "accuracy": r2.metrics["accuracy"], "baseline": (r2.baseline or {}).get("accuracy")}
            if args.profile:
                pr = cProfile.Profile()
                pr.enable()
                fit_run(args.data, out=tmp / "run3", **kw)
                pr.disable()
                s = io.StringIO()
                pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(args.profile)
                profiles[v] = s.getvalue()
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)

    table = md_table(["variant", "fit_run options", "1st call s (fresh cache)", "extracted", "2nd call s (cache hit)",
                      "extracted", "ratio (target ≥ 20x)", "same metrics"], rows)
    parts = [f"### bench_cache\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n"
             f"`fit_run({args.data!r}, backbone={args.backbone!r}, labels_per_class={args.labels_per_class}, "
             f"seed={args.seed}, ...)`; wall time of each call measured around `fit_run` (imports done beforehand).\n\n"
             f"{table}\n"]
    for v, keys, t1, t2 in breakdown:
        bt = md_table(["stage (FitResult.timings)", "1st call s", "2nd call s"],
                      [[k, f"{t1.get(k, float('nan')):.3f}", f"{t2.get(k, float('nan')):.3f}"] for k in keys])
        parts.append(f"\nTimings breakdown, variant `{v}` (`total_before_report` and `total` are cumulative):\n\n{bt}\n")
    for v, p in profiles.items():
        lines = [ln for ln in p.splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
        parts.append(f"\ncProfile of a third (cache-hit) call, variant `{v}`, top {args.profile} by cumulative "
                     f"time:\n\n```\n" + "\n".join(lines[start:]) + "\n```\n")
    text = "".join(parts)
    atomic_write_text(args.out, text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps({"command": cmd, "machine": info, **raw},
                                                                      indent=1))
    print(text)


if __name__ == "__main__":
    main()
