"""Report figures, rendered off-screen to PNG bytes.

Every function builds a :class:`matplotlib.figure.Figure` directly and renders it with the Agg
canvas, never through ``pyplot``: nothing here touches the global backend, the list of open figures
or ``rcParams``, so a user's interactive session (a notebook, an open window) is left as it was.

The module also holds :func:`projection_2d`, which turns a feature matrix into 2-D coordinates for
:func:`plot_projection`.

Fonts: every text is drawn with DejaVu Sans (Latin, Greek, Cyrillic, ...) and, as fallbacks, whichever
installed fonts cover other scripts (CJK: Noto Sans CJK, Source Han Sans, WenQuanYi, IPA, Microsoft YaHei,
...; see ``_FALLBACK_FONTS``), set per text object, not through ``rcParams``. A character that no installed
font can draw is written as its ``\\uXXXX`` escape instead of an empty box; :func:`missing_glyphs` tells
which, so that the report can say so once.
"""

from __future__ import annotations

import functools
import io
import math
import re
import textwrap
import warnings
from typing import Any, Iterable

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import NullFormatter, NullLocator, ScalarFormatter

from transferkit.errors import DataError

__all__ = [
    "plot_confusion",
    "plot_learning_curve",
    "plot_projection",
    "plot_comparison",
    "plot_pseudo_labels",
    "projection_2d",
    "missing_glyphs",
]

_DPI = 110
_FIGSIZE = (6.0, 4.5)
_SERIES = {
    # key: (legend label, colour)
    "transfer": ("transfer (pretrained features)", "#1f77b4"),
    "scratch": ("from scratch", "#d62728"),
}
_MARKERS = ["o", "^", "s", "D", "v", "P", "X", "*", "<", ">"]
_CELL_TEXT_MAX_CLASSES = 20


def _new_figure(figsize: tuple[float, float] = _FIGSIZE) -> Figure:
    """Creates a figure attached to an Agg canvas (no pyplot, no global state)."""
    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


# Fonts that cover scripts DejaVu Sans lacks (CJK first), in order of preference; only installed ones are used.
_FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans JP", "Noto Sans SC",
    "Noto Sans TC", "Noto Sans KR", "Source Han Sans", "Source Han Sans SC", "Source Han Sans JP",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "IPAexGothic", "IPAGothic", "TakaoGothic",
    "VL Gothic", "Microsoft YaHei", "SimHei", "Yu Gothic", "Meiryo", "MS Gothic", "Malgun Gothic",
    "Apple SD Gothic Neo", "Hiragino Sans", "PingFang SC", "Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew",
    "Noto Sans Devanagari", "Noto Sans Thai", "Arial Unicode MS", "Unifont",
)
_BASE_FONT = "DejaVu Sans"


@functools.lru_cache(maxsize=1)
def _font_families() -> tuple[str, ...]:
    """DejaVu Sans, then the installed fallback fonts (a family list: Agg draws each glyph from the first font
    that has it)."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return (_BASE_FONT,) + tuple(name for name in _FALLBACK_FONTS if name in installed)


@functools.lru_cache(maxsize=1)
def _covered() -> frozenset[int]:
    """Code points that at least one of :func:`_font_families` can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    points: set[int] = set()
    for name in _font_families():
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
            points.update(FT2Font(path).get_charmap())
        except (ValueError, OSError, RuntimeError):
            continue  # listed but unreadable: it covers nothing
    return frozenset(points)


def missing_glyphs(texts: Iterable[Any]) -> list[str]:
    """The characters of ``texts`` that no installed font can draw (sorted, each once).

    The figures write these as ``\\uXXXX`` escapes; a report uses this to say so once, with the fix (install
    a font that covers the script, e.g. Noto Sans CJK for Chinese, Japanese and Korean).
    """
    cover = _covered()
    return sorted({c for t in texts for c in str(t) if not c.isspace() and ord(c) not in cover})


def _drawable(text: str) -> str:
    """``text`` with every character no installed font can draw written as its ``\\uXXXX`` escape."""
    cover = _covered()
    if all(c.isspace() or ord(c) in cover for c in text):
        return text
    return "".join(c if c.isspace() or ord(c) in cover else c.encode("unicode_escape").decode("ascii") for c in text)


def _apply_fonts(fig: Figure) -> None:
    """Gives every text of ``fig`` the font family list (with fallbacks) and escapes what no font can draw.

    Tick labels set from strings are rewritten from their formatter at draw time, so names that become tick
    labels are escaped where they are made (:func:`_short`, :func:`_wrap`, :func:`_tick_names`).
    """
    families = list(_font_families())
    for ax in fig.axes:
        ax.tick_params(which="both", labelfontfamily=families)  # also for ticks made at draw time
    for t in fig.findobj(Text):
        text = t.get_text()
        if text:
            drawable = _drawable(text)
            if drawable != text:
                t.set_text(drawable)
        t.set_fontfamily(families)


def _to_png(fig: Figure) -> bytes:
    """Renders ``fig`` to PNG bytes (tight bounding box, no software stamp, reproducible)."""
    _apply_fonts(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # every glyph has a fallback (a font from _font_families, or an escape): matplotlib's note that the
        # first font lacks a glyph it then takes from a later one is noise
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from (current )?font", category=UserWarning)
        fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    return buf.getvalue()


_BREAK = re.compile(r"(?<=[\s_/\-.,;:+])")


def _wrap(name: str, width: int = 16, max_lines: int = 2) -> str | None:
    """``name`` on at most ``max_lines`` lines of ``width`` characters, broken after spaces, ``_``, ``-``, ``/``,
    ``.`` (a longer piece is cut hard); None when it does not fit."""
    lines: list[str] = []
    cur = ""
    for part in (p for p in _BREAK.split(_drawable(str(name))) if p):
        while len(part) > width:  # a piece longer than a line: cut it
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(part[:width])
            part = part[width:]
        if len(cur) + len(part.rstrip()) > width:
            lines.append(cur)
            cur = ""
        cur += part
    if cur:
        lines.append(cur)
    lines = [line.strip() for line in lines if line.strip()]
    return "\n".join(lines) if len(lines) <= max_lines else None


def _tick_names(classes: list[str], width: int = 16, max_lines: int = 2) -> tuple[list[str], list[str] | None]:
    """Tick labels for class names: wrapped when every name fits on ``max_lines`` lines, else the numbers
    ``1..k`` with a key (``"1  full name"`` lines) to print beside the figure."""
    wrapped = [_wrap(c, width, max_lines) for c in classes]
    if all(w is not None for w in wrapped):
        return [str(w) for w in wrapped], None
    return [str(i + 1) for i in range(len(classes))], [f"{i + 1}  {_drawable(c)}" for i, c in enumerate(classes)]


def _short(name: str, width: int = 18) -> str:
    """Shortens a label for a tick: ``width`` characters at most, with an ellipsis."""
    name = _drawable(str(name))
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def _finite(value: Any) -> float | None:
    """Returns ``value`` as a finite float, or None when it is missing, None or NaN."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def plot_confusion(cm: list[list[int]], classes: list[str], title: str) -> bytes:
    """Draws a confusion matrix with row-normalised colours and the counts in the cells.

    Colours show the fraction of each true class predicted as each class, so that rare classes are
    as visible as common ones. Counts are written in the cells for up to 20 classes; above that the
    cells are too small and only the colours are drawn.

    Args:
        cm: Square matrix of counts; rows are true classes, columns are predicted classes.
        classes: Class names, one per row.
        title: Figure title.

    Returns:
        The figure as PNG bytes.

    Raises:
        DataError: If ``cm`` is not square or does not match ``classes``.
    """
    counts = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise DataError(f"cm must be a square matrix; got shape {counts.shape}.")
    if counts.shape[0] != k:
        raise DataError(f"cm is {counts.shape[0]}x{counts.shape[1]} but {k} classes were given.")
    return _to_png(_confusion_figure(counts, [str(c) for c in classes], title))


def _confusion_figure(counts: np.ndarray, classes: list[str], title: str) -> Figure:
    """The figure of :func:`plot_confusion` (checked inputs), before rendering."""
    k = len(classes)
    row_sums = counts.sum(axis=1, keepdims=True)
    norm = counts / np.maximum(row_sums, 1.0)

    side = float(min(max(4.8, 0.32 * k + 2.6), 11.0))
    fig = _new_figure((side + 0.9, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of true class", fontsize=9)
    cbar.ax.tick_params(labelsize=8)

    tick_size = 9 if k <= 10 else (7 if k <= 25 else 5)
    names, key = _tick_names([str(c) for c in classes])
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=0 if key else 45, ha="center" if key else "right", rotation_mode="anchor",
                       fontsize=tick_size)
    ax.set_yticklabels(names, fontsize=tick_size)
    ax.set_xlabel("predicted class" + (" (numbers: see the key below)" if key else ""), fontsize=10)
    ax.set_ylabel("true class", fontsize=10)
    if key:  # long names: numbered ticks and the full names below (the tight bounding box makes room)
        columns = 1 if k <= 12 else (2 if k <= 30 else 3)
        per = math.ceil(k / columns)
        for c in range(columns):
            fig.text(0.02 + c / columns, -0.01, "\n".join(key[c * per:(c + 1) * per]), ha="left", va="top",
                     fontsize=8 if k <= 30 else 6)
    ax.set_title(title, fontsize=11)

    if k <= _CELL_TEXT_MAX_CLASSES:
        cell_size = 12 if k <= 4 else 9 if k <= 8 else (8 if k <= 12 else (7 if k <= 16 else 6))
        for i in range(k):
            for j in range(k):
                value = int(counts[i, j])
                if value == 0 and i != j:
                    continue  # empty off-diagonal cells stay blank: easier to read
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=cell_size,
                    color="white" if norm[i, j] > 0.55 else "#222222",
                )
    # thin grid between cells
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6 if k <= 30 else 0.0)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


def plot_learning_curve(points: list[dict], title: str) -> bytes:
    """Draws test accuracy against the number of labels per class, per training recipe.

    Args:
        points: One dict per budget with ``labels_per_class`` and any of ``transfer``, ``scratch``
            (test accuracy in 0..1), ``transfer_std``, ``scratch_std`` (error bars). A point may miss
            a series. If the first point has ``chance`` (the chance accuracy, e.g. ``0.1`` for ten
            balanced classes; a value above 1 is read as a number of classes), a dashed line marks it.
        title: Figure title.

    Returns:
        The figure as PNG bytes.

    Raises:
        DataError: If ``points`` is empty or a point has no usable ``labels_per_class``.
    """
    if not points:
        raise DataError("points is empty; a learning curve needs at least one point.")
    rows = []
    for i, p in enumerate(points):
        x = _finite(p.get("labels_per_class")) if isinstance(p, dict) else None
        if x is None:
            raise DataError(f"learning-curve point {i} has no numeric 'labels_per_class': {p!r}.")
        rows.append((x, p))
    rows.sort(key=lambda r: r[0])
    xs_all = [x for x, _ in rows]

    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for key, (label, colour) in _SERIES.items():
        xs, ys, errs = [], [], []
        for x, p in rows:
            y = _finite(p.get(key))
            if y is None:
                continue
            xs.append(x)
            ys.append(y)
            errs.append(_finite(p.get(f"{key}_std")) or 0.0)
        if not xs:
            continue
        drawn += 1
        ax.errorbar(
            xs,
            ys,
            yerr=errs if any(errs) else None,
            label=label,
            color=colour,
            marker="o",
            markersize=5,
            linewidth=1.8,
            capsize=3,
        )

    chance = _finite(points[0].get("chance")) if isinstance(points[0], dict) else None
    if chance is not None and chance > 1:
        chance = 1.0 / chance  # given as a number of classes
    if chance is not None and 0 < chance <= 1:
        ax.axhline(chance, color="#555555", linestyle="--", linewidth=1.1, label=f"chance ({chance:.3f})")
        drawn += 1

    lo, hi = min(xs_all), max(xs_all)
    if lo > 0 and hi / lo >= 8:
        ax.set_xscale("log")
        ticks = sorted(set(xs_all))
        ax.set_xticks(ticks)
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        ax.xaxis.set_major_formatter(formatter)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(lo / 1.25, hi * 1.25)
    elif lo == hi:
        ax.set_xticks([lo])
        ax.set_xlim(lo - 1, hi + 1)
    else:
        pad = 0.05 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
    if len(set(xs_all)) <= 12 and all(float(x).is_integer() for x in xs_all):
        ax.set_xticks(sorted(set(xs_all)))
        ax.set_xticklabels([str(int(x)) for x in sorted(set(xs_all))])

    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("labels per class", fontsize=10)
    ax.set_ylabel("test accuracy", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=9)
    if drawn:
        # below the axes: inside, it would sit on the curves or the chance line
        handles, texts = ax.get_legend_handles_labels()
        order = sorted(range(len(texts)), key=lambda i: texts[i].startswith("chance"))  # chance last
        ax.legend(
            [handles[i] for i in order],
            [texts[i] for i in order],
            fontsize=9,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            ncol=3,
            frameon=False,
        )
    else:
        ax.text(0.5, 0.5, "no accuracy values", ha="center", va="center", transform=ax.transAxes, color="#888888")
    return _to_png(fig)


def plot_projection(
    coords: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    title: str,
    markers: np.ndarray | None = None,
    marker_names: list[str] | None = None,
) -> bytes:
    """Draws a 2-D scatter of samples coloured by class, optionally with one marker shape per group.

    Args:
        coords: Coordinates, shape ``(N, 2)`` (e.g. from :func:`projection_2d`).
        labels: Integer class index of each point, shape ``(N,)``.
        classes: Class names; index ``i`` names class ``i``.
        title: Figure title.
        markers: Optional integer group of each point, shape ``(N,)`` (e.g. 0 = train, 1 = test, or
            0 = source domain, 1 = target domain); each group gets its own marker shape.
        marker_names: Names of the marker groups, indexed like ``markers``.

    Returns:
        The figure as PNG bytes.

    Raises:
        DataError: If the shapes disagree or a label is out of range for ``classes``.
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise DataError(f"coords must have shape (N, 2); got {xy.shape}.")
    lab = np.asarray(labels).astype(np.int64).reshape(-1)
    if lab.shape[0] != xy.shape[0]:
        raise DataError(f"labels has {lab.shape[0]} entries but coords has {xy.shape[0]} rows.")
    k = len(classes)
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        raise DataError(f"labels must be class indices in 0..{k - 1}; got values {lab.min()}..{lab.max()}.")
    if markers is None:
        grp = np.zeros(xy.shape[0], dtype=np.int64)
    else:
        grp = np.asarray(markers).astype(np.int64).reshape(-1)
        if grp.shape[0] != xy.shape[0]:
            raise DataError(f"markers has {grp.shape[0]} entries but coords has {xy.shape[0]} rows.")
        if grp.size and grp.min() < 0:
            raise DataError("markers must be non-negative group indices.")
    groups = sorted(set(grp.tolist()))
    names = list(marker_names or [])

    present = sorted(set(lab.tolist()))
    ncol = max(1, math.ceil(len(present) / 18))
    fig = _new_figure((6.0 + 1.7 * ncol, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    tab20 = matplotlib.colormaps["tab20"].colors
    # dark shades first, then the light ones: up to 10 classes get 10 distinct hues
    palette = [tab20[i] for i in range(0, 20, 2)] + [tab20[i] for i in range(1, 20, 2)]
    size = 14 if xy.shape[0] > 1000 else (22 if xy.shape[0] > 200 else 34)
    for g_i, g in enumerate(groups):
        shape = _MARKERS[g_i % len(_MARKERS)]
        in_group = grp == g
        for c in present:
            sel = in_group & (lab == c)
            if not sel.any():
                continue
            ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                s=size,
                marker=shape,
                color=palette[c % len(palette)],
                alpha=0.8,
                linewidths=0.3,
                edgecolors="white" if shape in ("o", "s", "D") else "none",
            )

    class_handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markersize=6,
            color=palette[c % len(palette)],
            label=_short(classes[c], 22),
        )
        for c in present
    ]
    legend = ax.legend(
        handles=class_handles,
        title="class",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7 if len(present) > 12 else 8,
        title_fontsize=8,
        ncol=ncol,
        frameon=False,
        borderaxespad=0.0,
    )
    if markers is not None and (len(groups) > 1 or names):
        ax.add_artist(legend)
        legend.set_clip_on(False)  # add_artist clips to the axes, which would hide the legend
        group_handles = [
            Line2D(
                [],
                [],
                marker=_MARKERS[g_i % len(_MARKERS)],
                linestyle="",
                markersize=6,
                color="#555555",
                label=_short(names[g] if g < len(names) else f"group {g}", 22),
            )
            for g_i, g in enumerate(groups)
        ]
        # below the axes, in a row: never collides with a long class legend
        ax.legend(
            handles=group_handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.02),
            ncol=min(len(group_handles), 4),
            fontsize=8,
            frameon=False,
        )
    ax.set_title(title, fontsize=11)
    # the axes of a t-SNE map carry no meaning: no ticks, no labels
    ax.set_xticks([])
    ax.set_yticks([])
    return _to_png(fig)


_PSEUDO_SERIES = {
    "metric_mask_rate": ("share of the unlabelled batch used", "#1f77b4", "-"),
    "val_mask_rate": ("validation: share above the thresholds", "#1f77b4", "--"),
    "val_pseudo_accuracy": ("validation: accuracy of those pseudo-labels", "#d62728", "-"),
    "val_accuracy": ("validation accuracy", "#2ca02c", "-"),
}


def plot_pseudo_labels(history: list[dict], title: str, x_label: str = "evaluation") -> bytes:
    """Draws how pseudo-labelling went over a semi-supervised run: the share of the unlabelled batches that
    passed the mask, and on the validation items (whose labels are known) the share above the thresholds, the
    accuracy of those pseudo-labels and the validation accuracy; with per-class thresholds (FlexMatch, FreeMatch)
    a second panel shows them.

    Args:
        history: the run's history rows (``epoch`` and any of the series above, ``thresholds``).
        title: figure title.
        x_label: what one ``epoch`` of the history is (e.g. "evaluation (100 steps)").

    Raises:
        DataError: an empty history.
    """
    if not history:
        raise DataError("history is empty; nothing to plot.")
    xs = [int(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    thresholds = [r.get("thresholds") for r in history]
    per_class = all(isinstance(t, list) and t for t in thresholds) and any(
        len(set(t)) > 1 or t != thresholds[0] for t in thresholds)
    fig = _new_figure((6.0, 6.5) if per_class else _FIGSIZE)
    ax = fig.add_subplot(2 if per_class else 1, 1, 1)
    for key, (label, colour, style) in _PSEUDO_SERIES.items():
        pts = [(x, _finite(r.get(key))) for x, r in zip(xs, history)]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, marker="o", markersize=3,
                    label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share / accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if per_class:
        ax2 = fig.add_subplot(2, 1, 2)
        t = np.asarray(thresholds, dtype=float)
        ax2.plot(xs, t, color="#7f7f7f", alpha=0.6, linewidth=1)
        ax2.plot(xs, t.mean(1), color="black", linewidth=2, label="mean over classes")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("per-class threshold")
        ax2.set_xlabel(x_label)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="lower right")
    else:
        ax.set_xlabel(x_label)
    return _to_png(fig)


def plot_comparison(rows: list[dict], title: str, chance: float | None = None) -> bytes:
    """Draws a horizontal bar chart of the accuracy of each method.

    Args:
        rows: One dict per method with ``name``, ``accuracy`` (0..1) and optional ``std``. Rows are
            drawn top to bottom in the given order; rows without an accuracy get an empty bar.
        title: Figure title.
        chance: Chance accuracy; drawn as a dashed vertical line when given.

    Returns:
        The figure as PNG bytes.

    Raises:
        DataError: If ``rows`` is empty.
    """
    if not rows:
        raise DataError("rows is empty; a comparison needs at least one method.")
    names = ["\n".join(textwrap.wrap(_drawable(str(r.get("name", f"method {i}"))), 26)) or "?"
             for i, r in enumerate(rows)]
    accs = [_finite(r.get("accuracy")) for r in rows]
    stds = [_finite(r.get("std")) or 0.0 for r in rows]
    n = len(rows)

    fig = _new_figure((6.0, float(min(max(2.2, 0.62 * n + 1.3), 12.0))))
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(n)
    best = max((a for a in accs if a is not None), default=None)
    colours = ["#1f77b4" if a is not None and a == best else "#8fb3d9" for a in accs]
    ax.barh(
        ys,
        [a or 0.0 for a in accs],
        xerr=stds if any(stds) else None,
        color=colours,
        height=0.6,
        error_kw={"ecolor": "#333333", "capsize": 3, "linewidth": 1},
    )
    for y, a, s in zip(ys, accs, stds):
        if a is None:
            ax.text(0.01, y, "n/a", va="center", ha="left", fontsize=9, color="#888888")
            continue
        label = f"{a:.3f}" + (f" \u00b1 {s:.3f}" if s else "")
        end = a + s
        if end > 0.78:  # no room right of the bar: write it inside, in white, left of the error bar
            ax.text(a - s - 0.015, y, label, va="center", ha="right", fontsize=9, color="white", fontweight="bold")
        else:
            ax.text(end + 0.015, y, label, va="center", ha="left", fontsize=9, color="#222222")
    c = _finite(chance)
    if c is not None and 0 <= c <= 1:
        ax.axvline(c, color="#555555", linestyle="--", linewidth=1.1, label=f"chance ({c:.3f})")
        ax.legend(fontsize=8, loc="lower right", frameon=True, framealpha=0.9)
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("test accuracy", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.tick_params(axis="x", labelsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _to_png(fig)


def plot_scores_vs_accuracy(rows: list[dict], labels: dict[str, str],
                            correlations: dict[str, dict[str, float]] | None = None) -> bytes:
    """Scatter each transferability score against the measured test accuracy, one panel per score.

    Args:
        rows: One dict per backbone with ``backbone``, ``accuracy`` (0..1) and a value per score key.
        labels: Score key -> axis label, in panel order.
        correlations: Optional score key -> ``{"kendall_tau", "pearson_r"}`` shown in each panel's title.

    Returns:
        The figure as PNG bytes.

    Raises:
        DataError: If ``labels`` is empty.
    """
    if not labels:
        raise DataError("labels is empty; name at least one score to plot.")
    keys = list(labels)
    cols = min(3, len(keys))
    nrows = int(np.ceil(len(keys) / cols))
    fig = _new_figure((4.0 * cols, 3.3 * nrows))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, cols, i + 1)
        pts = [(_finite(r.get(key)), _finite(r.get("accuracy")), str(r.get("backbone", "?"))) for r in rows]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        for x, y, name in pts:
            ax.scatter([x], [y], color="#1f77b4", s=28)
            ax.annotate(_short(name, 14), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        c = (correlations or {}).get(key)
        ttl = labels[key] + (f"\n\u03c4={c['kendall_tau']:.2f}, r={c['pearson_r']:.2f}" if c else "")
        ax.set_title(ttl, fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _to_png(fig)


def _pca(z: np.ndarray, k: int) -> np.ndarray:
    """Projects centred rows onto their first ``k`` principal axes with a deterministic sign.

    Always returns ``k`` columns: missing components (rank below ``k``) are zeros.
    """
    m = z.shape[0]
    out = np.zeros((m, k), dtype=np.float64)
    if m == 0 or z.shape[1] == 0:
        return out
    u, s, _ = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    r = min(k, s.shape[0])
    comp = u[:, :r] * s[:r]
    # sign convention: the largest-magnitude entry of each column is positive
    signs = np.sign(comp[np.argmax(np.abs(comp), axis=0), np.arange(r)])
    signs[signs == 0] = 1.0
    out[:, :r] = comp * signs
    return out


def projection_2d(X: np.ndarray, seed: int = 0, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray, str]:
    """Projects a feature matrix to 2-D for a scatter plot.

    Rows are standardised per feature (constant features become zero). With 10 rows or more, the
    result is t-SNE (``init="pca"``, perplexity ``min(30, (M - 1) / 3)``, 500 iterations) on the first
    50 principal components; with fewer rows it is a plain 2-D PCA. When ``X`` has more than
    ``max_points`` rows, a seeded random subset of ``max_points`` rows is projected.

    Args:
        X: Features, shape ``(N, D)``.
        seed: Seed of the subsample and of t-SNE; the same seed gives the same result.
        max_points: Most rows to project.

    Returns:
        ``(coords, indices, method)``: coordinates of shape ``(M, 2)``, the sorted row indices of
        ``X`` they belong to (shape ``(M,)``), and the method name (``"t-SNE"`` or ``"PCA"``).

    Raises:
        DataError: If ``X`` is not a non-empty 2-D array of finite numbers, or ``max_points < 1``.
    """
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"X must be a 2-D feature matrix (N, D); got shape {x.shape}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"X is empty (shape {x.shape}); there is nothing to project.")
    if not np.all(np.isfinite(x)):
        raise DataError("X holds NaN or infinite values; clean the features before projecting them.")
    if int(max_points) < 1:
        raise DataError(f"max_points must be at least 1; got {max_points}.")

    n = x.shape[0]
    if n > max_points:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(n, size=int(max_points), replace=False)).astype(np.int64)
        x = x[idx]
    else:
        idx = np.arange(n, dtype=np.int64)
    m = x.shape[0]

    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)

    if m < 10:
        return _pca(z, 2), idx, "PCA"

    if float(np.abs(z).max()) < 1e-9:
        # every row is the same point: t-SNE would divide by zero; all coordinates are the origin
        return np.zeros((m, 2)), idx, "PCA"

    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    # One thread for BLAS and OpenMP: t-SNE's threaded gradient slows down several-fold when the
    # cores are busy (feature extraction, a training run), and a single thread is quick enough here.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = min(50, m, z.shape[1])
        if k >= 2 and min(m, z.shape[1]) > 2 * k:
            # large matrix: a seeded randomized SVD is much faster than the exact one and as good here
            reduced = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit_transform(z)
        else:
            reduced = _pca(z, k)
        if reduced.shape[1] < 2:
            reduced = np.hstack([reduced, np.zeros((m, 2 - reduced.shape[1]))])
        tsne = TSNE(
            n_components=2,
            init="pca",
            perplexity=float(min(30.0, (m - 1) / 3.0)),
            max_iter=500,
            random_state=seed,
            n_jobs=1,
        )
        coords = tsne.fit_transform(reduced)
    return np.asarray(coords, dtype=np.float64), idx, "t-SNE"


def plot_accuracy_vs_budget(series: dict[str, list[tuple[float, float, float]]], title: str) -> bytes:
    """Draws test accuracy against labels per class, one line with error bars per strategy.

    Args:
        series: strategy name -> ``(labels per class, mean accuracy 0..1, std)`` points.
        title: Figure title.

    Returns:
        The figure as PNG bytes.

    Raises:
        DataError: If ``series`` has no points.
    """
    if not any(series.values()):
        raise DataError("series has no points; give at least one (budget, accuracy, std) point.")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    budgets: set[float] = set()
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted((float(b), float(m), float(s or 0.0)) for b, m, s in pts)
        if not pts:
            continue
        xs, ms, ss = zip(*pts)
        budgets.update(xs)
        ax.errorbar(xs, ms, yerr=ss, marker=_MARKERS[i % len(_MARKERS)], capsize=3, linewidth=1.4, markersize=5,
                    label=_short(name, 24))
    if len(budgets) > 1 and max(budgets) / max(min(budgets), 1e-9) >= 8:
        ax.set_xscale("log")
    ax.set_xticks(sorted(budgets))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("labels per class", fontsize=10)
    ax.set_ylabel("test accuracy (mean ± std over seeds)", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", frameon=True, framealpha=0.9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _to_png(fig)


def plot_wall_time(rows: list[dict], title: str) -> bytes:
    """Draws a horizontal bar chart of wall time per method (log scale when the range is wide).

    Args:
        rows: One dict per method with ``name``, ``seconds`` and optional ``std``.
        title: Figure title.

    Returns:
        The figure as PNG bytes.

    Raises:
        DataError: If ``rows`` is empty.
    """
    if not rows:
        raise DataError("rows is empty; give at least one method.")
    return _to_png(_wall_time_figure(rows, title))


def _wall_time_figure(rows: list[dict], title: str) -> Figure:
    """The figure of :func:`plot_wall_time` (rows checked), before rendering."""
    names = [_wrap(str(r.get("name", f"method {i}")), 24, 2) or _short(str(r.get("name", f"method {i}")), 24)
             for i, r in enumerate(rows)]
    secs = [max(_finite(r.get("seconds")) or 0.0, 1e-3) for r in rows]
    stds = [_finite(r.get("std")) or 0.0 for r in rows]
    lines = sum(max(1, n.count("\n") + 1) for n in names)
    fig = _new_figure((6.0, float(min(max(2.2, 0.42 * lines + 0.2 * len(rows) + 1.3), 12.0))))
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(len(rows))
    err = [[min(sd, sec) for sd, sec in zip(stds, secs)], stds]  # a wall time is never negative: clip the bar at 0
    ax.barh(ys, secs, xerr=err if any(stds) else None, color="#8fb3d9", height=0.6,
            error_kw={"ecolor": "#333333", "capsize": 3, "linewidth": 1})
    ends = [sec + sd for sec, sd in zip(secs, stds)]
    log = max(secs) / min(secs) > 30
    if log:
        ax.set_xscale("log")
        ax.set_xlim(right=max(ends) * 4.0)  # room for the value labels right of the longest bar
    else:
        ax.set_xlim(0, max(ends) * 1.22)
    for y, end, s in zip(ys, ends, secs):  # the value sits right of the error bar, never on it
        ax.annotate(f"{s:.1f}s", (end, y), xytext=(4, 0), textcoords="offset points", va="center", ha="left",
                    fontsize=9, color="#222222")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("wall time per cell (s)", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig
