"""Zero-shot methods: classes known by the embeddings of their names, not (or not all) by labelled examples.

Every method is fitted on a :class:`ZeroShotTask` (the candidate classes and their name embeddings, and what else is
known: the backbone's source classifier with its class names, labelled features of *seen* classes) and returns a
head module over every candidate class (:mod:`transferkit.heads.class_embedding`), which a run saves and
``predict`` uses like any head.

=================  ==============================================================================================
``similarity``     cosine of the input's embedding to each class's prompt embedding, in one encoder (texts with a
                   text backbone, images with a ``clip:`` backbone); nothing is fitted
``conse``          ConSE (Norouzi et al. 2014): the source classifier's top-T classes average their name
                   embeddings by probability; the nearest class name wins
``ridge``          a ridge map from class-name embeddings to classifier weights, fitted on the classes that have a
                   classifier (the source classifier's, and a probe's on seen classes), applied to the others
``eszsl``          ESZSL (Romera-Paredes & Torr 2015): the closed-form bilinear compatibility ``x^T V s``, from
                   labelled seen features or, without them, from the source classifier's weight rows
``devise``         DeViSE (Frome et al. 2013): a linear map from features to the name-embedding space with a
                   hinge rank loss on seen classes, trained through the training loop
=================  ==============================================================================================

Generalized zero-shot (seen and unseen classes at test time) lowers the seen classes' scores by a constant,
calibrated stacking (Chao et al. 2016), chosen on seen classes only (:mod:`transferkit.zeroshot.gzsl`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError, TransferkitError
from ..heads.class_embedding import ClassEmbeddingHead, ConSEHead
from ..registry import Registry
from ..train.objectives import Objective, Step
from .encode import SourceModel

__all__ = ["ZEROSHOT_METHODS", "ZeroShotTask", "ZeroShotMethod", "Similarity", "ConSE", "RidgeMap", "ESZSL",
           "DeViSE", "HingeRankLoss", "create_method", "ridge_map", "eszsl_map"]

#: zero-shot methods by name; capabilities: ``modality`` (``image``, ``text`` or ``any``: what data it classifies),
#: ``shared_space`` (the inputs' features and the class embeddings come from one encoder), ``needs_source`` (the
#: backbone's source classifier), ``needs_seen`` (labelled features of seen classes), ``uses_seen`` (learns from them
#: when given)
ZEROSHOT_METHODS: Registry[Any] = Registry("zero-shot method")


@dataclass
class ZeroShotTask:
    """What a zero-shot method is fitted on.

    Attributes:
        classes: the candidate classes (labels), seen and unseen.
        class_embeddings: ``(C, Z)`` unit embeddings of the classes' prompted names.
        seen: ``(C,)`` bool, the classes with labelled examples (None or all False: pure zero-shot).
        X, y: labelled features of seen classes, ``y`` indexing ``classes`` (None without).
        X_val, y_val: held-out labelled features of seen classes (model choice, never test data).
        source: the backbone's source classifier and its class-name embeddings (None without).
        scale: the encoder's own logit scale (CLIP's), when it has one.
        X_target: unlabelled features of the inputs to classify (transductive steps: ConSE's source prior, the
            centring of class scores); never their labels.
    """

    classes: list[str]
    class_embeddings: np.ndarray
    seen: np.ndarray | None = None
    X: np.ndarray | None = None
    y: np.ndarray | None = None
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    source: SourceModel | None = None
    scale: float | None = None
    X_target: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seen_mask(self) -> np.ndarray:
        """``(C,)`` bool: the seen classes (all False in pure zero-shot)."""
        return np.zeros(len(self.classes), bool) if self.seen is None else np.asarray(self.seen, bool)

    def check(self) -> None:
        """Consistent shapes and labels; raises :class:`DataError` naming the mismatch."""
        C = len(self.classes)
        if self.class_embeddings.shape[0] != C:
            raise DataError(f"{C} classes but {self.class_embeddings.shape[0]} class embeddings")
        if self.X is not None:
            y = np.asarray(self.y)
            if len(y) != len(self.X):
                raise DataError(f"{len(self.X)} seen features but {len(y)} labels")
            if len(y) and not self.seen_mask[y].all():
                raise DataError("labelled features of a class not marked seen; seen classes are the labelled ones")


class ZeroShotMethod:
    """Base class: ``fit(task)`` then ``head(class_bias)`` -> a head module over ``task.classes``."""

    name = "method"

    def fit(self, task: ZeroShotTask) -> "ZeroShotMethod":  # noqa: D102 - see the class
        raise NotImplementedError

    def head(self, class_bias: np.ndarray | None = None) -> nn.Module:  # noqa: D102 - see the class
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The method's settings (JSON), for the run's config."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def _needs_fit(self) -> None:
        if not hasattr(self, "task_"):
            raise TransferkitError(f"zero-shot method {self.name!r} is not fitted; call fit(task) first")


@ZEROSHOT_METHODS.register("similarity", modality="any", shared_space=True, needs_source=False, needs_seen=False,
                           uses_seen=False, paper="Radford et al., ICML 2021 (prompt similarity); Yin et al., "
                                              "EMNLP 2019 (label-description zero-shot text classification)")
class Similarity(ZeroShotMethod):
    """Cosine similarity of an input's embedding to each class's prompt embedding in the same encoder: text
    zero-shot classification by label descriptions, and CLIP's zero-shot for images with a ``clip:`` backbone.

    Args:
        scale: the logits' temperature factor; None: the encoder's own (CLIP's ``logit_scale``), else 20.

    References:
        Yin, Hay & Roth, "Benchmarking Zero-shot Text Classification: Datasets, Evaluation and Entailment
        Approach", EMNLP 2019; Radford et al., "Learning Transferable Visual Models From Natural Language
        Supervision", ICML 2021.
    """

    name = "similarity"

    def __init__(self, scale: float | None = None):
        self.scale = scale

    def fit(self, task: ZeroShotTask) -> "Similarity":
        """Keep the class embeddings (nothing is learned)."""
        self.task_ = task
        self.scale_ = float(self.scale if self.scale is not None else task.scale if task.scale is not None else 20.0)
        return self

    def head(self, class_bias: np.ndarray | None = None) -> nn.Module:
        """A cosine-similarity head over the class embeddings."""
        self._needs_fit()
        return ClassEmbeddingHead.from_weights(self.task_.class_embeddings, normalize=True, scale=self.scale_,
                                               class_bias=class_bias)


def _need_source(task: ZeroShotTask, name: str) -> SourceModel:
    if task.source is None:
        raise TransferkitError(f"method={name!r} needs the backbone's source classifier with named classes (e.g. "
                               "lite0's ImageNet head); use backbone=\"lite0\"")
    return task.source


@ZEROSHOT_METHODS.register("conse", modality="image", shared_space=False, needs_source=True, needs_seen=False,
                           uses_seen=False, paper="Norouzi et al., ICLR 2014")
class ConSE(ZeroShotMethod):
    """ConSE: ``f(x) = (1/Z) sum_{t=1..T} p(s_t | x) e(s_t)`` over the source classifier's ``T`` most probable
    classes ``s_t`` (``Z`` the sum of their probabilities), and the class whose name embedding has the highest cosine
    to ``f(x)``. Labelled seen classes are not used: the source classifier is the model of the seen world.

    With ``adapt_prior`` and unlabelled target inputs (``task.X_target``), the source probabilities are divided by
    their mean over those inputs and renormalised before the top ``T`` are taken: source classes that fire on
    every input of the new domain (lite0 sees "comic book" or "envelope" in much clip art) stop dominating the
    average. This is the prior correction of Saerens et al. (2002) with the target prior estimated by the mean
    prediction; it uses the inputs, never their labels.

    Args:
        top_k: ``T`` (10 in the paper).
        scale: temperature factor of the logits (cosines in [-1, 1]).
        adapt_prior: divide by the source classes' mean probability over ``task.X_target`` (when given).

    References:
        Norouzi, Mikolov, Bengio, Singer, Shlens, Frome, Corrado & Dean, "Zero-Shot Learning by Convex Combination
        of Semantic Embeddings", ICLR 2014; Saerens, Latinne & Decaestecker, "Adjusting the Outputs of a Classifier
        to New a Priori Probabilities: A Simple Procedure", Neural Computation 2002 (the prior correction).
    """

    name = "conse"

    def __init__(self, top_k: int = 10, scale: float = 20.0, adapt_prior: bool = True):
        self.top_k = top_k
        self.scale = scale
        self.adapt_prior = adapt_prior

    def fit(self, task: ZeroShotTask) -> "ConSE":
        """Take the source classifier and the name embeddings (and the source prior over ``task.X_target``)."""
        if int(self.top_k) < 1:
            raise TransferkitError(f"conse: top_k must be >= 1; got {self.top_k!r}")
        src = _need_source(task, self.name)
        self.log_prior_ = np.zeros(len(src.weight))
        if self.adapt_prior and task.X_target is not None and len(task.X_target):
            P = np.zeros(len(src.weight))
            for i in range(0, len(task.X_target), 4096):
                P += src.probabilities(np.asarray(task.X_target[i:i + 4096])).sum(0)
            self.log_prior_ = np.log(np.maximum(P / len(task.X_target), 1e-30))
        self.task_ = task
        return self

    def head(self, class_bias: np.ndarray | None = None) -> nn.Module:
        """A :class:`~transferkit.heads.class_embedding.ConSEHead` over the task's classes."""
        self._needs_fit()
        src, E = self.task_.source, self.task_.class_embeddings
        m = ConSEHead(src.weight.shape[1], src.weight.shape[0], E.shape[1], E.shape[0], int(self.top_k),
                      float(self.scale))
        with torch.no_grad():
            m.source_weight.copy_(torch.as_tensor(src.weight))
            m.source_bias.copy_(torch.as_tensor(src.bias - self.log_prior_, dtype=torch.float32))
            m.source_embeddings.copy_(torch.as_tensor(src.embeddings))
            m.class_embeddings.copy_(torch.as_tensor(E))
            if class_bias is not None:
                m.class_bias.copy_(torch.as_tensor(class_bias, dtype=torch.float32))
        return m.eval()


def ridge_map(S: np.ndarray, W: np.ndarray, alpha: float) -> np.ndarray:
    """The ridge regression from class embeddings to classifier weights: ``M = (S^T S + alpha I)^-1 S^T W``, so the
    weights of a class with embedding ``s`` are ``s M``.

    Shape:
        ``S (K, Z)``, ``W (K, D)`` -> ``M (Z, D)``.
    """
    S = np.asarray(S, np.float64)
    return np.linalg.solve(S.T @ S + float(alpha) * np.eye(S.shape[1]), S.T @ np.asarray(W, np.float64))


def _unit_rows(W: np.ndarray) -> np.ndarray:
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def _seen_probe(task: ZeroShotTask, C: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw-feature-space weights and biases of a logistic probe on the seen classes: ``(classes, W, b)``."""
    from ..heads.shallow import LogisticHead

    y = np.asarray(task.y)
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"the seen classes need labelled examples of at least 2 classes; got {len(present)}")
    probe = LogisticHead(C=C).fit(np.asarray(task.X, np.float32), y)
    coef, icpt = probe.model_.coef_, probe.model_.intercept_
    if coef.shape[0] == 1:
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    W = coef / probe.scale_
    b = icpt - (coef * (probe.mean_ / probe.scale_)).sum(1)
    return probe.classes_.astype(np.int64), W, b


@ZEROSHOT_METHODS.register("ridge", modality="image", shared_space=False, needs_source=False, needs_seen=False,
                           uses_seen=True, paper="a linear name-to-classifier map, as in DeViSE / ESZSL's family "
                                                 "(Frome et al. 2013; Romera-Paredes & Torr 2015)")
class RidgeMap(ZeroShotMethod):
    """A ridge regression from class-name embeddings to (unit-norm) classifier weight vectors, fitted on every class
    that has a classifier: the source classifier's classes (lite0: 1000 ImageNet classes) and, when labelled seen
    classes are given, a logistic probe's weights on them. Unseen classes get the weights their name embedding maps
    to; seen classes keep their probe's. Scores are ``x . w_c``.

    Args:
        alpha: the ridge penalty.
        use_source: fit on the source classifier's classes too (when the backbone has one).

    References:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NeurIPS 2013 and Romera-Paredes & Torr,
        "An embarrassingly simple approach to zero-shot learning", ICML 2015 (linear maps between name embeddings
        and the visual model); Norouzi et al., ICLR 2014 (the same ImageNet source classifier).
    """

    name = "ridge"

    def __init__(self, alpha: float = 1.0, use_source: bool = True):
        self.alpha = alpha
        self.use_source = use_source

    def fit(self, task: ZeroShotTask) -> "RidgeMap":
        """Fit the map on the classes that have classifier weights; predict the weights of the others."""
        task.check()
        S_parts, W_parts = [], []
        if self.use_source and task.source is not None:
            S_parts.append(task.source.embeddings)
            W_parts.append(_unit_rows(task.source.weight))
        seen_w = {}
        if task.X is not None and len(task.X):
            ids, W, _ = _seen_probe(task)
            Wu = _unit_rows(W)
            for k, c in enumerate(ids):
                seen_w[int(c)] = Wu[k]
            S_parts.append(task.class_embeddings[ids])
            W_parts.append(Wu)
        if not S_parts:
            raise TransferkitError("ridge needs classes with classifier weights to learn the map from: the "
                                   "backbone's source classifier (backbone=\"lite0\") or labelled seen classes")
        S, Wt = np.concatenate(S_parts), np.concatenate(W_parts)
        if len(S) < 2:
            raise TransferkitError("ridge needs at least 2 classes with classifier weights to learn the map from")
        self.map_ = ridge_map(S, Wt, float(self.alpha))
        W_all = task.class_embeddings.astype(np.float64) @ self.map_
        for c, w in seen_w.items():
            W_all[c] = w
        self.weights_ = _unit_rows(W_all)
        self.task_ = task
        return self

    def head(self, class_bias: np.ndarray | None = None) -> nn.Module:
        """A linear head with the predicted (and, for seen classes, probed) weights."""
        self._needs_fit()
        return ClassEmbeddingHead.from_weights(self.weights_, normalize=False, scale=1.0, class_bias=class_bias)


def eszsl_map(X: np.ndarray, Y: np.ndarray, S: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """ESZSL's closed form ``V = (X^T X + gamma I)^-1 X^T Y S (S^T S + lambda I)^-1`` (rows are samples; the paper
    writes the transposes), ``Y`` in {-1, 1} in the paper.

    Shape:
        ``X (m, D)``, ``Y (m, K)``, ``S (K, Z)`` -> ``V (D, Z)``.
    """
    X = np.asarray(X, np.float64)
    S = np.asarray(S, np.float64)
    left = np.linalg.solve(X.T @ X + float(gamma) * np.eye(X.shape[1]), X.T @ np.asarray(Y, np.float64))
    return left @ S @ np.linalg.inv(S.T @ S + float(lam) * np.eye(S.shape[1]))


@ZEROSHOT_METHODS.register("eszsl", modality="image", shared_space=False, needs_source=False, needs_seen=False,
                           uses_seen=True, paper="Romera-Paredes & Torr, ICML 2015")
class ESZSL(ZeroShotMethod):
    """Embarrassingly simple zero-shot learning: the bilinear compatibility ``x^T V s_c`` with the closed form
    ``V = (X X^T + gamma I)^-1 X Y S^T (S S^T + lambda I)^-1`` (ground truth ``Y`` in {-1, 1}). Fitted on labelled
    seen-class features when given (the paper's setting); without them, on the source classifier's weight rows as one
    example of each source class (its ImageNet classes as the seen classes, with no image). In that source mode the
    ground truth is the identity in {0, 1}: with the paper's -1 entries, every row of ``Y S`` would carry
    ``-sum_j s_j`` over the 1000 source classes, one constant direction that drowns the rest (on the development
    set: 6-18 % against 17-32 % with {0, 1}, 14 classes).

    Args:
        gamma: the penalty on the feature side (None: 1 with seen classes, 10 in source mode).
        lam: the penalty on the embedding side (``lambda``; None: 1 with seen classes, 10 in source mode). The
            source-mode values were chosen on the zero-shot development set (14 Open Clip Art categories that are
            not clipart's).
        standardize: standardise the features (seen-data mode) with the training mean and scale.

    References:
        Romera-Paredes & Torr, "An embarrassingly simple approach to zero-shot learning", ICML 2015.
    """

    name = "eszsl"

    def __init__(self, gamma: float | None = None, lam: float | None = None, standardize: bool = True):
        self.gamma = gamma
        self.lam = lam
        self.standardize = standardize

    def fit(self, task: ZeroShotTask) -> "ESZSL":
        """Solve for ``V`` in closed form; the head's weights are ``V s_c`` for every class."""
        task.check()
        D = task.class_embeddings
        mean = np.zeros(0)
        if task.X is not None and len(task.X):
            X = np.asarray(task.X, np.float64)
            ids = np.unique(task.y)
            if len(ids) < 2:
                raise DataError(f"eszsl needs labelled examples of at least 2 seen classes; got {len(ids)}")
            pos = {int(c): k for k, c in enumerate(ids)}
            Y = -np.ones((len(X), len(ids)))
            Y[np.arange(len(X)), [pos[int(c)] for c in task.y]] = 1.0
            S = D[ids]
            if self.standardize:
                from ..heads.shallow import chunked_moments

                mean, scale = chunked_moments(X)
                X = (X - mean) / scale
            else:
                scale = np.ones(X.shape[1])
            self.mode_ = "seen"
        elif task.source is not None:
            X = task.source.weight.astype(np.float64)
            Y = np.eye(len(X))
            S, scale = task.source.embeddings, np.ones(X.shape[1])
            self.mode_ = "source"
        else:
            raise TransferkitError("eszsl needs labelled seen classes or the backbone's source classifier "
                                   "(backbone=\"lite0\") to learn from")
        source_mode = self.mode_ == "source"
        gamma = float(self.gamma if self.gamma is not None else 10.0 if source_mode else 1.0)
        lam = float(self.lam if self.lam is not None else 10.0 if source_mode else 1.0)
        V = eszsl_map(X, Y, S, gamma, lam)
        W = D.astype(np.float64) @ V.T / scale  # (C, D): weights on the raw features
        self.V_ = V
        self.weights_ = W
        self.bias_ = -(W * mean).sum(1) if len(mean) else np.zeros(len(W))
        self.task_ = task
        return self

    def head(self, class_bias: np.ndarray | None = None) -> nn.Module:
        """A linear head with weights ``V s_c`` (and the standardisation folded in)."""
        self._needs_fit()
        b = self.bias_ + (0 if class_bias is None else np.asarray(class_bias))
        return ClassEmbeddingHead.from_weights(self.weights_, normalize=False, scale=1.0, class_bias=b)


class HingeRankLoss(Objective):
    """DeViSE's hinge rank loss on the labelled stream: ``sum_{j != y} max(0, margin - s_y + s_j)``, averaged over
    the batch, where ``s`` are the model's logits (the dot products of the mapped input with each seen class's
    name embedding).

    References:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NeurIPS 2013 (Eq. 1).
    """

    name = "hinge_rank"

    def __init__(self, margin: float = 0.1, stream: str = "labelled"):
        super().__init__()
        self.margin, self.stream = float(margin), stream
        self.streams = (stream,)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:  # noqa: D102 - see the class
        s = step.outputs(self.stream)[0].logits.float()
        return {self.name: hinge_rank(s, step.y(self.stream), self.margin) * step.weight(self.stream)}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "margin": self.margin, "stream": self.stream}


def hinge_rank(scores: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean_i sum_{j != y_i} max(0, margin - s_{i, y_i} + s_{i, j})``.

    Shape:
        ``scores (N, K)``, ``y (N,)`` -> a scalar.
    """
    true = scores.gather(1, y.view(-1, 1))
    viol = (margin - true + scores).clamp(min=0)
    viol = viol.masked_fill(nn.functional.one_hot(y, scores.shape[1]).bool(), 0.0)
    return viol.sum(1).mean()


class _DeViSENet(nn.Module):
    """Standardise the features, map them linearly into the name-embedding space, dot with each seen class's
    embedding."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, embeddings: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("embeddings", torch.as_tensor(embeddings, dtype=torch.float32))
        self.map = nn.Linear(len(mean), embeddings.shape[1], bias=False)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.map((x - self.mean) / self.scale)
        logits = z @ self.embeddings.T
        return (logits, z) if return_features else logits


class _DeViSEPlan:
    """The training loop's plan for DeViSE (picklable)."""

    def __init__(self, X, y, val, mean, scale, embeddings, margin, lr, weight_decay, batch_size, seed):
        self.X, self.y, self.val, self.mean, self.scale, self.embeddings = X, y, val, mean, scale, embeddings
        self.margin, self.lr, self.wd, self.batch_size, self.seed = margin, lr, weight_decay, batch_size, seed

    def __call__(self, fabric: Any):
        from ..train.loop import Plan, ValidationAccuracy
        from ..train.streams import TensorStream

        torch.manual_seed(self.seed)
        net = _DeViSENet(self.mean, self.scale, self.embeddings)
        ev = None
        if self.val is not None:
            ev = ValidationAccuracy(TensorStream("val", np.asarray(self.val[0], np.float32)), self.val[1],
                                    tie_break=False)
        lr, wd = self.lr, self.wd
        return Plan(model=net, objective=HingeRankLoss(self.margin),
                    streams={"labelled": TensorStream("labelled", np.asarray(self.X, np.float32), self.y,
                                                      batch_size=self.batch_size)},
                    param_groups=[{"params": list(net.map.parameters()), "lr": lr, "weight_decay": wd}],
                    optimizer=lambda g: torch.optim.AdamW(g, lr=lr, weight_decay=wd), evaluator=ev,
                    identity={"method": "devise", "n": len(self.y)})


@ZEROSHOT_METHODS.register("devise", modality="image", shared_space=False, needs_source=False, needs_seen=True,
                           uses_seen=True, paper="Frome et al., NeurIPS 2013")
class DeViSE(ZeroShotMethod):
    """DeViSE: a linear map ``M`` from (standardised) image features to the name-embedding space, trained on
    labelled seen classes with the hinge rank loss ``sum_{j != y} max(0, margin - e_y^T M x + e_j^T M x)`` through
    the training loop (checkpoint chosen on seen-class validation accuracy when a validation split is given); a class
    scores ``e_c^T M x``, so unseen classes are scored through their name embeddings.

    Args:
        margin: the hinge margin (0.1 in the paper).
        epochs, lr, weight_decay, batch_size, patience: optimisation (AdamW; the paper used SGD on a full network).
        random_state: seed.

    References:
        Frome, Corrado, Shlens, Bengio, Dean, Ranzato & Mikolov, "DeViSE: A Deep Visual-Semantic Embedding Model",
        NeurIPS 2013.
    """

    name = "devise"

    def __init__(self, margin: float = 0.1, epochs: int = 100, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 64, patience: int = 20, random_state: int = 0):
        self.margin = margin
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.random_state = random_state

    def fit(self, task: ZeroShotTask) -> "DeViSE":
        """Train the map on the seen classes (their labels re-indexed among the seen classes)."""
        from ..heads.shallow import chunked_moments
        from ..train.loop import LoopSettings, run_loop

        task.check()
        if task.X is None or not len(task.X):
            raise TransferkitError("devise learns from labelled images of seen classes; give some (seen=\"a,b,c\" with "
                                   "labelled data) or use conse, ridge or eszsl, which start from the source "
                                   "classifier")
        ids = np.unique(task.y)
        if len(ids) < 2:
            raise DataError(f"devise needs labelled examples of at least 2 seen classes; got {len(ids)}")
        pos = {int(c): k for k, c in enumerate(ids)}
        y = np.asarray([pos[int(c)] for c in task.y], np.int64)
        val = None
        if task.X_val is not None and len(task.X_val):
            keep = np.isin(task.y_val, ids)
            if keep.any():
                val = (np.asarray(task.X_val, np.float32)[keep],
                       np.asarray([pos[int(c)] for c in np.asarray(task.y_val)[keep]], np.int64))
        X = np.asarray(task.X, np.float32)
        mean, scale = chunked_moments(X)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            r = run_loop(_DeViSEPlan(X, y, val, mean, scale, task.class_embeddings[ids], float(self.margin),
                                     float(self.lr), float(self.weight_decay), int(self.batch_size),
                                     int(self.random_state)),
                         LoopSettings(epochs=int(self.epochs), seed=int(self.random_state), accelerator="cpu",
                                      patience=int(self.patience) if val is not None else None, label="devise"))
        finally:
            torch.set_num_threads(threads)
        M = r.model.map.weight.detach().double().numpy()  # (Z, D)
        A = task.class_embeddings.astype(np.float64) @ M / scale  # e_c^T M ((x - mean) / scale)
        self.weights_ = A
        self.bias_ = -(A * mean).sum(1)
        self.history_ = r.history
        self.best_epoch_ = r.best_epoch
        self.task_ = task
        return self

    def head(self, class_bias: np.ndarray | None = None) -> nn.Module:
        """A linear head with weights ``M^T e_c`` (the standardisation folded in)."""
        self._needs_fit()
        b = self.bias_ + (0 if class_bias is None else np.asarray(class_bias))
        return ClassEmbeddingHead.from_weights(self.weights_, normalize=False, scale=1.0, class_bias=b)


def create_method(name: str, **params: Any) -> ZeroShotMethod:
    """A zero-shot method by name (see :data:`ZEROSHOT_METHODS`)."""
    return ZEROSHOT_METHODS.create(name, **params)
