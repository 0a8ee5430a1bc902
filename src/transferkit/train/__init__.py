"""Training: the fine-tuning engine (Lightning Fabric), strategies, regularizers, export; from-scratch baselines.

The main entry point is :func:`finetune`::

    from transferkit.train import TrainConfig, finetune

    result = finetune(source, y, splits, "lite0", "gradual", TrainConfig(epochs=10), "runs/x")

Names are imported on first use (Lightning is slow to import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "finetune": "transferkit.train.engine",
    "TrainConfig": "transferkit.train.engine",
    "FinetuneResult": "transferkit.train.engine",
    "StepOutputs": "transferkit.train.engine",
    "load_checkpoint": "transferkit.train.engine",
    "TransferModel": "transferkit.train.model",
    "layer_groups": "transferkit.train.model",
    "STRATEGIES": "transferkit.train.strategies",
    "create_strategy": "transferkit.train.strategies",
    "list_strategies": "transferkit.train.strategies",
    "L2SP": "transferkit.train.regularizers",
    "BSS": "transferkit.train.regularizers",
    "REGULARIZERS": "transferkit.train.regularizers",
    "create_regularizer": "transferkit.train.regularizers",
    "export_model": "transferkit.train.export",
    "load_exported": "transferkit.train.export",
    "EXPORT_FORMATS": "transferkit.train.export",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transferkit.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
