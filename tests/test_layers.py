"""The packages import one way only, and no module imports itself back, lazily or not.

    sae_core  <-  analysis  <-  sweeps (the CLI on top)
    sae_core  <-  cluster   <-  sweeps

Every import statement counts: at module level, inside functions, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"sae_core": 0, "analysis": 1, "cluster": 1, "sweeps": 2}


def module_imports(root: Path, packages: dict[str, int]) -> dict[str, set[str]]:
    """module name -> the modules of `packages` it imports (every import statement)."""
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports pkg.mod when that is a module
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files
                         else node.module for a in node.names]
            found.update(n for n in names if n.split(".")[0] in packages)
        graph[module] = found - {module}
    return graph


def layer_violations(graph: dict[str, set[str]], packages: dict[str, int]) -> list[str]:
    """Imports of a package from a higher or a sibling layer."""
    out = []
    for module, imported in sorted(graph.items()):
        own = module.split(".")[0]
        for target in sorted(imported):
            other = target.split(".")[0]
            if other != own and packages[other] >= packages[own]:
                out.append(f"{module} imports {target}")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle of the module graph, once (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_packages_import_downwards_only() -> None:
    assert layer_violations(module_imports(ROOT, LAYERS), LAYERS) == []


def test_no_module_imports_itself_back() -> None:
    assert cycles(module_imports(ROOT, LAYERS)) == []


def test_the_checks_catch_a_reverse_import_and_a_lazy_cycle(tmp_path: Path) -> None:
    """The two checks above fail on a tree that breaks them."""
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "low" / "__init__.py").write_text("")
    (tmp_path / "high" / "__init__.py").write_text("")
    (tmp_path / "low" / "a.py").write_text("def f():\n    from low import b\n")
    (tmp_path / "low" / "b.py").write_text("import low.a\nfrom high.c import g\n")
    (tmp_path / "high" / "c.py").write_text("def g():\n    return 1\n")
    layers = {"low": 0, "high": 1}
    graph = module_imports(tmp_path, layers)
    assert layer_violations(graph, layers) == ["low.b imports high.c"]
    assert cycles(graph) == [["low.a", "low.b"]]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_package_is_known(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
