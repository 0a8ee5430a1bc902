"""Tasks for multitask learning: several label columns over the same items, each with its own missing labels.

A user names tasks as table columns (``--tasks sentiment,condition,rating``; ``name:regression`` or
``name:classification`` overrides the detected kind: a numeric column with more than 20 distinct values, or
non-integer values, is a regression task). Built-in datasets declare their tasks in :data:`BUILTIN_TASKS`
(``drug-reviews``: ``sentiment``, ``condition``, ``useful``, ``rating``; ``clipart``: ``category``, ``super``).

Labels of all tasks sit in one float array ``Y (N, T)``: a class index for a classification task, a value for a
regression task, NaN where the item has no label for that task. An item needs a label of at least one task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.sources import DataSource, sorted_classes
from ..errors import DataError
from ..heads.multitask import TASK_KINDS

__all__ = ["Task", "TaskData", "load_tasks", "parse_tasks", "split_items", "BUILTIN_TASKS", "MultitaskSplits"]


@dataclass
class Task:
    """One task: its name, kind and (classification) class names."""

    name: str
    kind: str
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "kind": self.kind, **({"classes": self.classes} if self.classes else {})}


@dataclass
class TaskData:
    """Items and the labels of every task.

    Attributes:
        source: the items (a :class:`DataSource`, unlabelled: the tasks hold the labels).
        tasks: the tasks, in the order of ``Y``'s columns.
        Y: ``(N, T)`` class index or value per item and task, NaN where missing.
        name: the data's name.
        notes: what a reader should know about the tasks (how a built-in task was derived).
    """

    source: DataSource
    tasks: list[Task]
    Y: np.ndarray
    name: str
    notes: list[str] = field(default_factory=list)

    def subset(self, rows: np.ndarray) -> "TaskData":
        """The items at ``rows`` (positions into the source)."""
        rows = np.asarray(rows, np.int64)
        return TaskData(self.source.subset(rows), self.tasks, self.Y[rows], self.name, list(self.notes))

    def task(self, name: str) -> Task:
        """The task called ``name``."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise DataError(f"no task {name!r}; the tasks are {[t.name for t in self.tasks]}")


def parse_tasks(spec: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """``"a,b:regression"`` -> ``[("a", None), ("b", "regression")]``.

    Raises:
        DataError: no task, a repeated task or an unknown kind.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[tuple[str, str | None]] = []
    for p in (str(x).strip() for x in parts):
        if not p:
            continue
        name, _, kind = p.partition(":")
        name, kind = name.strip(), (kind.strip() or None)
        if kind is not None and kind not in TASK_KINDS:
            raise DataError(f"task {name!r}: the kind after ':' must be one of {', '.join(TASK_KINDS)}; got {kind!r}")
        out.append((name, kind))
    if not out:
        raise DataError("tasks is empty; name the label columns to learn, e.g. tasks='sentiment,condition,rating'")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise DataError(f"a task is named twice in tasks={','.join(names)!r}")
    return out


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _label_str(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def column_task(name: str, values: Sequence[Any], kind: str | None = None) -> tuple[Task, np.ndarray]:
    """A task from one column's values (missing: None, NaN or empty): its kind (detected when None), its classes and
    its label column of ``Y``.

    Raises:
        DataError: no label at all, a regression column with text in it, or a classification task with one class.
    """
    vals = list(values)
    present = [v for v in vals if not _missing(v)]
    if not present:
        raise DataError(f"task {name!r} has no labels at all")
    numeric = []
    for v in present:
        try:
            numeric.append(float(v))
        except (TypeError, ValueError):
            numeric = None
            break
    if kind is None:
        kind = ("regression" if numeric is not None and (len(set(numeric)) > 20
                                                         or any(not float(x).is_integer() for x in numeric))
                else "classification")
    col = np.full(len(vals), np.nan)
    if kind == "regression":
        if numeric is None:
            bad = next(v for v in present if not _is_number(v))
            raise DataError(f"task {name!r} is a regression task but holds the text {bad!r}; name it {name}:"
                            "classification, or clean the column")
        for i, v in enumerate(vals):
            if not _missing(v):
                col[i] = float(v)
        return Task(name, kind), col
    classes = sorted_classes([_label_str(v) for v in present])
    if len(classes) < 2:
        raise DataError(f"classification task {name!r} has one class ({classes[0]!r}); a task needs at least 2")
    index = {c: k for k, c in enumerate(classes)}
    for i, v in enumerate(vals):
        if not _missing(v):
            col[i] = index[_label_str(v)]
    return Task(name, kind, classes), col


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


# -- built-in datasets' tasks ------------------------------------------------------------------------------------
def _drug_tasks(wanted: list[tuple[str, str | None]]) -> TaskData:
    from ..data.builtin import drug_reviews_table, load_builtin

    df = drug_reviews_table()
    src = load_builtin("drug-reviews")
    cond = df["condition"].where(df["condition"].notna(), None)
    top = [c for c, _ in cond.dropna().value_counts().sort_index().sort_values(ascending=False, kind="stable")
           .items()][:10]
    score = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
    columns: dict[str, tuple[list[Any], str, str]] = {
        "sentiment": (df["rating"].astype(str).tolist(), "classification",
                      "sentiment: the dataset's 3-level rating (negative / neutral / positive)"),
        "condition": ([c if c in top else None for c in cond.tolist()], "classification",
                      "condition: the 10 most frequent conditions; reviews of other conditions have no label"),
        "useful": (np.log1p(df["usefulCount"].astype(float)).tolist(), "regression",
                   "useful: log(1 + the number of readers who found the review useful)"),
        "rating": ([score.get(str(v), np.nan) for v in df["rating"]], "regression",
                   "rating: the 3-level rating as a number (-1, 0, +1); the package ships no 1-10 rating"),
    }
    return _from_columns(src, columns, wanted, "drug-reviews")


def _clipart_tasks(wanted: list[tuple[str, str | None]]) -> TaskData:
    from ..data.builtin import load_builtin

    src = load_builtin("clipart")
    labels = [str(v) for v in src.labels]
    columns = {"category": (labels, "classification", "category: the 12 clip-art categories"),
               "super": ([v.split("_")[0] for v in labels], "classification",
                         "super: the super-category, the part of the category before '_' (animals, food, ...)")}
    return _from_columns(src, columns, wanted, "clipart")


def _from_columns(src: DataSource, columns: dict[str, tuple[list[Any], str, str]],
                  wanted: list[tuple[str, str | None]], name: str) -> TaskData:
    tasks, cols, notes = [], [], []
    for task, kind in wanted:
        if task not in columns:
            raise DataError(f"{name} has no task {task!r}; its tasks are {', '.join(columns)}")
        values, default_kind, note = columns[task]
        t, col = column_task(task, values, kind or default_kind)
        tasks.append(t)
        cols.append(col)
        notes.append(note)
    unlabelled = DataSource(src.items, src.kind, name=src.name, origin=src.origin)
    return TaskData(unlabelled, tasks, np.stack(cols, 1), name, notes)


#: built-in dataset -> a function of the wanted ``[(task, kind or None)]`` giving its :class:`TaskData`
BUILTIN_TASKS: dict[str, Callable[[list[tuple[str, str | None]]], TaskData]] = {
    "drug-reviews": _drug_tasks, "clipart": _clipart_tasks}


def load_tasks(data: Any, tasks: str | Sequence[str], *, input_column: str | None = None,
               encoding: str | None = None, on_bad_input: str = "error") -> TaskData:
    """Items and task labels: a built-in dataset with declared tasks, or a table whose columns are the tasks.

    Raises:
        DataError: unknown tasks or columns, a folder (one label per item), no item with any label.
    """
    import os

    wanted = parse_tasks(tasks)
    s = str(data)
    if s in BUILTIN_TASKS and not os.path.exists(s):
        td = BUILTIN_TASKS[s](wanted)
    else:
        from ..data.builtin import DATASETS

        if s in DATASETS and not os.path.exists(s):
            raise DataError(f"the built-in dataset {s!r} has one label per item; multitask data is a table with one "
                            f"column per task, or one of the built-in datasets with tasks: {', '.join(BUILTIN_TASKS)}")
        from ..data.sources import from_table, read_table

        path = Path(s).expanduser()
        if not path.is_file():
            raise DataError(f"multitask data must be a table (one column per task) or one of "
                            f"{', '.join(BUILTIN_TASKS)}; got {s!r}")
        df = read_table(path, encoding)
        missing = [n for n, _ in wanted if n not in df.columns]
        if missing:
            raise DataError(f"{path} has no column(s) {missing}; its columns are {list(df.columns)}")
        src = from_table(path, input_column=input_column, labels=False, require_labels=False,
                         on_bad_input=on_bad_input, encoding=encoding)
        tasks_, cols = [], []
        for n, k in wanted:
            t, col = column_task(n, df[n].tolist(), k)
            tasks_.append(t)
            cols.append(col)
        td = TaskData(src, tasks_, np.stack(cols, 1), src.name)
    none = np.isnan(td.Y).all(1)
    if none.all():
        raise DataError(f"{td.name}: no item has a label of any task")
    if none.any():
        td = td.subset(np.flatnonzero(~none))
        td.notes.append(f"{int(none.sum())} item(s) without a label of any task left out")
    return td


@dataclass
class MultitaskSplits:
    """Positions of the train / validation / test items."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        """Items per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_items(Y: np.ndarray, tasks: Sequence[Task], *, val_fraction: float = 0.2, test_fraction: float = 0.2,
                seed: int = 0) -> MultitaskSplits:
    """A seeded split of the items, stratified by the first classification task's labels (missing labels form a
    stratum of their own), so every class of it appears in each split where it can.

    Raises:
        DataError: fractions out of range, or too few items for three splits.
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise DataError(f"val_fraction and test_fraction must be in [0, 1) and (0, 1) with a sum below 1; got "
                        f"{val_fraction}, {test_fraction}")
    n = len(Y)
    if n < 6:
        raise DataError(f"{n} items are too few for train, validation and test splits")
    rng = np.random.default_rng(seed)
    strat_col = next((i for i, t in enumerate(tasks) if t.kind == "classification"), None)
    strata = np.zeros(n) if strat_col is None else np.nan_to_num(Y[:, strat_col], nan=-1.0)
    train, val, test = [], [], []
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        k_test = int(round(test_fraction * len(idx)))
        k_val = int(round(val_fraction * len(idx)))
        test.append(idx[:k_test])
        val.append(idx[k_test:k_test + k_val])
        train.append(idx[k_test + k_val:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64)  # noqa: E731
    sp = MultitaskSplits(cat(train), cat(val), cat(test))
    if not len(sp.train) or not len(sp.test):
        raise DataError("the split left no training or no test items; give more items")
    return sp
