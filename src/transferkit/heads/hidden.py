"""The small head of the word-vector recipe: one hidden layer (sigmoid or ReLU) between the features and the classes.

With ``D`` input features, ``H`` hidden units and ``C`` classes it has ``H * (D + 1) + C * (H + 1)`` weights (biases
included): ``hidden=32`` on 125-d sentence vectors and 2 classes gives the 4,098 weights of the text-transfer
article's classifier (:func:`hidden_layer_weights`, :func:`hidden_for_weights`). Inputs are standardised first (a
fixed shift and scale from the training features, not weights). Trained through the training loop with AdamW and
cross-entropy, early stopping on the validation split when there is one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from .modules import HEAD_MODULES
from .shallow import HEADS, HeadPlan, MLPHead

__all__ = ["HiddenLayerModule", "HiddenLayerHead", "hidden_layer_weights", "hidden_for_weights", "ACTIVATIONS"]

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def hidden_layer_weights(in_features: int, hidden: int, num_classes: int) -> int:
    """Trainable weights of a one-hidden-layer head: ``hidden * (in_features + 1) + num_classes * (hidden + 1)``."""
    return int(hidden) * (int(in_features) + 1) + int(num_classes) * (int(hidden) + 1)


def hidden_for_weights(weights: int, in_features: int, num_classes: int) -> int:
    """The hidden size whose head has ``weights`` weights (the nearest one when none is exact)."""
    return max(1, round((int(weights) - int(num_classes)) / (int(in_features) + 1 + int(num_classes))))


@HEAD_MODULES.register("hidden-layer")
class HiddenLayerModule(nn.Module):
    """Standardise, a linear layer to ``hidden`` units, an activation, a linear layer to the classes.

    Args:
        in_features: ``D``; num_classes: ``C``; hidden: ``H``.
        activation: ``sigmoid`` (the article's), ``relu`` or ``tanh``.
        dropout: dropout on the hidden units while training.

    Shape:
        ``(N, D)`` -> ``(N, C)``; with ``return_features=True`` also the hidden units ``(N, H)``.
    """

    kind = "hidden-layer"

    def __init__(self, in_features: int, num_classes: int, hidden: int = 32, activation: str = "sigmoid",
                 dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.hidden = nn.Linear(in_features, hidden)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.out = nn.Linear(hidden, num_classes)
        self._config = {"in_features": int(in_features), "num_classes": int(num_classes), "hidden": int(hidden),
                        "activation": activation, "dropout": float(dropout)}

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return self._config["num_classes"]

    def config(self) -> dict[str, Any]:
        """What rebuilds the architecture (JSON)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HiddenLayerModule":
        """The architecture of a saved head (weights loaded separately)."""
        return cls(int(config["in_features"]), int(config["num_classes"]), int(config.get("hidden", 32)),
                   str(config.get("activation", "sigmoid")), float(config.get("dropout", 0.0)))

    def n_weights(self) -> int:
        """Trainable weights (the standardisation's shift and scale are fixed buffers, not counted)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        h = self.act(self.hidden((x - self.mean) / self.scale))
        logits = self.out(self.drop(h))
        return (logits, h) if return_features else logits


@HEADS.register("hidden", needs_labels=True, min_labels_per_class=1, kind="torch")
class HiddenLayerHead(MLPHead):
    """One hidden layer (sigmoid by default) on the features: the classifier of the word-vector transfer recipe.

    Args:
        hidden: hidden units (an int, or a one-element tuple); ``32`` on 125-d features and 2 classes is the
            article's 4,098-weight head.
        activation: ``sigmoid``, ``relu`` or ``tanh``.
        lr, weight_decay, epochs, batch_size, dropout, patience, class_weight, random_state: as for
            :class:`~transferkit.heads.shallow.MLPHead`.

    References:
        Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors", Nature 1986 (the
        one-hidden-layer network); Mikolov et al., NeurIPS 2013 (the averaged word vectors it reads).
    """

    def __init__(self, hidden: int | tuple[int, ...] = 32, activation: str = "sigmoid", lr: float = 1e-2,
                 weight_decay: float = 1e-4, epochs: int = 200, batch_size: int = 256, dropout: float = 0.0,
                 patience: int = 30, class_weight: str | None = "balanced", random_state: int = 0):
        super().__init__(hidden=hidden, lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size,
                         dropout=dropout, patience=patience, class_weight=class_weight, random_state=random_state)
        self.activation = activation

    def _hidden_units(self) -> int:
        h = self.hidden
        if isinstance(h, (tuple, list)):
            if len(h) != 1:
                raise DataError(f"head 'hidden' has one hidden layer: give hidden as one integer, got {h!r}")
            h = h[0]
        if not isinstance(h, (int, np.integer)) or h < 1:
            raise DataError(f"hidden must be an integer >= 1, got {self.hidden!r}")
        return int(h)

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> "HiddenLayerHead":
        """Train through the loop; with ``eval_set``, stop early on validation accuracy and keep the best epoch."""
        from ..train.loop import LoopSettings, run_loop

        if self.activation not in ACTIVATIONS:
            raise DataError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        hidden = self._hidden_units()
        X, y_enc = self._encode(X, y)
        val = self._val_encoded(eval_set)
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if X.shape[0] * X.shape[1] < 4_000_000 else threads)
        try:
            plan = _HiddenPlan(X, y_enc, val, len(self.classes_), hidden, self.activation, float(self.dropout),
                               float(self.lr), float(self.weight_decay), int(self.batch_size),
                               self._class_weights(y_enc), int(self.random_state))
            r = run_loop(plan, LoopSettings(epochs=int(self.epochs), seed=int(self.random_state),
                                            patience=int(self.patience) if val is not None else None,
                                            accelerator="cpu", label="head"))
        finally:
            torch.set_num_threads(threads)
        self.history_ = [{k: v for k, v in row.items() if k in ("epoch", "train_loss", "val_accuracy")}
                         for row in r.history]
        self.best_epoch_ = r.best_epoch
        self.module_ = r.model.eval()
        self.n_weights_ = self.module_.n_weights()
        return self


class _HiddenPlan(HeadPlan):
    """The training loop's plan of a one-hidden-layer head on feature arrays (picklable)."""

    def __init__(self, X, y, val, k, hidden, activation, dropout, lr, weight_decay, batch_size, class_weight, seed):
        super().__init__(X, y, val, k, hidden, dropout, lr, weight_decay, batch_size, class_weight, seed)
        self.activation = activation

    def make_module(self) -> torch.nn.Module:
        return HiddenLayerModule(self.X.shape[1], self.k, self.hidden, self.activation, self.dropout)
