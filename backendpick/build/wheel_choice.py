"""Where the build phase's wheels come from: a cached build, a prebuilt wheel, or a source build.

flash-attn, mamba-ssm and causal-conv1d are sdists on PyPI. Their setup.py guesses the name of
a wheel on the project's GitHub releases from the installed torch and, when that download
fails, compiles CUDA for up to hours. backendpick makes the fast path the normal one. For each
such package of the build phase, in this order:

1. the wheel cache (``state/wheel_cache.py``): a wheel backendpick built before for the same package
   version, torch build, Python, platform and GPU architectures;
2. a prebuilt wheel: the file name the project publishes (rows in ``data/facts.toml``), looked
   for in the sources of ``[tool.backendpick.prebuilt]`` (URL templates, folders, "github"),
   by default the project's GitHub release; checked to exist before it is chosen;
3. a source build: toolchain guards (``build/toolchain.py``) and limits (``build/limits.py``),
   ``pip wheel`` (``uv build`` of the sdist with the uv engine, build/sdists.py) into the
   environment's state folder, the wheel stored in the cache, then installed.

The version is chosen before any of this: an exact pin, else the newest release satisfying the
requirement on the user's default index (pip would pick the same). The prebuilt name and the
cache key need the torch of the target, so the choice is made when torch is there:

* at plan time, when torch is installed and no earlier phase of the plan changes it; then
  ``plan`` and ``install --dry-run`` print exactly the commands install will run;
* otherwise right after the backend phase. ``--dry-run`` then prints, for each package, a
  ``#`` comment naming the candidates in order and a placeholder
  ``<flash-attn 2.7.4 wheel: chosen after the backend phase>`` in the install command; install
  prints the chosen source and the commands when the build phase starts.

Packages without a row (added to no-build-isolation by the user) and direct URL requirements
are installed as before, with one ``pip install --no-build-isolation``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from backendpick import envvars
from backendpick.build import sdists
from backendpick.build.limits import limits as build_limits
from backendpick.build.toolchain import Toolchain, inspect_toolchain
from backendpick.build.wheel_names import gpu_tag, platform_tag, wheel_filename
from backendpick.build.wheel_sources import Source, look, look_any, sources
from backendpick.edges import paths
from backendpick.errors import BackendpickError
from backendpick.inputs.config import BuildSettings, Settings
from backendpick.inputs.installer import UV
from backendpick.inputs.pip_config import PipConfig
from backendpick.knowledge import facts
from backendpick.knowledge.facts import Package
from backendpick.model.environment import Target
from backendpick.model.hardware import AMD, NVIDIA, Hardware
from backendpick.model.names import normalize
from backendpick.model.plan import (
    AS_IS,
    BACKEND,
    BEFORE,
    BUILD,
    BUILD_REQS,
    CACHED,
    OFFLINE,
    PENDING,
    PREBUILT,
    SOURCE,
    BuildStep,
    Phase,
    Plan,
    fold_builds,
)
from backendpick.redaction import redact
from backendpick.state import wheel_cache
from backendpick.target import installed_torch
from backendpick.target.installed_torch import TorchInfo
from backendpick.target.torch_origin import version_signs


def packages() -> dict[str, Package]:
    """The ``[prebuilt]`` tables of facts.toml, by normalized name."""
    return facts.load().prebuilt


# -- which version -------------------------------------------------------------------------------------


def pinned_version(req: Requirement) -> str | None:
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


WHEEL_ON_INDEX = "wheel on the index"


def choose_version(req: Requirement, *, client, index_url: str, target: Target) -> tuple[str | None, str]:
    """An exact pin, else the newest release on ``index_url`` that fits (pip's choice too).

    The second value says why there is no version, or is ``WHEEL_ON_INDEX`` when the index
    itself has an installable wheel of the chosen version."""
    from backendpick.indexes.client import IndexUnavailable, PageNotFound, installable

    pin = pinned_version(req)
    if pin is not None:
        return pin, ""
    try:
        files = client.project(index_url, req.name)
    except PageNotFound:
        return None, f"{req.name} is not on {redact(index_url)}"
    except IndexUnavailable as exc:
        return None, f"cannot read {exc}"
    found = installable(files, req.name, tags=target.tags, python_version=target.python_version_text, sdists=True)
    versions = {c.version for c in found}
    wheels = {c.version for c in found if c.wheel}  # versions with a wheel this target can install
    fitting = sorted(req.specifier.filter(versions))
    if not fitting:
        return None, f"no release of {req.name} on {redact(index_url)} satisfies '{req.specifier or 'any'}'"
    if fitting[-1] in wheels:
        # A company index (or a future PyPI) serving a wheel: pip installs it, nothing to build.
        return str(fitting[-1]), WHEEL_ON_INDEX
    return str(fitting[-1]), ""


def default_index(pip_config: PipConfig, rest_options: Sequence[str]) -> str:
    """The index pip uses for the build phase: --index-url of a requirements file, pip's config,
    else PyPI."""
    options = list(rest_options)
    for flag in ("--index-url", "-i"):
        if flag in options and options.index(flag) + 1 < len(options):
            return options[options.index(flag) + 1]
    return pip_config.get("index-url") or facts.load().pypi_url


# -- the build phase's context and choices ---------------------------------------------------------


@dataclass(frozen=True)
class BuildContext:
    """What choosing and building needs, carried by the plan's build phase to the executor."""

    project_dir: Path
    configured: dict  # normalized name -> configured sources
    build: BuildSettings
    pip_config: PipConfig
    gpu_caps: tuple[str, ...]
    gpu_archs: tuple[str, ...]
    cache_root: Path
    probe_root: Path
    python_tag: str
    platform: str | None
    target_bin: Path
    staging: Path  # where pip wheel writes, inside the environment's state folder
    torch: TorchInfo | None = None  # known once torch is installed and final, or predicted
    # True while ``torch`` is what the backend phase is expected to install: the executor checks
    # it against the installed torch and chooses again when pip resolved another one.
    predicted: bool = False
    mirrors: tuple = ()  # [tool.backendpick.mirrors]: applied to every wheel URL
    # Where the build requirements are installed for source builds (``pip install --target``),
    # put on the builds' PYTHONPATH and PATH only: setuptools, ninja and friends stay out of the
    # user's environment. None: they are installed into the environment (a package pip builds
    # itself during its install, which no PYTHONPATH can reach without misleading its resolver).
    build_path: str | None = None
    # The run's client.IndexClient: its pages, and its session for the prebuilt checks and
    # downloads (the user's certificate, proxy and credentials).
    client: object = None
    # The uv engine: where a source build's sdist is looked for (build/sdists.py ``places``), as
    # ``uv build`` takes a file. None with pip, whose ``pip wheel`` finds the sdist itself.
    sdist_places: tuple | None = None

    def sources_for(self, name: str) -> list[Source]:
        package = packages()[name]
        found = sources(package, self.configured.get(name), self.project_dir)
        if not self.mirrors:
            return found
        from backendpick.knowledge.recipes import mirror

        return [replace(s, url=mirror(s.url, self.mirrors)) if s.url else s for s in found]


def cache_key(ctx: BuildContext, name: str, version: str, arch_key: str) -> wheel_cache.Key:
    assert ctx.torch is not None
    return wheel_cache.Key(
        name=name, version=wheel_cache.normalize_version(version), torch=ctx.torch.version, backend=ctx.torch.backend,
        cxx11abi=ctx.torch.cxx11abi, python=ctx.python_tag, platform=ctx.platform or "unknown", arch=arch_key,
    )


def attach(plan: Plan, *, settings: Settings, target: Target, hardware: Hardware, pip_config: PipConfig,
           env: Mapping[str, str], rest_options: Sequence[str] = (), predicted: TorchInfo | None = None,
           client=None, installer: str | None = None) -> Plan:
    """Give the plan's build phase its steps: each package's version now, and where its wheel
    comes from when torch is already installed and no earlier phase changes it. ``installer``:
    the engine that will run them (the plan's own when not given); uv builds an sdist file."""
    from backendpick.indexes.client import IndexClient

    at = next((i for i, p in enumerate(plan.phases) if p.name == BUILD and p.skip is None), None)
    if at is None:
        return plan
    phase = plan.phases[at]
    known = packages()
    if not any(normalize(Requirement(r).name) in known for r in phase.requirements):
        return plan
    # The plan's client when given: its pages read once per run, revalidated with --refresh.
    client = client if client is not None else IndexClient(pip_config, env=env)
    ctx = _context(plan, settings=settings, target=target, hardware=hardware, pip_config=pip_config, env=env)
    ctx = replace(ctx, client=client)
    index_url = default_index(pip_config, rest_options)
    if (installer or plan.installer) == UV:
        ctx = replace(ctx, sdist_places=sdists.places(pip_config, phase.options, offline=phase.source == OFFLINE,
                                                      pypi=facts.load().pypi_url))
    steps = []
    for text in phase.requirements:
        req = Requirement(text)
        name = normalize(req.name)
        if name not in known or req.url:
            why = "a direct URL requirement" if req.url else "no prebuilt wheel names known"
            steps.append(BuildStep(text, name, how=AS_IS, note=f"{req.name}: {why}; pip builds it as it is"))
            continue
        version, why = choose_version(req, client=client, index_url=index_url, target=target)
        if why == WHEEL_ON_INDEX:
            steps.append(BuildStep(text, name, how=AS_IS, version=version,
                                   note=f"{req.name} {version}: {redact(index_url)} has a wheel for this Python and "
                                        "platform; pip installs it, nothing to build"))
            continue
        steps.append(BuildStep(text, name, version=version, note=why))

    warnings: list[str] = []
    unnamed = sorted(n for n in settings.prebuilt if n not in known and n in {s.name for s in steps})
    if unnamed:
        warnings.append(f"[tool.backendpick.prebuilt] {', '.join(unnamed)}: backendpick knows the prebuilt wheel "
                        f"names of {', '.join(sorted(known))} only; pip builds {'them' if len(unnamed) > 1 else 'it'} "
                        "as it is")
    # Only the backend phase installs or replaces torch (a removed torch is installed again
    # there); the later phases run with torch pinned by the constraints file.
    torch_changes = any(p.name == BACKEND and p.skip is None for p in plan.phases)
    if not torch_changes and target.get("torch") is not None:
        try:
            ctx = replace(ctx, torch=installed_torch.torch_info(target.python))
        except BackendpickError as exc:
            warnings.append(f"{exc.message}; the build phase's wheels are chosen when it runs")
    elif torch_changes and predicted is not None:
        # Choose now for the torch the backend phase will install, so the plan and --dry-run show
        # the real commands; install checks the prediction once torch is there.
        ctx = replace(ctx, torch=predicted, predicted=True)
    if ctx.torch is not None:
        steps = resolve(steps, ctx, env)
        warnings += toolchain_warnings(steps, ctx, env)
    else:
        steps = [replace(s, note=_pending_note(s, ctx, plan)) if s.how == PENDING else s for s in steps]
    phases = list(plan.phases)
    phases[at] = replace(phase, steps=tuple(steps), context=ctx)
    if all(s.how != AS_IS for s in steps):
        phases, ctx, plan = _separate_build_requirements(plan, phases, at, ctx)
    return replace(plan, phases=fold_builds(phases), warnings=plan.warnings + tuple(warnings))


def _separate_build_requirements(plan: Plan, phases: list[Phase], at: int,
                                 ctx: BuildContext) -> tuple[list[Phase], BuildContext, Plan]:
    """The build-requirements phase installs into a folder of the state directory that only the
    source builds see (``pip wheel`` with PYTHONPATH and PATH); it is skipped when nothing is
    built from source.

    Nothing there belongs to the stack, so it does not wait for the backend phase: it runs
    beside it (a pip start and a resolution that would otherwise come after it), with a
    constraints file of its own that fences the stack (a build tool must not bring a second
    torch into the folder) and keeps the user's lines."""
    req_at = next((i for i, p in enumerate(phases) if p.name == BUILD_REQS), None)
    if req_at is None:
        return phases, ctx, plan
    folder = paths.build_env(ctx.staging.parent)
    ctx = replace(ctx, build_path=str(folder))
    steps = [replace(s, build_env={**s.build_env, "PYTHONPATH": str(folder)}) if s.how == SOURCE else s
             for s in phases[at].steps]
    phases[at] = replace(phases[at], steps=tuple(steps), context=ctx)
    own = paths.build_constraints(ctx.staging.parent)
    building = any(s.how in (PENDING, SOURCE) for s in steps)
    lines = tuple(f"{n}<0" for n in sorted(set(plan.backend_names) | set(plan.build_names))) + plan.user_constraints
    # --upgrade with the folder: what an earlier install left there is brought up to the request.
    phases[req_at] = replace(phases[req_at], target_dir=str(folder), upgrade=True, constraints=lines,
                             constraints_file=str(own), constraints_written=BEFORE, alongside=BACKEND,
                             skip=None if building else "nothing is built from source")
    return phases, ctx, replace(plan, build_constraints_path=own)


def _context(plan: Plan, *, settings: Settings, target: Target, hardware: Hardware,
             pip_config: PipConfig, env: Mapping[str, str]) -> BuildContext:
    bin_dir = target.prefix / ("Scripts" if sys.platform == "win32" else "bin")
    return BuildContext(
        project_dir=settings.project_dir,
        configured=dict(settings.prebuilt),
        build=settings.build,
        pip_config=pip_config,
        gpu_caps=tuple(sorted({a.compute_capability for a in hardware.by_vendor(NVIDIA) if a.compute_capability})),
        gpu_archs=tuple(sorted({a.arch for a in hardware.by_vendor(AMD) if a.arch})),
        cache_root=paths.wheel_cache(env),
        probe_root=envvars.probe_root(env),
        python_tag=target.python_tag,
        platform=platform_tag(target.markers),
        target_bin=bin_dir,
        staging=paths.build_staging(plan.constraints_path.parent),
        mirrors=settings.mirrors,
    )


def _pending_note(step: BuildStep, ctx: BuildContext, plan: Plan) -> str:
    """What --dry-run says about a package whose wheel is chosen after the backend phase."""
    if step.version is None:
        what = step.requirement
    elif Requirement(step.requirement).specifier:
        what = f"{step.requirement} ({step.version})"
    else:
        what = f"{step.requirement} {step.version}"
    first = f"{step.note}; " if step.note else ""
    package = packages()[step.name]
    name = "the prebuilt wheel"
    if step.version and ctx.platform:
        # The backend is known; torch's exact version and C++ ABI are not until it is installed.
        probe = TorchInfo("0", cuda="{}.{}".format(*plan.backend.version) if plan.backend.kind == "cuda" else None,
                          hip="{}.{}".format(*plan.backend.version[:2]) if plan.backend.kind == "rocm" else None)
        tag, _ = gpu_tag(package, Version(step.version), probe)
        if tag:
            name = (f"{package.wheel_name}-{step.version}+{tag}torch<X.Y>cxx11abi<TRUE|FALSE>"
                    f"-{ctx.python_tag}-{ctx.python_tag}-{ctx.platform}.whl")
    where = ", ".join(s.label() for s in ctx.sources_for(step.name)) or "no sources configured"
    return (f"{what}: {first}chosen after the backend phase installs torch: a build in the wheel cache "
            f"({ctx.cache_root}), else {name} from {where}, else a source build with "
            f"{'pip wheel' if ctx.sdist_places is None else 'uv build'}")


def resolve(steps: Sequence[BuildStep], ctx: BuildContext, env: Mapping[str, str]) -> list[BuildStep]:
    """Choose each pending package's wheel: the cache, else a prebuilt wheel, else a source build."""
    assert ctx.torch is not None
    return [_choose(s, ctx, env) if s.how == PENDING else s for s in steps]


def _choose(step: BuildStep, ctx: BuildContext, env: Mapping[str, str]) -> BuildStep:
    torch = ctx.torch
    assert torch is not None
    package = packages()[step.name]
    req = Requirement(step.requirement)
    limits = build_limits(torch, package, ctx.build, env=env, gpu_caps=ctx.gpu_caps, gpu_archs=ctx.gpu_archs,
                             root=ctx.probe_root)
    version = step.version
    # What a source build of it runs with, whichever wheel is chosen: the shell export builds
    # from source when the torch it finds is not the one chosen for (execute/shell_build.py).
    build_env = dict(limits.env)
    if package.force_build_env and not env.get(package.force_build_env):
        # Its setup.py would try the same download again, then build: we already looked.
        build_env[package.force_build_env] = "TRUE"
    step = replace(step, build_env=build_env, arch_key=limits.arch_key, limits=limits.summary)
    key = cache_key(ctx, step.name, version or "0", limits.arch_key)
    entry = wheel_cache.lookup(ctx.cache_root, key) if version else wheel_cache.newest(ctx.cache_root, key, req.specifier)
    if entry is not None:
        return replace(step, how=CACHED, version=entry.key.version, wheel=str(entry.wheel),
                       find_links=str(entry.directory),
                       note=f"{req.name} {entry.key.version}: built before for torch {torch.version} "
                            f"(wheel cache: {entry.wheel})")

    where = ctx.sources_for(step.name)
    reasons: list[str] = []
    label, _note, signs = version_signs(torch.version, facts.load(), env)
    if signs:
        # A torch no index serves (NVIDIA's, a source build): the projects build their release
        # wheels against the index builds of a release, whose C++ symbols this one need not share.
        reasons.append(f"no prebuilt wheel is built against the {label} {torch.version}")
    elif version:
        filename, why = wheel_filename(package, version, torch, ctx.python_tag, ctx.platform)
        if filename is None:
            reasons.append(why)
        elif not where:
            reasons.append(f"no prebuilt sources configured for {req.name}")
        else:
            found, said = look(filename, version, where, session_of(ctx))
            if found is not None:
                return replace(step, how=PREBUILT, wheel=found.location,
                               note=f"{req.name} {version}: prebuilt wheel {filename} from {found.source.label()}")
            reasons.append(f"no prebuilt wheel {filename} ({'; '.join(said)})")
    else:
        found = look_any(package, req.specifier, torch, ctx.python_tag, ctx.platform, where)
        if found is not None:
            name = Path(found.location).name
            return replace(step, how=PREBUILT, version=str(parse_wheel_filename(name)[1].public), wheel=found.location,
                           note=f"{req.name}: {step.note}; prebuilt wheel {name} from {found.source.label()}")
        reasons.append(step.note or "the version is unknown")

    build_req = f"{req.name}=={version}" if version else f"{req.name}{req.specifier}"
    if ctx.build_path:  # the build requirements, for this build only
        build_env["PYTHONPATH"] = ctx.build_path
    what = f"{req.name} {version}" if version else req.name
    return with_sdist(replace(
        step, how=SOURCE, note=f"{what}: building from source: {'; '.join(reasons)}",
        build_requirement=build_req, wheel_dir=str(ctx.staging / step.name), build_env=build_env,
        find_links=str(ctx.staging / step.name) if version else None,
    ), ctx)


def with_sdist(step: BuildStep, ctx: BuildContext) -> BuildStep:
    """The step with the sdist ``uv build`` compiles (the uv engine; pip's ``pip wheel`` finds it
    itself): where it is and the local file, or the places that had none in its note (the
    build then stops before it starts, execute/build_phase.py)."""
    if ctx.sdist_places is None or step.sdist is not None:
        return step
    req = Requirement(step.requirement)
    spec = SpecifierSet(f"=={step.version}") if step.version else req.specifier
    found, said = sdists.find(req.name, spec, ctx.sdist_places, ctx.client or _own_client(ctx))
    if found is None:
        where = "; ".join(said) or "no index or find-links to look in"
        return replace(step, note=f"{step.note}; no sdist of {req.name}{spec} for uv build ({where})")
    wheel_dir = step.wheel_dir or str(ctx.staging / step.name)
    return replace(step, sdist=found, sdist_file=sdists.local_file(found, wheel_dir))


def _own_client(ctx: BuildContext):
    """A client of the context's pip configuration, for a context made without the run's."""
    from backendpick.indexes.client import IndexClient

    return IndexClient(ctx.pip_config)


def session_of(ctx: BuildContext):
    """The transport of the run's client (a context made without one gets a client of its own)."""
    return (ctx.client or _own_client(ctx)).session


def skip_gpu_build(step: BuildStep, env: Mapping[str, str]) -> bool:
    package = packages().get(step.name)
    var = package.skip_build_env if package else None
    return bool(var) and env.get(var, "").upper() == "TRUE"


def toolchain(steps: Sequence[BuildStep], ctx: BuildContext, env: Mapping[str, str]) -> Toolchain | None:
    """The toolchain the source builds among ``steps`` would use; None when none builds."""
    building = [s for s in steps if s.how == SOURCE]
    if not building or ctx.torch is None:
        return None
    first = building[0]
    return inspect_toolchain(
        ctx.torch, what=f"{first.name} {first.version or ''}".strip(), env=env, target_bin=ctx.target_bin,
        root=ctx.probe_root, skip_gpu=all(skip_gpu_build(s, env) for s in building),
    )


def toolchain_warnings(steps: Sequence[BuildStep], ctx: BuildContext, env: Mapping[str, str]) -> list[str]:
    """At plan time a missing compiler is a warning: install stops on it before building."""
    if not ctx.build.checks:
        return []
    tools = toolchain(steps, ctx, env)
    if tools is None:
        return []
    names = ", ".join(s.name for s in steps if s.how == SOURCE)
    return [f"{names} will be built from source, but {p.message} (fix: {p.hint})" for p in tools.problems]


__all__ = ["BuildContext", "attach", "choose_version", "packages", "resolve", "toolchain"]
