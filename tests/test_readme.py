"""Every Python snippet of the README runs as written, on small stand-ins for the names it leaves to the reader
(``images``, ``labels``, ``new_images`` and the files ``a.jpg`` / ``b.jpg``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import make_image

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_readme_has_python_snippets():
    assert BLOCKS, "the README's Python section lost its snippet"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = [make_image(i % 3, seed=i) for i in range(24)]
    labels = ["squares", "discs", "stripes"] * 8
    for name, kind in (("a.jpg", 0), ("b.jpg", 1)):
        make_image(kind, seed=900 + kind).convert("RGB").save(name)
    namespace = {"images": images, "labels": labels, "new_images": [make_image(k, seed=500 + k) for k in range(3)]}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    # what the snippet promises: a saved run that predicts the two files with a class and its probabilities
    from transferkit import load_run

    out = load_run("my-model").predict(["a.jpg", "b.jpg"])
    assert len(out) == 2 and set(out["prediction"]) <= set(labels)
    assert {"confidence", "p_squares"} <= set(out.columns)
