"""The house rules of the layout, checked on the source: core/ never imports Dagster, and the
modules of core/ import each other without a cycle (lazy imports inside functions count)."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "dam_dagster" / "core"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(CORE.parent.parent).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """Every dam_dagster module this file imports, at the top or inside a function."""
    package = _module(path).rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = _module(path)[: -len(".__init__")]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p).removesuffix(".__init__"): p for p in CORE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_core_never_imports_dagster():
    offenders = [
        _module(p)
        for p in CORE.rglob("*.py")
        if any(i == "dagster" or i.startswith("dagster.") for i in _imports(p))
    ]
    assert offenders == []


@pytest.mark.parametrize("package", ["dam_dagster.core", "dam_dagster.core.render"])
def test_no_import_cycle(package):
    graph = {
        m: {d for d in deps if not d.endswith("__init__") and d != package}
        for m, deps in _graph().items()
        if m != package
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, trail):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle.extend(trail[trail.index(dep) :] + [node, dep] if dep in trail else [node])
                return True
            if state.get(dep) is None and visit(dep, trail + [node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, " -> ".join(cycle)
