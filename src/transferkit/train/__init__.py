"""Training: the fine-tuning engine (Lightning Fabric), strategies, regularizers, export; from-scratch baselines.

The main entry point is :func:`finetune`::

    from transferkit.train import TrainConfig, finetune

    result = finetune(source, y, splits, "lite0", "gradual", TrainConfig(epochs=10), "runs/x")

Names are imported on first use (Lightning is slow to import: no module here imports it at the top). The
package imports its modules (:func:`~transferkit.registry.import_submodules`), so a strategy or objective
registered in its own file (``setfit.py``) is found without editing a list.
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
    "train_setfit": "transferkit.train.setfit",
    "setfit_pairs": "transferkit.train.setfit",
    "CosinePairLoss": "transferkit.train.contrastive",
    "SimCSELoss": "transferkit.train.contrastive",
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


from ..registry import import_submodules  # noqa: E402 - after the lazy names, which the modules do not need

import_submodules(__name__, __path__)  # strategies and objectives registered in their own files
