"""From-scratch baselines trained on the same labels as a transfer model: the yardstick of every result.

Images: the small CNN (:class:`~transferkit.backbones.small.SmallCNN`) from random weights on 64 px pixels, with a
random-translation augmentation, trained through the training loop (class-weighted cross-entropy, AdamW, early
stopping on the validation split). Texts: TF-IDF bag of words + logistic regression.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.sources import DataSource

__all__ = ["ScratchResult", "train_scratch", "translate"]


@dataclass
class ScratchResult:
    """Outcome of a from-scratch baseline on the test split."""

    name: str
    y_pred: np.ndarray
    proba: np.ndarray
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def translate(x: torch.Tensor) -> torch.Tensor:
    """Random translation of a batch by up to 1/8 of the side (edge padding), one shift per batch: label-safe for any
    images. Uses torch's global generator (the loop seeds it per epoch)."""
    n, _, s, _ = x.shape
    pad = max(1, s // 8)
    xp = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return xp[:, :, dy:dy + s, dx:dx + s]


class _ScratchPlan:
    """The loop's plan of the small CNN (picklable)."""

    def __init__(self, X, y, Xv, yv, Xt, num_classes, seed, width=32):
        self.X, self.y, self.Xv, self.yv, self.Xt = X, y, Xv, yv, Xt
        self.num_classes, self.seed, self.width = num_classes, seed, width

    def __call__(self, fabric: Any):
        from ..backbones.small import small_cnn
        from .loop import Plan, ValidationAccuracy
        from .model import TransferModel
        from .objectives import CrossEntropy
        from .streams import TensorStream

        torch.manual_seed(self.seed)
        net = TransferModel(small_cnn(self.seed, self.width), self.num_classes, dropout=0.3)
        counts = np.bincount(self.y, minlength=self.num_classes).astype(np.float64)
        weight = len(self.y) / (self.num_classes * np.maximum(counts, 1))
        stream = TensorStream("labelled", self.X, self.y, batch_size=32, views={"train": translate})
        ev = None if self.Xv is None else ValidationAccuracy(TensorStream("val", self.Xv), self.yv, tie_break=False)
        return Plan(model=net, objective=CrossEntropy(class_weight=weight), streams={"labelled": stream},
                    param_groups=[{"params": list(net.parameters()), "lr": 2e-3, "weight_decay": 5e-4}],
                    optimizer=lambda g: torch.optim.AdamW(g, lr=2e-3, weight_decay=5e-4), evaluator=ev,
                    final={"test": TensorStream("test", self.Xt)})


def train_scratch(source: DataSource, y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                  num_classes: int, *, seed: int = 0, size: int = 64, epochs: int = 150, patience: int = 30,
                  progress: bool = False) -> ScratchResult:
    """Train the from-scratch baseline for ``source``'s modality on ``train`` (early stopping on ``val``).

    Args:
        source: the data; ``y`` its integer labels.
        train, val, test: index arrays (the same splits as the transfer model).
        num_classes: number of classes.
        seed: seed for initialisation and batch order.
        size: image side for the CNN.
        epochs, patience: the CNN's epoch budget and early-stopping patience.
        progress: progress bars (the pixels, then the training epochs) on stderr.

    Returns:
        Predictions and probabilities on ``test``.
    """
    t0 = time.perf_counter()
    if source.modality == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts = np.asarray([str(t) for t in source.items], dtype=object)
        lab = np.concatenate([train, val])
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        Xl = vec.fit_transform(texts[lab])
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(Xl, y[lab])
        proba = np.zeros((len(test), num_classes))
        proba[:, clf.classes_] = clf.predict_proba(vec.transform(texts[test]))
        return ScratchResult("tfidf-logreg", proba.argmax(1), proba, time.perf_counter() - t0,
                             {"vocabulary": len(vec.vocabulary_)})
    from ..backbones.small import SmallCNN
    from ..data.views import make_view, render
    from .loop import LoopSettings, run_loop

    view = make_view(SmallCNN().preprocessing.overlay(input_size=size), "eval")
    idx = np.concatenate([train, val, test])
    pixels = render(source, view, idx, progress=progress, label="pixels for the CNN from scratch")
    X, Xv, Xt = np.split(pixels, [len(train), len(train) + len(val)])
    plan = _ScratchPlan(X, np.asarray(y[train], np.int64), Xv if len(val) else None,
                        np.asarray(y[val], np.int64) if len(val) else None, Xt, num_classes, seed)
    r = run_loop(plan, LoopSettings(epochs=epochs, seed=seed, patience=patience if len(val) else None,
                                    accelerator="auto", progress="run" if progress else None,
                                    label="small CNN from scratch"))
    logits = torch.as_tensor(r.predictions["test"].logits, dtype=torch.float64)
    proba = torch.softmax(logits, 1).numpy()
    return ScratchResult("small-cnn", proba.argmax(1), proba, time.perf_counter() - t0,
                         {"epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
                          "val_accuracy": r.best_scores.get("val_accuracy"), "input_size": size})
