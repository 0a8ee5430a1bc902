"""Source probabilities from cached features, and the backbone advisor over the feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, make_image
from transferkit.backbones import Backbone, create_backbone
from transferkit.data import from_arrays, make_splits
from transferkit.errors import ScoreError, UnknownNameError
from transferkit.features import FeatureStore
from transferkit.transferability import logme, rank_backbones, ranking_table, source_probabilities


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("lite0")


def _photos():
    from sklearn.datasets import load_sample_image

    return [Image.fromarray(load_sample_image("china.jpg")), Image.fromarray(load_sample_image("flower.jpg")),
            make_image(1, 3)]


def test_source_probabilities_reproduce_the_source_classifier(lite0, tmp_path):
    import timm.data

    imgs = _photos()
    x = torch.stack([lite0.transform()(im) for im in imgs])
    with torch.inference_mode():
        expected = torch.softmax(lite0.source_logits(x), dim=1).double().numpy()
        feats = lite0(x).numpy()
    p = source_probabilities(lite0, feats)
    assert p.shape == (3, 1000) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(p, expected, atol=1e-5)
    assert "palace" in timm.data.ImageNetInfo().index_to_description(int(p[0].argmax()))
    # the same from the feature cache (float32 on disk), which is how LEEP / NCE get them
    cached = FeatureStore(tmp_path).get(lite0, from_arrays(imgs), num_workers=0).X
    np.testing.assert_allclose(source_probabilities(lite0, cached), expected, atol=1e-5)
    with pytest.raises(ScoreError, match="1280-d features"):
        source_probabilities(lite0, feats[:, :100])


def test_which_backbones_have_source_probabilities():
    import timm

    from transferkit.backbones.vision import TimmBackbone

    # random-init: a classifier with random weights is still a classifier; LEEP over it measures the no-transfer floor
    tiny = create_backbone(TINY)
    x = tiny.transform()(make_image(0, 1))[None]
    with torch.inference_mode():
        p = source_probabilities(tiny, tiny(x).numpy())
        np.testing.assert_allclose(p, torch.softmax(tiny.source_logits(x), 1).double().numpy(), atol=1e-6)
    headless = TimmBackbone(timm.create_model("test_efficientnet", num_classes=0), "headless", "test_efficientnet",
                            "none")
    assert source_probabilities(headless, np.zeros((2, headless.num_features))) is None

    class Words(Backbone):
        modality, num_features, name = "text", 4, "words"

    assert source_probabilities(Words(), np.zeros((2, 4))) is None


@pytest.fixture
def digits60():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images[:60] * (255 / 16)), 0, 255).astype(np.uint8)
    return from_arrays(images, d.target[:60], name="digits60")


def test_rank_backbones_ranks_reuses_the_cache_and_verifies(digits60, lite0, tmp_path):
    rows = rank_backbones(digits60, [TINY, "lite0", "minilm"], cache_dir=tmp_path, verify=True, num_workers=0)
    assert [r["status"] for r in rows] == ["ok", "ok", "skipped"]
    assert rows[2]["backbone"] == "minilm" and rows[2]["reason"] == "text backbone, image data"
    ok = rows[:2]
    splits = make_splits(digits60.encoded_labels(), seed=0)
    assert [r["rank"] for r in ok] == [1, 2] and ok[0]["logme"] >= ok[1]["logme"]
    assert [r["backbone"] for r in ok] == ["lite0", TINY]  # ImageNet features fit the digits better
    for r in ok:
        assert r["extracted"] == 60 and r["n"] == len(splits.labelled) == 49  # scored on train + validation
        assert all(np.isfinite(r[s]) for s in ("logme", "h_score", "h_score_shrinkage", "leep", "nce", "knn", "probe"))
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n_test"] == len(splits.test) == 11
        assert {"features", "logme", "leep", "verify"} <= set(r["seconds"])
    assert ok[0]["accuracy"] > 0.3  # chance is 0.1
    json.dumps(rows)  # what a CLI --json would print
    # the scores use the labelled split only: recompute LogME from the cache
    X = FeatureStore(tmp_path).get(lite0, digits60, num_workers=0).X
    y = digits60.encoded_labels()
    labelled = splits.labelled
    assert ok[0]["logme"] == pytest.approx(logme(X[labelled], y[labelled]), abs=1e-12)

    again = rank_backbones(digits60, ["lite0", TINY], cache_dir=tmp_path, num_workers=0)
    assert [r["extracted"] for r in again] == [0, 0]  # every feature came from the cache
    for a, b in zip(again, ok):
        assert a["backbone"] == b["backbone"] and a["logme"] == pytest.approx(b["logme"], abs=1e-12)
        assert "accuracy" not in a

    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(ranking_table(rows))
    text = console.export_text()
    assert "LogME" in text and "test%" in text and "skipped minilm: text backbone, image data" in text
    assert "features extracted now: lite0 (60)," in text
    assert text.index("lite0") < text.index(TINY) < text.index("minilm")

    # a chosen score on a stratified subsample, still from the cache
    (sub,) = rank_backbones(digits60, ["lite0"], cache_dir=tmp_path, num_workers=0, scores=["logme"], max_samples=30)
    assert sub["extracted"] == 0 and 30 <= sub["n"] < 49 and np.isfinite(sub["logme"])
    assert set(sub) >= {"logme"} and "leep" not in sub and "seconds" in sub


def test_rank_backbones_fails_early_on_names():
    with pytest.raises(UnknownNameError, match="lite00"):
        rank_backbones("no-such-folder", ["lite00"])  # before looking at the data
    with pytest.raises(UnknownNameError, match="unknown score"):
        rank_backbones("no-such-folder", ["lite0"], scores=["accuracy"])
    with pytest.raises(ScoreError, match="no backbone"):
        rank_backbones("no-such-folder", [])
