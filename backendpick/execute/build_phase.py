"""The build phase as it runs: the wheels chosen again for the torch really installed, the
toolchain checked before any source build (before the first phase too, when the plan foresees
one), ``pip wheel`` (with uv: the sdist downloaded, then ``uv build``) with a heartbeat and
notes, the wheel cache, then one install by the plan's installer."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from packaging.requirements import Requirement

from backendpick.edges import runner
from backendpick.errors import InstallError
from backendpick.execute.engines import PIP, UV, Renderer
from backendpick.execute.phase_log import failed, left_state, phase_log, tail
from backendpick.model.environment import Target
from backendpick.model.names import normalize
from backendpick.model.plan import BUILD, BUILD_REQS, CACHED, PENDING, PREBUILT, SOURCE, Phase, Plan, foldable
from backendpick.redaction import redact
from backendpick.target import installed_torch

HEARTBEAT_SECONDS = 60.0  # a source build is silent for minutes: say it is still going


def check_before_changes(plan: Plan, env: dict) -> None:
    """A source build the plan already foresees (from the torch it predicts) is checked before
    the first pip phase: a missing or wrong compiler stops here, with the environment as it was,
    instead of after gigabytes of torch are installed."""
    phase = next((p for p in plan.phases if p.name == BUILD and p.skip is None and p.steps), None)
    if phase is None:
        return  # most plans: no build, and the build modules stay unimported (issue 22 item 2)
    from backendpick.build import toolchain, wheel_choice

    if plan.installer == UV:
        # uv builds a file: a source build whose sdist was not found stops with nothing changed.
        missing = next((s for s in phase.steps if s.how == SOURCE and not s.sdist_file), None)
        if missing is not None:
            raise _no_sdist(missing, "the environment is unchanged")
    ctx = phase.context
    if not isinstance(ctx, wheel_choice.BuildContext) or ctx.torch is None or not ctx.build.checks:
        return
    building = [s for s in phase.steps if s.how == SOURCE]
    tools = wheel_choice.toolchain(phase.steps, ctx, env) if building else None
    if tools is None:
        return
    # The build-requirements phase installs ninja into the environment before any build.
    reqs = next((p for p in plan.phases if p.name == BUILD_REQS and p.skip is None), None)
    if reqs is not None and any(normalize(Requirement(r).name) == "ninja" for r in reqs.requirements):
        tools = replace(tools, problems=tuple(p for p in tools.problems if p.tool != "ninja"))
    first = next((p for p in plan.phases if p.skip is None), phase)
    toolchain.check(tools, what=", ".join(_what(s) for s in building),
                    why="\n".join([redact(s.note) for s in building]
                                   + [f"checked for torch {_torch_words(ctx.torch)}, before phase '{first.name}': "
                                      "nothing was installed or removed"]))


def run_build(plan: Plan, phase: Phase, renderer: Renderer, *, target: Target, user_env: dict,
              on_phase_start: Callable[[Phase], None], on_line: Callable[[str], None], on_note: Callable[[str], None],
              log_dir: Path) -> tuple[Phase, float]:
    """The build phase: choose the wheels still open, guard and run source builds, install.
    ``renderer`` spells its commands (execute/engines.py)."""
    from backendpick.build import toolchain, wheel_choice
    from backendpick.state import wheel_cache

    def say(text: str) -> None:  # notes name mirror URLs, which may carry credentials
        on_note(redact(text))

    planned = phase  # the plan's own phase object, for messages about where the plan stopped
    env = dict(user_env)
    ctx = phase.context
    assert isinstance(ctx, wheel_choice.BuildContext)
    ctx, steps = _for_the_installed_torch(ctx, list(phase.steps), target, env, say)
    steps = _fetched(ctx, steps, say)
    phase = replace(phase, steps=tuple(steps), context=ctx)

    # Guards before anything is printed or built: a build that cannot succeed stops here, in
    # seconds, with the reason for the source build and the fix.
    building = [s for s in steps if s.how == SOURCE]
    if ctx.build_path:
        # The build requirements' folder (ninja's binary in its bin) for the builds only.
        env["PATH"] = os.pathsep.join([str(Path(ctx.build_path) / "bin"), env.get("PATH", os.defpath)])
    tools = wheel_choice.toolchain(steps, ctx, env) if building and ctx.build.checks else None
    if tools is not None:
        toolchain.check(tools, what=", ".join(_what(s) for s in building),
                        why="\n".join(redact(s.note) for s in building))
    for step in steps:
        if step.note:
            say(step.note)
    if tools is not None:
        say(f"toolchain: {tools.describe()}")
    _sdists_ready(plan, planned, building, renderer, ctx, say)

    on_phase_start(phase)
    started = time.monotonic()
    with phase_log(log_dir, phase.name, renderer.shown(phase), on_line) as (log, log_path, tee):
        for i, step in enumerate(steps):
            if step.how != SOURCE:
                continue
            command = renderer.build_command(phase, step)
            build_env = {**command.environ(env), **(tools.env if tools else {}), **step.build_env}
            began = time.monotonic()
            wheel = build_wheel(plan, planned, step, command.argv, env=build_env, tee=tee, log=log,
                                log_path=log_path, on_note=say, tool=renderer.installer)
            seconds = time.monotonic() - began
            key = wheel_choice.cache_key(ctx, step.name, _wheel_version(wheel), step.arch_key)
            try:
                # The torch this build compiled against: the one read from the environment it
                # ran in after the backend phase (pip wheel --no-build-isolation, without pip's
                # cache or any wheel of the package, imports the target's torch). The key is
                # made from the same torch, so the entry is proven.
                stored = wheel_cache.store(ctx.cache_root, key, wheel, ctx.torch.built_with()).wheel
                say(f"{step.name} {key.version}: stored in the wheel cache: {stored}")
            except OSError as exc:
                stored = wheel  # the build is good; only reuse is lost
                say(f"warning: cannot write the wheel cache {ctx.cache_root} ({exc}); installing from {wheel}")
            steps[i] = replace(step, version=key.version, wheel=str(stored), seconds=seconds)
        phase = replace(phase, steps=tuple(steps))
        if phase.deferred and foldable(phase):
            res = None  # the rest phase's pip run installs the wheels
        else:
            phase = replace(phase, deferred=False)
            command = renderer.command(phase)
            log.write(f"$ {command.line()}\n")
            res = runner.stream(command.argv, on_line=tee, env=command.environ(env))
    elapsed = time.monotonic() - started
    if res is not None and not res.ok:
        failed(plan, planned, phase, res, log_path, renderer.shown(phase))
    return phase, elapsed


def _sdists_ready(plan: Plan, planned: Phase, building: list, renderer: Renderer, ctx,
                  say: Callable[[str], None]) -> None:
    """With uv, each source build's sdist as a local file before anything is built (``uv
    build`` takes a file): downloaded where it is on a server; none found stops here."""
    if renderer.installer != UV:
        return
    from backendpick.build import sdists, wheel_choice

    for step in building:
        if not step.sdist_file:
            raise _no_sdist(step, left_state(plan, planned))
        if step.sdist and step.sdist != step.sdist_file:  # each time: builds are rare, the cache serves the rest
            sdists.download(step.sdist, Path(step.sdist_file), wheel_choice.session_of(ctx), say)


def _no_sdist(step, state: str) -> InstallError:
    return InstallError(f"cannot build {_what(step)} with uv: no sdist of it was found (uv build takes a file); "
                        f"{state}", details=redact(step.note),
                        hint="put its sdist on your index or a find-links folder, or use --installer pip")


def _fetched(ctx, steps: list, say: Callable[[str], None]) -> list:
    """The steps with their wheels behind credentials pip would not find downloaded by
    backendpick (indexes/fetches.py): the plan's, and those chosen again just now."""
    if ctx.client is None:
        return steps
    from backendpick.edges import paths
    from backendpick.indexes import fetches

    localized, found = fetches.localize_steps(steps, ctx.client.keychain.child_cannot_find,
                                              paths.downloads(ctx.staging.parent))
    fetches.fetch(found.items(), ctx.client.session, say)
    return list(localized)


def _for_the_installed_torch(ctx, steps: list, target: Target, env: dict, say: Callable[[str], None]) -> tuple:
    """The build context and steps for the torch the backend phase really left."""
    from backendpick.build import toolchain, wheel_choice

    if ctx.predicted:
        # The plan chose for the torch it expected; read what the backend phase really left
        # (version, CUDA or HIP, C++ ABI) and choose again when any of it differs: pip may have
        # resolved another torch (a companion's exact pin), or the ABI table may be wrong for
        # this build.
        real = installed_torch.torch_info(target.python)
        if not real.same_build(ctx.torch):
            say(f"the backend phase installed torch {_torch_words(real)}, not {_torch_words(ctx.torch)} as "
                "predicted; choosing the build phase's wheels again")
            steps = [replace(s, how=PENDING, wheel=None, find_links=None, build_requirement=None, wheel_dir=None,
                             build_env={}, sdist=None, sdist_file=None)
                     if s.how in (CACHED, PREBUILT, SOURCE) else s for s in steps]
            ctx = replace(ctx, torch=real, predicted=False)
            steps = wheel_choice.resolve(steps, ctx, env)
        else:
            ctx = replace(ctx, torch=real, predicted=False)
    if ctx.torch is None and any(s.how in (PENDING, SOURCE) for s in steps):
        ctx = replace(ctx, torch=installed_torch.torch_info(target.python))
        steps = wheel_choice.resolve(steps, ctx, env)
    return ctx, steps


def _torch_words(torch) -> str:
    """``2.5.1+cu124 (CUDA 12.4, C++11 ABI off)``."""
    gpu = f"CUDA {torch.cuda}" if torch.cuda else f"HIP {torch.hip}" if torch.hip else "CPU"
    return f"{torch.version} ({gpu}, C++11 ABI {'on' if torch.cxx11abi else 'off'})"


def build_wheel(plan: Plan, phase: Phase, step, argv: Sequence[str], *, env: dict, tee: Callable[[str], None], log,
                log_path: Path, on_note: Callable[[str], None], tool: str = PIP) -> Path:
    """``argv`` (``pip wheel`` or, ``tool`` uv, ``uv build`` for one package:
    engines.Renderer.build_command), with elapsed time on a timer; the wheel it wrote into the
    step's ``wheel_dir``."""
    what = _what(step)
    out_dir = Path(step.wheel_dir)
    import shutil  # only where a build runs

    shutil.rmtree(out_dir, ignore_errors=True)  # a wheel left by an interrupted build is not this one
    out_dir.mkdir(parents=True, exist_ok=True)
    on_note(f"building {what} from source: {step.limits}; {tool} output: {log_path}")
    log.write(f"$ {redact(' '.join(argv))}\n")
    log.flush()
    started = time.monotonic()
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            on_note(f"still building {what}: {_minutes(time.monotonic() - started)} elapsed (Ctrl-C stops it)")

    ticker = threading.Thread(target=heartbeat, name="build-heartbeat", daemon=True)
    ticker.start()
    try:
        res = runner.stream(list(argv), on_line=tee, env=env)
    finally:
        stop.set()
        ticker.join(timeout=1)
    elapsed = time.monotonic() - started
    if not res.ok:
        raise InstallError(
            f"building {what} from source failed after {_minutes(elapsed)} "
            f"({tool} exit {res.returncode if res.returncode is not None else '-'}); {left_state(plan, phase)}",
            hint=f"full build output: {log_path}; if it ran out of memory, lower MAX_JOBS "
                 "(environment or [tool.backendpick.build] max-jobs)",
            details=tail(res.stdout, redact(" ".join(argv))),
        )
    wheels = sorted(p for p in out_dir.glob("*.whl") if normalize(p.name.split("-")[0]) == step.name)
    if not wheels:
        raise InstallError(f"{'uv build' if tool == UV else 'pip wheel'} reported success for {what} but wrote "
                           f"no wheel to {out_dir}",
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
