"""One extraction spread over several processes, GPUs or machines, through Lightning Fabric.

Every rank loads the same data and reads the same cache index; rank 0 decides what is missing and which engine runs
(and exports it when that engine is ONNX), and sends both to the others. The missing items are cut into the batches a
single process would make, and rank ``r`` of ``W`` extracts batches ``r, r + W, r + 2W, ...`` into shard files of the
one :class:`~transferkit.features.store.FeatureStore` (each shard is written atomically under a unique name, so ranks
never collide). After a barrier, rank 0 assembles the dataset's view. Because every batch holds the same items as in
one process, and the engine is the same, the features are the ones a single process writes.

Launch: ``transferkit extract DATA --devices N`` starts N processes on this machine (fork on CPUs, spawn on GPUs);
under ``torchrun`` or SLURM's ``srun`` each process of the job runs the command and Fabric joins them
(``--num-nodes M`` for M machines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import TransferkitError

__all__ = ["extract_distributed", "rank_batches"]


def rank_batches(positions: np.ndarray, batch_size: int, rank: int, world: int) -> np.ndarray:
    """The positions rank ``rank`` of ``world`` extracts: the single-process batches ``rank, rank + world, ...``
    (concatenated, so that a loader with the same ``batch_size`` makes exactly those batches)."""
    if world < 1 or not 0 <= rank < world:
        raise TransferkitError(f"rank {rank} is not in a world of {world} processes")
    batches = [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]
    mine = batches[rank::world]
    return np.concatenate(mine).astype(np.int64) if mine else np.zeros(0, np.int64)


def extract_distributed(data: Any, backbone: str, *, devices: int = 2, num_nodes: int = 1, accelerator: str = "auto",
                        cache_dir: str | Path | None = None, batch_size: int = 64, num_workers: int | None = None,
                        engine: str = "auto", feature_precision: str = "32", input_column: str | None = None,
                        encoding: str | None = None, on_bad_input: str = "error", progress: bool = False,
                        log: Callable[[str], None] | None = None) -> Any:
    """Extract the features of ``data`` with ``backbone`` over ``devices`` processes per machine on ``num_nodes``
    machines, into the feature cache; the result is the same as one process's.

    Args:
        data: a built-in dataset name, a folder or a table (each process loads it).
        backbone: the backbone's registry name (each process creates it).
        devices: processes per machine (GPUs, or CPU processes).
        num_nodes: machines; more than one needs a cluster launcher (``torchrun`` on each node, or ``srun``).
        accelerator: ``auto``, ``cpu`` or ``cuda``.
        cache_dir, batch_size, num_workers, engine, feature_precision, input_column, encoding, on_bad_input,
            progress: as for :func:`~transferkit.features.featureset.build_featureset`.

    Returns:
        The :class:`~transferkit.features.featureset.FeatureSet` (read back from the cache after the ranks finish),
        with ``extracted`` counting the items all ranks extracted.

    Raises:
        TransferkitError: bad devices / nodes, or several machines without a cluster launcher.
    """
    from ..train.loop import make_fabric
    from .engines import check_engine_options
    from .featureset import build_featureset

    for name, v in (("devices", devices), ("num_nodes", num_nodes)):
        if not isinstance(v, int) or v < 1:
            raise TransferkitError(f"{name} must be an integer >= 1; got {v!r}")
    check_engine_options(engine, feature_precision)
    settings = dict(data=data, backbone=backbone, cache_dir=None if cache_dir is None else str(cache_dir),
                    batch_size=int(batch_size), num_workers=num_workers, engine=engine,
                    feature_precision=str(feature_precision), input_column=input_column, encoding=encoding,
                    on_bad_input=on_bad_input, progress=progress, num_nodes=int(num_nodes))
    extracted = 0
    if devices * num_nodes > 1:
        fabric, _ = make_fabric(accelerator, devices, "32", num_nodes=num_nodes)
        extracted = fabric.launch(_rank_main, settings)
        if fabric.world_size > 1 and fabric.global_rank != 0:
            extracted = None  # under an external launcher every rank returns here; only rank 0 reports
    from ..backbones import create_backbone

    fs = build_featureset(data, create_backbone(backbone), cache_dir=cache_dir, labels="ignore", split=False,
                          on_bad_input=on_bad_input, batch_size=batch_size, num_workers=num_workers,
                          device="cpu" if accelerator == "cpu" else "auto", input_column=input_column,
                          encoding=encoding, engine=engine, feature_precision=feature_precision, progress=progress,
                          log=log)
    if devices * num_nodes > 1:
        fs.extracted = int(extracted or 0)
    return fs


def _rank_main(fabric: Any, settings: dict[str, Any]) -> int:
    """One rank's work (see the module docstring); returns the items extracted by all ranks."""
    import torch

    from ..backbones import create_backbone
    from ..data.load import load_data
    from .engines import build_variant, engine_folder
    from .store import FeatureStore

    rank, world = fabric.global_rank, fabric.world_size
    if fabric.device.type == "cpu":  # the processes of one machine share its cores
        per_node = max(1, world // settings["num_nodes"])
        torch.set_num_threads(max(1, torch.get_num_threads() // per_node))
    store = FeatureStore(settings["cache_dir"])
    bb = create_backbone(settings["backbone"])
    source = load_data(settings["data"], input_column=settings["input_column"], require_labels=False,
                       encoding=settings["encoding"], on_bad_input=settings["on_bad_input"])
    bad_header = source.check_inputs()
    if bad_header:  # the same cut as build_featureset, so the items (and their keys) are the same
        bad_set = {p for p, _ in bad_header}
        source = source.subset(np.asarray([i for i, p in enumerate(source.items) if p not in bad_set], np.int64))
    precision, engine = settings["feature_precision"], settings["engine"]
    plan = None
    if rank == 0:
        choice_key: dict[str, Any] = {}
        if precision != "32" or engine == "onnx":
            choice_key = store.resolve_engine(bb, engine, fabric.device, precision).key
        _, missing = store.missing(bb, source, choice_key)
        variant = None
        if len(missing):
            choice = store.resolve_engine(bb, engine, fabric.device, precision, items=len(missing))
            variant = (choice.engine.name, choice.engine.variant)
        plan = {"key": choice_key, "missing": missing, "engine": variant}
    plan = fabric.broadcast(plan, src=0)
    missing = np.asarray(plan["missing"], np.int64)
    if len(missing):
        d = store.root / store.backbone_key(bb, plan["key"])  # made by rank 0
        name, variant = plan["engine"]
        if precision == "32":
            eng = build_variant(variant, bb, engine_folder(store.root, bb), fabric.device)
        else:
            eng = store.resolve_engine(bb, name, fabric.device, precision).engine
        mine = rank_batches(missing, settings["batch_size"], rank, world)
        if len(mine):
            store.extract_into(d, eng, source, mine, batch_size=settings["batch_size"],
                               num_workers=settings["num_workers"], progress=settings["progress"] and rank == 0)
    fabric.barrier()
    if rank == 0:  # every shard is written: assemble the dataset's view once
        store.get(bb, source, batch_size=settings["batch_size"], num_workers=0, device=fabric.device,
                  engine=plan["engine"][0] if plan["engine"] else engine, feature_precision=precision)
    fabric.barrier()
    return int(len(missing))
