"""Trust: a damaged or crafted run is refused naming the file; bad options fail before any work; no run overwrites
another; the public API does what the README says; labels are never made up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY
from tests.test_cli import assert_user_error, tk
from transferkit import TransferkitError, load_run
from transferkit.pipeline import fit_run


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """A finished probe run on a tiny backbone (copied by each test before it is damaged)."""
    from tests.conftest import make_image

    root = tmp_path_factory.mktemp("shapes")
    for c, name in enumerate(["squares", "discs", "stripes"]):
        (root / name).mkdir()
        for i in range(10):
            make_image(c, seed=100 * c + i).save(root / name / f"{i:02d}.png")
    res = fit_run(str(root), backbone=TINY, out=tmp_path_factory.mktemp("runs") / "run", baseline=False, report=False,
                  progress=False, num_workers=0)
    return res.run_dir, root


def _copy(probe_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(probe_run[0], run)
    return run


def _model_json(run: Path) -> dict:
    return json.loads((run / "model" / "model.json").read_text())


def _write_model_json(run: Path, info: dict) -> None:
    (run / "model" / "model.json").write_text(json.dumps(info))


def _predict_fails(run: Path, probe_run, *needles: str) -> None:
    image = str(next(probe_run[1].glob("discs/*.png")))
    p = tk("predict", run, image, "--quiet", "--workers", "0")
    assert_user_error(p, *needles)


def test_an_intact_run_predicts(probe_run, tmp_path):
    run = _copy(probe_run, tmp_path)
    p = tk("predict", run, str(next(probe_run[1].glob("discs/*.png"))), "--quiet", "--workers", "0")
    assert p.returncode == 0 and "discs" in p.stdout


def test_a_truncated_head_file_is_refused(probe_run, tmp_path):
    run = _copy(probe_run, tmp_path)
    head = run / "model" / "head.safetensors"
    head.write_bytes(head.read_bytes()[:100])
    _predict_fails(run, probe_run, "head.safetensors", "digest")


def test_overwritten_tensor_bytes_are_refused(probe_run, tmp_path):
    run = _copy(probe_run, tmp_path)
    head = run / "model" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-8:] = b"\x00" * 8  # same size, same header, other weights
    head.write_bytes(bytes(data))
    _predict_fails(run, probe_run, "head.safetensors", "does not match the digest")


def test_an_edited_head_configuration_is_refused(probe_run, tmp_path):
    run = _copy(probe_run, tmp_path)
    info = _model_json(run)
    info["head"]["config"]["in_features"] += 1
    _write_model_json(run, info)
    _predict_fails(run, probe_run, "head weights do not fit")


@pytest.mark.parametrize("edit", ["drop", "rename"])
def test_an_edited_class_list_is_refused(probe_run, tmp_path, edit):
    run = _copy(probe_run, tmp_path)
    info = _model_json(run)
    info["classes"] = info["classes"][:-1] if edit == "drop" else ["cats", "dogs", "mice"]
    _write_model_json(run, info)
    _predict_fails(run, probe_run, "model.json", "class")


@pytest.mark.parametrize("field,value", [
    ("head.file", "../outside/x.safetensors"),
    ("head.file", "/etc/passwd"),
    ("backbone.path", "../../outside"),
    ("backbone.path", "/tmp"),
    ("backbone.name", "file:resnet18@/etc/passwd"),
    ("backbone.name", "hf:/any/dir"),
])
def test_a_crafted_run_never_reads_outside_itself(probe_run, tmp_path, field, value):
    run = _copy(probe_run, tmp_path)
    info = _model_json(run)
    part, key = field.split(".")
    if part == "backbone" and key == "path":
        info["backbone"] = {"path": value, "name": "x", "weights": "0" * 64}
    else:
        info[part][key] = value
    _write_model_json(run, info)
    _predict_fails(run, probe_run, "run")


@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "--seed must be an integer >= 0; got -1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1; got 0"),
    (["--batch-size", "-5"], "--batch-size must be an integer >= 1; got -5"),
    (["--workers", "-2"], "--workers must be an integer >= 0; got -2"),
    (["-n", "0"], "--labels-per-class must be an integer >= 1; got 0"),
    (["--device", "cuda"], "--device cuda: no CUDA GPU is visible here"),
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
])
def test_bad_numeric_options_fail_before_any_work(tmp_path, monkeypatch, args, needle):
    import torch

    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import transferkit.features.featureset as fs

    def never(*a, **k):
        raise AssertionError("features were extracted before the options were checked")

    monkeypatch.setattr(fs, "build_featureset", never)
    p = tk("fit", "clipart", "--out", tmp_path / "r", "--quiet", *args)
    assert_user_error(p, needle)
    assert not (tmp_path / "r").exists()


def test_a_fit_never_overwrites_a_run_or_mixes_with_a_users_files(probe_run, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.md").write_text("my notes")
    p = tk("fit", probe_run[1], "--backbone", TINY, "--out", folder, "--no-baseline", "--quiet")
    assert_user_error(p, "is not empty", "--out")
    assert [f.name for f in folder.iterdir()] == ["notes.md"]
    run = _copy(probe_run, tmp_path)
    before = (run / "model" / "model.json").read_text()
    p = tk("fit", probe_run[1], "--backbone", TINY, "--out", run, "--no-baseline", "--quiet")
    assert_user_error(p, "holds a transferkit fit run")
    assert (run / "model" / "model.json").read_text() == before


def test_the_public_api_named_in_the_readme(probe_run, tmp_path):
    from transferkit import DomainAdapter, TransferClassifier  # noqa: F401 - the README imports both from here

    images = sorted(probe_run[1].glob("*/*.png"))
    labels = [p.parent.name for p in images]
    da = DomainAdapter(TINY, "coral-closed").fit(([str(p) for p in images], labels), [str(p) for p in images])
    pred = da.predict([str(p) for p in images[:4]])  # a list of paths, not a path
    assert len(pred) == 4 and set(pred) <= set(labels)


@pytest.mark.parametrize("bad", [float("nan"), None, ""])
def test_a_missing_label_is_an_error_not_a_class(bad):
    from transferkit import TransferClassifier
    from transferkit.errors import DataError

    X = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3)).astype(np.uint8)
    y = ["a", "b", bad, "a", "b", "a"]
    with pytest.raises(DataError, match=r"1 label\(s\) are missing .* position\(s\) 2"):
        TransferClassifier(backbone=TINY).fit(X, y)


def test_the_scratch_baseline_shows_its_progress(capsys, tmp_path):
    from transferkit.data import from_arrays
    from transferkit.train.scratch import train_scratch

    rng = np.random.default_rng(0)
    src = from_arrays(rng.integers(0, 255, (12, 16, 16, 3)).astype(np.uint8), ["a", "b"] * 6)
    y = src.encoded_labels()
    train_scratch(src, y, np.arange(8), np.arange(8, 10), np.arange(10, 12), 2, epochs=3, size=16, progress=True)
    err = capsys.readouterr().err
    assert "small CNN from scratch" in err and "3/3" in err, err
