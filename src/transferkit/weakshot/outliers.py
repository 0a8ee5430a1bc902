"""Where injected outliers come from: items that belong to no novel class, as a web search returns them.

Sources are registered in :data:`OUTLIER_SOURCES` and named in ``outliers=`` (comma-separated):

- ``classes``: items of the data's own classes that are neither base nor novel (handled by the split);
- ``photos``: random crops of scikit-image's photos (astronaut, coffee, cat, rocket, ...);
- ``dataset:<name>``: items of another built-in dataset, e.g. ``dataset:mnist5k`` (MNIST digits among clip art).

Each source gives a fixed pool (its own seed, not the run's), so its features are extracted once and cached; runs
draw their outliers from the pool with their own seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.sources import DataSource
from ..errors import DataError
from ..registry import Registry

__all__ = ["OUTLIER_SOURCES", "outlier_pool", "parse_outliers"]

#: outlier sources: ``fn(n, data_name) -> DataSource`` (None for ``classes``, which the split handles)
OUTLIER_SOURCES: Registry[Any] = Registry("outlier source")


@OUTLIER_SOURCES.register("classes", description="items of the data's classes that are neither base nor novel")
def _other_classes(n: int, data_name: str = "") -> None:
    return None


@OUTLIER_SOURCES.register("photos", description="random crops of scikit-image's photos (no download)")
def photo_crops(n: int = 400, data_name: str = "") -> DataSource:
    """``n`` random square crops (24 to 160 px, resized to 64) of scikit-image's bundled colour photos."""
    import skimage.data
    from PIL import Image

    from ..data.domains import PHOTOS

    photos = [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]
    rng = np.random.default_rng(1234)
    out = []
    for _ in range(n):
        p = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(24, min(161, *p.shape[:2])))
        y0, x0 = int(rng.integers(0, p.shape[0] - side + 1)), int(rng.integers(0, p.shape[1] - side + 1))
        crop = Image.fromarray(p[y0:y0 + side, x0:x0 + side]).resize((64, 64), Image.BICUBIC)
        out.append(np.asarray(crop))
    return DataSource(out, "arrays", name="photo-crops", origin="scikit-image photo crops")


@OUTLIER_SOURCES.register("dataset:", description="items of another built-in dataset (dataset:mnist5k, ...)")
def other_dataset(name: str, n: int = 400, data_name: str = "") -> DataSource:
    """``n`` items of the built-in dataset ``name`` (a fixed random subset, labels dropped)."""
    from ..data.builtin import load_builtin

    if name == data_name:
        raise DataError(f"outliers from dataset:{name} would come from the data itself; use 'classes' for its other "
                        "classes")
    src = load_builtin(name)
    idx = np.sort(np.random.default_rng(4321).permutation(len(src))[:n])
    sub = src.subset(idx)
    return DataSource(sub.items, sub.kind, name=f"{name}-outliers", origin=f"builtin:{name} (outliers)")


def parse_outliers(spec: str | None) -> list[str]:
    """Outlier source names from ``"photos,dataset:mnist5k"`` (checked against :data:`OUTLIER_SOURCES`)."""
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    for s in names:
        OUTLIER_SOURCES.get(s)  # unknown names fail clearly
    return names


def outlier_pool(name: str, n: int, data_name: str = "") -> DataSource | None:
    """The pool of outlier source ``name`` (None for ``classes``)."""
    entry, arg = OUTLIER_SOURCES.resolve(name)
    return entry.factory(arg, n=n, data_name=data_name) if arg is not None else entry.factory(n=n,
                                                                                             data_name=data_name)
