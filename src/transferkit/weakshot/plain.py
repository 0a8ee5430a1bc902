"""Plain training on the noisy labels: every item counts once (the baseline every weak-shot method must beat)."""

from __future__ import annotations

import numpy as np

from .methods import WEAKSHOT_METHODS, NovelSet, WeakShotMethod


@WEAKSHOT_METHODS.register("plain", graph=False, uses_similarity=False, oracle=False, baseline=None,
                           paper="standard training on web labels (the weak-shot baseline of Chen et al., NeurIPS 2021)")
class Plain(WeakShotMethod):
    """Cross-entropy on the noisy labels, every item with weight 1."""

    name = "plain"

    def weights(self, novel: NovelSet) -> np.ndarray:
        return np.ones(len(novel.y))
