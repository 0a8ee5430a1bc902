"""Do the transferability scores rank backbones the way the real probe accuracy does?

For each dataset (stratified subsample of ``--max-per-class`` per class) and each backbone, ``rank_backbones``
computes every score on the labelled split only (``--labels-per-class`` per class) and, with ``verify``, the test
accuracy of the logistic probe trained on that split (test = everything else). Per dataset: Kendall's tau and
Pearson's r between each score and the accuracy across backbones, and the advisor's choice per backbone.
Fine-tuning accuracies are not part of this table yet (the strategy comparison is a separate benchmark).

    python benchmarks/bench_transferability.py --datasets clipart,digits,mnist-m,synth-digits \\
        --backbones lite0,lite1,lite2,lite0-random,lite2-random --labels-per-class 10 --max-per-class 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="clipart,digits,mnist-m,synth-digits")
    ap.add_argument("--backbones", default="lite0,lite1,lite2,lite0-random,lite2-random")
    ap.add_argument("--labels-per-class", type=int, default=10)
    ap.add_argument("--max-per-class", type=int, default=60, help="stratified subsample per class (extraction cost)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_transferability.md"))
    args = ap.parse_args()

    import numpy as np

    from transferkit.data import load_data
    from transferkit.transferability.rank import rank_backbones, rank_correlations
    from transferkit.transferability.scores import SCORES

    info, cmd = machine_info(), command_line()
    backbones = [b for b in args.backbones.split(",") if b]
    per_dataset, corr_rows, backbone_rows, timing = {}, [], [], {}
    for name in [d for d in args.datasets.split(",") if d]:
        src = load_data(name)
        y = src.encoded_labels()
        rng = np.random.default_rng(args.seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:args.max_per_class]
                                       for c in np.unique(y)]))
        sub = src.subset(keep)
        t = time.perf_counter()
        rows = rank_backbones(sub, backbones, labels_per_class=args.labels_per_class, cache_dir=args.cache_dir,
                              verify=True, seed=args.seed, log=log)
        timing[name] = time.perf_counter() - t
        per_dataset[name] = rows
        corr = rank_correlations(rows)
        for s, c in corr.items():
            corr_rows.append([name, SCORES[s].label, f"{c['kendall_tau']:+.2f}", f"{c['pearson_r']:+.2f}", c["n"]])
        for r in rows:
            if r.get("status") == "skipped":
                continue
            acc = r.get("accuracy")
            backbone_rows.append([name, r["backbone"], f"{100 * acc:.1f}" if acc is not None else "–",
                                f"{r['logme']:.4f}" if r.get("logme") is not None else "–",
                                f"{r['leep']:.3f}" if r.get("leep") is not None else "–",
                                f"{r['seconds'].get('logme', float('nan')):.3f}"])
        log(f"{name}: {len(rows)} backbones in {timing[name]:.0f}s; correlations {json.dumps(corr)}")
        save(args, info, cmd, corr_rows, backbone_rows, per_dataset, timing)
    save(args, info, cmd, corr_rows, backbone_rows, per_dataset, timing)


def save(args, info, cmd, corr_rows, backbone_rows, per_dataset, timing) -> None:
    text = (f"### bench_transferability\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n"
            f"Scores on the labelled split ({args.labels_per_class} labels per class) of a stratified subsample "
            f"({args.max_per_class} per class); accuracy = logistic probe trained on that split, tested on the rest "
            f"of the subsample. Correlation across backbones per dataset (scores that are constant across "
            f"backbones, such as the plain H-score when N <= D, are left out). Fine-tuning accuracies are not in "
            f"this table yet.\n\n"
            + md_table(["dataset", "score", "Kendall tau", "Pearson r", "backbones"], corr_rows)
            + "\n\nPer backbone:\n\n"
            + md_table(["dataset", "backbone", "probe test acc %", "LogME", "LEEP", "LogME s"], backbone_rows)
            + "\n\nWall time per dataset (extraction included when not cached): "
            + ", ".join(f"{k} {v:.0f}s" for k, v in timing.items()) + "\n")
    atomic_write_text(args.out, text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(
        {"command": cmd, "machine": info, "rows": per_dataset, "timing": timing}, indent=1, default=str))


if __name__ == "__main__":
    main()
