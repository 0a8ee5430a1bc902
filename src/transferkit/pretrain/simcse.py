"""Unsupervised SimCSE: a sentence encoder adapted to the user's unlabelled corpus, through the training loop.

Each text is encoded twice with different dropout masks; the two encodings must find each other among the batch's
(:class:`~transferkit.train.contrastive.SimCSELoss`). Nothing else changes: the adapted encoder pools and saves like
the one it started from (``file:<dir>``), and its features are cached under their new weights.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..backbones.base import Backbone
from ..data.corpus import Corpus
from ..errors import TransferkitError
from . import PRETRAINERS, Pretrainer

__all__ = ["SimCSEPretrainer"]


@PRETRAINERS.register("simcse", needs_base=True, library="transferkit.train (the training loop)",
                      paper="Gao, Yao & Chen, SimCSE: Simple Contrastive Learning of Sentence Embeddings, EMNLP 2021")
class SimCSEPretrainer(Pretrainer):
    """Adapt a transformers sentence encoder (e.g. ``minilm``) to a corpus with unsupervised SimCSE.

    Args:
        max_texts: train on at most this many distinct texts of the corpus (a seeded sample; None: all).
        epochs: passes over those texts.
        batch_size: texts per step (each one's other texts are its negatives).
        lr: AdamW learning rate (3e-5 as in the paper for base-size encoders).
        temperature: the contrastive softmax temperature (0.05).
        max_length: tokens kept per text while training (the encoder keeps its own setting for features).
        seed: data order and dropout.
        accelerator, devices, precision: where and how the loop trains.

    References:
        Gao, Yao & Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021.
    """

    name = "simcse"

    def __init__(self, max_texts: int | None = 4096, epochs: int = 1, batch_size: int = 32, lr: float = 3e-5,
                 temperature: float = 0.05, max_length: int = 64, seed: int = 0, accelerator: str = "auto",
                 devices: int = 1, precision: str = "32"):
        bad = [f"{k} must be an integer >= 1 (got {v!r})" for k, v in (("epochs", epochs), ("batch_size", batch_size),
                                                                      ("max_length", max_length), ("devices", devices))
               if not isinstance(v, int) or v < 1]
        if max_texts is not None and (not isinstance(max_texts, int) or max_texts < 2):
            bad.append(f"max_texts must be an integer >= 2 or None (got {max_texts!r})")
        if not (isinstance(lr, (int, float)) and lr > 0):
            bad.append(f"lr must be > 0 (got {lr!r})")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            bad.append(f"temperature must be > 0 (got {temperature!r})")
        if bad:
            raise TransferkitError("invalid simcse settings: " + "; ".join(bad))
        self.settings = {"max_texts": max_texts, "epochs": epochs, "batch_size": batch_size, "lr": float(lr),
                         "temperature": float(temperature), "max_length": max_length, "seed": seed}
        self.run = {"accelerator": accelerator, "devices": devices, "precision": precision}

    def train(self, corpus: Corpus, base: Backbone | None, *, progress: bool = False,
              log: Callable[[str], None] | None = None) -> Backbone:
        from ..train.contrastive import EncoderPlan, SimCSELoss, TextItems
        from ..train.loop import LoopSettings, run_loop

        if base is None or not any(p.numel() for p in base.parameters()):
            raise TransferkitError("simcse adapts a transformers encoder (e.g. backbone='minilm'); got "
                                   f"{getattr(base, 'name', None)!r}")
        s = self.settings
        texts = list(dict.fromkeys(corpus.texts))
        if s["max_texts"] is not None and len(texts) > s["max_texts"]:
            keep = np.sort(np.random.default_rng(s["seed"]).choice(len(texts), s["max_texts"], replace=False))
            texts = [texts[i] for i in keep]
        if len(texts) < 2:
            raise TransferkitError(f"simcse needs at least 2 distinct texts; the corpus has {len(texts)}")
        prep = base.preprocessing
        trainable = base.with_preprocessing(max_length=s["max_length"]) if hasattr(prep, "max_length") else base
        steps = math.ceil(len(texts) / s["batch_size"]) * s["epochs"]
        plan = EncoderPlan(backbone=trainable, items=TextItems(texts), targets=None,
                           objective=SimCSELoss(temperature=s["temperature"]), stream="corpus",
                           views={"a": None, "b": None}, lr=s["lr"], weight_decay=0.0, batch_size=s["batch_size"],
                           warmup_fraction=0.0, seed=s["seed"], total_steps=steps,
                           identity={"method": "simcse", **s, "base": base.weights_digest()})
        settings = LoopSettings(epochs=s["epochs"], seed=s["seed"], max_grad_norm=1.0, num_workers=0,
                                progress="epoch" if progress else None, label="simcse", unit="texts", **self.run)
        r = run_loop(plan, settings, None, log=log)
        bb: Backbone = r.model.backbone
        bb.preprocessing = prep
        bb.source = f"{base.source} adapted with SimCSE on {corpus.origin}"
        bb.forget_digest()
        self.history_ = r.history
        return bb.eval()
