"""Tests of transferkit.report: metrics, figures, the HTML page and the 2-D projection."""

from __future__ import annotations

import base64
import io
import json
import re
import warnings

import matplotlib
import numpy as np
import pytest
from PIL import Image

from transferkit.errors import DataError, OutputError
from transferkit.report import plots
from transferkit.report import (
    classification_metrics,
    plot_comparison,
    plot_confusion,
    plot_learning_curve,
    plot_projection,
    projection_2d,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# ---------------------------------------------------------------- metrics

# y_true  a a b b c c
# y_pred  a b b b a a      -> class c is never predicted
# confusion (rows true): a=[1,1,0] b=[0,2,0] c=[2,0,0]
# precision a=1/3 b=2/3 c=0 ; recall a=1/2 b=1 c=0 ; F1 a=0.4 b=0.8 c=0
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 0, 0])


def test_metrics_match_hand_computed_example():
    m = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert m["n"] == 6 and type(m["n"]) is int
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.4 + 0.8 + 0.0) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    by_class = {p["class"]: p for p in m["per_class"]}
    assert [p["class"] for p in m["per_class"]] == ["a", "b", "c"]
    assert by_class["a"]["precision"] == pytest.approx(1 / 3)
    assert by_class["a"]["recall"] == pytest.approx(0.5)
    assert by_class["a"]["f1"] == pytest.approx(0.4)
    assert by_class["b"]["precision"] == pytest.approx(2 / 3)
    assert by_class["b"]["f1"] == pytest.approx(0.8)
    assert by_class["c"] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_metrics_cover_all_classes_and_are_plain_json():
    m = classification_metrics(Y_TRUE.tolist(), Y_PRED.tolist(), ["a", "b", "c", "d"])
    # class d has no samples and no predictions: still a row and a column of zeros
    assert len(m["confusion_matrix"]) == 4 and all(len(r) == 4 for r in m["confusion_matrix"])
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert [r[3] for r in m["confusion_matrix"]] == [0, 0, 0, 0]
    assert m["per_class"][3]["support"] == 0
    assert m["macro_f1"] == pytest.approx((0.4 + 0.8) / 4)
    assert sum(map(sum, m["confusion_matrix"])) == m["n"]
    # plain Python types only: survives a JSON round trip unchanged
    assert json.loads(json.dumps(m)) == m
    assert all(type(v) is float for k, v in m.items() if k in ("accuracy", "macro_f1", "balanced_accuracy"))
    assert all(type(x) is int for row in m["confusion_matrix"] for x in row)
    assert all(type(p["precision"]) is float and type(p["support"]) is int for p in m["per_class"])


@pytest.mark.parametrize(
    "y_true, y_pred",
    [([0, 1], [0]), ([0, 3], [0, 1]), ([0, -1], [0, 1]), ([], []), ([[0, 1]], [[0, 1]]), ([0.5, 1], [0, 1])],
)
def test_metrics_reject_bad_input(y_true, y_pred):
    with pytest.raises(DataError):
        classification_metrics(np.asarray(y_true), np.asarray(y_pred), ["a", "b", "c"])


# ---------------------------------------------------------------- plots


def test_plots_leave_global_matplotlib_state_alone():
    before = dict(matplotlib.rcParams)
    plot_comparison([{"name": "x", "accuracy": 0.5}], "t")
    plot_confusion([[1, 0], [0, 1]], ["a", "b"], "t")
    assert dict(matplotlib.rcParams) == before


def test_plot_confusion_small_and_many_classes():
    small = plot_confusion([[5, 1], [0, 7]], ["cat", "dog"], "2 classes")
    rng = np.random.default_rng(0)
    k = 25
    cm = rng.integers(0, 20, size=(k, k)) + np.eye(k, dtype=int) * 50
    big = plot_confusion(cm.tolist(), [f"class with a long name {i}" for i in range(k)], "25 classes")
    ws, hs = _png_size(small)
    wb, hb = _png_size(big)
    assert wb > ws and hb > hs  # the figure grows with the number of classes
    # a class with no samples (all-zero row) must not break the row normalisation
    _png_size(plot_confusion([[0, 0, 0], [1, 2, 0], [0, 0, 3]], ["a", "b", "c"], "empty row"))
    with pytest.raises(DataError):
        plot_confusion([[1, 2], [3, 4]], ["a", "b", "c"], "mismatch")


CJK = ["猫", "犬", "鳥類の写真"]


@pytest.fixture
def no_cjk_font(monkeypatch):
    """The figures' fonts as on a machine without any CJK font (DejaVu Sans only)."""
    plots._font_families.cache_clear()
    plots._covered.cache_clear()
    monkeypatch.setattr(plots, "_FALLBACK_FONTS", ())
    yield
    plots._font_families.cache_clear()
    plots._covered.cache_clear()


def _texts(fig):
    fig.canvas.draw()
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def test_cjk_class_names_without_a_cjk_font_are_escaped_quietly(no_cjk_font):
    assert plots._font_families() == ("DejaVu Sans",)
    assert plots.missing_glyphs(CJK + ["людина", "café"]) == sorted(set("猫犬鳥類の写真"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _png_size(plot_confusion([[3, 1, 0], [0, 2, 1], [1, 0, 4]], CJK, "猫 vs 犬"))
    assert not [w for w in caught if "Glyph" in str(w.message)], "no 'Glyph missing' warnings on stderr"
    fig = plots._confusion_figure(np.eye(3), CJK, "t")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[:2] == ["\\u732b", "\\u72ac"], "an escape, not an empty box"


def test_cjk_fallback_font_is_used_when_installed(monkeypatch):
    monkeypatch.setattr(plots, "_font_families", lambda: ("DejaVu Sans", "Noto Sans CJK JP"))
    monkeypatch.setattr(plots, "_covered", lambda: frozenset(map(ord, "猫犬鳥類の写真 abct")))
    assert plots.missing_glyphs(CJK) == [] and plots._drawable("猫") == "猫"
    fig = plots._confusion_figure(np.eye(3), CJK, "t")
    plots._apply_fonts(fig)
    label = fig.axes[0].get_yticklabels()[0]
    assert label.get_text() == "猫" and label.get_fontfamily() == ["DejaVu Sans", "Noto Sans CJK JP"]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5


def test_long_class_names_are_wrapped_or_keyed_never_cut():
    names = ["transportation_vehicles", "people_clothing", "animals_mammals_and_other_furry_friends_of_ours"]
    fig = plots._confusion_figure(np.eye(3), names[:2] + ["buildings"], "t")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[0] == "transportation_\nvehicles" and ticks[2] == "buildings"
    assert all("\u2026" not in t for t in ticks)
    # a name too long for two lines: numbered ticks and a key with every full name below the matrix
    fig = plots._confusion_figure(np.eye(3), names, "t")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "3"]
    key = " ".join(t.get_text() for t in fig.texts)
    assert all(f"{i + 1}  {n}" in key for i, n in enumerate(names))
    texts = [t.get_window_extent() for t in _texts(fig)]
    assert not any(_overlap(a, b) for i, a in enumerate(texts) for b in texts[i + 1:])


def test_wall_time_labels_clear_of_bars_error_bars_and_each_other():
    rows = [{"name": "probe", "seconds": 2.0}, {"name": "finetune (all layers, lr 2e-3)", "seconds": 45.0, "std": 3.0},
            {"name": "partial", "seconds": 20.0, "std": 0.5}, {"name": "gradual unfreezing with decay", "seconds": 30.0}]
    for scale in (1.0, 100.0):  # linear, then log scale (range above 30x)
        fig = plots._wall_time_figure([{**r, "seconds": r["seconds"] * (scale if i == 1 else 1)}
                                       for i, r in enumerate(rows)], "wall time")
        ax = fig.axes[0]
        fig.canvas.draw()
        values = [t.get_window_extent() for t in ax.texts]
        whiskers = [seg for c in ax.collections for seg in c.get_segments()]
        ends = [ax.transData.transform((max(seg[:, 0]), seg[0, 1]))[0] for seg in whiskers]
        assert len(values) == len(ends) == 4 and all(v.x0 >= e - 0.5 for v, e in zip(values, ends))
        ticks = [t.get_window_extent() for t in ax.get_yticklabels()]
        assert not any(_overlap(a, b) for i, a in enumerate(ticks) for b in ticks[i + 1:])
        assert all(v.x1 <= ax.get_window_extent().x1 + 1 for v in values), "values stay inside the axes"


def test_report_says_once_that_a_script_has_no_font(no_cjk_font, tmp_path):
    path = write_report(tmp_path / "r.html", {"title": "run", "classes": CJK,
                                              "metrics": {"confusion_matrix": np.eye(3, dtype=int).tolist()}})
    html = path.read_text()
    assert html.count("no installed font covers") == 1 and "fonts-noto-cjk" in html
    plain = write_report(tmp_path / "p.html", {"title": "run", "classes": ["a", "b"]}).read_text()
    assert "no installed font covers" not in plain


def test_plot_learning_curve_edge_cases():
    points = [
        {"labels_per_class": 1, "transfer": 0.41, "scratch": 0.12, "chance": 0.1, "transfer_std": 0.05},
        {"labels_per_class": 5, "transfer": 0.70, "scratch": 0.25},
        {"labels_per_class": 20, "transfer": 0.84},  # scratch missing at this budget
        {"labels_per_class": 100, "transfer": 0.90, "scratch": 0.61, "scratch_std": 0.02},
    ]
    w, h = _png_size(plot_learning_curve(points, "wide range, log x"))
    assert 300 < w < 1500 and 200 < h < 1200
    # one point, one series
    _png_size(plot_learning_curve([{"labels_per_class": 10, "transfer": 0.5}], "one point"))
    # one point per series, at different budgets; NaN treated as missing
    _png_size(
        plot_learning_curve(
            [{"labels_per_class": 2, "scratch": 0.3}, {"labels_per_class": 4, "transfer": float("nan")}], "sparse"
        )
    )
    with pytest.raises(DataError):
        plot_learning_curve([], "empty")
    with pytest.raises(DataError):
        plot_learning_curve([{"transfer": 0.5}], "no x")


def test_plot_projection_with_and_without_markers():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(40, 2))
    labels = rng.integers(0, 2, size=40)
    plain = plot_projection(coords, labels, ["a", "b"], "two classes")
    _png_size(plain)
    markers = np.repeat([0, 1], 20)
    domains = plot_projection(coords, labels, ["a", "b"], "domains", markers=markers, marker_names=["source", "target"])
    _png_size(domains)
    # 25 classes: legend in several columns, colours cycle
    labels25 = np.arange(50) % 25
    wide = plot_projection(rng.normal(size=(50, 2)), labels25, [f"c{i}" for i in range(25)], "25 classes")
    assert _png_size(wide)[0] > _png_size(plain)[0]
    with pytest.raises(DataError):
        plot_projection(coords, labels[:10], ["a", "b"], "bad")
    with pytest.raises(DataError):
        plot_projection(coords, labels + 5, ["a", "b"], "label out of range")


def test_plot_comparison():
    rows = [
        {"name": "lite0 + logreg probe", "accuracy": 0.91, "std": 0.01},
        {"name": "small CNN from scratch", "accuracy": 0.42},
        {"name": "no number", "accuracy": None},
    ]
    _png_size(plot_comparison(rows, "comparison", chance=0.1))
    one = plot_comparison([{"name": "only", "accuracy": 1.0}], "one row")
    assert _png_size(plot_comparison(rows, "comparison"))[1] > _png_size(one)[1]
    with pytest.raises(DataError):
        plot_comparison([], "empty")


# ---------------------------------------------------------------- HTML


def _full_report(n_bad: int = 60) -> dict:
    classes = ["airplane", "bird", "cat <&> dog"]
    rng = np.random.default_rng(0)
    return {
        "title": "Run <script>alert(1)</script>",
        "subtitle": "clipart, 10 labels per class",
        "warnings": ["transfer is 4.2 points worse than the from-scratch baseline"],
        "summary": [("dataset", "clipart"), ("backbone", "lite0"), ("cache hit", True), ("feature time (s)", 3.21)],
        "comparison": [
            {"name": "lite0 + logreg probe", "accuracy": 0.50, "macro_f1": 0.48, "seconds": 3.2, "std": 0.02},
            {"name": "small CNN from scratch", "accuracy": 0.542, "macro_f1": 0.51, "seconds": 41.0},
        ],
        "chance": 1 / 3,
        "metrics": classification_metrics(Y_TRUE, Y_PRED, classes),
        "classes": classes,
        "learning_curve": [
            {"labels_per_class": 1, "transfer": 0.3, "scratch": 0.2, "chance": 1 / 3},
            {"labels_per_class": 10, "transfer": 0.5, "scratch": 0.54},
        ],
        "projection": {
            "coords": rng.normal(size=(30, 2)),
            "labels": np.arange(30) % 3,
            "markers": np.arange(30) % 2,
            "marker_names": ["train", "test"],
            "method": "t-SNE",
        },
        "bad_inputs": [(f"img_{i}.png", "cannot identify image file") for i in range(n_bad)],
        "config": {"backbone": "lite0", "seed": 0, "url": "https://example.com/x"},
        "sections": [{"title": "Extra <b>", "html": "<p id='extra-marker'>extra content</p>"}],
    }


def test_write_report_is_self_contained_and_escaped(tmp_path):
    out = write_report(tmp_path / "sub" / "report.html", _full_report())
    assert out == (tmp_path / "sub" / "report.html").absolute() and out.is_file()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")

    # nothing external, nothing executable
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "cat &lt;&amp;&gt; dog" in text
    assert "Extra &lt;b&gt;" in text

    assert "transfer is 4.2 points worse than the from-scratch baseline" in text
    # the warning box comes before the first section
    assert text.index("4.2 points worse") < text.index('<section id="summary"')

    # comparison, confusion, learning curve, projection: 4 embedded, decodable PNGs
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 4
    for b64 in images:
        assert base64.b64decode(b64).startswith(PNG_MAGIC)

    # per-class table with 3-decimal numbers (precision of class a = 1/3, F1 of b = 0.8)
    per_class = text[text.index('class="per-class"') :]
    per_class = per_class[: per_class.index("</table>")]
    for fragment in ("airplane", "bird", "0.333", "0.800", "0.400"):
        assert fragment in per_class
    assert per_class.count("<tr>") == 4  # header + 3 classes

    # bad inputs: first 50 rows then a count of the rest
    assert "img_49.png" in text and "img_50.png" not in text
    assert "and 10 more" in text
    # extra sections sit before the config block, which is pretty JSON
    assert text.index("extra-marker") < text.index('<section id="config"')
    assert "&quot;backbone&quot;: &quot;lite0&quot;" in text
    assert "t-SNE" in text[text.index('<section id="projection"') :]
    # atomic write: no temporary file left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def test_write_report_minimal_and_errors(tmp_path):
    out = write_report(str(tmp_path / "min.html"), {"title": "Just a title"})
    text = out.read_text(encoding="utf-8")
    assert "<h1>Just a title</h1>" in text
    assert "<img" not in text and "<section" not in text

    # overwriting an existing report replaces it
    write_report(out, {"title": "Second"})
    assert "Second" in out.read_text(encoding="utf-8") and "Just a title" not in out.read_text(encoding="utf-8")

    with pytest.raises(DataError):
        write_report(tmp_path / "x.html", {"subtitle": "no title"})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        write_report(blocker / "report.html", {"title": "t"})


def test_write_report_few_bad_inputs_has_no_more_line(tmp_path):
    text = write_report(tmp_path / "r.html", {"title": "t", "bad_inputs": [("a.png", "truncated")]}).read_text()
    assert "a.png" in text and "truncated" in text and "more</p>" not in text


# ---------------------------------------------------------------- projection_2d


def test_projection_tiny_inputs_use_pca():
    rng = np.random.default_rng(0)
    for n in (2, 3):
        coords, idx, method = projection_2d(rng.normal(size=(n, 8)))
        assert coords.shape == (n, 2) and np.isfinite(coords).all()
        assert idx.tolist() == list(range(n))
        assert method == "PCA"
    # constant features must not crash (standardisation divides by a zero std otherwise)
    for n in (3, 20):
        coords, _, _ = projection_2d(np.ones((n, 5)))
        assert coords.shape == (n, 2) and np.isfinite(coords).all()
    # one feature only
    coords, _, _ = projection_2d(rng.normal(size=(12, 1)))
    assert coords.shape == (12, 2) and np.isfinite(coords).all()
    with pytest.raises(DataError):
        projection_2d(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(DataError):
        projection_2d(np.zeros(5))


def test_projection_tsne_separates_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 25)
    X = rng.normal(size=(50, 64)) + labels[:, None] * 6.0
    X[:, 0] = 3.0  # a constant feature
    coords, idx, method = projection_2d(X, seed=3)
    assert method == "t-SNE" and coords.shape == (50, 2) and idx.tolist() == list(range(50))
    # the two well-separated clusters stay apart: every point is nearer its own cluster's centre
    centres = np.stack([coords[labels == c].mean(axis=0) for c in (0, 1)])
    nearest = np.argmin(((coords[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).all()
    again, idx2, _ = projection_2d(X, seed=3)
    np.testing.assert_array_equal(coords, again)
    np.testing.assert_array_equal(idx, idx2)


def test_projection_subsamples_above_max_points():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6))
    coords, idx, method = projection_2d(X, seed=1, max_points=25)
    assert coords.shape == (25, 2) and idx.shape == (25,)
    assert np.all(np.diff(idx) > 0)  # unique and sorted
    assert idx.min() >= 0 and idx.max() < 60
    coords2, idx2, _ = projection_2d(X, seed=1, max_points=25)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(coords, coords2)
    _, idx3, _ = projection_2d(X, seed=2, max_points=25)
    assert not np.array_equal(idx, idx3)
