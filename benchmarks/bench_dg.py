"""Domain generalisation benchmark: leave-one-domain-out, every method against ERM, honest selection vs the oracle.

Parts (each resumable: its cells go to ``<work-dir>/<part>/cells.jsonl``):

- ``digits``: the four digit domains (mnist5k, digits, mnist-m, synth-digits), each held out in turn, at probe cost:
  a bottleneck + classifier on cached lite0 ImageNet features (frozen), erm / coral / groupdro / irm / vrex / mixup.
- ``colored``: ColoredMNIST (the IRM construction from mnist5k; environments +90%, +80%, -90%), end to end from
  scratch with the small CNN (three conv-BN-ReLU-pool blocks, width 32) at 16 px, every method including mixstyle.
  LeNet at 32 px costs about ten times as much per image: too much for 2 shared cores here.
- ``rotated``: RotatedMNIST (mnist5k split into six disjoint parts rotated 0-75 degrees), the same network.

Checkpoints are chosen on a 20% validation split of the training domains (DomainBed's training-domain
validation); the oracle column chooses on 20% of the target's labels and is scored on the same other 80% of the
target as the honest number. Run: ``python benchmarks/bench_dg.py --parts digits,colored,rotated``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, machine_info, machine_line, md_table  # noqa: E402

PARTS = {
    "digits": {"domains": "mnist5k,digits,mnist-m,synth-digits", "backbone": "lite0", "leave_out": "each",
               "methods": "erm,coral,groupdro,irm,vrex,mixup", "steps": 600, "eval_every": 100, "batch_size": 32,
               "max_per_domain": 1000, "params": {}},
    "colored": {"domains": "colored-mnist", "backbone": "small-cnn", "image_size": 16, "leave_out": "-90%",
                "methods": "erm,coral,groupdro,irm,vrex,mixup,mixstyle", "steps": 300, "eval_every": 50,
                "batch_size": 32, "max_per_domain": None,
                "params": {"irm": {"anneal_steps": 100}, "vrex": {"anneal_steps": 100}}},
    "rotated": {"domains": "rotated-mnist", "backbone": "small-cnn", "image_size": 16,
                "leave_out": "rot0,rot15,rot30,rot45,rot60,rot75",
                "methods": "erm,coral,groupdro,irm,vrex,mixup,mixstyle", "steps": 300, "eval_every": 50,
                "batch_size": 16, "max_per_domain": None,
                "params": {"irm": {"anneal_steps": 100}, "vrex": {"anneal_steps": 100}}},
}


def render(state: dict) -> str:
    lines = ["### bench_dg: domain generalisation, leave one domain out", "",
             f"Command: `{state['command']}`  ", f"Machine: {machine_line(state['machine'])}  ",
             f"Date: {state['date']}", ""]
    for part, res in state["results"].items():
        p = res["part"]
        lines += [f"#### {part}: {p['domains']} ({'cached ' + p['backbone'] + ' features, bottleneck + classifier' if p['backbone'] == 'lite0' else p['backbone'] + ' end to end from scratch at ' + str(p.get('image_size')) + ' px'})", "",
                  f"Held out: {', '.join(res['targets'])}; seeds {res['seeds']}; {p['steps']} steps (Adam 1e-3), "
                  f"batch {p['batch_size']} per training domain, evaluation every {p['eval_every']} steps; "
                  f"items per domain: {res['sizes']}; method parameters other than DomainBed's defaults: "
                  f"{p['params'] or 'none'}. Wall time {res['seconds']:.0f} s."
                  + (f" This part's last run: `{res['command']}` ({res.get('date', '')})."
                     if res.get("command") and res["command"] != state["command"] else ""), "",
                  "Accuracy % on the held-out domain (its 80% evaluation part), mean ± std over seeds. **selected**: "
                  "checkpoint chosen on the training domains' validation split (honest). **oracle**: checkpoint "
                  "chosen on the target's other 20% (uses target labels: for reference only).", ""]
        rows = [[r["target"], r["method"], f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}",
                 "" if r.get("vs_erm") is None else f"{100 * r['vs_erm']:+.1f}",
                 f"{100 * r['oracle_mean']:.1f} ± {100 * r['oracle_std']:.1f}", f"{100 * r['val_mean']:.1f}",
                 f"{r['seconds_mean']:.0f}"] for r in res["rows"]]
        lines += [md_table(["held out", "method", "selected %", "vs ERM", "oracle % (target labels)",
                            "train-domain val %", "s/run"], rows), ""]
        srows = [[s["method"], f"{100 * s['mean']:.1f}", "" if s.get("mean_vs_erm") is None else
                  f"{100 * s['mean_vs_erm']:+.1f}", f"{100 * s['worst']:.1f} ({s['worst_target']})",
                  "" if s.get("worst_vs_erm") is None else f"{100 * s['worst_vs_erm']:+.1f}",
                  f"{100 * s['oracle_mean']:.1f}", f"{100 * s['selection_loss']:.1f}"] for s in res["summary"]]
        lines += ["Over the held-out domains:", "",
                  md_table(["method", "mean %", "vs ERM", "worst domain %", "worst vs ERM", "oracle mean %",
                            "oracle - selected"], srows), ""]
    return "\n".join(lines) + "\n"


def finished(part: str, p: dict, work: Path, seeds: list[int], state: dict, sizes) -> dict:
    """A part's result from the finished cells in ``work/cells.jsonl`` (no training): per held-out domain, only the
    seeds (of ``seeds``) that every method finished, so each method is compared with ERM on the same seeds."""
    from collections import Counter

    from transferkit.generalize.experiment import summarise

    cells = [json.loads(line) for line in (work / "cells.jsonl").read_text().splitlines() if line.strip()]
    key = Counter(c["settings_hash"] for c in cells).most_common(1)[0][0]
    methods, targets = p["methods"].split(","), p["leave_out"].split(",")
    cells = [c for c in cells if c["settings_hash"] == key and c["seed"] in seeds]
    done = {}
    for t in targets:
        per = [{c["seed"] for c in cells if c["target"] == t and c["method"] == m} for m in methods]
        done[t] = sorted(set.intersection(*per))
    keep = [c for c in cells if c["seed"] in done[c["target"]]]
    targets = [t for t in targets if done[t]]
    rows, summary = summarise(keep, targets, methods)
    return {"command": state["command"], "date": state["date"], "part": p, "rows": rows, "summary": summary,
            "targets": targets, "seeds": {t: done[t] for t in targets}, "sizes": sizes,
            "seconds": sum(c["seconds"] for c in keep), "settings_hash": key,
            "cells": [{k: v for k, v in c.items() if k != "train_domains"} for c in keep]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="digits,colored,rotated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default="/work/bench-cache")
    ap.add_argument("--work-dir", default="/work/bench-cache-dg/bench_dg")
    ap.add_argument("--leave-out", default=None, help="override every part's held-out domains")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_dg.md"))
    ap.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON and exit")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: summarise the part's finished cells in --work-dir, each held-out domain "
                         "with the seeds that every method finished (for a run stopped before its last seed)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        atomic_write_text(out, render(json.loads(out.with_suffix(".json").read_text())))
        return

    import torch

    from transferkit.generalize import DGConfig, generalize

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    prev = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    state = {"command": command_line(), "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                          time.gmtime()),
             "results": prev.get("results", {})}
    for res in state["results"].values():  # parts run before the command was kept per part: the file's command
        res.setdefault("command", prev.get("command"))
        res.setdefault("date", prev.get("date"))
    for part in args.parts.split(","):
        p = dict(PARTS[part])
        if args.leave_out:
            p["leave_out"] = args.leave_out
        cfg = DGConfig(steps=p["steps"], eval_every=p["eval_every"], batch_size=p["batch_size"], device="cpu",
                       params=p["params"])
        if args.finished_only:
            state["results"][part] = finished(part, p, Path(args.work_dir) / part, seeds, state,
                                              state["results"].get(part, {}).get("sizes"))
            atomic_write_text(out.with_suffix(".json"), json.dumps(state, indent=1, default=str))
            atomic_write_text(out, render(state))
            continue
        t0 = time.perf_counter()
        res = generalize(p["domains"], leave_out=p["leave_out"], methods=p["methods"].split(","),
                         backbone=p["backbone"], image_size=p.get("image_size"), seeds=seeds, config=cfg, max_per_domain=p["max_per_domain"],
                         cache_dir=args.cache_dir, out=Path(args.work_dir) / part,
                         log=lambda m: print(m, flush=True))
        state["results"][part] = {"command": state["command"], "date": state["date"], "part": p, "rows": res.rows,
                                  "summary": res.summary, "targets": res.settings["targets"],
                                  "seeds": seeds, "sizes": res.settings["sizes"],
                                  "seconds": sum(c["seconds"] for c in res.cells),
                                  "cells": [{k: v for k, v in c.items() if k != "train_domains"} for c in res.cells]}
        print(res.table(), flush=True)
        atomic_write_text(out.with_suffix(".json"), json.dumps(state, indent=1, default=str))
        atomic_write_text(out, render(state))


if __name__ == "__main__":
    main()
