"""Weak-shot learning end to end: the backbone fine-tuned on the clean base classes, the similarity net on that
network's features, then each method fine-tuning the whole network on the noisy novel classes (images or texts
through item streams), with the same weighted cross-entropy and graph regulariser as at probe cost.

This is the reference code's pipeline (a base-pretrained network, a similarity net, weights, then fine-tuning on
the web images) with the similarity net's backbone frozen at the base-trained one (its pairs scored on cached
features of that network) to fit a CPU.

References:
    Chen, Niu, Liu & Zhang, "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..train.loop import LoopSettings, Plan, run_loop
from ..train.objectives import Objectives
from ..train.streams import derive_seed
from .problem import MethodResult, WeakShotConfig, WeakShotData
from .methods import WEAKSHOT_METHODS, NovelSet, create_method, weight_auc
from .objectives import WeightedCrossEntropy, graph_term

__all__ = ["run_end_to_end", "finetune_base"]


def finetune_base(wd: WeakShotData, cfg: WeakShotConfig, seed: int, run_dir: Path,
                  num_workers: int | None = None, progress: bool = False, log: Callable[[str], None] | None = None):
    """Fine-tune the backbone and a linear head on the clean base classes (:func:`~transferkit.train.engine.
    finetune`, the epoch chosen on held-out base items); returns the trained network."""
    from ..data.splits import Splits
    from ..train.engine import TrainConfig, finetune

    sp = wd.split
    src = wd.parts[0][1]
    y = np.zeros(len(src), np.int64)
    y[sp.base_train] = sp.base_y_train
    y[sp.base_val] = sp.base_y_val
    image = src.modality == "image"
    tc = TrainConfig(epochs=cfg.e2e_base_epochs, batch_size=cfg.e2e_batch_size, lr=cfg.e2e_lr, seed=seed,
                     accelerator="cpu", patience=None, hflip=0.0, crop_scale=(0.5, 1.0),
                     image_size=cfg.image_size if image else None, num_workers=num_workers)
    r = finetune(src, y, Splits(sp.base_train, sp.base_val, np.zeros(0, np.int64)), wd.backbone, "finetune", tc,
                 run_dir, classes=list(sp.base_classes), export=False, progress=progress, log=log)
    return r.model.eval()


def _features(bb: Any, wd: WeakShotData, cache: Path, num_workers: int | None) -> np.ndarray:
    from ..features import FeatureStore

    bb.forget_digest()  # trained: a new cache key
    store = FeatureStore(cache)
    return np.concatenate([np.asarray(store.get(bb, src, num_workers=num_workers, device="cpu").X, np.float32)
                           for _, src, _ in wd.parts])


@dataclass
class _EndToEndNovelPlan:
    """The loop's plan of one method fine-tuning the base-trained network on the noisy novel classes."""

    network: Any
    wd: WeakShotData
    weights: np.ndarray
    simnet: Any
    Z: np.ndarray | None
    cfg: WeakShotConfig
    seed: int
    method: str

    def __call__(self, fabric: Any) -> Plan:
        from ..train.engine import cosine_warmup
        from ..train.model import TransferModel
        from ..train.streams import ItemStream, stack

        cfg, sp = self.cfg, self.wd.split
        bb = copy.deepcopy(self.network.backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, 51))
            model = TransferModel(bb, len(sp.novel_classes))
        image = bb.modality == "image"
        train_view = bb.transform("train", scale=(0.5, 1.0), hflip=0.0) if image else bb.transform("train")
        eval_view = bb.transform("eval")
        collate = stack if image else bb.collate
        items = self.wd.items
        labelled = ItemStream("labelled", items, sp.novel_train, sp.novel_noisy,
                              views={"train": train_view, "eval": eval_view}, collate=collate,
                              batch_size=cfg.e2e_batch_size, seed=self.seed)
        test = ItemStream("test", items, sp.novel_test, views={"train": eval_view, "eval": eval_view},
                          collate=collate, batch_size=cfg.e2e_batch_size, seed=self.seed)
        terms = [WeightedCrossEntropy(self.weights)]
        if self.simnet is not None and cfg.alpha > 0:
            terms.append(graph_term(self.simnet, self.Z, cfg, cfg.e2e_epochs))
        lr, wdc = cfg.e2e_lr, cfg.weight_decay
        groups = [{"params": list(model.head.parameters()), "lr": lr, "weight_decay": wdc, "name": "head"},
                  {"params": [p for p in bb.parameters() if p.requires_grad], "lr": lr * 0.1, "weight_decay": wdc,
                   "name": "backbone"}]
        return Plan(model=model, objective=Objectives(*terms), streams={"labelled": labelled}, param_groups=groups,
                    optimizer=lambda g: torch.optim.AdamW(g, lr=lr, weight_decay=wdc),
                    schedule=cosine_warmup(0, "cosine", 0.05), final={"test": test},
                    identity={"stage": "novel-e2e", "method": self.method})


def run_end_to_end(wd: WeakShotData, methods: Sequence[str], cfg: WeakShotConfig, seed: int, needs_sim: bool,
                   run_dir: Path | None, num_workers: int | None, progress: bool,
                   log: Callable[[str], None]) -> tuple[list[MethodResult], dict[str, Any] | None, dict[str, float],
                                                        Any]:
    """Every method end to end on one weak-shot problem (see the module docstring).

    Returns:
        ``(results, the similarity net's held-out pair scores, seconds per stage, (method, network, backbone) of the
        model to save)``. ``run_dir`` is where the caller writes the run; the intermediate base network and its
        features live in a temporary folder, removed at the end.
    """
    from ..features.store import default_num_workers
    from .similarity import fit_similarity

    workers = default_num_workers() if num_workers is None else num_workers
    # the base network's checkpoints and its cached features are intermediate: kept in a temporary folder
    work = Path(tempfile.mkdtemp(prefix="transferkit-weakshot-"))
    times: dict[str, float] = {}
    try:
        t = time.perf_counter()
        log("end to end: fine-tuning the backbone on the clean base classes")
        net = finetune_base(wd, cfg, seed, work / "base", workers, progress, log)
        times["base"] = time.perf_counter() - t
        sp = wd.split
        simnet, scores, Z = None, None, None
        if needs_sim:
            t = time.perf_counter()
            Z = _features(net.backbone, wd, work / "features", workers)
            fit = fit_similarity(Z, sp, cfg, seed)
            simnet, scores = fit.net, fit.scores
            times["similarity"] = time.perf_counter() - t
            log(f"similarity net: balanced accuracy {100 * scores['pair_balanced_accuracy']:.1f}% on held-out base "
                "pairs")
        results = []
        clean = sp.clean
        for m in methods:
            t = time.perf_counter()
            entry = WEAKSHOT_METHODS.get(m)
            novel = NovelSet(wd.X[sp.novel_train], sp.novel_noisy, simnet, clean, seed,
                             Z=None if Z is None else Z[sp.novel_train])
            meth = create_method(m, cfg)
            w = np.asarray(meth.weights(novel), np.float32)
            graph = bool(entry.cap("graph")) and not meth.trains_plain_  # the open-set gate: plain training
            log(f"end to end: novel classes with {m}")
            plan = _EndToEndNovelPlan(net, wd, w, simnet if graph else None,
                                      None if Z is None or not graph else Z[sp.novel_train], cfg, seed, m)
            r = run_loop(plan, LoopSettings(epochs=cfg.e2e_epochs, seed=seed, accelerator="cpu", num_workers=workers,
                                            progress="epoch" if progress else None, label=f"weak-shot {m}",
                                            unit="images" if wd.parts[0][1].modality == "image" else "texts"))
            pred = r.predictions["test"].logits.argmax(1)
            correct = pred == sp.novel_y_test
            auc = None if clean is None or np.ptp(w) == 0 else weight_auc(w, clean)
            results.append(MethodResult(m, bool(entry.cap("oracle")), float(correct.mean()), correct, pred, auc, w,
                                        time.perf_counter() - t, r.model.eval(), meth.gate_))
            times[m] = time.perf_counter() - t
        keep = next((r for r in results if r.method == "simtrans"), results[0])
        return results, scores, times, (keep.method, keep.model, keep.model.backbone)
    finally:
        shutil.rmtree(work, ignore_errors=True)
