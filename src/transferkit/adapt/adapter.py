"""``DomainAdapter``: one estimator over every domain-adaptation method, on cached features or end to end.

Levels (the same method names where both make sense):

- **cached features** (default): the backbone is frozen and its features come from the
  :class:`~transferkit.features.FeatureStore`; a bottleneck + classifier is trained with the method's loss by
  :func:`~transferkit.adapt.trainer.train_adapter`. Fast on a CPU, any backbone.
- **end to end** (``finetune=True``, or ``backbone="lenet"``): the network itself is trained with the loss on
  image tensors (``image_size`` px); ``lenet`` is the small CNN of the published digit protocol, from scratch.

Methods: the deep ones of :mod:`transferkit.adapt.methods`; on features also ``source-only-linear`` (the shallow
methods' baseline: their classifier without adaptation), the closed-form ``coral-closed``,
``sa`` (subspace alignment) and ``tca`` (:mod:`transferkit.adapt.feature_space`), the instance-based ``iw``
(importance weighting), ``kmm`` (:mod:`transferkit.adapt.instance`) and, with a few labelled target samples,
``tradaboost`` and ``finetune-target`` (network-based: train on the source, then fine-tune on the target labels).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import DataError, NotFittedError, TransferkitError, UnknownNameError
from .methods import DEEP_METHODS, create_method
from .trainer import AdaptConfig, AdaptNet, features_of, predict_logits, train_adapter

__all__ = ["DomainAdapter", "ALL_METHODS", "SHALLOW_METHODS", "NEEDS_TARGET_LABELS", "list_all_methods",
           "check_class_sets", "input_scaling"]

#: closed-form and instance-based methods on features: name -> (module, class)
SHALLOW_METHODS = {"source-only-linear": ("feature_space", "NoAdaptation"), "coral-closed": ("feature_space", "CORAL"), "sa": ("feature_space", "SubspaceAlignment"),
                   "tca": ("feature_space", "TCA"), "iw": ("instance", "ImportanceWeighting"),
                   "kmm": ("instance", "KMM"), "tradaboost": ("instance", "TrAdaBoost"),
                   "tradaboost-r2": ("instance", "TrAdaBoostR2")}
NEEDS_TARGET_LABELS = ("tradaboost", "tradaboost-r2", "finetune-target")
REGRESSION_METHODS = ("tradaboost-r2",)
ALL_METHODS = (*DEEP_METHODS, "finetune-target", *SHALLOW_METHODS)


def list_all_methods() -> list[tuple[str, str]]:
    """(name, family) of every method :class:`DomainAdapter` takes."""
    from .methods import _REGISTRY

    fam = {k: _REGISTRY[k][0]().family if k != "cdan+e" else "adversarial" for k in DEEP_METHODS}
    fam.update({"finetune-target": "network-based (needs target labels)",
                "source-only-linear": "baseline of the shallow methods (no adaptation)", "coral-closed": "feature space",
                "sa": "feature space", "tca": "feature space", "iw": "instance", "kmm": "instance",
                "tradaboost": "instance (needs target labels)", "tradaboost-r2": "instance, regression (needs target labels)"})
    return [(k, fam[k]) for k in ALL_METHODS]


def input_scaling(Xs: np.ndarray, Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale over the source and (unlabelled) target features together.

    Scaling by the source alone divides a feature that is (nearly) constant on the source but varies on the target
    (common with ReLU features of a shifted domain) by ~0 and blows the target up by orders of magnitude; batch
    norm over the joint batch then drowns the source signal (measured: MNIST -> digits on lite0 features did not
    learn at all). The target inputs are available at fit time without labels, so the pooled statistics are fair.
    """
    Z = np.concatenate([Xs, Xt])
    mean = Z.mean(0)
    std = Z.std(0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def check_class_sets(source_classes: list[str], target_classes: list[str] | None, where: str = "") -> None:
    """Closed-set adaptation needs the same classes in both domains: raise a clear error listing the difference."""
    if not target_classes:
        return
    only_s = sorted(set(source_classes) - set(target_classes))
    only_t = sorted(set(target_classes) - set(source_classes))
    if only_t or only_s:
        raise DataError(f"{where}source and target must have the same classes for closed-set adaptation: only in the "
                        f"source {only_s[:10]}, only in the target {only_t[:10]}; drop or rename those classes")


class DomainAdapter(BaseEstimator):
    """Domain adaptation with scikit-learn conventions: ``fit(source, target)``, then ``predict`` on target inputs
    (``get_params`` / ``set_params`` / ``clone`` work; ``__init__`` only stores its arguments).

    Args:
        backbone: a backbone registry name (features cached, or trained with ``finetune``), ``"lenet"`` (a small
            CNN from scratch, end to end), or ``None`` when ``fit`` gets feature arrays.
        method: one of :data:`ALL_METHODS` (``transferkit adapt --list`` prints them with their families).
        config: :class:`~transferkit.adapt.trainer.AdaptConfig` of the deep methods (steps, lr, selection, ...).
        finetune: train the backbone end to end (images at ``image_size``) instead of a head on cached features.
        image_size: input side for end-to-end training (default 32 for lenet, 64 for other backbones).
        cache_dir: feature-cache folder.
        progress: progress bars.
        log: one line per evaluation of the deep loop.

    Attributes (after ``fit``):
        classes_: class names. fit_: the deep loop's :class:`~transferkit.adapt.trainer.AdaptFit` (None for
        shallow methods). estimator_: the fitted shallow estimator (None for deep methods). seconds_: fit time
        (feature extraction excluded). selection_: which selector chose the checkpoint.
    """

    def __init__(self, backbone: str | None = "lite0", method: str = "dann", *, config: AdaptConfig | None = None,
                 finetune: bool = False, image_size: int | None = None, cache_dir: Any = None,
                 progress: bool = False, log: Callable[[str], None] | None = None):
        self.backbone = backbone
        self.method = method
        self.config = config
        self.finetune = finetune
        self.image_size = image_size
        self.cache_dir = cache_dir
        self.progress = progress
        self.log = log
        self._bb = None

    # -- inputs ------------------------------------------------------------------------------------------------
    @property
    def end_to_end(self) -> bool:
        """Whether the network is trained on images (lenet, or ``finetune=True``)."""
        return self.backbone == "lenet" or bool(self.finetune)

    def _inputs(self, data: Any, role: str) -> tuple[np.ndarray, Any]:
        """(inputs as an array the network takes, the DataSource or None)."""
        from ..data.sources import DataSource, load_data

        if isinstance(data, np.ndarray) or (isinstance(data, (list, tuple)) and data and
                                            isinstance(data[0], (list, np.ndarray, float, int))):
            X = np.asarray(data, dtype=np.float32)
            if X.ndim != 2 and not self.end_to_end:
                raise DataError(f"{role}: feature arrays must be 2-D (samples x features), got shape {X.shape}")
            return X, None
        src = data if isinstance(data, DataSource) else load_data(data, require_labels=False)
        if len(src) == 0:
            raise DataError(f"{role} ({src.origin or src.name}) has no samples")
        if self.backbone is None:
            raise DataError(f"{role}: backbone=None takes feature arrays; give a backbone name to use "
                            f"{src.origin or src.name}")
        if self.end_to_end:
            from .lenet import images_to_tensor

            if src.modality != "image":
                raise DataError(f"{role}: end-to-end adaptation takes images; {src.origin or src.name} holds texts")
            X = images_to_tensor(src, self._size(), progress=self.progress)
            if self.backbone != "lenet":
                mean, std = self._norm()
                X = ((X + 1) / 2 - mean[:, None, None]) / std[:, None, None]
            return X.astype(np.float32), src
        from ..backbones import create_backbone
        from ..features import FeatureStore

        if self._bb is None:
            self._bb = create_backbone(self.backbone)
        f = FeatureStore(self.cache_dir).get(self._bb, src, progress=self.progress)
        if len(f.bad):
            raise DataError(f"{role}: {len(f.bad)} unreadable input(s) in {src.origin or src.name}, e.g. "
                            f"{f.bad[0][1]}: {f.bad[0][2]}")
        return np.asarray(f.X, dtype=np.float32), src

    def prepare_inputs(self, data: Any, role: str = "input") -> np.ndarray:
        """``data`` as the array the network takes, before standardisation: cached backbone features (read from
        or written to the feature cache), or image tensors end to end. Feature arrays pass through. Works before
        ``fit``, so several adapters can share one extraction."""
        return self._inputs(data, role)[0]

    def _size(self) -> int:
        return int(self.image_size or (32 if self.backbone == "lenet" else 64))

    def _norm(self) -> tuple[np.ndarray, np.ndarray]:
        from ..backbones import create_backbone

        if self._bb is None:
            self._bb = create_backbone(self.backbone)
        cfg = self._bb.data_config()
        return (np.asarray(cfg.get("mean", (0.5,) * 3), np.float32), np.asarray(cfg.get("std", (0.5,) * 3),
                                                                                 np.float32))

    @staticmethod
    def _labels(data: Any, src: Any, role: str) -> np.ndarray | None:
        if src is not None:
            return None if src.labels is None else np.asarray(src.labels)
        if isinstance(data, tuple) and len(data) == 2:
            return np.asarray(data[1])
        return None

    # -- fit / predict -----------------------------------------------------------------------------------------
    def fit(self, source: Any, target: Any, *, target_labelled: Any = None) -> "DomainAdapter":
        """Adapt from a labelled ``source`` to an unlabelled ``target``.

        Args:
            source: a data spec (built-in name, folder, table, DataSource) with labels, or ``(X, y)`` feature
                arrays (with ``backbone=None``).
            target: a data spec or a feature array: its labels, if any, are **not read**.
            target_labelled: optional few labelled target samples: a data spec with labels or ``(X, y)``.
                Required by ``tradaboost`` and ``finetune-target``; added as a cross-entropy term by the deep
                methods (semi-supervised DA).

        Returns:
            self.
        """
        self._bb = None
        if self.method not in ALL_METHODS:
            raise UnknownNameError(f"unknown domain-adaptation method {self.method!r}; valid: {', '.join(ALL_METHODS)}")
        if self.method in SHALLOW_METHODS and self.end_to_end:
            raise TransferkitError(f"{self.method} works on cached features; use a backbone without --finetune "
                                   f"(end-to-end methods: {', '.join(DEEP_METHODS)}, finetune-target)")
        src_data = source[0] if isinstance(source, tuple) and len(source) == 2 else source
        Xs, s_src = self._inputs(src_data, "source")
        ys_raw = self._labels(source, s_src, "source")
        if ys_raw is None:
            raise DataError("the source domain needs labels: give a labelled data source or (X, y)")
        if len(ys_raw) != len(Xs):
            raise DataError(f"source: {len(Xs)} inputs but {len(ys_raw)} labels")
        from sklearn.utils.multiclass import type_of_target

        kind = type_of_target(ys_raw)
        if self.method in REGRESSION_METHODS and kind not in ("continuous",):
            raise DataError(f"{self.method} is a regression method but the source labels are {kind} class labels; "
                            f"use tradaboost for classification")
        if self.method not in REGRESSION_METHODS and kind == "continuous":
            raise DataError(f"{self.method} is a classification method but the source labels are continuous values; "
                            f"use tradaboost-r2 for regression")
        Xt, t_src = self._inputs(target, "target")
        if len(Xt) == 0:
            raise DataError("the target domain has no samples")
        if Xt.shape[1:] != Xs.shape[1:]:
            raise DataError(f"source inputs have shape {Xs.shape[1:]} per sample but target inputs {Xt.shape[1:]}")
        Xtl = ytl_raw = None
        if target_labelled is not None:
            tl_data = target_labelled[0] if isinstance(target_labelled, tuple) else target_labelled
            Xtl, tl_src = self._inputs(tl_data, "labelled target")
            ytl_raw = self._labels(target_labelled, tl_src, "labelled target")
            if ytl_raw is None:
                raise DataError("target_labelled has no labels: give a labelled data source or (X, y)")
        if self.method in NEEDS_TARGET_LABELS and (ytl_raw is None or len(ytl_raw) == 0):
            raise DataError(f"{self.method} needs a few labelled target samples: pass target_labelled (CLI: "
                            f"--target-labels N); unsupervised methods: {', '.join(DEEP_METHODS)}, "
                            "coral-closed, sa, tca, iw, kmm")
        t0 = time.perf_counter()
        if self.method in REGRESSION_METHODS:
            self.classes_ = None
            ys = ys_raw.astype(float)
            ytl = None if ytl_raw is None else ytl_raw.astype(float)
        else:
            self.classes_ = sorted({str(v) for v in ys_raw})
            if len(self.classes_) < 2:
                raise DataError(f"the source has one class ({self.classes_[0]!r}); adaptation needs at least two")
            if ytl_raw is not None:
                check_class_sets(self.classes_, sorted({str(v) for v in ytl_raw} | set(self.classes_)),
                                 "labelled target: ")
            index = {c: i for i, c in enumerate(self.classes_)}
            ys = np.array([index[str(v)] for v in ys_raw], dtype=np.int64)
            ytl = None if ytl_raw is None else np.array([index[str(v)] for v in ytl_raw], dtype=np.int64)
        self.fit_ = self.estimator_ = None
        self.mean_ = self.std_ = None
        if not self.end_to_end:  # standardise features with the pooled statistics (see input_scaling)
            self.mean_, self.std_ = input_scaling(Xs, Xt)
            Xs, Xt = (Xs - self.mean_) / self.std_, (Xt - self.mean_) / self.std_
            Xtl = None if Xtl is None else (Xtl - self.mean_) / self.std_
        if self.method in SHALLOW_METHODS:
            import importlib

            mod, cls = SHALLOW_METHODS[self.method]
            kw = {"n_components": min(30, Xs.shape[1])} if self.method == "tca" else {}
            est = getattr(importlib.import_module(f"transferkit.adapt.{mod}"), cls)(**kw)
            if self.method in ("tradaboost", "tradaboost-r2"):
                est.fit(Xs, ys, Xtl, ytl)
            else:
                est.fit(Xs, ys, Xt)
            self.estimator_ = est
            self.selection_ = "none (closed form / no checkpoints)"
        else:
            self.fit_ = self._fit_deep(Xs, ys, Xt, Xtl, ytl)
            self.selection_ = self.fit_.selection
        self.seconds_ = time.perf_counter() - t0
        return self

    def _net(self, in_dim: int, n_classes: int, cfg: AdaptConfig) -> AdaptNet:
        import torch

        torch.manual_seed(cfg.seed)
        if self.backbone == "lenet":
            from .lenet import LeNet

            return AdaptNet(LeNet.num_features, n_classes, cfg.bottleneck, feature=LeNet())
        if self.end_to_end:
            from ..backbones import create_backbone
            from ..train.model import prepare_backbone

            bb = prepare_backbone(create_backbone(self.backbone))
            for p in bb.parameters():
                p.requires_grad_(True)
            return AdaptNet(bb.num_features, n_classes, cfg.bottleneck, feature=bb)
        return AdaptNet(in_dim, n_classes, cfg.bottleneck)

    def _fit_deep(self, Xs, ys, Xt, Xtl, ytl):
        cfg = self.config or AdaptConfig()
        if self.end_to_end and self.backbone != "lenet" and self.config is None:
            cfg = replace(cfg, feature_lr_scale=0.1)  # a pretrained backbone moves slower than the new layers
        n_classes = len(self.classes_)
        net = self._net(Xs.shape[1] if Xs.ndim == 2 else 0, n_classes, cfg)
        if self.method == "adda":  # stage 1 source-only; stage 2 target encoder vs frozen source encoder, at lr / 10
            # (the paper trains the target encoder with a far smaller step than the source stage)
            import copy

            import torch.nn as nn

            from .methods import ADDA

            fit = train_adapter(net, create_method("source-only"), Xs, ys, Xt, cfg, progress=self.progress,
                                log=self.log)
            src_enc = copy.deepcopy(nn.Sequential(fit.net.feature, fit.net.bottleneck))
            for p in [*src_enc.parameters(), *fit.net.classifier.parameters()]:
                p.requires_grad_(False)
            fit2 = train_adapter(fit.net, ADDA(src_enc), Xs, ys, Xt, replace(cfg, source_loss_weight=0.0, lr=cfg.lr / 10),
                                 progress=self.progress, log=self.log)
            fit2.history = [{**h, "phase": "source"} for h in fit.history] + [{**h, "phase": "adversarial"}
                                                                              for h in fit2.history]
            fit2.seconds += fit.seconds
            return fit2
        if self.method == "finetune-target":  # network-based: source-only, then fine-tune on the target labels
            fit = train_adapter(net, create_method("source-only"), Xs, ys, Xt, cfg, progress=self.progress,
                                log=self.log)
            cfg2 = replace(cfg, steps=max(cfg.steps // 4, 1), lr=cfg.lr / 10, selection="last",
                           eval_every=max(cfg.steps // 4, 1))
            fit2 = train_adapter(fit.net, create_method("source-only"), Xtl, ytl, Xt, cfg2,
                                 progress=self.progress, log=self.log)
            fit2.history = fit.history + [{**h, "phase": "target fine-tune"} for h in fit2.history]
            fit2.seconds += fit.seconds
            fit2.selection = f"{fit.selection} (source phase), last (target phase)"
            return fit2
        return train_adapter(net, create_method(self.method), Xs, ys, Xt, cfg, Xt_labelled=Xtl,
                             yt_labelled=ytl, progress=self.progress, log=self.log)

    def _check(self) -> None:
        if not hasattr(self, "seconds_"):
            raise NotFittedError("this DomainAdapter is not fitted yet: call fit(source, target) first")

    def transform_inputs(self, X: Any) -> np.ndarray:
        """Target inputs as the fitted model takes them (features standardised, or image tensors)."""
        self._check()
        Xa, _ = self._inputs(X, "input")
        return Xa if self.mean_ is None else (Xa - self.mean_) / self.std_

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits (deep methods) or class probabilities (shallow ones) on target inputs."""
        Xa = self.transform_inputs(X)
        if self.estimator_ is not None:
            return self.estimator_.predict_proba(Xa) if self.classes_ is not None else self.estimator_.predict(Xa)
        return predict_logits(self.fit_.net, Xa)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities on target inputs."""
        out = self.decision_function(X)
        if self.estimator_ is not None:
            return out
        e = np.exp(out - out.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class names (values for regression) of target inputs."""
        self._check()
        if self.classes_ is None:
            return self.decision_function(X)
        return np.asarray(self.classes_, dtype=object)[self.predict_proba(X).argmax(1)]

    def embed(self, X: Any, domain: str = "target") -> np.ndarray:
        """The representation the method aligned (bottleneck features; the transformed features of ``domain`` for
        the feature-space methods; the standardised inputs for instance methods): for the diagnostics."""
        Xa = self.transform_inputs(X)
        if self.fit_ is not None:
            return features_of(self.fit_.net, Xa)
        if hasattr(self.estimator_, "transform"):
            return np.asarray(self.estimator_.transform(Xa, domain=domain))
        return Xa
