"""Freeze or fine-tune, and how much? ``compare_strategies`` per dataset, labelled budget and seed.

Every (budget, seed) has one split shared by all strategies: scratch (same architecture, random init,
the engine), probe (cached features + logistic head, C chosen on val), partial, gradual and finetune (the
engine). Then the colour-vs-grayscale pair on ``mnist-m`` (probe and finetune at one budget).

A full run at 224 px is far too slow on a 2-core CPU: the defaults train at ``--image-size 128`` (``--image-sizes`` overrides it per dataset: digits at 64 px) (the probe's
features are extracted at the same size), for ``--epochs 10`` (early stopping patience 5 on val), and score
at most ``--max-test 600`` test items per cell (a stratified, seeded sample of the test split, the same for
every strategy). The table header says all of this.

    OMP_NUM_THREADS=2 nohup python benchmarks/bench_finetune.py --datasets clipart,mnist5k --seeds 0,1,2 \
        --work-dir /tmp/tk-bench-finetune > /tmp/bench_finetune.log 2>&1 &

Each dataset's comparison lives in ``<work-dir>/<dataset>`` (``cells.jsonl``: one line per finished cell);
rerunning the same command skips finished cells, so a killed benchmark resumes where it stopped. The table
(``benchmarks/results/bench_finetune.md`` + ``.json``) is rewritten after every budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

BUDGETS = {"clipart": [5, 10, 20], "mnist5k": [5, 20, 100], "mnist-m": [10]}


def _csv(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def _acc_table(res: dict) -> str:
    aggs = res["aggregates"]
    strategies = list(dict.fromkeys(a["strategy"] for a in aggs))
    by = {(a["strategy"], a["budget"]): a for a in aggs}
    flagged = {(f["strategy"], f["budget"]) for f in res["negative_transfer"]}
    rows = []
    for b in sorted({a["budget"] for a in aggs}):
        row = [b]
        for s in strategies:
            a = by.get((s, b))
            row.append("–" if a is None else
                       f"{100 * a['accuracy_mean']:.1f} ± {100 * a['accuracy_std']:.1f}"
                       f"{' ⚠' if (s, b) in flagged else ''} (n={a['n']}, {a['seconds_mean']:.0f}s)")
        row.append(res["winners"].get(str(b), res["winners"].get(b, "–")))
        rows.append(row)
    return md_table(["labels/class", *[f"{s}: acc % (CPU s/cell)" for s in strategies], "winner"], rows)


def render(results: dict[str, dict], info: dict, cmd: str, args) -> str:
    parts = [f"### {Path(args.out).stem}\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n"
             f"Backbone `{args.backbone}`; **images at {args.image_size} px** (not the backbone's 224 px; the "
             f"probe's features too; per-dataset overrides: {args.image_sizes or 'none'}), at most {args.epochs} epochs (early stopping, patience {args.patience}, on "
             f"the validation part of the N labels), batch {args.batch_size}, other TrainConfig defaults; "
             f"test accuracy on **at most {args.max_test} test items per cell** (stratified, seeded; the same "
             "items for every strategy). Mean ± population std over seeds (n = seeds done); s/cell = CPU wall "
             "time per cell (the probe's excludes its one feature extraction); ⚠ = negative transfer (mean below "
             "`scratch`, the same architecture from random init, at that budget).\n"]
    pooled = [p for res in results.values() for p in res.get("advisor", {}).get("per_split", [])]
    if pooled:
        hits = sum(p["loss_points"] <= 1e-9 for p in pooled)
        loss = [p["loss_points"] for p in pooled]
        parts.append(f"**Strategy advisor (`auto`, what `fit --strategy auto` picks from the labelled part of each "
                     f"split) over every dataset and budget: best of probe/partial/finetune on {hits} of {len(pooled)} "
                     f"splits ({100 * hits / len(pooled):.0f}%); accuracy lost {sum(loss) / len(loss):.1f} points on "
                     f"average, at most {max(loss):.1f}.** The `auto` column scores the pick.\n")
    for name, res in results.items():
        st = res["settings"]
        size = st.get("train_config", {}).get("image_size")
        parts.append(f"#### {name} ({st['dataset']}, {len(st['classes'])} classes, {size} px; seeds done: "
                     f"{sorted({c['seed'] for c in res['cells']})}; budgets done: "
                     f"{sorted({c['budget'] for c in res['cells']})})\n\n{_acc_table(res)}\n")
        if res.get("advisor"):
            from transferkit.compare import advisor_sentence

            picks = ", ".join(f"{p['budget']}/s{p['seed']}: {p['chosen']} (best {'/'.join(p['best'])}, "
                              f"-{p['loss_points']:.1f})" for p in res["advisor"]["per_split"])
            parts.append(f"Advisor: {advisor_sentence(res['advisor'])}. Per split (labels/class/seed): {picks}.\n")
        if res["warnings"]:
            parts.append("Negative transfer:\n\n" + "\n".join(f"- {w}" for w in res["warnings"]) + "\n")
        parts.append(f"Probe features: {res['feature_seconds']:.1f}s once. Report: `{res['report']}`\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="clipart,mnist5k")
    ap.add_argument("--budgets", default="", help="labels per class for every dataset (default: "
                    + "; ".join(f"{k} {','.join(map(str, v))}" for k, v in BUDGETS.items() if k != "mnist-m") + ")")
    ap.add_argument("--strategies", default="scratch,probe,partial,gradual,finetune,auto")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--image-sizes", default="mnist5k=64,mnist-m=64",
                    help="per-dataset overrides of --image-size, e.g. 'mnist5k=64' (digits are 28 px: 64 px is ample)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-test", type=int, default=600)
    ap.add_argument("--gray", default="mnist-m", help="dataset of the colour-vs-grayscale pair ('' to skip)")
    ap.add_argument("--gray-budget", type=int, default=10)
    ap.add_argument("--gray-strategies", default="probe,finetune")
    ap.add_argument("--gray-first", action="store_true", help="run the colour-vs-grayscale pair before the datasets")
    ap.add_argument("--work-dir", default="/tmp/tk-bench-finetune")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_finetune.md"))
    args = ap.parse_args()

    import torch

    from transferkit.compare import compare_strategies
    from transferkit.train.engine import TrainConfig

    info = machine_info()
    cmd = command_line()
    out = Path(args.out)
    raw_path = out.with_suffix(".json")
    sizes = {k: int(v) for k, v in (x.split("=") for x in _csv(args.image_sizes))}

    def cfg_for(data: str) -> TrainConfig:
        return TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                           image_size=sizes.get(data, args.image_size), num_workers=0, accelerator="cpu")
    results: dict[str, dict] = {}
    log(f"torch threads {torch.get_num_threads()}, work dir {args.work_dir}")

    def save() -> None:
        atomic_write_text(raw_path, json.dumps({"command": cmd, "machine": info, "results": results}, indent=1,
                                               default=str))
        atomic_write_text(out, render(results, info, cmd, args))

    def run(name: str, data: str, budgets: list[int], strategies: list[str], grayscale: bool = False) -> None:
        for k in range(1, len(budgets) + 1):  # growing budget lists: earlier cells are reused, tables appear early
            r = compare_strategies(data, backbone=args.backbone, strategies=strategies, labels_per_class=budgets[:k],
                                   seeds=_csv(args.seeds, int), config=cfg_for(data), grayscale=grayscale,
                                   cache_dir=args.cache_dir, out=Path(args.work_dir) / name, log=log,
                                   max_test=args.max_test)
            results[name] = {"settings": r.settings, "cells": r.cells, "aggregates": r.aggregates,
                             "winners": {str(b): s for b, s in r.winners.items()},
                             "negative_transfer": r.negative_transfer, "warnings": r.warnings, "advisor": r.advisor,
                             "feature_seconds": r.feature_seconds, "report": str(r.out / "report.html")}
            save()
            log(f"{name}: budgets {budgets[:k]} done\n{r.table()}")

    def gray_pair() -> None:
        for g in (False, True):
            run(f"{args.gray}-{'gray' if g else 'colour'}", args.gray, [args.gray_budget],
                _csv(args.gray_strategies), grayscale=g)

    if args.gray and args.gray_first:
        gray_pair()
    for d in _csv(args.datasets):
        run(d, d, _csv(args.budgets, int) or BUDGETS[d], _csv(args.strategies))
        if d == "clipart" and args.gray and not args.gray_first:
            gray_pair()
    if args.gray and not args.gray_first and "clipart" not in _csv(args.datasets):
        gray_pair()
    print(render(results, info, cmd, args))
    log(f"wrote {out} and {raw_path}")


if __name__ == "__main__":
    main()
