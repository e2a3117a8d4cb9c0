"""The one set of checks (issue 20 item 3): ``verify`` runs it on an environment, and install's
self-check runs it on the environment before and after its phases. Both read the installed
stack once per look at the target (``target/installed_stack.py``) and hand it in.

The checks, in the order verify prints their problems: the stack against torch and the hardware
(``stack.stack_problems``), the project's requirements (verify only), what each build package was
recorded built for, recipe packages' builds (``fingerprint``), the compiled extensions imported
(a subprocess, where the caller asks), the dependencies (``pip check``, or the installed metadata
alone where it must cost nothing), the environment's pins (verify only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

from backendpick.checks import fingerprint
from backendpick.checks.dependencies import dependency_problems, missing_problems, pip_check_problems
from backendpick.checks.stack import Problem, build_record_problems, extension_problems, stack_problems
from backendpick.knowledge.facts import Facts
from backendpick.model import environment
from backendpick.model.hardware import Hardware
from backendpick.model.names import normalize
from backendpick.state import environment_pins
from backendpick.target.installed_stack import InstalledStack

PIP_CHECK, METADATA = "pip check", "metadata"  # how dependencies are checked


@dataclass(frozen=True)
class Scope:
    """What the checks judge with: the stack's names, the flags every fix carries, the policy,
    the recipes, the hardware (None: not judged, an explicit backend for another host), and the
    environment the packages run in (bitsandbytes reads BNB_CUDA_VERSION)."""

    family: frozenset
    build: frozenset
    flag: str
    policy: str = "strict"
    recipes: Mapping = None
    hardware: Hardware | None = None
    env: Mapping[str, str] | None = None
    uv: str | None = None  # the uv executable with --installer uv: ``uv pip check``, no pip process

    @classmethod
    def of(cls, settings, flag: str, hardware: Hardware | None = None, env: Mapping[str, str] | None = None,
           uv: str | None = None) -> Scope:
        """From a project's settings (inputs/config.py)."""
        return cls(frozenset(settings.backend_packages), frozenset(settings.no_build_isolation), flag,
                   settings.cuda_compat.value, settings.recipes, hardware, env, uv)


@dataclass(frozen=True)
class Findings:
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...] = ()  # what does not make the stack inconsistent (a build without a record)
    imported: tuple[Problem, ...] = ()  # the problems the extension import check found (among ``problems``)
    pins: environment_pins.PinStatus | None = None  # the environment's pins, where asked

    @property
    def ok(self) -> bool:
        return not self.problems


def findings(target: environment.Target, stack: InstalledStack, facts: Facts, scope: Scope, *, imports: bool,
             dependencies: str | None, wanted: Iterable | None = None, from_project: bool = True,
             offered: Collection[str] | None = None, pins: bool = False) -> Findings:
    """Every check of ``target`` as ``stack`` found it. ``imports``: import the compiled
    extensions (a subprocess); ``dependencies``: ``PIP_CHECK`` (a subprocess), ``METADATA``
    (installed metadata alone) or None; ``wanted``: the project's requirements, checked as
    installed; ``offered``: the torch versions the backend index has (the fixes pin only one it
    has); ``pins``: the environment's pins as well."""
    family, build, flag, tb = set(scope.family), set(scope.build), scope.flag, stack.torch
    problems: list[Problem] = stack_problems(target, facts, scope.hardware, family, build, python_flag=flag,
                                             policy=scope.policy, offered=offered, stack=stack)
    if wanted is not None:
        problems += missing_problems(target, wanted, build, flag, from_project=from_project, recipes=scope.recipes,
                                     family=family)
    built, unrecorded = build_record_problems(target, stack.records, tb, build, flag, cxx11abi=stack.cxx11abi)
    problems += built
    problems += fingerprint.problems(target, stack.backend, stack.version, scope.recipes or {}, flag,
                                     env=os.environ if scope.env is None else scope.env)
    imported: list[Problem] = []
    if imports and tb is not None:
        imported = extension_problems(target, facts, flag, tb.backend)
        problems += imported
    if dependencies == PIP_CHECK and tb is not None:
        # pip check repeats what the metadata checks already said about a package; keep the
        # first, more specific line.
        reported = {normalize(p.package) for p in problems}
        problems += [p for p in pip_check_problems(target, family | build, flag, tb=tb, family=family, offered=offered,
                                                          uv=scope.uv)
                     if normalize(p.package) not in reported]
    elif dependencies == METADATA:
        problems += dependency_problems(target, family | build, flag, tb=tb, family=family)
    status = None
    if pins:
        status = environment_pins.status(target.prefix, target.installed, family | build, os.environ)
        problems += _pins_problems(status, flag)
    return Findings(tuple(problems), tuple(unrecorded), tuple(imported), status)


def _pins_problems(pins: environment_pins.PinStatus, flag: str) -> list[Problem]:
    out = []
    if pins.in_place and pins.unreadable:
        # The file is there, yet a plain pip fails on every install (or ignores the pins).
        out.append(Problem("pins", f"pip cannot read the environment's pins ({pins.path}): {pins.unreadable}",
                           f"backendpick install{flag}   # rewrites the pins in a form pip reads"))
    if pins.in_place and not pins.current:
        # Stale pins make a plain pip refuse what the environment already holds.
        out.append(Problem("pins", f"the environment's pins ({pins.path}) are not current: " + "; ".join(pins.stale),
                           f"backendpick install{flag}   # rewrites the pins"))
    return out


__all__ = ["METADATA", "PIP_CHECK", "Findings", "Scope", "findings"]
