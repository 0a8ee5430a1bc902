"""Temperature scaling of the weak view before the thresholds: the fitted temperature, the left-out class means and
the masks that read the calibrated confidences, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.errors import DataError, TransferkitError
from transferkit.semi.calibration import fit_temperature, leave_one_out_prototype_logits
from transferkit.semi.fit import SemiConfig, train_semi_head
from transferkit.semi.masks import FixedThreshold
from transferkit.semi.objective import PseudoLabelConsistency


def test_fitted_temperature_matches_the_closed_form():
    """Two classes, every item has logits [2, 0], 3 of 4 are class 0. The NLL is minimal where the predicted
    probability of class 0, sigmoid(2 / T), equals the share 3/4: T = 2 / ln 3 (about 1.82, a softer head)."""
    logits = torch.tensor([[2.0, 0.0]] * 4)
    assert fit_temperature(logits, [0, 0, 0, 1]) == pytest.approx(2 / math.log(3), rel=1e-4)
    # always right: the sharper the better, up to the search's bound; always 50/50 wrong: as soft as allowed
    assert fit_temperature(logits, [0, 0, 0, 0]) == pytest.approx(0.01, rel=1e-3)
    assert fit_temperature(logits, [0, 0, 1, 1]) == pytest.approx(100.0, rel=1e-3)
    with pytest.raises(DataError, match="temperature scaling"):
        fit_temperature(torch.zeros(3, 2), [0, 1])


def test_leave_one_out_logits_use_the_class_mean_without_the_item():
    """Class 0: items a = (1, 0), b = (0, 1); class 1: item c = (1, 1)/sqrt 2 alone (cannot be left out, dropped).
    Item a's own row is b alone (cos(a, b) = 0), its class-1 row is c (cos = 1/sqrt 2); item b's own row is a
    (cos 0), class 1: 1/sqrt 2. With scale 10 and one view the queries are the items themselves."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2 ** -0.5, 2 ** -0.5]])
    logits, y = leave_one_out_prototype_logits(z, np.array([0, 0, 1]), z[None], 10.0, 3)
    r = 10 * 2 ** -0.5
    assert y.tolist() == [0, 0]
    np.testing.assert_allclose(logits.numpy(), [[0.0, r, 0.0], [0.0, r, 0.0]], atol=1e-6)
    # two views: the rows repeat view by view, labels tiled alike
    logits2, y2 = leave_one_out_prototype_logits(z, np.array([0, 0, 1]), torch.stack([z, -z]), 10.0, 3)
    assert y2.tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(logits2[2:].numpy(), -logits.numpy(), atol=1e-6)
    # no class with two items: nothing to fit on
    assert len(leave_one_out_prototype_logits(z, np.array([0, 1, 2]), z[None], 10.0, 3)[1]) == 0


def test_the_temperature_changes_what_the_mask_admits():
    """Weak logits [3, 0]: softmax gives 0.9526 (passes 0.95); at T = 2, sigmoid(1.5) = 0.8176 (masked). The
    pseudo-label (argmax) is the same."""
    obj = PseudoLabelConsistency(FixedThreshold(0.95))
    obj.mask.setup(1, 2)
    probs = torch.softmax(torch.tensor([[3.0, 0.0]]), 1)
    assert obj.validation_metrics(probs, np.array([0]))["val_mask_rate"] == 1.0
    obj.set_temperature(2.0)
    assert obj.validation_metrics(probs, np.array([0]))["val_mask_rate"] == 0.0
    assert obj.config()["temperature"] == 2.0 and obj.epoch_state()["temperature"] == 2.0
    with pytest.raises(TransferkitError, match="temperature"):
        obj.set_temperature(0.0)


def test_a_calibrated_run_uses_the_temperature_fitted_on_the_labelled_items():
    """``threshold``: the temperature a run logs is the one fitted by hand on the same left-out class means (CL2N
    features centred on the pool's mean) and the saved head keeps its scale 30; ``head``: the saved head's scale is
    30 / T and no temperature is left in front of the thresholds."""
    rng = np.random.default_rng(0)
    C, D, n = 3, 8, 4
    centres = rng.normal(0, 1, (C, D)) * 2
    y_l = np.repeat(np.arange(C), n)
    X_l = (centres[y_l] + rng.normal(0, 1, (len(y_l), D))).astype(np.float32)
    X_u = (centres[np.arange(60) % C] + rng.normal(0, 1, (60, D))).astype(np.float32)

    def bank(X):
        noise = lambda s: np.stack([X + s * rng.normal(0, 1, X.shape).astype(np.float32)])  # noqa: E731
        return {"eval": X, "weak": noise(0.1), "strong": noise(0.5)}

    bl, bu = bank(X_l), bank(X_u)
    cfg = dict(steps=4, eval_every=4, batch_size=4, mu=2, draws=1, ema_decay=None, ensemble=1)
    fit = train_semi_head(bl, y_l, bu, "flexmatch", n_classes=C, config=SemiConfig(calibrate="threshold", **cfg))
    centre = np.concatenate([X_l, X_u]).mean(0)

    def cl2n(x):
        x = torch.as_tensor(x) - torch.as_tensor(centre)
        return x / x.norm(dim=-1, keepdim=True)

    logits, yy = leave_one_out_prototype_logits(cl2n(X_l), y_l, cl2n(bl["weak"]), 30.0, C)
    T = fit.history[-1]["temperature"]
    assert T == pytest.approx(fit_temperature(logits, yy), rel=1e-3) and T != pytest.approx(1.0, abs=0.05)
    assert fit.head.config()["scale"] == 30.0
    scaled = train_semi_head(bl, y_l, bu, "flexmatch", n_classes=C, config=SemiConfig(calibrate="head", **cfg))
    assert scaled.head.config()["scale"] == pytest.approx(30.0 / T, rel=1e-3)
    assert "temperature" not in scaled.history[-1]
    assert SemiConfig().calibrate == "none"  # the default is the papers' form
    with pytest.raises(TransferkitError, match="calibrate='head' needs head='cosine'"):
        SemiConfig(calibrate="head", head="linear", init="random").validate()
    with pytest.raises(TransferkitError, match="calibrate must be one of none, threshold, head"):
        SemiConfig(calibrate=True).validate()
