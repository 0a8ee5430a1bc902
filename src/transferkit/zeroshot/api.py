"""Zero-shot classification as one function: :func:`zeroshot_run` (what ``transferkit zeroshot`` runs).

Data in (a folder, a table, a built-in dataset; labels optional), the classes named by the user or taken from the
labels, a method; out: predictions for every input, accuracy when the data has labels (labels only score, they never
choose anything), and a run directory whose model ``load_run(...).predict`` and ``transferkit predict`` use like any
other run.

With ``seen=[...]``, the generalized zero-shot setting: the labelled items of the seen classes are split into train /
validation / test; the method learns from the train part, the calibration constant is chosen on the validation part
(seen classes only), and the test items of seen classes and *all* items of the unseen classes are scored, with the
seen / unseen accuracies and their harmonic mean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError, TransferkitError
from .prompts import ClassSpec, parse_classes, prompt_templates, readable_name

__all__ = ["ZeroShotResult", "zeroshot_run", "DEFAULT_PROMPT", "resolve_method", "ZeroShotModel", "fit_zeroshot"]

#: the prompt set used when none is given, per modality of the data. The image defaults (class names alone, the
#: ImageNet classes as names plus WordNet gloss, ConSE with the target prior and centred scores) were chosen on a
#: development set of 14 other Open Clip Art categories (fish, dinosaurs, trees, vegetables, ...; none of the
#: built-in clipart's 12), never on the data they are reported on; see benchmarks/RESULTS.md.
DEFAULT_PROMPT = {"image": "name", "text": "name"}
#: how the ImageNet classes are put into words by default (see ``encode.SOURCE_TEXTS``)
DEFAULT_SOURCE_TEXTS = "description"
#: the image method ``auto`` picks with a source classifier and no labelled seen class
AUTO_IMAGE_METHOD = "conse"
#: ... and with labelled seen classes: the ridge map, which learns from the source classifier's 1000 classes as well
#: as the seen ones (ESZSL and DeViSE learn from the seen classes alone). Set after the clipart generalized
#: zero-shot benchmark (H 38 % against 18 % for ESZSL), so that benchmark does not validate this choice blind.
AUTO_SEEN_METHOD = "ridge"


@dataclass
class ZeroShotResult:
    """What :func:`zeroshot_run` produced.

    Attributes:
        run_dir: the run directory (None when nothing was written).
        method: the method used; classes: the candidate classes; seen: the seen ones (empty: pure zero-shot).
        predictions: one row per input (``input``, ``prediction``, ``confidence``, ``p_<class>``, ``label`` and
            ``split`` when known).
        metrics: accuracy, macro-F1, per-class scores on the scored items, and for generalized zero-shot the seen /
            unseen accuracies and their harmonic mean (None without labels).
        gamma: the calibrated-stacking constant (None in pure zero-shot).
        timings: seconds per stage.
    """

    run_dir: Path | None
    method: str
    classes: list[str]
    seen: list[str]
    predictions: pd.DataFrame
    metrics: dict[str, Any] | None
    gamma: float | None
    timings: dict[str, float] = field(default_factory=dict)
    model: Any = None


@dataclass
class ZeroShotModel:
    """A fitted zero-shot classifier over features: the head module and how it was made.

    Attributes:
        head: the head module (features -> logits over ``classes``).
        classes: the class labels; seen: the seen ones.
        method: the method's name and params; gamma: the calibration constant (None without seen classes).
        calibration: how gamma was chosen (its curve), or None.
    """

    head: Any
    classes: list[str]
    seen: list[str]
    method: dict[str, Any]
    gamma: float | None = None
    calibration: dict[str, Any] | None = None

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax of the head's logits).

        Shape:
            ``(N, D)`` -> ``(N, C)``.
        """
        import torch

        with torch.no_grad():
            out = [torch.softmax(self.head(torch.as_tensor(np.asarray(X[i:i + 4096], np.float32))), 1)
                   for i in range(0, len(X), 4096)]
        return torch.cat(out).double().numpy() if out else np.zeros((0, len(self.classes)))

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The head's scores.

        Shape:
            ``(N, D)`` -> ``(N, C)``.
        """
        import torch

        with torch.no_grad():
            return self.head(torch.as_tensor(np.asarray(X, np.float32))).double().numpy()


def resolve_method(method: str, modality: str, *, backbone: Any, has_seen: bool, has_source: bool) -> str:
    """The method ``auto`` stands for, or ``method`` checked against what the data and backbone offer.

    Raises:
        UnknownNameError: an unknown method (the message lists them).
        TransferkitError: a method that cannot work here (text data with an image method, a method that needs
            labelled seen classes without them, ...); the message says what to change.
    """
    from .methods import ZEROSHOT_METHODS

    has_text_tower = callable(getattr(backbone, "encode_text", None))
    if method == "auto":
        if modality == "text" or has_text_tower:
            return "similarity"
        if not has_source:
            raise TransferkitError(f"backbone={backbone.name!r} has neither a text tower (a clip: backbone) nor a "
                                   "source classifier with named classes (lite0's ImageNet head); zero-shot image "
                                   "classification needs one: use backbone=\"lite0\" or a clip: backbone")
        return AUTO_SEEN_METHOD if has_seen else AUTO_IMAGE_METHOD
    entry = ZEROSHOT_METHODS.get(method)
    if entry.modality not in ("any", modality):
        raise TransferkitError(f"method={method!r} classifies {entry.modality}s, but the data holds {modality}s; "
                               f"for {modality}s use one of "
                               f"{', '.join(ZEROSHOT_METHODS.names(modality=modality) + ZEROSHOT_METHODS.names(modality='any'))}")
    if entry.shared_space and modality == "image" and not has_text_tower:
        raise TransferkitError(f"method={method!r} compares image and class-name embeddings in one space, which "
                               f"backbone={backbone.name!r} does not have; give a clip: backbone, or use conse, ridge, "
                               "eszsl or devise with lite0")
    if entry.needs_source and not has_source:
        raise TransferkitError(f"method={method!r} needs a source classifier with named classes; "
                               f"backbone={backbone.name!r} has none: use backbone=\"lite0\"")
    if entry.needs_seen and not has_seen:
        raise TransferkitError(f"method={method!r} learns from labelled seen classes; name some with seen=\"a,b,c\" "
                               "(labelled in the data), or use conse, ridge or eszsl, which start from the source "
                               "classifier")
    return method


def _class_spec(classes: Any, source: Any) -> ClassSpec:
    if classes is not None:
        return parse_classes(classes)
    if source.labels is None:
        raise DataError(f"{source.origin or source.name} has no labels to take the class names from; name the classes "
                        "with classes=\"cat,dog,...\"")
    labels = list(source.classes)
    if len(labels) < 2:
        raise DataError(f"{source.origin or source.name} has {len(labels)} class; name at least 2 classes with "
                        "classes=\"cat,dog,...\"")
    return ClassSpec(labels, {c: [readable_name(c)] for c in labels})


def _spread(S: np.ndarray) -> float:
    """The standard deviation of a score matrix (1 when it is constant)."""
    sd = float(np.std(S))
    return sd if np.isfinite(sd) and sd > 0 else 1.0


def fit_zeroshot(task: Any, method: str = "conse", *, method_params: dict[str, Any] | None = None,
                 calibrate: bool = True, folds: int = 2, seed: int = 0, center: bool = False) -> ZeroShotModel:
    """Fit a zero-shot method on a :class:`~transferkit.zeroshot.methods.ZeroShotTask`; with seen classes and
    ``calibrate``, choose the calibrated-stacking constant on the seen classes' validation items (class-wise folds:
    no unseen class is looked at; the constant is chosen in units of each fit's score spread on those items and
    applied in the final fit's) and build the head with it.

    With ``center`` (pure zero-shot only) and unlabelled target inputs ``task.X_target``, each class's mean score
    over those inputs is subtracted from its scores (kept in the head's ``class_bias``, so a saved run predicts new
    inputs the same way): a class whose name sits close to every input ("a hub") no longer takes most of them.
    This uses the inputs to classify, never their labels.

    References:
        Chao et al., "An Empirical Study and Analysis of Generalized Zero-Shot Learning for Object Recognition in the
        Wild", ECCV 2016 (calibrated stacking); Dinu, Lazaridou & Baroni, "Improving zero-shot learning by mitigating
        the hubness problem", ICLR 2015 workshop (hubs, corrected with the target inputs' statistics).
    """
    from dataclasses import replace

    from .gzsl import choose_gamma
    from .methods import create_method

    params = dict(method_params or {})
    m = create_method(method, **params).fit(task)
    seen = task.seen_mask
    gamma, calib = None, None
    if seen.any() and calibrate:
        if task.X_val is None or not len(task.X_val):
            raise DataError("calibrating generalized zero-shot needs validation items of the seen classes; give more "
                            "labelled items of the seen classes (or calibrate=False)")
        seen_ids = np.flatnonzero(seen)
        if len(seen_ids) < 3:
            raise DataError(f"calibrating generalized zero-shot holds seen classes out in turn and learns from the "
                            f"others, which needs at least 3 seen classes; got {len(seen_ids)}: name more seen "
                            "classes (or calibrate=False)")

        def fit_scores(held: np.ndarray) -> np.ndarray:
            keep = ~np.isin(task.y, held)
            sub = replace(task, seen=seen & ~np.isin(np.arange(len(seen)), held), X=task.X[keep], y=task.y[keep],
                          X_val=None, y_val=None)
            mm = create_method(method, **params).fit(sub)
            S = ZeroShotModel(mm.head(), task.classes, [], {}).logits(task.X_val)
            return S / _spread(S)

        calib = choose_gamma(fit_scores, task.y_val, seen_ids, folds=folds, seed=seed)
        # the constant is in units of the scores' spread: a refit on fewer classes (DeViSE's trained map above all)
        # can score on another scale than the final fit
        calib["spread"] = _spread(ZeroShotModel(m.head(), task.classes, [], {}).logits(task.X_val))
        gamma = calib["gamma"] * calib["spread"]
    bias = None if gamma is None else -gamma * seen.astype(np.float64)
    seen_names = [c for c, s in zip(task.classes, seen) if s]
    head = m.head(bias)
    centred = False
    if center and not seen.any() and task.X_target is not None and len(task.X_target):
        import torch

        mean = ZeroShotModel(head, task.classes, [], {}).logits(task.X_target).mean(0)
        with torch.no_grad():
            head.class_bias -= torch.as_tensor(mean, dtype=torch.float32)
        centred = True
    return ZeroShotModel(head, list(task.classes), seen_names, {"name": method, **m.params(), "centred": centred},
                         gamma, calib)


def zeroshot_run(data: Any, *, classes: Any = None, method: str = "auto", backbone: str | None = None,
                 text_backbone: str | None = None, prompt: str | Sequence[str] | None = None,
                 seen: Sequence[str] | str | None = None, method_params: dict[str, Any] | None = None,
                 source_texts: str = DEFAULT_SOURCE_TEXTS, calibrate: bool = True, transductive: bool = True,
                 val_fraction: float = 0.2,
                 test_fraction: float = 0.3, seed: int = 0, out: str | Path | None = None, write: bool = True,
                 cache_dir: str | Path | None = None, on_bad_input: str = "error", batch_size: int = 64,
                 num_workers: int | None = None, device: str = "auto", input_column: str | None = None,
                 label_column: str | None = None, encoding: str | None = None, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> ZeroShotResult:
    """Classify ``data`` into classes known only by their names (or descriptions).

    Args:
        data: a built-in dataset, a folder (class sub-folders optional), a table, or a :class:`DataSource`.
        classes: the candidate classes: ``"cat,dog"``, ``"fresh=a positive review,rotten=a negative review"``,
            a list, a mapping label -> description(s), or a .json / .txt file (see :func:`parse_classes`); None: the
            data's labels, made readable (``animals_birds`` -> ``animals birds``).
        method: ``auto``, ``similarity``, ``conse``, ``ridge``, ``eszsl`` or ``devise`` (see
            :data:`~transferkit.zeroshot.methods.ZEROSHOT_METHODS`). ``auto``: similarity for texts and ``clip:``
            backbones; ConSE for images with a source classifier (the ridge map with seen classes).
        backbone: the backbone of the inputs (default: ``lite0`` for images, ``text_backbone`` for texts).
        text_backbone: the encoder of the class names (default: the backbone itself when it embeds text, i.e. a text
            backbone or a ``clip:`` one; else ``minilm``).
        prompt: a prompt set of :data:`~transferkit.zeroshot.prompts.PROMPTS`, a template with ``{}``, or a list of
            templates (default: ``name``, the class name alone).
        seen: classes with labelled examples in ``data`` to learn from (generalized zero-shot); None: pure zero-shot.
        method_params: settings of the method (e.g. ``{"top_k": 5}`` for conse).
        source_texts: how the source (ImageNet) classes are worded: ``first-name``, ``names``, ``description``.
        calibrate: with seen classes, choose the calibrated-stacking constant on seen classes' validation items.
        transductive: in pure zero-shot, use the inputs being classified (never their labels): ConSE divides the
            source probabilities by their mean over the inputs, and every method's class scores are centred on their
            mean over the inputs (both kept in the saved head). False: each input is classified on its own.
        val_fraction, test_fraction: the split of each seen class's items (the rest trains).
        seed: the split's and the method's seed.
        out: the run directory (default ``runs/<time>-<data>-zeroshot-<method>``); write: False writes nothing.
        cache_dir, on_bad_input, batch_size, num_workers, device, input_column, label_column, encoding, progress:
            as in :func:`transferkit.fit_run`.
        log: called with one-line progress messages.

    Returns:
        A :class:`ZeroShotResult`.

    Raises:
        DataError: no or bad classes, labels in the data that are not among the classes, seen classes without
            labelled items.
        TransferkitError: a method that cannot work with this data or backbone (the message says what to change).

    References:
        Norouzi et al., ICLR 2014 (ConSE); Romera-Paredes & Torr, ICML 2015 (ESZSL); Frome et al., NeurIPS 2013
        (DeViSE); Chao et al., ECCV 2016 (calibrated stacking); Radford et al., ICML 2021 (prompt similarity).
    """
    from .. import __version__
    from ..backbones import backbone_entry, create_backbone
    from ..data import load_data
    from ..features import FeatureStore
    from ..features.featureset import ON_BAD_INPUT, build_featureset
    from ..pipeline import check_choice
    from ..report import classification_metrics
    from ..runs import default_run_dir, prepare_run_dir, save_model, write_csv, write_json
    from .encode import SOURCE_TEXTS, class_embeddings, source_model
    from .gzsl import gzsl_accuracy
    from .methods import ZEROSHOT_METHODS, ZeroShotTask

    say = log or (lambda m: None)
    timings: dict[str, float] = {}
    check_choice(on_bad_input, ON_BAD_INPUT, "on_bad_input")
    check_choice(source_texts, SOURCE_TEXTS, "source_texts")
    if method != "auto":
        ZEROSHOT_METHODS.get(method)  # unknown names fail before any work
    if classes is not None:
        spec0 = parse_classes(classes)  # bad class lists fail before any work
        del spec0
    if prompt is not None:
        prompt_templates(prompt)
    for name in (backbone, text_backbone):
        if name is not None:
            backbone_entry(name)
    t = time.perf_counter()
    source = load_data(data, input_column=input_column, label_column=label_column, on_bad_input=on_bad_input,
                       require_labels=False, encoding=encoding)
    modality = source.modality
    spec = _class_spec(classes, source)
    data_labels = [] if source.labels is None else list(source.classes)
    unknown = [c for c in data_labels if c not in spec.labels]
    if unknown:
        raise DataError(f"{source.origin or source.name} has labels {unknown[:5]} that are not among the classes "
                        f"{spec.labels[:8]}; add them to classes= or leave classes out to use the data's labels")
    seen_list = [s.strip() for s in seen.split(",") if s.strip()] if isinstance(seen, str) else list(seen or [])
    if seen_list:
        if source.labels is None:
            raise DataError("seen classes are learnt from labelled items, but the data has no labels; give labelled "
                            "data or leave seen out")
        missing = [s for s in seen_list if s not in data_labels]
        if missing:
            raise DataError(f"seen classes {missing[:5]} have no labelled items in {source.origin or source.name} "
                            f"(its labels: {data_labels[:8]}); name seen classes among the data's labels")
        if len(set(seen_list)) == len(spec.labels):
            raise DataError("every class is seen: nothing is left for zero-shot; leave some classes out of seen=")
        if len(set(seen_list)) < 2:
            raise DataError(f"seen names {len(set(seen_list))} class; name at least 2 seen classes, or none for pure "
                            "zero-shot")
    # backbones
    if backbone is None:
        backbone = (text_backbone or "minilm") if modality == "text" else "lite0"
    bb = create_backbone(backbone)
    if bb.modality != modality:
        from ..errors import ModalityError

        raise ModalityError(f"{source.origin or source.name} holds {modality} data but backbone={bb.name!r} takes "
                            f"{bb.modality}s; choose a{'n' if modality == 'image' else ''} {modality} backbone")
    has_tower = callable(getattr(bb, "encode_text", None))
    if text_backbone is None:
        encoder = bb if (modality == "text" or has_tower) else create_backbone("minilm")
    elif text_backbone == backbone:
        encoder = bb
    else:
        encoder = create_backbone(text_backbone)
    from ..transferability.source import source_classifier

    has_source = modality == "image" and source_classifier(bb) is not None and \
        bool(getattr(bb, "source_class_names", lambda **k: None)())
    method = resolve_method(method, modality, backbone=bb, has_seen=bool(seen_list), has_source=has_source)
    entry = ZEROSHOT_METHODS.get(method)
    if entry.shared_space and encoder is not bb and not (modality == "text" and encoder.name == bb.name):
        raise TransferkitError(f"method={method!r} compares the inputs' embeddings with the class names' in one "
                               f"encoder, but backbone={bb.name!r} and text_backbone={encoder.name!r} differ; give "
                               "the same name to both (or leave text_backbone out)")
    prompt = prompt if prompt is not None else DEFAULT_PROMPT[modality]
    timings["setup"] = time.perf_counter() - t

    run_dir = None
    if write:
        run_dir = prepare_run_dir(out if out is not None else default_run_dir(
            source.name, f"zeroshot-{method}"), "zeroshot")
    t = time.perf_counter()
    fs = build_featureset(source, bb, store=FeatureStore(cache_dir), labels="optional", split=False,
                          on_bad_input=on_bad_input, batch_size=batch_size, num_workers=num_workers, device=device,
                          progress=progress, log=say)
    timings["features"] = time.perf_counter() - t
    X = fs.X
    kept = fs.source
    C = len(spec.labels)
    y = None if kept.labels is None else kept.encoded_labels(spec.labels)
    seen_mask = np.isin(np.asarray(spec.labels, dtype=object), np.asarray(seen_list, dtype=object)) if seen_list \
        else np.zeros(C, bool)
    split = np.full(len(X), "test", dtype=object)
    train_idx = val_idx = np.zeros(0, np.int64)
    if seen_mask.any():
        from ..data.splits import make_splits

        seen_items = np.flatnonzero(seen_mask[y])
        ys = y[seen_items]
        sp = make_splits(ys, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                         classes=[spec.labels[i] for i in range(C)])
        train_idx, val_idx = seen_items[sp.train], seen_items[sp.val]
        split[train_idx], split[val_idx] = "train", "val"

    t = time.perf_counter()
    E = class_embeddings(encoder, spec, prompt)
    src_model = None
    if entry.needs_source or (method in ("ridge", "eszsl") and has_source):
        src_model = source_model(bb, encoder, prompt, source_texts=source_texts, cache_dir=cache_dir)
    scale = None
    if has_tower and callable(getattr(bb, "logit_scale", None)):
        scale = float(bb.logit_scale())
    Xtr = np.asarray(X[train_idx], np.float32) if len(train_idx) else None
    task = ZeroShotTask(list(spec.labels), E, seen_mask if seen_mask.any() else None, Xtr,
                        None if Xtr is None else y[train_idx],
                        np.asarray(X[val_idx], np.float32) if len(val_idx) else None,
                        None if not len(val_idx) else y[val_idx], src_model, scale,
                        X_target=np.asarray(X, np.float32) if transductive and not seen_mask.any() else None)
    timings["embed"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"zero-shot: {method} over {C} classes ({len(seen_list)} seen) with class names embedded by {encoder.name}")
    model = fit_zeroshot(task, method, method_params=method_params, calibrate=calibrate, seed=seed,
                         center=transductive)
    timings["fit"] = time.perf_counter() - t
    proba = model.predict_proba(X)
    pred = proba.argmax(1)
    df = pd.DataFrame({"input": [kept.describe(i) for i in range(len(kept))],
                       "prediction": [spec.labels[i] for i in pred], "confidence": proba.max(1)})
    for j, c in enumerate(spec.labels):
        df[f"p_{c}"] = proba[:, j]
    if y is not None:
        df["label"] = [spec.labels[i] for i in y]
    if seen_mask.any():
        df["split"] = split
    metrics = None
    if y is not None:
        test = np.flatnonzero(split == "test")
        metrics = classification_metrics(y[test], pred[test], list(spec.labels))
        metrics["scored_items"] = int(len(test))
        metrics["chance"] = 1.0 / C
        if seen_mask.any():
            metrics["gzsl"] = gzsl_accuracy(y[test], pred[test], seen_mask)
            metrics["gzsl"]["gamma"] = model.gamma
            raw = model.logits(np.asarray(X[test], np.float32))
            from .gzsl import calibrated_stacking

            metrics["gzsl_uncalibrated"] = gzsl_accuracy(
                y[test], calibrated_stacking(raw, seen_mask, -(model.gamma or 0.0)), seen_mask)
    if run_dir is not None:
        config = {"transferkit": __version__, "command": "zeroshot", "data": str(getattr(data, "origin", data)),
                  "dataset": source.name, "modality": modality, "classes": spec.labels,
                  "descriptions": spec.descriptions, "prompt": prompt_templates(prompt), "prompt_name": prompt
                  if isinstance(prompt, str) else None, "method": model.method, "backbone": bb.name,
                  "text_backbone": encoder.name, "source_texts": source_texts if src_model is not None else None,
                  "seen": seen_list, "transductive": bool(transductive and not seen_mask.any()), "gamma": model.gamma, "calibration": model.calibration, "seed": seed,
                  "val_fraction": val_fraction, "test_fraction": test_fraction,
                  "splits": {k: int((split == k).sum()) for k in ("train", "val", "test")},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        save_model(run_dir, model.head, bb, list(spec.labels), kind="zeroshot",
                   extra={"method": method, "text_backbone": encoder.name, "seen": seen_list, "gamma": model.gamma})
        write_json(run_dir / "config.json", config)
        write_csv(run_dir / "predictions.csv", df)
        if metrics is not None:
            write_json(run_dir / "metrics.json", metrics)
        if fs.skipped:
            write_csv(run_dir / "skipped.csv", pd.DataFrame(fs.skipped, columns=["input", "reason"]))
    return ZeroShotResult(run_dir, method, list(spec.labels), seen_list, df, metrics, model.gamma, timings, model)
