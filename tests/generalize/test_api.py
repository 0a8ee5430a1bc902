"""The leave-one-domain-out API, its errors, the CLI command, and the RotatedMNIST / ColoredMNIST builders."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_cli import assert_user_error, tk
from transferkit.data.domains import make_colored_mnist, make_rotated_mnist
from transferkit.data.sources import DataSource
from transferkit.errors import DataError, TransferkitError, UnknownNameError
from transferkit.generalize import DGConfig, generalize, load_domains


def tiny_domains(n=24):
    """Three domains of 8x8 images: a bright square (class a) or a bar (class b), at three brightness levels."""
    r = np.random.default_rng(0)
    items, labels, doms = [], [], []
    for d, level in (("dim", 80), ("mid", 160), ("bright", 250)):
        for i in range(n):
            img = (r.random((8, 8)) * 30).astype(np.uint8)
            if i % 2:
                img[2:6, 2:6] = level
            else:
                img[:, 3:5] = level
            items.append(img)
            labels.append("a" if i % 2 else "b")
            doms.append(d)
    return DataSource(items, "arrays", labels, domains=doms, name="tiny")


def test_leave_one_domain_out_end_to_end_with_training_domain_selection(tmp_path):
    cfg = DGConfig(steps=10, eval_every=5, batch_size=8, device="cpu")
    res = generalize(tiny_domains(), methods=["mixstyle"], backbone="small-cnn", image_size=8, seeds=[0], config=cfg,
                     out=tmp_path / "run", leave_out="mid,bright")
    assert [(r["target"], r["method"]) for r in res.rows] == [(t, m) for t in ("mid", "bright")
                                                              for m in ("erm", "mixstyle")]
    for c in res.cells:
        assert 0 <= c["accuracy"] <= 1 and 0 <= c["oracle_accuracy"] <= 1
        assert c["target"] not in c["train_domains"] and len(c["train_domains"]) == 2
    s = {x["method"]: x for x in res.summary}
    assert s["erm"]["worst"] == min(r["accuracy_mean"] for r in res.rows if r["method"] == "erm")
    assert s["mixstyle"]["mean_vs_erm"] == pytest.approx(s["mixstyle"]["mean"] - s["erm"]["mean"])
    assert (tmp_path / "run" / "generalize.json").is_file()
    again = generalize(tiny_domains(), methods=["mixstyle"], backbone="small-cnn", image_size=8, seeds=[0], config=cfg,
                       out=tmp_path / "run", leave_out="mid")  # resumed: nothing retrained
    assert all(c.get("reused") for c in again.cells) and len(again.cells) == 2
    assert "selected" not in res.table() and "oracle" in res.table()


def test_errors_name_the_value_and_the_fix(tmp_path):
    with pytest.raises(TransferkitError, match="end to end"):
        generalize(tiny_domains(), methods=["mixstyle"], backbone="lite0", out=tmp_path / "a")
    with pytest.raises(UnknownNameError, match="valid: all, erm"):
        generalize(tiny_domains(), methods=["dro"], backbone="lenet", out=tmp_path / "b")
    with pytest.raises(DataError, match="not a domain"):
        generalize(tiny_domains(), leave_out="huge", methods=["erm"], backbone="lenet", out=tmp_path / "c")
    one = DataSource([np.zeros((8, 8), np.uint8)] * 4, "arrays", ["a", "b"] * 2, name="one")
    with pytest.raises(DataError, match="one domain"):
        load_domains([one])
    with pytest.raises(TransferkitError, match="params maps a method"):
        DGConfig(params={"irm": 3}).validate()


def test_load_domains_subsets_per_class_and_checks_classes():
    doms = load_domains([tiny_domains()], max_per_domain=10)
    assert list(doms) == ["dim", "mid", "bright"]
    assert all(len(d) == 10 and sorted(set(d.labels)) == ["a", "b"] for d in doms.values())


def test_cli_generalize_lists_methods_and_refuses_bad_input():
    p = tk("generalize", "--list")
    assert p.returncode == 0 and "mixstyle" in p.stdout and "end to end only" in p.stdout
    assert_user_error(tk("generalize"), "--domains")
    assert_user_error(tk("generalize", "--domains", "mnist5k,digits", "--max-per-domain", "1"), "--max-per-domain")


def test_colored_mnist_is_the_irm_construction():
    r = np.random.default_rng(0)
    digits = (r.random((3000, 28, 28)) * 255).astype(np.uint8)
    y = np.arange(3000) % 10
    X, lab, dom = make_colored_mnist(digits, y)
    assert X.shape == (3000, 28, 28, 3) and list(dict.fromkeys(dom)) == ["+90%", "+80%", "-90%"]
    green = X[..., 1].reshape(3000, -1).sum(1) > 0
    assert not (X[..., 2].any()) and not np.any(green & (X[..., 0].reshape(3000, -1).sum(1) > 0))
    agree = {e: float(np.mean(green[dom == e] == lab[dom == e])) for e in ("+90%", "+80%", "-90%")}
    assert agree["+90%"] == pytest.approx(0.9, abs=0.04) and agree["+80%"] == pytest.approx(0.8, abs=0.04)
    assert agree["-90%"] == pytest.approx(0.1, abs=0.04)
    # label: digit < 5, flipped 25% of the time (the digit order was permuted with the images)
    X2, lab2, _ = make_colored_mnist(digits, y)
    assert np.array_equal(X, X2) and np.array_equal(lab, lab2)  # deterministic


def test_rotated_mnist_rotates_disjoint_parts():
    digits = np.zeros((60, 28, 28), np.uint8)
    digits[:, 4:24, 13:15] = 255  # a vertical bar
    X, y, dom = make_rotated_mnist(digits, np.arange(60) % 10)
    assert list(dict.fromkeys(dom)) == ["rot0", "rot15", "rot30", "rot45", "rot60", "rot75"]
    assert all((dom == d).sum() == 10 for d in set(dom))
    assert np.array_equal(X[dom == "rot0"], digits[:10])
    bar = X[dom == "rot75"][0]
    assert bar[13, 4:24].sum() > bar[4:24, 13].sum()  # nearly horizontal at 75 degrees
