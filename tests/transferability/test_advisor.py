"""The strategy advisor's decision table (size x similarity) on constructed cases, and its data entry point."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TINY
from transferkit.errors import ScoreError
from transferkit.transferability.advisor import (LARGE_LABELS_PER_CLASS, SIMILAR_SKILL, TINY_LABELS_PER_CLASS,
                                                 advise, advise_data)


def _task(per_class: int, informative: bool, k: int = 4, d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), per_class)
    X = rng.normal(size=(len(y), d))
    if informative:  # class means far apart: a linear probe is near perfect
        X[:, :k] += 6.0 * np.eye(k)[y]
    return X, y


@pytest.mark.parametrize("per_class,informative,expected", [
    (10, True, "probe"),                            # small & similar: freeze, train the head
    (10, False, "partial"),                         # small & dissimilar: retrain the later layers
    (LARGE_LABELS_PER_CLASS, True, "partial"),      # large & similar: fine-tune the later layers
    (LARGE_LABELS_PER_CLASS, False, "finetune"),    # large & dissimilar: fine-tune everything
    (TINY_LABELS_PER_CLASS - 1, False, "probe"),    # too few labels to fine-tune anything
])
def test_decision_table(per_class, informative, expected):
    X, y = _task(per_class, informative)
    a = advise(X, y)
    assert a.strategy == expected, a.reasons
    assert a.evidence["labels_per_class"] == per_class
    skill = a.evidence["probe_skill"]
    assert (skill >= SIMILAR_SKILL) == informative, skill
    text = " ".join(a.reasons)
    assert f"{per_class:g} labels per class" in text and f"{100 * a.evidence['probe_accuracy']:.1f}%" in text


def test_source_confidence_is_reported_and_one_label_per_class_gives_probe():
    X, y = _task(1, True)
    probs = np.full((len(y), 5), 0.1)
    probs[:, 0] = 0.6
    a = advise(X, y, source_probs=probs)
    assert a.strategy == "probe" and a.evidence["probe_accuracy"] is None
    assert np.isclose(a.evidence["source_confidence"], 0.6) and "60% confident" in " ".join(a.reasons)
    with pytest.raises(ScoreError, match="at least 2 classes"):
        advise(X[:1], y[:1])
    with pytest.raises(ScoreError, match="one label per row"):
        advise(X, y[:-1])


def test_advise_data_uses_the_labelled_split_and_the_cache(image_folder, tmp_path):
    a = advise_data(str(image_folder), TINY, labels_per_class=8, cache_dir=tmp_path)
    assert a.strategy in ("probe", "partial", "finetune") and a.evidence["labels_per_class"] == 8
    logs = []
    again = advise_data(str(image_folder), TINY, labels_per_class=8, cache_dir=tmp_path, log=logs.append)
    assert again.to_dict() == a.to_dict() and "cache hit" in logs[0]
