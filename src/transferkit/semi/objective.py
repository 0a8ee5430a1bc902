"""The consistency objective of the FixMatch family: pseudo-labels from the weak view of unlabelled inputs, a
cross-entropy on their strong view where the mask lets them through."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TransferkitError
from ..train.objectives import Objective, Step
from .masks import GraphWeights, Mask, SelfAdaptiveThreshold, number_setting

__all__ = ["PseudoLabelConsistency", "GraphTerm", "fairness_term", "align_distribution"]


def align_distribution(probs: torch.Tensor, p_model: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
    """ReMixMatch's distribution alignment: each row of ``probs`` multiplied by ``p_target / p_model`` and
    renormalised, so that pseudo-labels follow the labelled class distribution instead of the model's drift towards a
    few classes.

    Shape:
        probs ``(B, C)``, p_model and p_target ``(C,)`` -> ``(B, C)``.

    References:
        Berthelot et al., "ReMixMatch: Semi-Supervised Learning with Distribution Matching and Augmentation Anchoring",
        ICLR 2020 (section 3.2).
    """
    q = probs * (p_target / p_model.clamp(min=1e-12))
    return q / q.sum(1, keepdim=True).clamp(min=1e-12)


def fairness_term(mask: torch.Tensor, logits_s: torch.Tensor, class_prob: torch.Tensor,
                  label_hist: torch.Tensor) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness term: the running class probability and the mean strong-view probability
    of the masked items, each divided by its label histogram and renormalised; the term is ``sum p log q`` (its
    weight ``lambda_f`` is small, 0.01 in the reference code), which keeps the pseudo-labels from collapsing onto a
    few classes.

    Shape:
        mask ``(B,)``, logits_s ``(B, C)``, class_prob and label_hist ``(C,)`` -> scalar.

    References:
        Wang et al., "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning", ICLR 2023, eq. 10.
    """
    keep = mask.bool()
    if not keep.any():
        return logits_s.new_zeros(())
    p_s = logits_s[keep].float().softmax(1)
    hist_s = torch.bincount(p_s.argmax(1), minlength=p_s.shape[1]).to(p_s.dtype)
    hist_s = hist_s / hist_s.sum()
    safe = lambda t: torch.where(t > 0, 1.0 / t.clamp(min=1e-12), torch.zeros_like(t))  # noqa: E731
    target = class_prob.to(p_s.dtype) * safe(label_hist.to(p_s.dtype)).detach()
    target = target / target.sum()
    mean_s = p_s.mean(0) * safe(hist_s).detach()
    mean_s = mean_s / mean_s.sum()
    return (target * torch.log(mean_s + 1e-12)).sum()


def checked_smoothing(alpha: Any) -> float:
    """CoMatch's smoothing ``alpha`` as a float in [0, 1] (1: off), or a :class:`TransferkitError`."""
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 <= float(alpha) <= 1):
        raise TransferkitError(f"smoothing (CoMatch's alpha) must be in [0, 1] (1: off), got {alpha!r}")
    return float(alpha)


def checked_sharpen(sharpen: Any) -> float | None:
    """The soft pseudo-labels' temperature as a float in (0, 10], or None (hard pseudo-labels)."""
    if sharpen is not None and (isinstance(sharpen, bool) or not isinstance(sharpen, (int, float))
                                or not 0 < sharpen <= 10):
        raise TransferkitError(f"sharpen (the soft pseudo-labels' temperature) must be in (0, 10] or None, "
                               f"got {sharpen!r}")
    return None if sharpen is None else float(sharpen)


def checked_teacher_decay(decay: Any) -> float | None:
    """The EMA teacher's decay as a float in (0, 1), or None (no teacher)."""
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1):
        raise TransferkitError(f"teacher_decay must be in (0, 1) or None, got {decay!r}")
    return None if decay is None else float(decay)


class PseudoLabelConsistency(Objective):
    """``lambda_u * mean_b(mask_b * CE(strong logits_b, argmax weak probs_b))`` over the unlabelled stream.

    The weak view's probabilities are the targets (no gradient); the mask decides which count (:mod:`.masks`):
    FixMatch's fixed threshold, FlexMatch's curriculum, FreeMatch's self-adaptive one (which adds its fairness term
    with weight ``fairness``). The share of the batch that passed the mask is logged as ``metric_mask_rate``.

    With ``temperature`` ``T`` the weak view's probabilities are ``softmax(logits / T)`` (temperature scaling, Guo et
    al., ICML 2017: :mod:`.calibration` fits ``T`` on the labelled items so that the thresholds read calibrated
    confidences); the strong view's cross-entropy is unchanged. ``T = 1``: the papers' form.

    With ``smoothing`` ``alpha < 1`` (CoMatch's memory-smoothed pseudo-labelling, Li, Xiong & Hoi, ICCV 2021, eq. 4)
    the (aligned) weak probabilities of item ``b`` become ``q_b = alpha p_b + (1 - alpha) sum_j a_bj m_j``: ``m`` is a
    memory of every pool item's latest ``q`` (started at the head's first predictions), ``a_b`` the normalised
    affinities of item ``b``'s nearest neighbours in the pool (:meth:`set_neighbours`, a kNN graph of frozen features,
    :func:`~.graph.knn_neighbours`); masks and pseudo-labels then read ``q``, so a confident prediction whose
    neighbours disagree is damped. ``alpha = 1``: no smoothing (the papers' form).

    With ``sharpen`` ``T`` the target is soft (USB's ``use_hard_label=False``; UDA's sharpening, Xie et al., NeurIPS
    2020): the weak view's distribution raised to ``1 / T`` and renormalised, and the loss the cross-entropy of the
    strong view's log-probabilities against it, so an item admitted at a low confidence pulls less towards one class.
    None (the papers' default): hard pseudo-labels, the most probable class. Label propagation's targets
    (:class:`~.masks.GraphWeights`) stay hard.

    With ``teacher_decay`` ``d`` the weak view's predictions come from a teacher, an exponential moving average of
    the trained network's weights (Mean Teacher, Tarvainen & Valpola, NeurIPS 2017; pseudo-labels from the EMA
    teacher on weak views for a student trained on strong ones, as Unbiased Teacher, Liu et al., ICLR 2021), updated
    before every step with the usual warm-up ``min(d, (1 + t) / (10 + t))``; the student's strong view is trained as
    before. None (the papers' form): the network pseudo-labels its own weak views.

    With ``align`` the weak view's probabilities are first aligned to the labelled class distribution
    (:func:`align_distribution`, ReMixMatch's distribution alignment; SoftMatch's uniform alignment when every class
    has as many labels): ``p_model`` is the running mean of the weak probabilities, ``p_target`` the labelled items'
    class shares (set by :meth:`set_target`; uniform until then); masks and pseudo-labels both use the aligned
    probabilities. Where ``p_model`` starts and its momentum are :meth:`set_alignment`'s: by default it starts at
    the target with momentum 0.999; ``start="batch"`` starts it at the first unlabelled batch's mean probabilities,
    as USB's ``DistAlignEMAHook`` (Wang et al., NeurIPS 2022) does for ReMixMatch and SoftMatch, so the alignment
    acts from the first step instead of being held towards the target for most of a short run.

    Args:
        mask: the masking rule (set up for the pool size and classes by the plan).
        lambda_u: weight of the unlabelled term (1 in the papers).
        fairness: weight of FreeMatch's fairness term (used with the self-adaptive mask; 0.01 in the reference).
        stream: the unlabelled stream's name.
        align: distribution alignment (Berthelot et al., ReMixMatch, ICLR 2020).
        temperature: the weak logits' temperature (1: none; set later by :meth:`set_temperature`).
        smoothing: CoMatch's ``alpha`` (0.9 in the paper; 1: off); needs :meth:`set_neighbours` before training.
        sharpen: the soft targets' temperature (None: hard pseudo-labels; USB's default ``T`` is 0.5).
        teacher_decay: the EMA teacher's decay (None: no teacher); the teacher is made in :meth:`setup`.

    References:
        Sohn et al., FixMatch, NeurIPS 2020 (eq. 2-4); Zhang et al., FlexMatch, NeurIPS 2021; Wang et al., FreeMatch,
        ICLR 2023.
    """

    name = "unlabelled"
    #: the step metric the term logs (the mean mask or weight of the batch)
    metric = "mask_rate"

    #: where the running mean of the model's weak-view probabilities starts (distribution alignment)
    ALIGN_STARTS = ("target", "batch")

    def __init__(self, mask: Mask, lambda_u: float = 1.0, fairness: float = 0.0, stream: str = "unlabelled",
                 align: bool = False, temperature: float = 1.0, smoothing: float = 1.0,
                 sharpen: float | None = None, teacher_decay: float | None = None):
        super().__init__()
        for name, v in (("lambda_u", lambda_u), ("fairness", fairness)):
            if not (math.isfinite(number_setting(v, name, "a number >= 0")) and float(v) >= 0):
                raise TransferkitError(f"{name} is the weight of a loss term, a number >= 0; got {v!r}")
        self.set_teacher_decay(teacher_decay)
        self.teacher: nn.Module | None = None
        self.register_buffer("teacher_updates", torch.zeros((), dtype=torch.long))
        self.smoothing = checked_smoothing(smoothing)
        self.set_sharpen(sharpen)
        self.register_buffer("memory", torch.zeros(0))
        self.register_buffer("nb_index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("nb_weight", torch.zeros(0))
        self.mask, self.lambda_u, self.fairness, self.stream = mask, float(lambda_u), float(fairness), stream
        self.align = bool(align)
        self.streams = (stream,)
        self.views = {stream: ("weak", "strong")}
        self.register_buffer("p_model", torch.zeros(0))
        self.register_buffer("p_target", torch.zeros(0))
        self.register_buffer("p_model_started", torch.zeros((), dtype=torch.bool))
        self.set_alignment()
        self.register_buffer("temperature", torch.tensor(1.0))
        self.set_temperature(temperature)

    def set_temperature(self, temperature: float) -> None:
        """The temperature the weak view's logits are divided by before the mask and the pseudo-labels."""
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise TransferkitError(f"the temperature must be a positive number, got {temperature!r}")
        self.temperature = torch.tensor(float(temperature))

    def set_target(self, class_shares: Any) -> None:
        """Distribution alignment's target: the labelled items' class shares ``(C,)`` (and ``p_model`` starts there)."""
        t = torch.as_tensor(np.asarray(class_shares, dtype=np.float32))
        if t.ndim != 1 or len(t) < 2 or bool((t < 0).any()) or float(t.sum()) <= 0:
            raise TransferkitError("class shares must be a non-negative vector over >= 2 classes; "
                                   f"got {class_shares!r}")
        self.p_target = t / t.sum()
        self.p_model = self.p_target.clone()

    def set_alignment(self, start: str = "target", momentum: float = 0.999) -> None:
        """Distribution alignment's running estimate ``p_model``: where it starts (``target``: the labelled class
        shares, ``batch``: the first unlabelled batch's mean probabilities, USB's) and its momentum (0.999, USB's)."""
        if start not in self.ALIGN_STARTS:
            raise TransferkitError(f"the alignment's start must be one of {', '.join(self.ALIGN_STARTS)}, "
                                   f"got {start!r}")
        if not 0 <= number_setting(momentum, "align_momentum", "a number in [0, 1)") < 1:
            raise TransferkitError(f"align_momentum must be in [0, 1), got {momentum!r}")
        self.align_start, self.align_momentum = start, float(momentum)

    def set_teacher_decay(self, decay: float | None) -> None:
        """Pseudo-labels from an EMA teacher at this decay (None: from the network itself); before training."""
        self.teacher_decay = checked_teacher_decay(decay)

    def setup(self, model: nn.Module) -> None:
        """With a teacher: the teacher starts as a frozen copy of the network (its state is checkpointed with the
        objective's)."""
        if self.teacher_decay is not None:
            self.teacher = copy.deepcopy(model).requires_grad_(False).eval()

    def _teacher_logits(self, step: Step) -> torch.Tensor:
        if self.teacher is None:
            raise TransferkitError("teacher_decay needs setup(model) before training (the training loop calls it)")
        self.teacher_updates += 1
        t = float(self.teacher_updates)
        d = min(float(self.teacher_decay), (1 + t) / (10 + t))
        with torch.no_grad():
            for (_, tv), (_, sv) in zip(self.teacher.state_dict().items(), step.net.state_dict().items()):
                if tv.dtype.is_floating_point:
                    tv.mul_(d).add_(sv.detach().to(tv), alpha=1 - d)
                else:
                    tv.copy_(sv)
            return self.teacher(step.x(self.stream, "weak"), return_features=True)[0]

    def set_sharpen(self, sharpen: float | None) -> None:
        """Soft targets at temperature ``sharpen`` (None: hard pseudo-labels)."""
        self.sharpen = checked_sharpen(sharpen)

    def set_neighbours(self, index: Any, weight: Any, start: Any, smoothing: float | None = None) -> None:
        """The pool's neighbour graph for :attr:`smoothing`: ``index`` ``(N, k)`` positions in the pool, ``weight``
        ``(N, k)`` non-negative affinities (each row is normalised to sum to 1 here; a row of zeros leaves its item
        unsmoothed), and the memory's start ``(N, C)`` (the head's first class probabilities of the pool);
        ``smoothing``: CoMatch's ``alpha`` (None: the one given at construction)."""
        if smoothing is not None:
            self.smoothing = checked_smoothing(smoothing)
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        w = torch.as_tensor(np.asarray(weight, dtype=np.float32))
        m = torch.as_tensor(np.asarray(start, dtype=np.float32))
        if idx.ndim != 2 or w.shape != idx.shape or m.ndim != 2 or len(m) != len(idx) or bool((w < 0).any()) \
                or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(m))):
            raise TransferkitError("set_neighbours needs index and weight of one shape (N, k) with positions in "
                                   f"[0, N) and weights >= 0, and a start (N, C); got {tuple(idx.shape)}, "
                                   f"{tuple(w.shape)}, {tuple(m.shape)}")
        tot = w.sum(1, keepdim=True)
        self.nb_index, self.nb_weight, self.memory = idx, torch.where(tot > 0, w / tot.clamp(min=1e-12), w), m

    def _smoothed(self, probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if not len(self.memory):
            raise TransferkitError("smoothing < 1 needs the pool's neighbour graph (set_neighbours) before training")
        idx = index.to(self.memory.device).long()
        ok = idx >= 0
        i = idx.clamp(min=0)
        w, nb = self.nb_weight[i], self.nb_index[i]
        has = (w.sum(1) > 0) & ok
        neigh = (w.unsqueeze(2) * self.memory[nb]).sum(1).to(probs)
        a = self.smoothing
        q = torch.where(has.to(probs.device).unsqueeze(1), a * probs + (1 - a) * neigh, probs)
        self.memory[i[ok]] = q[ok.to(q.device)].detach().to(self.memory)
        return q

    def _aligned(self, probs: torch.Tensor, gather: Any) -> torch.Tensor:
        c = probs.shape[1]
        if len(self.p_target) != c:
            self.set_target(np.ones(c))
        p_target, p_model = self.p_target.to(probs), self.p_model.to(probs)
        m = self.align_momentum
        if self.align_start == "batch" and not bool(self.p_model_started):
            m = 0.0  # USB: the first batch's mean is the estimate's start
        self.p_model = (m * p_model + (1 - m) * gather(probs).mean(0)).to(self.p_model)
        self.p_model_started.fill_(True)
        return align_distribution(probs, self.p_model.to(probs), p_target)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        weak = (self._teacher_logits(step) if self.teacher_decay is not None
                else step.outputs(self.stream, view="weak")[0].logits)
        strong = step.outputs(self.stream, view="strong")[0].logits
        probs = (weak.detach().float() / self.temperature.to(weak.device)).softmax(1)
        if self.align:
            probs = self._aligned(probs, step.gather)
        if self.smoothing < 1:
            probs = self._smoothed(probs, step.batches[self.stream].index)
        mask = self.mask(probs, step.batches[self.stream].index, step.gather)
        if self.sharpen is not None and not isinstance(self.mask, GraphWeights):
            soft = probs.clamp(min=1e-12) ** (1.0 / self.sharpen)
            soft = soft / soft.sum(1, keepdim=True)
            per_item = -(soft * F.log_softmax(strong.float(), 1)).sum(1)
        else:
            target = self.mask.targets(probs, step.batches[self.stream].index)
            per_item = F.cross_entropy(strong.float(), target, reduction="none")
        loss = (per_item * mask).mean()
        step.metrics[self.metric] = float(mask.mean())
        out = {self.name: self.lambda_u * loss}
        if self.fairness and isinstance(self.mask, SelfAdaptiveThreshold):
            out["fairness"] = self.fairness * fairness_term(mask, strong, self.mask.class_prob, self.mask.label_hist)
        return out

    def config(self) -> dict[str, Any]:
        t = float(self.temperature)
        return {"name": self.name, "mask": self.mask.config(), "lambda_u": self.lambda_u, "fairness": self.fairness,
                **({"align": True} if self.align else {}),
                **({"align_start": self.align_start, "align_momentum": self.align_momentum}
                   if self.align and (self.align_start, self.align_momentum) != ("target", 0.999) else {}),
                **({"temperature": round(t, 6)} if t != 1.0 else {}),
                **({"smoothing": self.smoothing} if self.smoothing < 1 else {}),
                **({"sharpen": self.sharpen} if self.sharpen is not None else {}),
                **({"teacher_decay": self.teacher_decay} if self.teacher_decay is not None else {})}

    def epoch_state(self) -> dict[str, Any]:
        """The per-class confidence thresholds in force at the end of the epoch (and the weak logits' temperature
        when it is not 1)."""
        t = float(self.temperature)
        return {"thresholds": [round(float(t), 4) for t in self.mask.thresholds().cpu()],
                **({"temperature": round(t, 4)} if t != 1.0 else {})}

    def validation_metrics(self, probs: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
        """What pseudo-labelling would do on the validation items, whose labels are known: the share that clears
        the current thresholds (``val_mask_rate``) and the accuracy of those pseudo-labels
        (``val_pseudo_accuracy``). Read-only: the mask's state does not change. ``probs`` are the head's
        (temperature 1); the objective's temperature is applied first, as in training."""
        t = float(self.temperature)
        if t != 1.0:
            probs = (probs.clamp(min=1e-30).log() / t).softmax(1)
        sel = self.mask.select(probs).bool().cpu().numpy()
        pred = probs.argmax(1).cpu().numpy()
        return {"val_mask_rate": float(sel.mean()),
                "val_pseudo_accuracy": float((pred[sel] == y[sel]).mean()) if sel.any() else None}


class GraphTerm(PseudoLabelConsistency):
    """Label propagation's term added beside a method's consistency term (Iscen et al., CVPR 2019, whose "+ MT" rows
    add it to Mean Teacher's consistency): the strong view's cross-entropy against the graph's pseudo-labels,
    weighted by certainty and class (:class:`~.masks.GraphWeights`, given its graph by the plan), named ``graph``; it
    logs its mean weight as ``metric_graph_weight`` and leaves the thresholds and the validation statistics to the
    method's term.

    Args:
        weight: the term's weight (``lambda``); k, gamma, alpha: the graph's (:class:`~.masks.GraphWeights`).
    """

    name = "graph"
    metric = "graph_weight"

    def __init__(self, weight: float = 1.0, k: int = 10, gamma: float = 3.0, alpha: float = 0.99,
                 stream: str = "unlabelled"):
        super().__init__(GraphWeights(k, gamma, alpha), weight, stream=stream)

    def epoch_state(self) -> dict[str, Any]:
        """Nothing: the thresholds logged are the method's."""
        return {}

    def validation_metrics(self, probs: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
        """Nothing: the validation statistics logged are the method's."""
        return {}
