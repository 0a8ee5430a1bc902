"""Few-shot and one-shot transfer: episodic evaluation of heads over novel classes, and the head ``fit`` uses when
there are one or two labels per class.

- :mod:`.episodes`: N-way K-shot episodes (:func:`sample_episodes`), :func:`evaluate_episodes` (every head on the same
  episodes, mean accuracy ± 95% interval);
- :mod:`.run`: :func:`fewshot_run`, the ``transferkit fewshot`` job (features, episodes, a run folder);
- :mod:`.choice`: :func:`choose_head`, ``fit``'s head when it is left to choose.

The heads themselves (nearest class mean with SimpleShot's normalisations, Prototypical Networks' inference form,
logistic regression on L2-normalised features, Chen et al.'s Baseline and Baseline++) live with the other heads in
:mod:`transferkit.heads.fewshot`, registered in :data:`~transferkit.heads.HEADS`, so that a run saved with one loads
wherever :mod:`transferkit.heads` is imported.
"""

from ..registry import import_submodules
from .choice import FEWSHOT_HEAD, FEWSHOT_MAX_LABELS, FEWSHOT_PARAMS, auto_head_params, choose_head, resolve_auto_head
from .episodes import (DEFAULT_EPISODE_HEADS, Episodes, FewShotResult, HeadSpec, check_episode_settings,
                       confidence_interval, evaluate_episodes, sample_episodes)
from .run import FewShotRun, fewshot_run

import_submodules(__name__, __path__)

__all__ = ["evaluate_episodes", "sample_episodes", "Episodes", "FewShotResult", "HeadSpec", "fewshot_run",
           "FewShotRun", "choose_head", "resolve_auto_head", "FEWSHOT_HEAD", "FEWSHOT_MAX_LABELS", "FEWSHOT_PARAMS",
           "auto_head_params",
           "DEFAULT_EPISODE_HEADS",
           "check_episode_settings", "confidence_interval"]
