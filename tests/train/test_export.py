"""Export: ONNX under onnxruntime and TorchScript equal PyTorch; safetensors + JSON round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from transferkit.backbones import create_backbone
from transferkit.errors import TransferkitError
from transferkit.train.export import export_model, load_exported
from transferkit.train.model import TransferModel, prepare_backbone

CLASSES = ["squares", "discs", "stripes"]


@pytest.fixture(scope="module")
def model_and_prep():
    torch.manual_seed(0)
    model = TransferModel(prepare_backbone(create_backbone(TINY)), 3).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode export matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    prep = {**model.backbone.data_config(), "input_size": [3, 32, 32]}
    return model, prep


def _batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_onnx_export_equals_pytorch_under_onnxruntime(model_and_prep, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, prep = model_and_prep
    path = export_model(model, prep, CLASSES, tmp_path / "model.onnx", "onnx")
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["classes"] == CLASSES and meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["preprocessing"]["mean"] == list(prep["mean"]) and meta["verified_max_abs_diff"] < 1e-3
    x = _batch(5)  # another batch size than the export's example: the batch axis is dynamic
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)
    assert model.training is False


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_export_equals_pytorch(model_and_prep, tmp_path):
    model, prep = model_and_prep
    path = export_model(model, prep, CLASSES, tmp_path / "model.pt", "torchscript")
    loaded = torch.jit.load(str(path))
    x = _batch(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-4)


def test_safetensors_export_round_trips_without_pickle(model_and_prep, tmp_path):
    model, prep = model_and_prep
    path = export_model(model, prep, CLASSES, tmp_path / "model.safetensors", extra={"strategy": {"name": "finetune"}})
    back, meta = load_exported(path)
    assert meta["classes"] == CLASSES and meta["backbone"]["arch"] == "test_efficientnet"
    assert meta["strategy"] == {"name": "finetune"}
    assert back.backbone.data_config()["input_size"] == [3, 32, 32]  # preprocessing travels with the weights
    x = _batch(2)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    with pytest.raises(TransferkitError, match="valid formats: safetensors, onnx, torchscript"):
        export_model(model, prep, CLASSES, tmp_path / "m.bin", "pickle")
    with pytest.raises(TransferkitError, match="2 class names for a model with 3 outputs"):
        export_model(model, prep, CLASSES[:2], tmp_path / "m.safetensors")


def test_finetune_saves_the_best_model_as_a_run(finetuned):
    from transferkit import load_run

    run = load_run(finetuned.run_dir)
    assert run.model_info["best_epoch"] == finetuned.best_epoch and run.kind == "finetuned"
    x = _batch(2)
    with torch.no_grad():
        torch.testing.assert_close(run.network()(x), finetuned.model(x))
