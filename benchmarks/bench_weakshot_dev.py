"""Choosing SimTrans's similarity blend and weight settings on DEVELOPMENT seeds (100-102 by default), never on the
seeds bench_weakshot.py reports (0-4). The noise is injected, so the dev splits' clean flags and test labels may be
read here; nothing of a reported seed is.

Two stages, each journaled so a rerun only does what is missing:

- ``weights``: per (dataset, seed) the base classifier and the similarity net (as bench_weakshot trains them) and
  the cosine prior; per noise cell the weights AUC (how often a clean noisy-set item outweighs a noisy one) of the
  similarity blends ``net share`` 0 / 0.25 / 0.5 / 0.75 / 1, ``mean`` and ``contrast`` weights, 0 / 1 / 3 weighted
  re-estimates of each class; and the novel-pair ROC-AUC of each blend on the clean novel test items.
- ``accuracy``: novel test accuracy of candidate settings (``name:method:blend:iterations:drop[:alpha]``) on the
  same splits, with the models of the ``weights`` stage.

``--render`` writes ``benchmarks/results/bench_weakshot_dev.md`` from the journals.

    OMP_NUM_THREADS=1 python benchmarks/bench_weakshot_dev.py weights --datasets clipart --seeds 100,101,102
    OMP_NUM_THREADS=1 python benchmarks/bench_weakshot_dev.py accuracy --datasets clipart --seeds 100,101,102 \\
        --candidates 'plain:plain;w25d:simtrans-weights:0.25:0:0.2'
    python benchmarks/bench_weakshot_dev.py render
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, log, md_table  # noqa: E402
from bench_weakshot import DATASETS  # noqa: E402

BLENDS = (0.0, 0.25, 0.5, 0.75, 1.0)
CELLS = [(k, r) for k in ("flip", "outlier", "mixed") for r in (0.3, 0.5)]


def _split(ds: str, kind: str, rate: float, seed: int, cfg, store):
    from transferkit.weakshot import prepare_weakshot

    spec = DATASETS[ds]
    return prepare_weakshot(ds, "lite0", base=spec["base"], novel=spec["novel"], noise=rate, noise_kind=kind,
                            outliers=spec["outliers"], seed=seed, config=cfg, store=store, num_workers=1)


def _models(ds: str, seed: int, wd, cfg, work: Path):
    """The base classifier, the similarity net and the cosine prior of (dataset, seed), cached in ``work``."""
    from transferkit.weakshot import train_base
    from transferkit.weakshot.similarity import CosinePrior, fit_similarity

    path = work / f"models_{ds}_{seed}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())[(ds, seed)]
    sp = wd.split
    base = train_base(wd, cfg, seed)
    net = fit_similarity(wd.X, sp, replace(cfg, sim_blend=1.0), seed, init=base).net
    prior = CosinePrior.fit(wd.X[sp.base_train], sp.base_y_train, seed=seed)
    path.write_bytes(pickle.dumps({(ds, seed): (base, net, prior)}))
    return base, net, prior


def stage_weights(args, cfg, store, work: Path) -> None:
    import torch
    from sklearn.metrics import roc_auc_score

    from transferkit.weakshot import NovelSet, weight_auc
    from transferkit.weakshot.density import Density
    from transferkit.weakshot.similarity import PrecomputedSimilarity, same_class_probabilities
    from transferkit.weakshot.simtrans import similarity_weights

    for ds in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            out = work / f"devA_{ds}_{seed}.json"
            if out.is_file():
                continue
            recs = []
            for kind, rate in CELLS:
                wd = _split(ds, kind, rate, seed, cfg, store)
                sp = wd.split
                base, net, prior = _models(ds, seed, wd, cfg, work)
                Zn = wd.X[sp.novel_train]
                Pn = same_class_probabilities(net, Zn).astype(np.float64)
                Pc = prior.matrix(torch.as_tensor(Zn)).numpy().astype(np.float64)
                Xt, yt = wd.X[sp.novel_test], sp.novel_y_test
                iu = np.triu_indices(len(yt), 1)
                same = (yt[:, None] == yt[None, :])[iu]
                Tn = same_class_probabilities(net, Xt)[iu]
                Tc = prior.matrix(torch.as_tensor(Xt)).numpy()[iu]
                rec = {"dataset": ds, "seed": seed, "kind": kind, "rate": rate,
                       "pair_auc": {str(b): float(roc_auc_score(same, b * Tn + (1 - b) * Tc)) for b in BLENDS},
                       "density": weight_auc(Density().weights(NovelSet(Zn, sp.novel_noisy)), sp.clean), "auc": {}}
                ids = np.arange(len(Zn), dtype=np.float32)[:, None]
                for b in BLENDS:
                    nov = NovelSet(ids, sp.novel_noisy, PrecomputedSimilarity(b * Pn + (1 - b) * Pc))
                    for wt in ("mean", "contrast"):
                        for it in (0, 1, 3):
                            rec["auc"][f"{b}/{wt}/{it}"] = weight_auc(similarity_weights(nov, wt, it), sp.clean)
                recs.append(rec)
                log(f"{ds} {seed} {kind} {rate}: pair AUC {rec['pair_auc']}")
            atomic_write_text(out, json.dumps(recs, indent=1))


def _candidates(spec: str, cfg) -> list[dict]:
    """``name:method:blend:iterations:drop[:alpha][:key=value...]`` (keys: ``rule`` the drop rule, ``eye``,
    ``alpha``, ``mu``, ``schedule`` the graph schedule, ``on`` what the graph term pulls together, ``gate`` the level of
    the open-set gate)."""
    out = []
    for s in spec.split(";"):
        p = s.split(":")
        extra = dict(x.split("=", 1) for x in p[5:] if "=" in x)
        pos = [x for x in p[5:] if "=" not in x]
        c = {"name": p[0], "method": p[1], "blend": float(p[2]) if len(p) > 2 else 1.0,
             "iters": int(p[3]) if len(p) > 3 else 0, "drop": float(p[4]) if len(p) > 4 else 0.0,
             "alpha": float(extra.get("alpha", pos[0] if pos else cfg.alpha))}
        for key, cast in (("rule", str), ("eye", float), ("mu", float), ("schedule", str), ("on", str),
                          ("gate", float)):
            if key in extra:
                c[key] = cast(extra[key])
        out.append(c)
    return out


def stage_accuracy(args, cfg, store, work: Path) -> None:
    import torch

    from transferkit.weakshot import train_novel
    from transferkit.weakshot.similarity import BlendedSimilarity

    journal = work / "devB.jsonl"
    done = set()
    if journal.is_file():
        for line in journal.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["seed"], r["kind"], r["rate"], r["name"]))
    cells = CELLS if args.cells == "all" else [(c.split("/")[0], float(c.split("/")[1])) for c in args.cells.split(",")]
    for ds in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            for kind, rate in cells:
                wd = None
                for c in _candidates(args.candidates, cfg):
                    if (ds, seed, kind, rate, c["name"]) in done:
                        continue
                    wd = wd or _split(ds, kind, rate, seed, cfg, store)
                    base, net, prior = _models(ds, seed, wd, cfg, work)
                    sim = net if c["blend"] >= 1 else BlendedSimilarity(net, prior, c["blend"]).eval()
                    t = time.time()
                    torch.manual_seed(0)
                    more = {f: c[k] for k, f in (("rule", "sim_drop_rule"), ("eye", "eye"), ("mu", "mu"),
                                                 ("schedule", "graph_schedule"), ("on", "graph_on"),
                                                 ("gate", "sim_gate")) if k in c}
                    r = train_novel(wd, c["method"], base, sim, replace(
                        cfg, sim_iterations=c["iters"], sim_drop=c["drop"], alpha=c["alpha"], **more), seed)
                    rec = {"dataset": ds, "seed": seed, "kind": kind, "rate": rate, **c, "acc": r.accuracy,
                           "auc": r.weights_auc, "seconds": time.time() - t, "gate": r.gate}
                    with journal.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    log(f"{ds} {seed} {kind} {rate} {c['name']}: {100 * r.accuracy:.1f}%")


def stage_scale(args, cfg, store, work: Path) -> None:
    """The graph term's scale against the weighted cross-entropy's: on random batches of the noisy novel items, each
    term's value and the norm of its gradient with respect to the novel classifier's parameters, at the start (the
    base classifier's hidden layer, a fresh output layer) and after training with the weights alone; for our setting
    (L2-normalised features, ``alpha``) and the reference code's (raw features, alpha 0.1)."""
    import torch

    from transferkit.weakshot import NovelSet, train_novel
    from transferkit.weakshot.methods import create_method
    from transferkit.weakshot.objectives import WeightedCrossEntropy, graph_term, relax
    from transferkit.weakshot.similarity import BlendedSimilarity, same_class_probabilities
    from transferkit.heads.modules import HeadModule

    out = work / "scale.jsonl"
    done = set()
    if out.is_file():
        done = {(r["dataset"], r["seed"], r["kind"], r["rate"]) for r in map(json.loads, out.read_text().splitlines())}
    cells = CELLS if args.cells == "all" else [(c.split("/")[0], float(c.split("/")[1])) for c in args.cells.split(",")]
    for ds in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            for kind, rate in cells:
                if (ds, seed, kind, rate) in done:
                    continue
                wd = _split(ds, kind, rate, seed, cfg, store)
                sp = wd.split
                base, net, prior = _models(ds, seed, wd, cfg, work)
                sim = BlendedSimilarity(net, prior, cfg.sim_blend).eval()
                X = np.asarray(wd.X[sp.novel_train], np.float32)
                w = create_method("simtrans-weights", cfg).weights(NovelSet(X, sp.novel_noisy, sim, Z=X))
                torch.manual_seed(0)
                trained = train_novel(wd, "simtrans-weights", base, sim, cfg, seed).model
                start = HeadModule(X.shape[1], len(sp.novel_classes), (cfg.hidden,), cfg.dropout)
                start.load_state_dict(trained.state_dict())
                with torch.no_grad():
                    torch.nn.init.normal_(start.layers[-1].weight, std=0.01)
                    start.layers[0].weight.copy_(base.layers[0].weight)
                    start.layers[0].bias.copy_(base.layers[0].bias)
                ce = WeightedCrossEntropy(w)
                ours = graph_term(sim, X, cfg, 2)
                ref = graph_term(sim, X, replace(cfg, alpha=0.1, graph_normalize=False), 2)
                ours.start_epoch = ref.start_epoch = 0
                rng = np.random.default_rng(seed)
                rec = {"dataset": ds, "seed": seed, "kind": kind, "rate": rate, "alpha": cfg.alpha}
                P = torch.as_tensor(same_class_probabilities(sim, X))
                t = np.asarray(sp.novel_true)
                same = (t[:, None] == t[None, :]) & (t[:, None] >= 0) & ~np.eye(len(t), dtype=bool)
                for mu in (cfg.mu, 0.0):  # how far the relaxed similarities tell same-class pairs from the rest
                    A = relax(P, mu).numpy()
                    diff = t[:, None] != t[None, :]
                    rec[f"A_mu{mu:g}"] = {"same": float(A[same].mean()), "different": float(A[diff].mean())}
                for label, model in (("start", start), ("trained", trained)):
                    model.eval()
                    vals: dict[str, list] = defaultdict(list)
                    for _ in range(20):
                        idx = torch.as_tensor(rng.choice(len(X), min(cfg.batch_size, len(X)), replace=False))
                        logits, feats = model(torch.as_tensor(X[idx.numpy()]), return_features=True)

                        class _Step:  # the loop's Step for one labelled batch
                            batches = {"labelled": type("B", (), {"index": idx,
                                                                  "y": torch.as_tensor(sp.novel_noisy[idx.numpy()])})()}
                            epoch = 0

                            @staticmethod
                            def outputs(stream, view="train"):
                                return [type("O", (), {"logits": logits, "features": feats})()]

                            @staticmethod
                            def y(stream):
                                return _Step.batches["labelled"].y

                            @staticmethod
                            def weight(stream):
                                return 1.0

                        for name, term in (("ce", ce), ("graph", ours), ("graph_ref", ref)):
                            v = next(iter(term(_Step).values()))
                            g = torch.autograd.grad(v, [p for p in model.parameters() if p.requires_grad],
                                                    retain_graph=True, allow_unused=True)
                            vals[name].append(float(v.detach()))
                            norm = torch.sqrt(sum((x * x).sum() for x in g if x is not None))
                            vals[name + "_grad"].append(float(norm))
                    rec[label] = {k: float(np.mean(v)) for k, v in vals.items()}
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                log(f"{ds} {seed} {kind} {rate}: {rec}")


def render(work: Path, out: Path, describe: dict[str, str]) -> str:
    """The dev tables: weights and pair AUC per blend (stage 1), accuracy gains over plain (stage 2)."""
    recs = [r for f in sorted(work.glob("devA_*.json")) for r in json.loads(f.read_text())]
    parts = ["### bench_weakshot_dev: choosing SimTrans's settings on development seeds\n",
             "Development seeds only (never the reported 0-4); the noise is injected, so the dev splits' clean flags "
             f"and test labels are read here. Journals in `{work}`; `python benchmarks/bench_weakshot_dev.py "
             "weights|accuracy|render` (see its docstring).\n"]
    if recs:
        seeds = sorted({(r["dataset"], r["seed"]) for r in recs})
        rows = []
        for b in BLENDS:
            row = [f"{b:g}"]
            for ds in ("clipart", "mnist5k"):
                rr = [r for r in recs if r["dataset"] == ds]
                if not rr:
                    row += ["–"] * 3
                    continue
                row += [f"{np.mean([r['pair_auc'][str(b)] for r in rr]):.3f}",
                        f"{np.mean([r['auc'][f'{b}/contrast/0'] for r in rr]):.3f}",
                        f"{np.mean([r['auc'][f'{b}/contrast/3'] for r in rr]):.3f}"]
            rows.append(row)
        parts.append(f"Stage 1, {len(recs)} cells ({', '.join(f'{d} {s}' for d, s in seeds)}): the novel-pair "
                     "ROC-AUC of the similarity (`net share` 1 = the net alone, 0 = the calibrated cosine alone) on "
                     "the clean novel test items, and the weights AUC of the contrast weights with 0 and 3 weighted "
                     "re-estimates of each class (mean over the six noise cells).\n\n" + md_table(
                         ["net share", "clipart pair AUC", "clipart weights AUC", "… 3 re-estimates",
                          "mnist5k pair AUC", "mnist5k weights AUC", "… 3 re-estimates"], rows) + "\n")
        parts.append("Density weights AUC (no transfer): " + ", ".join(
            f"{ds} {np.mean([r['density'] for r in recs if r['dataset'] == ds]):.3f}"
            for ds in ("clipart", "mnist5k") if any(r["dataset"] == ds for r in recs)) + ".\n")
    jb = work / "devB.jsonl"
    if jb.is_file():
        by = defaultdict(dict)
        for line in jb.read_text().splitlines():
            r = json.loads(line)
            by[(r["dataset"], r["seed"], r["kind"], r["rate"])][r["name"]] = r["acc"]
        rows = []
        names = [n for n in describe if n != "plain"]
        for ds in ("clipart", "mnist5k"):
            for n in names:
                per = defaultdict(list)
                for k, v in by.items():
                    if k[0] == ds and n in v and "plain" in v:
                        per[f"{k[2]} {int(100 * k[3])}%"].append(v[n] - v["plain"])
                if not per:
                    continue
                allv = [x for v in per.values() for x in v]
                rows.append([ds, n, describe[n], str(len(allv)), f"{100 * np.mean(allv):+.1f}",
                             "; ".join(f"{c} {100 * np.mean(x):+.1f}" for c, x in sorted(per.items()))])
        parts.append("\nStage 2: novel test accuracy minus plain training's on the same dev split (points; mean over "
                     "the cells run, then per noise cell).\n\n" + md_table(
                         ["data", "candidate", "settings", "cells", "mean vs plain", "per noise cell"], rows) + "\n")
    js = work / "scale.jsonl"
    if js.is_file():
        rows = []
        for r in map(json.loads, js.read_text().splitlines()):
            a, b = r["start"], r["trained"]
            row = [r["dataset"], str(r["seed"]), f"{r['kind']} {int(100 * r['rate'])}%"]
            for t in ("ce", "graph", "graph_ref"):
                row.append(f"{a[t]:.3g} / {a[t + '_grad']:.3g} → {b[t]:.3g} / {b[t + '_grad']:.3g}")
            row += [" / ".join(f"{r[k]['same']:.2f} vs {r[k]['different']:.2f}" for k in ("A_mu-4", "A_mu0"))
                    if "A_mu-4" in r else "–"]
            rows.append(row)
        parts.append("\nThe graph term's scale (`scale` stage, measured in s5 with s5's settings): on 20 random batches of 64 noisy novel items, each term's "
                     "value / the norm of its gradient with respect to the novel classifier's parameters, at the start "
                     "(the base classifier's hidden layer, a fresh output layer) → after 40 epochs with the weights alone "
                     "(`simtrans-weights`). `graph` is ours (L2-normalised hidden features, alpha 1), `graph (ref)` the "
                     "reference code's (raw features, alpha 0.1). A: the mean relaxed similarity of same-class pairs vs "
                     "pairs of different true classes (mu -4, the reference code's, / mu 0, no relaxation).\n\n"
                     + md_table(["data", "seed", "noise", "weighted CE", "graph (ours)", "graph (ref)",
                                 "A same vs different (mu -4 / mu 0)"], rows) + "\n")
    parts.append(CHOICES)
    text = "\n".join(parts)
    atomic_write_text(out, text)
    return text


#: how the tables above chose the defaults (written after reading them)
CHOICES = """
What was chosen, and by which rule (on these dev tables alone):

- the net's share of the similarity, **0.25**: the highest novel-pair ROC-AUC averaged over the two datasets
  (0.743; the cosine alone 0.737, the net alone 0.670). The similarity net learned on 5-6 base classes transfers
  worse than the frozen features' cosine; the blend keeps a quarter of it, where mnist5k's pair AUC peaks.
- weighted re-estimates of each class (``sim_iterations``): a lower contrast-weights AUC at every share on both datasets,
  so **0** (not kept as a default; the option stays).
- dropping each class's lowest-weighted items (s4, seeds 100-102): **20 %**, the candidate with the largest gain
  over plain training averaged over the two datasets (20 %: +3.0 clipart, +8.1 mnist5k; 10 %: +2.8, +4.4). It lost
  on clipart's outlier cells (-1.0, -2.0), and on the reported seeds SimTrans then fell below plain on clipart
  outlier 50 % (-0.6) and mnist5k outlier 30 % (-0.2).
- **s5: which items to drop**, chosen for the unmet target "at or above plain on every split". The rule, fixed
  before the new runs: the candidate whose *worst* noise cell (mean gain over plain per cell, over both datasets)
  is highest, provided its mean gain is at least +1.5 points on each dataset; the s4 default kept unless a candidate
  beats its worst cell by more than a point. Clipart got seeds 103-105 as well (its cells differ by 2 points
  between runs of 3 seeds); mnist5k seed 100 only (a cell costs 30-60 s there). Candidates (36 clipart cells,
  6 mnist5k cells; mean gain, worst cell):
  - lowest 20 % (s4): clipart +2.7, worst -1.9 (outlier 50 %; outlier 30 % -1.7); mnist5k +6.8, worst -0.3.
  - lowest 10 %: clipart +2.3, worst -0.7 (outlier 30 %); mnist5k +4.2, worst -0.3 (outlier 50 %). **Chosen**:
    worst cell -0.7 against -1.9.
  - of the lowest 20 %, only the items significantly more similar to another novel class (``confusable``: a
    Welch test of the item's mean similarity to another class against its own, z > 2; meant to drop flips and keep
    outliers that resemble no class): clipart +3.2, worst -2.0 (outlier 30 %); mnist5k +6.8, worst -0.8.
  - the same over the lowest 50 %: clipart +3.6, worst -3.1 (outlier 30 %); mnist5k +10.8 (flip 50 % +31.1),
    worst -1.3. The best mean by far, but the worst outlier cells: on clipart's weak similarity (novel-pair
    ROC-AUC 0.70) many clean items test as confusable.
  - DivideMix's two-component mixture of each class's weights, the low component dropped (at most 50 %), seeds
    100-102 only: clipart +4.2, worst -4.4 (outlier 30 %); not run on mnist5k (it drops the outliers as well,
    which on mnist5k costs what the oracle does, and it already had the worst cell).
  The confusable and mixture rules stay as options (``sim_drop_rule``); the default rule stays ``lowest``.
- soft weights alone do not move accuracy even when they rank far better (clipart: weights AUC 0.73 -> 0.86, +0.2
  -> +0.0 points): the gain comes from leaving the lowest-weighted items out.
- dropping the items more similar to another class than to their own (``w25m``/``g25m``) removed clean items on
  clipart's outlier cells (-10 to -15 points): abandoned after one seed, not kept in the code.
- the graph term (s4): not tuned here (alpha 1, the earlier choice on MNIST-M): with the 20 % weights it adds +0.2
  points on clipart's dev seeds 100-102, -0.1 over seeds 100-105 (``g25d`` against ``w25d``).
- **s5: the graph term**, against the target "worth at least 0.5 point" (mean gain of full SimTrans over the same
  weights without the term). Variants within the reference code's parameters, over the 20 % weights on clipart
  seeds 100-102: alpha 3 -0.4, same-label pairs only (``eye`` 0) +0.1, alpha 1 +0.2; over the confusable weights
  (seeds 100-105): -0.5 (20 %) and -0.5 (50 %); over the chosen 10 % weights (seeds 100-102): mu -4 (the default)
  -0.7, mu 0 (no relaxation) -0.7, mu +4 (sharpened) -0.1. None reaches +0.5, so alpha, mu and eye stay. The
  `scale` table shows why: the term is not too weak here (its gradient is 0.4 times the cross-entropy's at the
  start on clipart and 2-3 times it once the weighted cross-entropy is near zero; on mnist5k 0.1 and 0.25-0.6
  times; the reference code's raw-feature version with alpha 0.1 would be 10 to 2000 times the cross-entropy's
  gradient here), but it carries little class information: the blended similarity of novel
  pairs is a weak ranking (clipart same-class pairs 0.59-0.61 against 0.51 for different classes, mnist5k 0.67
  against 0.39), and the relaxation with mu = -4 flattens it further (0.89-0.90 against 0.86; mnist5k 0.90 against
  0.70), so the term mostly pulls every batch's features together. Sharpening (mu +4) only weakens it towards no
  effect. The reference code's setting differs where it matters: a similarity net learned on 100+ CUB classes
  (a sharper same/different output) and a fine-tuned ResNet's pooled features.
- **s6: the two targets still unmet** (at or above plain on every split; the graph term worth 0.5 point). The rules,
  written before any s6 run (`/work/bench-s6weak/RULE.md`, quoted in `bench_weakshot_notes.md`): (A) the new drop
  rule replaces ``lowest`` if its worst (dataset, noise cell) gain over plain is higher than ``w25d1``'s and its mean
  gain is at least +1.5 points on each dataset; (B) with those weights, the graph candidate with the highest gain
  over the same weights without the term (mean per dataset, then over the two) becomes the default if that gain is
  at least +0.5 point and its worst cell against plain is at most 0.5 point below the weights alone's. Seeds: clipart
  100-105, mnist5k 100 (42 cells per candidate).
  - (A) ``claimed`` (``w25k``: of the lowest 10 %, only the items another novel class claims dropped, the unclaimed
    weighted at least the class mean): clipart +2.2, mnist5k +3.6; worst cell -0.5 (mnist5k outlier 50 %) against
    ``lowest``'s -0.7 (clipart outlier 30 %). **Adopted** by rule A, by a margin (0.15 point) well inside the cells'
    noise; it did not lift mnist5k's outlier cells on dev (outlier 30 % +0.0 as before, outlier 50 % -0.5 against
    -0.3).
  - (B) graph candidates over the ``claimed`` weights (gain over ``w25k``, clipart / mnist5k / mean): on the hidden
    features (s5's term) -0.8 / -0.3 / -0.5; on the outputs with mu -4 -0.9 / -1.0 / -1.0, mu 0 -0.2 / -0.0 / -0.1,
    mu +4 +0.3 / +0.1 / +0.2, mu +8 +0.3 / +0.1 / +0.2; alpha 3: mu +4 +0.0 / +0.7 / +0.4, **mu +8 +0.5 / +0.6 /
    +0.5** (worst cell against plain -0.7, clipart outlier 30 %, 0.15 below the weights alone's): **adopted** by
    rule B, just over the bar. Round 1 (the hidden features, mu -4 / 0 / +4 on the outputs) ran first; round 2 (mu
    +8, alpha 3) was added after reading round 1 (the gain rose with mu), under the same rule: the best of 7
    candidates is an optimistic estimate of its gain.
- **s8: the same two targets.** The rules, committed before any s8 run (quoted in `bench_weakshot_notes.md`): (A)
  the open-set gate at level 0.05 (fixed) becomes the default if full SimTrans with it (``o8g``) has a worst (dataset,
  noise cell) gain over plain at least ``g25ko8a3``'s and a mean gain per dataset at most 0.2 point below it; (B) of
  two graph variants over the gated weights (``k8g``), the one with the higher graph gain replaces s6's setting if
  that gain is at least 0.2 point above ``o8g``'s and its worst cell against plain at most 0.3 point below ``o8g``'s.
  Seeds: clipart 100-105, mnist5k 100 (42 cells per candidate), one round.
  - (A) the gate closed on mnist5k's two outlier cells only (its suspects claimed 0.14-0.15 of the time; every other
    cell 0.55-0.91): ``o8g`` equals ``g25ko8a3`` on every clipart cell and mnist5k's flip and mixed cells, and
    equals plain on mnist5k outlier 30 % / 50 % (+0.0 / +0.0, against +0.0 / -0.4). Worst cell -0.7 (clipart
    outlier 30 %) as before; mean gains clipart +2.7, mnist5k +4.2 (s6 +2.7 / +4.2): **adopted**.
  - (B) graph gain over ``k8g`` (clipart / mnist5k / mean): ``o8g`` (s6's term) +0.45 / +0.56 / +0.50; **``o8gA``
    (every epoch) +0.54 / +1.47 / +1.00**; ``o8g10`` (alpha 10) +0.68 / +1.29 / +0.98. ``o8gA``: +0.50 above
    ``o8g``, worst cell against plain -0.5 (clipart outlier 30 %, ``o8g`` -0.7): **adopted**. ``o8g10`` was within
    0.02 point of it: the two are tied on these cells; mnist5k's number is one seed (flip 50 % +5.1 with either).
"""

#: the candidates of the journal, described (name -> settings)
DESCRIBE = {"plain": "plain training",
            "w1": "weights, net alone (the s3 default)",
            "w0": "weights, cosine alone",
            "w25": "weights, net share 0.25",
            "w25d": "weights, net share 0.25, lowest 20 % dropped (the s4 default)",
            "w25d1": "weights, net share 0.25, lowest 10 % dropped (chosen in s5)",
            "w25c": "weights, net share 0.25, of the lowest 20 % only the significantly confusable dropped",
            "w25c5": "weights, net share 0.25, of the lowest 50 % only the significantly confusable dropped",
            "w25g": "weights, net share 0.25, each class's low mixture component dropped (at most 50 %)",
            "w25m": "weights, net share 0.25, items more similar to another class dropped",
            "g25": "full SimTrans (graph term), net share 0.25",
            "g25d": "full SimTrans, net share 0.25, lowest 20 % dropped",
            "g25da3": "full SimTrans, lowest 20 % dropped, alpha 3",
            "g25de0": "full SimTrans, lowest 20 % dropped, same-label pairs only (eye 0)",
            "g25c": "full SimTrans, confusable of the lowest 20 % dropped",
            "g25c5": "full SimTrans, confusable of the lowest 50 % dropped",
            "g25d1": "full SimTrans, lowest 10 % dropped (the chosen weights)",
            "g25d1m0": "full SimTrans, lowest 10 % dropped, mu 0 (similarities not relaxed)",
            "g25d1m4": "full SimTrans, lowest 10 % dropped, mu +4 (similarities sharpened)",
            "g25m": "full SimTrans, net share 0.25, items more similar to another class dropped",
            "w25k": "weights, net share 0.25, of the lowest 10 % only the claimed dropped, the unclaimed floored (**chosen**, s6)",
            "g25k": "full SimTrans, claimed rule, graph term on the hidden features (s5's graph)",
            "g25ko": "full SimTrans, claimed rule, graph term on the outputs, mu -4",
            "g25ko0": "full SimTrans, claimed rule, graph term on the outputs, mu 0",
            "g25ko4": "full SimTrans, claimed rule, graph term on the outputs, mu +4",
            "g25ko8": "full SimTrans, claimed rule, graph term on the outputs, mu +8",
            "g25ko4a3": "full SimTrans, claimed rule, graph term on the outputs, mu +4, alpha 3",
            "g25ko8a3": "full SimTrans, claimed rule, graph term on the outputs, mu +8, alpha 3 (**chosen**, s6)",
            "k8g": "weights, claimed rule, open-set gate at level 0.05 (s8)",
            "o8g": "full SimTrans, claimed rule, outputs, mu +8, alpha 3, open-set gate 0.05 (s8)",
            "o8gA": "as o8g, the graph term on in every epoch (schedule always) (**chosen**, s8)",
            "o8g10": "as o8g, alpha 10 (s8)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("weights", "accuracy", "scale", "render"))
    ap.add_argument("--datasets", default="clipart,mnist5k")
    ap.add_argument("--seeds", default="100,101,102")
    ap.add_argument("--cells", default="all", help="kind/rate,... (e.g. flip/0.5,mixed/0.5) or all")
    ap.add_argument("--candidates", default="plain:plain;w25d:simtrans-weights:0.25:0:0.2")
    ap.add_argument("--work-dir", default="/tmp/tk-bench-weakshot-dev")
    ap.add_argument("--cache-dir", default="/tmp/tk-bench-cache")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_weakshot_dev.md"))
    args = ap.parse_args()
    if set(map(int, args.seeds.split(","))) & set(range(5)):
        raise SystemExit("seeds 0-4 are the reported ones: choose settings on other seeds")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage == "render":
        print(render(work, Path(args.out), DESCRIBE))
        return
    import torch

    from transferkit.features import FeatureStore
    from transferkit.weakshot import WeakShotConfig

    torch.set_num_threads(1)
    cfg, store = WeakShotConfig(), FeatureStore(args.cache_dir)
    {"weights": stage_weights, "accuracy": stage_accuracy, "scale": stage_scale}[args.stage](args, cfg, store, work)


if __name__ == "__main__":
    main()
