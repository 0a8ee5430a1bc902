"""``transferkit fewshot`` end to end on tiny data, its refusals (one line naming the value, exit 2, before any
feature is extracted), and ``fit -n 1`` saying which head it picked and why."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY
from tests.test_cli import assert_user_error, tk
from transferkit.fewshot import FEWSHOT_HEAD


def test_fewshot_command_runs_end_to_end_and_writes_its_results(image_folder, tmp_path):
    out = tmp_path / "fs"
    p = tk("fewshot", image_folder, "-b", TINY, "--ways", "2", "--shots", "1,2", "--queries", "3", "--episodes", "8",
           "--novel", "squares,discs", "--base", "stripes", "--heads", "ncm-cl2n,protonet,logreg", "--workers", "0",
           "-o", out, "--quiet")
    assert p.returncode == 0, p.stderr
    assert "2-way accuracy %" in p.stdout and "1-shot" in p.stdout and "2-shot" in p.stdout
    assert "ncm-cl2n" in p.stdout and "base: stripes (12 items)" in p.stdout
    doc = json.loads((out / "fewshot.json").read_text())
    assert doc["settings"]["novel"] == ["squares", "discs"] and doc["settings"]["base"] == ["stripes"]
    assert {(r["label"], r["shots"]) for r in doc["rows"]} == {(h, k) for h in ("ncm-cl2n", "protonet", "logreg")
                                                               for k in (1, 2)}
    assert len(doc["accuracies"]["protonet"]["2"]) == 8
    assert all(0 <= r["mean"] <= 1 and r["ci95"] >= 0 for r in doc["rows"])
    assert (out / "fewshot.csv").is_file()
    again = tmp_path / "fs2"  # seeded: the same numbers again
    p = tk("fewshot", image_folder, "-b", TINY, "--ways", "2", "--shots", "1,2", "--queries", "3", "--episodes", "8",
           "--novel", "squares,discs", "--base", "stripes", "--heads", "ncm-cl2n,protonet,logreg", "--workers", "0",
           "-o", again, "--quiet")
    assert p.returncode == 0 and json.loads((again / "fewshot.json").read_text())["accuracies"] == doc["accuracies"]


@pytest.mark.parametrize("args, needles", [
    (["--ways", "3", "--novel", "squares,discs"], ["--ways 3 but only 2 novel class(es)", "--ways 2 or fewer"]),
    (["--ways", "2", "--shots", "1,12"], ["novel class 'discs' has 12 item(s): too few for --shots 12 plus --queries 3",
                           "--shots 11 or fewer"]),
    (["--novel", "squares,cats"], ["--novel squares,cats names the class 'cats'", "discs, squares, stripes"]),
    (["--base", "squares", "--novel", "squares,discs"], ["'squares' are in both novel and base"]),
    (["--base-data", "no_such_dataset"], ["no such dataset"]),
    (["--shots", "1,x"], ["--shots must be comma-separated integers"]),
    (["--ways", "1"], ["--ways must be an integer >= 2; got 1"]),
    (["--queries", "0"], ["--queries must be an integer >= 1; got 0"]),
    (["--heads", "ncm"], ["unknown head 'ncm'", "ncm-cl2n"]),
])
def test_fewshot_refuses_bad_options_naming_the_value(image_folder, tmp_path, args, needles):
    out = tmp_path / "fs"
    p = tk("fewshot", image_folder, "-b", TINY, "--queries", "3", *args, "-o", out, "--quiet")
    assert_user_error(p, *needles)
    assert not out.exists(), "refused before any work"


def test_fit_with_one_label_per_class_says_which_head_and_why(image_folder, tmp_path):
    p = tk("fit", image_folder, "-b", TINY, "-n", "1", "--no-baseline", "--no-report", "--workers", "0", "-o",
           tmp_path / "run", "--quiet")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert f"head: {FEWSHOT_HEAD} (1 label per class to train on" in text and "choose another with --head" in text
    assert f"random:test_efficientnet + {FEWSHOT_HEAD} head" in text
