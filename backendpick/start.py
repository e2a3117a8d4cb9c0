"""The console script's entry point. ``install`` first asks state/noop.py whether this is a
re-run with nothing to do, and ``detect`` whether the same question was answered from inputs
that have not changed since: either is answered from a record without importing the CLI
(issue 22).

For the commands that inspect the target interpreter
(``INSPECTING``), it starts that inspection (a Python start, its wheel tags and a scan of its
site-packages in a subprocess: 25-50 ms) before the CLI and the plan machinery are imported, so
the two overlap and the command finds the inspection done.

Only a peek at the arguments: click parses them as always, and the CLI uses the early
inspection only when it inspects the interpreter the parsed flags choose (else it is stopped).

It also runs the no-op check and loads the command's modules with the cyclic garbage collector
paused, then freezes what they created (``gc.freeze``, CPython 3.7+): a start creates some sixty
frozen dataclasses and packaging's patterns, none of them garbage, and the collector would
otherwise walk them again and again while they load and once more at exit. Measured on the install path (bench/README.md):
about 20 ms of a 110 ms start. The collector runs as usual for the command itself.
"""

from __future__ import annotations

import gc
import importlib
import sys


# The commands that inspect the target interpreter (cli.py takes the early inspection for each).
INSPECTING = ("install", "plan", "detect", "verify")


def _python_flag(args: list[str]) -> tuple[bool, str | None]:
    """(understood, the --python value or None). Not understood: a flag without its value."""
    value = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--python":
            if i + 1 >= len(args):
                return False, None
            value = args[i + 1]
        elif arg.startswith("--python="):
            value = arg.split("=", 1)[1]
    return True, value


def early_inspection(args: list[str]):
    """A ``target.Inspection`` started for ``backendpick install|plan|detect|verify ...``, or None."""
    if not args or args[0] not in INSPECTING or any(a in ("--help", "-h") for a in args):
        return None
    if args[0] == "detect" and "--offline" in args:
        return None  # the packaged table: no target to inspect
    understood, python = _python_flag(args[1:])
    if not understood or (python is not None and not python.strip()):
        return None  # click reports the mistake
    from backendpick.errors import BackendpickError
    from backendpick.target import inspection

    try:
        return inspection.start_inspect(inspection.choose_python(python))
    except BackendpickError:
        return None  # the CLI raises it again, with its exit code


def preload(args: list[str]) -> None:
    """Import the module of the command ``args`` names (cli imports it lazily; the import here
    only moves it before ``gc.freeze``). Nothing for --help, a typo or no command."""
    from backendpick import cli

    if args and args[0] in cli.cli.commands:
        importlib.import_module(f"backendpick.commands.{args[0]}")
        importlib.import_module("backendpick.output")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    paused = gc.isenabled()
    gc.disable()  # from the first import on: the no-op check's modules count too
    try:
        if args[:1] in (["install"], ["detect"]):
            # A re-run with nothing to do, or a detect whose every input is as it was and whose
            # index pages are fresh, is answered here, before anything below is imported
            # (state/noop.py); otherwise it falls through to the full pipeline.
            from backendpick.state import noop

            understood, python = _python_flag(args[1:])
            if understood and noop.answer(args[1:], python, args[0]):
                return
        early = early_inspection(args)
        preload(args)
        gc.freeze()
    finally:
        if paused:
            gc.enable()
    from backendpick import cli

    cli.main(args, early_inspection=early)
