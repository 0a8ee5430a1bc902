"""SimTrans: similarity transfer from clean base classes to noisy novel classes.

A similarity net learned on the base classes scores every pair of items within each novel class's noisy set; an
item's weight is the mean of its row and its column of that matrix (how similar it is to the others, and they to
it), normalised to mean 1 per class (the reference code's ``savg1`` / ``one_mean``). Training on the novel classes
then uses the weighted cross-entropy plus the graph regulariser ``alpha * mean_ij A_ij ||f_i - f_j||^2`` over the
relaxed similarities of each batch (:class:`~transferkit.weakshot.objectives.GraphRegularizer`; alpha 0.1, mu -4
as in the reference code).

Where the paper and its published scripts differ: the paper adds an adversarial term that aligns the similarity
net's pair features between base and novel classes; the published script trains it with ``--beta 0.`` (the term
off). We follow the script: no adversarial term.

References:
    Chen, Niu, Zhang, Zhang & Zhang, "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021;
    reference code github.com/bcmi/SimTrans-Weak-Shot-Classification (``_scripts/CUB/1_simnet.sh``,
    ``GCN_reg/train_main.py``, ``GCN_reg/graph_modules.py``).
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .methods import WEAKSHOT_METHODS, NovelSet, WeakShotMethod, per_class_mean_one
from .similarity import same_class_probabilities

PAPER = "Chen et al., Weak-shot Fine-grained Classification via Similarity Transfer, NeurIPS 2021"


def similarity_weights(novel: NovelSet) -> np.ndarray:
    """Per item, the mean of its row and column of its class's same-class probabilities (the item itself left
    out), normalised to mean 1 per class."""
    if novel.similarity is None:
        raise DataError("SimTrans weights need the similarity net trained on the base classes")
    Z = novel.X if novel.Z is None else novel.Z
    scores = np.ones(len(novel.y))
    for c in np.unique(novel.y):
        m = np.flatnonzero(novel.y == c)
        if len(m) < 2:
            continue
        P = same_class_probabilities(novel.similarity, Z[m]).astype(np.float64)
        np.fill_diagonal(P, 0.0)
        scores[m] = (P.sum(1) + P.sum(0)) / (2 * (len(m) - 1))
    return per_class_mean_one(scores, novel.y)


@WEAKSHOT_METHODS.register("simtrans", graph=True, uses_similarity=True, oracle=False, baseline="plain", paper=PAPER)
class SimTrans(WeakShotMethod):
    """Similarity-transfer weights and the graph regulariser (the full method)."""

    name = "simtrans"

    def weights(self, novel: NovelSet) -> np.ndarray:
        return similarity_weights(novel)


@WEAKSHOT_METHODS.register("simtrans-weights", graph=False, uses_similarity=True, oracle=False, baseline="plain",
                           paper=PAPER + " (ablation: weights only, no graph term)")
class SimTransWeights(WeakShotMethod):
    """Similarity-transfer weights without the graph regulariser (the ablation that measures the graph term)."""

    name = "simtrans-weights"

    def weights(self, novel: NovelSet) -> np.ndarray:
        return similarity_weights(novel)
