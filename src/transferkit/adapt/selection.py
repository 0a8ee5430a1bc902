"""Model selection without target labels: the scorers that choose among a run's checkpoints.

Target labels are never read here. Each scorer turns what a checkpoint computes on the data it may see
(labelled source validation split, unlabelled target inputs) into one number where **higher is better**:

- ``source-val``: accuracy on the held-out source validation split (the naive choice; blind to the shift).
- ``entropy``: minus the mean prediction entropy on the target (confident target predictions; Morerio et al.,
  ICLR 2018 use it for DA model selection).
- ``snd``: soft neighbourhood density of the target predictions (Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko,
  "Tune it the Right Way: Unsupervised Validation of Domain Adaptation via Soft Neighborhood Density",
  ICCV 2021).
- ``dev``: minus the deep embedded validation risk: the source validation loss weighted by the density ratio
  ``p_target(z) / p_source(z)`` of the checkpoint's features, with the control variate that reduces its
  variance (You, Wang, Long, Wang & Jordan, "Towards Accurate Model Selection in Deep Unsupervised Domain
  Adaptation", ICML 2019).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SELECTORS", "entropy_score", "snd_score", "dev_score", "source_val_score", "score_checkpoint"]

SELECTORS = ("dev", "snd", "entropy", "source-val")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def source_val_score(logits_val: np.ndarray, y_val: np.ndarray) -> float:
    """Accuracy on the labelled source validation split."""
    return float(np.mean(logits_val.argmax(1) == y_val))


def entropy_score(logits_t: np.ndarray) -> float:
    """Minus the mean entropy (nats) of the target predictions: higher = more confident."""
    p = _softmax(np.asarray(logits_t, np.float64))
    return float(np.mean(np.sum(p * np.log(np.clip(p, 1e-12, None)), axis=1)))


def snd_score(logits_t: np.ndarray, temperature: float = 0.05, max_samples: int = 2000, seed: int = 0) -> float:
    """Soft neighbourhood density (Saito et al., ICCV 2021): the mean entropy of each target sample's softmax
    similarity distribution over the other target samples (cosine similarity of the prediction vectors divided
    by ``temperature``). High when target predictions form dense, well-separated neighbourhoods."""
    p = _softmax(np.asarray(logits_t, np.float64))
    if len(p) > max_samples:
        p = p[np.random.default_rng(seed).choice(len(p), max_samples, replace=False)]
    p = p / np.clip(np.linalg.norm(p, axis=1, keepdims=True), 1e-12, None)
    sim = p @ p.T / temperature
    np.fill_diagonal(sim, -np.inf)
    sim -= sim.max(1, keepdims=True)
    q = np.exp(sim)
    q /= q.sum(1, keepdims=True)
    return float(-np.mean(np.sum(q * np.log(np.clip(q, 1e-300, None)), axis=1)))


def dev_score(z_train_s: np.ndarray, z_val_s: np.ndarray, z_t: np.ndarray, loss_val: np.ndarray,
              seed: int = 0) -> tuple[float, np.ndarray]:
    """Minus the DEV risk (You et al., ICML 2019) of one checkpoint, and the validation importance weights.

    A logistic domain classifier on the checkpoint's features (source training vs target) estimates
    ``w(z) = p(target|z) / p(source|z) * n_s / n_t`` for the source validation samples; the risk is
    ``mean(w * loss) + eta * mean(w) - eta`` with ``eta = -Cov(w * loss, w) / Var(w)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    Xd = np.concatenate([z_train_s, z_t])
    yd = np.r_[np.zeros(len(z_train_s)), np.ones(len(z_t))]
    sc = StandardScaler().fit(Xd)
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(sc.transform(Xd), yd)
    pt = np.clip(clf.predict_proba(sc.transform(z_val_s))[:, 1], 1e-6, 1 - 1e-6)
    w = pt / (1 - pt) * len(z_train_s) / len(z_t)
    wl = w * np.asarray(loss_val, np.float64)
    var = np.var(w, ddof=1) if len(w) > 1 else 0.0
    eta = -np.cov(wl, w, ddof=1)[0, 1] / var if var > 1e-12 else 0.0
    risk = float(wl.mean() + eta * w.mean() - eta)
    return -risk, w


def score_checkpoint(out: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Every selector's score of one checkpoint from its outputs.

    Args:
        out: ``logits_val``, ``y_val``, ``loss_val`` (per-sample source validation cross-entropy), ``z_val``,
            ``z_train`` (source training features, a subsample is fine), ``logits_t``, ``z_t`` (unlabelled target).
            No target labels: there is no place for them.
    """
    return {"source-val": source_val_score(out["logits_val"], out["y_val"]),
            "entropy": entropy_score(out["logits_t"]),
            "snd": snd_score(out["logits_t"], seed=seed),
            "dev": dev_score(out["z_train"], out["z_val"], out["z_t"], out["loss_val"], seed=seed)[0]}
