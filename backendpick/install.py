"""Execute a plan: run its phases in order through the one subprocess runner.

The constraints file is written from what is really installed after the backend phase (the
plan only knows names), so later phases cannot replace a single byte of the stack.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from packaging.requirements import Requirement

from backendpick import runner
from backendpick.config import normalize, redact
from backendpick.errors import InstallError
from backendpick.plan import BACKEND, BUILD, BUILD_REQS, REMOVE, REST, Phase, Plan
from backendpick.target import Target, inspect

TAIL_LINES = 25


@dataclass(frozen=True)
class PhaseResult:
    name: str
    seconds: float
    skipped: str | None = None


@dataclass(frozen=True)
class FenceHit:
    """A later phase needed a fenced package: it belongs in an earlier phase."""

    backend: tuple[str, ...]
    build: tuple[str, ...]


class FenceConflict(Exception):
    def __init__(self, hit: FenceHit):
        super().__init__(f"fenced packages needed: {hit}")
        self.hit = hit


def constraint_lines(plan: Plan, target: Target, user_lines: list[str]) -> list[str]:
    """Pins for every installed backend package, fences for the others, then the user's."""
    building = {normalize(Requirement(r).name) for p in plan.phases if p.name == BUILD for r in p.requirements}
    lines = []
    for name in plan.backend_names:
        d = target.get(name)
        lines.append(f"{d.name}=={d.version}" if d else f"{name}<0")
    lines += [f"{n}<0" for n in plan.build_names if n not in building and target.get(n) is None]
    return lines + user_lines


def fenced_needs(output: str, plan: Plan) -> FenceHit | None:
    """Names of fenced packages that pip's conflict report says something depends on."""
    needed = {normalize(m) for m in re.findall(r"depends on ([A-Za-z0-9][A-Za-z0-9._-]*)", output)}
    fenced_lines = set(re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)<0\b", output))
    fenced = {normalize(n) for n in fenced_lines}
    hits = needed & fenced
    if not hits:
        return None
    return FenceHit(
        backend=tuple(sorted(h for h in hits if h in plan.backend_names)),
        build=tuple(sorted(h for h in hits if h in plan.build_names)),
    )


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
) -> list[PhaseResult]:
    results: list[PhaseResult] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for phase in plan.phases:
        if phase.skip:
            results.append(PhaseResult(phase.name, 0.0, phase.skip))
            continue
        if phase.name in (BUILD_REQS, BUILD, REST):
            current = inspect(target.python)
            plan.constraints_path.parent.mkdir(parents=True, exist_ok=True)
            plan.constraints_path.write_text("\n".join(constraint_lines(plan, current, user_constraints)) + "\n")
        env = {k: v for k, v in user_env.items() if k not in phase.unset}
        env.update(phase.env)
        env.setdefault("PIP_NO_INPUT", "1")
        on_phase_start(phase)
        started = time.monotonic()
        log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{phase.name}.log"
        with log_path.open("w", encoding="utf-8") as log:
            log.write(f"$ {phase.command_line()}\n")

            def tee(line: str) -> None:
                log.write(line + "\n")
                on_line(line)

            res = runner.stream(phase.argv, on_line=tee, env=env)
        elapsed = time.monotonic() - started
        if not res.ok:
            output = res.stdout
            if phase.name in (BUILD, REST, BUILD_REQS):
                hit = fenced_needs(output, plan)
                if hit and (hit.backend or hit.build):
                    raise FenceConflict(hit)
            raise InstallError(
                f"phase '{phase.name}' failed (pip exit {res.returncode if res.returncode is not None else '-'}); "
                f"{_left_state(plan, phase)}",
                hint=f"full pip output: {log_path}; re-run with -v to watch pip",
                details=_tail(output, phase),
            )
        on_phase_end(phase, elapsed)
        results.append(PhaseResult(phase.name, elapsed))
    return results


def _left_state(plan: Plan, failed: Phase) -> str:
    done = [p.name for p in plan.phases if p.skip is None and plan.phases.index(p) < plan.phases.index(failed)]
    if not done:
        return "the environment is unchanged"
    return f"the environment is as phase '{done[-1]}' left it"


def _tail(output: str, phase: Phase) -> str:
    lines = output.rstrip("\n").splitlines()
    tail = lines[-TAIL_LINES:]
    head = f"--- pip output (last {len(tail)} of {len(lines)} lines) ---"
    return "\n".join([f"$ {phase.command_line()}", head, *(redact(line) for line in tail), "---"])


__all__ = ["execute", "FenceConflict", "PhaseResult", "constraint_lines", "fenced_needs", "REMOVE", "BACKEND", "REST"]
