"""Build the install plan: a value listing ordered pip phases. Pure: data in, data out.

Phases, each one pip invocation:
  remove              only when installed backend packages are built for another backend
  backend             torch and its family, from the backend index alone
  build-requirements  what no-build-isolation packages need in the target (setuptools, ninja...)
  build               flash-attn and friends with --no-build-isolation, torch pinned
  rest                everything else from the user's pip configuration, the stack pinned

Later phases get a constraints file that pins what the backend phase installed and *fences*
backend packages it did not install (``name<0``, a version that cannot exist): an ordinary
package that pulls in torchvision then fails to resolve instead of quietly taking PyPI's build,
and ``install`` moves that package into the backend phase and runs again.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import Requirement
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
    build_argv: tuple[str, ...] = ()  # pip wheel, for a source build
    build_env: dict = field(default_factory=dict)  # limits and switches for that build
    arch_key: str = ""  # the architecture part of its cache key
    limits: str = ""  # what was chosen for the build, in words
    # Folder holding its wheel (the build folder, or its cache entry): pip gets ``-f folder
    # name==version``, a command known before the build, so --dry-run prints it exactly.
    find_links: str | None = None
    # The local file backendpick downloaded ``wheel`` (or the requirement's URL) to: the server
    # wants credentials that pip and uv would not find themselves (indexes/fetches.py).
    fetched: str | None = None

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

    def to_json(self) -> dict:
        return {
            "requirement": self.requirement,
            "how": self.how,
            "version": self.version,
            "wheel": redact(self.wheel) if self.wheel else None,
            "downloaded_to": self.fetched,
            "note": redact(self.note),
            "build_argv": [redact(a) for a in self.build_argv],
            "build_env": {k: redact_var(k, v) for k, v in self.build_env.items()},
        }





def _shell(argv: Sequence[str], env: Mapping[str, str], unset: Sequence[str] = ()) -> str:
    words = [f"{k}={shlex.quote(redact_var(k, v))}" for k, v in sorted(env.items())]
    prefix = (["env"] + [f"-u {k}" for k in unset] + words) if (words or unset) else []
    return " ".join(prefix + [shlex.quote(redact(a)) for a in argv])


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
    name: str
    requirements: tuple[str, ...]
    argv: tuple[str, ...]
    index_url: str | None = None  # None: the user's own pip configuration decides
    no_build_isolation: bool = False
    constraints: tuple[str, ...] = ()  # lines known at plan time; install rewrites the file
    env: dict = field(default_factory=dict)  # variables set for this phase on top of the user's
    unset: tuple[str, ...] = ()  # variables removed for this phase
    skip: str | None = None  # why it will not run (already satisfied), or None
    # Build phase only: where each package's wheel comes from, and what choosing it needs
    # (a wheel_choice.BuildContext). Without steps, the phase runs ``argv`` as it is.
    steps: tuple[BuildStep, ...] = ()
    context: PhaseContext | None = None
    # Build phase: its wheels are installed by the rest phase's pip run (one pip start fewer).
    deferred: bool = False
    # Rest phase: its argv before the build phase's wheels were folded in.
    base_argv: tuple[str, ...] = ()
    # Build-requirements phase into a folder of its own: it starts with this phase (the
    # backend's) and runs beside it, as nothing it installs depends on torch.
    alongside: str | None = None
    # Files backendpick downloads before the phase runs, (URL, local file): behind credentials
    # the installer would not find; its command names the local file (indexes/fetches.py).
    downloads: tuple[tuple[str, str], ...] = ()
    # The command as the shell export writes it, when credentials were moved off ``argv`` into
    # ``env`` (indexes/credentials.py): every option back in place, its URL without user information.
    plain_argv: tuple[str, ...] = ()

    def install_argv(self) -> tuple[str, ...]:
        """``argv`` with each build step's wheel in place of its requirement."""
        if not self.steps:
            return self.argv
        head = self.argv[: len(self.argv) - len(self.requirements)]
        links = [a for s in self.steps if s.find_links for a in ("-f", s.find_links)]
        return tuple(head) + tuple(links) + tuple(s.install_requirement() for s in self.steps)

    def command_line(self) -> str:
        """The command as a shell line, credentials hidden: what --dry-run prints.

        A build phase with steps prints one line per command it runs (pip wheel for each
        source build, then pip install), after a ``#`` comment per package saying why.
        """
        fetched = [f"# downloaded first by backendpick (the server wants credentials): {redact(url)} -> {path}"
                   for url, path in self.downloads]
        if not self.steps:
            line = _shell(self.argv, self.env, self.unset)
            if self.alongside:
                fetched.append(f"# runs alongside the {self.alongside} phase")
            return "\n".join([*fetched, line])
        lines = fetched + [f"# {redact(s.note)}" for s in self.steps if s.note]
        lines += [_shell(s.build_argv, {**self.env, **s.build_env}, self.unset) for s in self.steps if s.build_argv]
        if self.deferred:
            lines.append("# the wheels are installed by the rest phase's pip run")
        else:
            lines.append(_shell(self.install_argv(), self.env, self.unset))
        return "\n".join(lines)

    def to_json(self) -> dict:
        data = {
            "name": self.name,
            "requirements": list(self.requirements),
            "index_url": redact(self.index_url) if self.index_url else None,
            "no_build_isolation": self.no_build_isolation,
            "constraints": list(self.constraints),
            "command": self.command_line(),
            "argv": [redact(a) for a in self.install_argv()],
            "skip": self.skip,
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
    installer: str = "pip"  # the engine whose commands the phases hold (execute/engines.py)
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

    def to_json(self) -> dict:
        return {
            "backend": self.backend.name,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "python": str(self.python),
            "index_url": redact(self.index_url),
            "offers_source": self.offers_source,
            "installer": self.installer,
            "constraints_file": str(self.constraints_path),
            "phases": [p.to_json() for p in self.phases],
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


def installed_backend_mismatch(dist: Installed, backend: Backend, platform: str) -> bool:
    """Whether an installed tagged package is built for another backend than ``backend``."""
    tag = local_tag_backend(dist.version)
    if tag is None:
        # Untagged: PyPI's own build (CUDA on Linux, CPU elsewhere). Even where its CUDA matches,
        # backend packages come from the backend index only, so it is replaced.
        return not (backend.kind == CPU and platform != "linux")
    return tag != backend


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
    """The rest phase installing the build phase's wheels too.

    ``--only-binary`` for them: pip must take the wheel, never fall back to an isolated sdist
    build (the ``No module named 'torch'`` failure this tool exists to avoid)."""
    base = rest.base_argv or rest.argv
    head = base[: len(base) - len(rest.requirements)]
    links = [a for s in build.steps if s.find_links for a in ("-f", s.find_links)]
    only = ["--only-binary", ",".join(sorted(s.name for s in build.steps))]
    wheels = [s.install_requirement() for s in build.steps]
    return replace(rest, argv=(*head, *links, *only, *wheels, *rest.requirements), base_argv=base)


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
