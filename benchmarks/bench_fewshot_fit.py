"""``fit`` with 1-6 labels per class: the logistic probe (C=1 without a validation split; C chosen on validation from
5 labels per class on, when the split holds one) against a few-shot head, on cached lite0 features: what sets
``FEWSHOT_MAX_LABELS`` (transferkit.fewshot.choice), the label budget up to which ``fit`` takes the few-shot head.

    OMP_NUM_THREADS=1 python benchmarks/bench_fewshot_fit.py mnist5k /tmp/fit_n.json 2,3,4,5,6

Arguments: datasets (comma-separated), the JSON file to write, labels per class (comma-separated); ``--heads``
(default logreg,ncm-cl2n) and ``--seeds`` (default 3) after them. Prints one line per dataset, budget and head: mean ±
sd of the test accuracy over seeds, and the split sizes. The feature cache is ``--cache-dir`` (default
/work/bench-cache).
"""

import argparse
import json
import tempfile

import numpy as np

from transferkit.pipeline import fit_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets")
    ap.add_argument("out")
    ap.add_argument("budgets")
    ap.add_argument("--heads", default="logreg,ncm-cl2n")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache-dir", default="/work/bench-cache")
    args = ap.parse_args()
    out = {}
    for data in args.datasets.split(","):
        for n in [int(v) for v in args.budgets.split(",")]:
            for head in args.heads.split(","):
                accs = []
                for seed in range(args.seeds):
                    with tempfile.TemporaryDirectory() as d:
                        r = fit_run(data, backbone="lite0", head=head, labels_per_class=n, seed=seed, out=d + "/r",
                                    cache_dir=args.cache_dir, baseline=False, report=False, progress=False,
                                    device="cpu")
                    accs.append(r.metrics["accuracy"])
                out[f"{data} n={n} {head}"] = accs
                print(data, n, head, f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs, ddof=1):.1f}", r.splits,
                      flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
