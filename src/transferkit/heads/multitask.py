"""A head with several tasks over one shared trunk (hard parameter sharing): classification and regression tasks.

:class:`MultitaskHead` standardises the features, runs them through a shared trunk (linear layers with ReLU), and
gives each task its own linear output: class logits for a classification task, one value for a regression task
(in the task's own units: the output is ``loc + scale * z``, so a trained head predicts ratings, not standardised
ratings). ``forward`` returns every task's outputs side by side, ``(N, sum of the tasks' widths)``; :meth:`slices`
says which columns belong to which task, :meth:`decode` turns them into per-task predictions.

Saved like every head (kind ``multitask``, its config lists the tasks), so a run made with it saves, loads and
predicts every task (:mod:`transferkit.runs.reader`).

References:
    Caruana, "Multitask Learning", Machine Learning 1997 (hard parameter sharing); Ruder, "An Overview of Multi-Task
    Learning in Deep Neural Networks", 2017.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import TransferkitError
from .modules import HEAD_MODULES

__all__ = ["MultitaskHead", "TASK_KINDS"]

TASK_KINDS = ("classification", "regression")


@HEAD_MODULES.register("multitask")
class MultitaskHead(nn.Module):
    """Shared trunk, one linear output per task.

    Args:
        in_features: width of the input features.
        tasks: one dict per task: ``name``, ``kind`` (``classification`` or ``regression``), ``classes`` (class
            names, classification), ``loc`` and ``scale`` (regression: the output is ``loc + scale * z``).
        hidden: widths of the shared trunk's layers (``()``: the tasks share only the input features).
        dropout: dropout after each trunk layer.

    Shape:
        ``(N, D)`` -> ``(N, sum_t width_t)`` (class logits, or one value in the task's units); with
        ``return_features=True`` also the trunk's output ``(N, H)``.
    """

    kind = "multitask"

    def __init__(self, in_features: int, tasks: Sequence[dict[str, Any]], hidden: Sequence[int] = (256,),
                 dropout: float = 0.0):
        super().__init__()
        tasks = [dict(t) for t in tasks]
        if not tasks:
            raise TransferkitError("a multitask head needs at least one task")
        names = [str(t.get("name")) for t in tasks]
        if len(set(names)) != len(names):
            raise TransferkitError(f"task names must be unique; got {names}")
        for t in tasks:
            if t.get("kind") not in TASK_KINDS:
                raise TransferkitError(f"task {t.get('name')!r}: kind must be one of {', '.join(TASK_KINDS)}; got "
                                       f"{t.get('kind')!r}")
            if t["kind"] == "classification" and len(t.get("classes") or []) < 2:
                raise TransferkitError(f"classification task {t['name']!r} needs at least 2 classes")
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        dims = [int(in_features), *[int(h) for h in hidden]]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList([nn.Linear(dims[-1], self._width(t)) for t in tasks])
        loc = [float(t.get("loc", 0.0)) if t["kind"] == "regression" else 0.0 for t in tasks]
        sc = [float(t.get("scale", 1.0)) if t["kind"] == "regression" else 1.0 for t in tasks]
        self.register_buffer("y_loc", torch.tensor(loc))
        self.register_buffer("y_scale", torch.tensor(sc))
        self.tasks = [{"name": t["name"], "kind": t["kind"],
                       **({"classes": [str(c) for c in t["classes"]]} if t["kind"] == "classification" else
                          {"loc": float(t.get("loc", 0.0)), "scale": float(t.get("scale", 1.0))})} for t in tasks]
        self._config = {"in_features": int(in_features), "tasks": self.tasks, "hidden": [int(h) for h in hidden],
                        "dropout": float(dropout)}

    @staticmethod
    def _width(task: dict[str, Any]) -> int:
        return len(task["classes"]) if task["kind"] == "classification" else 1

    @property
    def num_classes(self) -> int:
        """Total number of outputs (every task's columns)."""
        return sum(self._width(t) for t in self.tasks)

    def output_names(self) -> list[str]:
        """One name per output column: ``task=class`` for classification, the task name for regression."""
        out = []
        for t in self.tasks:
            out += [f"{t['name']}={c}" for c in t["classes"]] if t["kind"] == "classification" else [t["name"]]
        return out

    def slices(self) -> dict[str, slice]:
        """Task name -> its columns of the output."""
        out, s = {}, 0
        for t in self.tasks:
            w = self._width(t)
            out[t["name"]] = slice(s, s + w)
            s += w
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer's parameters (what GradNorm balances gradients on); empty without a trunk."""
        linears = [m for m in self.trunk if isinstance(m, nn.Linear)]
        return list(linears[-1].parameters()) if linears else []

    def config(self) -> dict[str, Any]:
        """What rebuilds the architecture (JSON)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MultitaskHead":
        """The architecture of a saved head (weights loaded separately)."""
        return cls(int(config["in_features"]), list(config["tasks"]), tuple(config.get("hidden", (256,))),
                   float(config.get("dropout", 0.0)))

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        h = self.trunk((x - self.mean) / self.scale)
        outs = []
        for t, head, loc, sc in zip(self.tasks, self.heads, self.y_loc, self.y_scale):
            o = head(h)
            outs.append(loc + sc * o if t["kind"] == "regression" else o)
        out = torch.cat(outs, dim=1)
        return (out, h) if return_features else out

    def decode(self, outputs: Any) -> dict[str, dict[str, np.ndarray]]:
        """Per-task predictions from :meth:`forward`'s outputs: ``{"proba": (N, C), "pred": (N,) class index}`` for
        a classification task, ``{"pred": (N,) value}`` for a regression task."""
        o = torch.as_tensor(np.asarray(outputs, dtype=np.float64)) if not isinstance(outputs, torch.Tensor) \
            else outputs.detach().double()
        out = {}
        for t, (name, sl) in zip(self.tasks, self.slices().items()):
            if t["kind"] == "classification":
                p = torch.softmax(o[:, sl], 1).numpy()
                out[name] = {"proba": p, "pred": p.argmax(1)}
            else:
                out[name] = {"pred": o[:, sl.start].numpy()}
        return out
