"""Multitask learning: several tasks (classification and regression, each with its own missing labels) over one
shared trunk (hard parameter sharing), the tasks' losses combined by a weighting, every result set beside the
single-task model of each task with Δm and negative transfer flagged.

- :mod:`.weighting`: the registry :data:`WEIGHTINGS` (one file per weighting: ``equal``, ``normalised``,
  ``uncertainty``, ``gradnorm``, ``dwa``, ``random``);
- :mod:`.tasks`: tasks from table columns or built-in datasets, the split;
- :mod:`.objective`: the multitask loss and validation;
- :mod:`.train`: training at probe cost and end to end, through the loop;
- :mod:`.metrics`: per-task metrics, relative changes with intervals, Δm;
- :mod:`.run`: :func:`fit_multitask`, what ``transferkit fit DATA --tasks ...`` runs.

The head (:class:`~transferkit.heads.multitask.MultitaskHead`) lives with the other heads, so a run made with it
loads and predicts every task.
"""

from ..registry import import_submodules
from .metrics import compare_to_single, delta_m, relative_change, task_metrics
from .objective import MultitaskLoss, MultitaskValidation
from .run import MultitaskResult, compare_weightings, fit_multitask, parse_weightings
from .tasks import BUILTIN_TASKS, MultitaskSplits, Task, TaskData, load_tasks, split_items
from .train import MultitaskConfig, MultitaskFit, train_multitask, train_multitask_end_to_end
from .weighting import WEIGHTINGS, Weighting, WeightingStep, create_weighting

import_submodules(__name__, __path__)  # weightings registered in their own files

__all__ = ["WEIGHTINGS", "Weighting", "WeightingStep", "create_weighting", "MultitaskLoss", "MultitaskValidation",
           "MultitaskConfig", "MultitaskFit", "train_multitask", "train_multitask_end_to_end", "MultitaskResult",
           "fit_multitask", "compare_weightings", "parse_weightings", "Task", "TaskData", "load_tasks", "split_items",
           "MultitaskSplits", "BUILTIN_TASKS", "compare_to_single", "delta_m", "relative_change", "task_metrics"]
