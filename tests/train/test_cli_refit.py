"""``fit --refit``: the flag reaches the engine (a selection run, then the refit on all labels) or is refused."""

from __future__ import annotations

import json

from tests.conftest import TINY
from tests.test_cli import assert_user_error, tk


def test_fit_refit_trains_a_selection_run_then_the_refit_on_train_and_validation(image_folder, tmp_path):
    run = tmp_path / "run"
    p = tk("fit", image_folder, "-b", TINY, "--strategy", "bitfit", "--epochs", "2", "--image-size", "32",
           "--refit", "--no-baseline", "--no-report", "-o", run, "-q")
    assert p.returncode == 0, p.stderr
    sel = json.loads((run / "selection" / "finetune.json").read_text())
    refit = json.loads((run / "finetune.json").read_text())
    n_sel = len((run / "selection" / "epochs.csv").read_text().splitlines()) - 1
    assert n_sel == 2 and refit["refit"]["epochs"] == len((run / "epochs.csv").read_text().splitlines()) - 1
    # the refit trains on the selection run's train and validation items together
    assert sel["identity"]["data"]["train"] != refit["identity"]["data"]["train"]
    assert refit["refit"]["labelled"] > 0 and "refit" not in sel["identity"]
    assert json.loads((run / "model" / "model.json").read_text()).get("refit") is True


def test_refit_is_refused_where_it_does_not_apply(image_folder):
    assert_user_error(tk("fit", image_folder, "-b", TINY, "--refit", "-q"), "--refit", "--strategy finetune")
    assert_user_error(tk("fit", image_folder, "-b", TINY, "--strategy", "auto", "--refit", "-q"),
                      "--refit retrains", "--strategy auto races several strategies")
    # semi-supervised, at either level: refused for what it is (the features level once blamed --epochs, --lr, ...)
    for level in ("features", "end-to-end"):
        assert_user_error(tk("fit", image_folder, "-b", TINY, "-n", "2", "-u", "rest", "--strategy", "fixmatch",
                             "--semi-level", level, "--refit", "-q"),
                          "--refit retrains", "--strategy fixmatch is semi-supervised", "leave out --refit")
    # no validation split (fewer than 5 labels per class keep none): refused before the features are extracted, with
    # how to get one
    assert_user_error(tk("fit", image_folder, "-b", TINY, "-n", "3", "--strategy", "bitfit", "--refit",
                         "--epochs", "1", "--image-size", "32", "--no-baseline", "--no-report", "-q"),
                      "3 labels per class", "keep no validation item", "--labels-per-class 5 or more",
                      "--val-fraction above 0")


def test_refit_with_the_probe_is_refused_in_python_too(image_folder, tmp_path):
    import pytest

    from transferkit import fit_run
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match="strategy=probe trains no network"):
        fit_run(image_folder, backbone=TINY, train_config={"refit": True}, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # refused before any work
