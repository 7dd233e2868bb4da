"""No import cycle between polar_vbll's modules, counting imports inside functions too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "polar_vbll"


def imports_of_each_module() -> dict[str, set[str]]:
    """{module: the polar_vbll modules it imports anywhere in its file}."""
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    edges = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "polar_vbll":
                targets = [f"polar_vbll.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                if parts[0] == "polar_vbll" and len(parts) > 1 and parts[1] in modules:
                    found.add(parts[1])
        edges[name] = found - {name}
    return edges


def a_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state, path = {}, []  # state: 1 = on the current path, 2 = done

    def visit(module):
        state[module] = 1
        path.append(module)
        for imported in sorted(edges[module]):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert a_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    edges = imports_of_each_module()
    assert {"evaluation", "pretrained", "data", "tasks"} <= set(edges)
    assert a_cycle(edges) is None, " -> ".join(a_cycle(edges))
