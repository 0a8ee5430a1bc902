"""Few-shot heads: classifiers meant for one to five labels per class on a frozen backbone's cached features.

- **nearest class mean** with SimpleShot's feature transforms: ``protonet`` (no normalisation, "UN": Snell et al.'s
  inference form, a softmax over negative squared Euclidean distances to the class means), ``ncm-l2n`` (L2-normalised
  features) and ``ncm-cl2n`` (centred, then L2-normalised);
- ``logreg-l2n``: multinomial logistic regression on L2-normalised features (Tian et al. 2020);
- ``chen-baseline`` and ``chen-baseline++``: the fine-tuning baselines of Chen et al. 2019, a new linear (or cosine)
  classifier trained on the support features through the training loop (:func:`~transferkit.train.loop.run_loop`).

Every head is a scikit-learn classifier like the others in :data:`~transferkit.heads.HEADS` (``fit`` /
``predict_proba`` / ``to_module``), so ``fit`` runs can use and save it, and it also evaluates a batch of few-shot
episodes at once (:meth:`FewShotHead.fit_predict_episodes`), which the episodic evaluation of
:mod:`transferkit.fewshot` uses. ``fit`` takes an optional ``base``: features of base classes (other classes than the
ones being learned) that a head may adapt on; the centred heads use their mean as the centre.

References:
    Wang, Chao, Weinberger & van der Maaten, "SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot
    Learning", arXiv:1911.04623, 2019.
    Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
    Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019.
    Tian, Wang, Krishnan, Tenenbaum & Isola, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You
    Need?", ECCV 2020.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._random import derive_seed
from ..errors import TransferkitError
from ..train.objectives import Objective
from .modules import HEAD_MODULES
from .shallow import HEADS, HeadBase

__all__ = ["NORMS", "transform_features", "squared_distances", "PrototypeModule", "NormedLinearModule",
           "FewShotHead", "NearestClassMean", "NearestClassMeanL2N", "ProtoNetHead", "LogisticL2NHead",
           "ChenBaselineHead", "ChenBaselinePlusHead", "EpisodeLinear", "EpisodeCrossEntropy",
           "train_episode_classifiers"]

#: SimpleShot's feature transforms: none ("UN"), L2-normalisation, centring then L2-normalisation
NORMS = ("none", "l2n", "cl2n")
CENTERS = ("auto", "support")


def transform_features(x: torch.Tensor, norm: str, center: torch.Tensor | None = None,
                       eps: float = 1e-8) -> torch.Tensor:
    """SimpleShot's feature transform: ``none`` (unchanged), ``l2n`` (``x / ||x||``), ``cl2n`` (``(x - center) /
    ||x - center||``).

    Shape:
        ``x``: ``(..., D)``; ``center``: ``(D,)`` or broadcastable to ``x`` (e.g. ``(E, 1, D)``); out: like ``x``.

    References:
        Wang et al., "SimpleShot", arXiv:1911.04623, 2019 (section 3: UN, L2N, CL2N).
    """
    if norm == "cl2n":
        x = x - center
    if norm in ("l2n", "cl2n"):
        x = x / (x.norm(dim=-1, keepdim=True) + eps)
    return x


def squared_distances(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows, without an ``(N, C, D)`` intermediate.

    Computed in float64 and returned in ``z``'s dtype: a float32 matrix product rounds differently with the number
    of rows (BLAS picks its kernel by shape), so an item's distances, and a head's probabilities, would depend on
    the batch it came in (by up to 4e-7, which scikit-learn's subset-invariance check rejects).

    Shape:
        ``z``: ``(..., N, D)``, ``p``: ``(..., C, D)`` -> ``(..., N, C)``.
    """
    z64, p64 = z.double(), p.double()
    d = (z64 * z64).sum(-1, keepdim=True) - 2 * z64 @ p64.transpose(-1, -2) + (p64 * p64).sum(-1).unsqueeze(-2)
    return d.clamp_min(0).to(z.dtype)


def _check_norm(norm: Any) -> str:
    if norm not in NORMS:
        raise TransferkitError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    return str(norm)


# ---------------------------------------------------------------------------------------------------------------
# the saved forms (head modules)
@HEAD_MODULES.register("prototypes")
class PrototypeModule(nn.Module):
    """Nearest class mean as a module: transform the features (:func:`transform_features`), then logits
    ``-scale * ||z - p_k||^2`` for every class mean ``p_k`` (a softmax of them is Snell et al.'s class probability).

    Shape:
        ``(N, D)`` -> ``(N, num_classes)``; with ``return_features=True`` also the transformed features ``(N, D)``.

    References:
        Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017; Wang et al., "SimpleShot", 2019.
    """

    kind = "prototypes"

    def __init__(self, in_features: int, num_classes: int, norm: str = "none", scale: float = 1.0, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("center", torch.zeros(in_features))
        self.register_buffer("prototypes", torch.zeros(num_classes, in_features))
        self._config = {"in_features": int(in_features), "num_classes": int(num_classes), "norm": _check_norm(norm),
                        "scale": float(scale), "eps": float(eps)}

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return self._config["num_classes"]

    def config(self) -> dict[str, Any]:
        """What rebuilds the module (JSON)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PrototypeModule":
        """The module of a saved head (buffers loaded separately)."""
        return cls(int(config["in_features"]), int(config["num_classes"]), str(config.get("norm", "none")),
                   float(config.get("scale", 1.0)), float(config.get("eps", 1e-8)))

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        c = self._config
        z = transform_features(x, c["norm"], self.center, c["eps"])
        logits = -c["scale"] * squared_distances(z, self.prototypes)
        return (logits, z) if return_features else logits


@HEAD_MODULES.register("normed-linear")
class NormedLinearModule(nn.Module):
    """A linear classifier on transformed features: ``scale * (W z + b)`` with ``z`` from :func:`transform_features`
    (``l2n`` with a bias-free ``W`` whose rows have any norm is Chen et al.'s Baseline++ cosine classifier). With
    ``cosine=True`` the rows of ``W`` are L2-normalised in the forward pass, so a trained ``W`` stays a cosine
    classifier (``scale * cos(z, w_k)``; the semi-supervised heads of :mod:`transferkit.semi`).

    Shape:
        ``(N, D)`` -> ``(N, num_classes)``; with ``return_features=True`` also ``z`` ``(N, D)``.

    References:
        Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019; Tian et al., ECCV 2020.
    """

    kind = "normed-linear"

    def __init__(self, in_features: int, num_classes: int, norm: str = "none", scale: float = 1.0, bias: bool = True,
                 eps: float = 1e-8, cosine: bool = False):
        super().__init__()
        self.register_buffer("center", torch.zeros(in_features))
        self.linear = nn.Linear(in_features, num_classes, bias=bias)
        self._config = {"in_features": int(in_features), "num_classes": int(num_classes), "norm": _check_norm(norm),
                        "scale": float(scale), "bias": bool(bias), "eps": float(eps)}
        if cosine:  # only when set, so heads saved before the option keep their exact config
            self._config["cosine"] = True

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return self._config["num_classes"]

    def config(self) -> dict[str, Any]:
        """What rebuilds the module (JSON)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NormedLinearModule":
        """The module of a saved head (weights loaded separately)."""
        return cls(int(config["in_features"]), int(config["num_classes"]), str(config.get("norm", "none")),
                   float(config.get("scale", 1.0)), bool(config.get("bias", True)), float(config.get("eps", 1e-8)),
                   bool(config.get("cosine", False)))

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        c = self._config
        z = transform_features(x, c["norm"], self.center, c["eps"])
        if c.get("cosine"):
            w = self.linear.weight
            logits = c["scale"] * torch.nn.functional.linear(z, w / (w.norm(dim=1, keepdim=True) + c["eps"]),
                                                             self.linear.bias)
        else:
            logits = c["scale"] * self.linear(z)
        return (logits, z) if return_features else logits


# ---------------------------------------------------------------------------------------------------------------
# the estimators
class FewShotHead(HeadBase):
    """Shared plumbing of the few-shot heads: ``fit(X, y, eval_set=None, base=None)``, probabilities from the head's
    module, and :meth:`fit_predict_episodes` (a loop over episodes unless a head has a faster exact form).

    No few-shot head chooses anything on a validation split (there is none at one or two labels per class), so
    ``eval_set`` is accepted for the common interface and not used.
    """

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None, base: Any = None) -> "FewShotHead":
        """Fit on the labelled features ``(X, y)``.

        Args:
            X: ``(N, D)`` features; y: their labels.
            eval_set: not used (see the class).
            base: optional ``(M, D)`` features of base classes (other classes than those in ``y``), for the heads
                that adapt on them (the centre of ``cl2n``).
        """
        X, y_enc = self._encode(X, y)
        X = np.asarray(X, dtype=np.float32)
        self._fit(torch.as_tensor(X), torch.as_tensor(y_enc), _check_base(base, X.shape[1]))
        return self

    def _fit(self, X: torch.Tensor, y: torch.Tensor, base: torch.Tensor | None) -> None:
        raise NotImplementedError

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "module_")
        X = self._check_X(X, reset=False)
        out = []
        with torch.no_grad():
            for i in range(0, len(X), 8192):
                x = torch.as_tensor(np.asarray(X[i:i + 8192], dtype=np.float32))
                out.append(torch.softmax(self.module_(x).double(), 1))
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes_)))

    def to_module(self) -> nn.Module:
        """The fitted head as a saveable module (:data:`~transferkit.heads.modules.HEAD_MODULES`)."""
        check_is_fitted(self, "module_")
        return self.module_

    def fit_predict_episodes(self, Xs: np.ndarray, ys: np.ndarray, Xq: np.ndarray, base: Any = None,
                             episode_ids: np.ndarray | None = None) -> np.ndarray:
        """Fit one copy of this head per episode on its support set and return its query probabilities.

        Args:
            Xs: ``(E, S, D)`` support features of ``E`` episodes; ys: ``(E, S)`` their labels in ``0 .. N-1``, every
                label present in every episode.
            Xq: ``(E, Q, D)`` query features.
            base: optional ``(M, D)`` base-class features, as in :meth:`fit`.
            episode_ids: a global number per episode (seeds the heads that draw random numbers, so results do not
                depend on how episodes are batched); default ``0 .. E-1``.

        Returns:
            ``(E, Q, N)`` class probabilities.
        """
        out = []
        for e in range(len(Xs)):
            head = clone(self).fit(Xs[e], ys[e], base=base)
            out.append(head.predict_proba(Xq[e]))
        return np.stack(out)


def _check_base(base: Any, dim: int) -> torch.Tensor | None:
    if base is None:
        return None
    b = np.asarray(base, dtype=np.float32)
    if b.ndim != 2 or b.shape[1] != dim or len(b) == 0:
        raise TransferkitError(f"base must be an (M, {dim}) array of base-class features with M >= 1; got an array of "
                               f"shape {b.shape}")
    return torch.as_tensor(b)


def _one_hot_means(z: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Per-class means of ``z``: ``(..., S, D)`` with labels ``(..., S)`` -> ``(..., k, D)``."""
    onehot = torch.nn.functional.one_hot(y.long(), k).to(z.dtype)
    return (onehot.transpose(-1, -2) @ z) / onehot.sum(-2).clamp_min(1).unsqueeze(-1)


class NearestClassMean(FewShotHead):
    """Nearest class mean on SimpleShot-transformed features; probabilities are a softmax over ``-scale`` times the
    squared Euclidean distances to the class means (Prototypical Networks' inference form).

    Args:
        norm: ``none`` (UN), ``l2n`` or ``cl2n`` (see :func:`transform_features`).
        center: the centre of ``cl2n``: ``auto`` is the mean of the base-class features when ``fit`` is given some
            (SimpleShot), else of the features being fitted; ``support`` always the latter.
        scale: logit scale; None is 1 without normalisation and 10 with it (distances between unit vectors are at
            most 2). It changes the probabilities, never the predicted class; a fixed choice, not tuned.

    References:
        Wang et al., "SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning", 2019;
        Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
    """

    def __init__(self, norm: str = "cl2n", center: str = "auto", scale: float | None = None):
        self.norm = norm
        self.center = center
        self.scale = scale

    def _settings(self) -> tuple[str, float]:
        norm = _check_norm(self.norm)
        if self.center not in CENTERS:
            raise TransferkitError(f"center must be one of {', '.join(CENTERS)}; got {self.center!r}")
        scale = (1.0 if norm == "none" else 10.0) if self.scale is None else float(self.scale)
        if not scale > 0:
            raise TransferkitError(f"scale must be > 0; got {self.scale!r}")
        return norm, scale

    def _center(self, X: torch.Tensor, base: torch.Tensor | None) -> tuple[torch.Tensor, str]:
        """The centre of ``cl2n``: ``(..., 1, D)`` means over the support of each episode, or the base mean."""
        if base is not None and self.center == "auto":
            return base.double().mean(0).float(), "base"
        return X.mean(-2, keepdim=True), "support"

    def _fit(self, X: torch.Tensor, y: torch.Tensor, base: torch.Tensor | None) -> None:
        norm, scale = self._settings()
        center, where = self._center(X, base)
        center = center.reshape(-1)
        m = PrototypeModule(X.shape[1], len(self.classes_), norm, scale)
        with torch.no_grad():
            m.center.copy_(center)
            m.prototypes.copy_(_one_hot_means(transform_features(X, norm, center), y, len(self.classes_)))
        self.center_from_ = where if norm == "cl2n" else None
        self.module_ = m.eval()

    def fit_predict_episodes(self, Xs: np.ndarray, ys: np.ndarray, Xq: np.ndarray, base: Any = None,
                             episode_ids: np.ndarray | None = None) -> np.ndarray:
        """All episodes at once (the same numbers as fitting each one; see :meth:`FewShotHead.fit_predict_episodes`)."""
        norm, scale = self._settings()
        xs, xq = torch.as_tensor(np.asarray(Xs, np.float32)), torch.as_tensor(np.asarray(Xq, np.float32))
        yt = torch.as_tensor(np.asarray(ys)).long()
        k = int(yt.max()) + 1
        center, _ = self._center(xs, _check_base(base, xs.shape[-1]))
        with torch.no_grad():
            protos = _one_hot_means(transform_features(xs, norm, center), yt, k)
            logits = -scale * squared_distances(transform_features(xq, norm, center), protos)
            return torch.softmax(logits.double(), -1).numpy()


class NearestClassMeanL2N(NearestClassMean):
    """Nearest class mean on L2-normalised features (SimpleShot's L2N); see :class:`NearestClassMean`.

    References:
        Wang et al., "SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning", 2019.
    """

    def __init__(self, norm: str = "l2n", center: str = "auto", scale: float | None = None):
        super().__init__(norm=norm, center=center, scale=scale)


class ProtoNetHead(NearestClassMean):
    """Prototypical Networks at inference on a frozen backbone: class means of the raw features (SimpleShot's UN),
    probabilities a softmax over negative squared Euclidean distances; see :class:`NearestClassMean`.

    References:
        Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017 (equations 1-2).
    """

    def __init__(self, norm: str = "none", center: str = "auto", scale: float | None = None):
        super().__init__(norm=norm, center=center, scale=scale)


class LogisticL2NHead(FewShotHead):
    """Multinomial logistic regression (scikit-learn, L-BFGS) on L2-normalised features, with scikit-learn's default
    ``C=1`` as in Tian et al.'s few-shot evaluation (nothing is chosen on validation).

    Args:
        C: inverse regularisation strength.
        norm: feature transform (:func:`transform_features`); ``cl2n`` centres as :class:`NearestClassMean` does.
        center: ``auto`` or ``support``, as in :class:`NearestClassMean`.
        max_iter: L-BFGS iterations.

    References:
        Tian et al., "Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?", ECCV 2020.
    """

    def __init__(self, C: float = 1.0, norm: str = "l2n", center: str = "auto", max_iter: int = 1000):
        self.C = C
        self.norm = norm
        self.center = center
        self.max_iter = max_iter

    def _fit(self, X: torch.Tensor, y: torch.Tensor, base: torch.Tensor | None) -> None:
        norm = _check_norm(self.norm)
        if self.center not in CENTERS:
            raise TransferkitError(f"center must be one of {', '.join(CENTERS)}; got {self.center!r}")
        if not float(self.C) > 0:
            raise TransferkitError(f"C must be > 0; got {self.C!r}")
        center = base.double().mean(0).float() if base is not None and self.center == "auto" else X.mean(0)
        z = transform_features(X, norm, center).double().numpy()
        self.model_ = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter)).fit(z, y.numpy())
        self.n_iter_ = self.model_.n_iter_
        coef, intercept = self.model_.coef_, self.model_.intercept_
        if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([0, z])[1]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        m = NormedLinearModule(X.shape[1], coef.shape[0], norm, 1.0, True)
        with torch.no_grad():
            m.center.copy_(center)
            m.linear.weight.copy_(torch.as_tensor(coef))
            m.linear.bias.copy_(torch.as_tensor(intercept))
        self.module_ = m.eval()


# ---------------------------------------------------------------------------------------------------------------
# Chen et al.'s baselines: many episodes' classifiers trained as one batched model through the training loop
class EpisodeLinear(nn.Module):
    """``E`` independent linear classifiers, one per episode, in one module: episode ``e``'s logits depend on its own
    weights only, so training them together with a loss summed over episodes trains each one exactly as alone.

    With ``cosine=True`` it is Baseline++'s classifier: inputs divided by ``||x|| + 1e-5``, weight rows ``g * v /
    ||v||`` (weight normalisation, a learnable norm per class), no bias, logits times ``scale``.

    Shape:
        ``(B, E, D)`` -> ``(B, E, C)``.

    References:
        Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019 (Baseline, Baseline++).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, cosine: bool, scale: float):
        super().__init__()
        self.cosine, self.scale = bool(cosine), float(scale)
        if self.cosine:
            self.v = nn.Parameter(weight.clone())
            self.g = nn.Parameter(weight.norm(dim=-1))  # as torch's weight_norm starts: g = ||v||
        else:
            self.weight = nn.Parameter(weight.clone())
            self.bias = nn.Parameter(bias.clone())

    def effective_weight(self) -> torch.Tensor:
        """``(E, C, D)``: the classifiers' weights (``g * v / ||v||`` for the cosine form)."""
        if self.cosine:
            return self.g.unsqueeze(-1) * self.v / self.v.norm(dim=-1, keepdim=True)
        return self.weight

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        if self.cosine:
            x = x / (x.norm(dim=-1, keepdim=True) + 1e-5)
            logits = self.scale * torch.einsum("bed,ecd->bec", x, self.effective_weight())
        else:
            logits = torch.einsum("bed,ecd->bec", x, self.weight) + self.bias.unsqueeze(0)
        return (logits, x) if return_features else logits


class EpisodeCrossEntropy(Objective):
    """Cross-entropy of every episode's classifier on its own batch, averaged within an episode and summed over
    episodes (so each episode's gradient is that of its own mean loss).

    Shape:
        logits ``(B, E, C)``, labels ``(B, E)`` -> a scalar.
    """

    name = "cross_entropy"
    streams = ("labelled",)

    def forward(self, step) -> dict[str, torch.Tensor]:  # noqa: D102 - see the class
        (out,) = step.outputs("labelled")
        y = step.y("labelled")
        b, e, c = out.logits.shape
        ce = nn.functional.cross_entropy(out.logits.reshape(b * e, c), y.reshape(-1).long(), reduction="none")
        return {"cross_entropy": ce.reshape(b, e).mean(0).sum() * step.weight("labelled")}


class _EpisodePlan:
    """The training loop's plan of :func:`train_episode_classifiers` (picklable)."""

    def __init__(self, Xs, ys, k, cosine, scale, lr, momentum, dampening, weight_decay, batch_size, seeds):
        self.Xs, self.ys, self.k, self.cosine, self.scale = Xs, ys, k, cosine, scale
        self.lr, self.momentum, self.dampening, self.wd = lr, momentum, dampening, weight_decay
        self.batch_size, self.seeds = batch_size, seeds

    def __call__(self, fabric: Any):
        from ..train.loop import Plan
        from ..train.streams import TensorStream

        e, s, d = self.Xs.shape
        bound = 1.0 / math.sqrt(d)  # torch.nn.Linear's initialisation, drawn per episode from its own seed
        weights, biases = [], []
        for seed in self.seeds:
            g = torch.Generator().manual_seed(int(seed))
            weights.append((torch.rand(self.k, d, generator=g) * 2 - 1) * bound)
            biases.append((torch.rand(self.k, generator=g) * 2 - 1) * bound)
        net = EpisodeLinear(torch.stack(weights), None if self.cosine else torch.stack(biases), self.cosine,
                            self.scale)
        # rows of the stream are support positions: row j holds the j-th support item of every episode
        stream = TensorStream("labelled", np.ascontiguousarray(self.Xs.transpose(1, 0, 2)),
                              np.ascontiguousarray(self.ys.T), batch_size=self.batch_size)
        lr, mom, damp, wd = self.lr, self.momentum, self.dampening, self.wd
        return Plan(model=net, objective=EpisodeCrossEntropy(), streams={"labelled": stream},
                    param_groups=[{"params": list(net.parameters()), "lr": lr, "weight_decay": wd}],
                    optimizer=lambda groups: torch.optim.SGD(groups, lr=lr, momentum=mom, dampening=damp,
                                                             weight_decay=wd),
                    identity={"head": "chen-baseline++" if self.cosine else "chen-baseline"})


def train_episode_classifiers(Xs: np.ndarray, ys: np.ndarray, n_classes: int, *, cosine: bool = False,
                              scale: float | None = None, epochs: int = 100, batch_size: int = 4, lr: float = 0.01,
                              momentum: float = 0.9, dampening: float = 0.9, weight_decay: float = 1e-3,
                              seed: int = 0, episode_ids: np.ndarray | None = None) -> EpisodeLinear:
    """Chen et al.'s fine-tuning stage for ``E`` episodes at once: a new linear (Baseline) or cosine (Baseline++)
    classifier per episode, trained on that episode's support features with their SGD settings (lr 0.01, momentum 0.9,
    dampening 0.9, weight decay 1e-3, batches of 4, 100 epochs), through the training loop.

    One deviation, to keep the loop's batches whole: an epoch is ``ceil(S / batch_size)`` batches of exactly
    ``batch_size`` items drawn from a running sequence of permutations, where Chen et al. end each epoch with a
    smaller batch; the number of steps is theirs.

    Args:
        Xs: ``(E, S, D)`` support features; ys: ``(E, S)`` labels in ``0 .. n_classes-1``.
        n_classes: classes per episode.
        cosine: Baseline++ (cosine classifier) instead of Baseline (linear with bias).
        scale: the cosine classifier's scale; None is Chen et al.'s rule (2 up to 200 classes, else 10).
        epochs, batch_size, lr, momentum, dampening, weight_decay: the optimisation.
        seed: the seed of batch order; episode ``i``'s initial weights come from ``(seed, episode_ids[i])``.
        episode_ids: global episode numbers (default ``0 .. E-1``): the same episode gets the same classifier however
            episodes are grouped.

    Returns:
        The trained :class:`EpisodeLinear` (eval mode).

    References:
        Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019 (section 3.1 and their released code).
    """
    from ..train.loop import LoopSettings, run_loop

    Xs = np.asarray(Xs, dtype=np.float32)
    ys = np.asarray(ys, dtype=np.int64)
    if Xs.ndim != 3 or ys.shape != Xs.shape[:2]:
        raise TransferkitError(f"Xs must be (episodes, support, features) and ys (episodes, support); got shapes "
                               f"{Xs.shape} and {ys.shape}")
    e, s, _ = Xs.shape
    ids = np.arange(e) if episode_ids is None else np.asarray(episode_ids)
    if len(ids) != e:
        raise TransferkitError(f"episode_ids has {len(ids)} numbers for {e} episodes")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if int(v) < 1:
            raise TransferkitError(f"{name} must be an integer >= 1; got {v!r}")
    if not lr > 0:
        raise TransferkitError(f"lr must be > 0; got {lr!r}")
    scale = (2.0 if n_classes <= 200 else 10.0) if scale is None else float(scale)
    bs = min(int(batch_size), s)
    plan = _EpisodePlan(Xs, ys, int(n_classes), bool(cosine), scale, float(lr), float(momentum), float(dampening),
                        float(weight_decay), bs, [derive_seed(seed, int(i), 11) for i in ids])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread avoids OpenMP overhead on a busy machine
    try:
        r = run_loop(plan, LoopSettings(epochs=int(epochs), steps_per_epoch=math.ceil(s / bs), seed=int(seed),
                                        accelerator="cpu", label="chen-baseline"))
    finally:
        torch.set_num_threads(threads)
    return r.model.eval()


class ChenBaselineHead(FewShotHead):
    """Chen et al.'s Baseline: a new linear classifier (with bias) trained on the support features with SGD, through
    the training loop (see :func:`train_episode_classifiers` for the settings). The backbone stays frozen: Chen et
    al.'s first stage (training the backbone on base classes) is the pretrained backbone here, so base-class features
    are not used.

    Args:
        cosine: the Baseline++ cosine classifier instead (see :class:`ChenBaselinePlusHead`).
        epochs, batch_size, lr, momentum, dampening, weight_decay: Chen et al.'s fine-tuning settings.
        scale: the cosine classifier's scale (None: 2 up to 200 classes, else 10).
        random_state: seed of the initial weights and the batch order.

    References:
        Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019.
    """

    def __init__(self, cosine: bool = False, epochs: int = 100, batch_size: int = 4, lr: float = 0.01,
                 momentum: float = 0.9, dampening: float = 0.9, weight_decay: float = 1e-3,
                 scale: float | None = None, random_state: int = 0):
        self.cosine = cosine
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.dampening = dampening
        self.weight_decay = weight_decay
        self.scale = scale
        self.random_state = random_state

    def _train(self, Xs: np.ndarray, ys: np.ndarray, k: int, episode_ids: np.ndarray | None) -> EpisodeLinear:
        return train_episode_classifiers(Xs, ys, k, cosine=bool(self.cosine), scale=self.scale,
                                         epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                                         momentum=float(self.momentum), dampening=float(self.dampening),
                                         weight_decay=float(self.weight_decay), seed=int(self.random_state),
                                         episode_ids=episode_ids)

    def _fit(self, X: torch.Tensor, y: torch.Tensor, base: torch.Tensor | None) -> None:
        k = len(self.classes_)
        net = self._train(X.numpy()[None], y.numpy()[None], k, None)
        cos = bool(self.cosine)
        m = NormedLinearModule(X.shape[1], k, "l2n" if cos else "none", net.scale if cos else 1.0, bias=not cos,
                               eps=1e-5)
        with torch.no_grad():
            m.linear.weight.copy_(net.effective_weight()[0])
            if not cos:
                m.linear.bias.copy_(net.bias[0])
        self.module_ = m.eval()

    def fit_predict_episodes(self, Xs: np.ndarray, ys: np.ndarray, Xq: np.ndarray, base: Any = None,
                             episode_ids: np.ndarray | None = None) -> np.ndarray:
        """Every episode's classifier trained together as one batched model (the same classifiers as training each
        alone; see :class:`EpisodeLinear`)."""
        ys = np.asarray(ys)
        net = self._train(np.asarray(Xs, np.float32), ys, int(ys.max()) + 1, episode_ids)
        with torch.no_grad():
            logits = net(torch.as_tensor(np.asarray(Xq, np.float32)).transpose(0, 1))  # (Q, E, C)
            return torch.softmax(logits.double(), -1).transpose(0, 1).numpy()


class ChenBaselinePlusHead(ChenBaselineHead):
    """Chen et al.'s Baseline++: a cosine classifier (L2-normalised features, weight-normalised class vectors, a
    fixed scale) trained on the support features like :class:`ChenBaselineHead`.

    References:
        Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019 (Baseline++).
    """

    def __init__(self, cosine: bool = True, epochs: int = 100, batch_size: int = 4, lr: float = 0.01,
                 momentum: float = 0.9, dampening: float = 0.9, weight_decay: float = 1e-3,
                 scale: float | None = None, random_state: int = 0):
        super().__init__(cosine=cosine, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                         dampening=dampening, weight_decay=weight_decay, scale=scale, random_state=random_state)


_FEW = {"needs_labels": True, "min_labels_per_class": 1, "fewshot": True}
HEADS.add("protonet", ProtoNetHead, kind="sklearn", paper="Snell et al., NeurIPS 2017", **_FEW)
HEADS.add("ncm-l2n", NearestClassMeanL2N, kind="sklearn", paper="Wang et al., SimpleShot, 2019", **_FEW)
HEADS.add("ncm-cl2n", NearestClassMean, kind="sklearn", paper="Wang et al., SimpleShot, 2019", uses_base=True, **_FEW)
HEADS.add("logreg-l2n", LogisticL2NHead, kind="sklearn", paper="Tian et al., ECCV 2020", **_FEW)
HEADS.add("chen-baseline", ChenBaselineHead, kind="torch", paper="Chen et al., ICLR 2019", **_FEW)
HEADS.add("chen-baseline++", ChenBaselinePlusHead, kind="torch", paper="Chen et al., ICLR 2019", **_FEW)
