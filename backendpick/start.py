"""The console script's entry point. For ``install``, it starts the target's inspection (a
Python start and a scan of its site-packages in a subprocess) before the CLI and the plan
machinery are imported, so the two overlap and the plan finds the inspection done.

Only a peek at the arguments: click parses them as always, and the CLI uses the early
inspection only when it inspects the interpreter the parsed flags choose (else it is stopped).
"""

from __future__ import annotations

import sys


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
    """A ``target.Inspection`` started for ``backendpick install ...``, or None."""
    if not args or args[0] != "install" or any(a in ("--dry-run", "--help", "-h") for a in args):
        return None
    understood, python = _python_flag(args[1:])
    if not understood or (python is not None and not python.strip()):
        return None  # click reports the mistake
    from backendpick import target
    from backendpick.errors import BackendpickError

    try:
        return target.start_inspect(target.choose_python(python))
    except BackendpickError:
        return None  # the CLI raises it again, with its exit code


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    early = early_inspection(args)
    from backendpick import cli

    cli.main(args, early_inspection=early)
