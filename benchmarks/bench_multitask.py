"""Multitask learning: every loss weighting against the single-task model of each task, Δm and negative transfer.

Cases (probe cost: cached frozen features, a shared trunk of 256 units and one head per task, trained through the
loop with early stopping on the validation split's mean task score):

- ``drug-reviews`` with ``minilm`` features: ``sentiment`` (3 classes), ``condition`` (the 10 most frequent
  conditions; reviews of others have no label: missing labels per task), ``useful`` (regression on
  ``log(1 + usefulCount)``). The package ships the rating only as the 3-level sentiment, so the regression task is
  the review's usefulness count instead of a 1-10 rating;
- ``clipart`` with ``lite0`` features: ``category`` (12 classes) and ``super`` (its super-category, 7 classes).

Each (case, seed) cell splits the items 60/20/20 (seeded, stratified by the first classification task), trains the
six weightings (equal, normalised, uncertainty, gradnorm (alpha 1.5), dwa (T 2), random) and one single-task model
per task on the same split. Reported: each task's test metric (accuracy %, or MAE for regression), its change
against the single-task model (% of the single-task metric, + is better), Δm (the mean change over tasks), how
often negative transfer was flagged (McNemar's test for classification, a paired bootstrap interval of the MAE
change for regression, per seed), and the worst task's change. The "best" weighting is chosen on the validation
split (its mean validation task score over seeds), never on the test split.

End to end (``--e2e``, small on purpose for a CPU): clipart with lite0 at 96 px trained end to end, seed 0.

    OMP_NUM_THREADS=1 python benchmarks/bench_multitask.py --work-dir /work/bench-weak/mt --cache-dir /work/bench-weak/cache

Resumable per cell (``<work-dir>/cells.jsonl``). Writes ``benchmarks/results/bench_multitask.md`` and ``.json``.
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

CASES = {"drug-reviews": {"backbone": "minilm", "tasks": "sentiment,condition,useful"},
         "clipart": {"backbone": "lite0", "tasks": "category,super"}}
WEIGHTINGS = ["equal", "normalised", "uncertainty", "gradnorm", "dwa", "random"]
E2E_WEIGHTINGS = ["equal", "uncertainty", "gradnorm"]


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def run_cell(cell, args, cfg, store, end_to_end: bool = False) -> dict:
    from transferkit.backbones import create_backbone
    from transferkit.features.featureset import build_featureset
    from transferkit.multitask import (TaskData, compare_weightings, load_tasks, split_items, train_multitask,
                                       train_multitask_end_to_end)

    c = cell.coords
    case = CASES[c["case"]]
    t0 = time.perf_counter()
    td = load_tasks(c["case"], case["tasks"])
    bb = create_backbone(case["backbone"])
    fs = build_featureset(td.source, bb, store=store, labels="ignore", split=False, num_workers=args.workers)
    td = TaskData(fs.source, td.tasks, td.Y[fs.positions], td.name, td.notes)
    X = np.asarray(fs.X, np.float32)
    sp = split_items(td.Y, td.tasks, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=c["seed"])
    weightings = E2E_WEIGHTINGS if end_to_end else WEIGHTINGS

    def train(tasks, Y, w):
        if end_to_end:
            return train_multitask_end_to_end(td.source, Y, tasks, sp, bb, w, config=cfg, seed=c["seed"])
        return train_multitask(X, Y, tasks, sp, w, config=cfg, seed=c["seed"])

    fits = {}
    for w in weightings:
        fits[w] = train(td.tasks, td.Y, w)
        log(f"{c['case']} seed {c['seed']}: {w}: " + ", ".join(
            f"{t.name} {fits[w].test_metrics[t.name].get('accuracy', fits[w].test_metrics[t.name].get('mae')):.3f}"
            for t in td.tasks))
    singles = {}
    for j, t in enumerate(td.tasks):
        singles[t.name] = train([t], td.Y[:, [j]], "equal")
    rows = compare_weightings(fits, singles, td.Y[sp.test], td.tasks, seed=c["seed"])
    return {"rows": rows, "singles": {k: v.test_metrics[k] for k, v in singles.items()},
            "single_val": {k: v.val_scores.get("val_score") for k, v in singles.items()},
            "tasks": [t.to_dict() for t in td.tasks], "notes": td.notes, "splits": sp.sizes(),
            "seconds": time.perf_counter() - t0}


def summarise(records: list[dict]) -> dict:
    out = {}
    for case in dict.fromkeys(r["case"] for r in records):
        recs = [r for r in records if r["case"] == case]
        tasks = recs[0]["tasks"]
        names = [row["weighting"] for row in recs[0]["rows"]]
        rows = []
        for w in names:
            per = [next(row for row in r["rows"] if row["weighting"] == w) for r in recs]
            entry = {"weighting": w, "n": len(per), "tasks": {}, "delta_m": [p["delta_m"] for p in per],
                     "worst": [p["worst_change"] for p in per], "val_score": [p["val_score"] for p in per],
                     "seconds": float(np.mean([p["seconds"] for p in per]))}
            for t in tasks:
                ts = [next(x for x in p["tasks"] if x["task"] == t["name"]) for p in per]
                entry["tasks"][t["name"]] = {"metric": ts[0]["metric"], "values": [x["multitask"] for x in ts],
                                             "single": [x["single"] for x in ts],
                                             "change": [x["change_percent"] for x in ts],
                                             "flags": int(sum(bool(x["negative"]) for x in ts))}
            rows.append(entry)
        by_val = max(rows, key=lambda e: float(np.mean(e["val_score"])))
        equal = next(e for e in rows if e["weighting"] == "equal")
        out[case] = {"rows": rows, "tasks": tasks, "notes": recs[0]["notes"], "splits": recs[0]["splits"],
                     "best_on_validation": by_val["weighting"],
                     "best_worst_minus_equal_worst": [a - b for a, b in zip(by_val["worst"], equal["worst"])],
                     "seeds": len(recs)}
    return out


def _ms(vals: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "–"
    return f"{scale * np.mean(v):{fmt}} ± {scale * np.std(v):{fmt.lstrip('+')}}"


def render(state: dict) -> str:
    cfg = state["config"]
    parts = [f"### bench_multitask\n\ncommand: `{state['command']}`\n\n{machine_line(state['machine'])}\n\n"
             f"Probe cost: cached frozen features, a shared trunk ({cfg['hidden']}) and one linear head per task, "
             f"AdamW lr {cfg['lr']}, at most {cfg['epochs']} epochs with early stopping (patience {cfg['patience']}) on "
             "the validation split's mean task score; split 60/20/20 per seed. Per task: the test metric (accuracy % "
             "or MAE) mean ± std over seeds, and in brackets its change against the single-task model in % of the "
             "single-task metric (+ is better); ⚠n = negative transfer flagged in n seeds (McNemar for "
             "classification, paired bootstrap of the MAE change for regression). Δm = mean change over tasks; worst = "
             "the worst task's change.\n"]
    for key, title in (("summary", None), ("e2e_summary", "End to end (small, on a CPU)")):
        summ = state.get(key) or {}
        if title and summ:
            parts.append(f"\n#### {title}\n\nlite0 at {cfg.get('image_size') or 96} px trained end to end with each "
                         f"weighting ({cfg['e2e_epochs']} epochs, batch {cfg['e2e_batch_size']}, backbone at "
                         f"{cfg['backbone_lr_scale']} of the head's learning rate), seed 0 only.\n")
        for case, s in summ.items():
            tasks = s["tasks"]
            head = ["weighting", *[f"{t['name']} ({'acc %' if t['kind'] == 'classification' else 'MAE'})"
                                   for t in tasks], "Δm %", "worst task %", "val score", "s"]
            rows = []
            for e in s["rows"]:
                cells = [e["weighting"] + (" (best on validation)" if e["weighting"] == s["best_on_validation"] else "")]
                for t in tasks:
                    te = e["tasks"][t["name"]]
                    acc = te["metric"] == "accuracy"
                    cells.append(f"{_ms(te['values'], 100 if acc else 1, '.1f' if acc else '.3f')} "
                                 f"({np.mean([x for x in te['change'] if x is not None]):+.1f}%)"
                                 + (f" ⚠{te['flags']}" if te["flags"] else ""))
                cells += [_ms(e["delta_m"], 1, "+.1f"), _ms(e["worst"], 1, "+.1f"), _ms(e["val_score"], 1, ".3f"),
                          f"{e['seconds']:.0f}"]
                rows.append(cells)
            first = s["rows"][0]
            single = ["single-task"] + [
                _ms(first["tasks"][t["name"]]["single"], 100 if t["kind"] == "classification" else 1,
                    ".1f" if t["kind"] == "classification" else ".3f") for t in tasks] + ["", "", "", ""]
            rows.append(single)
            diff = s["best_worst_minus_equal_worst"]
            parts.append(f"\n**{case}** ({s['seeds']} seeds; train/val/test {s['splits']}; "
                         + "; ".join(s["notes"]) + ")\n\n" + md_table(head, rows) + "\n\n"
                         f"Best weighting on validation: **{s['best_on_validation']}**; its worst task's change minus "
                         f"equal weights' worst task's change: {np.mean(diff):+.2f} ± {np.std(diff):.2f} points "
                         f"(target: at least +2): **{'met' if np.mean(diff) >= 2 else 'not met'}**.\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="drug-reviews,clipart")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--e2e", action="store_true", help="also the small end-to-end protocol")
    ap.add_argument("--e2e-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work-dir", default="/tmp/tk-bench-multitask")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_multitask.md"))
    args = ap.parse_args()

    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transferkit.experiment import Cell, run_grid, settings_hash
    from transferkit.features import FeatureStore
    from transferkit.multitask import MultitaskConfig

    torch.set_num_threads(args.threads)
    cfg = MultitaskConfig(image_size=96, num_workers=args.workers)
    out = Path(args.out)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state = {"command": command_line(), "machine": machine_info(), "config": cfg.to_dict()}
    if out.with_suffix(".json").is_file():
        old = json.loads(out.with_suffix(".json").read_text())
        for k in ("summary", "e2e_summary"):
            if k in old:
                state[k] = old[k]

    def save() -> None:
        atomic_write_text(out.with_suffix(".json"), json.dumps(state, indent=1, default=str))
        atomic_write_text(out, render(state))

    store = FeatureStore(args.cache_dir)
    if not args.e2e_only:
        settings = settings_hash({"config": cfg.to_dict(), "weightings": WEIGHTINGS, "cases": CASES})
        cells = [Cell({"case": c, "seed": int(s)}, settings) for c in _csv(args.cases) for s in _csv(args.seeds)]
        done: list[dict] = []

        def progress(rec: dict) -> None:
            done.append(rec)
            state["summary"] = summarise(done)
            save()

        res = run_grid(cells, lambda cell, _: run_cell(cell, args, cfg, store), work / "cells.jsonl", log=progress)
        state["summary"] = summarise(res.records)
        save()
    if args.e2e or args.e2e_only:
        settings = settings_hash({"config": cfg.to_dict(), "weightings": E2E_WEIGHTINGS, "e2e": True})
        cells = [Cell({"case": "clipart", "seed": 0}, settings)]
        res = run_grid(cells, lambda cell, _: run_cell(cell, args, cfg, store, end_to_end=True),
                       work / "e2e-cells.jsonl")
        state["e2e_summary"] = summarise(res.records)
        save()
    print(render(state))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
