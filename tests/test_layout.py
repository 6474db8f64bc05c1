"""The package's layout is its architecture: rooms that import each other one way only, and commands that stay thin."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
#: A module longer than this says at its top why it is kept whole, in a sentence naming the length.
LONGEST = 350
#: What the pure-NumPy core may import from nnexp itself: the registry, its errors, and atomic file writes (which
#: need nothing beyond the standard library).
CORE_IMPORTS = ("nnexp.core", "nnexp.registry", "nnexp.errors", "nnexp.atomic")
#: Libraries the core never imports: it is what a learner reads, and what other rooms build on.
OUTSIDE_CORE = ("hydra", "omegaconf", "mlflow", "sklearn", "matplotlib")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(path): path for path in sorted((SOURCE / "nnexp").rglob("*.py"))}


def imported(name: str) -> set[str]:
    """Every module ``name`` imports anywhere in its body (at the top, in a function, or for type checking)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def own_module(target: str) -> str | None:
    """The nnexp module ``target`` names (a name inside a module counts as that module), if any."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def graph() -> dict[str, set[str]]:
    """nnexp's modules and the nnexp modules each imports; importing a package's ``__init__`` from inside it (which
    Python does anyway) is not an edge."""
    edges = {}
    for name in MODULES:
        targets = {own_module(target) for target in imported(name)} - {None, name}
        edges[name] = {target for target in targets if not name.startswith(f"{target}.")}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert circles(graph()) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_commands_are_imported_only_by_the_command_line():
    """Two commands that share something share a library module, never each other; no library room imports one."""
    edges = graph()
    crossing = [
        f"{name} -> {target}"
        for name, targets in edges.items()
        for target in targets
        if target.startswith("nnexp.commands.")
        and target != "nnexp.commands.arguments"
        and name != "nnexp.__main__"
    ]
    assert crossing == []


def test_the_core_imports_only_numpy_and_the_registry():
    found = []
    for name in MODULES:
        if not name.startswith("nnexp.core"):
            continue
        for target in imported(name):
            own = own_module(target)
            if (own and not own.startswith(CORE_IMPORTS)) or target.split(".")[0] in OUTSIDE_CORE:
                found.append(f"{name} -> {target}")
    assert found == []


def test_long_modules_say_why_they_are_whole():
    unexplained = []
    for name, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > LONGEST and f"{LONGEST} lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{name}: {len(text.splitlines())} lines")
    assert unexplained == []
