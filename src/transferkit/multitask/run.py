"""``fit DATA --tasks a,b,c``: a multitask model beside the single-task model of each task, Δm, negative transfer
flagged, and a run that saves, loads and predicts every task.

What a run directory holds::

    config.json        the data, tasks, weighting(s), split sizes, settings
    metrics.json       per weighting: each task's test metric, the single-task model's, the relative change with its
                       interval and flag; Δm; the validation scores that chose the saved weighting
    predictions.csv    test items: each task's label and prediction (multitask and single-task)
    model/             the multitask head (kind ``multitask``, its tasks in model.json) on the backbone, read by
                       ``load_run``: ``Run.predict`` gives every task's prediction
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import TransferkitError
from .metrics import compare_to_single, delta_m, primary_metric, relative_change
from .tasks import TaskData, load_tasks, split_items
from .train import MultitaskConfig, MultitaskFit, train_multitask, train_multitask_end_to_end
from .weighting import WEIGHTINGS

__all__ = ["MultitaskResult", "fit_multitask", "compare_weightings", "parse_weightings"]


def parse_weightings(spec: str | Sequence[str]) -> list[str]:
    """Weighting names from ``"equal,gradnorm"`` or ``"all"`` (every registered one), checked."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if names == ["all"]:
        return list(WEIGHTINGS)
    if not names:
        raise TransferkitError(f"weighting is empty; choose from {', '.join(WEIGHTINGS)} or 'all'")
    for n in names:
        WEIGHTINGS.get(n)
    return names


def compare_weightings(fits: dict[str, MultitaskFit], singles: dict[str, MultitaskFit], Y_test: np.ndarray,
                       tasks: Sequence[Any], seed: int = 0) -> list[dict[str, Any]]:
    """One row per weighting: each task's metric beside its single-task model's, the signed relative change (%,
    positive: better), its interval and negative-transfer flag, the worst task's change and Δm."""
    rows = []
    for name, fit in fits.items():
        per_task, changes = [], []
        for j, t in enumerate(tasks):
            single = singles.get(t.name)
            metric, higher = primary_metric(t.kind)
            m = fit.test_metrics[t.name]
            entry: dict[str, Any] = {"task": t.name, "kind": t.kind, "metric": metric, "higher_is_better": higher,
                                     "multitask": m.get(metric)}
            if single is not None:
                s = single.test_metrics[t.name]
                ch = relative_change(t.kind, m, s)
                cmp = compare_to_single(t.kind, Y_test[:, j], fit.predictions[t.name],
                                        single.predictions[t.name], seed=seed)
                entry.update(single=s.get(metric), change_percent=ch, comparison=cmp, negative=bool(cmp["flag"]))
                changes.append(ch)
            per_task.append(entry)
        known = [c for c in changes if c is not None]
        rows.append({"weighting": name, "tasks": per_task, "delta_m": delta_m(changes),
                     "worst_change": min(known) if known else None, "val_score": fit.val_scores.get("val_score"),
                     "weights": fit.weights, "best_epoch": fit.best_epoch, "seconds": fit.seconds})
    return rows


@dataclass
class MultitaskResult:
    """What :func:`fit_multitask` returns.

    Attributes:
        rows: :func:`compare_weightings` rows, one per weighting.
        singles: task -> the single-task model's test metrics.
        chosen: the weighting whose model the run keeps (the best mean validation score).
        tasks: the tasks; splits: their sizes; notes: how built-in tasks were derived.
        warnings: negative transfer, one line per flagged task.
        run_dir: the run directory (None when not written).
    """

    rows: list[dict[str, Any]]
    singles: dict[str, dict[str, float]]
    chosen: str
    tasks: list[dict[str, Any]]
    splits: dict[str, int]
    warnings: list[str]
    run_dir: Path | None
    notes: list[str] = field(default_factory=list)
    fits: dict[str, MultitaskFit] = field(default_factory=dict, repr=False)


def _warnings(rows: list[dict[str, Any]]) -> list[str]:
    from ..report.metrics import difference_text

    out = []
    for r in rows:
        for t in r["tasks"]:
            if not t.get("negative"):
                continue
            c = t["comparison"]
            if c["kind"] == "mcnemar":
                text = difference_text(c)
            else:
                text = (f"{c['change_percent']:+.1f}% MAE change against the single-task model (95% bootstrap "
                        f"interval {c['low']:+.1f} to {c['high']:+.1f})")
            out.append(f"negative transfer: task {t['task']} with weighting {r['weighting']}: {text}")
    return out


def fit_multitask(data: Any, tasks: str | Sequence[str], *, backbone: str = "lite0",
                  weighting: str | Sequence[str] = "equal", weighting_params: dict[str, dict[str, Any]] | None = None,
                  single_task: bool = True, end_to_end: bool = False, seed: int = 0,
                  config: MultitaskConfig | None = None, out: str | Path | None = None,
                  cache_dir: str | Path | None = None, input_column: str | None = None, encoding: str | None = None,
                  on_bad_input: str = "error", batch_size: int = 64, num_workers: int | None = None,
                  device: str = "auto", progress: bool = True,
                  log: Callable[[str], None] | None = None) -> MultitaskResult:
    """Train a multitask model (several heads over one shared trunk) on several tasks and set it beside the
    single-task model of each task.

    Args:
        data: a table with one column per task, or a built-in dataset with declared tasks (``drug-reviews``,
            ``clipart``).
        tasks: the task columns (``"sentiment,condition,rating"``; ``name:regression`` overrides the detected kind).
        backbone: the backbone.
        weighting: a weighting name, several (comma-separated) or ``"all"``; every one is trained on the same split
            and the run keeps the one with the best mean validation task score.
        weighting_params: weighting name -> its parameters (``{"gradnorm": {"alpha": 1.5}}``).
        single_task: also train the single-task model of each task (the reference every change is measured against).
        end_to_end: train the backbone too (images or texts through the loop) instead of a trunk on cached features.
        seed: seeds the split and every training.
        config: :class:`~transferkit.multitask.train.MultitaskConfig`.
        out: the run directory (default ``runs/<time>-<data>-<backbone>``).

    Returns:
        A :class:`MultitaskResult`.
    """
    from ..backbones import backbone_entry, create_backbone
    from ..features import FeatureStore
    from ..features.featureset import build_featureset
    from ..runs import default_run_dir, prepare_run_dir

    cfg = (config or MultitaskConfig()).validate()
    say = log or (lambda m: None)
    names = parse_weightings(weighting)
    params = dict(weighting_params or {})
    backbone_entry(backbone)
    td = load_tasks(data, tasks, input_column=input_column, encoding=encoding, on_bad_input=on_bad_input)
    bb = create_backbone(backbone)
    run_dir = prepare_run_dir(out if out is not None else default_run_dir(td.name, backbone), "fit")
    store = FeatureStore(cache_dir)
    fs = build_featureset(td.source, bb, store=store, labels="ignore", split=False, on_bad_input=on_bad_input,
                          batch_size=batch_size, num_workers=num_workers, device=device, progress=progress, log=say)
    td = TaskData(fs.source, td.tasks, td.Y[fs.positions], td.name, td.notes)
    X = np.asarray(fs.X, np.float32)
    splits = split_items(td.Y, td.tasks, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=seed)
    say(f"multitask: {len(td.source)} items, tasks " + ", ".join(f"{t.name} ({t.kind})" for t in td.tasks)
        + f"; train / val / test {len(splits.train)} / {len(splits.val)} / {len(splits.test)}")

    def train(tasks_, Y, w):
        if end_to_end:
            return train_multitask_end_to_end(td.source, Y, tasks_, splits, bb, w, weighting_params=params.get(w),
                                              config=cfg, seed=seed, progress=progress)
        return train_multitask(X, Y, tasks_, splits, w, weighting_params=params.get(w), config=cfg, seed=seed)

    t0 = time.perf_counter()
    fits: dict[str, MultitaskFit] = {}
    for w in names:
        say(f"multitask model, weighting {w}")
        fits[w] = train(td.tasks, td.Y, w)
    singles: dict[str, MultitaskFit] = {}
    if single_task and len(td.tasks) > 1:
        for j, t in enumerate(td.tasks):
            say(f"single-task model: {t.name}")
            singles[t.name] = train([t], td.Y[:, [j]], "equal")
    Y_test = td.Y[splits.test]
    rows = compare_weightings(fits, singles, Y_test, td.tasks, seed=seed)
    chosen = max(names, key=lambda n: (fits[n].val_scores.get("val_score") or -np.inf, -names.index(n)))
    warnings = _warnings(rows)
    _write(run_dir, td, fs, bb, splits, fits, singles, rows, chosen, cfg, {
        "data": str(data), "backbone": backbone, "weightings": names, "weighting_params": params, "seed": seed,
        "end_to_end": end_to_end, "seconds": time.perf_counter() - t0})
    return MultitaskResult(rows, {k: v.test_metrics[k] for k, v in singles.items()}, chosen,
                           [t.to_dict() for t in td.tasks], splits.sizes(), warnings, run_dir, list(td.notes), fits)


def _write(run_dir: Path, td: TaskData, fs: Any, bb: Any, splits: Any, fits: dict[str, MultitaskFit],
           singles: dict[str, MultitaskFit], rows: list[dict[str, Any]], chosen: str, cfg: MultitaskConfig,
           args: dict[str, Any]) -> None:
    import pandas as pd

    from .. import __version__
    from ..runs import save_model, write_csv, write_json

    write_json(run_dir / "config.json", {"transferkit": __version__, **args, "tasks": [t.to_dict() for t in td.tasks],
                                         "notes": td.notes, "splits": splits.sizes(), "config": cfg.to_dict(),
                                         "dataset": td.name, "modality": td.source.modality,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    write_json(run_dir / "metrics.json", {"rows": rows, "chosen": chosen, "warnings": _warnings(rows),
                                          "single_task": {k: v.test_metrics[k] for k, v in singles.items()},
                                          "multitask": {k: v.test_metrics for k, v in fits.items()}})
    df = pd.DataFrame({"index": fs.positions[splits.test], "input": [td.source.describe(int(i)) for i in splits.test]})
    for j, t in enumerate(td.tasks):
        y = td.Y[splits.test, j]
        fmt = (lambda v: "" if np.isnan(v) else t.classes[int(v)]) if t.kind == "classification" else \
            (lambda v: "" if np.isnan(v) else float(v))
        df[f"{t.name}"] = [fmt(v) for v in y]
        df[f"{t.name}_pred"] = [fmt(v) for v in fits[chosen].predictions[t.name].astype(np.float64)]
        if t.name in singles:
            df[f"{t.name}_single"] = [fmt(v) for v in singles[t.name].predictions[t.name].astype(np.float64)]
    write_csv(run_dir / "predictions.csv", df)
    fit = fits[chosen]
    model = fit.model
    head = getattr(model, "head", model)
    trained = model is not head
    save_model(run_dir, head, model.backbone if trained else bb, head.output_names(),
               kind="finetuned" if trained else "probe", backbone_trained=trained,
               extra={"tasks": head.tasks, "weighting": chosen, "best_epoch": fit.best_epoch})
