"""``backendpick verify``: is this environment's GPU stack consistent? One line per problem, with the fix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from backendpick.checks import suite
from backendpick.errors import EXIT_INSTALL_FAILED, EXIT_OK, ConfigError
from backendpick.inputs import config, installer as installer_mod, requirements
from backendpick.knowledge import facts as facts_mod
from backendpick.machine.probe import ProbeSettings, probe
from backendpick.model import environment
from backendpick.output import Output, where_flags
from backendpick.state import environment_pins
from backendpick.target import inspection as target_mod, installed_stack


@dataclass(frozen=True)
class Report:
    python: Path
    torch: dict | None
    packages: list
    problems: list
    warnings: list = field(default_factory=list)  # Problems that do not make the stack inconsistent
    pins: environment_pins.PinStatus | None = None  # the environment's pins (state/environment_pins.py)
    lock: dict | None = None  # the lock checked: path, named_by, backend, differences

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "python": str(self.python),
            "torch": self.torch,
            "packages": self.packages,
            "problems": [p.to_json() for p in self.problems],
            "warnings": [p.to_json() for p in self.warnings],
            "pins": self.pins.to_json() if self.pins is not None else None,
            "lock": self.lock,
        }


def torch_offered(target: environment.Target, settings: config.Settings, backend, env: dict | None) -> frozenset:
    """Public torch versions the backend index offers this target; empty when it does not answer."""
    from packaging.specifiers import SpecifierSet

    from backendpick.indexes.client import IndexClient, IndexUnavailable, PageNotFound, matching_versions
    from backendpick.inputs import pip_config
    from backendpick.selection.offers import index_url_for

    env = dict(os.environ if env is None else env)
    from backendpick.indexes.credentials import configured_urls

    client = IndexClient(pip_config.read(env, target.prefix), env=env, urls=configured_urls(settings))
    try:
        files = client.project(index_url_for(settings.index_url.value, backend), "torch")
    except (PageNotFound, IndexUnavailable):
        return frozenset()
    return frozenset(v.public for v in matching_versions(files, "torch", SpecifierSet(), target.python_version_text, target.tags))


def check(
    target: environment.Target,
    settings: config.Settings,
    *,
    python: Path | None,
    wanted=(),
    from_project: bool = True,
    hardware=None,
    runtime: bool = True,
    env: dict | None = None,
    uv: str | None = None,
) -> Report:
    """verify's checks (checks/suite.py) on one look at ``target``. ``runtime``: import torch
    and the compiled extensions, run pip check (``uv``: uv pip check), ask the backend index
    which torch it offers."""
    facts = facts_mod.load()
    flag = where_flags(python, settings)
    family = set(settings.backend_packages)
    nbi = set(settings.no_build_isolation)
    stack = installed_stack.read(target, facts, os.environ if env is None else env, abi=runtime, build=nbi)
    tb = stack.torch
    offered = None
    if runtime and tb is not None and not stack.foreign and any(n in family | nbi for n in target.installed
                                                                    if n != "torch"):
        # Fixes for companions name torch's version: only one the backend index has. (A torch
        # no index serves is named as installed: no index is asked about it.)
        offered = torch_offered(target, settings, tb.backend, env)
    found = suite.findings(target, stack, facts, suite.Scope.of(settings, flag, hardware, os.environ, uv=uv),
                           imports=runtime, dependencies=suite.PIP_CHECK if runtime else None, wanted=wanted,
                           from_project=from_project, offered=offered, pins=True)
    packages = [
        {"name": d.name, "version": d.version}
        for n, d in sorted(target.installed.items())
        if n in family or n in nbi
    ]
    return Report(target.python, stack.to_json(), packages, list(found.problems), list(found.warnings), found.pins)


def run(out: Output, *, python: Path | None, project_dir: Path, reqs: tuple[str, ...], files: tuple[Path, ...],
        inspection=None, lock: Path | None = None, installer: str | None = None) -> int:
    """``inspection``: the target's, started early by the console script (``target.Inspection``);
    ``installer``: --installer (uv: ``uv pip check``, no pip process)."""
    facts = facts_mod.load()
    settings = config.load(facts, project_dir=project_dir, installer=installer)
    chosen = installer_mod.resolve(settings.installer.value, os.environ, settings.installer.source)
    target = target_mod.take_or_inspect(inspection, target_mod.choose_python(python))
    try:
        wanted = requirements.gather(reqs, files, settings.pyproject, (), ()).requirements
    except ConfigError:
        if reqs or files:
            raise
        wanted = ()  # no pyproject.toml: check the stack only
    hardware = probe(facts, ProbeSettings.from_env(dict(os.environ)))
    report = check(target, settings, python=python, wanted=wanted, from_project=not (reqs or files), hardware=hardware,
                   uv=str(chosen.uv) if chosen.uv else None)
    report = with_lock(report, lock, None if reqs or files else settings.lock.value, settings, target, python)
    if out.json_mode:
        out.emit_json(report.to_json())
    else:
        render(out, report)
    return EXIT_OK if report.ok else EXIT_INSTALL_FAILED


def with_lock(report: Report, flag: Path | None, setting: str | None, settings: config.Settings,
              target: environment.Target, python: Path | None) -> Report:
    """``report`` with each difference from the lock as a problem (checks/lock_diff.py): the lock
    of ``--lock``, else of ``[tool.backendpick] lock``, ``{backend}`` the installed torch's."""
    from backendpick.checks import lock_diff

    chosen = lock_diff.chosen(flag, setting, settings.project_dir, (report.torch or {}).get("backend"), target.python)
    if chosen is None:
        return report
    from dataclasses import replace

    from backendpick.planning.lock_plan import read

    lock = read(chosen.path)
    found = lock_diff.differences(lock, chosen.path, target, where_flags(python, settings))
    return replace(report, problems=report.problems + found, lock={
        "path": str(chosen.path), "named_by": chosen.named_by, "backend": lock.backend, "differences": len(found)})


def render(out: Output, report: Report) -> None:
    out.line(f"python: {report.python}")
    origin = (report.torch or {}).get("origin") or {}
    if origin.get("foreign"):
        # A torch no index serves: named as what it is (issue 18).
        out.line(f"torch: {origin['text']}")
    elif report.torch:
        t = report.torch
        out.line(f"torch: {t['version']} ({t['backend']}" + (f", CUDA {t['cuda']}" if t["cuda"] else "")
                 + (f", HIP {t['hip']}" if t["hip"] else "") + ")"
                 + (f"; seen through the base environment's {origin['outside']}" if origin.get("outside") else ""))
    else:
        out.line("torch: not installed")
    if report.pins is not None and report.torch:
        p = report.pins
        if not p.in_place:
            out.line("pins: none (a plain pip can replace the stack; backendpick install writes them)")
        else:
            out.line(f"pins: {p.path}, " + ("current" if p.current else "not current")
                     + ("" if p.unreadable is None else ", not readable by pip")
                     + (f"; hidden in this shell by {p.hidden_by}" if p.hidden_by else ""))
    if report.lock is not None:
        k = report.lock
        out.line(f"lock: {k['path']} ({k['named_by']}), "
                 + ("exactly as locked" if not k["differences"] else f"{k['differences']} difference(s)"))
    for p in report.problems:
        out.line(f"problem: {p.package}: {p.message}")
        out.line(f"  fix: {p.fix}")
    for p in report.warnings:
        out.line(f"warning: {p.package}: {p.message}")
        out.line(f"  fix: {p.fix}")
    out.line("ok: the GPU stack is consistent" if report.ok else f"not ok: {len(report.problems)} problem(s)")
