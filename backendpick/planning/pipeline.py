"""The data flow of every command that installs: config -> probe -> select -> plan.

``prepare`` is the whole chain, one step per helper, in the order the data flows:
``_configure`` reads the settings and the request and probes the hardware, ``_look`` looks at the
target once (its installed stack, target/installed_stack.py); ``_record`` finds the last
install's record of this request; ``_resolve`` is the one resolution of the ordinary requirements
(selection/resolve.py); ``_choose`` chooses the backend (selection/selector.py, the one selection,
which ``detect`` reaches through ``select_backend``) and ``_select`` the torch
(selection/torch_version.py); ``_plan`` writes the phases as intents (model/plan.py,
planning/routing.py, build/wheel_choice.py), which the engines render later (execute/engines.py).
A retry starts again at the select step from the same inputs (``_prepared``), or, for install,
after a new look at the target (``again``).
The commands only parse, call ``prepare`` and render.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

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
from backendpick.planning.request import Prepared, Request, check_reinstall, request_key
from backendpick.selection import (
    expected_torch,
    offers as offers_mod,
    resolve as resolve_mod,
    selector,
    stays,
    torch_version,
)
from backendpick.selection.backend_choice import explicit_choice
from backendpick.selection.offers import Offers, index_url_for
from backendpick.state import environment_pins, last_install
from backendpick.target import inspection as target_mod, installed_stack, torch_origin as origin_mod
from backendpick.target.installed_stack import InstalledStack

__all__ = ["Detected", "Prepared", "Request", "again", "prepare", "select_backend"]


@dataclass(frozen=True)
class _Inputs:
    """The config and probe steps' result: what was asked, of which environment, on which
    machine. A retry reuses it: the configuration is read and the hardware probed once."""

    req: Request
    env: dict
    facts: Facts
    settings: config.Settings
    installer: installer_mod.Installer | None  # None: detect, without uv (no plan is made)
    wanted: requirements.Wanted
    pip_config: pipconf.PipConfig
    hardware: Hardware
    cons_lines: list
    policy: list  # torch_version.Pin: the user's constraints on the family
    upgrade: torch_version.Upgrade
    explicit: Explicit | None
    client: IndexClient  # one page cache for every index look-up of this plan
    warnings: list
    # One look at the target (``_look``): taken again only when the target changed (install's retry).
    target: environment.Target = None
    stack: InstalledStack = None  # the installed torch, its origin, what was built for it
    reqs: list = None  # the requirements whose markers hold on the target
    ordinary: list = None  # those neither family, build nor recipe-routed
    own_env: dict = None

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

    @property
    def origin(self) -> origin_mod.TorchOrigin | None:
        return self.stack.origin

    @property
    def ground(self) -> selector.Ground:
        """What the backend choice stands on (selection/selector.py)."""
        return selector.Ground(self.facts, self.hardware, self.target, self.stack, self.settings, self.explicit,
                               self.template, self.client)


@dataclass(frozen=True)
class _Record:
    """The last install's record of this very request, when it still describes the environment."""

    request_key: str
    offers: dict | None  # Backend -> [Version]: what the choice was made from then


@dataclass(frozen=True)
class _Choice:
    """The select step up to the backend decision: the pins it stands on, and the decision."""

    record: _Record
    candidates: selector.Candidates
    resolution: resolve_mod.Resolution
    pins: list
    chosen: selector.Chosen
    extra_backend: tuple
    extra_build: tuple
    wants: bool  # the request installs a backend package


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


@dataclass(frozen=True)
class Detected:
    """detect's answer: the backend plan would choose here, and why plan would stop there."""

    hardware: Hardware
    stack: InstalledStack
    settings: config.Settings
    chosen: selector.Chosen
    warnings: tuple
    target: environment.Target = None
    pip_config: pipconf.PipConfig = None
    # The kept index pages the answer stands on and when all are fresh (client.kept_pages);
    # None: a later detect would ask an index or pip again.
    pages: tuple | None = None


def prepare(req: Request, env: dict | None = None, target: environment.Target | None = None,
            inspection: target_mod.Inspection | None = None, *, use_lock: bool = True, fetch: bool = True,
            on_note=None) -> Prepared:
    """config -> probe -> select -> plan. ``target``: the target as just inspected by the
    caller, to save inspecting it again; ``inspection``: one the caller started early, taken
    where the target is needed (after the configuration and the requirements were read, so their
    mistakes come first) when it is of the interpreter the request chooses.

    With ``--lock FILE`` (``req.lock``), or ``[tool.backendpick] lock`` and no requirements named
    (unless ``use_lock`` is off: ``backendpick lock`` itself), the plan is the lock's
    (``_prepared_lock``): ``fetch`` its files now (install) or only name where they will be
    (``plan``, ``--dry-run``); ``on_note`` hears the downloads."""
    named = req.requirements or req.files or req.editables
    if req.lock is not None and named:
        from backendpick.errors import ConfigError

        raise ConfigError("--lock installs the lock alone; it takes no requirements",
                          hint="lock the requirements with the project (backendpick lock), or install them without --lock")
    i = _inputs(req, env, target, inspection, for_plan=True)
    if use_lock and (req.lock is not None or (i.settings.lock.value and not named)):
        return _prepared_lock(i, req.lock, fetch=fetch, on_note=on_note)
    return _prepared(i)


def again(prepared: Prepared, req: Request) -> Prepared:
    """install's retry, for ``req`` (the request with what pip asked for in a later phase moved
    to its own): the configuration, hardware, pip configuration and index client of the first
    plan; the target looked at again, as the phases that ran left it."""
    i = prepared.basis
    return _prepared(_look(replace(i, req=req), target_mod.rescan(i.target)))


def select_backend(req: Request, env: dict | None = None, inspection: target_mod.Inspection | None = None) -> Detected:
    """detect: ``prepare``'s steps up to the backend decision, for a backend package whatever
    the request installs (``plan`` would choose this backend for its torch). A refusal plan would
    raise comes back in ``chosen.refusal``."""
    i = _inputs(req, env, None, inspection, for_plan=False)
    attempt = replace(i, warnings=list(i.warnings))
    choice = _choose(attempt, True, wants=True)
    if choice is None:  # the record no longer holds: ask the indexes (never None without a record)
        attempt = replace(i, warnings=list(i.warnings))
        choice = _choose(attempt, False, wants=True)
    asked_pip = choice.resolution.source not in (resolve_mod.NOTHING, resolve_mod.INSTALLED)
    pages = None if asked_pip else i.client.kept_pages()
    return Detected(i.hardware, i.stack, i.settings, choice.chosen, tuple(attempt.warnings), i.target, i.pip_config,
                    pages)


def _inputs(req: Request, env: dict | None, target, inspection, *, for_plan: bool) -> _Inputs:
    env = dict(os.environ if env is None else env)
    try:
        return _configure(req, env, target, inspection, for_plan=for_plan)
    finally:
        if inspection is not None:
            inspection.cancel()  # not taken: an earlier mistake, or another interpreter


def _prepared(i: _Inputs) -> Prepared:
    """The plan; asked of the indexes again, from the same inputs, when the last install's
    record no longer holds (the retry restarts at the select step, not at the configuration)."""
    # Each attempt says its own warnings. Without the record an attempt never comes back None.
    prepared = _attempt(replace(i, warnings=list(i.warnings)), True)
    return prepared if prepared is not None else _attempt(replace(i, warnings=list(i.warnings)), False)


def _attempt(i: _Inputs, use_record: bool) -> Prepared | None:
    """select -> plan. None: the record promised a finished environment, yet a requirement is
    not met or something is left to do: ask again."""
    choice = _choose(i, use_record)
    if choice is None:
        return None
    if choice.chosen.refusal is not None:
        raise choice.chosen.refusal
    selection = _select(i, choice)
    plan, settings = _plan(i, selection)
    if choice.record.offers is not None and plan.active:
        return None
    return Prepared(plan, i.target, settings, i.hardware, selection.decision, i.pip_config,
                    pipconf.backend_phase_env(i.env, i.pip_config), i.env, choice.record.request_key,
                    selection.offers, i.client, i.stack, i)


def _configure(req: Request, env: dict, target: environment.Target | None,
               inspection: target_mod.Inspection | None = None, *, for_plan: bool = True) -> _Inputs:
    """config and probe: the settings, the requirements, the target, pip's configuration, the hardware.
    ``for_plan``: the installer that runs the phases is looked for too (detect: only where it is there)."""
    facts = facts_mod.load()
    settings = config.load(
        facts, project_dir=req.project_dir, backend=req.backend, index_url=req.index_url,
        cuda_compat=req.cuda_compat, env=env, installer=req.installer, channel=req.channel,
        pin_environment=req.pin_environment,
    )
    # Before any look-up: asking for uv where there is none is a usage error, at once. detect
    # installs nothing: it resolves with uv where the setting says uv and uv is there, else with pip.
    installer = installer_mod.resolve(settings.installer.value, env, settings.installer.source) if for_plan else \
        installer_mod.found(settings.installer.value, env)
    if req.lock is not None and not (req.requirements or req.files or req.editables):
        wanted = requirements.Wanted(())  # the lock says what to install; no pyproject.toml needed
    else:
        wanted = requirements.gather(req.requirements, req.files, settings.pyproject, req.extras, req.groups, env=env,
                                     editables=req.editables)
    if target is None:
        target = target_mod.take_or_inspect(inspection, target_mod.choose_python(req.python, env))
    pip_config = pipconf.read(env, target.prefix)
    hardware = probe(facts, ProbeSettings.from_env(env))
    family = set(settings.backend_packages)
    warnings: list[str] = list(hardware.warnings)
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
    i = _Inputs(req, env, facts, settings, installer, wanted, pip_config, hardware, cons_lines, policy, upgrade,
                explicit_choice(settings), client, warnings)
    return _look(i, target)


def _look(i: _Inputs, target: environment.Target) -> _Inputs:
    """One look at the target: its installed stack, and the requirements as they apply to it."""
    settings = i.settings
    reqs = [r for r in i.wanted.requirements if plan_mod.marker_ok(r, target.markers)]
    check_reinstall(i.req.reinstall, reqs, target, settings)
    # Packages a recipe sends to their own source (a per-backend index, a find-links page, a
    # per-CUDA name) are not looked up on the user's index: PyPI has only a CPU build or an
    # sdist of them, which says nothing about what the routed build needs.
    routed_away = {n for n, rows in settings.recipes.items() if any(r.mechanism != "default" for r in rows)}
    ordinary = [r for r in reqs if names.normalize(r.name) not in i.family | i.nbi | routed_away]
    # backendpick's own pip runs must not be blocked by the pins it wrote earlier (state/environment_pins.py).
    own_env = environment_pins.own_runs_env(i.env, target.prefix, i.pip_config)
    stack = installed_stack.read(target, i.facts, i.env)
    return replace(i, target=target, stack=stack, reqs=reqs, ordinary=ordinary, own_env=own_env)


def _record(i: _Inputs, use_record: bool) -> _Record:
    """This request's fingerprint, and the last install's record of it when it still holds."""
    # The hardware without the probe's warnings: a tool that answered slowly once is the same machine.
    key = request_key(i.req, settings=i.settings, wanted=i.wanted, hardware=replace(i.hardware, warnings=()),
                      python=str(i.target.python), policy=[str(p.requirement) for p in i.policy])
    # -U asks the indexes for something newer: a record of the last install cannot answer that.
    recorded = None if not use_record or i.req.refresh or i.upgrade.any else \
        last_install.load(i.state, key, last_install.environment_key(i.target))
    return _Record(key, last_install.offers(recorded) if recorded is not None else None)


def _companion_pins(i: _Inputs, c: selector.Candidates, record: _Record) -> list:
    """The torch pins of companions requested at one release (``xformers==0.0.31`` requires
    ``torch==2.7.1``): they take part in the choice like an ordinary package's (issue 18, item 9).
    Read from the first backend index of the order that publishes the release; not on a re-run
    the last install's record answers (that choice held them)."""
    wanted = [r for r in i.reqs if names.normalize(r.name) in i.family and names.normalize(r.name) != "torch"]
    if not wanted or record.offers is not None:
        return []
    return offers_mod.companion_pins(i.client, i.template, list(c.order), wanted, i.family, i.target)


def _may_keep(i: _Inputs, pins: list) -> bool:
    """Whether the installed torch no index serves can still stay with the pins known so far."""
    return stays.replace_reason(i.origin, i.explicit, pins, i.req.reinstall) is None and i.stack.foreign


def _resolve(i: _Inputs, c: selector.Candidates, record: _Record,
             companions: list) -> resolve_mod.Resolution | None:
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
    if record.offers is not None:
        return None
    if _may_keep(i, [*torch_version.direct_pins(i.reqs, i.family), *i.policy, *companions]):
        installed = {n: [i.target.get(n).version] for n in ("torch", *offers_mod.COMPANIONS)
                     if n in i.family and i.target.get(n) is not None}
        first = _resolution(i, installed)
        if not first.fallback and _may_keep(i, [*first.pins, *companions]):
            return _noted(i, first)
    return _noted(i, _resolution(i, lambda: offers_mod.published(i.client, i.template, list(c.order), i.family,
                                                                   target, i.nightly)))


def _resolution(i: _Inputs, published) -> resolve_mod.Resolution:
    """The dry-run resolution of the ordinary requirements, the family offered as ``published``:
    uv's with ``--installer uv`` (no pip process at all, selection/uv_resolve.py), else pip's."""
    if i.installer is not None and i.installer.name == installer_mod.UV:
        from backendpick.selection import uv_resolve

        question = resolve_mod.Question(
            tuple(resolve_mod.resolvable(i.ordinary)), i.target, tuple(i.family), tuple(i.nbi), published,
            tuple(i.wanted.rest_options), tuple(str(x) for x in i.wanted.constraints), i.channel == "nightly")
        return uv_resolve.resolve(question, str(i.installer.uv), env=i.env, pip_config=i.pip_config, client=i.client)
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


def _choose(i: _Inputs, use_record: bool, *, wants: bool = False) -> _Choice | None:
    """select, up to the backend: the record, the candidates, the one resolution, the pins, and
    the decision (selection/selector.py). None: the record no longer holds. ``wants``: choose a
    backend even when the request installs no backend package (detect)."""
    record = _record(i, use_record)
    cands = selector.candidates(i.ground)
    companions = _companion_pins(i, cands, record)
    resolution = _resolve(i, cands, record, companions)
    if resolution is None:
        return None
    extra_backend, extra_build = _pulled_in(i.req, resolution, i.target, i.settings)
    wants = wants or any(names.normalize(r.name) in i.family for r in i.reqs) or bool(extra_backend)
    pins = [*torch_version.direct_pins(i.reqs, i.family), *resolution.pins, *i.policy, *companions]
    # Pins that cannot hold together stop here (exit 2); pins that hold but that no backend offers
    # meet the backend choice's own errors (exit 3, naming the index and the pins).
    for name in sorted({p.name for p in pins}):
        torch_version.check(pins, name=name)
    named = {"torch", *extra_backend, *resolution.pulled, *(names.normalize(r.name) for r in i.reqs)}
    named = {names.normalize(Requirement(n).name) for n in named}
    chosen = selector.select(i.ground, cands, pins, named=named, wants=wants, recorded=record.offers,
                             upgrade_torch=i.upgrade.torch(i.family), reinstall=i.req.reinstall)
    if chosen.offers is not None:
        i.warnings.extend(chosen.offers.warnings)
    return _Choice(record, cands, resolution, pins, chosen, extra_backend, extra_build, wants)


def _select(i: _Inputs, c: _Choice) -> _Selection:
    """select, after the backend: the torch, and the requirements with the pins applied."""
    if c.chosen.kept:
        return _select_kept(i, c.resolution, c.pins, c.extra_backend, c.extra_build)
    decision, offers = c.chosen.decision, c.chosen.offers
    choice, requested = None, list(i.wanted.requirements)
    if c.wants:
        choice, requested = _choose_torch(i, decision, offers, c.pins, c.resolution, requested)
    if i.upgrade.packages:
        requested = list(torch_version.hold_others(requested, i.target.installed, i.upgrade, i.family))
    return _Selection(decision, offers, c.pins, choice, requested, c.resolution, c.extra_backend, c.extra_build,
                      replacing=c.chosen.replacing)


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


def _choose_torch(i: _Inputs, decision: Decision, offers: Offers | None, pins, resolution, requested: list):
    """The torch version on the chosen backend, and the requirements with the pins applied."""
    target, family, upgrade = i.target, i.family, i.upgrade
    installed_torch = target.get("torch")
    same_backend = installed_torch is not None and i.stack.backend == decision.backend
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
    from backendpick.planning import routing

    facts, settings, target, decision, offers = i.facts, i.settings, i.target, s.decision, s.offers
    # Companions built for another torch or backend (target/installed_stack.py; verify reports
    # them) are replaced.
    stale = i.stack.broken(i.family)
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
            torch=expected_torch.torch_for_recipes(i.stack.torch, decision, offers, i.reqs, facts),
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
        # PyPI's untagged torch is the build its torch/version.py names (read once, i.stack).
        torch_build=None if i.stack.foreign else i.stack.backend,
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
    if backend_phase is not None and offers is not None and offers.source in ("index", "table"):
        # What the backend phase installs, including what a backend switch reinstalls.
        phase_reqs = [Requirement(r) for r in backend_phase.requirements]
        if offers.source == "index":
            offers_mod.check_family_published(i.client, plan.index_url, s.decision.backend, phase_reqs, i.family,
                                              i.target)
        else:  # no index answered: the packaged table refuses what the index would (issue 20 item 5)
            offers_mod.check_family_in_table(i.facts, plan.index_url, s.decision.backend, phase_reqs, i.family)
    if any(p.name == plan_mod.BUILD and p.skip is None for p in plan.phases):
        # Imported only when a build phase runs: prebuilt wheels, wheel cache, source builds.
        from backendpick.build import wheel_choice

        plan = wheel_choice.attach(plan, settings=settings, target=i.target, hardware=i.hardware,
                                   pip_config=i.pip_config, env=i.env, rest_options=i.wanted.rest_options,
                                   predicted=expected_torch.predicted_torch(i.facts, s.decision, offers), client=i.client,
                                   installer=i.installer.name)
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


def _prepared_lock(i: _Inputs, path: Path | None, *, fetch: bool, on_note) -> Prepared:
    """``install --lock``: the configuration, the target and the hardware as for ``prepare``,
    then the lock's refusals, its files fetched and checked (``fetch``; --dry-run names where
    they will be), and its phases (planning/lock_plan.py). No index page is read."""
    from backendpick.indexes import locked_files
    from backendpick.planning import lock_plan

    path = lock_file(i, path)
    lock = lock_plan.read(path)
    lock_plan.check(lock, path, i.target, i.hardware, i.facts, i.settings.cuda_compat.value)
    root = paths.locked_files(i.env)
    files = {n: locked_files.cached_path(root, f.sha256, f.name) for n, f in lock_plan.files_of(lock)}
    plan, settings = lock_plan.make_plan(lock, files, target=i.target, settings=i.settings, state=i.state,
                                         runner_python=sys.executable, path=path)
    if fetch:  # only what a phase that runs reads: a finished environment downloads and hashes nothing
        running = lock_plan.running(lock, plan)
        locked_files.fetch([(n, f) for n, f in lock_plan.files_of(lock) if n in running], i.client.session, root,
                           on_note or (lambda _t: None))
    if any(p.name == plan_mod.BUILD and p.skip is None for p in plan.phases):
        from backendpick.build import wheel_choice
        from backendpick.target.installed_torch import predict_torch

        torch = lock.package("torch")
        plan = wheel_choice.attach(plan, settings=settings, target=i.target, hardware=i.hardware,
                                   pip_config=i.pip_config, env=i.env, client=i.client, installer=i.installer.name,
                                   predicted=predict_torch(torch.version, plan.backend, i.facts) if torch else None)
    plan = replace(plan, installer=i.installer.name, uv=str(i.installer.uv) if i.installer.uv else None,
                   pin_environment=bool(settings.pin_environment.value), warnings=plan.warnings + tuple(i.warnings))
    return Prepared(plan, i.target, settings, i.hardware, lock_plan.decision(lock, path), i.pip_config,
                    pipconf.backend_phase_env(i.env, i.pip_config), i.env, "", None, i.client, i.stack, i)


def lock_file(i: _Inputs, path: Path | None) -> Path:
    """The lock to install: ``--lock FILE``, else ``[tool.backendpick] lock`` in the project folder.
    A ``{backend}`` in either is filled with the backend named by flag, environment or setting,
    or else the first backend auto selection would ask here whose lock file exists: so
    ``--backend auto --lock 'pylock.{backend}.toml'`` (examples/Makefile) takes this machine's."""
    looked, by_auto = _lock_candidates(i, path)
    if not by_auto:
        return looked[0]
    for candidate in looked:
        if candidate.is_file():
            return candidate
    from backendpick.errors import ConfigError

    pattern, folder = _lock_pattern(i, path)
    order = selector.candidates(i.ground).order
    raise ConfigError(f"no lock file for the backends this machine runs ({', '.join(b.name for b in order)}) in "
                      f"{folder.resolve()} ({'--lock' if path is not None else 'lock ='} {pattern!r})",
                      hint="write one with: backendpick lock --backend NAME")


def lock_consulted(i: _Inputs, path: Path | None) -> tuple[Path, ...]:
    """The files whose presence and content decide which lock ``lock_file`` takes and what it
    says: the one taken and, under auto selection, the candidates looked at before it (absent
    ones: a lock written there later is taken instead). A re-run's no-op check reads them again
    (state/noop.py, issue 22: ``make install-locked`` is a re-run too)."""
    looked, by_auto = _lock_candidates(i, path)
    if not by_auto:
        return looked
    taken = next((n for n, c in enumerate(looked) if c.is_file()), len(looked) - 1)
    return looked[:taken + 1]


def _lock_pattern(i: _Inputs, path: Path | None) -> tuple[str, Path]:
    if path is not None:
        return str(path), Path()
    return i.settings.lock.value, i.settings.project_dir


def _lock_candidates(i: _Inputs, path: Path | None) -> tuple[tuple[Path, ...], bool]:
    """The lock files ``lock_file`` may take, in its order, and whether auto selection's order
    decides among them (a ``{backend}`` and no backend named)."""
    pattern, folder = _lock_pattern(i, path)
    if "{backend}" not in pattern:
        return (folder / pattern,), False
    if i.explicit is not None:
        return (folder / pattern.replace("{backend}", i.explicit.backend.name),), False
    return tuple(folder / pattern.replace("{backend}", b.name) for b in selector.candidates(i.ground).order), True
