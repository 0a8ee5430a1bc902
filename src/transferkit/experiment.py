"""The experiment runner: a grid of cells (method x budget x seed, ...) run once each, journaled, resumable.

``compare`` (strategies x budgets x seeds) and ``adapt`` (methods x seeds) are grids; so are the next commands.
:func:`run_grid` runs every cell that the journal does not already hold, appends each finished cell to the journal
at once (one JSON line, flushed: a kill loses at most the cell in progress), and returns the records in grid order,
marking those read back as ``reused``. A cell's identity is its coordinates plus the hash of the settings it was run
with, so a rerun with other settings computes afresh instead of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ._io import append_journal, read_journal

__all__ = ["Cell", "GridResult", "run_grid", "settings_hash", "JOURNAL"]

JOURNAL = "cells.jsonl"


def settings_hash(obj: Any) -> str:
    """A short, stable hash of JSON-able settings (what makes a cell's result valid)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Cell:
    """One unit of work of a grid.

    Attributes:
        coords: the cell's coordinates, e.g. ``{"strategy": "probe", "budget": 5, "seed": 0}``.
        settings: the hash of the settings its result depends on (:func:`settings_hash`).
        context: anything the runner needs that is not part of the identity (a split, a config object).
    """

    coords: dict[str, Any]
    settings: str
    context: dict[str, Any] = field(default_factory=dict, compare=False)

    def key(self) -> tuple:
        """The identity in the journal: the coordinates and the settings hash."""
        return (*sorted((k, json.dumps(v, default=str)) for k, v in self.coords.items()), self.settings)


@dataclass
class GridResult:
    """What :func:`run_grid` returns: the records in grid order and how many were read back from the journal."""

    records: list[dict[str, Any]]
    reused: int


def _record_key(rec: dict[str, Any], names: Sequence[str]) -> tuple | None:
    try:
        return (*sorted((k, json.dumps(rec[k], default=str)) for k in names), rec["settings_hash"])
    except KeyError:
        return None


def run_grid(cells: Iterable[Cell], run: Callable[[Cell, list[dict[str, Any]]], dict[str, Any]], journal: str | Path,
             *, log: Callable[[dict[str, Any]], None] | None = None) -> GridResult:
    """Run every cell not already in ``journal``; append each finished one at once; return them all in order.

    Args:
        cells: the grid, in the order to run it.
        run: computes one cell: ``run(cell, records_so_far) -> dict`` (the records so far let a cell reuse the result
            of an earlier one on the same split).
        journal: the JSON-lines file (created when missing; a line cut by a kill is skipped).
        log: called with each new record.

    Returns:
        A :class:`GridResult`: records are the run's dicts plus the coordinates, ``settings_hash`` and ``finished``;
        reused ones carry ``reused=True``.
    """
    journal = Path(journal)
    cells = list(cells)
    names = sorted({k for c in cells for k in c.coords})
    done: dict[tuple, dict[str, Any]] = {}
    for rec in read_journal(journal):
        k = _record_key(rec, names)
        if k is not None:
            done[k] = rec
    records: list[dict[str, Any]] = []
    reused = 0
    for cell in cells:
        k = cell.key()
        if k in done:
            records.append({**done[k], "reused": True})
            reused += 1
            continue
        out = run(cell, records)
        rec = {**out, **cell.coords, "settings_hash": cell.settings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_journal(journal, rec)
        records.append({**rec, "reused": False})
        if log is not None:
            log(rec)
    return GridResult(records, reused)
