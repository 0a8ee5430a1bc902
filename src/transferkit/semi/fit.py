"""Semi-supervised training at the cost of a probe: cached features of augmented views and a head trained through
the training loop with a consistency objective.

The backbone stays frozen. For every labelled and unlabelled item the features of ``draws`` weak and ``draws``
strong augmentations are extracted once into the feature cache (each draw is seeded by the item, so they are
reused across runs, methods and seeds); every step then takes one draw of each view per item
(:class:`~transferkit.train.streams.DrawStream`). The head (by default a cosine classifier on centred, L2-normalised
features, started from a logistic regression on the labelled items: :class:`SemiConfig`) is trained with
cross-entropy on the labelled items' views plus the method's pseudo-label consistency term on the unlabelled ones
and, by default, label propagation's pseudo-labels from the frozen features' neighbour graph (Iscen et al. 2019);
the reported model is the exponential moving average of its weights, as in FixMatch; by default three such heads
are trained with different seeds and predict the mean of their probabilities (a deep ensemble,
``SemiConfig(ensemble=3)``). Minutes of extraction, then seconds per method: no peer library offers
semi-supervised learning at this cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError, TransferkitError
from ..train.loop import LoopSettings, Plan, ValidationAccuracy, run_loop
from ..train.objectives import CrossEntropy, Objectives
from ..train.streams import DrawStream, TensorStream
from .algorithms import SEMI_METHODS, create_semi_objective
from .masks import GraphWeights, scaled_momentum
from .objective import GraphTerm, PseudoLabelConsistency, checked_sharpen, checked_smoothing, checked_teacher_decay

__all__ = ["SemiConfig", "SemiFit", "view_banks", "view_averaged_proba", "head_proba", "train_semi_head",
           "logistic_rows", "member_seed", "HEADS", "INITS", "LABELLED_VIEWS", "CALIBRATIONS", "ALIGN_STARTS"]

#: the heads a semi-supervised run trains (see :class:`SemiConfig`)
HEADS = ("cosine", "linear")
#: how the cosine head starts
INITS = ("prototypes", "logistic", "random")
#: temperature scaling of the head (see :class:`SemiConfig`)
CALIBRATIONS = ("none", "threshold", "head")
#: the labelled items' views the supervised term may draw from
LABELLED_VIEWS = ("weak", "strong", "eval")
#: where distribution alignment's running estimate starts (see :class:`SemiConfig`)
ALIGN_STARTS = PseudoLabelConsistency.ALIGN_STARTS


@dataclass
class SemiConfig:
    """Settings of :func:`train_semi_head` (FixMatch's recipe scaled to a head on features; see the fields).

    Attributes:
        steps: optimisation steps (the paper runs 2^20 on a ResNet; a head on features is trained for 1000, scaled to
            a CPU: on clipart at 4 labels per class, 2000 steps gave the same accuracy on the unlabelled pool of a
            development seed, see benchmarks/RESULTS.md).
        eval_every: steps between evaluations (and checkpoints with a run directory).
        batch_size: labelled items per step.
        mu: unlabelled items per labelled item in a step (7, as in the paper).
        optimizer: ``sgd`` (FixMatch's: Nesterov momentum 0.9, learning rate ``lr * cos(7 pi k / 16 K)`` at step k of
            K) or ``adamw`` (constant rate). SGD also keeps the labelled-only solution close to the logistic probe's,
            where Adam's per-coordinate steps on a few labelled items drift towards a sign-like, weaker direction.
        lr, weight_decay: the optimizer's settings (0.03 and 5e-4 as in FixMatch).
        head: ``cosine`` (the default): a cosine classifier, ``scale * cos(z, w_k)``, on SimpleShot's centred,
            L2-normalised features ``z`` (CL2N; the centre is the mean of the labelled and unlabelled items' features,
            label-free), as Chen et al.'s Baseline++ (ICLR 2019) and SimpleShot (Wang et al. 2019) found best for
            few labels on frozen features; or ``linear``: a linear layer (``hidden``: an MLP) on standardised
            features, the head of the first version (see benchmarks/results/bench_semi_notes.md for both).
        scale: the cosine head's logit scale (30: at 10 a 12-way cosine head's confidence never reached FixMatch's
            0.95 on the development seeds, so no pseudo-label passed).
        init: ``prototypes``: the cosine head starts as the nearest-class-mean classifier of the labelled items
            (weight imprinting, Qi, Brown & Lowe, CVPR 2018), so the first pseudo-labels are the few-shot head's, not
            a random head's; ``logistic``: its rows are the unit-normalised rows of a logistic regression fitted on
            the labelled items' CL2N eval-view features (no intercept, C=100 as ``fit``'s few-shot probe, scikit-learn
            L-BFGS), so the labelled-only start is a logistic probe on the head's own features rather than the class
            means (the default since the fourth round of benchmarks/results/bench_semi_notes.md: on the development
            seeds it raised the nine cells' mean by 0.7 points, FixMatch +1.9 on clipart at 4 labels per class, no
            cell down by more than 0.4; with one labelled class a logistic regression cannot be fitted and the
            class means are used); ``random``: small random weights.
        labelled_views: the labelled items' cached views the supervised term draws from (``weak``, ``strong``,
            ``eval``): with a handful of labels the strong draws are more labelled data (``("weak",)``: FixMatch's
            choice, the first version's).
        align: ReMixMatch's distribution alignment of the weak-view probabilities before the mask and the
            pseudo-labels (Berthelot et al., ICLR 2020), towards the labelled class shares (with as many labels per
            class, SoftMatch's uniform alignment, Chen et al., ICLR 2023).
        align_start: where the alignment's running estimate of the model's class distribution starts: ``target``
            (the labelled class shares) or ``batch`` (the first unlabelled batch's mean probabilities, as USB's
            ``DistAlignEMAHook``); :meth:`~.objective.PseudoLabelConsistency.set_alignment`. None (the default since
            the sixth round of benchmarks/results/bench_semi_notes.md): the method's own (its registry entry's
            ``align_start``: ``batch`` for SoftMatch, whose uniform alignment USB implements so; ``target`` for the
            others, whose papers have no alignment). On fresh development seeds SoftMatch's own start raised its
            three-cell mean pool accuracy by 0.2 points (clipart 10 labels per class -0.2, 4 labels +0.3, mnist5k
            +0.5); ``batch`` for every method cost FixMatch 1.5 points on clipart at 4 labels per class.
        align_momentum: that estimate's momentum (0.999, USB's); None: :func:`~.masks.scaled_momentum` of the run's
            steps, as the masks' running means (0.98 for 1000 steps).
        calibrate: temperature scaling (Guo et al., ICML 2017; :mod:`.calibration`): ``T`` is fitted once, before
            training, on the labelled items' weak views under the class-mean start with each item left out of its
            class mean (needs the cosine head and two labels in some class; otherwise ``T = 1``). ``threshold``: the
            weak-view logits are divided by ``T`` before the masks and pseudo-labels (the head is unchanged);
            ``head``: the head's scale becomes ``scale / T``, so it trains and predicts at the calibrated scale;
            ``none`` (the default, the papers' form): neither. On the development seeds ``head`` lifted FlexMatch
            and FreeMatch on clipart (up to +4 points on the pool) but cost them 8-15 points on mnist5k, and cost
            FixMatch on clipart (its fixed 0.95 is then out of reach), so it is an option, not the default
            (benchmarks/results/bench_semi_notes.md).
        smoothing: CoMatch's memory-smoothed pseudo-labels (Li, Xiong & Hoi, ICCV 2021, eq. 4) on the frozen
            features' neighbour graph: each weak-view prediction becomes ``alpha p + (1 - alpha)`` times the mean of
            its ``neighbours`` nearest pool items' latest pseudo-label distributions (affinity ``cos ** 3`` on the
            head's CL2N eval-view features, Iscen et al. CVPR 2019's graph), before every method's mask
            (:class:`~.objective.PseudoLabelConsistency`). ``alpha``: 0.9 in the paper; 1 (the default): off.
        neighbours: the graph's neighbours per pool item (10).
        graph_weight: label propagation's term (Iscen et al., CVPR 2019: the graph's pseudo-labels weighted by
            certainty and class, :class:`~.objective.GraphTerm`) added to the method's loss with this weight; 0:
            none (the papers' form); the ``labelprop`` method is that term alone. None (the default): 1 with the
            cosine head, 0 with the ``linear`` one (the graph is built on the cosine head's features). The weight 1
            is the default since the fifth round of benchmarks/results/bench_semi_notes.md: on the development seeds
            it raised the mean of the twelve (cell, method) pool accuracies by 0.5 points, up to +2.3 for SoftMatch
            on clipart at 4 labels per class, no cell down by more than 0.5. The graph costs ``N^2 D`` for a pool of
            ``N`` items (a second on mnist5k's 3,460).
        sharpen: soft pseudo-labels (USB's ``use_hard_label=False``): the strong view's target is the weak view's
            distribution sharpened at this temperature (:class:`~.objective.PseudoLabelConsistency`); None (the
            default, the papers' form): hard pseudo-labels.
        teacher_decay: pseudo-labels from an EMA teacher (Mean Teacher, Tarvainen & Valpola, NeurIPS 2017; Unbiased
            Teacher, Liu et al., ICLR 2021): the weak views are predicted by the moving average of the head's
            weights at this decay (with the usual warm-up), the strong views by the head
            (:class:`~.objective.PseudoLabelConsistency`); None (the default, the papers' form): the head
            pseudo-labels its own weak views.
        hidden: hidden layers of the ``linear`` head (``()``: linear): on the development seed a 512-unit hidden
            layer was 4x slower and 4-6 points worse on the unlabelled pool.
        dropout: dropout of the ``linear`` head.
        ema_decay: the weights' moving average used for evaluation and the returned head (0.999 as in the paper,
            with the usual warm-up); None: the raw weights.
        draws: cached draws of each augmented view per item (8, the default since the fifth round of
            benchmarks/results/bench_semi_notes.md: against 4 draws, with the label propagation term, it raised the
            mean of the twelve (cell, method) development pool accuracies by 0.7 points, no cell down by more than
            0.5; the cost is one extraction of 8 weak and 8 strong views of every input instead of 4 and 4, about 17
            forward passes per image in all, e.g. 90 s more for clipart's 620 images on this 2-core machine).
        patience: stop after this many evaluations without a better validation accuracy (None: never).
        seed: seeds the head, the draws picked and the batches.
        tta: test-time augmentation over the cached views (Krizhevsky, Sutskever & Hinton, NeurIPS 2012; Shanmugam,
            Blalock, Balakrishnan & Guttag, "Better Aggregation in Test-Time Augmentation", ICCV 2021): the test
            items' class probabilities are the mean of the head's softmax over the eval (centre) view and the
            ``draws`` cached weak views (:func:`view_averaged_proba`), instead of the eval view alone. At probe cost
            the test items' weak views are already in the cache (:func:`view_banks` extracts every item of the
            data), so it costs ``draws`` more head evaluations per item, nothing more. It applies to the test
            predictions :func:`~.run.semi_fit` reports only: a saved run's ``predict`` on new inputs still uses
            the eval view alone (averaging there would need ``draws`` more backbone passes per input), so with
            ``tta=True`` the reported test predictions are **not** what the saved run predicts for the same
            images. False (the default): the eval view alone, as the saved run. On fresh development seeds
            (seventh round of benchmarks/results/bench_semi_notes.md) it raised the mean of the twelve (cell,
            method) development test accuracies by 1.3 points (0 to +2.4 per cell, none down), and the logistic
            probe's by 0.5-1.3 points with the same averaging.
        ensemble: deep ensembles (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017) at probe cost: this many heads
            of the same method are trained on the same cached views, member ``k`` with the seed ``seed + 1000 k``
            (member 0 is the head a single run trains), and the returned head predicts the mean of their class
            probabilities (:class:`~transferkit.heads.ensemble.MeanProbabilityModule`; a saved run holds every
            member and predicts with the mean). The members share the start and the label propagation graph and
            differ in their batches and the cached draws picked. Costs ``ensemble`` times the head training
            (seconds at probe cost). 3 (the default since the eighth round of benchmarks/results/bench_semi_notes.md:
            on twelve fresh development seeds it raised the mean of the twelve (cell, method) test accuracies, with
            test-time averaging, by 0.56 points (-0.2 to +1.6 per cell; +1.3 to +1.6 for FlexMatch, FreeMatch and
            SoftMatch on clipart at 4 labels per class, 0.0 for FixMatch)); 1: one head, the form before.
    """

    steps: int = 1000
    eval_every: int = 100
    batch_size: int = 32
    mu: int = 7
    optimizer: str = "sgd"
    lr: float = 0.03
    weight_decay: float = 5e-4
    head: str = "cosine"
    scale: float = 30.0
    init: str = "logistic"
    labelled_views: tuple[str, ...] = ("weak", "strong", "eval")
    align: bool = True
    align_start: str | None = None
    align_momentum: float | None = 0.999
    calibrate: str = "none"
    smoothing: float = 1.0
    neighbours: int = 10
    sharpen: float | None = None
    graph_weight: float | None = None
    teacher_decay: float | None = None
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    ema_decay: float | None = 0.999
    draws: int = 8
    patience: int | None = None
    seed: int = 0
    tta: bool = False
    ensemble: int = 3

    def validate(self) -> "SemiConfig":
        """Raise one clear error for settings that cannot work."""
        bad = []
        for k in ("steps", "eval_every", "batch_size", "mu", "draws", "ensemble"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad.append(f"{k} must be an integer >= 1 (got {v!r})")
        if self.optimizer not in ("sgd", "adamw"):
            bad.append(f"optimizer must be 'sgd' or 'adamw' (got {self.optimizer!r})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr must be a positive number (got {self.lr!r})")
        if self.head not in HEADS:
            bad.append(f"head must be one of {', '.join(HEADS)} (got {self.head!r})")
        if self.init not in INITS:
            bad.append(f"init must be one of {', '.join(INITS)} (got {self.init!r})")
        elif self.init != "random" and self.head != "cosine":
            bad.append(f"init={self.init!r} needs head='cosine' (give init='random' with a linear head)")
        if self.align_start is not None and self.align_start not in ALIGN_STARTS:
            bad.append(f"align_start must be one of {', '.join(ALIGN_STARTS)} or None (got {self.align_start!r})")
        if self.align_momentum is not None and (isinstance(self.align_momentum, bool)
                                                or not isinstance(self.align_momentum, (int, float))
                                                or not 0 <= self.align_momentum < 1):
            bad.append(f"align_momentum must be in [0, 1) or None (got {self.align_momentum!r})")
        if self.calibrate not in CALIBRATIONS:
            bad.append(f"calibrate must be one of {', '.join(CALIBRATIONS)} (got {self.calibrate!r})")
        elif self.calibrate != "none" and self.head != "cosine":
            bad.append(f"calibrate={self.calibrate!r} needs head='cosine' (the temperature is fitted on its class-mean "
                       "start)")
        checked = {}
        for name, check in (("smoothing", checked_smoothing), ("sharpen", checked_sharpen),
                            ("teacher_decay", checked_teacher_decay)):  # the objective's own checks
            try:
                checked[name] = check(getattr(self, name))
            except TransferkitError as e:
                bad.append(str(e))
        if checked.get("smoothing", 1.0) < 1 and self.head != "cosine":
            bad.append(f"smoothing={self.smoothing!r} needs head='cosine' (the graph is built on its CL2N features)")
        if self.graph_weight is None:
            pass
        elif isinstance(self.graph_weight, bool) or not isinstance(self.graph_weight, (int, float)) \
                or not 0 <= self.graph_weight < math.inf:
            bad.append(f"graph_weight must be a number >= 0 or None (got {self.graph_weight!r})")
        elif self.graph_weight > 0 and self.head != "cosine":
            bad.append("graph_weight > 0 needs head='cosine' (the graph is built on its CL2N features)")
        if not isinstance(self.neighbours, int) or isinstance(self.neighbours, bool) or self.neighbours < 1:
            bad.append(f"neighbours must be an integer >= 1 (got {self.neighbours!r})")
        if self.head == "cosine" and tuple(self.hidden):
            bad.append(f"hidden layers {tuple(self.hidden)} need head='linear' (the cosine head is one layer)")
        if not (isinstance(self.scale, (int, float)) and self.scale > 0 and math.isfinite(self.scale)):
            bad.append(f"scale must be a positive number (got {self.scale!r})")
        views = tuple(self.labelled_views) if isinstance(self.labelled_views, (list, tuple)) else ()
        if not views or any(v not in LABELLED_VIEWS for v in views):
            bad.append(f"labelled_views must be a non-empty subset of {', '.join(LABELLED_VIEWS)} "
                       f"(got {self.labelled_views!r})")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            bad.append(f"ema_decay must be in (0, 1) or None (got {self.ema_decay!r})")
        if not isinstance(self.tta, bool):
            bad.append(f"tta must be True or False (got {self.tta!r})")
        if bad:
            raise TransferkitError("invalid semi-supervised settings: " + "; ".join(bad))
        return self


@dataclass
class SemiFit:
    """What :func:`train_semi_head` returns: the head (a :class:`~transferkit.heads.HeadModule`), the history
    (per evaluation: losses, mask rate, validation accuracy, pseudo-label accuracy on validation, thresholds), the
    chosen evaluation and the wall time. With ``SemiConfig(ensemble=K > 1)`` the head is the members' mean
    (:class:`~transferkit.heads.ensemble.MeanProbabilityModule`), the history and chosen evaluation are member 0's,
    the seconds all members', and ``members`` holds each member's own :class:`SemiFit` (empty for one head)."""

    head: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    members: list["SemiFit"] = field(default_factory=list)


def view_banks(source: Any, backbone: Any, *, store: Any, views: tuple[str, ...] = ("weak", "strong"),
               draws: int = 4, seed: int = 0, progress: bool = False, num_workers: int | None = None,
               batch_size: int = 64) -> dict[str, np.ndarray]:
    """The features of ``draws`` seeded draws of each augmented view of every item, and of the eval view, from the
    feature cache (extracting only what is missing).

    Returns:
        view -> ``(draws, N, D)`` float32, plus ``eval`` -> ``(N, D)``.

    Raises:
        DataError: text data (augmented views are defined for images), or unreadable items.
    """
    if source.modality != "image":
        raise DataError(f"{source.origin or source.name} holds {source.modality} data: augmented views are defined "
                        "for images (text semi-supervision is not offered yet)")
    out: dict[str, np.ndarray] = {}

    def feats(bb: Any) -> np.ndarray:
        f = store.get(bb, source, progress=progress, num_workers=num_workers, batch_size=batch_size)
        if f.bad:
            raise DataError(f"{len(f.bad)} unreadable item(s) in {source.origin or source.name}, e.g. {f.bad[0][1]}: "
                            f"{f.bad[0][2]}; leave them out first")
        return np.asarray(f.X, dtype=np.float32)

    out["eval"] = feats(backbone)
    for v in views:
        out[v] = np.stack([feats(backbone.with_view(v, k, seed)) for k in range(int(draws))])
    return out


def view_averaged_proba(predict: Callable[[np.ndarray], np.ndarray], banks: dict[str, np.ndarray],
                        views: tuple[str, ...] = ("weak",)) -> np.ndarray:
    """Test-time augmentation over cached views: the mean of the class probabilities ``predict`` gives the eval
    (centre) view and every cached draw of each of ``views``, each with the same weight (Krizhevsky, Sutskever &
    Hinton, NeurIPS 2012, averaged the predictions of ten crops; Shanmugam et al., ICCV 2021, "Better Aggregation
    in Test-Time Augmentation", found the plain mean of probabilities a strong default).

    Args:
        predict: features ``(N, D)`` -> class probabilities ``(N, C)`` (a head's softmax, a probe's
            ``predict_proba``); see :func:`head_proba`.
        banks: ``eval`` -> ``(N, D)`` and each of ``views`` -> ``(draws, N, D)``, as :func:`view_banks` returns
            (rows of the items to predict).
        views: the augmented views averaged with the eval view (weak: FixMatch's flip-and-crop, the views closest
            to the eval view).

    Returns:
        ``(N, C)`` float64 probabilities, rows summing to 1.

    Raises:
        DataError: a view missing from ``banks`` or of another number of items.
    """
    n = len(banks["eval"])
    parts = [np.asarray(predict(np.asarray(banks["eval"], dtype=np.float32)), dtype=np.float64)]
    for v in views:
        if v not in banks:
            raise DataError(f"no cached {v!r} view to average over (have {', '.join(sorted(banks))}); extract it with "
                            "view_banks(views=...)")
        bank = np.asarray(banks[v], dtype=np.float32)
        if bank.ndim != 3 or bank.shape[1] != n:
            raise DataError(f"the {v!r} view holds shape {bank.shape}; expected (draws, {n}, D)")
        parts += [np.asarray(predict(d), dtype=np.float64) for d in bank]
    return np.mean(parts, axis=0)


def head_proba(head: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A torch head as a probability function for :func:`view_averaged_proba`: ``x -> softmax(head(x))``."""
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(head(torch.as_tensor(np.asarray(x, dtype=np.float32))).double(), 1).numpy()
    return predict


def _make_head(cfg: SemiConfig, pooled: np.ndarray, X_l: np.ndarray, y_l: np.ndarray, n_classes: int) -> Any:
    """The head a plan trains: a cosine classifier on CL2N features centred on ``pooled``'s mean (its rows the
    labelled class means with ``init='prototypes'``), or a linear/MLP head on features standardised by ``pooled``."""
    from ..heads.fewshot import NormedLinearModule
    from ..heads.modules import HeadModule
    from ..heads.shallow import chunked_moments

    mean, std = chunked_moments(pooled)
    if cfg.head == "linear":
        head = HeadModule(pooled.shape[1], n_classes, tuple(cfg.hidden), float(cfg.dropout))
        with torch.no_grad():
            head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            head.scale.copy_(torch.as_tensor(std, dtype=torch.float32))
        return head
    head = NormedLinearModule(pooled.shape[1], n_classes, "cl2n", float(cfg.scale), bias=False, cosine=True)
    with torch.no_grad():
        head.center.copy_(torch.as_tensor(mean, dtype=torch.float32))
        if cfg.init != "random":
            z = _head_features(head, X_l)
            y = torch.as_tensor(np.asarray(y_l, dtype=np.int64))
            for c in range(n_classes):
                if bool((y == c).any()):
                    head.linear.weight[c] = z[y == c].mean(0)
            if cfg.init == "logistic" and len(np.unique(y_l)) > 1:
                head.linear.weight[:] = torch.as_tensor(logistic_rows(z.double().numpy(), np.asarray(y_l), n_classes,
                                                                      head.linear.weight.double().numpy()))
    return head


def logistic_rows(z: np.ndarray, y: np.ndarray, n_classes: int, fallback: np.ndarray, C: float = 100.0) -> np.ndarray:
    """The unit-normalised weight rows of a multinomial logistic regression without intercept fitted on ``(z, y)``
    (scikit-learn, L-BFGS), one per class; a class with no labelled item keeps its row of ``fallback``.

    Shape:
        z ``(N, D)``, y ``(N,)``, fallback ``(n_classes, D)`` -> ``(n_classes, D)``.

    References:
        Tian et al., "Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?", ECCV 2020
        (logistic regression on normalised features as the few-shot probe).
    """
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=float(C), fit_intercept=False, max_iter=2000).fit(z, y)
    coef = model.coef_ if len(model.classes_) > 2 else np.vstack([-model.coef_, model.coef_]) / 2
    out = np.array(fallback, dtype=np.float64, copy=True)
    out[np.asarray(model.classes_, dtype=np.int64)] = coef / np.linalg.norm(coef, axis=1, keepdims=True).clip(1e-12)
    return out


def _head_features(head: Any, x: np.ndarray) -> torch.Tensor:
    """The cosine head's input space: ``x`` centred on the head's centre and L2-normalised (CL2N)."""
    from ..heads.fewshot import transform_features

    with torch.no_grad():
        return transform_features(torch.as_tensor(np.asarray(x, dtype=np.float32)), "cl2n", head.center)


def _labelled_temperature(head: Any, banks_l: dict[str, np.ndarray], y_l: np.ndarray, n_classes: int) -> float:
    """Temperature scaling's ``T`` for a cosine head's weak-view logits, fitted on the labelled items' weak views
    with each item left out of its class mean (1.0 when no class has two labelled items)."""
    from .calibration import fit_temperature, leave_one_out_prototype_logits

    z_e, z_w = _head_features(head, banks_l["eval"]), _head_features(head, banks_l["weak"])
    with torch.no_grad():
        logits, y = leave_one_out_prototype_logits(z_e, y_l, z_w, head.config()["scale"], n_classes)
    return fit_temperature(logits, y) if len(y) else 1.0


def _set_label_propagation(mask: Any, head: Any, X_l: np.ndarray, y_l: np.ndarray, X_u: np.ndarray,
                           n_classes: int, memo: dict | None = None) -> None:
    """Label propagation (Iscen et al., CVPR 2019) over the labelled and unlabelled items' CL2N eval-view features
    (the cosine head's centre), its pseudo-labels and weights handed to the graph rule. ``memo``: propagations
    already computed, by their inputs (an ensemble's members start from the same head, so they share one)."""
    import hashlib

    from .graph import propagate_labels

    z = [_head_features(head, x).numpy() for x in (X_l, X_u)]
    shape = repr((z[0].shape, z[1].shape, n_classes, mask.k, mask.gamma, mask.alpha)).encode()
    key = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (*z, y_l)) + shape).hexdigest()
    if memo is None or key not in memo:
        graph = propagate_labels(z[0], y_l, z[1], n_classes, k=mask.k, gamma=mask.gamma, alpha=mask.alpha)
        if memo is None:
            return mask.set_graph(graph)
        memo[key] = graph
    mask.set_graph(memo[key])


def _set_pool_graph(consistency: Any, head: Any, X_u: np.ndarray, k: int, alpha: float) -> None:
    """Give the consistency objective the unlabelled pool's kNN graph on the cosine head's CL2N eval-view features
    and the head's first predictions as the memory's start (CoMatch's smoothing, :class:`SemiConfig`)."""
    from .graph import knn_neighbours

    z = _head_features(head, X_u).numpy()
    with torch.no_grad():
        start = head(torch.as_tensor(np.asarray(X_u, dtype=np.float32))).float().softmax(1).numpy()
    nn, aff = knn_neighbours(z, k) if len(z) > 1 else (np.zeros((len(z), 0), np.int64), np.zeros((len(z), 0)))
    consistency.set_neighbours(nn, aff, start, alpha)


class _SemiPlan:
    """The loop's plan of a semi-supervised head (picklable)."""

    def __init__(self, banks_l, y_l, banks_u, val, method, method_params, n_classes, cfg, memo=None):
        self.banks_l, self.y_l, self.banks_u, self.val = banks_l, y_l, banks_u, val
        self.method, self.method_params, self.n_classes, self.cfg = method, method_params, n_classes, cfg
        self.memo = memo  # label propagations shared by an ensemble's members (:func:`_set_label_propagation`)

    def __call__(self, fabric: Any) -> Plan:
        cfg = self.cfg
        pooled = np.concatenate([self.banks_l["eval"], self.banks_u["eval"]])
        torch.manual_seed(cfg.seed)
        head = _make_head(cfg, pooled, self.banks_l["eval"], self.y_l, self.n_classes)
        params = {"align": bool(cfg.align), **self.method_params}
        consistency = create_semi_objective(self.method, len(self.banks_u["eval"]), self.n_classes, cfg.steps,
                                            **params)
        consistency.set_target(np.bincount(self.y_l, minlength=self.n_classes))
        start = cfg.align_start or SEMI_METHODS.get(self.method).cap("align_start", "target")
        consistency.set_alignment(start, scaled_momentum(cfg.steps) if cfg.align_momentum is None
                                  else cfg.align_momentum)
        consistency.set_sharpen(cfg.sharpen)
        consistency.set_teacher_decay(cfg.teacher_decay)
        if cfg.calibrate == "threshold":
            consistency.set_temperature(_labelled_temperature(head, self.banks_l, self.y_l, self.n_classes))
        elif cfg.calibrate == "head":  # the same head (same seed) built at the calibrated scale
            t = _labelled_temperature(head, self.banks_l, self.y_l, self.n_classes)
            torch.manual_seed(cfg.seed)
            head = _make_head(replace(cfg, scale=float(cfg.scale) / t), pooled, self.banks_l["eval"], self.y_l,
                              self.n_classes)
        if isinstance(consistency.mask, GraphWeights):
            _set_label_propagation(consistency.mask, head, self.banks_l["eval"], self.y_l, self.banks_u["eval"],
                                   self.n_classes, self.memo)
        if cfg.smoothing < 1:
            _set_pool_graph(consistency, head, self.banks_u["eval"], cfg.neighbours, cfg.smoothing)
        terms = [CrossEntropy("labelled"), consistency]
        graph_weight = cfg.graph_weight if cfg.graph_weight is not None else float(cfg.head == "cosine")
        if graph_weight > 0 and not isinstance(consistency.mask, GraphWeights):  # labelprop is that term alone
            graph = GraphTerm(float(graph_weight))
            graph.mask.setup(len(self.banks_u["eval"]), self.n_classes, cfg.steps)
            _set_label_propagation(graph.mask, head, self.banks_l["eval"], self.y_l, self.banks_u["eval"],
                                   self.n_classes, self.memo)
            terms.append(graph)
        objective = Objectives(*terms)
        train = np.concatenate([self.banks_l[v] if self.banks_l[v].ndim == 3 else self.banks_l[v][None]
                                for v in cfg.labelled_views])
        labelled = DrawStream("labelled", {"eval": self.banks_l["eval"], "train": train}, self.y_l,
                              batch_size=cfg.batch_size)
        unlabelled = DrawStream("unlabelled", {"eval": self.banks_u["eval"], "weak": self.banks_u["weak"],
                                               "strong": self.banks_u["strong"]}, batch_size=cfg.batch_size * cfg.mu)
        ev = None
        if self.val is not None:
            ev = ValidationAccuracy(TensorStream("val", self.val[0]), self.val[1], tie_break=False,
                                    extras=objective.validation_metrics)
        lr, wd = cfg.lr, cfg.weight_decay
        if cfg.optimizer == "sgd":
            def optimizer(g):
                return torch.optim.SGD(g, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)

            def schedule(k, total):
                return math.cos(7 * math.pi * k / (16 * max(total, 1)))
        else:
            def optimizer(g):
                return torch.optim.AdamW(g, lr=lr, weight_decay=wd)
            schedule = None
        return Plan(model=head, objective=objective, streams={"labelled": labelled, "unlabelled": unlabelled},
                    param_groups=[{"params": list(head.parameters()), "lr": lr, "weight_decay": wd}],
                    optimizer=optimizer, schedule=schedule, evaluator=ev,
                    identity={"method": self.method, "params": self.method_params, "config": asdict(cfg),
                              "n_labelled": int(len(self.y_l)), "n_unlabelled": int(len(self.banks_u["eval"]))})


def train_semi_head(banks_l: dict[str, np.ndarray], y_l: np.ndarray, banks_u: dict[str, np.ndarray],
                    method: str = "fixmatch", *, n_classes: int, val: tuple[np.ndarray, np.ndarray] | None = None,
                    config: SemiConfig | None = None, run_dir: str | Path | None = None, resume: bool = False,
                    progress: bool = False, log: Callable[[str], None] | None = None,
                    callbacks: tuple[Callable[[dict[str, Any]], None], ...] = (), **method_params: Any) -> SemiFit:
    """Train a head on cached view features with a semi-supervised method (:data:`SEMI_METHODS`).

    Args:
        banks_l: the labelled items' view features (:func:`view_banks`; needs ``eval`` and ``weak``).
        y_l: their integer labels.
        banks_u: the unlabelled items' view features (``eval``, ``weak``, ``strong``).
        method: a name in :data:`SEMI_METHODS` (``fixmatch``, ``flexmatch``, ``freematch``, ``softmatch``).
        n_classes: number of classes.
        val: validation features (eval view) and labels: choose the evaluation to keep and log pseudo-label
            statistics (None: the last is kept).
        config: :class:`SemiConfig`.
        run_dir, resume: checkpoints and resumption, as every run of the training loop.
        callbacks: called after every evaluation (see :func:`~transferkit.train.loop.run_loop`).
        **method_params: the method's parameters (``tau``, ``lambda_u``, ...).

    Raises:
        DataError: mismatched banks or labels; UnknownNameError: an unknown method.
    """
    cfg = (config or SemiConfig()).validate()
    if SEMI_METHODS.get(method).cap("needs_features") and cfg.head != "cosine":
        raise TransferkitError(f"{method} builds its graph on the cosine head's CL2N features: use head='cosine'")
    y_l = np.asarray(y_l, dtype=np.int64)
    if len(y_l) != len(banks_l["eval"]):
        raise DataError(f"{len(banks_l['eval'])} labelled items but {len(y_l)} labels")
    if len(banks_u["eval"]) == 0:
        raise DataError("the unlabelled pool is empty: semi-supervised methods need unlabelled inputs")
    if cfg.ensemble > 1:
        return _train_ensemble(banks_l, y_l, banks_u, method, n_classes, val, cfg, run_dir, resume, progress, log,
                               callbacks, method_params)
    return _train_one(banks_l, y_l, banks_u, method, n_classes, val, cfg, run_dir, resume, progress, log, callbacks,
                      method_params)


def _train_one(banks_l, y_l, banks_u, method, n_classes, val, cfg, run_dir, resume, progress, log, callbacks,
               method_params, memo=None) -> SemiFit:
    """One head through the training loop (the inputs checked by :func:`train_semi_head`)."""
    t0 = time.perf_counter()
    plan = _SemiPlan(banks_l, y_l, banks_u, val, method, method_params, n_classes, cfg, memo)
    every = min(cfg.eval_every, cfg.steps)
    settings = LoopSettings(epochs=-(-cfg.steps // every), steps_per_epoch=every, seed=cfg.seed,
                            patience=cfg.patience if val is not None else None, accelerator="cpu",
                            ema_decay=cfg.ema_decay, progress="run" if progress else None, label=method,
                            unit="steps")
    r = run_loop(plan, settings, run_dir, resume=resume, log=log, callbacks=callbacks)
    return SemiFit(head=r.model.eval(), history=r.history, best_epoch=r.best_epoch, seconds=time.perf_counter() - t0)


def member_seed(seed: int, k: int) -> int:
    """The seed of an ensemble's member ``k`` (:class:`SemiConfig`'s ``ensemble``): ``seed + 1000 k``."""
    return int(seed) + 1000 * int(k)


def _train_ensemble(banks_l, y_l, banks_u, method, n_classes, val, config, run_dir, resume, progress, log,
                    callbacks, method_params) -> SemiFit:
    """``config.ensemble`` heads trained one after the other (member ``k`` seeded by :func:`member_seed`, its
    checkpoints in ``run_dir/member-k``), returned as one head predicting their mean probability (Lakshminarayanan
    et al., NeurIPS 2017). The members start from the same head, so the label propagation is computed once."""
    from ..heads.ensemble import MeanProbabilityModule

    t0 = time.perf_counter()
    fits, memo = [], {}
    for k in range(config.ensemble):
        if log is not None and k:
            log(f"ensemble member {k + 1} of {config.ensemble} (seed {member_seed(config.seed, k)})")
        fits.append(_train_one(banks_l, y_l, banks_u, method, n_classes, val,
                               replace(config, ensemble=1, seed=member_seed(config.seed, k)),
                               None if run_dir is None else Path(run_dir) / f"member-{k}", resume, progress, log,
                               callbacks, method_params, memo))
    head = MeanProbabilityModule([f.head for f in fits]).eval()
    return SemiFit(head=head, history=fits[0].history, best_epoch=fits[0].best_epoch,
                   seconds=time.perf_counter() - t0, members=fits)
