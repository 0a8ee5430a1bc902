"""Reading an unlabelled corpus: text files, folders, table columns; empty, binary and wrongly encoded corpora are
refused with a message naming the file and how to fix it."""

from __future__ import annotations

import pandas as pd
import pytest

from transferkit.data.corpus import read_corpus
from transferkit.errors import DataError


def test_a_text_file_is_one_document_per_non_empty_line(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("first note\n\n  second note  \r\nthird\n", encoding="utf-8")
    c = read_corpus(p)
    assert c.texts == ["first note", "second note", "third"] and c.files == [str(p)]
    assert read_corpus(p).digest() == c.digest() != read_corpus(["first note"]).digest()


def test_a_folder_is_read_recursively_in_sorted_order_and_hidden_files_are_left_out(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two\n")
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / ".hidden.txt").write_bytes(b"\x00\x01binary")
    pd.DataFrame({"id": [1, 2], "body": ["three", None]}).to_csv(tmp_path / "c.csv", index=False)
    assert read_corpus(tmp_path).texts == ["one", "two", "three"]


def test_a_table_column_is_detected_or_named(tmp_path):
    p = tmp_path / "t.csv"
    pd.DataFrame({"label": ["x", "y"], "text": ["hello there", "general kenobi"], "other": ["a", "b"]}).to_csv(
        p, index=False)
    assert read_corpus(p).texts == ["hello there", "general kenobi"]
    assert read_corpus(p, column="other").texts == ["a", "b"]
    with pytest.raises(DataError, match="no column 'nope'.*column="):
        read_corpus(p, column="nope")


@pytest.mark.parametrize("content", [b"", b"\n \n\t\n", b"... !!!\n---\n"])
def test_an_empty_corpus_is_a_clear_error(tmp_path, content):
    p = tmp_path / "empty.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=r"empty.txt holds 0 text\(s\) with a word"):
        read_corpus(p)
    with pytest.raises(DataError, match="holds 0 text"):
        read_corpus([])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        read_corpus(tmp_path / "nothing")


def test_a_binary_file_is_a_clear_error(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"model.bin is a binary file \(a NUL byte at position \d+\)"):
        read_corpus(p)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("fine text\n")
    (folder / "b.dat").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
    with pytest.raises(DataError, match="b.dat is a binary file"):
        read_corpus(folder)


def test_text_in_an_unexpected_encoding_is_a_clear_error_and_reads_with_its_encoding(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("un café très bon\nla crème brûlée\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"latin.txt is not valid UTF-8 text: byte 0xe9 at position 6 \(line 1\)"
                                        r".*encoding="):
        read_corpus(p)
    assert read_corpus(p, encoding="cp1252").texts == ["un café très bon", "la crème brûlée"]
    u = tmp_path / "wide.txt"
    u.write_bytes("wide text\n".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text.*encoding='utf-16'"):
        read_corpus(u)
    assert read_corpus(u, encoding="utf-16").texts == ["wide text"]
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        read_corpus(p, encoding="klingon")
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffwith a byte-order mark\n".encode("utf-8"))
    assert read_corpus(bom).texts == ["with a byte-order mark"]


def test_a_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist: give a text file, a folder"):
        read_corpus(tmp_path / "nope.txt")
