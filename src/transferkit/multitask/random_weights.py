"""Random loss weighting: fresh random task weights at every step."""

from __future__ import annotations

import torch

from .weighting import WEIGHTINGS, Weighting, WeightingStep


@WEIGHTINGS.register("random", learned=False, per_task_gradients=False, epoch_state=False,
                     paper="Lin, Ye, Xu, Shi & Zhang, Reasonable Effectiveness of Random Weighting: A Litmus Test for "
                           "Multi-Task Learning, TMLR 2022")
class RandomWeighting(Weighting):
    """``lambda = softmax(z)``, ``z ~ N(0, I)`` drawn at every step (the weights sum to 1, as in the paper; with
    AdamW the overall scale of the loss hardly matters). The draw uses torch's generator, which the loop seeds per
    epoch, so runs and resumed runs draw the same weights.

    References:
        Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
        Learning", TMLR 2022 (RLW with a normal distribution).
    """

    name = "random"

    def forward(self, ws: WeightingStep) -> dict[str, torch.Tensor]:
        z = torch.randn(self.num_tasks)
        return self.terms(ws, torch.softmax(z, 0).to(ws.losses))
