"""``simcse:<encoder>``: a sentence encoder adapted to the user's corpus (made by the ``simcse`` text pretraining
method, :mod:`transferkit.pretrain.simcse`); the name is what ``fit`` reads to pretrain it first."""

from __future__ import annotations

from ..errors import BackboneUnavailableError
from . import register_backbone
from .base import Backbone

__all__ = ["adapted_placeholder"]


def adapted_placeholder(base: str) -> Backbone:
    """``simcse:<encoder>`` cannot be built without a corpus: the error says how to make it.

    Raises:
        BackboneUnavailableError: always.
    """
    raise BackboneUnavailableError(
        f"simcse:{base} is {base} adapted to your unlabelled texts: make it with pretrain_text(corpus, 'simcse', "
        f"backbone={base!r}, out=...) and load it with file:<folder>, or fit with corpus= to adapt it on the fly")


register_backbone("simcse:", adapted_placeholder, modality="text",
                  description="a sentence encoder adapted to your corpus with unsupervised SimCSE before use "
                              "(simcse:minilm, with corpus=)", requires=("transformers",), reads_files=True,
                  corpus_method="simcse")
