"""Fine-tuning regularizers: loss terms that plug into the engine's ``extra_losses``.

An extra loss is any callable ``term(model, out) -> scalar tensor`` where ``model`` is the
:class:`~transferkit.train.model.TransferModel` being trained and ``out`` the step's
:class:`~transferkit.train.engine.StepOutputs` (inputs, targets, logits, features, epoch, step). Optional
attributes the engine honours:

- ``setup(model)``: called once before training, after the strategy has prepared the model (L2-SP takes
  its starting point here);
- ``name``: the column name of the term in the history (``loss_<name>``);
- ``config()``: its parameters, part of the run's configuration hash (resume refuses other values);
- ``replaces_weight_decay = True``: the optimizer's weight decay is set to 0 (L2-SP replaces it);
- an ``nn.Module`` with parameters (e.g. a domain discriminator) gets them trained with the model.

Domain-adaptation losses use the same protocol.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import TransferkitError, UnknownNameError

__all__ = ["L2SP", "BSS", "l2sp_penalty", "bss_penalty", "REGULARIZERS", "create_regularizer", "describe_loss"]


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


class L2SP:
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
    replaces_weight_decay = True

    def __init__(self, alpha: float = 0.01, beta: float = 0.01):
        self.alpha = alpha
        self.beta = beta

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": float(self.alpha), "beta": float(self.beta)}

    def setup(self, model: nn.Module) -> None:
        self.w0_ = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}

    def __call__(self, model: nn.Module, out: Any = None) -> torch.Tensor:
        if not hasattr(self, "w0_"):
            raise TransferkitError("L2SP was called before setup(model): the engine calls it; when used by hand, "
                                   "call l2sp.setup(model) before training starts")
        pairs = []
        for n, p in model.backbone.named_parameters():
            if p.requires_grad:
                w0 = self.w0_[n]
                if w0.device != p.device:
                    w0 = self.w0_[n] = w0.to(p.device)
                pairs.append((p, w0))
        head = [p for p in model.head.parameters() if p.requires_grad]
        return l2sp_penalty(pairs, head, self.alpha, self.beta)

    def __repr__(self) -> str:
        return f"L2SP(alpha={self.alpha}, beta={self.beta})"


class BSS:
    """Batch Spectral Shrinkage: penalise the smallest singular values of the batch's feature matrix.

    ``eta * sum_{i=1..k} sigma_{-i}^2`` of the ``(N, D)`` backbone features of each batch: the small spectral
    components carry the untransferable (negative-transfer) directions.

    Args:
        eta: strength (0.001 in the paper).
        k: how many of the smallest singular values (1 in the paper).

    References:
        Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
        Shrinkage for Safe Transfer Learning", NeurIPS 2019.
    """

    name = "bss"

    def __init__(self, eta: float = 0.001, k: int = 1):
        self.eta = eta
        self.k = k

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "eta": float(self.eta), "k": int(self.k)}

    def __call__(self, model: nn.Module, out: Any) -> torch.Tensor:
        return self.eta * bss_penalty(out.features, self.k)

    def __repr__(self) -> str:
        return f"BSS(eta={self.eta}, k={self.k})"


REGULARIZERS: dict[str, type] = {"l2sp": L2SP, "bss": BSS}


def create_regularizer(name: str, **params: Any):
    """A regularizer by name (``"l2sp"``, ``"bss"``) with its parameters.

    Raises:
        UnknownNameError: unknown name (the message lists the valid ones).
        TransferkitError: a parameter it does not take.
    """
    if name not in REGULARIZERS:
        close = difflib.get_close_matches(str(name), list(REGULARIZERS), n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown regularizer {name!r}.{hint} Valid regularizers: {', '.join(REGULARIZERS)}")
    try:
        return REGULARIZERS[name](**params)
    except TypeError as e:
        import inspect

        takes = [p for p in inspect.signature(REGULARIZERS[name]).parameters]
        raise TransferkitError(f"regularizer {name!r} takes {', '.join(takes)}; got {sorted(params)}") from e


def describe_loss(term: Any) -> dict[str, Any]:
    """What identifies an extra loss in the run configuration: its ``config()``, else its name."""
    if hasattr(term, "config") and callable(term.config):
        return dict(term.config())
    return {"name": loss_name(term)}


def loss_name(term: Any) -> str:
    """``term.name``, else the class or function name, for history columns."""
    name = getattr(term, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(term, nn.Module) or not hasattr(term, "__name__"):
        return type(term).__name__.lower()
    return str(term.__name__)
