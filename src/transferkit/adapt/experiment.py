"""Run several domain-adaptation methods on the same data and seeds: one table, one report (``transferkit adapt``).

Protocol, per seed: a labelled target is split (stratified) into an **adaptation** part, whose inputs the
methods see without labels, and an **evaluation** part (``eval_fraction``), whose labels are read only to score
the finished models; an unlabelled target is used whole for adaptation (no accuracy is reported then). With ``target_labels=N``, N labelled samples per class are drawn from the
adaptation part (semi-supervised DA). Checkpoints are chosen by :mod:`transferkit.adapt.selection` (named in the
table); ``source-only`` always runs as the baseline of the deep methods, and ``source-only-linear`` (the same
logistic regression the shallow methods fit, without adaptation) as the baseline of the shallow ones whenever one
runs; every method scoring below its baseline is flagged as negative transfer. Every finished (method, seed) cell is appended to ``cells.jsonl``: a rerun with the same ``out``
skips them.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..experiment import Cell, run_grid, settings_hash
from ..errors import DataError, UnknownNameError
from .adapter import DomainAdapter, all_methods, check_class_sets
from .methods import METHODS
from .trainer import AdaptConfig

__all__ = ["AdaptResult", "adapt_compare", "split_target"]


@dataclass
class AdaptResult:
    """What :func:`adapt_compare` returns: ``cells`` (one per method and seed), ``rows`` (per method: mean ± std
    accuracy, seconds), ``warnings`` (negative transfer), ``diagnostics`` (domain distances before/after),
    ``out`` (folder with adapt.json, cells.jsonl, report.html)."""

    cells: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    warnings: list[str]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Plain-text table of the rows."""
        lines = [f"{'method':<16} {'target acc %':>14} {'source-val %':>13} {'seconds':>8}  selection"]
        for r in self.rows:
            acc = "-" if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}"
            sv = "-" if r.get("source_val_mean") is None else f"{100 * r['source_val_mean']:.1f}"
            lines.append(f"{r['method']:<16} {acc:>14} {sv:>13} {r['seconds_mean']:>8.1f}  {r['selection']}"
                         + ("  ⚠ negative transfer" if r.get("negative") else ""))
        return "\n".join(lines)


def split_target(y: np.ndarray, n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(adaptation indices, evaluation indices): ``eval_fraction`` of each class held out, seeded."""
    rng = np.random.default_rng([seed, 4242])
    ev = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        ev.extend(idx[: int(round(eval_fraction * len(idx)))])
    ev = np.sort(np.asarray(ev, dtype=np.int64))
    return np.setdiff1d(np.arange(n), ev), ev


#: settings added after results were recorded, at the value that reproduces them: left out of a cell's key so that
#: earlier cells stay valid
_NEUTRAL_SETTINGS = {("precision", "32")}


def adapt_compare(source: Any, target: Any, *, methods: Sequence[str] = ("source-only", "dann"),
                  backbone: str = "lite0", finetune: bool = False, image_size: int | None = None,
                  seeds: Sequence[int] = (0,), target_labels: int | None = None, config: AdaptConfig | None = None,
                  eval_fraction: float = 0.3, cache_dir: Any = None, out: Any = None, progress: bool = False,
                  diagnostics: bool = True, domain_column: str | None = None, source_domain: str | None = None,
                  target_domain: str | None = None, keep_checkpoints: bool = False, encoding: str | None = None,
                  log: Callable[[str], None] | None = None) -> AdaptResult:
    """Every method of ``methods`` (plus ``source-only``) on the same splits for every seed; a table and a report.

    Args:
        source: labelled source data (built-in name, folder, table, DataSource).
        target: target data; its labels, if any, are used only to score the finished models.
        methods: names of :data:`~transferkit.adapt.methods.METHODS`, or ``["all"]`` (every classification method
            that applies: those needing target labels only with ``target_labels``, the shallow ones only on cached
            features).
        backbone: backbone name, or ``lenet`` (end to end from scratch).
        finetune: end-to-end training of the backbone instead of a head on cached features.
        image_size: end-to-end input side.
        seeds: one target split and one training seed each.
        target_labels: labelled target samples per class (semi-supervised DA), drawn from the adaptation part.
        config: :class:`AdaptConfig` (its ``seed`` is replaced by each seed).
        eval_fraction: share of the target held out for evaluation.
        out: output folder (default ``runs/<time>-adapt-<source>-<target>``); rerun with it to resume.
        diagnostics: compute domain distances and projections before/after (seed 0; a few seconds each).
        domain_column, source_domain, target_domain: split one table into the two domains by the values of its
            domain column (``target`` may then be None: the same table).
        encoding: the text encoding of tables (detected when None).
        keep_checkpoints: keep each deep cell's checkpoints (default: deleted once the cell is recorded; a cell
            killed before that resumes from them on the next run with the same ``out``).

    Returns:
        An :class:`AdaptResult`.

    Raises:
        UnknownNameError: an unknown method. DataError: different class sets, an empty target, a method that
        needs target labels without ``target_labels``, a budget larger than a target class.
    """
    from ..data.load import load_data
    from ..runs import default_run_dir, prepare_run_dir

    say = log or (lambda m: None)
    end_to_end = DomainAdapter(backbone, finetune=finetune).end_to_end
    everything = all_methods()
    names = list(everything) if list(methods) == ["all"] else [m.strip() for m in methods if m.strip()]
    if list(methods) == ["all"]:
        names = [m for m in names if METHODS.get(m).task == "classification"
                 and (target_labels or not METHODS.get(m).needs_target_labels)
                 and not (end_to_end and METHODS.get(m).level == "shallow")]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise UnknownNameError(f"unknown method(s) {', '.join(map(repr, bad))}; valid: all, {', '.join(everything)}")
    need = [m for m in names if METHODS.get(m).needs_target_labels]
    if need and not target_labels:
        raise DataError(f"{', '.join(need)} need(s) a few labelled target samples: give target_labels=N "
                        "(labels per class drawn from the target's adaptation part)")
    shallow = [m for m in names if METHODS.get(m).level == "shallow"]
    if shallow and end_to_end:
        raise DataError(f"{', '.join(shallow)} work(s) on cached features, not end to end ({backbone}"
                        f"{' finetune=True' if finetune else ''}); drop them or use a pretrained backbone without finetune=True")
    if shallow and "source-only-linear" not in names:
        names.insert(0, "source-only-linear")
    names = ["source-only"] + [m for m in dict.fromkeys(names) if m != "source-only"]
    if domain_column or source_domain or target_domain:
        src, tgt = _split_by_domain(source, target, domain_column, source_domain, target_domain, encoding)
    else:
        src = load_data(source, encoding=encoding)
        tgt = load_data(target, require_labels=False, encoding=encoding)
    src.require_labels()
    if len(tgt) == 0:
        raise DataError(f"the target {tgt.origin or tgt.name} has no samples")
    check_class_sets(src.classes, tgt.classes if tgt.labels is not None else None)
    if target_labels and tgt.labels is None:
        raise DataError("target_labels= needs a labelled target (the labels of N samples per class are used)")
    cfg = config or AdaptConfig()
    out_dir = prepare_run_dir(out if out is not None else default_run_dir(f"adapt-{src.name}-{tgt.name}", backbone),
                              "adapt", resume=True)
    settings = {"source": src.fingerprint(), "target": tgt.fingerprint(), "backbone": backbone, "end_to_end": end_to_end,
                "finetune": bool(finetune), "image_size": image_size, "target_labels": target_labels,
                "eval_fraction": eval_fraction, "config": {k: v for k, v in cfg.to_dict().items() if k != "seed"
                                                           and (k, v) not in _NEUTRAL_SETTINGS}}
    key = settings_hash(settings)

    # inputs once for every method: features from the cache, or image tensors
    prep = DomainAdapter(backbone, finetune=finetune, image_size=image_size, cache_dir=cache_dir, progress=progress)
    t_feat = time.perf_counter()
    Xs = prep.prepare_inputs(src, "source")
    Xt_all = prep.prepare_inputs(tgt, "target")
    feature_seconds = time.perf_counter() - t_feat
    say(f"inputs: source {Xs.shape}, target {Xt_all.shape} in {feature_seconds:.1f}s")
    ys = np.asarray(src.labels)
    yt_all = None if tgt.labels is None else np.asarray(tgt.labels)
    classes = src.classes
    grid = []
    for seed in seeds:
        parts = _target_parts(yt_all, len(tgt), eval_fraction, seed, target_labels, classes)
        grid += [Cell({"method": m, "seed": seed}, key, {"parts": parts}) for m in names]
    runner = _AdaptCell(Xs, ys, Xt_all, yt_all, classes, backbone, finetune, image_size, cfg, cache_dir, progress,
                        out_dir, diagnostics and bool(seeds), seeds[0] if seeds else 0, keep_checkpoints)

    def logged(cell: dict[str, Any]) -> None:
        say(f"{cell['method']:>14} seed {cell['seed']}: " + (f"target acc {100 * cell['accuracy']:.1f}%"
                                                            if "accuracy" in cell else "done")
            + f" ({cell['seconds']:.1f}s, selection {cell['selection']})")

    cells = run_grid(grid, runner, out_dir / "cells.jsonl", log=logged).records
    diag, embeddings = runner.diagnostics, runner.embeddings
    rows, warnings = _rows(cells, names)
    result = AdaptResult(cells, rows, warnings, diag, out_dir, {**settings, "methods": names, "seeds": list(seeds),
                                                                "classes": classes, "source_name": src.name,
                                                                "target_name": tgt.name,
                                                                "feature_seconds": feature_seconds})
    from ..runs import write_json

    write_json(out_dir / "adapt.json", {"settings": result.settings, "rows": rows, "warnings": warnings,
                                        "diagnostics": diag,
                                        "cells": [{k: v for k, v in c.items() if k != "history"} for c in cells]})
    _report(result, embeddings, yt_all is not None)
    return result


def _target_parts(yt: np.ndarray | None, n: int, eval_fraction: float, seed: int, target_labels: int | None,
                  classes: list[str]) -> dict[str, Any]:
    """The target's adaptation part (inputs seen without labels), evaluation part (labels read only to score the
    finished models) and, with ``target_labels``, the labelled few drawn from the adaptation part."""
    if yt is None:  # nothing to evaluate with: every target input adapts
        adapt_idx, eval_idx = np.arange(n), np.arange(0)
    else:
        adapt_idx, eval_idx = split_target(yt, n, eval_fraction, seed)
    lab_idx = None
    if target_labels:
        rng = np.random.default_rng([seed, 77])
        picked = []
        for c in classes:
            pool = adapt_idx[yt[adapt_idx] == c]
            if len(pool) < target_labels:
                raise DataError(f"target class {c!r} has {len(pool)} samples in the adaptation part, fewer than "
                                f"target_labels={target_labels}")
            picked.extend(rng.permutation(pool)[:target_labels])
        lab_idx = np.sort(np.asarray(picked, dtype=np.int64))
    return {"adapt": adapt_idx, "eval": eval_idx, "labelled": lab_idx}


class _AdaptCell:
    """Fits one (method, seed) cell on arrays (the target's labels cannot be read by the method) and scores it;
    its checkpoints go to ``cells/<method>-s<seed>`` so a killed cell resumes."""

    def __init__(self, Xs, ys, Xt, yt, classes, backbone, finetune, image_size, cfg, cache_dir, progress, out_dir,
                 diagnostics, diag_seed, keep_checkpoints):
        self.Xs, self.ys, self.Xt, self.yt, self.classes = Xs, ys, Xt, yt, classes
        self.backbone, self.finetune, self.image_size, self.cfg = backbone, finetune, image_size, cfg
        self.cache_dir, self.progress, self.out_dir = cache_dir, progress, out_dir
        self.want_diagnostics, self.diag_seed, self.keep_checkpoints = diagnostics, diag_seed, keep_checkpoints
        self.diagnostics: dict[str, Any] = {}
        self.embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, cell: Any, done: list[dict[str, Any]]) -> dict[str, Any]:
        import shutil

        m, seed = cell.coords["method"], cell.coords["seed"]
        parts = cell.context["parts"]
        adapt_idx, eval_idx, lab_idx = parts["adapt"], parts["eval"], parts["labelled"]
        run_dir = self.out_dir / "cells" / f"{m}-s{seed}-{cell.settings}"
        da = DomainAdapter(self.backbone, m, config=replace(self.cfg, seed=seed), finetune=self.finetune,
                           image_size=self.image_size, cache_dir=self.cache_dir, progress=self.progress,
                           run_dir=run_dir, resume=True)
        tl = None if lab_idx is None else (self.Xt[lab_idx], self.yt[lab_idx])
        da.fit((self.Xs, self.ys), self.Xt[adapt_idx], target_labelled=tl)
        out = {"seconds": da.seconds_, "selection": da.selection_, "n_source": int(len(self.Xs)),
               "n_adapt": int(len(adapt_idx)), "n_eval": int(len(eval_idx)),
               "n_target_labels": 0 if lab_idx is None else int(len(lab_idx))}
        if da.fit_ is not None:
            h = da.fit_.history
            sel = next(r for r in h if r["step"] == da.fit_.selected_step)
            out.update(selected_step=da.fit_.selected_step, source_val=sel["source-val"],
                       selected_by=da.fit_.selected_by, history=h)
        if self.yt is not None and len(eval_idx):
            pred = da.predict(self.Xt[eval_idx])
            truth = self.yt[eval_idx]
            out["accuracy"] = float(np.mean(pred == truth))
            from ..report.metrics import pack_outcomes

            out["correct"] = pack_outcomes(pred == truth)
            out["per_class"] = {c: float(np.mean(pred[truth == c] == c)) for c in self.classes if (truth == c).any()}
        if self.want_diagnostics and seed == self.diag_seed:
            self._diagnose(m, da, adapt_idx)
        if not self.keep_checkpoints:
            shutil.rmtree(run_dir, ignore_errors=True)
        return out

    def _diagnose(self, m: str, da: DomainAdapter, adapt_idx: np.ndarray) -> None:
        from ..transferability.domain import domain_distances

        n = min(1000, len(self.Xs), len(adapt_idx))
        r = np.random.default_rng(0)
        si, ti = r.permutation(len(self.Xs))[:n], r.permutation(adapt_idx)[:n]
        es, et = da.embed(self.Xs[si], domain="source"), da.embed(self.Xt[ti])
        self.diagnostics[m] = {k: float(v) for k, v in domain_distances(es, et).items()}
        labels_t = self.yt[ti] if self.yt is not None else np.full(n, self.classes[0])
        self.embeddings[m] = (np.concatenate([es, et]), np.concatenate([self.ys[si], labels_t]))


def _split_by_domain(source: Any, target: Any, column: str | None, s_dom: str | None, t_dom: str | None,
                     encoding: str | None = None):
    """The two domains of one table (or of two tables) selected by the values of a domain column."""
    from ..data.load import load_data

    if not (column and s_dom and t_dom):
        raise DataError("splitting a table into domains needs all three of domain_column=, source_domain= and "
                        f"target_domain= (got {column!r}, {s_dom!r}, {t_dom!r})")
    parts = []
    for spec, want, role in ((source, s_dom, "source"), (target if target is not None else source, t_dom, "target")):
        full = load_data(spec, domain_column=column, require_labels=(role == "source"), encoding=encoding)
        if full.domains is None:
            raise DataError(f"{full.origin or full.name} has no domain column {column!r}")
        have = sorted(set(full.domains))
        if str(want) not in have:
            raise DataError(f"{role} domain {want!r} is not a value of column {column!r} in {full.origin or full.name};"
                            f" values: {', '.join(have[:20])}")
        sub = full.subset(np.flatnonzero(full.domains == str(want)))
        sub.name = f"{full.name}[{want}]"
        parts.append(sub)
    return parts[0], parts[1]


def _rows(cells: list[dict[str, Any]], names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    rows = []
    for m in names:
        cs = [c for c in cells if c["method"] == m]
        accs = [c["accuracy"] for c in cs if "accuracy" in c]
        svs = [c["source_val"] for c in cs if c.get("source_val") is not None]
        rows.append({"method": m, "n": len(cs), "accuracy_mean": float(np.mean(accs)) if accs else None,
                     "accuracy_std": float(np.std(accs)) if accs else None,
                     "source_val_mean": float(np.mean(svs)) if svs else None,
                     "seconds_mean": float(np.mean([c["seconds"] for c in cs])), "selection": cs[0]["selection"]})
    from ..report.metrics import difference_text, negative_transfer, unpack_outcomes

    means = {r["method"]: r["accuracy_mean"] for r in rows}
    by = {(c["method"], int(c["seed"])): c for c in cells}
    warnings = []
    for r in rows:
        # deep methods against source-only; shallow ones against the same classifier without adaptation
        ref = METHODS.get(r["method"]).cap("baseline", "source-only")
        ref = ref if ref in means else "source-only"
        if r["method"] in (ref, "source-only", "source-only-linear"):
            continue
        r["baseline"] = ref
        pairs = [(c, by[(ref, int(c["seed"]))]) for c in cells if c["method"] == r["method"]
                 and (ref, int(c["seed"])) in by and "correct" in c and "correct" in by[(ref, int(c["seed"]))]]
        if not pairs:
            continue
        test = negative_transfer(np.concatenate([unpack_outcomes(c["correct"]) for c, _ in pairs]),
                                 np.concatenate([unpack_outcomes(b["correct"]) for _, b in pairs]))
        r["difference"] = {k: test[k] for k in ("diff", "low", "high", "p_value", "n", "confidence")}
        if test["flag"]:
            r["negative"] = True
            warnings.append(f"negative transfer: {r['method']} scores {100 * r['accuracy_mean']:.1f}% on the target "
                            f"evaluation split, {100 * (means[ref] - r['accuracy_mean']):.1f} points below {ref} "
                            f"({100 * means[ref]:.1f}%); paired over {test['n']} target items: "
                            f"{difference_text(test)}")
    return rows, warnings


def _report(result: AdaptResult, embeddings: dict[str, tuple[np.ndarray, np.ndarray]], labelled: bool) -> None:
    from ..report import write_report
    from ..report.html import figure_html
    from ..report.plots import plot_comparison, plot_projection, projection_2d

    st = result.settings
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['method'])}</td><td class=\"num\">"
        + ("&ndash;" if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.1f} &plusmn; {100 * r['accuracy_std']:.1f}")
        + ("" if not r.get("negative") else " &#9888;") + "</td><td class=\"num\">"
        + ("&ndash;" if r["source_val_mean"] is None else f"{100 * r['source_val_mean']:.1f}")
        + f"</td><td class=\"num\">{r['seconds_mean']:.1f}</td><td>{e(str(r['selection']))}</td></tr>"
        for r in result.rows)
    table = ("<table><tr><th>method</th><th>target accuracy %</th><th>source val %</th><th>seconds</th>"
             f"<th>checkpoint chosen by</th></tr>{rows}</table><p><small>Target accuracy on the held-out evaluation "
             f"part of the target ({int(100 * st['eval_fraction'])}%; its labels are read only here), mean &plusmn; std "
             f"over seeds {st['seeds']}. Checkpoints are chosen without target labels (the selector is named). "
             "&#9888; = below its baseline (negative transfer): source-only for the deep methods, "
             "source-only-linear (the same classifier without adaptation) for the shallow ones.</small></p>")
    sections = [{"title": "Accuracy by method", "html": table}]
    if labelled:
        chart = [{"name": r["method"], "accuracy": r["accuracy_mean"], "std": r["accuracy_std"]}
                 for r in result.rows if r["accuracy_mean"] is not None]
        try:
            sections.append({"title": "Target accuracy", "html": figure_html(plot_comparison(
                chart, f"{st['source_name']} → {st['target_name']} ({st['backbone']})"), "target accuracy")})
        except Exception:  # noqa: BLE001 - a plot must not lose the results
            pass
    if result.diagnostics:
        d = result.diagnostics
        drows = "".join(f"<tr><td>{e(m)}</td><td class=\"num\">{v['proxy_a_distance']:.3f}</td><td class=\"num\">"
                        f"{v['mmd_gaussian']:.4f}</td><td class=\"num\">{v['mmd_linear']:.4f}</td></tr>"
                        for m, v in d.items())
        sections.append({"title": "Domain distances before / after adaptation", "html": (
            "<table><tr><th>representation of</th><th>proxy A-distance</th><th>MMD (Gaussian)</th><th>MMD (linear)"
            f"</th></tr>{drows}</table><p><small>Between 1000 source and 1000 target samples (seed {st['seeds'][0]}) "
            "in the representation each method aligned; <b>source-only</b> is the before. Lower = closer domains."
            "</small></p>")})
        figs = ""
        show = ["source-only"] + sorted((m for m in embeddings if m != "source-only"),
                                        key=lambda m: -(next((r["accuracy_mean"] or 0) for r in result.rows
                                                             if r["method"] == m)))[:1]
        classes = st["classes"]
        for m in show:
            if m not in embeddings:
                continue
            Z, lab = embeddings[m]
            half = len(Z) // 2
            coords, keep, how = projection_2d(Z, seed=0)
            idx = {c: i for i, c in enumerate(classes)}
            labels = np.array([idx.get(str(v), 0) for v in lab])[keep]
            dom = np.r_[np.zeros(half, int), np.ones(len(Z) - half, int)][keep]
            figs += figure_html(plot_projection(coords, labels, classes, f"{m}: source and target features, {how}",
                                            markers=dom, marker_names=["source", "target"]), f"projection {m}")
        sections.append({"title": "Source and target features, before (source-only) and after (best method)",
                         "html": figs})
    per_class = {}
    for c in result.cells:
        for k, v in (c.get("per_class") or {}).items():
            per_class.setdefault(c["method"], {}).setdefault(k, []).append(v)
    if per_class:
        cls = st["classes"]
        prow = "".join(f"<tr><td>{e(m)}</td>" + "".join(
            f"<td class=\"num\">{100 * np.mean(per_class[m].get(c, [np.nan])):.0f}</td>" for c in cls) + "</tr>"
            for m in per_class)
        sections.append({"title": "Per-class target accuracy %", "html": "<table><tr><th>method</th>" + "".join(
            f"<th>{e(c)}</th>" for c in cls) + f"</tr>{prow}</table>"})
    write_report(result.out / "report.html", {
        "title": f"Domain adaptation: {st['source_name']} → {st['target_name']}",
        "subtitle": f"backbone {st['backbone']}{' (end to end)' if st.get('end_to_end') else ' (cached features)'}; "
                    f"{len(st['methods'])} methods x {len(st['seeds'])} seeds",
        "warnings": result.warnings,
        "summary": [("source", st["source_name"]), ("target", st["target_name"]),
                    ("labelled target samples per class", st["target_labels"] or 0),
                    ("checkpoint selection", result.rows[0]["selection"]),
                    ("steps", st["config"]["steps"])],
        "sections": sections, "config": st})
