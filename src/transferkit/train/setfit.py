"""SetFit: few-shot text classification by contrastive fine-tuning of a sentence encoder, then a logistic head.

Stage 1 draws pairs from the few labelled texts (same class: target 1, different classes: target 0) and fine-tunes
the encoder with the cosine-similarity loss (:class:`~transferkit.train.contrastive.CosinePairLoss`) through the
training loop (checkpoints, resume, devices and precision as for every run). Stage 2 embeds the labelled texts with
the fine-tuned encoder and fits a logistic-regression head on them. ``fit(..., strategy="setfit")`` runs it: the
strategy entry declares this trainer as its ``trainer`` capability, which the pipeline reads.

The defaults follow the paper and the reference implementation: ``num_iterations=20`` (the paper's R: ``20 * N``
same-class and ``20 * N`` other-class pairs, ``2 * 20 * N`` in all, from the reference's list of unique pairs in which
every text is also paired with itself, ``pairs="reference"``), one epoch, batch 16, body learning rate
2e-5 with 10% linear warm-up, and the head is scikit-learn's ``LogisticRegression()`` (``C=1``) on the *unit-norm*
embeddings: sentence-transformers' all-MiniLM-L6-v2 ends in a ``Normalize`` module, so the reference head never sees
raw or standardised embeddings. ``descriptions`` adds the setfit library's templated examples (its
``get_templated_dataset``, the way SetFit uses class names for zero-shot and as extra training data): every label
description put through a prompt set is one more labelled text, for the pairs and for the head.

Why our loop and not the ``setfit`` package: measured here, ``setfit`` 1.2.0 installs (with ``datasets``,
``evaluate``, ``accelerate`` and eight more packages) and runs offline with the shipped MiniLM, but it trains through
transformers' ``Trainer`` (not our loop: no Fabric devices and precision, no checkpoints of our format, no resume)
and saves its head with pickle (``model_head.pkl``), which transferkit never writes. The algorithm is small (pair
sampling, a cosine loss, a logistic head), so it lives here; ``benchmarks/bench_text.py`` runs the library beside
it as a reference when it is importable.

References:
    Tunstall, Reimers, Jo, Bates, Korat, Wasserblat & Pereg, "Efficient Few-Shot Learning Without Prompts",
    arXiv:2209.11055, 2022.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from ..backbones.base import Backbone
from ..data.sources import DataSource
from ..data.splits import Splits
from ..errors import DataError, ModalityError, TransferkitError, UnknownNameError
from .contrastive import CosinePairLoss, EncoderPlan, PairItems, encode_texts, first_of_pair, second_of_pair
from .engine import FinetuneResult, TrainConfig
from .loop import LoopSettings, run_loop
from .model import TransferModel
from .strategies import STRATEGIES, Strategy

__all__ = ["SetFit", "setfit_pairs", "train_setfit", "described_examples", "SAMPLINGS", "PAIRINGS", "SETFIT_HEADS",
           "SETFIT_DEFAULTS"]

SAMPLINGS = ("oversampling", "undersampling", "unique")
#: how pairs are made: ``random`` (the paper's description: random partners per text, never the text itself) or
#: ``reference`` (the setfit package's ``ContrastiveDataset``: its fixed list of unique pairs, each text paired with
#: itself too, repeated in order)
PAIRINGS = ("random", "reference")
#: the heads SetFit fits on the fine-tuned embeddings: the reference's logistic regression on unit-norm embeddings
#: (``logreg-l2n``), or transferkit's probe head (standardised embeddings, ``logreg``)
SETFIT_HEADS = ("logreg-l2n", "logreg")
#: the training settings SetFit starts from (the paper's: one epoch, batch 16, body learning rate 2e-5, 10% warmup)
SETFIT_DEFAULTS = {"epochs": 1, "batch_size": 16, "lr": 2e-5, "weight_decay": 0.01, "warmup_epochs": 0.1,
                   "patience": None, "label_smoothing": 0.0, "augment": False}


def setfit_pairs(y: np.ndarray, *, sampling: str = "oversampling", num_iterations: int | None = None,
                 max_pairs: int | None = None, seed: int = 0, pairs: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Training pairs from labelled items: ``(P, 2)`` item positions and ``(P,)`` targets (1 same class, 0 not).

    Args:
        y: the items' class indices.
        sampling: with ``num_iterations=None``, every unique pair is drawn once and the rarer kind (positive or
            negative) is repeated until there are as many of both (``oversampling``, SetFit's default), cut down to
            the rarer kind's number (``undersampling``), or kept as they are (``unique``).
        num_iterations: the paper's sampling instead: each item gets ``num_iterations`` positive and as many
            negative partners, drawn at random (``2 * num_iterations * N`` pairs).
        max_pairs: keep at most this many pairs (a random subset).
        seed: the draw's seed.
        pairs: ``random`` (above) or ``reference``: the setfit package's construction (its ``ContrastiveDataset``,
            version 1.x): the unique pairs *with replacement* (every text is also a positive pair with itself) in one
            shuffled order, split into positives and negatives, each list repeated in order until it holds
            ``num_iterations * N`` pairs (with ``num_iterations=None``: as many as ``sampling`` says). The package
            shuffles with a fixed seed (42) and its trainer reshuffles per run; here ``seed`` does both.

    Raises:
        DataError: fewer than 2 classes, or no class with 2 items (no positive pair can be made).
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"SetFit needs labelled texts of at least 2 classes; got {len(classes)}")
    if not any((y == c).sum() >= 2 for c in classes):
        raise DataError("SetFit needs a class with at least 2 labelled texts to make a positive pair; label more")
    if sampling not in SAMPLINGS:
        raise DataError(f"sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}")
    if pairs not in PAIRINGS:
        raise DataError(f"pairs must be one of {', '.join(PAIRINGS)}; got {pairs!r}")
    if pairs == "reference":
        i, j = np.triu_indices(len(y), k=0)
        order = rng.permutation(len(i))
        i, j = i[order], j[order]
        same = y[i] == y[j]
        pos, neg = np.stack([i[same], j[same]], 1), np.stack([i[~same], j[~same]], 1)
        if num_iterations is not None:
            n_pos = n_neg = int(num_iterations) * len(y)
        elif sampling == "unique":
            n_pos, n_neg = len(pos), len(neg)
        else:
            n_pos = n_neg = (min if sampling == "undersampling" else max)(len(pos), len(neg))
        P = np.concatenate([pos[np.arange(n_pos) % len(pos)], neg[np.arange(n_neg) % len(neg)]])
        T = np.concatenate([np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)])
    elif num_iterations is not None:
        pairs, targets = [], []
        for _ in range(int(num_iterations)):
            for i in range(len(y)):
                same = np.flatnonzero((y == y[i]) & (np.arange(len(y)) != i))
                other = np.flatnonzero(y != y[i])
                if len(same):
                    pairs.append((i, int(rng.choice(same))))
                    targets.append(1)
                pairs.append((i, int(rng.choice(other))))
                targets.append(0)
        P, T = np.asarray(pairs, np.int64), np.asarray(targets, np.int64)
    else:
        i, j = np.triu_indices(len(y), k=1)
        same = y[i] == y[j]
        pos = np.stack([i[same], j[same]], 1)
        neg = np.stack([i[~same], j[~same]], 1)
        if sampling != "unique":
            small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
            if sampling == "oversampling":
                reps = np.concatenate([rng.permutation(len(small)) for _ in range(-(-len(big) // len(small)))])
                small = small[reps[:len(big)]]
            else:
                big = big[rng.permutation(len(big))[:len(small)]]
            pos, neg = (small, big) if len(pos) < len(neg) else (big, small)
        P = np.concatenate([pos, neg])
        T = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    order = rng.permutation(len(P))
    if max_pairs is not None:
        order = order[:int(max_pairs)]
    return P[order], T[order]


@dataclass
class SetFit(Strategy):
    """SetFit: contrastive fine-tuning of a sentence encoder on pairs of the few labelled texts, then a logistic
    head on its embeddings (text backbones; trained by :func:`train_setfit`).

    Attributes:
        sampling: how pairs are drawn with ``num_iterations=None`` (:func:`setfit_pairs`).
        num_iterations: the paper's per-item pair count R (20 in the paper; None: every unique pair once, the rarer
            kind oversampled, the setfit library's default since its version 1.0).
        max_pairs: at most this many pairs per epoch (None: all).
        head: ``logreg-l2n`` (the reference: logistic regression on unit-norm embeddings) or ``logreg``
            (standardised embeddings, as transferkit's probe).
        head_C: the logistic head's inverse regularisation strength (1.0: scikit-learn's default, the reference's).
        descriptions: optional label descriptions (``"fresh=positive,rotten=negative"``, a mapping or a class file,
            as ``zeroshot --classes`` reads them): each description through each template of ``prompt`` becomes
            one more labelled text (the setfit library's templated examples).
        prompt: the prompt set or template for ``descriptions`` (``review``, ``name``, ``"this sentence is {}"``).
        pairs: ``reference`` (the default: the setfit package's pair list, each text also paired with itself, as
            the package has done since its first version) or ``random`` (random partners, never the text itself;
            :func:`setfit_pairs`). Measured on Rotten Tomatoes at 8 labels per class (bench_text), ``random`` was
            0.7 points below ``reference`` in 7 of 7 paired seeds, and ``reference`` within 0.1 of the package.

    References:
        Tunstall et al., "Efficient Few-Shot Learning Without Prompts", arXiv:2209.11055, 2022.
    """

    name: ClassVar[str] = "setfit"
    description: ClassVar[str] = ("SetFit: contrastive fine-tuning of a text encoder on pairs of the labelled texts, "
                                  "then a logistic head (text backbones)")
    sampling: str = "oversampling"
    num_iterations: int | None = 20
    max_pairs: int | None = None
    head: str = "logreg-l2n"
    head_C: float = 1.0
    descriptions: Any = None
    prompt: str = "name"
    pairs: str = "reference"

    def validate(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise TransferkitError(f"setfit: sampling must be one of {', '.join(SAMPLINGS)} (got {self.sampling!r})")
        if self.pairs not in PAIRINGS:
            raise TransferkitError(f"setfit: pairs must be one of {', '.join(PAIRINGS)} (got {self.pairs!r})")
        for k in ("num_iterations", "max_pairs"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise TransferkitError(f"setfit: {k} must be an integer >= 1 or None (got {v!r})")
        if not (isinstance(self.head_C, (int, float)) and self.head_C > 0):
            raise TransferkitError(f"setfit: head_C must be > 0 (got {self.head_C!r})")
        if self.head not in SETFIT_HEADS:
            raise UnknownNameError(f"setfit: head must be one of {', '.join(SETFIT_HEADS)} (got {self.head!r})")

    def bind(self, groups: list) -> None:
        raise TransferkitError("strategy 'setfit' trains through its own trainer (fit with strategy='setfit', or "
                               "train_setfit), not through the fine-tuning engine")


def train_setfit(source: DataSource, y: np.ndarray, splits: Splits, backbone: str | Backbone = "minilm",
                 strategy: str | Strategy = "setfit", config: TrainConfig | None = None,
                 run_dir: str | Path | None = None, *, resume: bool = False,
                 strategy_params: dict[str, Any] | None = None, extra_losses: Sequence[Any] = (),
                 classes: Sequence[str] | None = None, callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 export: bool = True) -> FinetuneResult:
    """SetFit on a text source: pairs from the labelled split (train + validation: SetFit chooses nothing on
    validation data, so every label trains), the encoder fine-tuned through the loop, a logistic head on the new
    embeddings, and the test split predicted. Same arguments and result as
    :func:`~transferkit.train.engine.finetune` (``config.epochs``, ``lr``, ``batch_size``, ``weight_decay`` and
    ``warmup_epochs`` apply to the encoder's contrastive training; see :data:`SETFIT_DEFAULTS`).

    Returns:
        :class:`~transferkit.train.engine.FinetuneResult` (``val_accuracy`` is None: nothing was chosen on it).

    Raises:
        ModalityError: image data or an image backbone.
        DataError: bad labels or splits, or too few labelled texts to make pairs.
        TransferkitError: extra loss terms (SetFit's objective is the pair loss alone) or bad settings.
    """
    from ..heads import HeadModule, LogisticHead
    from ..heads.fewshot import LogisticL2NHead
    from ..runs import default_run_dir, prepare_run_dir, save_model
    from .strategies import create_strategy

    t0 = time.perf_counter()
    cfg = config if config is not None else TrainConfig(**SETFIT_DEFAULTS)
    cfg.validate()
    strat = create_strategy(strategy, **(strategy_params or {}))
    if not isinstance(strat, SetFit):
        raise TransferkitError(f"train_setfit runs strategy 'setfit', not {strat.name!r}")
    if extra_losses:
        raise TransferkitError("strategy 'setfit' trains with its pair loss alone; leave out the regularizers "
                               "(l2sp, bss)")
    if source.modality != "text":
        raise ModalityError(f"{source.origin or source.name} holds {source.modality} data; SetFit fine-tunes a text "
                            "encoder (use a text backbone such as minilm on texts)")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(source) or y.dtype.kind not in "iu":
        raise DataError(f"y must hold one integer class index per text ({len(source)}); got shape {y.shape}")
    num_classes = len(classes) if classes is not None else int(y.max()) + 1
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
    if isinstance(backbone, str):
        from ..backbones import create_backbone

        bb = create_backbone(backbone)
    else:
        bb = backbone
    if bb.modality != "text":
        raise ModalityError(f"SetFit needs a text encoder; backbone {bb.name!r} takes {bb.modality}s")
    if not any(p.numel() for p in bb.parameters()):
        raise TransferkitError(f"backbone {bb.name!r} has no trainable weights (word vectors are trained on a corpus, "
                               "not by SetFit); use a sentence encoder such as minilm")
    lab = np.sort(np.asarray(splits.labelled, dtype=np.int64))
    extra_texts, extra_y = described_examples(strat.descriptions, strat.prompt, classes)
    texts = [str(source.load(int(i))) for i in lab] + extra_texts
    y_lab = np.concatenate([y[lab], extra_y]).astype(np.int64)
    pairs, targets = setfit_pairs(y_lab, sampling=strat.sampling, num_iterations=strat.num_iterations,
                                  max_pairs=strat.max_pairs, seed=cfg.seed, pairs=strat.pairs)
    out_dir = prepare_run_dir(run_dir if run_dir is not None else default_run_dir(source.name, f"{bb.name}-setfit"),
                              "fit", resume=True)
    steps = max(1, math.ceil(len(pairs) / cfg.batch_size)) * cfg.epochs
    identity = {"strategy": strat.config(), "backbone": {"name": bb.name, "weights": bb.weights_digest()},
                "pairs": {"n": int(len(pairs)), "digest": _digest(pairs.tobytes() + targets.tobytes())},
                "data": {"items": source.fingerprint(), "labelled": _digest(lab.tobytes()),
                         "labels": _digest(y_lab.tobytes()), "described": _digest("\n".join(extra_texts).encode())},
                "train": {"lr": cfg.lr, "batch_size": cfg.batch_size, "weight_decay": cfg.weight_decay,
                          "warmup_epochs": cfg.warmup_epochs}}
    plan = EncoderPlan(backbone=bb, items=PairItems(texts, pairs), targets=targets, objective=CosinePairLoss(),
                       stream="pairs", views={"a": first_of_pair, "b": second_of_pair}, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                       warmup_fraction=float(cfg.warmup_epochs) / max(1, cfg.epochs), seed=cfg.seed,
                       total_steps=steps, identity=identity)
    settings = LoopSettings(epochs=cfg.epochs, seed=cfg.seed, max_grad_norm=cfg.max_grad_norm,
                            precision=cfg.precision, accelerator=cfg.accelerator, devices=cfg.devices,
                            num_workers=cfg.num_workers or 0, progress="epoch" if progress else None,
                            label="setfit", unit="pairs")
    if log is not None:
        log(f"setfit: {len(pairs)} pairs ({int(targets.sum())} same-class) from {len(lab)} labelled texts"
            f"{f' and {len(extra_texts)} described' if extra_texts else ''}, "
            f"{cfg.epochs} epoch(s) of {math.ceil(len(pairs) / cfg.batch_size)} steps")
    r = run_loop(plan, settings, out_dir, resume=resume, callbacks=callbacks, log=log)
    body = r.model.backbone.eval()
    t_head = time.perf_counter()
    Z = encode_texts(body, texts)
    if strat.head == "logreg-l2n":
        head = LogisticL2NHead(C=float(strat.head_C), norm="l2n").fit(Z, y_lab)
        module = _full_normed_linear(head.module_, head.classes_, num_classes)
    else:
        head = LogisticHead(C=float(strat.head_C)).fit(Z, y_lab)
        linear = torch.nn.Linear(Z.shape[1], num_classes)
        _fold_into_linear(head.to_module(), head.classes_, linear)
        module = HeadModule.from_linear(linear)
    test = np.asarray(splits.test, dtype=np.int64)
    Zt = encode_texts(body, [str(source.load(int(i))) for i in test])
    proba = np.zeros((len(test), num_classes))
    if len(test):
        proba[:, head.classes_] = head.predict_proba(Zt)
    model = TransferModel(body, num_classes, head=module).eval()
    model_path = None
    if export:
        save_model(out_dir, module, body, classes, kind="finetuned", backbone_trained=True,
                   extra={"strategy": strat.config(), "best_epoch": r.best_epoch})
        model_path = out_dir / "model"
    if log is not None:
        log(f"setfit: logistic head on {len(lab)} embeddings in {time.perf_counter() - t_head:.1f}s")
    return FinetuneResult(
        test_index=test, y_pred=proba.argmax(1) if len(test) else np.zeros(0, np.int64), proba=proba,
        val_accuracy=None, best_epoch=r.best_epoch, epochs_run=r.epochs_run, stop_reason=r.stop_reason,
        history=r.history, seconds=time.perf_counter() - t0, train_seconds=r.train_seconds, run_dir=out_dir,
        checkpoint=r.checkpoint, model_path=model_path, resumed_from=r.resumed_from, model=model,
        config={**identity, "pairs_total": int(len(pairs))}, preprocessing=body.data_config())


def described_examples(descriptions: Any, prompt: str, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Labelled texts made from label descriptions: every description of a class through every template of
    ``prompt`` (the setfit library's ``get_templated_dataset``, which SetFit trains on for zero-shot and adds to
    few labels).

    Args:
        descriptions: None (no texts), or the classes with their descriptions as
            :func:`~transferkit.zeroshot.prompts.parse_classes` reads them (``"fresh=positive,rotten=negative"``, a
            mapping, a ``.json`` / ``.txt`` file); a class left out gets no text.
        prompt: a prompt set name (``name``, ``review``) or a template with ``{}``.
        classes: the data's class names, in index order.

    Returns:
        ``(texts, y)``: the texts and their class indices.

    Raises:
        DataError: a described label that is not one of the data's classes, or a bad description list.

    >>> described_examples("b=bad,g=good", "this review is {}.", ["g", "b"])
    (['this review is good.', 'this review is bad.'], array([0, 1]))
    """
    if descriptions is None:
        return [], np.zeros(0, np.int64)
    from ..zeroshot.prompts import class_texts, parse_classes

    spec = parse_classes(descriptions)
    names = [str(c) for c in classes]
    unknown = [lab for lab in spec.labels if lab not in names]
    if unknown:
        raise DataError(f"setfit descriptions name {', '.join(map(repr, unknown))}, not a class of the data "
                        f"({', '.join(names)}); describe the data's own labels, e.g. \"{names[0]}=...\"")
    texts: list[str] = []
    ys: list[int] = []
    for lab, group in zip(spec.labels, class_texts(spec, prompt)):
        texts += group
        ys += [names.index(lab)] * len(group)
    return texts, np.asarray(ys, np.int64)


def _full_normed_linear(module: Any, head_classes: np.ndarray, num_classes: int) -> Any:
    """A fitted :class:`~transferkit.heads.fewshot.NormedLinearModule` over the classes it saw, widened to every
    class of the data (a class it never saw gets a very low logit)."""
    from ..heads.fewshot import NormedLinearModule

    c = module.config()
    out = NormedLinearModule(c["in_features"], num_classes, c["norm"], c["scale"], True, c["eps"])
    with torch.no_grad():
        out.center.copy_(module.center)
        out.linear.weight.zero_()
        out.linear.bias.fill_(-1e4)
        for row, k in enumerate(head_classes):
            out.linear.weight[int(k)] = module.linear.weight[row]
            out.linear.bias[int(k)] = module.linear.bias[row]
    return out.eval()


def _fold_into_linear(head: Any, head_classes: np.ndarray, linear: torch.nn.Linear) -> None:
    """Copy a standardising head module (``(x - mean) / scale``, then a linear layer) into a plain linear layer with
    the same logits; classes the head never saw get a very low logit."""
    with torch.no_grad():
        W = head.layers[0].weight.double() / head.scale.double().unsqueeze(0)
        b = head.layers[0].bias.double() - W @ head.mean.double()
        linear.weight.zero_()
        linear.bias.fill_(-1e4)
        for row, c in enumerate(head_classes):
            linear.weight[int(c)] = W[row].to(linear.weight.dtype)
            linear.bias[int(c)] = b[row].to(linear.bias.dtype)


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:20]


STRATEGIES.add("setfit", SetFit, description=SetFit.description, backbone_frozen=False, trainer=train_setfit,
               train_defaults=dict(SETFIT_DEFAULTS), modality="text",
               paper="Tunstall et al., Efficient Few-Shot Learning Without Prompts, 2022")
