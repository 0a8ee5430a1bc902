"""Equal weights on normalised losses: each task's loss divided by its value at the start of training."""

from __future__ import annotations

from typing import Sequence

import torch

from .weighting import WEIGHTINGS, Weighting, WeightingStep


@WEIGHTINGS.register("normalised", learned=False, per_task_gradients=False, epoch_state=True,
                     paper="loss normalisation by the initial loss, as in GradNorm's inverse training rate "
                           "(Chen et al., ICML 2018)")
class Normalised(Weighting):
    """``sum_i L_i / L_i(0)``: every task starts at 1, whatever the scale of its loss (a cross-entropy over ten
    classes starts near 2.3, a standardised squared error near 1), so no task dominates by its units.

    ``L_i(0)`` is the task's loss on the first batch that holds its labels (kept in the checkpoint, so a resumed run
    divides by the same number).

    References:
        Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
        Deep Multitask Networks", ICML 2018 (the loss ratio ``L_i(t) / L_i(0)``).
    """

    name = "normalised"

    def setup(self, names: Sequence[str], kinds: Sequence[str]) -> "Normalised":
        super().setup(names, kinds)
        self.register_buffer("initial", torch.full((len(names),), float("nan")))
        return self

    def forward(self, ws: WeightingStep) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            first = ws.present & torch.isnan(self.initial)
            self.initial[first] = ws.losses.detach()[first].clamp(min=1e-8).to(self.initial.dtype)
        init = torch.nan_to_num(self.initial, nan=1.0).to(ws.losses)
        return self.terms(ws, 1.0 / init)
