"""Uncertainty weighting: each task's weight is learned as the inverse of its homoscedastic noise variance."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .weighting import WEIGHTINGS, Weighting, WeightingStep


@WEIGHTINGS.register("uncertainty", learned=True, per_task_gradients=False, epoch_state=False,
                     paper="Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses for Scene "
                           "Geometry and Semantics, CVPR 2018")
class Uncertainty(Weighting):
    """``sum_i c_i exp(-s_i) L_i + s_i / 2`` with learned ``s_i = log sigma_i^2`` (starting at 0).

    ``c_i`` is 1/2 for a regression task (Gaussian likelihood: ``L / (2 sigma^2) + log sigma``) and 1 for a
    classification task (the scaled softmax: ``L / sigma^2 + log sigma``), as in the paper's eqs. (7) and (10).

    References:
        Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and
        Semantics", CVPR 2018.
    """

    name = "uncertainty"

    def setup(self, names: Sequence[str], kinds: Sequence[str]) -> "Uncertainty":
        super().setup(names, kinds)
        self.log_var = nn.Parameter(torch.zeros(len(names)))
        self.register_buffer("c", torch.tensor([0.5 if k == "regression" else 1.0 for k in kinds]))
        return self

    def forward(self, ws: WeightingStep) -> dict[str, torch.Tensor]:
        s = self.log_var.to(ws.losses)
        out = self.terms(ws, self.c.to(ws.losses) * torch.exp(-s))
        out["uncertainty"] = 0.5 * (s * ws.present.to(s)).sum()
        return out
