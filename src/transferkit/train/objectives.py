"""Objectives: what the training loop minimises, as named loss terms over named data streams.

An :class:`Objective` is an ``nn.Module`` (so its own trainable parts, e.g. a domain discriminator, are trained,
synchronised under DDP and checkpointed with the model). It declares the **streams** it reads and the **views** it
needs of each, and its ``forward`` returns ``{term name: scalar}``; the loop sums the terms, logs each one per epoch,
and stops on a non-finite value. Objectives compose with :class:`Objectives`::

    objective = Objectives(CrossEntropy(label_smoothing=0.1), L2SP(alpha=0.01), BSS(eta=0.001))

A :class:`Step` is what an objective sees: the batches, the epoch and step, the training progress, and
:meth:`Step.outputs`, the model's logits and features of one or several streams computed once per step and shared by
every term (several streams go through the network together, so batch norm sees them all: what domain adaptation
needs).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import TransferkitError
from .streams import Batch

__all__ = ["Objective", "Objectives", "CrossEntropy", "FunctionTerm", "Step", "Outputs", "scalar_term",
           "as_objective"]


class Outputs(NamedTuple):
    """The model's outputs for a batch: ``logits (N, C)`` and ``features (N, D)`` (the head's input)."""

    logits: torch.Tensor
    features: torch.Tensor | None


def _concat(xs: Sequence[Any]) -> Any:
    if all(isinstance(x, torch.Tensor) for x in xs):
        return torch.cat(list(xs))
    return None


class Step:
    """What an objective sees at one training step.

    Attributes:
        model: the network being trained, as the loop calls it (wrapped for the device, precision and DDP; its
            forward: ``model(x, return_features=True) -> (logits, features)``).
        net: the same network unwrapped, for terms over its parameters (L2-SP).
        batches: stream name -> :class:`~transferkit.train.streams.Batch` (this process's share).
        epoch: 0-based epoch; step: 0-based global step; progress: fraction of all steps done, in [0, 1).
        world: number of processes.
        gather: ``gather(t)`` concatenates a tensor over every process (the identity with one): for state that
            must see the global batch (FlexMatch's per-sample learning status, FreeMatch's running means).
        metrics: what an objective measures without it being a loss (``{"mask_rate": 0.4}``); the loop logs the
            epoch mean as ``metric_<name>``.
    """

    def __init__(self, model: Callable[..., Any], batches: dict[str, Batch], epoch: int, step: int, progress: float,
                 world: int = 1, net: nn.Module | None = None,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model, self.batches = model, batches
        self.net = net if net is not None else model
        self.gather = gather if gather is not None else (lambda t: t)
        self.metrics: dict[str, float] = {}
        self.epoch, self.step, self.progress, self.world = epoch, step, float(progress), world
        self._cache: dict[tuple[tuple[str, ...], str], tuple[Outputs, ...]] = {}

    def x(self, stream: str, view: str = "train") -> Any:
        """The input of ``stream`` in ``view``."""
        return self.batches[stream].x[view]

    def y(self, stream: str) -> torch.Tensor:
        """The labels of ``stream``'s batch."""
        y = self.batches[stream].y
        if y is None:
            raise TransferkitError(f"stream {stream!r} has no labels; this objective needs a labelled stream")
        return y

    def weight(self, stream: str) -> float:
        """``local batch * processes / global batch``: scales a batch-mean loss so the gradient DDP averages is the
        mean over the global batch (exactly 1 with one process)."""
        b = self.batches[stream]
        return len(b.index) * self.world / b.global_size

    def outputs(self, *streams: str, view: str = "train") -> tuple[Outputs, ...]:
        """Logits and features of each stream's ``view``, computed once per step and shared by every term; several
        streams go through the network as one batch (batch norm sees them together)."""
        key = (tuple(streams), view)
        if key not in self._cache:
            xs = [self.x(s, view) for s in streams]
            joint = _concat(xs) if len(xs) > 1 else None
            if joint is not None:
                logits, feats = self.model(joint, return_features=True)
                sizes = [len(x) for x in xs]
                outs = tuple(Outputs(lg, ft) for lg, ft in zip(torch.split(logits, sizes), torch.split(feats, sizes)))
            else:
                outs = tuple(Outputs(*self.model(x, return_features=True)) for x in xs)
            self._cache[key] = outs
        return self._cache[key]


class Objective(nn.Module):
    """Base class of every objective (see the module docstring).

    Class attributes:
        name: the term name in logs (``loss_<name>`` columns).
        streams: the training streams it reads.
        views: stream -> the views it needs (default ``("train",)``).
        replaces_weight_decay: the optimizer's weight decay is switched off (L2-SP replaces it).
    """

    name: str = "objective"
    streams: tuple[str, ...] = ("labelled",)
    views: dict[str, tuple[str, ...]] = {}
    replaces_weight_decay: bool = False

    def views_of(self, stream: str) -> tuple[str, ...]:
        """The views this objective needs of ``stream``."""
        return tuple(self.views.get(stream, ("train",)))

    def setup(self, model: nn.Module) -> None:
        """Called once before training, after the model is ready (e.g. L2-SP takes its starting point here)."""

    def forward(self, step: Step) -> dict[str, torch.Tensor]:  # noqa: D102 - see the class
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Name and parameters (JSON), part of the run's configuration hash (resume refuses other values)."""
        return {"name": self.name}

    def epoch_state(self) -> dict[str, Any]:
        """History columns describing the objective's own state at the end of an epoch (e.g. per-class
        thresholds), logged with or without a validation split; none by default."""
        return {}

    def validation_metrics(self, probs: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
        """Extra columns of the history computed on the validation predictions (class probabilities ``probs`` and
        labels ``y``), e.g. how a pseudo-labelling rule would fare there; none by default."""
        return {}


class Objectives(Objective):
    """Several objectives summed; their terms keep their own names (made unique with a suffix)."""

    name = "objectives"

    def __init__(self, *terms: Objective):
        super().__init__()
        for t in terms:
            if not isinstance(t, Objective):
                raise TransferkitError(f"objectives must be Objective instances (CrossEntropy, L2SP, BSS, a domain-"
                                       f"adaptation method, ...); got {t!r}")
        self.terms = nn.ModuleList(terms)
        self.streams = tuple(dict.fromkeys(s for t in terms for s in t.streams))
        self.replaces_weight_decay = any(t.replaces_weight_decay for t in terms)
        self._names = _unique([t.name for t in terms])

    def views_of(self, stream: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for t in self.terms if stream in t.streams for v in t.views_of(stream)))

    def setup(self, model: nn.Module) -> None:
        for t in self.terms:
            t.setup(model)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, t in zip(self._names, self.terms):
            terms = t(step)
            if not isinstance(terms, dict):
                terms = {name: terms}
            for k, v in terms.items():
                key = k if k not in out else f"{name}.{k}"
                out[key] = scalar_term(v, key, step)
        return out

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "terms": [t.config() for t in self.terms]}

    def epoch_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in self.terms:
            out.update(t.epoch_state())
        return out

    def validation_metrics(self, probs: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in self.terms:
            out.update(t.validation_metrics(probs, y))
        return out


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        k, name = 1, n
        while name in out:
            k += 1
            name = f"{n}{k}"
        out.append(name)
    return out


def scalar_term(value: Any, name: str, step: Step | None = None) -> torch.Tensor:
    """A loss term as a 0-d tensor (plain numbers are accepted; anything else is a clear error)."""
    if not isinstance(value, torch.Tensor):
        if not isinstance(value, (int, float)):
            raise TransferkitError(f"loss term {name!r} returned a {type(value).__name__}; it must return a scalar "
                                   "tensor")
        return torch.tensor(float(value))
    if value.numel() != 1:
        raise TransferkitError(f"loss term {name!r} returned a tensor of shape {tuple(value.shape)}; it must return "
                               "a scalar (reduce it with .mean() or .sum())")
    return value.reshape(())


class CrossEntropy(Objective):
    """Cross-entropy of the labelled stream's predictions (optional label smoothing and class weights).

    Args:
        stream: the labelled stream.
        label_smoothing: label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016).
        class_weight: per-class weights (e.g. inverse frequency), or None.
        weight: a factor on the term.
        name: the term name.
    """

    def __init__(self, stream: str = "labelled", label_smoothing: float = 0.0,
                 class_weight: Sequence[float] | None = None, weight: float = 1.0, name: str = "ce"):
        super().__init__()
        self.name, self.stream = name, stream
        self.streams = (stream,)
        self.label_smoothing, self.weight = float(label_smoothing), float(weight)
        cw = None if class_weight is None else torch.as_tensor(list(class_weight), dtype=torch.float32)
        self.register_buffer("class_weight", cw, persistent=False)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        logits = step.outputs(self.stream)[0].logits.float()
        ce = nn.functional.cross_entropy(logits, step.y(self.stream), weight=self.class_weight,
                                         label_smoothing=self.label_smoothing)
        return {self.name: ce * (self.weight * step.weight(self.stream))}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "stream": self.stream, "label_smoothing": self.label_smoothing,
                "weight": self.weight,
                "class_weight": None if self.class_weight is None else [round(float(v), 6) for v in self.class_weight]}


class FunctionTerm(Objective):
    """A plain function ``fn(net, step) -> scalar`` as a loss term (``net``: the network being trained).

    Args:
        fn: the function (a module-level function when training in several spawned processes).
        name: the term name (default: the function's name).
    """

    streams = ()

    def __init__(self, fn: Callable[[nn.Module, Step], Any], name: str | None = None):
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__.lower())

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {self.name: self.fn(step.net, step)}


def as_objective(term: Any) -> Objective:
    """An :class:`Objective` as it is; a plain callable ``fn(net, step)`` as a :class:`FunctionTerm`."""
    if isinstance(term, Objective):
        return term
    if callable(term):
        return FunctionTerm(term)
    raise TransferkitError(f"a loss term must be an Objective (L2SP, BSS, ...) or a function fn(net, step) -> scalar; "
                           f"got {term!r}")
