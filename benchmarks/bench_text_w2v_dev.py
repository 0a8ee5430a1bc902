"""Choosing the in-domain word2vec settings and head of bench_text.py on its dev split (never the test split).

For word-vector settings over protocol 1's (``W2V_V1``: 100-d, 15 epochs, window 10, stop words kept, SIF), trains
the vectors on the dev protocol's unlabelled texts (the pool minus the dev split, plus the synopses), and scores two
heads over 10 seeds at 5 / 10 / 50 / 200 labels per class on the dev split: ``auto`` (bench_text's logistic head,
standardised vectors, C chosen on the labelled draw's 20% validation part) and ``l2n-C1`` (logistic regression on
unit-norm vectors with C=1, trained on all the draw's labels; Tian et al. 2020). Prints the pretraining CPU seconds.

    python benchmarks/bench_text_w2v_dev.py epochs=30,window=5 --cache-dir /tmp/tk-cache
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_text as bt  # noqa: E402


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="?", default="", help="key=value,... over protocol 1's word-vector settings")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--work-dir", default="/tmp/tk-bench-text")
    args = ap.parse_args()
    from transferkit.heads import create_head

    extra = {k: _value(v) for k, _, v in (kv.partition("=") for kv in bt._csv(args.settings))}
    settings = {**bt.W2V_V1, **extra}
    b = bt.Bench(bt.load_rt(), True, args.cache_dir, Path(args.work_dir))
    t = time.process_time()
    bb = b.pretrained("word2vec", **settings)
    cpu = time.process_time() - t
    X = np.asarray(b.store.get(bb, b.source, batch_size=64, num_workers=0, device="cpu", progress=False).X,
                   dtype=np.float32)
    y, res = b.y, {}
    for budget in (5, 10, 50, 200):
        for seed in range(10):
            tr, va = bt.labelled_split(b.pool, y, budget, seed)
            both = np.concatenate([tr, va])
            h = create_head("logreg").fit(X[tr], y[tr], eval_set=(X[va], y[va]))
            res.setdefault(("auto", budget), []).append((h.classes_[h.predict_proba(X[b.test]).argmax(1)] == y[b.test]).mean())
            h = create_head("logreg-l2n").fit(X[both], y[both])
            res.setdefault(("l2n-C1", budget), []).append((h.classes_[h.predict_proba(X[b.test]).argmax(1)] == y[b.test]).mean())
    print(f"settings {extra or 'protocol 1'}: pretraining {cpu:.1f} CPU-s (first training; 0 when cached)")
    for head in ("auto", "l2n-C1"):
        print(head, " ".join(f"{bu}/class {100 * np.mean(res[(head, bu)]):.1f}" for bu in (5, 10, 50, 200)))


if __name__ == "__main__":
    main()
