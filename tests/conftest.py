"""Shared fixtures: an isolated feature cache, tiny image folders and tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = "random:test_efficientnet"  # a tiny timm architecture with seeded random weights


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread for every test: tiny models, a 2-core machine shared with other work, and
    oversubscription makes them crawl."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own feature cache; nothing touches ~/.cache."""
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a wide terminal for rich: its tables and titles must not wrap on long temporary paths (under pytest-xdist
    # they are longer), so that tests can read what the CLI printed
    monkeypatch.setenv("COLUMNS", "240")


def make_image(kind: int, seed: int, size: int = 32) -> Image.Image:
    """Class 0: a red square on white; class 1: a blue disc on black; class 2: green horizontal stripes."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    off = rng.integers(-4, 5, 2)
    if kind == 0:
        a[:] = 255
        a[8 + off[0]:24 + off[0], 8 + off[1]:24 + off[1]] = (220, 30, 30)
    elif kind == 1:
        a[((yy - 16 - off[0]) ** 2 + (xx - 16 - off[1]) ** 2) < 80] = (30, 30, 220)
    else:
        a[(yy // 4) % 2 == 0] = (30, 200, 30)
    noise = rng.integers(-20, 21, a.shape)
    return Image.fromarray(np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder dataset: 3 classes x 12 PNG images."""
    root = tmp_path / "shapes"
    for c, name in enumerate(["squares", "discs", "stripes"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            make_image(c, seed=100 * c + i).save(root / name / f"{i:02d}.png")
    return root
