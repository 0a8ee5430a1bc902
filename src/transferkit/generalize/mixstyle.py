"""MixStyle: mix instance-level feature statistics across the batch in a network's early stages.

References:
    Zhou, Yang, Qiao & Xiang, "Domain Generalization with MixStyle", ICLR 2021.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TransferkitError

__all__ = ["MixStyle", "insert_mixstyle"]


class MixStyle(nn.Module):
    """With probability ``p`` per training batch, replace each instance's channel means and standard deviations by a
    mix with another instance's (random partner, ``lam ~ Beta(alpha, alpha)`` per instance):

        ``y = (lam sigma_i + (1 - lam) sigma_j) (x - mu_i) / sigma_i + lam mu_i + (1 - lam) mu_j``

    The statistics are computed without gradient flowing into them (as in the paper's code). The identity in
    evaluation mode. Randomness comes from torch's global generator (which the training loop seeds per epoch).

    Args:
        p: probability of mixing a batch.
        alpha: Beta distribution parameter.
        eps: added to the variance.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)

    def forward(self, x: torch.Tensor, perm: torch.Tensor | None = None, lam: torch.Tensor | None = None
                ) -> torch.Tensor:  # noqa: D102
        if perm is None:
            if not self.training or torch.rand(()) > self.p or len(x) < 2:
                return x
            perm = torch.randperm(len(x), device=x.device)
        if lam is None:
            lam = torch.distributions.Beta(self.alpha, self.alpha).sample((len(x), 1, 1, 1)).to(x)
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        normed = (x - mu) / sig
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return normed * sig_mix + mu_mix

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}"


def insert_mixstyle(backbone: nn.Module, p: float = 0.5, alpha: float = 0.1) -> nn.Module:
    """Insert :class:`MixStyle` after the early stages of a small convolutional network, in place; returns it.

    ``lenet``: after the first convolution block (of two); ``small-cnn``: after the first and second blocks (of
    three). The paper puts it after the early residual stages, never after the last one. A network that already holds
    :class:`MixStyle` layers (placed where its own styles live) keeps them where they are, with ``p`` and ``alpha``
    set; inserting twice therefore changes nothing.

    Raises:
        TransferkitError: a network without known stages (MixStyle needs a trainable convolutional network).
    """
    from ..backbones.small import LeNet, SmallCNN

    placed = [m for m in backbone.modules() if isinstance(m, MixStyle)]
    if placed:
        for m in placed:
            m.p, m.alpha = float(p), float(alpha)
    elif isinstance(backbone, LeNet):
        layers = list(backbone.net)
        backbone.net = nn.Sequential(*layers[:3], MixStyle(p, alpha), *layers[3:])
    elif isinstance(backbone, SmallCNN):
        layers = list(backbone.features)
        backbone.features = nn.Sequential(layers[0], MixStyle(p, alpha), layers[1], MixStyle(p, alpha), *layers[2:])
    else:
        raise TransferkitError(f"mixstyle is inserted into the early stages of lenet or small-cnn trained end to "
                               f"end; got {type(backbone).__name__}. Use backbone='lenet' (or 'small-cnn'), put "
                               "MixStyle layers into your network where they belong, or use another method at probe "
                               "cost")
    return backbone
