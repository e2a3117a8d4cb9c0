"""Execute a plan: run its phases in order through the one subprocess runner.

The constraints file is written from what is really installed after the backend phase (the
plan only knows names; the rule is constraints.py), so later phases cannot replace a single
byte of the stack.

A build phase with steps (prebuilt.py) first chooses each package's wheel where the plan could
not (torch was not installed yet), checks the toolchain before any source build, builds with
``pip wheel`` under limits, stores what it built in the wheel cache, and installs the wheels
with one ``pip install``. All of its pip output goes to the phase's log file.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from contextlib import contextmanager
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from packaging.requirements import Requirement

from backendpick import constraints, runner
from backendpick.config import normalize, redact
from backendpick.errors import BackendpickError, InstallError, StateError
from backendpick.fsutil import write_atomic
from backendpick.plan import BACKEND, BUILD, BUILD_REQS, CACHED, PENDING, PREBUILT, REST, SOURCE, Phase, Plan, fold, foldable
from backendpick.target import Target, inspect

TAIL_LINES = 25
HEARTBEAT_SECONDS = 60.0  # a source build is silent for minutes: say it is still going


@dataclass(frozen=True)
class PhaseResult:
    name: str
    seconds: float
    skipped: str | None = None
    builds: tuple = ()  # build phase: each package's step as run (BuildStep.to_json())


@dataclass(frozen=True)
class FenceHit:
    """A later phase needed a fenced package: it belongs in an earlier phase."""

    backend: tuple[str, ...]
    build: tuple[str, ...]
    # name -> the version range pip reported the dependent needs (``==2.5.1``), so the retry
    # installs a torch the dependent accepts rather than the newest one.
    specs: dict = field(default_factory=dict)
    recipe: tuple[str, ...] = ()  # fenced recipe packages (routing.py): routed on the retry

    def requirement(self, name: str) -> str:
        return name + self.specs.get(name, "")


class FenceConflict(Exception):
    def __init__(self, hit: FenceHit):
        super().__init__(f"fenced packages needed: {hit}")
        self.hit = hit


def fenced_needs(output: str, plan: Plan) -> FenceHit | None:
    """Names of fenced packages that pip's conflict report says something depends on."""
    found = re.findall(r"depends on ([A-Za-z0-9][A-Za-z0-9._-]*)([<>=!~][^\s;\[]*)?", output)
    needed = {normalize(m) for m, _ in found}
    specs: dict = {}
    for m, spec in found:
        if spec and _valid_spec(spec):
            specs.setdefault(normalize(m), []).append(spec)
    fenced_lines = set(re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)<0\b", output))
    fenced = {normalize(n) for n in fenced_lines}
    hits = needed & fenced
    if not hits:
        return None
    return FenceHit(
        backend=tuple(sorted(h for h in hits if h in plan.backend_names)),
        build=tuple(sorted(h for h in hits if h in plan.build_names)),
        specs={h: ",".join(dict.fromkeys(specs[h])) for h in hits if h in specs},
        recipe=tuple(sorted(h for h in hits if h not in plan.backend_names and h not in plan.build_names
                            and f"{h}<0" in plan.user_constraints)),
    )


def _valid_spec(text: str) -> bool:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(text)
        return True
    except InvalidSpecifier:
        return False


def execute(
    plan: Plan,
    *,
    target: Target,
    user_env: dict,
    user_constraints: list[str],
    on_phase_start: Callable[[Phase], None],
    on_line: Callable[[str], None],
    on_phase_end: Callable[[Phase, float], None],
    log_dir: Path,
    on_note: Callable[[str], None] | None = None,
) -> list[PhaseResult]:
    """``on_note`` gets the build phase's lines for the user (which wheel, why, limits, elapsed
    time of a long build); without it they go to stderr."""
    note = on_note or _stderr_note
    results: list[PhaseResult] = []
    built: Phase | None = None  # the build phase as it ran, recorded once every phase is done
    _check_before_changes(plan, user_env)
    open_logs(log_dir)
    current: Target | None = None
    phases = list(plan.phases)
    for i in range(len(phases)):
        phase = phases[i]
        if phase.skip:
            results.append(PhaseResult(phase.name, 0.0, phase.skip))
            continue
        if phase.name in (BUILD_REQS, BUILD, REST) and current is None:
            # Once, after the backend phase: later phases cannot change what it pins.
            current = inspect(target.python, tags=False)
            plan.constraints_path.parent.mkdir(parents=True, exist_ok=True)
            with _state_file(plan.constraints_path):
                write_atomic(plan.constraints_path, "\n".join(constraints.after_backend(plan, current, user_constraints)) + "\n")
        if phase.name == BACKEND and plan.backend_constraints and plan.backend_constraints_path is not None:
            # The user's constraints hold in the backend phase too (policy, not a package source).
            plan.backend_constraints_path.parent.mkdir(parents=True, exist_ok=True)
            with _state_file(plan.backend_constraints_path):
                write_atomic(plan.backend_constraints_path, "\n".join(plan.backend_constraints) + "\n")
        env = phase_env(user_env, phase)
        if phase.name == BUILD and phase.steps:
            ran, elapsed = _run_build(plan, phase, target=current, env=env, on_phase_start=on_phase_start,
                                      on_line=on_line, on_note=note, log_dir=log_dir)
            on_phase_end(ran, elapsed)
            built = ran
            results.append(PhaseResult(phase.name, elapsed, builds=tuple(s.to_json() for s in ran.steps)))
            # The rest phase installs the wheels as they really ended up (chosen again when the
            # torch prediction missed), or none when the build phase had to install them itself.
            r = next((j for j, p in enumerate(phases) if p.name == REST and p.skip is None), None)
            if r is not None and ran.deferred:
                phases[r] = fold(ran, phases[r])
            elif r is not None and phases[r].base_argv:
                phases[r] = replace(phases[r], argv=phases[r].base_argv, base_argv=())
            continue
        on_phase_start(phase)
        res, log_path, elapsed = run_phase(phase, env=env, log_dir=log_dir, on_line=on_line)
        if not res.ok:
            _failed(plan, phase, phase, res, log_path)
        on_phase_end(phase, elapsed)
        if phase.name == BUILD:
            built = phase
        results.append(PhaseResult(phase.name, elapsed))
    if built is not None:
        from backendpick import builds

        # What each build package was built or downloaded for, for verify (state folder). The
        # install itself succeeded: a record that cannot be written is a warning, and verify
        # then warns that the package has no record.
        try:
            builds.after_install(plan.constraints_path.parent, built, target.python)
        except (BackendpickError, OSError) as exc:
            note(f"warning: cannot record what {', '.join(sorted(plan.building))} were built for: "
                 f"{getattr(exc, 'message', exc)}")
    return results


def phase_env(user_env: dict, phase: Phase) -> dict:
    """The environment of one pip run: the user's, less what the phase unsets, plus its own
    variables; pip never waits for input (a Dockerfile RUN has no one to answer)."""
    env = {k: v for k, v in user_env.items() if k not in phase.unset}
    env.update(phase.env)
    env.setdefault("PIP_NO_INPUT", "1")
    return env


def open_logs(log_dir: Path) -> None:
    """The folder of the phases' log files (one per pip run), created before the first."""
    with _state_file(log_dir):
        log_dir.mkdir(parents=True, exist_ok=True)


def run_phase(phase: Phase, *, env: dict, log_dir: Path, on_line: Callable[[str], None]) -> tuple:
    """One pip run of a phase (install's and restore's), its whole output in the phase's log
    file: (runner.Result, the log's path, seconds)."""
    started = time.monotonic()
    with _phase_log(log_dir, phase, on_line) as (_log, log_path, tee):
        res = runner.stream(phase.argv, on_line=tee, env=env)
    return res, log_path, time.monotonic() - started


def failure_details(output: str, phase: Phase) -> str:
    """pip's last lines for an error's details, credentials hidden."""
    return _tail(output, phase)


def _check_before_changes(plan: Plan, env: dict) -> None:
    """A source build the plan already foresees (from the torch it predicts) is checked before
    the first pip phase: a missing or wrong compiler stops here, with the environment as it was,
    instead of after gigabytes of torch are installed."""
    from backendpick import buildenv, prebuilt

    phase = next((p for p in plan.phases if p.name == BUILD and p.skip is None and p.steps), None)
    ctx = phase.context if phase is not None else None
    if not isinstance(ctx, prebuilt.BuildContext) or ctx.torch is None or not ctx.build.checks:
        return
    building = [s for s in phase.steps if s.how == SOURCE]
    tools = prebuilt.toolchain(phase.steps, ctx, env) if building else None
    if tools is None:
        return
    # The build-requirements phase installs ninja into the environment before any build.
    reqs = next((p for p in plan.phases if p.name == BUILD_REQS and p.skip is None), None)
    if reqs is not None and any(normalize(Requirement(r).name) == "ninja" for r in reqs.requirements):
        tools = replace(tools, problems=tuple(p for p in tools.problems if p.tool != "ninja"))
    first = next((p for p in plan.phases if p.skip is None), phase)
    buildenv.check(tools, what=", ".join(_what(s) for s in building),
                   why="\n".join([redact(s.note) for s in building]
                                  + [f"checked for torch {_torch_words(ctx.torch)}, before phase '{first.name}': "
                                     "nothing was installed or removed"]))


@contextmanager
def _state_file(path: Path) -> Iterator[None]:
    """backendpick's own file in the state directory could not be written: one line naming it."""
    try:
        yield
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}",
                         hint=f"remove what is in its place (rm -r {path}) and run again") from None


def _failed(plan: Plan, planned: Phase, ran: Phase, res: runner.Result, log_path: Path) -> None:
    """A pip run of a phase failed: a fence conflict to retry, else the error with pip's tail.

    ``planned`` is the plan's own phase (where the environment stands), ``ran`` what ran."""
    if planned.name != BACKEND:
        hit = fenced_needs(res.stdout, plan)
        if hit and (hit.backend or hit.build or hit.recipe):
            raise FenceConflict(hit)
    raise InstallError(
        f"phase '{ran.name}' failed (pip exit {res.returncode if res.returncode is not None else '-'}); "
        f"{_left_state(plan, planned)}",
        hint=f"full pip output: {log_path}; re-run with -v to watch pip",
        details=_tail(res.stdout, ran),
    )


@contextmanager
def _phase_log(log_dir: Path, phase: Phase, on_line: Callable[[str], None]) -> Iterator[tuple]:
    """The phase's log file, opened with its command, and a ``tee`` that writes each pip line
    there and hands it on: (log, its path, tee)."""
    log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{phase.name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        log.write(f"$ {phase.command_line()}\n")

        def tee(line: str) -> None:
            log.write(line + "\n")
            on_line(line)

        yield log, log_path, tee


def _stderr_note(text: str) -> None:
    from backendpick.output import note

    note(text)


def _run_build(plan: Plan, phase: Phase, *, target: Target, env: dict, on_phase_start: Callable[[Phase], None],
               on_line: Callable[[str], None], on_note: Callable[[str], None], log_dir: Path) -> tuple[Phase, float]:
    """The build phase: choose the wheels still open, guard and run source builds, install."""
    from backendpick import buildenv, cache, prebuilt

    def say(text: str) -> None:  # notes name mirror URLs, which may carry credentials
        on_note(redact(text))

    planned = phase  # the plan's own phase object, for messages about where the plan stopped
    ctx = phase.context
    assert isinstance(ctx, prebuilt.BuildContext)
    steps = list(phase.steps)
    if ctx.predicted:
        # The plan chose for the torch it expected; read what the backend phase really left
        # (version, CUDA or HIP, C++ ABI) and choose again when any of it differs: pip may have
        # resolved another torch (a companion's exact pin), or the ABI table may be wrong for
        # this build.
        real = buildenv.torch_info(target.python)
        if not real.same_build(ctx.torch):
            say(f"the backend phase installed torch {_torch_words(real)}, not {_torch_words(ctx.torch)} as "
                "predicted; choosing the build phase's wheels again")
            steps = [replace(s, how=PENDING, wheel=None, find_links=None, build_argv=(), build_env={})
                     if s.how in (CACHED, PREBUILT, SOURCE) else s for s in steps]
            ctx = replace(ctx, torch=real, predicted=False)
            steps = prebuilt.resolve(steps, ctx, env)
        else:
            ctx = replace(ctx, torch=real, predicted=False)
    if ctx.torch is None and any(s.how in (PENDING, SOURCE) for s in steps):
        ctx = replace(ctx, torch=buildenv.torch_info(target.python))
        steps = prebuilt.resolve(steps, ctx, env)
    phase = replace(phase, steps=tuple(steps), context=ctx)

    # Guards before anything is printed or built: a build that cannot succeed stops here, in
    # seconds, with the reason for the source build and the fix.
    building = [s for s in steps if s.how == SOURCE]
    if ctx.build_path:
        # The build requirements' folder (ninja's binary in its bin) for the builds only.
        env = {**env, "PATH": os.pathsep.join([str(Path(ctx.build_path) / "bin"), env.get("PATH", os.defpath)])}
    tools = prebuilt.toolchain(steps, ctx, env) if building and ctx.build.checks else None
    if tools is not None:
        buildenv.check(tools, what=", ".join(_what(s) for s in building),
                       why="\n".join(redact(s.note) for s in building))
    for step in steps:
        if step.note:
            say(step.note)
    if tools is not None:
        say(f"toolchain: {tools.describe()}")

    on_phase_start(phase)
    started = time.monotonic()
    with _phase_log(log_dir, phase, on_line) as (log, log_path, tee):
        for i, step in enumerate(steps):
            if step.how != SOURCE:
                continue
            build_env = {**env, **(tools.env if tools else {}), **step.build_env}
            wheel = _build_wheel(plan, planned, step, env=build_env, tee=tee, log=log, log_path=log_path,
                                 on_note=say)
            key = prebuilt.cache_key(ctx, step.name, _wheel_version(wheel), step.arch_key)
            try:
                # The torch this build compiled against: the one read from the environment it
                # ran in after the backend phase (pip wheel --no-build-isolation, without pip's
                # cache or any wheel of the package, imports the target's torch). The key is
                # made from the same torch, so the entry is proven.
                stored = cache.store(ctx.cache_root, key, wheel, ctx.torch.built_with()).wheel
                say(f"{step.name} {key.version}: stored in the wheel cache: {stored}")
            except OSError as exc:
                stored = wheel  # the build is good; only reuse is lost
                say(f"warning: cannot write the wheel cache {ctx.cache_root} ({exc}); installing from {wheel}")
            steps[i] = replace(step, version=key.version, wheel=str(stored))
        phase = replace(phase, steps=tuple(steps))
        if phase.deferred and foldable(phase):
            res = None  # the rest phase's pip run installs the wheels
        else:
            phase = replace(phase, deferred=False)
            argv = phase.install_argv()
            log.write(f"$ {redact(' '.join(argv))}\n")
            res = runner.stream(argv, on_line=tee, env=env)
    elapsed = time.monotonic() - started
    if res is not None and not res.ok:
        _failed(plan, planned, phase, res, log_path)
    return phase, elapsed


def _torch_words(torch) -> str:
    """``2.5.1+cu124 (CUDA 12.4, C++11 ABI off)``."""
    gpu = f"CUDA {torch.cuda}" if torch.cuda else f"HIP {torch.hip}" if torch.hip else "CPU"
    return f"{torch.version} ({gpu}, C++11 ABI {'on' if torch.cxx11abi else 'off'})"


def _build_wheel(plan: Plan, phase: Phase, step, *, env: dict, tee: Callable[[str], None], log,
                 log_path: Path, on_note: Callable[[str], None]) -> Path:
    """``pip wheel`` for one package, with elapsed time on a timer; the wheel it wrote."""
    what = _what(step)
    out_dir = Path(step.build_argv[step.build_argv.index("-w") + 1])
    shutil.rmtree(out_dir, ignore_errors=True)  # a wheel left by an interrupted build is not this one
    out_dir.mkdir(parents=True, exist_ok=True)
    on_note(f"building {what} from source: {step.limits}; pip output: {log_path}")
    log.write(f"$ {redact(' '.join(step.build_argv))}\n")
    log.flush()
    started = time.monotonic()
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            on_note(f"still building {what}: {_minutes(time.monotonic() - started)} elapsed (Ctrl-C stops it)")

    ticker = threading.Thread(target=heartbeat, name="build-heartbeat", daemon=True)
    ticker.start()
    try:
        res = runner.stream(step.build_argv, on_line=tee, env=env)
    finally:
        stop.set()
        ticker.join(timeout=1)
    elapsed = time.monotonic() - started
    if not res.ok:
        raise InstallError(
            f"building {what} from source failed after {_minutes(elapsed)} "
            f"(pip exit {res.returncode if res.returncode is not None else '-'}); {_left_state(plan, phase)}",
            hint=f"full build output: {log_path}; if it ran out of memory, lower MAX_JOBS "
                 "(environment or [tool.backendpick.build] max-jobs)",
            details=_tail(res.stdout, phase, command=redact(" ".join(step.build_argv))),
        )
    wheels = sorted(p for p in out_dir.glob("*.whl") if normalize(p.name.split("-")[0]) == step.name)
    if not wheels:
        raise InstallError(f"pip wheel reported success for {what} but wrote no wheel to {out_dir}",
                           hint=f"full build output: {log_path}")
    on_note(f"built {wheels[-1].name} in {_minutes(elapsed)}")
    return wheels[-1]


def _what(step) -> str:
    """``flash-attn 2.7.4``, or the requirement as written while its version is open."""
    return f"{Requirement(step.requirement).name} {step.version}" if step.version else step.requirement


def _wheel_version(wheel: Path) -> str:
    from packaging.utils import parse_wheel_filename

    return str(parse_wheel_filename(wheel.name)[1])


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _left_state(plan: Plan, failed: Phase) -> str:
    done = [p.name for p in plan.phases if p.skip is None and plan.phases.index(p) < plan.phases.index(failed)]
    if not done:
        return "the environment is unchanged"
    return f"the environment is as phase '{done[-1]}' left it"


def _tail(output: str, phase: Phase, command: str | None = None) -> str:
    lines = output.rstrip("\n").splitlines()
    tail = lines[-TAIL_LINES:]
    head = f"--- pip output (last {len(tail)} of {len(lines)} lines) ---"
    shown = command if command is not None else phase.command_line()
    return "\n".join([f"$ {shown}", head, *(redact(line) for line in tail), "---"])


