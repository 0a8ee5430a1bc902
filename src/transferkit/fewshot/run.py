"""``fewshot_run``: the ``transferkit fewshot`` job as a function — data and backbone to cached features, episodic
evaluation of every head over the novel classes, results written to a run folder."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import __version__
from ..errors import DataError, TransferkitError
from .episodes import (FewShotResult, check_classes, check_episode_settings, evaluate_episodes, head_specs,
                       resolve_class_names)

__all__ = ["FewShotRun", "fewshot_run"]


@dataclass
class FewShotRun:
    """What :func:`fewshot_run` produced.

    Attributes:
        result: the :class:`~transferkit.fewshot.episodes.FewShotResult`.
        run_dir: the folder holding ``fewshot.json`` (settings, rows, leaders, every episode's accuracy) and
            ``fewshot.csv`` (one row per head and shot count).
        data, base_data: what the novel and base classes were read from.
        timings: seconds per stage.
    """

    result: FewShotResult
    run_dir: Path
    data: str
    base_data: str | None
    timings: dict[str, float]


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [str(v).strip() for v in items if str(v).strip()]
    return out or None


def fewshot_run(data: Any, *, novel: str | Sequence[str] | None = None, base: str | Sequence[str] | None = None,
                base_data: Any = None, backbone: str = "lite0", ways: int = 5, shots: int | Sequence[int] = (1, 5),
                queries: int = 15, episodes: int = 600, heads: Sequence[Any] | None = None, seed: int = 0,
                out: str | Path | None = None, cache_dir: str | Path | None = None, on_bad_input: str = "error",
                batch_size: int = 64, num_workers: int | None = None, device: str = "auto",
                input_column: str | None = None, label_column: str | None = None, encoding: str | None = None,
                progress: bool = True, log: Callable[[str], None] | None = None) -> FewShotRun:
    """Episodic few-shot evaluation of heads on a backbone's cached features; writes a run folder.

    Every setting and class name is checked before any feature is extracted.

    Args:
        data: built-in dataset, folder of class sub-folders, table, or a labelled DataSource.
        novel: the classes episodes are drawn from (names, or one comma-separated string; default: every class of
            ``data`` that is not a base class).
        base: base classes, used to adapt on (never in an episode): classes of ``data``, or of ``base_data`` when it
            is given (default there: all of its classes).
        base_data: another dataset holding the base classes (cross-domain: e.g. ``mnist5k`` base, ``digits`` novel).
        backbone: the backbone whose features the heads use.
        ways, shots, queries, episodes: the episodes (N-way, K-shot counts, queries per class, how many).
        heads: head names or ``(label, name, params)`` tuples (default: every few-shot head and ``logreg``).
        seed: the seed of the episodes and heads.
        out: the run folder (default ``runs/<time>-<data>-<backbone>-fewshot``); it must be new or empty.
        cache_dir, on_bad_input, batch_size, num_workers, device, input_column, label_column, encoding, progress:
            as in :func:`~transferkit.pipeline.fit_run`.
        log: called with one-line progress messages.

    Returns:
        A :class:`FewShotRun`.

    References:
        Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019 (the evaluation protocol).
    """
    from ..backbones import backbone_entry, create_backbone
    from ..data import load_data
    from ..features import FeatureStore
    from ..features.featureset import ON_BAD_INPUT, build_featureset
    from ..runs import default_run_dir, prepare_run_dir, write_csv, write_json

    say = log or (lambda m: None)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    shot_list = check_episode_settings(ways, shots, queries, episodes)
    if on_bad_input not in ON_BAD_INPUT:
        raise TransferkitError(f"on_bad_input must be one of {', '.join(ON_BAD_INPUT)}; got {on_bad_input!r}")
    specs = head_specs(heads)
    backbone_entry(backbone)  # unknown names fail before the slow work
    source = load_data(data, input_column=input_column, label_column=label_column, on_bad_input=on_bad_input,
                       encoding=encoding)
    source.require_labels()
    where = source.origin or source.name
    base_source = None
    if base_data is not None:
        base_source = load_data(base_data, on_bad_input=on_bad_input)
        base_source.require_labels(min_classes=1)
    novel_l, base_l = _names(novel), _names(base)
    base_classes = base_source.classes if base_source is not None else source.classes
    if base_l is not None:
        base_l = resolve_class_names(base_l, base_classes, "base",
                                     (base_source.origin or base_source.name) if base_source is not None else where)
    elif base_source is not None:
        base_l = list(base_source.classes)
    if novel_l is not None:
        novel_l = resolve_class_names(novel_l, source.classes, "novel", where)
    else:
        novel_l = [c for c in source.classes if base_source is not None or c not in (base_l or [])]
    if base_source is None and base_l:
        both = [c for c in novel_l if c in base_l]
        if both:
            raise DataError(f"the class(es) {', '.join(map(repr, both))} are in both novel and base: a base class "
                            "must not appear in an episode; name each class in one of them")
    labels = np.asarray(source.labels, dtype=object).astype(str)
    check_classes({c: int((labels == c).sum()) for c in novel_l}, ways=ways, shots=shot_list, queries=queries)

    bb = create_backbone(backbone)
    run_dir = prepare_run_dir(out if out is not None else default_run_dir(source.name, f"{backbone}-fewshot"),
                              "fewshot")
    store = FeatureStore(cache_dir)
    t = time.perf_counter()
    common = dict(store=store, split=False, on_bad_input=on_bad_input, batch_size=batch_size, num_workers=num_workers,
                  device=device, progress=progress, log=say)
    fs = build_featureset(source, bb, **common)
    base_features = None
    if base_source is not None:
        fsb = build_featureset(base_source, bb, labels="required", **common)
        keep = np.isin(np.asarray(fsb.classes)[fsb.y], base_l)
        base_features = np.asarray(fsb.X[np.flatnonzero(keep)], dtype=np.float32)
    timings["features"] = time.perf_counter() - t
    y = np.asarray(fs.classes, dtype=object)[fs.y].astype(str)
    t = time.perf_counter()
    result = evaluate_episodes(fs.X, y, novel=novel_l, base=None if base_source is not None else base_l,
                               base_features=base_features, ways=ways, shots=shot_list, queries=queries,
                               episodes=episodes, heads=specs, seed=seed, progress=progress, log=say)
    timings["episodes"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    base_where = None if base_source is None else (base_source.origin or base_source.name)
    if base_source is not None:
        result.settings.update(base=base_l, base_data=base_where)
    doc = {"transferkit": __version__, "python": platform.python_version(), "data": where, "base_data": base_where,
           "backbone": bb.name, "backbone_identity": bb.identity(), "features_view": str(fs.path),
           "skipped": len(fs.skipped), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "timings": timings,
           **result.to_dict()}
    write_json(run_dir / "fewshot.json", doc)
    import pandas as pd

    write_csv(run_dir / "fewshot.csv",
              pd.DataFrame([{k: v for k, v in r.items() if k != "params"} for r in result.rows]))
    return FewShotRun(result, run_dir, where, base_where, timings)
