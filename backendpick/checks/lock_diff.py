"""``verify --lock FILE``: is the environment exactly the lock (issue 21)? Each difference is
one problem with its fix: a locked package missing or at another version, a package the lock
does not hold, a lock for another Python or platform. The installer's own tools (pip,
setuptools, wheel) and backendpick are not counted: no lock holds them."""

from __future__ import annotations

from pathlib import Path

from backendpick.checks.stack import Problem
from backendpick.model.environment import Target
from backendpick.model.lock import Lock

NOT_LOCKED = frozenset({"pip", "setuptools", "wheel", "backendpick"})


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
