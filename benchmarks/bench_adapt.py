"""Domain adaptation on the digit domains: every method vs source-only, ours beside skada's, two protocols.

Protocols:

- ``features``: cached ``lite0`` ImageNet features (frozen), a bottleneck + head trained with each method's loss
  (``DomainAdapter(backbone="lite0")``), plus the closed-form and instance-based methods; beside them the same
  methods from **skada** with its defaults, on the very same standardised features and splits: its shallow ones
  (CORAL, subspace alignment, TCA, KMM, discriminator re-weighting) and its deep ones (``skada.deep``, on skorch:
  source-only, Deep CORAL, DAN, DANN, CDAN, MDD) with our network shape and the same number of batches.
- ``lenet``: the small CNN trained end to end from scratch on 32x32 inputs, the published digit protocol.

Pairs (source -> target) default to MNIST -> digits, digits -> MNIST, MNIST -> MNIST-M-like, synthetic -> MNIST.
Each domain is subsampled to ``--per-class`` items per class (seeded, the same for every seed and method, so the
feature cache serves them all). Per seed the target is split 70/30: the methods see the 70% without labels; the
30% evaluation labels score the chosen checkpoint (chosen by DEV, never by target labels). Mean ± std over seeds,
CPU wall time per fit (feature extraction excluded; it is reported once).

    OMP_NUM_THREADS=1 python benchmarks/bench_adapt.py --work-dir /tmp/tk-bench-adapt

Resumable: our cells live in ``<work-dir>/<protocol>/<pair>/cells.jsonl``; skada's in ``<work-dir>/skada.jsonl``.
Writes ``benchmarks/results/bench_adapt.md`` and ``.json`` after every pair.
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

PAIRS = "mnist5k:digits,digits:mnist5k,mnist5k:mnist-m,synth-digits:mnist5k"
FEATURE_METHODS = "source-only,ddc,dan,jan,coral,swd,dann,confusion,cdan,cdan+e,mdd,mcd,adda,source-only-linear,coral-closed,sa,tca,iw,kmm"
LENET_METHODS = "source-only,ddc,dan,jan,coral,swd,dann,confusion,cdan,cdan+e,mdd,mcd,adda"
#: our name -> (skada class, what it is)
SKADA = {"coral-closed": "CORAL", "sa": "SubspaceAlignment", "tca": "TransferComponentAnalysis", "kmm": "KMMReweight",
         "iw": "DiscriminatorReweight"}


#: our deep method -> skada.deep's (run with skorch on the same standardised features, the same network shape)
SKADA_DEEP = {"source-only": "SourceOnly", "coral": "DeepCoral", "dan": "DAN", "dann": "DANN", "cdan": "CDAN",
              "mdd": "MDD"}


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _subsample(src, per_class: int):
    y = np.asarray(src.labels)
    rng = np.random.default_rng(0)
    idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]))
    return src.subset(idx)


def run_skada(name: str, Xs, ys, Xt_adapt, Xt_eval, yt_eval, seed: int) -> dict:
    import skada

    cls = getattr(skada, SKADA[name])
    kw = {"random_state": seed} if "random_state" in cls().get_params() else {}
    X = np.concatenate([Xs, Xt_adapt])
    y = np.r_[ys, -np.ones(len(Xt_adapt), dtype=ys.dtype)]
    sd = np.r_[np.ones(len(Xs), int), -np.ones(len(Xt_adapt), int)]
    t, c = time.perf_counter(), time.process_time()
    est = cls(**kw).fit(X, y, sample_domain=sd)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    pred = est.predict(Xt_eval, sample_domain=-np.ones(len(Xt_eval), int))
    return {"accuracy": float(np.mean(pred == yt_eval)), "seconds": secs, "cpu_seconds": cpu}


def run_skada_deep(name: str, Zs, ys, Zt_adapt, Zt_eval, yt_eval, seed: int, steps: int, batch: int,
                   bottleneck: int) -> dict:
    """skada.deep's ``name`` with its defaults, on our network shape (bottleneck Linear-BN-ReLU-Dropout, linear
    head; the alignment acts on the bottleneck), trained for about ``steps`` batches of ``batch`` per domain (the
    budget of ours), no validation split (skada trains to the last epoch)."""
    import skada.deep as skd
    import torch
    import torch.nn as nn

    k = int(ys.max()) + 1

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bottleneck = nn.Sequential(nn.Linear(Zs.shape[1], bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(),
                                            nn.Dropout(0.5))
            self.head = nn.Linear(bottleneck, k)

        def forward(self, X, sample_weight=None):
            return self.head(self.bottleneck(X))

    extra = {"DANN": {"num_features": bottleneck}, "CDAN": {"num_features": bottleneck, "n_classes": k},
             "MDD": {"num_features": bottleneck, "n_classes": k}}.get(SKADA_DEEP[name], {})
    torch.manual_seed(seed)
    epochs = max(1, round(steps * batch / max(len(Zs), len(Zt_adapt))))  # batches per epoch ~ the larger domain
    net = getattr(skd, SKADA_DEEP[name])(Net(), layer_name="bottleneck", batch_size=batch, max_epochs=epochs,
                                         train_split=None, verbose=0, **extra)
    X = np.concatenate([Zs, Zt_adapt]).astype(np.float32)
    y = np.r_[ys, -np.ones(len(Zt_adapt), dtype=ys.dtype)]
    sd = np.r_[np.ones(len(Zs), int), -np.ones(len(Zt_adapt), int)]
    t, c = time.perf_counter(), time.process_time()
    net.fit(X, y, sd)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    pred = net.predict(Zt_eval.astype(np.float32), -np.ones(len(Zt_eval), int))
    return {"accuracy": float(np.mean(pred == yt_eval)), "seconds": secs, "cpu_seconds": cpu, "epochs": epochs}


def render(state: dict) -> str:
    parts = [f"### bench_adapt\n\ncommand: `{state['command']}`\n\n{machine_line(state['machine'])}\n\n"
             f"Each domain subsampled to {state['config']['per_class']} items per class (seeded); per seed the target "
             "is split 70/30, methods adapt on the 70% without labels, the 30% labels score the checkpoint chosen by "
             f"DEV (source validation + unlabelled target; never target labels). Steps: features "
             f"{state['config']['steps']}, lenet {state['config']['lenet_steps']}; every other setting is the "
             "`AdaptConfig` default (no tuning). Accuracy % mean ± std over seeds (n); s = CPU wall time per fit. "
             "⚠ = below its baseline (negative transfer): source-only for the deep methods, source-only-linear (the "
             "shallow methods' logistic regression without adaptation) for the shallow ones.\n"]
    for proto in ("features", "lenet"):
        res = state["results"].get(proto)
        if not res:
            continue
        pairs = list(res)
        methods = list(dict.fromkeys(r["method"] for p in pairs for r in res[p]["rows"]))
        rows = []
        for m in methods:
            cells = [m]
            for p in pairs:
                r = next((r for r in res[p]["rows"] if r["method"] == m), None)
                cells.append("–" if r is None or r["accuracy_mean"] is None else
                             f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}"
                             f"{' ⚠' if r.get('negative') else ''} (n={r['n']}, {r['seconds_mean']:.1f}s)")
            rows.append(cells)
            for key, table, label in (("", SKADA, "(defaults)"), ("deep:", SKADA_DEEP, "(skada.deep, defaults)")):
                if proto != "features" or m not in table:
                    continue
                sk = [f"skada {table[m]} {label}"]
                for p in pairs:
                    v = [c for c in state["skada"] if c["pair"] == p and c["method"] == key + m and "error" not in c]
                    errs = [c["error"] for c in state["skada"] if c["pair"] == p and c["method"] == key + m
                            and "error" in c]
                    sk.append(f"error: {errs[0][:80]}" if errs and not v else "–" if not v else
                              f"{100 * np.mean([c['accuracy'] for c in v]):.1f} ± "
                              f"{100 * np.std([c['accuracy'] for c in v]):.1f} (n={len(v)}, "
                              f"{np.mean([c['seconds'] for c in v]):.1f}s)")
                rows.append(sk)
        title = ("cached lite0 features (1280-d, frozen)" if proto == "features"
                 else "LeNet end to end from scratch (32x32)")
        feat = "; ".join(f"{p}: {res[p]['feature_seconds']:.0f}s" for p in pairs)
        parts.append(f"#### {title}\n\n{md_table(['method', *[p.replace(':', ' → ') for p in pairs]], rows)}\n\n"
                     f"Inputs (extraction or cache read, once per pair): {feat}.\n")
        if proto == "features" and state["skada"]:
            cmp_rows = []
            refs = [(key, table, m) for key, table in (("", SKADA), ("deep:", SKADA_DEEP)) for m in table]
            for key, table, m in refs:
                for p in pairs:
                    ours = [c for c in res[p]["cells"] if c["method"] == m and "accuracy" in c]
                    sk = [c for c in state["skada"] if c["pair"] == p and c["method"] == key + m and "error" not in c]
                    if ours and sk:
                        da = 100 * (np.mean([c["accuracy"] for c in ours]) - np.mean([c["accuracy"] for c in sk]))
                        tr = np.mean([c["seconds"] for c in sk]) / max(np.mean([c["seconds"] for c in ours]), 1e-9)
                        cmp_rows.append([m, table[m], p.replace(":", " → "), f"{da:+.1f}", f"{tr:.2f}x",
                                         "yes" if da >= -1.0 else "**no**", "yes" if tr >= 0.9 else "**no**"])
            parts.append("Ours vs skada on the same features and splits (accuracy difference in points; speed-up = "
                         "skada's time / ours. Accuracy matches = within 1 point or better; time matches = at most 10% "
                         "slower):\n\n"
                         + md_table(["ours", "skada", "pair", "Δ acc (ours − skada)", "speed-up", "accuracy matches",
                                     "time matches"], cmp_rows) + "\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=PAIRS)
    ap.add_argument("--protocols", default="features,lenet")
    ap.add_argument("--methods", default=FEATURE_METHODS)
    ap.add_argument("--lenet-methods", default=LENET_METHODS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lenet-steps", type=int, default=1000)
    ap.add_argument("--no-skada", action="store_true")
    ap.add_argument("--no-skada-deep", action="store_true", help="skip skada.deep (needs skorch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work-dir", default="/tmp/tk-bench-adapt")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_adapt.md"))
    args = ap.parse_args()

    import torch

    from transferkit.adapt import AdaptConfig, DomainAdapter, adapt_compare
    from transferkit.adapt.experiment import split_target
    from transferkit.data import load_data

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in _csv(args.seeds)]
    out = Path(args.out)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sk_path = work / "skada.jsonl"
    state = {"command": command_line(), "machine": machine_info(), "results": {}, "skada": [],
             "config": {"per_class": args.per_class, "steps": args.steps, "lenet_steps": args.lenet_steps,
                        "seeds": seeds}}
    if sk_path.is_file():
        state["skada"] = [json.loads(line) for line in sk_path.read_text().splitlines() if line.strip()]

    def save() -> None:
        atomic_write_text(out.with_suffix(".json"), json.dumps(state, indent=1, default=str))
        atomic_write_text(out, render(state))

    for proto in _csv(args.protocols):
        for pair in _csv(args.pairs):
            s_name, t_name = pair.split(":")
            src, tgt = _subsample(load_data(s_name), args.per_class), _subsample(load_data(t_name), args.per_class)
            lenet = proto == "lenet"
            cfg = AdaptConfig(steps=args.lenet_steps if lenet else args.steps,
                              eval_every=max((args.lenet_steps if lenet else args.steps) // 5, 1))
            log(f"{proto} {pair}: {len(src)} -> {len(tgt)} items")
            r = adapt_compare(src, tgt, methods=_csv(args.lenet_methods if lenet else args.methods),
                              backbone="lenet" if lenet else "lite0", seeds=seeds, config=cfg,
                              cache_dir=args.cache_dir, out=work / proto / pair.replace(":", "-to-"), log=log,
                              diagnostics=False)
            state["results"].setdefault(proto, {})[pair] = {
                "rows": r.rows, "warnings": r.warnings, "feature_seconds": r.settings["feature_seconds"],
                "cells": [{k: v for k, v in c.items() if k not in ("history", "per_class", "selected_by")}
                          for c in r.cells]}
            save()
            if proto == "features" and not args.no_skada:
                prep = DomainAdapter("lite0", cache_dir=args.cache_dir)
                Xs = prep.prepare_inputs(src, "source")
                Xt = prep.prepare_inputs(tgt, "target")
                from transferkit.adapt.adapter import input_scaling
                classes = src.classes
                ys = np.array([classes.index(v) for v in src.labels])
                yt = np.array([classes.index(v) for v in tgt.labels])
                for seed in seeds:
                    a_idx, e_idx = split_target(np.asarray(tgt.labels), len(tgt), 0.3, seed)
                    mu, sd = input_scaling(Xs, Xt[a_idx])  # the standardisation DomainAdapter applies
                    Zs, Zt = (Xs - mu) / sd, (Xt - mu) / sd
                    jobs = [(m, m) for m in SKADA] + ([] if args.no_skada_deep else [("deep:" + m, m) for m in SKADA_DEEP])
                    for key, m in jobs:
                        if any(c["pair"] == pair and c["method"] == key and c["seed"] == seed for c in state["skada"]):
                            continue
                        try:
                            if key.startswith("deep:"):
                                c = run_skada_deep(m, Zs, ys, Zt[a_idx], Zt[e_idx], yt[e_idx], seed, cfg.steps,
                                                   cfg.batch_size, cfg.bottleneck)
                            else:
                                c = run_skada(m, Zs, ys, Zt[a_idx], Zt[e_idx], yt[e_idx], seed)
                        except Exception as e:  # noqa: BLE001 - a failing reference method is recorded, not fatal
                            c = {"accuracy": float("nan"), "seconds": float("nan"), "error": f"{type(e).__name__}: {e}"}
                        c.update(pair=pair, method=key, seed=seed)
                        state["skada"].append(c)
                        with open(sk_path, "a") as fh:
                            fh.write(json.dumps(c) + "\n")
                        log(f"skada {key} {pair} seed {seed}: acc {100 * c['accuracy']:.1f}% in {c['seconds']:.1f}s")
                save()
    print(render(state))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
