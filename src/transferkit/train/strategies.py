"""Fine-tuning strategies: which layer groups train in which epoch, and at what learning rate.

A strategy never trains anything itself: the training loop (:mod:`transferkit.train.loop`, through
:func:`transferkit.train.engine.finetune`) asks it which backbone groups are trainable in each epoch and which
learning-rate multiplier each group gets. Layer
groups come from the backbone's own library (:func:`transferkit.train.model.layer_groups`: timm's
``group_matcher``, or embeddings + encoder layers for transformers).

Registered names (``--strategy``):

- ``finetune``: every layer trains; the backbone at ``lr * backbone_lr_scale``.
- ``partial``: the first K groups stay frozen (``freeze=K`` or ``freeze_until="<group>"``), the rest trains.
- ``gradual``: the head alone first (backbone frozen), then the backbone is unfrozen with discriminative,
  layer-wise decaying learning rates (all at once as fastai's ``fine_tune``, or one group at a time as ULMFiT).
- ``scratch``: the same architecture with random weights, all layers at the full learning rate: the baseline.
- ``lora``, ``adapter``, ``bitfit``: parameter-efficient fine-tuning (:mod:`transferkit.train.efficient`): the
  backbone's groups stay frozen and a small delta (low-rank updates, bottleneck adapters, bias terms) trains.
- ``probe``: the whole backbone frozen, only the head trains (with augmentation, through the same loop).
  The backbone never changes, so a caller may instead use the cached-feature path
  (:func:`transferkit.pipeline.fit_run`), which is much faster and gives the classic linear probe.

Frozen parts run in eval mode (BatchNorm keeps its running statistics, dropout is off), also after the loop
calls ``model.train()`` each epoch: see :func:`transferkit.train.loop.set_train_mode`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import TransferkitError, UnknownNameError
from ..registry import Registry
from .model import LayerGroup, TransferModel

__all__ = ["Strategy", "FineTune", "Partial", "Gradual", "Scratch", "Probe", "STRATEGIES", "create_strategy",
           "list_strategies", "group_lr", "reinitialise"]

#: fine-tuning strategies; capability ``backbone_frozen``: the backbone never changes (the cached-feature path works)
STRATEGIES: Registry["Strategy"] = Registry("strategy")


def list_strategies() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered strategy."""
    return [(e.name, e.factory.description) for e in STRATEGIES.entries()]


def create_strategy(name: "str | Strategy", **params: Any) -> "Strategy":
    """A strategy by registry name, with its parameters.

    Raises:
        UnknownNameError: no strategy of that name (the message lists the valid ones).
        TransferkitError: a parameter the strategy does not take, or a bad value.
    """
    if isinstance(name, Strategy):
        if params:
            raise TransferkitError(f"strategy parameters {sorted(params)} given with a ready strategy object {name!r}; "
                                   "pass the strategy by name, or set them on the object")
        return name
    strategy = STRATEGIES.create(name, **params)
    strategy.validate()
    return strategy


@dataclass
class Strategy:
    """Base class: every group trains, at ``lr * backbone_lr_scale``.

    Subclasses are dataclasses whose fields are their parameters; they override the hooks below. The
    engine calls :meth:`bind` once with the backbone's groups, then :meth:`trainable` at the start of every
    epoch. Everything is a function of the epoch number, so a resumed run gets the same answers.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    granularity: ClassVar[str] = "coarse"
    #: the run keeps only :meth:`delta_parameters` (and the head), not the whole backbone
    saves_delta: ClassVar[bool] = False

    def validate(self) -> None:
        """Check the parameters (before any backbone is built)."""

    def config(self) -> dict[str, Any]:
        """Name and parameters (JSON), part of the run's configuration hash."""
        return {"name": self.name, **asdict(self)}

    def bind(self, groups: list[LayerGroup]) -> None:
        """Resolve names against the backbone's groups (e.g. ``freeze_until``); raise on unknown ones."""
        self.n_groups_ = len(groups)
        self.group_names_ = [g.name for g in groups]

    def prepare(self, model: TransferModel, seed: int) -> None:
        """Change the model before training (``scratch`` re-initialises the backbone)."""

    def trainable(self, epoch: int) -> list[bool]:
        """Which backbone groups train in ``epoch`` (0-based)."""
        return [True] * self.n_groups_

    def ever_trainable(self) -> list[bool]:
        """Groups that train in some epoch: these go into the optimizer."""
        return [True] * self.n_groups_

    def lr_scales(self, backbone_lr_scale: float) -> list[float]:
        """Learning-rate multiplier (relative to the head's ``lr``) of each backbone group."""
        return [backbone_lr_scale] * self.n_groups_

    def settled_epoch(self) -> int:
        """First epoch after which the set of trainable groups no longer changes (early stopping waits for it)."""
        return 0

    def delta_parameters(self, backbone: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of backbone parameters that train in every epoch besides the groups (after
        :meth:`prepare`): the small delta of a parameter-efficient strategy (:mod:`transferkit.train.efficient`)."""
        return []


@STRATEGIES.register(backbone_frozen=False)
@dataclass
class FineTune(Strategy):
    """Fine-tune every layer: the backbone at ``lr * backbone_lr_scale``, the new head at ``lr``.

    References:
        Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014.
    """

    name: ClassVar[str] = "finetune"
    description: ClassVar[str] = "train all layers (backbone at lr * backbone_lr_scale)"


@STRATEGIES.register(backbone_frozen=False)
@dataclass
class Partial(Strategy):
    """Freeze the first layer groups, fine-tune the rest.

    Args:
        freeze: number of groups to freeze, from the input side (0 = none, all groups = probe).
        freeze_until: freeze every group up to and including this one (a name from ``layer_groups``,
            e.g. ``"blocks.3"`` or ``"layer2"``; unknown names raise an error listing the valid ones).
        granularity: ``"coarse"`` (stages) or ``"fine"`` (blocks) timm grouping.

    Without either, the first half of the groups is frozen.

    References:
        Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014.
    """

    name: ClassVar[str] = "partial"
    description: ClassVar[str] = "freeze the first K layer groups (freeze=K or freeze_until=<group>), train the rest"
    freeze: int | None = None
    freeze_until: str | None = None
    granularity: str = "coarse"

    def validate(self) -> None:
        _check_granularity(self.granularity)
        if self.freeze is not None and self.freeze_until is not None:
            raise TransferkitError(f"strategy 'partial': give freeze={self.freeze} or "
                                   f"freeze_until={self.freeze_until!r}, not both")
        if self.freeze is not None and (not isinstance(self.freeze, int) or self.freeze < 0):
            raise TransferkitError(f"strategy 'partial': freeze must be a number of layer groups >= 0, "
                                   f"got {self.freeze!r}")

    def bind(self, groups: list[LayerGroup]) -> None:
        super().bind(groups)
        names = self.group_names_
        if self.freeze_until is not None:
            if self.freeze_until not in names:
                close = difflib.get_close_matches(self.freeze_until, names, n=2, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise UnknownNameError(
                    f"strategy 'partial': no layer group {self.freeze_until!r} in this backbone.{hint} Valid freeze "
                    f"points ({self.granularity} groups, input side first): {', '.join(names)}")
            self.frozen_ = names.index(self.freeze_until) + 1
        elif self.freeze is not None:
            if self.freeze > len(names):
                raise TransferkitError(
                    f"strategy 'partial': freeze={self.freeze} but the backbone has {len(names)} {self.granularity} "
                    f"layer groups ({', '.join(names)}); use 0..{len(names)}")
            self.frozen_ = self.freeze
        else:
            self.frozen_ = len(names) // 2

    def trainable(self, epoch: int) -> list[bool]:
        return [g >= self.frozen_ for g in range(self.n_groups_)]

    def ever_trainable(self) -> list[bool]:
        return self.trainable(0)


@STRATEGIES.register(backbone_frozen=False)
@dataclass
class Gradual(Strategy):
    """Train the head with the backbone frozen, then unfreeze it with discriminative learning rates.

    For ``head_epochs`` epochs only the head trains. Then the backbone is unfrozen: all at once
    (``unfreeze_every=0``, fastai's ``fine_tune`` recipe) or one more group from the top every
    ``unfreeze_every`` epochs (ULMFiT's gradual unfreezing). Group ``g`` of ``G`` (0 = input side) trains at
    ``lr * layer_decay ** (G - g)``: layer-wise learning-rate decay, so layers near the input, which hold
    the most general features, move least.

    Args:
        head_epochs: epochs with the backbone frozen.
        unfreeze_every: 0 to unfreeze everything after the head epochs, else epochs between unfreezing steps.
        layer_decay: learning-rate ratio between neighbouring groups (ULMFiT uses 1/2.6 ~ 0.38 over a
            few LSTM layers; 0.65-0.75 suits the 5-15 groups of timm models).
        granularity: ``"coarse"`` (stages) or ``"fine"`` (blocks) timm grouping.

    References:
        Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification" (ULMFiT), ACL 2018;
        fastai ``Learner.fine_tune`` (Howard & Gugger, "fastai: A Layered API for Deep Learning", 2020).
    """

    name: ClassVar[str] = "gradual"
    description: ClassVar[str] = ("head first with the backbone frozen, then unfreeze with layer-wise decaying "
                                  "learning rates (fastai fine_tune / ULMFiT)")
    head_epochs: int = 1
    unfreeze_every: int = 0
    layer_decay: float = 0.75
    granularity: str = "coarse"

    def validate(self) -> None:
        _check_granularity(self.granularity)
        if not isinstance(self.head_epochs, int) or self.head_epochs < 0:
            raise TransferkitError(f"strategy 'gradual': head_epochs must be an integer >= 0, got {self.head_epochs!r}")
        if not isinstance(self.unfreeze_every, int) or self.unfreeze_every < 0:
            raise TransferkitError(f"strategy 'gradual': unfreeze_every must be an integer >= 0, "
                                   f"got {self.unfreeze_every!r}")
        if not 0 < float(self.layer_decay) <= 1:
            raise TransferkitError(f"strategy 'gradual': layer_decay must be in (0, 1], got {self.layer_decay!r}")

    def trainable(self, epoch: int) -> list[bool]:
        G = self.n_groups_
        if epoch < self.head_epochs:
            k = 0
        elif self.unfreeze_every == 0:
            k = G
        else:
            k = min(G, 1 + (epoch - self.head_epochs) // self.unfreeze_every)
        return [g >= G - k for g in range(G)]

    def lr_scales(self, backbone_lr_scale: float) -> list[float]:
        G = self.n_groups_
        return [float(self.layer_decay) ** (G - g) for g in range(G)]

    def settled_epoch(self) -> int:
        if self.unfreeze_every == 0:
            return self.head_epochs
        return self.head_epochs + max(0, self.n_groups_ - 1) * self.unfreeze_every


@STRATEGIES.register(backbone_frozen=False)
@dataclass
class Scratch(Strategy):
    """The same architecture with random (seeded) initial weights, every layer at the full ``lr``.

    The baseline that says whether the pretrained weights helped: same data, loop, augmentation and budget.
    """

    name: ClassVar[str] = "scratch"
    description: ClassVar[str] = "same architecture, random init, all layers at full lr (the no-transfer baseline)"

    def prepare(self, model: TransferModel, seed: int) -> None:
        reinitialise(model.backbone, seed)

    def lr_scales(self, backbone_lr_scale: float) -> list[float]:
        return [1.0] * self.n_groups_


@STRATEGIES.register(backbone_frozen=True)
@dataclass
class Probe(Strategy):
    """The whole backbone frozen (eval mode); only the linear head trains, on augmented inputs.

    The backbone never changes (the registry capability ``backbone_frozen``): a caller that wants the classic linear
    probe without augmentation should use the cached-feature path (``fit_run`` with a head), which extracts
    features once and is far faster.
    """

    name: ClassVar[str] = "probe"
    description: ClassVar[str] = ("backbone frozen, only the head trains (the cached-feature path is the fast "
                                  "equivalent)")

    def trainable(self, epoch: int) -> list[bool]:
        return [False] * self.n_groups_

    def ever_trainable(self) -> list[bool]:
        return [False] * self.n_groups_


def _check_granularity(value: str) -> None:
    if value not in ("coarse", "fine"):
        raise TransferkitError(f"granularity must be 'coarse' (stages) or 'fine' (blocks), got {value!r}")


# -- helpers the engine uses ----------------------------------------------------------------------------
def reinitialise(backbone: nn.Module, seed: int) -> None:
    """Replace a backbone's weights by a fresh random initialisation of the same architecture (seeded).

    timm models are rebuilt with ``timm.create_model(arch, pretrained=False)`` (timm's own init), transformers
    encoders with ``AutoModel.from_config``; other modules get ``reset_parameters()`` on every layer.
    """
    inner = getattr(backbone, "model", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = None
        if inner is not None and hasattr(inner, "group_matcher") and getattr(backbone, "arch", None):
            import timm

            fresh = timm.create_model(backbone.arch, pretrained=False)
            fresh.reset_classifier(0)
        elif inner is not None and hasattr(inner, "config") and hasattr(inner.config, "hidden_size"):
            from transformers import AutoModel

            fresh = AutoModel.from_config(inner.config)
        if fresh is not None:
            missing, unexpected = inner.load_state_dict(fresh.state_dict(), strict=False)
            if unexpected:
                raise TransferkitError(f"cannot re-initialise {type(inner).__name__}: unexpected keys {unexpected[:5]}")
            return
        for m in backbone.modules():
            if hasattr(m, "reset_parameters") and m is not backbone:
                m.reset_parameters()


def group_lr(base_lr: float, scale: float) -> float:
    """``base_lr * scale`` (kept separate so a zero scale is an error, not a silently frozen group)."""
    lr = base_lr * scale
    if not math.isfinite(lr) or lr <= 0:
        raise TransferkitError(f"learning rate {base_lr} x {scale} = {lr} is not a positive number")
    return lr
