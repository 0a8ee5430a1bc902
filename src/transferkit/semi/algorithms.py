"""The semi-supervised methods by name: each is the consistency objective with one masking rule
(:mod:`.masks`), registered in :data:`SEMI_METHODS` with its paper and defaults."""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .masks import FixedThreshold, FlexThreshold, GraphWeights, Mask, SelfAdaptiveThreshold, TruncatedGaussian
from .objective import PseudoLabelConsistency

__all__ = ["SEMI_METHODS", "create_semi_objective"]

#: semi-supervised methods; capabilities: ``needs_unlabelled`` (always), ``mask`` (the rule's name), ``align_start``
#: (where the method's own distribution alignment starts its running estimate, when it is not ``target``)
SEMI_METHODS: Registry[PseudoLabelConsistency] = Registry("semi-supervised method")


@SEMI_METHODS.register("fixmatch", needs_unlabelled=True, mask="fixed",
                       paper="Sohn et al., FixMatch, NeurIPS 2020")
def fixmatch(tau: float = 0.95, lambda_u: float = 1.0, align: bool = False) -> PseudoLabelConsistency:
    """FixMatch: pseudo-labels from the weak view above a fixed confidence ``tau``, cross-entropy on the strong
    (``align``: ReMixMatch's distribution alignment of the weak probabilities first)."""
    return PseudoLabelConsistency(FixedThreshold(tau), lambda_u, align=align)


@SEMI_METHODS.register("flexmatch", needs_unlabelled=True, mask="flex",
                       paper="Zhang et al., FlexMatch, NeurIPS 2021")
def flexmatch(tau: float = 0.95, lambda_u: float = 1.0, warmup: bool = True, warmup_end: float | None = None,
              size_aware: bool = False, align: bool = False) -> PseudoLabelConsistency:
    """FlexMatch: FixMatch with per-class curriculum thresholds from each class's learning effect (``warmup_end``:
    the threshold warm-up ends by schedule, ``size_aware``: rates instead of counts, :class:`~.masks.FlexThreshold`).
    On cached features ``SemiConfig(calibrate="head")`` calibrates its cosine head first (not the default: see
    :class:`~.fit.SemiConfig`)."""
    return PseudoLabelConsistency(FlexThreshold(tau, warmup, warmup_end, size_aware), lambda_u, align=align)


@SEMI_METHODS.register("freematch", needs_unlabelled=True, mask="self-adaptive",
                       paper="Wang et al., FreeMatch, ICLR 2023")
def freematch(momentum: float | None = None, lambda_u: float = 1.0, fairness: float = 0.01,
              size_aware: bool = False, align: bool = False) -> PseudoLabelConsistency:
    """FreeMatch: self-adaptive global and per-class thresholds and the self-adaptive fairness term (the thresholds'
    momentum scaled to the run's length unless given: :class:`~.masks.SelfAdaptiveThreshold`). On cached features
    ``SemiConfig(calibrate="head")`` calibrates its cosine head first (temperature scaling, Guo et al. 2017): the
    thresholds are the running mean confidence, which an over-confident head puts below most of the pool (not the
    default: see :class:`~.fit.SemiConfig`)."""
    return PseudoLabelConsistency(SelfAdaptiveThreshold(momentum, size_aware), lambda_u, fairness, align=align)


@SEMI_METHODS.register("softmatch", needs_unlabelled=True, mask="soft", align_start="batch",
                       paper="Chen et al., SoftMatch, ICLR 2023")
def softmatch(momentum: float | None = None, lambda_u: float = 1.0, n_sigma: float = 2.0,
              align: bool = False) -> PseudoLabelConsistency:
    """SoftMatch: every pseudo-label trains, weighted by a Gaussian truncated at the running mean confidence
    (:class:`~.masks.TruncatedGaussian`). The paper's uniform alignment of the weak probabilities is ``align``: our
    distribution alignment towards the labelled class shares (uniform with a budget per class), off here and on
    in :class:`~.fit.SemiConfig`'s defaults, which pass it to every method. The registry's ``align_start="batch"``
    is SoftMatch's own start of the alignment's running estimate, as USB implements its uniform alignment (the first
    unlabelled batch's mean probabilities; :meth:`~.objective.PseudoLabelConsistency.set_alignment`), used when
    ``SemiConfig(align_start=None)``; the other methods' papers have no alignment and theirs starts at the target."""
    return PseudoLabelConsistency(TruncatedGaussian(momentum, n_sigma), lambda_u, align=align)


@SEMI_METHODS.register("labelprop", needs_unlabelled=True, mask="graph", needs_features=True,
                       paper="Iscen, Tolias, Avrithis & Chum, Label Propagation for Deep Semi-supervised Learning, "
                             "CVPR 2019")
def labelprop(lambda_u: float = 1.0, k: int = 10, gamma: float = 3.0, alpha: float = 0.99,
              align: bool = False) -> PseudoLabelConsistency:
    """Label propagation pseudo-labels: the unlabelled items' targets come from diffusing the labels over the kNN
    graph of the frozen features, weighted by the propagation's certainty and the class balance
    (:class:`~.masks.GraphWeights`), the cross-entropy on their strong view. Frozen features only (the graph is
    built once, at probe cost); ``align`` is accepted for a uniform interface and has no effect on the targets."""
    return PseudoLabelConsistency(GraphWeights(k, gamma, alpha), lambda_u, align=align)


def create_semi_objective(name: str, n_unlabelled: int, n_classes: int, steps: int | None = None,
                          **params: Any) -> PseudoLabelConsistency:
    """A semi-supervised method's objective by name, its mask sized for the unlabelled pool, the classes and a run
    of ``steps`` optimisation steps."""
    objective = SEMI_METHODS.create(name, **params)
    mask: Mask = objective.mask
    mask.setup(n_unlabelled, n_classes, steps)
    return objective
