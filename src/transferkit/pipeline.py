"""The main job: pretrained backbone -> cached features -> shallow head, beside a from-scratch baseline.

``fit_run`` is what ``transferkit fit`` runs; the CLI is a thin layer over it. Its stages: check the settings,
get the :class:`~transferkit.features.featureset.FeatureSet` (features cached, bad inputs handled, splits), train
the head (the probe), optionally fine-tune through the training loop, train the from-scratch baseline on the same
labels, and write the run (config, metrics, predictions, model, report).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import __version__
from .data.builtin import DATASETS
from .data.sources import DataSource
from .data.splits import Splits
from .errors import TransferkitError
from .runs import default_run_dir, prepare_run_dir, save_model, write_csv, write_json

# torch, timm, scikit-learn and matplotlib are imported inside the functions, after the cheap checks of the
# user's input, so that a mistake is reported in a fraction of a second.

__all__ = ["FitResult", "fit_run", "DEFAULT_LABELS_PER_CLASS", "negative_transfer_warning", "check_choice",
           "engine_settings"]

DEFAULT_LABELS_PER_CLASS = 10


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
        splits: items per split.
        skipped: ``(input, reason)`` of every input left out.
        advice: the advisor's choice and reasons (``strategy="auto"``).
        head: the head that was trained.
        head_reason: why, when ``head="auto"`` chose it (None when the head was named).
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
    head: str = ""
    head_reason: str | None = None


def check_choice(value: str, allowed: Any, what: str) -> None:
    """Raise a clear error unless ``value`` is one of ``allowed`` (``what`` names the parameter)."""
    if value not in allowed:
        raise TransferkitError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


def negative_transfer_warning(correct_transfer: Any, correct_baseline: Any, what: str = "transfer",
                              alpha: float = 0.05) -> str | None:
    """A warning when the transfer result is significantly worse than the from-scratch baseline on the same test
    items (McNemar's exact test at ``alpha``), with the difference and its interval; None otherwise (also when it
    is lower by an amount the test cannot tell from noise)."""
    from .report.metrics import difference_text, negative_transfer

    t = negative_transfer(correct_transfer, correct_baseline, alpha=alpha)
    if not t["flag"]:
        return None
    acc_t = float(np.mean(correct_transfer))
    acc_b = float(np.mean(correct_baseline))
    return (f"negative transfer: {what} scores {100 * acc_t:.1f}% test accuracy, {100 * (acc_b - acc_t):.1f} points "
            f"below the from-scratch baseline ({100 * acc_b:.1f}%) on the same {t['n']} test items: "
            f"{difference_text(t)}")


def engine_settings(train_config: Any, regularizers: dict[str, dict[str, Any]] | None, seed: int,
                    defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fine-tuning engine's ``TrainConfig`` (seeded like the split) and loss terms, checked before any work.

    ``defaults`` are a strategy's own starting settings (its ``train_defaults`` capability, e.g. SetFit's one epoch
    at lr 2e-5); ``train_config`` given as a dict overrides them.
    """
    from dataclasses import fields, replace

    from .train.engine import TrainConfig
    from .train.regularizers import create_regularizer

    base = TrainConfig(seed=seed, **(defaults or {}))
    if train_config is None:
        cfg = base
    elif isinstance(train_config, TrainConfig):
        cfg = train_config
    elif isinstance(train_config, dict):
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(train_config) - known)
        if unknown:
            raise TransferkitError(f"unknown training setting(s) {unknown}; valid: {', '.join(sorted(known))}")
        cfg = replace(base, **train_config)
    else:
        raise TransferkitError(f"train_config must be a TrainConfig or a dict, got {type(train_config).__name__}")
    cfg.validate()
    losses = [create_regularizer(name, **(params or {})) for name, params in (regularizers or {}).items()]
    return {"config": cfg, "losses": losses}


def _view_id(fs: Any) -> str:
    """``<backbone key>/<data key>`` of a feature set's cached view: the same data under two backbones differ."""
    view = Path(fs.path)
    return f"{view.parent.parent.name}/{view.name}" + ("" if len(fs.source) == len(fs.X) and not fs.skipped
                                                       else f"#{hashlib.sha256(fs.positions.tobytes()).hexdigest()[:8]}")


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


def fit_run(data: Any = "clipart", *, backbone: str = "lite0", head: str = "auto",
            head_params: dict[str, Any] | None = None, labels_per_class: int | None | str = "auto",
            val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0, out: str | Path | None = None,
            cache_dir: str | Path | None = None, baseline: bool = True, report: bool = True,
            on_bad_input: str = "error", batch_size: int = 64, num_workers: int | None = None, device: str = "auto",
            input_column: str | None = None, label_column: str | None = None, progress: bool = True,
            log: Callable[[str], None] | None = None, strategy: str = "probe",
            strategy_params: dict[str, Any] | None = None, train_config: Any = None,
            regularizers: dict[str, dict[str, Any]] | None = None, resume: bool = False,
            encoding: str | None = None, unlabelled: Any = None, semi_level: str = "features",
            semi_config: Any = None, corpus: Any = None, engine: str = "auto",
            feature_precision: str = "32") -> FitResult:
    """Extract (or read cached) features, train a shallow head, compare with a from-scratch baseline, write a run.

    Args:
        data: a built-in dataset name, a folder of class sub-folders, a table, or a :class:`DataSource`.
        backbone: backbone registry name.
        head: a head of :data:`~transferkit.heads.HEADS` (``logreg``, ``linear``, ``mlp``, the few-shot heads
            ``ncm-cl2n``, ``ncm-l2n``, ``protonet``, ``logreg-l2n``, ``chen-baseline``, ``chen-baseline++``), or
            ``"auto"``: ``logreg``, or with 1-4 training labels per class and no validation split (too few to hold
            one out) the few-shot default (:func:`~transferkit.fewshot.choose_head`, which says why). ``head_params`` go to its
            constructor.
        labels_per_class: labelled budget per class (the rest is the test split); ``"auto"`` means
            10 for built-in datasets and every label (split into fractions) for a user's data.
        val_fraction, test_fraction: split shares (validation is carved from the labelled samples).
        seed: seed of the split and of training.
        out: run directory (default ``runs/<time>-<data>-<backbone>``); it must be new or empty (or hold the
            fine-tuning run being resumed).
        cache_dir: feature-cache folder (default ``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``).
        baseline: also train the from-scratch baseline on the same labels.
        report: write ``report.html``.
        on_bad_input: ``"error"`` or ``"skip"`` for unreadable inputs.
        log: called with one-line progress messages.
        strategy: ``probe`` (frozen backbone, cached features, shallow head), ``auto`` (the advisor picks), a
            fine-tuning strategy of the engine (``finetune``, ``partial``, ``gradual``, ``scratch``) or a
            semi-supervised method (``fixmatch``, ``flexmatch``, ``freematch``, ``softmatch``: needs
            ``unlabelled``); such a run still reports the probe beside it (and self-training and label spreading for
            a semi-supervised one).
        strategy_params: e.g. ``{"freeze": 3}`` for ``partial``, ``{"tau": 0.9}`` for ``fixmatch``.
        train_config: a :class:`~transferkit.train.engine.TrainConfig` or a dict of its fields (fine-tuning).
        regularizers: fine-tuning loss terms by name, e.g. ``{"l2sp": {"alpha": 0.01}, "bss": {"eta": 0.001}}``.
        resume: continue a fine-tuning run killed in ``out`` from its last checkpoint.
        encoding: a table's text encoding (detected when None); also the encoding of ``corpus`` files.
        unlabelled: inputs without labels for a semi-supervised strategy: ``"rest"`` (with ``labels_per_class``,
            every item neither labelled nor in the test share ``test_fraction`` of its class), or a folder / table
            / DataSource of other inputs.
        semi_level: ``features`` (frozen backbone, cached augmented views, a head: seconds after one extraction)
            or ``end-to-end`` (the backbone trains too, with ``train_config``).
        semi_config: a :class:`~transferkit.semi.fit.SemiConfig` or a dict of its fields (``features`` level).
        engine: the feature-extraction engine: ``auto`` (the fastest that matches eager PyTorch within the
            tolerance), ``torch`` or ``onnx`` (:mod:`transferkit.features.engines`).
        feature_precision: ``32``, ``bf16``, ``16`` or ``int8`` for the extracted features (not fine-tuning's).
        corpus: unlabelled texts (a text file, a folder of text files, a table, or a list) for a backbone trained on
            the user's corpus (``word2vec``, ``fasttext``, ``simcse:<encoder>``: its ``corpus_method`` capability);
            the data's own texts are added without their labels. Pretrained once, cached by corpus and settings.

    Returns:
        A :class:`FitResult`.
    """
    from .backbones import backbone_entry, create_backbone
    from .features import FeatureStore
    from .features.featureset import ON_BAD_INPUT, build_featureset
    from .heads import HEADS

    say = log or (lambda msg: None)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    check_choice(on_bad_input, ON_BAD_INPUT, "on_bad_input")
    from .features.engines import check_engine_options

    check_engine_options(engine, feature_precision)
    feature_engine = engine  # ``engine`` is the fine-tuning engine's settings below
    if head != "auto":
        HEADS.get(head)  # unknown heads fail before any work
    engine = None
    safe = train_config.get("safe") if isinstance(train_config, dict) else getattr(train_config, "safe", None)
    if strategy in ("probe", "auto") and safe is not None:
        why = ("keeps it frozen" if strategy == "probe" else
               "may choose the probe, which keeps the unchanged backbone frozen")
        raise TransferkitError(f"safe={safe!r} changes the backbone before fine-tuning it, but strategy {strategy!r} "
                               f"{why}; use strategy='finetune' (or partial, gradual)")
    semi = _check_semi(strategy, strategy_params, unlabelled, semi_level, semi_config, labels_per_class, data)
    if semi is not None:
        engine = engine_settings(train_config, regularizers, seed) if semi_level == "end-to-end" else None
    elif strategy != "probe":  # the engine's settings are checked now, also for auto (whose race may fine-tune)
        from .train.strategies import STRATEGIES, create_strategy

        entry = None
        if strategy != "auto":
            create_strategy(strategy, **(strategy_params or {}))  # unknown names fail now
            entry = STRATEGIES.get(strategy)
        engine = engine_settings(train_config, regularizers, seed,
                                 defaults=entry.cap("train_defaults") if entry is not None else None)
        engine["trainer"] = entry.cap("trainer") if entry is not None else None  # its own trainer, or the engine
    refit = train_config.get("refit") if isinstance(train_config, dict) else getattr(train_config, "refit", False)
    if refit and (semi is not None or strategy in ("auto", "probe") or (engine or {}).get("trainer") is not None):
        why = ("races several strategies" if strategy == "auto" else "is semi-supervised (it trains on the "
               "unlabelled items too)" if semi is not None else "trains no network (its head's C is chosen on "
               "validation)" if strategy == "probe" else "has its own trainer")
        raise TransferkitError(f"refit=True retrains one fine-tuning run on all labels; strategy={strategy} {why}: "
                               "use strategy=finetune (or partial, gradual, lora, adapter, bitfit), or leave out "
                               "refit=True")
    is_builtin = isinstance(data, str) and data in DATASETS and not os.path.exists(data)
    if labels_per_class == "auto":
        labels_per_class = DEFAULT_LABELS_PER_CLASS if is_builtin else None
    if labels_per_class is not None and (not isinstance(labels_per_class, int) or labels_per_class < 1):
        raise TransferkitError(f"labels_per_class must be an integer >= 1 (or None for fraction splits); got "
                               f"{labels_per_class!r}")
    if refit and labels_per_class is not None and (labels_per_class < 5 or round(labels_per_class * val_fraction) < 1):
        # the split would keep no validation item (make_splits: a class needs 5 labelled items): say so before the
        # features are extracted, in the engine's words
        raise TransferkitError(f"refit=True retrains for the number of epochs chosen on the validation split, but "
                               f"{labels_per_class} labels per class at val_fraction={val_fraction:g} keep no "
                               "validation item (a class needs at least 5 labelled items to keep any for "
                               "validation); give one (labels_per_class=5 or more, and val_fraction above 0) or "
                               "leave out refit")
    entry_bb = backbone_entry(backbone)  # unknown names fail before the slow work
    if head_params and head != "auto":  # auto's choice is checked against them once the labels are known
        HEADS.create(head, **head_params)  # unknown head parameters fail before the slow work
    if corpus is not None and not entry_bb.cap("corpus_method"):
        raise TransferkitError(f"corpus= is for backbones trained on your texts (word2vec, fasttext, simcse:<encoder>); "
                               f"backbone {backbone!r} is pretrained elsewhere. Leave corpus= out, or choose one of "
                               "those")
    pretrained = None
    if entry_bb.cap("corpus_method"):  # trained on the user's texts first (word2vec, fasttext, simcse:<encoder>)
        run_dir = prepare_run_dir(out if out is not None else default_run_dir(_data_name(data), backbone), "fit",
                                  resume=resume)
        t = time.perf_counter()
        pretrained = _pretrain_backbone(backbone, corpus, data, input_column=input_column, label_column=label_column,
                                        encoding=encoding, cache_dir=cache_dir, progress=progress, say=say)
        bb = pretrained.backbone
        timings["pretrain"] = time.perf_counter() - t
        t = time.perf_counter()
    else:
        t = time.perf_counter()
        bb = create_backbone(backbone)
        run_dir = prepare_run_dir(out if out is not None else default_run_dir(_data_name(data), backbone), "fit",
                                  resume=resume)
    store = FeatureStore(cache_dir)
    fs = build_featureset(data, bb, store=store, labels_per_class=labels_per_class, val_fraction=val_fraction,
                          test_fraction=test_fraction, seed=seed,
                          unlabelled_fraction="rest" if unlabelled == "rest" else 0.0, on_bad_input=on_bad_input, batch_size=batch_size,
                          num_workers=num_workers, device=device, input_column=input_column,
                          label_column=label_column, encoding=encoding, progress=progress, log=say, engine=feature_engine,
                          feature_precision=feature_precision)
    timings["features"] = time.perf_counter() - t
    source, splits, classes, y = fs.source, fs.splits, fs.classes, fs.y
    say(f"data: {source.origin or source.name}: {len(source)} {source.modality}s, {len(classes)} classes")

    t = time.perf_counter()
    params = dict(head_params or {})
    requested, head_reason = head, None
    if head == "auto":
        from .fewshot import resolve_auto_head

        head, head_reason = resolve_auto_head(y[splits.train], params, validation=len(splits.val) > 0)
        say(f"head: {head} ({head_reason})")
    if HEADS.get(head).kind == "torch":
        params.setdefault("random_state", seed)
    model, proba, y_pred = _fit_head(fs, head, params)
    timings["head"] = time.perf_counter() - t
    advice = raced = None
    spent: list[Path] = []  # auto: race runs whose checkpoints go once the run is written
    if strategy == "auto":
        t = time.perf_counter()
        advice, strategy, raced, spent = _race(fs, model, engine, run_dir, resume, progress, say)
        timings["race"] = time.perf_counter() - t
        if strategy == "probe":
            engine = None

    from .report import classification_metrics

    metrics = classification_metrics(y[splits.test], y_pred, classes)
    transfer_name = f"{bb.name} + {head} head"
    comparison = [{"name": transfer_name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                   "seconds": timings.get("pretrain", 0.0) + timings["features"] + timings["head"],
                   "kind": "transfer"}]
    ft = outcome = None
    if semi is not None:
        from .semi.run import baseline_rows, semi_fit

        t = time.perf_counter()
        outcome = semi_fit(fs, bb, store, strategy, level=semi_level,
                           unlabelled=None if unlabelled == "rest" else unlabelled, config=semi,
                           train_config=None if engine is None else engine["config"], method_params=strategy_params,
                           run_dir=run_dir, resume=resume, progress=progress, log=say, num_workers=num_workers,
                           batch_size=batch_size, input_column=input_column, encoding=encoding)
        timings["semi"] = time.perf_counter() - t
        ft = outcome.finetuned
        proba, y_pred = outcome.proba, np.asarray(outcome.y_pred)
        probe_row = comparison[0] | {"name": transfer_name + " (probe on the labels alone)", "kind": "reference"}
        metrics = classification_metrics(y[splits.test], y_pred, classes)
        transfer_name = f"{bb.name} {strategy} ({semi_level}, {outcome.summary['n_unlabelled']} unlabelled)"
        comparison = [{"name": transfer_name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                       "seconds": timings["semi"], "kind": "transfer"}, probe_row]
        if len(splits.unlabelled) or outcome.other_features is not None:
            for name, pred, secs in baseline_rows(fs, outcome.other_features):
                m = classification_metrics(y[splits.test], pred, classes)
                comparison.append({"name": f"{bb.name} features + {name}", "accuracy": m["accuracy"],
                                   "macro_f1": m["macro_f1"], "seconds": secs, "kind": "reference"})
        engine = None
    if engine is not None:
        from .train.engine import finetune

        t = time.perf_counter()
        if raced is not None:  # auto: the race already trained the winner
            ft = raced[strategy]
        else:
            say(f"fine-tuning: strategy {strategy} {strategy_params or ''}".rstrip())
            trainer = engine["trainer"] or finetune  # a strategy with its own trainer declares it (setfit)
            ft = trainer(source, y, splits, bb, strategy, engine["config"], run_dir, resume=resume,
                         strategy_params=strategy_params, extra_losses=engine["losses"], classes=classes,
                         progress=progress, log=say, export=False)
        timings["finetune"] = time.perf_counter() - t + (timings.get("race", 0.0) if raced is not None else 0.0)
        proba, y_pred = ft.proba, np.asarray(ft.y_pred)
        probe_row = comparison[0] | {"name": transfer_name + " (probe, for reference)", "kind": "reference"}
        metrics = classification_metrics(y[splits.test], y_pred, classes)
        transfer_name = f"{bb.name} {strategy}" + (f" {strategy_params}" if strategy_params else "")
        comparison = [{"name": transfer_name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                       "seconds": timings["finetune"], "kind": "transfer"}, probe_row]
    warnings: list[str] = []
    base_metrics = None
    if baseline:
        t = time.perf_counter()
        base_metrics, row, base_pred = _baseline(fs, store, seed, progress)
        timings["baseline"] = time.perf_counter() - t
        from .report.metrics import paired_difference

        truth = y[splits.test]
        row["difference"] = paired_difference(y_pred == truth, base_pred == truth)  # transfer minus scratch
        comparison.append(row)
        w = negative_transfer_warning(y_pred == truth, base_pred == truth, transfer_name)
        if w:
            warnings.append(w)

    config = {
        "transferkit": __version__, "python": platform.python_version(), "data": _data_name(data, full=True),
        "dataset": source.name, "modality": source.modality, "classes": classes, "backbone": bb.name,
        "backbone_identity": bb.identity(), "head": head, "head_requested": requested, "head_reason": head_reason,
        "head_params": params,
        "head_fitted": {k: v for k, v in model.get_params().items()} | ({"C_": model.C_} if hasattr(model, "C_") else {}),
        "labels_per_class": labels_per_class, "val_fraction": val_fraction, "test_fraction": test_fraction,
        "seed": seed, "splits": splits.sizes(), "on_bad_input": on_bad_input, "cache": str(store.root),
        "strategy": strategy, "strategy_params": strategy_params,
        "advice": None if advice is None else advice.to_dict(),
        "semi": None if outcome is None else {**outcome.summary, "history": outcome.history},
        "unlabelled": None if unlabelled is None else str(unlabelled if isinstance(unlabelled, (str, Path))
                                                          else getattr(unlabelled, "origin", None) or "given"),
        "finetune": None if ft is None else ft.config,
        "features_view": str(fs.path), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "pretrained": None if pretrained is None else {**pretrained.info, "cached": pretrained.cached,
                                                       "path": str(pretrained.path)},
    }
    write_json(run_dir / "config.json", config)
    if outcome is not None and outcome.head is not None:
        save_model(run_dir, outcome.head, bb, classes, kind="probe",
                   extra={"strategy": strategy, "semi_level": semi_level, "best_epoch": outcome.summary["best_epoch"]})
    else:
        _save_fit_model(run_dir, model, bb, ft, classes, strategy)
    pred_df = pd.DataFrame({"index": fs.positions[splits.test], "input": [source.describe(int(i)) for i in splits.test],
                            "label": [classes[i] for i in y[splits.test]],
                            "prediction": [classes[i] for i in y_pred], "correct": y_pred == y[splits.test]})
    for j, c in enumerate(model.classes_ if ft is None and outcome is None else range(len(classes))):
        pred_df[f"p_{classes[c]}"] = proba[:, j]
    write_csv(run_dir / "predictions.csv", pred_df)
    if fs.skipped:
        write_csv(run_dir / "skipped.csv", pd.DataFrame(fs.skipped, columns=["input", "reason"]))

    timings["total_before_report"] = time.perf_counter() - t_all
    metrics_doc = {"transfer": metrics, "baseline": base_metrics, "comparison": comparison, "warnings": warnings,
                   "timings": timings, "extracted": fs.extracted, "skipped": len(fs.skipped),
                   "parameters": getattr(ft, "parameters", None) or None}
    if report:
        t = time.perf_counter()
        _write_report(run_dir, store, fs, bb.name, head, params, metrics, comparison, warnings, config, seed)
        timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    write_json(run_dir / "metrics.json", metrics_doc)
    if spent:  # the run is written: the race's other runs are no longer needed to resume it
        import shutil

        for d in spent:
            shutil.rmtree(d / "checkpoints", ignore_errors=True)
    sizes = splits.sizes() | ({"unlabelled": int(outcome.summary["n_unlabelled"])} if outcome is not None else {})
    return FitResult(run_dir, metrics, base_metrics, comparison, warnings, timings, fs.extracted, sizes, fs.skipped,
                     None if advice is None else advice.to_dict(), head, head_reason)


def _semi_section(semi: dict[str, Any], classes: list[str]) -> dict[str, str]:
    """The report's semi-supervised section: pseudo-labelling over the run (figure and table) and the final
    per-class thresholds."""
    import html as _html

    from .report import plot_pseudo_labels
    from .report.html import figure_html

    hist = semi.get("history") or []
    every = (semi.get("config") or {}).get("eval_every")
    unit = f"evaluation ({every} steps)" if every else "epoch"
    parts = [f"<p>{_html.escape(semi['method'])} ({_html.escape(semi['level'])}) on {semi['n_labelled']} labelled "
             f"and {semi['n_unlabelled']} unlabelled inputs, {semi['seconds']:.1f} s; {_html.escape(str(semi.get('paper') or ''))}. "
             "Pseudo-label accuracy is measured on the validation items, whose labels the training never reads; "
             "the test labels are not used.</p>"]
    if hist:
        parts.append(figure_html(plot_pseudo_labels(hist, f"pseudo-labels: {semi['method']}", unit),
                                 "pseudo-label statistics over the run"))
        cols = [("epoch", unit), ("metric_mask_rate", "unlabelled used"), ("val_mask_rate", "val above threshold"),
                ("val_pseudo_accuracy", "val pseudo-label acc"), ("val_accuracy", "val acc")]
        cols = [c for c in cols if any(r.get(c[0]) is not None for r in hist)]
        head = "".join(f"<th>{_html.escape(t)}</th>" for _, t in cols)
        body = "".join("<tr>" + "".join(
            f"<td>{r.get(k) if k == 'epoch' else ('' if r.get(k) is None else f'{100 * r[k]:.1f}%')}</td>"
            for k, _ in cols) + "</tr>" for r in hist)
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
        last = hist[-1].get("thresholds")
        if last and len(set(last)) > 1:
            cells = "".join(f"<tr><td>{_html.escape(str(c))}</td><td>{t:.3f}</td></tr>" for c, t in zip(classes, last))
            parts.append(f"<p>Per-class thresholds at the end:</p><table><tr><th>class</th><th>threshold</th></tr>"
                         f"{cells}</table>")
    return {"title": f"Semi-supervised: {semi['method']}", "html": "".join(parts)}


def _check_semi(strategy: str, params: dict[str, Any] | None, unlabelled: Any, level: str, config: Any,
                labels_per_class: Any, data: Any) -> Any:
    """For a semi-supervised strategy, its checked :class:`~transferkit.semi.fit.SemiConfig` (before any work);
    None for the others (which must not be given unlabelled inputs)."""
    from .semi import SEMI_METHODS

    if strategy not in SEMI_METHODS.names():
        if unlabelled is not None:
            raise TransferkitError(f"unlabelled inputs are used by the semi-supervised strategies "
                                   f"({', '.join(SEMI_METHODS.names())}), not by strategy {strategy!r}; choose one")
        return None
    from .semi.fit import SemiConfig
    from .semi.run import SEMI_LEVELS

    check_choice(level, SEMI_LEVELS, "semi_level")
    if unlabelled is None:
        raise TransferkitError(f"strategy {strategy} learns from unlabelled inputs: give unlabelled='rest' (the "
                               "data not labelled nor tested) or a folder or table of inputs without labels")
    if unlabelled == "rest" and labels_per_class is None:
        raise TransferkitError("unlabelled='rest' leaves part of each class unlabelled, so it needs a labels-per-"
                               "class budget (e.g. 4); or give a folder or table of unlabelled inputs")
    if isinstance(unlabelled, (str, Path)) and unlabelled != "rest" and not Path(unlabelled).expanduser().exists():
        raise TransferkitError(f"unlabelled inputs {str(unlabelled)!r}: no such folder or file (or give 'rest')")
    SEMI_METHODS.create(strategy, **(params or {}))  # bad parameters fail now
    if level != "features" and config and config != SemiConfig():  # settings given that would do nothing
        raise TransferkitError("semi_config sets the head trained at semi_level='features' (its steps, ensemble, "
                               "...); end to end the backbone trains by train_config: leave semi_config out, or use "
                               "semi_level='features'")
    if isinstance(config, SemiConfig):
        return config.validate()
    unknown = sorted(set(config or {}) - set(SemiConfig.__dataclass_fields__))
    if unknown:
        raise TransferkitError(f"unknown semi-supervised setting(s) {', '.join(unknown)}; the settings are "
                               f"{', '.join(SemiConfig.__dataclass_fields__)}")
    return SemiConfig(**(config or {})).validate()


def _pretrain_backbone(backbone: str, corpus: Any, data: Any, *, input_column: str | None, label_column: str | None,
                       encoding: str | None, cache_dir: Any, progress: bool, say: Callable[[str], None]) -> Any:
    """A backbone trained on the user's texts (its registry entry declares a ``corpus_method``): on ``corpus`` and
    the data's own texts (labels unused), cached by corpus and settings (:mod:`transferkit.pretrain`)."""
    from .data.load import load_data
    from .errors import ModalityError
    from .pretrain import pretrain_for_backbone

    src = load_data(data, input_column=input_column, label_column=label_column, require_labels=False,
                    encoding=encoding)
    if src.modality != "text":
        raise ModalityError(f"{src.origin or src.name} holds {src.modality} data but backbone {backbone!r} is trained "
                            "on texts; choose an image backbone (see `transferkit backbones`)")
    own = [str(t) for t in src.items]
    r = pretrain_for_backbone(backbone, corpus, extra_texts=own, cache_dir=cache_dir, encoding=encoding,
                              progress=progress, log=say)
    say(f"backbone {backbone}: {r.backbone.name} " + ("read from the cache" if r.cached else
                                                       f"trained in {r.seconds:.1f}s") + f" ({r.path})")
    return r


def _data_name(data: Any, full: bool = False) -> str:
    if isinstance(data, DataSource):
        return data.origin if full else data.name
    return str(data) if full else Path(str(data)).stem or str(data)


def _race(fs: Any, probe: Any, engine: dict[str, Any], run_dir: Path, resume: bool, progress: bool,
          say: Callable[[str], None]) -> tuple[Any, str, dict[str, Any] | None, list[Path]]:
    """``--strategy auto``: race the probe and gradual unfreezing (``RACE_CANDIDATES``) on the labelled split,
    cross-validated (:func:`~transferkit.transferability.advisor.race_folds`: fold 0 is the split itself, then four
    more folds of its labelled items); the probe stands unless gradual unfreezing's held-out answers beat it by
    more than the noise (:func:`~transferkit.transferability.advisor.race_choice`). The size x similarity advice is
    printed as the explanation, and decides alone without a validation split (then the race trains nothing and the
    result's third item is None; ``fit`` trains the advice's pick itself when it is not the probe). Each candidate
    trains in ``run_dir/race/<strategy>`` on the split (fold 0, where it chooses its epoch count) and in
    ``run_dir/race/<strategy>-fold<j>`` on the other folds (resumable). A fine-tuning winner then trains once more,
    in ``run_dir/race/<strategy>-all``, on every labelled item for that epoch count (rule 8,
    :func:`~transferkit.transferability.advisor.kept_split`): that is the model kept. Every checkpoint stays until the caller has
    written the run (a ``fit`` killed after the race resumes every run of it instead of training it again); then
    the caller removes the checkpoints of the runs in the fourth item (all but the winner's).

    Returns:
        ``(advice with the race's reasons first, the chosen strategy, strategy -> FinetuneResult or None, the run
        directories whose checkpoints are spent once the run is written)``.
    """
    from .train.engine import finetune
    from .transferability.advisor import (RACE_CANDIDATES, advise_labelled, fold_heads, fold_runs, kept_split,
                                          race_choice, race_folds, races)

    seed, size = engine["config"].seed, engine["config"].image_size
    # the batch-norm statistics at the size the fine-tuning runs at (the shift depends on it), as compare measures
    shifted = (fs.backbone.with_preprocessing(input_size=size) if size and fs.backbone.modality == "image"
               else fs.backbone)
    advice = advise_labelled(fs, fs.y, fs.splits.labelled, seed=seed, bn_backbone=shifted)
    sp = fs.splits
    advice.evidence["rule"] = advice.strategy
    if not races(len(sp.val)):  # no validation split: the advice decides
        choice, why = race_choice({}, len(sp.val), rule=advice.strategy)
        advice.reasons[:0] = why
        advice.strategy = choice
        say(f"strategy auto -> {choice}: " + "; ".join(advice.reasons))
        return advice, choice, None, []
    folds = race_folds(fs.y, sp, seed=seed)
    val = {"probe": probe.scores_.get(probe.C_) if hasattr(probe, "scores_") else _best_val(probe)}
    held = {"probe": fold_heads(probe, fs.X, fs.y, folds)}
    n_held, last = sum(len(f.val) for f in folds[1:]), len(folds)
    if last > 1:
        setting = (f"C={probe.C_:g}" if hasattr(probe, "C_") else f"{probe.best_epoch_} epochs"
                   if getattr(probe, "best_epoch_", None) else "its parameters")
        say(f"strategy auto: a race cross-validated over {last} folds of the {len(sp.labelled)} labelled items: each "
            f"candidate chooses its settings on fold 1 (the split: {len(sp.train)} training, {len(sp.val)} "
            f"validation items), trains with them on folds 2-{last} and answers their {n_held} held-out items")
        say(f"strategy auto: probe ({setting}, chosen on fold 1): {100 * held['probe'].mean():.1f}% of the {n_held} "
            "held-out items right")
    results, fold_results = {}, {}
    fold_cfg = replace(engine["config"], refit=False)  # a fold trains for the epochs chosen; nothing to refit
    for k in RACE_CANDIDATES:
        if k == "probe":
            continue
        say(f"strategy auto: {k} on fold 1 of {last} (the split: {len(sp.train)} training items, the epoch chosen on "
            f"its {len(sp.val)} validation items; in race/{k})" if last > 1 else
            f"strategy auto: racing {k} on the training part, judged on {len(sp.val)} validation items")
        results[k] = finetune(fs.source, fs.y, sp, fs.backbone, k, engine["config"], run_dir / "race" / k,
                              resume=resume, extra_losses=engine["losses"], classes=fs.classes, progress=progress,
                              log=say, export=False)
        val[k] = results[k].val_accuracy
        e = results[k].best_epoch

        def train_fold(j: int, split: Splits, k: str = k, e: int = e) -> Any:  # the epochs chosen on the split
            say(f"strategy auto: {k} on fold {j + 1} of {last}: {len(split.train)} training items for {e} "
                f"epoch{'s' if e != 1 else ''} (chosen on fold 1), then its {len(split.test)} held-out items "
                f"(in race/{k}-fold{j})")
            return finetune(fs.source, fs.y, split, fs.backbone, k, fold_cfg, run_dir / "race" / f"{k}-fold{j}",
                            resume=resume, extra_losses=engine["losses"], classes=fs.classes, progress=progress,
                            log=say, export=False, train_epochs=e)

        held[k], fold_results[k] = fold_runs(folds, fs.y, train_fold)
        if last > 1:
            say(f"strategy auto: {k}: {100 * held[k].mean():.1f}% of the {n_held} held-out items right")
    cv = held if len(folds) > 1 else {}  # one fold: a validation split large enough to decide alone
    choice, why = race_choice(val, len(sp.val), rule=advice.strategy, held_out=cv)
    advice.reasons[:0] = why
    advice.strategy = choice
    advice.evidence["race"] = {"validation_accuracy": val, "validation_items": int(len(sp.val)), "choice": choice,
                               "folds": len(folds), "held_out_accuracy": {k: float(v.mean()) for k, v in cv.items()},
                               "held_out_items": int(len(cv["probe"])) if cv else 0,
                               "seconds": {k: r.seconds + sum(fr.seconds for fr in fold_results[k])
                                           for k, r in results.items()}}
    say(f"strategy auto -> {choice}: " + "; ".join(advice.reasons))
    spent = [r.run_dir for runs in fold_results.values() for r in runs] + [r.run_dir for k, r in results.items()
                                                                        if k != choice]
    if choice in results:  # rule 8: the winner trains again on every labelled item, as the probe's head refits
        e = results[choice].best_epoch
        say(f"strategy auto: the model kept trains {choice} again on all {len(sp.labelled)} labelled items for the "
            f"{e} epoch{'s' if e != 1 else ''} it chose on the split (the probe's head refits on them too; in "
            f"race/{choice}-all)")
        kept = finetune(fs.source, fs.y, kept_split(sp), fs.backbone, choice, fold_cfg, run_dir / "race" /
                        f"{choice}-all", resume=resume, extra_losses=engine["losses"], classes=fs.classes,
                        progress=progress, log=say, export=False, train_epochs=e)
        advice.evidence["race"]["seconds"][choice] += kept.seconds
        advice.evidence["race"]["kept"] = {"strategy": choice, "trained_on": int(len(sp.labelled)), "epochs": int(e)}
        spent.append(results[choice].run_dir)
        results[choice] = kept
    return advice, choice, results, spent


def _best_val(head: Any) -> float | None:
    """The best validation accuracy a torch head recorded (None without a validation split)."""
    accs = [h.get("val_accuracy") for h in getattr(head, "history_", []) if h.get("val_accuracy") is not None]
    return max(accs) if accs else None


def _fit_head(fs: Any, head: str, params: dict[str, Any]) -> tuple[Any, np.ndarray, np.ndarray]:
    """The head trained on the train split (model choice on validation); test probabilities and predictions."""
    from .heads import create_head

    model = create_head(head, **params)
    Xtr, ytr = fs.part("train")
    Xv, yv = fs.part("val")
    model.fit(Xtr, ytr, eval_set=(Xv, yv) if len(yv) else None)
    Xte, _ = fs.part("test")
    proba = model.predict_proba(Xte)
    return model, proba, model.classes_[proba.argmax(1)]


def _baseline(fs: Any, store: Any, seed: int, progress: bool) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """The from-scratch baseline on the same split (cached per data, labels, split and seed)."""
    from .report import classification_metrics
    from .train.scratch import train_scratch

    src, y, sp, classes = fs.source, fs.y, fs.splits, fs.classes

    def compute() -> dict[str, Any]:
        r = train_scratch(src, y, sp.train, sp.val, sp.test, len(classes), seed=seed, progress=progress)
        return {"name": r.name, "y_pred": r.y_pred.tolist(), "seconds": r.seconds, "details": r.details}

    key = {"data": src.fingerprint(), "labels": hashlib.sha256(y.tobytes()).hexdigest(),
           "splits": [sp.train.tolist(), sp.val.tolist(), sp.test.tolist()], "seed": seed}
    res, hit = store.cached_result("scratch", key, compute)
    m = classification_metrics(y[sp.test], np.asarray(res["y_pred"]), classes)
    label = "small CNN from scratch" if res["name"] == "small-cnn" else "TF-IDF + logreg from scratch"
    return m, {"name": label, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": res["seconds"],
               "kind": "scratch", "cached": hit}, np.asarray(res["y_pred"])


def _save_fit_model(run_dir: Path, model: Any, bb: Any, ft: Any, classes: list[str], strategy: str) -> None:
    """The probe's head on the unchanged backbone, or the fine-tuned network (its backbone saved inside the run)."""
    if ft is None:
        save_model(run_dir, model.to_module(), bb, classes, kind="probe")
        return
    from .train.engine import save_finetuned

    save_finetuned(run_dir, ft.model, ft.config.get("strategy"), ft.config.get("backbone") or {}, classes,
                   extra={"strategy": strategy, "best_epoch": ft.best_epoch,
                          **({"refit": True} if getattr(ft, "selection", None) is not None else {})})


def _write_report(run_dir: Path, store: Any, fs: Any, backbone: str, head: str, params: dict, metrics: dict,
                  comparison: list, warnings: list[str], config: dict, seed: int) -> None:
    from .report import projection_2d, write_report

    X, y, splits, classes = fs.X, fs.y, fs.splits, fs.classes
    idx = np.concatenate([splits.labelled, splits.test])

    def compute_projection() -> dict[str, Any]:
        coords, used, method = projection_2d(np.asarray(X[idx], dtype=np.float32), seed=seed)
        return {"coords": coords.tolist(), "used": used.tolist(), "method": method}

    key = {"view": _view_id(fs), "rows": hashlib.sha256(np.asarray(idx).tobytes()).hexdigest(), "seed": seed}
    proj, _ = store.cached_result("projection", key, compute_projection)
    used = idx[np.asarray(proj["used"], dtype=np.int64)]
    is_test = np.isin(used, splits.test)
    curve_key = {"view": _view_id(fs), "y": hashlib.sha256(y.tobytes()).hexdigest(), "seed": seed,
                 "labelled": splits.labelled.tolist(), "test": hashlib.sha256(splits.test.tobytes()).hexdigest(),
                 "head": head, "params": params}
    curve, _ = store.cached_result("learning-curve", curve_key,
                                   lambda: {"points": _learning_curve(head, params, X, y, splits, classes, seed)})
    curve = curve["points"]
    scratch = next((c for c in comparison if c["kind"] == "scratch"), None)
    if scratch and curve:
        n_lab = int(np.bincount(y[splits.labelled]).max())
        for p in curve:
            if p["labels_per_class"] == n_lab:
                p["scratch"] = scratch["accuracy"]
    summary = [("dataset", f"{config['dataset']} ({config['modality']}, {len(classes)} classes)"),
               ("backbone", backbone),
               ("head", f"{head} {params or ''}".strip() + (" (chosen by head auto)" if config.get("head_reason")
                                                            else "")),
               ("labels per class", str(config["labels_per_class"] or "all (fractions)")),
               ("train / val / test", " / ".join(str(v) for v in splits.sizes().values())),
               ("features", config["features_view"]),
               ("strategy", str(config.get("strategy", "probe")))]
    sections = []
    if config.get("head_reason"):
        import html as _html

        sections.append({"title": f"Why the {head} head? (head auto)",
                         "html": f"<p>{_html.escape(config['head_reason'])}</p>"})
    if config.get("advice"):
        import html as _html

        items = "".join(f"<li>{_html.escape(r)}</li>" for r in config["advice"]["reasons"])
        sections.append({"title": f"Why {config['advice']['strategy']}? (strategy auto)", "html": f"<ul>{items}</ul>"})
    if config.get("semi"):
        sections.append(_semi_section(config["semi"], classes))
    write_report(run_dir / "report.html", {"sections": sections,
        "title": f"transferkit fit: {config['dataset']} with {backbone}",
        "subtitle": f"run {run_dir.name}, {config['created']}",
        "summary": summary, "comparison": comparison, "chance": 1.0 / len(classes), "warnings": warnings,
        "metrics": metrics, "classes": classes, "learning_curve": curve,
        "projection": {"coords": np.asarray(proj["coords"]), "labels": y[used], "markers": is_test.astype(int),
                       "marker_names": ["labelled", "test"], "method": proj["method"]},
        "bad_inputs": fs.skipped, "config": config,
    })
