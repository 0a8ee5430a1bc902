"""Fine-tuning regularizers as objectives: terms added to the cross-entropy in the training loop.

- :class:`L2SP` pulls the backbone towards its pretrained starting point (and replaces the optimizer's weight decay);
- :class:`BSS` shrinks the smallest singular values of the batch's features.

Both are :class:`~transferkit.train.objectives.Objective` terms; :data:`REGULARIZERS` names them for the CLI
(``--l2sp``, ``--bss``) and :func:`create_regularizer` builds one by name.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..errors import TransferkitError
from ..registry import Registry
from .objectives import Objective, Step

__all__ = ["L2SP", "BSS", "l2sp_penalty", "bss_penalty", "REGULARIZERS", "create_regularizer"]

#: regularizers by name; capability ``replaces_weight_decay``
REGULARIZERS: Registry[Objective] = Registry("regularizer")


def l2sp_penalty(params: Iterable[tuple[torch.Tensor, torch.Tensor]], head_params: Iterable[torch.Tensor],
                 alpha: float, beta: float) -> torch.Tensor:
    """``alpha/2 * sum ||w - w0||^2`` over ``(w, w0)`` pairs plus ``beta/2 * sum ||v||^2`` over head parameters.

    References:
        Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
        Networks", ICML 2018 (eq. 3, the L2-SP penalty).
    """
    sp = sum(((w - w0).pow(2).sum() for w, w0 in params), torch.zeros(()))
    hd = sum((v.pow(2).sum() for v in head_params), torch.zeros(()))
    return 0.5 * alpha * sp + 0.5 * beta * hd.to(sp.device)


def bss_penalty(features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Sum of the ``k`` smallest squared singular values of a batch feature matrix.

    Shape:
        features: ``(N, D)`` -> scalar (``min(N, D)`` singular values exist; ``k`` is capped at that).

    References:
        Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
        Shrinkage for Safe Transfer Learning", NeurIPS 2019 (eq. 5).
    """
    if features.ndim != 2:
        raise TransferkitError(f"BSS needs an (N, D) feature matrix, got shape {tuple(features.shape)}")
    s = torch.linalg.svdvals(features.float())  # descending
    k = max(0, min(int(k), s.numel()))
    return s[s.numel() - k:].pow(2).sum()


@REGULARIZERS.register("l2sp", replaces_weight_decay=True)
class L2SP(Objective):
    """L2-SP: pull the backbone towards its pretrained starting point, shrink the new head towards 0.

    ``alpha/2 ||w_S - w0_S||^2 + beta/2 ||w_head||^2`` where ``w0`` are the backbone's weights when training
    starts (taken in :meth:`setup`). Frozen parameters are left out (they stay at ``w0``). The optimizer's
    weight decay, which would pull towards 0 instead, is switched off (``replaces_weight_decay``).

    Args:
        alpha: strength of the starting-point term (the paper uses 0.01-0.1).
        beta: strength of the plain L2 term on the head (0.01 in the paper).

    Attributes:
        w0_: the starting point, ``{parameter name: tensor}`` relative to ``model.backbone``.

    References:
        Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
        Networks", ICML 2018.
    """

    name = "l2sp"
    streams = ()
    replaces_weight_decay = True

    def __init__(self, alpha: float = 0.01, beta: float = 0.01):
        super().__init__()
        self.alpha = alpha
        self.beta = beta

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": float(self.alpha), "beta": float(self.beta)}

    def setup(self, model: nn.Module) -> None:
        self.w0_ = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The penalty of ``model``'s current weights (trainable ones only)."""
        if not hasattr(self, "w0_"):
            raise TransferkitError("L2SP was used before setup(model): the training loop calls it; when used by "
                                   "hand, call l2sp.setup(model) before training starts")
        pairs = []
        for n, p in model.backbone.named_parameters():
            if p.requires_grad:
                w0 = self.w0_[n]
                if w0.device != p.device:
                    w0 = self.w0_[n] = w0.to(p.device)
                pairs.append((p, w0))
        head = [p for p in model.head.parameters() if p.requires_grad]
        return l2sp_penalty(pairs, head, self.alpha, self.beta)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {self.name: self.penalty(step.net)}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


@REGULARIZERS.register("bss", replaces_weight_decay=False)
class BSS(Objective):
    """Batch Spectral Shrinkage: penalise the smallest singular values of the batch's feature matrix.

    ``eta * sum_{i=1..k} sigma_{-i}^2`` of the ``(N, D)`` backbone features of each labelled batch: the small
    spectral components carry the untransferable (negative-transfer) directions.

    Args:
        eta: strength (0.001 in the paper).
        k: how many of the smallest singular values (1 in the paper).
        stream: the stream whose features are penalised.

    References:
        Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
        Shrinkage for Safe Transfer Learning", NeurIPS 2019.
    """

    name = "bss"

    def __init__(self, eta: float = 0.001, k: int = 1, stream: str = "labelled"):
        super().__init__()
        self.eta, self.k, self.stream = eta, k, stream
        self.streams = (stream,)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "eta": float(self.eta), "k": int(self.k)}

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {self.name: self.eta * bss_penalty(step.outputs(self.stream)[0].features, self.k)}

    def extra_repr(self) -> str:
        return f"eta={self.eta}, k={self.k}"


def create_regularizer(name: str, **params: Any) -> Objective:
    """A regularizer by name (``"l2sp"``, ``"bss"``) with its parameters.

    Raises:
        UnknownNameError: unknown name (the message lists the valid ones).
        TransferkitError: a parameter it does not take.
    """
    return REGULARIZERS.create(name, **params)
