"""Named data streams for the training loop: which items form each batch, seeded and sharded by the stream itself.

A **stream** is a named sequence of batches (``labelled``, ``unlabelled``, ``target``, ``source_val``, ...). Each
delivers the **views** an objective asks for (``train``, ``eval``, ``weak``, ``strong``), so one item can arrive
twice, differently augmented. Two kinds:

- :class:`TensorStream`: rows of in-memory arrays (cached features, image tensors, memory-mapped feature files),
  gathered by index on the device; views are tensor functions (identity by default).
- :class:`ItemStream`: items of a :class:`~transferkit.data.sources.DataSource`, loaded and transformed in
  DataLoader workers; views are per-item transforms (see :mod:`transferkit.data.views`).

Batches are global (the same with one process or many) and each process takes its contiguous share: the streams
shard themselves, so no DistributedSampler is involved. The order of every stream and the randomness of every
view are functions of ``(seed, epoch, item)`` only, never of how many epochs ran in this process or how many
workers load the data: a run killed and resumed at an epoch boundary sees exactly the same batches.

Sampling: the **primary** stream of an epoch-based run is permuted once per epoch (every item once); every other
stream (and every stream of a step-based run) is an endless sequence of permutations, cut into the batches of each
step, so a small stream cycles and a large one is sampled without repetition.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .._random import derive_seed, seeded_rng
from ..errors import DataError

__all__ = ["Stream", "TensorStream", "DrawStream", "ItemStream", "Batch", "derive_seed", "seeded_rng", "epoch_batches",
           "cycle_batches", "eval_shard", "stream_key", "stack"]


def stream_key(name: str) -> int:
    """A stable integer for a stream name (part of its sampling seed)."""
    return zlib.crc32(name.encode())


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world: int, key: int | None = None
                  ) -> list[np.ndarray]:
    """Global batches of one pass over ``n`` items in a ``(seed, epoch[, key])`` permutation.

    The last batch is dropped when it would give a process fewer than 2 samples (batch norm needs 2), unless it is
    the only one.
    """
    parts = (seed, epoch, 3) if key is None else (seed, epoch, 3, key)
    perm = np.random.default_rng(derive_seed(*parts)).permutation(n)
    full, rem = divmod(n, batch_size)
    sizes = [batch_size] * full + ([rem] if rem and (rem >= 2 * world or full == 0) else [])
    out, start = [], 0
    for size in sizes:
        out.append(perm[start:start + size])
        start += size
    return out


def cycle_batches(n: int, batch_size: int, seed: int, key: int, first_step: int, steps: int) -> list[np.ndarray]:
    """Global batches ``first_step .. first_step + steps - 1`` of an endless sequence of permutations of ``n`` items
    (permutation ``c`` seeded by ``(seed, c, key)``): a pure function of the step, so resuming needs no state."""
    out = []
    cache: dict[int, np.ndarray] = {}

    def perm(c: int) -> np.ndarray:
        if c not in cache:
            cache[c] = np.random.default_rng(derive_seed(seed, c, 5, key)).permutation(n)
        return cache[c]

    for s in range(first_step, first_step + steps):
        pos = np.arange(s * batch_size, (s + 1) * batch_size, dtype=np.int64)
        c, r = np.divmod(pos, n)
        out.append(np.concatenate([perm(int(ci))[r[c == ci]] for ci in np.unique(c)]))
        if len(cache) > 4:
            for k in sorted(cache)[:-2]:
                cache.pop(k)
    return out


def eval_shard(n: int, rank: int, world: int) -> np.ndarray:
    """This process's share of ``n`` evaluation items, padded to the same length on every process with indices
    ``>= n`` (dropped after the forward pass)."""
    per = -(-n // world) if n else 0
    return np.arange(per * world)[rank * per:(rank + 1) * per]


@dataclass
class Batch:
    """One stream's share of a step: ``x`` per view (tensors, or token dicts for text), labels, item indices.

    Attributes:
        x: view name -> model input.
        y: labels of the items (None for unlabelled streams).
        index: positions of the items in the stream (``-1`` for evaluation padding).
        global_size: the size of the global batch (all processes).
    """

    x: dict[str, Any]
    y: torch.Tensor | None
    index: torch.Tensor
    global_size: int


class Stream:
    """Base class: a named, sized source of batches (see the module docstring).

    Attributes:
        name: the stream's name (what objectives ask for).
        batch_size: global batch size.
        views: the views this stream can deliver.
    """

    name: str = "stream"
    batch_size: int = 32
    views: tuple[str, ...] = ("train", "eval")

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray | None:
        """Integer labels of the items (None for an unlabelled stream)."""
        return None

    def check_views(self, wanted: Sequence[str]) -> None:
        """Raise a clear error when an objective asks for a view this stream cannot deliver."""
        missing = [v for v in wanted if v not in self.views]
        if missing:
            raise DataError(f"stream {self.name!r} has no view {', '.join(map(repr, missing))}; it delivers "
                            f"{', '.join(self.views)}")

    def setup(self, fabric: Any, num_workers: int) -> None:
        """Prepare for loading on ``fabric``'s device (called once per process)."""

    def loader(self, batches: list[np.ndarray], views: Sequence[str], epoch: int, seed: int, rank: int,
               world: int) -> Iterator[Batch]:
        """This process's share of each global batch in ``batches``, with the requested views."""
        raise NotImplementedError


def _share(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    return batch if world == 1 else np.array_split(batch, world)[rank]


class TensorStream(Stream):
    """Rows of in-memory arrays (features, image tensors; a numpy memmap is read batch by batch).

    Args:
        name: the stream's name.
        x: ``(N, ...)`` inputs (torch tensor or numpy array).
        y: ``(N,)`` integer labels, or None.
        batch_size: global batch size.
        views: view name -> a function of the gathered input batch (on the device; it may use torch's global
            generator, which the loop seeds per epoch). ``train`` and ``eval`` default to the identity.
    """

    def __init__(self, name: str, x: Any, y: Any = None, *, batch_size: int = 32,
                 views: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None):
        self.name, self.batch_size = name, int(batch_size)
        self._mapped = isinstance(x, np.memmap)
        self.x = x if self._mapped else torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if not self._mapped and self.x.dtype == torch.float64:
            self.x = self.x.float()
        self._y = None if y is None else np.asarray(y)
        if self._y is not None and len(self._y) != len(self.x):
            raise DataError(f"stream {name!r}: {len(self.x)} inputs but {len(self._y)} labels")
        self.view_fns = {"train": None, "eval": None, **(views or {})}
        self.views = tuple(self.view_fns)
        self._yt: torch.Tensor | None = None
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labels(self) -> np.ndarray | None:
        return self._y

    def setup(self, fabric: Any, num_workers: int) -> None:
        self.device = fabric.device
        if not self._mapped:
            self.x = self.x.to(self.device)
        if self._y is not None:
            self._yt = torch.as_tensor(self._y.astype(np.int64) if self._y.dtype.kind in "iub" else self._y
                                       ).to(self.device)

    def rows(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Inputs at ``idx`` on the device."""
        if self._mapped:
            idx = np.asarray(idx)
            order = np.argsort(idx, kind="stable")
            got = np.empty((len(idx), *self.x.shape[1:]), dtype=np.float32)
            got[order] = np.asarray(self.x[idx[order]], dtype=np.float32)  # sorted reads from the memmap
            return torch.from_numpy(got).to(self.device)
        return self.x[torch.as_tensor(idx, device=self.x.device)]

    def loader(self, batches: list[np.ndarray], views: Sequence[str], epoch: int, seed: int, rank: int,
               world: int) -> Iterator[Batch]:
        for b in batches:
            idx = torch.from_numpy(np.ascontiguousarray(_share(b, rank, world), dtype=np.int64))  # once per batch
            x = self.rows(idx)
            xs = {v: (self.view_fns[v](x) if self.view_fns[v] is not None else x) for v in views}
            y = None if self._yt is None else self._yt[idx.to(self._yt.device)]
            yield Batch(xs, y, idx, len(b))

    def eval_batches(self, batch_size: int, rank: int, world: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """This process's share of every row in order (padded), for prediction: ``(inputs, positions)``."""
        mine = eval_shard(len(self), rank, world)
        for s in range(0, len(mine), batch_size):
            pos = mine[s:s + batch_size]
            real = np.where(pos < len(self), pos, pos % max(len(self), 1))
            yield self.rows(real), np.where(pos < len(self), pos, -1)


class DrawStream(TensorStream):
    """Cached features of several random draws of each view (e.g. K weak and K strong augmentations of every image,
    extracted once into the feature cache): each batch takes, for every item and view, one of its draws at random
    (torch's global generator, which the loop seeds per epoch). Semi-supervised consistency at the cost of a probe.

    Args:
        name: the stream's name.
        banks: view name -> ``(K, N, D)`` features of K draws (``eval`` may be ``(N, D)``: one deterministic view).
        y: ``(N,)`` integer labels, or None.
        batch_size: global batch size.
    """

    def __init__(self, name: str, banks: dict[str, Any], y: Any = None, *, batch_size: int = 32):
        base = banks.get("eval")
        if base is None:
            raise DataError(f"stream {name!r} needs an 'eval' bank (the un-augmented features)")
        super().__init__(name, base, y, batch_size=batch_size)
        self.banks = {}
        for v, b in banks.items():
            t = torch.as_tensor(np.asarray(b, dtype=np.float32))
            if t.ndim == 2:
                t = t[None]
            if t.shape[1:] != self.x.shape:
                raise DataError(f"stream {name!r}: view {v!r} holds features of shape {tuple(t.shape[1:])}, the "
                                f"eval view {tuple(self.x.shape)}")
            self.banks[v] = t
        self.view_fns = {v: None for v in self.banks}
        self.views = tuple(self.banks)

    def setup(self, fabric: Any, num_workers: int) -> None:
        super().setup(fabric, num_workers)
        self.banks = {v: b.to(self.device) for v, b in self.banks.items()}

    def loader(self, batches: list[np.ndarray], views: Sequence[str], epoch: int, seed: int, rank: int,
               world: int) -> Iterator[Batch]:
        for b in batches:
            idx = torch.as_tensor(_share(b, rank, world), device=self.device)
            xs = {}
            for v in views:
                bank = self.banks[v]
                draw = torch.randint(bank.shape[0], (len(idx),), device=self.device) if bank.shape[0] > 1 else \
                    torch.zeros(len(idx), dtype=torch.long, device=self.device)
                xs[v] = bank[draw, idx]
            y = None if self._yt is None else self._yt[idx.to(self._yt.device)]
            yield Batch(xs, y, idx.cpu(), len(b))


class _Items(torch.utils.data.Dataset):
    """Items of a source at ``positions``, each transformed by every requested view; with ``seeded`` the views'
    randomness is a function of ``(seed, epoch, item, view)`` only."""

    def __init__(self, source: Any, positions: np.ndarray, targets: np.ndarray | None,
                 transforms: Sequence[Callable | None], seed: int, seeded: bool):
        self.source, self.positions, self.targets = source, np.asarray(positions), targets
        self.transforms, self.seed, self.seeded = list(transforms), seed, seeded
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int):
        if j >= len(self.positions):  # padding of an evaluation shard
            xs, t, _ = self[j % len(self.positions)]
            return xs, t, -1
        i = int(self.positions[j])
        item = self.source.load(i)
        xs = []
        for k, tf in enumerate(self.transforms):
            if tf is None:
                xs.append(item)
            elif self.seeded:  # the first view keeps the seed of a single-view stream
                parts = (self.seed, self.epoch, i, 7) if k == 0 else (self.seed, self.epoch, i, 7, k)
                with seeded_rng(derive_seed(*parts)):
                    xs.append(tf(item))
            else:
                xs.append(tf(item))
        t = -1 if self.targets is None else int(self.targets[j])
        return tuple(xs), t, j


class _Collate:
    def __init__(self, collate: Callable, n_views: int):
        self.collate, self.n_views = collate, n_views

    def __call__(self, batch):
        xs, ts, js = zip(*batch)
        views = tuple(self.collate([x[k] for x in xs]) for k in range(self.n_views))
        return views, torch.as_tensor(ts, dtype=torch.long), torch.as_tensor(js, dtype=torch.long)


def stack(items: list) -> torch.Tensor:
    """Collate image tensors into a batch."""
    return torch.stack(items)


class ItemStream(Stream):
    """Items of a data source, loaded and transformed in DataLoader worker processes.

    Args:
        name: the stream's name.
        source: a :class:`~transferkit.data.sources.DataSource`.
        positions: which items of the source form the stream.
        y: integer labels of those items (same order), or None.
        views: view name -> per-item transform (None: the item as loaded, e.g. a text).
        collate: batches a list of transformed items (stack for images; the backbone's tokenizer for text).
        batch_size: global batch size.
        seed: seeds the views' randomness (with the epoch and the item).
    """

    def __init__(self, name: str, source: Any, positions: Any, y: Any = None, *,
                 views: dict[str, Callable | None], collate: Callable = stack, batch_size: int = 32, seed: int = 0):
        self.name, self.source, self.batch_size, self.seed = name, source, int(batch_size), int(seed)
        self.positions = np.asarray(positions, dtype=np.int64)
        self._y = None if y is None else np.asarray(y)
        if self._y is not None and len(self._y) != len(self.positions):
            raise DataError(f"stream {name!r}: {len(self.positions)} items but {len(self._y)} labels")
        self.view_fns = dict(views)
        self.views = tuple(self.view_fns)
        self.collate_fn = collate
        self.fabric: Any = None
        self.num_workers = 0

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> np.ndarray | None:
        return self._y

    def setup(self, fabric: Any, num_workers: int) -> None:
        self.fabric, self.num_workers = fabric, int(num_workers)

    def _loader(self, sampler: Any, views: Sequence[str], seeded: bool, epoch: int):
        ds = _Items(self.source, self.positions, self._y, [self.view_fns[v] for v in views], self.seed, seeded)
        ds.epoch = epoch
        dl = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers,
                                         collate_fn=_Collate(self.collate_fn, len(views)),
                                         pin_memory=self.fabric.device.type == "cuda", persistent_workers=False)
        return self.fabric.setup_dataloaders(dl, use_distributed_sampler=False)

    def loader(self, batches: list[np.ndarray], views: Sequence[str], epoch: int, seed: int, rank: int,
               world: int) -> Iterator[Batch]:
        sampler = [_share(b, rank, world).tolist() for b in batches]
        sizes = [len(b) for b in batches]
        for k, (xs, t, j) in enumerate(self._loader(sampler, views, True, epoch)):
            yield Batch(dict(zip(views, xs)), None if self._y is None else t, j, sizes[k])

    def eval_batches(self, batch_size: int, rank: int, world: int) -> Iterator[tuple[Any, np.ndarray]]:
        """This process's share of every item in order (padded), eval view: ``(inputs, positions)``."""
        mine = eval_shard(len(self), rank, world)
        sampler = [mine[s:s + batch_size].tolist() for s in range(0, len(mine), batch_size)]
        for xs, _, j in self._loader(sampler, ["eval"], False, 0):
            yield xs[0], j.cpu().numpy()
