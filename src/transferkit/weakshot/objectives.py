"""The loss terms of weak-shot training on the novel classes: a per-sample weighted cross-entropy and SimTrans's
graph regulariser. Both look up what belongs to each item of a batch (its weight, the similarity net's input) by the
batch's item positions, so they work the same on cached features (a tensor stream) and on raw images or texts (an
item stream, end to end).

References:
    Chen, Niu, Liu & Zhang, "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import DataError
from ..train.objectives import Objective, Step
from .similarity import SimilarityNet

__all__ = ["WeightedCrossEntropy", "GraphRegularizer", "relax", "graph_term", "GRAPH_TARGETS"]

#: what the graph term pulls together (see :class:`GraphRegularizer`)
GRAPH_TARGETS = ("features", "outputs")


class WeightedCrossEntropy(Objective):
    """Cross-entropy with one weight per training item: ``mean_i w_i * CE(logits_i, y_i)`` over a batch.

    Args:
        weights: ``(N,)`` one weight per item of ``stream``, in the stream's order (SimTrans: mean 1 per class).
        stream: the labelled (noisy) stream.
        name: the term name.
    """

    def __init__(self, weights: Any, stream: str = "labelled", name: str = "wce"):
        super().__init__()
        self.name, self.stream = name, stream
        self.streams = (stream,)
        self.register_buffer("w", torch.as_tensor(np.asarray(weights, np.float32)), persistent=False)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        logits = step.outputs(self.stream)[0].logits.float()
        idx = step.batches[self.stream].index.to(self.w.device)
        ce = F.cross_entropy(logits, step.y(self.stream), reduction="none")
        return {self.name: (ce * self.w[idx]).mean() * step.weight(self.stream)}

    def config(self) -> dict[str, Any]:
        w = self.w.double()
        return {"name": self.name, "stream": self.stream, "weights": {"n": int(w.numel()),
                                                                     "mean": round(float(w.mean()), 6),
                                                                     "sum_sq": round(float((w * w).sum()), 4)}}


def relax(a: torch.Tensor, mu: float) -> torch.Tensor:
    """SimTrans's relaxation of similarities: ``(exp(mu * a) - 1) / (exp(mu) - 1)`` (the identity for ``mu = 0``).

    It maps 0 to 0 and 1 to 1; a negative ``mu`` lifts middling similarities (``mu = -4`` sends 0.5 to 0.88), a
    positive one keeps only the pairs near 1 (``mu = +8`` sends 0.9 to 0.45 and 0.5 to 0.02).

    Shape:
        any -> the same.
    """
    if mu == 0:
        return a
    return torch.expm1(mu * a) / math.expm1(mu)


class GraphRegularizer(Objective):
    """SimTrans's graph regulariser: ``alpha * mean_ij A_ij ||f_i - f_j||^2`` over every ordered pair of a batch.

    ``A_ij`` is the frozen similarity net's same-class probability of items ``i`` and ``j`` (from features it reads by
    the items' positions), relaxed with ``mu``; ``f`` are the features the classifier is trained on (the head's hidden
    layer on cached features, the backbone's output end to end). Similar pairs are pulled together in feature
    space. Following the reference code, the pairs are averaged (not summed) and no label mask is applied (its
    ``eye = 1``); ``eye < 1`` down-weights pairs whose (noisy) labels differ to ``eye``.

    Args:
        simnet: the trained :class:`~transferkit.weakshot.similarity.SimilarityNet`, or a
            :class:`~transferkit.weakshot.similarity.BlendedSimilarity` (kept frozen; read through its ``matrix``).
        features: ``(N, D)`` the similarity net's input for every item of ``stream``, in the stream's order.
        alpha: weight of the term (0.1 in the reference code, on raw features; the default config uses 3.0 on the
            outputs).
        mu: relaxation of the similarities (-4 in the reference code, which lifts middling similarities; the
            default config uses +8, which keeps only the most similar pairs).
        eye: weight of pairs with different labels (1: every pair counts).
        stream: the stream whose batches are regularised.
        start_epoch, every: the term is on in epochs ``start_epoch, start_epoch + every, ...`` (0 and 1: always).
            The reference code's schedule trains with the weighted cross-entropy alone first, then alternates epochs
            without and with the graph term: ``start_epoch`` = the first half, ``every = 2``.
        normalize: measure ``||f_i - f_j||^2`` between L2-normalised features (then in ``[0, 4]`` whatever the
            features' scale); False: the raw features, as in the reference code.
        on: what ``f`` is: ``features`` (the classifier's features, the paper's) or ``outputs`` (its softmax
            probabilities, then ``||f_i - f_j||^2`` is in ``[0, 2]`` and ``normalize`` does not apply): similar
            items are pulled towards the same *prediction*, the neighbour consistency of Iscen et al. (CVPR 2022)
            with SimTrans's transferred similarities as the neighbourhood. At probe cost the features are one
            hidden layer started from the base classifier; pulling them together moves the prediction only
            through the output layer, while the outputs are what the noisy labels corrupt.

    References:
        Chen et al., "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021, eq. (3)-(4);
        reference code ``GCN_reg/graph_modules.py`` (``rectify``, ``GCN``). ``on="outputs"``: Iscen, Valmadre,
        Arnab & Schmid, "Learning with Neighbor Consistency for Noisy Labels", CVPR 2022.
    """

    name = "graph"

    def __init__(self, simnet: SimilarityNet, features: Any, alpha: float = 0.1, mu: float = -4.0, eye: float = 1.0,
                 stream: str = "labelled", start_epoch: int = 0, every: int = 1, normalize: bool = False,
                 on: str = "features"):
        super().__init__()
        if on not in GRAPH_TARGETS:
            raise DataError(f"the graph term acts on one of {', '.join(GRAPH_TARGETS)}; got {on!r}")
        self.normalize, self.on = bool(normalize), on
        self.start_epoch, self.every = int(start_epoch), max(int(every), 1)
        self.simnet = simnet.eval()
        for p in self.simnet.parameters():
            p.requires_grad_(False)
        self.register_buffer("z", torch.as_tensor(np.asarray(features, np.float32)), persistent=False)
        self.alpha, self.mu, self.eye, self.stream = float(alpha), float(mu), float(eye), stream
        self.streams = (stream,)

    def similarities(self, idx: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The relaxed (and optionally masked) similarity matrix ``A`` of the items at ``idx``. Shape: ``(B, B)``."""
        self.simnet.eval()
        with torch.no_grad():
            A = relax(self.simnet.matrix(self.z[idx]).float().to(self.z.device), self.mu)
            if self.eye < 1 and y is not None:
                same = (y.unsqueeze(0) == y.unsqueeze(1)).float()
                A = A * same.clamp(min=self.eye)
        return A

    def active(self, epoch: int) -> bool:
        """Whether the term is on in ``epoch`` (0-based)."""
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every == 0

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        out = step.outputs(self.stream)[0]
        if self.on == "outputs":
            f = torch.softmax(out.logits.float(), dim=1)
        else:
            f = out.features.float()
            if self.normalize:
                f = F.normalize(f, dim=1)
        if not self.active(step.epoch):
            return {self.name: f.sum() * 0.0}
        idx = step.batches[self.stream].index.to(self.z.device)
        y = step.batches[self.stream].y
        A = self.similarities(idx, y).to(f.device)
        dist = (f.unsqueeze(1) - f.unsqueeze(0)).pow(2).sum(-1)
        return {self.name: self.alpha * (A * dist).mean() * step.weight(self.stream)}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "mu": self.mu, "eye": self.eye, "stream": self.stream,
                "features": list(self.z.shape), "start_epoch": self.start_epoch, "every": self.every,
                "normalize": self.normalize, "on": self.on}

    def train(self, mode: bool = True) -> "GraphRegularizer":
        """The similarity net stays in evaluation mode (batch norm statistics frozen) whatever the loop asks."""
        super().train(mode)
        self.simnet.eval()
        return self


def graph_term(simnet: SimilarityNet, Z: Any, cfg: Any, epochs: int) -> "GraphRegularizer":
    """SimTrans's graph regulariser with a :class:`~transferkit.weakshot.problem.WeakShotConfig`'s settings and schedule
    over ``epochs`` (on a copy of the net, which stays frozen)."""
    start, every = (epochs // 2, 2) if cfg.graph_schedule == "alternate" else (0, 1)
    return GraphRegularizer(copy.deepcopy(simnet), Z, cfg.alpha, cfg.mu, cfg.eye, start_epoch=start, every=every,
                            normalize=cfg.graph_normalize, on=cfg.graph_on)
