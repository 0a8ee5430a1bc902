"""Compare transfer strategies on one dataset: freeze and train a head, or fine-tune, and how much?

:func:`compare_strategies` runs every strategy on the same splits, for several labelled budgets and seeds,
and answers with numbers: test accuracy and macro-F1 (mean ± std over seeds), wall time, the winner per
budget, and **negative transfer** wherever a transfer strategy scores below the from-scratch baseline.

Strategies (one flow, see DESIGN.md):

- ``probe``: frozen backbone, features cached once (:class:`~transferkit.features.FeatureStore`), logistic
  head with C chosen on the validation split: the classic linear probe, fast.
- ``finetune``, ``partial``, ``gradual`` (any engine strategy): :func:`~transferkit.train.engine.finetune`.
- ``scratch``: the engine's ``scratch`` strategy: the same architecture from random weights (the baseline
  that negative transfer is measured against).
- ``cnn``: the small CNN trained from raw pixels (:func:`~transferkit.train.scratch.train_scratch`).
- ``auto``: what ``fit --strategy auto`` runs: the size x similarity rule
  (:func:`~transferkit.transferability.advisor.advise`) on the probe's features of the labelled part of the split,
  then the race of ``RACE_CANDIDATES`` (the probe and ``gradual``), cross-validated over the labelled part
  (:func:`~transferkit.transferability.advisor.race_folds`, :func:`~transferkit.transferability.advisor.race_choice`;
  without a validation split nothing races and the advice decides alone); the cell scores what the strategy it
  chose scored on the same split (run for it when that strategy is not compared).
  :func:`advisor_summary` then says how often the choice was the best of ``probe`` / ``gradual`` / ``partial`` /
  ``finetune`` (``ADVISOR_CHOICES``) and what it lost when not.

For every ``(budget, seed)`` there is ONE split (``make_splits(y, labels_per_class=N, seed=s)``) shared by
all strategies. Every finished cell is appended to ``cells.jsonl`` in ``out`` at once, so a killed
comparison rerun with the same ``out`` and settings skips the finished cells (an engine cell cut short
resumes from its last epoch checkpoint).

Files in ``out``: ``cells.jsonl`` (one line per finished cell), ``compare.json`` (cells, aggregates,
winners, negative-transfer flags, settings), ``compare.csv`` (the cells) and ``report.html``.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .data.splits import Splits, make_splits
from .errors import DataError, TrainingError, TransferkitError, UnknownNameError
from .transferability.advisor import JUDGED_STRATEGIES, RACE_CANDIDATES, RULE_VERSION, TINY_LABELS_PER_CLASS

__all__ = ["CompareResult", "compare_strategies", "aggregate_cells", "negative_transfer_flags", "winners",
           "valid_strategies", "cap_test", "race_advice", "advisor_summary",
           "advisor_sentence"]

CELLS_FILE = "cells.jsonl"
_BASELINES = ("scratch", "cnn")  # the first one present is the yardstick of negative transfer
ADVISOR_CHOICES = JUDGED_STRATEGIES  # what ``auto``'s choice is judged against; it races RACE_CANDIDATES of them
NEAR_POINTS = 1.0  # "within a point of the best" counts as a good choice too


@dataclass
class CompareResult:
    """What :func:`compare_strategies` returns.

    Attributes:
        cells: one dict per ``(strategy, budget, seed)``: ``accuracy``, ``macro_f1``, ``seconds``, split
            sizes and details (``reused`` is True for cells read back from an earlier, interrupted run).
        aggregates: one dict per ``(strategy, budget)``: ``accuracy_mean``, ``accuracy_std``,
            ``macro_f1_mean``, ``macro_f1_std``, ``seconds_mean``, ``seconds_total``, ``n`` (std: population
            std over seeds, 0 for one seed).
        winners: budget -> the strategy with the best mean accuracy.
        negative_transfer: one dict per ``(strategy, budget)`` significantly below the from-scratch baseline
            (:func:`negative_transfer_flags`).
        warnings: the negative-transfer flags as sentences.
        out: the output directory (None when nothing was written).
        settings: the comparison's settings (data, backbone, training configuration, ...).
        reused: number of cells read back from ``cells.jsonl`` instead of computed.
        feature_seconds: time spent getting the probe's features (extraction or cache read), once.
        advisor: :func:`advisor_summary` of the ``auto`` cells (empty without them).
    """

    cells: list[dict[str, Any]]
    aggregates: list[dict[str, Any]]
    winners: dict[int, str]
    negative_transfer: list[dict[str, Any]]
    warnings: list[str]
    out: Path | None
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    reused: int = 0
    feature_seconds: float = 0.0
    advisor: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table: one row per budget, one column per strategy (accuracy % mean ± std)."""
        return _text_table(self.aggregates, self.winners)


def valid_strategies() -> list[str]:
    """Names :func:`compare_strategies` accepts: the engine's strategies, ``cnn`` and ``auto``."""
    from .train.strategies import list_strategies

    return [n for n, _ in list_strategies()] + ["cnn", "auto"]


# ---------------------------------------------------------------------------------------------------------
# pure functions over cells (tested directly)
def aggregate_cells(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (population) std over seeds of accuracy, macro-F1 and seconds per ``(strategy, budget)``."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["strategy"], int(c["budget"])), []).append(c)
    out = []
    for (s, b), cs in groups.items():
        acc = np.array([c["accuracy"] for c in cs], float)
        f1 = np.array([c["macro_f1"] for c in cs], float)
        sec = np.array([c["seconds"] for c in cs], float)
        out.append({"strategy": s, "budget": b, "n": len(cs), "seeds": sorted(int(c["seed"]) for c in cs),
                    "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                    "macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std()),
                    "seconds_mean": float(sec.mean()), "seconds_total": float(sec.sum())})
    return out


def winners(aggregates: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Budget -> the strategy with the highest mean accuracy (ties: the faster one); ``auto`` never wins (it
    scores what the strategy it chose scored)."""
    best: dict[int, dict[str, Any]] = {}
    for a in aggregates:
        b = a["budget"]
        if a["strategy"] == "auto":
            continue
        if b not in best or (a["accuracy_mean"], -a["seconds_mean"]) > (best[b]["accuracy_mean"],
                                                                         -best[b]["seconds_mean"]):
            best[b] = a
    return {b: best[b]["strategy"] for b in sorted(best)}


def negative_transfer_flags(cells: Sequence[dict[str, Any]], baseline: str | None = None,
                            alpha: float = 0.05) -> list[dict[str, Any]]:
    """Every ``(strategy, budget)`` significantly below the from-scratch baseline at that budget.

    The test pools the seeds: each seed's split has the same test items for every strategy, so the per-item outcomes
    of a strategy and of the baseline are paired, and McNemar's exact test over all of them decides
    (:func:`~transferkit.report.metrics.negative_transfer`); a lower mean that the test does not support is not
    flagged. The interval of the accuracy difference is reported either way.

    Args:
        cells: the comparison's cells (each with its per-item ``correct`` outcomes).
        baseline: the from-scratch strategy (default: ``scratch`` if present, else ``cnn``).
        alpha: the test's level.

    Returns:
        One dict per flagged ``(strategy, budget)``: ``strategy``, ``budget``, ``accuracy``, ``baseline``,
        ``baseline_accuracy``, ``gap_points`` (mean points below), ``difference`` (the paired difference: ``diff``,
        ``low``, ``high``, ``p_value``, ``n``).
    """
    from .report.metrics import negative_transfer, unpack_outcomes

    names = {c["strategy"] for c in cells}
    if baseline is None:
        baseline = next((b for b in _BASELINES if b in names), None)
    if baseline is None:
        return []
    base = {(int(c["budget"]), int(c["seed"])): c for c in cells if c["strategy"] == baseline}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        if c["strategy"] in _BASELINES or c["strategy"] == "auto":
            continue
        groups.setdefault((c["strategy"], int(c["budget"])), []).append(c)
    flags = []
    for (s, b), cs in groups.items():
        pairs = [(c, base[(b, int(c["seed"]))]) for c in cs if (b, int(c["seed"])) in base]
        if not pairs or not all("correct" in c and "correct" in bc for c, bc in pairs):
            continue
        mine = np.concatenate([unpack_outcomes(c["correct"]) for c, _ in pairs])
        theirs = np.concatenate([unpack_outcomes(bc["correct"]) for _, bc in pairs])
        test = negative_transfer(mine, theirs, alpha=alpha)
        if test["flag"]:
            acc = float(np.mean([c["accuracy"] for c, _ in pairs]))
            base_acc = float(np.mean([bc["accuracy"] for _, bc in pairs]))
            flags.append({"strategy": s, "budget": b, "accuracy": acc, "baseline": baseline,
                          "baseline_accuracy": base_acc, "gap_points": 100 * (base_acc - acc),
                          "difference": {k: test[k] for k in ("diff", "low", "high", "p_value", "n", "confidence")}})
    return sorted(flags, key=lambda f: (f["budget"], f["strategy"]))


def advisor_summary(cells: Sequence[dict[str, Any]], choices: Sequence[str] = ADVISOR_CHOICES) -> dict[str, Any]:
    """How good were the advisor's choices? Hit rate and accuracy lost, from the ``auto`` cells.

    For every ``(budget, seed)`` with an ``auto`` cell, the candidates are the cells of ``choices`` on the same
    split; the advisor *hits* when the model it kept scored at least the best test accuracy among them and
    otherwise loses ``best - kept`` points (the kept model is the chosen candidate's cell, except that from rule 8 a
    fine-tuning winner is retrained on every labelled item, so it may score above every candidate). For scale, the same is given for always answering one fixed
    strategy (a choice is only scored where every candidate was run).

    Returns:
        ``{}`` without ``auto`` cells, else ``n`` (splits judged), ``hits``, ``hit_rate``, ``near`` /
        ``near_rate`` (best or within ``NEAR_POINTS`` of it), ``mean_accuracy`` (of the choices),
        ``mean_loss_points`` / ``max_loss_points`` (accuracy lost, percentage points, 0 on hits), ``picked``
        (choice -> count), ``best`` (strategy -> how often it was best), ``fixed`` (strategy -> its hit rate, near
        rate, mean accuracy and mean loss when always chosen), ``extra_seconds`` (mean time the race spent beyond
        training the winner alone) and ``per_split`` (one dict per judged split).
    """
    by = {(c["strategy"], int(c["budget"]), int(c["seed"])): c for c in cells}
    per_split = []
    for c in cells:
        if c["strategy"] != "auto":
            continue
        b, s = int(c["budget"]), int(c["seed"])
        cand = {k: by[(k, b, s)]["accuracy"] for k in choices if (k, b, s) in by}
        chosen = c.get("details", {}).get("chosen")
        if len(cand) < len(choices) or chosen not in cand:
            continue
        best_acc = max(cand.values())
        acc = float(c["accuracy"])  # the model auto kept (rule 8: a fine-tuning winner retrained on every label)
        per_split.append({"budget": b, "seed": s, "chosen": chosen, "accuracy": acc,
                          "best": [k for k, v in cand.items() if v == best_acc], "best_accuracy": best_acc,
                          "loss_points": max(0.0, 100 * (best_acc - acc)), "candidates": cand})
    if not per_split:
        return {}
    loss = np.array([p["loss_points"] for p in per_split])
    hits = int(np.sum(loss <= 1e-9))
    near = int(np.sum(loss <= NEAR_POINTS + 1e-9))
    fixed = {}
    for k in choices:
        lk = np.array([100 * (p["best_accuracy"] - p["candidates"][k]) for p in per_split])
        fixed[k] = {"hit_rate": float(np.mean(lk <= 0)), "near_rate": float(np.mean(lk <= NEAR_POINTS + 1e-9)),
                    "mean_accuracy": float(np.mean([p["candidates"][k] for p in per_split])),
                    "mean_loss_points": float(lk.mean())}
    extra = [c.get("details", {}).get("extra_seconds") for c in cells if c["strategy"] == "auto"]
    extra = [float(e) for e in extra if e is not None]
    best_counts: dict[str, int] = {}
    for p in per_split:
        for k in p["best"]:
            best_counts[k] = best_counts.get(k, 0) + 1
    picked: dict[str, int] = {}
    for p in per_split:
        picked[p["chosen"]] = picked.get(p["chosen"], 0) + 1
    return {"n": len(per_split), "hits": hits, "hit_rate": hits / len(per_split), "near": near,
            "near_rate": near / len(per_split), "mean_accuracy": float(np.mean([p["accuracy"] for p in per_split])),
            "mean_loss_points": float(loss.mean()), "max_loss_points": float(loss.max()), "picked": picked,
            "best": best_counts, "fixed": fixed, "extra_seconds": float(np.mean(extra)) if extra else None,
            "per_split": per_split}


def advisor_sentence(summary: dict[str, Any]) -> str:
    """One line from :func:`advisor_summary`: hit rate, accuracy lost, and the fixed strategies for scale."""
    if not summary:
        return "no advisor cells (add 'auto' to the strategies)"
    fixed = ", ".join(f"always {k}: {100 * v['near_rate']:.0f}% / {100 * v['mean_accuracy']:.1f}%"
                      for k, v in summary["fixed"].items())
    extra = summary.get("extra_seconds")
    return (f"auto (the race on validation) was the best of {'/'.join(summary['fixed'])} or within {NEAR_POINTS:g} "
            f"point of it on {summary['near']} of {summary['n']} splits ({100 * summary['near_rate']:.0f}%; the best "
            f"on {summary['hits']}), mean test accuracy {100 * summary['mean_accuracy']:.1f}%, "
            f"{summary['mean_loss_points']:.1f} points below the best on average (at most "
            f"{summary['max_loss_points']:.1f}); for scale (within a point / mean accuracy): {fixed}"
            + (f"; the race cost {extra:.0f}s per split beyond training the winner alone" if extra is not None
               else ""))


def _flag_sentence(f: dict[str, Any]) -> str:
    from .report.metrics import difference_text

    return (f"negative transfer: {f['strategy']} at {f['budget']} labels per class scores "
            f"{100 * f['accuracy']:.1f}% mean test accuracy, {f['gap_points']:.1f} points below the from-scratch "
            f"baseline {f['baseline']!r} ({100 * f['baseline_accuracy']:.1f}%); paired over "
            f"{f['difference']['n']} test items: {difference_text(f['difference'])}")


def race_advice(features: Any, y: np.ndarray, splits: Splits, budget: int, seed: int) -> Any:
    """The size x similarity advice of an ``auto`` cell (its explanation, and its choice where nothing races):
    :func:`~transferkit.transferability.advisor.advise_labelled` on the labelled part of ``splits`` (train +
    validation) with ``budget`` labels per class.

    Args:
        features: the probe's :class:`~transferkit.features.featureset.FeatureSet` (rows = ``y``'s items).
        y: integer labels of every item.
        splits: the cell's split.
        budget: labels per class.
        seed: the cell's seed (the advice's folds and the statistics' subsample).
    """
    from .transferability.advisor import advise_labelled

    lab = np.sort(np.concatenate([splits.train, splits.val]))
    return advise_labelled(features, y, lab, labels_per_class=float(budget), seed=seed)


def cap_test(test: np.ndarray, y: np.ndarray, max_test: int | None, seed: int) -> np.ndarray:
    """At most ``max_test`` test indices, stratified by class (largest remainders), seeded; sorted."""
    test = np.asarray(test, dtype=np.int64)
    if max_test is None or len(test) <= max_test:
        return test
    rng = np.random.default_rng([seed, 7919])
    classes, counts = np.unique(y[test], return_counts=True)
    quota = counts * max_test / len(test)
    take = np.floor(quota).astype(int)
    for j in np.argsort(-(quota - take), kind="stable")[: max_test - take.sum()]:
        take[j] += 1
    keep = [rng.permutation(test[y[test] == c])[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# the entry point
def compare_strategies(data: Any, *, backbone: str = "lite0",
                       strategies: Sequence[str] = ("scratch", "probe", "partial", "finetune"),
                       labels_per_class: Sequence[int] = (5, 20), seeds: Sequence[int] = (0, 1, 2),
                       config: Any = None, strategy_params: dict[str, dict[str, Any]] | None = None,
                       grayscale: bool = False, cache_dir: str | Path | None = None, out: str | Path | None = None,
                       progress: bool = False, log: Callable[[str], None] | None = None,
                       max_test: int | None = None, keep_checkpoints: bool = False, input_column: str | None = None,
                       label_column: str | None = None, encoding: str | None = None) -> CompareResult:
    """Run every strategy on the same splits for every labelled budget and seed; aggregate; write a report.

    Args:
        data: a built-in dataset name, a folder, a table, or a :class:`DataSource` (images).
        backbone: backbone registry name.
        strategies: any of ``probe``, ``finetune``, ``partial``, ``gradual``, ``scratch`` (engine strategies)
            and ``cnn`` (small CNN from raw pixels).
        labels_per_class: the labelled budgets N (each class: N labels, the rest is the test split).
        seeds: one split per ``(N, seed)``; the seed also seeds training.
        config: :class:`~transferkit.train.engine.TrainConfig` for the engine strategies (its ``seed`` is
            replaced by each cell's seed). With ``image_size`` set the probe's features are extracted at that
            size too, so the probe and the engine see the same pixels.
        strategy_params: per strategy, e.g. ``{"partial": {"freeze": 3}}``.
        grayscale: convert the images to 3-channel gray first (:func:`~transferkit.data.transforms.to_grayscale`).
        cache_dir: feature-cache folder for the probe.
        out: output directory (default ``runs/<time>-compare-<data>-<backbone>``); rerun with the same ``out``
            to resume.
        progress: progress bars (feature extraction, epochs).
        log: called with one line per finished cell (e.g. ``print``).
        max_test: evaluate on at most this many test items per cell (stratified, seeded sample of the test
            split; the same for all strategies): makes big test splits affordable on a CPU.
        keep_checkpoints: keep each engine cell's checkpoints (default: deleted once the cell is recorded).
        input_column, label_column, encoding: how to read a table (detected when None).

    Returns:
        A :class:`CompareResult`.

    Raises:
        UnknownNameError: an unknown strategy (the message lists the valid ones).
        DataError: a budget too large for the smallest class, text data, no budgets or seeds.
    """
    from . import __version__
    from .data.load import load_data
    from .experiment import Cell, run_grid, settings_hash
    from .runs import default_run_dir, prepare_run_dir

    say = log or (lambda msg: None)
    strategies, params, budgets, seeds, cfg = _check_settings(strategies, strategy_params, labels_per_class, seeds,
                                                              config, max_test)
    source = load_data(data, input_column=input_column, label_column=label_column, encoding=encoding)
    source.require_labels()
    if source.modality != "image":
        raise DataError(f"{source.origin or source.name} holds {source.modality} data; compare_strategies "
                        "compares image backbones (fine-tuning strategies, CNN baseline)")
    if grayscale:
        from .data.transforms import to_grayscale

        source = to_grayscale(source)
    classes = source.classes
    y = source.encoded_labels(classes)
    smallest = int(np.bincount(y).min())
    too_big = [b for b in budgets if b >= smallest]
    if too_big:
        raise DataError(f"{source.origin or source.name}: the smallest class has {smallest} samples, too few for "
                        f"{', '.join(map(str, too_big))} labels per class (at most {smallest - 1})")
    out_dir = prepare_run_dir(out if out is not None else default_run_dir(f"compare-{source.name}", backbone),
                              "compare", resume=True)
    base_settings = {"data": source.fingerprint(), "labels": hashlib.sha256(y.tobytes()).hexdigest()[:16],
                     "backbone": backbone, "grayscale": bool(grayscale), "max_test": max_test,
                     "transferkit": __version__}

    def cell_settings(strategy: str) -> dict[str, Any]:
        st = {**base_settings, "strategy": strategy}
        if strategy in ("probe", "auto"):
            st["image_size"] = cfg.image_size
        if strategy == "auto":  # scores the strategy it picks, trained as the others are; a new rule, a new cell
            st["choices"] = {k: settings_hash(cell_settings(k)) for k in RACE_CANDIDATES}
            st["rule"] = RULE_VERSION
        elif strategy not in ("probe", "cnn"):
            st["config"] = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "num_workers",
                                                                                 "eval_batch_size")}
            st["params"] = params.get(strategy, {})
        return st

    hashes = {s: settings_hash(cell_settings(s)) for s in dict.fromkeys([*strategies, *ADVISOR_CHOICES])}
    runner = _CellRunner(source, y, classes, backbone, cfg, params, hashes, out_dir, cache_dir, progress,
                         keep_checkpoints, say)
    cells = []
    for budget in budgets:
        for seed in seeds:
            sp = make_splits(y, labels_per_class=budget, seed=seed, classes=classes)
            sp = Splits(sp.train, sp.val, cap_test(sp.test, y, max_test, seed))
            split_id = settings_hash([sp.train.tolist(), sp.val.tolist(), sp.test.tolist()])
            for strategy in strategies:
                cells.append(Cell({"strategy": strategy, "budget": budget, "seed": seed}, hashes[strategy],
                                  {"splits": sp, "split": split_id}))

    def logged(rec: dict[str, Any]) -> None:
        say(f"{rec['strategy']:>9} N={rec['budget']:<4} seed={rec['seed']}: acc {100 * rec['accuracy']:.1f}% "
            f"macro-F1 {100 * rec['macro_f1']:.1f}% ({rec['seconds']:.1f}s)")

    grid = run_grid(cells, runner, out_dir / CELLS_FILE, log=logged)
    return _finish(grid.records, out_dir, {
        **base_settings, "dataset": source.name, "origin": source.origin, "classes": classes,
        "strategies": strategies, "labels_per_class": budgets, "seeds": seeds, "train_config": cfg.to_dict(),
        "strategy_params": params, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, grid.reused,
        runner.feature_seconds)


def _check_settings(strategies: Sequence[str], strategy_params: dict[str, dict[str, Any]] | None,
                    labels_per_class: Sequence[int], seeds: Sequence[int], config: Any, max_test: int | None):
    """Every setting checked before any work: strategies, their parameters, budgets, seeds, the engine config."""
    from .train.engine import TrainConfig
    from .train.strategies import create_strategy

    strategies = list(dict.fromkeys(strategies))
    valid = valid_strategies()
    bad = [s for s in strategies if s not in valid]
    if bad or not strategies:
        raise UnknownNameError(f"unknown strateg{'y' if len(bad) == 1 else 'ies'} {', '.join(map(repr, bad))}; "
                               f"valid strategies: {', '.join(valid)}" if bad else
                               f"no strategies given; valid strategies: {', '.join(valid)}")
    params = {k: dict(v) for k, v in (strategy_params or {}).items()}
    unused = sorted(set(params) - set(strategies))
    if unused:
        raise TransferkitError(f"strategy_params given for {', '.join(unused)}, which are not compared "
                               f"(strategies: {', '.join(strategies)})")
    if {"probe", "cnn", "auto"} & set(params):
        raise TransferkitError("strategy_params do not apply to probe, cnn or auto; give them for engine strategies")
    if "auto" in strategies:  # judged against the strategies it chooses from: run it after them
        strategies = [s for s in strategies if s != "auto"] + ["auto"]
    for s in strategies:
        if s not in ("probe", "cnn", "auto"):
            create_strategy(s, **params.get(s, {}))  # bad parameters fail before any work
    budgets = [int(b) for b in labels_per_class]
    seeds = [int(s) for s in seeds]
    if not budgets or not seeds:
        raise DataError("labels_per_class and seeds must each hold at least one value")
    cfg = config if config is not None else TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TransferkitError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    if max_test is not None and (not isinstance(max_test, int) or max_test < 1):
        raise DataError(f"max_test must be a positive integer or None (got {max_test!r})")
    return strategies, params, budgets, seeds, cfg


class _CellRunner:
    """Computes one (strategy, budget, seed) cell on its split; the probe's features are read once."""

    def __init__(self, source: Any, y: np.ndarray, classes: list[str], backbone: str, cfg: Any, params: dict,
                 hashes: dict[str, str], out_dir: Path, cache_dir: Any, progress: bool, keep_checkpoints: bool,
                 say: Callable[[str], None]):
        self.source, self.y, self.classes, self.backbone, self.cfg = source, y, classes, backbone, cfg
        self.params, self.hashes, self.out_dir, self.cache_dir = params, hashes, out_dir, cache_dir
        self.progress, self.keep_checkpoints, self.say = progress, keep_checkpoints, say
        self.features: Any = None
        self.feature_seconds = 0.0

    def probe_features(self) -> Any:
        """The frozen backbone's features of every item (at ``image_size`` when set), once for all cells."""
        if self.features is None:
            from .backbones import create_backbone
            from .features.featureset import build_featureset

            bb = create_backbone(self.backbone)
            if self.cfg.image_size:
                bb = bb.with_preprocessing(input_size=self.cfg.image_size)  # part of the cache key
            fs = build_featureset(self.source, bb, cache_dir=self.cache_dir, labels="ignore", split=False,
                                  num_workers=0 if self.cfg.num_workers == 0 else None, progress=self.progress)
            self.features = fs
            self.feature_seconds = fs.seconds
            self.say(f"probe features: {self.backbone} {fs.X.shape} in {fs.seconds:.1f}s (extracted {fs.extracted})")
        return self.features

    def __call__(self, cell: Any, done: list[dict[str, Any]]) -> dict[str, Any]:
        c = cell.coords
        out = self.run(c["strategy"], c["budget"], c["seed"], cell.context["splits"], done)
        return {**out, "split": cell.context["split"]}

    def run(self, strategy: str, budget: int, seed: int, sp: Splits, done: list[dict[str, Any]],
            keep: bool = False, fold: int | str = 0, train_epochs: int | None = None) -> dict[str, Any]:
        from .report import classification_metrics
        from .report.metrics import pack_outcomes

        y, classes = self.y, self.classes
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if strategy == "auto":
            return self.auto(budget, seed, sp, done)
        if strategy == "probe":
            X = np.asarray(self.probe_features().X, dtype=np.float32)
            t0 = time.perf_counter()
            from .heads import create_head

            head = create_head("logreg")
            ev = (X[sp.val], y[sp.val]) if len(sp.val) else None
            head.fit(X[sp.train], y[sp.train], eval_set=ev)
            y_pred = head.classes_[head.predict_proba(X[sp.test]).argmax(1)]
            extra = {"C": float(head.C_), "val_accuracy": head.scores_.get(head.C_) if ev is not None else None}
        elif strategy == "cnn":
            from .train.scratch import train_scratch

            r = train_scratch(self.source, y, sp.train, sp.val, sp.test, len(classes), seed=seed)
            y_pred = np.asarray(r.y_pred)
            extra = {k: v for k, v in r.details.items() if isinstance(v, (int, float, str, type(None)))}
        else:
            r = self._finetune(strategy, budget, seed, sp, keep=keep, fold=fold, train_epochs=train_epochs)
            if not np.array_equal(r.test_index, sp.test):
                raise TrainingError(f"the engine predicted other test items than the split's ({r.run_dir})")
            y_pred = np.asarray(r.y_pred)
            extra = {"best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "val_accuracy": r.val_accuracy,
                     "train_seconds": r.train_seconds, "resumed_from": r.resumed_from}
        seconds = time.perf_counter() - t0
        if extra.get("resumed_from"):  # a cell resumed after a kill: count the epochs trained before it too
            seconds += sum(float(row["seconds"]) for row in r.history[: extra["resumed_from"]])
        m = classification_metrics(y[sp.test], y_pred, classes)
        return {"strategy": strategy, "budget": budget, "seed": seed, "accuracy": float(m["accuracy"]),
                "macro_f1": float(m["macro_f1"]), "seconds": seconds, "n_train": int(len(sp.train)),
                "n_val": int(len(sp.val)), "n_test": int(len(sp.test)), "details": extra,
                "correct": pack_outcomes(np.asarray(y_pred) == y[sp.test])}

    def _run_dir(self, strategy: str, budget: int, seed: int, fold: int | str = 0) -> Path:
        """The run directory of an engine cell (``fold`` > 0: of a fold of ``auto``'s cross-validated race;
        ``"all"``: the model ``auto`` keeps, trained on every labelled item)."""
        return self.out_dir / "cells" / (f"{strategy}-n{budget}-s{seed}-{self.hashes[strategy]}"
                                         + (f"-fold{fold}" if isinstance(fold, int) and fold else
                                            f"-{fold}" if fold else ""))

    def _finetune(self, strategy: str, budget: int, seed: int, sp: Splits, fold: int | str = 0,
                  train_epochs: int | None = None, keep: bool = False) -> Any:
        """One engine strategy trained on ``sp`` (resumable; ``fold`` > 0: a fold of ``auto``'s cross-validated
        race, in a run directory of its own, trained for ``train_epochs``). A cell's checkpoints are removed unless
        they are kept; a fold's, and those of a candidate trained for ``auto`` alone (``keep``), stay until the
        ``auto`` cell has every answer (:meth:`auto`), so that a comparison killed in the race resumes from its
        finished runs instead of training them again (and the folds train for the same epoch count)."""
        from .train.engine import finetune

        run_dir = self._run_dir(strategy, budget, seed, fold)
        cfg = replace(self.cfg, seed=seed, **({"refit": False} if train_epochs else {}))  # a fold refits nothing
        r = finetune(self.source, self.y, sp, self.backbone, strategy, cfg, run_dir,
                     resume=True, strategy_params=self.params.get(strategy) or None, classes=self.classes,
                     progress=self.progress, export=False, train_epochs=train_epochs)
        if not (self.keep_checkpoints or keep or fold):
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return r

    def fold_answers(self, strategy: str, budget: int, seed: int, folds: list[Splits],
                     chosen: dict[str, Any]) -> tuple[np.ndarray, float]:
        """``strategy`` on folds ``1..k-1`` of ``auto``'s cross-validated race
        (:func:`~transferkit.transferability.advisor.race_folds`), with the settings its compared cell chose on
        the split (``chosen``: the probe's C, an engine strategy's best epoch): whether it got each held-out item
        right (pooled in fold order), and the seconds it took (a resumed fold counts its earlier epochs too)."""
        from .transferability.advisor import fold_heads, fold_runs

        y = self.y
        t0 = time.perf_counter()
        if strategy == "probe":
            from .heads import create_head

            return (fold_heads(create_head("logreg", C=float(chosen["C"])), self.probe_features().X, y, folds),
                    time.perf_counter() - t0)
        answers, runs = fold_runs(folds, y, lambda j, split: self._finetune(
            strategy, budget, seed, split, fold=j, train_epochs=int(chosen["best_epoch"])))
        earlier = sum(float(row["seconds"]) for r in runs for row in r.history[: r.resumed_from or 0])
        return answers, time.perf_counter() - t0 + earlier

    def kept_run(self, strategy: str, budget: int, seed: int, sp: Splits, epochs: int) -> dict[str, Any]:
        """The model ``auto`` keeps when the engine candidate ``strategy`` wins its race (rule 8): trained on every
        labelled item of the split (:func:`~transferkit.transferability.advisor.kept_split`) for the ``epochs``
        its compared cell chose, scored on the split's test items, in a run directory of its own (resumable)."""
        from .transferability.advisor import kept_split

        return self.run(strategy, budget, seed, kept_split(sp), [], fold="all", train_epochs=epochs)

    def auto(self, budget: int, seed: int, sp: Splits, done: list[dict[str, Any]]) -> dict[str, Any]:
        """``auto``: the candidates (``RACE_CANDIDATES``) race on the split, cross-validated over its labelled items
        (:func:`~transferkit.transferability.advisor.race_folds`; fold 0 is the split itself, whose compared cells
        are reused); the probe stands unless another's held-out answers beat it by more than the noise
        (:func:`~transferkit.transferability.advisor.race_choice`); the size x similarity advice decides alone
        without a validation split. The cell scores what the winner scored on the test items, and its time is the
        whole race (the advice, every candidate on every fold; without a validation split, the advice and its
        pick)."""
        from .report.metrics import pack_outcomes
        from .transferability.advisor import race_choice, race_folds, races

        fs = self.probe_features()
        t0 = time.perf_counter()
        adv = race_advice(fs, self.y, sp, budget, seed)
        advice_seconds = time.perf_counter() - t0
        runs: dict[str, dict[str, Any]] = {}
        trained = []

        def twin(k: str) -> dict[str, Any] | None:  # the compared cell of ``k`` on this split, if any
            return next((c for c in done if (c["strategy"], c["budget"], c["seed"]) == (k, budget, seed)
                         and c["settings_hash"] == self.hashes[k]), None)

        folds = race_folds(self.y, sp, seed=seed) if races(len(sp.val)) else []
        held: dict[str, np.ndarray] = {}
        fold_seconds = 0.0
        for k in RACE_CANDIDATES if folds else ():  # no validation split: nothing races
            runs[k] = twin(k)
            if runs[k] is None or runs[k].get("details", {}).get("val_accuracy") is None:
                # a candidate that is not compared (or a cell recorded before cells kept their validation score):
                # train it for the race
                runs[k] = self.run(k, budget, seed, sp, done, keep=True)
                trained.append(k)
            if len(folds) > 1:
                held[k], sec = self.fold_answers(k, budget, seed, folds, runs[k]["details"])
                fold_seconds += sec
        val = {k: r.get("details", {}).get("val_accuracy") for k, r in runs.items()}
        chosen, why = race_choice(val, len(sp.val), rule=adv.strategy, held_out=held)
        kept = None
        if folds and chosen != "probe":  # rule 8: the winner trains again on every labelled item for its epochs
            kept = self.kept_run(chosen, budget, seed, sp, int(runs[chosen]["details"]["best_epoch"]))
        if not self.keep_checkpoints:  # every run answered: the race's checkpoints are no longer needed to resume
            for k in RACE_CANDIDATES if folds else ():
                for j in range(0 if k in trained else 1, len(folds)):  # 0: the run on the split
                    shutil.rmtree(self._run_dir(k, budget, seed, j) / "checkpoints", ignore_errors=True)
            if kept:
                shutil.rmtree(self._run_dir(chosen, budget, seed, "all") / "checkpoints", ignore_errors=True)
        if chosen not in runs:  # nothing raced: the advice's pick alone (its cost too), trained if not compared
            runs[chosen] = twin(chosen)
            if runs[chosen] is None:
                runs[chosen] = self.run(chosen, budget, seed, sp, done)
                trained.append(chosen)
        winner = kept or runs[chosen]
        race_seconds = (advice_seconds + sum(float(r["seconds"]) for r in runs.values()) + fold_seconds
                        + (kept["seconds"] if kept else 0.0))
        return {"strategy": "auto", "budget": budget, "seed": seed, "accuracy": winner["accuracy"],
                "macro_f1": winner["macro_f1"], "seconds": race_seconds, "correct": winner.get("correct"),
                "n_train": int(len(sp.train)), "n_val": int(len(sp.val)), "n_test": int(len(sp.test)),
                "details": {"chosen": chosen, "rule": adv.strategy, "val_accuracy": val, "folds": len(folds),
                            "kept": ({"trained_on": int(len(sp.labelled)), "epochs": kept["details"]["epochs_run"],
                                      "seconds": kept["seconds"], "split_run_accuracy": runs[chosen]["accuracy"]}
                                     if kept else None),
                            "held_out_accuracy": {k: float(v.mean()) for k, v in held.items()},
                            "held_out": {k: pack_outcomes(v) for k, v in held.items()},
                            "advice_seconds": advice_seconds, "fold_seconds": fold_seconds,
                            "trained_for_auto": trained, "chosen_seconds": float(runs[chosen]["seconds"]),
                            "extra_seconds": race_seconds - float(runs[chosen]["seconds"]),
                            "reasons": why + adv.reasons,
                            "votes": adv.evidence.get("votes"), "bn_shift": adv.evidence.get("bn_shift")}}


def _finish(cells: list[dict[str, Any]], out_dir: Path, settings: dict[str, Any], reused: int,
            feature_seconds: float) -> CompareResult:
    from .runs import write_json

    aggs = aggregate_cells(cells)
    order = {s: i for i, s in enumerate(settings["strategies"])}
    aggs.sort(key=lambda a: (a["budget"], order.get(a["strategy"], 99)))
    win = winners(aggs)
    flags = negative_transfer_flags(cells)
    warns = [_flag_sentence(f) for f in flags]
    adv = advisor_summary(cells)
    result = CompareResult(cells, aggs, win, flags, warns, out_dir, settings, reused, feature_seconds, adv)
    write_json(out_dir / "compare.json", {"settings": settings, "cells": cells, "aggregates": aggs,
                                          "winners": {str(k): v for k, v in win.items()},
                                          "negative_transfer": flags, "warnings": warns,
                                          "feature_seconds": feature_seconds, "advisor": adv})
    import pandas as pd

    from .runs import write_csv

    cols = ["strategy", "budget", "seed", "accuracy", "macro_f1", "seconds", "n_train", "n_val", "n_test", "split",
            "reused"]
    write_csv(out_dir / "compare.csv", pd.DataFrame([{k: c.get(k) for k in cols} for c in cells], columns=cols))
    _write_html(result)
    return result


def _text_table(aggs: Sequence[dict[str, Any]], win: dict[int, str]) -> str:
    strategies = list(dict.fromkeys(a["strategy"] for a in aggs))
    by = {(a["strategy"], a["budget"]): a for a in aggs}
    head = ["labels/class"] + strategies + ["winner"]
    rows = [head]
    for b in sorted({a["budget"] for a in aggs}):
        rows.append([str(b)] + [f"{100 * by[(s, b)]['accuracy_mean']:.1f} ± {100 * by[(s, b)]['accuracy_std']:.1f}"
                                if (s, b) in by else "-" for s in strategies] + [win.get(b, "-")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def _write_html(result: CompareResult) -> None:
    from .report import write_report
    from .report.plots import plot_accuracy_vs_budget, plot_wall_time

    st = result.settings
    aggs = result.aggregates
    strategies = list(dict.fromkeys(a["strategy"] for a in aggs))
    by = {(a["strategy"], a["budget"]): a for a in aggs}
    flagged = {(f["strategy"], f["budget"]) for f in result.negative_transfer}
    budgets = sorted({a["budget"] for a in aggs})
    e = html.escape
    rows = []
    for b in budgets:
        tds = []
        for s in strategies:
            a = by.get((s, b))
            if a is None:
                tds.append('<td class="num">&ndash;</td>')
                continue
            mark = " &#9888;" if (s, b) in flagged else ""
            style = ' style="font-weight:600;background:#f2f7ff"' if result.winners.get(b) == s else ""
            tds.append(f'<td class="num"{style}>{100 * a["accuracy_mean"]:.1f} &plusmn; {100 * a["accuracy_std"]:.1f}'
                       f"{mark}<br><small>F1 {100 * a['macro_f1_mean']:.1f}, {a['seconds_mean']:.1f}s, "
                       f"n={a['n']}</small></td>")
        rows.append(f"<tr><td>{b}</td>{''.join(tds)}<td>{e(result.winners.get(b, '-'))}</td></tr>")
    table = ("<table><tr><th>labels / class</th>" + "".join(f"<th>{e(s)}</th>" for s in strategies)
             + "<th>winner</th></tr>" + "".join(rows) + "</table><p><small>Test accuracy % (mean &plusmn; "
             "population std over seeds), macro-F1 %, mean wall time per cell; &#9888; = below the from-scratch "
             "baseline (negative transfer); the winner is shaded. The probe's time excludes feature extraction "
             f"({result.feature_seconds:.1f}s once for all cells).</small></p>")
    from .report.html import figure_html

    series = {s: [(b, by[(s, b)]["accuracy_mean"], by[(s, b)]["accuracy_std"]) for b in budgets if (s, b) in by]
              for s in strategies}
    title = f"{st.get('dataset')} · {st.get('backbone')}" + (" · grayscale" if st.get("grayscale") else "")
    figs = figure_html(plot_accuracy_vs_budget(series, f"Test accuracy vs labels per class ({title})"),
                   "accuracy vs labels per class")
    wall = [{"name": s, "seconds": float(np.mean([by[(s, b)]["seconds_mean"] for b in budgets if (s, b) in by])),
             "std": float(np.std([c["seconds"] for c in result.cells if c["strategy"] == s]))} for s in strategies]
    figs += figure_html(plot_wall_time(wall, "Mean wall time per cell"), "wall time per strategy")
    write_report(result.out / "report.html", {
        "title": f"Strategy comparison: {title}",
        "subtitle": f"{len(result.cells)} cells: {len(strategies)} strategies x {len(budgets)} budgets x "
                    f"{len(st.get('seeds', []))} seeds, one split per (budget, seed)",
        "warnings": result.warnings,
        "summary": [("winner per budget", ", ".join(f"{b}: {s}" for b, s in result.winners.items())),
                    ("image size", st.get("train_config", {}).get("image_size") or "backbone default"),
                    ("epochs", st.get("train_config", {}).get("epochs")),
                    ("test items per cell", f"at most {st['max_test']}" if st.get("max_test") else "all"),
                    ("cells reused from an earlier run", result.reused)],
        "sections": [{"title": "Accuracy by strategy and budget", "html": table},
                     *([{"title": "What auto chose (the cross-validated race)", "html": _advisor_html(result.advisor)}]
                       if result.advisor else []),
                     {"title": "Figures", "html": figs}],
        "config": st,
    })


def _advisor_html(summary: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{p['budget']}</td><td>{p['seed']}</td><td>{e(p['chosen'])}</td><td>{e(', '.join(p['best']))}</td>"
        f"<td class=\"num\">{100 * p['accuracy']:.1f}</td><td class=\"num\">{100 * p['best_accuracy']:.1f}</td>"
        f"<td class=\"num\">{p['loss_points']:.1f}</td></tr>" for p in summary["per_split"])
    return (f"<p>{e(advisor_sentence(summary))}.</p><table><tr><th>labels / class</th><th>seed</th><th>advisor "
            "chose</th><th>best (measured)</th><th>kept model acc %</th><th>best acc %</th><th>points lost</th></tr>"
            f"{rows}</table><p><small><code>auto</code> sees only the labelled part of each split: every "
            f"candidate ({', '.join(RACE_CANDIDATES)}) chooses its settings on the split's validation part, then "
            "trains with them on four more folds of the labelled items, and the probe stands unless another's "
            "answers on the held-out items beat it by more than the noise; a fine-tuning winner then trains once more "
            "on all the labelled items for the epochs it chose, and that model is kept (the probe's head refits on "
            "them too), so the kept model's accuracy may differ from its strategy's cell; without a validation split "
            f"(fewer than {TINY_LABELS_PER_CLASS} labels per class) nothing races and the size x similarity advice "
            f"decides. The best here is the measured test accuracy of {', '.join(ADVISOR_CHOICES)} on the same split."
            "</small></p>")
