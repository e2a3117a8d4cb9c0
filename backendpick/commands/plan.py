"""``backendpick plan``: the backend, the reason and the pip phases, without running them.

``prepare`` is shared with ``install``: it is the whole config -> probe -> select -> plan chain.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet

from backendpick import config, engine as engine_mod, envpins, facts as facts_mod, lastrun, paths, pipconf, plan as plan_mod
from backendpick import requirements, resolve as resolve_mod, target as target_mod, torchpins
from backendpick.backend import CPU, Backend
from backendpick.errors import ConfigError, NoBackendError
from backendpick.facts import Facts, show
from backendpick.hardware import Hardware
from backendpick.index import IndexClient
from backendpick.offers import Offers, candidate_kinds, gather, gather_preferred, index_url_for, preference
from backendpick.output import Output
from backendpick.probe import ProbeSettings, probe
from backendpick.select import Decision, Explicit, choose, explicit_choice, table_offers


@dataclass(frozen=True)
class Request:
    """Everything the user said on the command line about what to install and where."""

    project_dir: Path = Path(".")
    requirements: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    editables: tuple[str, ...] = ()  # -e PATH or VCS URL, as pip -e
    extras: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    python: Path | None = None
    backend: str | None = None
    index_url: str | None = None
    cuda_compat: str | None = None
    extra_backend: tuple[str, ...] = field(default_factory=tuple)  # set by install's retry
    extra_build: tuple[str, ...] = field(default_factory=tuple)
    extra_recipe: tuple[str, ...] = field(default_factory=tuple)  # recipe packages a dependency pulled in
    reinstall: tuple[str, ...] = ()  # --reinstall: remove these first, then install them again
    installer: str | None = None  # --installer: pip or uv
    refresh: bool = False  # --refresh: ask the indexes even when the last install's record matches
    upgrade: bool = False  # -U: the newest torch (and packages) the machine and the request allow
    upgrade_packages: tuple[str, ...] = ()  # --upgrade-package NAME
    channel: str | None = None  # --channel stable|test|nightly
    pin_environment: bool | None = None  # --pin-environment / --no-pin-environment


@dataclass(frozen=True)
class Prepared:
    plan: plan_mod.Plan
    target: target_mod.Target
    settings: config.Settings
    hardware: Hardware
    decision: Decision
    pip_config: pipconf.PipConfig
    backend_env: dict
    user_env: dict
    request_key: str = ""  # lastrun: the request's fingerprint
    offers: Offers | None = None  # what the choice was made from


def _torch_spec(reqs) -> SpecifierSet:
    spec = SpecifierSet()
    for r in reqs:
        if config.normalize(r.name) == "torch":
            spec &= r.specifier
    return spec


def prepare(req: Request, env: dict | None = None, target: target_mod.Target | None = None) -> Prepared:
    """``target``: the target as just inspected by the caller, to save inspecting it again."""
    env = dict(os.environ if env is None else env)
    facts = facts_mod.load()
    settings = config.load(
        facts, project_dir=req.project_dir, backend=req.backend, index_url=req.index_url,
        cuda_compat=req.cuda_compat, env=env, installer=req.installer, channel=req.channel,
        pin_environment=req.pin_environment,
    )
    # Before any look-up: asking for uv where there is none is a usage error, at once.
    engine = engine_mod.resolve(settings.installer.value, env, settings.installer.source)
    wanted = requirements.gather(req.requirements, req.files, settings.pyproject, req.extras, req.groups, env=env,
                                 editables=req.editables)
    if target is None:
        target = target_mod.inspect(target_mod.choose_python(req.python, env))
    pip_config = pipconf.read(env, target.prefix)
    hardware = probe(facts, ProbeSettings.from_env(env))
    family = set(settings.backend_packages)
    reqs = [r for r in wanted.requirements if plan_mod.marker_ok(r, target.markers)]
    _check_reinstall(req.reinstall, reqs, target, settings)
    warnings: list[str] = list(hardware.warnings)

    explicit = explicit_choice(settings)
    channel = settings.channel.value
    template = torchpins.channel_template(settings.index_url.value, channel)
    nbi = set(settings.no_build_isolation)
    # Packages a recipe sends to their own source (a per-backend index, a find-links page, a
    # per-CUDA name) are not looked up on the user's index: PyPI has only a CPU build or an
    # sdist of them, which says nothing about what the routed build needs.
    routed_away = {n for n, rows in settings.recipes.items() if any(r.mechanism != "default" for r in rows)}
    ordinary = [r for r in reqs if config.normalize(r.name) not in family | nbi | routed_away]
    # backendpick's own pip runs must not be blocked by the pins it wrote earlier (envpins.py).
    own_env = envpins.own_runs_env(env, target.prefix, pip_config)
    # The user's pip ``constraint`` setting and the request's -c files: policy for the torch
    # choice and for the backend phase too (torchpins.py).
    cons_lines, cons_warnings = torchpins.read_constraint_files(pip_config.list("constraint"))
    warnings += cons_warnings
    policy = [torchpins.Pin(r, f"constraint file {f}") for f, r in cons_lines
              if config.normalize(r.name) in family and (r.specifier or r.url)]
    policy += torchpins.constraint_pins(wanted.constraints, family, "constraint (-c)")
    upgrade = torchpins.Upgrade(req.upgrade, tuple(config.normalize(n) for n in req.upgrade_packages))
    offers: Offers | None = None
    client = IndexClient(pip_config)  # one page cache for every index look-up of this plan
    state = paths.state_dir(target, env)
    request = lastrun.request_key(
        requirements=[str(r) for r in wanted.requirements], options=list(wanted.rest_options),
        constraints=[str(c) for c in wanted.constraints], backend=settings.backend.value, index=template,
        compat=settings.cuda_compat.value, family=sorted(family), nbi=sorted(settings.no_build_isolation),
        hardware=hardware.to_json(), python=str(target.python), extra_backend=list(req.extra_backend),
        extra_build=list(req.extra_build), reinstall=list(req.reinstall), editables=list(req.editables),
        hashes=sorted((k, sorted(v)) for k, v in wanted.hashes.items()), channel=channel,
        upgrade=req.upgrade, upgrade_packages=sorted(upgrade.packages),
        pin_environment=bool(settings.pin_environment.value), policy=[str(p.requirement) for p in policy],
    )
    # -U asks the indexes for something newer: a record of the last install cannot answer that.
    recorded = None if req.refresh or upgrade.any else lastrun.load(state, request, lastrun.environment_key(target))
    recorded_offers = lastrun.offers(recorded) if recorded is not None else None
    # Candidate backends, in the order auto selection prefers them (only those the hardware runs).
    nightly = SpecifierSet(">=0.dev0") if channel == "nightly" else SpecifierSet()
    if explicit is not None:
        candidates = [explicit.backend]
    else:
        kinds = candidate_kinds(hardware)
        candidates = [b for b in facts.all_backends() if b.kind in kinds]
    kept = _installed_backend(target, facts) if explicit is None else None
    keep = kept if kept is not None and kept.is_gpu else None  # auto never downgrades
    order = candidates if explicit is not None else preference(facts, hardware, candidates, settings.cuda_compat.value)
    if keep is not None and keep not in order:
        order = [*order, keep]

    # ONE resolution per plan (resolve.py): the pins on the torch family and the backend and
    # build packages the ordinary requirements pull in, before any backend is chosen.
    resolution = resolve_mod.Resolution()
    known = None if upgrade.any else resolve_mod.from_installed(
        ordinary, target.installed, target.markers, family=family, build=nbi)
    if ordinary and known is not None:
        resolution = known  # already installed: their metadata answers, no pip, no index
    elif ordinary and recorded_offers is not None:
        # The record promised a finished environment, yet a requirement is not met: ask again.
        return prepare(replace(req, refresh=True), env, target)
    elif ordinary:
        resolution = resolve_mod.resolve(
            resolve_mod.resolvable(ordinary), plan_mod.pip_argv(target, sys.executable), target,
            env={**env, **own_env}, family=family, build=nbi,
            published=lambda: _published(client, template, order, family, target, nightly),
            options=wanted.rest_options, constraints=[str(c) for c in wanted.constraints], pre=channel == "nightly",
        )
        if resolution.stopped:
            warnings.append(resolution.stopped)
        if resolution.fallback:
            warnings.append(f"torch pins from a {resolution.describe()}")
    extra_backend, extra_build = _pulled_in(req, resolution, target, settings)
    wants_backend = any(config.normalize(r.name) in family for r in reqs) or bool(extra_backend)

    pins = [*torchpins.direct_pins(reqs, family), *resolution.pins, *policy]
    # Pins that cannot hold together stop here (exit 2); pins that hold but that no backend offers
    # meet the backend choice's own errors below (exit 3, naming the index and the pins).
    for name in sorted({p.name for p in pins}):
        torchpins.check(pins, name=name)
    spec = torchpins.merged(pins).get("torch", SpecifierSet())
    if wants_backend:
        asked = spec & nightly
        # A backend whose index lacks a pinned companion (torchvision==0.20.1) cannot serve the
        # request either: the choice moves on to one that has it.
        serves = _companions_check(client, template, pins, family, target, nightly)
        if recorded_offers is not None:
            # Nothing changed since the last install: its offers decide again, no index is asked.
            offers = Offers(recorded_offers, "recorded")
        elif explicit is not None:
            offers = gather(facts, client, template, [explicit.backend], asked, target)
            if offers.source == "index" and explicit.backend in offers.versions and not serves(explicit.backend):
                offers = replace(offers, versions={})
            if explicit.backend not in offers.versions:
                try:
                    _explicit_missing(facts, client, template, explicit, asked, target, offers, settings)
                except NoBackendError as exc:
                    raise _with_pins(exc, [p for p in pins if p.by != "you"]) from None
        else:
            # Newest allowed first, stopping at the first that offers a torch every pin accepts.
            offers = gather_preferred(facts, client, template, hardware, candidates, asked, target,
                                      policy=settings.cuda_compat.value, keep=keep, accept=serves)
            _check_answered(offers, settings)
        if offers.source == "index":
            offers = replace(offers, versions={b: v for b, vs in offers.versions.items()
                                               if (v := torchpins.allowed(vs, pins))})
        warnings += offers.warnings
        releases = offers.releases
    else:
        releases = table_offers(facts)

    decision = choose(hardware, facts, releases, policy=settings.cuda_compat.value, explicit=explicit)
    decision = _keep_installed_gpu_backend(decision, target, facts)
    if wants_backend and decision.unserved and decision.source == "detected":
        err = _no_backend(facts, hardware, decision, reqs, settings, spec)
        raise _with_pins(err, pins)
    if wants_backend and offers is not None and decision.backend not in offers.versions:
        # Only now every candidate is asked: the message lists what exists.
        everything = gather(facts, client, template, order, nightly, target) if offers.source == "index" else offers
        raise NoBackendError(
            f"no torch matching '{spec or 'any'}' for Python {target.python_version_text} "
            f"on the {decision.backend} index ({config.redact(index_url_for(template, decision.backend))})",
            hint=_on_offer_hint(everything) + _pins_text(pins),
        )
    choice = None
    requested = list(wanted.requirements)
    if wants_backend:
        installed_torch = target.get("torch")
        same_backend = installed_torch is not None and _installed_backend(target, facts) == decision.backend
        offered_here = (offers.versions.get(decision.backend, [])
                        if offers is not None and offers.source in ("index", "recorded") else [])
        version, why = torchpins.choose_version(
            offered_here, pins, installed=installed_torch.version if same_backend else None,
            upgrade=upgrade.torch(family), torch_releases=decision.torch_releases,
        )
        choice = torchpins.TorchChoice(str(version) if version else None, tuple(p for p in pins if p.name == "torch"),
                                       resolution.describe(), why if offered_here else
                                       "the backend index did not answer; pip chooses within the pins", channel)
        requested = list(torchpins.apply(requested, pins, resolution.pulled, family=family,
                                         torch_exact=version if upgrade.torch(family) else None,
                                         offered=_torch_on(client, template, decision.backend, target, nightly)
                                         if offers is not None and offers.source == "index" else []))
    if upgrade.packages:
        requested = list(torchpins.hold_others(requested, target.installed, upgrade, family))

    # Companions verify finds broken (built for another torch or backend) are replaced.
    from backendpick.verify import stack_problems, stale_packages

    stale = [n for n in stale_packages(stack_problems(target, facts, None, family, settings.no_build_isolation))
             if config.normalize(n) in family]
    if stale:
        warnings.append(f"replacing broken companions: {', '.join(stale)}")

    backend_env = pipconf.backend_phase_env(env, pip_config)
    # Packages with a recipe: each one's build for this backend (routing.py), or an error now.
    from backendpick import routing

    # Family members a dependency pulled in go through their recipe too (triton on ROCm is
    # pytorch-triton-rocm).
    recipe_backend = tuple(n for n in extra_backend if config.normalize(Requirement(n).name) in settings.recipes)
    routed = routing.route(
        requested, settings=settings, backend=decision.backend, target=target,
        torch=_torch_for_recipes(facts, target, decision, offers, reqs),
        backend_index=index_url_for(template, decision.backend), client=client,
        markers_ok=lambda r: plan_mod.marker_ok(r, target.markers), extra=req.extra_recipe + recipe_backend,
    )
    if routed.family:
        settings = replace(settings, backend_packages=settings.backend_packages + routed.family)
    plan = plan_mod.build(
        decision=decision,
        requirements=routed.requirements,
        settings=settings,
        target=target,
        index_url=index_url_for(template, decision.backend),
        offered=offers.versions.get(decision.backend, []) if offers else [],
        constraints_path=paths.constraints(state),
        backend_env=backend_env,
        user_env=env,
        rest_options=wanted.rest_options,
        user_constraints=list(wanted.constraints) + [Requirement(f) for f in routed.fences],
        rest_args=wanted.rest_args,
        runner_python=sys.executable,
        offers_source=offers.source if offers else "table",
        extra_backend=tuple(n for n in extra_backend if n not in recipe_backend),
        extra_build=extra_build,
        reinstall=tuple(stale) + req.reinstall + routed.remove,
        warnings=warnings + list(routed.warnings),
    )
    plan = replace(plan, routes=routed.routes)
    plan = torchpins.finish(
        plan, upgrade=upgrade, own_env=own_env, choice=choice, resolution=resolution,
        backend_constraints=[str(r) for _f, r in cons_lines] + [str(c) for c in wanted.constraints],
        backend_constraints_path=paths.backend_constraints(state), pre=channel == "nightly",
        pin_environment=bool(settings.pin_environment.value), family=family, nbi=nbi,
    )
    backend_phase = next((p for p in plan.phases if p.name == plan_mod.BACKEND and p.skip is None), None)
    if backend_phase is not None and offers is not None and offers.source == "index":
        # What the backend phase installs, including what a backend switch reinstalls.
        phase_reqs = [Requirement(r) for r in backend_phase.requirements]
        _check_family_published(client, plan.index_url, decision.backend, phase_reqs, family, target)
    if any(p.name == plan_mod.BUILD and p.skip is None for p in plan.phases):
        # Imported only when a build phase runs: prebuilt wheels, wheel cache, source builds.
        from backendpick import prebuilt

        plan = prebuilt.attach(plan, settings=settings, target=target, hardware=hardware, pip_config=pip_config,
                               env=env, rest_options=wanted.rest_options,
                               predicted=_predicted_torch(facts, decision, offers))
    if offers is not None and offers.source == "recorded" and plan.active:
        # The record promised a finished environment, yet something is left to do: ask again.
        return prepare(replace(req, refresh=True), env, target)
    if wanted.hashes:
        plan = _with_hashes(plan, wanted.hashes, state)
    plan = engine.apply(plan, pip_config=pip_config, user_env=env)
    return Prepared(plan, target, settings, hardware, decision, pip_config, backend_env, env, request, offers)


def _with_hashes(plan: plan_mod.Plan, hashes: dict, state: Path) -> plan_mod.Plan:
    """Requirements with ``--hash`` (pip-compile --generate-hashes) reach pip in a requirements
    file, the only place pip accepts hashes, one file per phase; pip then checks every file it
    downloads, as ``pip install -r`` of the user's file would.

    The backend phase installs its packages ``--no-deps``: in hash-checking mode pip needs a
    hash for every dependency it installs, and the user's file lists torch's dependencies
    (hashed) among the ordinary packages, which the rest phase installs. Hashes of PyPI's torch
    do not match the backend index's builds; pip says so (generate them against that index)."""
    from dataclasses import replace

    from backendpick.fsutil import write_atomic

    phases = []
    for ph in plan.phases:
        if ph.name not in (plan_mod.BACKEND, plan_mod.REST) or ph.skip is not None or ph.steps:
            phases.append(ph)
            continue
        named = [w for w in ph.requirements if not w.startswith("-") and _hash_key(w) in hashes]
        if not named:
            phases.append(ph)
            continue
        lines = []
        words = list(ph.requirements)
        i = 0
        while i < len(words):
            w = words[i]
            if w == "-e":
                lines.append(f"-e {words[i + 1]}")
                i += 2
                continue
            key = _hash_key(w)
            lines.append(" ".join([w, *(f"--hash={h}" for h in hashes.get(key, ()))]))
            i += 1
        path = state / f"hashed-{ph.name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, "\n".join(lines) + "\n")
        head = list(ph.argv[: len(ph.argv) - len(ph.requirements)])
        if ph.name == plan_mod.BACKEND:
            head.append("--no-deps")
        phases.append(replace(ph, requirements=("-r", str(path)), argv=(*head, "-r", str(path))))
    return replace(plan, phases=tuple(phases))


def _hash_key(word: str) -> str | None:
    try:
        return config.normalize(Requirement(word).name)
    except InvalidRequirement:  # a path or URL passed as written: it has no hash of its own
        return None


def _check_reinstall(names, reqs, target: target_mod.Target, settings: config.Settings) -> None:
    """--reinstall NAME must be something this install installs: a requirement, or an installed
    backend or build package (which their phases install again). Anything else would be removed
    and never installed again, or ignored in silence."""
    requested = {config.normalize(r.name) for r in reqs}
    phased = set(settings.backend_packages) | set(settings.no_build_isolation)
    for name in names:
        key = config.normalize(name)
        if key in requested or (key in phased and target.get(key) is not None):
            continue
        where = "is not installed and not requested" if target.get(key) is None else "is not among the requirements"
        raise ConfigError(f"--reinstall {name}: {name} {where}, so this install would not install it again",
                          hint=f"name it as a requirement too (backendpick install {name} --reinstall {name})")


def _pulled_in(req: Request, resolution, target, settings) -> tuple[tuple, tuple]:
    """Backend and build packages for their phases: those an earlier attempt found (install's
    retry), and those the ordinary requirements pull in (the plan's one resolution, resolve.py),
    so the plan holds what install will run."""
    family, nbi = set(settings.backend_packages), set(settings.no_build_isolation)
    backend, build = set(req.extra_backend), set(req.extra_build)
    # Installed ones are pinned for the rest phase already, as install's fences would do.
    backend |= {n for n in resolution.pulled if n in family and target.get(n) is None}
    build |= {n for n in resolution.pulled if n in nbi and target.get(n) is None}
    return tuple(sorted(backend)), tuple(sorted(build))


def _torch_for_recipes(facts: Facts, target, decision: Decision, offers: Offers | None, reqs) -> str | None:
    """The torch the recipes' ``{torch}`` means: the installed one when the backend phase keeps
    it (same backend, requirement met), else the one it is expected to install."""
    from backendpick.verify import torch_build

    installed = torch_build(target, facts)
    predicted = _predicted_torch(facts, decision, offers)
    keeps = installed is not None and installed.backend == decision.backend and \
        _torch_spec(reqs).contains(installed.version.split("+")[0], prereleases=True)
    if installed is not None and (keeps or predicted is None):
        return installed.version
    if predicted is not None:
        return predicted.version
    # Offline (the packaged table decided): an exact pin still says which torch it will be.
    pins = [s.version for s in _torch_spec(reqs) if s.operator in ("==", "===") and "*" not in s.version]
    return pins[0] if pins else None


# Companions published next to torch, with versions of their own: a package may pin one of them
# (vllm pins torchvision), so the resolution offers them as stubs and the choice checks them.
COMPANIONS = ("torchvision", "torchaudio", "xformers")


def _published(client, template, backends, family, target, spec) -> dict:
    """name -> every version the ``backends``' indexes publish of torch and the companions in
    ``family`` (local tags kept): the resolution's stubs. Pages read at once, in parallel; the
    backend choice reads them again from the plan's page cache."""
    from backendpick.index import IndexUnavailable, PageNotFound, fetch_many, matching_versions

    names = ["torch", *(n for n in COMPANIONS if n in family)]
    pages = {(n, b): (index_url_for(template, b), n) for n in names for b in backends}
    out: dict = {}
    for (name, _b), files in fetch_many(client, pages).items() if pages else ():
        if isinstance(files, (PageNotFound, IndexUnavailable)):
            continue
        out.setdefault(name, set()).update(matching_versions(files, name, spec, target.python_version_text, target.tags))
    return {n: sorted(vs) for n, vs in out.items()}


def _companions_check(client, template, pins, family, target, spec):
    """``backend -> bool``: whether the backend's index offers every companion pinned (a
    package pins torchvision==0.20.1) at a version the pins accept. Reads a page only for a
    companion something pins, only for a backend the choice gets to (the page cache keeps it)."""
    from backendpick.index import IndexUnavailable, PageNotFound, matching_versions

    pinned = sorted({p.name for p in pins} & (set(COMPANIONS) & set(family)))

    def serves(backend: Backend) -> bool:
        for name in pinned:
            try:
                files = client.project(index_url_for(template, backend), name)
            except PageNotFound:
                return False
            except IndexUnavailable:
                continue  # pip will say; the torch decided
            if not torchpins.allowed(matching_versions(files, name, spec, target.python_version_text, target.tags),
                                     pins, name):
                return False
        return True

    return serves


def _torch_on(client, template, backend: Backend, target, spec) -> list:
    """Every torch the backend's index publishes for this target (from the plan's page cache)."""
    from backendpick.index import IndexUnavailable, PageNotFound, matching_versions

    try:
        files = client.project(index_url_for(template, backend), "torch")
    except (PageNotFound, IndexUnavailable):
        return []
    return matching_versions(files, "torch", spec, target.python_version_text, target.tags)


def _predicted_torch(facts: Facts, decision: Decision, offers: Offers | None):
    """The torch the backend phase should install: the newest offered build the plan allows.

    pip may resolve an older one (a companion's exact pin); install then chooses again."""
    from backendpick.buildenv import predict_torch

    versions = offers.versions.get(decision.backend, []) if offers is not None and offers.source == "index" else []
    if decision.torch_releases:
        allowed = {r[:2] for r in decision.torch_releases}
        versions = [v for v in versions if v.release[:2] in allowed]
    return predict_torch(str(versions[-1]), decision.backend, facts) if versions else None


def _check_family_published(client, url: str, backend: Backend, reqs, family: set[str], target) -> None:
    """Every requested family member must have a build on the backend index.

    Falling back to another index would mix backends, so a missing one is an error naming it.
    """
    from backendpick.index import IndexUnavailable, PageNotFound, fetch_many, matching_versions

    wanted = {config.normalize(r.name): r for r in reqs if config.normalize(r.name) in family and config.normalize(r.name) != "torch"}
    if not wanted:
        return
    missing = []
    results = fetch_many(client, {n: (url, n) for n in wanted})
    for name, files in results.items():
        if isinstance(files, IndexUnavailable):
            continue  # pip will report it with its own retries
        if isinstance(files, PageNotFound) or not matching_versions(
            files, name, wanted[name].specifier, target.python_version_text, target.tags
        ):
            missing.append(str(wanted[name]))
    if missing:
        raise NoBackendError(
            f"not published for {backend} at {config.redact(url)}: {', '.join(missing)}",
            hint="choose another backend, or limit those requirements with a marker or an extra "
            "(taking them from another index would mix backends)",
        )


def _installed_backend(target: target_mod.Target, facts: Facts) -> Backend | None:
    """The backend of the installed torch: its local tag, else torch/version.py (PyPI's untagged
    Linux torch is a CUDA build)."""
    from backendpick.verify import torch_build

    build = torch_build(target, facts)
    return build.backend if build is not None else None


def _keep_installed_gpu_backend(decision: Decision, target: target_mod.Target, facts: Facts) -> Decision:
    """Auto never downgrades: no GPU seen now, but the environment holds a GPU torch.

    A driver hiccup or a container started without --gpus must not turn a CUDA environment
    into a CPU one; only an explicit --backend cpu does that.
    """
    torch = target.get("torch")
    if decision.source != "detected" or decision.backend.kind != CPU or torch is None:
        return decision
    installed = _installed_backend(target, facts)
    if installed is None or not installed.is_gpu:
        return decision
    return Decision(
        installed,
        "installed",
        f"no usable GPU detected now ({decision.reason}), but the environment already has torch "
        f"{torch.version}; keeping {installed} (pass --backend cpu to switch)",
        warnings=decision.warnings,
    )


def _on_offer_hint(offers: Offers) -> str:
    """What the candidate backends offer at all (the pins aside), for the exit-3 message."""
    if not offers.versions:
        return "no backend index asked offers a torch for this Python and platform"
    listing = "; ".join(
        f"{b}: {', '.join(str(v) for v in vs[-3:])}" for b, vs in sorted(offers.versions.items(), key=lambda kv: facts_mod.sort_key(kv[0]))
    )
    return f"torch on offer: {listing}"


def _available_hint(offers: Offers) -> str:
    if not offers.versions:
        return "no backend index offers a matching torch; check the torch specifier and the index URL"
    listing = "; ".join(
        f"{b}: {', '.join(str(v) for v in vs[-3:])}" for b, vs in sorted(offers.versions.items(), key=lambda kv: facts_mod.sort_key(kv[0]))
    )
    return f"backends with a matching torch: {listing}"


def _check_answered(offers: Offers, settings) -> None:
    """An index template under which no backend has a torch page is not "no backend serves
    this GPU" (nor a reason to consult the packaged table): say what the index answered."""
    unanswered = offers.unanswered()
    if unanswered:
        raise NoBackendError(
            f"the backend index has no torch for any backend: {unanswered}",
            hint=f"check the index URL template from {settings.index_url.source} "
                 f"({config.redact(settings.index_url.value)}): it must name a PEP 503 simple index, with {{backend}} "
                 "where the backend name goes",
        )


def _explicit_missing(facts: Facts, client, template, explicit: Explicit, spec, target, offers: Offers,
                      settings) -> None:
    if offers.source != "index":
        return  # offline: the table cannot prove absence; pip will say
    others = gather(facts, client, template, [b for b in facts.all_backends() if b != explicit.backend], spec, target)
    if offers.not_found:
        _check_answered(Offers(others.versions, "index", (), offers.not_found + others.not_found, others.asked + 1), settings)
    raise NoBackendError(
        f"{explicit.backend} (from {explicit.source}) has no torch matching '{spec or 'any'}' for "
        f"Python {target.python_version_text} at {config.redact(index_url_for(template, explicit.backend))}",
        hint=_available_hint(others),
    )


def _pins_text(pins) -> str:
    return ("; pinned by: " + "; ".join(p.describe() for p in pins)) if pins else ""


def _with_pins(err: NoBackendError, pins) -> NoBackendError:
    """The error, its message saying who pinned the torch that no backend serves."""
    if pins:
        err.message += f" ({_pins_text(pins)[2:]})"
        err.args = (err.message,)
    return err


def _no_backend(facts: Facts, hw: Hardware, decision: Decision, reqs, settings, spec=None) -> NoBackendError:
    spec = _torch_spec(reqs) if spec is None else spec
    lines = list(decision.rejected)
    gpus = [a for a in hw.accelerators if a.ignored is None]
    working = []
    for release, backends in sorted(facts.releases.items()):
        fit = [b for b in backends if b.is_gpu and all(
            a.cap is None or facts.serves_cap(release, b, a.cap) for a in gpus if a.vendor == "nvidia"
        ) and (b.kind != "cuda" or facts.cuda_allowed(
            b.version,
            driver_cuda=facts_mod.dotted(hw.driver_cuda) if hw.driver_cuda else None,
            driver=facts_mod.dotted(hw.nvidia_driver) if hw.nvidia_driver else None,
            policy=settings.cuda_compat.value,
        )) and (b.kind != "rocm" or all(facts.rocm_supports(a.arch or "", b) for a in gpus if a.vendor == "amd"))]
        if fit:
            working.append(f"{show(release)} ({', '.join(map(str, fit))})")
    hint = (
        f"torch releases that would work here: {'; '.join(working)}" if working
        else "no known torch release serves this hardware; pass --backend cpu to install CPU builds"
    )
    hint += "; or pass --backend to choose yourself"
    return NoBackendError(
        f"no backend serves {', '.join(decision.unserved)} with torch '{spec or 'any'}': " + "; ".join(lines),
        hint=hint,
    )


def render(out: Output, p: plan_mod.Plan) -> None:
    out.fields(
        [
            ("backend", p.backend.name),
            ("decided-by", p.decided_by),
            ("reason", p.reason),
            ("python", str(p.python)),
            ("index", config.redact(p.index_url)),
            ("offers-from", p.offers_source),
        ]
        + ([("torch", p.torch.describe()), ("pins-from", p.torch.source)] if p.torch is not None else [])
        + ([("channel", p.torch.channel)] if p.torch is not None and p.torch.channel != "stable" else [])
    )
    for ph in p.phases:
        status = f"skip ({ph.skip})" if ph.skip else "run"
        out.line(f"phase {ph.name}: {status}: {' '.join(ph.requirements)}")
        for line in ph.command_line().splitlines():  # a build phase: comments, pip wheel, pip install
            out.line(f"  {line}" if line.startswith("#") else f"  $ {line}")
        if ph.constraints and not ph.skip:
            pins = [c for c in ph.constraints if not c.endswith("<0")]
            fenced = len(ph.constraints) - len(pins)
            out.line(f"  constraints ({p.constraints_path}): {', '.join(pins)}"
                     + (f" (+{fenced} packages blocked unless an earlier phase installs them)" if fenced else ""))
    for route in p.routes:
        out.line(f"package {route.line()}")
    if not p.phases:
        out.line("nothing to install")
    for w in p.warnings:
        out.warn(w)


def run(out: Output, req: Request, fmt: str = "text") -> int:
    prepared = prepare(req)
    if fmt == "sh":
        from backendpick.export import to_shell

        out.stdout.write(to_shell(prepared.plan))
        for w in prepared.plan.warnings:
            out.warn(w)
        return 0
    if out.json_mode:
        out.emit_json(prepared.plan.to_json())
    else:
        render(out, prepared.plan)
    return 0
