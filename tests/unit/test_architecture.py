"""The package's shape, checked over the source: no import cycle, imports that run with the flow
(a lower layer never imports a higher one), a folder that shows the stages, one subprocess
module, one printer, one reader of the ``BACKENDPICK_*`` variables, commands that do not import
each other.

Imports are read from the AST, so ``if TYPE_CHECKING`` imports and imports inside functions
count too: a cycle hidden in a function is still a cycle a reader has to follow.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[2] / "backendpick"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, ast.Module]:
    return dict(_parsed())


@functools.lru_cache(maxsize=1)
def _parsed() -> dict[str, ast.Module]:
    # Parsed once per test session: the checks only read the trees (a dozen parses of the
    # whole package cost 2.5 s of CPU, issue 20 item 7).
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
    assert users == ["backendpick.edges.runner"]


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


# -- the layers (issue 20): data flows inputs -> machine -> target -> ... -> checks --------------

# Lowest first. A module may import its own layer and any layer below it, never one above. Each
# subpackage of backendpick/ is a layer of its own; the modules directly in backendpick/ are the
# foundation (imported by everyone) or the entry (the CLI and the console script).
LAYERS = (
    "foundation",  # errors, redaction, envvars, output
    "model",  # value types: Backend, Hardware, Target, Decision, Plan/Phase, names
    "knowledge",  # facts and recipes, data/*.toml
    "edges",  # the one process runner, paths, durable writes, the environment lock
    "inputs",  # config, settings schema, requirements, pip config
    "machine",  # probe, vendor tool output, visible devices
    "target",  # inspection, the installed torch and its origin, probes run in the target
    "indexes",  # index client, page cache, transport, credentials, fetches
    "state",  # snapshots, kept copies, last install, environment pins, build records, wheel cache
    "selection",  # the backend choice, offers, resolution, torch version, what stays
    "build",  # toolchain, limits, where each build wheel comes from, wheel names and sources
    "planning",  # pipeline, planner, constraint rule, routing, hashes, request
    "execute",  # executor, engines, phase logs, build phase, shell export
    "checks",  # stack checks, dependencies, fingerprints
    "commands",  # one module per command
    "entry",  # cli, start, __main__
)
FOUNDATION = {"backendpick", "backendpick.errors", "backendpick.redaction", "backendpick.envvars", "backendpick.output"}
ENTRY = {"backendpick.cli", "backendpick.start", "backendpick.__main__"}

# Imports against the flow, each named with the reason; the list only shrinks. The redesign of
# issue 20 removed the last two (items 1 and 3).
AGAINST_THE_FLOW: set = set()


def layer_of(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module in ENTRY:
        return "entry"
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{module} belongs to no layer: move it into a stage's folder or add it to the foundation")
    return parts[1]


def against_the_flow(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return {(a, b) for a, deps in graph.items() for b in deps if rank[layer_of(b)] > rank[layer_of(a)]}


def test_the_direction_check_sees_an_import_against_the_flow():
    graph = {"backendpick.model.plan": {"backendpick.selection.offers", "backendpick.errors"},
             "backendpick.planning.planner": {"backendpick.model.plan"}}
    assert against_the_flow(graph) == {("backendpick.model.plan", "backendpick.selection.offers")}


def test_every_module_has_a_layer():
    for name in import_graph():
        layer_of(name)  # raises for a module outside the layers


def test_lower_layers_never_import_higher_ones():
    found = against_the_flow(import_graph())
    new = sorted(found - AGAINST_THE_FLOW)
    assert not new, "imports against the flow: " + "; ".join(f"{a} -> {b}" for a, b in new)
    gone = sorted(AGAINST_THE_FLOW - found)
    assert not gone, "listed exceptions no longer happen, remove them: " + "; ".join(f"{a} -> {b}" for a, b in gone)


def test_the_folder_shows_the_stages():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 25, f"{len(top)} modules directly in backendpick/: {top}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert set(folders) <= set(LAYERS), folders


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is new in 3.10")
def test_no_module_is_named_like_the_standard_library():
    names = {part for name in _sources() for part in name.split(".")[1:]}
    clashing = sorted(names & set(sys.stdlib_module_names))
    assert not clashing, clashing


def test_init_files_import_nothing_of_backendpick():
    """Importing a package runs its __init__: they stay empty of imports, so a command loads only
    the modules it uses (start-up time is measured, bench/README.md)."""
    sources = _sources()
    packages = {name: tree for name, tree in sources.items() if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}
    heavy = sorted(name for name, tree in packages.items() if _imported(tree, set(sources), name))
    assert not heavy, heavy


def _is_variable(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("BACKENDPICK_")


def _variable_reads(tree: ast.Module) -> set[str]:
    """``BACKENDPICK_*`` names a module reads or defines: ``env.get(NAME)``, ``os.getenv(NAME)``,
    ``env[NAME]``, ``NAME in env``, ``X = NAME``. (Names inside longer text, a help line or the
    shell export's script, are no reads.)"""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and _is_variable(node.args[0]) and (
                isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv", "pop", "setdefault")):
            found.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and _is_variable(node.slice):
            found.add(node.slice.value)
        elif isinstance(node, ast.Compare) and _is_variable(node.left) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            found.add(node.left.value)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _is_variable(node.value):
            found.add(node.value.value)
    return found


def test_the_variable_check_sees_reads():
    tree = ast.parse('a = env.get("BACKENDPICK_A")\nb = os.environ["BACKENDPICK_B"]\nc = "BACKENDPICK_C" in env\n'
                     'D = "BACKENDPICK_D"\nprint("BACKENDPICK_EOF")\nhelp = "set BACKENDPICK_E to x"\n')
    assert _variable_reads(tree) == {"BACKENDPICK_A", "BACKENDPICK_B", "BACKENDPICK_C", "BACKENDPICK_D"}


def test_backendpick_variables_are_read_in_one_module():
    readers = sorted(name for name, tree in _sources().items() if _variable_reads(tree))
    assert readers == ["backendpick.envvars"], readers
