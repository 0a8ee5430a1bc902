"""A table of images with several label columns (tasks), one with missing labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_image


@pytest.fixture
def table(tmp_path):
    """36 images in a table: a shape class (3 classes), a brightness value, and a size label missing for a third."""
    rows = []
    for c, name in enumerate(["square", "disc", "stripes"]):
        for i in range(12):
            img = make_image(c, seed=100 * c + i)
            f = tmp_path / f"{name}{i}.png"
            img.save(f)
            rows.append({"path": f.name, "shape": name, "brightness": float(np.asarray(img).mean()) / 255,
                         "size": (["small", "big"][i % 2] if i % 3 else None)})
    p = tmp_path / "shapes.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p
