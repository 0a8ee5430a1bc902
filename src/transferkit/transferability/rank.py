"""The advisor: rank candidate backbones for a labelled dataset by transferability scores, before any training.

Each backbone's features come from the :class:`~transferkit.features.FeatureStore` (extracted once, then reused),
so ranking ten backbones twice costs ten extractions, not twenty; the scores take seconds on cached features.
With ``verify=True`` the ranking is checked against what it predicts: the test accuracy of a logistic head.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import BackboneUnavailableError, ModalityError, ScoreError, UnknownNameError
from ..data.splits import stratified_subset
from .scores import SCORES, compute_scores
from .source import source_probabilities

__all__ = ["rank_backbones", "ranking_table", "rank_correlations", "write_rank_report"]


def rank_backbones(data: Any, backbones: Sequence[str], *, labels_per_class: int | None = None,
                   scores: Sequence[str] | None = None, cache_dir: str | Path | None = None, verify: bool = False,
                   seed: int = 0, max_samples: int | None = 5000, progress: bool = False, batch_size: int = 64,
                   num_workers: int | None = None, device: str = "auto",
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Score every backbone on a labelled dataset and rank them, best first by LogME.

    The data are split once (stratified, seeded, as ``transferkit fit`` splits them); the scores use only the
    labelled part (train + validation; the test part is never looked at), subsampled to ``max_samples``; with
    ``verify=True`` a logistic head (``create_head("logreg")``, C chosen on the validation split) is trained on
    the train split and its test accuracy is added, so the scores can be checked against the real outcome.

    A backbone that cannot serve this data is skipped with a reason instead of failing the whole ranking: a text
    backbone for images (or the other way round), or one that cannot be built here (package missing, no network).
    LEEP and NCE are computed only for backbones with a source classifier (the ImageNet ones).

    Args:
        data: a built-in dataset name, a folder of class sub-folders, a table file, or a ``DataSource``.
        backbones: backbone names (``"lite0"``, ``"timm:resnet50"``, ``"minilm"``, ...).
        labels_per_class: labelled samples per class (the low-data scenario), or None to split by fractions
            (60 / 20 / 20).
        scores: which scores (keys of ``SCORES``); None for all that apply.
        cache_dir: feature-cache folder (default ``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``).
        verify: also train the logistic head and report its test accuracy.
        seed: seed of the split, the subsample and the probe's folds.
        max_samples: score on at most this many labelled samples (stratified subsample); None for all.
        progress: show extraction progress bars.
        batch_size: extraction batch size.
        num_workers: data-loading workers for extraction (default: CPUs - 1, at most 8).
        device: extraction device (``"auto"``, ``"cpu"``, ``"cuda"``).
        log: called with one-line progress messages.

    Returns:
        One dict per backbone, ranked rows first (sorted by LogME, best first; ``rank`` 1, 2, ...), then skipped
        ones (``status == "skipped"``, ``reason`` says why). Keys: ``rank``, ``backbone``, ``status``, ``reason``,
        ``modality``, ``pretraining``, ``num_features``, ``n`` (samples scored), ``classes``, ``extracted`` (items
        that needed a forward pass in this call, 0 on a cache hit), one key per score (None when it does not
        apply), ``accuracy`` and ``n_test`` with ``verify``, ``seconds`` (per score, ``features``, ``verify``) and
        ``notes``. Every value is JSON-serialisable.

    Raises:
        UnknownNameError: an unknown backbone or score name (checked before any work).
        DataError: the data cannot be read, are unlabelled, or are too small for the split.
        ScoreError: no backbone given, or data the scores cannot use (e.g. one labelled sample per class).
    """
    from ..backbones import backbone_entry, create_backbone
    from ..data.load import load_data
    from ..features import FeatureStore
    from ..features.featureset import build_featureset

    say = log or (lambda msg: None)
    names = [backbones] if isinstance(backbones, str) else list(dict.fromkeys(backbones or []))
    if not names:
        raise ScoreError("rank_backbones: no backbone given; name at least one (e.g. lite0), or several to compare")
    specs = {name: backbone_entry(name) for name in names}  # unknown names fail here, before the slow work
    wanted = list(SCORES) if scores is None else list(dict.fromkeys(scores))
    unknown = [s for s in wanted if s not in SCORES]
    if unknown:
        raise UnknownNameError(f"unknown score(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SCORES)}")
    if not wanted:
        raise ScoreError("rank_backbones: no score asked for; leave scores=None for all of them")
    sort_key = "logme" if "logme" in wanted else wanted[0]

    source = load_data(data)
    source.require_labels()
    classes = source.classes
    say(f"data: {source.origin or source.name}: {len(source)} {source.modality}s, {len(classes)} classes")
    store = FeatureStore(cache_dir)
    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"rank": None, "backbone": name, "status": "ok", "reason": None,
                               "modality": specs[name].modality, "pretraining": None,
                               "num_features": specs[name].num_features, "n": 0, "classes": len(classes),
                               "extracted": 0, **{s: None for s in wanted}, "seconds": {}, "notes": []}
        if verify:
            row.update(accuracy=None, n_test=0)
        rows.append(row)
        if specs[name].modality != source.modality:
            row.update(status="skipped", reason=f"{specs[name].modality} backbone, {source.modality} data")
            say(f"{name}: skipped ({row['reason']})")
            continue
        try:
            bb = create_backbone(name)
            fs = build_featureset(source, bb, store=store, labels_per_class=labels_per_class, seed=seed,
                                  on_bad_input="skip", batch_size=batch_size, num_workers=num_workers, device=device,
                                  progress=progress)
        except (BackboneUnavailableError, ModalityError) as e:
            row.update(status="skipped", reason=str(e))
            say(f"{name}: skipped ({e})")
            continue
        row.update(pretraining=bb.source, num_features=bb.num_features, extracted=fs.extracted)
        row["seconds"]["features"] = fs.seconds
        say(f"{name}: features " + (f"extracted for {fs.extracted} items in {fs.seconds:.1f}s"
                                    if fs.extracted else f"read from the cache in {fs.seconds:.2f}s"))
        if fs.skipped:
            row["notes"].append(f"{len(fs.skipped)} unreadable inputs left out")
        idx = stratified_subset(fs.splits.labelled, fs.y, max_samples, seed)
        X = np.asarray(fs.X[idx], dtype=np.float64)
        y = fs.y[idx]
        needs_probs = [s for s in wanted if SCORES[s].needs_source_probs]
        probs = source_probabilities(bb, X) if needs_probs else None
        names_here = [s for s in wanted if probs is not None or not SCORES[s].needs_source_probs]
        if len(names_here) < len(wanted):
            row["notes"].append(f"no source classifier, so no {' / '.join(SCORES[s].label for s in needs_probs)}")
        row["n"] = int(len(idx))
        if names_here:  # scores=None: every score that applies; one that cannot use these data is noted, not fatal
            result = compute_scores(X, y, probs, None if scores is None else names_here, seed=seed)
            for s, v in result.items():
                row[s] = float(v)
                row["seconds"][s] = float(result.seconds[s])
            row["notes"] += [f"no {SCORES[s].label}: {why}" for s, why in result.skipped.items()]
            names_here = list(result)
        if verify:
            t = time.perf_counter()
            row.update(_verify(fs))
            row["seconds"]["verify"] = time.perf_counter() - t
        say(f"{name}: " + ", ".join(f"{SCORES[s].label} {row[s]:.4g}" for s in names_here)
            + (f", test accuracy {row['accuracy']:.3f}" if verify else ""))

    ok = [r for r in rows if r["status"] == "ok"]
    ok.sort(key=lambda r: (r[sort_key] is None, -(r[sort_key] if r[sort_key] is not None else 0.0)))
    for i, r in enumerate(ok, 1):
        r["rank"] = i
    return ok + [r for r in rows if r["status"] != "ok"]


def _verify(fs: Any) -> dict[str, Any]:
    """Test accuracy of the logistic head trained on the train split (C chosen on the validation split)."""
    from ..heads import create_head

    Xtr, ytr = fs.part("train")
    Xv, yv = fs.part("val")
    Xte, yte = fs.part("test")
    head = create_head("logreg").fit(Xtr, ytr, eval_set=(Xv, yv) if len(yv) else None)
    return {"accuracy": float(np.mean(head.predict(Xte) == yte)), "n_test": int(len(yte))}


_SHORT = {"logme": "LogME", "h_score": "H", "h_score_shrinkage": "H-LW", "leep": "LEEP", "nce": "NCE",
          "knn": "kNN", "probe": "probe"}


def ranking_table(rows: Sequence[dict[str, Any]], *, title: str | None = "backbone ranking (higher is better)"):
    """The rows of :func:`rank_backbones` as a ``rich`` table (print it with ``rich.console.Console().print``).

    Columns: rank, backbone, every score any row has (LogME first; H = H-score, H-LW = its Ledoit-Wolf version,
    kNN% and probe% are cross-validated accuracies in percent) and the test accuracy in percent with ``verify``.
    The caption lists skipped backbones with the reason, notes, which features were extracted in this call, and
    how long the scoring took. Skipped backbones are listed dimmed at the bottom.
    """
    from rich import box
    from rich.table import Table

    score_cols = [s for s in SCORES if any(r.get(s) is not None for r in rows)]
    has_acc = any(r.get("accuracy") is not None for r in rows)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("backbone", style="bold", overflow="fold", min_width=8)
    for s in score_cols:
        table.add_column(_SHORT.get(s, SCORES[s].label) + ("%" if SCORES[s].kind == "empirical" else ""),
                         justify="right", no_wrap=True)
    if has_acc:
        table.add_column("test%", justify="right", style="green", no_wrap=True)

    def fmt(s: str, v: Any) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}" if SCORES[s].kind == "empirical" else f"{v:.3f}"

    lines = []
    for r in rows:
        ok = r.get("status") == "ok"
        cells = [str(r.get("rank") or "-"), r["backbone"]] + [fmt(s, r.get(s)) for s in score_cols]
        if has_acc:
            cells.append(f"{100 * r['accuracy']:.1f}" if r.get("accuracy") is not None else "-")
        table.add_row(*cells, style=None if ok else "dim")
        if not ok:
            lines.append(f"skipped {r['backbone']}: {r.get('reason')}")
        lines += [f"{r['backbone']}: {note}" for note in r.get("notes", [])]
    ok_rows = [r for r in rows if r.get("status") == "ok"]
    if ok_rows:
        new = [f"{r['backbone']} ({r['extracted']})" for r in ok_rows if r.get("extracted")]
        seconds = sum(v for r in ok_rows for k, v in r.get("seconds", {}).items() if k in SCORES)
        cached = "" if len(new) == len(ok_rows) else ", the rest read from the cache"
        lines.append((f"features extracted now: {', '.join(new)}{cached}" if new else
                      "all features read from the cache") + f"; scoring took {seconds:.1f}s")
    if lines:
        table.caption = "\n".join(lines)
        table.caption_justify = "left"
    return table


def rank_correlations(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Kendall's tau and Pearson's r between each score and the verified test accuracy, across backbones.

    Only rows with an ``accuracy`` (``verify=True``) count; a score needs at least 3 such rows with a finite value.
    """
    from scipy.stats import kendalltau, pearsonr

    done = [r for r in rows if r.get("accuracy") is not None]
    out: dict[str, dict[str, float]] = {}
    for s in SCORES:
        pairs = [(r[s], r["accuracy"]) for r in done if r.get(s) is not None and np.isfinite(r[s])]
        if len(pairs) < 3:
            continue
        a, b = np.asarray(pairs, dtype=float).T
        if np.allclose(a, a[0], rtol=1e-6, atol=1e-12) or np.allclose(b, b[0], rtol=1e-6, atol=1e-12):
            continue  # e.g. the plain H-score, which is C - 1 for every backbone when N <= D: nothing to rank
        out[s] = {"kendall_tau": float(kendalltau(a, b)[0]), "pearson_r": float(pearsonr(a, b)[0]), "n": len(pairs)}
    return out


def write_rank_report(path: str | Path, rows: Sequence[dict[str, Any]], *, title: str,
                      summary: Sequence[tuple[str, str]] = ()) -> Path:
    """A self-contained HTML page: the ranking table, and with verified accuracies a plot of each score
    against the accuracy it predicts, with Kendall's tau / Pearson's r."""
    import html as _html

    from ..report import write_report
    from ..report.plots import plot_scores_vs_accuracy

    ranked = [r for r in rows if r.get("status") != "skipped"]
    score_cols = [s for s in SCORES if any(r.get(s) is not None for r in ranked)]
    head = "".join(f"<th>{_html.escape(SCORES[s].label)}</th>" for s in score_cols)
    has_acc = any(r.get("accuracy") is not None for r in ranked)

    def cell(v: Any) -> str:
        return "–" if v is None else f"{v:.4g}"

    body = "".join(
        f"<tr><td>{r.get('rank', '')}</td><td>{_html.escape(str(r['backbone']))}</td>"
        + "".join(f"<td>{cell(r.get(s))}</td>" for s in score_cols)
        + (f"<td>{cell(None if r.get('accuracy') is None else 100 * r['accuracy'])}</td>" if has_acc else "")
        + "</tr>" for r in ranked)
    skipped = "".join(f"<li>{_html.escape(str(r['backbone']))}: {_html.escape(str(r.get('reason', '')))}</li>"
                      for r in rows if r.get("status") == "skipped")
    table = (f"<table><tr><th>#</th><th>backbone</th>{head}{'<th>test accuracy %</th>' if has_acc else ''}</tr>"
             f"{body}</table>" + (f"<p>Skipped:</p><ul>{skipped}</ul>" if skipped else ""))
    sections = [{"title": "Ranking (higher is better for every score)", "html": table}]
    corr = rank_correlations(rows)
    if corr:
        import base64

        png = plot_scores_vs_accuracy(ranked, {s: SCORES[s].label for s in corr}, corr)
        img = f'<figure><img alt="scores vs accuracy" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
        sections.append({"title": "Do the scores predict the accuracy?", "html": img + (
            "<p>Each point is one backbone: its score (x) against the test accuracy of a logistic head trained on "
            "its features (y). Kendall's tau near 1 means the score ranks backbones as the real outcome does.</p>")})
    return write_report(path, {"title": title, "summary": list(summary), "sections": sections,
                               "config": {"rows": list(rows), "correlations": corr}})
