"""Deep domain-adaptation methods: each is a loss term (with the small modules it trains) over one shared loop.

A method sees one step's source and target representations and predictions (:class:`Step`) and returns the
alignment term that :func:`transferkit.adapt.trainer.train_adapter` adds to the source cross-entropy, multiplied
by ``trade_off``. Adversarial methods own a discriminator (or an adversarial head) that the same optimizer
trains through a gradient reversal layer, so there is one optimizer and one backward pass per step for every
method, through the one training loop (:mod:`transferkit.train.loop`).

Names: ``source-only``, ``ddc``, ``dan``, ``jan``, ``coral``, ``swd`` (mapping-based); ``dann``, ``confusion``,
``cdan``, ``cdan+e``, ``mdd``, ``mcd``, ``adda`` (adversarial; ``adda`` through ``DomainAdapter``, which trains its first stage). :func:`create_method` builds one by name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry
from .losses import (coral_loss, dann_schedule, entropy, grad_reverse, jmmd, mk_mmd, mmd, sliced_wasserstein)

__all__ = ["DomainStep", "Method", "Stage", "create_method", "list_methods", "DEEP_METHODS", "METHODS"]

#: every domain-adaptation method, deep and shallow; capabilities: ``family``, ``level`` (``deep``: a loss term
#: in the training loop, on features or end to end; ``shallow``: a closed-form or instance-weighting estimator on
#: features), ``needs_target_labels``, ``task`` (``classification`` / ``regression``), ``baseline`` (the method
#: negative transfer is measured against)
METHODS: Registry[Any] = Registry("domain-adaptation method")


@dataclass
class DomainStep:
    """What a method may look at in one training step (no target labels: there are none here).

    Attributes:
        z_s, z_t: bottleneck features of the source and target batch.
        logits_s, logits_t: classifier outputs for them.
        y_s: source labels.
        progress: fraction of training done, in [0, 1] (for schedules).
        x_s, x_t: the raw inputs of the batch (for methods with a second encoder, such as ADDA).
    """

    z_s: torch.Tensor
    z_t: torch.Tensor
    logits_s: torch.Tensor
    logits_t: torch.Tensor
    y_s: torch.Tensor
    progress: float
    x_s: torch.Tensor | None = None
    x_t: torch.Tensor | None = None


def _discriminator(dim: int, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.5) -> nn.Module:
    """A domain discriminator: ``hidden`` fully connected ReLU layers (dropout after each when ``dropout`` > 0) and
    one logit."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(dim, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        dim = h
    return nn.Sequential(*layers, nn.Linear(dim, 1))


#: the adversarial methods' discriminator: two hidden layers of 256 with dropout 0.5. A smaller one, one hidden layer
#: of 100 as in skada (``disc_hidden=(100,), disc_dropout=0``), made DANN and CDAN 1.02-1.29x skada's speed instead
#: of 0.59-0.85x but cost DANN 0.8-7.3 points of target accuracy over the four bench_adapt pairs (CDAN -4.0 to +1.6):
#: not the default (benchmarks/results/bench_adapt_timing_notes.md)
DISCRIMINATOR = (256, 256)


def _both(disc: nn.Module, z: torch.Tensor, n_s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's logits on both domains from one call over their concatenation (the discriminator has no
    batch statistics, so this equals two calls, at half the per-call overhead), split back into source, target."""
    out = disc(z)
    return out[:n_s], out[n_s:]


def _domain_bce(logits_s: torch.Tensor, logits_t: torch.Tensor, w_s: torch.Tensor | None = None,
                w_t: torch.Tensor | None = None) -> torch.Tensor:
    ls = F.binary_cross_entropy_with_logits(logits_s.squeeze(1), torch.ones_like(logits_s.squeeze(1)), weight=w_s)
    lt = F.binary_cross_entropy_with_logits(logits_t.squeeze(1), torch.zeros_like(logits_t.squeeze(1)), weight=w_t)
    return 0.5 * (ls + lt)


@dataclass
class Stage:
    """One training stage of a method (most methods have one; ADDA and finetune-target have two).

    Attributes:
        name: the stage's name (its run subfolder and history label).
        method: builds the stage's method from the network as trained by the earlier stages.
        config: the stage's settings from the run's (a function of :class:`~transferkit.adapt.trainer.AdaptConfig`).
        labelled: which labelled data the stage's cross-entropy reads: ``"source"`` or ``"target"``.
        freeze: parts of the network (``feature``, ``bottleneck``, ``classifier``) kept fixed in this stage.
    """

    name: str
    method: Callable[[nn.Module], "Method"]
    config: Callable[[Any], Any] = field(default=lambda cfg: cfg)
    labelled: str = "source"
    freeze: tuple[str, ...] = ()


class Method(nn.Module):
    """Base class: ``build`` creates the method's own modules, ``forward(step)`` returns the alignment term.

    Class attributes: ``name``, ``family`` (``"baseline"``, ``"mapping"`` or ``"adversarial"``), ``paper``.
    """

    name = "source-only"
    family = "baseline"
    #: whether the method reads the unlabelled target batch (False: none is drawn or forwarded)
    uses_target = True
    paper = "no adaptation: the classifier trained on the source only (the baseline of every method)"

    def build(self, dim: int, n_classes: int) -> "Method":
        """Create the modules that depend on the feature width ``dim`` and ``n_classes``; returns self."""
        return self

    def stages(self) -> list[Stage]:
        """The training stages; one by default: this method, with the run's settings."""
        return [Stage("adapt", lambda net: self)]

    def forward(self, step: DomainStep) -> torch.Tensor:  # noqa: D102 - documented in the class
        return step.z_s.new_zeros(())


class SourceOnly(Method):
    """No alignment term: the source-only baseline, trained on the labelled source alone (its batch norm never sees
    the target), as in the source-only rows of DANN (Ganin et al., JMLR 2016), TLlib, skada and DomainBed's ERM."""

    uses_target = False


class DDC(Method):
    """Single-kernel MMD between the bottleneck features (Tzeng, Hoffman, Zhang, Saenko & Darrell, "Deep Domain
    Confusion: Maximizing for Domain Invariance", arXiv:1412.3474, 2014)."""

    name, family, paper = "ddc", "mapping", "Tzeng et al. 2014 (DDC)"

    def forward(self, step: DomainStep) -> torch.Tensor:
        return mmd(step.z_s, step.z_t)


class DAN(Method):
    """Multi-kernel MMD (Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation Networks",
    ICML 2015), on the bottleneck features (the paper also aligns the logits layer; one layer here)."""

    name, family, paper = "dan", "mapping", "Long et al., ICML 2015 (DAN)"

    def forward(self, step: DomainStep) -> torch.Tensor:
        return mk_mmd(step.z_s, step.z_t)


class JAN(Method):
    """Joint MMD of features and softmax predictions (Long, Zhu, Wang & Jordan, "Deep Transfer Learning with
    Joint Adaptation Networks", ICML 2017): multi-kernel on features, one kernel on predictions."""

    name, family, paper = "jan", "mapping", "Long et al., ICML 2017 (JAN)"

    def forward(self, step: DomainStep) -> torch.Tensor:
        ps, pt = F.softmax(step.logits_s, 1), F.softmax(step.logits_t, 1)
        return jmmd([step.z_s, ps], [step.z_t, pt], n_kernels=(5, 1))


class DeepCORAL(Method):
    """Covariance alignment loss (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation",
    ECCV Workshops 2016)."""

    name, family, paper = "coral", "mapping", "Sun & Saenko, ECCV-W 2016 (Deep CORAL)"

    def forward(self, step: DomainStep) -> torch.Tensor:
        return coral_loss(step.z_s, step.z_t)


class SlicedWasserstein(Method):
    """Sliced Wasserstein distance between the feature distributions (Lee, Batra, Baig & Ulbricht, "Sliced
    Wasserstein Discrepancy for Unsupervised Domain Adaptation", CVPR 2019; here between the two domains'
    features, as in Bonneel et al. 2015), 128 random directions per step."""

    name, family, paper = "swd", "mapping", "Lee et al., CVPR 2019 / Bonneel et al. 2015 (sliced Wasserstein)"

    def forward(self, step: DomainStep) -> torch.Tensor:
        return sliced_wasserstein(step.z_s, step.z_t)


class DANN(Method):
    """Domain-adversarial training: a domain discriminator behind a gradient reversal layer, coefficient
    ``2/(1+exp(-10 p)) - 1`` (Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand & Lempitsky,
    "Domain-Adversarial Training of Neural Networks", JMLR 2016)."""

    name, family, paper = "dann", "adversarial", "Ganin et al., JMLR 2016 (DANN)"

    def __init__(self, disc_hidden: tuple[int, ...] = DISCRIMINATOR, disc_dropout: float = 0.5):
        super().__init__()
        self.disc_hidden, self.disc_dropout = tuple(disc_hidden), float(disc_dropout)

    def build(self, dim: int, n_classes: int) -> "DANN":
        self.disc = _discriminator(dim, self.disc_hidden, self.disc_dropout)
        return self

    def forward(self, step: DomainStep) -> torch.Tensor:
        c = dann_schedule(step.progress)
        return _domain_bce(*_both(self.disc, grad_reverse(torch.cat([step.z_s, step.z_t]), c), len(step.z_s)))


class DomainConfusion(Method):
    """Domain confusion (Tzeng, Hoffman, Darrell & Saenko, "Simultaneous Deep Transfer Across Domains and Tasks",
    ICCV 2015): the discriminator learns the domain on detached features; the features are trained so that the
    (frozen for this term) discriminator outputs the uniform distribution — a cross-entropy against 1/2, not a
    reversed gradient."""

    name, family, paper = "confusion", "adversarial", "Tzeng et al., ICCV 2015 (domain confusion)"

    def build(self, dim: int, n_classes: int) -> "DomainConfusion":
        self.disc = _discriminator(dim)
        return self

    def forward(self, step: DomainStep) -> torch.Tensor:
        d_loss = _domain_bce(self.disc(step.z_s.detach()), self.disc(step.z_t.detach()))
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        z = torch.cat([step.z_s, step.z_t])
        out = torch.func.functional_call(self.disc, frozen, (z,)).squeeze(1)
        confusion = F.binary_cross_entropy_with_logits(out, torch.full_like(out, 0.5))
        return d_loss + confusion


class CDAN(Method):
    """Conditional adversarial adaptation: the discriminator sees the multilinear map ``z ⊗ softmax(logits)``
    behind a gradient reversal layer; ``entropy=True`` is CDAN+E, which weights each sample by
    ``1 + exp(-H(p))`` (Long, Cao, Wang & Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018).
    The map is randomized (``randomized_dim`` random projections multiplied elementwise) when ``dim x classes``
    exceeds 4096, as in the paper."""

    name, family, paper = "cdan", "adversarial", "Long et al., NeurIPS 2018 (CDAN)"

    def __init__(self, entropy: bool = False, randomized_dim: int = 1024,
                 disc_hidden: tuple[int, ...] = DISCRIMINATOR, disc_dropout: float = 0.5):
        super().__init__()
        self.entropy = entropy
        self.randomized_dim = randomized_dim
        self.disc_hidden, self.disc_dropout = tuple(disc_hidden), float(disc_dropout)
        if entropy:
            self.name = "cdan+e"

    def build(self, dim: int, n_classes: int) -> "CDAN":
        self.randomized = dim * n_classes > 4096
        if self.randomized:
            g = torch.Generator().manual_seed(0)
            self.register_buffer("rf", torch.randn(dim, self.randomized_dim, generator=g))
            self.register_buffer("rg", torch.randn(n_classes, self.randomized_dim, generator=g))
            in_dim = self.randomized_dim
        else:
            in_dim = dim * n_classes
        self.disc = _discriminator(in_dim, self.disc_hidden, self.disc_dropout)
        return self

    def _map(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if self.randomized:
            return (z @ self.rf) * (p @ self.rg) / self.randomized_dim ** 0.5
        return torch.bmm(p.unsqueeze(2), z.unsqueeze(1)).flatten(1)

    def forward(self, step: DomainStep) -> torch.Tensor:
        c = dann_schedule(step.progress)
        ps, pt = F.softmax(step.logits_s, 1).detach(), F.softmax(step.logits_t, 1).detach()
        ds, dt = _both(self.disc, grad_reverse(self._map(torch.cat([step.z_s, step.z_t]), torch.cat([ps, pt])), c),
                       len(step.z_s))
        if not self.entropy:
            return _domain_bce(ds, dt)
        ws = 1.0 + torch.exp(-entropy(step.logits_s.detach(), reduction="none"))
        wt = 1.0 + torch.exp(-entropy(step.logits_t.detach(), reduction="none"))
        return _domain_bce(ds, dt, ws / ws.sum() * len(ws), wt / wt.sum() * len(wt))


class MDD(Method):
    """Margin disparity discrepancy (Zhang, Liu, Long & Jordan, "Bridging Theory and Algorithm for Domain
    Adaptation", ICML 2019): an adversarial classifier head behind a gradient reversal layer learns to agree
    with the main classifier on the source and to disagree on the target; the features learn the opposite.
    ``margin`` is the paper's gamma (4 here, TLlib's digit setting). The reversal coefficient ramps up with DANN's
    schedule to at most ``grl_max`` = 0.1, the cap of the authors' warm-start gradient reversal layer (high_value
    0.1): at DANN's full strength 1 the margin-weighted term overwhelms the features, which collapse."""

    name, family, paper = "mdd", "adversarial", "Zhang et al., ICML 2019 (MDD)"

    def __init__(self, margin: float = 4.0, grl_max: float = 0.1):
        super().__init__()
        self.margin = margin
        self.grl_max = grl_max

    def build(self, dim: int, n_classes: int) -> "MDD":
        self.adv = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, n_classes))
        return self

    def forward(self, step: DomainStep) -> torch.Tensor:
        c = self.grl_max * dann_schedule(step.progress)
        ys = step.logits_s.argmax(1).detach()
        yt = step.logits_t.argmax(1).detach()
        adv_s = self.adv(grad_reverse(step.z_s, c))
        adv_t = self.adv(grad_reverse(step.z_t, c))
        agree_s = F.cross_entropy(adv_s, ys)
        p_t = F.softmax(adv_t, 1).gather(1, yt.unsqueeze(1)).squeeze(1)
        disagree_t = -torch.log(torch.clamp(1 - p_t, min=1e-6)).mean()
        return self.margin * agree_s + disagree_t


class MCD(Method):
    """Maximum classifier discrepancy (Saito, Watanabe, Ushiku & Harada, "Maximum Classifier Discrepancy for
    Unsupervised Domain Adaptation", CVPR 2018): two extra classifiers, trained on the source, learn to *disagree*
    on the target (L1 distance of their softmax outputs) while the features learn to make them agree.

    The paper alternates three optimisation steps per batch; here the min-max is one step through a gradient
    reversal layer between the features and the two classifiers (the one-optimizer form every method of this
    loop uses), so the classifiers ascend the discrepancy and the features descend it in the same update."""

    name, family, paper = "mcd", "adversarial", "Saito et al., CVPR 2018 (MCD; one-step gradient-reversal form)"

    def build(self, dim: int, n_classes: int) -> "MCD":
        self.f1 = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, n_classes))
        self.f2 = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, n_classes))
        return self

    def forward(self, step: DomainStep) -> torch.Tensor:
        source_ce = F.cross_entropy(self.f1(step.z_s), step.y_s) + F.cross_entropy(self.f2(step.z_s), step.y_s)
        zt = grad_reverse(step.z_t, 1.0)
        discrepancy = (F.softmax(self.f1(zt), 1) - F.softmax(self.f2(zt), 1)).abs().mean()
        return source_ce - discrepancy  # classifiers: min CE, max discrepancy; features (reversed): min discrepancy


class ADDA(Method):
    """Adversarial discriminative domain adaptation (Tzeng, Hoffman, Saenko & Darrell, "Adversarial Discriminative
    Domain Adaptation", CVPR 2017), in two stages: first the network is trained on the source alone; then a frozen
    copy of the source-trained encoder embeds the source batch, and the target encoder (initialised from it) is
    trained with the inverted-label GAN loss against a discriminator that learns to tell the two embeddings apart,
    with the classifier frozen and a tenth of the learning rate.

    Args:
        source_encoder: the frozen source encoder (feature module + bottleneck); built by the second stage. It is a
            registered submodule (moved, checkpointed) whose parameters never train.
    """

    name, family, paper = "adda", "adversarial", "Tzeng et al., CVPR 2017 (ADDA)"

    def __init__(self, source_encoder: nn.Module | None = None):
        super().__init__()
        self.source_encoder = source_encoder
        if source_encoder is not None:
            for p in source_encoder.parameters():
                p.requires_grad_(False)

    def stages(self) -> list[Stage]:
        def second(net: nn.Module) -> "ADDA":
            return ADDA(copy.deepcopy(nn.Sequential(net.feature, net.bottleneck)))

        return [Stage("source", lambda net: SourceOnly()),
                Stage("adversarial", second, lambda cfg: replace(cfg, source_loss_weight=0.0, lr=cfg.lr / 10),
                      freeze=("classifier",))]

    def build(self, dim: int, n_classes: int) -> "ADDA":
        if self.source_encoder is None:
            raise ValueError("ADDA's adversarial stage needs the frozen source encoder: train it through "
                             "train_adapter or DomainAdapter(method='adda'), which run both stages")
        self.disc = _discriminator(dim)
        return self

    def forward(self, step: DomainStep) -> torch.Tensor:
        enc = self.source_encoder.eval()
        with torch.no_grad():
            zs = enc(step.x_s)
        d_loss = _domain_bce(self.disc(zs), self.disc(step.z_t.detach()))
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        out = torch.func.functional_call(self.disc, frozen, (step.z_t,)).squeeze(1)
        g_loss = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))  # inverted label: look like source
        return d_loss + g_loss


class FinetuneTarget(Method):
    """Network-based transfer with a few target labels: train on the source, then fine-tune the whole network on the
    labelled target samples (a quarter of the steps, a tenth of the learning rate, the last checkpoint) — reuse and
    fine-tune, the network-based family of Tan et al., "A Survey on Deep Transfer Learning", ICANN 2018."""

    name, family, paper = "finetune-target", "network-based", "Tan et al., ICANN 2018 (network-based: reuse + fine-tune)"

    def stages(self) -> list[Stage]:
        def target_cfg(cfg: Any) -> Any:
            steps = max(cfg.steps // 4, 1)
            return replace(cfg, steps=steps, lr=cfg.lr / 10, selection="last", eval_every=steps)

        return [Stage("source", lambda net: SourceOnly()),
                Stage("target fine-tune", lambda net: SourceOnly(), target_cfg, labelled="target")]


def _cdan_e() -> CDAN:
    return CDAN(entropy=True)


_DEEP = dict(level="deep", needs_target_labels=False, task="classification", baseline="source-only")
METHODS.add("source-only", SourceOnly, paper=SourceOnly.paper, family="baseline", **_DEEP)
for _cls in (DDC, DAN, JAN, DeepCORAL, SlicedWasserstein, DANN, DomainConfusion, CDAN):
    METHODS.add(_cls.name, _cls, paper=_cls.paper, family=_cls.family, **_DEEP)
METHODS.add("cdan+e", _cdan_e, paper="Long et al., NeurIPS 2018 (CDAN+E: entropy conditioning)",
            description="CDAN with entropy conditioning", family="adversarial", **_DEEP)
for _cls in (MDD, MCD, ADDA):
    METHODS.add(_cls.name, _cls, paper=_cls.paper, family=_cls.family, **_DEEP)
METHODS.add("finetune-target", FinetuneTarget, paper=FinetuneTarget.paper, family="network-based",
            **{**_DEEP, "needs_target_labels": True})

#: names of the deep methods (loss terms of the training loop)
DEEP_METHODS = tuple(METHODS.names(level="deep"))


def list_methods() -> list[tuple[str, str]]:
    """(name, paper) of every deep method."""
    return [(e.name, e.paper) for e in METHODS.entries(level="deep")]


def create_method(name: str, **kwargs: Any) -> Method:
    """A fresh (unbuilt) deep method by name; the error lists the valid names."""
    entry = METHODS.get(name)
    if entry.level != "deep":
        from ..errors import TransferkitError

        raise TransferkitError(f"{name} is a {entry.family} method on features, not a loss term; use it through "
                               "DomainAdapter")
    return METHODS.create(name, **kwargs)
