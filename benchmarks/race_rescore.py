"""Re-decide ``auto`` on finished ``bench_finetune`` results with today's rule, and pool the splits of several files.

The race trains every candidate (probe, gradual, partial, finetune) on a split and records each one's validation
accuracy in the ``auto`` cell; the rule that turns those scores into a choice
(:func:`transferkit.transferability.advisor.race_choice`) reads nothing else. So a change of the rule can be
scored on runs already made, with no training: this script re-applies the current rule to the recorded
validation scores (never the test scores) and judges the choice on the test accuracies of the same cells, with
:func:`transferkit.compare.advisor_summary`, per dataset and pooled.

    python benchmarks/race_rescore.py benchmarks/results/bench_finetune_clipart.json /path/other.json ...

With ``--readvise`` the size x similarity advice (the choice where nothing races) is computed again too, by today's
rule, exactly as a compared ``auto`` cell computes it (:func:`transferkit.compare.race_advice`: the split rebuilt
from the recorded settings, the probe's features from the feature cache at the recorded image size, the labelled
inputs' batch-norm statistics); without it the recorded advice is kept. Still no training and no test label.

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


class Readviser:
    """Today's advice for a recorded split: the split rebuilt as ``compare_strategies`` builds it, the probe's
    features from the cache, :func:`transferkit.compare.race_advice` on the labelled part."""

    def __init__(self, settings: dict, cache_dir: str):
        from transferkit.backbones import create_backbone
        from transferkit.data import load_builtin
        from transferkit.features.featureset import build_featureset

        self.settings = settings
        source = load_builtin(settings["dataset"])
        if source.fingerprint() != settings["data"] or settings.get("grayscale"):
            raise SystemExit(f"{settings['dataset']}: not the recorded data (or a grayscale run): cannot re-advise")
        self.y = source.encoded_labels(settings["classes"])
        bb = create_backbone(settings["backbone"])
        size = settings["train_config"].get("image_size")
        if size:
            bb = bb.with_preprocessing(input_size=size)
        self.fs = build_featureset(source, bb, cache_dir=cache_dir, labels="ignore", split=False, num_workers=0)

    def __call__(self, budget: int, seed: int):
        from transferkit.compare import cap_test, race_advice
        from transferkit.data.splits import Splits, make_splits

        sp = make_splits(self.y, labels_per_class=budget, seed=seed, classes=self.settings["classes"])
        sp = Splits(sp.train, sp.val, cap_test(sp.test, self.y, self.settings["max_test"], seed))
        return race_advice(self.fs, self.y, sp, budget, seed)


def rule6_choice(val: dict, n_val: int, rule: str | None, budget: int) -> tuple[str, list[str]]:
    """Rule 6 (session 7), the last rule that raced on the split's validation part alone: the advice below
    ``FEW_LABELS_PER_CLASS`` labels per class, else the probe unless gradual leads by more than ``race_margin``.
    Kept here to re-decide the splits recorded before rule 7, which recorded no cross-validated answers."""
    from transferkit.transferability.advisor import FEW_LABELS_PER_CLASS, RACE_Z, race_choice

    if n_val > 0 and budget < FEW_LABELS_PER_CLASS:
        choice = rule or "probe"
        return choice, [f"{budget} labels per class: nothing races below {FEW_LABELS_PER_CLASS} (rule 6): {choice}"]
    return race_choice(val, n_val, rule=rule, z=RACE_Z)


def rescore(cells: list[dict], readvise: Readviser | None = None) -> list[dict]:
    """The cells with every ``auto`` choice re-decided from its recorded validation scores, as today's race would:
    only today's candidates (``RACE_CANDIDATES``) are read, and the race's extra cost is recomputed from the recorded
    seconds of those candidates' cells (the four-way race's recorded cost is kept as ``recorded_extra_seconds``).
    Where nothing races today (fewer than ``FEW_LABELS_PER_CLASS`` labels per class) the choice is today's advice
    there, the probe; with ``readvise`` the advice (printed as the explanation, and the choice where nothing can
    race) is today's on the split, not the recorded one."""
    from transferkit.report.metrics import unpack_outcomes
    from transferkit.transferability.advisor import (FEW_LABELS_PER_CLASS, RACE_CANDIDATES, TINY_LABELS_PER_CLASS,
                                                     race_choice, races)

    by = {(c["strategy"], c["budget"], c["seed"]): c for c in cells}
    out = []
    for c in cells:
        d = c.get("details", {})
        if c["strategy"] == "auto" and isinstance(d.get("val_accuracy"), dict):
            key = (c["budget"], c["seed"])
            n_val = next((by[(k, *key)].get("n_val") for k in ("partial", "gradual", "finetune")
                          if (k, *key) in by), 0)
            val = {k: v for k, v in d["val_accuracy"].items() if k in RACE_CANDIDATES}
            rule, extra_details = d.get("rule"), {}
            if readvise is not None:
                adv = readvise(c["budget"], c["seed"])
                rule = adv.strategy
                extra_details = {"recorded_rule": d.get("rule"), "rule": rule, "votes": adv.evidence["votes"],
                                 "bn_shift": adv.evidence["bn_shift"]}
            if c["budget"] < TINY_LABELS_PER_CLASS or not n_val:
                pass  # no validation split: the advice decides
            elif c["budget"] < FEW_LABELS_PER_CLASS:
                rule = "probe"  # today's advice below FEW_LABELS_PER_CLASS, whatever a recorded older rule said
            held = d.get("held_out")
            if held:  # recorded by rule 7's cross-validated race: its held-out answers decide
                chosen, why = race_choice(val, int(n_val), rule=rule,
                                          held_out={k: unpack_outcomes(v) for k, v in held.items()})
            else:  # rule 6, the last single-split rule: no race below FEW_LABELS_PER_CLASS
                chosen, why = rule6_choice(val, int(n_val or 0), rule, c["budget"])
            extra = d.get("extra_seconds")
            single = not held and not races(int(n_val or 0)) or (not held and c["budget"] < FEW_LABELS_PER_CLASS)
            if single:  # nothing raced: the advice is the only extra cost
                extra = float(d.get("advice_seconds") or 0.0)
            elif held:
                pass  # the recorded cost of the cross-validated race
            elif all((k, *key) in by for k in RACE_CANDIDATES) and (chosen, *key) in by:
                extra = (float(d.get("advice_seconds") or 0.0) + sum(float(by[(k, *key)]["seconds"])
                                                                     for k in RACE_CANDIDATES)
                         - float(by[(chosen, *key)]["seconds"]))
            wider = set(d["val_accuracy"]) - set(RACE_CANDIDATES)  # recorded when more candidates raced
            # the recorded model when the choice stands (rule 8 keeps a retrained winner), else the pick's cell
            acc = c["accuracy"] if chosen == d.get("chosen") else by[(chosen, *key)]["accuracy"]
            c = {**c, "accuracy": acc, "details": {**d, **extra_details, "val_accuracy": val, "chosen": chosen,
                                  "recorded_choice": d.get("chosen"),
                                  "reasons": why, "extra_seconds": extra,
                                  "recorded_extra_seconds": d.get("extra_seconds") if wider else None}}
        out.append(c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default=str(RESULTS_DIR / "race_rescore.md"))
    ap.add_argument("--readvise", action="store_true",
                    help="compute the race's default again with today's advice (features from --cache-dir)")
    ap.add_argument("--cache-dir", default="/work/bench-cache", help="feature cache of the recorded runs")
    args = ap.parse_args()
    from transferkit.compare import advisor_sentence, advisor_summary

    pooled, parts = [], []
    for f in args.files:
        data = json.loads(Path(f).read_text())
        for ds, res in data["results"].items():
            if not any(c["strategy"] == "auto" for c in res["cells"]):
                continue
            cells = rescore(res["cells"], Readviser(res["settings"], args.cache_dir) if args.readvise else None)
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
