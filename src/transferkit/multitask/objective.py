"""The multitask objective: each task's loss on the items of the batch that have its label, combined by a weighting.

References:
    Caruana, "Multitask Learning", Machine Learning 1997.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..train.loop import Evaluator
from ..train.objectives import Objective, Outputs, Step
from .metrics import task_metrics, task_score
from .weighting import Weighting, WeightingStep

__all__ = ["MultitaskLoss", "MultitaskValidation", "task_losses", "shared_parameters"]


def shared_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The last shared layer of a multitask network: its head's trunk (a head alone, or a backbone + head)."""
    head = getattr(net, "head", net)
    return list(head.shared_parameters()) if hasattr(head, "shared_parameters") else []


def task_losses(outputs: torch.Tensor, y: torch.Tensor, tasks: Sequence[dict[str, Any]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each task's mean loss over the rows that have its label: cross-entropy for classification, squared error in
    units of the task's training standard deviation for regression (a standardised MSE); 0 (in the graph) for a task
    without labels in the batch.

    Args:
        outputs: ``(B, W)`` the multitask head's outputs (logits; regression values in the task's units).
        y: ``(B, T)`` labels, NaN where missing.
        tasks: per task ``kind``, ``start``, ``stop`` (its columns) and ``scale`` (regression).

    Returns:
        ``(losses (T,), present (T,) bool)``.
    """
    losses, present = [], []
    for j, t in enumerate(tasks):
        col = y[:, j]
        m = ~torch.isnan(col)
        if not bool(m.any()):
            losses.append(outputs.sum() * 0.0)
            present.append(False)
            continue
        o = outputs[m, t["start"]:t["stop"]].float()
        if t["kind"] == "classification":
            losses.append(F.cross_entropy(o, col[m].long()))
        else:
            losses.append((((o[:, 0] - col[m].float()) / float(t["scale"])) ** 2).mean())
        present.append(True)
    return torch.stack(losses), torch.tensor(present, device=outputs.device)


class MultitaskLoss(Objective):
    """Per-task losses of a multitask head's outputs, combined by a :class:`~transferkit.multitask.weighting.
    Weighting` into named terms (``task_<name>``, plus the weighting's own, e.g. ``gradnorm``).

    The labels of every item of the stream are held here (``Y``, looked up by the batch's item positions), so the
    same objective trains on cached features and end to end.

    Args:
        Y: ``(N, T)`` labels of the stream's items, NaN where missing.
        tasks: per task ``name``, ``kind``, ``start``, ``stop`` and ``scale``.
        weighting: a weighting (set up here with the tasks' names and kinds).
        stream: the training stream.
    """

    name = "multitask"

    def __init__(self, Y: Any, tasks: Sequence[dict[str, Any]], weighting: Weighting, stream: str = "labelled"):
        super().__init__()
        self.stream = stream
        self.streams = (stream,)
        self.tasks = [dict(t) for t in tasks]
        self.register_buffer("Y", torch.as_tensor(np.asarray(Y, np.float32)), persistent=False)
        self.weighting = weighting.setup([t["name"] for t in tasks], [t["kind"] for t in tasks])

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        out = step.outputs(self.stream)[0].logits
        idx = step.batches[self.stream].index.to(self.Y.device)
        losses, present = task_losses(out, self.Y[idx].to(out.device), self.tasks)
        ws = WeightingStep(losses, present, shared_parameters(step.net), step.epoch, step.step)
        w = step.weight(self.stream)
        return {k: v * w for k, v in self.weighting(ws).items()}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "weighting": self.weighting.config(),
                "tasks": [{k: t[k] for k in ("name", "kind", "start", "stop")} for t in self.tasks]}


class MultitaskValidation(Evaluator):
    """Every task's metric on a validation stream; the best epoch has the highest mean task score (accuracy for
    classification, ``1 - MAE / MAE of the training median`` for regression)."""

    selection = "val_score"

    def __init__(self, stream: Any, Y: np.ndarray, tasks: Sequence[dict[str, Any]], reference_mae: Sequence[float]):
        self.streams = {"val": stream}
        self.Y, self.tasks, self.reference_mae = np.asarray(Y, np.float64), list(tasks), list(reference_mae)

    def evaluate(self, predict: Callable[[str], Outputs], epoch: int) -> dict[str, float | None]:
        out = np.asarray(predict("val").logits, np.float64)
        scores, row = [], {}
        for j, t in enumerate(self.tasks):
            o = out[:, t["start"]:t["stop"]]
            pred = o.argmax(1) if t["kind"] == "classification" else o[:, 0]
            m = task_metrics(t["kind"], self.Y[:, j], pred)
            s = task_score(t["kind"], m, self.reference_mae[j])
            if s is not None:
                scores.append(s)
            key = "accuracy" if t["kind"] == "classification" else "mae"
            row[f"val_{t['name']}_{key}"] = m.get(key)
        row["val_score"] = float(np.mean(scores)) if scores else None
        return row
