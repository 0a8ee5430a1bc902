"""Leave-one-domain-out experiments: every method on every held-out domain for every seed (``transferkit
generalize``).

Domains are named data (built-in datasets, folders, tables), one per domain, or one table (or built-in dataset such
as ``rotated-mnist``) split by its domain column. For each held-out target, every method trains on the other
domains (:func:`~transferkit.generalize.trainer.train_generalizer`) and is scored on the target: with the checkpoint
chosen on the training domains' validation splits (the honest number) and with the oracle's checkpoint (chosen on a
labelled part of the target: reported separately, labelled as such). Inputs are prepared once per domain (cached
backbone features through the :class:`~transferkit.features.FeatureStore`, or image tensors end to end). At probe
cost features are standardised with the statistics of the training domains only. Every finished (target, method,
seed) cell is appended to ``cells.jsonl``: a rerun with the same ``out`` skips it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError, TransferkitError, UnknownNameError
from ..experiment import Cell, run_grid, settings_hash
from .objectives import DG_METHODS
from .trainer import DGConfig, make_dg_net, train_generalizer

__all__ = ["DGResult", "generalize", "load_domains"]


@dataclass
class DGResult:
    """What :func:`generalize` returns.

    Attributes:
        cells: one record per (target, method, seed): ``accuracy`` (training-domain selection), ``oracle_accuracy``
            (oracle selection, target-domain validation), ``val_accuracy``, ``last_accuracy``, ``seconds``.
        rows: per (target, method): means and standard deviations over seeds, and the difference to ERM.
        summary: per method: the mean over targets, the worst target's accuracy, the oracle's mean, and the mean
            gap between training-domain selection and the oracle.
        out: the output folder (generalize.json, cells.jsonl).
        settings: what was run.
    """

    cells: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    out: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Plain-text tables: per held-out domain, and the summary."""
        lines = [f"{'target':<16} {'method':<10} {'acc % (train-domain val)':>25} {'vs ERM':>7} {'oracle % (target val)':>22}"]
        for r in self.rows:
            d = "" if r.get("vs_erm") is None else f"{100 * r['vs_erm']:+.1f}"
            lines.append(f"{r['target']:<16} {r['method']:<10} {_pm(r['accuracy_mean'], r['accuracy_std']):>25} {d:>7} "
                         f"{_pm(r['oracle_mean'], r['oracle_std']):>22}")
        lines.append("")
        lines.append(f"{'method':<10} {'mean %':>7} {'vs ERM':>7} {'worst %':>8} {'worst vs ERM':>13} {'oracle %':>9} "
                     f"{'selection loss':>15}")
        for s in self.summary:
            lines.append(f"{s['method']:<10} {100 * s['mean']:>7.1f} {_signed(s.get('mean_vs_erm')):>7} "
                         f"{100 * s['worst']:>8.1f} {_signed(s.get('worst_vs_erm')):>13} {100 * s['oracle_mean']:>9.1f} "
                         f"{100 * s['selection_loss']:>15.1f}")
        return "\n".join(lines)


def _pm(m: float | None, s: float | None) -> str:
    return "-" if m is None else f"{100 * m:.1f} ± {100 * (s or 0):.1f}"


def _signed(v: float | None) -> str:
    return "" if v is None else f"{100 * v:+.1f}"


def load_domains(domains: Any, *, domain_column: str | None = None, max_per_domain: int | None = None,
                 encoding: str | None = None) -> dict[str, Any]:
    """Named labelled domains as :class:`~transferkit.data.sources.DataSource` objects, in order.

    Args:
        domains: a comma-separated string or a list of data specs (one per domain), or one spec whose domain
            column (``domain_column`` for a table; built-in datasets such as ``rotated-mnist`` carry one) splits it.
        domain_column: the column of a table that names each row's domain.
        max_per_domain: keep at most this many items of each domain (a fixed, class-stratified subset: the same for
            every seed and method, so features are extracted once).
        encoding: text encoding of tables.

    Raises:
        DataError: fewer than two domains, unlabelled data, different class sets.
    """
    from ..adapt.adapter import check_class_sets
    from ..data.load import load_data

    from ..data.sources import DataSource

    if isinstance(domains, str):
        specs = [s.strip() for s in domains.split(",") if s.strip()]
    elif isinstance(domains, DataSource):
        specs = [domains]
    else:
        specs = list(domains)
    if not specs:
        raise DataError("give the domains: e.g. domains='mnist5k,digits,mnist-m,synth-digits', or one table with "
                        "domain_column=")
    out: dict[str, Any] = {}
    if len(specs) == 1:
        full = load_data(specs[0], domain_column=domain_column, encoding=encoding)
        if full.domains is None:
            raise DataError(f"{full.origin or full.name} is one domain; give several (comma-separated) or a table "
                            "with a domain column (domain_column=)")
        for d in dict.fromkeys(full.domains):
            sub = full.subset(np.flatnonzero(full.domains == d))
            sub.name = str(d)
            out[str(d)] = sub
    else:
        if domain_column:
            raise DataError("domain_column= splits one table into domains; with several data specs each is a domain")
        for s in specs:
            src = load_data(s, encoding=encoding)
            name = src.name if src.name not in out else f"{src.name}#{len(out)}"
            out[name] = src
    if len(out) < 2:
        raise DataError(f"domain generalisation needs at least two domains (one held out); got {list(out)}")
    first = None
    for name, src in out.items():
        src.require_labels()
        if first is None:
            first = src.classes
        else:
            check_class_sets(first, src.classes, f"domain {name}: ")
    if max_per_domain is not None:
        if not isinstance(max_per_domain, int) or max_per_domain < 2:
            raise DataError(f"max_per_domain must be an integer >= 2, got {max_per_domain!r}")
        for name, src in list(out.items()):
            if len(src) > max_per_domain:
                from ..adapt.experiment import split_target

                y = np.asarray(src.labels)
                _, keep = split_target(y, len(y), max_per_domain / len(y), 0)
                sub = src.subset(keep)
                sub.name = src.name
                out[name] = sub
    return out


def _targets(leave_out: Any, names: list[str]) -> list[str]:
    if leave_out in (None, "each", "all"):
        return list(names)
    wanted = [s.strip() for s in leave_out.split(",")] if isinstance(leave_out, str) else [str(s) for s in leave_out]
    bad = [w for w in wanted if w not in names]
    if bad:
        raise DataError(f"leave_out names {', '.join(map(repr, bad))}, not a domain; domains: {', '.join(names)} "
                        "(or 'each')")
    return wanted


def generalize(domains: Any, *, leave_out: Any = "each", methods: Sequence[str] = ("erm", "coral", "groupdro", "irm",
                                                                                   "vrex", "mixup"),
               backbone: str = "lite0", finetune: bool = False, image_size: int | None = None,
               seeds: Sequence[int] = (0,), config: DGConfig | None = None, max_per_domain: int | None = None,
               domain_column: str | None = None, encoding: str | None = None, cache_dir: Any = None, out: Any = None,
               progress: bool = False, log: Callable[[str], None] | None = None) -> DGResult:
    """Leave-one-domain-out domain generalisation: every method, every held-out target, every seed.

    Args:
        domains: see :func:`load_domains`.
        leave_out: ``"each"`` (every domain in turn), or the target domain(s) to hold out (comma-separated).
        methods: names of :data:`~transferkit.generalize.objectives.DG_METHODS`, or ``["all"]`` (every method
            that applies: mixstyle only end to end); ``erm`` always runs (the baseline).
        backbone: a backbone for cached features (probe cost), or a network trained on the pixels (``lenet``,
            ``small-cnn``: end to end).
        finetune: train a pretrained backbone end to end instead.
        image_size: end-to-end input side (default: the network's own, 32 for lenet).
        seeds: one training run (and validation split) each.
        config: :class:`~transferkit.generalize.trainer.DGConfig` (its ``seed`` is replaced by each seed).
        max_per_domain: a fixed subset of at most this many items per domain.
        domain_column, encoding: see :func:`load_domains`.
        cache_dir: feature-cache folder.
        out: output folder (default ``runs/<time>-generalize-...``); rerun with it to resume.
        progress: progress bars; log: one line per finished cell.

    Returns:
        A :class:`DGResult`.

    Raises:
        UnknownNameError: an unknown method. DataError: bad domains or ``leave_out``. TransferkitError: mixstyle
        at probe cost.
    """
    from ..adapt.adapter import DomainAdapter
    from ..runs import default_run_dir, prepare_run_dir, write_json

    say = log or (lambda m: None)
    prep = DomainAdapter(backbone, finetune=finetune, image_size=image_size, cache_dir=cache_dir, progress=progress)
    end_to_end = prep.end_to_end
    names = list(DG_METHODS) if list(methods) == ["all"] else [m.strip() for m in methods if m.strip()]
    if list(methods) == ["all"] and not end_to_end:
        names = [m for m in names if not DG_METHODS.get(m).cap("end_to_end_only", False)]
    bad = [m for m in names if m not in DG_METHODS]
    if bad:
        raise UnknownNameError(f"unknown method(s) {', '.join(map(repr, bad))}; valid: all, {', '.join(DG_METHODS)}")
    e2e_only = [m for m in names if DG_METHODS.get(m).cap("end_to_end_only", False)]
    if e2e_only and not end_to_end:
        raise TransferkitError(f"{', '.join(e2e_only)} change(s) the network, so they train end to end: use "
                               "backbone='lenet' (or finetune=True), or drop them at probe cost")
    names = ["erm"] + [m for m in dict.fromkeys(names) if m != "erm"]
    doms = load_domains(domains, domain_column=domain_column, max_per_domain=max_per_domain, encoding=encoding)
    dnames = list(doms)
    targets = _targets(leave_out, dnames)
    cfg = config or DGConfig()
    cfg.validate()
    out_dir = prepare_run_dir(out if out is not None else default_run_dir("generalize-" + "-".join(dnames)[:30],
                                                                          backbone), "generalize", resume=True)
    classes = doms[dnames[0]].classes
    index = {c: i for i, c in enumerate(classes)}
    t0 = time.perf_counter()
    inputs = {d: prep.prepare_inputs(src, d) for d, src in doms.items()}
    labels = {d: np.array([index[str(v)] for v in src.labels], dtype=np.int64) for d, src in doms.items()}
    feature_seconds = time.perf_counter() - t0
    say(f"inputs: " + ", ".join(f"{d} {inputs[d].shape}" for d in dnames) + f" in {feature_seconds:.1f}s")
    settings = {"domains": {d: doms[d].fingerprint() for d in dnames}, "backbone": backbone, "end_to_end": end_to_end,
                "finetune": bool(finetune), "image_size": image_size, "max_per_domain": max_per_domain,
                "config": {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "device")}}
    key = settings_hash(settings)
    grid = [Cell({"target": t, "method": m, "seed": s}, key) for t in targets for m in names for s in seeds]

    def network(seed: int) -> Any:
        """The end-to-end network, its random initialisation seeded (None at probe cost)."""
        if not end_to_end:
            return None
        import torch

        from ..backbones import create_backbone
        from ..train.model import prepare_backbone

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return prepare_backbone(create_backbone(backbone))

    def run(cell: Cell, done: list[dict[str, Any]]) -> dict[str, Any]:
        t, m, seed = cell.coords["target"], cell.coords["method"], cell.coords["seed"]
        train_names = [d for d in dnames if d != t]
        Xs = [inputs[d] for d in train_names]
        Xt = inputs[t]
        if not end_to_end:  # standardise with the training domains' pooled statistics (the target is unseen)
            Z = np.concatenate(Xs)
            mean, std = Z.mean(0), Z.std(0)
            std = np.where(std > 1e-8, std, 1.0)
            Xs, Xt = [(X - mean) / std for X in Xs], (Xt - mean) / std
        c = replace(cfg, seed=int(seed))
        net = make_dg_net(m, len(classes), c.bottleneck, in_dim=None if end_to_end else Xs[0].shape[1],
                          feature=network(int(seed)), seed=int(seed), params=c.params.get(m))
        fit = train_generalizer(net, m, [(X, labels[d]) for X, d in zip(Xs, train_names)], c,
                                target=(Xt, labels[t]), progress=progress)
        return {"accuracy": fit.target_accuracy, "oracle_accuracy": fit.oracle_accuracy,
                "val_accuracy": fit.val_accuracy, "last_accuracy": fit.last_accuracy,
                "selected_step": fit.selected_step, "oracle_step": fit.oracle_step, "seconds": fit.seconds,
                "train_domains": train_names}

    def logged(rec: dict[str, Any]) -> None:
        say(f"{rec['target']:>14} {rec['method']:>9} seed {rec['seed']}: {100 * rec['accuracy']:.1f}% "
            f"(oracle {100 * rec['oracle_accuracy']:.1f}%, train-domain val {100 * rec['val_accuracy']:.1f}%, "
            f"{rec['seconds']:.1f}s)")

    cells = run_grid(grid, run, out_dir / "cells.jsonl", log=logged).records
    rows, summary = summarise(cells, targets, names)
    result = DGResult(cells, rows, summary, out_dir, {**settings, "methods": names, "targets": targets,
                                                      "seeds": list(seeds), "classes": classes,
                                                      "feature_seconds": feature_seconds,
                                                      "sizes": {d: int(len(labels[d])) for d in dnames}})
    write_json(out_dir / "generalize.json", {"settings": result.settings, "rows": rows, "summary": summary,
                                             "cells": cells})
    return result


def summarise(cells: list[dict[str, Any]], targets: list[str], methods: list[str]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows per (target, method) and a summary per method (mean over targets, worst target, oracle, the loss of
    training-domain selection against the oracle), each against ERM on the same targets and seeds."""
    rows = []
    for t in targets:
        erm = None
        for m in methods:
            cs = [c for c in cells if c["target"] == t and c["method"] == m]
            if not cs:
                continue
            acc = [c["accuracy"] for c in cs]
            orc = [c["oracle_accuracy"] for c in cs]
            r = {"target": t, "method": m, "n": len(cs), "accuracy_mean": float(np.mean(acc)),
                 "accuracy_std": float(np.std(acc)), "oracle_mean": float(np.mean(orc)),
                 "oracle_std": float(np.std(orc)), "val_mean": float(np.mean([c["val_accuracy"] for c in cs])),
                 "seconds_mean": float(np.mean([c["seconds"] for c in cs]))}
            if m == "erm":
                erm = r
            elif erm is not None:
                r["vs_erm"] = r["accuracy_mean"] - erm["accuracy_mean"]
            rows.append(r)
    summary = []
    erm_s = None
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        worst = min(rs, key=lambda r: r["accuracy_mean"])
        s = {"method": m, "mean": float(np.mean([r["accuracy_mean"] for r in rs])), "worst": worst["accuracy_mean"],
             "worst_target": worst["target"], "oracle_mean": float(np.mean([r["oracle_mean"] for r in rs])),
             "targets": len(rs)}
        s["selection_loss"] = s["oracle_mean"] - s["mean"]
        if m == "erm":
            erm_s = s
        elif erm_s is not None:
            s["mean_vs_erm"] = s["mean"] - erm_s["mean"]
            s["worst_vs_erm"] = s["worst"] - erm_s["worst"]
        summary.append(s)
    return rows, summary
