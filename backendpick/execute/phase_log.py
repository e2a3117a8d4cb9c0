"""One pip run of a phase: its log file, and what its failure means (a fence conflict to
retry, or the error with where the environment stands and pip's last lines, redacted)."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from backendpick.edges import runner
from backendpick.errors import InstallError
from backendpick.model.names import normalize
from backendpick.model.plan import BACKEND, Phase, Plan
from backendpick.redaction import redact

TAIL_LINES = 25


@dataclass(frozen=True)
class FenceHit:
    """A later phase needed a fenced package: it belongs in an earlier phase."""

    backend: tuple[str, ...]
    build: tuple[str, ...]
    # name -> the version range pip reported the dependent needs (``==2.5.1``), so the retry
    # installs a torch the dependent accepts rather than the newest one.
    specs: dict = field(default_factory=dict)
    recipe: tuple[str, ...] = ()  # fenced recipe packages (planning/routing.py): routed on the retry

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


def failed(plan: Plan, planned: Phase, ran: Phase, res: runner.Result, log_path: Path, shown: str) -> None:
    """A pip run of a phase failed: a fence conflict to retry, else the error with pip's tail.

    ``planned`` is the plan's own phase (where the environment stands), ``ran`` what ran, and
    ``shown`` its command as --dry-run prints it."""
    if planned.name != BACKEND:
        hit = fenced_needs(res.stdout, plan)
        if hit and planned.alongside and (hit.backend or hit.build):
            # The build requirements' own folder fences the stack: moving the package to the
            # backend phase (the retry) cannot help a build tool that wants a torch of its own.
            names = ", ".join(hit.backend + hit.build)
            raise InstallError(
                f"a build requirement depends on {names}; build requirements go to a folder of their own "
                f"(installed beside the backend phase), where the stack is fenced; {left_state(plan, planned)}",
                hint=f"leave it out of [tool.backendpick] build-requirements: the build already sees the "
                     f"environment's {names}; full pip output: {log_path}",
                details=tail(res.stdout, shown),
            )
        if hit and (hit.backend or hit.build or hit.recipe):
            raise FenceConflict(hit)
    raise InstallError(
        f"phase '{ran.name}' failed (pip exit {res.returncode if res.returncode is not None else '-'}); "
        f"{left_state(plan, planned)}",
        hint=f"full pip output: {log_path}; re-run with -v to watch pip",
        details=tail(res.stdout, shown),
    )


@contextmanager
def phase_log(log_dir: Path, name: str, shown: str, on_line: Callable[[str], None]) -> Iterator[tuple]:
    """The log file of phase ``name``, opened with its command (``shown``), and a ``tee`` that
    writes each pip line there and hands it on: (log, its path, tee)."""
    log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        log.write(f"$ {shown}\n")

        def tee(line: str) -> None:
            log.write(line + "\n")
            on_line(line)

        yield log, log_path, tee


def left_state(plan: Plan, failed: Phase) -> str:
    done = [p.name for p in plan.phases if p.skip is None and plan.phases.index(p) < plan.phases.index(failed)]
    if not done:
        return "the environment is unchanged"
    return f"the environment is as phase '{done[-1]}' left it"


def tail(output: str, shown: str) -> str:
    """pip's last lines after the command that printed them (``shown``), credentials hidden."""
    lines = output.rstrip("\n").splitlines()
    tail = lines[-TAIL_LINES:]
    head = f"--- pip output (last {len(tail)} of {len(lines)} lines) ---"
    return "\n".join([f"$ {shown}", head, *(redact(line) for line in tail), "---"])
