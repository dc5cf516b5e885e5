"""No two modules of the repository import each other, directly or around a longer circle: the import graph of
the project's own packages (read with ast from every .py file, imports inside functions included) has no cycle.
A package's __init__ counts as the module its name imports; importing `a.b.c` reaches `a.b.c` only."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {"tests", "reference"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict:
    return {module_name(p): p for p in REPO.rglob("*.py")
            if not (set(p.relative_to(REPO).parts) & SKIP or any(part.startswith(".") for part in p.parts))}


def imports(name: str, path: Path, modules: dict) -> set:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            if target in modules:  # `from a.b import c`: the submodule a.b.c if there is one, else a.b
                found.add(target)
    return found - {name}


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict:
    modules = project_modules()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle_in_the_repository():
    graph = import_graph()
    assert {"evaluation.harness", "evaluation.tasks.humaneval", "launch.evaluate"} <= set(graph)
    assert "evaluation.problem" in graph["evaluation.tasks.humaneval"]  # the reader sees real edges
    assert cycles(graph) == []


def test_the_check_finds_a_circle():
    """Negative control: the graph of a circle through three modules is reported, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
