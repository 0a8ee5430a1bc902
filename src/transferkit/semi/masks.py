"""Which unlabelled predictions become training targets: the masking rules of the FixMatch family.

A mask sees the class probabilities of the weak view of an unlabelled batch (and the items' positions in the
unlabelled pool) and returns one weight per item, 0 or 1; its running state (FlexMatch's per-item learning status,
FreeMatch's running means) is a set of buffers, so it is checkpointed and resumed with the model. Under DDP the state
is updated from the whole global batch (``gather``), so every process keeps the same one.

References:
    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020.
    Zhang et al., "FlexMatch: Boosting Semi-Supervised Learning with Curriculum Pseudo Labeling", NeurIPS 2021.
    Wang et al., "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning", ICLR 2023.
    Chen et al., "SoftMatch: Addressing the Quantity-Quality Trade-off in Semi-supervised Learning", ICLR 2023.
    Wang et al., "USB: A Unified Semi-supervised Learning Benchmark", NeurIPS 2022 (the masking-hook design).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import TransferkitError
from ..registry import Registry
from .graph import check_graph_settings

__all__ = ["MASKS", "Mask", "FixedThreshold", "FlexThreshold", "SelfAdaptiveThreshold", "TruncatedGaussian",
           "GraphWeights", "scaled_momentum"]

#: masking rules by name
MASKS: Registry["Mask"] = Registry("pseudo-label mask")


class Mask(nn.Module):
    """Base class. ``setup`` sizes the state; ``forward`` updates it from a batch and returns the batch's mask;
    ``select`` applies the current rule without updating anything (for logging on validation data)."""

    name = "mask"

    def setup(self, n_unlabelled: int, n_classes: int, steps: int | None = None) -> None:
        """Size the state for a pool of ``n_unlabelled`` items and ``n_classes`` classes, for a run of ``steps``
        optimisation steps (None: unknown)."""

    def thresholds(self) -> torch.Tensor:
        """The current confidence threshold of each class."""
        raise NotImplementedError

    def select(self, probs: torch.Tensor) -> torch.Tensor:
        """1 where the most probable class clears its current threshold."""
        conf, cls = probs.max(1)
        return (conf >= self.thresholds().to(probs.device)[cls]).float()

    def forward(self, probs: torch.Tensor, index: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:  # noqa: D102
        return self.select(probs)

    def targets(self, probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The pseudo-labels of a batch: the most probable class of the weak view (a graph rule overrides this)."""
        return probs.argmax(1)

    def config(self) -> dict[str, Any]:
        """Name and parameters (part of a run's identity)."""
        return {"name": self.name}


def number_setting(value: Any, name: str, allowed: str) -> float:
    """``value`` as a float, or a :class:`TransferkitError` naming the setting and what it allows (a method's
    parameters come from Python or a config file, where a string or None may slip in)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TransferkitError(f"{name} must be {allowed}, got {value!r}") from None


def _check_tau(tau: float) -> float:
    if not 0 < number_setting(tau, "tau", "a number in (0, 1]") <= 1:
        raise TransferkitError(f"the confidence threshold must be in (0, 1], got tau={tau!r}")
    return float(tau)


@MASKS.register("fixed")
class FixedThreshold(Mask):
    """FixMatch: a pseudo-label counts when its probability is at least ``tau`` (0.95 in the paper), for every
    class and every step."""

    name = "fixed"

    def __init__(self, tau: float = 0.95):
        super().__init__()
        self.tau = _check_tau(tau)
        self.register_buffer("_thresholds", torch.zeros(0))

    def setup(self, n_unlabelled: int, n_classes: int, steps: int | None = None) -> None:
        self._thresholds = torch.full((n_classes,), self.tau)

    def thresholds(self) -> torch.Tensor:
        return self._thresholds

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "tau": self.tau}


@MASKS.register("flex")
class FlexThreshold(Mask):
    """FlexMatch's curriculum pseudo-labelling: per-class thresholds ``tau * M(beta_c)`` with the convex mapping
    ``M(x) = x / (2 - x)``, where the learning effect ``beta_c`` is the number of unlabelled items whose latest
    confident (``>= tau``) prediction is class ``c``, divided by the largest such count, or, while most items have
    never been predicted confidently (the threshold warm-up), by the number of those items. A class the model learns
    slowly gets a low threshold, so its pseudo-labels are used early.

    The paper's warm-up ends when fewer items are unused than the largest class count, which presumes that training
    makes most of the pool confident; a head on frozen features may never get there, and then every threshold stays
    near 0. ``warmup_end`` (a share of the run's steps) ends the warm-up by schedule instead: after that step the
    denominator is the largest class count, as once the paper's warm-up is over.

    The learning effect compares class counts, which measures how well each class is learnt only when the pool's
    classes are equally large (the paper's benchmarks are balanced): in a pool where one class has a third of
    another's items, that class's count, and so its threshold, stays low however well it is learnt, and its
    pseudo-labels are admitted almost unfiltered. ``size_aware=True`` compares rates instead: ``sigma_c / n_c``,
    where ``n_c`` is the number of pool items whose latest prediction (any confidence) is ``c``, normalised by the
    largest rate, or during the warm-up by ``C * unused / N`` (the count rule divided through by ``N / C``); when
    every ``n_c`` is ``N / C`` this is exactly the paper's rule.

    Args:
        tau: the upper threshold (0.95).
        warmup: the threshold warm-up of the paper (the unused items count in the denominator).
        size_aware: learning effects as rates of the predicted class sizes (see above; False: the paper's counts).
        warmup_end: None (the paper: the warm-up ends only when the unused items are fewer than the largest class
            count), or the share of the run's steps after which it ends in any case (needs the run's length in
            :meth:`setup`).
    """

    name = "flex"

    def __init__(self, tau: float = 0.95, warmup: bool = True, warmup_end: float | None = None,
                 size_aware: bool = False):
        super().__init__()
        self.tau, self.warmup, self.size_aware = _check_tau(tau), bool(warmup), bool(size_aware)
        if warmup_end is not None and not 0 <= number_setting(warmup_end, "warmup_end", "a share in [0, 1]") <= 1:
            raise TransferkitError(f"warmup_end is a share of the run's steps in [0, 1], got {warmup_end!r}")
        self.warmup_end = None if warmup_end is None else float(warmup_end)
        self._end_step: int | None = None
        self.register_buffer("status", torch.zeros(0, dtype=torch.long))  # latest confident class, -1: none yet
        self.register_buffer("beta", torch.zeros(0))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("predicted", torch.zeros(0, dtype=torch.long))  # latest prediction, -1: not seen yet

    def setup(self, n_unlabelled: int, n_classes: int, steps: int | None = None) -> None:
        self.status = torch.full((n_unlabelled,), -1, dtype=torch.long)
        self.beta = torch.zeros(n_classes)
        self.step = torch.zeros((), dtype=torch.long)
        self.predicted = torch.full((n_unlabelled,), -1, dtype=torch.long)
        if self.warmup_end is not None:
            if not steps:
                raise TransferkitError("warmup_end needs the run's number of steps (give steps to setup)")
            self._end_step = int(round(self.warmup_end * int(steps)))

    def thresholds(self) -> torch.Tensor:
        b = self.beta
        return self.tau * b / (2.0 - b)

    def _learning_effect(self) -> None:
        c = len(self.beta)
        counts = torch.bincount(self.status + 1, minlength=c + 1).to(self.beta.dtype)  # [unused, class 0, ...]
        if counts[0] == len(self.status):  # nothing learnt yet: keep beta at 0
            return
        warm = self.warmup and (self._end_step is None or int(self.step) < self._end_step)
        if self.size_aware:
            sizes = torch.bincount(self.predicted[self.predicted >= 0], minlength=c).to(self.beta.dtype)
            rates = counts[1:] / sizes.clamp(min=1.0)
            denom = torch.max(rates)
            if warm:
                denom = torch.maximum(denom, c * counts[0] / len(self.status))
            self.beta = rates / torch.clamp(denom, min=1e-12)
            return
        denom = torch.max(counts) if warm else torch.max(counts[1:])
        self.beta = counts[1:] / torch.clamp(denom, min=1.0)

    def forward(self, probs: torch.Tensor, index: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
        mask = self.select(probs)  # with the status before this batch, as the reference implementation
        conf, cls = probs.max(1)
        picked = gather(torch.where(conf >= self.tau, cls, torch.full_like(cls, -2)))
        where = gather(index.to(cls.device))
        keep = picked >= 0
        if keep.any():
            self.status[where[keep].to(self.status.device)] = picked[keep].to(self.status.device)
        if self.size_aware:
            self.predicted[where.to(self.predicted.device)] = gather(cls).to(self.predicted.device)
        self.step += 1
        self._learning_effect()
        return mask

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "tau": self.tau, "warmup": self.warmup,
                **({"warmup_end": self.warmup_end} if self.warmup_end is not None else {}),
                **({"size_aware": True} if self.size_aware else {})}


@MASKS.register("self-adaptive")
class SelfAdaptiveThreshold(Mask):
    """FreeMatch's self-adaptive thresholds: a global one, the running mean of the maximum probability over
    unlabelled batches (``tau_t = m tau_{t-1} + (1 - m) mean(max p)``), scaled per class by the running mean class
    probability normalised by its maximum (``tau_t(c) = tau_t * p_t(c) / max p_t``); both start at ``1 / C`` and move
    with momentum ``m`` (0.999). Early on, the threshold is low and many pseudo-labels train; it rises as the model
    grows confident. The running histogram of predicted classes is kept for the fairness term.

    The paper's ``m = 0.999`` averages over about a thousand steps of a run of 2^20; a head trained for a few thousand
    steps would spend half its run with a threshold still near ``1 / C``, accepting every pseudo-label. So by default
    (``momentum=None``) the averaging spans a twentieth of the run: ``m = 1 - 20 / steps``, kept within
    ``[0.9, 0.999]`` (0.99 for 2000 steps; 0.999 from 20000 steps on, the paper's value).

    The class scaling ``p_t(c)`` is the class's share of the probability mass, which mixes how confidently the class
    is predicted with how large it is in the pool: in an imbalanced pool a small class gets a low threshold however
    confident the model is on it. ``size_aware=True`` scales by the running mean confidence of the items predicted as
    ``c`` instead (same momentum; a class absent from a batch keeps its value), which leaves the class's size out;
    ``p_t(c)`` is kept for the fairness term.

    Args:
        momentum: ``m``; None: scaled to the run's length as above.
        size_aware: class scaling by the mean confidence of each predicted class (see above; False: the paper's).
    """

    name = "self-adaptive"

    def __init__(self, momentum: float | None = None, size_aware: bool = False):
        super().__init__()
        self.size_aware = bool(size_aware)
        self.requested, self.momentum = _checked_momentum(momentum)
        self.register_buffer("global_threshold", torch.zeros(()))
        self.register_buffer("class_prob", torch.zeros(0))
        self.register_buffer("label_hist", torch.zeros(0))
        self.register_buffer("class_conf", torch.zeros(0))

    def setup(self, n_unlabelled: int, n_classes: int, steps: int | None = None) -> None:
        self.momentum = _run_momentum(self.requested, self.momentum, steps)
        self.global_threshold = torch.tensor(1.0 / n_classes)
        self.class_prob = torch.full((n_classes,), 1.0 / n_classes)
        self.label_hist = torch.full((n_classes,), 1.0 / n_classes)
        self.class_conf = torch.full((n_classes,), 1.0 / n_classes)

    def thresholds(self) -> torch.Tensor:
        scale = self.class_conf if self.size_aware else self.class_prob
        return self.global_threshold * scale / scale.max()

    def forward(self, probs: torch.Tensor, index: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
        p = gather(probs)
        m = self.momentum
        conf, cls = p.max(1)
        self.global_threshold = self.global_threshold * m + (1 - m) * conf.mean()
        self.class_prob = self.class_prob * m + (1 - m) * p.mean(0)
        hist = torch.bincount(cls, minlength=len(self.class_prob)).to(p.dtype)
        self.label_hist = self.label_hist * m + (1 - m) * hist / hist.sum()
        if self.size_aware:
            sums = torch.zeros_like(self.class_conf).index_add_(0, cls, conf.to(self.class_conf.dtype))
            seen = hist > 0
            self.class_conf = torch.where(seen, self.class_conf * m + (1 - m) * sums / hist.clamp(min=1),
                                          self.class_conf)
        return self.select(probs)  # after the update, as the reference implementation

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "momentum": self.requested, **({"size_aware": True} if self.size_aware else {})}


@MASKS.register("soft")
class TruncatedGaussian(Mask):
    """SoftMatch's soft weights: ``1`` where the confidence ``max p`` is at least its running mean ``mu_t``, else
    ``exp(-(max p - mu_t)^2 / (2 sigma_t^2 / n_sigma^2))``, a Gaussian truncated at its mean: every pseudo-label
    trains, weighted by how far its confidence falls below the typical one. ``mu_t`` and ``sigma_t^2`` are running
    means (momentum ``m``) of each batch's mean and unbiased variance of ``max p``, starting at ``1 / C`` and 1.
    ``n_sigma = 2`` as USB's reference implementation (the paper's eq. 7 is ``n_sigma = 1``); the momentum is
    scaled to the run's length as :class:`SelfAdaptiveThreshold`'s (the paper's 0.999 from 20000 steps on).

    ``thresholds`` are ``mu_t`` for every class (the items at full weight), for the logs; the loss uses the weights.

    Args:
        momentum: ``m``; None: :func:`scaled_momentum` of the run's steps.
        n_sigma: the Gaussian's width divisor (2).
    """

    name = "soft"

    def __init__(self, momentum: float | None = None, n_sigma: float = 2.0):
        super().__init__()
        if not number_setting(n_sigma, "n_sigma", "a number > 0") > 0:
            raise TransferkitError(f"n_sigma must be > 0, got {n_sigma!r}")
        self.requested, self.momentum = _checked_momentum(momentum)
        self.n_sigma = float(n_sigma)
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("_n_classes", torch.zeros((), dtype=torch.long))

    def setup(self, n_unlabelled: int, n_classes: int, steps: int | None = None) -> None:
        self.momentum = _run_momentum(self.requested, self.momentum, steps)
        self.mu = torch.tensor(1.0 / n_classes)
        self.var = torch.tensor(1.0)
        self._n_classes = torch.tensor(int(n_classes))

    def thresholds(self) -> torch.Tensor:
        return self.mu.expand(int(self._n_classes)).clone()

    def weights(self, probs: torch.Tensor) -> torch.Tensor:
        """The current soft weight of each row of ``probs`` (no update)."""
        conf = probs.max(1).values
        gap = torch.clamp(conf - self.mu.to(conf), max=0.0)
        return torch.exp(-gap ** 2 / (2 * self.var.to(conf) / self.n_sigma ** 2))

    def forward(self, probs: torch.Tensor, index: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
        conf = gather(probs).max(1).values
        m = self.momentum
        var = conf.var(unbiased=True) if len(conf) > 1 else torch.zeros((), device=conf.device)
        self.mu = self.mu * m + (1 - m) * conf.mean().to(self.mu)
        self.var = self.var * m + (1 - m) * var.to(self.var)
        return self.weights(probs)  # after the update, as the reference implementation

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "momentum": self.requested, "n_sigma": self.n_sigma}


@MASKS.register("graph")
class GraphWeights(Mask):
    """Iscen et al.'s label propagation pseudo-labels: each unlabelled item's target is its class after label
    propagation over the kNN graph of the frozen features (:func:`~.graph.propagate_labels`), fixed for the run, and
    its weight the propagation's certainty ``1 - H / log C`` times its class's balancing weight; the weak view's
    prediction is not read. ``thresholds`` are 0 (every item trains, with its weight). :meth:`set_graph` must be
    called before training (the plan of :func:`~.fit.train_semi_head` does).

    Args:
        k, gamma, alpha: the graph's neighbours, the affinity's exponent and the diffusion's alpha (10, 3, 0.99).

    References:
        Iscen, Tolias, Avrithis & Chum, "Label Propagation for Deep Semi-supervised Learning", CVPR 2019 (one
        propagation: the features are frozen, so the graph does not change between epochs).
    """

    name = "graph"

    def __init__(self, k: int = 10, gamma: float = 3.0, alpha: float = 0.99):
        super().__init__()
        check_graph_settings(k, gamma, alpha)
        self.k, self.gamma, self.alpha = int(k), float(gamma), float(alpha)
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(0))
        self.register_buffer("_n_classes", torch.zeros((), dtype=torch.long))

    def setup(self, n_unlabelled: int, n_classes: int, steps: int | None = None) -> None:
        self._n_classes = torch.tensor(int(n_classes))

    def set_graph(self, graph: Any) -> None:
        """The propagation's result (:class:`~.graph.GraphLabels`) for the pool, in pool order."""
        self.labels = torch.as_tensor(np.asarray(graph.labels, dtype=np.int64))
        self.weights = torch.as_tensor(np.asarray(graph.item_weights(), dtype=np.float32))

    def _check(self) -> None:
        if not len(self.labels):
            raise TransferkitError("the label propagation rule has no graph: it needs frozen features of the "
                                   "labelled and unlabelled items (semi-supervised level 'features')")

    def thresholds(self) -> torch.Tensor:
        return torch.zeros(int(self._n_classes))

    def select(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(probs), device=probs.device)

    def forward(self, probs: torch.Tensor, index: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
        self._check()
        i = index.to(self.weights.device).long()
        return torch.where(i >= 0, self.weights[i.clamp(min=0)], torch.zeros(())).to(probs.device)

    def targets(self, probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self._check()
        return self.labels[index.to(self.labels.device).long().clamp(min=0)].to(probs.device)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "gamma": self.gamma, "alpha": self.alpha}


def _checked_momentum(momentum: float | None) -> tuple[float | None, float]:
    """``(requested, momentum)`` of a running-mean mask: what the user gave (None: scale it to the run in
    :func:`_run_momentum`) and the value in use until then (0.999, the papers')."""
    if momentum is not None and not 0 <= number_setting(momentum, "momentum", "a number in [0, 1)") < 1:
        raise TransferkitError(f"momentum must be in [0, 1), got {momentum!r}")
    return (None, 0.999) if momentum is None else (float(momentum), float(momentum))


def _run_momentum(requested: float | None, current: float, steps: int | None) -> float:
    """The momentum for a run of ``steps``: the requested one, else :func:`scaled_momentum` (``current`` when the
    length is unknown)."""
    return scaled_momentum(steps) if requested is None and steps else current


def scaled_momentum(steps: int, span: float = 20.0) -> float:
    """A running mean's momentum whose averaging window is ``1 / span`` of a run of ``steps`` steps, within
    ``[0.9, 0.999]``."""
    return float(min(0.999, max(0.9, 1.0 - span / max(int(steps), 1))))
