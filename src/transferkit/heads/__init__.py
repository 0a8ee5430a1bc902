"""Heads: what learns the user's classes on top of a backbone's features.

- :mod:`.shallow`: scikit-learn-style heads trained on cached features (logistic regression; linear and MLP heads
  trained through the training loop), registered in :data:`HEADS`;
- :mod:`.modules`: the ``nn.Module`` form of every head, saved and loaded by kind (:data:`HEAD_MODULES`).
"""

from ..registry import import_submodules
from .modules import HEAD_FORMAT, HEAD_MODULES, HeadModule, load_head, save_head
from .shallow import HEADS, LinearHead, LogisticHead, MLPHead, chunked_moments, create_head

import_submodules(__name__, __path__)  # heads registered in their own files (one file per new head)

__all__ = ["HEADS", "HEAD_MODULES", "HEAD_FORMAT", "HeadModule", "LogisticHead", "LinearHead", "MLPHead",
           "create_head", "chunked_moments", "save_head", "load_head"]
