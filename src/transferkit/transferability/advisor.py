"""The strategy advisor: freeze the backbone and train a head, or fine-tune, and how much?

The classic rule (Yosinski et al. 2014; the CS231n transfer-learning notes; Keras' transfer-learning guide)
crosses two questions, both answered here from cached features and labels alone, before any training:

* **How much labelled data?** ``LARGE_LABELS_PER_CLASS`` labels per class or more counts as large; fewer than
  ``TINY_LABELS_PER_CLASS`` is too little to fine-tune anything without over-fitting.
* **How similar is the target to the source domain?** Measured by how well the frozen features already solve
  the task: the skill of a cross-validated linear probe above chance, ``(acc - chance) / (1 - chance)``;
  at least ``SIMILAR_SKILL`` counts as similar. When the backbone has a source classifier (the ImageNet
  backbones), the mean top-1 confidence of its source predictions on the target inputs is reported as further
  evidence (confident = the inputs look like the source data).

==========  =========================  ===============================
            similar (probe skill high) dissimilar (probe skill low)
==========  =========================  ===============================
small data  ``probe``                  ``partial`` (retrain later layers)
large data  ``partial``                ``finetune`` (all layers)
==========  =========================  ===============================

and fewer than ``TINY_LABELS_PER_CLASS`` labels per class always gives ``probe``.

References:
    Yosinski, Clune, Bengio & Lipson, "How transferable are features in deep neural networks?", NeurIPS 2014.
    Kornblith, Shlens & Le, "Do Better ImageNet Models Transfer Better?", CVPR 2019.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ScoreError

__all__ = ["Advice", "advise", "advise_data", "LARGE_LABELS_PER_CLASS", "TINY_LABELS_PER_CLASS", "SIMILAR_SKILL"]

#: labels per class from which the data counts as large (fine-tuning more layers pays off)
LARGE_LABELS_PER_CLASS = 100
#: below this many labels per class nothing but a head is trained (fine-tuning would over-fit)
TINY_LABELS_PER_CLASS = 5
#: probe skill above chance, (acc - chance) / (1 - chance), from which target and source count as similar
SIMILAR_SKILL = 0.6


@dataclass
class Advice:
    """The advisor's decision and the evidence behind it.

    Attributes:
        strategy: ``"probe"``, ``"partial"`` or ``"finetune"``.
        reasons: one line of evidence per measurement, with its number.
        evidence: the measured numbers (labels per class, probe accuracy and skill, kNN accuracy, source
            confidence, thresholds).
    """

    strategy: str
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for config.json and reports)."""
        return asdict(self)


def advise(features: np.ndarray, labels: np.ndarray, *, source_probs: np.ndarray | None = None,
           n_labelled_per_class: float | None = None, seed: int = 0) -> Advice:
    """Choose probe, partial or full fine-tuning from labelled features (the size x similarity rule).

    Args:
        features: ``(N, D)`` frozen-backbone features of the labelled samples only (never the test split).
        labels: ``(N,)`` class labels.
        source_probs: ``(N, Z)`` source-classifier probabilities on the same samples, if the backbone has one.
        n_labelled_per_class: labels per class available for training (default: the median class count of
            ``labels``).
        seed: seed of the probe's folds.

    Returns:
        An :class:`Advice`.

    Raises:
        ScoreError: fewer than 2 classes, or features and labels of different lengths.
    """
    from .scores import knn_accuracy, probe_accuracy

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if X.ndim != 2 or len(X) != len(y):
        raise ScoreError(f"features must be (N, D) with one label per row; got {X.shape} and {len(y)} labels")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ScoreError(f"advise needs at least 2 classes; got {len(classes)}")
    per_class = float(n_labelled_per_class if n_labelled_per_class is not None else np.median(counts))
    chance = 1.0 / len(classes)
    ev: dict[str, Any] = {"labels_per_class": per_class, "classes": int(len(classes)), "chance": chance,
                          "thresholds": {"large_labels_per_class": LARGE_LABELS_PER_CLASS,
                                         "tiny_labels_per_class": TINY_LABELS_PER_CLASS,
                                         "similar_skill": SIMILAR_SKILL}}
    reasons = [f"{per_class:g} labels per class over {len(classes)} classes "
               f"({'large' if per_class >= LARGE_LABELS_PER_CLASS else 'small'}: the threshold is "
               f"{LARGE_LABELS_PER_CLASS})"]
    if source_probs is not None:
        conf = float(np.asarray(source_probs, dtype=np.float64).max(1).mean())
        ev["source_confidence"] = conf
        reasons.append(f"the backbone's source classifier is {100 * conf:.0f}% confident on average on these inputs "
                       f"({'they resemble' if conf >= 0.3 else 'they look unlike'} its pretraining data)")
    if counts.min() < 2:
        ev["probe_accuracy"] = None
        reasons.append("too few labels per class to cross-validate a probe: similarity not measured")
        return Advice("probe", reasons + [f"fewer than {TINY_LABELS_PER_CLASS} labels per class: train only a "
                                          "head on frozen features (fine-tuning would over-fit)"], ev)
    folds = int(min(5, counts.min()))
    acc = probe_accuracy(X, y, folds=folds, seed=seed)
    skill = (acc - chance) / (1.0 - chance)
    ev.update(probe_accuracy=acc, probe_skill=skill, knn_accuracy=knn_accuracy(X, y, k=min(5, int(counts.min()))))
    similar = skill >= SIMILAR_SKILL
    reasons.append(f"a linear probe on the frozen features scores {100 * acc:.1f}% ({folds}-fold CV; chance "
                   f"{100 * chance:.1f}%), skill {skill:.2f} -> {'similar' if similar else 'dissimilar'} to the "
                   f"source domain (threshold {SIMILAR_SKILL})")
    if per_class < TINY_LABELS_PER_CLASS:
        return Advice("probe", reasons + [f"fewer than {TINY_LABELS_PER_CLASS} labels per class: train only a head "
                                          "on frozen features (fine-tuning would over-fit)"], ev)
    large = per_class >= LARGE_LABELS_PER_CLASS
    strategy = {(False, True): "probe", (False, False): "partial", (True, True): "partial",
                (True, False): "finetune"}[(large, similar)]
    why = {"probe": "small and similar: freeze the backbone and train the head",
           "partial": ("small but dissimilar: retrain the later layers, keep the generic early ones" if not large
                       else "large and similar: fine-tune the later layers"),
           "finetune": "large and dissimilar: fine-tune every layer"}[strategy]
    return Advice(strategy, reasons + [why], ev)


def advise_data(data: Any, backbone: str = "lite0", *, labels_per_class: int | None = None,
                cache_dir: str | Path | None = None, seed: int = 0, max_samples: int | None = 5000,
                progress: bool = False, log: Callable[[str], None] | None = None) -> Advice:
    """:func:`advise` on a dataset: features from the cache, the labelled split only (as ``fit`` splits it).

    Args:
        data: built-in dataset name, folder, table or ``DataSource``.
        backbone: backbone name.
        labels_per_class: the labelled budget (as ``fit --labels-per-class``), or None for fraction splits.
        cache_dir: feature-cache folder.
        seed: seed of the split and the probe's folds.
        max_samples: advise from at most this many labelled samples (stratified subsample).
        progress: show the extraction progress bar.
        log: called with one-line progress messages.
    """
    from ..backbones import create_backbone
    from ..data.sources import load_data
    from ..data.splits import make_splits
    from ..features import FeatureStore
    from .rank import _stratified_subset
    from .source import source_probabilities

    source = load_data(data)
    source.require_labels()
    bb = create_backbone(backbone)
    feats = FeatureStore(cache_dir).get(bb, source, progress=progress)
    (log or (lambda m: None))(f"features: {bb.name}, {'cache hit' if not feats.extracted else f'{feats.extracted} extracted'}")
    y = source.encoded_labels()
    good = feats.good
    splits = make_splits(y[good], labels_per_class=labels_per_class, seed=seed, classes=source.classes)
    lab = good[_stratified_subset(splits.labelled, y[good], max_samples, seed)]
    X = np.asarray(feats.X[lab], dtype=np.float32)
    per_class = float(np.median(np.bincount(y[good][splits.labelled])))
    advice = advise(X, y[lab], source_probs=source_probabilities(bb, X), n_labelled_per_class=per_class, seed=seed)
    advice.evidence["backbone"] = bb.name
    return advice
