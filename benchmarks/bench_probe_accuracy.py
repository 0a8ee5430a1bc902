"""Linear-probe test accuracy vs labels per class: lite0 + logreg, lite0-random + logreg, small CNN from scratch.

For each dataset, the features of each backbone are extracted once through FeatureStore (persistent cache dir)
and reused for every budget and seed. Splits come from ``make_splits(y, labels_per_class=N, seed=s)``; the
logreg head chooses C on the validation part of the N labels (N >= 5), never on the test split. A budget is
skipped for a dataset whose smallest class has <= N samples.

    python benchmarks/bench_probe_accuracy.py --datasets clipart,mnist5k --budgets 1,5,10,50 --seeds 0,1,2 \
        --cache-dir /tmp/tk-bench-cache

Raw per-seed records go to ``benchmarks/results/bench_probe_accuracy.json``; ``--merge`` adds this run's
records to those already there (to rerun parts with ``--datasets`` / ``--budgets`` / ``--models``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

MODELS = {"lite0": "lite0 + logreg", "lite0-random": "lite0-random + logreg", "scratch": "small CNN (scratch)"}


def _csv(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def render(records: list[dict], extraction: list[dict], info: dict, cmd: str) -> str:
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    models = [m for m in MODELS if any(r["model"] == m for r in records)]
    rows = []
    for d in datasets:
        budgets = sorted({r["budget"] for r in records if r["dataset"] == d})
        for b in budgets:
            row = [d, b]
            for m in models:
                accs = [r["accuracy"] for r in records if (r["dataset"], r["budget"], r["model"]) == (d, b, m)]
                secs = [r["seconds"] for r in records if (r["dataset"], r["budget"], r["model"]) == (d, b, m)]
                if accs:
                    row.append(f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f} (n={len(accs)}, "
                               f"{np.mean(secs):.1f}s/seed)")
                else:
                    row.append("–")
            rows.append(row)
    acc_table = md_table(["dataset", "labels/class", *[f"{MODELS[m]}: test acc % (mean ± std)" for m in models]],
                         rows)
    ext_rows = [[e["dataset"], e["backbone"], e["n"], e["extracted"], f"{e['seconds']:.1f}",
                 f"{e['extracted'] / e['seconds']:.1f}" if e["extracted"] else "cache hit"] for e in extraction]
    ext_table = md_table(["dataset", "backbone", "images", "extracted now", "feature time (s)", "images/s"], ext_rows)
    wall_rows = []
    for m in models:
        fit = sum(r["seconds"] for r in records if r["model"] == m)
        ext = sum(e["seconds"] for e in extraction if e["backbone"] == m)
        n = sum(1 for r in records if r["model"] == m)
        wall_rows.append([MODELS[m], n, f"{ext:.1f}" if m != "scratch" else "–", f"{fit:.1f}", f"{ext + fit:.1f}"])
    wall_table = md_table(["model", "fits (budget × seed × dataset)", "features s (this run)", "fit+predict s",
                           "total wall s"], wall_rows)
    return (f"### bench_probe_accuracy\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n"
            f"Test accuracy on the test split (all samples outside the N labels per class); std over seeds "
            f"(population std); s/seed = head fit + predict (or CNN training + predict) per seed. An extraction row "
            f"marked as extracted now = 0 is a cache hit; rows with a count come from the run that extracted.\n\n"
            f"{acc_table}\n\nFeature extraction (once per backbone and dataset, FeatureStore):\n\n{ext_table}\n\n"
            f"Wall time per model:\n\n{wall_table}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="clipart,mnist5k")
    ap.add_argument("--budgets", default="1,5,10,50", help="labels per class")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="lite0,lite0-random,scratch", help=f"any of {','.join(MODELS)}")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the package's)")
    ap.add_argument("--blas-threads", type=int, default=0,
                    help="limit BLAS/OpenMP threads (threadpoolctl) around the head fits (default: no limit)")
    ap.add_argument("--merge", action="store_true", help="keep earlier records from the JSON file for other cells")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_probe_accuracy.md"))
    args = ap.parse_args()

    import torch

    from transferkit.backbones import create_backbone
    from transferkit.data import load_data, make_splits
    from transferkit.features import FeatureStore
    from transferkit.heads import create_head
    from transferkit.train.scratch import train_scratch

    datasets, budgets, seeds, models = _csv(args.datasets), _csv(args.budgets, int), _csv(args.seeds, int), \
        _csv(args.models)
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    out = Path(args.out)
    raw_path = out.with_suffix(".json")
    info = machine_info()
    cmd = command_line()
    records: list[dict] = []
    extraction: list[dict] = []
    if args.merge and raw_path.is_file():
        old = json.loads(raw_path.read_text())
        keep = lambda r: not (r["dataset"] in datasets and r["budget"] in budgets and r["model"] in models  # noqa: E731
                              and r["seed"] in seeds)
        records = [r for r in old.get("records", []) if keep(r)]
        extraction = old.get("extraction", [])  # replaced below only by a measure that extracted something

    def save() -> None:
        atomic_write_text(raw_path, json.dumps({"command": cmd, "machine": info, "records": records,
                                                "extraction": extraction}, indent=1))
        atomic_write_text(out, render(records, extraction, info, cmd))

    def blas_limit():
        if not args.blas_threads:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(args.blas_threads)

    store = FeatureStore(args.cache_dir)
    log(f"torch threads {torch.get_num_threads()}, cache {store.root}")
    for dname in datasets:
        source = load_data(dname)
        classes = source.classes
        y = source.encoded_labels(classes)
        smallest = int(np.bincount(y).min())
        ok_budgets = [b for b in budgets if smallest > b]
        for b in budgets:
            if b not in ok_budgets:
                log(f"{dname}: skip {b} labels/class (smallest class has {smallest} samples)")
        splits = {(b, s): make_splits(y, labels_per_class=b, seed=s, classes=classes) for b in ok_budgets for s in seeds}
        for m in models:
            if m == "scratch":
                continue
            bb = create_backbone(m)
            feats = store.get(bb, source, batch_size=args.batch_size, num_workers=args.num_workers, device="cpu",
                              progress=False)
            if feats.bad:
                raise SystemExit(f"{dname}: {len(feats.bad)} unreadable items: {feats.bad[:3]}")
            rec = {"dataset": dname, "backbone": m, "n": len(source), "extracted": feats.extracted,
                   "seconds": feats.seconds}
            earlier = [e for e in extraction if (e["dataset"], e["backbone"]) == (dname, m)]
            if feats.extracted or not earlier:
                extraction = [e for e in extraction if (e["dataset"], e["backbone"]) != (dname, m)] + [rec]
            log(f"{dname} {m}: features {feats.X.shape} in {feats.seconds:.1f}s (extracted {feats.extracted})")
            X = np.asarray(feats.X, dtype=np.float32)
            del bb
            for b in ok_budgets:
                for s in seeds:
                    sp = splits[(b, s)]
                    t = time.perf_counter()
                    head = create_head("logreg")
                    ev = (X[sp.val], y[sp.val]) if len(sp.val) else None
                    with blas_limit():
                        head.fit(X[sp.train], y[sp.train], eval_set=ev)
                        acc = float((head.predict(X[sp.test]) == y[sp.test]).mean())
                    sec = time.perf_counter() - t
                    records.append({"dataset": dname, "budget": b, "seed": s, "model": m, "accuracy": acc,
                                    "seconds": sec, "C": float(head.C_), "n_train": len(sp.train),
                                    "n_val": len(sp.val), "n_test": len(sp.test)})
                    log(f"{dname} N={b} seed={s} {m}: acc {100 * acc:.1f}% C={head.C_} ({sec:.1f}s)")
                save()
        if "scratch" in models:
            for b in ok_budgets:
                for s in seeds:
                    sp = splits[(b, s)]
                    r = train_scratch(source, y, sp.train, sp.val, sp.test, len(classes), seed=s)
                    acc = float((np.asarray(r.y_pred) == y[sp.test]).mean())
                    records.append({"dataset": dname, "budget": b, "seed": s, "model": "scratch", "accuracy": acc,
                                    "seconds": r.seconds, "details": r.details, "n_train": len(sp.train),
                                    "n_val": len(sp.val), "n_test": len(sp.test)})
                    log(f"{dname} N={b} seed={s} scratch: acc {100 * acc:.1f}% ({r.seconds:.1f}s, {r.details})")
                    save()
        save()
    save()
    print(render(records, extraction, info, cmd))
    log(f"wrote {out} and {raw_path}")


if __name__ == "__main__":
    main()
