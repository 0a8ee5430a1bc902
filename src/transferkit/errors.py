"""Errors raised by transferkit.

Every user mistake raises a :class:`TransferkitError` subclass whose message says what was received,
what is allowed, and how to fix it. The CLI turns these into one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "TransferkitError",
    "DataError",
    "BadInputError",
    "UnknownNameError",
    "BackboneUnavailableError",
    "ModalityError",
    "NotFittedError",
    "OutputError",
    "CacheError",
    "ScoreError",
    "TrainingError",
    "ResumeMismatchError",
    "ExportError",
    "bad_inputs_message",
    "TransferkitWarning",
]


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class DataError(TransferkitError, ValueError):
    """A data source is malformed: missing column, empty class, one class, missing labels, ..."""


class BadInputError(DataError):
    """One or more inputs (images, texts) could not be read.

    Attributes:
        bad: list of ``(item, reason)`` pairs naming every input that failed.
    """

    def __init__(self, message: str, bad: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.bad = list(bad or [])


class UnknownNameError(TransferkitError, KeyError):
    """A name (backbone, dataset, head, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BackboneUnavailableError(TransferkitError, RuntimeError):
    """A backbone is registered but cannot be built here (package missing, no network, bad file)."""


class ModalityError(TransferkitError, ValueError):
    """Data of one modality (text / image) given to a backbone of the other."""


class NotFittedError(TransferkitError, AttributeError):
    """An estimator was used before ``fit``."""


class OutputError(TransferkitError, OSError):
    """An output location cannot be written."""


class CacheError(TransferkitError, OSError):
    """The feature cache is unusable (unwritable, corrupt)."""


class ScoreError(TransferkitError, ValueError):
    """Inputs a transferability score or domain distance cannot use (one class, NaN features, wrong shapes, ...)."""


class TrainingError(TransferkitError, RuntimeError):
    """Training cannot go on: the loss became NaN/inf, or the run directory holds a checkpoint of another run."""


class ResumeMismatchError(TrainingError, ValueError):
    """``resume=True`` with settings that differ from those the checkpoint was made with.

    Attributes:
        differences: ``{key: (value in the checkpoint, value now)}`` for every setting that differs.
    """

    def __init__(self, message: str, differences: dict | None = None):
        super().__init__(message)
        self.differences = dict(differences or {})


class ExportError(TransferkitError, RuntimeError):
    """A model could not be exported, or the exported file does not reproduce the PyTorch outputs."""


def bad_inputs_message(bad) -> str:
    """One message for unreadable inputs: how many, the first three with their reasons, and how to go on.

    Args:
        bad: ``(index, input, reason)`` triples.
    """
    first = "; ".join(f"{b[1]}: {b[2]}" for b in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return (f"{len(bad)} input(s) could not be read: {first}{more}. Fix or remove them, or leave them out with "
            'on_bad_input="skip" (features already extracted are kept in the cache)')


class TransferkitWarning(UserWarning):
    """Something a user should know that is not an error, e.g. a table read with a guessed text encoding.

    The CLI prints these as one ``note:`` line on stderr.
    """
