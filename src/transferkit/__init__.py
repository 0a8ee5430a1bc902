"""transferkit: transfer learning for images and text, done right.

A pretrained backbone turns inputs into features once (cached on disk); a small head learns the new task
from a few labels; every result stands beside a from-scratch baseline.

The public API is small::

    from transferkit import TransferClassifier, DomainAdapter, load_run, list_backbones, list_datasets

Names are imported on first use, so ``transferkit --help`` starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TransferClassifier": "transferkit.estimator",
    "DomainAdapter": "transferkit.adapt",
    "adapt_compare": "transferkit.adapt",
    "TransferkitError": "transferkit.errors",
    "create_backbone": "transferkit.backbones",
    "list_backbones": "transferkit.backbones",
    "register_backbone": "transferkit.backbones",
    "list_datasets": "transferkit.data",
    "load_data": "transferkit.data",
    "load_run": "transferkit.runs",
    "fit_run": "transferkit.pipeline",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
