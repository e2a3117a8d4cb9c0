"""The package's shape, checked over the source: no import cycle, one subprocess module, one
printer, commands that do not import each other.

Imports are read from the AST, so ``if TYPE_CHECKING`` imports and imports inside functions
count too: a cycle hidden in a function is still a cycle a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[2] / "backendpick"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(tree: ast.Module, modules: set[str], package: str) -> set[str]:
    """backendpick modules ``tree`` imports anywhere (``from backendpick import x`` names the
    module ``backendpick.x`` when that is a module)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    out.add(f"{base}.{alias.name}")
                elif base in modules:
                    out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    sources = _sources()
    modules = set(sources)
    graph = {}
    for name, tree in sources.items():
        is_package = (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
        package = name if is_package else name.rpartition(".")[0]
        # A package importing its own submodule (backendpick -> backendpick.x) is not an edge
        # back: only modules that are not packages take part.
        graph[name] = {m for m in _imported(tree, modules, package) if m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_type_only_and_function_level_imports():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from backendpick.a import A\n"
        "def f():\n    from backendpick import b\n"
    )
    assert _imported(tree, {"backendpick.a", "backendpick.b"}, "backendpick") == {"backendpick.a", "backendpick.b"}


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def _uses(tree: ast.Module, module: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == module for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == module and not node.level:
            return True
    return False


def test_subprocess_only_in_the_runner():
    users = sorted(name for name, tree in _sources().items() if _uses(tree, "subprocess"))
    assert users == ["backendpick.runner"]


def _calls_print(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
        for node in ast.walk(tree)
    )


def test_print_only_in_the_renderer_and_the_cli():
    # Embedded scripts run in the target's Python are strings, not calls, so they do not count.
    printers = sorted(name for name, tree in _sources().items() if _calls_print(tree))
    assert set(printers) <= {"backendpick.output", "backendpick.cli"}, printers


def _command_imports() -> dict[str, set[str]]:
    graph = import_graph()
    return {
        name: {m for m in imported if m.startswith("backendpick.commands.")}
        for name, imported in graph.items()
        if name.startswith("backendpick.commands.")
    }


def test_the_check_sees_command_modules():
    assert "backendpick.commands.plan" in _command_imports()


def test_commands_do_not_import_each_other():
    crossing = {name: sorted(found) for name, found in _command_imports().items() if found}
    assert not crossing, crossing


MAX_FUNCTION_LINES = 80


def _long_functions(trees: dict[str, ast.Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``module.function (N lines)`` for each function longer than ``limit``, decorators excluded."""
    out = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    out.append(f"{name}.{node.name} ({length} lines)")
    return sorted(out)


def test_the_length_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    tree = ast.parse(f"def f():\n{body}\n\ndef g():\n    return 1\n")
    assert _long_functions({"m": tree}) == ["m.f (82 lines)"]


def test_no_function_over_80_lines():
    assert _long_functions(_sources()) == []
