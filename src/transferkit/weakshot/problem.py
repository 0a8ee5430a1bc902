"""The shared pieces of a weak-shot problem: its settings, its data (the item table's features and the split) and
one method's result; used by the probe-cost pipeline (:mod:`.fit`) and the end-to-end one (:mod:`.e2e`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from ..errors import TransferkitError
from .noise import WeakShotSplit

__all__ = ["WeakShotConfig", "WeakShotData", "MethodResult", "TableItems"]


@dataclass
class WeakShotConfig:
    """Settings of weak-shot training (defaults: the reference code's graph schedule; the rest sized for a CPU and
    chosen on MNIST-M features or on development seeds 100-105 of the benchmark's datasets, never on a reported
    benchmark split).

    Attributes:
        hidden: width of the classifiers' hidden layer (and of the similarity net's trunk).
        dropout: dropout on that hidden layer.
        lr, weight_decay, batch_size: AdamW settings of every head trained on features.
        base_epochs, base_patience: the base classifier (early stopping on held-out base items).
        sim_steps, sim_eval_every, sim_batch_size: the similarity net (items per batch; their squares are pairs).
        novel_epochs: epochs of each method's novel classifier (the last is kept).
        alpha, mu, eye: the graph regulariser (weight, relaxation, weight of pairs with different labels). 3 and
            +8 (the reference code: 0.1 and -4 on raw features): chosen with ``graph_on="outputs"`` on development
            seeds 100-105 (branch s6; a positive ``mu`` keeps only the most similar pairs, as a nearest-neighbour
            graph does; see ``benchmarks/results/bench_weakshot_notes.md``).
        graph_schedule: ``alternate`` (the reference code's: the weighted cross-entropy alone for the first half of
            the epochs, then epochs without and with the graph term in turn) or ``always`` (the term in every epoch).
            ``always``: chosen on development seeds 100-105 (branch s8: the term's gain over the weights alone
            +1.0 point against +0.5 with ``alternate``; see ``benchmarks/results/bench_weakshot_notes.md``).
        graph_normalize: the graph term measures distances between L2-normalised features (see
            :class:`~transferkit.weakshot.objectives.GraphRegularizer`).
        graph_on: what the graph term pulls together: ``features`` (the classifier's hidden features, the paper's)
            or ``outputs`` (its softmax probabilities; see :class:`~transferkit.weakshot.objectives.GraphRegularizer`).
            ``outputs``: on development seeds the only setting whose term was worth +0.5 point over the weights
            alone; on the hidden features every variant tried cost points.
        sim_pair: what the similarity net's pair MLP reads: ``concat`` (the paper's), ``symmetric`` or
            ``difference`` (see :class:`~transferkit.weakshot.similarity.SimilarityNet`).
        sim_init: the similarity net's trunk starts from the base classifier's hidden layer (``base``, the paper's)
            or fresh (``fresh``).
        sim_weighting: how SimTrans's weights read the similarities: ``contrast`` or ``mean`` (the paper's; see
            :func:`~transferkit.weakshot.simtrans.similarity_weights`).
        sim_blend: the similarity net's share of the similarity SimTrans reads (weights and graph term); the rest
            is the calibrated cosine of the frozen features (see
            :class:`~transferkit.weakshot.similarity.BlendedSimilarity`; 1: the net alone, the paper's). 0.25: the
            share whose novel-pair ROC-AUC was highest on development seeds 100-102 (never a reported seed).
        sim_iterations, sim_drop: SimTrans's weights: re-estimates of each class from its weighted items, and the
            share of each class's lowest-weighted items left out (see
            :func:`~transferkit.weakshot.simtrans.similarity_weights`). 0 and 0.1: chosen on development seeds
            100-105 (re-estimating did not help there; of the drop rules tried, leaving out the lowest 10 % lost
            least to plain training on its worst noise cell, the issue's "at or above plain on every split").
        sim_drop_rule: which of each class's items ``sim_drop`` leaves out: ``lowest``, ``confusable``, ``claimed``
            or ``mixture`` (see :func:`~transferkit.weakshot.simtrans.similarity_weights`). ``claimed`` (branch s6):
            its worst development noise cell lost less to plain training than ``lowest``'s (-0.5 against -0.7).
        sim_gate: the level of SimTrans's open-set gate (0: no gate; see
            :func:`~transferkit.weakshot.simtrans.open_set_test`): when the items its weights suspect are claimed by
            another novel class significantly less often than clean-looking items are, the noise is judged open-set,
            which does not hurt plain training (Wei et al., NeurIPS 2021), and SimTrans trains as plain training
            (weights 1, no graph term). 0.05: the usual level, not tuned; adopted on development seeds (branch s8:
            it closed on mnist5k's outlier cells only, where plain training matches the clean subset).
        test_fraction: share of each novel class held out, clean, for testing.
        val_fraction: share of each base class held out to choose the base models.
        outlier_pool: items per outlier source (a fixed pool; runs draw from it).
        image_size: end to end: the input side of images.
        e2e_base_epochs, e2e_epochs, e2e_batch_size, e2e_lr: end to end: the base fine-tuning and each method's
            fine-tuning on the novel classes (the backbone at a tenth of ``e2e_lr``).
        num_workers: data-loading workers end to end (None: the default).
    """

    hidden: int = 128
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    base_epochs: int = 100
    base_patience: int = 10
    sim_steps: int = 200
    sim_eval_every: int = 50
    sim_batch_size: int = 40
    novel_epochs: int = 40
    alpha: float = 3.0
    mu: float = 8.0
    eye: float = 1.0
    graph_schedule: str = "always"
    graph_normalize: bool = True
    graph_on: str = "outputs"
    sim_pair: str = "difference"
    sim_init: str = "base"
    sim_weighting: str = "contrast"
    sim_blend: float = 0.25
    sim_iterations: int = 0
    sim_drop: float = 0.1
    sim_drop_rule: str = "claimed"
    sim_gate: float = 0.05
    test_fraction: float = 0.3
    val_fraction: float = 0.2
    outlier_pool: int = 1000
    image_size: int | None = 96
    e2e_base_epochs: int = 4
    e2e_epochs: int = 4
    e2e_batch_size: int = 16
    e2e_lr: float = 1e-3
    num_workers: int | None = None

    def validate(self) -> "WeakShotConfig":
        """Raise one :class:`TransferkitError` naming every bad setting."""
        numeric = ("dropout", "lr", "weight_decay", "alpha", "mu", "eye", "sim_blend", "sim_drop", "sim_gate",
                   "test_fraction", "val_fraction", "e2e_lr")
        not_numbers = [f"{k} must be a number (got {getattr(self, k)!r})" for k in numeric
                       if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), (int, float))]
        if not_numbers:  # the range checks below cannot compare them
            raise TransferkitError("weak-shot settings: " + "; ".join(not_numbers))
        bad = []
        for k in ("hidden", "batch_size", "base_epochs", "sim_steps", "sim_eval_every", "sim_batch_size",
                  "novel_epochs", "outlier_pool", "e2e_base_epochs", "e2e_epochs", "e2e_batch_size"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                bad.append(f"{k} must be an integer >= 1 (got {v!r})")
        for k in ("lr", "e2e_lr"):
            if not getattr(self, k) > 0:
                bad.append(f"{k} must be > 0 (got {getattr(self, k)!r})")
        if not 0 <= self.dropout < 1:
            bad.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if not self.alpha >= 0:
            bad.append(f"alpha must be >= 0 (got {self.alpha!r})")
        if self.graph_schedule not in ("alternate", "always"):
            bad.append(f"graph_schedule must be 'alternate' or 'always' (got {self.graph_schedule!r})")
        from .objectives import GRAPH_TARGETS
        from .similarity import PAIR_KINDS

        if self.graph_on not in GRAPH_TARGETS:
            bad.append(f"graph_on must be one of {', '.join(GRAPH_TARGETS)} (got {self.graph_on!r})")

        if self.sim_pair not in PAIR_KINDS:
            bad.append(f"sim_pair must be one of {', '.join(PAIR_KINDS)} (got {self.sim_pair!r})")
        if self.sim_init not in ("base", "fresh"):
            bad.append(f"sim_init must be 'base' or 'fresh' (got {self.sim_init!r})")
        if self.sim_weighting not in ("mean", "contrast"):
            bad.append(f"sim_weighting must be 'mean' or 'contrast' (got {self.sim_weighting!r})")
        if not 0 <= self.sim_blend <= 1:
            bad.append(f"sim_blend must be in [0, 1] (got {self.sim_blend!r})")
        if not isinstance(self.sim_iterations, int) or self.sim_iterations < 0:
            bad.append(f"sim_iterations must be an integer >= 0 (got {self.sim_iterations!r})")
        if not 0 <= self.sim_drop < 1:
            bad.append(f"sim_drop must be in [0, 1) (got {self.sim_drop!r})")
        from .simtrans import DROP_RULES

        if self.sim_drop_rule not in DROP_RULES:
            bad.append(f"sim_drop_rule must be one of {', '.join(DROP_RULES)} (got {self.sim_drop_rule!r})")
        elif self.sim_drop_rule not in ("lowest", _DEFAULT_DROP_RULE) and self.sim_drop == 0:
            # the default rule with sim_drop=0 is the paper's setting (no drop); the CLI refuses an explicit
            # --drop-rule with --drop 0, where it knows the rule was asked for
            bad.append(f"sim_drop_rule={self.sim_drop_rule!r} picks which of the sim_drop share are left out, but "
                       "sim_drop=0 leaves none out; give sim_drop above 0 or leave out sim_drop_rule")
        if not 0 <= self.sim_gate < 1:
            bad.append(f"sim_gate must be a test level in [0, 1) (0: no open-set gate; got {self.sim_gate!r})")
        if not 0 <= self.eye <= 1:
            bad.append(f"eye must be in [0, 1] (got {self.eye!r})")
        if not 0 < self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            bad.append(f"test_fraction and val_fraction must be in (0, 1) (got {self.test_fraction}, "
                       f"{self.val_fraction})")
        if bad:
            raise TransferkitError("weak-shot settings: " + "; ".join(bad))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


class TableItems:
    """The items of the item table (the data's, then each outlier pool's), loaded by row: what an item stream
    reads end to end."""

    def __init__(self, parts: list[tuple[str, Any, int]]):
        self.parts = parts
        self.offsets = np.asarray([off for _, _, off in parts])

    def __len__(self) -> int:
        name, src, off = self.parts[-1]
        return off + len(src)

    def load(self, row: int) -> Any:
        k = int(np.searchsorted(self.offsets, row, side="right") - 1)
        _, src, off = self.parts[k]
        return src.load(int(row - off))

    def describe(self, row: int) -> str:
        k = int(np.searchsorted(self.offsets, row, side="right") - 1)
        _, src, off = self.parts[k]
        return src.describe(int(row - off))


@dataclass
class WeakShotData:
    """A weak-shot problem ready to train: the item table's features and the split.

    Attributes:
        X: ``(R, D)`` features of the item table's rows (the data's kept items, then each outlier pool).
        split: the :class:`~transferkit.weakshot.noise.WeakShotSplit` (rows of the table).
        classes: the data's class names.
        parts: ``(name, DataSource, first row)`` of the table's parts.
        backbone: the backbone the features come from.
        data_name: the data's name (for reports).
        skipped: inputs left out as unreadable.
    """

    X: np.ndarray
    split: WeakShotSplit
    classes: list[str]
    parts: list[tuple[str, Any, int]]
    backbone: Backbone
    data_name: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def items(self) -> TableItems:
        """The table's items by row (for training end to end)."""
        return TableItems(self.parts)


@dataclass
class MethodResult:
    """One method's result on the novel classes.

    Attributes:
        method: its name; oracle: whether it read the true labels.
        accuracy: clean novel test accuracy; correct: per test item.
        y_pred: predicted novel class per test item.
        weights_auc: how well its weights rank clean items above noisy ones (None when unknown or constant).
        weights: one per noisy training item.
        seconds: weights + training time.
        model: the trained network (features -> novel logits), eval mode.
        gate: the method's open-set gate test (SimTrans: :func:`~transferkit.weakshot.simtrans.open_set_test`;
            None when it has none).
    """

    method: str
    oracle: bool
    accuracy: float
    correct: np.ndarray
    y_pred: np.ndarray
    weights_auc: float | None
    weights: np.ndarray
    seconds: float
    model: Any = None
    gate: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """JSON-able summary."""
        out = {"method": self.method, "oracle": self.oracle, "accuracy": self.accuracy,
               "weights_auc": self.weights_auc, "seconds": self.seconds}
        if self.gate is not None:
            out["gate"] = self.gate
        return out


_DEFAULT_DROP_RULE = WeakShotConfig.sim_drop_rule  # the class attribute holds the field's default
