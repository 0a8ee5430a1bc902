"""A toy weak-shot problem on synthetic features: Gaussian classes in 8 dimensions, 8 base and 4 novel, noise
injected into the novel classes (flips between novel classes, or outliers from 4 further classes)."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.weakshot import NovelSet, WeakShotConfig, WeakShotData, inject_noise
from transferkit.weakshot.similarity import PrecomputedSimilarity

FAST = WeakShotConfig(hidden=32, base_epochs=40, base_patience=8, sim_steps=120, sim_eval_every=40,
                      sim_batch_size=32, novel_epochs=25, batch_size=32, lr=3e-3)


def blobs(n_classes=16, per_class=60, dim=8, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.2, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    X = centres[y] + rng.normal(scale=spread, size=(len(y), dim))
    return X.astype(np.float32), y


def fake_step(idx, y, features, logits=None):
    """A stand-in for the loop's ``Step`` with one ``labelled`` batch: its indices, labels, head features and
    (optionally) logits."""

    class _Step:
        batches = {"labelled": type("B", (), {"index": idx, "y": y})()}
        epoch = 0

        @staticmethod
        def outputs(stream):
            return [type("O", (), {"features": features, "logits": logits})()]

        @staticmethod
        def weight(stream):
            return 1.0

    return _Step()


def base_and_similarity(wd: WeakShotData):
    """The base classifier and the similarity net (``train_similarity``'s own defaults) of a toy problem."""
    from transferkit.weakshot import train_base, train_similarity

    sp = wd.split
    base = train_base(wd, FAST, seed=0)
    fit = train_similarity(wd.X[sp.base_train], sp.base_y_train, wd.X[sp.base_val], sp.base_y_val, init=base,
                           hidden=FAST.hidden, steps=FAST.sim_steps, eval_every=FAST.sim_eval_every,
                           batch_size=FAST.sim_batch_size, lr=FAST.lr, seed=0)
    return base, fit


def problem(kind="flip", rate=0.5, seed=0, spread=1.0) -> WeakShotData:
    X, y = blobs(seed=seed, spread=spread)
    classes = [f"c{i}" for i in range(16)]
    base, novel = classes[:8], classes[8:12]
    split = inject_noise(y, classes, base, novel, rate=rate, kind=kind, outlier_rows=np.flatnonzero(y >= 12),
                         seed=seed)
    return WeakShotData(X, split, classes, [], None, "blobs")


@pytest.fixture(scope="module")
def flipped():
    return problem("flip", 0.5, spread=1.6)  # overlapping classes: plain training on the flips loses ~15 points


@pytest.fixture(scope="module")
def with_outliers():
    return problem("outlier", 0.4)


@pytest.fixture(scope="session")
def flipped_fit(flipped_session):
    """The base classifier and the similarity net (``train_similarity``'s own defaults) of the ``flipped`` problem."""
    return (flipped_session, *base_and_similarity(flipped_session))


@pytest.fixture(scope="session")
def flipped_session():
    return problem("flip", 0.5, spread=1.6)


def toy_noisy_set(y: np.ndarray, true: np.ndarray, far: np.ndarray, rng: np.random.Generator,
                  near: np.ndarray | None = None) -> NovelSet:
    """A toy novel set whose similarity is known: 0.8 within a ``true`` class, 0.2 between classes; the ``far``
    items resemble no class (0.1 to everything, 0.3 to each other), or with ``near`` (a class per item) the clean
    items of that class (0.8, as a flip would); noise of +-0.05, symmetric, 1 on the diagonal."""
    P = np.where(true[:, None] == true[None, :], 0.8, 0.2)
    P[far[:, None] | far[None, :]] = 0.1
    P[far[:, None] & far[None, :]] = 0.3
    if near is not None:
        P[far[:, None] & (true[None, :] == near[:, None])] = 0.8
        P[(true[:, None] == near[None, :]) & far[None, :]] = 0.8
    P = P + rng.uniform(-.05, .05, P.shape)
    P = 0.5 * (P + P.T)
    np.fill_diagonal(P, 1.0)
    return NovelSet(np.arange(len(y), dtype=np.float32)[:, None], y, PrecomputedSimilarity(P))
