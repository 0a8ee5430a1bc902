"""Loss weightings for multitask learning: how the tasks' losses combine into the one scalar the loop minimises.

A weighting is a small ``nn.Module`` (so its own parameters, such as uncertainty weighting's log-variances or
GradNorm's task weights, train with the model, are checkpointed and resume) registered in :data:`WEIGHTINGS`, one
file per method. The multitask objective (:class:`~transferkit.multitask.objective.MultitaskLoss`) computes each
task's loss on the batch and hands them over in a :class:`WeightingStep`; the weighting returns named loss terms
(one per task, plus its own regulariser if it has one) whose sum the loop backpropagates once. Weightings that need
per-task gradients (GradNorm) take them inside that call with ``torch.autograd.grad`` on the shared layer, without
touching the loop.

Capabilities: ``learned`` (has trainable parameters), ``per_task_gradients`` (needs the shared layer's gradients
of each task), ``epoch_state`` (depends on earlier epochs' losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..registry import Registry

__all__ = ["WEIGHTINGS", "Weighting", "WeightingStep", "create_weighting"]

#: multitask loss weightings by name (``equal``, ``normalised``, ``uncertainty``, ``gradnorm``, ``dwa``, ``random``)
WEIGHTINGS: Registry["Weighting"] = Registry("multitask loss weighting")


@dataclass
class WeightingStep:
    """What a weighting sees at one training step.

    Attributes:
        losses: ``(T,)`` each task's mean loss on the batch (0, still in the graph, for a task without labels in it).
        present: ``(T,)`` whether the batch holds labels of each task.
        shared: the parameters of the last shared layer (for per-task gradient norms).
        epoch: 0-based epoch of the loop; step: 0-based global step.
    """

    losses: torch.Tensor
    present: torch.Tensor
    shared: Sequence[torch.Tensor]
    epoch: int
    step: int


class Weighting(nn.Module):
    """Base class: ``forward(ws) -> {term: scalar}``; the terms are summed into the training loss.

    ``setup(names, kinds)`` is called once with the task names and kinds (``classification`` or ``regression``)
    before training. ``last_weights`` holds the weights of the latest step (for logs and reports).

    Class attributes:
        name: the registered name. paper: the reference.
    """

    name = "weighting"
    paper = ""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.register_buffer("last_weights", torch.zeros(0), persistent=False)

    def setup(self, names: Sequence[str], kinds: Sequence[str]) -> "Weighting":
        """Create whatever depends on the number of tasks (parameters, buffers)."""
        self.names, self.kinds = list(names), list(kinds)
        self.last_weights = torch.ones(len(self.names))
        return self

    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return len(self.names)

    def terms(self, ws: WeightingStep, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """One term per task, ``weights[i] * losses[i]`` (the weights as given: detach them first where they must
        not learn from the task losses)."""
        self.last_weights = weights.detach().float().cpu()
        return {f"task_{n}": weights[i] * ws.losses[i] for i, n in enumerate(self.names)}

    def forward(self, ws: WeightingStep) -> dict[str, torch.Tensor]:  # noqa: D102 - see the class
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimizer groups of the weighting's own parameters (no weight decay)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": 0.0, "name": f"weighting:{self.name}"}] if params else []

    def config(self) -> dict[str, Any]:
        """Name and parameters (JSON)."""
        return {"name": self.name}


def create_weighting(name: str, **params: Any) -> Weighting:
    """A weighting by name (see :data:`WEIGHTINGS`)."""
    return WEIGHTINGS.create(name, **params)
