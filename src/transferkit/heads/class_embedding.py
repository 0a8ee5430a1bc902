"""Head modules of zero-shot classifiers: classes given by embeddings of their names, not learned from their labels.

Two kinds, saved in a run like any head (safetensors + ``{kind, config}``) and rebuilt by :func:`load_head`:

- :class:`ClassEmbeddingHead` (``class-embedding``): one weight vector per class in feature space, optionally on
  L2-normalised features (cosine similarity). It holds every zero-shot method whose score is linear in the
  features: text (or CLIP) prompt similarity, the ridge map from names to classifier weights, ESZSL and DeViSE
  (``x^T V s_c`` is a linear classifier with weights ``V s_c``).
- :class:`ConSEHead` (``conse``): the source classifier (e.g. ImageNet), its top-T probabilities averaging the
  source classes' name embeddings, and the cosine of that average to each class's name embedding.

Both add a per-class offset ``class_bias`` to their logits: calibrated stacking (Chao et al. 2016) lowers the seen
classes' scores by a constant so unseen classes are not drowned in generalized zero-shot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .modules import HEAD_MODULES

__all__ = ["ClassEmbeddingHead", "ConSEHead"]


@HEAD_MODULES.register("class-embedding")
class ClassEmbeddingHead(nn.Module):
    """Logits ``scale * n(x) @ W^T + class_bias``, where ``n`` is the L2 normalisation (``normalize=True``, cosine
    similarity to unit-norm class vectors) or the identity.

    Args:
        in_features: the feature width ``D``.
        num_classes: ``C``.
        normalize: L2-normalise the features first (prompt similarity); the class vectors are stored as given.
        scale: the logits' temperature factor (CLIP's ``logit_scale``; 1 for linear maps).

    Shape:
        ``(N, D)`` -> ``(N, C)``; with ``return_features=True`` also the (normalised) features ``(N, D)``.

    References:
        Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), ICML 2021
        (prompt similarity); Romera-Paredes & Torr, "An embarrassingly simple approach to zero-shot learning",
        ICML 2015; Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NeurIPS 2013.
    """

    kind = "class-embedding"

    def __init__(self, in_features: int, num_classes: int, normalize: bool = True, scale: float = 1.0):
        super().__init__()
        self.register_buffer("weight", torch.zeros(int(num_classes), int(in_features)))
        self.register_buffer("class_bias", torch.zeros(int(num_classes)))
        self._config = {"in_features": int(in_features), "num_classes": int(num_classes),
                        "normalize": bool(normalize), "scale": float(scale)}

    @classmethod
    def from_weights(cls, weight: Any, *, normalize: bool, scale: float = 1.0,
                     class_bias: Any = None) -> "ClassEmbeddingHead":
        """A head holding ``weight`` ``(C, D)`` (and an optional per-class offset ``(C,)``)."""
        w = torch.as_tensor(weight, dtype=torch.float32)
        m = cls(w.shape[1], w.shape[0], normalize=normalize, scale=scale)
        with torch.no_grad():
            m.weight.copy_(w)
            if class_bias is not None:
                m.class_bias.copy_(torch.as_tensor(class_bias, dtype=torch.float32))
        return m.eval()

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return self._config["num_classes"]

    def config(self) -> dict[str, Any]:
        """What rebuilds the module (JSON)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ClassEmbeddingHead":
        """The architecture of a saved head (weights loaded separately)."""
        return cls(int(config["in_features"]), int(config["num_classes"]), bool(config.get("normalize", True)),
                   float(config.get("scale", 1.0)))

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        h = nn.functional.normalize(x, dim=1) if self._config["normalize"] else x
        logits = self._config["scale"] * (h @ self.weight.T) + self.class_bias
        return (logits, h) if return_features else logits


@HEAD_MODULES.register("conse")
class ConSEHead(nn.Module):
    """Convex combination of semantic embeddings: the source classifier's ``top_k`` most probable classes average
    their name embeddings, weighted by probability; the logits are ``scale`` times the cosine of that average to each
    class's name embedding, plus ``class_bias``.

    Args:
        in_features: feature width ``D`` (the source classifier's input).
        num_source: ``K`` source classes (1000 for ImageNet).
        embed_dim: the name-embedding width ``Z``.
        num_classes: ``C`` target classes.
        top_k: ``T``, the source classes kept per input (10 in the paper).
        scale: temperature factor of the logits.

    Shape:
        ``(N, D)`` -> ``(N, C)``; with ``return_features=True`` also the averaged embedding ``(N, Z)``.

    References:
        Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR 2014.
    """

    kind = "conse"

    def __init__(self, in_features: int, num_source: int, embed_dim: int, num_classes: int, top_k: int = 10,
                 scale: float = 1.0):
        super().__init__()
        self.register_buffer("source_weight", torch.zeros(int(num_source), int(in_features)))
        self.register_buffer("source_bias", torch.zeros(int(num_source)))
        self.register_buffer("source_embeddings", torch.zeros(int(num_source), int(embed_dim)))
        self.register_buffer("class_embeddings", torch.zeros(int(num_classes), int(embed_dim)))
        self.register_buffer("class_bias", torch.zeros(int(num_classes)))
        self._config = {"in_features": int(in_features), "num_source": int(num_source), "embed_dim": int(embed_dim),
                        "num_classes": int(num_classes), "top_k": int(top_k), "scale": float(scale)}

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return self._config["num_classes"]

    def config(self) -> dict[str, Any]:
        """What rebuilds the module (JSON)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ConSEHead":
        """The architecture of a saved head (weights loaded separately)."""
        return cls(int(config["in_features"]), int(config["num_source"]), int(config["embed_dim"]),
                   int(config["num_classes"]), int(config.get("top_k", 10)), float(config.get("scale", 1.0)))

    def source_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the source classifier.

        Shape:
            ``(N, D)`` -> ``(N, K)``.
        """
        return torch.softmax(x @ self.source_weight.T + self.source_bias, dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_t p_t e_t / sum_t p_t`` over the ``top_k`` source classes of each row.

        Shape:
            ``(N, D)`` -> ``(N, Z)``.
        """
        p = self.source_probabilities(x)
        k = min(self._config["top_k"], p.shape[1])
        top, idx = p.topk(k, dim=1)
        top = top / top.sum(1, keepdim=True).clamp(min=1e-12)
        return torch.einsum("nt,ntz->nz", top, self.source_embeddings[idx])

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: D102 - see the class
        f = self.embed(x)
        cos = nn.functional.normalize(f, dim=1) @ nn.functional.normalize(self.class_embeddings, dim=1).T
        logits = self._config["scale"] * cos + self.class_bias
        return (logits, f) if return_features else logits
