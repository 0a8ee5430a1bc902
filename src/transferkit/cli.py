"""The ``transferkit`` command: one Typer app, thin subcommands over the public API.

User mistakes print one line on stderr and exit with code 2; no traceback reaches a user
(set ``TRANSFERKIT_DEBUG=1`` to see one).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

WORKERS_HELP = ("Data-loading worker processes (default: sized from the measured decode rate; 0: none, the next "
                "batches are made in a thread).")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning for images and text: pretrained backbones, cached features, shallow heads.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect or clear the feature cache.")
app.add_typer(cache_app, name="cache")

out = Console()
err = Console(stderr=True)

QuietOpt = typer.Option(False, "--quiet", "-q", help="Print only the results (no progress bars or stage messages).")
InputColOpt = typer.Option(None, "--input-column", help="Table column with image paths or texts (detected when not given).")
LabelColOpt = typer.Option(None, "--label-column", help="Table column with the labels (detected when not given).")
CacheOpt = typer.Option(None, "--cache-dir", help="Feature cache folder (default: $TRANSFERKIT_CACHE or ~/.cache/transferkit).")
EngineOpt = typer.Option("auto", "--engine", help="Feature-extraction engine: auto (the fastest of eager PyTorch, channels-last and ONNX Runtime whose features match eager PyTorch within 1e-4 + 1e-3 x max|feature|; checked once per backbone and remembered), torch, or onnx (needs pip install 'transferkit[onnx]').")
FeaturePrecisionOpt = typer.Option("32", "--feature-precision", help="Precision of the extracted features: 32, bf16 or 16 (autocast, for GPUs), int8 (CPU, dynamic quantisation, opt-in); any but 32 is cached under its own key.")
EncodingOpt = typer.Option(None, "--encoding", help="Text encoding of a CSV/TSV table, e.g. utf-8, cp1252, latin-1, shift_jis (default: UTF-8, else cp1252 or latin-1 with a note).")


def _friendly(fn: Callable) -> Callable:
    """Turn transferkit errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import warnings

        from .errors import TransferkitError, TransferkitWarning

        try:
            with warnings.catch_warnings():  # restores the filters and showwarning afterwards
                warnings.simplefilter("always", TransferkitWarning)
                warnings.showwarning = _show_note(warnings.showwarning, TransferkitWarning)
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("[red]interrupted[/red]: finished feature shards are kept; run the same command to resume")
            raise typer.Exit(130)
        except (TransferkitError, OSError) as e:
            if os.environ.get("TRANSFERKIT_DEBUG"):
                raise
            err.print(f"[bold red]error:[/bold red] {_one_line(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except Exception as e:  # a bug: say so briefly instead of dumping a traceback
            if os.environ.get("TRANSFERKIT_DEBUG"):
                raise
            err.print(f"[bold red]internal error:[/bold red] {type(e).__name__}: {_one_line(e)} — please report it; "
                      "rerun with TRANSFERKIT_DEBUG=1 for the traceback", highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    return wrapper


#: library parameter -> the CLI flag that sets it. Library messages name parameters (``labels_per_class=50``,
#: ``on_bad_input="skip"``); a CLI user sees the flags instead. This table is the only place the two meet.
FLAGS = {"labels_per_class": "--labels-per-class", "on_bad_input": "--on-bad-input", "out": "--out",
         "input_column": "--input-column", "label_column": "--label-column", "domain_column": "--domain-column",
         "source_domain": "--source-domain", "target_domain": "--target-domain", "target_labels": "--target-labels",
         "cache_dir": "--cache-dir", "batch_size": "--batch-size", "num_workers": "--workers",
         "val_fraction": "--val-fraction", "test_fraction": "--test-fraction", "backbone": "--backbone",
         "strategy": "--strategy", "resume": "--resume", "image_size": "--image-size", "finetune": "--finetune",
         "seed": "--seed", "head": "--head", "precision": "--precision", "device": "--device", "devices": "--devices",
         "epochs": "--epochs", "lr": "--lr", "freeze": "--freeze", "freeze_until": "--freeze-until",
         "output": "--output", "max_test": "--max-test", "strategies": "--strategies", "steps": "--steps",
         "ensemble": "--ensemble",
         "trade_off": "--trade-off", "selection": "--selection", "max_samples": "--max-samples",
         "scores": "--scores", "encoding": "--encoding", "accelerator": "--device", "unlabelled": "--unlabelled",
         "semi_level": "--semi-level", "tau": "--tau", "classes": "--classes",
         "seen": "--seen", "text_backbone": "--text-backbone", "prompt": "--prompt", "source_texts": "--source-texts",
         "method": "--method",
         "ways": "--ways",
         "shots": "--shots", "queries": "--queries", "episodes": "--episodes", "novel": "--novel", "base": "--base",
         "base_data": "--base-data", "heads": "--heads",
         "corpus": "--corpus",
         "hidden": "--hidden", "activation": "--activation", "algo": "--algo", "dim": "--dim",
         "pooling": "--pooling", "column": "--column", "stopwords": "--stopwords", "init": "--init",
         "window": "--window", "min_count": "--min-count", "max_texts": "--max-texts",
         "noisy_labels": "--noisy-labels", "noise": "--noise", "noise_kind": "--noise-kind", "outliers": "--outliers",
         "methods": "--methods", "tasks": "--tasks", "weighting": "--weighting", "alpha": "--alpha",
         "sim_blend": "--sim-blend", "sim_drop": "--drop", "sim_drop_rule": "--drop-rule", "drop_rule": "--drop-rule",
         "graph_on": "--graph-on", "graph_schedule": "--graph-schedule", "sim_gate": "--open-set-gate",
         "open_set_gate": "--open-set-gate",
         "end_to_end": "--end-to-end", "safe": "--safe", "prune": "--prune", "refit": "--refit", "engine": "--engine",
         "feature_precision": "--feature-precision", "num_nodes": "--num-nodes", "leave_out": "--leave-out",
         "max_per_domain": "--max-per-domain", "domains": "--domains", "rank": "--rank", "bottleneck": "--bottleneck",
         "descriptions": "--descriptions"}
_ASSIGN = re.compile(r"\b(" + "|".join(map(re.escape, FLAGS)) + r")=(?:\"([^\"]*)\"|'([^']*)'|([^\s,;)]+))?")
_BARE = re.compile(r"\b(" + "|".join(re.escape(k) for k in FLAGS if "_" in k) + r")\b")


def as_flags(text: str) -> str:
    """A library message in the CLI's words: ``name=value`` becomes ``--flag value`` (``--flag`` for True), and
    multi-word parameter names become their flags."""
    def assign(m: re.Match) -> str:
        value = m.group(2) if m.group(2) is not None else m.group(3) if m.group(3) is not None else m.group(4)
        flag = FLAGS[m.group(1)]
        return flag if value in (None, "", "True") else f"{flag} {value}"

    return _BARE.sub(lambda m: FLAGS[m.group(1)], _ASSIGN.sub(assign, text))


def _show_note(fallback: Callable, category: type) -> Callable:
    """A ``warnings.showwarning`` that prints transferkit's own warnings as one ``note:`` line on stderr."""

    def show(message, cat, filename, lineno, file=None, line=None):
        if issubclass(cat, category):
            err.print(f"[yellow]note:[/yellow] {_one_line(message)}", highlight=False, soft_wrap=True)
        else:
            fallback(message, cat, filename, lineno, file, line)

    return show


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return as_flags(" ".join(text.split()))


#: option -> (kind, lowest allowed, highest allowed or None, inclusive high): checked before any work
_RANGES = {"seed": (int, 0, None), "batch_size": (int, 1, None), "workers": (int, 0, None),
           "labels_per_class": (int, 1, None), "epochs": (int, 1, None), "train_batch_size": (int, 1, None),
           "image_size": (int, 8, None), "devices": (int, 1, None), "num_nodes": (int, 1, None), "steps": (int, 1, None),
           "ensemble": (int, 1, None), "seeds": (int, 1, None),
           "max_samples": (int, 1, None), "target_labels": (int, 1, None), "max_test": (int, 1, None),
           "freeze": (int, 0, None), "lr": (float, 0.0, None), "trade_off": (float, 0.0, None),
           "ways": (int, 2, None), "shots": (int, 1, None), "queries": (int, 1, None), "episodes": (int, 1, None),
           "val_fraction": (float, 0.0, 1.0), "test_fraction": (float, 0.0, 1.0), "tau": (float, 0.0, 1.0),
           "hidden": (int, 1, None),
           "dim": (int, 1, None), "window": (int, 1, None), "min_count": (int, 1, None), "max_texts": (int, 2, None), "noise": (float, 0.0, 1.0),
           "alpha": (float, 0.0, None), "images": (int, 2, None), "show": (int, 1, None),
           "max_per_domain": (int, 2, None), "sim_blend": (float, 0.0, 1.0), "drop": (float, 0.0, 1.0),
           "open_set_gate": (float, 0.0, 1.0)}
_OPTION_FLAGS = {"workers": "--workers", "train_batch_size": "--train-batch-size", "seeds": "--seeds"}


def check_options(**values: object) -> None:
    """Every numeric option and the device checked at the CLI boundary, before any data is read: one line naming the
    flag, what it got and what is allowed."""
    from .errors import TransferkitError

    for name, value in values.items():
        if value is None:
            continue
        flag = _OPTION_FLAGS.get(name) or FLAGS.get(name, "--" + name.replace("_", "-"))
        if name == "device":
            from .features.store import resolve_device

            try:
                resolve_device(str(value))
            except TransferkitError as e:
                raise TransferkitError(str(e).replace(f"device={value!r}", f"{flag} {value}")) from None
            continue
        kind, low, high = _RANGES[name]
        if kind is int:
            ok = value >= low and (high is None or value <= high)
            allowed = f"an integer >= {low}"
        elif name in ("lr",):
            ok, allowed = value > low, "a number > 0"
        elif high is not None:
            if name == "tau":
                ok, allowed = low < value <= high, f"in ({low:g}, {high:g}]"
            elif name == "sim_blend":
                ok, allowed = low <= value <= high, f"in [{low:g}, {high:g}]"
            else:
                half_open = name in ("val_fraction", "noise", "drop", "open_set_gate")
                ok = low <= value < high if half_open else low < value < high
                allowed = f"in [{low:g}, {high:g})" if half_open else f"in ({low:g}, {high:g})"
        else:
            ok, allowed = value >= low, f"a number >= {low:g}"
        if not ok:
            raise TransferkitError(f"{flag} must be {allowed}; got {value}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


@app.command()
@_friendly
def fit(
    data: str = typer.Argument("clipart", help="Built-in dataset name, a folder with one sub-folder per class, or a CSV/TSV/Parquet table."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone name (see `transferkit backbones`)."),
    head: str = typer.Option("auto", "--head", help="Head on the features: auto (logreg, or with 1-4 labels per class and no validation split the few-shot default logreg-l2n with C=100; it says why), logreg, linear, mlp, or a few-shot head: ncm-cl2n, ncm-l2n, protonet, logreg-l2n, chen-baseline, chen-baseline++; or hidden (one hidden sigmoid layer: the word-vector recipe's small classifier)."),
    labels_per_class: Optional[int] = typer.Option(None, "--labels-per-class", "-n", help="Labelled budget per class; the rest is the test split (default: 10 for built-in datasets, all labels for your data)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of training."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<time>-<data>-<backbone>)."),
    cache_dir: Optional[Path] = CacheOpt,
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Train the from-scratch baseline on the same labels."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    on_bad_input: str = typer.Option("error", "--on-bad-input", help="error: stop at unreadable inputs; skip: leave them out and list them in the run."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of the labelled samples held out for validation."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share held out for testing when no --labels-per-class is given."),
    input_column: Optional[str] = typer.Option(None, "--input-column", help="Table column with image paths or texts."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Table column with the labels."),
    batch_size: int = typer.Option(64, "--batch-size", help="Feature-extraction batch size."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    strategy: str = typer.Option("probe", "--strategy", "-s", help="probe (frozen backbone, cached features, shallow head), auto (with a validation split, i.e. from 5 labels per class: race the probe and gradual unfreezing; each chooses its settings on the validation split, then trains with them on the other folds of the labelled items, 5 folds in all with the default --val-fraction, so gradual is fine-tuned 5 times (a validation split of 500 items or more decides alone); the probe stays unless gradual's held-out answers beat it by more than the noise, and a winning gradual trains once more on all the labelled items for the epochs it chose: that model is kept, as the probe's head refits on them. Without a validation split (under 5 labels per class, or --val-fraction 0) the size x similarity advice decides alone, the probe under 10 labels per class; when the probe is chosen, fine-tuning options go unused), finetune (all layers), partial (freeze the first --freeze groups), gradual (head first, then unfreeze with discriminative learning rates), scratch (same architecture, random init), lora (low-rank updates through peft, --rank), adapter (bottleneck adapters, --bottleneck), bitfit (bias terms only), setfit (texts: contrastive fine-tuning on pairs of the labelled texts, then a logistic head); semi-supervised with --unlabelled: fixmatch, flexmatch, freematch, softmatch, labelprop (label propagation pseudo-labels, features level only)."),
    unlabelled: Optional[str] = typer.Option(None, "--unlabelled", "-u", help="Semi-supervised strategies: 'rest' (with -n, every item neither labelled nor in the test share) or a folder / table of inputs without labels."),
    semi_level: str = typer.Option("features", "--semi-level", help="Semi-supervised strategies: features (frozen backbone, cached augmented views, a head: seconds after one extraction) or end-to-end (the backbone trains too; fine-tuning options apply)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Semi-supervised at features level: optimisation steps of the head (default: 1000)."),
    ensemble: Optional[int] = typer.Option(None, "--ensemble", help="Semi-supervised at features level: heads trained with different seeds, their probabilities averaged (a deep ensemble; default: 3; 1 for a single head, a third of the time)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="fixmatch / flexmatch: confidence threshold of a pseudo-label (default: 0.95)."),
    freeze: Optional[int] = typer.Option(None, "--freeze", help="partial: freeze the first K layer groups (timm's own grouping)."),
    freeze_until: Optional[str] = typer.Option(None, "--freeze-until", help="partial: freeze every group up to and including this one (e.g. blocks.3)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="lora: rank of the low-rank updates (default: 8)."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="lora: scaling alpha (the update is multiplied by alpha / rank; default: 16)."),
    bottleneck: Optional[int] = typer.Option(None, "--bottleneck", help="adapter: inner width of the bottleneck adapters (default: 16)."),
    descriptions: Optional[str] = typer.Option(None, "--descriptions", help="setfit: label descriptions added as labelled texts (\"fresh=positive,rotten=negative\", or a .json / .txt file), as the setfit library's templated examples."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="setfit --descriptions: prompt set (name, review) or one template with {} (default: name, the description alone)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Fine-tuning: maximum epochs (default: 15, early stopping on validation)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Fine-tuning: learning rate of the head; the backbone gets a tenth (default: 2e-3)."),
    train_batch_size: Optional[int] = typer.Option(None, "--train-batch-size", help="Fine-tuning batch size (default: 16)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Fine-tuning: train and evaluate at this side (default: the backbone's)."),
    devices: int = typer.Option(1, "--devices", help="Fine-tuning: processes/GPUs (more than one trains with DDP through Lightning Fabric)."),
    precision: str = typer.Option("32", "--precision", help="Fine-tuning: 32, bf16-mixed or 16-mixed."),
    l2sp: Optional[float] = typer.Option(None, "--l2sp", help="Fine-tuning: L2-SP strength alpha (pull weights toward the pretrained ones), e.g. 0.01."),
    bss: Optional[float] = typer.Option(None, "--bss", help="Fine-tuning: batch spectral shrinkage strength eta, e.g. 0.001."),
    safe: Optional[str] = typer.Option(None, "--safe", help="Fine-tuning: a safe-transfer step against inheriting the backbone's defects (a backdoor): remos (ReMoS: zero the conv weights least relevant to your training data, by neuron coverage and magnitude, then fine-tune)."),
    prune: Optional[float] = typer.Option(None, "--prune", help="--safe remos: share of the backbone's conv weights to drop (default: 0.05)."),
    resume: bool = typer.Option(False, "--resume", help="Fine-tuning: continue the run in --out from its last checkpoint."),
    refit: bool = typer.Option(False, "--refit", help="Fine-tuning: once early stopping has chosen the epoch count on the validation share, train again on all labels (train + validation) for that many epochs and keep that model."),
    encoding: Optional[str] = EncodingOpt,
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Unlabelled texts (a text file with one document per line, a folder of text files, or a table) to train the backbone on first: -b word2vec, fasttext or simcse:minilm; the data's own texts are added without their labels (cached by corpus and settings)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="Hidden units of --head hidden (or mlp): --head hidden --hidden 32 on 125-d vectors and 2 classes is the word-vector recipe's 4,098-weight head."),
    activation: Optional[str] = typer.Option(None, "--activation", help="Activation of --head hidden: sigmoid (default), relu or tanh."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Multitask: comma-separated label columns, each a task with its own missing labels (name:regression or name:classification sets the kind); one shared trunk with a head per task, beside the single-task model of each task. Built-in: drug-reviews (sentiment, condition, useful, rating), clipart (category, super)."),
    weighting: str = typer.Option("equal", "--weighting", help="Multitask: loss weighting: equal, normalised, uncertainty, gradnorm, dwa, random, several comma-separated, or all (the run keeps the best on validation)."),
    engine: str = EngineOpt,
    feature_precision: str = FeaturePrecisionOpt,
    quiet: bool = QuietOpt,
):
    """Train a shallow head on pretrained features (or fine-tune) and compare it with a from-scratch baseline.

    With no arguments: the built-in clipart dataset, the shipped ImageNet EfficientNet-Lite0 backbone,
    10 labels per class. With --tasks: a multitask model over several label columns.
    """
    from .pipeline import fit_run

    if tasks is not None:
        return _fit_tasks(data, tasks, weighting, backbone=backbone, seed=seed, out_dir=out_dir, cache_dir=cache_dir,
                          strategy=strategy, epochs=epochs, lr=lr, train_batch_size=train_batch_size,
                          image_size=image_size, input_column=input_column, encoding=encoding,
                          on_bad_input=on_bad_input, batch_size=batch_size, workers=workers, device=device,
                          val_fraction=val_fraction, test_fraction=test_fraction, quiet=quiet,
                          unused={"--head": head != "auto", "--labels-per-class": labels_per_class is not None,
                                  "--unlabelled": unlabelled is not None, "--steps": steps is not None,
                                  "--ensemble": ensemble is not None,
                                  "--tau": tau is not None, "--corpus": corpus is not None,
                                  "--hidden": hidden is not None, "--activation": activation is not None,
                                  "--freeze": freeze is not None or freeze_until is not None,
                                  "--l2sp": l2sp is not None, "--bss": bss is not None, "--resume": resume,
                                  "--safe": safe is not None, "--prune": prune is not None, "--refit": refit,
                                  "--devices": devices != 1, "--label-column": label_column is not None})
    check_options(labels_per_class=labels_per_class, seed=seed, batch_size=batch_size, workers=workers, device=device,
                  val_fraction=val_fraction, test_fraction=test_fraction, epochs=epochs, lr=lr,
                  train_batch_size=train_batch_size, image_size=image_size, devices=devices, freeze=freeze,
                  steps=steps, ensemble=ensemble, tau=tau, hidden=hidden)

    lpc = labels_per_class if labels_per_class is not None else "auto"
    params = {k: v for k, v in (("freeze", freeze), ("freeze_until", freeze_until), ("tau", tau), ("rank", rank),
                                ("alpha", lora_alpha), ("bottleneck", bottleneck), ("descriptions", descriptions),
                                ("prompt", prompt)) if v is not None}
    cfg = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", train_batch_size),
                             ("image_size", image_size), ("devices", devices), ("precision", precision),
                             ("safe", safe), ("prune", prune), ("refit", True if refit else None)) if v is not None}
    regs = {k: v for k, v in (("l2sp", {"alpha": l2sp} if l2sp is not None else None),
                              ("bss", {"eta": bss} if bss is not None else None)) if v is not None}
    from .semi import SEMI_METHODS

    semi = strategy in SEMI_METHODS.names()
    tuning = (params.keys() - {"tau"} or regs or devices != 1 or epochs or lr or image_size or safe is not None
              or (refit and not semi))  # a semi-supervised --refit: fit_run says why it does not apply
    if prune is not None and safe is None:
        from .errors import TransferkitError

        raise TransferkitError(f"--prune {prune} sets how much --safe remos drops; add --safe remos")
    if strategy == "probe" and safe is not None:
        from .errors import TransferkitError

        raise TransferkitError(f"--safe {safe} changes the backbone before fine-tuning it, but --strategy probe keeps "
                               "the backbone frozen; use --strategy finetune (or partial, gradual)")
    if strategy == "probe" and (params or tuning or resume):
        from .errors import TransferkitError

        raise TransferkitError("--freeze, --rank, --bottleneck, --epochs, --lr, --image-size, --devices, --l2sp, "
                               "--bss, --tau, --refit and --resume are options of other strategies; add --strategy finetune (or partial, gradual, "
                               "scratch, fixmatch, ...)")
    if semi and semi_level == "features" and tuning:
        from .errors import TransferkitError

        raise TransferkitError("--freeze, --epochs, --lr, --image-size, --devices, --l2sp and --bss train the "
                               "backbone: add --semi-level end-to-end, or leave them out (the features level trains "
                               "a head; set its length with --steps)")
    if not semi and (unlabelled is not None or steps is not None or ensemble is not None or tau is not None):
        from .errors import TransferkitError

        raise TransferkitError("--unlabelled, --steps, --ensemble and --tau are options of the semi-supervised "
                               "strategies; add "
                               f"--strategy {' or '.join(SEMI_METHODS.names())}")
    if semi and semi_level != "features" and (steps is not None or ensemble is not None):
        from .errors import TransferkitError

        raise TransferkitError("--steps and --ensemble set the head trained at --semi-level features; end to end the "
                               "backbone trains for --epochs: leave them out, or use --semi-level features")
    if resume and out_dir is None:
        from .errors import TransferkitError

        raise TransferkitError("--resume needs --out: the run directory of the interrupted run")
    head_params = {k: v for k, v in (("hidden", None if hidden is None else (hidden,)), ("activation", activation))
                   if v is not None}
    res = fit_run(data, backbone=backbone, head=head, labels_per_class=lpc, seed=seed, out=out_dir, encoding=encoding,
                  head_params=head_params or None, corpus=corpus,
                  strategy=strategy, strategy_params=params or None, train_config=cfg or None,
                  regularizers=regs or None, resume=resume, unlabelled=unlabelled, semi_level=semi_level,
                  semi_config={k: v for k, v in (("steps", steps), ("ensemble", ensemble)) if v is not None} or None,
                  cache_dir=cache_dir, baseline=baseline, report=report, on_bad_input=on_bad_input,
                  val_fraction=val_fraction, test_fraction=test_fraction, input_column=input_column,
                  label_column=label_column, batch_size=batch_size, num_workers=workers, device=device,
                  engine=engine, feature_precision=feature_precision,
                  progress=not quiet, log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    table = Table(title=f"test accuracy on {res.splits.get('test', 0)} held-out samples "
                        f"(trained on {res.splits.get('train', 0)} + {res.splits.get('val', 0)} validation labels)")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_column("macro-F1", justify="right")
    table.add_column("seconds", justify="right")
    for row in res.comparison:
        table.add_row(row["name"], _pct(row["accuracy"]), _pct(row["macro_f1"]), f"{row['seconds']:.1f}"
                      + (" (cached)" if row.get("cached") else ""))
    out.print(table)
    if res.head_reason:
        out.print(f"head: [bold]{res.head}[/bold] ({as_flags(res.head_reason)})", highlight=False)
    if res.advice is not None:
        out.print(f"strategy auto chose [bold]{res.advice['strategy']}[/bold]: " + "; ".join(res.advice["reasons"]))
    if res.baseline is not None:
        from .report.metrics import difference_text

        diff = next(r["difference"] for r in res.comparison if r.get("kind") == "scratch")
        text = difference_text(diff)
        gain, rest = text.split(" (", 1)
        out.print(f"transfer gain over training from scratch: [bold]{gain}[/bold] ({rest}")
    for w in res.warnings:
        out.print(f"[bold yellow]warning:[/bold yellow] {w}")
    if res.skipped:
        out.print(f"skipped {len(res.skipped)} unreadable input(s), listed in {res.run_dir / 'skipped.csv'}")
    out.print(f"run directory: {res.run_dir}" + (f"  (report: {res.run_dir / 'report.html'})" if report else ""))


@app.command()
@_friendly
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory written by `transferkit fit`."),
    inputs: List[str] = typer.Argument(..., help="Image files, folders, a table, or a built-in dataset name."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV to write (default: print a table)."),
    on_bad_input: str = typer.Option("error", "--on-bad-input", help="error or skip (skipped rows get the reason in 'error')."),
    input_column: Optional[str] = typer.Option(None, "--input-column", help="Table column with image paths or texts."),
    encoding: Optional[str] = EncodingOpt,
    cache_dir: Optional[Path] = CacheOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Feature-extraction batch size."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    engine: str = EngineOpt,
    feature_precision: str = FeaturePrecisionOpt,
    quiet: bool = QuietOpt,
):
    """Predict classes with class probabilities for new inputs."""
    from .data import collect_inputs
    from .pipeline import check_choice
    from .runs import load_run, write_csv

    check_choice(on_bad_input, ("error", "skip"), "on_bad_input")
    check_options(batch_size=batch_size, workers=workers, device=device)
    from .features.engines import check_engine_options

    check_engine_options(engine, feature_precision)
    run = load_run(run_dir)
    if encoding is not None:  # tables are read here, with the encoding; the run predicts the loaded inputs
        inputs = collect_inputs(inputs, input_column=input_column, on_bad_input=on_bad_input, encoding=encoding)
    df = run.predict(inputs, on_bad_input=on_bad_input, batch_size=batch_size, num_workers=workers,
                     cache_dir=cache_dir, device=device, progress=not quiet, input_column=input_column,
                     engine=engine, feature_precision=feature_precision)
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            write_csv(output, df)
        except OSError as e:
            from .errors import OutputError

            raise OutputError(f"cannot write {output} ({e.strerror or e}); choose another --output") from e
        out.print(f"wrote {len(df)} predictions to {output}")
        return
    table = Table()
    for col in ("input", "prediction", "confidence", "error"):
        table.add_column(col, justify="right" if col == "confidence" else "left")
    for _, r in df.iterrows():
        table.add_row(str(r["input"]), str(r["prediction"]), f"{r['confidence']:.3f}", str(r["error"]))
    out.print(table)


@app.command()
@_friendly
def extract(
    data: str = typer.Argument(..., help="Built-in dataset, folder or table."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone name (see `transferkit backbones`)."),
    cache_dir: Optional[Path] = CacheOpt,
    on_bad_input: str = typer.Option("error", "--on-bad-input", help="error: stop at unreadable or missing inputs; skip: leave them out and list them."),
    input_column: Optional[str] = typer.Option(None, "--input-column", help="Table column with image paths or texts."),
    encoding: Optional[str] = EncodingOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Feature-extraction batch size."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    engine: str = EngineOpt,
    feature_precision: str = FeaturePrecisionOpt,
    devices: int = typer.Option(1, "--devices", help="Processes (GPUs, or CPU processes) sharing the extraction through Lightning Fabric; each writes its shard of the data into the same cache, with the same features as one process."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines sharing the extraction (run the same command on each through torchrun or SLURM's srun; see the README)."),
    quiet: bool = QuietOpt,
):
    """Extract features into the cache (resumable: rerun after an interruption to continue)."""
    from .backbones import create_backbone
    from .features.engines import check_engine_options
    from .features.featureset import build_featureset

    check_options(batch_size=batch_size, workers=workers, device=device, devices=devices, num_nodes=num_nodes)
    check_engine_options(engine, feature_precision)
    say = None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False))
    bb = create_backbone(backbone)
    if devices * num_nodes > 1:
        from .features.distributed import extract_distributed

        fs = extract_distributed(data, backbone, devices=devices, num_nodes=num_nodes,
                                 accelerator="cpu" if device == "cpu" else "cuda" if device.startswith("cuda") else "auto",
                                 cache_dir=cache_dir, batch_size=batch_size, num_workers=workers, engine=engine,
                                 feature_precision=feature_precision, input_column=input_column, encoding=encoding,
                                 on_bad_input=on_bad_input, progress=not quiet, log=say)
    else:
        fs = build_featureset(data, bb, cache_dir=cache_dir, labels="ignore", split=False, on_bad_input=on_bad_input,
                              batch_size=batch_size, num_workers=workers, device=device, input_column=input_column,
                              encoding=encoding, progress=not quiet, engine=engine, feature_precision=feature_precision,
                              log=say)
    n = len(fs) + len(fs.skipped)
    out.print(f"{n} {fs.source.modality}s x {bb.num_features} features from {bb.name}: "
              f"{fs.extracted} extracted, {len(fs) - fs.extracted} from cache, {fs.seconds:.1f}s")
    out.print(f"features: {fs.path}")
    if fs.skipped:
        out.print(f"[yellow]{len(fs.skipped)} unreadable input(s) left out, e.g. {fs.skipped[0][0]}: "
                  f"{fs.skipped[0][1]}[/yellow]")


@app.command()
@_friendly
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `transferkit fit`."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, torchscript or safetensors."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: <run>/model/network.<ext>)."),
):
    """Export the run's whole network (backbone + head, preprocessing in a JSON file beside it); ONNX and
    TorchScript files are checked against PyTorch before this returns."""
    from .runs import load_run
    from .train.export import EXPORT_FORMATS, export_model

    if format not in EXPORT_FORMATS:
        from .errors import TransferkitError

        raise TransferkitError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    run = load_run(run_dir)
    ext = {"onnx": "onnx", "torchscript": "pt", "safetensors": "safetensors"}[format]
    path = output if output is not None else run.path / "model" / f"network.{ext}"
    written = export_model(run.network(), run.model_info["preprocessing"], run.classes, path, format,
                           extra={"run": str(run.path), "strategy": run.model_info.get("strategy", "probe")})
    out.print(f"wrote {written} (+ {written.name}.json with the preprocessing and class names)")


@app.command()
@_friendly
def advise(
    data: str = typer.Argument(..., help="Built-in dataset, folder of class sub-folders, or table."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone name (see `transferkit backbones`)."),
    labels_per_class: Optional[int] = typer.Option(None, "--labels-per-class", "-n", help="Labelled budget per class, as in `fit` (default: split by fractions)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    input_column: Optional[str] = InputColOpt,
    label_column: Optional[str] = LabelColOpt,
    encoding: Optional[str] = EncodingOpt,
    cache_dir: Optional[Path] = CacheOpt,
    quiet: bool = QuietOpt,
):
    """Say whether to freeze the backbone and train a head, or fine-tune part or all of it, and why: from the
    labelled data size and how near the data are to the backbone's source (its batch-norm statistics on the
    inputs, or how well the frozen features already fit the task), without training."""
    from .transferability.advisor import advise_data

    check_options(labels_per_class=labels_per_class, seed=seed)
    advice = advise_data(data, backbone, labels_per_class=labels_per_class, cache_dir=cache_dir, seed=seed,
                         input_column=input_column, label_column=label_column, encoding=encoding,
                         progress=not quiet,
                         log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    out.print(f"advice: [bold]--strategy {advice.strategy}[/bold]")
    for r in advice.reasons:
        out.print(f"  - {r}")


@app.command()
@_friendly
def compare(
    data: str = typer.Argument(..., help="Built-in dataset, folder of class sub-folders, or table (images)."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone name (see `transferkit backbones`)."),
    strategies: str = typer.Option("scratch,probe,partial,finetune", "--strategies", help="Comma-separated: probe, finetune, partial, gradual, scratch, cnn (small CNN from raw pixels), auto (the advisor's pick, scored and judged)."),
    labels_per_class: str = typer.Option("5,20", "--labels-per-class", "-n", help="Comma-separated labelled budgets per class."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per budget (one split each, shared by every strategy)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Fine-tuning: maximum epochs (default: 15, early stopping)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Train and evaluate at this side (default: the backbone's)."),
    grayscale: bool = typer.Option(False, "--grayscale", help="Convert the images to grayscale first (the colour-vs-grayscale experiment)."),
    max_test: Optional[int] = typer.Option(None, "--max-test", help="Evaluate on at most this many test items per cell (stratified)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; rerun with the same --out to resume (default: runs/<time>-compare-...)."),
    input_column: Optional[str] = InputColOpt,
    label_column: Optional[str] = LabelColOpt,
    encoding: Optional[str] = EncodingOpt,
    cache_dir: Optional[Path] = CacheOpt,
    quiet: bool = QuietOpt,
):
    """Run several strategies on the same splits and seeds: accuracy (mean ± std) and wall time per strategy and
    label budget, the winner per budget, and negative transfer flagged."""
    from .compare import compare_strategies
    from .errors import TransferkitError

    try:
        budgets = [int(b) for b in labels_per_class.split(",") if b.strip()]
    except ValueError:
        raise TransferkitError(f"--labels-per-class must be comma-separated integers, got {labels_per_class!r}") from None
    if not budgets:
        raise TransferkitError("--labels-per-class needs at least one budget, e.g. 5,20")
    for b in budgets:
        check_options(labels_per_class=b)
    check_options(seeds=seeds, epochs=epochs, image_size=image_size, max_test=max_test)
    cfg = {k: v for k, v in (("epochs", epochs), ("image_size", image_size)) if v is not None}
    from .pipeline import engine_settings

    res = compare_strategies(data, backbone=backbone, strategies=[x.strip() for x in strategies.split(",") if x.strip()],
                             labels_per_class=budgets, seeds=list(range(seeds)),
                             config=engine_settings(cfg or None, None, 0)["config"], grayscale=grayscale,
                             cache_dir=cache_dir, out=out_dir, progress=not quiet, max_test=max_test,
                             input_column=input_column, label_column=label_column, encoding=encoding,
                             log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    table = Table(title=f"test accuracy, mean ± std over {seeds} seed(s)")
    for col in ("labels/class", "strategy", "accuracy", "wall s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for a in res.aggregates:
        table.add_row(str(a["budget"]), str(a["strategy"]),
                      f"{100 * a['accuracy_mean']:.1f} ± {100 * a['accuracy_std']:.1f}", f"{a['seconds_mean']:.1f}")
    out.print(table)
    for n, w in res.winners.items():
        out.print(f"{n} labels per class: [bold]{w}[/bold] wins")
    if res.advisor:
        from .compare import advisor_sentence

        out.print(advisor_sentence(res.advisor))
    for w in res.warnings:
        out.print(f"[bold yellow]warning:[/bold yellow] {w}")
    out.print(f"results: {res.out}")


def _int_list(text: str, flag: str) -> list[int]:
    """A comma-separated list of integers from an option, or a one-line error naming the flag."""
    from .errors import TransferkitError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TransferkitError(f"{flag} must be comma-separated integers, e.g. 1,5; got {text!r}") from None
    if not values:
        raise TransferkitError(f"{flag} needs at least one value, e.g. 1,5")
    return values


@app.command()
@_friendly
def fewshot(
    data: str = typer.Argument(..., help="Built-in dataset, folder of class sub-folders, or table: the novel classes are drawn from it."),
    novel: Optional[str] = typer.Option(None, "--novel", help="Comma-separated classes to draw episodes from (default: every class of DATA not named in --base)."),
    base: Optional[str] = typer.Option(None, "--base", help="Comma-separated base classes, never in an episode: heads adapt on their features (the ncm-cl2n centre). Classes of DATA, or of --base-data (default there: all)."),
    base_data: Optional[str] = typer.Option(None, "--base-data", help="Another dataset holding the base classes (cross-domain, e.g. --base-data mnist5k with DATA digits)."),
    ways: int = typer.Option(5, "--ways", help="Classes per episode (N-way)."),
    shots: str = typer.Option("1,5", "--shots", help="Comma-separated labelled examples per class (K-shot), one evaluation each."),
    queries: int = typer.Option(15, "--queries", help="Query items per class in an episode (scored, never trained on)."),
    episodes: int = typer.Option(600, "--episodes", help="Episodes per shot count; the 95% interval is 1.96 sd / sqrt(episodes)."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Comma-separated heads (default: protonet, ncm-l2n, ncm-cl2n, logreg, logreg-l2n, chen-baseline, chen-baseline++)."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone name (see `transferkit backbones`)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the episodes and of the heads that train."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for fewshot.json and fewshot.csv (default: runs/<time>-<data>-<backbone>-fewshot)."),
    cache_dir: Optional[Path] = CacheOpt,
    on_bad_input: str = typer.Option("error", "--on-bad-input", help="error: stop at unreadable inputs; skip: leave them out."),
    input_column: Optional[str] = InputColOpt,
    label_column: Optional[str] = LabelColOpt,
    encoding: Optional[str] = EncodingOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Feature-extraction batch size."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = QuietOpt,
):
    """Few-shot evaluation: N-way K-shot episodes over the novel classes, every head fitted on each episode's support
    features and scored on its queries; mean accuracy ± 95% confidence interval per head and shot count."""
    from .fewshot import fewshot_run

    shot_list = _int_list(shots, "--shots")
    for k in shot_list:
        check_options(shots=k)
    check_options(ways=ways, queries=queries, episodes=episodes, seed=seed, batch_size=batch_size, workers=workers,
                  device=device)
    head_list = [h.strip() for h in heads.split(",") if h.strip()] if heads is not None else None
    if head_list == []:
        from .errors import TransferkitError

        raise TransferkitError("--heads needs at least one head, e.g. ncm-cl2n,logreg")
    res = fewshot_run(data, novel=novel, base=base, base_data=base_data, backbone=backbone, ways=ways,
                      shots=shot_list, queries=queries, episodes=episodes, heads=head_list, seed=seed, out=out_dir,
                      cache_dir=cache_dir, on_bad_input=on_bad_input, batch_size=batch_size, num_workers=workers,
                      device=device, input_column=input_column, label_column=label_column, encoding=encoding,
                      progress=not quiet,
                      log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    r, st = res.result, res.result.settings
    where = res.data + (f" (base classes from {res.base_data})" if res.base_data else "")
    out.print(f"data: {where}", highlight=False)  # on its own line: a table title wraps at the table's width
    table = Table(title=f"{st['ways']}-way accuracy %, mean ± 95% CI over {st['episodes']} episodes, "
                        f"{st['queries']} queries per class")
    table.add_column("head")
    for k in st["shots"]:
        table.add_column(f"{k}-shot", justify="right")
    leaders = {k: r.leaders(k) for k in st["shots"]}
    for h in st["heads"]:
        cells = []
        for k in st["shots"]:
            row = r.row(h["label"], k)
            text = f"{100 * row['mean']:.2f} ± {100 * row['ci95']:.2f}"
            cells.append(f"[bold]{text}[/bold]" if h["label"] in leaders[k] else text)
        table.add_row(h["label"], *cells)
    out.print(table)
    for k in st["shots"]:
        out.print(f"{k}-shot: best or within the best's 95% interval (bold): {', '.join(leaders[k])}")
    out.print(f"novel classes: {', '.join(st['novel'])}")
    if st["base"] or st["base_items"]:
        out.print(f"base: {', '.join(st['base'] or []) or 'all classes'} ({st['base_items']} items)")
    out.print(f"results: {res.run_dir / 'fewshot.json'}")


_DEFAULT_RANK = {"image": "lite0,lite1,lite2,lite0-random", "text": "minilm,glove-50d"}


@app.command()
@_friendly
def adapt(
    source: Optional[str] = typer.Option(None, "--source", help="Labelled source data: built-in dataset, folder or table."),
    target: Optional[str] = typer.Option(None, "--target", help="Target data; its labels, if any, only score the result."),
    method: str = typer.Option("source-only,dann", "--method", "-m", help="Comma-separated methods, or 'all' (see --list)."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone for cached features, or a network trained on the pixels end to end ('lenet': the small CNN of the digit protocol, from scratch)."),
    finetune: bool = typer.Option(False, "--finetune", help="Train the backbone end to end with the method's loss (images at --image-size)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="End-to-end input side (default: the network's own, 32 for lenet; 64 for pretrained backbones)."),
    target_labels: Optional[int] = typer.Option(None, "--target-labels", help="Labelled target samples per class (semi-supervised DA; needed by tradaboost, finetune-target)."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds (one target split and one training run each)."),
    steps: int = typer.Option(1000, "--steps", help="Training steps of the deep methods."),
    trade_off: float = typer.Option(1.0, "--trade-off", help="Weight of the alignment term."),
    selection: str = typer.Option("dev", "--selection", help="Checkpoint choice without target labels: dev, snd, entropy, source-val, last."),
    device: str = typer.Option("auto", "--device", help="Training device of the deep methods: auto, cpu, cuda, cuda:1, ..."),
    precision: str = typer.Option("32", "--precision", help="32, bf16-mixed or 16-mixed (GPU), through Lightning Fabric."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; rerun with the same --out to resume."),
    domain_column: Optional[str] = typer.Option(None, "--domain-column", help="Split a table into domains by this column (with --source-domain, --target-domain; --target defaults to the same table)."),
    source_domain: Optional[str] = typer.Option(None, "--source-domain", help="Value of --domain-column that marks the source rows."),
    target_domain: Optional[str] = typer.Option(None, "--target-domain", help="Value of --domain-column that marks the target rows."),
    list_methods: bool = typer.Option(False, "--list", help="List the methods and exit."),
    encoding: Optional[str] = EncodingOpt,
    cache_dir: Optional[Path] = CacheOpt,
    quiet: bool = QuietOpt,
):
    """Domain adaptation from a labelled --source to a --target domain: every method on the same splits, with
    source-only as the baseline, checkpoints chosen without target labels, a table and report.html."""
    from .errors import TransferkitError

    check_options(target_labels=target_labels, seeds=seeds, steps=steps, trade_off=trade_off, image_size=image_size,
                  device=device)

    if list_methods:
        from .adapt import list_all_methods

        table = Table(title="domain-adaptation methods")
        table.add_column("method")
        table.add_column("family")
        for name, fam in list_all_methods():
            table.add_row(name, fam)
        out.print(table)
        return
    if not source or not (target or domain_column):
        raise TransferkitError("give both --source and --target (e.g. --source mnist5k --target digits), or one table "
                               "with --domain-column, --source-domain and --target-domain")
    from .adapt import AdaptConfig, adapt_compare

    cfg = AdaptConfig(steps=steps, trade_off=trade_off, selection=selection, eval_every=max(steps // 5, 1),
                      device=device, precision=precision)
    cfg.validate()
    res = adapt_compare(source, target, methods=[m.strip() for m in method.split(",")], backbone=backbone,
                        encoding=encoding,
                        finetune=finetune, image_size=image_size, seeds=list(range(seeds)),
                        target_labels=target_labels, config=cfg, cache_dir=cache_dir, out=out_dir, progress=not quiet,
                        domain_column=domain_column, source_domain=source_domain, target_domain=target_domain,
                        log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    table = Table(title=f"{res.settings['source_name']} → {res.settings['target_name']}: target accuracy, mean ± std "
                        f"over {seeds} seed(s)")
    for col in ("method", "target acc %", "source val %", "seconds", "checkpoint chosen by"):
        table.add_column(col, justify="left" if col in ("method", "checkpoint chosen by") else "right")
    for r in res.rows:
        table.add_row(r["method"] + (" ⚠" if r.get("negative") else ""),
                      "-" if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}",
                      "-" if r["source_val_mean"] is None else f"{100 * r['source_val_mean']:.1f}",
                      f"{r['seconds_mean']:.1f}", str(r["selection"]))
    out.print(table)
    for w in res.warnings:
        out.print(f"[bold yellow]warning:[/bold yellow] {w}")
    out.print(f"results: {res.out}")


@app.command()
@_friendly
def generalize(
    domains: Optional[str] = typer.Option(None, "--domains", "-d", help="Comma-separated labelled domains (built-in datasets, folders, tables), e.g. mnist5k,digits,mnist-m,synth-digits; or one table / built-in dataset split by its domain column (rotated-mnist, colored-mnist, or a table with --domain-column)."),
    leave_out: str = typer.Option("each", "--leave-out", help="The unseen target domain(s), comma-separated, or 'each' (leave-one-domain-out over every domain)."),
    method: str = typer.Option("erm,coral,groupdro,irm,vrex,mixup", "--method", "-m", help="Comma-separated methods, or 'all' (see --list); erm always runs as the baseline."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone of the cached features (probe cost), or a network trained on the pixels end to end ('lenet', 'small-cnn'; mixstyle needs one)."),
    finetune: bool = typer.Option(False, "--finetune", help="Train a pretrained backbone end to end (images at --image-size)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="End-to-end input side (default: the network's own, 32 for lenet)."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds (one validation split and one training run each)."),
    steps: int = typer.Option(1000, "--steps", help="Training steps (one batch of every training domain each)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Batch size per training domain."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam's learning rate (DomainBed's default)."),
    max_per_domain: Optional[int] = typer.Option(None, "--max-per-domain", help="Keep a fixed class-stratified subset of at most this many items per domain."),
    domain_column: Optional[str] = typer.Option(None, "--domain-column", help="Split one table into domains by this column."),
    device: str = typer.Option("auto", "--device", help="Training device: auto, cpu, cuda, cuda:1, ..."),
    precision: str = typer.Option("32", "--precision", help="32, bf16-mixed or 16-mixed (GPU)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; rerun with the same --out to resume."),
    list_methods: bool = typer.Option(False, "--list", help="List the methods and exit."),
    encoding: Optional[str] = EncodingOpt,
    cache_dir: Optional[Path] = CacheOpt,
    quiet: bool = QuietOpt,
):
    """Domain generalisation: train on labelled domains, score on an unseen one (leave-one-domain-out). Checkpoints
    are chosen on a validation split of the training domains; the oracle (chosen on target labels) is shown apart."""
    from .errors import TransferkitError

    check_options(seeds=seeds, steps=steps, batch_size=batch_size, lr=lr, image_size=image_size,
                  max_per_domain=max_per_domain, device=device)
    if list_methods:
        from .generalize import list_dg_methods

        table = Table(title="domain-generalisation methods")
        for col in ("method", "paper", "where"):
            table.add_column(col)
        for name, paper, e2e in list_dg_methods():
            table.add_row(name, paper, "end to end only" if e2e else "probe cost or end to end")
        out.print(table)
        return
    if not domains:
        raise TransferkitError("give the domains: --domains mnist5k,digits,mnist-m,synth-digits (or one table with "
                               "--domain-column, or rotated-mnist / colored-mnist)")
    from .generalize import DGConfig, generalize as run_generalize

    cfg = DGConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=max(steps // 10, 1), device=device,
                   precision=precision)
    cfg.validate()
    res = run_generalize(domains, leave_out=leave_out, methods=[m.strip() for m in method.split(",")],
                         backbone=backbone, finetune=finetune, image_size=image_size, seeds=list(range(seeds)),
                         config=cfg, max_per_domain=max_per_domain, domain_column=domain_column, encoding=encoding,
                         cache_dir=cache_dir, out=out_dir, progress=not quiet,
                         log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    table = Table(title=f"held-out domain accuracy %, mean ± std over {seeds} seed(s); checkpoint chosen on the "
                        "training domains' validation split")
    for col in ("target", "method", "accuracy %", "vs ERM", "oracle % (target val)"):
        table.add_column(col, justify="left" if col in ("target", "method") else "right")
    for r in res.rows:
        table.add_row(r["target"], r["method"], f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}",
                      "" if r.get("vs_erm") is None else f"{100 * r['vs_erm']:+.1f}",
                      f"{100 * r['oracle_mean']:.1f} ± {100 * r['oracle_std']:.1f}")
    out.print(table)
    summary = Table(title="over the held-out domains (oracle: checkpoint chosen on target labels, for reference only)")
    for col in ("method", "mean %", "vs ERM", "worst %", "worst domain", "oracle mean %", "selection loss"):
        summary.add_column(col, justify="left" if col in ("method", "worst domain") else "right")
    for s in res.summary:
        summary.add_row(s["method"], f"{100 * s['mean']:.1f}",
                        "" if s.get("mean_vs_erm") is None else f"{100 * s['mean_vs_erm']:+.1f}",
                        f"{100 * s['worst']:.1f}", s["worst_target"], f"{100 * s['oracle_mean']:.1f}",
                        f"{100 * s['selection_loss']:.1f}")
    out.print(summary)
    out.print(f"results: {res.out}")


@app.command()
@_friendly
def zeroshot(
    data: str = typer.Argument(..., help="Built-in dataset, folder (class sub-folders optional), or table; labels, if any, only score the result (and train the --seen classes)."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="The candidate classes: \"cat,dog,...\", \"fresh=a positive review,rotten=a negative review\" (label=description; a|b for several), or a .json / .txt file (default: the data's labels, e.g. its folder names, made readable)."),
    method: str = typer.Option("auto", "--method", "-m", help="auto, similarity, conse, ridge, eszsl or devise (--list)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Backbone of the inputs (default: lite0 for images, the --text-backbone for texts; a clip: model for prompt similarity on images)."),
    text_backbone: Optional[str] = typer.Option(None, "--text-backbone", help="Encoder of the class names: minilm (default), glove-50d, hf:<folder>; a clip: backbone uses its own text tower."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt set (name, picture, photo, review) or one template with {} (default: name, the class name alone)."),
    seen: Optional[str] = typer.Option(None, "--seen", help="Comma-separated classes with labelled items in DATA to learn from: generalized zero-shot, scored with the harmonic mean of seen and unseen accuracy."),
    source_texts: str = typer.Option("description", "--source-texts", help="How the ImageNet classes are worded for conse / ridge / eszsl: first-name, names, description (names and WordNet gloss)."),
    transductive: bool = typer.Option(True, "--transductive/--inductive", help="Pure zero-shot: use the inputs being classified (never their labels) to correct ConSE's source prior and centre class scores (default), or classify each input on its own."),
    seed: int = typer.Option(0, "--seed", help="Seed of the seen classes' split and of the method."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<time>-<data>-zeroshot-<method>)."),
    list_methods: bool = typer.Option(False, "--list", help="List the methods and prompt sets and exit."),
    on_bad_input: str = typer.Option("error", "--on-bad-input", help="error or skip."),
    input_column: Optional[str] = InputColOpt,
    label_column: Optional[str] = LabelColOpt,
    encoding: Optional[str] = EncodingOpt,
    cache_dir: Optional[Path] = CacheOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Feature-extraction batch size."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = QuietOpt,
):
    """Classify into classes known only by their names: texts by similarity to the label descriptions, images by
    ConSE, a name-to-classifier map (ridge, ESZSL, DeViSE) or a CLIP model's prompts; writes a run that
    `transferkit predict` uses."""
    if list_methods:
        from .zeroshot import PROMPTS, ZEROSHOT_METHODS

        table = Table(title="zero-shot methods")
        for col in ("method", "classifies", "needs", "paper"):
            table.add_column(col)
        for name in ZEROSHOT_METHODS.names():
            e = ZEROSHOT_METHODS.get(name)
            needs = ", ".join(k for k, v in (("labelled seen classes", e.needs_seen), ("a source classifier (lite0)",
                                                                                       e.needs_source),
                                             ("one image-text space (clip:)", e.shared_space and e.modality != "text"))
                              if v) or "-"
            table.add_row(name, e.modality, needs, str(e.paper))
        out.print(table)
        ptable = Table(title="prompt sets (--prompt)")
        ptable.add_column("name")
        ptable.add_column("templates")
        for name in PROMPTS.names():
            ptable.add_row(name, " | ".join(PROMPTS.create(name)))
        out.print(ptable)
        return
    from .pipeline import check_choice
    from .zeroshot import zeroshot_run

    check_choice(on_bad_input, ("error", "skip"), "on_bad_input")
    check_options(seed=seed, batch_size=batch_size, workers=workers, device=device)
    res = zeroshot_run(data, classes=classes, method=method, backbone=backbone, text_backbone=text_backbone,
                       prompt=prompt, seen=seen, source_texts=source_texts, transductive=transductive, seed=seed,
                       out=out_dir,
                       cache_dir=cache_dir, on_bad_input=on_bad_input, batch_size=batch_size, num_workers=workers,
                       device=device, input_column=input_column, label_column=label_column, encoding=encoding,
                       progress=not quiet,
                       log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    m = res.metrics
    out.print(f"zero-shot {res.method} over {len(res.classes)} classes"
              + (f" ({len(res.seen)} seen)" if res.seen else "") + f": {len(res.predictions)} predictions")
    if m is not None:
        line = (f"accuracy {_pct(m['accuracy'])} on {m['scored_items']} labelled items (chance {_pct(m['chance'])}), "
                f"macro-F1 {_pct(m.get('macro_f1'))}")
        out.print(line)
        if "gzsl" in m:
            g = m["gzsl"]
            out.print(f"generalized zero-shot: seen {_pct(g['seen'])}, unseen {_pct(g['unseen'])}, harmonic mean "
                      f"{_pct(g['harmonic'])} (calibration {g['gamma'] if g['gamma'] is None else round(g['gamma'], 4)}"
                      ", chosen on seen classes only)")
    else:
        counts = res.predictions["prediction"].value_counts()
        out.print("predicted: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if res.run_dir is not None:
        out.print(f"run directory: {res.run_dir}  (predict new inputs: transferkit predict {res.run_dir} INPUTS)")


@app.command()
@_friendly
def rank(
    data: str = typer.Argument(..., help="Built-in dataset, folder of class sub-folders, or table."),
    backbones: Optional[str] = typer.Option(None, "--backbones", "-b", help="Comma-separated backbone names (default: the shipped ones of the data's modality: lite0,lite1,lite2,lite0-random for images, minilm,glove-50d for texts)."),
    labels_per_class: Optional[int] = typer.Option(None, "--labels-per-class", "-n", help="Labelled budget per class; scores use only the labelled part (default: split by fractions)."),
    scores: Optional[str] = typer.Option(None, "--scores", help="Comma-separated scores (default: all that apply): logme, leep, nce, h_score, h_score_shrinkage, knn, probe."),
    verify: bool = typer.Option(False, "--verify", help="Also train a logistic head on each backbone and show its test accuracy beside the scores."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the subsample."),
    max_samples: int = typer.Option(5000, "--max-samples", help="Score at most this many labelled samples (stratified)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for rank.json and report.html (default: runs/<time>-<data>-rank)."),
    cache_dir: Optional[Path] = CacheOpt,
    input_column: Optional[str] = typer.Option(None, "--input-column", help="Table column with image paths or texts."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Table column with the labels."),
    encoding: Optional[str] = EncodingOpt,
    quiet: bool = QuietOpt,
):
    """Rank pretrained backbones for your data by transferability scores (LogME, LEEP, NCE, H-score), in seconds
    from cached features, before any training."""
    from .data import load_data
    from .runs import default_run_dir, prepare_run_dir, write_json
    from .transferability.rank import rank_backbones, rank_correlations, ranking_table, write_rank_report

    check_options(labels_per_class=labels_per_class, seed=seed, max_samples=max_samples)

    source = load_data(data, input_column=input_column, label_column=label_column, encoding=encoding)
    names = [b.strip() for b in (backbones or _DEFAULT_RANK[source.modality]).split(",") if b.strip()]
    wanted = [x.strip() for x in scores.split(",") if x.strip()] if scores else None
    run_dir = prepare_run_dir(out_dir if out_dir is not None else default_run_dir(source.name, "rank"), "rank")
    rows = rank_backbones(source, names, labels_per_class=labels_per_class, scores=wanted, cache_dir=cache_dir,
                          verify=verify, seed=seed, max_samples=max_samples, progress=not quiet,
                          log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    out.print(ranking_table(rows))
    corr = rank_correlations(rows)
    for s, c in corr.items():
        out.print(f"{s}: Kendall's tau {c['kendall_tau']:+.2f}, Pearson r {c['pearson_r']:+.2f} with the test accuracy "
                  f"({c['n']} backbones)")
    if verify and not corr:
        verified = sum(r.get("accuracy") is not None for r in rows)
        out.print(f"no correlation between the scores and the test accuracy: it needs at least 3 verified backbones "
                  f"with different scores, and {verified} were verified; rank more backbones with -b a,b,c")
    write_json(run_dir / "rank.json", {"data": str(data), "labels_per_class": labels_per_class, "seed": seed,
                                       "rows": rows, "correlations": corr})
    write_rank_report(run_dir / "report.html", rows, title=f"transferkit rank: {source.name}",
                      summary=[("data", f"{source.origin or source.name} ({len(source)} {source.modality}s, "
                                        f"{len(source.classes)} classes)"),
                               ("labels per class", str(labels_per_class or "all (fractions)")),
                               ("verified", "yes: logistic head test accuracy" if verify else "no (--verify)")])
    out.print(f"run directory: {run_dir}  (report: {run_dir / 'report.html'})")


@cache_app.command("list")
@_friendly
def cache_list(cache_dir: Optional[Path] = CacheOpt):
    """List cached features: backbone, datasets, size on disk."""
    from .features import FeatureStore

    store = FeatureStore(cache_dir)
    entries = store.entries()
    if not entries:
        out.print(f"the feature cache at {store.root} is empty")
        return
    table = Table(title=f"feature cache: {store.root}")
    for col in ("backbone", "key", "datasets", "items", "size"):
        table.add_column(col, justify="right" if col in ("items", "size") else "left")
    for e in entries:
        names = ", ".join(d["origin"] for d in e["datasets"]) or "(partial)"
        table.add_row(e["backbone"], e["key"], names, str(sum(d["n"] for d in e["datasets"])), _size(e["bytes"]))
    out.print(table)


@cache_app.command("clear")
@_friendly
def cache_clear(
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Only this backbone's features (default: every backbone's, plus cached results and generated datasets)."),
    cache_dir: Optional[Path] = CacheOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking (needed where no terminal can answer, e.g. in scripts)."),
):
    """Delete cached features (all, or one backbone's): lists what will be deleted and asks first.

    Only files transferkit wrote are deleted; anything else under the cache folder is kept.
    """
    from .errors import TransferkitError
    from .features import FeatureStore

    store = FeatureStore(cache_dir)
    plan = store.clear_plan(backbone)
    if not plan:
        what = f"features of {backbone}" if backbone else "features, results or datasets"
        out.print(f"nothing to delete: no cached {what} in {store.root}")
        return
    table = Table(title=f"to delete from {store.root} (only files transferkit wrote)")
    for col in ("what", "folder", "files", "size"):
        table.add_column(col, justify="right" if col in ("files", "size") else "left")
    for g in plan:
        table.add_row(g["what"], str(g["path"]), str(len(g["files"])), _size(g["bytes"]))
    out.print(table)
    n_files, total = sum(len(g["files"]) for g in plan), sum(g["bytes"] for g in plan)
    if not yes:
        if not _stdin_is_tty():
            raise TransferkitError(f"cache clear would delete {n_files} file(s), {_size(total)}, listed above; no "
                                   "terminal is attached to confirm: rerun with --yes to delete them")
        if not typer.confirm(f"Delete these {n_files} file(s), {_size(total)}?", default=False):
            out.print("nothing deleted")
            raise typer.Exit(1)
    freed = store.clear(backbone)
    out.print(f"freed {_size(freed)} from {store.root}")


def _stdin_is_tty() -> bool:
    """Whether a person can answer a prompt (standard input is a terminal)."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        return False


@app.command()
@_friendly
def backbones():
    """List backbones: modality, feature size, and whether they work here offline."""
    from .backbones import list_backbones

    table = Table(title="backbones")
    for col in ("name", "modality", "features", "installed", "offline", "description"):
        table.add_column(col)
    for s in list_backbones():
        table.add_row(s.name + ("<arg>" if s.is_family else ""), s.modality, str(s.num_features or "varies"),
                      "yes" if s.installed() else "no", "yes" if s.offline else "needs internet", s.description)
    out.print(table)


@app.command()
@_friendly
def datasets():
    """List built-in datasets and whether they are installed."""
    from .data import list_datasets

    table = Table(title="built-in datasets")
    for col in ("name", "modality", "installed", "description"):
        table.add_column(col)
    for d in list_datasets():
        table.add_row(d.name, d.modality, "yes" if d.installed() else f"no: {d.install}", d.description)
    out.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------------------------------------------------
# text from the user's own corpus (issue 12)
@app.command("inspect-backbone")
@_friendly
def inspect_backbone_cmd(
    backbone: str = typer.Argument(..., help="A backbone name: lite0, file:<saved folder>, file:<arch>@<checkpoint>, ... (see `transferkit backbones`)."),
    data: Optional[str] = typer.Option(None, "--data", help="Clean images for the trigger sweep: a built-in dataset name, a folder or a table (without it, only the digests are checked)."),
    images: int = typer.Option(200, "--images", help="How many images of --data to sweep (a seeded sample)."),
    seed: int = typer.Option(0, "--seed", help="Which images are sampled."),
    show: int = typer.Option(8, "--show", help="Sweep rows to print (most suspicious first)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the whole report (every swept patch) as JSON."),
):
    """Check a downloaded backbone offline: its weights' SHA-256 against the published one, and a sweep of patch
    triggers on clean images (a patch that pushes every image's features the same long way looks like a backdoor). Exit code 3 when a digest does not match or a patch is flagged. Passing proves nothing: see the note
    it prints."""
    import json

    from ._io import atomic_write_bytes
    from .safe.inspect import inspect_backbone

    check_options(seed=seed, images=images, show=show)
    r = inspect_backbone(backbone, data, images=images, seed=seed)
    out.print(f"backbone [bold]{r.backbone}[/bold]", highlight=False)
    out.print(f"  state dict SHA-256: {r.weights_sha256}", highlight=False)
    if r.file is not None:
        out.print(f"  weights file: {r.file}\n  file SHA-256:       {r.file_sha256}", highlight=False)
    digest_line = {"match": "[green]matches[/green] the published SHA-256 the registry knows",
                   "MISMATCH": f"[bold red]does NOT match[/bold red] the published SHA-256 {r.known_sha256}",
                   "no reference digest": "no published digest known here: compare the file SHA-256 above with the "
                                          "one its publisher gives"}[r.digest_status]
    out.print(f"  digest: {digest_line}", highlight=False)
    if r.sweep:
        table = Table(title=f"trigger sweep: {len(r.sweep)} patches on {r.images} clean images of {data} "
                            "(push: mean feature shift / clean spread, flagged above 0.5; consistency: 1 = every image shifted alike)")
        for col in ("patch", "push", "consistency", "top-1 flip", "flagged"):
            table.add_column(col, justify="left" if col == "patch" else "right")
        for row in r.sweep[:max(show, len(r.flagged))]:
            flip = "-" if row.flip_rate is None else f"{100 * row.flip_rate:.0f}% to {row.flip_class}"
            table.add_row(row.patch, f"{row.push:.3f}", f"{row.consistency:.2f}", flip,
                          "[bold red]yes[/bold red]" if row.flagged else "no")
        out.print(table)
        if r.flagged:
            out.print(f"[bold red]suspicious:[/bold red] {len(r.flagged)} patch(es) push every image's features "
                      f"the same long way ({', '.join(x.patch for x in r.flagged[:5])}): the backbone may carry a "
                      "patch backdoor; consider fine-tuning with --safe remos, or another source", highlight=False)
        else:
            out.print("no swept patch stands out", highlight=False)
    out.print(f"[dim]note: {r.limits}[/dim]", highlight=False)
    if output is not None:
        atomic_write_bytes(output, json.dumps(r.to_dict(), indent=1).encode())
        out.print(f"report: {output}", highlight=False)
    if r.flagged or r.digest_status == "MISMATCH":
        raise typer.Exit(3)


@app.command("pretrain-text")
@_friendly
def pretrain_text_cmd(
    corpus: str = typer.Argument(..., help="Unlabelled texts: a text file (one document per line), a folder of text files, or a table (.csv/.tsv/.parquet) with a text column."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the trained backbone (new or empty); use it with fit -b word2vec:<folder>, fasttext:<folder> or file:<folder>."),
    algo: str = typer.Option("word2vec", "--algo", help="word2vec or fasttext (word vectors with gensim, the text-train extra), or simcse (adapt the --backbone encoder with unsupervised SimCSE)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="simcse: the encoder to adapt (default: minilm)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Word vectors: dimensions (default: 100)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the corpus (default: 15 for word vectors, 1 for simcse)."),
    window: Optional[int] = typer.Option(None, "--window", help="Word vectors: context words on each side (default: 10)."),
    min_count: Optional[int] = typer.Option(None, "--min-count", help="Word vectors: words seen fewer times are dropped (default: 2)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="Word vectors: sif (default; Arora et al. 2017), mean (the classic average) or mean+max."),
    stopwords: Optional[str] = typer.Option(None, "--stopwords", help="Word vectors: english-keep-negations (default), english or none."),
    init: Optional[str] = typer.Option(None, "--init", help="Word vectors: start from a pretrained word-vector backbone of the same --dim, e.g. glove-50d with --dim 50."),
    max_texts: Optional[int] = typer.Option(None, "--max-texts", help="simcse: train on at most this many texts (default: 4096)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training (word vectors are bit-for-bit reproducible with --threads 1)."),
    threads: int = typer.Option(1, "--threads", help="Word vectors: gensim training threads (1: reproducible; more: faster on a big corpus, not reproducible)."),
    column: Optional[str] = typer.Option(None, "--column", help="The text column of a table corpus (detected when not given)."),
    encoding: Optional[str] = typer.Option(None, "--encoding", help="Text encoding of the corpus files (default: UTF-8; any other is an error naming the file and byte)."),
    cache_dir: Optional[Path] = CacheOpt,
    quiet: bool = QuietOpt,
):
    """Train word vectors on your unlabelled texts (word2vec, fastText), or adapt a sentence encoder to them
    (SimCSE); cached by corpus and settings, saved in --out for fit -b word2vec:<folder>."""
    from .pretrain import pretrain_text

    check_options(dim=dim, epochs=epochs, window=window, min_count=min_count, max_texts=max_texts, seed=seed)
    given = {"dim": dim, "epochs": epochs, "window": window, "min_count": min_count, "pooling": pooling,
             "stopwords": stopwords, "init": init, "max_texts": max_texts}
    settings = {k: v for k, v in given.items() if v is not None}
    settings["seed"] = seed
    if algo in ("word2vec", "fasttext"):
        settings["workers"] = threads
    r = pretrain_text(corpus, algo, backbone=backbone, out=out_dir, cache_dir=cache_dir, column=column,
                      encoding=encoding, progress=not quiet,
                      log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)), **settings)
    bb = r.backbone
    table = Table(title=f"{algo} on {r.info['corpus']['origin']}")
    for col in ("texts", "words", "features", "seconds", "cached"):
        table.add_column(col, justify="right")
    table.add_row(str(r.texts), str(r.info["corpus"]["words"]), str(bb.num_features),
                  f"{r.info.get('train_seconds', 0.0):.1f}", "yes" if r.cached else "no")
    out.print(table)
    use = f"{algo}:{out_dir}" if algo in ("word2vec", "fasttext") else f"file:{out_dir}"
    out.print(f"saved in {r.out}; use it with: transferkit fit DATA --backbone {use}")


# Weak-shot and multitask learning (issue 13)
def _fit_tasks(data: str, tasks: str, weighting: str, *, backbone: str, seed: int, out_dir: Optional[Path],
               cache_dir: Optional[Path], strategy: str, epochs: Optional[int], lr: Optional[float],
               train_batch_size: Optional[int], image_size: Optional[int], input_column: Optional[str],
               encoding: Optional[str], on_bad_input: str, batch_size: int, workers: Optional[int], device: str,
               val_fraction: float, test_fraction: float, quiet: bool, unused: dict[str, bool]) -> None:
    """``fit DATA --tasks a,b,c``: the multitask model(s) beside the single-task models, Δm and flags."""
    from .errors import TransferkitError
    from .multitask import MultitaskConfig, fit_multitask

    given = [flag for flag, on in unused.items() if on]
    if given:
        raise TransferkitError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a multitask fit "
                               f"(--tasks); leave {'it' if len(given) == 1 else 'them'} out")
    if strategy not in ("probe", "finetune"):
        raise TransferkitError(f"with --tasks, --strategy is probe (a trunk and heads on cached features) or finetune "
                               f"(the backbone trained too); got {strategy!r}")
    check_options(seed=seed, epochs=epochs, lr=lr, train_batch_size=train_batch_size, image_size=image_size,
                  batch_size=batch_size, workers=workers, device=device, val_fraction=val_fraction,
                  test_fraction=test_fraction)
    end_to_end = strategy == "finetune"
    cfg = MultitaskConfig(val_fraction=val_fraction, test_fraction=test_fraction, image_size=image_size,
                          num_workers=workers)
    if epochs is not None:
        cfg.e2e_epochs = epochs if end_to_end else cfg.e2e_epochs
        cfg.epochs = epochs if not end_to_end else cfg.epochs
    if lr is not None:
        cfg.lr = lr
    if train_batch_size is not None:
        cfg.e2e_batch_size = train_batch_size if end_to_end else cfg.e2e_batch_size
        cfg.batch_size = train_batch_size if not end_to_end else cfg.batch_size
    res = fit_multitask(data, tasks, backbone=backbone, weighting=weighting, end_to_end=end_to_end, seed=seed,
                        config=cfg, out=out_dir, cache_dir=cache_dir, input_column=input_column, encoding=encoding,
                        on_bad_input=on_bad_input, batch_size=batch_size, num_workers=workers, device=device,
                        progress=not quiet,
                        log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    table = Table(title=f"multitask vs single-task models on {res.splits['test']} test items (accuracy % or MAE; "
                        "change % against the single-task model, + is better)")
    table.add_column("weighting")
    for t in res.tasks:
        table.add_column(t["name"], justify="right")
    table.add_column("Δm %", justify="right")
    single = ["single-task"] + [_metric(next(x for x in res.rows[0]["tasks"] if x["task"] == t["name"]), "single")
                                for t in res.tasks] + [""]
    for r in res.rows:
        cells = [r["weighting"] + (" (kept)" if r["weighting"] == res.chosen else "")]
        for t in r["tasks"]:
            ch = t.get("change_percent")
            cells.append(_metric(t, "multitask") + ("" if ch is None else f" ({ch:+.1f}%)")
                         + (" ⚠" if t.get("negative") else ""))
        cells.append("-" if r["delta_m"] is None else f"{r['delta_m']:+.1f}")
        table.add_row(*cells)
    if res.singles:
        table.add_row(*single)
    out.print(table)
    for n in res.notes:
        out.print(f"[dim]{n}[/dim]", highlight=False)
    for w in res.warnings:
        out.print(f"[bold yellow]warning:[/bold yellow] {w}")
    out.print(f"run directory: {res.run_dir}  (transferkit predict {res.run_dir} ... predicts every task)")


def _metric(task: dict, which: str) -> str:
    v = task.get(which)
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if task["metric"] == "accuracy" else f"{v:.3f}"


@app.command()
@_friendly
def weakshot(
    data: str = typer.Argument(..., help="Built-in dataset, folder of class sub-folders, or table."),
    base: Optional[str] = typer.Option(None, "--base", help="Comma-separated base classes (clean labels; default: every other class, or the classes not in --novel)."),
    novel: Optional[str] = typer.Option(None, "--novel", help="Comma-separated novel classes (noisy labels; default: the classes not in --base)."),
    noisy_labels: Optional[str] = typer.Option(None, "--noisy-labels", help="Table column of web (noisy) labels: real noise. --label-column holds the checked labels (empty where nobody checked); web-labelled rows of novel classes are the noisy training set."),
    noise: Optional[float] = typer.Option(None, "--noise", help="Inject noise into the novel classes' training items at this rate (0 to 1), for evaluation."),
    noise_kind: str = typer.Option("flip", "--noise-kind", help="flip (items of other novel classes), outlier (items of no novel class) or mixed (half each)."),
    outliers: Optional[str] = typer.Option(None, "--outliers", help="Outlier sources, comma-separated: classes (the data's classes outside --base and --novel), photos (crops of scikit-image photos), dataset:<name> (e.g. dataset:mnist5k among clip art). Default: classes when some are left, else photos."),
    methods: str = typer.Option("plain,density,simtrans-weights,simtrans,oracle", "--methods", help="Comma-separated: plain (noisy labels as they are), density (no-transfer denoiser), simtrans, simtrans-weights (no graph term), oracle (the clean subset; injected noise only)."),
    backbone: str = typer.Option("lite0", "--backbone", "-b", help="Backbone name (see `transferkit backbones`)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the noise and training."),
    end_to_end: bool = typer.Option(False, "--end-to-end", help="Fine-tune the backbone (on the base classes, then with each method) instead of training heads on cached features."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of each method on the novel classes (default: 40 on features, 4 end to end)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of SimTrans's graph regulariser (default 3.0, on the predicted probabilities: see --graph-on; 0 turns it off)."),
    sim_blend: Optional[float] = typer.Option(None, "--sim-blend", help="SimTrans: the similarity net's share of the pair similarity, the rest the calibrated cosine of the frozen features (default 0.25; 1: the paper's net alone)."),
    drop: Optional[float] = typer.Option(None, "--drop", help="SimTrans: share of each novel class's lowest-weighted items left out (default 0.1; 0 keeps every item, as in the paper)."),
    drop_rule: Optional[str] = typer.Option(None, "--drop-rule", help="SimTrans: which of each class's lowest-weighted --drop share are left out: lowest (all of them), confusable (only the items significantly more similar to another novel class: flips, not outliers that resemble no class), claimed (only the items another novel class claims; the unclaimed train at the class's mean weight at least) or mixture (the low component of a two-component mixture of the weights)."),
    graph_on: Optional[str] = typer.Option(None, "--graph-on", help="SimTrans: what the graph term pulls together: features (the classifier's hidden features, the paper's) or outputs (its predicted probabilities)."),
    graph_schedule: Optional[str] = typer.Option(None, "--graph-schedule", help="SimTrans: when the graph term is on: always (every epoch, the default) or alternate (the reference code's: off in the first half of the epochs, then every other epoch)."),
    open_set_gate: Optional[float] = typer.Option(None, "--open-set-gate", help="SimTrans: the level of the open-set gate (default 0.05; 0: no gate). When the items SimTrans suspects (each class's lowest-weighted --drop share) are claimed by another novel class significantly less often than clean-looking items are, the noise is judged open-set (harmless to plain training) and SimTrans trains as plain training: weights 1, no graph term."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="End to end: the image side (default: 96)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for weakshot.json, predictions.csv, weights.csv and the SimTrans model, read by `transferkit predict` (default: runs/<time>-<data>-weakshot)."),
    input_column: Optional[str] = InputColOpt,
    label_column: Optional[str] = LabelColOpt,
    encoding: Optional[str] = EncodingOpt,
    cache_dir: Optional[Path] = CacheOpt,
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="Feature extraction device: auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = QuietOpt,
):
    """Weak-shot learning: clean base classes, noisy novel classes. SimTrans transfers a "same class?" similarity
    learned on the base classes to weigh the novel classes' noisy items (and regularise with a graph), beside plain
    training, a density denoiser and the clean-subset oracle, all on the same split."""
    from .runs import default_run_dir
    from .errors import TransferkitError
    from .weakshot import WeakShotConfig, fit_weakshot

    check_options(seed=seed, noise=noise, epochs=epochs, alpha=alpha, image_size=image_size, workers=workers,
                  device=device, sim_blend=sim_blend, drop=drop, open_set_gate=open_set_gate)
    cfg = WeakShotConfig(num_workers=workers)
    if alpha is not None:
        cfg.alpha = alpha
    if sim_blend is not None:
        cfg.sim_blend = sim_blend
    if drop is not None:
        cfg.sim_drop = drop
    if drop_rule is not None:
        if cfg.sim_drop == 0 and drop_rule != "lowest":
            raise TransferkitError(f"--drop-rule {drop_rule} picks which of the --drop share are left out, but "
                                   "--drop 0 leaves none out; give --drop above 0 or leave out --drop-rule")
        cfg.sim_drop_rule = drop_rule
    if graph_on is not None:
        cfg.graph_on = graph_on
    if graph_schedule is not None:
        cfg.graph_schedule = graph_schedule
    if open_set_gate is not None:
        if cfg.sim_drop == 0 and open_set_gate > 0:
            raise TransferkitError(f"--open-set-gate {open_set_gate} tests the items of the --drop share, but "
                                   "--drop 0 names none; give --drop above 0 or leave out --open-set-gate")
        cfg.sim_gate = open_set_gate
    if image_size is not None:
        cfg.image_size = image_size
    if epochs is not None:
        cfg.novel_epochs = epochs
        cfg.e2e_epochs = epochs
    res = fit_weakshot(data, base=base, novel=novel, backbone=backbone, noisy_labels=noisy_labels, noise=noise,
                       noise_kind=noise_kind, outliers=outliers, methods=[m for m in methods.split(",") if m.strip()],
                       seed=seed, config=cfg, end_to_end=end_to_end, cache_dir=cache_dir,
                       out=out_dir if out_dir is not None else default_run_dir(Path(data).stem or data, "weakshot"),
                       input_column=input_column, label_column=label_column, encoding=encoding, num_workers=workers,
                       device=device, progress=not quiet,
                       log=None if quiet else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False)))
    sp = res.split
    noise_text = sp["noise"].get("measured_rate")
    table = Table(title=f"novel-class test accuracy ({len(sp['novel_classes'])} novel classes, {sp['novel_test']} clean "
                        f"test items; {sp['novel_train']} noisy training items"
                        + (f", {100 * noise_text:.0f}% noisy" if noise_text is not None else "") + ")")
    for col in ("method", "accuracy", "weights AUC (clean > noisy)", "seconds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in res.results:
        table.add_row(r.method + (" (oracle: reads the true labels)" if r.oracle else ""), _pct(r.accuracy),
                      "-" if r.weights_auc is None else f"{r.weights_auc:.3f}", f"{r.seconds:.1f}")
    out.print(table)
    if res.similarity:
        out.print(f"similarity net: {100 * res.similarity['pair_balanced_accuracy']:.1f}% balanced accuracy on "
                  "held-out base-class pairs")
    gate = next((r.gate for r in res.results if r.gate), None)
    if gate and gate["suspects"]:
        out.print(f"open-set gate: {gate['claimed']} of the {gate['suspects']} suspected items claimed by another "
                  f"novel class (one-sided binomial p = {gate['p_value']:.2g}, level {gate['level']:g}): "
                  + ("the noise looks open-set, SimTrans trained as plain training" if gate["open_set"]
                     else "SimTrans reweighted"))
    for w in res.warnings:
        out.print(f"[bold yellow]warning:[/bold yellow] {w}")
    if res.out is not None:
        out.print(f"results: {res.out}")


def main() -> None:
    """Entry point of the ``transferkit`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app(prog_name="transferkit")


if __name__ == "__main__":
    sys.exit(main())
