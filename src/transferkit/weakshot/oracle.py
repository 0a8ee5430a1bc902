"""The clean subset alone: an oracle that knows which noisy items are right (an upper reference, not a method)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .methods import WEAKSHOT_METHODS, NovelSet, WeakShotMethod, per_class_mean_one


@WEAKSHOT_METHODS.register("oracle", graph=False, uses_similarity=False, oracle=True, baseline="plain",
                           paper="the clean subset of the noisy set (an oracle reference)")
class Oracle(WeakShotMethod):
    """Weight 1 for items whose noisy label is their true class, 0 for the others (then mean 1 per class): training
    on the clean subset alone. It reads the true labels, so it exists only where the noise was injected or the web
    labels were checked."""

    name = "oracle"

    def weights(self, novel: NovelSet) -> np.ndarray:
        if novel.clean is None:
            raise DataError("the oracle needs to know which noisy items are clean: inject the noise (noise=...) or "
                            "give the true labels of the web items beside their web labels")
        clean = np.asarray(novel.clean, bool)
        empty = [int(c) for c in np.unique(novel.y) if not clean[novel.y == c].any()]
        if empty:
            raise DataError(f"the oracle has no clean item in novel class(es) {empty}")
        return per_class_mean_one(clean.astype(np.float64), novel.y)
