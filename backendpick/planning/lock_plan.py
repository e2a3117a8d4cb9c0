"""``install --lock``: a lock file (model/lock.py) made into backendpick's phases (issue 21).

The refusals come first, before any file is fetched or anything changes: a lock for another
Python or platform (exit 2), a lock whose backend cannot run on the GPU detected here (exit 3;
no GPU, as in ``docker build``, is not a refusal). Then every locked file that a phase which
runs reads is fetched or taken from the cache and its sha256 checked (indexes/locked_files.py):
a mismatch stops here too. A phase already installed as locked reads no file, so a re-run on a
finished environment downloads and hashes nothing (issue 22).

The phases are the plan's usual ones, reading only those files (``source = OFFLINE``: no
index, none of the user's package sources, ``--no-deps``, each file's hash given to the
installer once more):

* **backend**: torch and its companions, with what they pulled in from the backend index;
* **build-requirements** (for a source build only) into the build folder, as install does;
* **build**: each package's wheel for the torch really installed: the wheel cache, the locked
  prebuilt wheel, else a build of the locked sdist without isolation against that torch
  (build/wheel_choice.py, with the locked files as its only sources);
* **rest**: everything else, with the stack pinned by the constraints file.

A phase whose packages are all installed at their locked versions is skipped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

from backendpick.edges import paths
from backendpick.errors import ConfigError, NoBackendError
from backendpick.model import lock as lock_mod
from backendpick.model.backend import Backend
from backendpick.model.choice import Decision
from backendpick.model.environment import Target
from backendpick.model.plan import (
    AFTER_BACKEND,
    BACKEND,
    BUILD,
    BUILD_REQS,
    DECIDED_BY_LOCK,
    OFFLINE,
    REST,
    Phase,
    Plan,
    pip_argv,
)


def read(path: Path) -> lock_mod.Lock:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the lock {path}: {exc.strerror or exc}",
                          hint="write one with: backendpick lock --backend NAME") from None
    return lock_mod.parse(text, str(path))


def check(lock: lock_mod.Lock, path: Path, target: Target, hardware, facts, policy: str) -> None:
    """The refusals before anything is fetched or changed."""
    from backendpick.selection.backend_choice import lock_refusal

    why = lock.mismatch(target.markers)
    if why:
        raise ConfigError(f"{path} is not for {target.python}: {why}",
                          hint=f"lock for this interpreter: backendpick lock --backend {lock.backend} --python {target.python}")
    try:
        backend = Backend.parse(lock.backend)
    except ValueError:
        raise ConfigError(f"{path}: unknown backend {lock.backend!r}") from None
    refusal = lock_refusal(hardware, facts, backend, lock.torch, policy)
    if refusal:
        raise NoBackendError(f"{path} cannot run here: {refusal}",
                             hint="install a lock for a backend this machine runs (backendpick detect names it), "
                                  "or upgrade the driver")


def _satisfied(packages, target: Target) -> bool:
    return all((d := target.get(p.name)) is not None and d.version == p.version for p in packages)


def _phase(name: str, packages, files: Mapping[str, Path], target: Target, **kw) -> Phase:
    """One phase installing exactly ``packages``' locked files (checked against their hashes
    before the first change; no index, no dependencies)."""
    words = tuple(f"{p.name} @ {files[p.name].as_uri()}" for p in packages)
    return Phase(name, words, source=OFFLINE, no_deps=True,
                 skip="already installed as locked" if _satisfied(packages, target) else None, **kw)


def make_plan(lock: lock_mod.Lock, files: Mapping[str, Path], *, target: Target, settings, state: Path,
              runner_python: str, path: Path) -> tuple[Plan, object]:
    """The plan of ``lock`` with its files at ``files`` (package name -> checked local file),
    and the settings the build phase's choice reads (the locked files as its only sources)."""
    backend = Backend.parse(lock.backend)
    family = tuple(sorted({*settings.backend_packages, *(p.name for p in lock.in_phase(BACKEND))}))
    build_names = tuple(sorted({*settings.no_build_isolation, *(p.name for p in lock.in_phase(BUILD))}))
    constraints = paths.constraints(state)
    phases = []
    if lock.in_phase(BACKEND):
        phases.append(_phase(BACKEND, lock.in_phase(BACKEND), files, target))
    builds = lock.in_phase(BUILD)
    if lock.in_phase(BUILD_REQS):
        phases.append(_phase(BUILD_REQS, lock.in_phase(BUILD_REQS), files, target))
    if builds:
        folders = sorted({str(files[p.name].parent) for p in builds if p.sdist is not None})
        phases.append(Phase(BUILD, tuple(f"{p.name}=={p.version}" for p in builds), source=OFFLINE, no_deps=True,
                            options=tuple(w for f in folders for w in ("--find-links", f)), no_build_isolation=True,
                            no_cache=True, constraints_file=str(constraints), constraints_written=AFTER_BACKEND,
                            skip="already installed as locked" if _satisfied(builds, target) else None))
        # The build phase's choice (build/wheel_choice.py): the wheel cache, else the locked
        # prebuilt wheel's folder, else the locked sdist built here; no other source.
        settings = replace(settings, prebuilt={**settings.prebuilt, **{
            p.name: [str(files[p.name].parent)] if p.wheel is not None else [] for p in builds}})
    if lock.in_phase(REST):
        phases.append(_phase(REST, lock.in_phase(REST), files, target, constraints_file=str(constraints),
                             constraints_written=AFTER_BACKEND))
    torch = lock.package("torch")
    plan = Plan(
        backend=backend, reason=f"the lock {path} ({lock.backend}" + (f", torch {torch.version})" if torch else ")"),
        decided_by=DECIDED_BY_LOCK, python=target.python, index_url=lock.index_url, phases=tuple(phases),
        constraints_path=constraints, backend_names=family, build_names=build_names, offers_source="lock",
        pip=tuple(pip_argv(target, runner_python)),
    )
    return plan, settings


def decision(lock: lock_mod.Lock, path: Path) -> Decision:
    return Decision(Backend.parse(lock.backend), DECIDED_BY_LOCK, f"the lock {path}")


def running(lock: lock_mod.Lock, plan: Plan) -> set[str]:
    """The packages whose locked files the phases of ``plan`` that run read (a phase already
    installed as locked reads none: a re-run on a finished environment fetches nothing)."""
    return {p.name for phase in plan.phases if phase.skip is None for p in lock.in_phase(phase.name)}


def files_of(lock: lock_mod.Lock):
    """(package name, the file install takes) for every package of the lock."""
    return [(p.name, p.file) for p in sorted(lock.packages, key=lambda p: p.name)]

