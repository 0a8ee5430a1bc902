"""FeatureStore: extract a backbone's features once, keep them on disk, reuse them.

Layout of the cache (``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``, or ``cache_dir=``)::

    <root>/<backbone key>/.transferkit-cache     marker: this folder was written by the feature cache
    <root>/<backbone key>/backbone.json          what the key stands for (name, weights digest, preprocessing)
    <root>/<backbone key>/shards/*.npz           features of finished chunks of items, keyed per item
    <root>/<backbone key>/views/<data key>.npy   one dataset's features in its order (memory-mapped reads)
    <root>/<backbone key>/views/<data key>.json  its metadata: size, unreadable items, origin

The backbone key hashes the backbone's name, weight digest, preprocessing and the package version; each
item has a content key (file path + size + mtime, or the bytes of an array / text), and a dataset's key
hashes its items' keys. Every file is written to a temporary name and renamed into place, so a run killed
at any point (even ``kill -9``) leaves only finished shards, and the next run extracts only what is missing.

The package keeps two more kinds of files under the root: ``results/<kind>-<digest>.json`` (baselines and
projections computed once, see ``pipeline._result_cache``) and ``datasets/<name>-v<version>.npz`` (generated
built-in datasets, see ``data.builtin._generated``). :meth:`FeatureStore.clear` deletes only files whose names
match these layouts, in folders the cache recognises as its own; anything else under the root is left alone.
"""

from __future__ import annotations

import errno
import itertools
import hashlib
import json
import os
import queue
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .. import __version__
from .._io import atomic_write, default_cache_dir, json_default
from ..backbones.base import Backbone
from ..data.sources import DataSource
from ..errors import BadInputError, CacheError, ModalityError
from .engines import cache_key, to_device

__all__ = ["FeatureStore", "Features", "default_cache_dir", "resolve_device", "default_num_workers", "ItemDataset",
           "CollateItems", "to_device", "size_workers", "split_eval_transform", "readable_items"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; a device that is not here is a clear error.

    Raises:
        TransferkitError: an unknown device name, or a CUDA / MPS device this machine does not have.
    """
    from ..errors import TransferkitError

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise TransferkitError(f"device={device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise TransferkitError(f"device={device!r}: no CUDA GPU is visible here (torch {torch.__version__}); use "
                                   "device=cpu or device=auto")
        if dev.index is not None and dev.index >= n:
            raise TransferkitError(f"device={device!r}: this machine has {n} CUDA GPU(s), numbered 0..{n - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise TransferkitError(f"device={device!r}: Apple's MPS is not available here; use device=cpu or device=auto")
    return dev


def default_num_workers() -> int:
    """Data-loading worker processes: one fewer than the CPUs this process may use, at most 8."""
    return max(0, min(8, _cpus() - 1))


#: below this many items to extract, :func:`size_workers` does not measure (see there)
SIZE_WORKERS_MIN_ITEMS = 256


def size_workers(engine: Any, source: DataSource, positions: np.ndarray, transform: Callable | None,
                 batch_size: int, *, sample: int = 16, log: Callable[[str], None] | None = None,
                 normalise: Callable | None = None) -> int:
    """Data-loading worker processes sized from measurements: decode + transform of up to ``sample`` items in this
    process (items/s of one decoder) against the engine's items/s on them, plus 20 % headroom, at most the CPUs this
    process may use less one (16 at most).

    0 means no worker process: batches are then made one ahead in a thread of this process (see :func:`_ahead`),
    which is what one decoder needs. A worker process costs a fork, a copy of every batch through shared memory,
    and on a machine with few cores it preempts the engine's threads: on 2 cores, lite0 under ONNX Runtime ran at
    56 images/s with one worker process and 84-99 with the decode-ahead thread (raw rate 92-118). So processes are
    used only when one decoder cannot keep up with the engine. Text needs no decoding (tokenising is in
    ``collate``): 0. Jobs under ``SIZE_WORKERS_MIN_ITEMS`` items are not measured (the measurement costs two engine
    calls on ``sample`` items, a third of a 96-image job): 0, the decode-ahead thread."""
    cap = max(0, min(16, _cpus() - 1))
    if cap == 0 or source.modality != "image" or not len(positions) or len(positions) < SIZE_WORKERS_MIN_ITEMS:
        return 0
    take = positions[:min(sample, len(positions))]
    t = time.perf_counter()
    items = []
    for i in take:
        try:
            x = source.load(int(i))
            items.append(transform(x) if transform is not None else x)
        except BadInputError:
            continue
    batch = CollateItems(engine.backbone, normalise)([(0, x, None) for x in items])[1] if items else None
    decode_s = time.perf_counter() - t
    if not items:
        return min(cap, default_num_workers())
    decode_rate = len(items) / max(decode_s, 1e-9)
    engine_rate = getattr(engine, "items_per_s", None)
    if not engine_rate:
        with engine.session():
            engine(batch)  # warm-up (first call allocates)
            t = time.perf_counter()
            engine(batch)
            engine_rate = len(items) / max(time.perf_counter() - t, 1e-9)
    need = int(np.ceil(1.2 * engine_rate / decode_rate))
    workers = 0 if need <= 1 else min(cap, need)
    if log is not None:
        log(f"data loading: decode + transform {decode_rate:.0f} items/s per decoder, engine {engine_rate:.0f} items/s "
            + ("-> decode ahead in a thread" if workers == 0 else f"-> {workers} worker process(es)")
            + (f" (needs {need}, {cap} CPUs free)" if need > cap else ""))
    return workers


def _ahead(batches: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``batches`` while a background thread makes the next ``depth`` of them (decode, transform, collate
    overlap the engine's forward pass: PIL and torch release the GIL in their heavy work). Order and content are
    those of ``batches``; an exception raised making a batch is raised here; leaving the loop early stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in batches:
                if not put(("batch", b)):
                    return
            put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", e))

    thread = threading.Thread(target=produce, name="transferkit-decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _extraction_order(source: DataSource, positions: np.ndarray) -> np.ndarray:
    """The order items are extracted in: texts by length (stable), so that a batch pads its texts to about their own
    length instead of the longest text of a random batch; images in data order."""
    if source.modality != "text" or len(positions) < 2:
        return positions
    lengths = np.asarray([len(str(source.items[int(i)])) for i in positions])
    return positions[np.argsort(lengths, kind="stable")]


def readable_items(source: DataSource, positions: Iterable[int], transform: Callable | None) -> Iterator[Any]:
    """The items at ``positions``, transformed, one at a time; unreadable ones are skipped."""
    for i in positions:
        try:
            x = source.load(int(i))
        except BadInputError:
            continue
        yield transform(x) if transform is not None else x


def _sample_batch(backbone: Backbone, source: DataSource, positions: np.ndarray, n: int = 16) -> Any:
    """Model inputs of up to ``n`` readable items at ``positions`` (what ``auto`` times the engines on)."""
    items = list(itertools.islice(readable_items(source, positions[: 2 * n], backbone.transform()), n))
    return backbone.collate(items) if items else None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Features:
    """A dataset's features from one backbone.

    Attributes:
        X: ``(N, D)`` float32, memory-mapped from the cache (rows of unreadable items are NaN), copy-on-write:
            writable like an ordinary array (``torch.as_tensor`` takes it without a warning), while changes
            stay in memory and never reach the cache file.
        bad: ``(index, item, reason)`` for each item that could not be read.
        extracted: how many items needed a forward pass in this call (0 on a full cache hit).
        path: the view file ``X`` is mapped from.
        seconds: wall time of the call.
    """

    X: np.ndarray
    bad: list[tuple[int, str, str]]
    extracted: int
    path: Path
    seconds: float

    @property
    def good(self) -> np.ndarray:
        """Indices of the items that were read."""
        mask = np.ones(len(self.X), bool)
        mask[[b[0] for b in self.bad]] = False
        return np.flatnonzero(mask)


class ItemDataset(torch.utils.data.Dataset):
    """Loads and transforms items in worker processes; an unreadable item yields its reason instead."""

    def __init__(self, source: DataSource, positions: np.ndarray, transform: Callable | None):
        self.source, self.positions, self.transform = source, positions, transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int):
        i = int(self.positions[j])
        try:
            x = self.source.load(i)
            return i, (self.transform(x) if self.transform is not None else x), None
        except BadInputError as e:
            return i, None, e.bad[0][1] if e.bad else str(e)


class CollateItems:
    """Batches ``(index, transformed item, error)`` triples: good items collated by the backbone, bad ones listed.

    With ``normalise`` (see :func:`split_eval_transform`), items arrive as uint8 ``(3, H, W)`` tensors and the batch
    is scaled and normalised at once."""

    def __init__(self, backbone: Backbone, normalise: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.collate = backbone.collate
        self.normalise = normalise

    def __call__(self, batch):
        ok = [(i, x) for i, x, err in batch if err is None]
        bad = [(i, err) for i, x, err in batch if err is not None]
        items = [x for _, x in ok]
        if self.normalise is not None and items:
            if all(x.dtype == torch.uint8 for x in items):
                inputs = self.normalise(torch.stack(items))
            else:  # a few items took the float path: normalise the others one by one
                inputs = torch.stack([self.normalise(x[None])[0] if x.dtype == torch.uint8 else x for x in items])
        else:
            inputs = self.collate(items) if ok else None
        return np.asarray([i for i, _ in ok], dtype=np.int64), inputs, bad


class _EvalUint8:
    """The resize and crop of an eval transform, then the RGB image as a uint8 ``(3, H, W)`` tensor (other modes take
    the whole float transform)."""

    def __init__(self, geometry: Callable, full: Callable):
        self.geometry, self.full = geometry, full

    def __call__(self, img: Any) -> torch.Tensor:
        if getattr(img, "mode", None) != "RGB":
            return self.full(img)
        out = self.geometry(img)
        return torch.from_numpy(np.array(out, np.uint8, copy=True)).permute(2, 0, 1)


class _Normalise:
    """``x / 255``, then ``(x - mean) / std``: the same float32 operations as ``ToTensor`` + ``Normalize``, batched."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=torch.get_default_dtype()).div(255).sub_(self.mean).div_(self.std)


def split_eval_transform(transform: Callable | None) -> tuple[Callable | None, Callable | None]:
    """An eval transform ``Compose([..., ToTensor, Normalize])`` split into a per-item part that stops at uint8 pixels
    and a batched scale + normalise (the same float32 operations, so the same bits, at a fraction of the cost: a
    96 px image's ToTensor + Normalize cost as much as its resize); ``(transform, None)`` for any other transform."""
    steps = getattr(transform, "transforms", None)
    if not steps or len(steps) < 2:
        return transform, None
    to_tensor, norm = steps[-2], steps[-1]
    if type(to_tensor).__name__ not in ("MaybeToTensor", "ToTensor") or type(norm).__name__ != "Normalize" \
            or getattr(norm, "inplace", False):
        return transform, None
    from torchvision.transforms import Compose

    mean = torch.as_tensor(norm.mean, dtype=torch.get_default_dtype())
    std = torch.as_tensor(norm.std, dtype=torch.get_default_dtype())
    return _EvalUint8(Compose(list(steps[:-2])), transform), _Normalise(mean, std)


class FeatureStore:
    """A disk cache of backbone features, keyed per backbone and per item.

    Args:
        root: cache folder (default :func:`default_cache_dir`).
        shard_size: items per shard file; a killed run loses at most one shard of work.
    """

    def __init__(self, root: str | Path | None = None, shard_size: int = 256):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.shard_size = int(shard_size)

    # -- keys ------------------------------------------------------------------------------------
    @staticmethod
    def backbone_key(backbone: Backbone, engine: dict[str, Any] | None = None) -> str:
        """Hash of the backbone's identity (name, weights, preprocessing) and the package version, and of the engine
        and precision when they change the features (``engine``: what
        :func:`~transferkit.features.engines.resolve_engine` adds; empty for engines verified against eager PyTorch)."""
        return cache_key(backbone, engine)

    def _dir(self, backbone: Backbone, engine: dict[str, Any] | None = None) -> Path:
        d = self.root / self.backbone_key(backbone, engine)
        try:
            (d / "shards").mkdir(parents=True, exist_ok=True)
            (d / "views").mkdir(exist_ok=True)
            marker = d / _MARKER
            if not marker.exists():
                atomic_write(marker, lambda p: p.write_text(_MARKER_TEXT))
            meta = d / "backbone.json"
            if not meta.exists():
                atomic_write(meta, lambda p: p.write_text(json.dumps(
                    {**backbone.identity(), "transferkit": __version__, **({"engine": engine} if engine else {})},
                    indent=2, default=str)))
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _no_space_error(d / "backbone.json", 4096) from e
            raise CacheError(f"cannot write the feature cache at {self.root} ({e.strerror or e}); choose another "
                             "folder with cache_dir= or the TRANSFERKIT_CACHE environment variable") from e
        return d

    # -- the main entry point --------------------------------------------------------------------
    def get(self, backbone: Backbone, source: DataSource, *, batch_size: int = 64, num_workers: int | None = None,
            device: str | torch.device | None = "auto", progress: bool = False, engine: str = "auto",
            feature_precision: str = "32", log: Callable[[str], None] | None = None) -> Features:
        """Features of every item in ``source``: read from the cache, extracting only what is missing.

        Unreadable items do not stop extraction: they are recorded (rows of NaN in ``X``, listed in
        ``Features.bad``) so the caller decides whether to fail or skip, and nothing extracted is lost.

        Args:
            engine: ``auto`` (the fastest engine whose features match eager PyTorch within the tolerance),
                ``torch`` or ``onnx``: see :mod:`transferkit.features.engines`.
            feature_precision: ``32`` (default), ``bf16`` / ``16`` (autocast) or ``int8`` (CPU, dynamic quantisation);
                any precision but 32 caches its features under its own key.
            num_workers: data-loading processes; None sizes the pool from the measured decode + transform rate per
                worker and the engine's rate (:func:`size_workers`).
            log: called with one-line messages (the engine chosen, the worker pool).

        Raises:
            ModalityError: text data given to an image backbone or the other way round.
            CacheError: the cache folder cannot be written.
            TransferkitError: an engine or precision this device or installation cannot run.
        """
        from .engines import check_engine_options

        t0 = time.perf_counter()
        if source.modality != backbone.modality:
            raise ModalityError(
                f"{source.origin or source.name} holds {source.modality} data but backbone {backbone.name!r} takes "
                f"{backbone.modality}s; choose a{'n' if backbone.modality == 'text' else ''} "
                f"{source.modality} backbone (see `transferkit backbones`)")
        precision = str(feature_precision)
        check_engine_options(engine, precision)
        dev = resolve_device(device)
        choice = None
        if precision != "32" or engine == "onnx":  # the engine decides the key: resolve it first
            choice = self.resolve_engine(backbone, engine, dev, precision, log=log)
        key = choice.key if choice is not None else {}
        d = self._dir(backbone, key)
        data_key = source.fingerprint()
        view, vmeta = d / "views" / f"{data_key}.npy", d / "views" / f"{data_key}.json"
        if view.exists() and vmeta.exists():
            try:
                meta = json.loads(vmeta.read_text())
                X = _map(view)
                if X.shape == (len(source), backbone.num_features):
                    _touch(vmeta)
                    return Features(X, [tuple(b) for b in meta["bad"]], 0, view, time.perf_counter() - t0)
            except (OSError, ValueError, KeyError):
                pass  # a damaged view is rebuilt from the shards below
        keys = source.item_keys()
        index = self._index(d)
        missing = _extraction_order(source, self._missing_positions(keys, index))
        extracted = len(missing)
        if extracted:
            if choice is None:
                choice = self.resolve_engine(backbone, engine, dev, precision, items=extracted, log=log,
                                             sample=lambda: _sample_batch(backbone, source, missing))
            self._extract(choice.engine, source, missing, d, batch_size=batch_size, num_workers=num_workers,
                          progress=progress, log=log)
            index = self._index(d)
        bad = self._assemble(source, keys, index, d, view, vmeta, backbone.num_features)
        X = _map(view)
        return Features(X, bad, extracted, view, time.perf_counter() - t0)

    def missing(self, backbone: Backbone, source: DataSource, engine_key: dict[str, Any] | None = None
                ) -> tuple[Path, np.ndarray]:
        """The cache folder of ``backbone``'s features (under ``engine_key``, see :meth:`backbone_key`) and the
        positions of ``source``'s items not in it yet (each distinct item once, in extraction order: texts by
        length)."""
        d = self._dir(backbone, engine_key)
        return d, _extraction_order(source, self._missing_positions(source.item_keys(), self._index(d)))

    def extract_into(self, folder: Path, engine: Any, source: DataSource, positions: np.ndarray, *,
                     batch_size: int = 64, num_workers: int | None = None, progress: bool = False,
                     log: Callable[[str], None] | None = None) -> None:
        """Extract the items at ``positions`` with ``engine`` (batches of ``batch_size``, in that order) into shard
        files of ``folder`` (from :meth:`missing`); the dataset's view is assembled by the next :meth:`get`."""
        self._extract(engine, source, np.asarray(positions, np.int64), Path(folder), batch_size=batch_size,
                      num_workers=num_workers, progress=progress, log=log)

    def resolve_engine(self, backbone: Backbone, engine: str = "auto", device: str | torch.device | None = "auto",
                       precision: str = "32", *, items: int | None = None, log: Callable[[str], None] | None = None,
                       sample: Callable[[], Any] | None = None) -> Any:
        """The engine that extracts ``backbone``'s features here and its cache-key additions
        (:func:`transferkit.features.engines.resolve_engine`, exported models and checks kept under this cache)."""
        from .engines import resolve_engine

        return resolve_engine(backbone, engine, device=resolve_device(device), precision=str(precision),
                              cache_root=self.root, items=items, log=log, sample=sample)

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _index(d: Path) -> dict[bytes, tuple[Path, int]]:
        index: dict[bytes, tuple[Path, int]] = {}
        for shard in sorted((d / "shards").glob("*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys = z["keys"]
            except (OSError, ValueError, KeyError, EOFError):
                continue  # unreadable shard: its items are extracted again
            for row, k in enumerate(keys):
                index[k.tobytes()] = (shard, row)
        return index

    @staticmethod
    def _missing_positions(keys: np.ndarray, index: dict) -> np.ndarray:
        seen: set[bytes] = set()
        out = []
        for i, k in enumerate(keys):
            b = k.tobytes()
            if b not in index and b not in seen:
                seen.add(b)
                out.append(i)
        return np.asarray(out, dtype=np.int64)

    def _extract(self, engine: Any, source: DataSource, positions: np.ndarray, d: Path, *, batch_size: int,
                 num_workers: int | None, progress: bool, log: Callable[[str], None] | None = None,
                 progress_total: int | None = None) -> None:
        """Run ``engine`` over the items at ``positions`` (in batches of ``batch_size``, in that order) and write
        their features to shard files of ``d``."""
        from .._progress import progress_bar

        backbone = engine.backbone
        transform, normalise = split_eval_transform(backbone.transform())
        workers = size_workers(engine, source, positions, transform, batch_size, log=log,
                                                       normalise=normalise) if num_workers is None \
            else int(num_workers)
        shard = max(batch_size, (self.shard_size // batch_size) * batch_size)  # batches never straddle shards
        loader = torch.utils.data.DataLoader(
            ItemDataset(source, positions, transform), batch_size=batch_size, shuffle=False,
            num_workers=workers, collate_fn=CollateItems(backbone, normalise), pin_memory=engine.pin_memory,
            persistent_workers=False, prefetch_factor=4 if workers else None)
        keys = source.item_keys()
        buf_idx: list[np.ndarray] = []
        buf_feat: list[np.ndarray] = []
        buf_bad: list[tuple[int, str]] = []
        count = 0
        unit = "images" if source.modality == "image" else "texts"
        with progress_bar(progress_total or len(positions), f"features {backbone.name}", unit=unit,
                          enabled=progress) as bar, engine.session():
            for idx, inputs, bad in (loader if workers else _ahead(loader)):
                if inputs is not None:
                    buf_idx.append(idx)
                    buf_feat.append(engine(inputs))
                buf_bad += bad
                n = len(idx) + len(bad)
                count += n
                bar.advance(n)
                if count >= shard:
                    self._write_shard(d, keys, buf_idx, buf_feat, buf_bad, backbone.num_features)
                    buf_idx, buf_feat, buf_bad, count = [], [], [], 0
            if count:
                self._write_shard(d, keys, buf_idx, buf_feat, buf_bad, backbone.num_features)

    @staticmethod
    def _write_shard(d: Path, keys: np.ndarray, idx: list[np.ndarray], feats: list[np.ndarray],
                     bad: list[tuple[int, str]], dim: int) -> None:
        good = np.concatenate(idx) if idx else np.zeros(0, np.int64)
        F = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        bad_idx = np.asarray([b[0] for b in bad], dtype=np.int64)
        all_idx = np.concatenate([good, bad_idx])
        F = np.concatenate([F, np.full((len(bad_idx), dim), np.nan, np.float32)])
        reasons = np.asarray([""] * len(good) + [b[1] for b in bad], dtype=str)
        path = d / "shards" / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, keys=keys[all_idx], features=F.astype(np.float32), reasons=reasons)

        try:
            atomic_write(path, write)  # the temporary file is removed if this fails; finished shards stay
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _no_space_error(path, F.nbytes + keys[all_idx].nbytes + reasons.nbytes) from e
            raise

    def _assemble(self, source: DataSource, keys: np.ndarray, index: dict, d: Path, view: Path, vmeta: Path,
                  dim: int) -> list[tuple[int, str, str]]:
        rows_by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            shard, row = index[k.tobytes()]
            rows_by_shard.setdefault(shard, []).append((i, row))
        bad: list[tuple[int, str, str]] = []

        # The view is written through a memory map. On a full disk, writing into the pages of a sparse file
        # kills the process with SIGBUS instead of raising, so the space is checked and reserved first.
        needed = len(keys) * dim * np.dtype(np.float32).itemsize + 4096  # + the .npy header and the .json
        free = _free_bytes(view.parent)
        if free is not None and free < needed:
            raise _no_space_error(view, needed, free)

        def write_view(tmp: Path) -> None:
            X = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keys), dim))
            _preallocate(tmp, os.path.getsize(tmp))
            for shard, pairs in rows_by_shard.items():
                with np.load(shard, allow_pickle=False) as z:
                    F, reasons = z["features"], z["reasons"]
                dst = np.asarray([p[0] for p in pairs])
                src = np.asarray([p[1] for p in pairs])
                X[dst] = F[src]
                for i, r in zip(dst, src):
                    if reasons[r]:
                        bad.append((int(i), source.describe(int(i)), str(reasons[r])))
            X.flush()
            del X

        bad_sorted: list[tuple[int, str, str]] = []

        def write_meta(tmp: Path) -> None:
            tmp.write_text(json.dumps({"n": len(keys), "dim": dim, "origin": source.origin or source.name,
                                       "name": source.name, "bad": bad_sorted, "created": time.time()}))

        tmp_view = view.with_name(f".{view.name}.{uuid.uuid4().hex[:8]}.tmp.npy")
        try:
            write_view(tmp_view)
            bad_sorted = sorted(bad)
            atomic_write(vmeta, write_meta)
            os.replace(tmp_view, view)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _no_space_error(view, needed) from e
            raise
        finally:
            if tmp_view.exists():
                tmp_view.unlink()
        return bad_sorted

    # -- small computed results kept beside the features ----------------------------------------------
    def cached_result(self, kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]
                      ) -> tuple[dict[str, Any], bool]:
        """A JSON result computed once per key (baselines, projections, learning curves), kept in ``results/``.

        Returns:
            ``(value, hit)``: the value, and whether it came from the cache. An unwritable cache only loses the reuse.
        """
        digest = hashlib.sha256(json.dumps({**key, "kind": kind, "v": __version__}, sort_keys=True,
                                           default=str).encode()).hexdigest()[:24]
        path = self.root / "results" / f"{kind}-{digest}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text()), True
            except (OSError, ValueError):
                pass
        value = compute()
        try:
            atomic_write(path, lambda p: p.write_text(json.dumps(value, default=json_default)))
        except OSError:
            pass
        return value, False

    # -- listing and clearing --------------------------------------------------------------------
    def _backbone_dirs(self) -> list[Path]:
        """The backbone folders under the root that the cache wrote (marker file, or key name + backbone.json)."""
        if not self.root.is_dir():
            return []
        return [d for d in sorted(self.root.iterdir()) if _is_backbone_dir(d)]

    def entries(self) -> list[dict[str, Any]]:
        """One record per backbone in the cache: name, key, items cached, datasets, size on disk.

        Only folders the cache wrote are listed, and ``bytes`` counts only the files it wrote there (what
        :meth:`clear` would free); other folders and files under the root are ignored.
        """
        out = []
        for d in self._backbone_dirs():
            try:
                meta = json.loads((d / "backbone.json").read_text())
            except (OSError, ValueError):
                meta = {}
            views = []
            for vj in _own_files(d / "views", _VIEW_JSON):
                try:
                    v = json.loads(vj.read_text())
                    views.append({"key": vj.stem, "origin": v.get("origin", "?"), "n": v.get("n", 0),
                                  "bad": len(v.get("bad", []))})
                except (OSError, ValueError, AttributeError):
                    continue
            files = _backbone_files(d)
            out.append({"key": d.name, "backbone": meta.get("name", "?") if isinstance(meta, dict) else "?",
                        "path": str(d), "datasets": views, "shards": len(_own_files(d / "shards", _SHARD)),
                        "bytes": _bytes(files)})
        return out

    def clear_plan(self, backbone: str | None = None) -> list[dict[str, Any]]:
        """What :meth:`clear` would delete, without deleting anything.

        Args:
            backbone: only this backbone's features (its registered name, e.g. ``"lite0"``); ``None`` for the
                whole cache: every backbone's features, the cached results and the generated datasets.

        Returns:
            One record per group: ``what`` (a description), ``path`` (its folder), ``files`` (the paths to
            delete: only names that match what the package writes) and ``bytes``. Empty groups are left out.
        """
        plan = []
        for e in self.entries():
            if backbone is None or e["backbone"] == backbone:
                files = _backbone_files(Path(e["path"]))
                if files:
                    plan.append({"what": f"features of {e['backbone']}", "path": Path(e["path"]), "files": files,
                                 "bytes": _bytes(files)})
        for d in _engine_dirs(self.root / "engines"):  # exported models and remembered engine checks
            if backbone is None or d.name.rsplit("-", 1)[0] == _slug(backbone):
                files = _own_files(d, _ENGINE_FILE)
                if files:
                    plan.append({"what": f"inference engines of {d.name.rsplit('-', 1)[0]} (ONNX export, checks)",
                                 "path": d, "files": files, "bytes": _bytes(files)})
        if backbone is None:
            for sub, pattern, what in (("results", _RESULT, "cached results (baselines, projections)"),
                                       ("datasets", _DATASET, "generated built-in datasets")):
                files = _own_files(self.root / sub, pattern)
                if files:
                    plan.append({"what": what, "path": self.root / sub, "files": files, "bytes": _bytes(files)})
            for d in _pretrained_dirs(self.root / "pretrained"):
                files = _pretrained_files(d)
                if files:
                    plan.append({"what": f"pretrained backbone {d.name} (word vectors or adapted encoder)", "path": d,
                                 "files": files, "bytes": _bytes(files)})
        return plan

    def clear(self, backbone: str | None = None) -> int:
        """Delete cached features (of one backbone name, or all with the results and generated datasets).

        Only files the package writes are deleted (see :meth:`clear_plan`); a folder is removed only when
        nothing else is left in it, so a user's own files under the cache folder survive.

        Returns:
            The number of bytes freed.

        Raises:
            CacheError: a file could not be deleted (the message names it).
        """
        freed = 0
        failed: list[tuple[Path, str]] = []
        for group in self.clear_plan(backbone):
            for f in group["files"]:
                try:
                    size = f.stat().st_size
                    f.unlink()
                    freed += size
                except FileNotFoundError:
                    continue
                except OSError as e:
                    failed.append((f, e.strerror or str(e)))
            folder = group["path"]
            for sub in (folder / "shards", folder / "views", folder):
                _rmdir_if_empty(sub)
        if failed:
            shown = "; ".join(f"{p} ({why})" for p, why in failed[:3])
            more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
            raise CacheError(f"could not delete {len(failed)} cache file(s): {shown}{more}; check their permissions "
                             f"and run `transferkit cache clear` again ({_size(freed)} were freed)")
        return freed


_MARKER = ".transferkit-cache"
_MARKER_TEXT = ("This folder holds features cached by transferkit. `transferkit cache clear` deletes only the files "
                "transferkit wrote here.\n")
_KEY_DIR = re.compile(r"[A-Za-z0-9_-]{1,40}-[0-9a-f]{16}")
_SHARD = re.compile(r"\d{20}-[0-9a-f]{8}\.npz")
_VIEW = re.compile(r"[0-9a-f]{20}\.(?:npy|json)")
_VIEW_JSON = re.compile(r"[0-9a-f]{20}\.json")
_RESULT = re.compile(r"[a-z][a-z0-9_-]*-[0-9a-f]{24}\.json")
_DATASET = re.compile(r"[a-z0-9][a-z0-9_-]*-v[0-9][0-9A-Za-z.+!_-]*\.npz")
_ENGINE_FILE = re.compile(r"model(?:-int8)?\.onnx|check-[A-Za-z0-9_.-]+\.json|auto-[a-z]+-t\d+\.json")
_TOP = re.compile(r"backbone\.json|" + re.escape(_MARKER))
_TMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp(?:\.npy)?")


def _own_files(folder: Path, pattern: re.Pattern) -> list[Path]:
    """Regular files (no links) in ``folder`` whose name matches ``pattern``, or is the temporary name of one."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for e in entries:
        m = _TMP.fullmatch(e.name)
        name = m.group("name") if m else e.name
        if pattern.fullmatch(name) and e.is_file(follow_symlinks=False):
            out.append(Path(e.path))
    return sorted(out)


def _engine_dirs(folder: Path) -> list[Path]:
    """``engines/<backbone key>`` folders (no links) under the cache root."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if _KEY_DIR.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]


def _backbone_files(d: Path) -> list[Path]:
    """The files the cache writes in backbone folder ``d``: marker, backbone.json, shards and views."""
    return _own_files(d, _TOP) + _own_files(d / "shards", _SHARD) + _own_files(d / "views", _VIEW)


def _is_backbone_dir(d: Path) -> bool:
    """Whether ``d`` is a backbone folder written by the cache.

    New folders carry the marker file; folders from versions before the marker are recognised by their key
    name (``<name>-<16 hex digits>``) and a ``backbone.json`` that names the transferkit version.
    """
    if d.is_symlink() or not d.is_dir():
        return False
    if (d / _MARKER).is_file():
        return True
    if not _KEY_DIR.fullmatch(d.name):
        return False
    try:
        meta = json.loads((d / "backbone.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "transferkit" in meta


_PRETRAINED_DIR = re.compile(r"[a-z0-9][a-z0-9_-]*-[0-9a-f]{16}")


def _pretrained_dirs(folder: Path) -> list[Path]:
    """Backbones trained on a corpus and cached by :mod:`transferkit.pretrain` (``pretrained/<method>-<key>``, holding
    ``pretrain.json``)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if _PRETRAINED_DIR.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            and (Path(e.path) / "pretrain.json").is_file()]


def _pretrained_files(d: Path) -> list[Path]:
    """The files a saved backbone lists in its backbone.json, with backbone.json and pretrain.json (nothing else)."""
    try:
        names = list((json.loads((d / "backbone.json").read_text()).get("files") or {}))
    except (OSError, ValueError, AttributeError):
        names = []
    out = []
    for name in [*names, "backbone.json", "pretrain.json"]:
        p = d / name
        if "/" not in name and "\\" not in name and p.is_file() and not p.is_symlink():
            out.append(p)
    return sorted(set(out))


def _bytes(files: list[Path]) -> int:
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:
            continue
    return total


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (a user's files stay), or already gone


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _map(view: Path) -> np.memmap:
    """The view memory-mapped copy-on-write (``mmap_mode="c"``): read lazily from the file like ``"r"``, but
    writable, so that code handing it to torch gets no "non-writable array" warning, and writes stay private."""
    return np.load(view, mmap_mode="c")


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk that holds ``folder`` (None when it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _no_space_error(path: Path, needed: int, free: int | None = None) -> CacheError:
    """The CacheError for a full disk: which file, the space it needs, the space left, and what to do."""
    free = _free_bytes(path.parent) if free is None else free
    left = "an unknown amount" if free is None else _size(free)
    return CacheError(f"no space left on the disk of the feature cache: writing {path} needs about {_size(needed)} "
                      f"but {left} is free there. Free some disk space, put the cache on another disk with "
                      "cache_dir= (or the TRANSFERKIT_CACHE environment variable), or delete old features with "
                      "`transferkit cache clear`; finished feature shards are kept, so rerunning resumes")


def _preallocate(path: Path, size: int) -> None:
    """Reserve ``size`` bytes of disk for ``path`` so that a full disk fails here with ENOSPC (an OSError)
    instead of with SIGBUS when a memory map writes into the file's holes. A filesystem that cannot
    preallocate is left to the free-space check done before."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            raise
    finally:
        os.close(fd)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass
