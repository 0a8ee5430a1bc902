"""Shallow heads trained on cached features: logistic regression (scikit-learn), linear and MLP (torch, through the
training loop).

All heads are scikit-learn classifiers (``fit`` / ``predict`` / ``predict_proba`` / ``score``, ``get_params``),
accept an optional ``eval_set=(X_val, y_val)`` in ``fit`` for model choice / early stopping on a validation
split, and export to a head module (:mod:`transferkit.heads.modules`) that a run saves as safetensors + JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..registry import Registry
from .modules import HeadModule

__all__ = ["HEADS", "HeadBase", "LogisticHead", "LinearHead", "MLPHead", "create_head", "chunked_moments"]

#: heads by name; capabilities: ``needs_labels`` (trained on labels), ``min_labels_per_class`` (the fewest it is
#: meant for), ``kind`` (``sklearn`` or ``torch``)
HEADS: Registry[Any] = Registry("head")


def chunked_moments(X: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation in float64, reading ``X`` in chunks (memory-mapped safe)."""
    n = len(X)
    s = np.zeros(X.shape[1])
    ss = np.zeros(X.shape[1])
    for i in range(0, n, chunk):
        c = np.asarray(X[i:i + chunk], dtype=np.float64)
        s += c.sum(0)
        ss += (c * c).sum(0)
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(ss / max(n, 1) - mean * mean, 0.0))
    std[std < 1e-8] = 1.0
    return mean, std


class HeadBase(ClassifierMixin, BaseEstimator):
    """Shared plumbing of every head: input checks (memory-mapped features kept mapped), label encoding into
    ``classes_``, class weights, the validation set encoded, and ``predict`` from ``predict_proba``. A head in its own
    file subclasses it."""

    def _check_X(self, X: Any, reset: bool) -> np.ndarray:
        if isinstance(X, np.memmap) and X.ndim == 2:  # larger than RAM: keep it mapped, check the shape only
            if reset:
                self.n_features_in_ = X.shape[1]
            elif X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                                 f"{self.n_features_in_} features as input.")
            return X
        return validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])

    def _encode(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(X, np.memmap) and X.ndim == 2:
            X = self._check_X(X, reset=True)
            y = np.asarray(y)
            if len(y) != len(X):
                raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
        else:
            X, y = validate_data(self, X, y, reset=True, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes; got 1 class ({self.classes_[0]!r})")
        return X, y_enc

    def _class_weights(self, y_enc: np.ndarray) -> np.ndarray | None:
        k = len(self.classes_)
        if self.class_weight is None:
            return None
        if self.class_weight == "balanced":
            return compute_class_weight("balanced", classes=np.arange(k), y=y_enc)
        return np.asarray([float(self.class_weight.get(c, 1.0)) for c in self.classes_])

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class for each row."""
        check_is_fitted(self, "classes_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _val_encoded(self, eval_set: tuple[Any, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
        if eval_set is None or len(eval_set[1]) == 0:
            return None
        Xv = self._check_X(eval_set[0], reset=False)
        lookup = {c: i for i, c in enumerate(self.classes_)}
        keep = np.asarray([v in lookup for v in eval_set[1]])
        yv = np.asarray([lookup[v] for v in np.asarray(eval_set[1])[keep]], dtype=np.int64)
        return np.asarray(Xv)[keep], yv


@HEADS.register("logreg", needs_labels=True, min_labels_per_class=1, kind="sklearn")
class LogisticHead(HeadBase):
    """Multinomial logistic regression on standardised features (scikit-learn ``LogisticRegression``).

    Args:
        C: inverse regularisation strength, or ``"auto"``: chosen from ``Cs`` on ``eval_set`` when one is
            given to ``fit`` (then refitted on train + validation), else 1.0.
        Cs: the grid for ``C="auto"``.
        class_weight: ``"balanced"`` (default) reweights classes inversely to their frequency, or None.
        max_iter: L-BFGS iterations.

    References:
        Kornblith, Shlens & Le, "Do Better ImageNet Models Transfer Better?", CVPR 2019 (linear probes).
    """

    def __init__(self, C: float | str = "auto", Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
                 class_weight: str | None = "balanced", max_iter: int = 2000):
        self.C = C
        self.Cs = Cs
        self.class_weight = class_weight
        self.max_iter = max_iter

    def _model(self, C: float, y_enc: np.ndarray) -> LogisticRegression:
        cw = self._class_weights(y_enc)
        return LogisticRegression(C=C, max_iter=self.max_iter,
                                  class_weight=None if cw is None else dict(enumerate(cw)))

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> "LogisticHead":
        """Fit on ``(X, y)``; with ``C="auto"`` and an ``eval_set``, choose C on it, then refit on both."""
        X, y_enc = self._encode(X, y)
        X = np.asarray(X, dtype=np.float64)
        val = self._val_encoded(eval_set)
        self.scores_: dict[float, float] = {}
        if self.C == "auto" and val is not None:
            mean, std = chunked_moments(X)
            Xs, Xv = (X - mean) / std, (val[0] - mean) / std
            m = self._model(min(self.Cs), y_enc).set_params(warm_start=True)
            for C in sorted(self.Cs):  # a regularisation path: each fit starts from the previous solution
                m.set_params(C=C).fit(Xs, y_enc)
                self.scores_[C] = float((m.predict(Xv) == val[1]).mean())
            self.C_ = max(self.Cs, key=lambda c: (self.scores_[c], -abs(np.log10(c))))
            X = np.concatenate([X, val[0]])
            y_enc = np.concatenate([y_enc, val[1]])
        else:
            self.C_ = 1.0 if self.C == "auto" else float(self.C)
        self.mean_, self.scale_ = chunked_moments(X)
        self.model_ = self._model(self.C_, y_enc).fit((X - self.mean_) / self.scale_, y_enc)
        self.n_iter_ = self.model_.n_iter_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        X = self._check_X(X, reset=False)
        return self.model_.predict_proba((np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_)

    def to_module(self) -> HeadModule:
        """The fitted head as a :class:`HeadModule` (same probabilities under softmax)."""
        check_is_fitted(self, "model_")
        coef, intercept = self.model_.coef_, self.model_.intercept_
        if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([0, z])[1]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        m = HeadModule(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            m.mean.copy_(torch.as_tensor(self.mean_))
            m.scale.copy_(torch.as_tensor(self.scale_))
            m.layers[0].weight.copy_(torch.as_tensor(coef))
            m.layers[0].bias.copy_(torch.as_tensor(intercept))
        return m


class MLPHead(HeadBase):
    """A torch MLP (no hidden layer: a linear head) trained with AdamW and cross-entropy through the training loop.

    Minibatches are read from ``X`` by index, so memory-mapped features larger than RAM train fine.
    With an ``eval_set`` training stops early when validation accuracy has not improved for ``patience``
    epochs, and the best epoch's weights are kept.

    Args:
        hidden: sizes of the hidden layers; ``()`` is a linear head.
        lr, weight_decay, epochs, batch_size, dropout: optimisation settings.
        patience: early-stopping patience in epochs (needs ``eval_set``).
        class_weight: ``"balanced"`` weights the loss by inverse class frequency, or None.
        random_state: seed for initialisation and batch order.
    """

    def __init__(self, hidden: tuple[int, ...] = (512,), lr: float = 1e-3, weight_decay: float = 1e-4,
                 epochs: int = 200, batch_size: int = 256, dropout: float = 0.2, patience: int = 20,
                 class_weight: str | None = "balanced", random_state: int = 0):
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.dropout = dropout
        self.patience = patience
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> "MLPHead":
        """Train; with ``eval_set``, stop early on validation accuracy and keep the best epoch."""
        from ..train.loop import LoopSettings, run_loop

        X, y_enc = self._encode(X, y)
        val = self._val_encoded(eval_set)
        threads = torch.get_num_threads()
        # small matrices: one thread avoids OpenMP overhead that dominates tiny steps on a busy machine
        torch.set_num_threads(1 if X.shape[0] * X.shape[1] < 4_000_000 else threads)
        try:
            plan = HeadPlan(X, y_enc, val, len(self.classes_), tuple(self.hidden), float(self.dropout), float(self.lr),
                             float(self.weight_decay), int(self.batch_size), self._class_weights(y_enc),
                             int(self.random_state))
            r = run_loop(plan, LoopSettings(epochs=int(self.epochs), seed=int(self.random_state),
                                            patience=int(self.patience) if val is not None else None,
                                            accelerator="cpu", label="head"))
        finally:
            torch.set_num_threads(threads)
        self.history_ = [{k: v for k, v in row.items() if k in ("epoch", "train_loss", "val_accuracy")}
                         for row in r.history]
        self.best_epoch_ = r.best_epoch
        self.module_ = r.model.eval()
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "module_")
        X = self._check_X(X, reset=False)
        out = []
        with torch.no_grad():
            for i in range(0, len(X), 8192):
                out.append(torch.softmax(self.module_(torch.as_tensor(np.asarray(X[i:i + 8192], dtype=np.float32))), 1))
        return torch.cat(out).double().numpy()

    def to_module(self) -> HeadModule:
        """The trained :class:`~transferkit.heads.modules.HeadModule`."""
        check_is_fitted(self, "module_")
        return self.module_


class HeadPlan:
    """The training loop's plan of a torch head on feature arrays (picklable): standardisation from the training
    features, class-weighted cross-entropy, AdamW, selection on the validation split. Subclasses change the module
    through :meth:`make_module`."""

    def __init__(self, X, y, val, k, hidden, dropout, lr, weight_decay, batch_size, class_weight, seed):
        self.X, self.y, self.val, self.k = X, y, val, k
        self.hidden, self.dropout, self.lr, self.wd = hidden, dropout, lr, weight_decay
        self.batch_size, self.class_weight, self.seed = batch_size, class_weight, seed

    def make_module(self) -> torch.nn.Module:
        """The untrained head (its ``mean`` and ``scale`` buffers are set from the training features)."""
        return HeadModule(self.X.shape[1], self.k, self.hidden, self.dropout)

    def __call__(self, fabric: Any):
        from ..train.loop import Plan, ValidationAccuracy
        from ..train.objectives import CrossEntropy
        from ..train.streams import TensorStream

        mean, std = chunked_moments(self.X)
        torch.manual_seed(self.seed)
        net = self.make_module()
        with torch.no_grad():
            net.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            net.scale.copy_(torch.as_tensor(std, dtype=torch.float32))
        X = self.X if isinstance(self.X, np.memmap) else np.asarray(self.X, dtype=np.float32)
        stream = TensorStream("labelled", X, self.y, batch_size=self.batch_size)
        ev = None
        if self.val is not None:
            ev = ValidationAccuracy(TensorStream("val", np.asarray(self.val[0], dtype=np.float32)), self.val[1],
                                    tie_break=False)
        lr, wd = self.lr, self.wd
        return Plan(model=net, objective=CrossEntropy(class_weight=self.class_weight), streams={"labelled": stream},
                    param_groups=[{"params": list(net.parameters()), "lr": lr, "weight_decay": wd}],
                    optimizer=lambda g: torch.optim.AdamW(g, lr=lr, weight_decay=wd), evaluator=ev)


class LinearHead(MLPHead):
    """A linear softmax classifier trained in torch (an :class:`MLPHead` without hidden layers)."""

    def __init__(self, hidden: tuple[int, ...] = (), lr: float = 1e-2, weight_decay: float = 1e-4,
                 epochs: int = 200, batch_size: int = 256, dropout: float = 0.0, patience: int = 20,
                 class_weight: str | None = "balanced", random_state: int = 0):
        super().__init__(hidden=hidden, lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size,
                         dropout=dropout, patience=patience, class_weight=class_weight, random_state=random_state)


HEADS.add("linear", LinearHead, needs_labels=True, min_labels_per_class=2, kind="torch")
HEADS.add("mlp", MLPHead, needs_labels=True, min_labels_per_class=2, kind="torch")


def create_head(name: str, **params: Any) -> Any:
    """A head by name: ``logreg``, ``linear``, ``mlp``, the few-shot heads of :mod:`.fewshot` (see :data:`HEADS`)."""
    return HEADS.create(name, **params)
