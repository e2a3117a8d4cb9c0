"""The planner: requirements, settings and the chosen backend in, a ``plan.Plan`` out. Pure.

``make_plan`` splits the request into the phases ``model/plan.py`` describes (remove, backend,
build-requirements, build, rest), each one installer run as intent (what it installs, from
where, under which constraints), never an installer's command line; the plan model,
the requirement predicates and the folding of build wheels into the rest phase stay in
``model/plan.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from backendpick.inputs.config import Settings
from backendpick.knowledge import facts
from backendpick.model.backend import Backend
from backendpick.model.choice import Decision
from backendpick.model.environment import Installed, Target
from backendpick.model.names import normalize
from backendpick.model.plan import (
    BACKEND,
    BUILD,
    BUILD_REQS,
    REMOVE,
    REST,
    AFTER_BACKEND,
    BACKEND_INDEX,
    UNINSTALL,
    Phase,
    Plan,
    installed_backend_mismatch,
    marker_ok,
    merge_specifier,
    pip_argv,
    same_release,
    satisfied,
    torch_changes,
    torch_exclusions,
)
from backendpick.planning import constraint_rule as constraints_mod


def _split_requirements(
    requirements: Sequence[Requirement],
    target: Target,
    family: set,
    nbi: Mapping[str, Sequence[str]],
    extra_backend: Iterable[str],
    extra_build: Iterable[str],
    notes: list[str],
) -> tuple[list[Requirement], list[Requirement], list[Requirement]]:
    """The requirements for this interpreter, split into the backend, build and rest phases."""
    reqs = [r for r in requirements if marker_ok(r, target.markers)]
    dropped = [str(r) for r in requirements if r not in reqs]
    if dropped:
        notes.append(f"not for this interpreter (markers): {', '.join(dropped)}")
    backend_reqs = [r for r in reqs if normalize(r.name) in family]
    build_reqs = [r for r in reqs if normalize(r.name) in nbi]
    rest_reqs = [r for r in reqs if normalize(r.name) not in family and normalize(r.name) not in nbi]

    # Packages discovered by an earlier attempt (install's retry) join their phase by name.
    present = {normalize(r.name) for r in backend_reqs}
    # Entries may carry the range a dependent needs (``torch==2.5.1``, from pip's report).
    backend_reqs += [Requirement(n) for n in extra_backend if normalize(Requirement(n).name) not in present]
    present = {normalize(r.name) for r in build_reqs}
    build_reqs += [Requirement(n) for n in extra_build if normalize(Requirement(n).name) not in present]
    return backend_reqs, build_reqs, rest_reqs


def _apply_arch_rule(backend_reqs: list[Requirement], decision: Decision,
                     offered: Sequence[Version]) -> list[Requirement]:
    """The arch rule: leave out torch releases that lack a GPU's architecture."""
    exclusions = torch_exclusions(decision, offered)
    if not exclusions:
        return backend_reqs
    if not any(normalize(r.name) == "torch" for r in backend_reqs):
        backend_reqs = [*backend_reqs, Requirement("torch")]
    return [merge_specifier(r, exclusions) if normalize(r.name) == "torch" else r for r in backend_reqs]


def _removals(
    target: Target,
    backend: Backend,
    family: set,
    nbi: Mapping[str, Sequence[str]],
    reinstall: Iterable[str],
    backend_reqs: Sequence[Requirement],
    keep: Iterable[str] = (),
    torch_build: Backend | None = None,
) -> tuple[dict[str, Installed], dict[str, Installed]]:
    """What goes before anything is installed, and which of it are builds rebuilt for a new torch.

    A backend switch: installed family members built for another backend are removed first
    and reinstalled from the new index, so nothing of the old backend stays behind. Packages
    named in ``reinstall`` (broken companions, --reinstall) are removed and reinstalled too.
    ``keep``: installed names never removed (a kept torch no index serves and its companions;
    what a base environment holds, which pip cannot remove from a venv). ``torch_build``: the
    installed torch's build as its files say, for an untagged (PyPI's) torch and its companions."""
    keep = {normalize(n) for n in keep}
    installed_family = {n: d for n, d in target.installed.items() if n in family and n not in keep}
    reinstall_names = {normalize(n) for n in reinstall}
    tagged = facts.load().tagged
    torch = target.get("torch")
    pypi_build = torch_build if torch is not None and _untagged(torch.version) else None
    mismatched = sorted(
        d.name for n, d in installed_family.items()
        # Only packages whose builds carry the backend in a local version tag (2.5.1+cu124,
        # facts.toml [torch.tagged]); others (xformers) are matched through their exact torch pin.
        if n in tagged and installed_backend_mismatch(d, backend, target.markers.get("sys_platform", "linux"),
                                                      pypi_build)
    )
    removed = dict(installed_family) if mismatched else {}
    removed.update({n: d for n, d in target.installed.items() if n in reinstall_names and n not in keep})
    rebuilt: dict[str, Installed] = {}
    if torch_changes(backend_reqs, removed, target):
        # Every installed build package was compiled against the torch that goes: each is
        # removed and installed again, at the same version, from a build for the new torch
        # (cache, prebuilt, source). One the user names keeps the user's requirement.
        rebuilt = {n: d for n, d in target.installed.items() if n in nbi and n not in removed and n not in keep}
        removed.update(rebuilt)
    return removed, rebuilt


def _untagged(version: str) -> bool:
    """A version without a local label (PyPI's ``2.14.1``; not ``2.5.1+cu124`` nor NGC's ``+nv24.6``)."""
    try:
        return Version(version).local is None
    except InvalidVersion:
        return False


def _remove_phase(
    removed: Mapping[str, Installed],
    rebuilt: Mapping[str, Installed],
    family: set,
    nbi: Mapping[str, Sequence[str]],
    backend_reqs: list[Requirement],
    build_reqs: list[Requirement],
) -> Phase:
    """The uninstall phase; what it removes joins the backend and build requirements (in place)."""
    to_remove = sorted(d.name for d in removed.values())
    names = {normalize(r.name) for r in backend_reqs}
    backend_reqs += [Requirement(d.name) for n, d in sorted(removed.items()) if n in family and n not in names]
    names = {normalize(r.name) for r in build_reqs}
    build_reqs += [Requirement(same_release(d) if n in rebuilt else d.name)
                   for n, d in sorted(removed.items()) if n in nbi and n not in names]
    return Phase(REMOVE, tuple(to_remove), action=UNINSTALL)


def _backend_phase(
    backend_reqs: Sequence[Requirement],
    installed_after_remove: Mapping[str, Installed],
    target: Target,
    backend: Backend,
    index_url: str,
) -> Phase:
    """The backend family from the backend's index alone (none of the user's package sources)."""
    done = satisfied(backend_reqs, installed_after_remove, target.markers) is None
    return Phase(
        BACKEND,
        tuple(str(r) for r in backend_reqs),
        source=BACKEND_INDEX,
        index_url=index_url,
        skip=f"already installed for {backend}" if done else None,
    )


def _build_phases(
    build_reqs: Sequence[Requirement],
    nbi: Mapping[str, Sequence[str]],
    installed_after_remove: Mapping[str, Installed],
    target: Target,
    constraints_path: Path,
    rest_options: Sequence[str],
    constraint_lines: Sequence[str],
) -> tuple[Phase, Phase]:
    """The build requirements, then the packages built without build isolation."""
    needed: list[str] = []
    for r in build_reqs:
        for dep in nbi.get(normalize(r.name), ()):
            if dep not in needed:
                needed.append(dep)
    missing = [d for d in needed if satisfied([Requirement(d)], installed_after_remove, target.markers)]
    skip = satisfied(build_reqs, installed_after_remove, target.markers)
    pinned = dict(constraints=tuple(constraint_lines), constraints_file=str(constraints_path),
                  constraints_written=AFTER_BACKEND, options=tuple(rest_options))
    reqs_phase = Phase(
        BUILD_REQS,
        tuple(needed),
        **pinned,
        # Only a build needs them (and install keeps them out of the environment).
        skip=("nothing to build" if not skip else None if missing else "build requirements already installed"),
    )
    # no_cache: pip's wheel cache would hand back a wheel it built earlier from the same sdist,
    # against whatever torch was installed then (issue 8). Only this phase.
    build_phase = Phase(
        BUILD,
        tuple(str(r) for r in build_reqs),
        **pinned,
        no_build_isolation=True,
        no_cache=True,
        skip=None if skip else "already installed",
    )
    return reqs_phase, build_phase


def _rest_phase(
    rest_reqs: Sequence[Requirement],
    rest_args: Sequence[str],
    installed_after_remove: Mapping[str, Installed],
    target: Target,
    constraints_path: Path,
    rest_options: Sequence[str],
    rest_lines: Sequence[str],
) -> Phase:
    """Everything else, from the user's indexes, under the stack's constraints."""
    # Editables and unnamed URLs (rest_args) always run: only pip knows what they hold.
    skip = satisfied(rest_reqs, installed_after_remove, target.markers) or bool(rest_args)
    words = [str(r) for r in rest_reqs] + list(rest_args)
    return Phase(
        REST,
        tuple(words),
        options=tuple(rest_options),
        constraints=tuple(rest_lines),
        constraints_file=str(constraints_path),
        constraints_written=AFTER_BACKEND,
        skip=None if skip else "already installed",
    )


def make_plan(
    *,
    decision: Decision,
    requirements: Sequence[Requirement],
    settings: Settings,
    target: Target,
    index_url: str,
    offered: Sequence[Version],
    constraints_path: Path,
    rest_options: Sequence[str] = (),
    user_constraints: Sequence[Requirement] = (),
    rest_args: Sequence[str] = (),
    runner_python: str,
    offers_source: str = "index",
    extra_backend: Iterable[str] = (),
    extra_build: Iterable[str] = (),
    reinstall: Iterable[str] = (),
    warnings: Sequence[str] = (),
    keep: Iterable[str] = (),
    torch_build: Backend | None = None,
) -> Plan:
    """The planner: which pip phases install the requirements on the chosen backend.

    ``reinstall``: installed packages to remove and install again (companions verify found
    built for another torch or backend, or what the user named with --reinstall). ``torch_build``:
    the installed torch's backend read from its files (``InstalledStack.backend``; None for a
    torch no index serves): an untagged torch built for the chosen backend stays."""
    backend = decision.backend
    family = set(settings.backend_packages)
    nbi = settings.no_build_isolation
    notes = list(warnings)

    backend_reqs, build_reqs, rest_reqs = _split_requirements(
        requirements, target, family, nbi, extra_backend, extra_build, notes)
    backend_reqs = _apply_arch_rule(backend_reqs, decision, offered)
    removed, rebuilt = _removals(target, backend, family, nbi, reinstall, backend_reqs, keep, torch_build)
    installed_after_remove = {k: v for k, v in target.installed.items() if k not in removed}

    phases: list[Phase] = []
    if removed:
        phases.append(_remove_phase(removed, rebuilt, family, nbi, backend_reqs, build_reqs))
    if backend_reqs:
        phases.append(_backend_phase(backend_reqs, installed_after_remove, target, backend, index_url))

    build_names = {normalize(r.name) for r in build_reqs}
    user_cons = [str(c) for c in user_constraints]
    constraint_lines, rest_lines = constraints_mod.preview(backend_reqs, installed_after_remove, family, nbi,
                                                           build_names, user_cons)
    if build_reqs:
        phases.extend(_build_phases(build_reqs, nbi, installed_after_remove, target, constraints_path,
                                    rest_options, constraint_lines))
    if rest_reqs or rest_args:
        phases.append(_rest_phase(rest_reqs, rest_args, installed_after_remove, target, constraints_path,
                                  rest_options, rest_lines))

    return Plan(
        backend=backend,
        reason=decision.reason,
        decided_by=decision.source,
        python=target.python,
        index_url=index_url,
        phases=tuple(phases),
        constraints_path=constraints_path,
        warnings=tuple(notes) + decision.warnings,
        backend_names=tuple(sorted(family)),
        build_names=tuple(sorted(nbi)),
        offers_source=offers_source,
        user_constraints=tuple(user_cons),
        pip=tuple(pip_argv(target, runner_python)),
    )
