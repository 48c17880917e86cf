"""The layout rules of the code base (DESIGN.md, STYLE.md), checked on the source itself: no import
circles, small modules and functions, the dependency direction, no path of any machine."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("auralsam2", "data_specs", "feature_cache", "flows", "dashboards")
MAX_MODULE_LINES = 600
MAX_FUNCTION_CODE_LINES = 100


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path, name: str) -> set[str]:
    """Every project module `name` imports, at module level or inside functions. Importing
    `a.b.c` also runs the `__init__` of `a.b` and `a`: those edges count too, except to the
    module's own ancestor packages (Python is already initialising them)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in MODULES and prefix != name and prefix not in ancestors:
                edges.add(prefix)
    return edges


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert _cycles(GRAPH) == []


def test_dependency_direction() -> None:
    """The model library imports no orchestration, tracking or data tooling; nothing imports `flows`."""
    forbidden = ("prefect", "mlflow", "duckdb", "flows", "feature_cache", "data_specs", "dashboards")
    for name, path in MODULES.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
        if name.startswith("auralsam2"):
            assert not imported & set(forbidden), f"{path}: imports {sorted(imported & set(forbidden))}"
        if not name.startswith("flows"):
            assert "flows" not in imported, f"{path} imports flows"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_small(name: str) -> None:
    path = MODULES[name]
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path}: {len(lines)} lines (split it along the design's seams)"
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        doc = set()
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            doc = set(range(body[0].lineno, body[0].end_lineno + 1))
        code = [i for i in range(node.lineno, node.end_lineno + 1)
                if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#")]
        assert len(code) <= MAX_FUNCTION_CODE_LINES, f"{path}:{node.lineno} {node.name}: {len(code)} lines of code"


def test_no_path_of_any_machine_in_the_repository() -> None:
    """Code, configs and scripts name no absolute path outside the system folders and never read a
    `shared/` folder beside the checkout: a clone anywhere must work."""
    absolute = re.compile(r"""["'](/(?!dev/|proc/|sys/|usr/|etc/|bin/|tmp/)[A-Za-z0-9_.-]+/[^"' ]*|\.\./shared[^"']*)["']""")
    kinds = ("*.py", "*.yaml", "*.sh", "*.toml", "Makefile", "run")
    offenders = []
    for folder in (*PACKAGES, "tests", "bench", "configs", "scripts", ".ci"):
        for kind in kinds:
            for path in (ROOT / folder).rglob(kind):
                for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    if absolute.search(line) and "noqa: machine-path" not in line:
                        offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_benchmarks_md_is_the_assembly_of_bench_results(tmp_path, monkeypatch):
    """`make bench` rebuilds BENCHMARKS.md from bench/results/*.md: a section written into
    BENCHMARKS.md alone would be lost at the next run (it once dropped five)."""
    import importlib
    import sys

    monkeypatch.setattr(sys, "argv", ["python"])
    importlib.import_module("bench.__main__").assemble(tmp_path / "BENCHMARKS.md")
    rebuilt = (tmp_path / "BENCHMARKS.md").read_text().splitlines()
    committed = (ROOT / "BENCHMARKS.md").read_text().splitlines()
    dated = [i for i, line in enumerate(committed) if line.startswith("Last assembled")]
    for i in dated:  # the assembly date and machine line is the one that may differ
        rebuilt[i] = committed[i]
    assert rebuilt == committed, "edit bench/results/*.md, then `python -m bench --assemble-only`"
