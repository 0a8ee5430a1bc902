"""Extending transferkit is one file and one test: a new domain-adaptation loss, head, backbone kind or view is a
class or function registered with a decorator, and every command picks it up by its declared capabilities. Each case
below is written as that one file would be (here inside the test, and removed from the registry afterwards)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture
def registered():
    """Entries a test adds, removed afterwards so other tests see the stock registries."""
    added = []
    yield added
    for registry, name in added:
        registry.remove(name)


def test_a_new_deep_adaptation_loss(registered):
    from transferkit.adapt import DomainAdapter, AdaptConfig, list_all_methods
    from transferkit.adapt.methods import METHODS, Method

    @METHODS.register("mean-match", family="mapping", level="deep", needs_target_labels=False, task="classification",
                      baseline="source-only", paper="a test method")
    class MeanMatch(Method):
        """Squared distance between the domains' mean bottleneck features."""

        name = "mean-match"

        def forward(self, step):
            return (step.z_s.mean(0) - step.z_t.mean(0)).pow(2).sum()

    registered.append((METHODS, "mean-match"))
    assert ("mean-match", "mapping") in list_all_methods()
    r = np.random.default_rng(0)
    Xs, ys = r.normal(size=(120, 4)).astype(np.float32), r.integers(0, 2, 120)
    Xs[:, 0] += 3 * ys
    Xt = Xs + 2.0  # shifted target
    da = DomainAdapter(None, "mean-match", config=AdaptConfig(steps=40, eval_every=20, bottleneck=8, batch_size=16))
    da.fit((Xs, ys), Xt)
    assert da.fit_.history[-1]["transfer_loss"] < da.fit_.history[0]["transfer_loss"] + 1e-6
    assert da.predict(Xt).shape == (120,)


def test_a_new_head_saves_loads_and_predicts_through_a_run(registered, tmp_path, image_folder):
    """A nearest-centroid head: its module kind is saved in the run and rebuilt by load_run, with no other change."""
    from transferkit import load_run
    from transferkit.heads import HEAD_MODULES, HEADS
    from transferkit.heads.shallow import LogisticHead
    from transferkit.pipeline import fit_run

    @HEAD_MODULES.register("test-centroids")
    class Centroids(nn.Module):
        kind = "test-centroids"

        def __init__(self, centroids: torch.Tensor):
            super().__init__()
            self.register_buffer("centroids", centroids)
            self.num_classes = len(centroids)

        def config(self):
            return {"num_classes": self.num_classes, "dim": int(self.centroids.shape[1])}

        @classmethod
        def from_config(cls, config):
            return cls(torch.zeros(config["num_classes"], config["dim"]))

        def forward(self, x, return_features=False):
            logits = -torch.cdist(x, self.centroids)
            return (logits, x) if return_features else logits

    @HEADS.register("test-centroid", needs_labels=True, min_labels_per_class=1, kind="sklearn")
    class CentroidHead(LogisticHead):
        def fit(self, X, y, eval_set=None):
            X, y_enc = self._encode(X, y)
            self.centroids_ = np.stack([np.asarray(X)[y_enc == k].mean(0) for k in range(len(self.classes_))])
            return self

        def predict_proba(self, X):
            with torch.no_grad():
                return torch.softmax(self.to_module()(torch.as_tensor(np.asarray(X, np.float32))), 1).double().numpy()

        def to_module(self):
            return Centroids(torch.as_tensor(self.centroids_, dtype=torch.float32)).eval()

    registered += [(HEADS, "test-centroid"), (HEAD_MODULES, "test-centroids")]
    res = fit_run(str(image_folder), backbone="random:test_efficientnet", head="test-centroid", out=tmp_path / "run",
                  baseline=False, report=False, progress=False, num_workers=0)
    run = load_run(res.run_dir)
    assert run.model_info["head"]["kind"] == "test-centroids"
    import pandas as pd

    preds = pd.read_csv(res.run_dir / "predictions.csv")
    out = run.predict(list(preds["input"]), num_workers=0)
    assert (out["prediction"].to_numpy() == preds["prediction"].to_numpy()).all()


def test_a_new_backbone_kind_extracts_saves_and_loads_by_file_name(registered, tmp_path):
    from transferkit.backbones import BACKBONE_KINDS, BACKBONES, Backbone, create_backbone, register_backbone
    from transferkit.data.views import ImagePreprocessing
    from transferkit.features import FeatureStore
    from transferkit.data import from_arrays

    @BACKBONE_KINDS.register("test-pool")
    class Pool(Backbone):
        """Average-pools an image to a 4x4 grid of its 3 channels (48 features), plus a learnable scale."""

        modality, kind, num_features = "image", "test-pool", 48

        def __init__(self):
            super().__init__()
            self.name, self.source = "test-pool", "none"
            self.preprocessing = ImagePreprocessing(input_size=16, crop_pct=1.0, crop_mode="squash")
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.scale * nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

        @classmethod
        def from_saved(cls, directory, meta):
            return cls()

    register_backbone("test-pool", Pool, modality="image", num_features=48, description="test backbone")
    registered += [(BACKBONES, "test-pool"), (BACKBONE_KINDS, "test-pool")]
    bb = create_backbone("test-pool")
    src = from_arrays(np.random.default_rng(0).integers(0, 255, (5, 20, 20, 3)).astype(np.uint8))
    X = np.asarray(FeatureStore(tmp_path / "cache").get(bb, src).X)
    with torch.no_grad():
        bb.scale.fill_(2.0)
    bb.forget_digest()
    bb.save(tmp_path / "saved")
    back = create_backbone(f"file:{tmp_path / 'saved'}")
    X2 = np.asarray(FeatureStore(tmp_path / "cache").get(back, src).X)
    np.testing.assert_allclose(X2, 2 * X, rtol=1e-5)  # the trained weights came back, under a new cache key


def test_a_new_view(registered):
    from PIL import Image

    from transferkit.data.views import VIEWS, ImagePreprocessing, make_view

    @VIEWS.register("test-gray", random=False)
    def gray_view(prep):
        eval_tf = VIEWS.create("eval", prep=prep)
        return lambda img: eval_tf(img.convert("L").convert("RGB"))

    registered.append((VIEWS, "test-gray"))
    prep = ImagePreprocessing(input_size=8, crop_pct=1.0, crop_mode="squash", mean=(0.5,) * 3, std=(0.5,) * 3)
    x = make_view(prep, "test-gray")(Image.new("RGB", (10, 10), (200, 30, 30)))
    assert x.shape == (3, 8, 8) and torch.allclose(x[0], x[1])
