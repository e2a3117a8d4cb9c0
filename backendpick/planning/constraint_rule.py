"""The one constraint rule: what the phases after the backend phase may not change.

After the backend phase every backend package (the torch family) that is installed is pinned to
its installed version, and every one that is not is *fenced* (``name<0``): pip then reports
"depends on name" instead of pulling it from PyPI, and install moves it into its phase. A
no-build-isolation package is fenced unless the build phase installs it or it is installed.
The user's constraints (-c lines) follow.

``rule`` is the rule itself, in plain standard-library Python: install applies it to the target
as inspected after the backend phase (``after_backend``), and the shell export embeds its very
source in the script (``script``), so the two cannot drift. ``preview`` is the plan's view of
the same files before anything ran (plan and --dry-run show it).
"""

from __future__ import annotations

import inspect
from typing import Iterable, Mapping


def rule(family, build, building, installed, user):
    """The constraints file's lines. ``family``/``build``: the plan's backend and build package
    names; ``building``: what the build phase installs; ``installed(name)``: the installed
    distribution's ``(name, version)``, or None; ``user``: the user's constraint lines."""
    lines = []
    for name in family:
        found = installed(name)
        lines.append("%s==%s" % found if found else "%s<0" % name)
    for name in build:
        if name not in building and installed(name) is None:
            lines.append("%s<0" % name)
    return lines + list(user)


def after_backend(plan, target, user: Iterable[str]) -> list[str]:
    """The rule on ``target`` (a ``target.Target`` inspected after the backend phase) for ``plan``."""

    def installed(name):
        d = target.get(name)
        return (d.name, d.version) if d is not None else None

    return rule(plan.backend_names, plan.build_names, plan.building, installed, user)


_SCRIPT_MAIN = '''
def installed(name):
    try:
        return (name, metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


family, build, building, user = sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5:]
with open(sys.argv[1], "w") as f:
    f.write("\\n".join(rule(family, build, building, installed, user)) + "\\n")
'''


def script() -> str:
    """The rule as a standalone script for the target Python (the shell export): argv is the
    file to write, the family, the build names, the names being built (each one word,
    space-separated) and the user's constraint lines."""
    return "\n".join(["import sys", "from importlib import metadata", "", "", inspect.getsource(rule), _SCRIPT_MAIN])


def preview(backend_reqs, installed: Mapping, family: Iterable[str], nbi: Iterable[str], build_names,
            user: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The constraints as the plan knows them before anything ran: the lines of the build
    phases and those of the rest phase. ``installed``: normalized name -> distribution, as the
    remove phase leaves the environment; a package the backend phase installs shows as
    ``name==<installed by the backend phase>``."""
    from backendpick.model.names import normalize

    backend_names = {normalize(r.name) for r in backend_reqs}
    pins = []
    for r in backend_reqs:
        d = installed.get(normalize(r.name))
        pins.append(f"{r.name}=={d.version}" if d else f"{r.name}==<installed by the backend phase>")
    fences = [f"{n}<0" for n in sorted(family) if n not in backend_names and n not in installed]
    nbi_fences = [f"{n}<0" for n in sorted(nbi) if n not in build_names and n not in installed]
    kept = [f"{d.name}=={d.version}" for n, d in installed.items() if n in family and n not in backend_names]
    user = list(user)
    return tuple(pins + kept + fences + user), tuple(pins + kept + fences + nbi_fences + user)
