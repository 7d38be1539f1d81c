"""The package's modules form layers: no import cycle, counting every import (inside functions and under
``TYPE_CHECKING`` too), so that a module can be read, tested and changed from the bottom up."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "alembic_samizdat"


def module_names() -> dict[str, Path]:
    """Dotted name of every module of the package."""
    out: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (a package's ``__init__`` stands for the package)."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            # Every module named (`from . import a, b` imports both); the package itself only when none is.
            named = [t for t in targets if t in modules and t != name]
            submodules = [t for t in named if t != targets[-1]] if isinstance(node, ast.ImportFrom) else named
            graph[name].update(submodules or named[:1])
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 20 and graph["alembic_samizdat.planner"], "the scan found the package's imports"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_error_lives_in_errors_and_is_importable_from_the_root_and_its_old_home() -> None:
    import importlib
    import inspect
    import re

    import alembic_samizdat
    from alembic_samizdat import errors

    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    assert {"SamizdatError", "RefreshError", "AdoptionRefusedError", "ThrowawayServerError"} <= defined
    for name in defined - {"RefreshFailure"}:
        assert getattr(alembic_samizdat, name) is getattr(errors, name), name
        assert name in alembic_samizdat.__all__, name
    # No other module of the package defines a public error of its own.
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" or "compat" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        public = [
            n for n in re.findall(r"^class (\w+Error)\(", source, re.M) if not n.startswith("_") and n != "CliError"
        ]
        assert not public, f"{path.name} defines {public}: put errors in errors.py"
    old_homes = {
        "refresher": ("RefreshError", "RefreshFailure", "MissingViewError", "ForeignViewError"),
        "refresh_plan": ("UnknownNodeError", "ConcurrentRefreshError"),
        "matview": ("MatviewError",),
        "pgserver": ("ThrowawayServerError",),
        "orm": ("ColumnDriftError",),
        "alembic.environment": ("AlembicConfigError",),
        "adopt": ("AdoptionRefusedError",),
    }
    for module, names in old_homes.items():
        loaded = importlib.import_module(f"alembic_samizdat.{module}")
        for name in names:
            assert getattr(loaded, name) is getattr(errors, name), (module, name)
