"""Safe transfer: do not inherit a pretrained teacher's defects.

- :mod:`~transferkit.safe.remos`: ReMoS, pruning the teacher's weights least relevant to the student before
  fine-tuning (``fit --strategy finetune --safe remos --prune 0.05``);
- :mod:`~transferkit.safe.triggers`: patch triggers, poisoning a training set, attack success rate;
- :mod:`~transferkit.safe.inspect`: what can be checked offline about a downloaded backbone
  (``transferkit inspect-backbone``).
"""

from .remos import (SAFE_METHODS, LayerCoverage, RemosReport, apply_remos, check_safe, choose_prune,
                    neuron_coverage, remos_prune, remos_scores)

__all__ = ["SAFE_METHODS", "LayerCoverage", "RemosReport", "apply_remos", "check_safe", "choose_prune",
           "neuron_coverage", "remos_prune", "remos_scores"]
