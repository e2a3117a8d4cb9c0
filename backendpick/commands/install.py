"""``backendpick install``: prepare the plan, then run its phases (or print them: --dry-run).

Around the phases: a lock on the environment, a snapshot to return to, and a verification of
the result that fails loudly when backendpick's own work is inconsistent.
"""

from __future__ import annotations

from dataclasses import replace

import os

from backendpick.checks import suite
from backendpick.edges import envlock, runner
from backendpick.edges.paths import logs, state_dir
from backendpick.edges.runner import stopped
from backendpick.errors import EXIT_OK, InstallError, KeepError, StateError
from backendpick.execute import described, engines, executor
from backendpick.knowledge import facts as facts_mod
from backendpick.model import environment
from backendpick.model.names import normalize
from backendpick.model.plan import DECIDED_BY_LOCK
from backendpick.output import Output, where_flags
from backendpick.planning.pipeline import Prepared, Request, again, prepare
from backendpick.state import environment_pins, last_install, noop, snapshots
from backendpick.target import inspection as target_mod, installed_stack

MAX_RETRIES = 2  # each retry moves fenced packages into an earlier phase


class _Progress:
    """install's phases for the renderer's progress (output.Progress): each phase in words, from
    its intent, and its commands (shown with -v)."""

    def __init__(self, out: Output, prepared: Prepared, renderer: engines.Renderer):
        self.progress = out.progress()
        self.plan = prepared.plan
        self.renderer = renderer
        self.line, self.note, self.stop = self.progress.line, self.progress.note, self.progress.stop

    def start(self, phase) -> None:
        self.progress.start(described.phase_view(self.plan, phase, self.renderer), described.commands(self.renderer, phase))

    def beside(self, phase) -> None:
        self.progress.beside(described.phase_view(self.plan, phase, self.renderer),
                             described.commands(self.renderer, phase))

    def end(self, phase, seconds: float) -> None:
        self.progress.end(phase.name, seconds)


def run(out: Output, req: Request, *, dry_run: bool, inspection: target_mod.Inspection | None = None) -> int:
    """``inspection``: the target's inspection, started by the caller while it imported us."""
    if dry_run:
        from backendpick.state import kept_copies

        prepared = prepare(req, inspection=inspection, fetch=False)
        renderer = engines.for_prepared(prepared)
        keeps = kept_copies.preview(prepared.plan.phases, prepared.target, prepared.settings.no_build_isolation)
        if out.json_mode:
            out.emit_json({"ok": True, **prepared.plan.to_json(renderer.phase_json), "keeps": [k.to_json() for k in keeps]})
        else:
            notes = [f"before any change, a copy is kept for restore of: {', '.join(k.words() for k in keeps)}"] \
                if keeps else []
            if prepared.plan.active or prepared.plan.replacing or notes:  # else nothing would run: an empty script
                out.dry_run(described.plan_view(prepared.plan, renderer, notes))
            for w in prepared.plan.warnings:
                out.warn(w)
        return EXIT_OK

    noop.listen(out)  # what a re-run with nothing to do prints, kept for its record (state/noop.py)
    target = (inspection or target_mod.start_inspect(target_mod.choose_python(req.python))).result()
    try:
        with runner.stop_children_on_signals(), envlock.hold(state_dir(target), on_wait=out.info) as waited:
            if waited:
                noop.forgo()  # said it waited: not what the next re-run prints
            # After a wait another run changed the environment: look again.
            return _install_locked(out, req, None if waited else target)
    except (runner.Interrupted, KeyboardInterrupt) as exc:
        raise stopped(exc, "the environment is unchanged") from None


def _install_locked(out: Output, req: Request, target: environment.Target | None) -> int:
    prepared = prepare(req, target=target, on_note=out.info)
    if prepared.plan.replacing and prepared.plan.active:
        out.warn(prepared.plan.replacing)  # said before anything changes
    snapshot = None
    if prepared.plan.active:
        out.install_header(described.header(prepared.plan)[:3])  # as plan starts: backend, reason, torch
        tb = prepared.stack.torch
        snapshot = snapshots.record(prepared.target, state_dir(prepared.target, prepared.user_env), command=_command(req),
                                    torch=tb.version if tb else None, backend=str(tb.backend) if tb else None)
        out.info(f"snapshot {snapshot.id} recorded; to return to it: backendpick restore{where_flags(req.python, prepared.settings)} {snapshot.id}")
        snapshot = _keep(out, prepared, snapshot)
    try:
        return _run_phases(out, req, prepared, snapshot)
    except (runner.Interrupted, KeyboardInterrupt) as exc:
        if snapshot is None:
            raise
        raise stopped(exc, "pip was stopped and the environment may be partly changed",
                      f"to return to the environment before this install: backendpick restore"
                      f"{where_flags(req.python, prepared.settings)} {snapshot.id}") from None


def _run_phases(out: Output, req: Request, prepared: Prepared, snapshot) -> int:
    request_key = prepared.request_key  # the user's request, before any retry adds to it
    before = prepared.target  # as it was before any phase ran (a retry looks at it again)
    # Nothing to do, it seems: the inputs' fingerprint now, for the no-op record at the end.
    rerun = _rerun_watch(req, prepared) if not prepared.plan.active and noop.pending() else None
    attempts = 0
    while True:
        try:
            if attempts:  # the retry's plan may remove more than the first one did
                snapshot = _keep(out, prepared, snapshot, unchanged=False)
            results = _execute(out, prepared)
            break
        except executor.FenceConflict as conflict:
            attempts += 1
            if attempts > MAX_RETRIES:
                raise InstallError(f"pip keeps needing {', '.join(conflict.hit.backend + conflict.hit.build + conflict.hit.recipe)} "
                                   "in a later phase") from None
            hit = conflict.hit
            out.info(f"a dependency needs {', '.join(hit.backend + hit.build + hit.recipe)}; moving it to its phase and running again")
            req = replace(
                req,
                extra_backend=tuple(sorted(set(req.extra_backend) | {hit.requirement(n) for n in hit.backend})),
                extra_build=tuple(sorted(set(req.extra_build) | {hit.requirement(n) for n in hit.build})),
                extra_recipe=tuple(sorted(set(req.extra_recipe) | set(hit.recipe))),
            )
            prepared = again(prepared, req)  # the same inputs; the target as the phases left it
            _renamed_dependency(prepared, hit)
        except (InstallError, StateError, KeepError) as exc:
            if snapshot is not None:
                exc.hint = (exc.hint + "; " if exc.hint else "") + \
                    f"to return to the environment before this install: backendpick restore{where_flags(req.python, prepared.settings)} {snapshot.id}"
            raise

    plan = prepared.plan
    ran = [r for r in results if r.skipped is None]
    after = _verify_result(out, prepared, req, snapshot) if ran else prepared.target
    torch = after.get("torch")
    changed = described.changes(before.installed, after.installed, [b for r in ran for b in r.builds],
                                torch.version if torch is not None else None)
    pinned = _pin_environment(out, prepared, after)
    if plan.decided_by != DECIDED_BY_LOCK:  # a lock's re-run asks no index anyway
        _remember(prepared, request_key, after)
    if out.json_mode:
        out.emit_json({
            "ok": True,
            **plan.to_json(engines.for_prepared(prepared).phase_json),
            "ran": [{"name": r.name, "seconds": round(r.seconds, 2), **({"builds": list(r.builds)} if r.builds else {})}
                    for r in ran],
            "skipped": [{"name": r.name, "reason": r.skipped} for r in results if r.skipped],
            "snapshot": snapshot.id if snapshot else None,
            "pins": pinned,
            "changes": [c.to_json() for c in changed],
        })
    else:
        if not ran:
            why = f" ({plan.decided_by}: {plan.reason})" if plan.decided_by == "installed" else ""
            out.result(f"nothing to do: the environment already matches the plan for {plan.backend}{why}")
        else:
            out.changes(changed)
            out.result(f"installed for {plan.backend} ({plan.decided_by}: {plan.reason})")
        for w in plan.warnings:
            out.warn(w)
    if rerun is not None and not ran:
        # The installed set as the plan saw it, still: a re-run may answer from the record.
        now = last_install.environment_key(target_mod.rescan(prepared.target))
        rerun.finish(unchanged=now == last_install.environment_key(prepared.target))
    return EXIT_OK


def _rerun_watch(req: Request, prepared: Prepared) -> noop.Watch | None:
    """The files and folders a re-run reads again to know that nothing changed (state/noop.py),
    watched from now; None when an input's files cannot all be listed: a local path, an
    editable or a local find-links folder among the requirements (their metadata and folders).
    A plan made from a lock file (issue 21) also reads the lock again, and the lock files auto
    selection looked for before it (``[tool.backendpick] lock = "pylock.{backend}.toml"``: one
    written there later would be taken instead)."""
    target, settings, env = prepared.target, prepared.settings, prepared.user_env
    if prepared.plan.decided_by == DECIDED_BY_LOCK:  # the lock's files are its requirements
        from backendpick.planning import pipeline

        files, names = noop.inputs_of(target, settings.project_dir, prepared.pip_config, env)
        files += [str(p) for p in pipeline.lock_consulted(prepared.basis, req.lock)]
    else:
        from backendpick.inputs import requirements

        wanted = requirements.gather(req.requirements, req.files, settings.pyproject, req.extras, req.groups, env=env,
                                     editables=req.editables)
        local = [r for r in (*wanted.requirements, *wanted.constraints) if (r.url or "").startswith("file:")]
        links = [v for f, v in zip(wanted.rest_options, wanted.rest_options[1:]) if f in ("-f", "--find-links")]
        if req.editables or wanted.rest_args or local or any(not v.startswith(("http://", "https://")) for v in links):
            return None
        files, names = noop.inputs_of(target, settings.project_dir, prepared.pip_config, env, wanted.files)
    programs = {}
    if prepared.plan.installer == "uv":  # its path is in the plan's commands (--json)
        if not prepared.plan.uv:
            return None
        programs["uv"] = prepared.plan.uv
    return noop.watch(str(target.python), str(state_dir(target, env)), files, list(target.path), programs, names)


def _command(req: Request) -> str:
    """What the snapshot says it was taken before (``restore --list``): the request in words,
    credentials hidden."""
    import shlex

    from backendpick.redaction import redact

    words = ["install"] + (["--lock", str(req.lock)] if req.lock else [])
    for flag, value in (("--backend", req.backend), ("--channel", req.channel), ("--installer", req.installer)):
        if value:
            words += [flag, value]
    words += ["-U"] if req.upgrade else []
    words += [w for n in req.reinstall for w in ("--reinstall", n)]
    words += [w for e in req.extras for w in ("--extra", e)] + [w for g in req.groups for w in ("--group", g)]
    words += [*req.requirements, *(w for f in req.files for w in ("-r", str(f))), *(w for e in req.editables for w in ("-e", e))]
    if not (req.requirements or req.files or req.editables):
        words.append(str(req.project_dir.resolve() / "pyproject.toml"))
    return " ".join(shlex.quote(redact(w)) for w in words)


def _keep(out: Output, prepared: Prepared, snapshot, *, unchanged: bool = True):
    """Copies of what the plan removes or replaces, kept before any change and named in the
    snapshot (state/kept_copies.py); a distribution that must go but cannot be kept stops the install here."""
    from backendpick.edges import paths
    from backendpick.state import kept_copies

    if snapshot is None:
        return None
    state = state_dir(prepared.target, prepared.user_env)
    done = {k for k, p in snapshot.packages.items() if p.kept}
    snapshot, kept = kept_copies.before_change(prepared.plan.phases, prepared.target, snapshot, state,
                                               build_names=prepared.settings.no_build_isolation,
                                               cache_base=paths.wheel_cache(prepared.user_env), skip=done,
                                               unchanged=unchanged)
    for name, why in sorted(kept.unkept.items()):
        out.warn(f"pip may replace {name}, and no copy of it can be kept: {why}")
    if kept.copies:
        out.info(f"kept a copy of {kept_copies.describe(kept)} in {paths.kept(state)} ({kept.seconds:.1f}s); "
                 "restore puts them back offline")
    return snapshot


def _renamed_dependency(prepared: Prepared, hit) -> None:
    """A dependency needs a package whose build for this backend has another name (cupy ->
    cupy-cuda12x): pip cannot let one stand for the other, and the name itself is a long
    source build, so stop with the way out instead of retrying."""
    from packaging.requirements import Requirement

    renamed = [r for r in prepared.plan.routes if normalize(r.package) in hit.recipe
               and normalize(Requirement(r.requirement).name) != normalize(r.package)]
    if not renamed:
        return
    r = renamed[0]
    builds = f"{r.package}'s build for {prepared.plan.backend} is the distribution {r.requirement}"
    # The caller adds the way back to the snapshot.
    hint = (f"install {r.requirement} first, then the package that depends on {r.package} with pip --no-deps; "
            f"or leave that package out")
    raise InstallError(f"a requested package depends on {r.package}, but {builds} and pip cannot install one for the other "
                       f"(the {r.package} sdist is a long source build)", hint=hint)


def _pin_environment(out: Output, prepared: Prepared, after: environment.Target) -> str | None:
    """Leave the stack's pins in the environment's pip.conf (or remove them: pin-environment =
    false). Returns the pins file, or None. ``after``: the environment as the phases left it.

    Also when nothing ran (a re-run that asked no index): pins missing or stale are rewritten,
    current ones are left as they are (no network needed either way)."""
    plan, settings = prepared.plan, prepared.settings
    prefix = prepared.target.prefix
    if not plan.pin_environment:
        if environment_pins.remove(prefix):
            out.info(f"removed backendpick's pins from {environment_pins.conf_path(prefix)} (pin-environment is off)")
        return None
    if after.get("torch") is None:
        return None  # no stack to pin
    if not os.access(prefix, os.W_OK):
        out.warn(f"cannot pin the stack: {prefix} is not writable (pass --no-pin-environment to skip pinning)")
        return None
    names = set(settings.backend_packages) | set(settings.no_build_isolation)
    lines = environment_pins.pin_lines(after.installed, names)
    if environment_pins.up_to_date(prefix, lines, env=prepared.user_env):
        return str(environment_pins.pins_path(prefix))
    try:
        path = environment_pins.write(prefix, lines, env=prepared.user_env, backend=str(plan.backend))
    except OSError as exc:
        out.warn(f"cannot pin the stack in {environment_pins.conf_path(prefix)}: {exc.strerror or exc}")
        return None
    out.info(f"pinned the stack in {environment_pins.conf_path(prefix)} ({path}): a plain pip cannot replace torch or a "
             "companion; `backendpick install` changes the stack")
    return str(path)


def _remember(prepared: Prepared, request_key: str, after: environment.Target) -> None:
    """Record what this install chose, so a re-run on the same environment asks no index."""
    offers = prepared.offers
    if offers is not None and offers.source == "recorded":
        # The record answered this very request on this very environment, and nothing ran: it
        # stays as it is (rewriting it would say "recorded" where it said "index", and a
        # changed file makes the next re-run's no-op check, state/noop.py, fall through).
        return
    torch = after.get("torch")
    try:
        last_install.save(state_dir(after, prepared.user_env), request=request_key,
                          environment=last_install.environment_key(after), backend=prepared.plan.backend,
                          index_url=prepared.plan.index_url, torch=torch.version if torch else None,
                          offers=offers.versions if offers is not None else {},
                          offers_source=offers.source if offers is not None else "none")
    except OSError:
        pass  # only the shortcut of the next run is lost; the install itself is done


def _verify_result(out: Output, prepared: Prepared, req: Request, snapshot) -> environment.Target:
    """The checks of ``verify`` (checks/suite.py) on our own result. A problem this install
    caused (a package it changed, or a problem that was not there before) is backendpick's
    failure; one it inherited and did not touch is a warning with its fix. Nothing here may cost
    much: dependencies from the installed metadata, no index asked, torch not imported for its ABI;
    only the compiled extensions of the result are imported."""
    facts = facts_mod.load()
    settings = prepared.settings
    before = prepared.target
    after = target_mod.rescan(before)
    flag = where_flags(req.python, settings)
    # The hardware counts only when backendpick chose by it; an explicit backend (a Docker
    # build for another host) is the user's call and was already warned about.
    hardware = prepared.hardware if prepared.decision.source in ("detected", "installed") else None
    scope = suite.Scope.of(settings, flag, hardware, prepared.user_env)
    found_before = suite.findings(before, prepared.stack, facts, scope, imports=False, dependencies=suite.METADATA)
    found = suite.findings(after, installed_stack.read(after, facts, prepared.user_env), facts, scope, imports=True,
                           dependencies=suite.METADATA)
    changed = {n for n, d in after.installed.items() if before.installed.get(n) is None
               or before.installed[n].version != d.version}
    known = {(normalize(p.package), p.message) for p in found_before.problems}
    ours, inherited = [], []
    for p in found.problems:
        # An import failure of a package this install did not touch was there before (it was
        # not imported then): inherited.
        new = p not in found.imported and (normalize(p.package), p.message) not in known
        (ours if normalize(p.package) in changed or new else inherited).append(p)
    for p in inherited:
        out.warn(f"{p.package}: {p.message} (not caused by this install; fix: {p.fix})")
    if ours:
        lines = "\n".join(f"problem: {p.package}: {p.message}\n  fix: {p.fix}" for p in ours)
        hint = f"to return to the environment before this install: backendpick restore{flag} {snapshot.id}" if snapshot else None
        raise InstallError("installed, but the result does not verify", details=lines, hint=hint)
    return after


def _execute(out: Output, prepared: Prepared) -> list:
    plan = prepared.plan
    renderer = engines.for_prepared(prepared)
    progress = _Progress(out, prepared, renderer)
    try:
        return executor.execute(
            plan,
            renderer=renderer,
            target=prepared.target,
            user_env=prepared.user_env,
            user_constraints=list(plan.user_constraints),
            on_phase_start=progress.start,
            on_line=progress.line,
            on_phase_end=progress.end,
            on_note=progress.note,
            on_phase_beside=progress.beside,
            log_dir=logs(state_dir(prepared.target, prepared.user_env)),
            client=prepared.client,
        )
    finally:
        progress.stop()


