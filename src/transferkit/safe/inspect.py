"""What can be checked offline about a backbone someone downloaded, and what cannot.

:func:`inspect_backbone` reports two things:

1. **Weight digests.** The SHA-256 of the weights file (when the backbone comes from one) and of the loaded state dict,
   compared with the digest the registry knows for that name (``weights_sha256``: the shipped EfficientNet-Lite
   files; their published file names carry the same digest's first 8 hex digits). A match proves the file is the one
   that was published, nothing about whether *that* is clean; a backbone without a reference digest can only be
   compared by the user against the publisher's own.
2. **A trigger sweep.** Solid patches of a few sizes, colours and positions are pasted on clean images. A patch
   backdoor makes the backbone push every image carrying its trigger the same long way (towards the target class),
   whatever the image shows; an ordinary patch moves features a little, each image its own way. For each patch the
   sweep measures the **push**: the squared length of the mean feature shift ``mean_i f(patched_i) - f(clean_i)``
   relative to the clean features' spread ``mean_i ||f(clean_i) - mean f(clean)||^2``, the shift's **consistency**
   (``||mean shift||^2 / mean ||shift||^2``, 1 when every image moves the same way) and, for a backbone with its own
   classifier (``source_logits``), the share of images whose top-1 class flips to one common class. A patch is
   flagged when its push exceeds ``max_push`` (0.5: the patch moves all images together by more than half the
   natural spread of the data). Measured once on ``lenet-fc`` trained on 1200 mnist5k digits of which 10% carried
   a 15% white corner patch relabelled 0 (attack success 94%): the matching patch pushed 2.4 (consistency 0.86),
   while on the same network trained on clean digits the strongest patch (a white square over the digit) pushed
   0.06. The 0.5 threshold was set from that one pair; other architectures and data may need another.

Passing proves nothing: a backdoor whose trigger is not a solid patch like those swept (a blended pattern, a
warp, a semantic feature, a trigger on text), one that only fires with a particular downstream head, or one planted
in weights the sweep's data never exercises, goes unseen. The sweep is evidence to look closer, not a certificate.

References:
    Gu, Dolan-Gavitt & Garg, "BadNets", 2017 (patch triggers); Wang et al., "Neural Cleanse: Identifying and
    Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019 (a trigger is a small input change that sends
    every input to one class; Neural Cleanse searches for it by optimisation, this sweep only tries fixed patches).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from .triggers import Patch, image_batches

__all__ = ["SweepRow", "Inspection", "inspect_backbone", "default_sweep", "trigger_sweep", "LIMITS"]

#: what the inspection cannot prove, printed with every report
LIMITS = ("Passing does not prove the absence of a backdoor: only solid square patches like the swept ones are "
          "tried; blended, warped, semantic or text triggers, backdoors that need a particular downstream head, and "
          "weights the given images never exercise go unseen. A matching digest proves the file is the published "
          "one, not that the publisher's weights are clean.")

_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "red": (255, 0, 0), "green": (0, 255, 0),
            "blue": (0, 0, 255)}


def default_sweep(sizes: Sequence[float] = (0.1, 0.15, 0.2), colours: Sequence[str] = tuple(_COLOURS),
                  positions: Sequence[str] = ("tl", "tr", "bl", "br", "c")) -> list[Patch]:
    """Every (size, colour, position) patch: 3 x 5 x 5 = 75 by default."""
    return [Patch(size=s, colour=_COLOURS[c], position=p) for s, c, p in product(sizes, colours, positions)]


@dataclass
class SweepRow:
    """One patch of the sweep.

    Attributes:
        patch: ``"15% white at br"``.
        push: squared length of the mean feature shift the patch causes, relative to the clean features' spread.
        consistency: ``||mean shift||^2 / mean ||shift||^2`` (1: every image shifted the same way).
        flip_rate: share of images whose source top-1 class flips to the patch's most common top-1 class (None
            without a source classifier).
        flip_class: that class (its name when known).
        flagged: the patch looks like a trigger.
    """

    patch: str
    push: float
    consistency: float
    flip_rate: float | None = None
    flip_class: str | None = None
    flagged: bool = False


@dataclass
class Inspection:
    """What :func:`inspect_backbone` found.

    Attributes:
        backbone: its name.
        weights_sha256: SHA-256 of the loaded state dict (names, shapes, dtypes, bytes).
        file: the weights file, when the backbone was read from one.
        file_sha256: SHA-256 of that file's bytes.
        known_sha256: the registry's reference digest of that file (None: no reference).
        digest_status: ``"match"``, ``"MISMATCH"`` or ``"no reference digest"``.
        images: number of clean images swept.
        sweep: one :class:`SweepRow` per patch, most suspicious first.
        flagged: the flagged rows.
        limits: what the inspection cannot prove.
    """

    backbone: str
    weights_sha256: str
    file: str | None
    file_sha256: str | None
    known_sha256: str | None
    digest_status: str
    images: int
    sweep: list[SweepRow] = field(default_factory=list)
    limits: str = LIMITS

    @property
    def flagged(self) -> list[SweepRow]:
        return [r for r in self.sweep if r.flagged]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["flagged"] = [asdict(r) for r in self.flagged]
        return d


def _spread(f: np.ndarray) -> float:
    f = f.astype(np.float64)
    return float(((f - f.mean(0)) ** 2).sum(1).mean())


def trigger_sweep(backbone: Any, images: np.ndarray, patches: Sequence[Patch] | None = None,
                  max_push: float = 0.5, batch_size: int = 256) -> list[SweepRow]:
    """Paste each patch on ``images`` and measure how far and how uniformly it pushes the backbone's features (see
    the module doc).

    The images go through the backbone's evaluation view once; each patch is pasted on the preprocessed batch, where
    the network sees it (:meth:`Patch.paste`), so the sweep costs one forward pass per patch.

    Args:
        backbone: a :class:`~transferkit.backbones.base.Backbone` (image modality).
        images: ``(N, H, W[, C])`` uint8 clean images (a few hundred are plenty).
        patches: the candidates (default :func:`default_sweep`).
        max_push: a patch whose push exceeds this is flagged.

    Returns:
        One :class:`SweepRow` per patch, largest push first.
    """
    patches = list(patches) if patches is not None else default_sweep()
    backbone.eval()
    x = torch.cat(list(image_batches(backbone.transform("eval"), list(images), batch_size)))
    cfg = backbone.data_config()
    classify = getattr(backbone, "source_logits", None)
    if not callable(classify) or not getattr(backbone, "num_source_classes", 0):  # a property of timm backbones
        classify = None

    def run(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        feats, tops = [], []
        with torch.no_grad():
            for b in batch.split(batch_size):
                feats.append(backbone(b).double())
                if classify is not None:
                    tops.append(classify(b).argmax(1))
        return torch.cat(feats).numpy(), (torch.cat(tops).numpy() if tops else None)

    clean, clean_top = run(x)
    spread = float(((clean - clean.mean(0)) ** 2).sum(1).mean())
    if spread <= 0:
        raise DataError("the backbone gives the same features for every clean image: nothing to compare a trigger "
                        "with; give varied images")
    names = backbone.source_class_names() if classify is not None and hasattr(backbone, "source_class_names") else None
    rows = []
    for p in patches:
        feats, top = run(p.paste(x, cfg["mean"], cfg["std"]))
        shift = feats - clean
        mean_sq = float((shift.mean(0) ** 2).sum())
        flip_rate = flip_class = None
        if top is not None:
            cls = int(np.bincount(top).argmax())
            flip_rate = float(np.mean((top == cls) & (clean_top != cls)))
            flip_class = names[cls] if names is not None and cls < len(names) else str(cls)
        push = mean_sq / spread
        rows.append(SweepRow(patch=p.describe(), push=push, consistency=mean_sq / max(float((shift ** 2).sum(1).mean()),
                                                                                       1e-30),
                             flip_rate=flip_rate, flip_class=flip_class, flagged=bool(push > max_push)))
    return sorted(rows, key=lambda r: -r.push)


def _sample_images(data: Any, n: int, seed: int) -> np.ndarray:
    from ..data.load import load_data

    src = load_data(data) if not hasattr(data, "load") else data
    if len(src) == 0:
        raise DataError(f"{data!r} holds no images to sweep")
    pick = np.sort(np.random.default_rng(seed).choice(len(src), size=min(n, len(src)), replace=False))
    imgs = [np.asarray(src.load(int(i)).convert("RGB")) for i in pick]
    side = min(min(im.shape[:2]) for im in imgs)
    if any(im.shape[:2] != imgs[0].shape[:2] for im in imgs):
        from PIL import Image

        imgs = [np.asarray(Image.fromarray(im).resize((side, side))) for im in imgs]
    return np.stack(imgs).astype(np.uint8)


def inspect_backbone(backbone: Any, data: Any = None, *, images: int = 200, seed: int = 0,
                     patches: Sequence[Patch] | None = None, max_push: float = 0.5) -> Inspection:
    """Check a backbone offline: weight digests against the known ones, and a trigger sweep on clean images.

    Args:
        backbone: a registry name (``"lite0"``, ``"file:<dir>"``, ``"file:<arch>@<path>"``) or a backbone object.
        data: clean images for the sweep (a built-in dataset name, a folder, a table or a DataSource); None: the
            digests only.
        images: how many images of ``data`` to sweep (a seeded sample).
        seed: which images.
        patches, max_push: see :func:`trigger_sweep`.

    Returns:
        :class:`Inspection` (its ``limits`` say what it cannot prove).
    """
    from .._io import file_digest
    from ..backbones import backbone_entry, create_backbone, state_dict_digest

    name = backbone if isinstance(backbone, str) else backbone.name
    bb = create_backbone(backbone) if isinstance(backbone, str) else backbone
    file = _weights_file(name, bb)
    known = None
    if isinstance(backbone, str):
        known = backbone_entry(backbone).cap("weights_sha256")
    file_sha = file_digest(file) if file is not None else None
    status = "no reference digest" if known is None or file_sha is None else (
        "match" if file_sha == known else "MISMATCH")
    report = Inspection(backbone=name, weights_sha256=state_dict_digest(bb), file=None if file is None else str(file),
                        file_sha256=file_sha, known_sha256=known, digest_status=status, images=0)
    if data is not None:
        if bb.modality != "image":
            raise DataError(f"the trigger sweep pastes patches on images, and {name!r} takes {bb.modality}s; leave "
                            "out the data to check the digests only")
        imgs = _sample_images(data, images, seed)
        report.images = len(imgs)
        report.sweep = trigger_sweep(bb, imgs, patches, max_push=max_push)
    return report


def _weights_file(name: str, bb: Any) -> Path | None:
    """The file the weights were read from: a shipped package file, a checkpoint, or a saved backbone's weights."""
    if name.startswith("lite") and name[4:].isdigit():
        from ..backbones.vision import shipped_weights_path

        return shipped_weights_path(int(name[4:]))
    if name.startswith("file:"):
        spec = name[5:].split("@", 1)[-1]
        p = Path(spec).expanduser()
        if p.is_dir():
            return p / "weights.safetensors"
        return p if p.is_file() else None
    return None
