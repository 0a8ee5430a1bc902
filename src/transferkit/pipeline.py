"""The main job: pretrained backbone -> cached features -> shallow head, beside a from-scratch baseline.

``fit_run`` is what ``transferkit fit`` runs; the CLI is a thin layer over it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import __version__
from .data.builtin import DATASETS
from .data.sources import DataSource, from_arrays, from_folder, load_data
from .data.splits import Splits, make_splits
from .errors import BadInputError, DataError, TransferkitError
from .runs import MODEL_FORMAT, _bad_message, default_run_dir, prepare_run_dir, save_model, write_csv, write_json

# torch, timm, scikit-learn and matplotlib are imported inside the functions, after the cheap checks of the
# user's input, so that a mistake is reported in a fraction of a second.

__all__ = ["FitResult", "fit_run", "collect_inputs", "DEFAULT_LABELS_PER_CLASS", "negative_transfer_warning"]

DEFAULT_LABELS_PER_CLASS = 10
ON_BAD_INPUT = ("error", "skip")


@dataclass
class FitResult:
    """What ``fit_run`` produced.

    Attributes:
        run_dir: the run directory.
        metrics: test metrics of the transfer model.
        baseline: test metrics of the from-scratch baseline (None when skipped).
        comparison: rows {name, accuracy, macro_f1, seconds} for the table.
        warnings: e.g. negative transfer.
        timings: seconds per stage.
        extracted: how many items needed a forward pass (0 on a full cache hit).
    """

    run_dir: Path
    metrics: dict[str, Any]
    baseline: dict[str, Any] | None
    comparison: list[dict[str, Any]]
    warnings: list[str]
    timings: dict[str, float]
    extracted: int
    splits: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    advice: dict[str, Any] | None = None


def _check_choice(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise TransferkitError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


def collect_inputs(inputs: Any, *, input_column: str | None = None, on_bad_input: str = "error",
                   encoding: str | None = None) -> DataSource:
    """Inputs for prediction as one unlabelled :class:`DataSource`.

    Accepts a built-in dataset name, a folder (with or without class sub-folders), a table, a list of image
    files / folders / tables, or in-memory images or texts.

    Strings that name no existing file, folder or dataset but look like file paths (an image extension, or a
    path separator and no whitespace) are *missing files*, not texts: with ``on_bad_input="error"`` a
    :class:`BadInputError` names them; with ``"skip"`` they stay as items that feature extraction records as
    unreadable ("file not found"), so predictions list them with the reason. Missing image files named in a
    table's path column are handled the same way. ``encoding`` is the text encoding of tables (see
    :func:`~transferkit.data.from_table`).
    """
    from .data.images import IMAGE_EXTENSIONS
    from .data.sources import looks_like_path, missing_files_message

    _check_choice(on_bad_input, ON_BAD_INPUT, "--on-bad-input")
    if isinstance(inputs, DataSource):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = list(inputs)
    named = [Path(i).expanduser().exists() or str(i) in DATASETS for i in items] if all(
        isinstance(i, (str, os.PathLike)) for i in items) else []
    # files, folders, tables or datasets: when one of them exists, or every one looks like a path
    if items and named and (any(named) or all(n or looks_like_path(str(i)) for n, i in zip(named, items))):
        parts: list[DataSource] = []
        missing: list[str] = []
        for i in items:
            p = Path(i).expanduser()
            if p.is_dir():
                src = from_folder(p, on_bad_input=on_bad_input, require_classes=False)
            elif p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
                src = load_data(p, input_column=input_column, require_labels=False, on_bad_input=on_bad_input,
                                encoding=encoding)
            elif str(i) in DATASETS and not p.exists():
                src = load_data(str(i), require_labels=False)
            elif p.is_file():
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise DataError(f"{p}: not an image file or a table; give images, folders or a .csv/.tsv/.parquet")
                src = DataSource([str(p)], "paths", name=p.stem, origin=str(p))
            else:
                missing.append(str(i))
                src = DataSource([str(p)], "paths", name=p.stem, origin=str(p))  # kept only with skip
            parts.append(src)
        if missing and on_bad_input != "skip":
            raise BadInputError(missing_files_message("inputs", missing, len(items), os.getcwd()),
                                [(m, "file not found") for m in missing])
        kinds = {s.kind for s in parts}
        if len(kinds) > 1 and kinds != {"paths"}:
            raise DataError(f"inputs mix kinds of data ({', '.join(sorted(kinds))}); predict one kind at a time")
        if len(parts) == 1:
            return DataSource(parts[0].items, parts[0].kind, name=parts[0].name, origin=parts[0].origin,
                              skipped=parts[0].skipped)
        return DataSource([x for s in parts for x in s.items], parts[0].kind, name="inputs", origin="inputs",
                          skipped=[x for s in parts for x in s.skipped])
    return from_arrays(items, name="inputs", on_bad_input=on_bad_input)


def negative_transfer_warning(transfer_acc: float, scratch_acc: float, what: str = "transfer") -> str | None:
    """A warning when the transfer result is worse than the from-scratch baseline, with the gap in points."""
    if transfer_acc < scratch_acc:
        return (f"negative transfer: {what} scores {100 * transfer_acc:.1f}% test accuracy, "
                f"{100 * (scratch_acc - transfer_acc):.1f} points below the from-scratch baseline "
                f"({100 * scratch_acc:.1f}%)")
    return None


def _result_cache(store: Any, kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """A JSON result computed once per key (baselines, projections), kept beside the features."""
    digest = hashlib.sha256(json.dumps({**key, "kind": kind, "v": __version__}, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = store.root / "results" / f"{kind}-{digest}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except (OSError, ValueError):
            pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, value)
    except OSError:
        pass  # the result is still returned; only the reuse is lost
    return value, False


def _engine_settings(train_config: Any, regularizers: dict[str, dict[str, Any]] | None, seed: int) -> dict[str, Any]:
    """The fine-tuning engine's ``TrainConfig`` (seeded like the split) and loss terms, checked before any work."""
    from dataclasses import fields, replace

    from .train.engine import TrainConfig
    from .train.regularizers import create_regularizer

    if train_config is None:
        cfg = TrainConfig(seed=seed)
    elif isinstance(train_config, TrainConfig):
        cfg = train_config
    elif isinstance(train_config, dict):
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(train_config) - known)
        if unknown:
            raise TransferkitError(f"unknown training setting(s) {unknown}; valid: {', '.join(sorted(known))}")
        cfg = replace(TrainConfig(seed=seed), **train_config)
    else:
        raise TransferkitError(f"train_config must be a TrainConfig or a dict, got {type(train_config).__name__}")
    cfg.validate()
    losses = [create_regularizer(name, **(params or {})) for name, params in (regularizers or {}).items()]
    return {"config": cfg, "losses": losses}


def _view_id(view: Path) -> str:
    """``<backbone key>/<data key>`` of a feature view: the same data under two backbones gives two ids."""
    return f"{view.parent.parent.name}/{view.name}"


def _learning_curve(head_name: str, head_params: dict, X: np.ndarray, y: np.ndarray, splits: Splits,
                    classes: list[str], seed: int) -> list[dict[str, Any]]:
    """Test accuracy of the head trained on 1, 2, 5, 10, ... labels per class drawn from the labelled split."""
    from .heads import create_head

    lab = splits.labelled
    per_class = np.bincount(y[lab], minlength=len(classes))
    top = int(per_class[per_class > 0].min()) if (per_class > 0).any() else 0
    budgets = [b for b in (1, 2, 5, 10, 20, 50, 100, 200, 500) if b < top] + ([top] if top else [])
    rng = np.random.default_rng(seed)
    Xt, yt = np.asarray(X[splits.test], dtype=np.float32), y[splits.test]
    points = []
    for b in budgets:
        idx = np.concatenate([rng.permutation(lab[y[lab] == c])[:b] for c in np.unique(y[lab])])
        if len(np.unique(y[idx])) < 2:
            continue
        params = dict(head_params)
        if head_name == "logreg":
            params.setdefault("C", 1.0)
        head = create_head(head_name, **params).fit(np.asarray(X[idx], dtype=np.float32), y[idx])
        points.append({"labels_per_class": b, "transfer": float((head.predict(Xt) == yt).mean()),
                       "chance": 1.0 / len(classes)})
    return points


def fit_run(data: Any = "clipart", *, backbone: str = "lite0", head: str = "logreg",
            head_params: dict[str, Any] | None = None, labels_per_class: int | None | str = "auto",
            val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0, out: str | Path | None = None,
            cache_dir: str | Path | None = None, baseline: bool = True, report: bool = True,
            on_bad_input: str = "error", batch_size: int = 64, num_workers: int | None = None, device: str = "auto",
            input_column: str | None = None, label_column: str | None = None, progress: bool = True,
            log: Callable[[str], None] | None = None, strategy: str = "probe",
            strategy_params: dict[str, Any] | None = None, train_config: Any = None,
            regularizers: dict[str, dict[str, Any]] | None = None, resume: bool = False) -> FitResult:
    """Extract (or read cached) features, train a shallow head, compare with a from-scratch baseline, write a run.

    Args:
        data: a built-in dataset name, a folder of class sub-folders, a table, or a :class:`DataSource`.
        backbone: backbone registry name.
        head: ``logreg``, ``linear`` or ``mlp``; ``head_params`` go to its constructor.
        labels_per_class: labelled budget per class (the rest is the test split); ``"auto"`` means
            10 for built-in datasets and every label (split into fractions) for a user's data.
        val_fraction, test_fraction: split shares (validation is carved from the labelled samples).
        seed: seed of the split and of training.
        out: run directory (default ``runs/<time>-<data>-<backbone>``).
        cache_dir: feature-cache folder (default ``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``).
        baseline: also train the from-scratch baseline on the same labels.
        report: write ``report.html``.
        on_bad_input: ``"error"`` or ``"skip"`` for unreadable inputs.
        log: called with one-line progress messages.
        strategy: ``probe`` (frozen backbone, cached features, shallow head) or a fine-tuning strategy of the
            engine (``finetune``, ``partial``, ``gradual``, ``scratch``); a fine-tuned run still reports the
            probe beside it.
        strategy_params: e.g. ``{"freeze": 3}`` for ``partial``.
        train_config: a :class:`~transferkit.train.engine.TrainConfig` or a dict of its fields (fine-tuning).
        regularizers: fine-tuning loss terms by name, e.g. ``{"l2sp": {"alpha": 0.01}, "bss": {"eta": 0.001}}``.
        resume: continue a fine-tuning run killed in ``out`` from its last checkpoint.

    Returns:
        A :class:`FitResult`.
    """
    say = log or (lambda msg: None)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    _check_choice(on_bad_input, ON_BAD_INPUT, "--on-bad-input")
    _check_choice(head, ["logreg", "linear", "mlp"], "--head")
    engine = None
    if strategy != "probe":
        from .train import strategies as engine_strategies

        if strategy != "auto":
            engine_strategies.create_strategy(strategy, **(strategy_params or {}))  # unknown names fail now
        engine = _engine_settings(train_config, regularizers, seed)
    is_builtin = isinstance(data, str) and data in DATASETS and not os.path.exists(data)
    if labels_per_class == "auto":
        labels_per_class = DEFAULT_LABELS_PER_CLASS if is_builtin else None

    from .backbones import create_backbone, get_spec

    spec, _ = get_spec(backbone)  # unknown names and modality mismatches fail before the slow work
    t = time.perf_counter()
    source = load_data(data, input_column=input_column, label_column=label_column, on_bad_input=on_bad_input)
    source.require_labels()
    run_dir = prepare_run_dir(out if out is not None else default_run_dir(source.name, backbone))
    if spec.modality != source.modality:
        from .errors import ModalityError

        raise ModalityError(f"{source.origin or source.name} holds {source.modality} data but backbone {backbone!r} "
                            f"takes {spec.modality}s; pick a{'n' if source.modality == 'image' else ''} "
                            f"{source.modality} backbone (see `transferkit backbones`)")
    from .features import FeatureStore
    from .heads import create_head

    bb = create_backbone(backbone)
    if source.modality != bb.modality:
        from .errors import ModalityError

        raise ModalityError(f"{source.origin or source.name} holds {source.modality} data but backbone {backbone!r} "
                            f"takes {bb.modality}s; pick a{'n' if source.modality == 'image' else ''} {source.modality} "
                            "backbone (see `transferkit backbones`)")
    skipped = list(source.skipped)
    header_bad = source.check_inputs()
    if header_bad:
        if on_bad_input == "error":
            raise BadInputError(_bad_message([(0, p, r) for p, r in header_bad]), header_bad)
        bad_set = {p for p, _ in header_bad}
        source = source.subset([i for i, p in enumerate(source.items) if p not in bad_set])
        skipped += header_bad
    timings["load"] = time.perf_counter() - t
    say(f"data: {source.origin or source.name}: {len(source)} {source.modality}s, {len(source.classes)} classes")

    t = time.perf_counter()
    store = FeatureStore(cache_dir)
    feats = store.get(bb, source, batch_size=batch_size, num_workers=num_workers, device=device, progress=progress)
    timings["features"] = time.perf_counter() - t
    say(f"features: {bb.name} ({bb.num_features}-d) " + (f"extracted {feats.extracted} in {feats.seconds:.1f}s"
        if feats.extracted else f"read from cache in {feats.seconds:.2f}s ({feats.path.parent.parent})"))
    if feats.bad:
        if on_bad_input == "error":
            raise BadInputError(_bad_message(feats.bad), [(b[1], b[2]) for b in feats.bad])
        skipped += [(b[1], b[2]) for b in feats.bad]
    keep = feats.good
    classes = source.classes
    y_all = source.encoded_labels(classes)
    X = feats.X if len(keep) == len(source) else np.asarray(feats.X[keep])
    src = source if len(keep) == len(source) else source.subset(keep)
    y = y_all[keep]
    if len(np.unique(y)) < 2:
        raise DataError(f"{source.origin or source.name}: fewer than 2 classes are left after skipping bad inputs")
    splits = make_splits(y, labels_per_class=labels_per_class, val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed, classes=classes)

    advice = None
    if strategy == "auto":
        from .transferability.advisor import advise
        from .transferability.source import source_probabilities

        Xl = np.asarray(X[splits.labelled], dtype=np.float32)
        advice = advise(Xl, y[splits.labelled], source_probs=source_probabilities(bb, Xl), seed=seed)
        strategy = advice.strategy
        say(f"strategy auto -> {strategy}: " + "; ".join(advice.reasons))
        if strategy == "probe":
            engine = None
    t = time.perf_counter()
    params = dict(head_params or {})
    if head != "logreg":
        params.setdefault("random_state", seed)
    model = create_head(head, **params)
    Xtr = np.asarray(X[splits.train], dtype=np.float32)
    eval_set = (np.asarray(X[splits.val], dtype=np.float32), y[splits.val]) if len(splits.val) else None
    model.fit(Xtr, y[splits.train], eval_set=eval_set)
    Xte = np.asarray(X[splits.test], dtype=np.float32)
    proba = model.predict_proba(Xte)
    y_pred = model.classes_[proba.argmax(1)]
    timings["head"] = time.perf_counter() - t

    from .report import classification_metrics

    metrics = classification_metrics(y[splits.test], y_pred, classes)
    transfer_name = f"{bb.name} + {head} head"
    comparison = [{"name": transfer_name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                   "seconds": timings["features"] + timings["head"], "kind": "transfer"}]
    ft = None
    if engine is not None:
        from .train.engine import finetune

        t = time.perf_counter()
        say(f"fine-tuning: strategy {strategy} {strategy_params or ''}".rstrip())
        ft = finetune(src, y, splits, backbone, strategy, engine["config"], run_dir, resume=resume,
                      strategy_params=strategy_params, extra_losses=engine["losses"], classes=classes,
                      progress=progress, log=say)
        timings["finetune"] = time.perf_counter() - t
        proba = ft.proba
        y_pred = np.asarray(ft.y_pred)
        probe_row = comparison[0] | {"name": transfer_name + " (probe, for reference)", "kind": "reference"}
        metrics = classification_metrics(y[splits.test], y_pred, classes)
        transfer_name = f"{bb.name} {strategy}" + (f" {strategy_params}" if strategy_params else "")
        comparison = [{"name": transfer_name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                       "seconds": timings["finetune"], "kind": "transfer"}, probe_row]
    warnings: list[str] = []
    base_metrics = None
    if baseline:
        t = time.perf_counter()
        from .train.scratch import train_scratch

        def compute() -> dict[str, Any]:
            r = train_scratch(src, y, splits.train, splits.val, splits.test, len(classes), seed=seed)
            return {"name": r.name, "y_pred": r.y_pred.tolist(), "seconds": r.seconds, "details": r.details}

        key = {"data": src.fingerprint(), "labels": hashlib.sha256(y.tobytes()).hexdigest(),
               "splits": [splits.train.tolist(), splits.val.tolist(), splits.test.tolist()], "seed": seed}
        res, hit = _result_cache(store, "scratch", key, compute)
        base_metrics = classification_metrics(y[splits.test], np.asarray(res["y_pred"]), classes)
        timings["baseline"] = time.perf_counter() - t
        label = "small CNN from scratch" if res["name"] == "small-cnn" else "TF-IDF + logreg from scratch"
        comparison.append({"name": label, "accuracy": base_metrics["accuracy"], "macro_f1": base_metrics["macro_f1"],
                           "seconds": res["seconds"], "kind": "scratch", "cached": hit})
        w = negative_transfer_warning(metrics["accuracy"], base_metrics["accuracy"], transfer_name)
        if w:
            warnings.append(w)

    config = {
        "transferkit": __version__, "python": platform.python_version(), "data": str(data if not isinstance(data, DataSource) else data.origin),
        "dataset": source.name, "modality": source.modality, "classes": classes, "backbone": bb.name,
        "backbone_identity": bb.identity(), "head": head, "head_params": params,
        "head_fitted": {k: v for k, v in model.get_params().items()} | ({"C_": model.C_} if hasattr(model, "C_") else {}),
        "labels_per_class": labels_per_class, "val_fraction": val_fraction, "test_fraction": test_fraction,
        "seed": seed, "splits": splits.sizes(), "on_bad_input": on_bad_input, "cache": str(store.root),
        "strategy": strategy, "strategy_params": strategy_params,
        "advice": None if advice is None else advice.to_dict(),
        "finetune": None if ft is None else ft.config,
        "features_view": str(feats.path), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(run_dir / "config.json", config)
    info = {"backbone": bb.name, "backbone_weights": bb.weights_digest(), "modality": bb.modality,
            "preprocessing": bb.data_config(), "classes": classes, "num_features": bb.num_features}
    if ft is None:
        save_model(run_dir, model.to_module(), info)
    else:
        write_json(run_dir / "model" / "model.json", {"format": MODEL_FORMAT, **info, "kind": "finetuned",
                                                      "strategy": strategy, "preprocessing": ft.preprocessing,
                                                      "weights": str(Path(ft.model_path).relative_to(run_dir))})
    pred_df = pd.DataFrame({"index": splits.test, "input": [src.describe(int(i)) for i in splits.test],
                            "label": [classes[i] for i in y[splits.test]],
                            "prediction": [classes[i] for i in y_pred], "correct": y_pred == y[splits.test]})
    for j, c in enumerate(model.classes_ if ft is None else range(len(classes))):
        pred_df[f"p_{classes[c]}"] = proba[:, j]
    write_csv(run_dir / "predictions.csv", pred_df)
    if skipped:
        write_csv(run_dir / "skipped.csv", pd.DataFrame(skipped, columns=["input", "reason"]))

    timings["total_before_report"] = time.perf_counter() - t_all
    metrics_doc = {"transfer": metrics, "baseline": base_metrics, "comparison": comparison, "warnings": warnings,
                   "timings": timings, "extracted": feats.extracted, "skipped": len(skipped)}
    if report:
        t = time.perf_counter()
        _write_report(run_dir, store, feats, X, y, splits, classes, bb.name, head, params, metrics, comparison,
                      warnings, config, skipped, seed, model)
        timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    write_json(run_dir / "metrics.json", metrics_doc)
    return FitResult(run_dir, metrics, base_metrics, comparison, warnings, timings, feats.extracted,
                     splits.sizes(), skipped, None if advice is None else advice.to_dict())


def _write_report(run_dir: Path, store: Any, feats, X, y, splits: Splits, classes: list[str], backbone: str,
                  head: str, params: dict, metrics: dict, comparison: list, warnings: list[str], config: dict,
                  skipped: list, seed: int, model) -> None:
    from .report import projection_2d, write_report

    idx = np.concatenate([splits.labelled, splits.test])

    def compute_projection() -> dict[str, Any]:
        coords, used, method = projection_2d(np.asarray(X[idx], dtype=np.float32), seed=seed)
        return {"coords": coords.tolist(), "used": used.tolist(), "method": method}

    key = {"view": _view_id(feats.path), "rows": hashlib.sha256(np.asarray(idx).tobytes()).hexdigest(), "seed": seed}
    proj, _ = _result_cache(store, "projection", key, compute_projection)
    used = idx[np.asarray(proj["used"], dtype=np.int64)]
    is_test = np.isin(used, splits.test)
    curve_key = {"view": _view_id(feats.path), "y": hashlib.sha256(y.tobytes()).hexdigest(), "seed": seed,
                 "labelled": splits.labelled.tolist(), "test": hashlib.sha256(splits.test.tobytes()).hexdigest(),
                 "head": head, "params": params}
    curve, _ = _result_cache(store, "learning-curve", curve_key,
                             lambda: {"points": _learning_curve(head, params, X, y, splits, classes, seed)})
    curve = curve["points"]
    scratch = next((c for c in comparison if c["kind"] == "scratch"), None)
    if scratch and curve:
        n_lab = int(np.bincount(y[splits.labelled]).max())
        for p in curve:
            if p["labels_per_class"] == n_lab:
                p["scratch"] = scratch["accuracy"]
    summary = [("dataset", f"{config['dataset']} ({config['modality']}, {len(classes)} classes)"),
               ("backbone", backbone), ("head", f"{head} {params or ''}".strip()),
               ("labels per class", str(config["labels_per_class"] or "all (fractions)")),
               ("train / val / test", " / ".join(str(v) for v in splits.sizes().values())),
               ("features", config["features_view"]),
               ("strategy", str(config.get("strategy", "probe")))]
    sections = []
    if config.get("advice"):
        import html as _html

        items = "".join(f"<li>{_html.escape(r)}</li>" for r in config["advice"]["reasons"])
        sections.append({"title": f"Why {config['advice']['strategy']}? (--strategy auto)", "html": f"<ul>{items}</ul>"})
    write_report(run_dir / "report.html", {"sections": sections,
        "title": f"transferkit fit: {config['dataset']} with {backbone}",
        "subtitle": f"run {run_dir.name}, {config['created']}",
        "summary": summary, "comparison": comparison, "chance": 1.0 / len(classes), "warnings": warnings,
        "metrics": metrics, "classes": classes, "learning_curve": curve,
        "projection": {"coords": np.asarray(proj["coords"]), "labels": y[used], "markers": is_test.astype(int),
                       "marker_names": ["labelled", "test"], "method": proj["method"]},
        "bad_inputs": skipped, "config": config,
    })
