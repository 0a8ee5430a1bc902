"""Domain-generalisation objectives: one loss over one batch per training domain, in the one training loop.

Every method reads one labelled stream per training domain (``domain0``, ``domain1``, ...; the loop draws one batch
of each per step), sends the batches through the network **together** (as DomainBed does for ERM: batch norm sees
every training domain) and returns named loss terms. The target domain is never seen. ``DG_METHODS`` registers them
with their capabilities (``end_to_end_only``: the method changes the network, not the loss, so it needs a trainable
convolutional network).

Defaults are DomainBed's (Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021):
GroupDRO ``eta=0.01``; IRM ``lambda=100`` after ``500`` steps at 1; VREx ``lambda=10`` after ``500`` steps at 1;
CORAL ``gamma=1``; Mixup ``alpha=0.2``; MixStyle ``p=0.5``, ``alpha=0.1``. One difference, by construction: DomainBed
restarts Adam when the IRM/VREx penalty weight jumps; the shared loop keeps one optimizer, so the jump reaches Adam's
moment estimates as it is (set ``anneal_steps=0`` to train with the full weight from the start).

Every method's loss is a pure function of the per-domain logits, features and labels (:meth:`DGObjective.terms`),
so it can be checked by hand on a toy batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TransferkitError
from ..registry import Registry
from ..train.objectives import Objective, Step

__all__ = ["DG_METHODS", "DGObjective", "ERM", "CORAL", "GroupDRO", "IRM", "VREx", "Mixup", "MixStyleERM",
           "create_dg_objective", "list_dg_methods", "domain_streams", "coral_penalty", "irm_penalty"]

#: every domain-generalisation method; capabilities: ``end_to_end_only`` (changes the network: needs a trainable
#: convolutional network), ``paper``
DG_METHODS: Registry[Any] = Registry("domain-generalisation method")


def domain_streams(n: int) -> tuple[str, ...]:
    """The stream names of ``n`` training domains: ``domain0`` ... ``domain{n-1}``."""
    return tuple(f"domain{k}" for k in range(n))


class DGObjective(Objective):
    """Base class: reads one labelled stream per training domain; :meth:`terms` computes the loss.

    Args:
        n_domains: number of training domains (streams ``domain0`` ... ).
    """

    name = "erm"
    paper = ""

    def __init__(self, n_domains: int):
        super().__init__()
        if not isinstance(n_domains, int) or n_domains < 1:
            raise TransferkitError(f"domain generalisation needs at least one training domain, got {n_domains!r}")
        self.n_domains = n_domains
        self.streams = domain_streams(n_domains)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:  # noqa: D102 - see the class
        outs = step.outputs(*self.streams)
        return self.terms([o.logits.float() for o in outs], [o.features.float() for o in outs],
                          [step.y(s) for s in self.streams], step)

    def terms(self, logits: list[torch.Tensor], features: list[torch.Tensor], ys: list[torch.Tensor],
              step: Step | None) -> dict[str, torch.Tensor]:
        """The loss terms from each training domain's logits ``(n_k, C)``, features ``(n_k, D)`` and labels."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "n_domains": self.n_domains}


def _ces(logits: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each domain's batch, ``(K,)``."""
    return torch.stack([F.cross_entropy(lg, y) for lg, y in zip(logits, ys)])


def _weight(step: Step | None, after: int, value: float) -> float:
    """``value`` from global step ``after`` on, 1 before (DomainBed's penalty annealing; 0 steps: always value)."""
    return value if step is None or step.step >= after else 1.0


@DG_METHODS.register("erm", end_to_end_only=False)
class ERM(DGObjective):
    """Empirical risk minimisation over the pooled training domains (the baseline DomainBed found hard to beat).

    References:
        Vapnik, "Statistical Learning Theory", 1998; Gulrajani & Lopez-Paz, "In Search of Lost Domain
        Generalization", ICLR 2021.
    """

    name = "erm"
    paper = "Gulrajani & Lopez-Paz, ICLR 2021 (DomainBed); Vapnik 1998"

    def terms(self, logits, features, ys, step):  # noqa: D102
        return {"ce": F.cross_entropy(torch.cat(logits), torch.cat(ys))}


def coral_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DomainBed's CORAL distance: mean squared difference of the feature means plus of the covariances.

    Shape:
        ``a (n, D)``, ``b (m, D)`` -> scalar.

    References:
        Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV Workshops 2016.
    """
    ma, mb = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    ca, cb = a - ma, b - mb
    cov_a = ca.t() @ ca / max(len(a) - 1, 1)
    cov_b = cb.t() @ cb / max(len(b) - 1, 1)
    return (ma - mb).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


@DG_METHODS.register("coral", end_to_end_only=False)
class CORAL(DGObjective):
    """Deep CORAL for domain generalisation: the mean cross-entropy over domains plus ``gamma`` times the CORAL
    distance between the features of every pair of training domains (averaged over the pairs).

    References:
        Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV Workshops 2016 (in
        DomainBed's multi-domain form, Gulrajani & Lopez-Paz, ICLR 2021).
    """

    name = "coral"
    paper = "Sun & Saenko, ECCV-W 2016 (Deep CORAL); DG form of DomainBed"

    def __init__(self, n_domains: int, gamma: float = 1.0):
        super().__init__(n_domains)
        self.gamma = float(gamma)

    def terms(self, logits, features, ys, step):  # noqa: D102
        K = len(features)
        pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
        pen = (torch.stack([coral_penalty(features[i], features[j]) for i, j in pairs]).mean() if pairs
               else features[0].new_zeros(()))
        return {"ce": _ces(logits, ys).mean(), "coral": self.gamma * pen}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "gamma": self.gamma}


@DG_METHODS.register("groupdro", end_to_end_only=False)
class GroupDRO(DGObjective):
    """Group distributionally robust optimisation: domain weights ``q`` grow as ``q_k <- q_k exp(eta * loss_k)``
    (normalised) and the loss is ``sum_k q_k loss_k``; ``q`` is a buffer (checkpointed, resumed).

    References:
        Sagawa, Koh, Hashimoto & Liang, "Distributionally Robust Neural Networks for Group Shifts", ICLR 2020.
    """

    name = "groupdro"
    paper = "Sagawa et al., ICLR 2020"

    def __init__(self, n_domains: int, eta: float = 0.01):
        super().__init__(n_domains)
        self.eta = float(eta)
        self.register_buffer("q", torch.ones(n_domains))

    def terms(self, logits, features, ys, step):  # noqa: D102
        losses = _ces(logits, ys)
        if self.training or step is None:
            with torch.no_grad():
                q = self.q.to(losses.device) * torch.exp(self.eta * losses.detach())
                self.q.copy_((q / q.sum()).to(self.q.device))
        return {"dro": (self.q.to(losses.device) * losses).sum()}

    def epoch_state(self) -> dict[str, Any]:
        return {f"q_{k}": float(v) for k, v in enumerate(self.q)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "eta": self.eta}


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1's penalty, DomainBed's unbiased form: the product of the gradients of the risk with respect to a dummy
    classifier scale ``w = 1`` on the even and on the odd samples of the batch.

    References:
        Arjovsky, Bottou, Gulrajani & Lopez-Paz, "Invariant Risk Minimization", arXiv:1907.02893, 2019.
    """
    scale = torch.ones((), device=logits.device, requires_grad=True)
    g1 = torch.autograd.grad(F.cross_entropy(logits[0::2] * scale, y[0::2]), [scale], create_graph=True)[0]
    g2 = torch.autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
    return (g1 * g2).sum()


@DG_METHODS.register("irm", end_to_end_only=False)
class IRM(DGObjective):
    """Invariant risk minimisation (IRMv1): mean risk plus ``lambda`` times the mean :func:`irm_penalty` over the
    training domains; the weight is 1 for the first ``anneal_steps`` steps.

    References:
        Arjovsky, Bottou, Gulrajani & Lopez-Paz, "Invariant Risk Minimization", arXiv:1907.02893, 2019.
    """

    name = "irm"
    paper = "Arjovsky et al., arXiv 2019"

    def __init__(self, n_domains: int, lam: float = 100.0, anneal_steps: int = 500):
        super().__init__(n_domains)
        self.lam, self.anneal_steps = float(lam), int(anneal_steps)

    def terms(self, logits, features, ys, step):  # noqa: D102
        pen = torch.stack([irm_penalty(lg, y) for lg, y in zip(logits, ys)]).mean()
        return {"ce": _ces(logits, ys).mean(), "irm": _weight(step, self.anneal_steps, self.lam) * pen}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lambda": self.lam, "anneal_steps": self.anneal_steps}


@DG_METHODS.register("vrex", end_to_end_only=False)
class VREx(DGObjective):
    """Variance risk extrapolation: mean risk plus ``lambda`` times the variance of the per-domain risks; the weight
    is 1 for the first ``anneal_steps`` steps.

    References:
        Krueger, Caballero, Jacobsen, Zhang, Binas, Zhang, Le Priol & Courville, "Out-of-Distribution
        Generalization via Risk Extrapolation (REx)", ICML 2021.
    """

    name = "vrex"
    paper = "Krueger et al., ICML 2021"

    def __init__(self, n_domains: int, lam: float = 10.0, anneal_steps: int = 500):
        super().__init__(n_domains)
        self.lam, self.anneal_steps = float(lam), int(anneal_steps)

    def terms(self, logits, features, ys, step):  # noqa: D102
        losses = _ces(logits, ys)
        mean = losses.mean()
        return {"ce": mean, "vrex": _weight(step, self.anneal_steps, self.lam) * (losses - mean).pow(2).mean()}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lambda": self.lam, "anneal_steps": self.anneal_steps}


@DG_METHODS.register("mixup", end_to_end_only=False)
class Mixup(DGObjective):
    """Inter-domain mixup: each training domain's batch is mixed with another domain's (a random cyclic pairing
    per step), ``x = lam x_i + (1 - lam) x_j`` with ``lam ~ Beta(alpha, alpha)``, and the loss is
    ``lam CE(f(x), y_i) + (1 - lam) CE(f(x), y_j)`` averaged over the domains. Inputs are mixed where the network
    starts: cached features at probe cost, pixels end to end.

    References:
        Yan, Song, Li, Zhou & Li, "Improve Unsupervised Domain Adaptation with Mixup Training", arXiv:2001.00677,
        2020; Xu, Zhang, Ni, Li, Wang, Tian & Zhang, "Adversarial Domain Adaptation with Domain Mixup", AAAI 2020;
        Wang, Li & Kot, "Heterogeneous Domain Generalization via Domain Mixup", ICASSP 2020 (DomainBed's form).
    """

    name = "mixup"
    paper = "Yan et al. 2020; Xu et al., AAAI 2020"

    def __init__(self, n_domains: int, alpha: float = 0.2):
        super().__init__(n_domains)
        self.alpha = float(alpha)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:  # noqa: D102
        xs = [step.x(s) for s in self.streams]
        ys = [step.y(s) for s in self.streams]
        K = len(xs)
        perm = torch.randperm(K).tolist()
        pairs = [(perm[k], perm[(k + 1) % K]) for k in range(K)]
        lams = torch.distributions.Beta(self.alpha, self.alpha).sample((K,)).tolist() if self.alpha > 0 else [1.0] * K
        return self.mixed_loss(step.model, xs, ys, pairs, lams)

    def mixed_loss(self, model: Any, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
                   pairs: Sequence[tuple[int, int]], lams: Sequence[float]) -> dict[str, torch.Tensor]:
        """The loss for given domain pairs and mixing weights (the pairs' inputs go through ``model`` together)."""
        mixed, targets, sizes = [], [], []
        for (i, j), lam in zip(pairs, lams):
            n = min(len(xs[i]), len(xs[j]))
            mixed.append(lam * xs[i][:n] + (1 - lam) * xs[j][:n])
            targets.append((ys[i][:n], ys[j][:n], lam))
            sizes.append(n)
        logits, _ = model(torch.cat(mixed), return_features=True)
        total = logits.new_zeros((), dtype=torch.float32)
        for lg, (yi, yj, lam) in zip(torch.split(logits.float(), sizes), targets):
            total = total + lam * F.cross_entropy(lg, yi) + (1 - lam) * F.cross_entropy(lg, yj)
        return {"mixup": total / len(pairs)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha}


@DG_METHODS.register("mixstyle", end_to_end_only=True)
class MixStyleERM(ERM):
    """MixStyle: ERM on a network whose early stages mix instance-level feature statistics across the batch (the
    batch holds every training domain), see :class:`~transferkit.generalize.mixstyle.MixStyle`; the loss is ERM's.

    References:
        Zhou, Yang, Qiao & Xiang, "Domain Generalization with MixStyle", ICLR 2021.
    """

    name = "mixstyle"
    paper = "Zhou et al., ICLR 2021"

    def __init__(self, n_domains: int, p: float = 0.5, alpha: float = 0.1):
        super().__init__(n_domains)
        self.p, self.alpha = float(p), float(alpha)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "p": self.p, "alpha": self.alpha}


def create_dg_objective(name: str, n_domains: int, **params: Any) -> DGObjective:
    """The registered method ``name`` for ``n_domains`` training domains (``params`` override its defaults).

    Raises:
        UnknownNameError: no such method (the message lists them).
    """
    return DG_METHODS.create(name, n_domains=n_domains, **params)


def list_dg_methods() -> list[tuple[str, str, bool]]:
    """(name, paper, end-to-end only) of every registered method."""
    return [(n, DG_METHODS.get(n).paper, bool(DG_METHODS.get(n).cap("end_to_end_only", False))) for n in DG_METHODS]
