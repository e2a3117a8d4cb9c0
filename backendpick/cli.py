"""Command-line wiring only: parse flags, call a command module, map errors to exit codes.

Command modules are imported inside each command so ``backendpick detect`` does not pay for
the plan/install machinery (or rich) at start-up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from backendpick import __version__, envvars
from backendpick.errors import EXIT_USAGE, BackendpickError
from backendpick.knowledge import facts

HELP = """Install PyTorch and its GPU companions with pip, all on one backend.

\b
Examples:
  backendpick detect                  # hardware found, backend chosen, and why
  backendpick detect --json           # the same for scripts
  backendpick detect --backend cu124  # what an explicit choice means on this machine

Backend precedence: --backend, then BACKENDPICK_BACKEND, then [tool.backendpick] backend in
pyproject.toml, then detection. Exit codes: 0 done, 1 install failed, 2 usage or configuration
error, 3 no compatible backend, 4 environment locked by another backendpick.
"""

def _python_value(ctx, param, value: str | None) -> Path | None:
    """``--python ''`` is a mistake (a shell variable that was not set), not the current
    directory, which is what a Path type would make of it."""
    if value is None:
        return None
    if not value.strip():
        from backendpick.errors import ConfigError

        raise ConfigError("--python is empty", hint="pass --python PATH (an interpreter or a venv directory)")
    return Path(value)


project_option = click.option(
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Directory holding pyproject.toml.",
)
backend_option = click.option(
    "--backend", default=None, metavar="NAME", help="auto, cpu, xpu, cuXY (cu124) or rocmX.Y (rocm6.2.4)."
)
# From facts.toml [index], so the help shows what config.load falls back to.
INDEX_URL_HELP = f"Backend index template with {{backend}} (default {facts.load().default_index_url})."
compat_option = click.option(
    "--cuda-compat",
    type=click.Choice(["strict", "minor"]),
    default=None,
    help="strict: cuXY only if the driver supports CUDA X.Y; minor: allow CUDA minor version compatibility.",
)
installer_option = click.option(
    "--installer", type=click.Choice(["pip", "uv"]), default=None,
    help="The installer that runs the phases: pip (default) or uv (BACKENDPICK_INSTALLER, [tool.backendpick] "
         "installer). With uv no pip process runs: uv resolves, checks and installs.")
json_option = click.option("--json", "json_mode", is_flag=True, help="Print one JSON object.")
extras_option = click.option("--extra", "extras", multiple=True, metavar="NAME",
                             help="Include [project.optional-dependencies] NAME.")
groups_option = click.option("--group", "groups", multiple=True, metavar="NAME",
                             help="Include [dependency-groups] NAME (PEP 735).")


def requirements_option(help: str):
    return click.option("-r", "--requirements", "files", multiple=True, metavar="FILE",
                        type=click.Path(dir_okay=False, path_type=Path), help=help)


def python_option(help: str):
    """--python as an interpreter or a venv directory; an empty value is a usage error."""
    return click.option("--python", "python", type=str, default=None, callback=_python_value, help=help)


def lock_option(help: str):
    return click.option("--lock", "lock_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        metavar="FILE", help=help)


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="backendpick")
def cli() -> None:
    pass


@cli.command(
    help="Report the accelerators found and the backend backendpick would choose, with the reason.\n\n"
    "\b\nExamples:\n  backendpick detect\n  backendpick detect --json | jq -r .backend\n"
    "  BACKENDPICK_BACKEND=cu128 backendpick detect"
)
@project_option
@click.option("--python", "python", type=click.Path(path_type=Path), default=None,
              help="Interpreter (or venv) the choice is for. Default: the active venv, else this Python.")
@backend_option
@click.option("--index-url", default=None, metavar="TEMPLATE",
              help=INDEX_URL_HELP)
@compat_option
@click.option("--offline", is_flag=True,
              help="Do not ask the backend indexes what they offer; choose from the packaged release table.")
@json_option
def detect(project_dir: Path, python: Path | None, backend: str | None, index_url: str | None,
           cuda_compat: str | None, offline: bool, json_mode: bool) -> int:
    inspection = None if offline else _inspection(python, start=False)
    from backendpick.commands import detect as command
    from backendpick.output import Output

    return command.run(Output(json_mode=json_mode), project_dir=project_dir, backend=backend, cuda_compat=cuda_compat,
                       python=python, index_url=index_url, offline=offline, inspection=inspection)


def _plan_options(func):
    """Options shared by plan and install: what to install, into which Python, from where."""
    options = [
        click.argument("requirement", nargs=-1),
        requirements_option("Requirements file (repeatable)."),
        click.option("-e", "--editable", "editables", multiple=True, metavar="PATH",
                     help="Install a local project (or VCS URL) in editable mode, as pip -e (repeatable)."),
        project_option,
        extras_option,
        groups_option,
        python_option("Interpreter (or venv directory) to install into. Default: the active venv, else this Python."),
        backend_option,
        click.option("--index-url", default=None, metavar="TEMPLATE",
                     help=INDEX_URL_HELP),
        compat_option,
        installer_option,
        click.option("--refresh", is_flag=True,
                     help="Ask the indexes again even when the environment matches the last install, and revalidate "
                          "the index pages kept in the cache."),
        click.option("--channel", type=click.Choice(["stable", "test", "nightly"]), default=None,
                     help="PyTorch channel: stable, test (release candidates) or nightly (pre-releases of the "
                          "torch family). Default: BACKENDPICK_CHANNEL, [tool.backendpick] channel, stable."),
        click.option("-U", "--upgrade", is_flag=True,
                     help="Move to the newest torch (and packages) the machine and the whole request allow."),
        click.option("--upgrade-package", "upgrade_packages", multiple=True, metavar="NAME",
                     help="Upgrade NAME only (repeatable); torch moves its companions with it."),
        click.option("--replace-conda", is_flag=True,
                     help="Let pip remove or replace stack packages that conda installed (their INSTALLER says "
                          "conda); without it such a plan stops with exit 2 and nothing changes."),
        json_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _inspection(python: Path | None, *, start: bool):
    """The target's inspection (a subprocess), running while the plan machinery is imported: the
    one the console script (start.py) started before this module was imported when it inspects
    the interpreter click's parsing chose. Otherwise a new one with ``start`` (install, which
    inspects before anything else), else None: plan and ``--dry-run`` inspect where the pipeline
    does, after the configuration and the requirements, whose mistakes are reported first."""
    from backendpick.errors import BackendpickError
    from backendpick.target import inspection

    # Left in ctx.obj: main() cancels it at the end unless its result was taken.
    early = (click.get_current_context().obj or {}).get("inspection")
    if start:
        return inspection.reuse_or_start(early, inspection.choose_python(python))
    if early is None:
        return None
    try:
        chosen = inspection.choose_python(python)
    except BackendpickError:
        chosen = None  # the pipeline reports it in its turn
    if early.python != chosen:
        early.cancel()
        return None
    return early


def _request(**kw):
    from backendpick.planning.pipeline import Request

    return Request(
        project_dir=kw["project_dir"], requirements=tuple(kw["requirement"]), files=tuple(kw["files"]),
        editables=tuple(kw["editables"]),
        extras=tuple(kw["extras"]), groups=tuple(kw["groups"]), python=kw["python"], backend=kw["backend"],
        index_url=kw["index_url"], cuda_compat=kw["cuda_compat"], installer=kw["installer"],
        refresh=kw["refresh"], channel=kw["channel"],
        upgrade=kw["upgrade"], upgrade_packages=tuple(kw["upgrade_packages"]), replace_conda=kw["replace_conda"],
    )


@cli.command(
    help="Show the backend, the reason, and the pip phases install would run.\n\n"
    "Without REQUIREMENTs, reads [project].dependencies of pyproject.toml.\n\n"
    "\b\nExamples:\n  backendpick plan\n  backendpick plan torch torchvision xformers --backend cu124\n"
    "  backendpick plan -r requirements.txt --json\n  backendpick plan --backend cu124 --format sh > install-gpu.sh"
)
@_plan_options
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sh"]), default="text", show_default=True,
              help="text; json (as --json); sh: a POSIX shell script of the pip phases, for images without backendpick.")
def plan(fmt: str, **kw) -> int:
    inspection = _inspection(kw["python"], start=False)
    from backendpick.commands import plan as command
    from backendpick.output import Output

    json_mode = kw["json_mode"] or fmt == "json"
    return command.run(Output(json_mode=json_mode), _request(**kw), fmt="sh" if fmt == "sh" else "text",
                       inspection=inspection)


@cli.command(
    help="Install the requirements in ordered pip phases, all on one backend.\n\n"
    "Without REQUIREMENTs, reads [project].dependencies of pyproject.toml.\n\n"
    "\b\nExamples:\n  backendpick install\n  backendpick install --backend cu124 --extra train   # in a Dockerfile RUN\n"
    "  backendpick install --dry-run                        # print the pip commands only"
)
@_plan_options
@click.option("--dry-run", is_flag=True, help="Print exactly the pip commands install would run; change nothing.")
@click.option("-v", "--verbose", count=True, help="Stream pip's own output.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the result.")
@click.option("--reinstall", multiple=True, metavar="NAME",
              help="Remove NAME and install it again in its phase (e.g. a flash-attn built against another torch).")
@click.option("--pin-environment/--no-pin-environment", "pin_environment", default=None,
              help="Leave the stack's pins in the environment's pip.conf, so a later plain pip cannot replace "
                   "torch or a companion (default; [tool.backendpick] pin-environment). --no-pin-environment "
                   "removes them.")
@lock_option("Install exactly this lock file (pylock.<backend>.toml from backendpick lock): its files, hashes "
             "checked, no index asked ([tool.backendpick] lock names one by default).")
def install(dry_run: bool, verbose: int, quiet: bool, reinstall: tuple, pin_environment, lock_file, **kw) -> int:
    inspection = _inspection(kw["python"], start=not dry_run)
    from backendpick.commands import install as command
    from backendpick.output import Output

    out = Output(json_mode=kw["json_mode"], verbose=verbose, quiet=quiet)
    from dataclasses import replace

    return command.run(out, replace(_request(**kw), reinstall=tuple(reinstall), pin_environment=pin_environment,
                                    lock=lock_file),
                       dry_run=dry_run, inspection=inspection)


@cli.command(
    help="Write one PEP 751 lock file, pylock.<backend>.toml, per backend: the whole plan resolved to "
    "files (exact versions, wheel URLs, sizes and sha256 hashes; builds as their prebuilt wheel or sdist). "
    "Nothing in the target environment changes; a named backend needs no GPU here.\n\n"
    "\b\nExamples:\n  backendpick lock                                  # the backend auto selection chooses here\n"
    "  backendpick lock --backend cpu --backend cu124    # pylock.cpu.toml and pylock.cu124.toml\n"
    "  backendpick install --lock pylock.cu124.toml      # install exactly that, elsewhere"
)
@click.argument("requirement", nargs=-1)
@requirements_option("Requirements file (repeatable).")
@project_option
@extras_option
@groups_option
@python_option("The interpreter the lock is for (its Python and platform). Default: the active venv, else this Python.")
@click.option("--backend", "backends", multiple=True, metavar="NAME",
              help="Lock for this backend (repeatable: one file each). Default: the backend auto selection chooses here.")
@click.option("--index-url", default=None, metavar="TEMPLATE", help=INDEX_URL_HELP)
@compat_option
@click.option("--channel", type=click.Choice(["stable", "test", "nightly"]), default=None, help="PyTorch channel.")
@click.option("-o", "--output-dir", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the lock files. Default: the project folder.")
@installer_option
@json_option
def lock(requirement, files, project_dir, extras, groups, python, backends, index_url, cuda_compat, channel,
         output_dir, installer, json_mode) -> int:
    from backendpick.commands import lock as command
    from backendpick.output import Output
    from backendpick.planning.pipeline import Request

    req = Request(project_dir=project_dir, requirements=tuple(requirement), files=tuple(files), extras=tuple(extras),
                  groups=tuple(groups), python=python, index_url=index_url, cuda_compat=cuda_compat, channel=channel,
                  installer=installer)
    return command.run(Output(json_mode=json_mode), req, tuple(backends), output_dir)


@cli.command(
    help="Check an environment's GPU stack: torch against the hardware, companions against torch, "
    "compiled extensions, pip check, and the project's requirements. Exit 0 when consistent, 1 when not.\n\n"
    "\b\nExamples:\n  backendpick verify\n  backendpick verify --python .venv/bin/python --json"
)
@click.argument("requirement", nargs=-1)
@requirements_option("Requirements that must be installed.")
@project_option
@python_option("Interpreter (or venv directory) to check. Default: the active venv, else this Python.")
@lock_option("Also check that the environment is exactly this lock file, naming each difference; {backend}: the "
             "installed torch's ([tool.backendpick] lock is checked when no requirements are named).")
@installer_option
@json_option
def verify(requirement, files, project_dir: Path, python: Path | None, lock_file: Path | None, installer: str | None,
           json_mode: bool) -> int:
    inspection = _inspection(python, start=False)
    from backendpick.commands import verify as command
    from backendpick.output import Output

    return command.run(Output(json_mode=json_mode), python=python, project_dir=project_dir,
                       reqs=tuple(requirement), files=tuple(files), inspection=inspection, lock=lock_file,
                       installer=installer)


@cli.command(
    help="Return an environment to a snapshot that install recorded before changing it: every "
    "distribution as it was (the same files), what was removed from the copy kept then.\n\n"
    "\b\nExamples:\n  backendpick restore --list\n  backendpick restore            # back to before the latest install\n"
    "  backendpick restore 20261121-101500-0 --dry-run"
)
@click.argument("snapshot", required=False)
@python_option("Interpreter (or venv directory). Default: the active venv, else this Python.")
@project_option
@click.option("--index-url", default=None, metavar="TEMPLATE", help="Backend index template with {backend}.")
@click.option("--list", "list_only", is_flag=True, help="List the snapshots of this environment.")
@click.option("--dry-run", is_flag=True, help="Print the installer's commands only.")
@click.option("-v", "--verbose", count=True, help="Stream the installer's own output.")
@installer_option
@json_option
def restore(snapshot, python, project_dir, index_url, list_only, dry_run, verbose, installer, json_mode) -> int:
    from backendpick.commands import restore as command
    from backendpick.output import Output

    return command.run(Output(json_mode=json_mode, verbose=verbose), python=python, snapshot_id=snapshot,
                       project_dir=project_dir, index_url=index_url, dry_run=dry_run, list_only=list_only,
                       installer=installer)


@cli.group(
    help="The wheels backendpick built from source (flash-attn and friends), kept to install again in "
    "seconds. Location: BACKENDPICK_CACHE_DIR, else ~/.cache/backendpick/wheels ($XDG_CACHE_HOME; "
    "~/Library/Caches/backendpick/wheels on macOS).\n\n"
    "\b\nExamples:\n  backendpick cache list\n  backendpick cache clear flash-attn\n  backendpick cache clear"
)
def cache() -> None:
    pass


@cache.command("list", help="List the cached wheels (all, or those of the named packages).")
@click.argument("names", nargs=-1, metavar="[PACKAGE]...")
@json_option
def cache_list(names: tuple, json_mode: bool) -> int:
    from backendpick.commands import cache as command
    from backendpick.output import Output

    return command.list_entries(Output(json_mode=json_mode), names)


@cache.command("clear", help="Remove the cached wheels (all, or those of the named packages); without names also "
               "the kept index pages.")
@click.argument("names", nargs=-1, metavar="[PACKAGE]...")
@json_option
def cache_clear(names: tuple, json_mode: bool) -> int:
    from backendpick.commands import cache as command
    from backendpick.output import Output

    return command.clear(Output(json_mode=json_mode), names)


def _wants_json(args: list[str]) -> bool:
    """Whether the command line asked for JSON, read before click parses it: a usage error
    must be a JSON object too. Words after ``--`` are arguments, not flags."""
    words = args[: args.index("--")] if "--" in args else args
    if "--json" in words or "--format=json" in words:
        return True
    return any(a == "--format" and b == "json" for a, b in zip(words, words[1:]))


def _fail(json_mode: bool, code: int, message: str, hint: str | None = None, details: str | None = None) -> None:
    """The one-line error on stderr; with --json also the one JSON object on stdout."""
    from backendpick.output import Output

    out = Output()
    out.error(message, hint, details)
    if json_mode:
        out.emit_json({"ok": False, "error": message, "hint": hint, "exit_code": code})
    sys.exit(code)


def main(argv: list[str] | None = None, *, early_inspection=None) -> None:
    """``early_inspection``: the target's inspection the console script started (start.py)."""
    args = list(sys.argv[1:] if argv is None else argv)
    json_mode = _wants_json(args)
    obj = {"inspection": early_inspection} if early_inspection is not None else None
    try:
        rv = cli.main(args=args, prog_name="backendpick", standalone_mode=False, obj=obj)
    except BackendpickError as exc:
        if envvars.debug(os.environ):
            raise
        _fail(json_mode, int(exc.exit_code), exc.message, exc.hint, exc.details)
    except click.exceptions.Abort:
        _fail(json_mode, 130, "aborted")
    except click.ClickException as exc:
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
        if not json_mode:
            exc.show()
            sys.exit(code)
        hint = None
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f"see {exc.ctx.command_path} --help"
        _fail(json_mode, code, exc.format_message(), hint)
    except KeyboardInterrupt:
        _fail(json_mode, 130, "interrupted")
    finally:
        if obj and obj.get("inspection") is not None:
            obj["inspection"].cancel()  # nothing when its result was taken; else a mistake came first
    sys.exit(rv if isinstance(rv, int) else 0)
