"""Knowing what to transfer, without training: transferability scores, domain distances, the backbone advisor.

    from transferkit.transferability import rank_backbones, ranking_table, logme

Scores take features (and for LEEP / NCE the source model's probabilities) and labels; ``rank_backbones`` gets
the features of several backbones through the feature cache and ranks them; ``advise`` / ``advise_data`` say
whether to train only a head or fine-tune part or all of the backbone.
"""

from .advisor import Advice, advise, advise_data
from .domain import domain_distances, mmd, proxy_a_distance
from .rank import rank_backbones, ranking_table
from .scores import SCORES, Scores, compute_scores, h_score, knn_accuracy, leep, logme, nce, probe_accuracy
from .source import source_probabilities

__all__ = ["SCORES", "Advice", "Scores", "advise", "advise_data", "compute_scores", "domain_distances", "h_score", "knn_accuracy", "leep", "logme",
           "mmd", "nce", "probe_accuracy", "proxy_a_distance", "rank_backbones", "ranking_table",
           "source_probabilities"]
