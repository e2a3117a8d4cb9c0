"""``backendpick install``: prepare the plan, then run its phases (or print them: --dry-run)."""

from __future__ import annotations

import time
from dataclasses import replace

from backendpick import install as executor
from backendpick.commands.plan import Prepared, Request, prepare, render
from backendpick.output import Output
from backendpick.plan import state_dir

MAX_RETRIES = 2  # each retry moves fenced packages into an earlier phase


class _Progress:
    """One line per phase in logs; a spinner with elapsed time on a terminal; pip's lines with -v."""

    def __init__(self, out: Output):
        self.out = out
        self.status = None

    def start(self, phase) -> None:
        label = f"phase {phase.name}: {' '.join(phase.requirements)}"
        if self.out.fancy and not self.out.verbose:
            self.started = time.monotonic()
            self.status = self.out.console().status(label)
            self.status.start()
        else:
            self.out.info(f"{label}\n  $ {phase.command_line()}")

    def line(self, text: str) -> None:
        if self.out.verbose:
            self.out.info(f"  | {text}")
        elif self.status is not None:
            self.status.update(f"phase … {text[:100]}")

    def end(self, phase, seconds: float) -> None:
        self._stop()
        self.out.info(f"phase {phase.name}: done in {seconds:.1f}s")

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def run(out: Output, req: Request, *, dry_run: bool) -> int:
    prepared = prepare(req)
    if dry_run:
        if out.json_mode:
            out.emit_json(prepared.plan.to_json())
        else:
            for phase in prepared.plan.active:
                out.line(phase.command_line())
            for w in prepared.plan.warnings:
                out.warn(w)
        return 0

    attempts = 0
    while True:
        try:
            results = _execute(out, prepared)
            break
        except executor.FenceConflict as conflict:
            attempts += 1
            if attempts > MAX_RETRIES:
                raise
            hit = conflict.hit
            moved = ", ".join(hit.backend + hit.build)
            out.info(f"a dependency needs {moved}; installing it in its own phase and running again")
            req = replace(
                req,
                extra_backend=tuple(sorted(set(req.extra_backend) | set(hit.backend))),
                extra_build=tuple(sorted(set(req.extra_build) | set(hit.build))),
            )
            prepared = prepare(req)

    plan = prepared.plan
    ran = [r for r in results if r.skipped is None]
    if out.json_mode:
        out.emit_json({
            **plan.to_json(),
            "ran": [{"name": r.name, "seconds": round(r.seconds, 2)} for r in ran],
            "skipped": [{"name": r.name, "reason": r.skipped} for r in results if r.skipped],
        })
    else:
        if not ran:
            out.info(f"nothing to do: the environment already matches the plan for {plan.backend}")
        else:
            out.info(f"installed for {plan.backend} ({plan.decided_by}: {plan.reason})")
        for w in plan.warnings:
            out.warn(w)
    return 0


def _execute(out: Output, prepared: Prepared) -> list:
    plan = prepared.plan
    progress = _Progress(out)
    try:
        return executor.execute(
            plan,
            target=prepared.target,
            user_env=prepared.user_env,
            user_constraints=list(plan.user_constraints),
            on_phase_start=progress.start,
            on_line=progress.line,
            on_phase_end=progress.end,
            log_dir=state_dir(prepared.target, prepared.user_env) / "logs",
        )
    finally:
        progress._stop()


__all__ = ["run", "render"]
