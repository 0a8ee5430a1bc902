"""GradNorm: task weights learned so that every task's gradient on the shared layer has a norm proportional to how
far behind the task is in training."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .weighting import WEIGHTINGS, Weighting, WeightingStep


@WEIGHTINGS.register("gradnorm", learned=True, per_task_gradients=True, epoch_state=True,
                     paper="Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: Gradient Normalization for Adaptive "
                           "Loss Balancing in Deep Multitask Networks, ICML 2018")
class GradNorm(Weighting):
    """Algorithm 1 of the paper, inside one backward pass.

    At each step, with ``g_i = ||grad_W L_i||`` on the last shared layer ``W`` (taken with ``torch.autograd.grad``,
    no second-order graph: ``G_i = w_i g_i`` is linear in ``w_i``), ``r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))``
    and the target ``mean_j(G_j) * r_i ** alpha`` held constant, the weights learn from
    ``L_grad = sum_i |G_i - target_i|`` only, and the network from ``sum_i w_i L_i`` with the weights held
    constant. Before each step the weights are renormalised to sum to the number of tasks (the paper renormalises
    after each update: the same thing, one step later).

    Args:
        alpha: the restoring force's strength (1.5 in the paper's NYUv2 experiments).
        lr: learning rate of the weights (their own optimizer group).

    References:
        Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
        Deep Multitask Networks", ICML 2018.
    """

    name = "gradnorm"

    def __init__(self, alpha: float = 1.5, lr: float = 0.025):
        super().__init__()
        self.alpha, self.lr = float(alpha), float(lr)

    def setup(self, names: Sequence[str], kinds: Sequence[str]) -> "GradNorm":
        super().setup(names, kinds)
        self.w = nn.Parameter(torch.ones(len(names)))
        self.register_buffer("initial", torch.full((len(names),), float("nan")))
        return self

    def forward(self, ws: WeightingStep) -> dict[str, torch.Tensor]:
        T = self.num_tasks
        with torch.no_grad():
            self.w.clamp_(min=1e-3)
            self.w.mul_(T / self.w.sum())
            first = ws.present & torch.isnan(self.initial)
            self.initial[first] = ws.losses.detach()[first].clamp(min=1e-8).to(self.initial.dtype)
        w = self.w.to(ws.losses)
        out = self.terms(ws, w.detach())
        idx = [i for i in range(T) if bool(ws.present[i])]
        shared = [p for p in ws.shared if p.requires_grad]
        if len(idx) < 2 or not shared or not torch.is_grad_enabled():
            out["gradnorm"] = (w * 0).sum()
            return out
        norms = []
        for i in idx:
            grads = torch.autograd.grad(ws.losses[i], shared, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
        g = torch.stack(norms).detach().to(w)
        G = w[idx] * g
        ratio = ws.losses.detach()[idx] / self.initial[idx].to(w)
        r = ratio / ratio.mean()
        target = (G.mean() * r ** self.alpha).detach()
        out["gradnorm"] = (G - target).abs().sum()
        return out

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.w], "lr": self.lr, "weight_decay": 0.0, "name": "weighting:gradnorm"}]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "lr": self.lr}
