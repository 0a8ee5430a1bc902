"""Data sources: a folder of class sub-folders, a table (CSV/TSV/Parquet), in-memory arrays / images / texts.

Every source becomes a :class:`DataSource`: a list of items (file paths, PIL images, numpy arrays or
texts), optional labels and domains, and a per-item content key that the feature cache is keyed on.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import BadInputError, DataError
from .images import IMAGE_EXTENSIONS, array_to_image, check_image_header, open_image

__all__ = ["DataSource", "from_folder", "from_table", "from_arrays", "read_table", "sorted_classes", "TABLE_SUFFIXES", "check_labels",
           "looks_like_path", "missing_files_message"]

_INPUT_COLUMNS = ("path", "image", "file", "filename", "filepath", "image_path", "text", "sentence", "review",
                  "document", "content")
_LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".parquet": None, ".pq": None}


def sorted_classes(labels: Sequence[Any]) -> list[str]:
    """Unique labels as strings, numerically sorted when they are all integers, else alphabetically."""
    uniq = sorted({str(v) for v in labels})
    if all(re.fullmatch(r"-?\d+", u) for u in uniq):
        uniq.sort(key=int)
    return uniq


def looks_like_path(s: str) -> bool:
    """Whether a string reads as a file path rather than a text.

    A path is one line and either ends in an image extension (``cat.jpg``, ``my photos/dog 1.png``) or holds a
    path separator and no whitespace (``data/cat``). Texts with spaces and no image extension are texts.
    """
    if not s or len(s) > 4096 or "\n" in s or "\r" in s:
        return False
    if Path(s).suffix.lower() in IMAGE_EXTENSIONS:
        return True
    return ("/" in s or os.sep in s) and not any(c.isspace() for c in s)


def missing_files_message(where: str, missing: Sequence[str], total: int, base: str | None = None) -> str:
    """The message for image files that do not exist: how many, which (the first five), and the fixes."""
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    rel = f"; relative paths are read from {base}" if base else ""
    return (f"{where}: {len(missing)} of {total} input file(s) not found: {shown}{rel}. Check the path(s), or pass "
            'on_bad_input="skip" to leave them out and list them')


def _check_on_bad_input(on_bad_input: str) -> None:
    if on_bad_input not in ("error", "skip"):
        raise DataError(f"on_bad_input must be 'error' or 'skip'; got {on_bad_input!r}")


def check_labels(labels: Sequence[Any], where: str) -> None:
    """Raise a :class:`DataError` naming the positions of missing labels (None, NaN or empty): a label of ``'nan'`` or
    ``'None'`` is never made up."""
    missing = [i for i, v in enumerate(labels) if _missing_label(v)]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise DataError(f"{where}: {len(missing)} label(s) are missing (None, NaN or empty) at position(s) {shown}; "
                        "label those items or leave them out (a label of 'nan' or 'None' is never made up)")


def _missing_label(v: Any) -> bool:
    """None, a float NaN (pandas' and numpy's missing value) or an empty string."""
    if v is None:
        return True
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _label_str(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


@dataclass
class DataSource:
    """Items with optional labels and domains.

    Attributes:
        items: file paths (``str``), PIL images, numpy image arrays, or texts.
        kind: ``"paths"``, ``"images"``, ``"arrays"`` or ``"texts"``.
        labels: class names (strings), one per item, or ``None`` for unlabelled data.
        domains: domain names, one per item, or ``None``.
        name: a short name for reports (dataset name, folder or file name).
        origin: where the data came from (path or description), used in messages.
    """

    items: Sequence[Any]
    kind: str
    labels: np.ndarray | None = None
    domains: np.ndarray | None = None
    name: str = "data"
    origin: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _keys: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("paths", "images", "arrays", "texts"):
            raise ValueError(f"unknown DataSource kind {self.kind!r}")
        if self.labels is not None:
            raw = list(self.labels)
            check_labels(raw, self.origin or self.name)
            self.labels = np.asarray([_label_str(v) for v in raw], dtype=object)
            if len(self.labels) != len(self.items):
                raise DataError(f"{self.origin or self.name}: {len(self.items)} inputs but {len(self.labels)} labels")
        if self.domains is not None:
            self.domains = np.asarray([str(v) for v in self.domains], dtype=object)
            if len(self.domains) != len(self.items):
                raise DataError(f"{self.origin or self.name}: {len(self.items)} inputs but {len(self.domains)} domains")

    # -- basic facts -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def modality(self) -> str:
        """``"text"`` for texts, ``"image"`` for everything else."""
        return "text" if self.kind == "texts" else "image"

    @property
    def classes(self) -> list[str]:
        """Sorted class names (empty for unlabelled data)."""
        return [] if self.labels is None else sorted_classes(self.labels)

    def encoded_labels(self, classes: Sequence[str] | None = None) -> np.ndarray:
        """Labels as integer indices into ``classes`` (default: :attr:`classes`)."""
        if self.labels is None:
            raise DataError(f"{self.origin or self.name} has no labels")
        index = {c: i for i, c in enumerate(classes if classes is not None else self.classes)}
        unknown = sorted({v for v in self.labels if v not in index})
        if unknown:
            raise DataError(f"{self.origin or self.name}: labels {unknown[:5]} are not among the classes {list(index)[:20]}")
        return np.fromiter((index[v] for v in self.labels), dtype=np.int64, count=len(self.labels))

    def describe(self, i: int, width: int = 60) -> str:
        """How to name item ``i`` in a message or a prediction table: a file's path, a text's content (on one
        line, shortened to ``width`` characters with an ellipsis), or ``name[i]`` for in-memory images."""
        if self.kind == "paths":
            return str(self.items[i])
        if self.kind == "texts":
            text = " ".join(str(self.items[i]).split())
            return text if len(text) <= width else text[: width - 1].rstrip() + "\u2026"
        return f"{self.name}[{i}]"

    def subset(self, index: Sequence[int] | np.ndarray) -> "DataSource":
        """A new source with the items at ``index`` (keys carried over, not recomputed)."""
        idx = np.asarray(index, dtype=np.int64)
        items = [self.items[i] for i in idx]
        return DataSource(items, self.kind,
                          None if self.labels is None else self.labels[idx],
                          None if self.domains is None else self.domains[idx],
                          name=self.name, origin=self.origin, skipped=list(self.skipped),
                          _keys=None if self._keys is None else self._keys[idx])

    # -- loading ---------------------------------------------------------------------------------
    def load(self, i: int) -> Any:
        """Item ``i`` ready for a backbone's transform: an RGB PIL image, or the text."""
        item = self.items[i]
        if self.kind == "paths":
            return open_image(item)
        if self.kind == "images":
            from .images import to_rgb

            return to_rgb(item)
        if self.kind == "arrays":
            return array_to_image(item)
        return str(item)

    def check_inputs(self) -> list[tuple[str, str]]:
        """Cheap header check of every image file; returns ``(path, reason)`` for those that fail."""
        if self.kind != "paths":
            return []
        return [(str(p), r) for p in self.items if (r := check_image_header(p)) is not None]

    # -- identity --------------------------------------------------------------------------------
    def item_keys(self) -> np.ndarray:
        """One 16-byte content key per item, shape ``(N, 16)`` uint8.

        Files: absolute path, size and modification time (so an edited file gets a new key); arrays and
        images: their bytes, shape and dtype; texts: the text.
        """
        if self._keys is None:
            keys = np.empty((len(self.items), 16), dtype=np.uint8)
            for i, item in enumerate(self.items):
                keys[i] = np.frombuffer(hashlib.blake2b(self._item_bytes(item), digest_size=16).digest(), np.uint8)
            self._keys = keys
        return self._keys

    def _item_bytes(self, item: Any) -> bytes:
        if self.kind == "paths":
            p = os.path.abspath(item)
            try:
                st = os.stat(p)
                return f"path|{p}|{st.st_size}|{st.st_mtime_ns}".encode()
            except OSError:
                return f"path|{p}|missing".encode()
        if self.kind == "arrays":
            a = np.ascontiguousarray(item)
            return f"array|{a.shape}|{a.dtype}|".encode() + a.tobytes()
        if self.kind == "images":
            return f"image|{item.mode}|{item.size}|".encode() + item.tobytes()
        return b"text|" + str(item).encode("utf-8", "surrogatepass")

    def fingerprint(self) -> str:
        """A hash of all item keys, labels excluded (features do not depend on labels)."""
        return hashlib.sha256(self.item_keys().tobytes()).hexdigest()[:20]

    # -- validation for training -----------------------------------------------------------------
    def require_labels(self, min_classes: int = 2) -> None:
        """Raise a clear :class:`DataError` unless the source is labelled with at least ``min_classes``."""
        where = self.origin or self.name
        if self.labels is None:
            raise DataError(f"{where} has no labels: give a folder with one sub-folder per class, or a table "
                            "with a label column (label_column=)")
        if len(self.items) == 0:
            raise DataError(f"{where} is empty")
        classes = self.classes
        if len(classes) < min_classes:
            raise DataError(f"{where} has {len(classes)} class ({', '.join(classes) or 'none'}); a classifier "
                            f"needs at least {min_classes} classes")


# ---------------------------------------------------------------------------------------------------
def from_folder(root: str | Path, *, on_bad_input: str = "error", require_classes: bool = True) -> DataSource:
    """Images in ``root/<class>/...``, one sub-folder per class (nested folders allowed inside a class).

    With ``require_classes=False`` a folder of images without class sub-folders is accepted (unlabelled,
    e.g. for prediction). Hidden files are ignored. Non-image files raise :class:`BadInputError` unless
    ``on_bad_input="skip"``.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder with one sub-folder per class, or a table file "
                        f"({', '.join(TABLE_SUFFIXES)})")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    if not subdirs:
        if require_classes:
            raise DataError(f"{root} has no class sub-folders: put the images of each class in their own "
                            f"folder, e.g. {root}/cats/1.jpg and {root}/dogs/2.jpg")
        paths, bad = _image_files(loose, on_bad_input)
        if not paths:
            raise DataError(f"{root} contains no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return DataSource([str(p) for p in paths], "paths", name=root.name, origin=str(root))
    paths: list[str] = []
    labels: list[str] = []
    empty: list[str] = []
    nonimage: list[Path] = []
    for d in subdirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(d).parts))
        good, bad = _image_files(files, "skip")
        nonimage += bad
        if not good:
            empty.append(d.name)
            continue
        paths += [str(p) for p in good]
        labels += [d.name] * len(good)
    if nonimage and on_bad_input != "skip":
        shown = ", ".join(str(p) for p in nonimage[:3]) + (f" and {len(nonimage) - 3} more" if len(nonimage) > 3 else "")
        raise BadInputError(f"non-image files in class folders: {shown}. Remove them, or pass on_bad_input=\"skip\"",
                            [(str(p), "not an image file") for p in nonimage])
    if empty:
        raise DataError(f"class folder(s) with no images in {root}: {', '.join(empty)}. Add images or remove the folder")
    return DataSource(paths, "paths", np.asarray(labels, dtype=object), name=root.name, origin=str(root),
                      skipped=[(str(p), "not an image file") for p in nonimage])


def _image_files(files: Sequence[Path], on_bad_input: str) -> tuple[list[Path], list[Path]]:
    good = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    bad = [f for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
    return good, bad


_FALLBACK_ENCODINGS = (("cp1252", "Windows Western European"), ("latin-1", "ISO-8859-1"))


def _read_table(path: Path, encoding: str | None = None):
    """Read a table; a CSV/TSV whose ``encoding`` is not given is read as UTF-8 (with or without a byte-order
    mark), else as cp1252, else as latin-1, with a :class:`~transferkit.errors.TransferkitWarning` saying so."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    sep = TABLE_SUFFIXES[suffix]

    def read(enc: str):
        try:
            return pd.read_csv(path, sep=sep, encoding=enc)
        except (UnicodeDecodeError, LookupError):
            raise
        except Exception as e:
            raise DataError(f"{path}: cannot read table ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e

    if sep is None:
        try:
            return pd.read_parquet(path)
        except ImportError as e:
            raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from e
        except Exception as e:
            raise DataError(f"{path}: cannot read table ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e
    if encoding is not None:
        try:
            return read(encoding)
        except LookupError:
            raise DataError(f"unknown text encoding {encoding!r} for {path}; use a Python codec name such as "
                            "utf-8, cp1252, latin-1, shift_jis or gb18030") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not valid {encoding} text ({_decode_where(e)}); pass the encoding it was "
                            "saved in with encoding= (e.g. utf-8, cp1252, latin-1, shift_jis, gb18030)") from None
    try:
        return read("utf-8-sig")  # UTF-8, with or without a byte-order mark
    except UnicodeDecodeError as e:
        first_error = e
    for enc, what in _FALLBACK_ENCODINGS:
        try:
            df = read(enc)
        except UnicodeDecodeError:
            continue
        import warnings

        from ..errors import TransferkitWarning

        warnings.warn(TransferkitWarning(
            f"{path} is not UTF-8 ({_decode_where(first_error)}); read it as {enc} ({what}). If its text looks "
            "wrong, pass the encoding it was saved in with encoding=, e.g. shift_jis or "
            "gb18030"), stacklevel=4)
        return df
    raise DataError(f"{path}: cannot decode the table's text ({_decode_where(first_error)}); pass its encoding "
                    "with encoding=")  # latin-1 decodes every byte: not reached


def _decode_where(e: UnicodeDecodeError) -> str:
    bad = e.object[e.start:e.start + 1] if isinstance(e.object, (bytes, bytearray)) else b""
    return f"byte 0x{bad.hex()} at position {e.start}" if bad else str(e)


def _pick_column(df, wanted: str | None, candidates: Sequence[str], what: str, path: Path, flag: str) -> str | None:
    cols = list(df.columns)
    if wanted is not None:
        if wanted not in cols:
            raise DataError(f"{path}: no column {wanted!r} for the {what}; the columns are {cols}. "
                            f"Pass the right name with {flag}")
        return wanted
    lower = {str(c).lower(): c for c in cols}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def read_table(path: str | Path, encoding: str | None = None):
    """A CSV / TSV / Parquet table as a pandas DataFrame, every row in file order (the encoding handled as in
    :func:`from_table`): for commands that read more columns than an input and a label (weak-shot web labels,
    multitask label columns), beside the :class:`DataSource` that ``from_table(..., labels=False)`` gives."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"table file not found: {path}")
    return _read_table(path, encoding)


def from_table(path: str | Path, *, input_column: str | None = None, label_column: str | None = None,
               domain_column: str | None = None, require_labels: bool = True,
               on_bad_input: str = "error", encoding: str | None = None, labels: bool = True) -> DataSource:
    """A CSV / TSV / Parquet table with an input column (image path or text), a label and optionally a domain.

    Column names are detected (``path``/``image``/``text``/... and ``label``/``class``/...) unless given.
    Image paths may be relative to the table's folder. The input column holds image paths when most of its
    values end in an image extension, else texts.

    Args:
        on_bad_input: what to do with image paths that do not exist: ``"error"`` raises
            :class:`BadInputError` naming them; ``"skip"`` keeps their rows, and feature extraction records
            them as unreadable ("file not found") so that the caller leaves them out and lists them.
        encoding: text encoding of a CSV/TSV (any Python codec name). Default: UTF-8 (a byte-order mark is
            allowed); a file that is not UTF-8 is read as cp1252, else latin-1, with a
            :class:`~transferkit.errors.TransferkitWarning` naming the encoding used.
        labels: look for a label column (False: the items alone, one per row in file order, whatever other
            columns hold; :func:`read_table` gives those columns).
    """
    _check_on_bad_input(on_bad_input)
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"table file not found: {path}")
    df = _read_table(path, encoding)
    if len(df) == 0:
        raise DataError(f"{path} has no rows")
    inp = _pick_column(df, input_column, _INPUT_COLUMNS, "inputs (image paths or texts)", path, "input_column=")
    if inp is None:
        raise DataError(f"{path}: cannot tell which column holds the inputs; the columns are {list(df.columns)}. "
                        "Name it with input_column=")
    lab = _pick_column(df, label_column, _LABEL_COLUMNS, "labels", path, "label_column=") if labels else None
    if lab is None and require_labels:
        raise DataError(f"{path}: no label column found; the columns are {list(df.columns)}. "
                        "Name it with label_column=")
    dom = _pick_column(df, domain_column, (), "domains", path, "domain_column=") if domain_column else None
    values = df[inp]
    missing_inp = np.flatnonzero(values.isna().to_numpy())
    if len(missing_inp):
        raise DataError(f"{path}: column {inp!r} is empty in {len(missing_inp)} row(s) "
                        f"(rows {', '.join(str(r + 2) for r in missing_inp[:5])}, counting the header as row 1); "
                        "fill or drop them")
    labels = None
    if lab is not None:
        lv = df[lab]
        missing = np.flatnonzero(lv.isna().to_numpy() | (lv.astype(str).str.strip() == "").to_numpy())
        if len(missing):
            raise DataError(f"{path}: column {lab!r} has {len(missing)} missing label(s) "
                            f"(rows {', '.join(str(r + 2) for r in missing[:5])}, counting the header as row 1); "
                            "fill or drop those rows")
        labels = lv.to_numpy()
    domains = df[dom].fillna("").to_numpy() if dom is not None else None
    strs = values.astype(str).tolist()
    looks_like_image = sum(Path(s).suffix.lower() in IMAGE_EXTENSIONS for s in strs[:200]) >= 0.8 * min(len(strs), 200)
    if looks_like_image:
        base = path.parent
        items = [str(p if (p := Path(s).expanduser()).is_absolute() else base / p) for s in strs]
        missing_files = [s for s, it in zip(strs, items) if not os.path.exists(it)]
        if missing_files and on_bad_input != "skip":
            raise BadInputError(missing_files_message(f"{path}, column {inp!r}", missing_files, len(items),
                                                      str(base)),
                                [(m, "file not found") for m in missing_files])
        return DataSource(items, "paths", labels, domains, name=path.stem, origin=str(path))
    return DataSource(strs, "texts", labels, domains, name=path.stem, origin=str(path))


def from_arrays(X: Any, y: Sequence[Any] | None = None, *, domains: Sequence[Any] | None = None,
                name: str = "arrays", on_bad_input: str = "error") -> DataSource:
    """In-memory inputs: a numpy image batch ``(N, H, W[, C])``, a list of PIL images or arrays, image file
    paths, or texts.

    A list of strings is a list of image files when every string looks like a path (see
    :func:`looks_like_path`), else a list of texts. Paths that do not exist are *missing files*, never texts:
    ``on_bad_input="error"`` raises :class:`BadInputError` naming them; ``"skip"`` keeps them as items that
    feature extraction records as unreadable ("file not found"), so they are left out and listed.
    """
    _check_on_bad_input(on_bad_input)
    if isinstance(X, DataSource):
        return X
    if isinstance(X, np.ndarray) and X.dtype.kind in "uifb" and X.ndim in (3, 4):
        items: Sequence[Any] = list(X)
        kind = "arrays"
    else:
        items = list(X)
        if not items:
            raise DataError(f"{name}: no inputs given")
        first = items[0]
        if isinstance(first, Image.Image):
            kind = "images"
        elif isinstance(first, np.ndarray):
            kind = "arrays"
        elif isinstance(first, (str, os.PathLike)):
            wrong = next((i for i, it in enumerate(items) if not isinstance(it, (str, os.PathLike))), None)
            if wrong is not None:
                raise DataError(f"{name}: input {wrong} is a {type(items[wrong]).__name__}, but input 0 is a "
                                f"{type(first).__name__}; all inputs must be of one kind")
            str_items = [str(s) for s in items]
            as_paths = all(looks_like_path(s) for s in str_items)
            kind, items = ("paths", str_items) if as_paths else ("texts", str_items)
            if as_paths and on_bad_input != "skip":
                missing = [s for s in str_items if not os.path.exists(s)]
                if missing:
                    raise BadInputError(missing_files_message(name, missing, len(str_items), os.getcwd()),
                                        [(m, "file not found") for m in missing])
        else:
            raise DataError(f"{name}: cannot use inputs of type {type(first).__name__}; give image arrays, "
                            "PIL images, image file paths or texts")
        expected = {"images": Image.Image, "arrays": np.ndarray, "paths": str, "texts": str}[kind]
        wrong = next((i for i, it in enumerate(items) if not isinstance(it, expected)), None)
        if wrong is not None:
            raise DataError(f"{name}: input {wrong} is a {type(items[wrong]).__name__}, but input 0 is a "
                            f"{type(first).__name__}; all inputs must be of one kind")
    return DataSource(items, kind, None if y is None else np.asarray(list(y), dtype=object),
                      None if domains is None else np.asarray(list(domains), dtype=object), name=name, origin=name)
