"""The text-transfer commands that train a sentence encoder, through the CLI: ``fit --strategy setfit`` and
``pretrain-text --algo simcse`` followed by ``fit -b file:<folder>`` (a tiny 2-layer BERT with MiniLM's tokenizer
stands in for MiniLM)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.test_cli import assert_user_error, tk
from tests.train.test_contrastive import tiny_encoder, toy_texts  # noqa: F401 - the fixture is used by name


@pytest.fixture(scope="module")
def toy_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy-text")
    texts, labels = toy_texts(120)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(d / "t.csv", index=False)
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(toy_texts(96, seed=3)[0]) + "\n")
    return d / "t.csv", corpus


def test_fit_strategy_setfit_from_the_command_line(tiny_encoder, toy_table, tmp_path):  # noqa: F811
    from transferkit import load_run

    table, _ = toy_table
    run = tmp_path / "run"
    p = tk("fit", table, "-b", tiny_encoder, "--strategy", "setfit", "-n", "8", "--lr", "2e-3", "--epochs", "2",
           "--out", run, "--no-report", "--no-baseline", "--quiet")
    assert p.returncode == 0, p.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["strategy"] == "setfit"
    metrics = json.loads((run / "metrics.json").read_text())
    probe = next(r for r in metrics["comparison"] if "probe" in r["name"])
    # the pairs taught the encoder what the labels mean: SetFit beats a logistic head on the same frozen encoder
    assert metrics["transfer"]["accuracy"] > probe["accuracy"] + 0.05, metrics["comparison"]
    preds = pd.read_csv(run / "predictions.csv")
    out = load_run(run).predict(list(preds["input"]), num_workers=0)
    assert (out["prediction"].to_numpy() == preds["prediction"].to_numpy()).all()


def test_fit_setfit_descriptions_that_name_no_class_are_a_one_line_error(tiny_encoder, toy_table, tmp_path):  # noqa: F811
    table, _ = toy_table
    p = tk("fit", table, "-b", tiny_encoder, "--strategy", "setfit", "-n", "8", "--descriptions", "good=positive,neg=negative",
           "--out", tmp_path / "run", "--no-report", "--no-baseline", "--quiet")
    assert_user_error(p, "'good', not a class of the data (neg, pos)")


def test_pretrain_text_simcse_saves_an_adapted_encoder_that_fit_loads(tiny_encoder, toy_table, tmp_path):  # noqa: F811
    from transferkit.backbones import create_backbone

    table, corpus = toy_table
    out = tmp_path / "adapted"
    p = tk("pretrain-text", corpus, "--algo", "simcse", "-b", tiny_encoder, "-o", out, "--epochs", "1",
           "--max-texts", "64", "--cache-dir", tmp_path / "cache", "--quiet")
    assert p.returncode == 0, p.stderr
    assert f"file:{out}" in " ".join(p.stdout.split())
    adapted, base = create_backbone(f"file:{out}"), create_backbone(tiny_encoder)
    texts = toy_texts(4, seed=9)[0]
    with torch.no_grad():
        assert not torch.allclose(adapted(adapted.collate(texts)), base(base.collate(texts)))  # the weights moved
    run = tmp_path / "run"
    p = tk("fit", table, "-b", f"file:{out}", "-n", "5", "--out", run, "--no-report", "--no-baseline", "--quiet",
           "--cache-dir", tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    assert (run / "predictions.csv").is_file()
    # word-vector settings make no sense for an encoder: one line, no traceback
    assert_user_error(tk("pretrain-text", corpus, "--algo", "simcse", "-b", tiny_encoder, "-o", tmp_path / "x",
                         "--pooling", "sif"), "'simcse' takes no parameter pooling")
