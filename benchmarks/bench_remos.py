"""Safe transfer: does the student inherit its teacher's backdoor? Plain fine-tuning vs ReMoS vs from scratch.

Built offline:

1. **A backdoored teacher.** ``mnist5k`` is split per class into two disjoint halves (seeded by ``--teacher-seed``).
   On half A a ``lenet-fc`` (LeNet with two 100-unit fully connected layers) is trained from scratch
   (``strategy="scratch"``, the engine) on images of which ``--poison`` (10%) carry a white patch (15% of the side,
   bottom-right corner) and are relabelled to class ``--target`` (BadNets). Its clean test accuracy and attack success
   rate (ASR: triggered test images of other classes predicted as the target) are reported. (The plain 1600-feature
   ``lenet`` was tried first: a new linear head on its spatial conv features inherited nothing, ASR 1% after plain
   fine-tuning, so there was no defect to reduce.)
2. **A clean student task**: ``mnist-m`` (coloured photo backgrounds) images of half B (other digits than the
   teacher's), ``--labels-per-class`` labels per class (80% train, 20% validation), tested on at most ``--max-test``
   of the rest (stratified). The student never sees a trigger.
3. **Three transfers** with the same TrainConfig (``--epochs``, early stopping on validation, no augmentation):
   plain fine-tuning of the teacher, ReMoS (``safe="remos"``) and the same architecture from scratch. The defect
   inheritance rate is the student's ASR on triggered student test images of non-target classes.

ReMoS's prune ratio is chosen on the student's **clean validation split** only (what a defender has: no trigger,
no test set). ``--select 1se`` (the default): each seed runs every ratio of ``--prunes`` and takes the largest whose
validation accuracy is within one binomial standard error of the best candidate's, plain fine-tuning included
(:func:`transferkit.safe.choose_prune`, the one-standard-error rule of Breiman et al. 1984). ``--select slack``
(the first rule, kept to reproduce it): the largest ratio within ``--val-slack`` of plain fine-tuning's validation
accuracy on seed ``--select-seed``, then used for every seed. The other candidates' test numbers are shown for
reference, not as the result. One teacher serves all seeds (a teacher costs ~10 minutes on the shared CPU); the
seeds vary the student's labelled split, initialisation and data order; ``--teacher-seed`` trains another teacher
on another half of mnist5k (a replication on data nobody has looked at).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_remos.py --seeds 0,1,2 --work-dir /work/bench-cache-remos

The teacher is cached in ``<work-dir>/teacher-<backbone>-s<seed>`` (a saved backbone + its metrics); finished
student cells in ``<work-dir>/cells.jsonl``, so a rerun skips them.

References:
    Zhang et al., "ReMoS: Reducing Defect Inheritance in Transfer Learning via Relevant Model Slicing", ICSE 2022;
    Gu et al., "BadNets", 2017.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.data.builtin import load_builtin  # noqa: E402
from transferkit.data.sources import from_arrays  # noqa: E402
from transferkit.data.splits import Splits, make_splits, stratified_subset  # noqa: E402
from transferkit.safe.remos import choose_prune  # noqa: E402
from transferkit.safe.triggers import Patch, attack_success_rate, poison, predict  # noqa: E402
from transferkit.train.engine import TrainConfig, finetune  # noqa: E402

TRIGGER = Patch(size=0.15, colour=(255, 255, 255), position="br")


def _csv(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded half of the indices for the teacher (A) and the rest for the student (B)."""
    rng = np.random.default_rng(1000 + seed)
    a, b = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def config(args, seed: int, **kw) -> TrainConfig:
    base = dict(epochs=args.epochs, batch_size=args.batch_size, seed=seed, augment=False, hflip=0.0, num_workers=0,
                accelerator="cpu", patience=5)
    return TrainConfig(**{**base, **kw})


def evaluate(model, images: np.ndarray, y: np.ndarray, target: int) -> dict:
    clean = predict(model, list(images))
    trig = predict(model, list(TRIGGER.apply(images)))
    return {"accuracy": float(np.mean(clean == y)), "asr": attack_success_rate(trig, y, target)}


def teacher(args, seed: int, work: Path) -> tuple[Path, dict]:
    """Train (or read the cached) backdoored teacher of ``seed`` on mnist5k half A."""
    out = work / f"teacher-{args.backbone}-s{seed}"
    meta = out / "metrics.json"
    if meta.is_file():
        return out / "backbone", json.loads(meta.read_text())
    src = load_builtin("mnist5k")
    X, y = np.stack(src.items), src.encoded_labels()
    a, _ = halves(y, seed)
    Xa, ya = X[a], y[a]
    sp = make_splits(ya, val_fraction=0.1, test_fraction=0.1, seed=seed)
    Xp, yp, chosen = poison(Xa[sp.train], ya[sp.train], args.poison, args.target, TRIGGER, seed=seed)
    # the training items are the poisoned ones; validation (model choice) and test stay clean
    Xall = np.concatenate([Xp, Xa[sp.val], Xa[sp.test]])
    yall = np.concatenate([yp, ya[sp.val], ya[sp.test]])
    n_tr, n_va = len(sp.train), len(sp.val)
    splits = Splits(np.arange(n_tr), np.arange(n_tr, n_tr + n_va), np.arange(n_tr + n_va, len(yall)))
    t0 = time.perf_counter()
    r = finetune(from_arrays(Xall, name=f"mnist5k-poisoned-s{seed}"), yall, splits, args.backbone, "scratch",
                 config(args, seed, epochs=args.teacher_epochs), out / "run", classes=[str(c) for c in range(10)],
                 export=False)
    m = evaluate(r.model, Xa[sp.test], ya[sp.test], args.target)
    info = {"seed": seed, "train": n_tr, "poisoned": int(len(chosen)), "test": len(sp.test),
            "clean_accuracy": m["accuracy"], "asr": m["asr"], "val_accuracy": r.val_accuracy,
            "seconds": time.perf_counter() - t0}
    r.model.backbone.save(out / "backbone")
    atomic_write_text(meta, json.dumps(info, indent=1))
    log(f"teacher s{seed}: clean acc {100 * m['accuracy']:.1f}%, ASR {100 * m['asr']:.1f}% "
        f"({len(chosen)} of {n_tr} training images poisoned)")
    return out / "backbone", info


def student_cells(args, seed: int, teacher_dir: Path, work: Path, done: dict) -> list[dict]:
    src = load_builtin(args.student)
    X, y = np.stack(src.items), src.encoded_labels()
    # mnist-m and mnist5k hold the same MNIST digits (mnist-m paints them over photos): the teacher's half is left out
    b = halves(y, args.teacher_seed)[1] if args.student in ("mnist-m", "mnist5k") else np.arange(len(y))
    Xb, yb = X[b], y[b]
    sp = make_splits(yb, labels_per_class=args.labels_per_class, val_fraction=0.2, seed=seed)
    test = stratified_subset(sp.test, yb, args.max_test, seed)
    splits = Splits(sp.train, sp.val, test)
    source = from_arrays(Xb, name=f"{args.student}-student-s{seed}")
    classes = [str(c) for c in range(10)]
    teacher_bb = load_backbone(teacher_dir)
    prunes = args.prunes if getattr(args, "chosen", None) is None else [args.chosen]
    runs = getattr(args, "runs", None) or ([("finetune", None), ("scratch", None)] + [("remos", p) for p in prunes])
    cells = []
    for method, p in runs:
        key = f"{args.backbone}|{args.student}|s{seed}|{method}|{p}" + (f"|t{args.teacher_seed}" if args.teacher_seed
                                                                         else "")
        if key in done:
            cells.append(done[key])
            continue
        t0 = time.perf_counter()
        run_dir = work / "students" / f"{args.backbone}-{key.replace('|', '-')}"
        if run_dir.exists():  # a run killed before its cell was recorded: start it again
            shutil.rmtree(run_dir)
        kw = {"safe": "remos", "prune": p} if method == "remos" else {}
        r = finetune(source, yb, splits, args.backbone if method == "scratch" else teacher_bb,
                     "scratch" if method == "scratch" else "finetune", config(args, seed, **kw),
                     run_dir, classes=classes, export=False, progress=False)
        m = evaluate(r.model, Xb[test], yb[test], args.target)
        cell = {"key": key, "seed": seed, "method": method, "prune": p, "val_accuracy": r.val_accuracy,
                "accuracy": m["accuracy"], "asr": m["asr"], "epochs": r.epochs_run, "best_epoch": r.best_epoch,
                "seconds": time.perf_counter() - t0, "train": len(sp.train), "val": len(sp.val), "test": len(test)}
        with open(work / "cells.jsonl", "a") as f:
            f.write(json.dumps(cell) + "\n")
        log(f"s{seed} {method}{'' if p is None else f' prune={p}'}: val {100 * r.val_accuracy:.1f}%, "
            f"test acc {100 * m['accuracy']:.1f}%, ASR {100 * m['asr']:.1f}% ({cell['seconds']:.0f}s)")
        cells.append(cell)
    return cells


def select_prune(cells: list[dict], args) -> dict:
    """The ReMoS cell of one seed that the selection rule picks on clean validation accuracy (never the test set).

    ``1se``: :func:`transferkit.safe.choose_prune` over plain fine-tuning (ratio 0) and every ratio. ``slack``: the
    largest ratio within ``args.val_slack`` of fine-tuning's validation accuracy (the smallest when none is).
    """
    ft = next(c for c in cells if c["method"] == "finetune")
    remos = [c for c in cells if c["method"] == "remos"]
    if args.select == "1se":
        p = choose_prune({0.0: ft["val_accuracy"], **{c["prune"]: c["val_accuracy"] for c in remos}}, ft["val"])
        if p == 0.0:  # no ratio is within one standard error: the smallest (ReMoS was asked for)
            p = min(c["prune"] for c in remos)
        return next(c for c in remos if c["prune"] == p)
    ok = [c for c in remos if c["val_accuracy"] >= ft["val_accuracy"] - args.val_slack]
    if not ok:  # none keeps the accuracy: the smallest ratio
        ok = [min(remos, key=lambda c: c["prune"])]
    return max(ok, key=lambda c: c["prune"])


def chosen_row(args) -> str:
    return ("remos (prune chosen on each seed's val, 1-SE rule)" if args.select == "1se"
            else "remos (prune chosen on val)")


def summarise(per_seed: dict, teachers: dict, args) -> dict:
    row = chosen_row(args)
    rows = {"finetune": [], row: [], "scratch": []}
    fixed = None if args.select == "1se" else select_prune(per_seed[args.select_seed], args)["prune"]
    chosen = {}
    for seed, cells in per_seed.items():
        chosen[seed] = select_prune(cells, args)["prune"] if fixed is None else fixed
        rows["finetune"].append(next(c for c in cells if c["method"] == "finetune"))
        rows[row].append(next(c for c in cells if c["method"] == "remos" and c["prune"] == chosen[seed]))
        rows["scratch"].append(next(c for c in cells if c["method"] == "scratch"))
    for p in args.prunes:
        if args.select == "1se":
            rows[f"remos prune={p} (every seed; reference, not a selection)"] = [
                c for cells in per_seed.values() for c in cells if c["method"] == "remos" and c["prune"] == p]
        elif p != fixed:
            rows[f"remos prune={p} (seed {args.select_seed} only, not selected)"] = [
                c for c in per_seed[args.select_seed] if c["method"] == "remos" and c["prune"] == p]
    agg = {}
    for name, cs in rows.items():
        if not cs:
            continue
        acc, asr = np.array([c["accuracy"] for c in cs]), np.array([c["asr"] for c in cs])
        agg[name] = {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()), "asr_mean": float(asr.mean()),
                     "asr_std": float(asr.std()), "per_seed": [{"seed": c["seed"], "accuracy": c["accuracy"],
                                                                 "asr": c["asr"], "prune": c["prune"]} for c in cs],
                     "seconds_mean": float(np.mean([c["seconds"] for c in cs]))}
    ft, rm = agg["finetune"], agg[row]
    rel = 1 - rm["asr_mean"] / ft["asr_mean"] if ft["asr_mean"] > 0 else float("nan")
    drop = ft["accuracy_mean"] - rm["accuracy_mean"]
    paired = [1 - r["asr"] / f["asr"] if f["asr"] > 0 else float("nan")
              for f, r in zip(ft["per_seed"], rm["per_seed"])]
    target = {"asr_relative_reduction": rel, "asr_relative_reduction_per_seed": paired,
              "accuracy_drop_points": 100 * drop, "met": bool(rel >= 0.5 and 100 * drop <= 3)}
    val = {seed: {**{"finetune": next(c["val_accuracy"] for c in cells if c["method"] == "finetune")},
                  **{c["prune"]: c["val_accuracy"] for c in cells if c["method"] == "remos"}}
           for seed, cells in per_seed.items() if args.select == "1se" or seed == args.select_seed}
    return {"aggregates": agg, "target": target, "teachers": teachers, "chosen_prune": chosen,
            "selection_val_accuracy": val}


def rule_text(res: dict, args) -> str:
    """How the prune ratio was chosen, with the validation accuracies it saw."""
    def accs(v: dict) -> str:
        return ", ".join(f"{k}: {100 * a:.1f}%" for k, a in v.items())
    if args.select == "1se":
        per = "; ".join(f"seed {s}: {accs(v)} -> **{res['chosen_prune'][s]}**"
                        for s, v in res["selection_val_accuracy"].items())
        return ("ReMoS's prune ratio is chosen per seed on that seed's clean student validation split (no trigger, "
                f"no test): the largest of {args.prunes} whose validation accuracy is within one binomial standard "
                "error of the best candidate's, plain fine-tuning included (the one-standard-error rule, "
                f"`transferkit.safe.choose_prune`). Validation accuracies and choices: {per}.")
    (seed, v), = res["selection_val_accuracy"].items()
    return (f"ReMoS's prune ratio is chosen on seed {seed}'s clean student validation split (no trigger): the "
            f"largest of {args.prunes} whose validation accuracy is within {100 * args.val_slack:.0f} point(s) of "
            f"plain fine-tuning's ({accs(v)}) -> **{res['chosen_prune'][seed]}**, then used for every seed.")


def render(res: dict, info: dict, cmd: str, args) -> str:
    t = res["teachers"]
    trows = [[s, f"{100 * v['clean_accuracy']:.1f}", f"{100 * v['asr']:.1f}", f"{v['poisoned']}/{v['train']}"]
             for s, v in sorted(t.items())]
    rows = []
    for name, a in res["aggregates"].items():
        prunes = [p["prune"] for p in a["per_seed"] if p["prune"] is not None]
        prunes = prunes[:1] if len(set(prunes)) == 1 else prunes  # per seed when the seeds chose differently
        rows.append([name, f"{100 * a['accuracy_mean']:.1f} ± {100 * a['accuracy_std']:.1f}",
                     f"{100 * a['asr_mean']:.1f} ± {100 * a['asr_std']:.1f}",
                     ", ".join(f"{100 * p['asr']:.1f}" for p in a["per_seed"]),
                     ", ".join(map(str, prunes)) or "–", f"{a['seconds_mean']:.0f}"])
    tg = res["target"]
    return (f"### bench_remos\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n"
            f"Teacher: `{args.backbone}` trained from scratch on a seeded half of `mnist5k` with {100 * args.poison:.0f}% of its "
            f"training images carrying a white patch (15% of the side, bottom-right) relabelled to class "
            f"{args.target} (BadNets). Student: `mnist-m` images of the other half, {args.labels_per_class} labels "
            f"per class (80/20 train/val), test on at most {args.max_test} of the rest; TrainConfig defaults except "
            f"epochs {args.epochs} (teacher {args.teacher_epochs}), batch {args.batch_size}, no augmentation. "
            f"ASR = triggered test images of non-target classes predicted as the target. " + rule_text(res, args)
            + f" One backdoored teacher (seed {args.teacher_seed}); the seeds {args.seeds} vary the student's split, "
            "initialisation and data order."
            "\n\n"
            "Teachers (their own held-out mnist5k test):\n\n"
            + md_table(["seed", "clean acc %", "ASR %", "poisoned"], trows) + "\n\nStudents (mnist-m test):\n\n"
            + md_table(["transfer", "clean acc % (mean ± sd)", "defect inheritance: ASR % (mean ± sd)",
                        "ASR % per seed", "prune", "s/run"], rows)
            + f"\n\nTarget (ASR at least 50% lower, relative, than plain fine-tuning, for at most 3 points of clean "
              f"accuracy): ASR reduced by {100 * tg['asr_relative_reduction']:.1f}% (per seed: "
              f"{', '.join(f'{100 * v:.1f}%' for v in tg['asr_relative_reduction_per_seed'])}), clean accuracy "
              f"{-tg['accuracy_drop_points']:+.1f} points against plain fine-tuning -> "
              f"**{'met' if tg['met'] else 'not met'}**.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="student seeds: split, initialisation, data order")
    ap.add_argument("--teacher-seed", type=int, default=0, help="the one backdoored teacher all seeds transfer from")
    ap.add_argument("--prunes", default="0.1,0.2,0.3")
    ap.add_argument("--select", choices=("1se", "slack"), default="1se",
                    help="1se: per seed, the largest ratio within one standard error of the best validation accuracy; "
                         "slack: the largest within --val-slack of fine-tuning's on --select-seed, for every seed")
    ap.add_argument("--val-slack", type=float, default=0.01)
    ap.add_argument("--select-seed", type=int, default=0, help="--select slack: the seed whose validation split "
                    "chooses the prune ratio")
    ap.add_argument("--poison", type=float, default=0.1)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--backbone", default="lenet-fc", help="the teacher's architecture (trained from scratch)")
    ap.add_argument("--student", default="mnist-m", help="the student's clean digit domain: mnist-m, digits, "
                    "synth-digits or mnist5k (its half the teacher did not see)")
    ap.add_argument("--labels-per-class", type=int, default=100)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work-dir", default="/work/bench-cache-remos")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_remos.md"))
    args = ap.parse_args()
    args.seeds, args.prunes = _csv(args.seeds, int), _csv(args.prunes, float)
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    done = {}
    if (work / "cells.jsonl").is_file():
        for line in (work / "cells.jsonl").read_text().splitlines():
            c = json.loads(line)
            done[c["key"]] = c
    info, cmd = machine_info(), command_line()
    teachers, per_seed = {}, {}
    tdir, teachers[args.teacher_seed] = teacher(args, args.teacher_seed, work)
    args.chosen = None
    order = (args.seeds if args.select == "1se"
             else [args.select_seed] + [s for s in args.seeds if s != args.select_seed])
    for seed in order:
        per_seed[seed] = student_cells(args, seed, tdir, work, done)
        if args.select == "slack" and seed == args.select_seed:  # the ratio chosen on this seed serves all seeds
            args.chosen = select_prune(per_seed[seed], args)["prune"]
            log(f"prune ratio chosen on seed {seed}'s validation split: {args.chosen}")
        res = summarise(per_seed, teachers, args)
        out = Path(args.out)
        atomic_write_text(out.with_suffix(".json"), json.dumps({"command": cmd, "machine": info, "args": vars(args),
                                                                "results": res, "cells": per_seed}, indent=1))
        atomic_write_text(out, render(res, info, cmd, args))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
