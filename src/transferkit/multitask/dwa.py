"""Dynamic weight average: tasks whose loss fell least over the last epoch get more weight."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .weighting import WEIGHTINGS, Weighting, WeightingStep


@WEIGHTINGS.register("dwa", learned=False, per_task_gradients=False, epoch_state=True,
                     paper="Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019")
class DWA(Weighting):
    """``lambda_k(t) = K exp(r_k / T) / sum_i exp(r_i / T)`` with ``r_k = L_k(t-1) / L_k(t-2)``, the ratio of the
    task's mean training loss over the last two epochs; weight 1 for every task in the first two epochs.

    The per-epoch means are kept in buffers (saved in checkpoints: a resumed run weighs as an uninterrupted one).

    Args:
        temperature: ``T`` (2 in the paper); higher is closer to equal weights.

    References:
        Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, eq. (7).
    """

    name = "dwa"

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = float(temperature)

    def setup(self, names: Sequence[str], kinds: Sequence[str]) -> "DWA":
        super().setup(names, kinds)
        n = len(names)
        self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("history", torch.full((2, n), float("nan"), dtype=torch.float64))
        self.register_buffer("epoch_seen", torch.tensor(-1, dtype=torch.long))
        return self

    def weights(self) -> torch.Tensor:
        """The weights of the current epoch (from the two previous epochs' mean losses)."""
        h = self.history
        if torch.isnan(h).any():
            return torch.ones(self.num_tasks, dtype=torch.float64)
        r = h[1] / h[0].clamp(min=1e-12)
        return self.num_tasks * torch.softmax(r / self.temperature, 0)

    def forward(self, ws: WeightingStep) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            if int(self.epoch_seen) != ws.epoch:
                if int(self.epoch_seen) >= 0:
                    mean = torch.where(self.counts > 0, self.sums / self.counts.clamp(min=1), self.history[1])
                    self.history[0] = self.history[1]
                    self.history[1] = mean
                self.sums.zero_()
                self.counts.zero_()
                self.epoch_seen.fill_(ws.epoch)
            p = ws.present.to(self.sums.device)
            self.sums += torch.where(p, ws.losses.detach().to(self.sums), torch.zeros_like(self.sums))
            self.counts += p.to(self.counts)
        return self.terms(ws, self.weights().to(ws.losses))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "temperature": self.temperature}
