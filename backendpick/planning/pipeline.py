"""The data flow of every command that installs: config -> probe -> select -> plan.

``prepare`` is the whole chain, one step per helper, in the order the data flows:
``_configure`` reads the settings, the request and the target and probes the hardware;
``_candidates`` says which backends may serve and what the last install recorded;
``_resolve`` is the one resolution of the ordinary requirements (selection/resolve.py);
``_select`` chooses the backend and the torch from what the indexes offer (selection/offers.py,
selection/backend_choice.py, selection/torch_version.py); ``_plan`` writes the phases as intents
(model/plan.py, planning/routing.py, build/wheel_choice.py), which the engines render later
(execute/engines.py).
The commands only parse, call ``prepare`` and render.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from backendpick import redaction
from backendpick.edges import paths
from backendpick.errors import NoBackendError
from backendpick.indexes import credentials, fetches
from backendpick.indexes.client import IndexClient
from backendpick.inputs import config, installer as installer_mod, pip_config as pipconf, requirements
from backendpick.knowledge import facts as facts_mod
from backendpick.knowledge.facts import Facts
from backendpick.machine.probe import ProbeSettings, probe
from backendpick.model import environment, names, plan as plan_mod
from backendpick.model.choice import Decision, Explicit
from backendpick.model.hardware import Hardware
from backendpick.planning import hashes, planner
from backendpick.planning.request import Prepared, Request, check_reinstall
from backendpick.selection import expected_torch, offers as offers_mod, resolve as resolve_mod, stays, torch_version
from backendpick.selection.backend_choice import (
    choose,
    explicit_choice,
    keep_installed_gpu_backend,
    no_backend,
    runs_here,
    table_offers,
)
from backendpick.selection.offers import Offers, candidate_kinds, gather, gather_preferred, index_url_for, preference
from backendpick.state import environment_pins, last_install
from backendpick.target import inspection as target_mod, torch_origin as origin_mod
from backendpick.target.installed_torch import installed_backend

__all__ = ["Prepared", "Request", "prepare"]


@dataclass(frozen=True)
class _Inputs:
    """The config and probe steps' result: what was asked, of which environment, on which machine."""

    req: Request
    env: dict
    facts: Facts
    settings: config.Settings
    installer: installer_mod.Installer
    wanted: requirements.Wanted
    target: environment.Target
    pip_config: pipconf.PipConfig
    hardware: Hardware
    reqs: list  # the requirements whose markers hold on the target
    ordinary: list  # those neither family, build nor recipe-routed
    own_env: dict
    cons_lines: list
    policy: list  # torch_version.Pin: the user's constraints on the family
    upgrade: torch_version.Upgrade
    explicit: Explicit | None
    client: IndexClient  # one page cache for every index look-up of this plan
    warnings: list
    origin: origin_mod.TorchOrigin | None = None  # the installed torch: an index build, or one no index serves

    @property
    def family(self) -> set:
        return set(self.settings.backend_packages)

    @property
    def nbi(self) -> set:
        return set(self.settings.no_build_isolation)

    @property
    def channel(self) -> str:
        return self.settings.channel.value

    @property
    def template(self) -> str:
        return torch_version.channel_template(self.settings.index_url.value, self.channel)

    @property
    def nightly(self) -> SpecifierSet:
        return SpecifierSet(">=0.dev0") if self.channel == "nightly" else SpecifierSet()

    @property
    def state(self) -> Path:
        return paths.state_dir(self.target, self.env)


@dataclass(frozen=True)
class _Candidates:
    """The select step's starting point: the backends that may serve, and the last install's record."""

    request_key: str
    recorded_offers: dict | None
    candidates: list  # the explicit backend, or those the hardware runs
    order: list  # candidates in the order auto selection prefers them
    keep: object  # the installed GPU backend auto selection keeps (never downgrades), or None


@dataclass(frozen=True)
class _Selection:
    """The select step's result: the backend, the torch, and the requirements as pinned."""

    decision: Decision
    offers: Offers | None
    pins: list
    choice: torch_version.TorchChoice | None
    requested: list
    resolution: resolve_mod.Resolution
    extra_backend: tuple
    extra_build: tuple
    kept: bool = False  # the installed torch no index serves stays: nothing of the stack is asked for
    replacing: str | None = None  # why an installed torch no index serves is replaced


def prepare(req: Request, env: dict | None = None, target: environment.Target | None = None,
            inspection: target_mod.Inspection | None = None) -> Prepared:
    """config -> probe -> select -> plan. ``target``: the target as just inspected by the
    caller, to save inspecting it again; ``inspection``: one the caller started early, taken
    where the target is needed (after the configuration and the requirements were read, so their
    mistakes come first) when it is of the interpreter the request chooses."""
    env = dict(os.environ if env is None else env)
    try:
        inputs = _configure(req, env, target, inspection)
    finally:
        if inspection is not None:
            inspection.cancel()  # not taken: an earlier mistake, or another interpreter
    cands = _candidates(inputs)
    companions = _companion_pins(inputs, cands)
    resolution = _resolve(inputs, cands, companions)
    if resolution is None:
        # The record promised a finished environment, yet a requirement is not met: ask again.
        return prepare(replace(req, refresh=True), env, inputs.target)
    selection = _select(inputs, cands, resolution, companions)
    plan, settings = _plan(inputs, selection)
    if selection.offers is not None and selection.offers.source == "recorded" and plan.active:
        # The record promised a finished environment, yet something is left to do: ask again.
        return prepare(replace(req, refresh=True), env, inputs.target)
    return Prepared(plan, inputs.target, settings, inputs.hardware, selection.decision, inputs.pip_config,
                    pipconf.backend_phase_env(env, inputs.pip_config), env, cands.request_key, selection.offers,
                    inputs.client)


def _configure(req: Request, env: dict, target: environment.Target | None,
               inspection: target_mod.Inspection | None = None) -> _Inputs:
    """config and probe: the settings, the requirements, the target, pip's configuration, the hardware."""
    facts = facts_mod.load()
    settings = config.load(
        facts, project_dir=req.project_dir, backend=req.backend, index_url=req.index_url,
        cuda_compat=req.cuda_compat, env=env, installer=req.installer, channel=req.channel,
        pin_environment=req.pin_environment,
    )
    # Before any look-up: asking for uv where there is none is a usage error, at once.
    installer = installer_mod.resolve(settings.installer.value, env, settings.installer.source)
    wanted = requirements.gather(req.requirements, req.files, settings.pyproject, req.extras, req.groups, env=env,
                                 editables=req.editables)
    if target is None:
        target = target_mod.take_or_inspect(inspection, target_mod.choose_python(req.python, env))
    pip_config = pipconf.read(env, target.prefix)
    hardware = probe(facts, ProbeSettings.from_env(env))
    family = set(settings.backend_packages)
    reqs = [r for r in wanted.requirements if plan_mod.marker_ok(r, target.markers)]
    check_reinstall(req.reinstall, reqs, target, settings)
    warnings: list[str] = list(hardware.warnings)
    nbi = set(settings.no_build_isolation)
    # Packages a recipe sends to their own source (a per-backend index, a find-links page, a
    # per-CUDA name) are not looked up on the user's index: PyPI has only a CPU build or an
    # sdist of them, which says nothing about what the routed build needs.
    routed_away = {n for n, rows in settings.recipes.items() if any(r.mechanism != "default" for r in rows)}
    ordinary = [r for r in reqs if names.normalize(r.name) not in family | nbi | routed_away]
    # backendpick's own pip runs must not be blocked by the pins it wrote earlier (state/environment_pins.py).
    own_env = environment_pins.own_runs_env(env, target.prefix, pip_config)
    # The user's pip ``constraint`` setting and the request's -c files: policy for the torch
    # choice and for the backend phase too (selection/torch_version.py).
    cons_lines, cons_warnings = torch_version.read_constraint_files(pip_config.list("constraint"))
    warnings += cons_warnings
    policy = [torch_version.Pin(r, f"constraint file {f}") for f, r in cons_lines
              if names.normalize(r.name) in family and (r.specifier or r.url)]
    policy += torch_version.constraint_pins(wanted.constraints, family, "constraint (-c)")
    upgrade = torch_version.Upgrade(req.upgrade, tuple(names.normalize(n) for n in req.upgrade_packages))
    # One client per plan: each page read once; kept on disk between runs as HTTP caching
    # allows (indexes/page_cache.py), revalidated with --refresh.
    client = IndexClient(pip_config, env=env, refresh=req.refresh, urls=credentials.configured_urls(settings))
    return _Inputs(req, env, facts, settings, installer, wanted, target, pip_config, hardware, reqs, ordinary, own_env,
                   cons_lines, policy, upgrade, explicit_choice(settings), client, warnings,
                   origin_mod.of(target, facts, env))


def _candidates(i: _Inputs) -> _Candidates:
    """The backends that may serve, in the order auto selection prefers them (only those the
    hardware runs), and the last install's record of this very request."""
    req, settings, target, facts = i.req, i.settings, i.target, i.facts
    wanted = i.wanted
    request = last_install.request_key(
        requirements=[str(r) for r in wanted.requirements], options=list(wanted.rest_options),
        constraints=[str(c) for c in wanted.constraints], backend=settings.backend.value, index=credentials.strip(i.template),
        compat=settings.cuda_compat.value, family=sorted(i.family), nbi=sorted(settings.no_build_isolation),
        hardware=i.hardware.to_json(), python=str(target.python), extra_backend=list(req.extra_backend),
        extra_build=list(req.extra_build), reinstall=list(req.reinstall), editables=list(req.editables),
        hashes=sorted((k, sorted(v)) for k, v in wanted.hashes.items()), channel=i.channel,
        upgrade=req.upgrade, upgrade_packages=sorted(i.upgrade.packages),
        pin_environment=bool(settings.pin_environment.value), policy=[str(p.requirement) for p in i.policy],
    )
    # -U asks the indexes for something newer: a record of the last install cannot answer that.
    recorded = None if req.refresh or i.upgrade.any else \
        last_install.load(i.state, request, last_install.environment_key(target))
    recorded_offers = last_install.offers(recorded) if recorded is not None else None
    if i.explicit is not None:
        candidates = [i.explicit.backend]
    else:
        kinds = candidate_kinds(i.hardware)
        candidates = [b for b in facts.all_backends() if b.kind in kinds]
    # A torch no index serves is kept by its own rule (selection/stays.py), never asked for on an index.
    foreign = i.origin is not None and i.origin.foreign
    kept = installed_backend(target, facts) if i.explicit is None and not foreign else None
    keep = kept if kept is not None and kept.is_gpu else None  # auto never downgrades
    order = candidates if i.explicit is not None else preference(facts, i.hardware, candidates,
                                                                 settings.cuda_compat.value)
    if keep is not None and keep not in order:
        order = [*order, keep]
    return _Candidates(request, recorded_offers, candidates, order, keep)


def _companion_pins(i: _Inputs, c: _Candidates) -> list:
    """The torch pins of companions requested at one release (``xformers==0.0.31`` requires
    ``torch==2.7.1``): they take part in the choice like an ordinary package's (issue 18, item 9).
    Read from the first backend index of the order that publishes the release; not on a re-run
    the last install's record answers (that choice held them)."""
    wanted = [r for r in i.reqs if names.normalize(r.name) in i.family and names.normalize(r.name) != "torch"]
    if not wanted or c.recorded_offers is not None:
        return []
    return offers_mod.companion_pins(i.client, i.template, c.order, wanted, i.family, i.target)


def _may_keep(i: _Inputs, pins: list) -> bool:
    """Whether the installed torch no index serves can still stay with the pins known so far."""
    return stays.replace_reason(i.origin, i.explicit, pins, i.req.reinstall) is None and \
        i.origin is not None and i.origin.foreign


def _resolve(i: _Inputs, c: _Candidates, companions: list) -> resolve_mod.Resolution | None:
    """ONE resolution per plan (selection/resolve.py): the pins on the torch family and the backend and
    build packages the ordinary requirements pull in, before any backend is chosen. None: the
    last install's record no longer holds (ask again).

    With a torch no index serves installed, pip is first offered that torch alone (and the
    installed companions): when the request resolves with it, it stays and no torch page is
    read; otherwise the backend indexes' torches are offered as usual."""
    target = i.target
    known = None if i.upgrade.any else resolve_mod.from_installed(
        i.ordinary, target.installed, target.markers, family=i.family, build=i.nbi)
    if not i.ordinary:
        return resolve_mod.Resolution()
    if known is not None:
        return known  # already installed: their metadata answers, no pip, no index
    if c.recorded_offers is not None:
        return None
    if _may_keep(i, [*torch_version.direct_pins(i.reqs, i.family), *i.policy, *companions]):
        installed = {n: [i.target.get(n).version] for n in ("torch", *offers_mod.COMPANIONS)
                     if n in i.family and i.target.get(n) is not None}
        first = _resolution(i, installed)
        if not first.fallback and _may_keep(i, [*first.pins, *companions]):
            return _noted(i, first)
    return _noted(i, _resolution(i, lambda: offers_mod.published(i.client, i.template, c.order, i.family, target,
                                                                   i.nightly)))


def _resolution(i: _Inputs, published) -> resolve_mod.Resolution:
    """pip's dry-run resolution of the ordinary requirements, the family offered as ``published``."""
    return resolve_mod.resolve(
        resolve_mod.resolvable(i.ordinary), plan_mod.pip_argv(i.target, sys.executable), i.target,
        env={**i.env, **i.own_env}, family=i.family, build=i.nbi, published=published,
        options=i.wanted.rest_options, constraints=[str(x) for x in i.wanted.constraints], pre=i.channel == "nightly",
        configured=credentials.pip_lists(i.pip_config),
    )


def _noted(i: _Inputs, resolution: resolve_mod.Resolution) -> resolve_mod.Resolution:
    """The resolution the plan stands on, with what it fell short of in the plan's warnings."""
    if resolution.stopped:
        i.warnings.append(resolution.stopped)
    if resolution.fallback:
        i.warnings.append(f"torch pins from a {resolution.describe()}")
    return resolution


def _select(i: _Inputs, c: _Candidates, resolution: resolve_mod.Resolution, companions: list) -> _Selection:
    """select: the pins, the offers of the backend indexes, the backend, then the torch."""
    extra_backend, extra_build = _pulled_in(i.req, resolution, i.target, i.settings)
    wants_backend = any(names.normalize(r.name) in i.family for r in i.reqs) or bool(extra_backend)
    pins = [*torch_version.direct_pins(i.reqs, i.family), *resolution.pins, *i.policy, *companions]
    # Pins that cannot hold together stop here (exit 2); pins that hold but that no backend offers
    # meet the backend choice's own errors below (exit 3, naming the index and the pins).
    for name in sorted({p.name for p in pins}):
        torch_version.check(pins, name=name)
    replacing = stays.replace_reason(i.origin, i.explicit, pins, i.req.reinstall)
    if i.origin is not None and i.origin.foreign and replacing is None:
        return _select_kept(i, resolution, pins, extra_backend, extra_build)
    # A constraint only constrains (issue 18, item 8): a line on a companion nobody asked for
    # neither makes it required nor blocks a backend whose index lacks it.
    named = {"torch", *extra_backend, *resolution.pulled, *(names.normalize(r.name) for r in i.reqs)}
    named = {names.normalize(Requirement(n).name) for n in named}
    asked = [p for p in pins if p.name in named]
    spec = torch_version.merged(pins).get("torch", SpecifierSet())
    try:
        offers = _offers(i, c, asked, spec) if wants_backend else None
        releases = offers.releases if offers is not None else table_offers(i.facts)
        decision = choose(i.hardware, i.facts, releases, policy=i.settings.cuda_compat.value, explicit=i.explicit)
        torch = i.target.get("torch")
        decision = keep_installed_gpu_backend(decision, c.keep, torch.version if torch is not None else None)
        if wants_backend and not i.upgrade.torch(i.family):
            decision, offers = _installed_stays(i, decision, offers, asked, spec)
        if wants_backend:
            _check_served(i, c, decision, offers, asked, spec)
    except NoBackendError as exc:
        raise stays.with_held_lines(exc, i.origin, i.target, pins) if replacing else exc from None
    choice, requested = None, list(i.wanted.requirements)
    if wants_backend:
        choice, requested = _choose_torch(i, decision, offers, pins, resolution, requested)
    if i.upgrade.packages:
        requested = list(torch_version.hold_others(requested, i.target.installed, i.upgrade, i.family))
    return _Selection(decision, offers, pins, choice, requested, resolution, extra_backend, extra_build,
                      replacing=replacing)


def _select_kept(i: _Inputs, resolution, pins: list, extra_backend: tuple, extra_build: tuple) -> _Selection:
    """The installed torch no index serves stays (issue 18): it is the backend, it is the torch,
    no index is asked for either; the family members the request needs must be there already."""
    origin = i.origin
    nearest = stays.nearest_index_backend(origin, i.facts.all_backends())
    requested = list(torch_version.apply(i.wanted.requirements, pins, resolution.pulled, family=i.family,
                                         torch_exact=None))
    wanted = [r for r in requested if names.normalize(r.name) in i.family and plan_mod.marker_ok(r, i.target.markers)]
    wanted += [Requirement(n) for n in extra_backend]
    stays.missing_companions(origin, wanted, i.target.installed, nearest)
    if i.upgrade.packages:
        requested = list(torch_version.hold_others(requested, i.target.installed, i.upgrade, i.family))
    decision = stays.kept_decision(origin, upgrade=i.upgrade.torch(i.family), nearest=nearest)
    choice = torch_version.TorchChoice(origin.version, tuple(p for p in pins if p.name == "torch"), resolution.describe(),
                                       f"the installed {origin.label}: {origin.tail()}; every pin accepts it", i.channel)
    return _Selection(decision, None, pins, choice, requested, resolution, extra_backend, extra_build, kept=True)


def _installed_stays(i: _Inputs, decision: Decision, offers: Offers | None, pins: list, spec: SpecifierSet):
    """A satisfied environment stays as it is (issue 18, item 7): an installed backend index
    build that every pin accepts and that still runs here is kept when auto selection now
    prefers another backend (a driver upgrade), and the decision says how to move."""
    origin = i.origin
    if i.explicit is not None or origin is None or origin.foreign or offers is None:
        return decision, offers
    release = Version(origin.version).release
    runs = runs_here(i.facts, i.hardware, origin.backend, release, i.settings.cuda_compat.value)
    if not stays.index_build_stays(origin, decision, pins, runs_here=runs):
        return decision, offers
    versions = dict(offers.versions)
    if origin.backend not in versions and offers.source == "index":
        mine = gather(i.facts, i.client, i.template, [origin.backend], spec & i.nightly, i.target)
        serves = offers_mod.companions_check(i.client, i.template, pins, i.family, i.target, i.nightly)
        found = torch_version.allowed(mine.versions.get(origin.backend, []), pins)
        if found and serves(origin.backend):
            versions[origin.backend] = found
    if origin.backend not in versions:
        return decision, offers  # its index no longer offers what the request needs
    return stays.stays_decision(origin, decision), replace(offers, versions=versions)


def _offers(i: _Inputs, c: _Candidates, pins: list, spec: SpecifierSet) -> Offers:
    """What the backend indexes offer for the torch the pins allow (or the last install's record).
    ``pins``: those on torch and on the family members the request names."""
    facts, explicit, target = i.facts, i.explicit, i.target
    asked = spec & i.nightly
    # A backend whose index lacks a pinned companion (torchvision==0.20.1) cannot serve the
    # request either: the choice moves on to one that has it.
    serves = offers_mod.companions_check(i.client, i.template, pins, i.family, target, i.nightly)
    if c.recorded_offers is not None:
        # Nothing changed since the last install: its offers decide again, no index is asked.
        offers = Offers(c.recorded_offers, "recorded")
    elif explicit is not None:
        offers = gather(facts, i.client, i.template, [explicit.backend], asked, target)
        if offers.source == "index" and explicit.backend in offers.versions and not serves(explicit.backend):
            offers = replace(offers, versions={})
        if explicit.backend not in offers.versions:
            try:
                offers_mod.explicit_missing(facts, i.client, i.template, explicit, asked, target, offers, i.settings)
            except NoBackendError as exc:
                raise torch_version.error_with_pins(exc, [p for p in pins if p.by != "you"]) from None
    else:
        # Newest allowed first, stopping at the first that offers a torch every pin accepts.
        offers = gather_preferred(facts, i.client, i.template, i.hardware, c.candidates, asked, target,
                                  policy=i.settings.cuda_compat.value, keep=c.keep, accept=serves)
        offers_mod.check_answered(offers, i.settings)
    if offers.source == "index":
        offers = replace(offers, versions={b: v for b, vs in offers.versions.items()
                                           if (v := torch_version.allowed(vs, pins))})
    i.warnings.extend(offers.warnings)
    return offers


def _check_served(i: _Inputs, c: _Candidates, decision: Decision, offers: Offers | None, pins, spec) -> None:
    """Exit 3 when the chosen backend cannot serve: GPUs left unserved, or no torch on its index."""
    if decision.unserved and decision.source == "detected":
        err = no_backend(i.facts, i.hardware, decision, spec, i.settings.cuda_compat.value)
        raise torch_version.error_with_pins(err, pins)
    if offers is not None and decision.backend not in offers.versions:
        # Only now every candidate is asked: the message lists what exists.
        everything = gather(i.facts, i.client, i.template, c.order, i.nightly, i.target) \
            if offers.source == "index" else offers
        raise NoBackendError(
            f"no torch matching '{spec or 'any'}' for Python {i.target.python_version_text} "
            f"on the {decision.backend} index ({redaction.redact(index_url_for(i.template, decision.backend))})",
            hint=offers_mod.on_offer_hint(everything) + torch_version.pins_text(pins),
        )


def _choose_torch(i: _Inputs, decision: Decision, offers: Offers | None, pins, resolution, requested: list):
    """The torch version on the chosen backend, and the requirements with the pins applied."""
    target, family, upgrade = i.target, i.family, i.upgrade
    installed_torch = target.get("torch")
    same_backend = installed_torch is not None and installed_backend(target, i.facts) == decision.backend
    offered_here = (offers.versions.get(decision.backend, [])
                    if offers is not None and offers.source in ("index", "recorded") else [])
    version, why = torch_version.choose_version(
        offered_here, pins, installed=installed_torch.version if same_backend else None,
        upgrade=upgrade.torch(family), torch_releases=decision.torch_releases,
    )
    choice = torch_version.TorchChoice(str(version) if version else None, tuple(p for p in pins if p.name == "torch"),
                                       resolution.describe(), why if offered_here else
                                       "the backend index did not answer; pip chooses within the pins", i.channel)
    on_index = offers is not None and offers.source == "index"
    requested = list(torch_version.apply(requested, pins, resolution.pulled, family=family,
                                         torch_exact=version if upgrade.torch(family) else None,
                                         offered=offers_mod.torch_on(i.client, i.template, decision.backend, target,
                                                                     i.nightly) if on_index else []))
    return choice, requested


def _plan(i: _Inputs, s: _Selection) -> tuple[plan_mod.Plan, config.Settings]:
    """plan: the phases for the chosen backend, with recipes, pins, prebuilt wheels and the
    installer applied. Returns the settings too: recipes may add family members."""
    from backendpick.checks.stack import stack_problems, stale_packages
    from backendpick.planning import routing

    facts, settings, target, decision, offers = i.facts, i.settings, i.target, s.decision, s.offers
    # Companions verify finds broken (built for another torch or backend) are replaced.
    stale = [n for n in stale_packages(stack_problems(target, facts, None, i.family, settings.no_build_isolation))
             if names.normalize(n) in i.family]
    warnings = list(i.warnings)
    if stale:
        warnings.append(f"replacing broken companions: {', '.join(stale)}")
    # Packages with a recipe: each one's build for this backend (planning/routing.py), or an error now.
    # Family members a dependency pulled in go through their recipe too (triton on ROCm is
    # pytorch-triton-rocm).
    recipe_backend = tuple(n for n in s.extra_backend if names.normalize(Requirement(n).name) in settings.recipes)
    try:
        routed = routing.route(
            s.requested, settings=settings, backend=decision.backend, target=target,
            torch=expected_torch.torch_for_recipes(facts, target, decision, offers, i.reqs),
            backend_index=index_url_for(i.template, decision.backend), client=i.client,
            markers_ok=lambda r: plan_mod.marker_ok(r, target.markers), extra=i.req.extra_recipe + recipe_backend,
        )
    except NoBackendError as exc:
        raise stays.with_choices(exc, i.origin, i.facts) if s.kept else exc from None
    if routed.family:
        settings = replace(settings, backend_packages=settings.backend_packages + routed.family)
    plan = planner.make_plan(
        decision=decision, requirements=routed.requirements, settings=settings, target=target,
        index_url=index_url_for(i.template, decision.backend),
        offered=offers.versions.get(decision.backend, []) if offers else [],
        constraints_path=paths.constraints(i.state), rest_options=i.wanted.rest_options,
        user_constraints=list(i.wanted.constraints) + [Requirement(f) for f in routed.fences],
        rest_args=i.wanted.rest_args, runner_python=sys.executable,
        offers_source=offers.source if offers else "table",
        extra_backend=tuple(n for n in s.extra_backend if n not in recipe_backend), extra_build=s.extra_build,
        reinstall=tuple(stale) + i.req.reinstall + routed.remove, warnings=warnings + list(routed.warnings),
        keep=stays.left_alone(target, i.family if s.kept else ()),
    )
    if s.kept:  # not "already installed for cu125": there is no such index
        plan = replace(plan, phases=tuple(replace(p, skip=f"the installed {i.origin.label} stays")
                                          if p.name == plan_mod.BACKEND else p for p in plan.phases))
    plan = replace(plan, routes=routed.routes, installed_torch=i.origin,
                   offers_source="installed" if s.kept else plan.offers_source,
                   replacing=stays.replacing_line(i.origin, s.replacing) if s.replacing
                   else stays.shadowing_line(plan, i.origin, target))
    plan = torch_version.finish(
        plan, upgrade=i.upgrade, choice=s.choice, resolution=s.resolution,
        backend_constraints=[str(r) for _f, r in i.cons_lines] + [str(c) for c in i.wanted.constraints],
        backend_constraints_path=paths.backend_constraints(i.state), pre=i.channel == "nightly",
        pin_environment=bool(settings.pin_environment.value), family=i.family, keep_torch=s.kept,
    )
    # pip never removes what conda manages unless the user says so (issue 18, item 3).
    conda = stays.conda_guard(plan, target, facts.managed_installers, allowed=i.req.replace_conda)
    plan = replace(plan, warnings=plan.warnings + tuple(conda))
    return _finish(i, s, plan, settings), settings


def _finish(i: _Inputs, s: _Selection, plan: plan_mod.Plan, settings: config.Settings) -> plan_mod.Plan:
    """The plan's last checks and attachments: the family on the backend index, prebuilt
    wheels for a build phase, the files backendpick downloads behind credentials, hashes, and
    the installer (pip or uv) that runs the phases."""
    offers = s.offers
    backend_phase = next((p for p in plan.phases if p.name == plan_mod.BACKEND and p.skip is None), None)
    if backend_phase is not None and offers is not None and offers.source == "index":
        # What the backend phase installs, including what a backend switch reinstalls.
        phase_reqs = [Requirement(r) for r in backend_phase.requirements]
        offers_mod.check_family_published(i.client, plan.index_url, s.decision.backend, phase_reqs, i.family, i.target)
    if any(p.name == plan_mod.BUILD and p.skip is None for p in plan.phases):
        # Imported only when a build phase runs: prebuilt wheels, wheel cache, source builds.
        from backendpick.build import wheel_choice

        plan = wheel_choice.attach(plan, settings=settings, target=i.target, hardware=i.hardware,
                                   pip_config=i.pip_config, env=i.env, rest_options=i.wanted.rest_options,
                                   predicted=expected_torch.predicted_torch(i.facts, s.decision, offers), client=i.client)
        ctx = next((p.context for p in plan.phases if p.name == plan_mod.BUILD and p.context is not None), None)
        if s.kept and ctx is not None and ctx.torch is not None and not ctx.predicted:
            # The build read the C++ ABI from the installed torch itself: the plan says it too.
            plan = replace(plan, installed_torch=plan.installed_torch.with_abi(ctx.torch.cxx11abi))
    # Files behind credentials pip and uv would not find: backendpick downloads them first.
    plan = fetches.localize(plan, i.client.keychain.child_cannot_find, paths.downloads(i.state))
    if i.wanted.hashes:
        plan = hashes.with_hashes(plan, i.wanted.hashes, i.state)
    # The installer that runs the phases; the engines render them (execute/engines.py).
    return replace(plan, credential_hosts=tuple(i.client.keychain.hosts()), installer=i.installer.name,
                   uv=str(i.installer.uv) if i.installer.uv else None)


def _pulled_in(req: Request, resolution, target, settings) -> tuple[tuple, tuple]:
    """Backend and build packages for their phases: those an earlier attempt found (install's
    retry), and those the ordinary requirements pull in (the plan's one resolution, selection/resolve.py),
    so the plan holds what install will run."""
    family, nbi = set(settings.backend_packages), set(settings.no_build_isolation)
    backend, build = set(req.extra_backend), set(req.extra_build)
    # Installed ones are pinned for the rest phase already, as install's fences would do.
    backend |= {n for n in resolution.pulled if n in family and target.get(n) is None}
    build |= {n for n in resolution.pulled if n in nbi and target.get(n) is None}
    return tuple(sorted(backend)), tuple(sorted(build))
