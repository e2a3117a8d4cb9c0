"""What the stack needs and lacks: project requirements not installed, unmet dependencies of the
stack (from installed metadata, and ``pip check``), each with the command that repairs it."""

from __future__ import annotations

import re
import shlex
from typing import Collection, Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from backendpick.checks.stack import Problem, _fix, _requires, torch_pin
from backendpick.edges.runner import capture
from backendpick.model.environment import Target
from backendpick.model.names import normalize
from backendpick.target.installed_torch import TorchBuild


def missing_problems(target: Target, requirements: Iterable[Requirement], build_packages: Iterable[str], python_flag: str,
                     *, from_project: bool = True, recipes: Mapping | None = None, family: Iterable[str] = ()) -> list[Problem]:
    """Requirements of the project that are not installed (the missing flash-attn of the seeds).

    A requirement a recipe installs under another name (``cupy`` as ``cupy-cuda12x``, or the
    cpu backend's ``faiss-cpu`` for ``faiss-gpu``) is installed when that distribution is. The
    fix installs the project when they come from its pyproject.toml, else the requirement; a
    missing torch beside its companions gets the torch they were made for."""
    from backendpick.checks.stack import torch_missing_fix
    from backendpick.model.plan import marker_ok

    nbi = set(build_packages)
    out = []
    reported: set[str] = set()
    for req in requirements:
        if not marker_ok(req, target.markers):
            continue
        dist = target.get(req.name) or _installed_as(target, req.name, recipes or {})
        note = " (it builds against torch: backendpick installs it after torch with --no-build-isolation)" if normalize(req.name) in nbi else ""
        fix = f"backendpick install{python_flag}" + ("" if from_project else f" {shlex.quote(str(req))}")
        if dist is None and normalize(req.name) == "torch" and any(
                n in set(family) | nbi for n in target.installed):
            fix = torch_missing_fix(target, family, nbi, python_flag)
        if dist is None:
            out.append(Problem(req.name, f"{req} is required but not installed{note}", fix))
            reported.add(normalize(req.name))
        elif not req.specifier.contains(Version(dist.version), prereleases=True):
            out.append(Problem(req.name, f"{req} is required but {dist.version} is installed", fix))
            reported.add(normalize(req.name))
        else:
            # Installed, but what it needs may not be: a backend switch interrupted after its
            # remove phase leaves the project's packages without torch.
            for dep, needed_by in _missing_dependencies(target, req):
                if normalize(dep.name) in reported:
                    continue
                reported.add(normalize(dep.name))
                note = " (it builds against torch: backendpick installs it after torch with --no-build-isolation)" if normalize(dep.name) in nbi else ""
                wants = dep.name + (f"[{','.join(sorted(dep.extras))}]" if dep.extras else "") + str(dep.specifier)
                out.append(Problem(dep.name, f"{wants} is required by {needed_by} (for {req}) but not installed{note}", fix))
    return out


def _installed_as(target: Target, name: str, recipes: Mapping):
    """The installed distribution a recipe gave ``name`` under another name, or None: the
    build its ``name`` template names (cupy-cuda12x, cupy-rocm-6-2), or its cpu replacement."""
    from backendpick.knowledge.recipes import REFUSE, SAME
    from backendpick.planning.routing import variant_pattern

    key = normalize(name)
    for recipe in recipes.get(key, ()):
        for template in recipe.name.values():
            pattern = variant_pattern(template)
            found = next((d for n, d in sorted(target.installed.items()) if n != key and pattern.match(n)), None)
            if found is not None:
                return found
        if recipe.cpu not in (None, SAME, REFUSE):
            try:
                found = target.get(Requirement(recipe.cpu).name)
            except InvalidRequirement:
                found = None
            if found is not None:
                return found
    return None


def _missing_dependencies(target: Target, req: Requirement) -> list[tuple[Requirement, str]]:
    """Dependencies (at any depth) of the installed ``req`` that are not installed, each with the
    installed distribution that requires it; extras only where asked for, markers respected."""
    from backendpick.model.plan import marker_ok

    out: list[tuple[Requirement, str]] = []
    seen: set[tuple[str, str]] = set()
    stack = [(req, "")]
    while stack:
        current, extra = stack.pop()
        dist = target.get(current.name)
        if dist is None:
            continue
        for ex in sorted(current.extras) or [""]:
            if (normalize(dist.name), ex) in seen:
                continue
            seen.add((normalize(dist.name), ex))
            for dep in _requires(dist):
                if not marker_ok(dep, target.markers, ex):
                    continue
                if target.get(dep.name) is None:
                    if all(normalize(d.name) != normalize(dep.name) for d, _ in out):
                        out.append((dep, f"{dist.name} {dist.version}"))
                else:
                    stack.append((dep, ""))
    return out


def dependency_fix(python_flag: str, tb: TorchBuild | None, family: Iterable[str], package: str, dep: Requirement,
                   offered: Collection[str] | None = None) -> str:
    """The command that repairs ``package``'s unmet dependency ``dep``.

    A companion at odds with torch is replaced by one that suits the installed torch (torch
    pinned, so pip cannot move torch instead); any other dependency is simply installed."""
    name, family = normalize(dep.name), set(family)
    stack = {"torch"} | family
    if tb is not None and (name in stack or normalize(package) in stack):
        # One backend phase with torch pinned: it replaces a companion at odds with torch, and
        # installs every missing dependency of the stack from the backend index at once.
        extra = [] if normalize(package) == "torch" else [package]
        return _fix(python_flag, tb.backend, [torch_pin(tb, offered), *extra])
    text = dep.name + (f"[{','.join(sorted(dep.extras))}]" if dep.extras else "") + str(dep.specifier)
    return f"backendpick install{python_flag} {shlex.quote(text)}"


_PIP_CHECK = (
    re.compile(r"^(?P<pkg>\S+) \S+ has requirement (?P<dep>.+?), but you have "),
    re.compile(r"^(?P<pkg>\S+) \S+ requires (?P<dep>\S+?),? which is not installed"),
    # uv pip check: "The package `foo` requires `bar>=2`, but `1.0` is installed" / "..., but it's not installed"
    re.compile(r"^The package `(?P<pkg>[^`]+)` requires `(?P<dep>[^`]+)`, but "),
)


def pip_check_problems(target: Target, names: Iterable[str], python_flag: str, *, tb: TorchBuild | None = None,
                       family: Iterable[str] = (), offered: Collection[str] | None = None,
                       uv: str | None = None) -> list[Problem]:
    """``pip check`` lines about the stack (other packages' problems are not ours to judge);
    ``uv pip check`` where ``uv`` is given (``--installer uv``: no pip process, a venv without pip)."""
    if uv is not None:
        tool = "uv pip check"
        res = capture([uv, "pip", "check", "--no-config", "--python", target.python], timeout=120)
    elif not target.pip_version:
        return []
    else:
        tool = "pip check"
        res = capture([target.python, "-m", "pip", "check", "--disable-pip-version-check"], timeout=120)
    if res.ok or res.returncode is None:
        return []
    watched = set(names)
    out = []
    for line in (res.stdout + "\n" + res.stderr).splitlines():
        match = next((m for m in (r.match(line.strip()) for r in _PIP_CHECK) if m), None)
        if match is None and uv is not None:
            continue  # uv's own lines ("Checked 3 packages", "Found 1 incompatibility")
        words = {normalize(w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)}
        if not words & watched:
            continue
        try:
            dep = Requirement(match.group("dep")) if match else None
        except InvalidRequirement:
            dep = None
        pkg = match.group("pkg") if match else (line.split() or ["?"])[0]
        fix = dependency_fix(python_flag, tb, family, pkg, dep, offered) if dep else f"backendpick install{python_flag}"
        out.append(Problem(pkg, f"{tool}: {line.strip()}", fix))
    return out


def dependency_problems(target: Target, names: Iterable[str], python_flag: str, *, tb: TorchBuild | None = None,
                        family: Iterable[str] = ()) -> list[Problem]:
    """``pip check`` for the stack, from installed metadata alone (no subprocess): install runs it
    after every change, so it must cost nothing."""
    from backendpick.model.plan import marker_ok

    out = []
    for name in sorted(set(names)):
        dist = target.get(name)
        if dist is None:
            continue
        for dep in _requires(dist):
            if not marker_ok(dep, target.markers):
                continue
            have = target.get(dep.name)
            fix = dependency_fix(python_flag, tb, family, dist.name, dep)
            if have is None:
                out.append(Problem(dist.name, f"{dist.name} {dist.version} requires {dep.name}, which is not installed", fix))
            elif not dep.specifier.contains(Version(have.version), prereleases=True):
                out.append(Problem(dist.name, f"{dist.name} {dist.version} requires {dep.name}{dep.specifier}, "
                                              f"but {have.version} is installed", fix))
    return out
