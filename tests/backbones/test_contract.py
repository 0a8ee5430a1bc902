"""One contract test over every registered backbone that is installed here (as timm does for its models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY, make_image
from transferkit.backbones import create_backbone, list_backbones
from transferkit.errors import BackboneUnavailableError, UnknownNameError

EXACT = [s for s in list_backbones() if not s.is_family]


def _names():
    for s in EXACT:
        yield pytest.param(s.name, marks=pytest.mark.skipif(not s.installed(), reason=f"{s.name}: package missing"))
    yield TINY


def _inputs(bb):
    if bb.modality == "image":
        t = bb.transform()
        return bb.collate([t(make_image(0, 1)), t(make_image(1, 2)), t(make_image(0, 1))])
    return bb.collate(["a happy cat sat on the mat", "terrible side effects, would not take again",
                       "a happy cat sat on the mat"])


#: what a backbone trained on the user's corpus (capability corpus_method) is trained on before the contract holds
CORPUS = ["a happy cat sat on the mat", "terrible side effects, would not take again", "the cat was happy",
          "side effects were terrible", "would take it again", "a mat on the floor"] * 5


def _build(name):
    spec = next((s for s in list_backbones() if s.name == name), None)
    if spec is not None and spec.cap("corpus_method"):
        from transferkit.pretrain import pretrain_for_backbone

        return pretrain_for_backbone(name, CORPUS).backbone
    return create_backbone(name)


@pytest.mark.parametrize("name", list(_names()))
def test_backbone_contract(name):
    bb = _build(name)
    spec = next((s for s in list_backbones() if s.name == name), None)
    assert bb.modality in ("image", "text")
    if spec is not None:
        assert bb.num_features == spec.num_features and bb.modality == spec.modality
    assert not bb.training, "backbones come in eval mode"
    cfg = bb.data_config()
    assert json.loads(json.dumps(cfg)) == cfg, "preprocessing must be JSON-serialisable"
    with torch.inference_mode():
        f = bb(_inputs(bb))
    assert f.shape == (3, bb.num_features)
    assert torch.isfinite(f).all()
    assert torch.allclose(f[0], f[2], atol=1e-5), "same input, same features"
    assert not torch.allclose(f[0], f[1]), "different inputs, different features"
    # identity is stable across constructions (the cache key depends on it)
    assert _build(name).identity_key() == bb.identity_key()


def test_lite0_uses_shipped_preprocessing_and_predicts_imagenet_classes():
    from sklearn.datasets import load_sample_image
    from PIL import Image
    import timm.data

    bb = create_backbone("lite0")
    cfg = bb.data_config()
    assert cfg["input_size"] == [3, 224, 224] and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.5, 0.5, 0.5] and cfg["crop_pct"] == 0.875
    img = Image.fromarray(load_sample_image("china.jpg"))
    with torch.inference_mode():
        top = bb.source_logits(bb.transform()(img)[None]).argmax(1).item()
    assert "palace" in timm.data.ImageNetInfo().index_to_description(top)


def test_random_init_control_differs_from_pretrained():
    a, b = create_backbone("lite0"), create_backbone("lite0-random")
    assert a.weights_digest() != b.weights_digest()
    assert a.data_config() == b.data_config()


def test_file_backbone_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = create_backbone(TINY)
    sd = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"), metadata={"arch": "test_efficientnet"})
    torch.save(sd, tmp_path / "w.pt")
    x = src.transform()(make_image(2, 3))[None]
    with torch.inference_mode():
        ref = src(x)
        for spec in (f"file:{tmp_path / 'w.safetensors'}", f"file:test_efficientnet@{tmp_path / 'w.pt'}"):
            bb = create_backbone(spec)
            assert torch.allclose(bb(x), ref, atol=1e-6)


def test_file_backbone_errors(tmp_path):
    with pytest.raises(BackboneUnavailableError, match="not found"):
        create_backbone(f"file:resnet18@{tmp_path / 'missing.pt'}")
    torch.save({"w": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(BackboneUnavailableError, match="does not fit"):
        create_backbone(f"file:test_efficientnet@{tmp_path / 'bad.pt'}")
    torch.save({"w": torch.zeros(3)}, tmp_path / "noarch.pt")
    with pytest.raises(BackboneUnavailableError, match="no timm architecture"):
        create_backbone(f"file:{tmp_path / 'noarch.pt'}")


def test_unknown_names_suggest_alternatives():
    with pytest.raises(UnknownNameError, match="Did you mean 'lite0'"):
        create_backbone("lite00")
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_backbone("timm:resnet18x")


def test_hub_backbones_fail_fast_offline():
    import time

    t = time.perf_counter()
    with pytest.raises(BackboneUnavailableError, match="hub"):
        create_backbone("timm:resnet18")
    assert time.perf_counter() - t < 30, "offline must fail quickly, not retry for minutes"


def test_mid_level_taps(tmp_path):
    """lite0+mid: lite0's penultimate features, then the sixth stage's pooled output rescaled to the same norm; saved
    and loaded with its taps; a cache key of its own."""
    from transferkit.backbones import load_backbone

    a, b = create_backbone("lite0"), create_backbone("lite0+mid")
    x = a.collate([a.transform()(make_image(2, 3)), a.transform()(make_image(0, 1))])
    with torch.inference_mode():
        fa, fb = a(x), b(x)
        m = a.model
        h = m.bn1(m.conv_stem(x))
        for stage in m.blocks[:6]:
            h = stage(h)
        mid = h.mean((2, 3))
    assert fb.shape == (2, 1280 + 192) and b.num_features == 1472
    torch.testing.assert_close(fb[:, :1280], fa)
    torch.testing.assert_close(fb[:, 1280:].norm(dim=1), fa.norm(dim=1))
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(fb[:, 1280:], mid), torch.ones(2))
    assert a.identity_key() != b.identity_key()
    c = load_backbone(b.save(tmp_path / "bb"))
    assert c.taps == (5,) and c.num_features == 1472 and c.identity_key() == b.identity_key()
    with torch.inference_mode():
        torch.testing.assert_close(c(x), fb)


def test_mid_level_taps_errors():
    from transferkit.backbones.vision import TimmBackbone, create_timm

    tiny = create_timm("test_efficientnet", pretrained=False)
    n = len(tiny.blocks)
    with pytest.raises(BackboneUnavailableError, match=rf"taps \[{n - 1}\] are not blocks .* \(0 \.\. {n - 2}\)"):
        TimmBackbone(tiny, "t", "test_efficientnet", "none", taps=(n - 1,))
    with pytest.raises(BackboneUnavailableError, match="EfficientNet-style"):
        TimmBackbone(create_timm("resnet18", pretrained=False), "r", "resnet18", "none", taps=(1,))
    ok = TimmBackbone(tiny, "t", "test_efficientnet", "none", taps=(0,))
    with torch.inference_mode():
        f = ok(torch.randn(2, 3, 32, 32))
    assert ok.num_features == tiny.num_features + 16 and f.shape == (2, ok.num_features)
