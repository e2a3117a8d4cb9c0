"""The install plan: a value listing ordered phases, each saying WHAT it does, never how an
installer spells it. Pure: data in, data out.

Phases, in the order they run:
  remove              only when installed backend packages are built for another backend
  backend             torch and its family, from the backend index alone
  build-requirements  what no-build-isolation packages need (setuptools, ninja...)
  build               flash-attn and friends with --no-build-isolation, torch pinned
  rest                everything else from the user's pip configuration, the stack pinned

A phase records its intent: the requirements and where they come from (the backend index alone,
the user's pip configuration, find-links folders, direct URLs), its constraints file (which
file, its lines, when it is written), and its switches (upgrade, pre-releases, no dependencies,
no build isolation, no cache, a target folder, a hash-checked requirement file). The engines
(``execute/engines.py``) render a phase to one installer's argv and environment, in one place,
for install, ``--dry-run``, ``plan``, ``--json`` and the shell export alike; a lock writer reads
the same intents (``Phase.requirement_sources``).

Later phases get a constraints file that pins what the backend phase installed and *fences*
backend packages it did not install (``name<0``, a version that cannot exist): an ordinary
package that pulls in torchvision then fails to resolve instead of quietly taking PyPI's build,
and ``install`` moves that package into the backend phase and runs again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from backendpick.model.backend import CPU, Backend, local_tag_backend
from backendpick.model.choice import Decision
from backendpick.model.environment import Installed, Target
from backendpick.model.names import normalize
from backendpick.redaction import redact, redact_var

# The names of the phases, in the order they run. BUILD is the phase that installs the packages built
# against the installed torch (no build isolation); it is not the planner (``planner.make_plan``), nor the
# settings of source builds (``config.BuildSettings``), nor the prebuilt facts table.
REMOVE, BACKEND, BUILD_REQS, BUILD, REST = "remove", "backend", "build-requirements", "build", "rest"

# Where a build-phase package's wheel comes from (build/wheel_choice.py decides; see its docstring).
PENDING, CACHED, PREBUILT, SOURCE, AS_IS = "pending", "cache", "prebuilt", "source", "as-is"

# What a phase does.
INSTALL, UNINSTALL = "install", "uninstall"
CLEAR = "clear"  # removes the folders a killed pip left (restore): no installer runs

# Where a phase's requirements come from (a requirement's own direct URL, or a build step's
# find-links folder, wins over it: ``Phase.requirement_sources``).
BACKEND_INDEX = "backend-index"  # that index alone: none of the user's package sources
USER = "user"  # the user's pip configuration, with the requirements files' own options
OFFLINE = "offline"  # local files only: no index, no pip configuration (restore's kept copies)
FIND_LINKS, DIRECT = "find-links", "direct-url"

# ``Plan.decided_by`` of a plan made from a lock file (planning/lock_plan.py). Here, not there:
# install compares every plan with it, and importing lock_plan (and model/lock.py) for the
# word cost every plain install ~5 ms (issue 22 item 2).
DECIDED_BY_LOCK = "lock"

# When a phase's constraints file is written: before the phase from the lines it holds now, or
# after the backend phase from what that installed (install's pins; planning/constraint_rule.py).
BEFORE, AFTER_BACKEND = "before", "after-backend"


@dataclass(frozen=True)
class BuildStep:
    """One package of the build phase: a cached build, a prebuilt wheel, a source build, or
    (pending) chosen after the backend phase installs torch."""

    requirement: str  # as in the phase's requirements
    name: str  # normalized
    how: str = PENDING
    version: str | None = None
    wheel: str | None = None  # URL or local path of the wheel to install
    note: str = ""  # why, in one line
    # A source build: ``build_requirement`` built with ``pip wheel`` (the build phase's options,
    # --no-deps, --no-binary of the package) into ``wheel_dir``; the engines render the command.
    build_requirement: str | None = None
    wheel_dir: str | None = None
    build_env: dict = field(default_factory=dict)  # limits and switches for that build
    arch_key: str = ""  # the architecture part of its cache key
    limits: str = ""  # what was chosen for the build, in words
    # Folder holding its wheel (the build folder, or its cache entry): pip gets ``-f folder
    # name==version``, a command known before the build, so --dry-run prints it exactly.
    find_links: str | None = None
    # The local file backendpick downloaded ``wheel`` (or the requirement's URL) to: the server
    # wants credentials that pip and uv would not find themselves (indexes/fetches.py).
    fetched: str | None = None
    seconds: float | None = None  # a source build as run: how long it took (install's summary)
    # The uv engine's source build (``uv build`` takes a file, not a requirement): where the
    # sdist is (its URL, or a local file), and the local file uv builds (the same file, or where
    # backendpick downloads it first; build/sdists.py). None with pip, whose ``pip wheel`` finds it.
    sdist: str | None = None
    sdist_file: str | None = None

    def install_requirement(self) -> str:
        """What the build phase's pip install gets for this package (a placeholder until known)."""
        req = Requirement(self.requirement)
        head = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        marker = f" ; {req.marker}" if req.marker is not None else ""
        if self.how == AS_IS:
            return f"{head} @ {Path(self.fetched).as_uri()}{marker}" if self.fetched else self.requirement
        if self.find_links and self.version:
            return f"{head}=={self.version}"
        if self.wheel:
            where = self.fetched or self.wheel
            location = where if "://" in where else Path(where).as_uri()
            return f"{head} @ {location}"
        if self.how == SOURCE:  # version still open: the wheel's name is known only after the build
            return f"{head} @ <the wheel built above>"
        chosen = f" ({self.version})" if self.version else ""
        return f"<wheel for {self.requirement}{chosen}: chosen after the backend phase>"

    def source(self) -> tuple[str, str | None]:
        """Where its wheel comes from: (FIND_LINKS, folder), (DIRECT, URL or file), or (USER,
        None) for one pip takes from the user's indexes itself (or chooses after the backend phase)."""
        if self.find_links and self.version:
            return FIND_LINKS, self.find_links
        if self.wheel:
            return DIRECT, self.fetched or self.wheel
        if self.how == AS_IS:
            try:
                url = Requirement(self.requirement).url
            except InvalidRequirement:
                url = None
            if url or self.fetched:
                return DIRECT, self.fetched or url
        return USER, None

    def to_json(self) -> dict:
        return {
            "requirement": self.requirement,
            "name": self.name,
            "how": self.how,
            "version": self.version,
            "wheel": redact(self.wheel) if self.wheel else None,
            "downloaded_to": self.fetched,
            "note": redact(self.note),
            "build_requirement": self.build_requirement,
            "wheel_dir": self.wheel_dir,
            "build_env": {k: redact_var(k, v) for k, v in self.build_env.items()},
            "seconds": round(self.seconds, 2) if self.seconds is not None else None,
            "sdist": redact(self.sdist) if self.sdist else None,
        }


class PhaseContext(Protocol):
    """What a build phase carries to the executor for choosing and building its wheels
    (wheel_choice.BuildContext; a Protocol here, as prebuilt imports this module): the torch the
    plan chose for, and whether that torch is only the one the backend phase is expected to install."""

    @property
    def torch(self) -> object: ...

    @property
    def predicted(self) -> bool: ...


@dataclass(frozen=True)
class Phase:
    """One installer run, as intent. ``requirements`` are the words the installer gets: the
    requirements, then editables (``-e PATH``) and unnamed paths or URLs as the user gave them."""

    name: str
    requirements: tuple[str, ...]
    action: str = INSTALL
    source: str = USER  # BACKEND_INDEX, USER or OFFLINE
    index_url: str | None = None  # BACKEND_INDEX: the index
    # The pip options of the user's requirements files (inputs/requirements.py lets only package
    # sources and binary choices through), in the user's words and order.
    options: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # the constraints file's lines, as known at plan time
    constraints_file: str | None = None
    constraints_written: str = BEFORE  # BEFORE this phase, or AFTER_BACKEND from what it installed
    upgrade: bool = False
    pre: bool = False  # pre-releases (the nightly channel's backend phase)
    no_deps: bool = False
    no_build_isolation: bool = False
    no_cache: bool = False  # the installer's wheel cache would hand back a build against another torch
    target_dir: str | None = None  # installs into this folder, not the environment
    # Requirements with ``--hash`` go to pip in a requirement file, the one place pip accepts
    # hashes: its path and lines, written before the phase runs (planning/hashes.py).
    hashed_file: str | None = None
    hashed_lines: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()  # CLEAR: what to remove
    skip: str | None = None  # why it will not run (already satisfied), or None
    # Build phase only: where each package's wheel comes from, and what choosing it needs
    # (a wheel_choice.BuildContext). Without steps, the phase installs its requirements as they are.
    steps: tuple[BuildStep, ...] = ()
    context: PhaseContext | None = None
    # Build phase: its wheels are installed by the rest phase's run (one pip start fewer).
    deferred: bool = False
    # Rest phase: the build phase's wheels it installs too (``fold``), binary only.
    wheels: tuple[BuildStep, ...] = ()
    # Build-requirements phase into a folder of its own: it starts with this phase (the
    # backend's) and runs beside it, as nothing it installs depends on torch.
    alongside: str | None = None
    # Files backendpick downloads before the phase runs, (URL, local file): behind credentials
    # the installer would not find; the phase names the local file (indexes/fetches.py).
    downloads: tuple[tuple[str, str], ...] = ()

    @property
    def installs(self) -> tuple[str, ...]:
        """What the installer gets to install: the build steps' wheels in place of their
        requirements, the folded wheels before the phase's own requirements."""
        if self.steps:
            return tuple(s.install_requirement() for s in self.steps)
        return tuple(s.install_requirement() for s in self.wheels) + self.requirements

    @property
    def find_links(self) -> tuple[str, ...]:
        """Folders holding the build wheels this phase installs by name and version."""
        return tuple(s.find_links for s in (self.steps or self.wheels) if s.find_links)

    @property
    def only_binary(self) -> tuple[str, ...]:
        """Names the installer must take as a wheel: folded build wheels are never rebuilt in isolation."""
        return tuple(sorted(s.name for s in self.wheels))

    def requirement_sources(self) -> tuple[tuple[str, str, str | None], ...]:
        """(requirement, where from, location) for each requirement, what a lock writer reads:
        DIRECT (its URL or file), FIND_LINKS (a folder), BACKEND_INDEX (the index), USER (the
        user's pip configuration and the requirements files' options) or OFFLINE."""
        out = []
        for step in (*self.wheels, *self.steps):
            out.append((step.requirement, *step.source()))
        if self.steps:
            return tuple(out)
        words = list(self.requirements)
        i = 0
        while i < len(words):
            word = words[i]
            if word == "-e" and i + 1 < len(words):
                out.append((f"-e {words[i + 1]}", DIRECT, words[i + 1]))
                i += 2
                continue
            try:
                url = Requirement(word).url
            except InvalidRequirement:
                url = word  # a path or URL as the user wrote it
            out.append((word, DIRECT, url) if url else (word, self.source, self.index_url))
            i += 1
        return tuple(out)

    def to_json(self) -> dict:
        """The intent; the engines add the command (execute/engines.py ``phase_json``)."""
        data = {
            "name": self.name,
            "requirements": list(self.requirements),
            "index_url": redact(self.index_url) if self.index_url else None,
            "no_build_isolation": self.no_build_isolation,
            "constraints": list(self.constraints),
            "skip": self.skip,
            "action": self.action,
            "source": self.source,
            "constraints_file": self.constraints_file,
            "constraints_written": self.constraints_written if self.constraints_file else None,
            "upgrade": self.upgrade,
            "pre": self.pre,
            "no_deps": self.no_deps,
            "no_cache": self.no_cache,
            "target_dir": self.target_dir,
            "hashed_file": self.hashed_file,
            "only_binary": list(self.only_binary),
            "sources": [{"requirement": redact(r), "from": kind, "location": redact(where) if where else None}
                        for r, kind, where in self.requirement_sources()],
        }
        if self.alongside:
            data["alongside"] = self.alongside
        if self.downloads:
            data["downloads"] = [{"url": redact(url), "file": path} for url, path in self.downloads]
        if self.steps:
            data["builds"] = [s.to_json() for s in self.steps]
        return data


@dataclass(frozen=True)
class Plan:
    backend: Backend
    reason: str
    decided_by: str
    python: Path
    index_url: str
    phases: tuple[Phase, ...]
    constraints_path: Path
    warnings: tuple[str, ...] = ()
    backend_names: tuple[str, ...] = ()  # normalized backend-package family
    build_names: tuple[str, ...] = ()  # normalized no-build-isolation packages
    offers_source: str = "index"
    user_constraints: tuple[str, ...] = ()  # from -c lines of requirements files
    routes: tuple = ()  # routing.Route per package with a recipe: where it comes from and why
    installer: str = "pip"  # the engine that runs the phases (execute/engines.py renders them)
    uv: str | None = None  # the uv executable, for the uv engine (inputs/installer.py)
    # How pip runs for the target: its own, else backendpick's with --python (plan.pip_argv).
    pip: tuple[str, ...] = ()
    # The build-requirements phase's own constraints file, when it installs into the build
    # folder (its lines are that phase's ``constraints``); None otherwise.
    build_constraints_path: Path | None = None
    # selection/torch_version.py: the torch chosen and what pinned it; selection/resolve.py: where the pins came from.
    torch: object = None  # torch_version.TorchChoice
    resolution: object = None  # resolve.Resolution
    # The user's constraints (pip config and -c files) for the backend phase: written by install.
    backend_constraints: tuple[str, ...] = ()
    backend_constraints_path: Path | None = None
    pin_environment: bool = True  # install leaves the stack's pins in the environment (state/environment_pins.py)
    # Hosts whose credentials the plan's look-ups used (credentials.Keychain.hosts): the shell
    # export names them, as its pip and uv need the same credentials (from .netrc).
    credential_hosts: tuple[str, ...] = ()
    installed_torch: object = None  # torch_origin.TorchOrigin: the torch installed before this plan
    replacing: str = ""  # an installed torch no index serves that this plan replaces, and why (selection/stays.py)

    @property
    def building(self) -> frozenset:
        """Normalized names the build phase installs: the one family that later phases do not fence."""
        return frozenset(normalize(Requirement(r).name) for p in self.phases if p.name == BUILD for r in p.requirements)

    @property
    def active(self) -> list[Phase]:
        return [p for p in self.phases if p.skip is None]

    def to_json(self, phase_json=None) -> dict:
        """``phase_json``: a phase's JSON with its command (engines.Renderer.phase_json); the
        intent alone without it."""
        shown = phase_json or (lambda p: p.to_json())
        return {
            "backend": self.backend.name,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "python": str(self.python),
            "index_url": redact(self.index_url),
            "offers_source": self.offers_source,
            "installer": self.installer,
            "constraints_file": str(self.constraints_path),
            "phases": [shown(p) for p in self.phases],
            "packages": [r.to_json() for r in self.routes],
            "warnings": list(self.warnings),
            "torch": self.torch.to_json() if self.torch is not None else None,
            "resolution": self.resolution.to_json() if self.resolution is not None else None,
            "pin_environment": self.pin_environment,
            "installed_torch": self.installed_torch.to_json() if self.installed_torch is not None else None,
            "replacing": self.replacing or None,
        }


# -- requirement helpers --------------------------------------------------------------------------


def marker_ok(req: Requirement, markers: Mapping[str, str], extra: str = "") -> bool:
    if req.marker is None:
        return True
    try:
        return req.marker.evaluate({**markers, "extra": extra})
    except UndefinedEnvironmentName:
        return True


def satisfied(
    reqs: Iterable[Requirement], installed: Mapping[str, Installed], markers: Mapping[str, str]
) -> str | None:
    """None when every requirement and its dependencies are installed at fitting versions;
    otherwise the first reason why not. Mirrors what pip would find to do, without pip."""
    seen: set[tuple[str, str]] = set()
    stack = [(r, "") for r in reqs]
    while stack:
        req, extra = stack.pop()
        if not marker_ok(req, markers, extra):
            continue
        name = normalize(req.name)
        dist = installed.get(name)
        if dist is None:
            return f"{req.name} is not installed"
        if req.url:
            return f"{req.name} is a direct URL requirement"
        if not req.specifier.contains(Version(dist.version), prereleases=True):
            return f"{req.name} {dist.version} does not satisfy {req.specifier}"
        for ex in sorted(req.extras) or [""]:
            if (name, ex) in seen:
                continue
            seen.add((name, ex))
            for raw in dist.requires:
                try:
                    dep = Requirement(raw)
                except Exception:  # a broken Requires-Dist line: let pip judge
                    return f"{dist.name} has unreadable metadata"
                # marker_ok with extra="" drops the optional dependencies nobody asked for.
                if marker_ok(dep, markers, ex):
                    stack.append((dep, ""))
    return None


def installed_backend_mismatch(dist: Installed, backend: Backend, platform: str,
                               pypi_build: Backend | None = None) -> bool:
    """Whether an installed tagged package is built for another backend than ``backend``.

    ``pypi_build``: the build of the installed untagged torch as its files say (torch.version.cuda
    or hip, ``installed_stack.InstalledStack.backend``), None when the torch is tagged, foreign
    or unknown. PyPI's companions of an untagged torch are built for that torch's CUDA."""
    tag = local_tag_backend(dist.version)
    if tag is not None:
        return tag != backend
    if pypi_build is not None:
        # PyPI's own build is kept when it is the backend asked for: the request is met with
        # it (issue 18, expectation 3), and the backend index would install the same build again.
        return pypi_build != backend
    # Untagged, its build unknown: PyPI's (CUDA on Linux, CPU elsewhere).
    return not (backend.kind == CPU and platform != "linux")


def merge_specifier(req: Requirement, extra: str) -> Requirement:
    if not extra:
        return req
    spec = SpecifierSet(str(req.specifier)) & SpecifierSet(extra)
    text = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "") + str(spec)
    if req.marker is not None:
        text += f"; {req.marker}"
    return Requirement(text)


def torch_exclusions(decision: Decision, offered: Sequence[Version]) -> str:
    """``!=X.Y.Z`` for torch versions on offer that do not serve every GPU."""
    if not decision.torch_releases:
        return ""
    allowed = {r[:2] for r in decision.torch_releases}
    out = sorted({v.public for v in offered if v.release[:2] not in allowed})
    return ",".join(f"!={v}" for v in out)


def foldable(build: Phase) -> bool:
    """Whether every package of the build phase ends as a known wheel (cached, prebuilt, or built
    into a known folder), so pip needs no build for it and another pip run can install it."""
    return bool(build.steps) and all(
        s.how in (CACHED, PREBUILT) or (s.how == SOURCE and s.find_links) for s in build.steps
    )


def fold(build: Phase, rest: Phase) -> Phase:
    """The rest phase installing the build phase's wheels too (``Phase.wheels``): the engines
    give the installer ``--only-binary`` for them, so it must take the wheel and never fall back
    to an isolated sdist build (the ``No module named 'torch'`` failure this tool exists to avoid)."""
    return replace(rest, wheels=build.steps)


def fold_builds(phases: Sequence[Phase]) -> tuple[Phase, ...]:
    """Fold a foldable build phase into a rest phase that runs; otherwise leave them."""
    out = list(phases)
    b = next((i for i, p in enumerate(out) if p.name == BUILD and p.skip is None), None)
    r = next((i for i, p in enumerate(out) if p.name == REST and p.skip is None), None)
    if b is None or r is None or not foldable(out[b]):
        return tuple(out)
    out[b] = replace(out[b], deferred=True)
    out[r] = fold(out[b], out[r])
    return tuple(out)


def torch_changes(backend_reqs: Sequence[Requirement], removed: Mapping[str, Installed], target: Target) -> bool:
    """Whether the backend phase replaces the installed torch: a backend switch removes it, or
    the requested torch does not fit the installed one. (pip moving torch for a companion's
    exact pin is not foreseeable here; install records the torch of each build and verify
    names the mismatch.)"""
    torch = target.get("torch")
    if torch is None:
        return bool(backend_reqs)  # builds left without a torch meet a new one
    if "torch" in removed:
        return True
    wanted = [r for r in backend_reqs if normalize(r.name) == "torch" and marker_ok(r, target.markers)]
    return any(r.url or not r.specifier.contains(Version(torch.version), prereleases=True) for r in wanted)


def same_release(dist: Installed) -> str:
    """``flash-attn==2.7.4`` for an installed ``2.7.4`` (or ``2.7.4+cu12torch2.5cxx11abiFALSE``)."""
    try:
        return f"{dist.name}=={Version(dist.version).public}"
    except InvalidVersion:
        return dist.name


def env_delta(phase_env: Mapping[str, str], user_env: Mapping[str, str]) -> tuple[dict, tuple[str, ...]]:
    """What a phase sets and unsets relative to the user's environment (shown by --dry-run)."""
    changed = {k: v for k, v in phase_env.items() if user_env.get(k) != v}
    return changed, tuple(sorted(k for k in user_env if k not in phase_env))


# -- the plan ---------------------------------------------------------------------------------------


def pip_argv(target: Target, runner_python: str) -> list[str]:
    """How to run pip for the target: its own, else ours with --python (pip >= 22.3)."""
    if target.pip_version:
        return [str(target.python), "-m", "pip"]
    return [runner_python, "-m", "pip", "--python", str(target.python)]
