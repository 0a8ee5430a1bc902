"""Turning what a user names into a :class:`~transferkit.data.sources.DataSource`: a built-in dataset name, a folder,
a table file, or a list of inputs to predict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from .builtin import DATASETS, load_builtin
from .sources import TABLE_SUFFIXES, DataSource, from_arrays, from_folder, from_table

__all__ = ["load_data", "collect_inputs"]


def load_data(spec: Any, *, input_column: str | None = None, label_column: str | None = None,
              domain_column: str | None = None, on_bad_input: str = "error", require_labels: bool = True) -> DataSource:
    """Turn what a user names into a :class:`DataSource`: a built-in dataset name, a folder, or a table file."""
    if isinstance(spec, DataSource):
        return spec
    s = str(spec)
    if s in DATASETS and not os.path.exists(s):
        return load_builtin(s)
    p = Path(s).expanduser()
    if p.is_dir():
        return from_folder(p, on_bad_input=on_bad_input, require_classes=require_labels)
    if p.is_file():
        if p.suffix.lower() in TABLE_SUFFIXES:
            return from_table(p, input_column=input_column, label_column=label_column, domain_column=domain_column,
                              require_labels=require_labels)
        raise DataError(f"{p}: not a folder or a table (.csv, .tsv, .parquet)")
    raise DataError(f"no such dataset, folder or file: {s!r}. Built-in datasets: {', '.join(DATASETS)}")


def collect_inputs(inputs: Any, *, input_column: str | None = None, on_bad_input: str = "error") -> DataSource:
    """Inputs for prediction as one unlabelled :class:`DataSource`.

    Accepts a built-in dataset name, a folder (with or without class sub-folders), a table, a list of image
    files / folders / tables, or in-memory images or texts.
    """
    if isinstance(inputs, DataSource):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = list(inputs)
    if items and all(isinstance(i, (str, os.PathLike)) for i in items) and any(
            Path(i).exists() or str(i) in DATASETS for i in items):
        parts: list[DataSource] = []
        for i in items:
            p = Path(i).expanduser()
            if p.is_dir():
                src = from_folder(p, on_bad_input=on_bad_input, require_classes=False)
            elif p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
                src = load_data(p, input_column=input_column, require_labels=False)
            elif p.is_file() or str(i) in DATASETS:
                src = load_data(str(i), require_labels=False) if str(i) in DATASETS else from_arrays([str(p)])
                if src.kind == "texts" and p.is_file():
                    raise DataError(f"{p}: not an image file or a table; give images, folders or a .csv/.tsv/.parquet")
            else:
                raise DataError(f"input not found: {i}")
            parts.append(src)
        kinds = {s.kind for s in parts}
        if len(kinds) > 1 and kinds != {"paths"}:
            raise DataError(f"inputs mix kinds of data ({', '.join(sorted(kinds))}); predict one kind at a time")
        if len(parts) == 1:
            return DataSource(parts[0].items, parts[0].kind, name=parts[0].name, origin=parts[0].origin,
                              skipped=parts[0].skipped)
        return DataSource([x for s in parts for x in s.items], parts[0].kind, name="inputs", origin="inputs",
                          skipped=[x for s in parts for x in s.skipped])
    return from_arrays(items, name="inputs")


