"""A self-contained HTML report of one run.

:func:`write_report` renders a plain dict into ONE HTML file with inline CSS and the figures embedded
as base64 ``data:`` URIs: no scripts, no external resources, so the file can be mailed, attached to a
ticket or opened offline years later. Every user-provided string is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import DataError, OutputError
from transferkit.report.plots import (missing_glyphs, plot_comparison, plot_confusion, plot_learning_curve,
                                      plot_projection)

__all__ = ["write_report", "figure_html"]

_BAD_INPUT_ROWS = 50

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 28px 32px 48px; background: #fff;
  min-height: 100vh; box-shadow: 0 0 0 1px #e3e6eb; }
h1 { font-size: 26px; margin: 0 0 4px; line-height: 1.25; }
.subtitle { color: #5b6475; margin: 0 0 14px; font-size: 16px; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid #e3e6eb; }
nav { font-size: 13px; margin: 0 0 18px; color: #5b6475; }
nav a { color: #2f5fa8; text-decoration: none; margin-right: 14px; }
nav a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
th, td { border: 1px solid #e3e6eb; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { font-weight: 600; background: #f2f7ff; }
table.summary th { width: 230px; background: #f8f9fb; font-weight: 500; color: #3a4252; }
table.summary td { min-width: 320px; }
.warnings { border: 1px solid #e0b100; border-left: 6px solid #d9480f; background: #fff8db;
  padding: 10px 16px; margin: 14px 0 18px; border-radius: 4px; }
.warnings strong { color: #b3360b; }
.warnings ul { margin: 6px 0 2px; padding-left: 20px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 16px; }
.card { border: 1px solid #e3e6eb; border-radius: 6px; padding: 10px 16px; min-width: 150px; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { font-size: 13px; color: #5b6475; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eef0f3; }
figcaption { font-size: 13px; color: #5b6475; margin-top: 4px; }
.muted { color: #5b6475; font-size: 13px; }
.scroll { overflow-x: auto; }
pre { background: #f6f8fa; border: 1px solid #e3e6eb; border-radius: 4px; padding: 12px;
  font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-x: auto; }
footer { margin-top: 36px; font-size: 12px; color: #8a92a3; }
"""


def _e(value: Any) -> str:
    """Escapes any value for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """Returns ``value`` as a finite float, or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Any, digits: int = 3) -> str:
    """Formats a number with ``digits`` decimals; anything else as text; missing as an em dash."""
    if value is None:
        return "\u2014"
    v = _num(value)
    if v is None:
        return _e(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return f"{v:.{digits}f}"


def _fmt_summary(value: Any) -> str:
    """Formats a summary value for display (escaped)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return _e(v)
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (list, tuple)):
        return _e(", ".join(str(v) for v in value))
    return _e(value)


def _img(png: bytes, alt: str) -> str:
    """An ``<img>`` tag holding ``png`` as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def figure_html(png: bytes, alt: str, caption: str | None = None) -> str:
    """A ``<figure>`` holding a PNG (inline, base64) with its alt text and an optional caption (HTML)."""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{_img(png, alt)}{cap}</figure>"


def _pairs(value: Any, name: str) -> list[tuple[Any, Any]]:
    """Reads a mapping or a sequence of 2-item pairs as a list of pairs."""
    if isinstance(value, Mapping):
        return list(value.items())
    out = []
    for i, item in enumerate(value):
        if isinstance(item, (str, bytes)) or not isinstance(item, Iterable):
            raise DataError(f"report[{name!r}] item {i} must be a (label, value) pair; got {item!r}.")
        item = list(item)
        if len(item) != 2:
            raise DataError(f"report[{name!r}] item {i} must be a (label, value) pair; got {len(item)} items.")
        out.append((item[0], item[1]))
    return out


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _summary_html(summary: Any) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_fmt_summary(v)}</td></tr>" for k, v in _pairs(summary, "summary"))
    return f'<table class="summary">{rows}</table>'


def _warnings_html(warnings: Any) -> str:
    items = [warnings] if isinstance(warnings, str) else list(warnings)
    if not items:
        return ""
    lis = "".join(f"<li>{_e(w)}</li>" for w in items)
    word = "Warning" if len(items) == 1 else f"{len(items)} warnings"
    return f'<div class="warnings" role="alert"><strong>&#9888; {word}</strong><ul>{lis}</ul></div>'


def _comparison_html(rows: list[dict], chance: float | None) -> str:
    accs = [_num(r.get("accuracy")) for r in rows]
    best = max((a for a in accs if a is not None), default=None)
    has_std = any(_num(r.get("std")) is not None for r in rows)
    head = (
        "<tr><th>method</th><th class=num>accuracy</th>"
        + ("<th class=num>&plusmn; std</th>" if has_std else "")
        + "<th class=num>macro-F1</th><th class=num>seconds</th></tr>"
    )
    body = []
    for r, a in zip(rows, accs):
        cls = ' class="best"' if best is not None and a == best and len(rows) > 1 else ""
        std_cell = f"<td class=num>{_fmt(_num(r.get('std')))}</td>" if has_std else ""
        secs = _num(r.get("seconds"))
        body.append(
            f"<tr{cls}><td>{_e(r.get('name', ''))}</td><td class=num>{_fmt(a)}</td>{std_cell}"
            f"<td class=num>{_fmt(_num(r.get('macro_f1')))}</td>"
            f"<td class=num>{'&mdash;' if secs is None else f'{secs:,.1f}'}</td></tr>"
        )
    note = f'<p class="muted">Chance accuracy: {chance:.3f}.</p>' if chance is not None else ""
    png = plot_comparison(rows, "test accuracy by method", chance=chance)
    return (
        f'<div class="scroll"><table>{head}{"".join(body)}</table></div>{note}'
        + figure_html(png, "bar chart of test accuracy by method")
    )


def _metrics_html(metrics: Mapping, classes: list[str] | None) -> str:
    parts = []
    cards = [
        ("accuracy", metrics.get("accuracy"), 3),
        ("macro-F1", metrics.get("macro_f1"), 3),
        ("balanced accuracy", metrics.get("balanced_accuracy"), 3),
        ("test samples", metrics.get("n"), 0),
    ]
    card_html = "".join(
        f'<div class="card"><div class="value">{_fmt(v, d)}</div><div class="label">{_e(label)}</div></div>'
        for label, v, d in cards
        if v is not None
    )
    if card_html:
        parts.append(f'<div class="cards">{card_html}</div>')

    per_class = list(metrics.get("per_class") or [])
    if per_class:
        rows = "".join(
            f"<tr><td>{_e(p.get('class', i))}</td><td class=num>{_fmt(_num(p.get('precision')))}</td>"
            f"<td class=num>{_fmt(_num(p.get('recall')))}</td><td class=num>{_fmt(_num(p.get('f1')))}</td>"
            f"<td class=num>{_fmt(p.get('support'), 0)}</td></tr>"
            for i, p in enumerate(per_class)
        )
        parts.append(
            '<h3>Per class</h3><div class="scroll"><table class="per-class">'
            "<tr><th>class</th><th class=num>precision</th><th class=num>recall</th>"
            f"<th class=num>F1</th><th class=num>support</th></tr>{rows}</table></div>"
        )

    cm = metrics.get("confusion_matrix")
    if cm is not None:
        names = list(classes) if classes else [str(p.get("class", i)) for i, p in enumerate(per_class)]
        if len(names) == len(cm):
            png = plot_confusion(cm, names, "confusion matrix (test)")
            parts.append(
                figure_html(
                    png,
                    "confusion matrix",
                    "Rows are true classes, columns predicted classes; colours are normalised per row.",
                )
            )
        else:
            parts.append(
                f'<p class="muted">Confusion matrix not drawn: it has {len(cm)} rows but '
                f"{len(names)} class names were given.</p>"
            )
    return "\n".join(parts)


def _learning_curve_html(points: list[dict]) -> str:
    png = plot_learning_curve(points, "test accuracy vs labels per class")
    keys = [k for k in ("transfer", "scratch") if any(_num(p.get(k)) is not None for p in points)]
    both = len(keys) == 2
    head = "<tr><th class=num>labels per class</th>" + "".join(f"<th class=num>{k}</th>" for k in keys)
    head += "<th class=num>transfer &minus; scratch</th></tr>" if both else "</tr>"
    rows = []
    for p in sorted(points, key=lambda p: _num(p.get("labels_per_class")) or 0.0):
        cells = [f"<td class=num>{_fmt(p.get('labels_per_class'), 0)}</td>"]
        for k in keys:
            v, s = _num(p.get(k)), _num(p.get(f"{k}_std"))
            text = _fmt(v) + (f" &plusmn; {s:.3f}" if v is not None and s is not None else "")
            cells.append(f"<td class=num>{text}</td>")
        if both:
            t, s = _num(p.get("transfer")), _num(p.get("scratch"))
            cells.append(f"<td class=num>{'&mdash;' if t is None or s is None else f'{t - s:+.3f}'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'
    return figure_html(png, "learning curve") + table


def _projection_html(proj: Mapping, classes: list[str] | None) -> str:
    coords = np.asarray(proj.get("coords"), dtype=np.float64)
    labels = np.asarray(proj.get("labels"))
    if classes is None:
        top = int(labels.max()) + 1 if labels.size else 0
        classes = [str(i) for i in range(top)]
    method = str(proj.get("method") or "2-D projection")
    png = plot_projection(
        coords,
        labels,
        list(classes),
        f"{method} of the features",
        markers=proj.get("markers"),
        marker_names=proj.get("marker_names"),
    )
    caption = proj.get("caption") or (
        f"{method} projection of {coords.shape[0]:,} samples' features, coloured by class. "
        "Nearby points have similar features; distances between far-apart clusters are not meaningful."
    )
    return figure_html(png, f"{method} projection", _e(caption))


def _bad_inputs_html(bad: Any) -> str:
    pairs = _pairs(bad, "bad_inputs")
    rows = "".join(f"<tr><td>{_e(item)}</td><td>{_e(reason)}</td></tr>" for item, reason in pairs[:_BAD_INPUT_ROWS])
    more = len(pairs) - _BAD_INPUT_ROWS
    tail = f'<p class="muted">and {more:,} more</p>' if more > 0 else ""
    many = len(pairs) != 1
    intro = (
        f'<p class="muted">{len(pairs):,} input{"s" if many else ""} could not be read and '
        f'{"were" if many else "was"} skipped.</p>'
    )
    return f'{intro}<div class="scroll"><table><tr><th>input</th><th>reason</th></tr>{rows}</table></div>{tail}'


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _render(report: Mapping) -> str:
    if not isinstance(report, Mapping):
        raise DataError(f"report must be a dict; got {type(report).__name__}.")
    title = report.get("title")
    if title is None or str(title).strip() == "":
        raise DataError("report needs a non-empty 'title'.")
    title = str(title)
    classes = [str(c) for c in report["classes"]] if report.get("classes") is not None else None

    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
    if report.get("summary"):
        sections.append(("summary", "Summary", _summary_html(report["summary"])))
    if report.get("comparison"):
        sections.append(
            ("comparison", "Comparison", _comparison_html(list(report["comparison"]), _num(report.get("chance"))))
        )
    if report.get("metrics"):
        sections.append(("metrics", "Test metrics", _metrics_html(report["metrics"], classes)))
    if report.get("learning_curve"):
        sections.append(("learning-curve", "Learning curve", _learning_curve_html(list(report["learning_curve"]))))
    if report.get("projection"):
        proj_classes = classes
        if proj_classes is None and report.get("metrics"):
            per_class = report["metrics"].get("per_class") or []
            proj_classes = [str(p.get("class", i)) for i, p in enumerate(per_class)] or None
        sections.append(("projection", "Feature map", _projection_html(report["projection"], proj_classes)))
    if report.get("bad_inputs"):
        sections.append(("bad-inputs", "Unreadable inputs", _bad_inputs_html(report["bad_inputs"])))
    for i, extra in enumerate(report.get("sections") or []):
        if not isinstance(extra, Mapping):
            raise DataError(f"report['sections'][{i}] must be a dict with 'title' and 'html'.")
        sections.append((f"section-{i + 1}", str(extra.get("title", f"Section {i + 1}")), str(extra.get("html", ""))))
    if report.get("config") is not None:
        text = json.dumps(report["config"], indent=2, default=_json_default, ensure_ascii=False)
        sections.append(("config", "Configuration", f"<pre>{_e(text)}</pre>"))

    nav = ""
    if len(sections) > 2:
        nav = "<nav>" + "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t, _ in sections) + "</nav>"

    from transferkit import __version__

    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    head = [f"<h1>{_e(title)}</h1>"]
    if report.get("subtitle"):
        head.append(f'<p class="subtitle">{_e(report["subtitle"])}</p>')
    alerts = report.get("warnings") or []
    alerts = [alerts] if isinstance(alerts, str) else list(alerts)
    glyphs = missing_glyphs([title, *(classes or [])])
    if glyphs:  # said once here, not as a warning per figure on stderr
        shown = " ".join(glyphs[:12]) + (" ..." if len(glyphs) > 12 else "")
        alerts.append(f"{len(glyphs)} character(s) in the title or class names ({shown}) are in a script that "
                        "no installed font covers, so the figures write them as \\uXXXX codes (the tables show "
                        "them as they are). Install a font for that script, e.g. Noto Sans CJK for Chinese, "
                        "Japanese and Korean (Debian/Ubuntu: apt-get install fonts-noto-cjk), to see them in the "
                        "figures.")
    if alerts:
        head.append(_warnings_html(alerts))
    head.append(nav)
    body = "\n".join(head + [_section(a, t, b) for a, t, b in sections])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="transferkit">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
        f"<footer>Generated by transferkit {_e(__version__)} on {_e(stamp)}.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """Writes a report dict as one self-contained HTML file.

    The file has inline CSS and base64-embedded PNG figures, no scripts and no external resources.
    Sections whose key is absent (or empty) are skipped. The write is atomic: the page goes to a
    temporary file next to ``path`` and is renamed into place, so a reader never sees half a page.

    Args:
        path: Where to write the HTML file; missing parent folders are created.
        report: The content. ``title`` (str) is required; optional keys are ``subtitle`` (str),
            ``warnings`` (list of str, shown in a box at the top), ``summary`` (list of
            ``(label, value)`` pairs or a dict), ``comparison`` (list of dicts with ``name``,
            ``accuracy``, ``macro_f1``, ``seconds``, optional ``std``) with ``chance`` (float),
            ``metrics`` (the dict from :func:`~transferkit.report.classification_metrics`),
            ``classes`` (list of str), ``learning_curve`` (list of point dicts, see
            :func:`~transferkit.report.plot_learning_curve`), ``projection`` (dict with ``coords``,
            ``labels``, optional ``markers``, ``marker_names``, ``method``, ``caption``),
            ``bad_inputs`` (list of ``(item, reason)``; the first 50 are listed), ``sections`` (list
            of dicts with ``title`` and trusted raw ``html``) and ``config`` (a JSON-able dict shown
            at the bottom).

    Returns:
        The absolute path of the written file.

    Raises:
        DataError: If ``report`` has no title or a section is malformed.
        OutputError: If the file cannot be written.
    """
    target = Path(path).expanduser().absolute()
    page = _render(report)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(page)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(
            f"cannot write the report to {target}: {exc.strerror or exc}. Choose a writable path."
        ) from exc
    finally:
        try:
            tmp.unlink()  # only still there if the write or the rename failed
        except OSError:
            pass
    return target
