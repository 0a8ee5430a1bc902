"""Atomic file writes: everything transferkit writes goes to a temporary name in the same folder first and is
renamed into place, so a reader (or a run killed mid-write, even with ``kill -9``) never sees half a file."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_bytes", "read_journal", "append_journal", "json_default", "file_digest",
           "default_cache_dir"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``.

    Missing parent folders are created.
    The temporary file is removed if ``write`` or the rename fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename when ``fsync``)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    atomic_write(path, write)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex), read in chunks: recorded when a file is written, checked when it is read."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE``, else ``$XDG_CACHE_HOME/transferkit``, else ``~/.cache/transferkit``."""
    env = os.environ.get("TRANSFERKIT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transferkit"


def json_default(o):
    """``json.dumps`` fallback: numpy scalars and arrays as Python values, anything else as its ``str``."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_journal(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines journal (one finished unit of work per line; see :func:`append_journal`).

    A last line cut short by a kill is skipped and ended with a newline, so the next append starts a line of its
    own instead of being glued to the broken one.
    """
    import json

    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("\n")
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def append_journal(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one whole line (flushed), the unit that makes long comparisons resumable."""
    import json

    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=json_default) + "\n")
        fh.flush()
