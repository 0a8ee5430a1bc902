"""Writing run directories: folders that are safe to write into, atomic JSON / CSV, and the model a run keeps.

No module above this one is imported here (the pipeline, the engine and the CLI import it), so every command writes
runs the same way. A run directory's ``model/`` holds::

    model.json          format, kind (probe / finetuned), classes, preprocessing, the backbone (a registered name
                        with its weight digest, or a folder inside the run), the head (kind, config, file, sha256)
    head.safetensors    the head's weights
    backbone/           a backbone the run trained or that cannot be rebuilt by name (backbone.json + weights)
    backbone_delta.safetensors   a parameter-efficient run's delta (LoRA / adapter / bias weights) over the base
                        backbone named in model.json (see :mod:`transferkit.train.efficient`)

Every weight file's SHA-256 is recorded when it is written and checked when it is read
(:mod:`transferkit.runs.reader`).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write_bytes, file_digest, json_default
from ..errors import OutputError

__all__ = ["MODEL_FORMAT", "RUN_MARKER", "default_run_dir", "prepare_run_dir", "write_json", "write_csv",
           "save_model", "backbone_reference", "rebuildable", "DELTA_FILE"]

MODEL_FORMAT = "transferkit-model/2"
RUN_MARKER = ".transferkit-run"
DELTA_FILE = "backbone_delta.safetensors"


def default_run_dir(dataset: str, backbone: str, root: str | Path = "runs") -> Path:
    """``runs/<date>-<time>-<dataset>-<backbone>`` (made unique with a suffix when it exists)."""
    slug = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in s)[:40]  # noqa: E731
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(dataset)}-{slug(backbone)}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def prepare_run_dir(path: str | Path, kind: str = "fit", *, resume: bool = False) -> Path:
    """Create a run directory (and ``model/`` for a fit) and check it is writable, before any long work starts.

    A folder that already holds files is refused, so a run never overwrites another one or mixes its files with a
    user's, unless ``resume`` is True and the folder holds a run of the same ``kind`` (``fit``, ``compare``,
    ``adapt``, ``rank``) made by transferkit: then the work continues there.

    Raises:
        OutputError: the folder is not empty (and not a run of this kind being resumed), is a file, or cannot be
            written; the message says which and how to fix it.
    """
    path = Path(path).expanduser()
    marker = path / RUN_MARKER
    if path.exists() and not path.is_dir():
        raise OutputError(f"the run directory {path} is a file; choose a folder with out=")
    if path.is_dir() and _holds_work(path):
        owner = None
        if marker.is_file():
            try:
                owner = json.loads(marker.read_text()).get("kind")
            except (OSError, ValueError):
                owner = None
        if not (resume and owner == kind):
            what = (f"holds a transferkit {owner} run" if owner else "is not empty")
            hint = (" or resume it (resume=True)" if owner == kind else "")
            raise OutputError(f"the run directory {path} {what}; nothing was written. Choose a new folder with out="
                              f"{hint}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if kind == "fit":
            (path / "model").mkdir(exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:6]}"
        probe.write_text("ok")
        probe.unlink()
        if not marker.is_file():
            atomic_write_bytes(marker, json.dumps({"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                                                  ).encode())
    except OSError as e:
        raise OutputError(f"cannot write the run directory {path} ({e.strerror or e}); choose another place with "
                          "out=") from e
    return path


def _holds_work(path: Path) -> bool:
    """Whether a folder holds anything beyond what :func:`prepare_run_dir` itself made (a run that failed before
    writing anything leaves only that, and may be written again)."""
    for p in path.iterdir():
        if p.name == RUN_MARKER or p.name.startswith(".write-test-"):
            continue
        if p.name == "model" and p.is_dir() and not any(p.iterdir()):
            continue
        return True
    return False


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (numpy scalars and arrays, paths converted)."""
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, default=json_default).encode())


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Write a CSV atomically."""
    atomic_write_bytes(Path(path), df.to_csv(index=False).encode())


def rebuildable(name: str) -> bool:
    """Whether a registered backbone name rebuilds the backbone without reading files (so a run may name it)."""
    from ..backbones import BACKBONES

    try:
        entry = BACKBONES.get(name)
    except Exception:  # noqa: BLE001 - unregistered or malformed names cannot be rebuilt by name
        return False
    return not entry.cap("reads_files", False)


def backbone_reference(backbone: Any) -> dict[str, Any] | None:
    """How a run names an unchanged backbone: ``{"name", "weights"}`` when its registered name rebuilds it without
    reading files (None otherwise: the run must then keep a copy inside it)."""
    if not rebuildable(backbone.name):
        return None
    return {"name": backbone.name, "weights": backbone.weights_digest()}


def save_model(run_dir: Path, head: Any, backbone: Any, classes: list[str], *, kind: str = "probe",
               backbone_trained: bool = False, extra: dict[str, Any] | None = None,
               delta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save a run's model: the head (safetensors) and the backbone (by registered name and weight digest, or saved
    inside the run when it was trained or cannot be rebuilt by name); write ``model/model.json``.

    Args:
        run_dir: the run directory.
        head: a head module (:mod:`transferkit.heads.modules`).
        backbone: the backbone the head was trained on.
        classes: class names, in the order of the head's outputs.
        kind: ``"probe"`` (frozen backbone) or ``"finetuned"``.
        backbone_trained: the backbone's weights changed in this run: save them inside it.
        extra: more JSON fields (strategy, best epoch, ...).
        delta: a parameter-efficient run's trained delta instead of the whole backbone: ``{"strategy": its config,
            "state": name -> tensor, "base": {"name", "weights"}}``; written to ``backbone_delta.safetensors`` and
            the backbone recorded as the base's name and digest plus the delta (re-applied by the reader).

    Returns:
        The model.json document.
    """
    from ..heads.modules import save_head

    model_dir = Path(run_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if delta is not None:
        from safetensors.torch import save

        path = model_dir / DELTA_FILE
        atomic_write_bytes(path, save(delta["state"], metadata={"strategy": json.dumps(delta["strategy"])}))
        ref = {"name": str(delta["base"]["name"]), "weights": delta["base"]["weights"],
               "delta": {"strategy": delta["strategy"], "file": path.name, "sha256": file_digest(path),
                         "parameters": int(sum(t.numel() for t in delta["state"].values()))}}
        if backbone.modality == "image":  # trained at another size than the registered default, maybe
            ref["delta"]["input_size"] = int(backbone.data_config()["input_size"][-1])
    elif backbone_trained:
        backbone.forget_digest()  # its weights changed since the digest was taken
    if delta is None:
        ref = None if backbone_trained else backbone_reference(backbone)
    if ref is None:
        backbone.save(model_dir / "backbone")
        ref = {"path": "backbone", "name": backbone.name, "weights": backbone.weights_digest()}
    info = {"format": MODEL_FORMAT, "kind": kind, "modality": backbone.modality, "classes": [str(c) for c in classes],
            "num_features": int(backbone.num_features), "preprocessing": backbone.data_config(), "backbone": ref,
            "head": save_head(model_dir, head, {"classes": json.dumps([str(c) for c in classes])}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    write_json(model_dir / "model.json", info)
    return info
