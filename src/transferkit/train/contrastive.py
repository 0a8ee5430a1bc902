"""Contrastive training of a text encoder through the training loop: SetFit's pair objective and unsupervised SimCSE.

Both train the encoder alone (no classification head): the model is an :class:`EncoderModel` whose "logits" are
the embeddings, the data arrive as :class:`~transferkit.train.streams.ItemStream` s of texts with two views per item
(the two sides of a pair, or the same text twice), and the objectives below compare the two views' embeddings.

- :class:`CosinePairLoss`: the squared error between the cosine similarity of a pair's embeddings and its target
  (1 for two texts of the same class, 0 otherwise): SetFit's body objective (Tunstall et al. 2022), sentence-
  transformers' ``CosineSimilarityLoss``.
- :class:`SimCSELoss`: each text encoded twice with different dropout masks is its own positive, the other texts
  of the batch are negatives (InfoNCE over cosine similarities / temperature): unsupervised SimCSE (Gao, Yao & Chen
  2021).

:class:`EncoderPlan` builds the loop's :class:`~transferkit.train.loop.Plan` for either.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..backbones.base import Backbone
from ..errors import TransferkitError
from .loop import Plan
from .model import layer_groups, prepare_backbone
from .objectives import Objective, Step
from .streams import ItemStream

__all__ = ["EncoderModel", "CosinePairLoss", "SimCSELoss", "PairItems", "TextItems", "EncoderPlan", "linear_warmup",
           "encode_texts", "first_of_pair", "second_of_pair"]


class EncoderModel(nn.Module):
    """A text encoder as the training loop's model: its embeddings are both the "logits" and the features.

    Args:
        backbone: a text backbone (e.g. :class:`~transferkit.backbones.text.HFTextBackbone`).

    Shape:
        forward: tokenized texts -> ``(N, D)``; with ``return_features=True`` -> ``((N, D), (N, D))``.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Any, return_features: bool = False):
        z = self.backbone(x)
        return (z, z) if return_features else z


class CosinePairLoss(Objective):
    """Mean squared error between ``cos(e(a), e(b))`` and the pair's target (1: same class, 0: different classes).

    Reads the stream ``pairs`` in the views ``a`` and ``b`` (the two texts of each pair); its labels are the
    targets.

    Args:
        stream: the pair stream's name.
        weight: a factor on the term.

    References:
        Tunstall et al., "Efficient Few-Shot Learning Without Prompts" (SetFit), arXiv:2209.11055, 2022;
        Reimers & Gurevych, "Sentence-BERT", EMNLP 2019 (the cosine-similarity loss).
    """

    name = "cosine"

    def __init__(self, stream: str = "pairs", weight: float = 1.0):
        super().__init__()
        self.stream, self.weight = stream, float(weight)
        self.streams = (stream,)
        self.views = {stream: ("a", "b")}

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        za = step.outputs(self.stream, view="a")[0].features.float()
        zb = step.outputs(self.stream, view="b")[0].features.float()
        cos = nn.functional.cosine_similarity(za, zb, dim=1)
        target = step.y(self.stream).to(cos.dtype)
        return {self.name: nn.functional.mse_loss(cos, target) * (self.weight * step.weight(self.stream))}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "stream": self.stream, "weight": self.weight}


class SimCSELoss(Objective):
    """Unsupervised SimCSE: a batch of texts is encoded twice (views ``a`` and ``b``; dropout differs between the two
    passes), and each text must pick its own second encoding among the batch's (cross-entropy over cosine
    similarities divided by ``temperature``).

    Args:
        stream: the stream of unlabelled texts.
        temperature: the softmax temperature (0.05 in the paper).
        weight: a factor on the term.

    References:
        Gao, Yao & Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021.
    """

    name = "simcse"

    def __init__(self, stream: str = "corpus", temperature: float = 0.05, weight: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise TransferkitError(f"temperature must be > 0; got {temperature!r}")
        self.stream, self.temperature, self.weight = stream, float(temperature), float(weight)
        self.streams = (stream,)
        self.views = {stream: ("a", "b")}

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        za = nn.functional.normalize(step.outputs(self.stream, view="a")[0].features.float(), dim=1)
        zb = nn.functional.normalize(step.outputs(self.stream, view="b")[0].features.float(), dim=1)
        logits = za @ zb.T / self.temperature
        target = torch.arange(len(za), device=za.device)
        return {self.name: nn.functional.cross_entropy(logits, target) * (self.weight * step.weight(self.stream))}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "stream": self.stream, "temperature": self.temperature, "weight": self.weight}


class PairItems:
    """Pairs of texts as the items of an :class:`~transferkit.train.streams.ItemStream` (``load(i) -> (a, b)``).

    Args:
        texts: the texts.
        pairs: ``(P, 2)`` indices into ``texts``.
    """

    def __init__(self, texts: Sequence[str], pairs: np.ndarray):
        self.texts = [str(t) for t in texts]
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[str, str]:
        """The two texts of pair ``i``."""
        a, b = self.pairs[i]
        return self.texts[a], self.texts[b]


class TextItems:
    """Texts as the items of an :class:`~transferkit.train.streams.ItemStream` (``load(i) -> text``)."""

    def __init__(self, texts: Sequence[str]):
        self.texts = [str(t) for t in texts]

    def __len__(self) -> int:
        return len(self.texts)

    def load(self, i: int) -> str:
        """Text ``i``."""
        return self.texts[i]


def first_of_pair(pair: tuple[str, str]) -> str:
    """View ``a`` of a pair item."""
    return pair[0]


def second_of_pair(pair: tuple[str, str]) -> str:
    """View ``b`` of a pair item."""
    return pair[1]


def linear_warmup(warmup_steps: int):
    """Learning-rate factor: linear warmup over ``warmup_steps``, then a linear decay to 0 (as sentence-transformers
    and SetFit train)."""

    def fn(step: int, total: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total - step) / max(1, total - warmup_steps))

    return fn


@dataclass
class EncoderPlan:
    """Builds the loop's plan that trains a text encoder alone with a contrastive objective (picklable).

    Attributes:
        backbone: the encoder (copied, never changed).
        items: :class:`PairItems` or :class:`TextItems`.
        targets: per-item targets (pair labels) or None.
        objective: the objective (copied per process).
        stream: the stream's name (what the objective reads).
        views: view name -> per-item transform (None: the item itself).
        lr, weight_decay, batch_size, warmup_fraction, seed: optimisation settings; ``total_steps`` sizes the warmup.
        identity: what a checkpoint must match to be resumed.
    """

    backbone: Backbone
    items: Any
    targets: np.ndarray | None
    objective: Objective
    stream: str
    views: dict[str, Any]
    lr: float = 2e-5
    weight_decay: float = 0.01
    batch_size: int = 16
    warmup_fraction: float = 0.1
    seed: int = 0
    total_steps: int = 1
    identity: dict[str, Any] = field(default_factory=dict)

    def __call__(self, fabric: Any) -> Plan:
        bb = prepare_backbone(copy.deepcopy(self.backbone))
        _, unused = layer_groups(bb)
        named = dict(bb.named_parameters())
        for n in unused:
            named[n].requires_grad_(False)  # e.g. a transformer's pooler: mean pooling never uses it (DDP needs this)
        model = EncoderModel(bb)
        trainable = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim > 1]
        no_decay = [p for p in trainable if p.ndim <= 1]
        groups = [{"params": decay, "lr": self.lr, "weight_decay": self.weight_decay, "name": "encoder"},
                  {"params": no_decay, "lr": self.lr, "weight_decay": 0.0, "name": "encoder:no_decay"}]
        stream = ItemStream(self.stream, self.items, np.arange(len(self.items)), self.targets, views=self.views,
                            collate=bb.collate, batch_size=self.batch_size, seed=self.seed)
        lr, wd = self.lr, self.weight_decay
        warm = int(math.ceil(self.warmup_fraction * self.total_steps))
        return Plan(model=model, objective=copy.deepcopy(self.objective), streams={self.stream: stream},
                    param_groups=groups, optimizer=lambda g: torch.optim.AdamW(g, lr=lr, weight_decay=wd),
                    schedule=linear_warmup(warm), evaluator=None, identity=dict(self.identity),
                    info={"parameters": sum(p.numel() for p in trainable), "items": len(self.items)},
                    info_name="encoder.json")


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``(N, D)`` float32 embeddings of ``texts`` with a text backbone in eval mode (no cache: for a backbone just
    trained). Texts are batched in order of length (less padding: a transformer pads a batch to its longest text),
    and the rows come back in the given order."""
    backbone = backbone.eval()
    texts = [str(t) for t in texts]
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = [texts[j] for j in order[i:i + batch_size]]
        out.append(backbone(backbone.collate(chunk)).float().cpu().numpy())
    dim = int(backbone.num_features)
    if not out:
        return np.zeros((0, dim), np.float32)
    Z = np.empty((len(texts), out[0].shape[1]), np.float32)
    Z[order] = np.concatenate(out)
    return Z
