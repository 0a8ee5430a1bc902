"""An ensemble of head modules that predicts the mean of their class probabilities (a saveable head kind).

Used by the semi-supervised heads (:class:`~transferkit.semi.fit.SemiConfig`'s ``ensemble``): several heads trained
with different seeds on the same cached features, saved together in one weights file and loaded back by kind like
any other head, so a run's ``predict`` and export need no special case.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import TransferkitError
from .modules import HEAD_MODULES

__all__ = ["MeanProbabilityModule"]


@HEAD_MODULES.register("mean-probability")
class MeanProbabilityModule(nn.Module):
    """``log(mean_k softmax(h_k(x)))`` over member heads ``h_k`` with the same classes: a softmax of its output is the
    members' mean class probability, as a deep ensemble predicts.

    Shape:
        ``(N, D)`` -> ``(N, num_classes)``; with ``return_features=True`` also the input features ``(N, D)`` (the
        members each transform them their own way).

    References:
        Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty Estimation using Deep
        Ensembles", NeurIPS 2017 (the ensemble's prediction is the mean of its members' probabilities).
    """

    kind = "mean-probability"

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise TransferkitError("an ensemble needs at least one member head")
        kinds = [getattr(m, "kind", None) for m in members]
        if any(k not in HEAD_MODULES for k in kinds):
            raise TransferkitError(f"ensemble members must be registered head modules (got kinds {kinds})")
        sizes = {int(m.num_classes) for m in members}
        if len(sizes) != 1:
            raise TransferkitError(f"ensemble members must have the same number of classes (got {sorted(sizes)})")
        self.members = nn.ModuleList(members)

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return int(self.members[0].num_classes)

    def config(self) -> dict[str, Any]:
        """What rebuilds the module (JSON): each member's kind and config."""
        return {"members": [{"kind": m.kind, "config": m.config()} for m in self.members]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MeanProbabilityModule":
        """The module of a saved ensemble (weights loaded separately)."""
        specs = config.get("members") or []
        return cls([HEAD_MODULES.get(str(s["kind"])).factory.from_config(dict(s["config"])) for s in specs])

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        logp = torch.stack([torch.log_softmax(m(x).double(), 1) for m in self.members])
        out = (torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(len(self.members)), dtype=torch.float64)))
        out = out.to(x.dtype if x.is_floating_point() else torch.float32)
        return (out, x) if return_features else out
