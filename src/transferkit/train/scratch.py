"""From-scratch baselines trained on the same labels as a transfer model: the yardstick of every result.

Images: a small CNN on raw pixels. Texts: TF-IDF bag of words + logistic regression.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.sources import DataSource

__all__ = ["SmallCNN", "ScratchResult", "train_scratch", "load_pixels"]


class SmallCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU-pool) and a linear classifier; about 0.1M parameters.

    Shape:
        ``(N, 3, S, S)`` -> ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class ScratchResult:
    """Outcome of a from-scratch baseline on the test split."""

    name: str
    y_pred: np.ndarray
    proba: np.ndarray
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def load_pixels(source: DataSource, index: np.ndarray, size: int = 64) -> np.ndarray:
    """Items as a float32 array ``(N, 3, size, size)`` in [-1, 1] (unreadable items are skipped by the caller)."""
    out = np.empty((len(index), 3, size, size), dtype=np.float32)
    for j, i in enumerate(index):
        img = source.load(int(i)).resize((size, size), resample=3)  # bicubic
        out[j] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return out


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the side (padding with edge values): label-safe for any images."""
    n, _, s, _ = x.shape
    pad = max(1, s // 8)
    xp = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    return xp[:, :, dy:dy + s, dx:dx + s]


def _train_cnn(X: np.ndarray, y: np.ndarray, Xv: np.ndarray | None, yv: np.ndarray | None, Xt: np.ndarray,
               num_classes: int, seed: int, epochs: int, patience: int) -> tuple[np.ndarray, dict[str, Any]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        net = SmallCNN(num_classes)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        weight = torch.as_tensor(len(y) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)
        loss_fn = nn.CrossEntropyLoss(weight=weight)
        Xt_, yt_ = torch.as_tensor(X), torch.as_tensor(y)
        best, best_epoch, best_state = -1.0, 0, None
        bs = 32
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), bs):
                idx = perm[i:i + bs]
                if len(idx) < 2:
                    continue
                loss = loss_fn(net(_augment(Xt_[idx], g)), yt_[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if Xv is not None and len(Xv):
                net.eval()
                with torch.no_grad():
                    acc = float((net(torch.as_tensor(Xv)).argmax(1).numpy() == yv).mean())
                if acc > best:
                    best, best_epoch, best_state = acc, epoch + 1, copy.deepcopy(net.state_dict())
                elif epoch + 1 - best_epoch >= patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        with torch.no_grad():
            proba = torch.cat([torch.softmax(net(torch.as_tensor(Xt[i:i + 256])), 1) for i in range(0, len(Xt), 256)])
    return proba.numpy(), {"epochs_run": epoch + 1, "best_epoch": best_epoch or epochs,
                           "val_accuracy": best if best >= 0 else None}


def train_scratch(source: DataSource, y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                  num_classes: int, *, seed: int = 0, size: int = 64, epochs: int = 150,
                  patience: int = 30) -> ScratchResult:
    """Train the from-scratch baseline for ``source``'s modality on ``train`` (early stopping on ``val``).

    Args:
        source: the data; ``y`` its integer labels.
        train, val, test: index arrays (the same splits as the transfer model).
        num_classes: number of classes.
        seed: seed for initialisation and batch order.
        size: image side for the CNN.

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
    X = load_pixels(source, train, size)
    Xv = load_pixels(source, val, size) if len(val) else None
    Xt = load_pixels(source, test, size)
    proba, details = _train_cnn(X, y[train], Xv, y[val] if len(val) else None, Xt, num_classes, seed, epochs, patience)
    return ScratchResult("small-cnn", proba.argmax(1), proba, time.perf_counter() - t0, {**details, "input_size": size})
