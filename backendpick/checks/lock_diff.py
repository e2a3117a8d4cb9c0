"""``verify --lock FILE``: is the environment exactly the lock (issue 21)? Each difference is
one problem with its fix: a locked package missing or at another version, a package the lock
does not hold, a lock for another Python or platform. The installer's own tools (pip,
setuptools, wheel) and backendpick are not counted: no lock holds them.

Which lock (``chosen``): ``--lock FILE``, else ``[tool.backendpick] lock`` when no requirements
are named (install takes that lock by default, so verify checks it too). A ``{backend}`` in
either is the backend of the torch installed in the environment verified: verify checks the
environment as it is, not the backend this machine would choose."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backendpick.checks.stack import Problem
from backendpick.errors import ConfigError
from backendpick.model.environment import Target
from backendpick.model.lock import Lock

NOT_LOCKED = frozenset({"pip", "setuptools", "wheel", "backendpick"})
BY_FLAG, BY_SETTING = "--lock", "[tool.backendpick] lock"


@dataclass(frozen=True)
class Chosen:
    path: Path
    named_by: str  # BY_FLAG or BY_SETTING


def chosen(flag: Path | None, setting: str | None, project_dir: Path, torch_backend: str | None,
           python: Path) -> Chosen | None:
    """The lock verify checks, or None. ``setting``: ``[tool.backendpick] lock`` (None where
    requirements are named: they are what is checked then); ``torch_backend``: the installed
    torch's backend name, None without torch (ConfigError naming the fix when the pattern
    needs it)."""
    if flag is not None:
        pattern, folder, by = str(flag), None, BY_FLAG
    elif setting:
        pattern, folder, by = setting, project_dir, BY_SETTING
    else:
        return None
    if "{backend}" in pattern:
        if torch_backend is None:
            raise ConfigError(f"{pattern!r} ({by}) takes the backend of the installed torch, and {python} has no "
                              "torch", hint=f"name the lock: backendpick verify --lock {pattern.replace('{backend}', 'cpu')}")
        pattern = pattern.replace("{backend}", torch_backend)
    return Chosen(folder / pattern if folder is not None else Path(pattern), by)


def differences(lock: Lock, path: Path, target: Target, flags: str = "") -> list[Problem]:
    fix = f"backendpick install --lock {path}{flags}"
    why = lock.mismatch(target.markers)
    if why:
        return [Problem("python", f"{path} is not for this interpreter: {why}",
                        f"lock for it: backendpick lock --backend {lock.backend}{flags}")]
    out = []
    for p in sorted(lock.packages, key=lambda p: p.name):
        d = target.get(p.name)
        if d is None:
            out.append(Problem(p.name, f"locked at {p.version} ({p.phase} phase), not installed", fix))
        elif d.version != p.version:
            out.append(Problem(p.name, f"installed {d.version}, locked {p.version}", fix))
    locked = {p.name for p in lock.packages}
    for name in sorted(set(target.installed) - locked - NOT_LOCKED):
        d = target.installed[name]
        out.append(Problem(d.name, f"installed {d.version}, not in the lock",
                           f"pip uninstall {d.name}, or lock again with it in the requirements"))
    return out
