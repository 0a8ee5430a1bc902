"""Weak-shot methods: how much each noisy novel-class training item counts, and whether the graph regulariser is on.

Every method is one file registered in :data:`WEAKSHOT_METHODS`. A method turns a :class:`NovelSet` (the novel
classes' noisy training items: features, noisy labels, the similarity net learned on the base classes) into one
weight per item; the same training routine (weighted cross-entropy, plus SimTrans's graph term when the method
declares ``graph=True``) then trains every method on the same split, so the methods differ only where they claim to.

Capabilities: ``graph`` (adds the graph regulariser), ``uses_similarity`` (needs the similarity net trained on the
base classes), ``oracle`` (reads the true labels of the noisy set: an upper reference, never a method a user can
run on real web data), ``baseline`` (what it is compared against in reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..registry import Registry

__all__ = ["WEAKSHOT_METHODS", "WeakShotMethod", "NovelSet", "per_class_mean_one", "create_method", "weight_auc"]

#: weak-shot methods by name (``plain``, ``density``, ``simtrans``, ``simtrans-weights``, ``oracle``, ...)
WEAKSHOT_METHODS: Registry["WeakShotMethod"] = Registry("weak-shot method")


@dataclass
class NovelSet:
    """The novel classes' noisy training set, as a method sees it.

    Attributes:
        X: ``(N, D)`` features of the items (from the frozen backbone, or the base-trained one end to end).
        y: ``(N,)`` noisy labels, ``0 .. k-1`` (the novel classes).
        similarity: the similarity net trained on the base classes (None when no method needs it).
        clean: ``(N,)`` True where the noisy label is the item's true class (None when unknown); only an
            ``oracle`` method may read it.
        seed: the run's seed.
        Z: ``(N, D')`` the similarity net's input for the items (None: ``X``); end to end these are the features
            of the network fine-tuned on the base classes.
    """

    X: np.ndarray
    y: np.ndarray
    similarity: Any = None
    clean: np.ndarray | None = None
    seed: int = 0
    Z: np.ndarray | None = None


class WeakShotMethod:
    """Base class: ``weights(novel) -> (N,)`` non-negative weights, one per noisy training item.

    Class attributes:
        name: the registered name.
        paper: the reference.
        trains_plain_: set by :meth:`weights` when the method judged the noise harmless and trains as plain
            training (weights 1, no graph term; SimTrans's open-set gate); False otherwise.
        gate_: what that judgement read (a dict for the report), None when the method has no such gate.
    """

    name = "method"
    paper = ""
    trains_plain_ = False
    gate_: dict | None = None

    def weights(self, novel: NovelSet) -> np.ndarray:  # noqa: D102 - see the class
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Name and parameters (JSON)."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def create_method(name: str, config: Any = None, **params: Any) -> WeakShotMethod:
    """A method by name (see :data:`WEAKSHOT_METHODS`); with a :class:`~transferkit.weakshot.WeakShotConfig`, the
    methods that use the similarity net get its ``sim_weighting``, ``sim_iterations``, ``sim_drop``,
    ``sim_drop_rule`` and ``sim_gate``."""
    if config is not None and WEAKSHOT_METHODS.get(name).cap("uses_similarity"):
        params = {"weighting": config.sim_weighting, "iterations": config.sim_iterations, "drop": config.sim_drop,
                  "drop_rule": config.sim_drop_rule, "gate": config.sim_gate, **params}
    return WEAKSHOT_METHODS.create(name, **params)


def per_class_mean_one(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Scores divided by their class's mean, so every class's weights average 1 (SimTrans's ``one_mean``)."""
    scores = np.asarray(scores, np.float64)
    out = np.ones_like(scores)
    for c in np.unique(y):
        m = y == c
        mean = scores[m].mean()
        out[m] = scores[m] / mean if mean > 0 else 1.0
    if not np.isfinite(out).all():
        raise DataError("sample weights came out non-finite; the features hold NaN or inf values")
    return out


def weight_auc(weights: np.ndarray, clean: np.ndarray) -> float | None:
    """How well weights rank clean items above noisy ones: the probability that a random clean item outweighs a
    random noisy one (ties count half); None when one of the two groups is empty."""
    from scipy.stats import rankdata

    w = np.asarray(weights, np.float64)
    c = np.asarray(clean, bool)
    n1, n0 = int(c.sum()), int((~c).sum())
    if n1 == 0 or n0 == 0:
        return None
    r = rankdata(w)
    return float((r[c].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
