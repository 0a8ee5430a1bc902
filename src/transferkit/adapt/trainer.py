"""The one training loop of every deep domain-adaptation method, on cached features or end to end.

``AdaptNet`` = feature module (identity on cached features, or a trainable network such as
:class:`~transferkit.adapt.lenet.LeNet` on image tensors) -> bottleneck (linear, batch norm, ReLU, dropout)
-> linear classifier. Each step draws a labelled source batch and an unlabelled target batch, runs them through
the network *together* (batch norm sees both domains), and minimises

    cross-entropy(source) [+ cross-entropy(labelled target, if given)] + trade_off * method(step)

with one SGD optimizer (momentum 0.9, the DANN learning-rate annealing ``lr (1 + 10 p)^-0.75``) over the
network and the method's own modules (discriminators sit behind gradient reversal layers). Lightning Fabric
places the work on the device and runs the precision (``32``, ``bf16-mixed``, ``16-mixed`` with loss scaling),
as in the fine-tuning engine; one process (no DDP for domain adaptation). Every
``eval_every`` steps the checkpoint is scored by every selector of :mod:`transferkit.adapt.selection`
(source validation split and unlabelled target only: the loop never receives target test labels) and the best
checkpoint of the chosen ``selection`` is the one returned.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DataError, TrainingError, TransferkitError
from .methods import Method, Step
from .selection import SELECTORS, score_checkpoint

__all__ = ["AdaptConfig", "AdaptNet", "AdaptFit", "train_adapter", "predict_logits", "features_of"]

#: our precision names -> Lightning Fabric's
PRECISIONS = {"32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}


@dataclass
class AdaptConfig:
    """Settings of :func:`train_adapter` (defaults: TLlib's digit settings scaled to a CPU).

    Attributes:
        steps: optimisation steps (one source + one target batch each).
        batch_size: per domain.
        lr: base learning rate of SGD (momentum 0.9, Nesterov), annealed as in DANN.
        feature_lr_scale: learning-rate factor of the feature module (0.1 for a pretrained backbone; 1 for a
            network trained from scratch such as LeNet; irrelevant on cached features).
        weight_decay: L2 weight decay.
        bottleneck: width of the bottleneck layer the alignment acts on.
        trade_off: weight of the method's term.
        eval_every: steps between checkpoint evaluations (and at the end).
        val_fraction: share of each source class held out for validation (selection, DEV).
        selection: which scorer picks the checkpoint: ``dev`` (default), ``snd``, ``entropy``, ``source-val``,
            or ``last``.
        seed: seeds the split, the initialisation and the batches.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"32"`` (default), ``"bf16-mixed"`` or ``"16-mixed"`` (GPU), through Lightning Fabric.
        source_loss_weight: weight of the source cross-entropy (0 in ADDA's second stage).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.01
    feature_lr_scale: float = 1.0
    weight_decay: float = 5e-4
    bottleneck: int = 256
    trade_off: float = 1.0
    eval_every: int = 200
    val_fraction: float = 0.2
    selection: str = "dev"
    seed: int = 0
    device: str = "auto"
    source_loss_weight: float = 1.0
    precision: str = "32"

    def validate(self) -> None:
        """Raise a clear error for settings that cannot work."""
        if self.selection not in (*SELECTORS, "last"):
            raise TransferkitError(f"selection {self.selection!r} is not one of {', '.join((*SELECTORS, 'last'))}")
        for k in ("steps", "batch_size", "bottleneck", "eval_every"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise TransferkitError(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        if not 0 < self.val_fraction < 1:
            raise TransferkitError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.precision not in PRECISIONS:
            raise TransferkitError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lr <= 0 or self.trade_off < 0:
            raise TransferkitError(f"lr must be > 0 and trade_off >= 0 (got lr={self.lr}, trade_off={self.trade_off})")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for config.json)."""
        return asdict(self)


class AdaptNet(nn.Module):
    """Feature module -> bottleneck -> classifier; ``forward`` returns ``(bottleneck features, logits)`` always."""

    def __init__(self, in_dim: int, n_classes: int, bottleneck: int = 256, feature: nn.Module | None = None):
        super().__init__()
        self.feature = feature if feature is not None else nn.Identity()
        self.bottleneck = nn.Sequential(nn.Linear(in_dim, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(),
                                        nn.Dropout(0.5))
        self.classifier = nn.Linear(bottleneck, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        z = self.bottleneck(self.feature(x))
        return z, self.classifier(z)


@dataclass
class AdaptFit:
    """What :func:`train_adapter` returns.

    Attributes:
        net: the network with the selected checkpoint's weights (eval mode).
        history: one dict per evaluated checkpoint: ``step``, mean losses since the last one, every selector's
            score.
        selected_step: the step of the returned checkpoint.
        selection: the selector that chose it.
        selected_by: selector -> the step it would have chosen (all computed, for the report).
        seconds: wall time of the loop.
        source_val: indices (into the source arrays) of the held-out source validation split.
    """

    net: AdaptNet
    history: list[dict[str, Any]] = field(default_factory=list)
    selected_step: int = 0
    selection: str = "dev"
    selected_by: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    source_val: np.ndarray | None = None


def _fabric(cfg: AdaptConfig):
    """A one-device Lightning Fabric for ``cfg.device`` and ``cfg.precision``."""
    from lightning.fabric import Fabric

    name = cfg.device
    if name == "auto":
        accelerator, devices = ("cuda" if torch.cuda.is_available() else "cpu"), 1
    elif name.startswith("cuda"):
        accelerator, devices = "cuda", ([int(name.split(":", 1)[1])] if ":" in name else 1)
    else:
        accelerator, devices = name, 1
    try:
        return Fabric(accelerator=accelerator, devices=devices, precision=PRECISIONS[cfg.precision])
    except Exception as e:  # Lightning's MisconfigurationException, ValueError, RuntimeError
        raise TransferkitError(f"cannot train on device={name!r} with precision={cfg.precision!r} here: {e}") from e


def _stratified_val(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    val = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        val.extend(idx[: max(1, k) if len(idx) > 1 else 0])
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(y)), val), val


@torch.no_grad()
def _outputs(net: AdaptNet, X: torch.Tensor, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    zs, ls = [], []
    for i in range(0, len(X), batch):
        z, lg = net(X[i:i + batch])
        zs.append(z.float().cpu().numpy())
        ls.append(lg.float().cpu().numpy())
    return np.concatenate(zs), np.concatenate(ls)


def train_adapter(net: AdaptNet, method: Method, Xs: Any, ys: Any, Xt: Any, config: AdaptConfig | None = None, *,
                  Xt_labelled: Any = None, yt_labelled: Any = None, progress: bool = False,
                  log: Callable[[str], None] | None = None) -> AdaptFit:
    """Train ``net`` on labelled source and unlabelled target with ``method``'s alignment term; select a checkpoint
    without target labels.

    Args:
        net: an :class:`AdaptNet` (the method is built for its bottleneck width here).
        method: an unbuilt :class:`~transferkit.adapt.methods.Method`.
        Xs: source inputs (features ``(N, D)`` or images ``(N, C, H, W)``), float.
        ys: source labels, integers in ``[0, n_classes)``.
        Xt: unlabelled target inputs, same trailing shape as ``Xs``.
        config: :class:`AdaptConfig`.
        Xt_labelled, yt_labelled: optional few labelled target samples (semi-supervised DA): their
            cross-entropy is added to the loss.
        progress: rich progress bar.
        log: one line per evaluation.

    Returns:
        An :class:`AdaptFit`.

    Raises:
        DataError: empty domains, mismatched shapes or lengths, non-finite inputs.
        TrainingError: the loss became NaN/inf (the message names the step).
    """
    from .._progress import progress_bar

    cfg = config or AdaptConfig()
    cfg.validate()
    say = log or (lambda m: None)
    Xs_np, Xt_np = np.asarray(Xs, dtype=np.float32), np.asarray(Xt, dtype=np.float32)
    ys_np = np.asarray(ys, dtype=np.int64)
    if len(Xt_np) == 0:
        raise DataError("the target domain has no samples: give at least a batch of unlabelled target inputs")
    if len(Xs_np) != len(ys_np):
        raise DataError(f"source: {len(Xs_np)} inputs but {len(ys_np)} labels")
    if Xs_np.shape[1:] != Xt_np.shape[1:]:
        raise DataError(f"source inputs have shape {Xs_np.shape[1:]} per sample but target inputs {Xt_np.shape[1:]}")
    for name, a in (("source", Xs_np), ("target", Xt_np)):
        if not np.isfinite(a).all():
            raise DataError(f"{name} inputs contain NaN or inf values ({int((~np.isfinite(a)).sum())} entries)")
    labelled_t = Xt_labelled is not None and yt_labelled is not None and len(yt_labelled) > 0
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_idx, val_idx = _stratified_val(ys_np, cfg.val_fraction, rng)
    fabric = _fabric(cfg)
    dev = fabric.device
    n_classes = net.classifier.out_features
    method.build(net.bottleneck[0].out_features, n_classes)
    net.to(dev)
    method.to(dev)
    Xs_t = torch.from_numpy(Xs_np).to(dev)
    Xt_t = torch.from_numpy(Xt_np).to(dev)
    ys_t = torch.from_numpy(ys_np).to(dev)
    if labelled_t:
        Xtl = torch.from_numpy(np.asarray(Xt_labelled, np.float32)).to(dev)
        ytl = torch.from_numpy(np.asarray(yt_labelled, np.int64)).to(dev)
    feat_params = [p for p in net.feature.parameters() if p.requires_grad]
    head_params = list(net.bottleneck.parameters()) + list(net.classifier.parameters())
    groups = [{"params": head_params, "scale": 1.0}, {"params": list(method.parameters()), "scale": 1.0}]
    if feat_params:
        groups.append({"params": feat_params, "scale": cfg.feature_lr_scale})
    groups = [g for g in groups if g["params"]]
    opt = fabric.setup_optimizers(torch.optim.SGD([{**g, "lr": cfg.lr * g["scale"]} for g in groups], lr=cfg.lr,
                                                  momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    tr = torch.from_numpy(train_idx)
    eval_sub = {"train": train_idx[rng.permutation(len(train_idx))[:2000]],
                "t": np.sort(rng.permutation(len(Xt_np))[:2000])}
    best: dict[str, tuple[float, int, dict]] = {}
    history: list[dict[str, Any]] = []
    sums = {"cls": 0.0, "transfer": 0.0, "n": 0}
    t0 = time.perf_counter()

    def evaluate(step: int) -> None:
        net.eval()
        method.eval()
        z_val, l_val = _outputs(net, Xs_t[torch.from_numpy(val_idx).to(dev)])
        z_tr, _ = _outputs(net, Xs_t[torch.from_numpy(eval_sub["train"]).to(dev)])
        z_t, l_t = _outputs(net, Xt_t[torch.from_numpy(eval_sub["t"]).to(dev)])
        y_val = ys_np[val_idx]
        loss_val = F.cross_entropy(torch.from_numpy(l_val), torch.from_numpy(y_val), reduction="none").numpy()
        scores = score_checkpoint({"logits_val": l_val, "y_val": y_val, "loss_val": loss_val, "z_val": z_val,
                                   "z_train": z_tr, "logits_t": l_t, "z_t": z_t}, seed=cfg.seed)
        n = max(sums["n"], 1)
        row = {"step": step, "cls_loss": sums["cls"] / n, "transfer_loss": sums["transfer"] / n, **scores,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        sums.update(cls=0.0, transfer=0.0, n=0)
        state = None
        for sel in (*SELECTORS, "last"):
            v = float(step) if sel == "last" else scores[sel]
            if sel not in best or v > best[sel][0]:
                state = state or copy.deepcopy({k: v_.detach().cpu() for k, v_ in net.state_dict().items()})
                best[sel] = (v, step, state)
        say(f"step {step}: cls {row['cls_loss']:.3f} transfer {row['transfer_loss']:.4f} | source-val "
            f"{100 * scores['source-val']:.1f}% entropy {scores['entropy']:.3f} snd {scores['snd']:.3f} "
            f"dev {scores['dev']:.3f}")
        net.train()
        method.train()

    net.train()
    method.train()
    with progress_bar(cfg.steps, f"adapt ({method.name})", unit="steps", enabled=progress) as bar:
        for step in range(1, cfg.steps + 1):
            p = (step - 1) / max(cfg.steps - 1, 1)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * g["scale"] * (1 + 10 * p) ** -0.75
            bs = tr[torch.randint(len(tr), (cfg.batch_size,), generator=gen)].to(dev)
            bt = torch.randint(len(Xt_np), (cfg.batch_size,), generator=gen).to(dev)
            parts = [Xs_t[bs], Xt_t[bt]]
            if labelled_t:
                bl = torch.randint(len(ytl), (min(cfg.batch_size, len(ytl)),), generator=gen).to(dev)
                parts.append(Xtl[bl])
            with fabric.autocast():
                z, logits = net(torch.cat(parts))
                n_s = cfg.batch_size
                cls = cfg.source_loss_weight * F.cross_entropy(logits[:n_s], ys_t[bs])
                if labelled_t:
                    cls = cls + F.cross_entropy(logits[2 * n_s:], ytl[bl])
                transfer = method(Step(z[:n_s], z[n_s:2 * n_s], logits[:n_s], logits[n_s:2 * n_s], ys_t[bs], p,
                                       x_s=parts[0], x_t=parts[1]))
                loss = cls + cfg.trade_off * transfer
            if not torch.isfinite(loss):
                raise TrainingError(f"the {method.name} loss became {loss.item()} at step {step} (classification "
                                    f"{cls.item():.4g}, transfer {transfer.item():.4g}); lower lr or trade_off")
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            opt.step()
            sums["cls"] += float(cls.detach())
            sums["transfer"] += float(transfer.detach())
            sums["n"] += 1
            bar.advance()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                evaluate(step)
    chosen = cfg.selection
    net.load_state_dict(best[chosen][2])
    net.eval()
    return AdaptFit(net=net, history=history, selected_step=best[chosen][1], selection=chosen,
                    selected_by={k: v[1] for k, v in best.items()}, seconds=time.perf_counter() - t0,
                    source_val=val_idx)


def predict_logits(net: AdaptNet, X: Any, device: str = "auto", batch: int = 512) -> np.ndarray:
    """Logits of ``net`` (eval mode) on inputs ``X``."""
    dev = next(net.parameters()).device if device == "auto" else torch.device(device)
    net.eval()
    return _outputs(net, torch.from_numpy(np.asarray(X, np.float32)).to(dev), batch)[1]


def features_of(net: AdaptNet, X: Any, batch: int = 512) -> np.ndarray:
    """Bottleneck features of ``net`` (eval mode) on inputs ``X`` (for the before/after diagnostics)."""
    dev = next(net.parameters()).device
    net.eval()
    return _outputs(net, torch.from_numpy(np.asarray(X, np.float32)).to(dev), batch)[0]

