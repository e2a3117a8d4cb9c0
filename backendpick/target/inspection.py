"""The interpreter we install into: which Python, which tags, what is installed.

One subprocess answers everything (no imports of installed packages: importing torch takes
seconds). backendpick may run on another interpreter than the target, so nothing here uses
this process's own ``sys``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from backendpick.edges.runner import Started, start
from backendpick.errors import ConfigError
from backendpick.model.environment import Installed, Target
from backendpick.target.probes_in_target import source


def choose_python(flag: Path | str | None, env: Mapping[str, str] | None = None) -> Path:
    """--python, else the active virtual environment, else this interpreter.

    A flag or VIRTUAL_ENV that names nothing usable is an error naming it: falling back to
    another interpreter would install into an environment the user did not mean."""
    env = os.environ if env is None else env
    if flag is not None:
        if str(flag).strip() == "":
            raise ConfigError("--python is empty", hint="pass --python PATH (an interpreter or a venv directory)")
        path = Path(flag)
        if path.is_dir():  # a venv directory is what people often pass
            return _venv_python(path, "--python")
        return path
    venv = env.get("VIRTUAL_ENV")
    if venv:
        return _venv_python(Path(venv), "VIRTUAL_ENV")
    return Path(sys.executable)


def _venv_python(directory: Path, source: str) -> Path:
    if not os.access(directory, os.R_OK | os.X_OK):
        raise ConfigError(f"cannot read the directory {directory} (from {source}): permission denied",
                          hint="pass a directory you can read, or the interpreter itself")
    candidates = [directory / "bin" / "python", directory / "Scripts" / "python.exe"]
    for c in candidates:
        if c.exists():
            return c
        if c.is_symlink():
            raise ConfigError(f"{c} (from {source}) is a broken link to {os.readlink(c)}",
                              hint=f"the interpreter the venv was made with is gone; recreate it: "
                                   f"python -m venv --clear {directory}")
    raise ConfigError(f"{directory} (from {source}) is not a virtual environment: it has no bin/python",
                      hint="pass the venv directory or the interpreter itself")


class Inspection:
    """An inspection of the target started in the background (``start_inspect``)."""

    def __init__(self, python: Path, started: Started | None, error: ConfigError | None = None):
        self.python, self.started, self.error = python, started, error
        self.taken = False

    def cancel(self) -> None:
        """Stop an inspection that will not be used (nothing once its result was taken)."""
        if self.started is not None and not self.taken:
            self.taken = True
            self.started.cancel()

    def result(self) -> Target:
        if self.error is not None or self.started is None:
            raise self.error or ConfigError(f"cannot inspect target interpreter {self.python}")
        self.taken = True
        return _parse(self.python, self.started.result())


def _unusable(python: Path) -> ConfigError | None:
    """Why ``python`` cannot be run, or None."""
    if not python.exists() and python.is_symlink():
        return ConfigError(f"target interpreter {python} is a broken link to {os.readlink(python)}",
                           hint="recreate the virtual environment, or pass --python PATH to a working python")
    if python.exists() and not os.access(python, os.X_OK):
        return ConfigError(f"target interpreter {python} is not executable",
                           hint="pass --python PATH to a python you can run")
    if not python.exists():
        return ConfigError(f"target interpreter {python} does not exist", hint="pass --python PATH to an existing python")
    return None


def start_inspect(python: Path, *, timeout: float = 60.0, tags: bool = True) -> Inspection:
    """Start inspecting ``python`` and return at once; ``result()`` gives the Target (or raises
    why there is none)."""
    error = _unusable(python)
    if error is not None:
        return Inspection(python, None, error)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return Inspection(python, start([python, "-I", "-c", source("inspect_env"), *([] if tags else ["--no-tags"])],
                                    timeout=timeout, env=env))


def reuse_or_start(early: Inspection | None, python: Path) -> Inspection:
    """``early`` (started from a peek at the arguments, start.py) when it inspects ``python``,
    the interpreter the parsed flags chose; else it is stopped and ``python`` inspected."""
    if early is not None and early.python == python:
        return early
    if early is not None:
        early.cancel()
    return start_inspect(python)


def take_or_inspect(early: Inspection | None, python: Path) -> Target:
    """``python``'s Target: the result of ``early`` when it inspects ``python``, else inspected
    now (the caller cancels an ``early`` left untaken)."""
    if early is not None and early.python == python:
        return early.result()
    return inspect(python)


def inspect(python: Path, *, timeout: float = 60.0, tags: bool = True) -> Target:
    """``tags=False`` skips the wheel tags (only index queries need them; a few tens of ms)."""
    return start_inspect(python, timeout=timeout, tags=tags).result()


def _parse(python: Path, res) -> Target:
    from backendpick.model.names import normalize

    if not res.ok:
        detail = (res.error or res.stderr.strip().splitlines()[-1:] or ["no output"])
        raise ConfigError(f"cannot inspect target interpreter {python}: {detail if isinstance(detail, str) else detail[0]}")
    try:
        data = json.loads(res.stdout)
    except ValueError:
        raise ConfigError(f"target interpreter {python} printed unexpected output") from None
    version = tuple(data["version"])
    if version < (3, 9):
        raise ConfigError(f"target interpreter {python} is Python {'.'.join(map(str, version))}; backendpick supports 3.9 and newer")
    installed = _installed(data["dists"])
    return Target(
        python=python,
        prefix=Path(data["prefix"]),
        version=version,  # type: ignore[arg-type]
        markers=data["markers"],
        tags=tuple(data["tags"]),
        pip_version=data["pip"],
        purelib=Path(data["purelib"]),
        installed=installed,
        is_venv=data["prefix"] != data["base_prefix"],
        files={k: v for k, v in data.get("files", {}).items() if v is not None},
        path=tuple(data.get("path", ())),
        site_dirs=tuple(data.get("site_dirs", ())),
        pth_paths=tuple(data.get("pth_paths", ())),
    )


def _installed(dists: dict) -> dict:
    from backendpick.model.names import normalize

    return {normalize(k): Installed(v["name"], v["version"], tuple(v["requires"]), v["installer"], v["direct_url"],
                                    v.get("path"))
            for k, v in dists.items()}


def rescan(before: Target) -> Target:
    """``before``'s interpreter as an installer left it: what is installed and the package files,
    read in this process from the folders its inspection named (a Python start and a metadata
    import fewer than ``inspect``, which is what it falls back to when a package file it needs
    is not where a plain folder scan finds it, e.g. an editable torch behind an import hook).

    The path is the inspected one, less what .pth files added then, plus what they add now: an
    install that adds or removes a .pth folder is seen as the target's next start would."""
    from backendpick.target.probes_in_target import inspect_env

    if not before.path:
        return inspect(before.python, tags=False)
    added = set(before.pth_paths)
    now = inspect_env.pth_paths(before.site_dirs)
    base = [p for p in before.path if p not in added]
    path = base + [p for p in now if p not in base]
    dists = inspect_env.scan(path)
    files = {}
    for key, (package, name) in inspect_env.wanted_files(dists).items():
        folder = _package_folder(path, package)
        if folder is None:
            return inspect(before.python, tags=False)
        text = inspect_env.read_file(os.path.join(folder, name))
        if text is not None:
            files[key] = text
    pip = dists.get("pip")
    return replace(before, installed=_installed(dists), files=files, pth_paths=tuple(now),
                   pip_version=pip["version"] if pip else None)


def _package_folder(path: list[str], package: str) -> str | None:
    """The folder of the regular package ``package`` in the first entry of ``path`` that holds
    it, as the import system finds it on plain folders; None when none does."""
    for entry in path:
        folder = os.path.join(entry or ".", package)
        if os.path.isfile(os.path.join(folder, "__init__.py")):
            return folder
    return None
