"""``DomainAdapter``: one estimator over every domain-adaptation method, on cached features or end to end.

Levels (the same method names where both make sense):

- **cached features** (default): the backbone is frozen and its features come from the
  :class:`~transferkit.features.FeatureStore`; a bottleneck + classifier is trained with the method's loss by
  :func:`~transferkit.adapt.trainer.train_adapter`. Fast on a CPU, any backbone.
- **end to end** (``finetune=True``, or a backbone meant to be trained on pixels such as ``lenet``, the small CNN
  of the published digit protocol, from scratch): the network itself is trained with the loss on image tensors
  (``image_size`` px).

Methods: the deep ones of :mod:`transferkit.adapt.methods`; on features also ``source-only-linear`` (the shallow
methods' baseline: their classifier without adaptation), the closed-form ``coral-closed``,
``sa`` (subspace alignment) and ``tca`` (:mod:`transferkit.adapt.feature_space`), the instance-based ``iw``
(importance weighting), ``kmm`` (:mod:`transferkit.adapt.instance`) and, with a few labelled target samples,
``tradaboost`` and ``finetune-target`` (network-based: train on the source, then fine-tune on the target labels).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import DataError, NotFittedError, TransferkitError
from .methods import METHODS, create_method
from .trainer import AdaptConfig, AdaptNet, features_of, predict_logits, train_adapter

__all__ = ["DomainAdapter", "all_methods", "list_all_methods", "check_class_sets", "input_scaling"]


def all_methods() -> tuple[str, ...]:
    """Every method :class:`DomainAdapter` takes (deep ones first)."""
    return tuple(METHODS.names(level="deep") + METHODS.names(level="shallow"))


def list_all_methods() -> list[tuple[str, str]]:
    """(name, family) of every method :class:`DomainAdapter` takes."""
    out = []
    for name in all_methods():
        e = METHODS.get(name)
        fam = e.family + (" (shallow, on features)" if e.level == "shallow" else "")
        if e.task == "regression":
            fam += ", regression"
        if e.needs_target_labels:
            fam += " (needs target labels)"
        out.append((name, fam))
    return out


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
        method: a name of :data:`~transferkit.adapt.methods.METHODS` (``transferkit adapt --list`` prints them with
            their families).
        config: :class:`~transferkit.adapt.trainer.AdaptConfig` of the deep methods (steps, lr, selection, ...).
        finetune: train the backbone end to end (images at ``image_size``) instead of a head on cached features.
        image_size: input side for end-to-end training (default: the native size of a network trained on pixels,
            32 for lenet; 64 for pretrained backbones).
        cache_dir: feature-cache folder.
        run_dir: where the deep loop writes its checkpoints (one per evaluation); None: in memory.
        resume: continue a deep fit killed in ``run_dir`` from its last checkpoint (same settings only).
        progress: progress bars.
        log: one line per evaluation of the deep loop.

    Attributes (after ``fit``):
        classes_: class names. fit_: the deep loop's :class:`~transferkit.adapt.trainer.AdaptFit` (None for
        shallow methods). estimator_: the fitted shallow estimator (None for deep methods). seconds_: fit time
        (feature extraction excluded). selection_: which selector chose the checkpoint.
    """

    def __init__(self, backbone: str | None = "lite0", method: str = "dann", *, config: AdaptConfig | None = None,
                 finetune: bool = False, image_size: int | None = None, cache_dir: Any = None,
                 run_dir: str | Path | None = None, resume: bool = False, progress: bool = False,
                 log: Callable[[str], None] | None = None):
        self.backbone = backbone
        self.method = method
        self.config = config
        self.finetune = finetune
        self.image_size = image_size
        self.cache_dir = cache_dir
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress
        self.log = log
        self._bb = None

    # -- inputs ------------------------------------------------------------------------------------------------
    @property
    def end_to_end(self) -> bool:
        """Whether the network is trained on images (``finetune=True``, or a backbone registered as trained end to
        end, such as ``lenet``)."""
        if self.finetune:
            return True
        if self.backbone is None:
            return False
        from ..backbones import backbone_entry

        return bool(backbone_entry(self.backbone).cap("end_to_end", False))

    def _inputs(self, data: Any, role: str) -> tuple[np.ndarray, Any]:
        """(inputs as an array the network takes, the DataSource or None)."""
        from ..data.load import load_data
        from ..data.sources import DataSource

        if isinstance(data, np.ndarray) or (isinstance(data, (list, tuple)) and data and
                                            isinstance(data[0], (list, np.ndarray, float, int))):
            X = np.asarray(data, dtype=np.float32)
            if X.ndim != 2 and not self.end_to_end:
                raise DataError(f"{role}: feature arrays must be 2-D (samples x features), got shape {X.shape}")
            return X, None
        if isinstance(data, DataSource):
            src = data
        elif isinstance(data, (list, tuple)):  # file paths, PIL images, image arrays or texts
            from ..data.load import collect_inputs

            src = collect_inputs(list(data))
        else:
            src = load_data(data, require_labels=False)
        if len(src) == 0:
            raise DataError(f"{role} ({src.origin or src.name}) has no samples")
        if self.backbone is None:
            raise DataError(f"{role}: backbone=None takes feature arrays; give a backbone name to use "
                            f"{src.origin or src.name}")
        if self.end_to_end:
            from ..data.views import render

            if src.modality != "image":
                raise DataError(f"{role}: end-to-end adaptation takes images; {src.origin or src.name} holds texts")
            view = self._backbone().transform("eval")
            return render(src, view, progress=self.progress, label=f"{role} images"), src
        from ..features.featureset import build_featureset

        fs = build_featureset(src, self._backbone(), cache_dir=self.cache_dir, labels="optional", split=False,
                              progress=self.progress)
        return np.asarray(fs.X, dtype=np.float32), src

    def prepare_inputs(self, data: Any, role: str = "input") -> np.ndarray:
        """``data`` as the array the network takes, before standardisation: cached backbone features (read from
        or written to the feature cache), or image tensors end to end. Feature arrays pass through. Works before
        ``fit``, so several adapters can share one extraction."""
        return self._inputs(data, role)[0]

    def _size(self) -> int:
        """End-to-end input side: ``image_size``, else the native size of a network trained on pixels (32 for
        lenet), else 64 for a pretrained backbone (a CPU-sized compromise)."""
        if self.image_size:
            return int(self.image_size)
        from ..backbones import backbone_entry

        if backbone_entry(self.backbone).cap("end_to_end", False):
            from ..backbones import create_backbone

            return int(create_backbone(self.backbone).preprocessing.input_size)
        return 64

    def _backbone(self):
        """The backbone (built once per fit); end to end, its preprocessing squashes whole images to the input size."""
        if self._bb is None:
            from ..backbones import create_backbone

            bb = create_backbone(self.backbone)
            if self.end_to_end:
                bb = bb.with_preprocessing(input_size=self._size(), crop_pct=1.0, crop_mode="squash",
                                           interpolation="bilinear")
            self._bb = bb
        return self._bb

    @staticmethod
    def _labels(data: Any, src: Any, role: str) -> np.ndarray | None:
        if isinstance(data, tuple) and len(data) == 2:  # (inputs, labels): the labels given win
            return np.asarray(data[1])
        if src is not None:
            return None if src.labels is None else np.asarray(src.labels)
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
        entry = METHODS.get(self.method)
        if entry.level == "shallow" and self.end_to_end:
            raise TransferkitError(f"{self.method} works on cached features; use a backbone without finetune=True "
                                   f"(end-to-end methods: {', '.join(METHODS.names(level='deep'))})")
        regression = entry.task == "regression"
        src_data = source[0] if isinstance(source, tuple) and len(source) == 2 else source
        Xs, s_src = self._inputs(src_data, "source")
        ys_raw = self._labels(source, s_src, "source")
        if ys_raw is None:
            raise DataError("the source domain needs labels: give a labelled data source or (X, y)")
        if len(ys_raw) != len(Xs):
            raise DataError(f"source: {len(Xs)} inputs but {len(ys_raw)} labels")
        from sklearn.utils.multiclass import type_of_target

        kind = type_of_target(ys_raw)
        if regression and kind not in ("continuous",):
            raise DataError(f"{self.method} is a regression method but the source labels are {kind} class labels; "
                            f"use tradaboost for classification")
        if not regression and kind == "continuous":
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
        if entry.needs_target_labels and (ytl_raw is None or len(ytl_raw) == 0):
            raise DataError(f"{self.method} needs a few labelled target samples: pass target_labelled (in the CLI: "
                            "target_labels=N); unsupervised methods: "
                            f"{', '.join(e.name for e in METHODS.entries(needs_target_labels=False))}")
        t0 = time.perf_counter()
        if regression:
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
        if entry.level == "shallow":
            est = METHODS.create(self.method)
            if entry.needs_target_labels:
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
        import copy

        import torch

        torch.manual_seed(cfg.seed)
        if self.end_to_end:
            from ..train.model import prepare_backbone

            bb = prepare_backbone(copy.deepcopy(self._backbone()))
            for p in bb.parameters():
                p.requires_grad_(True)
            return AdaptNet(bb.num_features, n_classes, cfg.bottleneck, feature=bb)
        return AdaptNet(in_dim, n_classes, cfg.bottleneck)

    def _fit_deep(self, Xs, ys, Xt, Xtl, ytl):
        cfg = self.config or AdaptConfig()
        pretrained = self.end_to_end and self._backbone().source != "random-init"
        if pretrained and self.config is None:
            cfg = replace(cfg, feature_lr_scale=0.1)  # a pretrained backbone moves slower than the new layers
        net = self._net(Xs.shape[1] if Xs.ndim == 2 else 0, len(self.classes_), cfg)
        return train_adapter(net, create_method(self.method), Xs, ys, Xt, cfg, Xt_labelled=Xtl, yt_labelled=ytl,
                             run_dir=self.run_dir, resume=self.resume, progress=self.progress, log=self.log)

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
