"""Equal weights: the plain sum of the task losses (unitary scalarisation)."""

from __future__ import annotations

import torch

from .weighting import WEIGHTINGS, Weighting, WeightingStep


@WEIGHTINGS.register("equal", learned=False, per_task_gradients=False, epoch_state=False,
                     paper="unitary scalarisation; Kurin et al., In Defense of the Unitary Scalarization for Deep "
                           "Multi-Task Learning, NeurIPS 2022")
class Equal(Weighting):
    """``sum_i L_i``: every task's loss with weight 1, unscaled.

    References:
        Kurin, De Palma, Kostrikov, Whiteson & Kumar, "In Defense of the Unitary Scalarization for Deep Multi-Task
        Learning", NeurIPS 2022 (a well-tuned sum is hard to beat); Xin et al., "Do Current Multi-Task Optimization
        Methods in Deep Learning Even Help?", NeurIPS 2022.
    """

    name = "equal"

    def forward(self, ws: WeightingStep) -> dict[str, torch.Tensor]:
        return self.terms(ws, torch.ones_like(ws.losses))
