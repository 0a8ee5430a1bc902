"""Before/after tables for the training-loop rebuild (issue 9): did the rebuild keep behaviour?

Reads the raw results the benchmarks wrote *before* the rebuild from git (``--before``, a commit whose
``benchmarks/results/*.json`` hold them) and the ones of the rerun (``--after-dir``, default
``benchmarks/results/rerun-issue9/``: the reruns' JSON and logs, and ``fit/`` with the ``metrics.json`` and the
``/usr/bin/time -v`` log of a plain ``transferkit fit``; the fine-tuning rerun is
``benchmarks/results/bench_finetune_clipart.json``), and writes ``benchmarks/results/bench_refactor.md``: one
before/after table per benchmark, the difference in points, and the largest deviation. Nothing is rerun here. The
reruns were written to their own files so that the full pre-rebuild tables in ``benchmarks/results/`` (and
RESULTS.md, which ``collect.py`` builds from them) stay whole: two of the reruns are partial.

    python benchmarks/bench_refactor.py --notes benchmarks/refactor_notes.md

``--notes`` is a hand-written markdown file (machine, commands, and what moved and why); its sections
``<!-- fit -->``, ``<!-- probe -->``, ``<!-- adapt -->`` and ``<!-- finetune -->`` are placed under the matching
tables, ``<!-- head -->`` above them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, md_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = {"lite0": "lite0 + logreg", "lite0-random": "lite0-random + logreg", "scratch": "small CNN (scratch)"}


def _git_json(rev: str, name: str) -> dict:
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:benchmarks/results/{name}"], check=True,
                          capture_output=True, text=True).stdout
    return json.loads(text)


def _pm(vals: list[float]) -> str:
    return f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f}"


def _d(after: float, before: float) -> str:
    return f"{100 * (after - before):+.1f}"


def _notes(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    text = Path(path).read_text()
    parts = re.split(r"<!--\s*(\w+)\s*-->", text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _se_diff(before: list[float], after: list[float]) -> float:
    """Standard error of the difference of two seed means (sample variances): the noise yardstick of a Δ."""
    vb = np.var(before, ddof=1) if len(before) > 1 else 0.0
    va = np.var(after, ddof=1) if len(after) > 1 else 0.0
    return float(np.sqrt(vb / len(before) + va / len(after)))


def fit_section(before: dict, run: Path | None, seconds: float | None) -> tuple[str, float | None]:
    """The default job: the probe and the CNN of seed 0, clipart, 10 labels per class."""
    old = {r["model"]: r["accuracy"] for r in before["records"]
           if (r["dataset"], r["budget"], r["seed"]) == ("clipart", 10, 0)}
    if run is None:
        return "(not run)", None
    m = json.loads((run / "metrics.json").read_text())
    comp = m.get("comparison") or []
    probe = next(c for c in comp if c.get("kind") == "transfer")
    cnn = next((c for c in comp if c.get("kind") == "scratch"), None)
    rows = [["lite0 + logreg head (probe)", f"{100 * old['lite0']:.1f}", f"{100 * probe['accuracy']:.1f}",
             _d(probe["accuracy"], old["lite0"])]]
    devs = [abs(probe["accuracy"] - old["lite0"])]
    if cnn is not None:
        rows.append(["small CNN from scratch", f"{100 * old['scratch']:.1f} (bench_probe_accuracy seed 0; README: 18.8)",
                     f"{100 * cnn['accuracy']:.1f}", _d(cnn["accuracy"], old["scratch"])])
    timing = ""
    t = m.get("timings") or {}
    if seconds is not None or t:
        timing = ("\n\nWall time of the whole command: " + (f"{seconds:.1f} s" if seconds is not None else "?")
                  + ("; stages (FitResult.timings, s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
                     if t else "") + ".")
    return (md_table(["model (seed 0, test split)", "before: acc %", "after: acc %", "Δ points"], rows) + timing,
            100 * max(devs))


def probe_section(before: dict, after: dict) -> tuple[str, dict[str, float]]:
    def agg(recs):
        out: dict = {}
        for r in recs:
            out.setdefault((r["dataset"], r["budget"], r["model"]), {})[r["seed"]] = r["accuracy"]
        return out

    b, a = agg(before["records"]), agg(after["records"])
    rows, devs = [], {}
    for key in b:
        if key not in a:
            continue
        d, n, m = key
        seeds = sorted(set(b[key]) & set(a[key]))
        bm = float(np.mean([b[key][s] for s in seeds]))
        am = float(np.mean([a[key][s] for s in seeds]))
        seed_dev = max(abs(a[key][s] - b[key][s]) for s in seeds)
        devs[m] = max(devs.get(m, 0.0), abs(am - bm) * 100)
        se = 100 * _se_diff([b[key][s] for s in seeds], [a[key][s] for s in seeds])
        rows.append([d, n, MODELS[m], _pm([b[key][s] for s in seeds]), _pm([a[key][s] for s in seeds]),
                     _d(am, bm), f"{se:.1f}" if seed_dev else "– (identical)",
                     f"{100 * seed_dev:.1f}"])
    table = md_table(["dataset", "labels/class", "model", "before: acc % (3 seeds)", "after: acc %", "Δ mean (points)",
                      "seed noise of Δ (1 SE)", "max |Δ| of one seed"], rows)
    return table, devs


def adapt_section(before: dict, after: dict) -> tuple[str, float, list[tuple[str, float]], list[tuple[str, float, float]]]:
    bres, ares = before["results"]["features"], after["results"]["features"]
    pairs = [p for p in bres if p in ares]
    methods = list(dict.fromkeys(r["method"] for p in pairs for r in bres[p]["rows"]))

    def accs(res, p, m):
        return [c["accuracy"] for c in res[p]["cells"] if c["method"] == m and "accuracy" in c]

    rows, worst, means = [], 0.0, []
    for m in methods:
        cells = [m]
        bs, as_, var = [], [], []
        for p in pairs:
            b, a = accs(bres, p, m), accs(ares, p, m)
            if not b or not a:
                cells.append("–")
                continue
            bs.append(np.mean(b))
            as_.append(np.mean(a))
            var.append(_se_diff(b, a) ** 2)
            cells.append(f"{100 * np.mean(b):.1f} → {100 * np.mean(a):.1f} ({_d(np.mean(a), np.mean(b))})")
        if bs:
            dm = float(np.mean(as_) - np.mean(bs)) * 100
            se = 100 * float(np.sqrt(np.sum(var))) / len(var)
            means.append((m, dm, se))
            worst = max(worst, abs(dm))
            flag = "" if abs(dm) <= 1.5 else " **>1.5**"
            cells += [f"{100 * np.mean(bs):.1f}", f"{100 * np.mean(as_):.1f}", f"{dm:+.1f}{flag}", f"{se:.1f}"]
        rows.append(cells)
    table = md_table(["method", *[f"{p.replace(':', ' → ')}: before → after (Δ)" for p in pairs], "mean before",
                      "mean after", "Δ mean (points)", "seed noise of Δ mean (1 SE)"], rows)
    # skada's rows run on our features and splits only (not on our training code): a check of the inputs
    sk = []
    for key in sorted({(c["pair"], c["method"]) for c in before.get("skada", [])}):
        bv = [c["accuracy"] for c in before["skada"] if (c["pair"], c["method"]) == key and "error" not in c]
        av = [c["accuracy"] for c in after.get("skada", []) if (c["pair"], c["method"]) == key and "error" not in c]
        if bv and av:
            sk.append((f"skada {key[1]} {key[0]}", 100 * (np.mean(av) - np.mean(bv))))
    return table, worst, sk, means


def _merge_runs(files: list[Path]) -> dict | None:
    """The features results of several bench_adapt JSON files (extra runs on different pairs) as one."""
    if not files:
        return None
    res: dict = {}
    for f in files:
        for pair, r in json.loads(f.read_text())["results"]["features"].items():
            res.setdefault(pair, {"cells": []})["cells"] += r["cells"]
    return {"results": {"features": res}}

def adapt_extra_section(before: dict, after: dict, extra_before: dict | None, extra_after: dict | None) -> str:
    """More seeds for single cells: the extra runs (``bench_adapt_extra*_before.json``, pre-rebuild code;
    ``bench_adapt_extra*_after.json``, the rerun's code) add seeds to the 3 of the main runs. A seed found in both a
    main run and its extra run is a reproduction check (same code and seed must give the same number), not a new
    sample."""
    runs = [x for x in (extra_before, extra_after) if x]
    if not runs:
        return ""
    keys = sorted({(p, c["method"]) for x in runs for p, r in x["results"]["features"].items() for c in r["cells"]
                   if "accuracy" in c})

    def seeds_of(res: dict | None, pair: str, method: str) -> dict[int, float]:
        if not res or pair not in res["results"]["features"]:
            return {}
        return {int(c["seed"]): c["accuracy"] for c in res["results"]["features"][pair]["cells"]
                if c["method"] == method and "accuracy" in c}

    rows, checks = [], []
    for pair, m in keys:
        merged = []
        for main, extra, label in ((before, extra_before, "before"), (after, extra_after, "after")):
            a, b = seeds_of(main, pair, m), seeds_of(extra, pair, m)
            for s in sorted(set(a) & set(b)):
                checks.append(f"{m} {pair.replace(':', ' → ')} seed {s} ({label} code): recorded {100 * a[s]:.1f}, "
                              f"rerun {100 * b[s]:.1f}" + (" (identical)" if a[s] == b[s] else
                                                          f" (differs by {100 * (b[s] - a[s]):+.1f})"))
            merged.append({**b, **a})
        bm, am = merged
        common = sorted(set(bm) & set(am))
        if not common:
            continue
        bv, av = [bm[s] for s in common], [am[s] for s in common]
        d = 100 * (np.mean(av) - np.mean(bv))
        rows.append([m, pair.replace(":", " → "), ", ".join(map(str, common)),
                     " / ".join(f"{100 * v:.1f}" for v in bv), " / ".join(f"{100 * v:.1f}" for v in av),
                     _pm(bv), _pm(av), f"{d:+.1f}", f"{100 * _se_diff(bv, av):.1f}"])
    text = ("More seeds for cells that moved beyond noise (extra runs of bench_adapt on these cells with the "
            "pre-rebuild code (before) and the rerun's code (after), on the same seeds, so the same target splits; "
            "seeds 0-2 are the main runs' numbers, and a seed found in both is the reproduction check below):\n\n"
            + md_table(["method", "pair", "seeds", "before: acc % per seed", "after: acc % per seed",
                        "before: mean ± std", "after: mean ± std", "Δ mean (points)", "seed noise of Δ (1 SE)"], rows)
            + "\n")
    if checks:
        text += "\nReproduction checks (a seed run again in the extra run): " + "; ".join(checks) + ".\n"
    return text


def finetune_section(before: dict, after: dict, name: str = "clipart") -> tuple[str, float]:
    b, a = before["results"][name], after["results"][name]

    def cells(res):
        out: dict = {}
        for c in res["cells"]:
            if "accuracy" in c:
                out.setdefault((c["strategy"], c["budget"]), []).append(c)
        return out

    cb, ca = cells(b), cells(a)
    strategies = list(dict.fromkeys(x["strategy"] for x in b["aggregates"]))
    rows, worst = [], 0.0
    rerun = {c["budget"] for c in a["cells"] if "accuracy" in c}
    for budget in sorted({x["budget"] for x in b["aggregates"]} & rerun):
        row = [budget]
        for s in strategies:
            xb, xa = cb.get((s, budget)), ca.get((s, budget))
            if not xb or not xa:
                row.append("–")
                continue
            ab, aa = [c["accuracy"] for c in xb], [c["accuracy"] for c in xa]
            d = 100 * (np.mean(aa) - np.mean(ab))
            se = 100 * _se_diff(ab, aa)
            if s != "auto":
                worst = max(worst, abs(d))
            row.append(f"{100 * np.mean(ab):.1f} → {100 * np.mean(aa):.1f} ({d:+.1f}"
                       f"{' **>1.5**' if abs(d) > 1.5 else ''}, noise {se:.1f}; "
                       f"{np.mean([c['seconds'] for c in xb]):.0f}s → {np.mean([c['seconds'] for c in xa]):.0f}s)")
        rows.append(row)
    table = md_table(["labels/class", *[f"{s}: before → after (Δ, noise = 1 SE; s/cell)" for s in strategies]], rows)
    missing = sorted({x["budget"] for x in b["aggregates"]} - rerun)
    if missing:
        table += f"\n\nNot rerun: {', '.join(map(str, missing))} labels per class (before-run budgets)."
    return table, worst


_LOG_PAIR = re.compile(r"^\[[\d:]+\] features (\S+): ")
_LOG_CELL = re.compile(r"^\[[\d:]+\]\s+(\S+) seed (\d+): target acc ([\d.]+)%")


def adapt_log_section(before: dict, after: dict, log: Path) -> str:
    """Per-seed before/after for a pair the rerun's log reached but its JSON does not hold (stopped mid-pair)."""
    done = set(after["results"]["features"])
    cells: dict = {}
    pair = None
    for line in log.read_text().splitlines():
        if (m := _LOG_PAIR.match(line)):
            pair = m.group(1)
        elif pair and pair not in done and (m := _LOG_CELL.match(line)):
            cells.setdefault(pair, {}).setdefault(m.group(1), {})[int(m.group(2))] = float(m.group(3)) / 100
    out = []
    for pair, methods in cells.items():
        bcells = before["results"]["features"].get(pair, {}).get("cells", [])
        rows, deltas = [], []
        for meth, seeds in methods.items():
            bs = {c["seed"]: c["accuracy"] for c in bcells if c["method"] == meth and "accuracy" in c}
            common = sorted(set(seeds) & set(bs))
            if not common:
                continue
            ds = [seeds[s] - bs[s] for s in common]
            deltas += [(meth, s, d) for s, d in zip(common, ds)]
            rows.append([meth, ", ".join(map(str, common)),
                         " / ".join(f"{100 * bs[s]:.1f}" for s in common),
                         " / ".join(f"{100 * seeds[s]:.1f}" for s in common),
                         f"{100 * float(np.mean(ds)):+.1f}"])
        if not rows:
            continue
        top = max(deltas, key=lambda x: abs(x[2]))
        out.append(f"Partial pair {pair.replace(':', ' → ')} (not in the JSON: the rerun was stopped inside it; "
                   f"per-seed accuracies read from `{log.name}`, printed at 0.1 % precision):\n\n"
                   + md_table(["method", "seeds", "before: acc % per seed", "after: acc % per seed",
                               "Δ mean over these seeds (points)"], rows)
                   + f"\n\nLargest change of one seed: {100 * top[2]:+.1f} points ({top[0]}, seed {top[1]}).\n")
    return "\n".join(out)


def _elapsed(log: Path) -> float | None:
    """Wall time from a ``/usr/bin/time -v`` log."""
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", log.read_text())
    if not m:
        return None
    return int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="11c9b60", help="commit holding the results from before the rebuild")
    ap.add_argument("--after-dir", default=str(RESULTS_DIR / "rerun-issue9"),
                    help="folder with the reruns' bench_probe_accuracy.json, bench_adapt.json (+ .log) and fit/")
    ap.add_argument("--fit-run", default=None,
                    help="folder with the metrics.json of the plain `transferkit fit` (default: AFTER_DIR/fit)")
    ap.add_argument("--fit-seconds", type=float, default=None,
                    help="wall time of that command (default: read from AFTER_DIR/fit/fit_default.log)")
    ap.add_argument("--finetune-json", default=str(RESULTS_DIR / "bench_finetune_clipart.json"))
    ap.add_argument("--notes", default=None)
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_refactor.md"))
    args = ap.parse_args()
    notes = _notes(args.notes)
    after_dir = Path(args.after_dir)
    fit_run = Path(args.fit_run) if args.fit_run else (after_dir / "fit" if (after_dir / "fit").is_dir() else None)
    fit_log = after_dir / "fit" / "fit_default.log"
    fit_seconds = args.fit_seconds if args.fit_seconds is not None else (
        _elapsed(fit_log) if fit_log.is_file() else None)

    cmd = " ".join(["python", "benchmarks/bench_refactor.py", *sys.argv[1:]])
    parts = ["### bench_refactor\n",
             f"command: `{cmd}` (tables built {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC from the raw "
             f"results of commit {args.before} (before) and of `{Path(args.after_dir).relative_to(REPO) if Path(args.after_dir).resolve().is_relative_to(REPO) else args.after_dir}/` "
             f"and `{Path(args.finetune_json).name}` (after))\n",
             notes.get("head", "")]
    before_probe = _git_json(args.before, "bench_probe_accuracy.json")
    fit_table, fit_dev = fit_section(before_probe, fit_run, fit_seconds)
    parts += ["#### 1. The default job (`transferkit fit`: clipart, lite0, 10 labels per class, seed 0)\n",
              fit_table + "\n", notes.get("fit", "")]

    after_probe_path = after_dir / "bench_probe_accuracy.json"
    if after_probe_path.is_file():
        table, devs = probe_section(before_probe, json.loads(after_probe_path.read_text()))
        parts += ["#### 2. bench_probe_accuracy\n", table + "\n",
                  "Largest change of a row mean: " + ", ".join(f"{MODELS[m]} {v:.1f} points" for m, v in devs.items())
                  + ".\n", notes.get("probe", "")]

    after_adapt_path = after_dir / "bench_adapt.json"
    if after_adapt_path.is_file():
        table, worst, sk, means = adapt_section(_git_json(args.before, "bench_adapt.json"),
                                         json.loads(after_adapt_path.read_text()))
        sk_line = ""
        if sk:
            top = max(sk, key=lambda x: abs(x[1]))
            sk_line = (f" skada's rows (its own code on our standardised features and splits, {len(sk)} "
                       f"method-pair cells): largest change {top[1]:+.1f} points ({top[0]}).")
        over = [f"{m} {d:+.1f} (noise {se:.1f})" for m, d, se in means if abs(d) > 1.5]
        n_pairs = len(json.loads(after_adapt_path.read_text())["results"]["features"])
        parts += [f"#### 3. bench_adapt, cached lite0 features (target accuracy %, mean of 3 seeds; {n_pairs} of "
                  "the 4 pairs rerun)\n", table + "\n",
                  f"Largest change of a method's mean over the {n_pairs} pairs rerun: {worst:.1f} points; above 1.5: "
                  f"{', '.join(over) or 'none'}. The noise column is one standard error of the change of the "
                  f"{n_pairs}-pair mean from the seed-to-seed spread of both runs (3 seeds each, per pair).{sk_line}\n"]
        log = after_dir / "bench_adapt.log"
        if log.is_file():
            partial = adapt_log_section(_git_json(args.before, "bench_adapt.json"),
                                        json.loads(after_adapt_path.read_text()), log)
            if partial:
                parts.append(partial)
        extra = [_merge_runs(sorted(after_dir.glob(f"bench_adapt_extra*_{w}.json"))) for w in ("before", "after")]
        if any(extra):
            parts.append(adapt_extra_section(_git_json(args.before, "bench_adapt.json"),
                                             json.loads(after_adapt_path.read_text()), *extra))
        parts.append(notes.get("adapt", ""))

    ft = Path(args.finetune_json)
    if ft.is_file():
        table, worst = finetune_section(_git_json(args.before, "bench_finetune.json"), json.loads(ft.read_text()))
        parts += ["#### 4. bench_finetune, clipart (128 px, at most 10 epochs; test accuracy %, mean of 3 seeds)\n",
                  table + "\n", f"Largest change of a cell mean (auto excluded: it repeats the pick): {worst:.1f} "
                  "points.\n", notes.get("finetune", "")]
    text = "\n".join(p.strip("\n") + "\n" for p in parts if p.strip())
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
