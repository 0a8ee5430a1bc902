"""Re-decide ``auto`` on finished ``bench_finetune`` results with today's rule, and pool the splits of several files.

The race trains every candidate (probe, gradual, partial, finetune) on a split and records each one's validation
accuracy in the ``auto`` cell; the rule that turns those scores into a choice
(:func:`transferkit.transferability.advisor.race_choice`) reads nothing else. So a change of the rule can be
scored on runs already made, with no training: this script re-applies the current rule to the recorded
validation scores (never the test scores) and judges the choice on the test accuracies of the same cells, with
:func:`transferkit.compare.advisor_summary`, per dataset and pooled.

    python benchmarks/race_rescore.py benchmarks/results/bench_finetune_clipart.json /path/other.json ...

Writes ``benchmarks/results/race_rescore.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line  # noqa: E402


def rescore(cells: list[dict]) -> list[dict]:
    """The cells with every ``auto`` choice re-decided from its recorded validation scores, as today's race would:
    only today's candidates (``RACE_CANDIDATES``) are read, and the race's extra cost is recomputed from the recorded
    seconds of those candidates' cells (the four-way race's recorded cost is kept as ``recorded_extra_seconds``)."""
    from transferkit.transferability.advisor import RACE_CANDIDATES, race_choice

    by = {(c["strategy"], c["budget"], c["seed"]): c for c in cells}
    out = []
    for c in cells:
        d = c.get("details", {})
        if c["strategy"] == "auto" and isinstance(d.get("val_accuracy"), dict):
            key = (c["budget"], c["seed"])
            n_val = next((by[(k, *key)].get("n_val") for k in ("partial", "gradual", "finetune")
                          if (k, *key) in by), 0)
            val = {k: v for k, v in d["val_accuracy"].items() if k in RACE_CANDIDATES}
            chosen, why = race_choice(val, int(n_val or 0), rule=d.get("rule"))
            extra = d.get("extra_seconds")
            if all((k, *key) in by for k in RACE_CANDIDATES) and (chosen, *key) in by:
                extra = (float(d.get("advice_seconds") or 0.0) + sum(float(by[(k, *key)]["seconds"])
                                                                     for k in RACE_CANDIDATES)
                         - float(by[(chosen, *key)]["seconds"]))
            wider = set(d["val_accuracy"]) - set(RACE_CANDIDATES)  # recorded when more candidates raced
            c = {**c, "details": {**d, "val_accuracy": val, "chosen": chosen, "recorded_choice": d.get("chosen"),
                                  "reasons": why, "extra_seconds": extra,
                                  "recorded_extra_seconds": d.get("extra_seconds") if wider else None}}
        out.append(c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default=str(RESULTS_DIR / "race_rescore.md"))
    args = ap.parse_args()
    from transferkit.compare import advisor_sentence, advisor_summary

    pooled, parts = [], []
    for f in args.files:
        data = json.loads(Path(f).read_text())
        for ds, res in data["results"].items():
            cells = rescore(res["cells"])
            if not any(c["strategy"] == "auto" and "recorded_choice" in c["details"] for c in cells):
                continue
            pooled += [(ds, c) for c in cells]
            s = advisor_summary(cells)
            changed = [f"{c['budget']}/s{c['seed']}: {c['details']['recorded_choice']} -> {c['details']['chosen']}"
                       for c in cells if c["strategy"] == "auto" and c["details"]["recorded_choice"] != c["details"]["chosen"]]
            parts.append(f"**{ds}** ({Path(f).name}, {s['n']} splits): {advisor_sentence(s)}. Per split: "
                         + ", ".join(f"{p['budget']}/{p['seed']}: {p['chosen']} (best {'/'.join(p['best'])}, "
                                     f"-{p['loss_points']:.1f})" for p in s["per_split"])
                         + f". Choices changed by today's rule: {', '.join(changed) or 'none'}.\n")
    # the summary keys a split by (strategy, budget, seed): number the pooled splits (dataset, budget, seed)
    ids: dict[tuple, int] = {}
    s = advisor_summary([{**c, "budget": 0, "seed": ids.setdefault((ds, c["budget"], c["seed"]), len(ids))}
                         for ds, c in pooled])
    autos = [c["details"] for _, c in pooled if c["strategy"] == "auto" and "recorded_choice" in c["details"]]
    cost = [(a["extra_seconds"], a["recorded_extra_seconds"]) for a in autos
            if a.get("extra_seconds") is not None and a.get("recorded_extra_seconds") is not None]
    from transferkit.transferability.advisor import RACE_CANDIDATES

    cost_line = "" if not cost else (
        f" On the {len(cost)} splits that were raced four ways, racing {' and '.join(RACE_CANDIDATES)} only costs "
        f"{np.mean([a for a, _ in cost]):.0f}s per split beyond training the winner alone (the recorded runs' CPU "
        f"seconds), against {np.mean([b for _, b in cost]):.0f}s recorded for the four-way race.")
    text = (f"### race_rescore\n\ncommand: `{command_line()}`\n\n" + "\n".join(parts)
            + f"\n**All {s['n']} splits pooled**: {advisor_sentence(s)}.{cost_line}\n")
    atomic_write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
