"""Backend and build packages that ordinary requirements pull in, found before anything runs.

``needs-torch`` depends on torch only through its own metadata: without looking, the plan
shows no backend phase and install finds torch only when the rest phase hits its fence. So
the plan asks pip once: ``pip install --dry-run --ignore-installed --report`` of the ordinary
requirements, with the user's own pip configuration (the indexes the rest phase will use) and
``--only-binary :all:`` so nothing is built (flash-attn's sdist cannot even say what it needs
without torch). pip 23.3 and later read only the metadata (PEP 658 files, or parts of the
wheels); older pip downloads the wheels into its cache, where the rest phase finds them.

When pip cannot resolve that way (a package only published as an sdist, an old pip, an index
that does not answer), the plan says so and install's fence-and-retry stays the safety net. A
build package pip stopped at (``No matching distribution found for flash-attn``) is still
routed to its phase.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from packaging.requirements import Requirement

from backendpick import runner
from backendpick.config import normalize, redact

TIMEOUT = 300.0  # a resolution against a slow mirror; pip has its own network timeouts


@dataclass(frozen=True)
class Found:
    backend: tuple[str, ...] = ()  # normalized names of backend packages pulled in
    build: tuple[str, ...] = ()  # normalized names of no-build-isolation packages pulled in
    note: str | None = None  # set when the resolution fell short: what happened, for the plan


def from_report(report: Mapping, family: Iterable[str], build: Iterable[str]) -> Found:
    """Route the names of a pip installation report (``--report``) into their phases."""
    names = set()
    for item in report.get("install", []) or []:
        name = (item.get("metadata") or {}).get("name")
        if isinstance(name, str):
            names.add(normalize(name))
    family, build = set(family), set(build)
    return Found(tuple(sorted(names & family)), tuple(sorted(names & build)))


_NO_MATCH = re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)")


def from_failure(output: str, family: Iterable[str], build: Iterable[str]) -> Found:
    """What a failed resolution still tells: the package pip found no wheel for."""
    names = {normalize(m) for m in _NO_MATCH.findall(output)}
    family, build = set(family), set(build)
    stopped = sorted(names)
    last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip().startswith("ERROR:")), "")
    reason = (f"no wheel of {', '.join(stopped)}" if stopped else (last[len("ERROR:"):].strip() or "pip failed"))
    return Found(
        tuple(sorted(names & family)),
        tuple(sorted(names & build)),
        note=redact(f"the dependencies of the ordinary requirements were not fully resolved before installing "
                    f"({reason[:200]}); install moves a backend or build package pulled in after that to its "
                    "phase when pip asks for it"),
    )


def dry_run_argv(pip: Sequence[str], requirements: Sequence[str], rest_options: Sequence[str],
                 constraints_file: str | None, report: str) -> list[str]:
    argv = [*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", report, *rest_options,
            "--only-binary", ":all:"]
    if constraints_file:
        argv += ["-c", constraints_file]
    return argv + list(requirements)


def _is_wheel_url(url: str) -> bool:
    return urlsplit(url).path.endswith(".whl")


def find(pip: Sequence[str], requirements: Sequence[Requirement], *, rest_options: Sequence[str],
         user_constraints: Sequence[Requirement], env: Mapping[str, str], family: Iterable[str],
         build: Iterable[str]) -> Found:
    """One pip resolution of ``requirements`` (the rest phase's) without installing anything."""
    family, build = tuple(family), tuple(build)
    # A direct reference to anything but a wheel (a local sdist, a VCS checkout) is prepared by
    # pip even under --only-binary: its setup.py would run here, before the lock and the
    # snapshot. requirements.py already read what such an item declares without building it.
    requirements = [r for r in requirements if not r.url or _is_wheel_url(r.url)]
    if not requirements:
        return Found()
    with tempfile.TemporaryDirectory(prefix="backendpick-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        cons = None
        if user_constraints:
            cons = str(Path(tmp) / "constraints.txt")
            Path(cons).write_text("\n".join(str(c) for c in user_constraints) + "\n", encoding="utf-8")
        argv = dry_run_argv(pip, [str(r) for r in requirements], rest_options, cons, str(report))
        res = runner.capture(argv, timeout=TIMEOUT, env={**env, "PIP_NO_INPUT": "1"})
        if res.ok and report.exists():
            try:
                return from_report(json.loads(report.read_text(encoding="utf-8")), family, build)
            except ValueError:
                pass
        if res.returncode is None:
            return Found(note=f"the dependencies of the ordinary requirements were not resolved before installing "
                              f"({res.error}); install moves a backend or build package to its phase when pip asks for it")
        return from_failure(res.stdout + "\n" + res.stderr, family, build)

