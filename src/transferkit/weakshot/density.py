"""A denoiser without transfer: weights from how dense each item's neighbourhood is within its (noisy) class.

Items of the true class form the bulk of a class's noisy set, so they sit in a denser region of the feature space
than flipped items and outliers. Nothing is learned from the base classes: the ablation that tells how much of
SimTrans's gain comes from the transferred similarity rather than from density alone.
"""

from __future__ import annotations

import numpy as np

from .methods import WEAKSHOT_METHODS, NovelSet, WeakShotMethod, per_class_mean_one


@WEAKSHOT_METHODS.register("density", graph=False, uses_similarity=False, oracle=False, baseline="plain",
                           paper="kernel density within each noisy class (a no-transfer ablation of Chen et al., "
                                 "NeurIPS 2021, whose reference code ranks noisy items by mean similarity)")
class Density(WeakShotMethod):
    """Weight of item ``i`` of class ``c``: its mean Gaussian-kernel similarity to the other items of ``c``
    (standardised features, the bandwidth the class's median squared distance), normalised to mean 1 per class.

    Args:
        bandwidth: a factor on the median heuristic's bandwidth.
    """

    name = "density"

    def __init__(self, bandwidth: float = 1.0):
        self.bandwidth = float(bandwidth)

    def weights(self, novel: NovelSet) -> np.ndarray:
        X = np.asarray(novel.X, np.float64)
        X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-8)
        scores = np.ones(len(X))
        for c in np.unique(novel.y):
            m = np.flatnonzero(novel.y == c)
            if len(m) < 3:
                continue
            Z = X[m]
            sq = (Z * Z).sum(1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0.0)
            off = ~np.eye(len(m), dtype=bool)
            h = np.median(d2[off]) * self.bandwidth
            K = np.exp(-d2 / max(h, 1e-12))
            scores[m] = (K * off).sum(1) / (len(m) - 1)
        return per_class_mean_one(scores, novel.y)
