"""The package's shape: layers in folders, imports that point down, no cycles, no private
names imported across modules, no module past 500 lines.

Read from the source with ast (nothing is imported), so the shape stays as notes/design.md
draws it. Imports under `if TYPE_CHECKING:` count too: a cycle for the type checker is
still a cycle for a reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "contengine"
MAX_LINES = 500

# Each layer, and the layers it may import (besides itself). Leaves first.
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "clock": set(),
    "core": {"errors", "clock"},
    "store": {"core", "errors", "clock"},
    "drive": {"store", "core", "errors", "clock"},
    "engine": {"drive", "store", "core", "errors", "clock"},
    "testing": {"engine", "drive", "store", "core", "errors", "clock"},
    # The demo is written as a user would write it: against `import contengine as ce`.
    "tools": {"__init__", "engine", "drive", "store", "core", "errors", "clock"},
    "cli": {"testing", "tools", "engine", "drive", "store", "core", "errors", "clock"},
    # The top: the public names (__init__) and `python -m contengine`.
    "__init__": {"cli", "testing", "engine", "drive", "store", "core", "errors", "clock"},
    "__main__": {"cli"},
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def layer_of(module: str) -> str:
    """The layer a module belongs to: its first name below the package."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for each import of a package module."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[str, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "contengine":
                continue
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    found.append((f"{target}.{alias.name}", "", node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "contengine":
                    found.append((alias.name, "", node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    return {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [
        f"{m}:{line} imports {name} from {target}"
        for m in MODULES
        for target, name, line in imports(m)
        if name.startswith("_") and not name.startswith("__") and target != m
    ]
    assert private == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if layer_of(t) != layer_of(m) and layer_of(t) not in LAYERS[layer_of(m)]
    ]
    assert upward == []


def test_every_module_belongs_to_a_known_layer() -> None:
    assert sorted({layer_of(m) for m in MODULES} - set(LAYERS)) == []


def test_no_module_is_longer_than_the_limit() -> None:
    lines = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in lines.items() if n > MAX_LINES} == {}


def test_every_package_says_what_its_layer_is_for() -> None:
    undocumented = [
        m
        for m, path in MODULES.items()
        if path.name == "__init__.py" and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert undocumented == []


@pytest.mark.parametrize("layer", ["core"])
def test_the_pure_core_does_no_io(layer: str) -> None:
    """core imports no sqlite3, threading, socket or subprocess."""
    banned = {"sqlite3", "threading", "socket", "subprocess", "concurrent"}
    found = []
    for m, path in MODULES.items():
        if layer_of(m) != layer:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [f"{m} imports {n}" for n in names if n.split(".")[0] in banned]
    assert found == []


def test_only_the_store_imports_sqlite3() -> None:
    found = []
    for m, path in MODULES.items():
        if layer_of(m) in ("store", "tools", "testing"):
            continue  # tools: the benchmark's raw-SQLite floor; testing: reads a file's rows
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name == "sqlite3" for a in node.names):
                found.append(m)
    assert found == []


def test_importing_contengine_does_not_load_the_testing_kit() -> None:
    code = "import sys, contengine; print(sorted(m for m in sys.modules if 'testing' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_postgres_store_imports_psycopg() -> None:
    """psycopg is an optional dependency: only store/postgres/ may load it."""
    found = []
    for m, path in MODULES.items():
        if m.startswith("contengine.store.postgres"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [m for n in names if n.split(".")[0] in ("psycopg", "psycopg_pool")]
    assert found == []


def test_importing_contengine_does_not_load_psycopg() -> None:
    code = "import sys, contengine; print(sorted(m for m in sys.modules if 'psycopg' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
