"""Unlabelled text corpora: what word vectors are trained on and what a text encoder is adapted to.

A corpus is a text file (one document per non-empty line), a folder of text files (read recursively, in sorted
order), a table column (CSV / TSV / Parquet, read like every table in transferkit), or texts in memory. Reading is
strict, because a corpus decoded wrongly trains garbage without any error: a file that is not valid text in its
encoding, a binary file, or a corpus without a single word is refused with a message naming the file, what was
found and how to fix it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError

__all__ = ["Corpus", "read_corpus", "texts_of", "CORPUS_TABLE_SUFFIXES"]

#: files read as tables (a column of texts) rather than as plain text
CORPUS_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
_TEXT_COLUMNS = ("text", "sentence", "review", "document", "content", "body", "note", "comment")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
_WORD = re.compile(r"\w", re.UNICODE)


@dataclass
class Corpus:
    """Texts of an unlabelled corpus and where they came from.

    Attributes:
        texts: the documents (non-empty, stripped), in reading order.
        origin: what was read (a path, ``"<n> texts in memory"``, ...).
        files: the files read (empty for in-memory texts).
    """

    texts: list[str]
    origin: str
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def digest(self) -> str:
        """SHA-256 over the texts (order included): the corpus part of a pretraining cache key."""
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def words(self) -> int:
        """Whitespace-separated words in all texts (for messages and timings)."""
        return sum(len(t.split()) for t in self.texts)

    def __add__(self, other: "Corpus") -> "Corpus":
        return Corpus(self.texts + other.texts, f"{self.origin} + {other.origin}", self.files + other.files)


def read_corpus(spec: Any, *, column: str | None = None, encoding: str | None = None,
                min_texts: int = 1) -> Corpus:
    """Read an unlabelled corpus.

    Args:
        spec: a text file (one document per non-empty line), a folder of text files (every file below it, hidden
            ones excepted, in sorted order), a table (``.csv``, ``.tsv``, ``.parquet``: the texts of ``column``),
            a :class:`Corpus`, or a list of strings.
        column: a table's text column (detected when None: ``text``, ``sentence``, ``review``, ... or the only
            text column).
        encoding: the text encoding of the files (default: UTF-8, a byte-order mark allowed; any other encoding
            is an error that names the file and the offending byte, never a silent guess).
        min_texts: the fewest non-empty texts accepted.

    Raises:
        DataError: a path that does not exist, a binary file, text that is not valid in its encoding, an unknown
            encoding, a table without a text column, or a corpus with fewer than ``min_texts`` texts holding a word.
    """
    if isinstance(spec, Corpus):
        corpus = spec
    elif isinstance(spec, (list, tuple)):
        bad = next((i for i, t in enumerate(spec) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"corpus: item {bad} is a {type(spec[bad]).__name__}; a corpus in memory is a list of "
                            "strings")
        corpus = Corpus([t.strip() for t in spec if t and t.strip()], f"{len(spec)} texts in memory")
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.is_dir():
            corpus = _read_folder(path, encoding)
        elif path.is_file():
            corpus = (_read_table_column(path, column, encoding) if path.suffix.lower() in CORPUS_TABLE_SUFFIXES
                      else Corpus(_read_text_file(path, encoding), str(path), [str(path)]))
        else:
            raise DataError(f"corpus {str(spec)!r} does not exist: give a text file, a folder of text files, or a "
                            "table (.csv, .tsv, .parquet) with a text column")
    else:
        raise DataError(f"corpus: cannot read a {type(spec).__name__}; give a text file, a folder, a table or a list "
                        "of strings")
    with_words = sum(1 for t in corpus.texts if _WORD.search(t))
    if with_words < min_texts:
        where = corpus.origin
        raise DataError(f"corpus {where} holds {with_words} text(s) with a word in them (need at least {min_texts}): "
                        "it is empty, or holds only blank lines or punctuation. Give a corpus of texts, one document "
                        "per line")
    return corpus


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r}; use a Python codec name such as utf-8, cp1252, "
                        "latin-1, utf-16, shift_jis or gb18030") from None


def _decode(path: Path, data: bytes, encoding: str | None) -> str:
    """The text of a file: strict decoding, binary files refused, byte-order marks honoured."""
    if encoding is None:
        for bom, enc in _BOMS:
            if data.startswith(bom):
                raise DataError(f"{path} is {enc.upper()} text (it starts with a {enc.upper()} byte-order mark), not "
                                f"UTF-8; pass encoding={enc!r}")
    else:
        _check_encoding(encoding)
    head = data[:8192]
    wide = encoding is not None and codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    if not wide and b"\x00" in head:
        at = head.index(b"\x00")
        raise DataError(f"{path} is a binary file (a NUL byte at position {at}), not text; leave it out of the "
                        "corpus (a corpus is text files, one document per line)")
    enc = encoding or "utf-8-sig"
    try:
        text = data.decode(enc)
    except UnicodeDecodeError as e:
        bad = e.object[e.start:e.start + 1].hex() if isinstance(e.object, (bytes, bytearray)) else "?"
        line = data[:e.start].count(b"\n") + 1
        shown = "UTF-8" if encoding is None else encoding
        raise DataError(f"{path} is not valid {shown} text: byte 0x{bad} at position {e.start} (line {line}). Pass "
                        "the encoding it was saved in with encoding= (e.g. cp1252, latin-1, utf-16, shift_jis)"
                        ) from None
    controls = sum(1 for c in text[:8192] if ord(c) < 32 and c not in "\t\n\r\f\v")
    if controls > 0.05 * max(1, min(len(text), 8192)):
        raise DataError(f"{path} looks binary ({controls} control characters in its first {min(len(text), 8192)} "
                        "characters), not text; leave it out of the corpus")
    return text


def _read_text_file(path: Path, encoding: str | None) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read corpus file {path} ({e.strerror or e})") from e
    return [line.strip() for line in _decode(path, data, encoding).splitlines() if line.strip()]


def _read_folder(root: Path, encoding: str | None) -> Corpus:
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"corpus folder {root} holds no files; put text files in it (one document per line)")
    texts: list[str] = []
    for p in files:
        if p.suffix.lower() in CORPUS_TABLE_SUFFIXES:
            texts += _read_table_column(p, None, encoding).texts
        else:
            texts += _read_text_file(p, encoding)
    return Corpus(texts, f"{root} ({len(files)} files)", [str(p) for p in files])


def _read_table_column(path: Path, column: str | None, encoding: str | None) -> Corpus:
    import io

    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            text = _decode(path, path.read_bytes(), encoding)
            df = pd.read_csv(io.StringIO(text), sep="\t" if suffix == ".tsv" else ",")
    except DataError:
        raise
    except Exception as e:  # malformed tables fail in many ways
        raise DataError(f"{path}: cannot read the table ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e
    cols = [str(c) for c in df.columns]
    df.columns = cols
    if column is not None:
        if column not in cols:
            raise DataError(f"{path}: no column {column!r}; the columns are {cols}. Name the text column with column=")
    else:
        lower = {c.lower(): c for c in cols}
        column = next((lower[c] for c in _TEXT_COLUMNS if c in lower), None)
        if column is None:
            texty = [c for c in cols if df[c].dtype == object or str(df[c].dtype).startswith(("str", "string"))]
            if len(texty) != 1:
                raise DataError(f"{path}: cannot tell which column holds the corpus texts; the columns are {cols}. "
                                "Name it with column=")
            column = texty[0]
    values = df[column].dropna().astype(str)
    return Corpus([t.strip() for t in values if t.strip()], f"{path} (column {column!r})", [str(path)])


def texts_of(items: Sequence[Any]) -> list[str]:
    """Non-empty stripped strings of a sequence (for adding a dataset's own texts to a corpus)."""
    return [str(t).strip() for t in items if str(t).strip()]
