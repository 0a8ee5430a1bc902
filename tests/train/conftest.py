"""Fixtures for the training engine: one CPU thread, a tiny separable image set, memoised runs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TINY, make_image
from transferkit.data.sources import from_arrays
from transferkit.data.splits import make_splits
from transferkit.train.engine import TrainConfig, finetune


class Shapes:
    """3 classes x 16 images of 32 px (red squares, blue discs, green stripes): 24 train, 12 val, 12 test."""

    def __init__(self):
        imgs = [make_image(c, seed=1000 * c + i) for c in range(3) for i in range(16)]
        self.source = from_arrays(imgs, [c for c in range(3) for _ in range(16)], name="shapes")
        self.classes = self.source.classes
        self.y = self.source.encoded_labels()
        self.splits = make_splits(self.y, val_fraction=0.25, test_fraction=0.25, seed=0)

    def config(self, **kw) -> TrainConfig:
        base = dict(epochs=6, batch_size=8, lr=1e-2, image_size=32, num_workers=0, patience=None,
                    accelerator="cpu", warmup_epochs=0.5)
        return TrainConfig(**{**base, **kw})

    def fit(self, run_dir, strategy="finetune", backbone=TINY, **kw):
        cfg_keys = {f for f in TrainConfig.__dataclass_fields__}
        cfg = self.config(**{k: v for k, v in kw.items() if k in cfg_keys})
        rest = {k: v for k, v in kw.items() if k not in cfg_keys}
        return finetune(self.source, self.y, self.splits, backbone, strategy, cfg, run_dir, classes=self.classes,
                        **rest)

    def test_accuracy(self, result) -> float:
        return float(np.mean(result.y_pred == self.y[result.test_index]))


@pytest.fixture(scope="session")
def shapes() -> Shapes:
    return Shapes()


@pytest.fixture(scope="session")
def finetuned(shapes, tmp_path_factory):
    """One plain fine-tuning run, shared by the tests that compare against it."""
    return shapes.fit(tmp_path_factory.mktemp("finetune") / "run", "finetune")
