"""Run directories: what ``fit`` (and ``compare``, ``adapt``, ``rank``) leave behind, and reading a run back.

- :mod:`.writer`: safe run folders, atomic JSON / CSV, the model a run keeps (no upward imports);
- :mod:`.reader`: :func:`load_run` and :class:`Run` (predict, the whole network for export), every file checked.
"""

from .reader import Run, load_run
from .writer import (MODEL_FORMAT, RUN_MARKER, backbone_reference, default_run_dir, prepare_run_dir, save_model,
                     write_csv, write_json)

__all__ = ["Run", "load_run", "MODEL_FORMAT", "RUN_MARKER", "default_run_dir", "prepare_run_dir", "save_model",
           "write_csv", "write_json", "backbone_reference"]
