"""``TrainConfig(safe="remos")``: the teacher is pruned on the training split before fine-tuning; clear refusals."""

from __future__ import annotations

import pytest
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.train.engine import FinetunePlan, TrainConfig
from transferkit.train.strategies import create_strategy


def test_remos_prunes_the_backbone_before_training(shapes):
    cfg = shapes.config(epochs=1, safe="remos", prune=0.1)
    plan = FinetunePlan(source=shapes.source, y=shapes.y, splits=shapes.splits, backbone="lenet",
                        strategy=create_strategy("finetune"),
                        cfg=cfg, losses=[], classes=shapes.classes)
    built = plan(None)  # the loop's Plan: the model is pruned, not yet trained
    convs = [m for m in built.model.backbone.modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m in convs)  # LeNet: 3*32*25 + 32*64*25
    zeros = sum(int((m.weight == 0).sum()) for m in convs)
    assert total == 53600 and zeros == round(0.1 * total)
    assert built.info["safe"]["pruned"] == zeros and built.info["safe"]["samples"] == len(shapes.splits.train)
    assert built.identity["train"]["safe"] == "remos" and built.identity["train"]["prune"] == 0.1
    # without safe, the identity is the one older runs have (no safe/prune keys): their resume still matches
    plain = FinetunePlan(source=shapes.source, y=shapes.y, splits=shapes.splits, backbone="lenet",
                         strategy=plan.strategy, cfg=shapes.config(epochs=1), losses=[], classes=shapes.classes)(None)
    assert "safe" not in plain.identity["train"] and "safe" not in plain.info


@pytest.mark.parametrize("strategy", ["probe", "scratch"])
def test_safe_with_a_strategy_that_cannot_use_it_is_refused(shapes, tmp_path, strategy):
    with pytest.raises(TransferkitError, match=f"strategy '{strategy}'"):
        shapes.fit(tmp_path / "run", strategy=strategy, backbone="lenet", epochs=1, safe="remos")


def test_bad_safe_settings_are_named():
    with pytest.raises(TransferkitError, match="safe='prune-all' is not a safe-transfer method"):
        TrainConfig(safe="prune-all").validate()
    with pytest.raises(TransferkitError, match="prune=0 is not a share"):
        TrainConfig(safe="remos", prune=0).validate()
