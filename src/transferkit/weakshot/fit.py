"""Weak-shot training, from data to a table of novel-class accuracies, at probe cost or end to end.

The stages (every one that trains goes through the one training loop):

1. **data** (:func:`prepare_weakshot`): features of the data and of the outlier pools from one
   :func:`~transferkit.features.featureset.build_featureset` each, and the :class:`~transferkit.weakshot.noise.
   WeakShotSplit` (web labels, or noise injected into the novel classes);
2. **base classifier** (:func:`train_base`): a head with one hidden layer trained on the clean base classes (chosen
   on held-out base items). Every method's novel classifier starts from its hidden layer, so all of them get the
   same transfer from the base classes and differ only in how they treat the noise;
3. **similarity net** (:func:`~transferkit.weakshot.similarity.train_similarity`) on base pairs, its trunk started
   from the base classifier's hidden layer;
4. **novel training** (:func:`train_novel`) for each method of :data:`~transferkit.weakshot.methods.WEAKSHOT_METHODS`:
   its weights, the weighted cross-entropy, the graph regulariser when the method has it; a fixed number of epochs,
   the last kept (no clean novel data exists to choose a checkpoint on);
5. **evaluation** on the clean novel test split; beside each method, plain training, and negative results flagged
   with McNemar's test on the same test items.

End to end (``end_to_end=True``): the backbone is first fine-tuned on the base classes
(:func:`~transferkit.train.engine.finetune`), the similarity net learns on that network's features, and each
method's novel classifier fine-tunes the whole base-trained network on the images (or texts) with the same loss.

References:
    Chen, Niu, Liu & Zhang, "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..backbones.base import Backbone
from ..errors import DataError, TransferkitError
from ..train.loop import LoopSettings, Plan, run_loop
from ..train.objectives import Objectives
from ..train.streams import TensorStream, derive_seed
from .methods import WEAKSHOT_METHODS, NovelSet, create_method, weight_auc
from .noise import NOISE_KINDS, WeakShotSplit, inject_noise, resolve_classes, split_from_web_labels
from .objectives import WeightedCrossEntropy, graph_term
from .outliers import outlier_pool, parse_outliers
from .problem import MethodResult, WeakShotConfig, WeakShotData

__all__ = ["WeakShotResult", "prepare_weakshot", "train_base", "train_novel", "fit_weakshot", "DEFAULT_METHODS",
           "WeakShotConfig", "WeakShotData", "MethodResult"]

DEFAULT_METHODS = ("plain", "density", "simtrans-weights", "simtrans", "oracle")
_LABEL_CANDIDATES = ("label", "labels", "class", "category", "target", "y")


def _check_noise(noisy_labels: str | None, noise: float | None, noise_kind: str) -> None:
    if (noisy_labels is None) == (noise is None):
        raise DataError("give either noisy_labels= (a column of web labels: real noise) or noise= (a rate of "
                        "injected noise), not both and not neither")
    if noise_kind not in NOISE_KINDS:
        raise DataError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}; got {noise_kind!r}")
    if noise is not None and not 0 <= noise < 1:
        raise DataError(f"noise must be a rate in [0, 1); got {noise}")


def _label_column(df: Any, given: str | None, noisy: str) -> str:
    if given is not None:
        if given not in df.columns:
            raise DataError(f"no column {given!r} in the table; its columns are {list(df.columns)}")
        return given
    for c in _LABEL_CANDIDATES:
        if c in df.columns and c != noisy:
            return c
    raise DataError(f"the table has no column of checked labels beside the web labels {noisy!r} (columns "
                    f"{list(df.columns)}); name it with label_column=")


def prepare_weakshot(data: Any, backbone: str | Backbone = "lite0", *, base: Sequence[str] | str | None = None,
                     novel: Sequence[str] | str | None = None, noisy_labels: str | None = None,
                     noise: float | None = None, noise_kind: str = "flip", outliers: str | None = None, seed: int = 0,
                     config: WeakShotConfig | None = None, store: Any = None, cache_dir: str | Path | None = None,
                     input_column: str | None = None, label_column: str | None = None, encoding: str | None = None,
                     on_bad_input: str = "error", batch_size: int = 64, num_workers: int | None = None,
                     device: str = "auto", progress: bool = False,
                     log: Callable[[str], None] | None = None) -> WeakShotData:
    """Features and the weak-shot split.

    Args:
        data: a built-in dataset, a folder of class sub-folders or a table.
        backbone: the backbone (a name or an instance).
        base, novel: class names (lists or comma-separated); a missing side is every other class, and with
            neither the classes alternate.
        noisy_labels: a table column of web (noisy) labels: real noise (then ``noise`` is not given); the table's
            label column (``label_column``) holds the checked labels, empty where nobody checked.
        noise: a rate of injected noise in ``[0, 1)`` (``noise_kind``: flip, outlier or mixed).
        outliers: comma-separated outlier sources (``classes``, ``photos``, ``dataset:<name>``); default:
            ``classes`` when some classes are neither base nor novel, else ``photos``.
        seed: the split's seed.
        config: :class:`WeakShotConfig` (the split's fractions and the outlier pool size).

    Raises:
        DataError: both or neither of ``noisy_labels`` and ``noise``, unknown classes or columns, too few items.
    """
    from ..backbones import create_backbone
    from ..features import FeatureStore
    from ..features.featureset import build_featureset

    cfg = (config or WeakShotConfig()).validate()
    say = log or (lambda m: None)
    _check_noise(noisy_labels, noise, noise_kind)
    bb = create_backbone(backbone) if isinstance(backbone, str) else backbone
    store = store if store is not None else FeatureStore(cache_dir)
    common = dict(store=store, on_bad_input=on_bad_input, batch_size=batch_size, num_workers=num_workers,
                  device=device, progress=progress, log=say)
    if noisy_labels is not None:
        from ..data.sources import from_table, read_table, sorted_classes

        path = Path(str(data)).expanduser()
        if not path.is_file():
            raise DataError(f"noisy_labels={noisy_labels!r} names a column, so the data must be a table file; got "
                            f"{data!r}")
        df = read_table(path, encoding)
        if noisy_labels not in df.columns:
            raise DataError(f"no column {noisy_labels!r} in {path}; its columns are {list(df.columns)}")
        lab = _label_column(df, label_column, noisy_labels)
        src = from_table(path, input_column=input_column, labels=False, require_labels=False,
                         on_bad_input=on_bad_input, encoding=encoding)

        def values(col: str) -> list[str | None]:
            return [None if (v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip())
                    else (str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v).strip())
                    for v in df[col].tolist()]

        true_v, web_v = values(lab), values(noisy_labels)
        classes = sorted_classes([v for v in true_v + web_v if v is not None])
        index = {c: i for i, c in enumerate(classes)}
        fs = build_featureset(src, bb, labels="ignore", split=False, **common)
        pos = fs.positions
        y_true = np.asarray([index[true_v[p]] if true_v[p] is not None else -1 for p in pos], np.int64)
        web = np.asarray([index[web_v[p]] if web_v[p] is not None else -1 for p in pos], np.int64)
        b, n = resolve_classes(classes, base, novel)
        split = split_from_web_labels(y_true, web, classes, b, n, seed=seed, val_fraction=cfg.val_fraction)
        X = np.asarray(fs.X, np.float32)
        parts = [(fs.source.name, fs.source, 0)]
        data_name = fs.source.name
    else:
        from ..data.load import load_data

        source = load_data(data, input_column=input_column, label_column=label_column, on_bad_input=on_bad_input,
                           encoding=encoding)
        b, n = resolve_classes(source.classes, base, novel)  # wrong class names fail before any extraction
        fs = build_featureset(source, bb, labels="required", split=False, **common)
        classes = fs.classes
        others = np.flatnonzero(~np.isin(fs.y, [classes.index(c) for c in b + n]) & (fs.y >= 0))
        names = parse_outliers(outliers) if outliers else (
            ["classes"] if len(others) else ["photos"]) if noise_kind != "flip" else []
        X_parts = [np.asarray(fs.X, np.float32)]
        parts = [(fs.source.name, fs.source, 0)]
        rows = [others] if "classes" in names else []
        if "classes" in names and not len(others):
            raise DataError("outliers='classes' needs classes that are neither base nor novel; every class is one "
                            "of them (name other outlier sources, e.g. outliers='photos')")
        offset = len(fs.X)
        for name in names:
            pool = outlier_pool(name, cfg.outlier_pool, data_name=fs.source.name)
            if pool is None:
                continue
            if pool.modality != fs.source.modality:
                raise DataError(f"outlier source {name!r} holds {pool.modality}s but the data holds "
                                f"{fs.source.modality}s")
            pfs = build_featureset(pool, bb, labels="ignore", split=False, **common)
            X_parts.append(np.asarray(pfs.X, np.float32))
            parts.append((name, pfs.source, offset))
            rows.append(np.arange(offset, offset + len(pfs.X)))
            offset += len(pfs.X)
        X = np.concatenate(X_parts)
        split = inject_noise(fs.y, classes, b, n, rate=float(noise), kind=noise_kind,
                             outlier_rows=np.concatenate(rows) if rows else None, seed=seed,
                             test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction)
        split.noise["outlier_sources"] = names
        data_name = fs.source.name
    say(f"weak-shot split: {len(split.base_classes)} base classes ({len(split.base_train)} + {len(split.base_val)} "
        f"items), {len(split.novel_classes)} novel classes ({len(split.novel_train)} noisy training items, measured "
        f"noise {split.noise.get('measured_rate')}; {len(split.novel_test)} clean test items)")
    return WeakShotData(X, split, classes, parts, bb, data_name, list(fs.skipped))


def train_base(wd: WeakShotData, config: WeakShotConfig | None = None, seed: int = 0) -> torch.nn.Module:
    """The base classifier: a head with one hidden layer on the clean base classes, early-stopped on held-out base
    items (:class:`~transferkit.heads.shallow.MLPHead`, trained through the loop). Returns its head module."""
    from ..heads.shallow import MLPHead

    cfg = (config or WeakShotConfig()).validate()
    sp = wd.split
    head = MLPHead(hidden=(cfg.hidden,), lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.base_epochs,
                   batch_size=cfg.batch_size, dropout=cfg.dropout, patience=cfg.base_patience,
                   class_weight="balanced", random_state=seed)
    head.fit(wd.X[sp.base_train], sp.base_y_train, eval_set=(wd.X[sp.base_val], sp.base_y_val))
    return head.to_module().eval()


@dataclass
class _NovelPlan:
    """The loop's plan of one method's novel classifier on features (picklable)."""

    X: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    X_test: np.ndarray
    base: torch.nn.Module
    simnet: Any
    Z: np.ndarray | None
    k: int
    cfg: WeakShotConfig
    seed: int
    method: str

    def __call__(self, fabric: Any) -> Plan:
        from ..heads.modules import HeadModule
        from ..train.engine import cosine_warmup

        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, 31))
            net = HeadModule(self.X.shape[1], self.k, (cfg.hidden,), cfg.dropout)
        with torch.no_grad():  # the hidden layer (and standardisation) of the base classifier
            net.mean.copy_(self.base.mean)
            net.scale.copy_(self.base.scale)
            net.layers[0].weight.copy_(self.base.layers[0].weight)
            net.layers[0].bias.copy_(self.base.layers[0].bias)
        terms = [WeightedCrossEntropy(self.weights)]
        if self.simnet is not None and cfg.alpha > 0:
            terms.append(graph_term(self.simnet, self.Z, cfg, cfg.novel_epochs))
        stream = TensorStream("labelled", self.X, self.y, batch_size=cfg.batch_size)
        decay = [p for p in net.parameters() if p.ndim > 1]
        rest = [p for p in net.parameters() if p.ndim <= 1]
        lr, wdc = cfg.lr, cfg.weight_decay
        return Plan(model=net, objective=Objectives(*terms), streams={"labelled": stream},
                    param_groups=[{"params": decay, "lr": lr, "weight_decay": wdc, "name": "head"},
                                  {"params": rest, "lr": lr, "weight_decay": 0.0, "name": "head:no_decay"}],
                    optimizer=lambda g: torch.optim.AdamW(g, lr=lr, weight_decay=wdc),
                    schedule=cosine_warmup(0, "cosine", 0.05), final={"test": TensorStream("test", self.X_test)},
                    identity={"stage": "novel", "method": self.method})


def train_novel(wd: WeakShotData, method: str, base: torch.nn.Module, simnet: Any = None,
                config: WeakShotConfig | None = None, seed: int = 0, *, Z: np.ndarray | None = None,
                log: Callable[[str], None] | None = None) -> MethodResult:
    """Train one method's novel classifier on features and score it on the clean novel test split.

    Args:
        wd: the problem (:func:`prepare_weakshot`).
        method: a name of :data:`~transferkit.weakshot.methods.WEAKSHOT_METHODS`.
        base: the base classifier (:func:`train_base`); its hidden layer starts the novel classifier.
        simnet: the similarity net (needed by methods with ``uses_similarity``).
        Z: the similarity net's input for every row of the table (default: ``wd.X``).
    """
    cfg = (config or WeakShotConfig()).validate()
    entry = WEAKSHOT_METHODS.get(method)
    if entry.cap("uses_similarity") and simnet is None:
        raise TransferkitError(f"method {method!r} needs the similarity net trained on the base classes")
    t0 = time.perf_counter()
    sp = wd.split
    Zall = wd.X if Z is None else Z
    clean = sp.clean
    novel = NovelSet(wd.X[sp.novel_train], sp.novel_noisy, simnet, clean, seed, Z=Zall[sp.novel_train])
    meth = create_method(method, cfg)
    w = np.asarray(meth.weights(novel), np.float32)
    graph = bool(entry.cap("graph")) and not meth.trains_plain_  # the open-set gate: plain training
    plan = _NovelPlan(np.asarray(wd.X[sp.novel_train], np.float32), sp.novel_noisy, w,
                      np.asarray(wd.X[sp.novel_test], np.float32), copy.deepcopy(base).cpu(),
                      simnet if graph else None, Zall[sp.novel_train] if graph else None, len(sp.novel_classes), cfg,
                      seed, method)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if len(w) * wd.X.shape[1] < 4_000_000 else threads)
    try:
        r = run_loop(plan, LoopSettings(epochs=cfg.novel_epochs, seed=seed, accelerator="cpu",
                                        label=f"weak-shot {method}"), log=log)
    finally:
        torch.set_num_threads(threads)
    pred = r.predictions["test"].logits.argmax(1)
    correct = pred == sp.novel_y_test
    auc = None if clean is None or np.ptp(w) == 0 else weight_auc(w, clean)
    return MethodResult(method, bool(entry.cap("oracle")), float(correct.mean()), correct, pred, auc, w,
                        time.perf_counter() - t0, r.model.eval(), meth.gate_)


@dataclass
class WeakShotResult:
    """What :func:`fit_weakshot` returns.

    Attributes:
        results: one :class:`MethodResult` per method, in the order asked.
        similarity: the similarity net's held-out base-pair scores (None when no method needed it).
        split: sizes and the noise description.
        warnings: negative results against plain training (McNemar's test on the same test items).
        out: the output folder (None when not written).
        seconds: wall time per stage.
    """

    results: list[MethodResult]
    similarity: dict[str, Any] | None
    split: dict[str, Any]
    warnings: list[str]
    out: Path | None
    seconds: dict[str, float]
    end_to_end: bool = False

    def accuracy(self, method: str) -> float:
        """Test accuracy of ``method``."""
        return next(r.accuracy for r in self.results if r.method == method)


def _check_methods(methods: Sequence[str], split: WeakShotSplit) -> list[str]:
    names = [m.strip() for m in methods if m and m.strip()]
    if not names:
        raise TransferkitError("methods is empty; choose from " + ", ".join(WEAKSHOT_METHODS))
    for m in names:
        WEAKSHOT_METHODS.get(m)
    if split.clean is None and "oracle" in names:
        names.remove("oracle")
    return names


def fit_weakshot(data: Any, *, base: Sequence[str] | str | None = None, novel: Sequence[str] | str | None = None,
                 backbone: str = "lite0", noisy_labels: str | None = None, noise: float | None = None,
                 noise_kind: str = "flip", outliers: str | None = None,
                 methods: Sequence[str] = DEFAULT_METHODS, seed: int = 0, config: WeakShotConfig | None = None,
                 end_to_end: bool = False, out: str | Path | None = None, cache_dir: str | Path | None = None,
                 input_column: str | None = None, label_column: str | None = None, encoding: str | None = None,
                 on_bad_input: str = "error", batch_size: int = 64, num_workers: int | None = None,
                 device: str = "auto", progress: bool = False,
                 log: Callable[[str], None] | None = None) -> WeakShotResult:
    """Weak-shot learning: SimTrans and its baselines on the same split, a table of clean novel-test accuracies.

    Args:
        data, base, novel, backbone, noisy_labels, noise, noise_kind, outliers: the problem
            (:func:`prepare_weakshot`).
        methods: names of :data:`~transferkit.weakshot.methods.WEAKSHOT_METHODS` (the oracle is left out when the
            true labels of the noisy items are unknown).
        seed: seeds the split and every training.
        config: :class:`WeakShotConfig`.
        end_to_end: fine-tune the backbone (base classes, then each method on the novel classes) instead of training
            heads on cached features.
        out: a folder for ``weakshot.json``, ``predictions.csv`` and the ``simtrans`` model (the first method asked
            when SimTrans is not among them), which ``load_run`` / ``transferkit predict`` read; None: nothing
            written.

    Returns:
        A :class:`WeakShotResult`.
    """
    from ..backbones import backbone_entry
    from ..features import FeatureStore

    cfg = (config or WeakShotConfig()).validate()
    say = log or (lambda m: None)
    _check_noise(noisy_labels, noise, noise_kind)
    backbone_entry(backbone)
    for m in methods:
        WEAKSHOT_METHODS.get(m.strip())
    if outliers:
        parse_outliers(outliers)
    run_dir = None
    if out is not None:
        from ..runs import prepare_run_dir

        run_dir = prepare_run_dir(out, "weakshot")
    times: dict[str, float] = {}
    t = time.perf_counter()
    store = FeatureStore(cache_dir)
    wd = prepare_weakshot(data, backbone, base=base, novel=novel, noisy_labels=noisy_labels, noise=noise,
                          noise_kind=noise_kind, outliers=outliers, seed=seed, config=cfg, store=store,
                          input_column=input_column, label_column=label_column, encoding=encoding,
                          on_bad_input=on_bad_input, batch_size=batch_size, num_workers=num_workers, device=device,
                          progress=progress, log=say)
    names = _check_methods(methods, wd.split)
    times["features"] = time.perf_counter() - t
    needs_sim = any(WEAKSHOT_METHODS.get(m).cap("uses_similarity") for m in names)
    if end_to_end:
        from .e2e import run_end_to_end

        results, sim_scores, e2e_times, saved = run_end_to_end(wd, names, cfg, seed, needs_sim, run_dir,
                                                               num_workers, progress, say)
        times.update(e2e_times)
    else:
        t = time.perf_counter()
        say("base classifier: training on the clean base classes")
        base_head = train_base(wd, cfg, seed)
        times["base"] = time.perf_counter() - t
        simnet, sim_scores = None, None
        if needs_sim:
            from .similarity import fit_similarity

            t = time.perf_counter()
            fit = fit_similarity(wd.X, wd.split, cfg, seed, init=base_head if cfg.sim_init == "base" else None)
            simnet, sim_scores = fit.net, fit.scores
            times["similarity"] = time.perf_counter() - t
            say(f"similarity net: balanced accuracy {100 * sim_scores['pair_balanced_accuracy']:.1f}% on held-out "
                "base pairs")
        results = []
        for m in names:
            say(f"novel classes: training with {m}")
            t = time.perf_counter()
            results.append(train_novel(wd, m, base_head, simnet, cfg, seed))
            times[m] = time.perf_counter() - t
        saved = None
        if run_dir is not None:
            keep = next((r for r in results if r.method == "simtrans"), results[0])
            saved = (keep.method, keep.model, wd.backbone)
    warnings = _warnings(results)
    res = WeakShotResult(results, sim_scores, {**wd.split.sizes(), "noise": wd.split.noise,
                                               "base_classes": wd.split.base_classes,
                                               "novel_classes": wd.split.novel_classes}, warnings, run_dir, times,
                         end_to_end)
    if run_dir is not None:
        _write(run_dir, wd, res, cfg, saved, seed, {"data": str(data), "backbone": backbone,
                                                    "noisy_labels": noisy_labels, "noise": noise,
                                                    "noise_kind": noise_kind, "outliers": outliers})
    return res


def _warnings(results: list[MethodResult]) -> list[str]:
    from ..report.metrics import difference_text, negative_transfer

    plain = next((r for r in results if r.method == "plain"), None)
    out = []
    if plain is None:
        return out
    for r in results:
        if r.method == "plain" or r.oracle:
            continue
        t = negative_transfer(r.correct, plain.correct)
        if t["flag"]:
            out.append(f"{r.method} scores below plain training on the noisy labels: {difference_text(t)}")
    return out


def _write(run_dir: Path, wd: WeakShotData, res: WeakShotResult, cfg: WeakShotConfig, saved: Any, seed: int,
           args: dict[str, Any]) -> None:
    import pandas as pd

    from ..report.metrics import paired_difference
    from ..runs import save_model, write_csv, write_json

    sp = wd.split
    plain = next((r for r in res.results if r.method == "plain"), None)
    rows = []
    for r in res.results:
        row = r.row()
        if plain is not None and r is not plain:
            row["vs_plain"] = paired_difference(r.correct, plain.correct)
        rows.append(row)
    write_json(run_dir / "weakshot.json", {
        **args, "seed": seed, "end_to_end": res.end_to_end, "config": cfg.to_dict(), "split": res.split,
        "similarity": res.similarity, "results": rows, "warnings": res.warnings, "seconds": res.seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    items = wd.items
    df = pd.DataFrame({"input": [items.describe(int(i)) for i in sp.novel_test],
                       "label": [sp.novel_classes[int(c)] for c in sp.novel_y_test]})
    for r in res.results:
        df[r.method] = [sp.novel_classes[int(c)] for c in r.y_pred]
    write_csv(run_dir / "predictions.csv", df)
    wdf = pd.DataFrame({"input": [items.describe(int(i)) for i in sp.novel_train],
                        "noisy_label": [sp.novel_classes[int(c)] for c in sp.novel_noisy],
                        "true_label": [sp.novel_classes[int(c)] if c >= 0 else ("(none)" if c == -1 else "")
                                       for c in sp.novel_true]})
    for r in res.results:
        wdf[f"weight_{r.method}"] = r.weights
    write_csv(run_dir / "weights.csv", wdf)
    if saved is not None:
        method, model, backbone = saved
        from ..heads.modules import HeadModule

        head = model if isinstance(model, HeadModule) else HeadModule.from_linear(model.head)
        save_model(run_dir, head, backbone if not res.end_to_end else model.backbone, sp.novel_classes,
                   kind="probe" if not res.end_to_end else "finetuned", backbone_trained=res.end_to_end,
                   extra={"weakshot": {"method": method, "base_classes": sp.base_classes}})
