"""Few-shot heads on cached lite0 features: 5-way 1-shot and 5-shot episodes (600 each, 15 queries per class), mean
accuracy ± 95% CI, every head on the same episodes; and the choice of ``fit``'s few-shot default head.

Cases (test episodes over the *novel* classes; the base classes' features are given to the heads that adapt on base
classes, i.e. the centre of ``ncm-cl2n``):

- ``clipart``: 12 classes split by a seeded permutation (``numpy.random.default_rng(0).permutation(12)``) into 6 base
  and 6 novel classes;
- ``mnist5k``: base digits 0-4, novel 5-9;
- ``mnist5k->digits`` (cross-domain): base mnist5k digits 0-4, novel scikit-learn digits 5-9 (new classes *and* a new
  domain).

Choosing the default head without touching the test episodes: *validation* episodes of the same shape are drawn from
the base classes of clipart and mnist5k, with no base features (a ``fit`` run has none: the centre of ``ncm-cl2n`` is
the mean of the support). The default is the head that is the best or within the best head's 95% interval in every
validation cell (2 datasets x 2 shot counts), the highest mean validation accuracy among those; if no head qualifies,
the one with the smallest largest gap to the best; heads whose prediction depends on the feature scale are not
candidates (``NOT_DEFAULT``: the benchmark has one backbone, and ``fit`` serves any). Test episodes only report.

    OMP_NUM_THREADS=1 python benchmarks/bench_fewshot.py --cache-dir /work/bench-cache

Writes ``benchmarks/results/bench_fewshot.md`` (tables, command, machine, date) and ``bench_fewshot.json`` (raw);
``--resume`` keeps the cells already in the JSON file that were run with the same settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS_DIR, atomic_write_text, command_line, log, machine_info,  # noqa: E402
                     machine_line, md_table)

#: (label, registered head, parameters) in table order; ``ncm-cl2n`` centres on the base classes when the case has
#: them, ``ncm-cl2n/support`` always on the support (what ``fit`` does: it has no base classes)
TEST_HEADS = [("protonet", "protonet", {}), ("ncm-l2n", "ncm-l2n", {}), ("ncm-cl2n", "ncm-cl2n", {}),
              ("ncm-cl2n/support", "ncm-cl2n", {"center": "support"}), ("logreg", "logreg", {}),
              ("logreg-l2n", "logreg-l2n", {}), ("logreg-l2n C=10", "logreg-l2n", {"C": 10.0}),
              ("logreg-l2n C=100", "logreg-l2n", {"C": 100.0}), ("chen-baseline", "chen-baseline", {}),
              ("chen-baseline++", "chen-baseline++", {})]
#: validation episodes have no base features, so the two ncm-cl2n rows would be the same head: one of them
VAL_HEADS = [h for h in TEST_HEADS if h[0] != "ncm-cl2n/support"]
#: how ``fit`` uses each candidate (no base classes): the test row that shows it
AS_IN_FIT = {"ncm-cl2n": "ncm-cl2n/support"}

CASES = ["clipart", "mnist5k", "mnist5k->digits"]


def _clipart_split(classes: list[str]) -> tuple[list[str], list[str]]:
    perm = np.random.default_rng(0).permutation(len(classes))
    return sorted(classes[i] for i in perm[:6]), sorted(classes[i] for i in perm[6:])


def case_data(case: str, store, bb) -> dict:
    """Features and class lists of a case: novel (X, y), base classes or base features, validation pool."""
    from transferkit.data import load_data

    def feats(name: str):
        src = load_data(name)
        f = store.get(bb, src, device="cpu", progress=False)
        if f.bad:
            raise SystemExit(f"{name}: {len(f.bad)} unreadable items")
        log(f"{name}: features {f.X.shape} ({f.extracted} extracted now, {f.seconds:.1f}s)")
        return np.asarray(f.X, dtype=np.float32), np.asarray(src.labels).astype(str), src.classes, f.extracted

    if case == "clipart":
        X, y, classes, ext = feats("clipart")
        base, novel = _clipart_split(classes)
        return {"X": X, "y": y, "novel": novel, "base": base, "base_features": None, "extracted": {"clipart": ext}}
    if case == "mnist5k":
        X, y, classes, ext = feats("mnist5k")
        return {"X": X, "y": y, "novel": [str(d) for d in range(5, 10)], "base": [str(d) for d in range(5)],
                "base_features": None, "extracted": {"mnist5k": ext}}
    if case == "mnist5k->digits":
        X, y, _, ext = feats("digits")
        Xb, yb, _, ext_b = feats("mnist5k")
        base = [str(d) for d in range(5)]
        return {"X": X, "y": y, "novel": [str(d) for d in range(5, 10)], "base": base,
                "base_features": Xb[np.isin(yb, base)], "extracted": {"digits": ext, "mnist5k": ext_b}}
    raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")


def leaders(rows: list[dict]) -> list[str]:
    """Heads whose mean is the best or within the best head's 95% interval, best first (as
    :meth:`transferkit.fewshot.FewShotResult.leaders`)."""
    rows = sorted(rows, key=lambda r: -r["mean"])
    floor = rows[0]["mean"] - rows[0]["ci95"] if rows else 0.0
    return [r["label"] for r in rows if r["mean"] >= floor - 1e-12]


def cell_table(cell: dict, shots: list[int]) -> str:
    rows = []
    leaders = cell["leaders"]
    for label in cell["heads"]:
        row = [label]
        for k in shots:
            r = next(x for x in cell["rows"] if x["label"] == label and x["shots"] == k)
            text = f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}"
            row.append(f"**{text}**" if label in leaders[str(k)] else text)
        secs = sum(x["seconds"] for x in cell["rows"] if x["label"] == label)
        row.append(f"{secs:.1f}")
        rows.append(row)
    return md_table(["head", *[f"{k}-shot acc % (± 95% CI)" for k in shots], "seconds (all shots)"], rows)


#: heads that ``fit`` may not default to, and why: their prediction depends on the scale of the features, which the
#: benchmark (lite0 only, feature norms 15-17) does not vary. Chen et al.'s Baseline trains a linear classifier with a
#: fixed SGD learning rate and weight decay: on features of norm 0.06 (a random tiny network on digits, 1 label per
#: class) it stayed at its random initialisation (9.7 %, chance 10 %; ncm-cl2n 19.3 %), so a user's backbone with
#: small features would get a silent chance-level default. Every other head normalises or standardises its input, or
#: (protonet) predicts the nearest mean, which a common scale does not change.
NOT_DEFAULT = {"chen-baseline": "its prediction depends on the feature scale (a fixed-learning-rate SGD classifier on "
                                "raw features; at chance on features of norm 0.06), which this lite0-only benchmark "
                                "does not vary, while the shipped backbones' mean feature norms range from 4.1 "
                                "(glove-50d) and 5.7 (minilm) to 15-17 (lite0) and 71 (lite0-random)"}


def choose_default(val_cells: list[dict], shots: list[int]) -> dict:
    """The default head from validation cells (see the module docstring), among the heads not in
    :data:`NOT_DEFAULT`; the choice without that restriction is recorded too."""
    every = val_cells[0]["heads"]
    heads = [h for h in every if h not in NOT_DEFAULT]

    def mean(c, h, k):
        return next(x["mean"] for x in c["rows"] if x["label"] == h and x["shots"] == k)

    qualified = [h for h in every if all(h in c["leaders"][str(k)] for c in val_cells for k in shots)]
    avg = {h: float(np.mean([mean(c, h, k) for c in val_cells for k in shots])) for h in every}
    gap = {h: max(max(mean(c, g, k) for g in every) - mean(c, h, k) for c in val_cells for k in shots) for h in every}

    def pick(pool: list[str]) -> tuple[str, str]:
        ok = [h for h in pool if h in qualified]
        if ok:
            return max(ok, key=lambda h: avg[h]), "within the best's 95% CI in every validation cell"
        return min(pool, key=lambda h: gap[h]), "no head is within the CI everywhere: the smallest largest gap"

    choice, rule = pick(heads)
    unrestricted, _ = pick(every)
    return {"choice": choice, "rule": rule, "qualified": qualified, "mean_validation_accuracy": avg,
            "largest_gap": gap, "unrestricted_choice": unrestricted,
            "excluded": {h: why for h, why in NOT_DEFAULT.items() if h in every}}


def render(doc: dict) -> str:
    shots = doc["settings"]["shots"]
    s = doc["settings"]
    commands = doc["command"] if isinstance(doc["command"], list) else [doc["command"]]
    machines = doc["machine"] if isinstance(doc["machine"], list) else [doc["machine"]]
    head = "command: " if len(commands) == 1 else "commands (run in parallel, merged by the last one):\n\n"
    lines = [f"`{c}`" if len(commands) == 1 else f"- `{c}`" for c in commands]
    if len(commands) > 1:
        lines.append(f"- `python benchmarks/bench_fewshot.py --merge {','.join(doc.get('merged_from', []))}`")
    parts = [f"### bench_fewshot\n\n{head}" + "\n".join(lines) + "\n\n"
             + "\n\n".join(machine_line(m) for m in machines) + "\n",
             f"Backbone lite0 (frozen, cached features, 1280-d). {s['ways']}-way, {s['episodes']} episodes per shot "
             f"count, {s['queries']} queries per class, seed {s['seed']}; every head on the same episodes; mean "
             "accuracy ± 1.96·sd/√episodes. **Bold**: the best head or within its 95% interval. Heads: `protonet` "
             "(class means of raw features, softmax over negative squared distances), `ncm-l2n` / `ncm-cl2n` "
             "(SimpleShot's L2N / CL2N; `ncm-cl2n` centres on the base classes' mean, `ncm-cl2n/support` on the "
             "support's, `fit`'s few-shot default before logreg-l2n C=100), `logreg` (the standardised logistic probe "
             "`fit -n 1` trained before either, C=1 with no validation), `logreg-l2n` (scikit-learn's logistic regression, C=1, on L2-normalised "
             "features; `logreg-l2n C=10` / `C=100` the same with weaker regularisation, scale-free since the "
             "features are normalised: on raw lite0 features of norm 15-17, C=1 is about C=250 on L2-normalised ones), "
             "`chen-baseline` / `chen-baseline++` (Chen et al.'s new linear / cosine classifier, SGD lr "
             "0.01, 100 epochs of batches of 4, trained through the training loop). Timings are CPU seconds on a "
             "shared 2-core machine (one thread), all episodes of the row.\n"]
    parts.append("#### Choosing fit's few-shot head: validation episodes on the base classes (no test episode "
                 f"involved; {s.get('val_episodes', s['episodes'])} episodes per shot count)\n")
    for name, cell in doc["validation"].items():
        parts.append(f"{name}: classes {', '.join(cell['novel'])} (no base features, as in `fit`)\n\n"
                     f"{cell_table(cell, shots)}\n")
    ch = doc.get("choice")
    if ch:
        ranked = sorted(ch["mean_validation_accuracy"].items(), key=lambda kv: -kv[1])
        gaps = sorted(ch["largest_gap"].items(), key=lambda kv: kv[1])
        parts.append(f"Default: **{ch['choice']}** ({ch['rule']}; qualified: {', '.join(ch['qualified']) or 'none'}; "
                     "largest gap to the best head over the 4 cells, points: "
                     + ", ".join(f"{h} {100 * v:.2f}" for h, v in gaps) + "; mean validation accuracy: "
                     + ", ".join(f"{h} {100 * v:.2f}" for h, v in ranked) + ").\n")
        if ch.get("unrestricted_choice") and ch["unrestricted_choice"] != ch["choice"]:
            parts.append(f"Without the restriction the rule would pick **{ch['unrestricted_choice']}**; excluded: "
                         + "; ".join(f"{h}: {why}" for h, why in ch["excluded"].items()) + ".\n")
    parts.append("#### Test episodes on the novel classes\n")
    for name, cell in doc["test"].items():
        base = cell["base"]
        parts.append(f"{name}: novel {', '.join(cell['novel'])}; base {', '.join(base)}"
                     + (f" ({cell['base_items']} items from {cell['base_data']})" if cell.get("base_data") else
                        f" ({cell['base_items']} items)") + "\n\n" + cell_table(cell, shots) + "\n")
    if ch and doc["test"]:
        row = AS_IN_FIT.get(ch["choice"], ch["choice"])
        checks = []
        for name, cell in doc["test"].items():
            for k in shots:
                ok = row in cell["leaders"][str(k)]
                checks.append(f"{name} {k}-shot: {'yes' if ok else 'NO'}")
        parts.append(f"Is the default, as `fit` uses it (`{row}`), the best or within the best's 95% CI on the test "
                     f"episodes? " + "; ".join(checks) + ".\n")
        from transferkit.fewshot.choice import FEWSHOT_HEAD, FEWSHOT_PARAMS

        shipped = next((h[0] for h in TEST_HEADS if h[1] == FEWSHOT_HEAD and h[2] == FEWSHOT_PARAMS), None)
        parts.append(f"The package's few-shot default (`transferkit.fewshot.choice`: {FEWSHOT_HEAD} "
                     f"{FEWSHOT_PARAMS or ''}) is the row `{shipped}`: "
                     + ("the rule's choice." if shipped == ch["choice"] else "NOT the rule's choice.") + "\n")
    if doc.get("reused_from"):
        parts.append(f"Rows marked as kept come from `{doc['reused_from']}` (the same settings and seed, hence the "
                     "same episodes); their seconds were measured in that run: "
                     + "; ".join(f"{name}: {', '.join(sorted({r['label'] for r in c['rows'] if r.get('reused')}))}"
                                 for name, c in [*doc["validation"].items(), *doc["test"].items()]) + ".\n")
    return "\n".join(parts)


def merge(files: list[Path], out: Path) -> None:
    """One result from several runs' JSON files: their cells (a cell may come from one file only), their commands,
    and the default chosen again from the merged validation cells."""
    docs = [json.loads(f.read_text()) for f in files]
    settings = docs[0]["settings"]
    for f, d in zip(files, docs):
        if d["settings"] != settings:
            raise SystemExit(f"{f}: settings {d['settings']} differ from {files[0]}: {settings}")
    doc = {"command": [d["command"] for d in docs], "machine": [d["machine"] for d in docs], "settings": settings,
           "validation": {}, "test": {}, "choice": None, "merged_from": [str(f) for f in files]}
    for f, d in zip(files, docs):
        for part in ("validation", "test"):
            for name, cell in d[part].items():
                if name in doc[part]:
                    raise SystemExit(f"{f}: {part} cell {name!r} is also in an earlier file")
                doc[part][name] = cell
    val = [doc["validation"].get(f"{c} base classes") for c in ("clipart", "mnist5k")]
    if all(val):
        doc["choice"] = choose_default(val, settings["shots"])
    atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=1))
    atomic_write_text(out, render(doc))
    print(render(doc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--val-episodes", type=int, default=300,
                    help="episodes per shot count of the validation cells (they only choose the default head)")
    ap.add_argument("--chunk", type=int, default=600,
                    help="episodes fitted together (results do not depend on it; Chen et al.'s heads train all of a "
                         "chunk's classifiers as one batched model, so large chunks are much faster)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    ap.add_argument("--no-validation", action="store_true", help="skip the validation episodes (and the choice)")
    ap.add_argument("--resume", action="store_true", help="keep cells of the JSON file run with the same settings")
    ap.add_argument("--reuse", default=None,
                    help="an earlier run's JSON with the same settings: its rows of heads listed now (same label and "
                         "parameters) are kept, as the episodes are the same; only the other heads run")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_fewshot.md"))
    ap.add_argument("--merge", default=None,
                    help="comma-separated JSON files of runs with the same settings (e.g. cases run in parallel "
                         "processes): merge their cells, choose the default, write --out; nothing is run")
    args = ap.parse_args()
    if args.merge:
        merge([Path(p) for p in args.merge.split(",") if p], Path(args.out))
        return

    import torch
    from threadpoolctl import threadpool_limits

    from transferkit.backbones import create_backbone
    from transferkit.features import FeatureStore
    from transferkit.fewshot import evaluate_episodes

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    shots = [int(k) for k in args.shots.split(",")]
    cases = [c for c in args.cases.split(",") if c]
    settings = {"ways": args.ways, "shots": shots, "episodes": args.episodes, "val_episodes": args.val_episodes,
                "queries": args.queries, "seed": args.seed, "backbone": "lite0"}
    out = Path(args.out)
    raw = out.with_suffix(".json")
    doc = {"command": command_line(), "machine": machine_info(), "settings": settings, "validation": {}, "test": {},
           "choice": None}
    if args.resume and raw.is_file():
        old = json.loads(raw.read_text())
        if old.get("settings") == settings:
            doc["validation"], doc["test"] = old.get("validation", {}), old.get("test", {})

    def save() -> None:
        atomic_write_text(raw, json.dumps(doc, indent=1))
        atomic_write_text(out, render(doc))

    reuse = {}
    if args.reuse:
        old = json.loads(Path(args.reuse).read_text())
        if {k: v for k, v in old["settings"].items()} != settings:
            raise SystemExit(f"--reuse {args.reuse}: settings {old['settings']} differ from {settings}")
        reuse = {**{("validation", k): v for k, v in old["validation"].items()},
                 **{("test", k): v for k, v in old["test"].items()}}
        doc["reused_from"] = args.reuse

    def run(X, y, novel, heads, base=None, base_features=None, episodes=args.episodes, key=None) -> dict:
        t = time.perf_counter()
        old = reuse.get(key)
        same = lambda h, r: h[0] == r["label"] and h[2] == {k: v for k, v in r["params"].items()  # noqa: E731
                                                            if k != "random_state"}
        kept = [] if old is None else [r for r in old["rows"] if any(same(h, r) for h in heads)]
        todo = [h for h in heads if h[0] not in {r["label"] for r in kept}]
        d = None
        if todo:
            r = evaluate_episodes(X, y, novel=novel, base=base, base_features=base_features, ways=args.ways,
                                  shots=shots, queries=args.queries, episodes=episodes, heads=todo, seed=args.seed,
                                  chunk=args.chunk, log=log)
            d = r.to_dict(per_episode=False)
        if kept:  # the same episodes (same seed and settings): the earlier rows of the other heads stand
            for row in kept:
                row["reused"] = True
            rows = kept + (d["rows"] if d else [])
            order = {h[0]: i for i, h in enumerate(heads)}
            rows.sort(key=lambda r: (r["shots"], order[r["label"]]))
            d = {"settings": dict(old["settings"], heads=[{"label": h[0], "head": h[1], "params": h[2]}
                                                          for h in heads]),
                 "rows": rows, "leaders": {str(k): leaders([r for r in rows if r["shots"] == k]) for k in shots}}
            log(f"{key[1]}: {len(kept)} rows of {sorted({r['label'] for r in kept})} kept from {args.reuse}, "
                f"{len(todo)} head(s) run now")
        d.update(heads=[h[0] for h in heads], novel=list(novel), seconds=time.perf_counter() - t)
        return d

    store = FeatureStore(args.cache_dir)
    bb = create_backbone("lite0")
    log(f"torch threads {torch.get_num_threads()}, cache {store.root}")
    data = {}
    if not args.no_validation:
        for case in ("clipart", "mnist5k"):
            name = f"{case} base classes"
            if name in doc["validation"]:
                log(f"{name}: kept from the earlier run")
                continue
            data[case] = data.get(case) or case_data(case, store, bb)
            d = data[case]
            log(f"validation episodes: {name} {d['base']}")
            doc["validation"][name] = run(d["X"], d["y"], d["base"], VAL_HEADS, episodes=args.val_episodes,
                                          key=("validation", name))
            save()
        cells = [doc["validation"][f"{c} base classes"] for c in ("clipart", "mnist5k")]
        doc["choice"] = choose_default(cells, shots)
        log(f"default head: {doc['choice']['choice']} ({doc['choice']['rule']})")
        save()
    for case in cases:
        if case in doc["test"]:
            log(f"{case}: kept from the earlier run")
            continue
        d = data.get(case) or case_data(case, store, bb)
        log(f"test episodes: {case}, novel {d['novel']}")
        if d["base_features"] is not None:
            cell = run(d["X"], d["y"], d["novel"], TEST_HEADS, base_features=d["base_features"], key=("test", case))
            cell["settings"]["base"] = d["base"]
            cell.update(base=d["base"], base_items=int(len(d["base_features"])), base_data="mnist5k")
        else:
            cell = run(d["X"], d["y"], d["novel"], TEST_HEADS, base=d["base"], key=("test", case))
            cell.update(base=d["base"], base_items=cell["settings"]["base_items"])
        cell["extracted"] = d["extracted"]
        doc["test"][case] = cell
        save()
    save()
    print(render(doc))
    log(f"wrote {out} and {raw}")


if __name__ == "__main__":
    main()
