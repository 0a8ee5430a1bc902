"""The CLI: results on stdout, one-line errors with exit code 2, no tracebacks. Commands run in-process through
Typer's test runner (the same app, exit codes and streams, without paying the imports for every call); the tests
marked ``entry point`` start the installed ``transferkit`` executable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, make_image

ENTRY = [shutil.which("transferkit")] if shutil.which("transferkit") else [sys.executable, "-m", "transferkit"]


def tk(*args: str, cwd: Path | None = None, entry_point: bool = False) -> subprocess.CompletedProcess:
    """Run ``transferkit ARGS``: in-process by default, or through the installed executable with ``entry_point``."""
    env = {**os.environ, "COLUMNS": "200"}
    if entry_point:
        # no terminal on stdin: a command that would prompt must refuse instead of waiting
        return subprocess.run([*ENTRY, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=600, stdin=subprocess.DEVNULL)
    from typer.testing import CliRunner

    from transferkit.cli import app

    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        r = CliRunner(env={"COLUMNS": "200", "TOKENIZERS_PARALLELISM": "false"}).invoke(
            app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess([*ENTRY, *map(str, args)], r.exit_code, r.stdout, r.stderr)


def assert_user_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "Traceback" not in p.stderr + p.stdout
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error:"), p.stderr
    for n in needles:
        assert n in p.stderr, f"{n!r} not in {p.stderr!r}"


def test_help_lists_every_command():
    p = tk("--help", entry_point=True)
    assert p.returncode == 0
    for cmd in ("fit", "predict", "extract", "cache", "backbones", "datasets", "compare", "adapt", "rank", "advise",
                "zeroshot"):
        assert cmd in p.stdout
    fit_help = " ".join(tk("fit", "--help", entry_point=True).stdout.split())
    assert "--labels-per-class" in fit_help
    # defaults written in brackets were once swallowed by rich markup: the text must survive
    assert "(default: 10 for built-in datasets" in fit_help and "$TRANSFERKIT_CACHE" in fit_help


def test_every_option_of_every_command_has_help():
    import typer

    from transferkit.cli import app

    missing, seen = [], 0

    def walk(cmd, path: list[str]) -> None:  # a click Group has .commands (typer ships its own click classes)
        nonlocal seen
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
            return
        if not (cmd.help or "").strip():
            missing.append(f"{' '.join(path)} (the command)")
        for param in cmd.params:
            seen += 1
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")

    walk(typer.main.get_command(app), ["transferkit"])
    assert seen > 100, "the walk must reach every command's options"
    assert not missing, f"options without a help text: {missing}"


def test_backbones_and_datasets_tables():
    p = tk("backbones")
    assert p.returncode == 0 and "lite0" in p.stdout and "1280" in p.stdout and "minilm" in p.stdout
    p = tk("datasets")
    assert p.returncode == 0 and "clipart" in p.stdout and "fashion-mnist" in p.stdout


def test_fit_predict_extract_cache_roundtrip(image_folder, tmp_path):
    run = tmp_path / "run"
    p = tk("fit", image_folder, "--backbone", TINY, "--out", run, "--no-report", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "small CNN from scratch" in p.stdout and "accuracy" in p.stdout and run.joinpath("model/model.json").is_file()
    out_csv = tmp_path / "pred.csv"
    p = tk("predict", run, image_folder / "discs", image_folder / "squares" / "00.png", "-o", out_csv, "--quiet")
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(out_csv)
    assert len(df) == 13 and {"prediction", "confidence", "p_discs", "p_squares", "p_stripes"} <= set(df.columns)
    assert (df["prediction"].iloc[:12] == "discs").mean() > 0.7
    # a missing file is reported as missing, not as text data; with skip it gets a row and the reason
    assert_user_error(tk("predict", run, "nothing_here.png", cwd=tmp_path), "1 of 1 input file(s) not found: "
                      "nothing_here.png", "--on-bad-input skip")
    p = tk("predict", run, image_folder / "discs" / "00.png", "nothing_here.png", "--on-bad-input", "skip", "-o",
           out_csv, "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert pd.read_csv(out_csv)["error"].fillna("").tolist() == ["", "file not found"]
    p = tk("extract", image_folder, "--backbone", TINY, "--quiet")
    assert p.returncode == 0 and "0 extracted, 36 from cache" in p.stdout
    p = tk("cache", "list")
    assert p.returncode == 0 and TINY in p.stdout
    p = tk("cache", "clear", "--yes")
    assert p.returncode == 0 and "freed" in p.stdout
    assert "empty" in tk("cache", "list").stdout


def test_corrupt_image_error_then_skip_keeps_extracted_features(image_folder, tmp_path):
    good = (image_folder / "discs" / "00.png").read_bytes()
    (image_folder / "discs" / "zz.png").write_bytes(good[: len(good) // 3])  # truncated: found while decoding
    (image_folder / "squares" / "broken.jpg").write_bytes(b"not a jpeg at all")  # found by the header check
    p = tk("fit", image_folder, "--backbone", TINY, "--out", tmp_path / "r1", "--no-report", "--quiet")
    assert_user_error(p, "broken.jpg", "--on-bad-input skip")
    (image_folder / "squares" / "broken.jpg").unlink()
    p = tk("fit", image_folder, "--backbone", TINY, "--out", tmp_path / "r1", "--no-report", "--quiet")
    assert_user_error(p, "zz.png")
    p = tk("fit", image_folder, "--backbone", TINY, "--out", tmp_path / "r2", "--no-report", "--on-bad-input", "skip")
    assert p.returncode == 0, p.stderr
    assert "read from the cache" in p.stderr, "features extracted before the error must not be extracted again"
    skipped = pd.read_csv(tmp_path / "r2" / "skipped.csv")
    assert list(skipped["input"].str.endswith("zz.png")) == [True]


@pytest.fixture
def bad_cases(image_folder, tmp_path):
    notes = tmp_path / "notes"
    shutil.copytree(image_folder, notes)
    (notes / "discs" / "readme.txt").write_text("hello")
    empty = tmp_path / "empty"
    shutil.copytree(image_folder, empty)
    (empty / "nothing").mkdir()
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    for i in range(3):
        make_image(0, i).save(one / "only" / f"{i}.png")
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["good", "bad", "ok", "meh"] * 5, "label": ["a", "b"] * 10}).to_csv(texts, index=False)
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"text": ["good", "bad", "ok"], "label": ["a", None, "b"]}).to_csv(missing, index=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    return {"notes": notes, "empty": empty, "one": one, "texts": texts, "missing": missing, "blocker": blocker}


@pytest.mark.parametrize("case,args,needles", [
    ("notes", [], ["readme.txt", "--on-bad-input skip"]),
    ("empty", [], ["no images", "nothing"]),
    ("one", [], ["1 class", "at least 2"]),
    ("texts", ["--label-column", "sentiment"], ["no column 'sentiment'", "['text', 'label']"]),
    ("missing", [], ["'label' has 1 missing label", "rows 3"]),
    ("notes", ["--backbone", "lite9"], ["unknown backbone 'lite9'", "lite0"]),
    ("texts", ["--backbone", "lite0"], ["text data", "takes images"]),
    ("one", ["--out", "{blocker}/run"], ["cannot write the run directory", "--out"]),
    ("notes", ["--on-bad-input", "ignore"], ["--on-bad-input must be one of error, skip"]),
    ("notes", ["--labels-per-class", "50", "--on-bad-input", "skip"], ["too few for --labels-per-class 50"]),
    ("notes", ["--epochs", "3"], ["options of other strategies", "--strategy finetune"]),
    ("notes", ["--strategy", "finetuen"], ["unknown strategy 'finetuen'", "finetune"]),
    ("notes", ["--strategy", "finetune", "--resume"], ["--resume needs --out"]),
])
def test_bad_input_is_one_line_exit_2(bad_cases, case, args, needles):
    args = [a.format(**bad_cases) for a in args]
    if case == "one" and "--out" in args:  # unwritable output is checked even before the class count
        data = bad_cases["notes"]
        args += ["--on-bad-input", "skip"]
    else:
        data = bad_cases[case]
    p = tk("fit", data, "--backbone", TINY, *args, "--quiet") if "--backbone" not in args else tk("fit", data, *args, "--quiet")
    assert_user_error(p, *needles)


def test_predict_errors(tmp_path):
    assert_user_error(tk("predict", tmp_path / "norun", "x.png"), "run directory not found")
    (tmp_path / "fake").mkdir()
    assert_user_error(tk("predict", tmp_path / "fake", "x.png"), "model.json not found")


def test_rank_scores_backbones_and_writes_report(image_folder, tmp_path):
    import json

    p = tk("rank", image_folder, "-b", f"{TINY},minilm", "--verify", "--out", tmp_path / "rank", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "LogME" in p.stdout and "minilm" in p.stdout and "text backbone" in p.stdout
    doc = json.loads((tmp_path / "rank" / "rank.json").read_text())
    ranked = [r for r in doc["rows"] if r["status"] != "skipped"]
    assert [r["backbone"] for r in ranked] == [TINY] and ranked[0]["accuracy"] >= 0.5
    assert np.isfinite(ranked[0]["logme"])
    assert "backbone ranking" in p.stdout or "Ranking" in (tmp_path / "rank" / "report.html").read_text()
    # one verified backbone: no correlation, and the output says why; a rank folder holds no empty model/
    assert "needs at least 3 verified backbones" in " ".join(p.stdout.split())
    assert not (tmp_path / "rank" / "model").exists()
    assert_user_error(tk("rank", image_folder, "-b", "lite9"), "unknown backbone 'lite9'")
    assert_user_error(tk("rank", image_folder, "-b", TINY, "--scores", "bogus"), "unknown score")


def test_export_probe_run_to_onnx_matches_run_predictions(image_folder, tmp_path):
    import json

    import onnxruntime as ort
    import torch

    from transferkit import load_run

    run = tmp_path / "run"
    assert tk("fit", image_folder, "-b", TINY, "--no-baseline", "--no-report", "-o", run, "-q").returncode == 0
    p = tk("export", run, "--format", "onnx")
    assert p.returncode == 0, p.stderr
    meta = json.loads((run / "model" / "network.onnx.json").read_text())
    assert meta["verified_max_abs_diff"] < 1e-4 and meta["classes"] == ["discs", "squares", "stripes"]
    # the exported network (head folded into one linear layer) gives the run's own probabilities
    loaded = load_run(run)
    files = sorted(str(f) for f in (image_folder / "discs").glob("*.png"))[:4]
    expected = loaded.predict(files, num_workers=0)[[f"p_{c}" for c in loaded.classes]].to_numpy()
    tf = loaded.backbone.transform()
    from transferkit.data.images import open_image

    x = torch.stack([tf(open_image(f)) for f in files]).numpy()
    sess = ort.InferenceSession(str(run / "model" / "network.onnx"))
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got = torch.softmax(torch.as_tensor(logits), 1).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert_user_error(tk("export", run, "--format", "pickle"), "unknown export format 'pickle'")


def test_advise_and_fit_strategy_auto(image_folder, tmp_path):
    import json

    p = tk("advise", image_folder, "-b", TINY, "-n", "8", "-q")
    assert p.returncode == 0, p.stderr
    assert "advice: --strategy" in p.stdout and "labels per class" in p.stdout and "linear probe" in p.stdout
    p = tk("fit", image_folder, "-b", TINY, "--strategy", "auto", "--no-baseline", "--image-size", "32",
           "--epochs", "1", "-o", tmp_path / "auto", "-q")
    assert p.returncode == 0, p.stderr
    assert "strategy auto chose" in p.stdout
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["advice"]["strategy"] == config["strategy"] and config["advice"]["reasons"]
    race = config["advice"]["evidence"]["race"]  # 2 validation items per class: the probe and gradual raced
    assert set(race["validation_accuracy"]) == {"probe", "gradual"} and set(race["seconds"]) == {"gradual"}
    assert not any((tmp_path / "auto" / "race" / k).exists() for k in ("partial", "finetune"))
    assert race["choice"] == config["strategy"] and "validation accuracy on" in config["advice"]["reasons"][0]
    assert "(strategy auto)" in (tmp_path / "auto" / "report.html").read_text()


def test_compare_command_table_files_and_errors(image_folder, tmp_path):
    p = tk("compare", image_folder, "-b", TINY, "--strategies", "probe,scratch", "-n", "4", "--seeds", "1",
           "--epochs", "1", "--image-size", "32", "-o", tmp_path / "cmp", "-q")
    assert p.returncode == 0, p.stderr
    assert "probe" in p.stdout and "scratch" in p.stdout and "labels per class:" in p.stdout
    assert (tmp_path / "cmp" / "compare.json").is_file() and (tmp_path / "cmp" / "report.html").is_file()
    assert_user_error(tk("compare", image_folder, "-b", TINY, "-n", "five"), "--labels-per-class must be")
    assert_user_error(tk("compare", image_folder, "-b", TINY, "--strategies", "probe,finetuen"), "finetuen")


def _fake_cache(root: Path) -> tuple[list[Path], list[Path]]:
    """A cache folder as transferkit writes it (one backbone, a result) beside a user's own files."""
    bb = root / "lite0-0123456789abcdef"
    ours = [bb / ".transferkit-cache", bb / "backbone.json", bb / "shards" / f"{'1' * 20}-abcdef12.npz",
            bb / "views" / f"{'0' * 20}.npy", root / "results" / f"projection-{'b' * 24}.json"]
    mine = [root / "sub" / "data.csv", root / "results" / "mine.json"]
    for f in ours + mine:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text('{"name": "lite0", "transferkit": "0.1.0"}' if f.name == "backbone.json" else "1234")
    return ours, mine


def test_cache_clear_asks_first_and_keeps_user_files(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from transferkit import cli

    ours, mine = _fake_cache(tmp_path)
    # no terminal and no --yes: refuse with exit 2, delete nothing, never hang on a prompt
    p = tk("cache", "clear", "--cache-dir", tmp_path)
    assert_user_error(p, "--yes", "no terminal")
    assert "features of lite0" in p.stdout and "projection-" not in p.stdout and all(f.exists() for f in ours + mine)
    # a terminal that answers no: nothing deleted
    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: True)
    r = CliRunner().invoke(cli.app, ["cache", "clear", "--cache-dir", str(tmp_path)], input="n\n")
    assert r.exit_code == 1 and "nothing deleted" in r.output and all(f.exists() for f in ours + mine)
    assert "cached results" in r.output and "Delete these 5 file(s)" in r.output
    # --yes: the cache's own files go, the user's stay
    size = sum(f.stat().st_size for f in ours)
    p = tk("cache", "clear", "--cache-dir", tmp_path, "-y")
    assert p.returncode == 0 and f"freed {size} B" in p.stdout, p.stdout + p.stderr
    assert not any(f.exists() for f in ours) and all(f.read_text() == "1234" for f in mine)
    assert not (tmp_path / "lite0-0123456789abcdef").exists()
    p = tk("cache", "clear", "--cache-dir", tmp_path)
    assert p.returncode == 0 and "nothing to delete" in p.stdout


def test_extract_reads_a_non_utf8_table_with_a_note_or_the_given_encoding(image_folder, tmp_path):
    renamed = image_folder / "discs" / "café.png"
    (image_folder / "discs" / "00.png").rename(renamed)
    csv = tmp_path / "cp1252.csv"
    csv.write_bytes(f"path\n{renamed}\n{image_folder / 'squares' / '00.png'}\n".encode("cp1252"))
    p = tk("extract", csv, "--backbone", TINY, "--quiet")
    assert p.returncode == 0 and "2 images" in p.stdout, p.stderr
    assert "note: " in p.stderr and "read it as cp1252" in p.stderr and "Traceback" not in p.stderr
    assert_user_error(tk("extract", csv, "--backbone", TINY, "--encoding", "utf-8", "--quiet"),
                      "is not valid utf-8 text", "--encoding")
    p = tk("extract", csv, "--backbone", TINY, "--encoding", "cp1252", "--quiet")
    assert p.returncode == 0 and "0 extracted, 2 from cache" in p.stdout and "note:" not in p.stderr
