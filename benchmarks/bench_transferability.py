"""How well does each transferability score rank backbones? Scores vs the test accuracy of a linear probe.

For each dataset, a stratified subsample (``--max-per-class``, default 60 per class: about 600 images per image
dataset; all texts) is split with ``make_splits(y, labels_per_class=N, seed=s)``. Every score of
``transferkit.transferability.SCORES`` is computed on the labelled part only (train + validation, N per class;
LEEP / NCE for the backbones with a source classifier), and a logistic head (``create_head("logreg")``, C chosen
on the validation part) is trained on the same budget and tested on the rest of the subsample. Per dataset and
seed, Kendall's tau and Pearson's r between each score and that test accuracy are taken across backbones
(``scipy.stats``), then averaged over the seeds. The strategy advisor's choice (``advise``) is shown beside each
(dataset, backbone), at the benchmark's budget and at the dataset's full size.

Features come from ``FeatureStore`` (``--cache-dir``, persistent): a rerun, or another benchmark on the same
items, reads them from the cache.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_transferability.py \\
        --cache-dir /tmp/tk-bench-cache

With ``--with-finetune`` every image backbone is also fine-tuned end to end (the engine's ``finetune`` strategy,
all layers) on the same labelled split and tested on the same test items, for ``--finetune-seeds`` (default seed 0
only: one engine cell per dataset x backbone costs 20-60 s on this CPU), at ``--finetune-image-size`` (64 px,
clipart 128 px), and the correlation tables are repeated against that fine-tuned accuracy. ``--finetune-from
JSON`` adds the fine-tuning to the records of an earlier run instead of recomputing the scores; finished cells are
kept in the JSON, so a killed run resumes. Whether the *advisor* picks the right strategy is measured by
``bench_finetune.py`` (the ``auto`` column of ``transferkit compare``), where every strategy runs on every split.

Writes ``benchmarks/results/bench_transferability.md`` and the raw records to ``.json`` beside it.
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

DATASETS = ["mnist5k", "digits", "mnist-m", "synth-digits", "clipart", "drug-reviews"]
BACKBONES = ["lite0", "lite1", "lite2", "lite0-random", "lite1-random", "lite2-random", "minilm", "glove-50d"]
SHORT = {"logme": "LogME", "h_score": "H", "h_score_shrinkage": "H-LW", "leep": "LEEP", "nce": "NCE",
         "knn": "kNN%", "probe": "probe%"}


def _csv(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def _subsample(y: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """At most ``per_class`` items of each class, seeded; sorted indices. (The same items as the first version of
    this script picked, so that features it extracted into the shared cache are reused.)"""
    if not per_class:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]))


# -- analysis --------------------------------------------------------------------------------------------------------
def correlations(records: list[dict], scores: list[str]) -> dict:
    """dataset -> score -> {kendall_tau, pearson_r (means over seeds), per_seed, top1 (share of seeds where the
    score's best backbone is the most accurate one), n (backbones)}."""
    from scipy.stats import kendalltau, pearsonr

    out: dict = {}
    for d in dict.fromkeys(r["dataset"] for r in records):
        out[d] = {}
        seeds = sorted({r["seed"] for r in records if r["dataset"] == d})
        for s in scores:
            taus, rs, top1, n = [], [], [], 0
            for seed in seeds:
                rows = [r for r in records
                        if r["dataset"] == d and r["seed"] == seed and r["scores"].get(s) is not None]
                if len(rows) < 3:
                    continue
                a = np.array([r["scores"][s] for r in rows], float)
                b = np.array([r["accuracy"] for r in rows], float)
                if np.ptp(a) <= 1e-9 * max(1.0, np.abs(a).max()) or np.ptp(b) == 0:
                    continue  # e.g. the plain H-score saturates at C - 1 when N <= D: nothing to rank
                taus.append(float(kendalltau(a, b)[0]))
                rs.append(float(pearsonr(a, b)[0]))
                top1.append(float(b[int(a.argmax())] == b.max()))
                n = len(rows)
            if taus:
                out[d][s] = {"kendall_tau": float(np.mean(taus)), "pearson_r": float(np.mean(rs)),
                             "top1": float(np.mean(top1)), "per_seed_tau": taus, "n": n}
    return out


def render(state: dict) -> str:
    from transferkit.transferability import SCORES

    cfg, records = state["config"], state["records"]
    scores = [s for s in SCORES if any(r["scores"].get(s) is not None for r in records)]
    corr = correlations(records, scores)
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    L = cfg["labels_per_class"]

    # 1. per (dataset, backbone): accuracy, scores (means over seeds), advice
    rows = []
    for d in datasets:
        for b in dict.fromkeys(r["backbone"] for r in records if r["dataset"] == d):
            rs = [r for r in records if (r["dataset"], r["backbone"]) == (d, b)]
            acc = np.array([r["accuracy"] for r in rs])
            cells = [d, b, f"{100 * acc.mean():.1f} ± {100 * acc.std():.1f}"]
            for s in scores:
                v = [r["scores"][s] for r in rs if r["scores"].get(s) is not None]
                cells.append("–" if not v else f"{100 * np.mean(v):.1f}" if SCORES[s].kind == "empirical"
                             else f"{np.mean(v):.3f}")
            adv = state["advice"].get(f"{d}|{b}")
            if adv:
                e = adv["evidence"]
                votes = "".join({"similar": "+", "dissimilar": "−", None: "·"}[e["votes"].get(k)]
                                if k in e["votes"] else "" for k in ("probe", "knn", "source"))
                src = f", src {100 * e['source_confidence']:.0f}%" if e["source_confidence"] is not None else ""
                full = adv["full"]
                cells += [f"**{adv['strategy']}**", f"{full['strategy']} ({full['labels_per_class']:g}/cl)",
                          f"{votes}: probe {e['probe_skill']:.2f}, kNN {e['knn_skill']:.2f}{src}"]
            else:
                cells += ["–", "–", "–"]
            rows.append(cells)
    main = md_table(["dataset", "backbone", "probe test acc % (mean ± std)", *[SHORT[s] for s in scores],
                     f"advice @ {L}/class", "advice @ full size", "advisor evidence (votes probe/kNN/source)"], rows)

    # 2. correlations: all backbones, then the pretrained ones only (no random-weight controls)
    vision = [d for d in datasets if any(r["modality"] == "image" for r in records if r["dataset"] == d)]

    def corr_table(corr: dict, recs: list[dict]) -> str:
        crow = []
        shown = [d for d in datasets if d in corr]
        vis = [d for d in vision if d in corr]
        for d in shown:
            n = max((c["n"] for c in corr[d].values()),
                    default=len({r["backbone"] for r in recs if r["dataset"] == d}))
            cells = [d, n]
            for s in scores:
                c = corr[d].get(s)
                cells.append("–" if c is None else
                             f"{c['kendall_tau']:+.2f} / {c['pearson_r']:+.2f} / {c['top1']:.0%}")
            crow.append(cells)
        if len(vis) > 1:
            cells = [f"**mean over {len(vis)} image datasets**", ""]
            for s in scores:
                cs = [corr[d][s] for d in vis if s in corr[d]]
                cells.append("–" if not cs else f"**{np.mean([c['kendall_tau'] for c in cs]):+.2f} / "
                             f"{np.mean([c['pearson_r'] for c in cs]):+.2f} / {np.mean([c['top1'] for c in cs]):.0%}**")
            crow.append(cells)
        return md_table(["dataset", "backbones", *[SHORT[s] for s in scores]], crow)

    pre = [r for r in records if not r["backbone"].endswith("-random")]
    corr_all = corr_table(corr, records)
    corr_pre = corr_table(correlations(pre, scores), pre)
    spans = []
    for d in vision:
        accs = [np.mean([r["accuracy"] for r in pre if (r["dataset"], r["backbone"]) == (d, b)])
                for b in dict.fromkeys(r["backbone"] for r in pre if r["dataset"] == d)]
        if len(accs) > 1:
            spans.append(f"{d} {100 * min(accs):.1f}–{100 * max(accs):.1f}%")
    spread = "; ".join(spans)

    # 2b. the same against the fine-tuned accuracy (where measured)
    ft_section = ""
    if state.get("finetune"):
        fcfg = state["finetune_config"]
        ft = {(f["dataset"], f["backbone"], f["seed"]): f for f in state["finetune"]}
        ft_recs = [{**r, "accuracy": ft[(r["dataset"], r["backbone"], r["seed"])]["accuracy"]} for r in records
                   if (r["dataset"], r["backbone"], r["seed"]) in ft]
        ft_vision = [d for d in vision if any(r["dataset"] == d for r in ft_recs)]
        frows = []
        for d in ft_vision:
            for b in dict.fromkeys(r["backbone"] for r in ft_recs if r["dataset"] == d):
                fs = [ft[(d, b, r["seed"])] for r in ft_recs if (r["dataset"], r["backbone"]) == (d, b)]
                ps = [r for r in records if (r["dataset"], r["backbone"]) == (d, b) and (d, b, r["seed"]) in ft]
                fa, pa = np.mean([f["accuracy"] for f in fs]), np.mean([r["accuracy"] for r in ps])
                frows.append([d, b, fs[0]["image_size"], f"{100 * pa:.1f}", f"{100 * fa:.1f}",
                              f"{100 * (fa - pa):+.1f}", f"{np.mean([f['seconds'] for f in fs]):.0f}"])
        ft_table = md_table(["dataset", "backbone", "fine-tune px", "probe test acc %", "fine-tuned test acc %",
                             "fine-tune − probe", "fine-tune s"], frows)
        ft_corr = corr_table(correlations(ft_recs, scores), ft_recs)
        ft_section = (
            f"**Against the fine-tuned accuracy.** Each backbone fine-tuned end to end (engine strategy `finetune`, "
            f"all layers, at most {fcfg['epochs']} epochs, early stopping on the validation part, images at "
            f"{fcfg['image_size']} px, per dataset {fcfg['image_size_per_dataset'] or 'no override'}) on the same "
            f"labelled split, tested on the same test items; seeds {fcfg['seeds']}; "
            f"{state.get('finetune_wall_seconds', 0) / 60:.1f} min of CPU wall time (command: "
            f"`{state.get('finetune_command', '?')}`; {state.get('finetune_date', '')}). The probe column is the "
            f"probe on features at the backbone's own 224 px; the fine-tuning ran at the smaller size above (CPU "
            f"time), so the difference mixes the strategy with the resolution:\n\n{ft_table}\n\n"
            f"Kendall's tau / Pearson's r / top-1 of each score (computed once, from the frozen features at the "
            f"backbone's own resolution) against the fine-tuned test accuracy:\n\n{ft_corr}\n\n")

    # 3. timings
    trow = []
    for s in scores:
        secs = [r["seconds"][s] for r in records if s in r["seconds"]]
        shapes = {(r["n_labelled"], r["dim"]) for r in records if s in r["seconds"]}
        trow.append([SCORES[s].label, len(secs), f"{np.median(secs) * 1000:.0f}", f"{np.max(secs) * 1000:.0f}",
                     ", ".join(f"{n}×{dd}" for n, dd in sorted(shapes))])
    accs = [r["acc_seconds"] for r in records]
    trow.append(["(logreg head, C on val: the verification)", len(accs), f"{np.median(accs) * 1000:.0f}",
                 f"{np.max(accs) * 1000:.0f}", ""])
    time_table = md_table(["score", "calls", "median ms", "max ms", "labelled samples × feature dim"], trow)

    ext_rows = [[e["dataset"], e["backbone"], e["n"], e["extracted"], f"{e['seconds']:.1f}",
                 f"{e['extracted'] / e['seconds']:.1f}" if e["extracted"] else "cache hit"]
                for e in state["extraction"]]
    ext_table = md_table(["dataset", "backbone", "items", "extracted now", "feature time (s)", "items/s"], ext_rows)
    sizes = "; ".join(f"{d}: {v['n']} of {v['n_full']} items, {v['classes']} classes, {v['n_labelled']} labelled / "
                      f"{v['n_test']} test" for d, v in state["datasets"].items())
    skipped = "".join(f"\n- skipped {k}: {v}" for k, v in state["skipped"].items())
    return (
        f"### bench_transferability\n\ncommand: `{state['command']}`\n\n{machine_line(state['machine'])}\n\n"
        f"Wall time {state.get('wall_seconds', 0) / 60:.1f} min (extraction included). Budget: {L} labels per class "
        f"(train + validation), seeds {cfg['seeds']}; the scores see only those labels, the logistic probe is "
        f"trained on them (C chosen on their validation part) and tested on every other item of the subsample. "
        f"Data: {sizes}.{skipped}\n\n"
        f"Scores and probe test accuracy (means over seeds; kNN% / probe% are the cross-validated references on the "
        f"labelled part, not test accuracies; higher is better everywhere; advice from seed 0's labelled part):\n\n"
        f"{main}\n\n"
        f"How well each score ranks the backbones of a dataset by probe test accuracy: Kendall's tau / Pearson's r "
        f"(per seed across backbones, then the mean over seeds) / share of seeds where the score's top backbone is the "
        f"most accurate one. – = fewer than 3 backbones with the score (text: 2 backbones only) or a constant score "
        f"(the plain H-score is C - 1 whenever N <= D).\n\nAll backbones (pretrained and random-weight controls):\n\n"
        f"{corr_all}\n\nPretrained backbones only (lite0/1/2: 3 per image dataset, so a seed's tau is ±1/3 or ±1 "
        f"unless accuracies tie; their mean probe accuracies span only {spread}, often within the seed-to-seed std, so "
        f"this finer ranking is mostly noise at this budget):\n\n{corr_pre}\n\n"
        f"{ft_section}"
        f"Score timings (one call on one seed's labelled features; single-threaded BLAS):\n\n{time_table}\n\n"
        f"Feature extraction (FeatureStore; `cache hit` = read from `--cache-dir`):\n\n{ext_table}\n\n"
        "Notes:\n\n"
        + ("- Ground truth of the first tables is the *linear-probe* test accuracy; the fine-tuned accuracy is "
           "above where measured (`--with-finetune`). " if state.get("finetune") else
           "- Ground truth here is the *linear-probe* test accuracy (rerun with `--with-finetune` or "
           "`--finetune-from` for the fine-tuned one). ")
        + "Whether the advisor's strategy wins is measured in bench_finetune (the `auto` column), where every "
        "strategy runs on the same splits.\n"
        f"- Advice: `advise()` on seed 0's labelled features with `n_labelled_per_class={L}` (always 'small' here); "
        "'full size' reuses the same evidence with the budget of the whole dataset (80% of the median class, as "
        "`fit` splits by default). Votes: + similar, − dissimilar, · no vote (source confidence between the "
        "thresholds); the random-weight controls have a random source classifier.\n"
        "- The random-weight controls (`*-random`) are the same architectures with seeded random weights: they "
        "make the ranking task non-trivial (a good score must put every pretrained backbone above every control) "
        "and are what most of tau reflects; the ranking among lite0/1/2 alone is a harder, finer test.\n")


# -- main ------------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--backbones", default=",".join(BACKBONES),
                    help="each is used on the datasets of its modality (image / text)")
    ap.add_argument("--labels-per-class", type=int, default=20, help="labelled budget (train + validation)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-per-class", type=int, default=60,
                    help="image datasets: items per class in the subsample (extraction runs ~10 images/s here)")
    ap.add_argument("--max-per-class-text", type=int, default=0, help="text datasets: the same (0: all)")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the package's)")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1 on a shared machine)")
    ap.add_argument("--with-finetune", action="store_true",
                    help="also fine-tune every image backbone end to end on the same splits (see above)")
    ap.add_argument("--finetune-from", metavar="JSON", default=None,
                    help="add the fine-tuning to the records of an earlier run (its raw JSON); implies --with-finetune")
    ap.add_argument("--finetune-seeds", default="0")
    ap.add_argument("--finetune-image-size", default="64,clipart=128",
                    help="side in px; 'N,dataset=M,...' overrides per dataset")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--finetune-dir", default="/tmp/tk-bench-transfer-ft")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_transferability.md"))
    ap.add_argument("--render-only", metavar="JSON", default=None,
                    help="only write the markdown (--out) from the raw JSON of an earlier run; nothing is recomputed")
    args = ap.parse_args()
    if args.render_only:
        state = json.loads(Path(args.render_only).read_text())
        atomic_write_text(args.out, render(state))
        print(render(state))
        return
    if args.finetune_from:
        state = json.loads(Path(args.finetune_from).read_text())
        state.setdefault("finetune", [])
        add_finetune(state, args, Path(args.out))
        return

    import torch
    from threadpoolctl import threadpool_limits

    from transferkit.backbones import backbone_entry, create_backbone
    from transferkit.data import load_data, make_splits
    from transferkit.errors import TransferkitError
    from transferkit.features import FeatureStore
    from transferkit.heads import create_head
    from transferkit.transferability import compute_scores, source_probabilities
    from transferkit.transferability.advisor import advise

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    t_start = time.perf_counter()
    datasets, backbones, seeds = _csv(args.datasets), _csv(args.backbones), _csv(args.seeds, int)
    modality = {b: backbone_entry(b).modality for b in backbones}  # unknown names fail here
    L = args.labels_per_class
    out = Path(args.out)
    raw_path = out.with_suffix(".json")
    state: dict = {"command": command_line(), "machine": machine_info(),
                   "config": {"datasets": datasets, "backbones": backbones, "labels_per_class": L, "seeds": seeds,
                              "max_per_class": args.max_per_class, "max_per_class_text": args.max_per_class_text,
                              "cache_dir": args.cache_dir, "threads": args.threads},
                   "datasets": {}, "records": [], "extraction": [], "advice": {}, "skipped": {}}

    def save() -> None:
        state["wall_seconds"] = time.perf_counter() - t_start
        atomic_write_text(raw_path, json.dumps(state, indent=1))
        if state["records"]:
            atomic_write_text(out, render(state))

    store = FeatureStore(args.cache_dir)
    log(f"torch threads {torch.get_num_threads()}, cache {store.root}")
    for dname in datasets:
        try:
            full = load_data(dname)
        except TransferkitError as e:
            state["skipped"][dname] = str(e)
            log(f"{dname}: skipped ({e})")
            continue
        classes = full.classes
        y_full = full.encoded_labels(classes)
        per_class = args.max_per_class if full.modality == "image" else args.max_per_class_text
        idx = _subsample(y_full, per_class)
        source = full.subset(idx)
        y = y_full[idx]
        smallest = int(np.bincount(y).min())
        if smallest <= L:
            state["skipped"][dname] = f"smallest class has {smallest} items in the subsample: too few for {L} labels"
            log(f"{dname}: skipped ({state['skipped'][dname]})")
            continue
        splits = {s: make_splits(y, labels_per_class=L, seed=s, classes=classes) for s in seeds}
        full_budget = float(round(0.8 * np.median(np.bincount(y_full))))
        state["datasets"][dname] = {"n": int(len(idx)), "n_full": int(len(full)), "classes": len(classes),
                                    "n_labelled": int(len(splits[seeds[0]].labelled)),
                                    "n_test": int(len(splits[seeds[0]].test)), "full_budget": full_budget}
        log(f"{dname}: {len(idx)} of {len(full)} items, {len(classes)} classes")
        for b in backbones:
            if modality[b] != full.modality:
                continue
            try:
                bb = create_backbone(b)
                feats = store.get(bb, source, batch_size=args.batch_size, num_workers=args.num_workers,
                                  device="cpu", progress=False)
            except TransferkitError as e:
                state["skipped"][f"{dname}/{b}"] = str(e)
                log(f"{dname} {b}: skipped ({e})")
                continue
            state["extraction"].append({"dataset": dname, "backbone": b, "n": len(source),
                                        "extracted": feats.extracted, "seconds": feats.seconds})
            log(f"{dname} {b}: features {feats.X.shape} in {feats.seconds:.1f}s (extracted {feats.extracted})")
            if len(feats.bad):
                raise SystemExit(f"{dname} {b}: {len(feats.bad)} unreadable items: {feats.bad[:3]}")
            X = np.asarray(feats.X, dtype=np.float32)
            for s in seeds:
                sp = splits[s]
                lab = sp.labelled
                probs = source_probabilities(bb, X[lab])
                sc = compute_scores(X[lab], y[lab], probs, seed=s)
                t = time.perf_counter()
                head = create_head("logreg")
                head.fit(X[sp.train], y[sp.train], eval_set=(X[sp.val], y[sp.val]) if len(sp.val) else None)
                acc = float(np.mean(head.predict(X[sp.test]) == y[sp.test]))
                acc_sec = time.perf_counter() - t
                state["records"].append({
                    "dataset": dname, "backbone": b, "modality": full.modality, "seed": s, "accuracy": acc,
                    "acc_seconds": acc_sec, "C": float(head.C_), "n_labelled": int(len(lab)), "dim": int(X.shape[1]),
                    "n_test": int(len(sp.test)), "scores": {k: float(v) for k, v in sc.items()},
                    "seconds": {k: float(v) for k, v in sc.seconds.items()}, "skipped_scores": sc.skipped})
                log(f"{dname} {b} seed {s}: acc {100 * acc:.1f}%, " + ", ".join(f"{k} {v:.3g}" for k, v in sc.items()))
                if s == seeds[0]:
                    adv = advise(X[lab], y[lab], source_probs=probs, n_labelled_per_class=L, seed=s)
                    full_adv = advise(X[lab], y[lab], source_probs=probs, n_labelled_per_class=full_budget, seed=s)
                    state["advice"][f"{dname}|{b}"] = {**adv.to_dict(), "full": {
                        "strategy": full_adv.strategy, "labels_per_class": full_budget}}
                    log(f"{dname} {b}: advice {adv.strategy} (full size: {full_adv.strategy}); "
                        + "; ".join(adv.reasons[1:-1]))
            del bb, feats, X
            save()
    save()
    if args.with_finetune:
        state["finetune"] = []
        add_finetune(state, args, out)
        return
    if state["records"]:
        print(render(state))
    log(f"wrote {out} and {raw_path} in {(time.perf_counter() - t_start) / 60:.1f} min")


def add_finetune(state: dict, args, out: Path) -> None:
    """Fine-tune every image (dataset, backbone) of ``state`` on the records' splits; save after each cell."""
    import torch

    from transferkit.data import load_data, make_splits
    from transferkit.train.engine import TrainConfig, finetune

    torch.set_num_threads(args.threads)
    raw_path = out.with_suffix(".json")
    cfg = state["config"]
    sizes = [x for x in args.finetune_image_size.split(",") if x.strip()]
    default_size = int(next(x for x in sizes if "=" not in x))
    per_data = {k: int(v) for k, v in (x.split("=") for x in sizes if "=" in x)}
    seeds = _csv(args.finetune_seeds, int)
    state["finetune_command"] = command_line()
    state["finetune_date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    state["finetune_config"] = {"seeds": seeds, "image_size": default_size, "image_size_per_dataset": per_data,
                                "epochs": args.finetune_epochs, "strategy": "finetune", "patience": 5}
    done = {(f["dataset"], f["backbone"], f["seed"]) for f in state["finetune"]}
    t0 = time.perf_counter()
    for dname in state["datasets"]:
        recs = [r for r in state["records"] if r["dataset"] == dname and r["modality"] == "image"]
        if not recs:
            continue
        full = load_data(dname)
        classes = full.classes
        y_full = full.encoded_labels(classes)
        idx = _subsample(y_full, cfg["max_per_class"])
        source, y = full.subset(idx), y_full[idx]
        size = per_data.get(dname, default_size)
        tc = TrainConfig(epochs=args.finetune_epochs, patience=5, batch_size=16, image_size=size, num_workers=0,
                         accelerator="cpu")
        for b in dict.fromkeys(r["backbone"] for r in recs):
            for s in seeds:
                if (dname, b, s) in done:
                    continue
                sp = make_splits(y, labels_per_class=cfg["labels_per_class"], seed=s, classes=classes)
                rec = next(r for r in recs if (r["backbone"], r["seed"]) == (b, s))
                assert rec["n_test"] == len(sp.test), "the split differs from the scores' split"
                t = time.perf_counter()
                r = finetune(source, y, sp, b, "finetune", TrainConfig(**{**tc.to_dict(), "seed": s}),
                             Path(args.finetune_dir) / f"{dname}-{b}-s{s}", resume=True, classes=classes,
                             export=False)
                acc = float(np.mean(np.asarray(r.y_pred) == y[r.test_index]))
                state["finetune"].append({"dataset": dname, "backbone": b, "seed": s, "accuracy": acc,
                                          "seconds": time.perf_counter() - t, "image_size": size,
                                          "best_epoch": r.best_epoch, "epochs_run": r.epochs_run})
                log(f"{dname} {b} seed {s}: fine-tuned acc {100 * acc:.1f}% (probe {100 * rec['accuracy']:.1f}%) "
                    f"in {time.perf_counter() - t:.0f}s")
                state["finetune_wall_seconds"] = state.get("finetune_wall_seconds", 0.0) + time.perf_counter() - t
                atomic_write_text(raw_path, json.dumps(state, indent=1))
                atomic_write_text(out, render(state))
    atomic_write_text(raw_path, json.dumps(state, indent=1))
    atomic_write_text(out, render(state))
    print(render(state))
    log(f"fine-tuning pass: {(time.perf_counter() - t0) / 60:.1f} min; wrote {out} and {raw_path}")


if __name__ == "__main__":
    main()
