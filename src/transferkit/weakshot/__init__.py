"""Weak-shot classification: clean base classes, novel classes with many noisy (web) labels, and the similarity
learned on the base classes transferred to clean up the novel ones (SimTrans), beside plain training, a density
denoiser without transfer and the clean-subset oracle.

- :mod:`.methods`: the registry :data:`WEAKSHOT_METHODS` (one file per method: ``plain``, ``density``,
  ``simtrans`` and its ``simtrans-weights`` ablation, ``oracle``);
- :mod:`.similarity`: the similarity net and its training through the loop;
- :mod:`.objectives`: the weighted cross-entropy and the graph regulariser;
- :mod:`.noise`, :mod:`.outliers`: the weak-shot split (web labels, or injected flips and outliers);
- :mod:`.fit`: :func:`fit_weakshot`, what ``transferkit weakshot`` runs (at probe cost, or end to end: :mod:`.e2e`).

References:
    Chen, Niu, Liu & Zhang, "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021.
"""

from ..registry import import_submodules
from .fit import (DEFAULT_METHODS, MethodResult, WeakShotConfig, WeakShotData, WeakShotResult, fit_weakshot,
                  prepare_weakshot, train_base, train_novel)
from .methods import WEAKSHOT_METHODS, NovelSet, WeakShotMethod, weight_auc
from .noise import NOISE_KINDS, WeakShotSplit, inject_noise, split_from_web_labels
from .similarity import BlendedSimilarity, CosinePrior, SimilarityNet, fit_similarity, train_similarity

import_submodules(__name__, __path__)  # methods registered in their own files

__all__ = ["WEAKSHOT_METHODS", "WeakShotMethod", "NovelSet", "weight_auc", "WeakShotConfig", "WeakShotData",
           "WeakShotResult", "MethodResult", "fit_weakshot", "prepare_weakshot", "train_base", "train_novel",
           "DEFAULT_METHODS", "NOISE_KINDS", "WeakShotSplit", "inject_noise", "split_from_web_labels",
           "SimilarityNet", "train_similarity", "fit_similarity", "CosinePrior", "BlendedSimilarity"]
