"""Zero-shot classification: classes known only by their names (or short descriptions), embedded by the text
backbones transferkit ships (MiniLM, GloVe) or by a CLIP model's text tower.

- texts: similarity of a text's embedding to the label descriptions' in the same encoder;
- images: ConSE over the backbone's ImageNet classifier, a ridge map from names to classifier weights, ESZSL and
  DeViSE; generalized zero-shot (seen and unseen classes at test) with calibrated stacking;
- a ``clip:`` backbone: CLIP's prompt similarity.

:func:`zeroshot_run` is the whole job (``transferkit zeroshot``); the heads it saves predict through any run
(``load_run(...).predict``, ``transferkit predict``).
"""

from ..registry import import_submodules
from .api import ZeroShotModel, ZeroShotResult, fit_zeroshot, zeroshot_run
from .encode import SourceModel, class_embeddings, encode_texts, source_model
from .gzsl import calibrated_stacking, choose_gamma, gzsl_accuracy, harmonic_mean
from .methods import (ESZSL, ZEROSHOT_METHODS, ConSE, DeViSE, RidgeMap, Similarity, ZeroShotTask, create_method,
                      eszsl_map, ridge_map)
from .prompts import PROMPTS, ClassSpec, class_texts, parse_classes, readable_name

import_submodules(__name__, __path__)  # methods and prompt sets registered in their own files

__all__ = ["zeroshot_run", "fit_zeroshot", "ZeroShotResult", "ZeroShotModel", "ZEROSHOT_METHODS", "ZeroShotTask",
           "Similarity", "ConSE", "RidgeMap", "ESZSL", "DeViSE", "create_method", "ridge_map", "eszsl_map",
           "PROMPTS", "ClassSpec", "parse_classes", "readable_name", "class_texts", "encode_texts",
           "class_embeddings", "SourceModel", "source_model", "gzsl_accuracy", "harmonic_mean",
           "calibrated_stacking", "choose_gamma"]
