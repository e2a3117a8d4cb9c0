"""Execute a plan: run its phases in order through the one subprocess runner.

The constraints file is written from what is really installed after the backend phase (the
plan only knows names; the rule is planning/constraint_rule.py), so later phases cannot replace a single
byte of the stack.

A build phase with steps (build/wheel_choice.py) first chooses each package's wheel where the plan could
not (torch was not installed yet), checks the toolchain before any source build, builds with
``pip wheel`` (``uv build`` of the sdist with uv) under limits, stores what it built in the
wheel cache, and installs the wheels with one install. All of its output goes to the phase's log file.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from backendpick.edges import runner
from backendpick.edges.durable import write_atomic
from backendpick.errors import BackendpickError, StateError
from backendpick.execute import build_phase, phase_log
from backendpick.execute.engines import Command, Renderer
from backendpick.execute.phase_log import FenceConflict, FenceHit, fenced_needs
from backendpick.indexes import fetches
from backendpick.model.environment import Target
from backendpick.model.plan import BACKEND, BUILD, BUILD_REQS, REST, Phase, Plan, fold
from backendpick.planning import constraint_rule
from backendpick.target.inspection import rescan

# The executor's failure types, named where install's callers look for them.
__all__ = ["FenceConflict", "FenceHit", "PhaseResult", "execute", "failure_details", "fenced_needs", "open_logs",
           "run_phase"]


@dataclass(frozen=True)
class PhaseResult:
    name: str
    seconds: float
    skipped: str | None = None
    builds: tuple = ()  # build phase: each package's step as run (BuildStep.to_json())


def execute(
    plan: Plan,
    *,
    renderer: Renderer,
    target: Target,
    user_env: dict,
    user_constraints: list[str],
    on_phase_start: Callable[[Phase], None],
    on_line: Callable[[str], None],
    on_phase_end: Callable[[Phase, float], None],
    log_dir: Path,
    on_note: Callable[[str], None] | None = None,
    on_phase_beside: Callable[[Phase], None] | None = None,
    client=None,
) -> list[PhaseResult]:
    """``on_note`` gets the build phase's lines for the user (which wheel, why, limits, elapsed
    time of a long build); without it they go to stderr. ``on_phase_beside``: a phase started
    beside the running one (its end comes through ``on_phase_end`` when it is joined).
    ``client``: the plan's client.IndexClient, whose session downloads the files the phases name
    (``Phase.downloads``) before the first phase changes anything. ``renderer``: the engine that
    spells each phase for the installer (execute/engines.py)."""
    note = on_note or _stderr_note
    build_phase.check_before_changes(plan, user_env)
    open_logs(log_dir)
    run = _Run(plan, renderer, target, user_env, user_constraints, on_phase_start, on_line, on_phase_end,
               note, log_dir, on_phase_beside=on_phase_beside)
    downloads = [d for p in plan.phases if p.skip is None for d in p.downloads]
    try:
        if downloads:
            fetches.fetch(dict(downloads).items(), _session(client, user_env, target), note)
        run.phases()
    finally:
        if run.beside is not None:
            run.beside.stop()  # the foreground failed or was stopped: no pip may outlive install
        _remove_downloads(plan)
    if run.built is not None:
        from backendpick.state import build_records

        # What each build package was built or downloaded for, for verify (state folder). The
        # install itself succeeded: a record that cannot be written is a warning, and verify
        # then warns that the package has no record.
        try:
            build_records.after_install(plan.constraints_path.parent, run.built, target)
        except (BackendpickError, OSError) as exc:
            note(f"warning: cannot record what {', '.join(sorted(plan.building))} were built for: "
                 f"{getattr(exc, 'message', exc)}")
    return run.results


@dataclass
class _Run:
    """One execution of a plan's phases, in order; the build requirements beside the backend
    phase when they go to a folder of their own (``Phase.alongside``)."""

    plan: Plan
    renderer: Renderer
    target: Target
    user_env: dict
    user_constraints: list
    on_phase_start: Callable[[Phase], None]
    on_line: Callable[[str], None]
    on_phase_end: Callable[[Phase, float], None]
    note: Callable[[str], None]
    log_dir: Path
    results: list = field(default_factory=list)
    built: Phase | None = None  # the build phase as it ran, recorded once every phase is done
    on_phase_beside: Callable[[Phase], None] | None = None
    beside: runner.Beside | None = None
    beside_lines: list = field(default_factory=list)

    def phases(self) -> None:
        plan = self.plan
        current: Target | None = None
        phases = list(plan.phases)
        for i in range(len(phases)):
            phase = phases[i]
            if phase.skip:
                self.results.append(PhaseResult(phase.name, 0.0, phase.skip))
                continue
            if phase.name == BUILD_REQS and self.beside is not None:
                self._join_beside(phase)
                continue
            if current is None and (phase.name in (BUILD, REST) or (phase.name == BUILD_REQS and not phase.alongside)):
                # Once, after the backend phase: later phases cannot change what it pins.
                current = rescan(self.target)
                _write_lines(plan.constraints_path, constraint_rule.after_backend(plan, current, self.user_constraints))
            if phase.name == BACKEND and plan.backend_constraints and plan.backend_constraints_path is not None:
                # The user's constraints hold in the backend phase too (policy, not a package source).
                _write_lines(plan.backend_constraints_path, plan.backend_constraints)
            if phase.name == BUILD_REQS and phase.alongside and plan.build_constraints_path is not None:
                _write_lines(plan.build_constraints_path, phase.constraints)
            if phase.hashed_file:
                _write_lines(Path(phase.hashed_file), phase.hashed_lines)
            if phase.name == BUILD and phase.steps:
                self._build(phases, phase, current)
                continue
            self.on_phase_start(phase)
            if phase.name == BACKEND:
                self._start_beside(phases[i + 1:])
            command = self.renderer.command(phase)
            res, log_path, elapsed = run_phase(command, phase.name, shown=self.renderer.shown(phase),
                                               user_env=self.user_env, log_dir=self.log_dir, on_line=self.on_line)
            if not res.ok:
                phase_log.failed(plan, phase, phase, res, log_path, self.renderer.shown(phase))
            self.on_phase_end(phase, elapsed)
            if phase.name == BUILD:
                self.built = phase
            self.results.append(PhaseResult(phase.name, elapsed))

    def _build(self, phases: list[Phase], phase: Phase, current: Target | None) -> None:
        ran, elapsed = build_phase.run_build(self.plan, phase, self.renderer, target=current, user_env=self.user_env,
                                             on_phase_start=self.on_phase_start, on_line=self.on_line,
                                             on_note=self.note, log_dir=self.log_dir)
        self.on_phase_end(ran, elapsed)
        self.built = ran
        self.results.append(PhaseResult(phase.name, elapsed,
                                        builds=tuple(self.renderer.step_json(ran, s) for s in ran.steps)))
        # The rest phase installs the wheels as they really ended up (chosen again when the
        # torch prediction missed), or none when the build phase had to install them itself.
        r = next((j for j, p in enumerate(phases) if p.name == REST and p.skip is None), None)
        if r is not None and ran.deferred:
            phases[r] = fold(ran, phases[r])
        elif r is not None and phases[r].wheels:
            phases[r] = replace(phases[r], wheels=())

    def _start_beside(self, later: list[Phase]) -> None:
        """Start the build-requirements phase that runs alongside the backend phase, if any.
        Its pip lines are kept and shown when it is joined, so they never interleave."""
        phase = next((p for p in later if p.name == BUILD_REQS and p.alongside == BACKEND and p.skip is None), None)
        if phase is None or self.plan.build_constraints_path is None:
            return
        _write_lines(self.plan.build_constraints_path, phase.constraints)
        if self.on_phase_beside is not None:
            self.on_phase_beside(phase)
        command, shown = self.renderer.command(phase), self.renderer.shown(phase)
        self.beside = runner.Beside(lambda started: run_phase(command, phase.name, shown=shown, user_env=self.user_env,
                                                              log_dir=self.log_dir, on_line=self.beside_lines.append,
                                                              on_started=started))

    def _join_beside(self, phase: Phase) -> None:
        beside, self.beside = self.beside, None
        res, log_path, elapsed = beside.wait()
        for line in self.beside_lines:
            self.on_line(line)
        if not res.ok:
            phase_log.failed(self.plan, phase, phase, res, log_path, self.renderer.shown(phase))
        self.on_phase_end(phase, elapsed)
        self.results.append(PhaseResult(phase.name, elapsed))


def _session(client, user_env: dict, target: Target):
    """The session that downloads the plan's files: the plan's client's, else one with the
    user's pip configuration."""
    if client is None:
        from backendpick.indexes.client import IndexClient
        from backendpick.inputs import pip_config

        client = IndexClient(pip_config.read(user_env, target.prefix), env=user_env)
    return client.session


def _remove_downloads(plan: Plan) -> None:
    """The downloaded files are installed (or the install failed): they go, as pip's temporary
    downloads do. A file left behind is harmless (the next install downloads again)."""
    import shutil

    from backendpick.edges import paths

    shutil.rmtree(paths.downloads(plan.constraints_path.parent), ignore_errors=True)


def _write_lines(path: Path, lines) -> None:
    """One of the phases' constraints files, atomically, or a StateError naming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _state_file(path):
        write_atomic(path, "\n".join(lines) + "\n")


def open_logs(log_dir: Path) -> None:
    """The folder of the phases' log files (one per pip run), created before the first."""
    with _state_file(log_dir):
        log_dir.mkdir(parents=True, exist_ok=True)


def run_phase(command: Command, name: str, *, shown: str, user_env: dict, log_dir: Path,
              on_line: Callable[[str], None], on_started=None) -> tuple:
    """One run of a phase's command (install's and restore's), its whole output in the phase's
    log file, which opens with ``shown`` (the command as --dry-run prints it): (runner.Result,
    the log's path, seconds)."""
    started = time.monotonic()
    with phase_log.phase_log(log_dir, name, shown, on_line) as (_log, log_path, tee):
        res = runner.stream(command.argv, on_line=tee, env=command.environ(user_env), on_started=on_started)
    return res, log_path, time.monotonic() - started


def failure_details(output: str, shown: str) -> str:
    """pip's last lines for an error's details, credentials hidden."""
    return phase_log.tail(output, shown)


@contextmanager
def _state_file(path: Path) -> Iterator[None]:
    """backendpick's own file in the state directory could not be written: one line naming it."""
    try:
        yield
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}",
                         hint=f"remove what is in its place (rm -r {path}) and run again") from None


def _stderr_note(text: str) -> None:
    from backendpick.output import note

    note(text)
