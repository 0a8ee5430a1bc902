"""Turning what a user names into a :class:`~transferkit.data.sources.DataSource`: a built-in dataset name, a folder,
a table file, or a list of inputs to predict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import BadInputError, DataError
from .builtin import DATASETS, load_builtin
from .images import IMAGE_EXTENSIONS
from .sources import (TABLE_SUFFIXES, DataSource, from_arrays, from_folder, from_table, looks_like_path,
                      missing_files_message)

__all__ = ["load_data", "collect_inputs"]


def load_data(spec: Any, *, input_column: str | None = None, label_column: str | None = None,
              domain_column: str | None = None, on_bad_input: str = "error", require_labels: bool = True,
              encoding: str | None = None) -> DataSource:
    """Turn what a user names into a :class:`DataSource`: a built-in dataset name, a folder, or a table file.

    ``on_bad_input`` applies to non-image files in class folders and to missing image files named in a table;
    ``encoding`` is a table's text encoding (see :func:`from_table`).
    """
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
                              require_labels=require_labels, on_bad_input=on_bad_input, encoding=encoding)
        raise DataError(f"{p}: not a folder or a table (.csv, .tsv, .parquet)")
    raise DataError(f"no such dataset, folder or file: {s!r}. Built-in datasets: {', '.join(DATASETS)}")


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
    if on_bad_input not in ("error", "skip"):
        raise DataError(f"on_bad_input must be one of error, skip; got {on_bad_input!r}")
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
