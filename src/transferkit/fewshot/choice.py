"""Which head ``fit`` trains when the head is left to it (``head="auto"``): the logistic probe, or the few-shot default
when there are too few labels per class to hold any out for validation."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FEWSHOT_HEAD", "FEWSHOT_MAX_LABELS", "PROBE_HEAD", "choose_head", "resolve_auto_head"]

#: the head ``fit`` uses with one or two labels per class. Chosen on validation episodes drawn from the *base* classes
#: of benchmarks/bench_fewshot.py (clipart and mnist5k, 5-way 1- and 5-shot, no base features: the situation of a
#: ``fit`` run), never on the novel-class test episodes it reports; see benchmarks/RESULTS.md.
FEWSHOT_HEAD = "ncm-cl2n"
#: up to this many labels per class, ``fit`` picks :data:`FEWSHOT_HEAD` (a split holds validation items only from
#: 5 labels per class on, and with one or two there is nothing to choose logistic regression's C on)
FEWSHOT_MAX_LABELS = 2
#: the head otherwise
PROBE_HEAD = "logreg"

_WHAT = {"ncm-cl2n": "nearest class mean on centred, L2-normalised features (SimpleShot)",
         "ncm-l2n": "nearest class mean on L2-normalised features (SimpleShot)",
         "protonet": "nearest class mean on the raw features (Prototypical Networks' inference)",
         "logreg-l2n": "logistic regression on L2-normalised features",
         "chen-baseline++": "a cosine classifier trained on the labels (Chen et al.'s Baseline++)",
         "chen-baseline": "a linear classifier trained on the labels (Chen et al.'s Baseline)"}


def choose_head(y_train: Any) -> tuple[str, str]:
    """The head for ``head="auto"`` and why, from the training labels.

    Args:
        y_train: the labels the head is trained on (its smallest class decides).

    Returns:
        ``(head name, one-sentence reason)``.

    References:
        Wang et al., "SimpleShot", arXiv:1911.04623, 2019 (the few-shot default); the choice itself is measured in
        benchmarks/bench_fewshot.py.
    """
    _, counts = np.unique(np.asarray(y_train), return_counts=True)
    n = int(counts.min()) if len(counts) else 0
    if n <= FEWSHOT_MAX_LABELS:
        what = _WHAT.get(FEWSHOT_HEAD, FEWSHOT_HEAD)
        return FEWSHOT_HEAD, (
            f"{n} label{'s' if n != 1 else ''} per class to train on (smallest class): too few to hold out a "
            f"validation split for choosing logistic regression's regularisation, so the few-shot head {FEWSHOT_HEAD} is used "
            f"({what}; in 5-way 1- and 5-shot episodes it is the best head or within the 95% interval of the best, "
            f"see benchmarks/RESULTS.md); choose another with head=")
    return PROBE_HEAD, (f"{n} labels per class to train on (smallest class): logistic regression on standardised "
                        "features, its C chosen on the validation split when there is one")


def resolve_auto_head(y_train: Any, params: dict[str, Any] | None = None) -> tuple[str, str]:
    """:func:`choose_head`, checked to take the head parameters ``params`` (``fit_run`` and ``TransferClassifier``
    with ``head="auto"``).

    Raises:
        TransferkitError: the chosen head does not take ``params`` (the message names the head, the reason it was
            chosen and how to name a head instead).
    """
    from ..errors import TransferkitError
    from ..heads import create_head

    head, reason = choose_head(y_train)
    if params:
        try:
            create_head(head, **params)
        except TransferkitError as e:
            raise TransferkitError(f"head='auto' chose {head} ({reason.split(':')[0]}), which does not take "
                                   f"head_params {params}: {e}; name the head with head=") from None
    return head, reason
