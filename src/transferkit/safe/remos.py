"""ReMoS: drop the teacher's weights that the student's data does not use, before fine-tuning.

A pretrained teacher may carry defects (a backdoor, adversarial vulnerabilities) that plain fine-tuning passes on to
the student. ReMoS scores every convolution weight of the teacher by how relevant it is to the *student's* task and
zeroes the least relevant share before fine-tuning, so the defect's weights do not survive into the student:

1. **Neuron coverage on the student's data** (:func:`neuron_coverage`): every ``Conv2d`` (and ``Linear``) layer's
   input and output is
   min-max scaled to ``[0, 1]`` per sample (over all channels and positions of that layer); a channel is *covered* by
   a sample when its spatial mean exceeds ``threshold`` (0.5). Counting over the student's training samples gives each
   channel a coverage count.
2. **Weight scores** (:func:`remos_scores`): the weight ``W[o, i, :, :]`` joins input channel ``i`` to output channel
   ``o``; its coverage is ``cov_in[i] + cov_out[o]``. Over all layers together, the ``(o, i)`` pairs are ranked by
   coverage (ascending; every kernel position of a pair shares the pair's rank, and a pair advances the rank by its
   ``kh * kw`` weights), and every single weight by magnitude ``|w|`` (ascending). The score is
   ``coverage rank - magnitude rank``.
3. **Pruning** (:func:`remos_prune`): the ``prune`` share of weights with the lowest scores are set to zero, i.e.
   weights that the student's data rarely activates *and* that are large: teacher-specific weights, where a
   backdoor's shortcut lives. Fine-tuning then starts from the pruned teacher and may regrow them (no mask is kept).

This follows the authors' artifact (``ReMoSPruner.weight_prune`` and ``MyNeuronCoverage`` in
github.com/ziqi-zhang/ReMoS_artifact): global ranks over the layers, the coverage threshold 0.5, one pruning
before fine-tuning. Three differences: the backbone's ``Linear`` layers are scored too, as 1x1 kernels whose
neurons are their units (the artifact scores ``Conv2d`` only: its ResNets' one ``Linear`` is the classifier the
student replaces; a backbone ending in fully connected layers, like ``lenet-fc``, would otherwise keep them whole);
grouped/depthwise convolutions map a weight to its true input channel (the artifact only ran ResNets, which have
none); and exactly ``round(prune * total)`` weights are pruned (the artifact prunes the weights at or below the
threshold score, one more).

References:
    Zhang, Chen, Guo, Liu, Zhang, Sun, Chen & Xie, "ReMoS: Reducing Defect Inheritance in Transfer Learning via
    Relevant Model Slicing", ICSE 2022.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import TransferkitError

__all__ = ["LayerCoverage", "RemosReport", "neuron_coverage", "remos_scores", "remos_prune", "apply_remos",
           "SAFE_METHODS", "check_safe", "choose_prune"]

#: safe-transfer methods of ``--safe`` (fine-tuning option) and their description
SAFE_METHODS = {"remos": "ReMoS (Zhang et al., ICSE 2022): zero the teacher's conv weights least relevant to the "
                         "student's data (neuron coverage x magnitude), then fine-tune"}


def check_safe(safe: str | None, prune: Any) -> list[str]:
    """Problems with a ``safe`` / ``prune`` setting (empty when fine): used by ``TrainConfig.validate``."""
    bad = []
    if safe is not None and safe not in SAFE_METHODS:
        bad.append(f"safe={safe!r} is not a safe-transfer method; use one of: {', '.join(SAFE_METHODS)}")
    if isinstance(prune, bool) or not isinstance(prune, (int, float)) or not 0 < float(prune) < 1:
        bad.append(f"prune={prune!r} is not a share in (0, 1): it is the share of the backbone's conv weights to "
                   "drop, e.g. 0.05")
    return bad


@dataclass
class LayerCoverage:
    """Coverage counts of one ``Conv2d`` or ``Linear`` layer over the profiled samples.

    Attributes:
        inputs: ``(in_channels,)`` how many samples covered each input channel.
        outputs: ``(out_channels,)`` how many samples covered each output channel.
        samples: number of samples profiled.
    """

    inputs: np.ndarray
    outputs: np.ndarray
    samples: int = 0


def _conv_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The scored layers: every ``Conv2d`` and ``Linear``, in module order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _sizes(layer: nn.Module) -> tuple[int, int, int]:
    """``(in channels, out channels, groups)`` of a Conv2d or Linear layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, 1
    return layer.in_channels, layer.out_channels, layer.groups


def _weight4d(layer: nn.Module) -> torch.Tensor:
    """The weight as ``(out, in/groups, kh, kw)`` (a Linear layer's as 1x1 kernels), a view of the parameter."""
    w = layer.weight
    return w if w.ndim == 4 else w.view(*w.shape, 1, 1)


def _covered(t: torch.Tensor, threshold: float, channel_dim: int = 1) -> torch.Tensor:
    """``(N, C, ...)`` (or ``(N, ..., C)`` with ``channel_dim=-1``) -> ``(C,)`` number of samples whose channel mean,
    after per-sample min-max scaling over the whole tensor, exceeds ``threshold`` (a constant sample covers nothing)."""
    x = t.detach().float()
    n, c = x.shape[0], x.shape[channel_dim]
    x = (x.movedim(channel_dim, 1) if x.ndim > 2 else x).reshape(n, c, -1)  # (N, C, rest)
    lo = x.amin(dim=(1, 2), keepdim=True)
    span = x.amax(dim=(1, 2), keepdim=True) - lo
    scaled = torch.where(span > 0, (x - lo) / span.clamp_min(1e-30), torch.zeros_like(x))
    return (scaled.mean(2) > threshold).sum(0).cpu()


def neuron_coverage(module: nn.Module, batches: Iterable[torch.Tensor], threshold: float = 0.5,
                    advance: Callable[[int], None] | None = None) -> dict[str, LayerCoverage]:
    """Coverage counts of every ``Conv2d`` channel and ``Linear`` unit (inputs and outputs) of ``module`` over
    ``batches``.

    Args:
        module: the network (its ``Conv2d`` and ``Linear`` layers are profiled; it runs in eval mode, without
            gradients).
        batches: input batches the module takes (the student's training data, in the evaluation view).
        threshold: a channel is covered by a sample when its mean scaled activation exceeds this.
        advance: called with each batch's size (a progress bar).

    Returns:
        ``{layer name: LayerCoverage}`` in module order.

    Shape:
        each batch: ``(N, C, H, W)``.

    References:
        Pei, Cao, Yang & Jana, "DeepXplore", SOSP 2017 (neuron coverage); Zhang et al., "ReMoS", ICSE 2022.
    """
    layers = _conv_layers(module)
    if not layers:
        raise TransferkitError(f"ReMoS scores convolution and fully connected weights, and {type(module).__name__} "
                               "has no Conv2d or Linear layer; leave out safe=remos")
    cov = {n: LayerCoverage(np.zeros(_sizes(m)[0], np.int64), np.zeros(_sizes(m)[1], np.int64)) for n, m in layers}

    def hook(name: str):
        def fn(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            dim = -1 if isinstance(mod, nn.Linear) else 1
            cov[name].inputs += _covered(inputs[0], threshold, dim).numpy()
            cov[name].outputs += _covered(output, threshold, dim).numpy()
            cov[name].samples += int(output.shape[0])
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for x in batches:
                module(x)
                if advance is not None:
                    advance(int(x.shape[0]))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return cov


def _pair_coverage(conv: nn.Module, c: LayerCoverage) -> np.ndarray:
    """``(out, in_per_group)`` coverage ``cov_in[input channel of (o, i)] + cov_out[o]``."""
    out_c, in_pg = conv.weight.shape[:2]
    group = np.arange(out_c) // (out_c // _sizes(conv)[2])
    in_index = group[:, None] * in_pg + np.arange(in_pg)[None, :]
    return c.inputs[in_index] + c.outputs[:, None]


def remos_scores(module: nn.Module, coverage: dict[str, LayerCoverage]) -> dict[str, torch.Tensor]:
    """ReMoS score of every conv weight: its coverage rank minus its magnitude rank (global over the layers).

    Low scores are weights joining rarely covered channels (low coverage rank) that are large (high magnitude rank):
    :func:`remos_prune` zeroes the lowest. Ties keep module order: layers in ``named_modules`` order, ``(o, i)`` pairs
    input-major within a layer for the coverage rank, weights in ``weight.flatten()`` order for the magnitude rank.

    Args:
        module: the network whose ``Conv2d`` and ``Linear`` weights are scored.
        coverage: :func:`neuron_coverage` of that network on the student's data.

    Returns:
        ``{layer name: (out, in/groups, kh, kw) int64 tensor}``.
    """
    layers = [(n, m) for n, m in _conv_layers(module) if n in coverage]
    if not layers:
        raise TransferkitError("no Conv2d or Linear layer of the module has coverage counts: profile the same module with "
                               "neuron_coverage first")
    cov_vals, blocks, mags = [], [], []
    for name, conv in layers:
        pair = _pair_coverage(conv, coverage[name])  # (out, in)
        cov_vals.append(pair.T.reshape(-1))  # input-major, as the artifact loops over (input, output)
        blocks.append(np.full(pair.size, _weight4d(conv).shape[2] * _weight4d(conv).shape[3], np.int64))
        mags.append(conv.weight.detach().abs().reshape(-1).cpu().numpy())
    cov_all, block_all = np.concatenate(cov_vals), np.concatenate(blocks)
    order = np.argsort(cov_all, kind="stable")
    starts = np.empty_like(block_all)
    starts[order] = np.concatenate([[0], np.cumsum(block_all[order])[:-1]])
    mag_all = np.concatenate(mags)
    mag_rank = np.empty(len(mag_all), np.int64)
    mag_rank[np.argsort(mag_all, kind="stable")] = np.arange(len(mag_all))
    out: dict[str, torch.Tensor] = {}
    p = w = 0
    for (name, conv), vals in zip(layers, cov_vals):
        o, i, kh, kw = _weight4d(conv).shape
        cov_rank = starts[p:p + vals.size].reshape(i, o).T  # back to (out, in)
        cov_rank = np.broadcast_to(cov_rank[:, :, None, None], (o, i, kh, kw))
        score = cov_rank - mag_rank[w:w + conv.weight.numel()].reshape(o, i, kh, kw)
        out[name] = torch.from_numpy(np.ascontiguousarray(score))
        p += vals.size
        w += conv.weight.numel()
    return out


@dataclass
class RemosReport:
    """What :func:`remos_prune` did.

    Attributes:
        prune: the share asked for.
        pruned: number of weights set to zero.
        total: number of conv weights scored.
        per_layer: ``{layer name: weights zeroed}``.
        samples: number of student samples the coverage was measured on.
    """

    prune: float
    pruned: int
    total: int
    per_layer: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``finetune.json``'s ``safe`` entry)."""
        return {"method": "remos", "prune": self.prune, "pruned": self.pruned, "total": self.total,
                "samples": self.samples, "per_layer": dict(self.per_layer)}


def remos_prune(module: nn.Module, coverage: dict[str, LayerCoverage], prune: float = 0.05) -> RemosReport:
    """Zero the ``prune`` share of ``module``'s conv weights with the lowest ReMoS scores (in place).

    Args:
        module: the teacher network (changed in place).
        coverage: :func:`neuron_coverage` of ``module`` on the student's training data.
        prune: share of all conv weights to zero, in (0, 1).

    Returns:
        :class:`RemosReport`.

    References:
        Zhang et al., "ReMoS: Reducing Defect Inheritance in Transfer Learning via Relevant Model Slicing", ICSE 2022.
    """
    bad = check_safe("remos", prune)
    if bad:
        raise TransferkitError("; ".join(bad))
    scores = remos_scores(module, coverage)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = int(round(float(prune) * flat.numel()))
    drop = torch.zeros(flat.numel(), dtype=torch.bool)
    if k:
        drop[torch.from_numpy(np.argsort(flat.numpy(), kind="stable")[:k])] = True
    convs = dict(_conv_layers(module))
    per_layer, p = {}, 0
    with torch.no_grad():
        for name, s in scores.items():
            mask = drop[p:p + s.numel()].reshape(s.shape)
            w = _weight4d(convs[name])
            w[mask.to(w.device)] = 0
            per_layer[name] = int(mask.sum())
            p += s.numel()
    samples = max((c.samples for c in coverage.values()), default=0)
    return RemosReport(prune=float(prune), pruned=k, total=int(flat.numel()), per_layer=per_layer, samples=samples)


def apply_remos(module: nn.Module, batches: Iterable[torch.Tensor], prune: float = 0.05, threshold: float = 0.5,
                advance: Callable[[int], None] | None = None) -> RemosReport:
    """ReMoS in one call: :func:`neuron_coverage` on ``batches`` (the student's training data), then
    :func:`remos_prune`. Changes ``module`` in place."""
    return remos_prune(module, neuron_coverage(module, batches, threshold, advance), prune)


def choose_prune(val_accuracy: dict[float, float], n_val: int) -> float:
    """The prune ratio a defender can afford, chosen on clean validation accuracy alone (the one-standard-error rule).

    Pruning more of the teacher removes more of whatever it carries that the student's data does not use (a
    backdoor, whose trigger the defender never sees), so the rule takes the **largest** candidate ratio whose
    validation accuracy is within one binomial standard error ``sqrt(p (1 - p) / n_val)`` of the best candidate's
    accuracy ``p`` (plain fine-tuning, ratio 0, is a candidate): a loss smaller than the validation split can measure
    is not held against a ratio. This is the one-standard-error rule of model selection (Breiman, Friedman, Olshen &
    Stone, "Classification and Regression Trees", 1984; Hastie, Tibshirani & Friedman, "The Elements of Statistical
    Learning", 2009, section 7.10), with "simplest model" read as "least of the teacher kept".

    Args:
        val_accuracy: ``{prune ratio: validation accuracy}``, accuracies in [0, 1]; include ``0.0`` (fine-tuning
            without pruning) so the best is measured against it.
        n_val: number of validation items each accuracy was measured on.

    Returns:
        The chosen ratio (0.0 when no pruned candidate is within one standard error of the best).

    Example:
        Fine-tuning 87.5%, prune 0.1 87.5%, 0.2 85.0%, 0.3 86.0% on 200 items: the standard error at 87.5% is 2.34
        points, the bar 85.16%, so 0.3 (86.0%) is chosen; 0.2 (85.0%) misses it.
    """
    if not val_accuracy:
        raise TransferkitError("choose_prune needs at least one {prune ratio: validation accuracy} entry")
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 1:
        raise TransferkitError(f"n_val={n_val!r} must be the number of validation items (an integer >= 1)")
    bad = {k: v for k, v in val_accuracy.items()
           if not isinstance(v, (int, float)) or not 0 <= v <= 1 or not isinstance(k, (int, float)) or not 0 <= k < 1}
    if bad:
        raise TransferkitError(f"choose_prune takes prune ratios in [0, 1) mapped to accuracies in [0, 1]; got {bad}")
    best = max(val_accuracy.values())
    bar = best - float(np.sqrt(best * (1 - best) / n_val))
    return float(max(p for p, a in val_accuracy.items() if a >= bar - 1e-12))
