"""Domain adaptation: a labelled source domain, an unlabelled (or sparsely labelled) target domain.

- :class:`DomainAdapter`: one estimator over every method, on cached features or end to end.
- :func:`adapt_compare`: several methods on the same splits and seeds, a table and an HTML report
  (``transferkit adapt``).
- Building blocks: alignment losses (:mod:`.losses`), deep methods as loss terms (:mod:`.methods`) over one loop
  (:mod:`.trainer`), closed-form feature-space methods (:mod:`.feature_space`), instance weighting and boosting
  (:mod:`.instance`), checkpoint selection without target labels (:mod:`.selection`).
"""

from ..registry import import_submodules
from .adapter import DomainAdapter, all_methods, list_all_methods
from .experiment import AdaptResult, adapt_compare
from .methods import METHODS, create_method, list_methods
from .trainer import AdaptConfig, AdaptNet, train_adapter

import_submodules(__name__, __path__)  # methods registered in their own files (one file per new method)

__all__ = ["DomainAdapter", "adapt_compare", "AdaptResult", "AdaptConfig", "AdaptNet", "train_adapter", "METHODS",
           "create_method", "list_methods", "list_all_methods", "all_methods"]
