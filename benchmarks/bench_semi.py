"""Semi-supervised transfer: a handful of labels per class plus the rest of the training split unlabelled.

For each dataset and seed, 30 % of every class is the test split (stratified, seeded); from the other 70 %, N items
per class are labelled and all the others form the unlabelled pool. On the same split:

- ``probe``: the package's logistic-regression head on the N labels alone (eval-view lite0 features);
- ``probe-auto``: the head ``fit`` picks by default at that budget (``head="auto"``: at 1-4 labels per class without
  a validation split the few-shot default, logistic regression on L2-normalised features with C=100), on the same
  labels;
- ``self-training`` and ``label spreading`` (scikit-learn) on the same features and pool;
- ``fixmatch``, ``flexmatch``, ``freematch``, ``softmatch`` at probe cost: the head trains on cached features of 8 weak
  and 8 strong augmented views of every image (``transferkit.semi``, SemiConfig defaults except ``--steps``);
  ``labelprop``: label propagation's pseudo-labels alone (Iscen et al. 2019), the same head;
- optionally (``--end-to-end``) one method end to end (the backbone trains on raw weak/strong views).

Nothing is chosen on the test split: the semi-supervised heads run a fixed number of steps and keep the EMA of the
last step (no validation split exists at 1-4 labels per class). The pool's labels are read only to report the
pseudo-labels' accuracy (share of the pool above the final thresholds, accuracy of those pseudo-labels), never by
training.

    python benchmarks/bench_semi.py --datasets clipart --budgets 1,2,4,10 --seeds 0,1,2,3,4,5,6,7,8,9

With ``--tta`` every probe and probe-cost head also gets a ``METHOD (tta)`` row from the same trained model: its test
probabilities averaged over the eval view and the cached weak views (``SemiConfig(tta=True)``; the reported figures
since the seventh round, beside the plain rows). With ``--ensemble K`` (K > 1) each semi-supervised method trains K
heads (``SemiConfig(ensemble=K)``, seeds ``seed + 1000 k``): the ``METHOD`` rows are member 0 (the single head, the
same as without the option) and the ``METHOD (ensemble K)`` rows the mean of the K members' probabilities (eighth
round). With ``--committee`` a ``committee`` row (and ``committee (tta)``) averages the probabilities of the
FixMatch, FlexMatch, FreeMatch and SoftMatch heads trained on the split (ninth round's exploration: a benchmark
measurement, not a library method; see bench_semi_notes.md).
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

SEMI = ("fixmatch", "flexmatch", "freematch", "softmatch", "labelprop")
METHODS = ("probe", "probe-auto", "self-training", "label-spreading", *SEMI)
#: the methods whose heads the ``committee`` rows average (--committee)
COMMITTEE = ("fixmatch", "flexmatch", "freematch", "softmatch")
#: image size per dataset (mnist5k's 28 px digits at 64 px, as in bench_probe_accuracy's small runs)
SIZES = {"clipart": None, "mnist5k": 64}


def _csv(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def split(y: np.ndarray, budget: int, seed: int) -> dict[str, np.ndarray]:
    """30 % of each class for test; ``budget`` labelled per class from the rest; the others unlabelled."""
    rng = np.random.default_rng(seed)
    test, lab, unl = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(0.3 * len(idx)))
        test.append(idx[:n_test])
        lab.append(idx[n_test:n_test + budget])
        unl.append(idx[n_test + budget:])
    return {k: np.sort(np.concatenate(v)) for k, v in (("test", test), ("lab", lab), ("unl", unl))}


#: the development seeds: settings are chosen on their unlabelled pools' accuracy (``--dev``), never on a reported
#: seed's test split
DEV_SEEDS = "100,101,102"


def render(records: list[dict], info: dict, cmd: str, dev: bool = False) -> str:
    cmds = cmd if isinstance(cmd, list) else [cmd]
    key = "pool_accuracy" if dev else "accuracy"
    if dev:
        return "\n".join(["### Semi-supervised transfer: development seeds (issue 11)", "",
                          "Commands, in order:", "", *[f"    {c}" for c in cmds], "", f"Machine: {machine_line(info)}",
                          "", "Accuracy on the **unlabelled pool** (%, its labels read by no training), mean ± std "
                          "over the development seeds; the rows are the configurations tried (see bench_semi_notes.md). "
                          "Columns as in the main table, all on the pool.", "",
                          *_tables(records, key)]) + "\n"
    lines = ["### Semi-supervised transfer (issue 11)", "",
             "Commands, in order (each ran side by side with other engineers' jobs on the same 2 cores, so seconds "
             "are inflated; the machine line gives the date and load of the last):", "",
             *[f"    {c}" for c in cmds], "", f"Machine: {machine_line(info)}", "",
             "Test accuracy (%), mean ± std over seeds; 30 % of each class is the test split, N labels per class, the "
             "rest of the train part unlabelled. Probe cost = the head trains on cached features of 8 weak + 8 "
             "strong views (lite0 frozen; 4 + 4 in the rows of the first four rounds and the `(4 draws)` rows), with `SemiConfig`'s defaults: a cosine head on centred, L2-normalised "
             "features started at the unit rows of a logistic regression on the labelled items' features "
             "(`init=\"logistic\"`, the default from the fourth round), the labelled term on every cached view, "
             "distribution alignment, and label propagation's pseudo-labels on the frozen features' kNN graph as a "
             "second unlabelled term (`graph_weight=1`, Iscen et al. 2019, the default from the fifth round; see the "
             "notes below); SoftMatch's alignment estimate starts at the first unlabelled batch's mean, as USB "
             "implements its uniform alignment (`align_start=None`: each method's own, the default from the sixth "
             "round); `(round 5 defaults)` rows: SoftMatch before that (its estimate started at the labelled class "
             "shares, as every other method's still does); `(no graph term)` rows: the fourth round's defaults, "
             "without it; `(class-mean start)` "
             "rows: the same head started at the labelled class means (`init=\"prototypes\"`, the default of rounds two and three); `(calibrated head, "
             "...)` rows: `SemiConfig(calibrate=\"head\")`, an option, not the default (the head's scale divided by a "
             "temperature fitted on the labelled items); `(tta)` rows: the same trained head (or probe) with its "
             "test probabilities averaged over the eval view and the 8 cached weak views of each test image "
             "(`SemiConfig(tta=True)`, seventh round; the saved run predicts from the eval view alone; their `seeds "
             "below probe` count the plain probe's seeds: against `probe (tta)` see bench_semi_notes.md); "
             "`(ensemble 3)` rows: "
             "the mean probability of three heads of the method trained with the seeds `seed + 1000 k` "
             "(`SemiConfig(ensemble=3)`, the default since the eighth round), whose member 0 is the plain row's head "
             "(one "
             "head, the defaults of the seventh round); `(lite0+mid)` rows: the same on the backbone `lite0+mid` "
             "(lite0's penultimate features with its sixth stage's pooled output appended, ninth round), their "
             "`wins` and `seeds below probe` against self-training, label spreading and the probe on that backbone. "
             "`wins` = "
             "seeds on which the row beats both self-training and label spreading. `pool used` / `pseudo acc` = share of the "
             "unlabelled pool above the final thresholds (SoftMatch: at full weight; every item trains with some weight) "
             "and the "
             "accuracy of those pseudo-labels (pool labels read for this report only). Seconds: head training only "
             "(view features cached), this shared 2-core machine.", "", *_tables(records, key)]
    e2e = [r for r in records if r["method"].endswith("end-to-end")]
    if e2e:
        lines += ["End to end (backbone trained on raw views):", "",
                  md_table(["dataset", "labels/class", "seed", "method", "accuracy %", "seconds"],
                           [[r["dataset"], r["budget"], r["seed"], r["method"], f"{100 * r['accuracy']:.1f}",
                             f"{r['seconds']:.0f}"] for r in e2e]), ""]
    return "\n".join(lines) + "\n"


def _tables(records: list[dict], key: str) -> list[str]:
    """The per-dataset tables of ``key`` (test or pool accuracy) and the mask-rate curves."""
    lines: list[str] = []
    records = [r for r in records if key in r]
    for ds in sorted({r["dataset"] for r in records}):
        rows = []
        budgets = sorted({r["budget"] for r in records if r["dataset"] == ds})
        for b in budgets:
            cell = [r for r in records if r["dataset"] == ds and r["budget"] == b]
            by = {}
            for r in cell:
                by.setdefault(r["method"], {})[r["seed"]] = r
            for m in [m for m in (*METHODS, *sorted({r["method"] for r in cell} - set(METHODS))) if m in by]:
                rs = list(by[m].values())
                acc = np.array([r[key] for r in rs]) * 100
                bbt = {f" ({r['backbone']})" for r in rs if r.get("backbone")}
                tag = bbt.pop() if len(bbt) == 1 else ""  # peers on the same backbone
                st, ls, pr = "self-training" + tag, "label-spreading" + tag, "probe" + tag
                wins = ""
                if m not in (st, ls) and st in by and ls in by:
                    seeds = [s for s in by[m] if s in by[st] and s in by[ls]]
                    w = sum(by[m][s][key] > max(by[st][s][key], by[ls][s][key]) for s in seeds)
                    wins = f"{w}/{len(seeds)}"
                below = ""
                if m not in (pr, "probe-auto" + tag) and pr in by:
                    seeds = [s for s in by[m] if s in by[pr]]
                    below = str(sum(by[m][s][key] < by[pr][s][key] for s in seeds))
                pool = [r["pool_used"] for r in rs if r.get("pool_used") is not None]
                pacc = [r["pseudo_acc"] for r in rs if r.get("pseudo_acc") is not None]
                rows.append([b, m, len(rs), f"{acc.mean():.1f} ± {acc.std():.1f}", wins, below,
                             f"{100 * np.mean(pool):.0f} %" if pool else "", f"{100 * np.mean(pacc):.1f}" if pacc else "",
                             f"{np.mean([r['seconds'] for r in rs]):.1f}"])
        lines += [f"**{ds}** (lite0 at {SIZES.get(ds) or 224} px)", "",
                  md_table(["labels/class", "method", "seeds", "accuracy %", "wins vs ST & LS", "seeds below probe",
                            "pool used", "pseudo acc %", "seconds"], rows), ""]
        curves = [r for r in records if r["dataset"] == ds and r.get("curve")]
        if curves:
            lines.append(f"Share of the unlabelled pool used per evaluation (mean over seeds, {ds}):")
            lines.append("")
            rows = []
            for b in budgets:
                for m in (*SEMI, *sorted({r["method"] for r in curves} - set(SEMI))):
                    cs = [r["curve"] for r in curves if r["budget"] == b and r["method"] == m]
                    if cs:
                        c = np.mean(np.array(cs), axis=0)
                        rows.append([b, m, " ".join(f"{100 * v:.0f}" for v in c)])
            lines += [md_table(["labels/class", "method", "mask rate % at each tenth of training"], rows), ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="clipart")
    ap.add_argument("--budgets", default="1,2,4,10")
    ap.add_argument("--seeds", default=None, help="default: 0-9 (with --dev: the development seeds 100-102)")
    ap.add_argument("--dev", action="store_true", help="development run: the tables show the unlabelled pool's "
                    "accuracy, written to results/bench_semi_dev.md (unless --out)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=1000, help="optimisation steps of the semi-supervised heads")
    ap.add_argument("--draws", type=int, default=None, help="cached draws of each view (default: SemiConfig's)")
    ap.add_argument("--hidden", default="", help="hidden layers of the semi-supervised head ('' = linear)")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--head", default="cosine", help="semi-supervised head: cosine (default) or linear (the first "
                                                     "version's: with --init random --labelled-views weak --no-align)")
    ap.add_argument("--init", default=None, help="how the cosine head starts (default: SemiConfig's)")
    ap.add_argument("--scale", type=float, default=None, help="the cosine head's logit scale (default: SemiConfig's)")
    ap.add_argument("--weight-decay", type=float, default=None, help="default: SemiConfig's")
    ap.add_argument("--lambda-u", type=float, default=None,
                    help="weight of the unlabelled term (default: the paper's 1; 0: the head on the labels alone)")
    ap.add_argument("--labelled-views", default="weak,strong,eval")
    ap.add_argument("--no-align", action="store_true", help="no distribution alignment")
    ap.add_argument("--align-start", default=None, help="where the alignment's estimate starts: target, batch, or "
                                                        "method: each method's own (default: SemiConfig's)")
    ap.add_argument("--align-momentum", default=None, help="the alignment's momentum, or 'run': scaled to the run "
                                                           "(default: SemiConfig's)")
    ap.add_argument("--calibrate", choices=("default", "none", "threshold", "head"), default="default",
                    help="temperature scaling of the weak logits before the thresholds or of the head's scale "
                         "(default: SemiConfig's)")
    ap.add_argument("--no-flex-warmup", action="store_true", help="FlexMatch without its threshold warm-up")
    ap.add_argument("--flex-warmup-end", type=float, default=None,
                    help="FlexMatch's threshold warm-up ends by schedule at this share of the run")
    ap.add_argument("--size-aware", action="store_true",
                    help="FlexMatch's / FreeMatch's class thresholds without the class sizes")
    ap.add_argument("--smoothing", type=float, default=None,
                    help="CoMatch's memory-smoothed pseudo-labels on the pool's kNN graph: alpha (default: SemiConfig's)")
    ap.add_argument("--sharpen", type=float, default=None,
                    help="soft pseudo-labels sharpened at this temperature (default: SemiConfig's, hard labels)")
    ap.add_argument("--teacher-decay", type=float, default=None,
                    help="pseudo-labels from an EMA teacher at this decay (default: SemiConfig's; 0: no teacher, "
                         "the network pseudo-labels its own weak views)")
    ap.add_argument("--graph-weight", type=float, default=None,
                    help="label propagation's term added to each method with this weight (default: SemiConfig's, 0)")
    ap.add_argument("--tta", action="store_true",
                    help="also record, from the same trained heads, the probe and each semi-supervised method with "
                         "test-time augmentation over the cached views (rows 'METHOD (tta)': the mean probabilities "
                         "of the eval view and the cached weak views, SemiConfig(tta=True)'s rule)")
    ap.add_argument("--ensemble", type=int, default=None,
                    help="heads per semi-supervised method (SemiConfig(ensemble=K); default: SemiConfig's). With K > "
                         "1 the rows 'METHOD' and 'METHOD (tta)' are member 0 (one head, the seed of the split) and "
                         "'METHOD (ensemble K)' the mean of the K members' probabilities, from the same trained heads")
    ap.add_argument("--backbone", default="lite0",
                    help="the frozen backbone (default lite0); any other's rows are named 'METHOD ... (BACKBONE)' and "
                         "compared with the probe and baselines on the same backbone")
    ap.add_argument("--committee", action="store_true",
                    help="also record 'committee' rows: the mean probability of the FixMatch, FlexMatch, FreeMatch and "
                         "SoftMatch heads trained on the split (each its ensemble), plain and with --tta")
    ap.add_argument("--suffix", default="", help="appended to the semi-supervised methods' names in the records")
    ap.add_argument("--tau", type=float, default=None, help="FixMatch/FlexMatch threshold (default: the paper's 0.95)")
    ap.add_argument("--end-to-end", default="", help="DATASET:BUDGET:SEED:METHOD:EPOCHS cells trained end to end")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache-semi")
    ap.add_argument("--merge", action="store_true", help="keep earlier records of other cells from the JSON file")
    ap.add_argument("--render", action="store_true", help="only rewrite the table from the JSON file")
    ap.add_argument("--out", default=None, help="default: results/bench_semi.md (--dev: bench_semi_dev.md)")
    args = ap.parse_args()
    if args.seeds is None:
        args.seeds = DEV_SEEDS if args.dev else "0,1,2,3,4,5,6,7,8,9"
    if args.out is None:
        args.out = str(RESULTS_DIR / ("bench_semi_dev.md" if args.dev else "bench_semi.md"))

    import torch

    from transferkit.backbones import create_backbone
    from transferkit.data import load_data
    from transferkit.data.splits import Splits
    from transferkit.features import FeatureStore
    from transferkit.fewshot.choice import auto_head_params, choose_head
    from transferkit.heads import create_head
    from transferkit.semi.baselines import label_spreading, self_training
    from transferkit.semi.fit import SemiConfig, head_proba, train_semi_head, view_averaged_proba, view_banks

    torch.set_num_threads(1)
    methods = _csv(args.methods)
    out = Path(args.out)
    raw = out.with_suffix(".json")
    info, cmd = machine_info(), command_line()
    records: list[dict] = []
    if args.render:
        old = json.loads(raw.read_text())
        atomic_write_text(out, render(old["records"], old["machine"], old["command"], args.dev))
        print(render(old["records"], old["machine"], old["command"], args.dev))
        return
    if args.merge and raw.is_file():
        old = json.loads(raw.read_text())
        records = old["records"]
        cmd = [*(old["command"] if isinstance(old["command"], list) else [old["command"]]), cmd]

    def save() -> None:
        atomic_write_text(raw, json.dumps({"command": cmd, "machine": info, "records": records}, indent=1))
        atomic_write_text(out, render(records, info, cmd, args.dev))

    bbtag = "" if args.backbone == "lite0" else f" ({args.backbone})"

    def put(rec: dict) -> None:
        if bbtag:
            rec.update(method=rec["method"] + bbtag, backbone=args.backbone)
        key = ("dataset", "budget", "seed", "method")
        records[:] = [r for r in records if tuple(r[k] for k in key) != tuple(rec[k] for k in key)]
        records.append(rec)
        save()

    store = FeatureStore(args.cache_dir)
    draws = args.draws if args.draws is not None else SemiConfig().draws
    ensemble = args.ensemble if args.ensemble is not None else SemiConfig().ensemble
    for ds in _csv(args.datasets):
        source = load_data(ds)
        y = source.encoded_labels(source.classes)
        C = len(source.classes)
        bb = create_backbone(args.backbone)
        if SIZES.get(ds):
            bb = bb.with_preprocessing(input_size=SIZES[ds])
        t = time.perf_counter()
        banks = view_banks(source, bb, store=store, draws=draws, seed=0, progress=True, num_workers=1)
        log(f"{ds}: view features ready ({time.perf_counter() - t:.0f} s)")
        X = banks["eval"]
        for b in _csv(args.budgets, int):
            for seed in _csv(args.seeds, int):
                sp = split(y, b, seed)
                base = {"dataset": ds, "budget": b, "seed": seed, "n_unlabelled": int(len(sp["unl"])),
                        "n_test": int(len(sp["test"]))}
                yt = y[sp["test"]]
                cut = lambda idx: {k: (v[:, idx] if v.ndim == 3 else v[idx]) for k, v in banks.items()}  # noqa: E731

                def put_tta(m: str, predict, seconds: float, tag: str = "") -> None:
                    """The same trained head's record with its probabilities averaged over the cached views."""
                    t = time.perf_counter()
                    pt = view_averaged_proba(predict, cut(sp["test"]))
                    pu = view_averaged_proba(predict, cut(sp["unl"]))
                    rec = dict(base, method=m + tag + " (tta)" + (args.suffix if m in (*SEMI, "committee") else ""),
                               accuracy=float((pt.argmax(1) == yt).mean()),
                               pool_accuracy=float((pu.argmax(1) == y[sp["unl"]]).mean()),
                               seconds=seconds + time.perf_counter() - t)
                    put(rec)
                    log(f"{ds} {b}/class seed {seed} {m}{tag} (tta): {100 * rec['accuracy']:.1f} % "
                        f"pool {100 * rec['pool_accuracy']:.1f} %")

                trained: dict[str, object] = {}  # semi-supervised method -> its head, for --committee
                for m in methods:
                    t = time.perf_counter()
                    rec = dict(base, method=m + (args.suffix if m in SEMI else ""))
                    if m in ("probe", "probe-auto"):
                        name = choose_head(y[sp["lab"]], False)[0] if m == "probe-auto" else "logreg"
                        hp = auto_head_params(name) if m == "probe-auto" else {}
                        rec["head"], rec["head_params"] = name, hp
                        head = create_head(name, **hp).fit(X[sp["lab"]], y[sp["lab"]])
                        pred = head.predict(X[sp["test"]])
                        rec["pool_accuracy"] = float((head.predict(X[sp["unl"]]) == y[sp["unl"]]).mean())
                        if args.tta:
                            put_tta(m, head.predict_proba, time.perf_counter() - t)
                    elif m in ("self-training", "label-spreading"):
                        fn = self_training if m == "self-training" else label_spreading
                        model = fn(X[sp["lab"]], y[sp["lab"]], X[sp["unl"]])
                        pred = model.predict(X[sp["test"]])
                        rec["pool_accuracy"] = float((model.predict(X[sp["unl"]]) == y[sp["unl"]]).mean())
                    else:
                        cfg = SemiConfig(steps=args.steps, eval_every=max(1, args.steps // 10), draws=draws,
                                         seed=seed, hidden=tuple(_csv(args.hidden, int)), lr=args.lr,
                                         ensemble=ensemble,
                                         head=args.head,
                                         labelled_views=tuple(_csv(args.labelled_views)), align=not args.no_align,
                                         **({} if args.calibrate == "default" else {"calibrate": args.calibrate}),
                                         **{k: v for k, v in (("scale", args.scale),
                                                              ("weight_decay", args.weight_decay),
                                                              ("init", args.init),
                                                              ("smoothing", args.smoothing),
                                                              ("sharpen", args.sharpen),
                                                              ("graph_weight", args.graph_weight))
                                            if v is not None},
                                         **({} if args.align_start is None else
                                            {"align_start": None if args.align_start == "method"
                                             else args.align_start}),
                                         **({} if args.align_momentum is None else
                                            {"align_momentum": None if args.align_momentum == "run"
                                             else float(args.align_momentum)}),
                                         **({} if args.teacher_decay is None
                                            else {"teacher_decay": args.teacher_decay or None}))
                        kw = {"tau": args.tau} if args.tau is not None and m in ("fixmatch", "flexmatch") else {}
                        if args.lambda_u is not None:
                            kw["lambda_u"] = args.lambda_u
                        if m == "flexmatch" and args.no_flex_warmup:
                            kw["warmup"] = False
                        if m in ("flexmatch", "freematch") and args.size_aware:
                            kw["size_aware"] = True
                        if m == "flexmatch" and args.flex_warmup_end is not None:
                            kw["warmup_end"] = args.flex_warmup_end
                        whole = train_semi_head(cut(sp["lab"]), y[sp["lab"]], cut(sp["unl"]), m, n_classes=C,
                                                config=cfg, **kw)
                        fit = whole.members[0] if whole.members else whole  # the plain rows: member 0, one head
                        trained[m] = whole
                        rec["calibrate"] = cfg.calibrate
                        with torch.no_grad():
                            pt = torch.softmax(fit.head(torch.as_tensor(X[sp["test"]])), 1).numpy()
                            temp = float(fit.history[-1].get("temperature", 1.0))  # the thresholds read these
                            pu = torch.softmax(fit.head(torch.as_tensor(X[sp["unl"]])) / temp, 1).numpy()
                        pred = pt.argmax(1)
                        thr = np.asarray(fit.history[-1]["thresholds"])
                        sel = pu.max(1) >= thr[pu.argmax(1)]
                        rec.update(pool_accuracy=float((pu.argmax(1) == y[sp["unl"]]).mean()),
                                   pool_used=float(sel.mean()),
                                   pseudo_acc=float((pu.argmax(1)[sel] == y[sp["unl"]][sel]).mean()) if sel.any()
                                   else None,
                                   curve=[float(h.get("metric_mask_rate", 0.0)) for h in fit.history],
                                   temperature=temp, head_scale=fit.head.config().get("scale"))
                        if args.tta:
                            put_tta(m, head_proba(fit.head), fit.seconds)
                        if whole.members:  # the ensemble's rows, from the same trained members
                            tag = f" (ensemble {len(whole.members)})"
                            with torch.no_grad():
                                pe = torch.softmax(whole.head(torch.as_tensor(X[sp["test"]])).double(), 1).numpy()
                                pue = torch.softmax(whole.head(torch.as_tensor(X[sp["unl"]])).double(), 1).numpy()
                            put(dict(base, method=m + tag + args.suffix, calibrate=cfg.calibrate,
                                     accuracy=float((pe.argmax(1) == yt).mean()),
                                     pool_accuracy=float((pue.argmax(1) == y[sp["unl"]]).mean()),
                                     seconds=whole.seconds))
                            log(f"{ds} {b}/class seed {seed} {m}{tag}: {100 * records[-1]['accuracy']:.1f} % "
                                f"({whole.seconds:.1f} s)")
                            if args.tta:
                                put_tta(m, head_proba(whole.head), whole.seconds, tag)
                        t = time.perf_counter() - fit.seconds  # the plain row's seconds: member 0's
                    rec.update(accuracy=float((np.asarray(pred) == yt).mean()), seconds=time.perf_counter() - t)
                    put(rec)
                    log(f"{ds} {b}/class seed {seed} {m}: {100 * rec['accuracy']:.1f} % ({rec['seconds']:.1f} s)"
                        + (f" pool {100 * rec['pool_accuracy']:.1f} %" if "pool_accuracy" in rec else ""))
                if args.committee and all(m in trained for m in COMMITTEE):
                    preds = [head_proba(trained[m].head) for m in COMMITTEE]
                    mean = lambda x: np.mean([p(x) for p in preds], axis=0)  # noqa: E731
                    secs = float(sum(trained[m].seconds for m in COMMITTEE))
                    pt, pu = mean(X[sp["test"]]), mean(X[sp["unl"]])
                    put(dict(base, method="committee" + args.suffix, accuracy=float((pt.argmax(1) == yt).mean()),
                             pool_accuracy=float((pu.argmax(1) == y[sp["unl"]]).mean()), seconds=secs))
                    log(f"{ds} {b}/class seed {seed} committee: {100 * records[-1]['accuracy']:.1f} %")
                    if args.tta:
                        put_tta("committee", mean, secs)
    for cellspec in _csv(args.end_to_end):
        ds, b, seed, m, epochs = cellspec.split(":")
        b, seed, epochs = int(b), int(seed), int(epochs)
        from transferkit.semi.run import semi_finetune
        from transferkit.train.engine import TrainConfig

        source = load_data(ds)
        y = source.encoded_labels(source.classes)
        bb = create_backbone("lite0")
        if SIZES.get(ds):
            bb = bb.with_preprocessing(input_size=SIZES[ds])
        sp = split(y, b, seed)
        splits = Splits(train=sp["lab"], val=np.zeros(0, np.int64), test=sp["test"], unlabelled=sp["unl"])
        t = time.perf_counter()
        ft = semi_finetune(source, y, splits, bb, m, strategy="finetune", classes=list(source.classes),
                           train_config=TrainConfig(epochs=epochs, batch_size=8, num_workers=1), progress=True,
                           log=log, export=False)
        rec = {"dataset": ds, "budget": b, "seed": seed, "method": f"{m} end-to-end", "epochs": epochs,
               "accuracy": float((np.asarray(ft.y_pred) == y[sp["test"]]).mean()), "seconds": time.perf_counter() - t,
               "history": ft.history}
        put(rec)
        log(f"{ds} {b}/class seed {seed} {m} end to end: {100 * rec['accuracy']:.1f} % ({rec['seconds']:.0f} s)")
    save()
    print(render(records, info, cmd, args.dev))


if __name__ == "__main__":
    main()
