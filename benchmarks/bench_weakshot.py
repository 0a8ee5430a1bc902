"""Weak-shot learning: SimTrans against plain training on noisy labels, the density denoiser and the clean-subset
oracle, on the same splits.

Main protocol (probe cost): cached ``lite0`` features (frozen), the weak-shot pipeline of
:func:`transferkit.weakshot.fit_weakshot` on each (dataset, noise kind, noise rate, seed) cell: a base classifier with
one hidden layer on the clean base classes, the similarity net on base pairs, then each method's novel classifier
(the base classifier's hidden layer, a new output layer) trained for a fixed number of epochs on the noisy novel
items and scored on the clean novel test split.

- clipart: 12 categories, the 6 at even positions (sorted) base, the 6 others novel; outliers: MNIST digits
  (``dataset:mnist5k``) and photo crops;
- mnist5k: digits 0-4 base, 5-9 novel; outliers: clip art (``dataset:clipart``) and photo crops;
- noise kinds ``flip`` (items of another novel class), ``outlier`` (items of no novel class), ``mixed``; rates 30%
  and 50%; 5 seeds (the split, the noise and every training change with the seed).

The base classifier and the similarity net depend only on (dataset, seed): trained once per pair and reused by its
six noise cells in the same process. Settings are the :class:`~transferkit.weakshot.WeakShotConfig` defaults, chosen
on MNIST-M features (a dataset reported nowhere here) and, for SimTrans's similarity blend, drop rule and graph
term, on development seeds 100-105 of these datasets (``bench_weakshot_dev.py``), never on the reported seeds' test
splits.

End to end (``--e2e``, small on purpose for a CPU): clipart, flip and outlier noise at 50%, seeds 0-1, lite0 at
96 px fine-tuned on the base classes, then each method fine-tuning the whole network on the noisy novel items.

    OMP_NUM_THREADS=1 python benchmarks/bench_weakshot.py --work-dir /work/bench-weak/work \\
        --cache-dir /work/bench-weak/cache

Resumable: finished cells are journaled in ``<work-dir>/probe/cells.jsonl`` (and ``e2e/cells.jsonl``); a rerun with
the same settings only runs what is missing. Writes ``benchmarks/results/bench_weakshot.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

DATASETS = {"clipart": {"base": None, "novel": None, "outliers": "dataset:mnist5k,photos"},
            "mnist5k": {"base": "0,1,2,3,4", "novel": "5,6,7,8,9", "outliers": "dataset:clipart,photos"}}
METHODS = ["plain", "density", "simtrans-weights", "simtrans", "oracle"]
E2E_METHODS = ["plain", "density", "simtrans-weights", "simtrans", "oracle"]


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


#: the settings the methods without the similarity net (plain, density, oracle) depend on: the split, the base
#: classifier and the novel classifier's training
BASELINE_KEYS = ("hidden", "dropout", "lr", "weight_decay", "batch_size", "base_epochs", "base_patience",
                 "novel_epochs", "test_fraction", "val_fraction", "outlier_pool")


def load_reusable(journals: list[str], old_config: dict, cfg) -> dict:
    """Results of the methods that do not use the similarity net from the journals of an earlier run whose settings
    (``old_config``, e.g. the ``config`` of an earlier ``bench_weakshot.json``) agree with ``cfg`` on
    :data:`BASELINE_KEYS`: those methods' code path and every input of theirs are then the same, so their results
    (deterministic for a seed) are reused instead of recomputed. Returns ``{(dataset, kind, rate, seed): methods}``."""
    from transferkit._io import read_journal
    from transferkit.experiment import settings_hash
    from transferkit.weakshot import WEAKSHOT_METHODS

    new = cfg.to_dict()
    differ = [k for k in BASELINE_KEYS if old_config.get(k) != new[k]]
    if differ:
        raise SystemExit(f"--reuse: the earlier run's settings differ on {differ}; its baselines cannot be reused")
    want = settings_hash({"config": old_config, "methods": METHODS, "datasets": DATASETS})
    keep = [m for m in METHODS if not WEAKSHOT_METHODS.get(m).cap("uses_similarity")]
    out: dict = {}
    for j in journals:
        for r in read_journal(j):
            if r.get("settings_hash") == want and "methods" in r:
                out.setdefault((r["dataset"], r["kind"], float(r["rate"]), int(r["seed"])),
                               {m: r["methods"][m] for m in keep if m in r["methods"]})
    return out


def run_cell(cell, cache: dict, args, cfg, store, reuse: dict | None = None) -> dict:
    """One (dataset, kind, rate, seed) cell at probe cost: every method on one split (the methods without the
    similarity net taken from ``reuse`` when it holds the cell)."""
    import torch

    from transferkit.report.metrics import pack_outcomes
    from transferkit.weakshot import prepare_weakshot, train_base, train_novel
    from transferkit.weakshot.similarity import fit_similarity

    c = cell.coords
    spec = DATASETS[c["dataset"]]
    t0 = time.perf_counter()
    wd = prepare_weakshot(c["dataset"], "lite0", base=spec["base"], novel=spec["novel"], noise=c["rate"],
                          noise_kind=c["kind"], outliers=spec["outliers"], seed=c["seed"], config=cfg, store=store,
                          num_workers=args.workers)
    sp = wd.split
    key = (c["dataset"], c["seed"])
    if key not in cache:  # base and similarity depend on the base classes and the seed only
        cache.clear()
        tb = time.perf_counter()
        base = train_base(wd, cfg, c["seed"])
        fit = fit_similarity(wd.X, sp, cfg, c["seed"], init=base if cfg.sim_init == "base" else None)
        cache[key] = (base, fit, time.perf_counter() - tb)
    base, fit, base_seconds = cache[key]
    out = {"noise": sp.noise, "sizes": sp.sizes(), "similarity": fit.scores, "base_seconds": base_seconds,
           "methods": {}}
    old = (reuse or {}).get((c["dataset"], c["kind"], float(c["rate"]), int(c["seed"])), {})
    if old:
        out["reused_methods"] = sorted(old)
    for m in METHODS:
        if m in old:
            out["methods"][m] = old[m]
            continue
        torch.manual_seed(0)
        r = train_novel(wd, m, base, fit.net, cfg, c["seed"])
        out["methods"][m] = {"accuracy": r.accuracy, "weights_auc": r.weights_auc, "seconds": r.seconds,
                             "outcomes": pack_outcomes(r.correct), **({"gate": r.gate} if r.gate else {})}
        log(f"{c['dataset']} {c['kind']} {c['rate']} seed {c['seed']}: {m} {100 * r.accuracy:.1f}% "
            f"(weights AUC {r.weights_auc if r.weights_auc is None else round(r.weights_auc, 3)})")
    out["seconds"] = time.perf_counter() - t0
    return out


def run_e2e_cell(cell, args, cfg) -> dict:
    """One end-to-end cell (every method fine-tuning the network)."""
    from transferkit.report.metrics import pack_outcomes
    from transferkit.weakshot import fit_weakshot

    c = cell.coords
    spec = DATASETS[c["dataset"]]
    t0 = time.perf_counter()
    res = fit_weakshot(c["dataset"], base=spec["base"], novel=spec["novel"], noise=c["rate"], noise_kind=c["kind"],
                       outliers=spec["outliers"], methods=E2E_METHODS, seed=c["seed"], config=cfg, end_to_end=True,
                       cache_dir=args.cache_dir, num_workers=args.workers, log=log)
    return {"similarity": res.similarity, "seconds": time.perf_counter() - t0, "stage_seconds": res.seconds,
            "sizes": {k: v for k, v in res.split.items() if k != "noise"}, "noise": res.split["noise"],
            "methods": {r.method: {"accuracy": r.accuracy, "weights_auc": r.weights_auc, "seconds": r.seconds,
                                   "outcomes": pack_outcomes(r.correct)} for r in res.results}}


def _pooled_mcnemar(recs: list[dict], a: str, b: str) -> dict | None:
    from transferkit.report.metrics import paired_difference, unpack_outcomes

    ca = [unpack_outcomes(r["methods"][a]["outcomes"]) for r in recs if a in r["methods"] and b in r["methods"]]
    cb = [unpack_outcomes(r["methods"][b]["outcomes"]) for r in recs if a in r["methods"] and b in r["methods"]]
    if not ca:
        return None
    return paired_difference(np.concatenate(ca), np.concatenate(cb))


def summarise(records: list[dict], methods: list[str]) -> dict:
    """Per (dataset, kind, rate): mean and std of every method; the targets of the issue."""
    splits: dict[tuple, list[dict]] = {}
    for r in records:
        splits.setdefault((r["dataset"], r["kind"], r["rate"]), []).append(r)
    rows = []
    for (ds, kind, rate), recs in splits.items():
        row = {"dataset": ds, "kind": kind, "rate": rate, "n": len(recs), "methods": {},
               "similarity": float(np.mean([r["similarity"]["pair_balanced_accuracy"] for r in recs])),
               "measured_noise": float(np.mean([r["noise"]["measured_rate"] for r in recs]))}
        for m in methods:
            acc = [r["methods"][m]["accuracy"] for r in recs if m in r["methods"]]
            auc = [r["methods"][m]["weights_auc"] for r in recs
                   if m in r["methods"] and r["methods"][m]["weights_auc"] is not None]
            row["methods"][m] = {"mean": float(np.mean(acc)) if acc else None, "std": float(np.std(acc)) if acc else None,
                                 "auc": float(np.mean(auc)) if auc else None,
                                 "seconds": float(np.mean([r["methods"][m]["seconds"] for r in recs
                                                           if m in r["methods"]])) if acc else None}
        gates = [r["methods"]["simtrans"].get("gate") for r in recs if "simtrans" in r.get("methods", {})]
        row["gate_closed"] = sum(bool(g and g["open_set"]) for g in gates) if any(gates) else None
        row["gate_share_claimed"] = (float(np.mean([g["share_claimed"] for g in gates if g and g["suspects"]]))
                                     if any(gates) else None)
        row["simtrans_vs_plain"] = _pooled_mcnemar(recs, "simtrans", "plain")
        row["graph_term"] = _pooled_mcnemar(recs, "simtrans", "simtrans-weights")
        rows.append(row)
    return {"rows": rows}


def _fmt(v: dict | None) -> str:
    if not v or v.get("mean") is None:
        return "–"
    return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"


def render(state: dict) -> str:
    cfg = state["config"]
    merged = state.get("merged_from")
    source = "" if not merged else (
        "cells from the journals of runs made side by side (split by dataset and seed; a cell found in two journals "
        "counts once): " + "; ".join(
            f"`{j}` ({', '.join(sorted({d for d, _ in v}))}, seeds {sorted({s for _, s in v})})"
            for j, v in merged.items()) + "\n\n")
    reused = state.get("reused_from")
    if reused:
        source += ("plain, density and oracle (the methods without the similarity net) are reused from the journals "
                   f"of an earlier run ({', '.join(f'`{j}`' for j in reused['journals'])}, settings in "
                   f"`{reused['config']}`) wherever it has the cell: their settings and code path are unchanged, so "
                   "their results are the same (checked: a rerun of mnist5k flip 30 % seed 0 gave the same "
                   "accuracies); the other cells ran every method.\n\n")
    parts = [f"### bench_weakshot\n\ncommand: `{state['command']}`\n\n{source}{machine_line(state['machine'])}\n\n"
             "Weak-shot learning at probe cost: cached lite0 features (frozen); base classifier (one hidden layer of "
             f"{cfg['hidden']}) on the clean base classes, similarity net on base pairs ({cfg['sim_steps']} steps)"
             + (f", blended with the calibrated cosine of the frozen features (net share {cfg.get('sim_blend')})"
                if cfg.get("sim_blend", 1) < 1 else "")
             + _drop_text(cfg) + _graph_text(cfg) + ", "
             f"each method's novel classifier {cfg['novel_epochs']} epochs from the base classifier's hidden layer "
             "(the last epoch kept: no clean novel data exists to choose on); clean novel test accuracy %, mean ± std "
             "over seeds. clipart: 6 base / 6 novel categories, outliers from MNIST digits and photo crops; mnist5k: "
             "0-4 base / 5-9 novel, outliers from clip art and photo crops. `simtrans-weights` = SimTrans without the "
             "graph term; `density` = kernel-density weights in the frozen features (no transfer); `oracle` = the "
             "clean subset alone (reads the true labels: a reference, not a method). Weights AUC: how often a clean "
             "item outweighs a noisy one.\n"]
    s = state.get("summary")
    if s and s["rows"]:
        methods = METHODS
        rows = []
        for r in s["rows"]:
            rows.append([r["dataset"], f"{r['kind']} {int(100 * r['rate'])}%", str(r["n"]),
                         *[_fmt(r["methods"].get(m)) for m in methods],
                         "–" if r["simtrans_vs_plain"] is None else
                         f"{100 * r['simtrans_vs_plain']['diff']:+.1f} (p={r['simtrans_vs_plain']['p_value']:.2g})",
                         f"{100 * r['similarity']:.1f}",
                         " / ".join("–" if r["methods"][m]["auc"] is None else f"{r['methods'][m]['auc']:.2f}"
                                    for m in ("density", "simtrans"))])
        parts.append(md_table(["data", "noise", "seeds", *methods, "SimTrans − plain (pooled McNemar)",
                               "simnet base-pair bal. acc %", "weights AUC density / simtrans"], rows) + "\n")
        parts.append(_targets(s["rows"]))
        parts.append(_gate_text(s["rows"]))
        if state.get("previous"):
            parts.append(_before_after(s["rows"], state["previous"]))
    e = state.get("e2e_summary")
    if e and e["rows"]:
        rows = [[r["dataset"], f"{r['kind']} {int(100 * r['rate'])}%", str(r["n"]),
                 *[_fmt(r["methods"].get(m)) for m in E2E_METHODS],
                 f"{np.mean([r['methods'][m]['seconds'] or 0 for m in E2E_METHODS]):.0f}"] for r in e["rows"]]
        parts.append(f"\n#### End to end (small, on a CPU)\n\nlite0 at {state['config']['image_size']} px fine-tuned "
                     f"on the base classes ({state['config']['e2e_base_epochs']} epochs), then each method fine-tunes "
                     f"the whole network on the noisy novel images ({state['config']['e2e_epochs']} epochs, the last "
                     "kept); the similarity net learns on the base-trained network's features.\n\n"
                     + md_table(["data", "noise", "seeds", *E2E_METHODS, "s per method"], rows) + "\n")
    return "\n".join(parts)


def _drop_text(cfg: dict) -> str:
    """How the config's SimTrans weights leave items out, for the table's caption."""
    share, rule = 100 * cfg.get("sim_drop", 0), cfg.get("sim_drop_rule", "lowest")
    if not share:
        return ""
    if rule == "confusable":
        return (f", SimTrans's weights with each class's items dropped that are among its lowest-weighted {share:.0f} % "
                "and significantly more similar to another novel class (Welch test, z > 2)")
    if rule == "mixture":
        return (f", SimTrans's weights with each class's low mixture component dropped (at most {share:.0f} %)")
    if rule == "claimed":
        return (f", SimTrans's weights with each class's items dropped that are among its lowest-weighted {share:.0f} % "
                "and claimed by another novel class (the unclaimed weighted at least the class mean)")
    return f", SimTrans's weights with the lowest {share:.0f} % of each class dropped"


def _graph_text(cfg: dict) -> str:
    """Where the config's graph term acts and its settings, for the table's caption."""
    on = cfg.get("graph_on", "features")
    where = "the predicted probabilities" if on == "outputs" else "the hidden features"
    gate = cfg.get("sim_gate", 0)
    return (f", the graph term on {where} (alpha {cfg.get('alpha'):g}, mu {cfg.get('mu'):+g}"
            + (f", {cfg['graph_schedule']} schedule" if cfg.get("graph_schedule", "alternate") != "alternate" else "")
            + ")" + (f", the open-set gate at level {gate:g} (SimTrans trains as plain training where fewer of its "
                     "suspects than chance are claimed by another novel class)" if gate else ""))


def _gate_text(rows: list[dict]) -> str:
    """How often SimTrans's open-set gate closed (plain training), split by split."""
    if not any(r.get("gate_closed") is not None for r in rows):
        return ""
    parts = [f"{r['dataset']} {r['kind']} {int(100 * r['rate'])}% {r['gate_closed']}/{r['n']} "
             f"(claimed {r['gate_share_claimed']:.2f})" for r in rows if r.get("gate_closed") is not None]
    return ("\nThe open-set gate: seeds where it closed (SimTrans = plain training) / seeds, and the mean share of "
            "SimTrans's suspects claimed by another novel class: " + "; ".join(parts) + ".\n")


def _before_after(rows: list[dict], previous: dict) -> str:
    """The SimTrans columns of an earlier run (``previous``: its results JSON) beside this run's, split by split."""
    old = {(r["dataset"], r["kind"], float(r["rate"])): r for r in previous["summary"]["rows"]}
    cfg = previous.get("config", {})
    table = []
    for r in rows:
        o = old.get((r["dataset"], r["kind"], float(r["rate"])))
        if o is None:
            continue

        def cell(row: dict, m: str) -> str:
            v = row["methods"].get(m) or {}
            return "–" if v.get("mean") is None else f"{100 * v['mean']:.1f}"

        table.append([r["dataset"], f"{r['kind']} {int(100 * r['rate'])}%", f"{o['n']} → {r['n']}",
                      f"{cell(o, 'plain')} → {cell(r, 'plain')}",
                      f"{cell(o, 'simtrans-weights')} → {cell(r, 'simtrans-weights')}",
                      f"{cell(o, 'simtrans')} → {cell(r, 'simtrans')}",
                      " → ".join("–" if x["methods"]["simtrans"]["auc"] is None else f"{x['methods']['simtrans']['auc']:.2f}"
                                 for x in (o, r))])
    if not table:
        return ""
    note = previous.get("note") or (
        "the paper's mean-similarity weights, concatenated pair features "
        f"{'with |a-b| and a*b ' if cfg.get('symmetric') else ''}and the graph term at the reference code's "
        f"alpha {cfg.get('alpha')} on raw features")
    return (f"\nBefore → after (the earlier run: {note}; its seeds and this run's may differ in number):\n\n"
            + md_table(["data", "noise", "seeds", "plain", "simtrans-weights", "simtrans", "weights AUC simtrans"],
                       table) + "\n")


def _targets(rows: list[dict]) -> str:
    def mean_of(m: str) -> float:
        return float(np.mean([r["methods"][m]["mean"] for r in rows]))

    plain, sim, dens, simw = mean_of("plain"), mean_of("simtrans"), mean_of("density"), mean_of("simtrans-weights")
    every = all(r["methods"]["simtrans"]["mean"] >= r["methods"]["plain"]["mean"] for r in rows)
    worst = min(rows, key=lambda r: r["methods"]["simtrans"]["mean"] - r["methods"]["plain"]["mean"])
    lines = ["\nTargets of the issue (means over the splits above):\n",
             f"- SimTrans at or above plain training on every split: **{'met' if every else 'not met'}** (smallest "
             f"margin {100 * (worst['methods']['simtrans']['mean'] - worst['methods']['plain']['mean']):+.1f} points, "
             f"{worst['dataset']} {worst['kind']} {int(100 * worst['rate'])}%)",
             f"- SimTrans at least 1.5 points above plain on average: {100 * sim:.1f} vs {100 * plain:.1f} = "
             f"{100 * (sim - plain):+.1f} points: **{'met' if sim - plain >= 0.015 else 'not met'}**",
             f"- SimTrans above the density ablation on average: {100 * sim:.1f} vs {100 * dens:.1f}: "
             f"**{'met' if sim > dens else 'not met'}**",
             f"- the graph term worth at least 0.5 point (SimTrans − SimTrans without it): {100 * (sim - simw):+.1f} "
             f"points: **{'met' if sim - simw >= 0.005 else 'not met'}**",
             f"- best of the two SimTrans variants against plain: {100 * (max(sim, simw) - plain):+.1f} points"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="clipart,mnist5k")
    ap.add_argument("--kinds", default="flip,outlier,mixed")
    ap.add_argument("--rates", default="0.3,0.5")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--e2e", action="store_true", help="also run the small end-to-end protocol")
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end protocol")
    ap.add_argument("--e2e-seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work-dir", default="/tmp/tk-bench-weakshot")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_weakshot.md"))
    ap.add_argument("--reuse", default=None,
                    help="comma-separated probe journals of an earlier run whose results of the methods without the "
                         "similarity net (plain, density, oracle) are reused when its settings agree on theirs")
    ap.add_argument("--reuse-config", default=None,
                    help="the earlier run's results JSON (its 'config'), needed with --reuse")
    ap.add_argument("--previous", default=None,
                    help="an earlier run's results JSON: its SimTrans columns are shown beside this run's")
    ap.add_argument("--previous-note", default=None,
                    help="how the --previous run differs from this one (shown above the before/after table)")
    ap.add_argument("--merge", default=None,
                    help="comma-separated probe journals of earlier runs (e.g. one process per dataset, run side by "
                         "side): render their finished cells of the current settings together and exit")
    args = ap.parse_args()

    import torch

    from transferkit.experiment import Cell, run_grid, settings_hash
    from transferkit.features import FeatureStore
    from transferkit.weakshot import WeakShotConfig

    torch.set_num_threads(args.threads)
    cfg = WeakShotConfig()
    out = Path(args.out)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state = {"command": command_line(), "machine": machine_info(), "config": cfg.to_dict()}
    if out.with_suffix(".json").is_file():  # keep the other protocol's results when one is rerun
        old = json.loads(out.with_suffix(".json").read_text())
        for k in ("summary", "e2e_summary"):
            if k in old:
                state[k] = old[k]

    if args.previous:
        state["previous"] = json.loads(Path(args.previous).read_text())
        state["previous"] = {"config": state["previous"].get("config"), "summary": state["previous"].get("summary"),
                             "note": args.previous_note}
    if args.reuse:
        state["reused_from"] = {"journals": _csv(args.reuse), "config": args.reuse_config}

    def save() -> None:
        atomic_write_text(out.with_suffix(".json"), json.dumps(state, indent=1, default=str))
        atomic_write_text(out, render(state))

    if args.merge:
        from transferkit._io import read_journal

        settings = settings_hash({"config": cfg.to_dict(), "methods": METHODS, "datasets": DATASETS})
        records = [r for j in _csv(args.merge) for r in read_journal(j)
                   if r.get("settings_hash") == settings and "methods" in r]
        seen: dict[tuple, dict] = {}  # a cell run by two processes counts once (the first journal's)
        for r in records:
            seen.setdefault((r["dataset"], r["kind"], float(r["rate"]), r["seed"]), r)
        records = list(seen.values())
        # only whole (dataset, seed) groups: a seed cut short would weigh its splits unevenly
        want = {(k, float(r)) for k in _csv(args.kinds) for r in _csv(args.rates)}
        groups: dict[tuple, set] = {}
        for r in records:
            groups.setdefault((r["dataset"], r["seed"]), set()).add((r["kind"], float(r["rate"])))
        complete = {g for g, cells in groups.items() if want <= cells}
        dropped = sorted(set(groups) - complete)
        if dropped:
            log(f"left out (dataset, seed) groups with missing cells: {dropped}")
        records = [r for r in records if (r["dataset"], r["seed"]) in complete]
        state["merged_from"] = {j: sorted({(r["dataset"], r["seed"]) for r in read_journal(j)
                                           if r.get("settings_hash") == settings
                                           and (r["dataset"], r["seed"]) in complete}) for j in _csv(args.merge)}
        state["summary"] = summarise(records, METHODS)
        state.pop("e2e_summary", None)
        save()
        print(render(state))
        return
    store = FeatureStore(args.cache_dir)
    for sub in ("probe", "e2e"):  # the journals' folders
        (work / sub).mkdir(parents=True, exist_ok=True)
    if not args.e2e_only:
        settings = settings_hash({"config": cfg.to_dict(), "methods": METHODS, "datasets": DATASETS})
        cells = [Cell({"dataset": d, "kind": k, "rate": float(r), "seed": int(s)}, settings)
                 for s in _csv(args.seeds) for d in _csv(args.datasets) for k in _csv(args.kinds)
                 for r in _csv(args.rates)]  # seed-major: a run cut short still covers every split of its seeds
        cache: dict = {}
        done: list[dict] = []
        reuse = None
        if args.reuse:
            if not args.reuse_config:
                raise SystemExit("--reuse needs --reuse-config (the earlier run's results JSON)")
            reuse = load_reusable(_csv(args.reuse), json.loads(Path(args.reuse_config).read_text())["config"], cfg)
            log(f"reusing the baselines of {len(reuse)} cells")

        def progress(rec: dict) -> None:
            done.append(rec)
            state["summary"] = summarise(done_records(), METHODS)
            save()

        def done_records() -> list[dict]:
            return [r for r in done if "methods" in r]

        res = run_grid(cells, lambda cell, _: run_cell(cell, cache, args, cfg, store, reuse), work / "probe" / "cells.jsonl",
                       log=progress)
        state["summary"] = summarise(res.records, METHODS)
        save()
    if args.e2e or args.e2e_only:
        ecfg = replace(cfg)
        settings = settings_hash({"config": ecfg.to_dict(), "methods": E2E_METHODS, "e2e": True})
        cells = [Cell({"dataset": "clipart", "kind": k, "rate": 0.5, "seed": int(s)}, settings)
                 for s in _csv(args.e2e_seeds) for k in ("flip", "outlier")]
        res = run_grid(cells, lambda cell, _: run_e2e_cell(cell, args, ecfg), work / "e2e" / "cells.jsonl")
        state["e2e_summary"] = summarise(res.records, E2E_METHODS)
        save()
    print(render(state))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
