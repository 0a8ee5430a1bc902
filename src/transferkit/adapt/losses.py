"""Alignment losses between a source and a target batch: pure functions of tensors, no hidden state.

Each takes source and target representations (``(n, d)`` and ``(m, d)``) and returns a scalar tensor that is
zero (up to floating point) for identical inputs and differentiable in both. They are the building blocks of
the mapping-based and adversarial methods in :mod:`transferkit.adapt.methods`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["gaussian_kernel", "mmd", "mk_mmd", "jmmd", "coral_loss", "sliced_wasserstein", "entropy",
           "grad_reverse", "GradientReverse", "dann_schedule", "median_bandwidth"]


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Median of the squared pairwise distances of ``x`` and ``y`` together (the median heuristic; detached)."""
    z = torch.cat([x, y]).detach()
    d2 = torch.cdist(z, z).pow(2)
    n = len(z)
    off = d2[~torch.eye(n, dtype=torch.bool, device=z.device)]
    med = off.median() if off.numel() else torch.ones((), device=z.device)
    return torch.clamp(med, min=1e-6)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Sum over bandwidths ``s`` of ``exp(-||x_i - y_j||^2 / s)``: an ``(n, m)`` matrix."""
    d2 = torch.cdist(x, y).pow(2)
    return sum(torch.exp(-d2 / s) for s in bandwidths)


def _mmd_from_kernels(kss: torch.Tensor, ktt: torch.Tensor, kst: torch.Tensor) -> torch.Tensor:
    # the biased (V-statistic) estimate: >= 0 and exactly 0 for identical samples
    return kss.mean() + ktt.mean() - 2 * kst.mean()


def mmd(source: torch.Tensor, target: torch.Tensor, bandwidth: float | torch.Tensor | None = None) -> torch.Tensor:
    """Squared maximum mean discrepancy with one Gaussian kernel (Gretton et al., JMLR 2012), as DDC uses it.

    ``bandwidth`` is ``s`` in ``exp(-||a - b||^2 / s)``; default the median heuristic. Biased estimate
    (``mean K_ss + mean K_tt - 2 mean K_st``), so identical inputs give exactly 0.

    References:
        Tzeng, Hoffman, Zhang, Saenko & Darrell, "Deep Domain Confusion", arXiv:1412.3474, 2014 (DDC).
    """
    s = median_bandwidth(source, target) if bandwidth is None else bandwidth
    return _mmd_from_kernels(gaussian_kernel(source, source, [s]), gaussian_kernel(target, target, [s]),
                             gaussian_kernel(source, target, [s]))


def _multi_bandwidths(source: torch.Tensor, target: torch.Tensor, n_kernels: int, mul: float) -> list:
    base = median_bandwidth(source, target)
    half = n_kernels // 2
    return [base * mul ** (k - half) for k in range(n_kernels)]


def mk_mmd(source: torch.Tensor, target: torch.Tensor, n_kernels: int = 5, mul: float = 2.0) -> torch.Tensor:
    """Multi-kernel MMD: the kernel is a sum of Gaussians with bandwidths ``median * mul**k`` around the median.

    DAN uses a combination of Gaussian kernels with bandwidths spread around the median heuristic; we take the
    equal-weight combination (the paper optimises the weights; the equal weights are the common practice).

    References:
        Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation Networks", ICML 2015 (DAN).
    """
    bw = _multi_bandwidths(source, target, n_kernels, mul)
    return _mmd_from_kernels(gaussian_kernel(source, source, bw), gaussian_kernel(target, target, bw),
                             gaussian_kernel(source, target, bw))


def jmmd(source: Sequence[torch.Tensor], target: Sequence[torch.Tensor], n_kernels: int | Sequence[int] = 5,
         mul: float = 2.0) -> torch.Tensor:
    """Joint MMD over several layers: the kernel is the *product* of per-layer (multi-)Gaussian kernels.

    Give e.g. ``[features, softmax predictions]`` of each domain. Layer ``l`` gets ``n_kernels`` (or
    ``n_kernels[l]``) bandwidths around its median (1 for the single-bandwidth kernel the paper uses on
    predictions).

    References:
        Long, Zhu, Wang & Jordan, "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017 (JAN).
    """
    if len(source) != len(target) or not len(source):
        raise ValueError("jmmd needs the same non-zero number of layers for source and target")
    kernels = [n_kernels] * len(source) if isinstance(n_kernels, int) else list(n_kernels)
    kss = kst = ktt = None
    for s, t, k in zip(source, target, kernels):
        bw = _multi_bandwidths(s, t, k, mul)
        a, b, c = gaussian_kernel(s, s, bw), gaussian_kernel(t, t, bw), gaussian_kernel(s, t, bw)
        kss, ktt, kst = (a, b, c) if kss is None else (kss * a, ktt * b, kst * c)
    return _mmd_from_kernels(kss, ktt, kst)


def _cov(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / max(len(x) - 1, 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 d^2)`` between the feature covariances.

    References:
        Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV Workshops 2016.
    """
    d = source.shape[1]
    return (_cov(source) - _cov(target)).pow(2).sum() / (4 * d * d)


def sliced_wasserstein(source: torch.Tensor, target: torch.Tensor, n_projections: int = 128,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sliced squared 2-Wasserstein distance: the mean over random unit directions of the 1-D W2^2 of projections.

    With unequal batch sizes the sorted projections are compared at common quantiles (linear interpolation).

    References:
        Bonneel, Rabin, Peyré & Pfister, "Sliced and Radon Wasserstein Barycenters of Measures", JMIV 2015;
        Lee, Batra, Baig & Ulbricht, "Sliced Wasserstein Discrepancy for Unsupervised Domain Adaptation", CVPR 2019.
    """
    d = source.shape[1]
    theta = torch.randn(d, n_projections, generator=generator, device="cpu").to(source)
    theta = theta / theta.norm(dim=0, keepdim=True)
    ps, _ = torch.sort(source @ theta, dim=0)
    pt, _ = torch.sort(target @ theta, dim=0)
    if len(ps) != len(pt):
        n = max(len(ps), len(pt))
        ps, pt = _quantiles(ps, n), _quantiles(pt, n)
    return (ps - pt).pow(2).mean()


def _quantiles(sorted_x: torch.Tensor, n: int) -> torch.Tensor:
    m = len(sorted_x)
    if m == n:
        return sorted_x
    pos = torch.linspace(0, m - 1, n, device=sorted_x.device)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=m - 1)
    w = (pos - lo).unsqueeze(1)
    return sorted_x[lo] * (1 - w) + sorted_x[hi] * w


def entropy(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row; mean over rows by default."""
    logp = F.log_softmax(logits, dim=1)
    h = -(logp.exp() * logp).sum(1)
    return h.mean() if reduction == "mean" else h


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):  # noqa: D401
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-coeff`` backward (the gradient reversal layer of DANN).

    References:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015.
    """
    return _GradReverse.apply(x, coeff)


class GradientReverse(torch.nn.Module):
    """Module form of :func:`grad_reverse`; ``coeff`` can be changed during training (the DANN schedule)."""

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)


def dann_schedule(progress: float, gamma: float = 10.0) -> float:
    """DANN's reversal coefficient ``2 / (1 + exp(-gamma p)) - 1`` for training progress ``p`` in [0, 1]
    (Ganin et al., JMLR 2016): 0 at the start, so the noisy early discriminator does not disturb the features."""
    import math

    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0
