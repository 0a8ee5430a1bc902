"""Calibrating the confidence that the pseudo-label thresholds read: temperature scaling fitted on the labelled items.

FlexMatch's learning status and FreeMatch's thresholds are functions of the model's confidence, and a threshold of
0.95 presumes that a 0.95 means "right 95 % of the time". A cosine head on frozen features is not calibrated that way
(its scale sets its confidence), so before any threshold is applied the weak-view logits may be divided by a
temperature ``T`` fitted, once, before training, by minimising the negative log-likelihood of the labelled items'
weak views under the head the run starts from (the labelled class means), each item left out of its own class mean:
the only held-out predictions a run with a handful of labels and no validation split has.

References:
    Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017 (temperature scaling).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError

__all__ = ["fit_temperature", "leave_one_out_prototype_logits"]


def fit_temperature(logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, *, low: float = 0.01,
                    high: float = 100.0, iters: int = 100) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``softmax(logits / T)`` at labels ``y``
    (Guo et al. 2017). The NLL is convex in ``1 / T``, so a golden-section search over ``log T`` in ``[low, high]``
    finds its minimum.

    Shape:
        logits ``(N, C)``, y ``(N,)`` -> float.

    Raises:
        DataError: no items, or mismatched lengths.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if z.ndim != 2 or len(z) == 0 or len(z) != len(t):
        raise DataError(f"temperature scaling needs (N, C) logits and N labels, N > 0; got logits of shape "
                        f"{tuple(z.shape)} and {len(t)} labels")

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), t))

    a, b = math.log(low), math.log(high)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(int(iters)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


def leave_one_out_prototype_logits(z_eval: torch.Tensor, y: np.ndarray, z_query: torch.Tensor, scale: float,
                                   n_classes: int) -> tuple[torch.Tensor, np.ndarray]:
    """The logits of a cosine classifier whose rows are the labelled class means (the semi-supervised head's start,
    :func:`~transferkit.semi.fit.train_semi_head`), for queries of the labelled items with each item left out of its
    own class's mean.

    Args:
        z_eval: ``(N, D)`` the labelled items' transformed features the class means are taken from.
        y: ``(N,)`` their labels.
        z_query: ``(V, N, D)`` transformed features of V views of the same items (query ``v, i`` is item ``i``).
        scale: the head's logit scale (``scale * cos``).
        n_classes: number of classes (a class without labelled items has a zero row: cosine 0).

    Returns:
        ``(M, C)`` logits and their ``(M,)`` labels, for the items whose class has another labelled item (an item
        alone in its class cannot be left out).
    """
    y = np.asarray(y, dtype=np.int64)
    yt = torch.as_tensor(y)
    sums = torch.zeros(n_classes, z_eval.shape[1], dtype=z_eval.dtype).index_add_(0, yt, z_eval)
    counts = torch.bincount(yt, minlength=n_classes).to(z_eval.dtype)
    keep = counts[yt] >= 2
    if not bool(keep.any()):
        return torch.zeros(0, n_classes, dtype=z_eval.dtype), np.zeros(0, np.int64)
    rows = sums / counts.clamp(min=1)[:, None]  # (C, D) class means
    own = (sums[yt] - z_eval) / (counts[yt] - 1).clamp(min=1)[:, None]  # (N, D) own class's mean without the item

    def unit(w: torch.Tensor) -> torch.Tensor:
        return w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    logits = scale * torch.einsum("vnd,cd->vnc", z_query, unit(rows))
    own_logit = scale * (z_query * unit(own)[None]).sum(-1)  # (V, N)
    logits[:, torch.arange(len(y)), yt] = own_logit
    logits = logits[:, keep].reshape(-1, n_classes)
    return logits, np.tile(y[keep.numpy()], z_query.shape[0])
