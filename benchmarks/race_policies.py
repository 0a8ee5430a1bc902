"""Compare ``auto``'s race rules and the constant policies on finished ``bench_finetune`` results, per group of files.

Each policy picks a strategy per split from what the split recorded: the race rules from the probe's and gradual
unfreezing's **validation** scores (:func:`transferkit.transferability.advisor.race_choice`), the constant ones
without looking at anything; every pick is judged on the same split's test accuracies (best of probe / gradual /
partial / finetune, or within a point). No training, no test label used to decide.

    python benchmarks/race_policies.py --group design=a.json,b.json --group check=c.json ...

Policies: ``race (probe default)`` (rule 5: the probe unless gradual leads by more than the noise),
``race from 10 labels per class`` (rule 6, the shipped one: the probe below 10 labels per class, else rule 5's race),
rule 8 (read from its recorded ``auto`` cells: the model kept) and always probe / gradual / partial / finetune. Prints a markdown table (hits, share, mean test accuracy per group
and pooled) and the hits per budget.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

JUDGED = ("probe", "gradual", "partial", "finetune")
#: the test accuracy of the model a rule-8 ``auto`` cell kept (a winning gradual retrained on every labelled item)
KEPT = "auto (kept model)"


def splits_of(path: str) -> list[dict]:
    """Every split of a ``bench_finetune`` result file with an ``auto`` cell: budget, validation scores of the raced
    candidates, their cross-validated held-out answers (rule 7's cells), validation items and the test accuracy (%)
    of each judged strategy."""
    from transferkit.report.metrics import unpack_outcomes

    data = json.loads(Path(path).read_text())
    out = []
    for ds, res in data["results"].items():
        by = {(c["strategy"], c["budget"], c["seed"]): c for c in res["cells"]}
        for c in res["cells"]:
            if c["strategy"] != "auto" or not all((s, c["budget"], c["seed"]) in by for s in JUDGED):
                continue
            key = (c["budget"], c["seed"])
            val = {k: v for k, v in (c["details"].get("val_accuracy") or {}).items() if k in ("probe", "gradual")}
            if len(val) < 2:  # a cell decided without a race: read the candidates' own validation scores
                val = {k: by[(k, *key)]["details"].get("val_accuracy") for k in ("probe", "gradual")}
            held = {k: unpack_outcomes(v) for k, v in (c["details"].get("held_out") or {}).items()}
            test = {s: 100 * float(by[(s, *key)]["accuracy"]) for s in JUDGED}
            if "kept" in c["details"]:  # a rule-8 record: the model its auto cell kept
                test[KEPT] = 100 * float(c["accuracy"])
            out.append({"dataset": ds, "budget": key[0], "seed": key[1], "val": val, "held": held,
                        "n_val": int(by[("gradual", *key)]["n_val"]), "test": test})
    return out


def policies() -> dict:
    from race_rescore import rule6_choice

    from transferkit.transferability.advisor import RACE_Z, race_choice

    return {"race (probe default; rule 5)": lambda r: race_choice(r["val"], r["n_val"], z=RACE_Z)[0],
            "race from 10 labels per class (rule 6)": lambda r: rule6_choice(r["val"], r["n_val"], "probe",
                                                                             r["budget"])[0],
            "cross-validated race (rule 7)": lambda r: (race_choice(r["val"], r["n_val"], rule="probe",
                                                                    held_out=r["held"])[0] if r["held"] else None),
            "rule 8 (as recorded: the model kept)":
                lambda r: KEPT if KEPT in r["test"] else None,
            **{f"always {s}": (lambda r, s=s: s) for s in JUDGED}}


def judge(rows: list[dict], pick) -> tuple[int, float, int]:
    """Hits (best or within a point), mean test accuracy and splits judged of a policy over ``rows`` (a policy that
    cannot decide a split, rule 7 on a split recorded without its cross-validated answers, skips it)."""
    hits, acc = 0, []
    for r in rows:
        chosen = pick(r)
        if chosen is None:
            continue
        best = max(r["test"][s] for s in JUDGED)
        hits += r["test"][chosen] >= best - 1.0 - 1e-9
        acc.append(r["test"][chosen])
    return hits, float(np.mean(acc)) if acc else float("nan"), len(acc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", action="append", required=True, help="NAME=file.json,file.json,...")
    args = ap.parse_args()
    groups = {}
    for g in args.group:
        name, files = g.split("=", 1)
        groups[name] = [row for f in files.split(",") for row in splits_of(f)]
    pooled = [r for rows in groups.values() for r in rows]
    names = [*groups, f"{len(pooled)} pooled"]
    print("| policy | " + " | ".join(f"{n} ({len(groups.get(n, pooled))} splits)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for label, pick in policies().items():
        cells = []
        for n in names:
            rows = groups.get(n, pooled)
            h, m, n = judge(rows, pick)
            cells.append(f"{h} ({100 * h / n:.0f} %), {m:.1f} %" + ("" if n == len(rows) else f" of {n}")
                         if n else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    by_budget = defaultdict(list)
    for r in pooled:
        by_budget[r["budget"]].append(r)
    print("\nHits per budget, pooled (" + ", ".join(policies()) + "):")
    for b in sorted(by_budget):
        rows = by_budget[b]
        print(f"- {b} labels per class ({len(rows)} splits): "
              + ", ".join(str(judge(rows, pick)[0]) for pick in policies().values()))  # rule 7: its splits only


if __name__ == "__main__":
    main()
