"""Parameter-efficient fine-tuning: LoRA (through ``peft``), bottleneck adapters and BitFit as strategies.

Each is a :class:`~transferkit.train.strategies.Strategy` of the one training loop: the pretrained backbone's own
weights stay frozen (its layer groups never train, its normalisation statistics stay as they were), the strategy adds
or selects a small set of backbone parameters, the **delta**, that trains beside the new head at
``lr * lr_scale``. A run then keeps only the delta (plus the head) in safetensors with the base backbone's
registered name and weights digest (:func:`transferkit.runs.writer.save_model`); loading rebuilds the base by name,
checks its digest, re-applies the structure, loads the delta and merges it (:func:`apply_delta`).

Registered names (``--strategy``):

- ``lora``: low-rank updates ``W + (alpha / rank) B A`` of chosen linear / 1x1-convolution weights, injected by the
  ``peft`` library; merged into the base weights for prediction and export (peft's per-layer ``merge`` then unload).
- ``adapter``: a residual bottleneck (down-projection, non-linearity, zero-initialised up-projection) after chosen
  sub-layers: Houlsby adapters after a transformer's attention and feed-forward output projections, residual adapters
  after an EfficientNet block's projection convolution. Not mergeable (non-linear): it stays a small module.
- ``bitfit``: only the backbone's bias terms train (with a convolutional net: the normalisation biases).
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..errors import TransferkitError
from .strategies import STRATEGIES, Strategy

__all__ = ["EfficientStrategy", "Lora", "Adapter", "BitFit", "BottleneckAdapter", "Adapted", "apply_delta",
           "default_targets", "delta_state", "merge", "parameter_counts"]

_FAMILIES = ("timm", "transformers")
#: per backbone family, the sub-modules each strategy attaches to (module names ending with these)
_DEFAULT_TARGETS = {
    "lora": {"timm": ("conv_pw", "conv_pwl"), "transformers": ("query", "value")},
    "adapter": {"timm": ("conv_pwl",), "transformers": ("attention.output.dense", "output.dense")},
}
#: ``target_modules="all-linear"``: every linear layer (and 1x1 convolution) of the backbone that the model uses
ALL_LINEAR = "all-linear"
#: per backbone family, the delta's default learning rate relative to the head's (``TrainConfig.lr``, 2e-3 by
#: default); see each strategy's docstring for the paper behind the text (transformers) value
_DEFAULT_LR_SCALE = {
    "lora": {"timm": 1.0, "transformers": 0.25},  # 5e-4: Hu et al. 2022, RoBERTa-base (SST-2 and most GLUE tasks)
    "adapter": {"timm": 1.0, "transformers": 0.5},  # 1e-3: Houlsby et al. 2019 (their range 3e-5 .. 3e-3)
    "bitfit": {"timm": 1.0, "transformers": 0.5},  # 1e-3: Ben Zaken et al. 2022 (their range 1e-4 .. 1e-3)
}


def _family(backbone: nn.Module) -> str | None:
    inner = getattr(backbone, "model", None)
    if inner is not None and hasattr(inner, "group_matcher"):
        return "timm"
    if inner is not None and hasattr(getattr(inner, "config", None), "hidden_size"):
        return "transformers"
    return None


def default_targets(strategy: str, backbone: nn.Module) -> tuple[str, ...]:
    """The sub-modules ``strategy`` (``lora`` / ``adapter``) attaches to by default in this backbone's family."""
    family = _family(backbone)
    if family is None:
        raise TransferkitError(f"strategy {strategy!r} has no default target modules for backbone "
                               f"{getattr(backbone, 'name', type(backbone).__name__)!r} (neither a timm nor a "
                               "transformers model); give target_modules=<module name suffixes>")
    return _DEFAULT_TARGETS[strategy][family]


def _matching(backbone: nn.Module, targets: Sequence[str], types: tuple[type, ...]) -> list[str]:
    """Names of sub-modules of ``types`` whose name is a target or ends with ``.<target>`` (``*`` wildcards);
    ``targets == ("all-linear",)``: every linear layer and 1x1 convolution whose weights the model uses."""
    if tuple(targets) == (ALL_LINEAR,):
        from .model import layer_groups

        unused = set(layer_groups(backbone)[1])  # e.g. a transformers pooler that mean pooling never calls
        return [name for name, m in backbone.named_modules()
                if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                                                 and m.groups == 1))
                and f"{name}.weight" not in unused]
    out = []
    for name, module in backbone.named_modules():
        if isinstance(module, types) and any(name == t or name.endswith("." + t) or fnmatch.fnmatch(name, t)
                                             for t in targets):
            out.append(name)
    return out


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``root``."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _targets(target_modules: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``target_modules`` as a tuple (a single name, ``"all-linear"`` included, as a 1-tuple); None: the default."""
    if not target_modules:
        return None
    return (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)


def _no_match(strategy: str, targets: Sequence[str], backbone: nn.Module, types: tuple[type, ...]) -> TransferkitError:
    names = [n for n, m in backbone.named_modules() if isinstance(m, types)]
    return TransferkitError(f"strategy {strategy!r}: target_modules={list(targets)} match no "
                            f"{'/'.join(t.__name__ for t in types)} layer of backbone "
                            f"{getattr(backbone, 'name', '')!r}; some of its layers: {', '.join(names[:8])}")


@dataclass
class EfficientStrategy(Strategy):
    """Base of the parameter-efficient strategies: the backbone's groups never train; a delta does.

    Subclasses implement :meth:`attach` (change the backbone's structure, deterministically from ``seed``) and
    :meth:`delta_names` (the parameters that train). ``lr_scale`` sets their learning rate relative to the head's;
    None (the default): the strategy's default for the backbone's family (:meth:`delta_lr_scale`).
    """

    lr_scale: float | None = None

    #: the run saves only the delta (the engine and the run writer read this)
    saves_delta: ClassVar[bool] = True

    def validate(self) -> None:
        if self.lr_scale is not None and (isinstance(self.lr_scale, bool) or not isinstance(self.lr_scale, (int, float))
                                          or not self.lr_scale > 0):
            raise TransferkitError(f"strategy {self.name!r}: lr_scale must be a positive number (or None for the "
                                   f"default), got {self.lr_scale!r}")

    def delta_lr_scale(self, backbone: nn.Module) -> float:
        """The delta's learning rate relative to the head's: ``lr_scale``, or by default 1 with a timm net (the
        delta at the head's rate) and the paper's rate with a transformers encoder (the strategy's docstring)."""
        if self.lr_scale is not None:
            return float(self.lr_scale)
        return _DEFAULT_LR_SCALE[self.name].get(_family(backbone) or "timm", 1.0)

    def trainable(self, epoch: int) -> list[bool]:
        return [False] * self.n_groups_

    def ever_trainable(self) -> list[bool]:
        return [False] * self.n_groups_

    def prepare(self, model: nn.Module, seed: int) -> None:
        self.attach(model.backbone, seed)
        for m in model.backbone.modules():  # the base's normalisation statistics stay as pre-trained
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.keep_statistics = True

    def attach(self, backbone: nn.Module, seed: int = 0) -> None:
        """Add the delta's modules to ``backbone`` in place (seeded)."""

    def delta_names(self, backbone: nn.Module) -> list[str]:
        """Names (relative to the backbone) of the parameters that train."""
        raise NotImplementedError

    def delta_parameters(self, backbone: nn.Module) -> list[tuple[str, nn.Parameter]]:
        params = dict(backbone.named_parameters())
        names = self.delta_names(backbone)
        if not names:
            raise TransferkitError(f"strategy {self.name!r} found nothing to train in backbone "
                                   f"{getattr(backbone, 'name', '')!r}")
        return [(n, params[n]) for n in names]

    def merge(self, backbone: nn.Module) -> nn.Module:
        """Fold the delta into plain layers where possible (LoRA); returns the backbone (changed in place)."""
        return backbone


@STRATEGIES.register(backbone_frozen=False)
@dataclass
class Lora(EfficientStrategy):
    """LoRA: train low-rank updates ``(alpha / rank) B A`` of frozen weight matrices, through the ``peft`` library.

    Args:
        rank: the rank r of each update.
        alpha: scaling numerator (the update is multiplied by ``alpha / rank``).
        dropout: dropout on the input of the low-rank path.
        target_modules: module name suffixes to adapt (default: timm nets ``conv_pw``, ``conv_pwl``, the 1x1
            convolutions of EfficientNet blocks; transformers encoders ``query``, ``value`` as Hu et al.), or
            ``"all-linear"``: every linear layer / 1x1 convolution the model uses (a transformer's query, key, value,
            attention output and both feed-forward layers, as QLoRA, Dettmers et al., NeurIPS 2023).
        lr_scale: learning rate of the LoRA weights relative to the head's (``TrainConfig.lr``). Default: with a
            transformers encoder 0.25, i.e. 5e-4 at the default head rate 2e-3, Hu et al.'s rate for RoBERTa-base
            (rank 8 on query/value; SST-2 and most GLUE tasks); with a timm net 1 (the head's rate).

    ``B`` starts at zero, so training starts from the pretrained network; after training ``W + (alpha / r) B A`` is
    merged into ``W`` (peft's layer ``merge``), so the exported network has the base architecture and cost.
    ``alpha = 2 * rank`` by default (scale 2, peft's usual choice; Hu et al. used ``alpha = rank`` for RoBERTa).

    References:
        Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
    """

    name: ClassVar[str] = "lora"
    description: ClassVar[str] = "LoRA (peft): low-rank updates of frozen weights (rank=, alpha=), merged for export"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str | None = None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise TransferkitError(f"strategy 'lora': rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise TransferkitError(f"strategy 'lora': alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise TransferkitError(f"strategy 'lora': dropout must be in [0, 1), got {self.dropout!r}")
        _peft()

    def attach(self, backbone: nn.Module, seed: int = 0) -> None:
        peft = _peft()
        targets = _targets(self.target_modules) or default_targets("lora", backbone)
        types = (nn.Linear, nn.Conv2d)
        names = _matching(backbone, targets, types)
        if not names:
            raise _no_match("lora", targets, backbone, types)
        config = peft.LoraConfig(r=int(self.rank), lora_alpha=float(self.alpha), lora_dropout=float(self.dropout),
                                 target_modules=names, bias="none")
        with torch.random.fork_rng(devices=[]):  # lora_A's initialisation is seeded (lora_B starts at zero)
            torch.manual_seed(seed)
            peft.inject_adapter_in_model(config, backbone)

    def delta_names(self, backbone: nn.Module) -> list[str]:
        return [n for n, _ in backbone.named_parameters() if ".lora_" in n]

    def merge(self, backbone: nn.Module) -> nn.Module:
        """``W <- W + (alpha / r) B A`` in every LoRA layer (peft's ``merge``), then each layer is replaced by its
        base layer: peft's ``merge_and_unload``, on a model the adapters were injected into."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(backbone.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge(safe_merge=True)
                _replace(backbone, name, module.get_base_layer())
        return backbone


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))``: a residual bottleneck, ``up`` initialised at zero (the identity at the start).

    Over the channels of ``(N, C, H, W)`` maps (1x1 convolutions, ReLU) when ``conv``, else over the last axis of
    ``(..., D)`` (linear layers, GELU).

    References:
        Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019; Rebuffi et al., "Learning multiple
        visual domains with residual adapters", NeurIPS 2017.
    """

    def __init__(self, dim: int, bottleneck: int, conv: bool = False):
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.down, self.up = layer(dim, bottleneck), layer(bottleneck, dim)
        self.act = nn.ReLU() if conv else nn.GELU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class Adapted(nn.Module):
    """A frozen layer followed by an adapter: ``adapter(base(x))``."""

    def __init__(self, base: nn.Module, adapter: nn.Module):
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, x: Any) -> Any:
        return self.adapter(self.base(x))


@STRATEGIES.register(backbone_frozen=False)
@dataclass
class Adapter(EfficientStrategy):
    """Bottleneck adapters after chosen sub-layers of the frozen backbone; only they (and the head) train.

    Args:
        bottleneck: the adapters' inner width (at most the layer's width).
        target_modules: module name suffixes followed by an adapter (default: transformers encoders
            ``attention.output.dense`` and ``output.dense``, i.e. after the attention and the feed-forward output
            projections as Houlsby et al.; timm nets ``conv_pwl``, each inverted-residual block's projection).
        lr_scale: learning rate of the adapters relative to the head's (``TrainConfig.lr``). Default: with a
            transformers encoder 0.5, i.e. 1e-3 at the default head rate 2e-3 (Houlsby et al. chose from
            3e-5 .. 3e-3 per task on BERT); with a timm net 1 (the head's rate).

    References:
        Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019; Rebuffi et al., "Learning multiple
        visual domains with residual adapters", NeurIPS 2017.
    """

    name: ClassVar[str] = "adapter"
    description: ClassVar[str] = "bottleneck adapters (bottleneck=) after frozen sub-layers (Houlsby / residual)"
    bottleneck: int = 16
    target_modules: tuple[str, ...] | str | None = None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.bottleneck, int) or isinstance(self.bottleneck, bool) or self.bottleneck < 1:
            raise TransferkitError(f"strategy 'adapter': bottleneck must be an integer >= 1, got {self.bottleneck!r}")

    def attach(self, backbone: nn.Module, seed: int = 0) -> None:
        targets = _targets(self.target_modules) or default_targets("adapter", backbone)
        types = (nn.Linear, nn.Conv2d)
        names = _matching(backbone, targets, types)
        if not names:
            raise _no_match("adapter", targets, backbone, types)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in names:
                layer = backbone.get_submodule(name)
                conv = isinstance(layer, nn.Conv2d)
                width = layer.out_channels if conv else layer.out_features
                adapter = BottleneckAdapter(width, min(int(self.bottleneck), width), conv)
                _replace(backbone, name, Adapted(layer, adapter))

    def delta_names(self, backbone: nn.Module) -> list[str]:
        return [n for n, _ in backbone.named_parameters() if ".adapter." in n]


@STRATEGIES.register(backbone_frozen=False)
@dataclass
class BitFit(EfficientStrategy):
    """Only the backbone's bias terms train (and the head); with BatchNorm nets the normalisation biases, their
    running statistics kept from pre-training.

    Args:
        lr_scale: learning rate of the biases relative to the head's (``TrainConfig.lr``). Default: with a
            transformers encoder 0.5, i.e. 1e-3 at the default head rate 2e-3, the top of Ben Zaken et al.'s range
            (1e-4 .. 1e-3 on BERT); with a timm net 1 (the head's rate).

    References:
        Ben Zaken et al., "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
        Language-models", ACL 2022.
    """

    name: ClassVar[str] = "bitfit"
    description: ClassVar[str] = "train only the backbone's bias terms (BitFit)"

    def delta_names(self, backbone: nn.Module) -> list[str]:
        return [n for n, p in backbone.named_parameters() if n.endswith(".bias") and n not in self._unused(backbone)]

    @staticmethod
    def _unused(backbone: nn.Module) -> set[str]:
        from .model import layer_groups

        return set(layer_groups(backbone)[1])  # a transformers pooler: unused by mean pooling


# -- what a run keeps -----------------------------------------------------------------------------------------------
def delta_state(strategy: EfficientStrategy, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The trained delta of ``backbone`` (names relative to it), detached CPU copies for safetensors."""
    return {n: p.detach().cpu().contiguous().clone() for n, p in strategy.delta_parameters(backbone)}


def apply_delta(backbone: nn.Module, strategy: EfficientStrategy, state: dict[str, torch.Tensor], *,
                merged: bool = True) -> nn.Module:
    """Re-apply a saved delta to a freshly built base backbone (changed in place and returned).

    The structure is attached as in training, the tensors loaded (their names must be exactly the delta's), and the
    delta merged into the base weights (``merged=False`` keeps LoRA layers separate).

    Raises:
        TransferkitError: the saved tensors do not fit this backbone (other names or shapes).
    """
    from .model import prepare_backbone

    prepare_backbone(backbone)
    strategy.attach(backbone)
    expected = dict(strategy.delta_parameters(backbone))
    if set(expected) != set(state):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise TransferkitError(f"the saved {strategy.name} weights do not fit backbone "
                               f"{getattr(backbone, 'name', '')!r} "
                               f"(missing {missing[:3]}, unexpected {extra[:3]}); the run is damaged or was made with "
                               "another version: fit it again")
    with torch.no_grad():
        for n, p in expected.items():
            if tuple(p.shape) != tuple(state[n].shape):
                raise TransferkitError(f"the saved {strategy.name} tensor {n} has shape {tuple(state[n].shape)}, the "
                                       f"backbone expects {tuple(p.shape)}; the run is damaged: fit it again")
            p.copy_(state[n])
    if merged:
        strategy.merge(backbone)
    if hasattr(backbone, "forget_digest"):
        backbone.forget_digest()
    return backbone.eval()


def merge(strategy: EfficientStrategy, backbone: nn.Module) -> nn.Module:
    """A merged copy of a trained backbone (``backbone`` itself is not changed)."""
    return strategy.merge(copy.deepcopy(backbone))


def _peft():
    try:
        import peft
    except ImportError as e:
        raise TransferkitError("strategy 'lora' needs the peft package: pip install 'transferkit[peft]' "
                               "(or pip install peft)") from e
    return peft
