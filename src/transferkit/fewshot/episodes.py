"""Episodic few-shot evaluation: N-way K-shot episodes over novel classes, every head on the same episodes, mean
accuracy with a 95% confidence interval, as the few-shot literature reports it.

An episode draws ``ways`` classes from the novel classes, then ``shots`` support and ``queries`` query items from
each, without replacement (so no item is both support and query). Each head is fitted on the support features alone
(optionally with the features of base classes, which some heads adapt on) and scored on the queries. The mean
accuracy over ``episodes`` episodes is reported with ``1.96 * sd / sqrt(episodes)`` (sd: the sample standard
deviation of the per-episode accuracies).

References:
    Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (the episodic protocol);
    Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019 (600 episodes, 15 queries, mean ± 95% CI).
"""

from __future__ import annotations

import difflib
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .._random import derive_seed
from ..errors import DataError, TransferkitError

__all__ = ["Episodes", "sample_episodes", "check_episode_settings", "check_classes", "evaluate_episodes",
           "FewShotResult", "HeadSpec", "head_specs", "resolve_class_names", "DEFAULT_EPISODE_HEADS",
           "confidence_interval"]

#: the heads an episodic evaluation compares unless told otherwise: every few-shot head and today's logistic probe
DEFAULT_EPISODE_HEADS = ("protonet", "ncm-l2n", "ncm-cl2n", "logreg", "logreg-l2n", "chen-baseline",
                         "chen-baseline++")


@dataclass(frozen=True)
class Episodes:
    """Sampled episodes: item indices into the data, and the classes of each episode.

    Attributes:
        classes: ``(E, ways)`` class ids of each episode (episode label ``j`` is ``classes[e, j]``).
        support: ``(E, ways * shots)`` item indices, class by class (``shots`` items of label 0, then label 1, ...).
        query: ``(E, ways * queries)`` item indices, class by class.
        ways, shots, queries: the episode shape.
        seed: the seed they were drawn with.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    ways: int
    shots: int
    queries: int
    seed: int

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def support_labels(self) -> np.ndarray:
        """``(E, ways * shots)`` episode labels ``0 .. ways-1`` of the support items."""
        return np.tile(np.repeat(np.arange(self.ways), self.shots), (len(self), 1))

    @property
    def query_labels(self) -> np.ndarray:
        """``(E, ways * queries)`` episode labels of the query items."""
        return np.tile(np.repeat(np.arange(self.ways), self.queries), (len(self), 1))


def check_episode_settings(ways: Any, shots: Any, queries: Any, episodes: Any) -> list[int]:
    """Check the episode shape; return the shot counts as a list.

    Raises:
        TransferkitError: a value that is not an integer in range (the message names it).
    """
    shot_list = [shots] if isinstance(shots, (int, np.integer)) else list(shots)
    for name, v, low in (("ways", ways, 2), ("queries", queries, 1), ("episodes", episodes, 1),
                         *(("shots", s, 1) for s in shot_list)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise TransferkitError(f"{name} must be an integer >= {low}; got {v!r}")
    if not shot_list:
        raise TransferkitError("shots needs at least one shot count, e.g. shots=(1, 5)")
    if len(set(shot_list)) != len(shot_list):
        raise TransferkitError(f"shots lists a shot count twice: {shot_list}")
    return [int(s) for s in shot_list]


def check_classes(counts: dict[str, int], *, ways: int, shots: Sequence[int], queries: int,
                  what: str = "novel") -> None:
    """Check that ``ways`` classes with ``max(shots) + queries`` items each can be drawn from ``counts`` (class ->
    number of items), before any features are extracted.

    Raises:
        DataError: too few classes, or a class with too few items (the message names it and what would fit).
    """
    if ways > len(counts):
        raise DataError(f"ways={ways} but only {len(counts)} {what} class(es) are given ({', '.join(counts)}); use "
                        f"ways={len(counts)} or fewer, or name more {what} classes")
    k = max(shots)
    for c, n in counts.items():
        if n < k + queries:
            fix = (f"use queries={n - k} or fewer" if n - k >= 1 else
                   f"use shots={n - 1} or fewer with queries=1" if n >= 2 else "leave the class out")
            raise DataError(f"{what} class {c!r} has {n} item(s): too few for shots={k} plus queries={queries} "
                            f"per episode; {fix}")


def sample_episodes(y: np.ndarray, classes: Sequence[int], *, ways: int, shots: int, queries: int, episodes: int,
                    seed: int = 0, names: Sequence[str] | None = None) -> Episodes:
    """Draw ``episodes`` N-way K-shot episodes over ``classes`` (class ids in ``y``).

    Each episode picks ``ways`` distinct classes, then ``shots + queries`` distinct items of each: the first
    ``shots`` are the support, the rest the queries, so support and query never share an item. The draw depends on
    ``(seed, ways, shots, queries)`` only.

    Args:
        y: ``(N,)`` integer class ids of the items.
        classes: the class ids episodes may use.
        ways, shots, queries, episodes: the episode shape and count.
        seed: the seed.
        names: class names by id, for messages.

    Raises:
        DataError: fewer than ``ways`` classes, or a class with fewer than ``shots + queries`` items.
    """
    check_episode_settings(ways, [shots], queries, episodes)
    y = np.asarray(y)
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise DataError(f"classes lists a class twice: {classes}")
    pools = {c: np.flatnonzero(y == c) for c in classes}
    label = (lambda c: str(names[c])) if names is not None else str
    check_classes({label(c): len(p) for c, p in pools.items()}, ways=ways, shots=[shots], queries=queries)
    rng = np.random.default_rng(derive_seed(seed, ways, shots, queries))
    cls = np.zeros((episodes, ways), np.int64)
    sup = np.zeros((episodes, ways * shots), np.int64)
    qry = np.zeros((episodes, ways * queries), np.int64)
    for e in range(episodes):
        chosen = rng.choice(len(classes), ways, replace=False)
        for j, ci in enumerate(chosen):
            c = classes[ci]
            items = rng.choice(pools[c], shots + queries, replace=False)
            cls[e, j] = c
            sup[e, j * shots:(j + 1) * shots] = items[:shots]
            qry[e, j * queries:(j + 1) * queries] = items[shots:]
    return Episodes(cls, sup, qry, int(ways), int(shots), int(queries), int(seed))


def confidence_interval(acc: np.ndarray) -> tuple[float, float, float]:
    """``(mean, 95% half-width, sd)`` of per-episode accuracies: ``1.96 * sd / sqrt(n)`` with the sample sd."""
    acc = np.asarray(acc, dtype=np.float64)
    sd = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
    return float(acc.mean()), 1.96 * sd / np.sqrt(len(acc)), sd


@dataclass(frozen=True)
class HeadSpec:
    """One head of an evaluation: the ``label`` it is reported under, the registered ``name``, constructor
    ``params``."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


def head_specs(heads: Sequence[Any] | None) -> list[HeadSpec]:
    """Heads given as names, ``(label, name, params)`` tuples or :class:`HeadSpec`, checked against the registry.

    Raises:
        UnknownNameError: a head that is not registered (the message lists those that are).
        TransferkitError: a malformed entry, or two heads under one label.
    """
    from ..heads import HEADS

    out = []
    for h in (DEFAULT_EPISODE_HEADS if heads is None else heads):
        if isinstance(h, HeadSpec):
            spec = h
        elif isinstance(h, str):
            spec = HeadSpec(h, h)
        elif isinstance(h, (tuple, list)) and len(h) == 3 and isinstance(h[0], str) and isinstance(h[1], str):
            spec = HeadSpec(h[0], h[1], dict(h[2] or {}))
        else:
            raise TransferkitError(f"heads takes names or (label, name, params) tuples; got {h!r}")
        HEADS.get(spec.name)
        out.append(spec)
    if not out:
        raise TransferkitError("heads is empty: name at least one head, e.g. heads=['ncm-cl2n']")
    labels = [s.label for s in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise TransferkitError(f"heads lists {', '.join(dup)} twice")
    return out


@dataclass
class FewShotResult:
    """What :func:`evaluate_episodes` measured.

    Attributes:
        rows: one dict per (head, shot count): ``label``, ``head``, ``params``, ``shots``, ``mean``, ``ci95``, ``sd``,
            ``episodes``, ``seconds`` (accuracies as fractions).
        accuracies: ``label -> shots -> (episodes,)`` per-episode query accuracy.
        settings: the episode shape, classes, seed, heads.
    """

    rows: list[dict[str, Any]]
    accuracies: dict[str, dict[int, np.ndarray]]
    settings: dict[str, Any]

    def row(self, label: str, shots: int) -> dict[str, Any]:
        """The row of one head at one shot count."""
        for r in self.rows:
            if r["label"] == label and r["shots"] == shots:
                return r
        raise KeyError((label, shots))

    def leaders(self, shots: int) -> list[str]:
        """Heads whose mean accuracy at ``shots`` is the best or within the best head's 95% interval (mean >= best
        mean - its half-width), best first."""
        rows = sorted((r for r in self.rows if r["shots"] == shots), key=lambda r: -r["mean"])
        if not rows:
            return []
        floor = rows[0]["mean"] - rows[0]["ci95"]
        return [r["label"] for r in rows if r["mean"] >= floor - 1e-12]

    def to_dict(self, per_episode: bool = True) -> dict[str, Any]:
        """JSON-ready: settings, rows, leaders per shot count, and (optionally) every episode's accuracy."""
        shots = self.settings["shots"]
        doc = {"settings": self.settings, "rows": self.rows, "leaders": {str(k): self.leaders(k) for k in shots}}
        if per_episode:
            doc["accuracies"] = {lab: {str(k): np.round(v, 6).tolist() for k, v in d.items()}
                                 for lab, d in self.accuracies.items()}
        return doc


def resolve_class_names(wanted: Sequence[Any], names: Sequence[str], what: str, where: str = "the data") -> list[str]:
    """``wanted`` as strings, each checked to be one of ``names`` and named once.

    Raises:
        DataError: a class that is not there (the message suggests close names and lists them all), or one named
            twice; ``what`` is the parameter the names came from.
    """
    names = list(names)
    out: list[str] = []
    shown = ",".join(map(str, wanted))
    for c in wanted:
        c = str(c)
        if c not in names:
            close = difflib.get_close_matches(c, names, n=2, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(x) for x in close)}?" if close else ""
            raise DataError(f"{what}={shown!r} names the class {c!r}, which {where} does not have.{hint} Its classes "
                            f"are: {', '.join(names)}")
        if c in out:
            raise DataError(f"{what}={shown!r} names the class {c!r} twice")
        out.append(c)
    return out


def _accepts(fn: Callable[..., Any], param: str) -> bool:
    try:
        return param in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _episode_probabilities(head: Any, Xs: np.ndarray, ys: np.ndarray, Xq: np.ndarray, base: np.ndarray | None,
                           ids: np.ndarray) -> np.ndarray:
    """``(E, Q, N)`` query probabilities: the head's own batched form when it has one, else one fit per episode."""
    from sklearn.base import clone

    if hasattr(head, "fit_predict_episodes"):
        return head.fit_predict_episodes(Xs, ys, Xq, base=base, episode_ids=ids)
    with_base = base is not None and _accepts(head.fit, "base")
    out = []
    for e in range(len(Xs)):
        h = clone(head)
        h.fit(Xs[e], ys[e], **({"base": base} if with_base else {}))
        p = np.zeros((Xq.shape[1], int(ys[e].max()) + 1))
        p[:, np.asarray(h.classes_, dtype=np.int64)] = h.predict_proba(Xq[e])
        out.append(p)
    return np.stack(out)


def evaluate_episodes(X: Any, y: Sequence[Any], *, novel: Sequence[Any] | None = None,
                      base: Sequence[Any] | None = None, base_features: Any = None, ways: int = 5,
                      shots: int | Sequence[int] = (1, 5), queries: int = 15, episodes: int = 600,
                      heads: Sequence[Any] | None = None, seed: int = 0, chunk: int = 100, progress: bool = False,
                      log: Callable[[str], None] | None = None) -> FewShotResult:
    """Evaluate heads on N-way K-shot episodes over the novel classes; mean accuracy ± 95% CI per head and shot count.

    Every head sees the same episodes (drawn per shot count from ``(seed, ways, shots, queries)``), so differences
    between heads are paired. Heads are fitted on the support features only; the query labels only score.

    Args:
        X: ``(N, D)`` features (a memory-mapped array is read episode by episode).
        y: ``(N,)`` labels (compared as strings with ``novel`` and ``base``).
        novel: the classes episodes are drawn from (default: every class not in ``base``).
        base: classes of ``y`` that are base classes: their features go to the heads that adapt on base classes
            (the centre of ``cl2n``); never in an episode.
        base_features: ``(M, D)`` base-class features from elsewhere (e.g. another domain), instead of ``base``.
        ways, shots, queries, episodes: the episode shape (``shots`` may list several counts) and the count.
        heads: names, ``(label, name, params)`` tuples or :class:`HeadSpec` (default
            :data:`DEFAULT_EPISODE_HEADS`); heads that take a ``random_state`` get ``seed`` unless given one.
        seed: the seed of the episodes and of the heads.
        chunk: episodes fitted together (memory: ``chunk * ways * (shots + queries) * D`` floats).
        progress: a progress bar over heads and episodes.
        log: called with one line per head and shot count.

    Returns:
        A :class:`FewShotResult`.

    Raises:
        DataError: unknown class names, classes in both ``novel`` and ``base``, too few novel classes or items.
        TransferkitError: bad episode settings or heads.

    References:
        Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019 (protocol: 600 episodes, 15 queries per
        class, mean ± 95% confidence interval).
    """
    from .._progress import progress_bar
    from ..heads import HEADS, create_head

    shot_list = check_episode_settings(ways, shots, queries, episodes)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise TransferkitError(f"chunk must be an integer >= 1; got {chunk!r}")
    specs = head_specs(heads)
    labels = np.asarray([str(v) for v in np.asarray(y).tolist()])
    if labels.ndim != 1 or len(labels) != len(X):
        raise DataError(f"X has {len(X)} rows but y has {len(labels)} labels")
    names = sorted(set(labels.tolist()))
    if base is not None and base_features is not None:
        raise TransferkitError("give base (class names of this data) or base_features (features from elsewhere), not "
                               "both")
    base_names = resolve_class_names(base, names, "base") if base is not None else []
    novel_names = (resolve_class_names(novel, names, "novel") if novel is not None
                   else [c for c in names if c not in base_names])
    both = [c for c in novel_names if c in base_names]
    if both:
        raise DataError(f"the class(es) {', '.join(map(repr, both))} are in both novel and base: a base class must not "
                        "appear in an episode; name each class in one of them")
    ids = {c: i for i, c in enumerate(names)}
    y_id = np.asarray([ids[c] for c in labels], dtype=np.int64)
    counts = {c: int((labels == c).sum()) for c in novel_names}
    check_classes(counts, ways=ways, shots=shot_list, queries=queries)
    base_X = None
    if base_names:
        base_X = np.asarray(X[np.flatnonzero(np.isin(labels, base_names))], dtype=np.float32)
    elif base_features is not None:
        base_X = np.asarray(base_features, dtype=np.float32)
        if base_X.ndim != 2 or base_X.shape[1] != X.shape[1] or not len(base_X):
            raise DataError(f"base_features must be an (M, {X.shape[1]}) array with M >= 1; got shape {base_X.shape}")
    say = log or (lambda m: None)
    built = []
    for s in specs:
        params = dict(s.params)
        if HEADS.get(s.name).cap("kind") == "torch" and "random_state" not in params:
            params["random_state"] = seed
        built.append((s, create_head(s.name, **params), params))
    accs: dict[str, dict[int, np.ndarray]] = {s.label: {} for s in specs}
    seconds: dict[tuple[str, int], float] = {}
    novel_ids = [ids[c] for c in novel_names]
    with progress_bar(len(shot_list) * len(specs) * episodes, "few-shot episodes", unit="episodes",
                      enabled=progress) as bar:
        for k in shot_list:
            eps = sample_episodes(y_id, novel_ids, ways=ways, shots=k, queries=queries, episodes=episodes, seed=seed,
                                  names=names)
            ys_all, yq_all = eps.support_labels, eps.query_labels
            for s, _, _ in built:
                accs[s.label][k] = np.zeros(episodes)
                seconds[(s.label, k)] = 0.0
            for start in range(0, episodes, chunk):
                sl = slice(start, min(start + chunk, episodes))
                Xs = _rows(X, eps.support[sl])
                Xq = _rows(X, eps.query[sl])
                ep_ids = np.arange(sl.start, sl.stop)
                for s, head, _ in built:
                    t = time.perf_counter()
                    p = _episode_probabilities(head, Xs, ys_all[sl], Xq, base_X, ep_ids)
                    seconds[(s.label, k)] += time.perf_counter() - t
                    accs[s.label][k][sl] = (p.argmax(-1) == yq_all[sl]).mean(1)
                    bar.advance(sl.stop - sl.start)
            for s, _, _ in built:
                m, ci, _ = confidence_interval(accs[s.label][k])
                say(f"{ways}-way {k}-shot {s.label}: {100 * m:.2f} ± {100 * ci:.2f}% "
                    f"({seconds[(s.label, k)]:.1f}s)")
    rows = []
    for k in shot_list:
        for s, _, params in built:
            m, ci, sd = confidence_interval(accs[s.label][k])
            rows.append({"label": s.label, "head": s.name, "params": params, "shots": k, "mean": m, "ci95": ci,
                         "sd": sd, "episodes": int(episodes), "seconds": seconds[(s.label, k)]})
    settings = {"ways": int(ways), "shots": shot_list, "queries": int(queries), "episodes": int(episodes),
                "seed": int(seed), "novel": novel_names, "base": base_names or None,
                "base_items": None if base_X is None else int(len(base_X)),
                "heads": [{"label": s.label, "head": s.name, "params": p} for s, _, p in built],
                "interval": "mean ± 1.96 * sd / sqrt(episodes), sd with ddof=1"}
    return FewShotResult(rows, accs, settings)


def _rows(X: Any, idx: np.ndarray) -> np.ndarray:
    """``X[idx]`` for a 2-D index array, read in sorted order (memory-mapped arrays read each row once)."""
    flat = idx.reshape(-1)
    order = np.argsort(flat, kind="stable")
    got = np.empty((len(flat), X.shape[1]), dtype=np.float32)
    got[order] = np.asarray(X[flat[order]], dtype=np.float32)
    return got.reshape(*idx.shape, X.shape[1])
