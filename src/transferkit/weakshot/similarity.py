"""The similarity net of SimTrans: "do these two items show the same class?", learned on clean base classes.

A :class:`SimilarityNet` scores **pairs**: each item goes through a trunk (standardisation, a linear layer and a
ReLU, started from the base classifier's hidden layer), the two trunk features are concatenated and an MLP with
batch norm gives a two-way ``(different, same)`` output. It is category-agnostic, so it transfers from the base
classes it was trained on to novel classes it never saw.

Training goes through the one training loop (:func:`train_similarity`): the base items arrive in batches, the net
scores every ordered pair of a batch of ``B`` items (``B * B`` pairs, each item's trunk computed once), and
:class:`PairLoss` is the class-balanced cross-entropy of same / different (different pairs outnumber same pairs by
about the number of classes). The checkpoint is chosen by :class:`PairAccuracy`, the balanced accuracy on pairs of
held-out base items (never novel data).

References:
    Chen, Niu, Liu & Zhang, "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021
    (the similarity net: concatenated pair features, an MLP, a two-way output; like the reference code's head type 4
    a three-layer MLP with batch norm, narrowed for a CPU, over every ordered pair of a batch).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from ..train.loop import Evaluator, LoopSettings, Plan, run_loop
from ..train.objectives import Objective, Outputs, Step
from ..train.streams import TensorStream, derive_seed

#: what the similarity net's pair MLP reads (see :class:`SimilarityNet`)
PAIR_KINDS = ("concat", "symmetric", "difference")

__all__ = ["PAIR_KINDS", "PrecomputedSimilarity", "SimilarityNet", "PairLoss", "PairAccuracy", "SimilarityFit",
           "train_similarity", "all_pairs", "same_class_probabilities", "pair_targets", "heldout_pairs", "CosinePrior",
           "BlendedSimilarity", "fit_similarity"]


def all_pairs(x: torch.Tensor) -> torch.Tensor:
    """Every ordered pair of a batch, ``(i, j)`` at row ``i * B + j`` (the self-pairs included).

    Shape:
        ``(B, D)`` -> ``(B * B, 2, D)``.
    """
    b = x.shape[0]
    return torch.stack([x.unsqueeze(1).expand(b, b, -1), x.unsqueeze(0).expand(b, b, -1)], dim=2).reshape(
        b * b, 2, x.shape[1])


def pair_targets(y: torch.Tensor) -> torch.Tensor:
    """1 where the two items of :func:`all_pairs` share a label, else 0.

    Shape:
        ``(B,)`` -> ``(B * B,)``.
    """
    return (y.unsqueeze(1) == y.unsqueeze(0)).long().reshape(-1)


class SimilarityNet(nn.Module):
    """Scores pairs of feature vectors: logits of ``(different, same)``.

    Args:
        in_features: width of the input features (the backbone's).
        hidden: width of the trunk; the pair MLP is ``2h -> h -> h -> h/2 -> 2`` with batch norm and ReLU.
        pair: what the pair MLP reads of the two trunk features ``a``, ``b``: ``concat`` ``[a, b]`` (the paper's),
            ``symmetric`` ``[a, b, |a - b|, a * b]``, or ``difference`` ``[|a - b|, a * b]`` on L2-normalised
            ``a``, ``b`` (an addition to the paper's net: without ``a`` and ``b`` themselves the MLP cannot learn
            *which* base classes a pair shows, only how the two items compare, so the similarity transfers to
            classes it never saw; it is also symmetric in the two items).

    Shape:
        forward: ``(N, 2, D)`` pairs -> ``(N, 2)`` logits; a batch of items ``(B, D)`` -> the logits of its every
        ordered pair ``(B * B, 2)``, row ``i * B + j`` for ``(i, j)`` as in :func:`all_pairs` (each item's trunk
        computed once). With ``return_features=True`` also the pair representation (the input of the last two
        layers). The same in training and evaluation mode.
    """

    def __init__(self, in_features: int, hidden: int = 256, pair: str = "concat"):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        half = max(hidden // 2, 2)
        if pair not in PAIR_KINDS:
            raise DataError(f"pair must be one of {', '.join(PAIR_KINDS)}; got {pair!r}")
        self.pair = pair
        width = {"concat": 2, "symmetric": 4, "difference": 2}[pair] * hidden
        self.fc1 = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.fc3 = nn.Sequential(nn.Linear(hidden, half), nn.BatchNorm1d(half), nn.ReLU())
        self.out = nn.Linear(half, 2)
        self.in_features, self.hidden = int(in_features), int(hidden)

    def init_from(self, head: nn.Module) -> "SimilarityNet":
        """Start the trunk from a trained :class:`~transferkit.heads.modules.HeadModule` with one hidden layer of the
        same width (its standardisation and first linear layer): the base classifier, as in the paper."""
        first = head.layers[0]
        if first.in_features != self.in_features or first.out_features != self.hidden:
            raise DataError(f"the base classifier's hidden layer is {first.in_features} -> {first.out_features}; the "
                            f"similarity net needs {self.in_features} -> {self.hidden}")
        with torch.no_grad():
            self.mean.copy_(head.mean)
            self.scale.copy_(head.scale)
            self.trunk[0].weight.copy_(first.weight)
            self.trunk[0].bias.copy_(first.bias)
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk features of items. Shape: ``(N, D)`` -> ``(N, hidden)``."""
        return self.trunk((x - self.mean) / self.scale)

    def score_embedded(self, a: torch.Tensor, b: torch.Tensor, return_features: bool = False):
        """Logits of pairs given their trunk features. Shape: ``(N, h)``, ``(N, h)`` -> ``(N, 2)``."""
        if self.pair == "difference":
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
            parts = [(a - b).abs(), a * b]
        else:
            parts = [a, b, (a - b).abs(), a * b] if self.pair == "symmetric" else [a, b]
        z = self.fc2(self.fc1(torch.cat(parts, dim=1)))
        logits = self.out(self.fc3(z))
        return (logits, z) if return_features else logits

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        if x.ndim == 2:  # a batch of items: every ordered pair of it
            e = self.embed(x)
            b = len(e)
            return self.score_embedded(e.unsqueeze(1).expand(b, b, -1).reshape(b * b, -1),
                                       e.unsqueeze(0).expand(b, b, -1).reshape(b * b, -1), return_features)
        if x.ndim != 3 or x.shape[1] != 2:
            raise DataError(f"the similarity net scores pairs (N, 2, D) or every pair of a batch (B, D); got shape "
                            f"{tuple(x.shape)}")
        n = x.shape[0]
        e = self.embed(x.reshape(2 * n, -1)).reshape(n, 2, -1)
        return self.score_embedded(e[:, 0], e[:, 1], return_features)

    @torch.no_grad()
    def matrix(self, x: torch.Tensor, y: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Same-class probabilities of every pair: ``P[i, j] = p(same | x_i, y_j)`` (``y`` defaults to ``x``).

        Shape:
            ``(N, D)``, ``(M, D)`` -> ``(N, M)``.
        """
        y = x if y is None else y
        ex, ey = self.embed(x), self.embed(y)
        out = torch.empty(len(ex), len(ey), dtype=torch.float32)
        rows = max(1, chunk // max(len(ey), 1))
        for s in range(0, len(ex), rows):
            a = ex[s:s + rows]
            k = len(a)
            aa = a.unsqueeze(1).expand(k, len(ey), -1).reshape(k * len(ey), -1)
            bb = ey.unsqueeze(0).expand(k, len(ey), -1).reshape(k * len(ey), -1)
            out[s:s + k] = torch.softmax(self.score_embedded(aa, bb).float(), 1)[:, 1].reshape(k, len(ey)).cpu()
        return out


class PairLoss(Objective):
    """Class-balanced cross-entropy of same / different over every ordered pair of a batch (self-pairs left out).

    Each pair class is weighted by the inverse of its count in the batch, so same and different pairs weigh equally
    whatever the number of classes.

    Args:
        stream: the labelled stream (its batches of items; the net scores every ordered pair of each).
    """

    name = "pairs"

    def __init__(self, stream: str = "base"):
        super().__init__()
        self.stream = stream
        self.streams = (stream,)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        logits = step.outputs(self.stream)[0].logits.float()
        y = step.y(self.stream)
        t = pair_targets(y)
        b = len(y)
        off = ~torch.eye(b, dtype=torch.bool, device=logits.device).reshape(-1)
        logits, t = logits[off], t[off]
        counts = torch.bincount(t, minlength=2).float()
        w = torch.where(counts > 0, t.numel() / (2 * counts.clamp(min=1)), torch.zeros_like(counts))
        loss = F.cross_entropy(logits, t, weight=w)
        return {self.name: loss * step.weight(self.stream)}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "stream": self.stream, "balanced": True}


class PairAccuracy(Evaluator):
    """Balanced accuracy (mean of the same-pair and different-pair recalls) on held-out pairs; the best checkpoint
    has the highest."""

    selection = "pair_balanced_accuracy"

    def __init__(self, pairs: np.ndarray, same: np.ndarray):
        self.streams = {"pairs": TensorStream("pairs", pairs)}
        self.same = np.asarray(same, dtype=bool)

    def evaluate(self, predict: Callable[[str], Outputs], epoch: int) -> dict[str, float | None]:
        pred = np.asarray(predict("pairs").logits).argmax(1) == 1
        tpr = float((pred & self.same).sum() / max(self.same.sum(), 1))
        tnr = float((~pred & ~self.same).sum() / max((~self.same).sum(), 1))
        return {"pair_balanced_accuracy": 0.5 * (tpr + tnr), "pair_same_recall": tpr, "pair_different_recall": tnr}


def heldout_pairs(X: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` pairs of distinct items, half same-class and half different-class where possible.

    Returns:
        ``pairs (M, 2, D)`` and ``same (M,)``.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    idx = np.arange(len(y))
    same, diff = [], []
    half = max(1, n // 2)
    for _ in range(4 * n):
        if len(same) >= half and len(diff) >= half:
            break
        i, j = rng.choice(idx, 2, replace=False)
        if y[i] == y[j]:
            if len(same) < half:
                same.append((i, j))
        elif len(diff) < half:
            diff.append((i, j))
    ij = np.asarray(same + diff, dtype=np.int64).reshape(-1, 2)
    pairs = np.stack([X[ij[:, 0]], X[ij[:, 1]]], axis=1).astype(np.float32)
    return pairs, np.r_[np.ones(len(same), bool), np.zeros(len(diff), bool)]


@dataclass
class SimilarityFit:
    """What :func:`train_similarity` returns: the net (eval mode, CPU), its held-out pair scores and history."""

    net: SimilarityNet
    scores: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


@dataclass
class _SimilarityPlan:
    """The loop's plan for the similarity net (picklable)."""

    X: np.ndarray
    y: np.ndarray
    pairs: np.ndarray
    same: np.ndarray
    init: nn.Module | None
    hidden: int
    pair: str
    batch_size: int
    lr: float
    weight_decay: float
    seed: int

    def __call__(self, fabric: Any) -> Plan:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, 21))
            net = SimilarityNet(self.X.shape[1], self.hidden, self.pair)
        if self.init is not None:
            net.init_from(self.init)
        else:
            with torch.no_grad():
                net.mean.copy_(torch.as_tensor(self.X.mean(0)))
                net.scale.copy_(torch.as_tensor(np.maximum(self.X.std(0), 1e-6)))
        stream = TensorStream("base", self.X, self.y, batch_size=self.batch_size)
        decay = [p for p in net.parameters() if p.ndim > 1]
        rest = [p for p in net.parameters() if p.ndim <= 1]
        lr, wd = self.lr, self.weight_decay
        return Plan(model=net, objective=PairLoss("base"), streams={"base": stream},
                    param_groups=[{"params": decay, "lr": lr, "weight_decay": wd, "name": "simnet"},
                                  {"params": rest, "lr": lr, "weight_decay": 0.0, "name": "simnet:no_decay"}],
                    optimizer=lambda g: torch.optim.AdamW(g, lr=lr, weight_decay=wd),
                    evaluator=PairAccuracy(self.pairs, self.same),
                    identity={"stage": "similarity", "hidden": self.hidden, "pair": self.pair,
                              "batch_size": self.batch_size,
                              "lr": lr, "weight_decay": wd, "data": _digest(self.X), "labels": _digest(self.y)})


def _digest(a: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.shape}|{a.dtype}|".encode() + a.tobytes()).hexdigest()[:16]


def train_similarity(X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
                     init: nn.Module | None = None, hidden: int = 256, pair: str = "concat", steps: int = 300,
                     eval_every: int = 50, batch_size: int = 40, lr: float = 1e-3, weight_decay: float = 1e-4, val_pairs: int = 4000,
                     seed: int = 0, run_dir: Any = None, resume: bool = False,
                     log: Callable[[str], None] | None = None) -> SimilarityFit:
    """Train a :class:`SimilarityNet` on labelled (base-class) features through the training loop.

    Args:
        X, y: base-class training features ``(N, D)`` and integer labels.
        X_val, y_val: held-out base items; pairs of them choose the checkpoint (balanced accuracy).
        init: a base classifier (:class:`~transferkit.heads.modules.HeadModule` with one hidden layer of width
            ``hidden``) whose hidden layer starts the trunk; None: a fresh trunk.
        hidden: trunk width.
        pair: what the pair MLP reads (``concat``, ``symmetric``, ``difference``; see :class:`SimilarityNet`).
        steps, eval_every: optimisation steps and the interval of checkpoint evaluations.
        batch_size: items per batch (``batch_size ** 2`` pairs).
        lr, weight_decay: AdamW settings.
        val_pairs: held-out pairs scored at each evaluation.
        seed: seeds the initialisation, the batches and the held-out pairs.
        run_dir, resume: checkpoints of the loop (None: in memory).
        log: one line per evaluation.

    Raises:
        DataError: fewer than 2 classes, or no held-out items.

    References:
        Chen et al., "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021.
    """
    X = np.asarray(X, np.float32)
    y = np.asarray(y, np.int64)
    if len(np.unique(y)) < 2:
        raise DataError("the similarity net needs base items of at least 2 classes (same and different pairs)")
    if len(y_val) < 2:
        raise DataError("the similarity net needs at least 2 held-out base items to choose its checkpoint")
    pairs, same = heldout_pairs(np.asarray(X_val, np.float32), np.asarray(y_val), val_pairs, derive_seed(seed, 22))
    plan = _SimilarityPlan(X, y, pairs, same, None if init is None else copy.deepcopy(init).cpu(), int(hidden),
                           str(pair), int(min(batch_size, len(y))), float(lr), float(weight_decay), int(seed))
    every = max(1, min(int(eval_every), int(steps)))
    settings = LoopSettings(epochs=-(-int(steps) // every), steps_per_epoch=every, seed=int(seed), accelerator="cpu",
                            label="similarity net", unit="steps", eval_batch_size=1024)
    r = run_loop(plan, settings, run_dir, resume=resume, log=log)
    return SimilarityFit(r.model.eval(), dict(r.best_scores), r.history, r.seconds)


def same_class_probabilities(net: Any, X: np.ndarray) -> np.ndarray:
    """``P[i, j] = p(same class | x_i, x_j)`` for every ordered pair of ``X`` (a :class:`SimilarityNet` or a
    :class:`BlendedSimilarity`, in evaluation mode).

    Shape:
        ``(N, D)`` -> ``(N, N)``.
    """
    net = net.eval()
    with torch.no_grad():
        return net.matrix(torch.as_tensor(np.asarray(X, np.float32))).numpy()


class PrecomputedSimilarity:
    """A similarity matrix computed elsewhere behind the similarity nets' ``matrix`` interface: an item is its row
    number, given as the first feature column (``x[:, 0]``). For similarities from another tool, and for tests and
    ablations that fix the similarities by hand."""

    def __init__(self, P: Any):
        P = np.asarray(P, dtype=np.float64)
        if P.ndim != 2 or P.shape[0] != P.shape[1] or not np.isfinite(P).all():
            raise DataError(f"a precomputed similarity must be a square (N, N) matrix of finite numbers, one row and "
                            f"column per item; got shape {P.shape}"
                            + ("" if P.ndim != 2 or np.isfinite(P).all() else " with NaN or inf values"))
        self.P = torch.as_tensor(P, dtype=torch.float32)

    def eval(self) -> "PrecomputedSimilarity":
        """Itself (nothing to switch: the matrix is fixed), as the nets' ``eval`` returns the net."""
        return self

    def parameters(self):
        """None to train or freeze (the graph term freezes a net's parameters)."""
        return iter(())

    def matrix(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``P[i, j]`` for the items ``i`` of ``x`` and ``j`` of ``y`` (``x`` with itself when ``y`` is None)."""
        i = x[:, 0].long()
        j = i if y is None else y[:, 0].long()
        n = len(self.P)
        for items in (i, j):
            if len(items) and (int(items.min()) < 0 or int(items.max()) >= n):
                raise DataError(f"a precomputed similarity of {n} items is read by row number (the first feature "
                                f"column), but the items ask for rows {int(items.min())}..{int(items.max())}; give "
                                "the items' positions in the matrix as their first column")
        return self.P[i][:, j]


class CosinePrior(nn.Module):
    """A same-class probability without learning a net: the cosine of centred, L2-normalised features (SimpleShot's
    CL2N, Wang et al. 2019, centred on the base classes' mean), mapped to a probability by a class-balanced
    one-feature logistic regression fitted on pairs of base items: ``p(same | i, j) = sigmoid(a * cos_ij + b)``.

    It transfers to novel classes as far as the frozen features do, which on small base sets (5-6 classes) is
    further than the similarity net (see :class:`BlendedSimilarity`).

    Args:
        mean: ``(D,)`` the centre (the base items' mean).
        a, b: the calibration's slope and intercept.

    Shape:
        :meth:`matrix`: ``(N, D)``, ``(M, D)`` -> ``(N, M)``.
    """

    def __init__(self, mean: Any, a: float, b: float):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)))
        self.a, self.b = float(a), float(b)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, max_items: int = 600, seed: int = 0) -> "CosinePrior":
        """Centre on ``X``'s mean and calibrate on every pair of up to ``max_items`` of its items (same / different
        pairs weighted equally).

        Raises:
            DataError: fewer than 2 classes.
        """
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, np.float64)
        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            raise DataError("the cosine prior is calibrated on base items of at least 2 classes")
        mean = X.mean(0)
        rng = np.random.default_rng(derive_seed(seed, 23))
        pick = rng.permutation(len(y))[:max_items]
        U = X[pick] - mean
        U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
        iu = np.triu_indices(len(pick), 1)
        cos = (U @ U.T)[iu]
        same = (y[pick][:, None] == y[pick][None, :])[iu]
        lr = LogisticRegression(class_weight="balanced", C=100.0).fit(cos[:, None], same)
        return cls(mean, float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    @torch.no_grad()
    def matrix(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Same-class probabilities of every pair (``y`` defaults to ``x``)."""
        u = F.normalize(torch.as_tensor(x, dtype=torch.float32) - self.mean, dim=1)
        v = u if y is None else F.normalize(torch.as_tensor(y, dtype=torch.float32) - self.mean, dim=1)
        return torch.sigmoid(self.a * (u @ v.T) + self.b).cpu()


class BlendedSimilarity(nn.Module):
    """``blend * net + (1 - blend) * prior``: the similarity net's same-class probability mixed with the calibrated
    cosine of the frozen features (:class:`CosinePrior`). Both are probabilities of the same event calibrated on
    base pairs, so the mix is one too. Used wherever SimTrans reads similarities (its weights and its graph term),
    with the net's :meth:`matrix` interface.

    Args:
        net: the trained :class:`SimilarityNet`.
        prior: the :class:`CosinePrior` of the same features.
        blend: the net's share in ``[0, 1]`` (1: the net alone, the paper's).
    """

    def __init__(self, net: SimilarityNet, prior: CosinePrior, blend: float):
        super().__init__()
        if not 0 <= blend <= 1:
            raise DataError(f"the similarity blend must be in [0, 1]; got {blend}")
        self.net, self.prior, self.blend = net, prior, float(blend)

    @torch.no_grad()
    def matrix(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Same-class probabilities of every pair (``y`` defaults to ``x``). Shape: ``(N, D)``, ``(M, D)`` -> ``(N, M)``."""
        out = self.prior.matrix(x, y) * (1 - self.blend)
        if self.blend > 0:
            out += self.blend * self.net.matrix(x, y)
        return out


def fit_similarity(X: np.ndarray, split: Any, cfg: Any, seed: int, init: nn.Module | None = None) -> SimilarityFit:
    """SimTrans's similarity as a :class:`~transferkit.weakshot.WeakShotConfig` asks: the net trained on the split's
    base items (:func:`train_similarity`), blended with the cosine prior when ``cfg.sim_blend < 1``
    (:class:`BlendedSimilarity`; ``fit.net`` is then the blend)."""
    sp = split
    fit = train_similarity(X[sp.base_train], sp.base_y_train, X[sp.base_val], sp.base_y_val, init=init,
                           hidden=cfg.hidden, pair=cfg.sim_pair, steps=cfg.sim_steps, eval_every=cfg.sim_eval_every,
                           batch_size=cfg.sim_batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=seed)
    if cfg.sim_blend < 1:
        prior = CosinePrior.fit(X[sp.base_train], sp.base_y_train, seed=seed)
        fit.net = BlendedSimilarity(fit.net, prior, cfg.sim_blend).eval()
        fit.scores = {**fit.scores, "cosine_prior": {"a": prior.a, "b": prior.b}, "blend": cfg.sim_blend}
    return fit
