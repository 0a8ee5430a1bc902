"""The package's shape, read from its source so it cannot rot: one training loop, one Fabric, no import cycles, no
private name imported from another module, CLI flags named only by the CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "transferkit"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _target(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Module -> the package modules it imports (at any level of the file, so lazy imports count too, with the
    packages that importing them runs); and every private name imported from another module."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    private = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = _target(m, path, node)
                if not base or not base.startswith("transferkit"):
                    continue
                for a in node.names:
                    full = f"{base}.{a.name}"
                    targets.append(full if full in MODULES else base)
                    if a.name.startswith("_") and not a.name.startswith("__") and full not in MODULES:
                        private.append((m, base, a.name))
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in MODULES]
            for t in targets:
                if t not in MODULES:
                    continue
                parts = t.split(".")
                for k in range(2, len(parts) + 1):  # importing a.b.c runs a.b first
                    anc = ".".join(parts[:k])
                    if anc in MODULES and anc != m and not m.startswith(anc + "."):
                        edges[m].add(anc)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def _calls(attr: str) -> dict[str, int]:
    """Module -> how many calls of ``.attr(...)`` / ``attr(...)`` its code makes (strings and comments excluded)."""
    out = {}
    for m, path in MODULES.items():
        n = 0
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                n += name == attr
        if n:
            out[m] = n
    return out


def test_backward_is_called_in_one_module_only():
    assert set(_calls("backward")) == {"transferkit.train.loop"}, _calls("backward")


def test_fabric_is_made_at_one_place():
    assert _calls("Fabric") == {"transferkit.train.loop": 1}


def test_no_import_cycle_inside_the_package():
    edges, _ = _imports()
    assert _cycles(edges) == []


def test_no_private_name_is_imported_from_another_module():
    _, private = _imports()
    assert private == []


def test_the_structure_checks_can_fail():
    """The checks above see what they look for: a made-up cycle and a made-up private import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    edges, _ = _imports()
    assert "transferkit.train.loop" in edges["transferkit.train.engine"]  # lazy and top-level imports both count
    assert "transferkit.data" in edges["transferkit.features.featureset"]  # importing data.load runs data/__init__


def test_only_the_cli_names_cli_flags():
    """Library messages name parameters (``labels_per_class=5``); the CLI turns them into its flags. A ``--flag`` in a
    message string below the CLI would be wrong for Python users."""
    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    offenders = []
    for m, path in MODULES.items():
        if m == "transferkit.cli":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for hit in flag.findall(node.value):
                    if hit not in ("--no-deps",):  # a pip command in an install hint
                        offenders.append((m, hit))
    assert offenders == []
