"""The generated digit domains: deterministic, the right shapes and labels, and really different domains."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.data import load_builtin
from transferkit.data.domains import make_mnist_m, make_synth_digits


def _digits(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    d = np.zeros((n, 28, 28), np.uint8)
    d[:, 8:20, 12:16] = 255  # a white bar on black, like a "1"
    return np.maximum(d, rng.integers(0, 30, d.shape).astype(np.uint8))


def test_mnist_m_is_deterministic_colour_and_keeps_the_digit():
    d = _digits()
    a, b = make_mnist_m(d, seed=0), make_mnist_m(d, seed=0)
    assert a.shape == (12, 28, 28, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b), "same seed, same bytes"
    assert not np.array_equal(a, make_mnist_m(d, seed=1))
    # |patch - digit|: where the digit is 255 the pixel is 255 - patch, elsewhere ~patch; so the stroke stands out
    stroke, back = a[:, 8:20, 12:16].astype(float), a[:, :, :6].astype(float)
    assert np.abs(stroke.mean((1, 2, 3)) - back.mean((1, 2, 3))).mean() > 20
    assert a.reshape(12, -1, 3).std(1).mean() > 5, "colour backgrounds, not flat gray"
    with pytest.raises(ValueError, match="uint8"):
        make_mnist_m(d.astype(np.float32))


def test_synth_digits_deterministic_balanced_and_legible():
    x, y = make_synth_digits(per_class=3, size=32, seed=0)
    x2, y2 = make_synth_digits(per_class=3, size=32, seed=0)
    assert x.shape == (30, 32, 32, 3) and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.array_equal(np.bincount(y), [3] * 10)
    assert not np.array_equal(x, make_synth_digits(per_class=3, size=32, seed=1)[0])
    lum = x.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert (lum.reshape(30, -1).std(1) > 10).all(), "every image has a visible digit on its background"


def test_builtin_digit_domains_share_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    m = load_builtin("mnist-m")
    assert len(m) == 5000 and m.classes == [str(i) for i in range(10)] and set(m.domains) == {"mnist-m"}
    assert list((tmp_path / "datasets").glob("mnist-m-*.npz")), "generated once, kept in the cache"
    again = load_builtin("mnist-m")
    assert np.array_equal(np.asarray(again.items[7]), np.asarray(m.items[7]))
    assert np.array_equal(m.labels, load_builtin("mnist5k").labels), "same digits, same order as mnist5k"
    assert load_builtin("mnist-m").load(0).mode == "RGB"
