"""Semi-supervised transfer: a few labels and many unlabelled inputs (FixMatch, FlexMatch, FreeMatch, SoftMatch,
label propagation pseudo-labels; self-training and label spreading as baselines), at the cost of a probe on cached
features of augmented views, or end to end."""

from ..registry import import_submodules
from .algorithms import SEMI_METHODS, create_semi_objective
from .masks import MASKS, FixedThreshold, FlexThreshold, GraphWeights, SelfAdaptiveThreshold, TruncatedGaussian
from .objective import GraphTerm, PseudoLabelConsistency

import_submodules(__name__, __path__)

__all__ = ["SEMI_METHODS", "MASKS", "create_semi_objective", "PseudoLabelConsistency", "GraphTerm", "FixedThreshold",
           "FlexThreshold", "SelfAdaptiveThreshold", "TruncatedGaussian", "GraphWeights"]
