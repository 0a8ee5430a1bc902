"""The one contract every backbone follows, and saving / loading any backbone kind (safetensors + JSON, no pickle)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from .._io import atomic_write_bytes, file_digest
from .._random import derive_seed, seeded_rng
from ..data.views import ImagePreprocessing, Preprocessing, TextPreprocessing, make_view, preprocessing_from_dict
from ..errors import BackboneUnavailableError, TransferkitError
from ..registry import Registry

__all__ = ["Backbone", "state_dict_digest", "BACKBONE_KINDS", "load_backbone", "SAVED_FORMAT"]

SAVED_FORMAT = "transferkit-backbone/1"

#: backbone classes by ``kind``: what :func:`load_backbone` rebuilds a saved backbone with
BACKBONE_KINDS: Registry[type["Backbone"]] = Registry("saved backbone kind")


def state_dict_digest(module: nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, shapes, dtypes and bytes), in key order.

    Two modules with the same architecture and the same weights get the same digest; any changed
    weight changes it. Used in feature-cache keys.
    """
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Backbone(nn.Module):
    """A (usually pretrained) network that turns a batch of inputs into an ``(N, D)`` feature matrix.

    Subclasses set:
        name: the registry name the backbone was created from (e.g. ``"lite0"``, ``"timm:resnet18"``).
        modality: ``"image"`` or ``"text"``.
        num_features: ``D``, the size of the penultimate-layer features.
        source: a short description of the pretraining (``"imagenet-1k"``, ``"random-init"``, ...).
        preprocessing: an :class:`~transferkit.data.views.ImagePreprocessing` or
            :class:`~transferkit.data.views.TextPreprocessing`; change it with :meth:`with_preprocessing`.
        kind: the key under which :func:`load_backbone` finds the class to rebuild a saved backbone.

    Image backbones turn a PIL image into a tensor with :meth:`transform` (a view of :mod:`transferkit.data.views`);
    text backbones turn a list of strings into model inputs with :meth:`collate`.

    Optional: :meth:`fit` trains the backbone on the user's own data (word vectors on a corpus, ...); every backbone
    can be :meth:`save`-d and loaded back with :func:`load_backbone` (also by name: ``file:<dir>``).

    Shape:
        forward: image batch ``(N, 3, H, W)`` or tokenized text -> ``(N, num_features)``.
    """

    name: str = ""
    modality: str = "image"
    num_features: int = 0
    source: str = ""
    kind: ClassVar[str] = ""
    preprocessing: Preprocessing = ImagePreprocessing()

    def __init__(self) -> None:
        super().__init__()
        self._digest: str | None = None

    # -- preprocessing ---------------------------------------------------------------------------
    def data_config(self) -> dict[str, Any]:
        """The preprocessing as a JSON-ready dict (timm's data config for images; tokenizer settings for text)."""
        return self.preprocessing.to_dict()

    def transform(self, view: str | None = None, **params: Any) -> Callable[[Any], torch.Tensor] | None:
        """The transform of ``view`` (``eval``, ``train``, ``weak``, ``strong``) from one PIL RGB image to a tensor;
        None for text backbones. Without a view: the eval view, or the seeded draw :meth:`with_view` chose."""
        if view is None and getattr(self, "_view", None) is not None:
            name, draw, seed = self._view
            tf = make_view(self.preprocessing, name)
            return None if tf is None else SeededView(tf, derive_seed(seed, draw))
        return make_view(self.preprocessing, view or "eval", **params)

    def with_view(self, view: str, draw: int = 0, seed: int = 0) -> "Backbone":
        """The same backbone (weights shared) whose extraction transform is draw ``draw`` of the random ``view``
        (``weak``, ``strong``): each item gets the same augmentation every time (seeded by ``seed``, ``draw`` and the
        item's content), so the features of K views of a dataset are cached once like any others, under their own
        cache key (:meth:`identity` names the view)."""
        clone = copy.copy(self)
        clone.__dict__ = dict(self.__dict__)
        clone._view = (str(view), int(draw), int(seed))
        return clone

    def collate(self, items: Sequence[Any]) -> Any:
        """Batch a list of transformed items into model inputs (images: stack; text: tokenize)."""
        return torch.stack(list(items))

    def with_preprocessing(self, **overlay: Any) -> "Backbone":
        """The same backbone (weights shared, not copied) with some preprocessing fields changed, e.g.
        ``input_size=64``: timm's ``pretrained_cfg_overlay``. The copy has its own cache key."""
        clone = copy.copy(self)
        clone.__dict__ = dict(self.__dict__)
        clone.preprocessing = self.preprocessing.overlay(**overlay)
        return clone

    # -- identity --------------------------------------------------------------------------------
    def weights_digest(self) -> str:
        """Digest of the current weights (computed once; call :meth:`forget_digest` after changing them)."""
        if self._digest is None:
            self._digest = state_dict_digest(self)
        return self._digest

    def forget_digest(self) -> None:
        """Drop the cached weights digest (after training the backbone in place)."""
        self._digest = None

    def identity(self) -> dict[str, Any]:
        """Everything that determines the features this backbone produces for a given input."""
        out = {
            "name": self.name,
            "class": type(self).__name__,
            "modality": self.modality,
            "num_features": self.num_features,
            "weights": self.weights_digest(),
            "preprocessing": self.data_config(),
        }
        if getattr(self, "_view", None) is not None:
            out["view"] = list(self._view)
        return out

    def identity_key(self) -> str:
        """A short hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, modality={self.modality}, num_features={self.num_features}"

    # -- training on the user's data ---------------------------------------------------------------
    def fit(self, data: Any, **params: Any) -> "Backbone":
        """Train the backbone on the user's own data (e.g. word vectors on a text corpus). Most backbones are
        pretrained elsewhere and have nothing to fit.

        Raises:
            TransferkitError: this kind of backbone cannot be trained this way.
        """
        raise TransferkitError(f"backbone {self.name!r} ({type(self).__name__}) has no fit(data): it is used as it is, "
                               "or fine-tuned with a strategy (finetune, partial, gradual)")

    # -- saving ------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What rebuilds this architecture without the weights (JSON): overridden by each kind."""
        return {}

    def save(self, directory: str | Path) -> Path:
        """Write ``backbone.json`` (kind, config, preprocessing, file digests) and ``weights.safetensors`` to
        ``directory``; :func:`load_backbone` reads them back. Files are written atomically.

        Raises:
            TransferkitError: the class has no registered ``kind``.
        """
        from safetensors.torch import save as st_save

        if not self.kind or self.kind not in BACKBONE_KINDS:
            raise TransferkitError(f"backbone {self.name!r} ({type(self).__name__}) cannot be saved: its class has no "
                                   "registered kind (decorate it with @BACKBONE_KINDS.register(kind))")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        atomic_write_bytes(d / "weights.safetensors", st_save(state, metadata={"format": SAVED_FORMAT}))
        extra = self._save_files(d)
        files = {name: file_digest(d / name) for name in ["weights.safetensors", *extra]}
        meta = {"format": SAVED_FORMAT, "kind": self.kind, "name": self.name, "source": self.source,
                "modality": self.modality, "num_features": int(self.num_features), "config": self.config(),
                "preprocessing": self.data_config(), "weights": self.weights_digest(), "files": files}
        atomic_write_bytes(d / "backbone.json", json.dumps(meta, indent=2, default=str).encode())
        return d

    def _save_files(self, directory: Path) -> list[str]:
        """Write kind-specific files (tokenizer, vocabulary) beside the weights; returns their names."""
        return []

    @classmethod
    def from_saved(cls, directory: Path, meta: dict[str, Any]) -> "Backbone":
        """Rebuild the architecture from ``meta["config"]`` and the files in ``directory`` (weights are loaded
        after by :func:`load_backbone`)."""
        raise TransferkitError(f"{cls.__name__} does not implement from_saved")


class SeededView:
    """A random view applied with a seed drawn from the item's content: the same item always gets the same
    augmentation (whatever worker or run loads it), different items get different ones."""

    def __init__(self, transform: Callable[[Any], Any], seed: int):
        self.transform, self.seed = transform, int(seed)

    def __call__(self, img: Any) -> Any:
        import zlib

        content = img.tobytes() if hasattr(img, "tobytes") else str(img).encode()
        with seeded_rng(derive_seed(self.seed, zlib.crc32(content))):
            return self.transform(img)


def load_backbone(directory: str | Path, *, root: Path | None = None) -> Backbone:
    """A backbone saved by :meth:`Backbone.save`, every file checked against the digest recorded at save time.

    Args:
        directory: the folder holding ``backbone.json``.
        root: when given, ``directory`` must lie inside it (a run may only read its own files).

    Raises:
        BackboneUnavailableError: missing or damaged files, an unknown kind, a digest mismatch, or a folder
            outside ``root``.
    """
    from safetensors.torch import load_file

    d = Path(directory).expanduser()
    if root is not None:
        try:
            d.resolve().relative_to(Path(root).resolve())
        except ValueError:
            raise BackboneUnavailableError(f"{d} is outside {root}: a run only reads the backbone saved inside "
                                           "it") from None
    meta_path = d / "backbone.json"
    if not meta_path.is_file():
        raise BackboneUnavailableError(f"no saved backbone in {d} (backbone.json is missing); save one with "
                                       "Backbone.save(dir)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise BackboneUnavailableError(f"cannot read {meta_path} ({e}); save the backbone again") from e
    if meta.get("format") != SAVED_FORMAT:
        raise BackboneUnavailableError(f"{meta_path} is not a saved transferkit backbone (format "
                                       f"{meta.get('format')!r}, expected {SAVED_FORMAT!r})")
    files = meta.get("files") or {}
    for name, digest in files.items():
        p = (d / name)
        if Path(name).is_absolute() or ".." in Path(name).parts or not p.is_file():
            raise BackboneUnavailableError(f"saved backbone {d}: file {name!r} is missing or outside the folder")
        if file_digest(p) != digest:
            raise BackboneUnavailableError(f"saved backbone {d}: {name} does not match the digest recorded when it "
                                           "was saved (the file is damaged or was changed); save the backbone again")
    cls = BACKBONE_KINDS.get(str(meta.get("kind")))
    bb = cls.factory.from_saved(d, meta)
    try:
        state = load_file(str(d / "weights.safetensors"))
        bb.load_state_dict(state, strict=True)
    except Exception as e:  # shape or key mismatches, corrupt tensors
        raise BackboneUnavailableError(f"saved backbone {d}: weights do not fit its {meta.get('kind')} architecture "
                                       f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    bb.preprocessing = preprocessing_from_dict(meta["preprocessing"])
    bb.name = str(meta.get("name") or bb.name)
    bb.source = str(meta.get("source") or bb.source)
    bb.forget_digest()
    return bb.eval()


def text_preprocessing(tokenizer: str, pooling: str, vocab_size: int, max_length: int | None = None) -> TextPreprocessing:
    """Shorthand for text backbones."""
    return TextPreprocessing(tokenizer=tokenizer, pooling=pooling, vocab_size=int(vocab_size), max_length=max_length)
