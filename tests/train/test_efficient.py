"""Parameter-efficient strategies: LoRA (peft), bottleneck adapters, BitFit.

A LoRA run saves only its delta with the base backbone's name and digest, reloads, merges and exports (ONNX) with
the unmerged model's predictions; the base weights never move; parameter counts match a hand count.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from tests.train.test_contrastive import tiny_encoder  # noqa: F401 - a fixture used by name
from transferkit.backbones import create_backbone
from transferkit.errors import TransferkitError
from transferkit.runs import load_run
from transferkit.train.efficient import BottleneckAdapter, apply_delta
from transferkit.train.model import prepare_backbone
from transferkit.train.strategies import create_strategy

pytest.importorskip("peft")

FAST = dict(epochs=4, lr=3e-2)


@pytest.fixture(scope="module")
def lora_run(shapes, tmp_path_factory):
    return shapes.fit(tmp_path_factory.mktemp("lora") / "run", "lora", strategy_params={"rank": 2}, **FAST)


def _base():
    return prepare_backbone(create_backbone(TINY))


def _images(shapes, idx):
    tf = shapes_transform(shapes)
    return torch.stack([tf(shapes.source.load(int(i))) for i in idx])


def shapes_transform(shapes):
    return create_backbone(TINY).with_preprocessing(input_size=32).transform("eval")


def test_lora_run_saves_only_the_delta_and_the_base_name_and_digest(lora_run):
    model_dir = lora_run.run_dir / "model"
    info = json.loads((model_dir / "model.json").read_text())
    ref = info["backbone"]
    assert ref["name"] == TINY and ref["weights"] == create_backbone(TINY).weights_digest()
    assert "path" not in ref and not (model_dir / "backbone").exists()  # no copy of the whole backbone
    from safetensors.torch import load_file

    delta = load_file(str(model_dir / ref["delta"]["file"]))
    assert delta and all(".lora_A." in k or ".lora_B." in k for k in delta)
    # hand count: rank x (in + out) for every 1x1 convolution conv_pw / conv_pwl of the tiny net, plus the head
    base = _base()
    convs = [m for n, m in base.named_modules() if n.endswith(("conv_pw", "conv_pwl"))]
    expected = sum(2 * (m.in_channels + m.out_channels) for m in convs)
    assert sum(t.numel() for t in delta.values()) == expected == ref["delta"]["parameters"]
    p = lora_run.parameters
    head = base.num_features * 3 + 3
    assert p["trainable"] == expected + head
    assert p["total"] == sum(q.numel() for q in base.parameters()) + expected + head
    assert p["trainable_fraction"] == pytest.approx((expected + head) / p["total"])


def test_lora_trains_the_low_rank_path_and_leaves_the_base_weights(lora_run):
    trained = lora_run.model.backbone
    base = _base().state_dict()
    moved = 0
    for name, t in trained.state_dict().items():
        if ".lora_" in name:
            moved += int(".lora_B." in name and t.abs().max() > 0)  # B starts at zero: it moved
            continue
        assert torch.equal(t, base[name.replace(".base_layer", "")]), f"base tensor {name} changed"
    assert moved > 0


def test_lora_run_reloads_merges_and_exports_with_the_unmerged_predictions(lora_run, shapes, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from transferkit.train.export import export_model

    run = load_run(lora_run.run_dir)
    merged, unmerged = run.network(), lora_run.model.eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())  # merged: the base architecture
    base = _base().state_dict()
    assert any(not torch.equal(t, base[n]) for n, t in merged.backbone.state_dict().items() if n in base)
    x = _images(shapes, shapes.splits.test)
    with torch.no_grad():
        ref = unmerged(x)
        torch.testing.assert_close(merged(x), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(run.unmerged_backbone()(x), unmerged.backbone(x), atol=0, rtol=0)
    # predict through the run (features of the merged backbone + head) = the training run's test probabilities
    files = [shapes.source.load(int(i)) for i in shapes.splits.test]
    got = run.predict(files, num_workers=0, cache_dir=str(tmp_path / "cache"))[[f"p_{c}" for c in run.classes]]
    np.testing.assert_allclose(got.to_numpy(), lora_run.proba, atol=1e-5)
    path = export_model(merged, run.model_info["preprocessing"], run.classes, tmp_path / "net.onnx", "onnx")
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4, rtol=1e-3)


def test_a_run_whose_base_weights_or_delta_changed_is_refused(lora_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(lora_run.run_dir, copy)
    info_path = copy / "model" / "model.json"
    info = json.loads(info_path.read_text())
    info["backbone"]["weights"] = "0" * 64
    info_path.write_text(json.dumps(info))
    with pytest.raises(TransferkitError, match="other weights"):
        load_run(copy).backbone
    shutil.rmtree(copy)
    shutil.copytree(lora_run.run_dir, copy)
    delta = copy / "model" / "backbone_delta.safetensors"
    delta.write_bytes(delta.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(TransferkitError, match="does not match the digest"):
        load_run(copy).backbone


def test_bitfit_trains_only_biases_and_keeps_the_normalisation_statistics(shapes, tmp_path):
    r = shapes.fit(tmp_path / "bitfit", "bitfit", **FAST)
    base, after = _base().state_dict(), r.model.backbone.state_dict()
    changed = {n for n in base if not torch.equal(base[n], after[n])}
    assert changed and all(n.endswith(".bias") for n in changed)  # running means/vars and weights untouched
    assert shapes.test_accuracy(r) >= 0.6  # chance is 1/3
    run = load_run(r.run_dir)
    with torch.no_grad():
        x = _images(shapes, shapes.splits.test[:4])
        torch.testing.assert_close(run.network()(x), r.model.eval()(x))


def test_adapter_starts_as_the_identity_and_computes_the_bottleneck(shapes, tmp_path):
    torch.manual_seed(0)
    a = BottleneckAdapter(6, 3)
    h = torch.randn(2, 5, 6)
    torch.testing.assert_close(a(h), h)  # the up-projection starts at zero
    torch.nn.init.normal_(a.up.weight)
    want = h + torch.nn.functional.gelu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    torch.testing.assert_close(a(h), want)
    c = BottleneckAdapter(4, 2, conv=True)
    torch.nn.init.normal_(c.up.weight)
    x = torch.randn(1, 4, 3, 3)
    hand = x + torch.einsum("oc,nchw->nohw", c.up.weight[:, :, 0, 0], torch.relu(
        torch.einsum("oc,nchw->nohw", c.down.weight[:, :, 0, 0], x) + c.down.bias[:, None, None])) \
        + c.up.bias[:, None, None]
    torch.testing.assert_close(c(x), hand)
    # attached to the tiny net, the untrained adapters leave its output unchanged
    base, adapted = _base().eval(), _base().eval()
    create_strategy("adapter", bottleneck=4).attach(adapted)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), base(x))
    r = shapes.fit(tmp_path / "adapter", "adapter", strategy_params={"bottleneck": 4}, **FAST)
    assert shapes.test_accuracy(r) >= 0.6
    with torch.no_grad():
        x = _images(shapes, shapes.splits.test[:4])
        torch.testing.assert_close(load_run(r.run_dir).network()(x), r.model.eval()(x))


def test_bad_parameters_and_a_delta_that_does_not_fit_are_clear_errors():
    with pytest.raises(TransferkitError, match="rank must be an integer >= 1"):
        create_strategy("lora", rank=0)
    with pytest.raises(TransferkitError, match="alpha must be a positive number, got -1"):
        create_strategy("lora", alpha=-1.0)
    with pytest.raises(TransferkitError, match="takes no parameter bottleneck"):
        create_strategy("lora", bottleneck=4)
    with pytest.raises(TransferkitError, match="match no"):
        create_strategy("lora", target_modules=("nothing_like_this",)).attach(_base())
    with pytest.raises(TransferkitError, match="do not fit"):
        apply_delta(_base(), create_strategy("lora", rank=2), {"model.x.lora_A.default.weight": torch.zeros(2, 2)})


def test_fit_strategy_lora_rank_from_the_command_line(image_folder, tmp_path):
    from tests.test_cli import assert_user_error, tk

    run = tmp_path / "run"
    p = tk("fit", image_folder, "-b", TINY, "--strategy", "lora", "--rank", "2", "--epochs", "1", "--image-size", "32",
           "--no-baseline", "--no-report", "-o", run, "-q")
    assert p.returncode == 0, p.stderr
    params = json.loads((run / "metrics.json").read_text())["parameters"]
    assert 0 < params["trainable"] < params["total"] and params["trainable_fraction"] < 0.1
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["backbone"]["delta"]["strategy"]["rank"] == 2 and not (run / "model" / "backbone").exists()
    assert_user_error(tk("fit", image_folder, "-b", TINY, "--strategy", "finetune", "--rank", "2", "-o",
                         tmp_path / "bad", "-q"), "takes no parameter rank")


def test_lora_on_a_transformer_read_from_files_keeps_the_merged_encoder(tiny_encoder, tmp_path):  # noqa: F811
    """``hf:<dir>`` reads files: the run cannot name it, so it keeps the merged encoder; query/value get LoRA."""
    from tests.train.test_contrastive import toy_texts
    from transferkit.data.sources import from_arrays
    from transferkit.data.splits import make_splits
    from transferkit.train.engine import TrainConfig, finetune

    texts, labels = toy_texts(48)
    src = from_arrays(texts, labels, name="toy")
    y = src.encoded_labels()
    sp = make_splits(y, val_fraction=0.25, test_fraction=0.25, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, num_workers=0, patience=None, accelerator="cpu")
    r = finetune(src, y, sp, tiny_encoder, "lora", cfg, tmp_path / "run", classes=src.classes,
                 strategy_params={"rank": 2})
    names = [n for n, _ in r.model.backbone.named_parameters() if ".lora_A." in n]
    assert names and all(n.split(".lora_A")[0].endswith(("query", "value")) for n in names)
    rates = json.loads((r.run_dir / "finetune.json").read_text())["learning_rates"]
    assert rates == {"head": 1e-2, "delta": pytest.approx(1e-2 * 0.25)}  # a transformer's LoRA default: lr / 4
    info = json.loads((r.run_dir / "model" / "model.json").read_text())
    assert info["backbone"]["path"] == "backbone" and not (r.run_dir / "model" / "backbone_delta.safetensors").exists()
    run = load_run(r.run_dir)
    batch = run.backbone.collate([texts[i] for i in sp.test])
    with torch.no_grad():
        torch.testing.assert_close(run.network()(batch), r.model.eval()(batch), atol=1e-5, rtol=1e-4)


def test_default_delta_learning_rates_per_family_and_the_all_linear_targets(tiny_encoder):  # noqa: F811
    """The delta trains at the head's rate on a timm net, at the papers' rates on a transformer (LoRA 5e-4, adapter
    and BitFit 1e-3 at the default head rate 2e-3); ``all-linear`` puts LoRA on every linear layer the model uses."""
    enc, net = create_backbone(tiny_encoder), _base()
    prepare_backbone(enc)
    for name, text in (("lora", 0.25), ("adapter", 0.5), ("bitfit", 0.5)):
        assert create_strategy(name).delta_lr_scale(enc) == text
        assert create_strategy(name).delta_lr_scale(net) == 1.0
        assert create_strategy(name, lr_scale=0.3).delta_lr_scale(enc) == 0.3
    with pytest.raises(TransferkitError, match="lr_scale must be a positive number"):
        create_strategy("lora", lr_scale=0)
    lora = create_strategy("lora", rank=2, target_modules="all-linear")
    lora.attach(enc)
    # hand count, 2 layers of width 32 (feed-forward 64): query, key, value, attention output 2 x (32 + 32) each,
    # intermediate 2 x (32 + 64), output 2 x (64 + 32); the unused pooler gets none
    per_layer = 4 * 2 * (32 + 32) + 2 * 2 * (32 + 64)
    delta = lora.delta_parameters(enc)
    assert sum(p.numel() for _, p in delta) == 2 * per_layer
    assert not any("pooler" in n for n, _ in delta)
