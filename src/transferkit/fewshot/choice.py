"""Which head ``fit`` trains when the head is left to it (``head="auto"``): the logistic probe, or the few-shot default
when there are too few labels per class to hold any out for validation."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FEWSHOT_HEAD", "FEWSHOT_PARAMS", "FEWSHOT_MAX_LABELS", "PROBE_HEAD", "choose_head", "auto_head_params",
           "resolve_auto_head"]

#: the head ``fit`` uses with 1-4 labels per class and no validation split: multinomial logistic regression on
#: L2-normalised features (Tian et al., ECCV 2020) with weak regularisation, C=100 (:data:`FEWSHOT_PARAMS`). Chosen
#: by a rule fixed before any test episode was read, on *validation* episodes drawn from the base classes of
#: benchmarks/bench_fewshot.py (clipart and mnist5k, 5-way 1- and 5-shot, no base features: the situation of a
#: ``fit`` run): the head within the best head's 95% interval in all 4 validation cells with the highest mean
#: validation accuracy, among heads whose prediction does not depend on the scale of the features. logreg-l2n with
#: C=100 was the best or within the interval in all four (C=1, Tian et al.'s value, and ncm-cl2n, the earlier
#: default, fell behind at 5 shots on mnist5k by 3-4 points: on L2-normalised features C=1 is strong
#: regularisation, about C=0.004 on raw lite0 features of norm 15-17). See benchmarks/RESULTS.md for the test
#: episodes.
FEWSHOT_HEAD = "logreg-l2n"
#: the parameters of :data:`FEWSHOT_HEAD` when ``fit`` picks it (a user's ``head_params`` override them)
FEWSHOT_PARAMS: dict[str, Any] = {"C": 100.0}
#: up to this many training labels per class, and without validation data, ``fit`` picks :data:`FEWSHOT_HEAD`.
#: Without validation, logistic regression trains with a fixed C=1 on standardised features, which at 1-4 labels per
#: class scores 8-21 points below the few-shot head (``fit`` on mnist5k, see benchmarks/RESULTS.md); a split holds
#: validation items from 5 labels per class on, and then C chosen on them closes the gap.
FEWSHOT_MAX_LABELS = 4
#: the head otherwise
PROBE_HEAD = "logreg"

_WHAT = {"ncm-cl2n": "nearest class mean on centred, L2-normalised features (SimpleShot)",
         "ncm-l2n": "nearest class mean on L2-normalised features (SimpleShot)",
         "protonet": "nearest class mean on the raw features (Prototypical Networks' inference)",
         "logreg-l2n": "logistic regression on L2-normalised features, C=100",
         "chen-baseline++": "a cosine classifier trained on the labels (Chen et al.'s Baseline++)",
         "chen-baseline": "a new linear classifier trained with SGD on the labelled features, Chen et al. 2019's "
                          "Baseline"}


def choose_head(y_train: Any, validation: bool = False) -> tuple[str, str]:
    """The head for ``head="auto"`` and why, from the training labels.

    Args:
        y_train: the labels the head is trained on (its smallest class decides).
        validation: whether there are validation labels (to choose logistic regression's C on).

    Returns:
        ``(head name, one-sentence reason)``.

    References:
        Wang et al., "SimpleShot", arXiv:1911.04623, 2019, and Tian et al., ECCV 2020 (the few-shot heads); the
        choice itself is measured in benchmarks/bench_fewshot.py.
    """
    _, counts = np.unique(np.asarray(y_train), return_counts=True)
    n = int(counts.min()) if len(counts) else 0
    labels = f"{n} label{'s' if n != 1 else ''} per class to train on (smallest class)"
    if n <= FEWSHOT_MAX_LABELS and not validation:
        what = _WHAT.get(FEWSHOT_HEAD, FEWSHOT_HEAD)
        return FEWSHOT_HEAD, (
            f"{labels}: too few to hold out a validation split for choosing the probe's regularisation, "
            f"so the few-shot head {FEWSHOT_HEAD} is used ({what}; head and C fixed from validation episodes of "
            "base classes, see benchmarks/RESULTS.md); choose another with head=")
    if validation:
        return PROBE_HEAD, f"{labels}: logistic regression on standardised features, its C chosen on validation"
    return PROBE_HEAD, (f"{labels}: logistic regression on standardised features (C=1: no validation split to "
                        "choose it on)")


def auto_head_params(head: str) -> dict[str, Any]:
    """The parameters ``head="auto"`` gives the head it picked (:data:`FEWSHOT_PARAMS` for the few-shot head)."""
    return dict(FEWSHOT_PARAMS) if head == FEWSHOT_HEAD else {}


def resolve_auto_head(y_train: Any, params: dict[str, Any] | None = None,
                      validation: bool = False) -> tuple[str, str]:
    """:func:`choose_head`, checked to take the head parameters ``params`` (``fit_run`` and ``TransferClassifier``
    with ``head="auto"``). The chosen head's own defaults (:func:`auto_head_params`) are added to ``params`` in
    place where the caller gave none, so the caller creates the head with ``create_head(head, **params)``.

    Raises:
        TransferkitError: the chosen head does not take ``params`` (the message names the head, the reason it was
            chosen and how to name a head instead).
    """
    from ..errors import TransferkitError
    from ..heads import create_head

    head, reason = choose_head(y_train, validation)
    if params:
        try:
            create_head(head, **params)
        except TransferkitError as e:
            raise TransferkitError(f"head='auto' chose {head} ({reason.split(':')[0]}), which does not take "
                                   f"head_params {params}: {e}; name the head with head=") from None
    if params is not None:
        for k, v in auto_head_params(head).items():
            params.setdefault(k, v)
    return head, reason
