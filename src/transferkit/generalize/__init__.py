"""Domain generalisation: several labelled training domains, the target unseen until it is scored.

Methods (:data:`~transferkit.generalize.objectives.DG_METHODS`): ``erm``, ``coral``, ``groupdro``, ``irm``, ``vrex``,
``mixup`` (at probe cost on cached features or end to end) and ``mixstyle`` (end to end). Checkpoints are chosen
on a validation split of the training domains (DomainBed's honest selection); the oracle (target-domain
validation) is reported beside it, labelled as such. :func:`generalize` runs leave-one-domain-out experiments;
``transferkit generalize`` is its command line.
"""

from .experiment import DGResult, generalize, load_domains
from .mixstyle import MixStyle, insert_mixstyle
from .objectives import (CORAL, DG_METHODS, ERM, IRM, DGObjective, GroupDRO, MixStyleERM, Mixup, VREx,
                         coral_penalty, create_dg_objective, irm_penalty, list_dg_methods)
from .trainer import DGConfig, DGFit, DomainValidation, make_dg_net, split_domain, train_generalizer

__all__ = ["DG_METHODS", "DGObjective", "ERM", "CORAL", "GroupDRO", "IRM", "VREx", "Mixup", "MixStyleERM", "MixStyle",
           "insert_mixstyle", "coral_penalty", "irm_penalty", "create_dg_objective", "list_dg_methods", "DGConfig",
           "DGFit", "DomainValidation", "make_dg_net", "split_domain", "train_generalizer", "generalize", "DGResult",
           "load_domains"]
