"""The engines: a plan's phases (intents, model/plan.py) rendered to one installer's argv and
environment, in one place, for everything that runs or shows a command: install, restore,
``--dry-run``, ``plan``, ``--json`` and the shell export.

The plan says what each phase does: its requirements and where they come from, its constraints
file, its switches. ``Renderer.command`` spells it for pip or for uv; nothing else builds or
edits a command line. The uv engine runs the same phases as ``uv pip install --python <target>``:

* uv reads no pip.conf, so the user's pip settings that matter are passed explicitly: the
  package sources (index-url, extra-index-url, find-links, no-index) to every phase that reads
  the user's configuration; the backend phase gets the backend index alone, exactly like the pip
  engine; certificate, proxy, trusted hosts and timeout to every phase;
* ``--no-config`` and the ``UV_*`` variables that choose sources cleared: the user's pip
  configuration is the one source of truth for both engines, so both build the same
  environment, and nothing (a ``UV_EXTRA_INDEX_URL``, a ``uv.toml`` index, ``UV_TORCH_BACKEND``)
  can add a source to the backend phase. uv's default index strategy (first-index: a package
  comes from the first index that has it) is the safe one and stays;
* a phase that installs with no build isolation runs with ``--no-cache``: uv caches wheels it
  built from an sdist by the sdist alone, so a flash-attn built against one torch would otherwise
  be served to an environment with another;
* a source build of a known package (flash-attn and friends) is ``uv build --wheel
  --no-build-isolation --no-cache`` of its sdist (``Renderer.build_command``; uv builds a file,
  not a requirement, so backendpick finds and downloads the sdist, build/sdists.py) with the
  target interpreter, where pip runs ``pip wheel``; both write into backendpick's own torch-keyed
  wheel cache. With uv no pip process runs at all (issue 22 item 3).

uv keeps its own cache on otherwise: that is where its speed on a warm machine comes from.

Both engines keep credentials off the command line (indexes/credentials.py): an index or find-links URL
that holds them goes to pip as its ``PIP_*`` variable, to uv as a named index with
``UV_INDEX_<NAME>_USERNAME`` / ``_PASSWORD`` (or ``UV_FIND_LINKS``); the shell export asks for
the command with them in place (``hide=False``) and writes the URLs without user information.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from backendpick.indexes.credentials import pip_args, pip_lists, uv_args
from backendpick.indexes.uv_flags import UV_SOURCE_VARS, safety_flags, source_flags, uv_env, uv_options
from backendpick.inputs.installer import PIP, UV
from backendpick.inputs.pip_config import PipConfig, backend_phase_env
from backendpick.model.plan import (
    BACKEND_INDEX,
    CLEAR,
    OFFLINE,
    SOURCE,
    UNINSTALL,
    USER,
    BuildStep,
    Phase,
    Plan,
    env_delta,
    pip_argv,
)
from backendpick.redaction import redact, redact_var

__all__ = ["Command", "PIP", "Renderer", "UV", "UV_SOURCE_VARS", "for_plan", "for_target", "uv_options"]

# A killed pip's half-installed distributions (restore): their folders removed by a small program.
_RMTREE = "import shutil, sys\nfor p in sys.argv[1:]:\n    shutil.rmtree(p)"


@dataclass(frozen=True)
class Command:
    """One process: its argv and what it sets and unsets in the user's environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def line(self) -> str:
        """The command as a shell line, credentials hidden: what --dry-run prints."""
        words = [f"{k}={shlex.quote(redact_var(k, v))}" for k, v in sorted(self.env.items())]
        prefix = (["env"] + [f"-u {k}" for k in self.unset] + words) if (words or self.unset) else []
        return " ".join(prefix + [shlex.quote(redact(a)) for a in self.argv])

    def environ(self, user_env: Mapping[str, str]) -> dict:
        """The environment it runs in: the user's, less what it unsets, plus its own variables;
        pip never waits for input (a Dockerfile RUN has no one to answer)."""
        env = {k: v for k, v in user_env.items() if k not in self.unset}
        env.update(self.env)
        env.setdefault("PIP_NO_INPUT", "1")
        return env


@dataclass(frozen=True)
class Renderer:
    """Renders phases for one installer, one target, one user's pip configuration and environment."""

    installer: str  # PIP or UV
    python: str  # the target interpreter
    pip: tuple[str, ...]  # how pip runs for the target (plan.pip_argv)
    pip_config: PipConfig = field(default_factory=PipConfig)
    user_env: Mapping[str, str] = field(default_factory=dict)
    prefix: Path | None = None  # the target's prefix: where backendpick's environment pins live
    uv: str | None = None
    runner_python: str = sys.executable

    # -- one phase, one command ------------------------------------------------------------------

    def command(self, phase: Phase, *, folded: bool = True, hide: bool = True) -> Command:
        """The phase as one command. ``folded``: with the build phase's wheels it installs
        (``Phase.wheels``); ``hide``: credentials moved off the command line into its
        environment (what runs); without, in place (the shell export strips them)."""
        if phase.action == CLEAR:
            return Command((self.runner_python, "-c", _RMTREE, *phase.folders))
        if self.installer == UV:
            return self._uv(phase, folded, hide)
        env, unset = self._pip_env(phase)
        if phase.action == UNINSTALL:
            return Command((*self.pip, "uninstall", "-y", *phase.requirements), env, unset)
        argv = (*self.pip, "install", *self._options(phase, folded, uv=False), *self._installs(phase, folded))
        if not hide:
            return Command(argv, env, unset)
        # A phase that reads no pip configuration (the backend phase) adds to nothing configured.
        argv, moved = pip_args(argv, pip_lists(self.pip_config) if phase.source == USER else None)
        return Command(tuple(argv), {**env, **moved}, unset)

    def build_command(self, phase: Phase, step: BuildStep, *, hide: bool = True) -> Command:
        """One source build of the build phase: ``pip wheel``, or ``uv build`` with uv.

        ``--no-cache-dir``: pip caches a wheel it built from an sdist with a known hash (every
        PyPI sdist) and hands it back on the next build whatever torch is installed now; this
        build must compile against the torch that is there. ``--no-binary``: a wheel of the
        package on the index or in a find-links folder is not a build against this torch either.
        Both only for the build phase: every other pip run keeps the user's cache."""
        if self.installer == UV:
            return self._uv_build(step, hide)
        env, unset = self._pip_env(phase)
        cons = ["-c", phase.constraints_file] if phase.constraints_file else []
        # An offline phase (a lock's locked sdist) reads no index, as its install does.
        offline = ["--no-index"] if phase.source == OFFLINE else []
        argv = (*self.pip, "wheel", "--no-cache-dir", "--no-build-isolation", *cons, *offline, *phase.options,
                "--no-binary", step.name, "--no-deps", "-w", str(step.wheel_dir), str(step.build_requirement))
        moved: dict = {}
        if hide:
            argv, moved = pip_args(argv, pip_lists(self.pip_config))
        return Command(tuple(argv), {**env, **moved, **step.build_env}, unset)

    def shown(self, phase: Phase) -> str:
        """What --dry-run and ``plan`` print for a phase: its commands, one per line, after ``#``
        notes (a download first, a phase run alongside another, why each build wheel comes from
        where it does); a build phase prints ``pip wheel`` (``uv build`` after the download of
        its sdist, with uv) for each source build, then its install."""
        lines = [f"# downloaded first by backendpick (the server wants credentials): {redact(url)} -> {path}"
                 for url, path in phase.downloads]
        if not phase.steps:
            if phase.alongside:
                lines.append(f"# runs alongside the {phase.alongside} phase")
            return "\n".join([*lines, self.command(phase).line()])
        lines += [f"# {redact(s.note)}" for s in phase.steps if s.note]
        lines += [f"# downloaded first by backendpick (uv build takes a file): {redact(s.sdist)} -> {s.sdist_file}"
                  for s in phase.steps if s.how == SOURCE and s.sdist and s.sdist != s.sdist_file]
        lines += [self.build_command(phase, s).line() for s in phase.steps if s.how == SOURCE and s.build_requirement]
        if phase.deferred:
            lines.append(f"# the wheels are installed by the rest phase's {self.installer} run")
        else:
            lines.append(self.command(phase).line())
        return "\n".join(lines)

    def phase_json(self, phase: Phase) -> dict:
        """A phase's JSON: its intent (``Phase.to_json``) with the command and argv it runs."""
        data = phase.to_json()
        data["command"] = self.shown(phase)
        data["argv"] = [redact(a) for a in self.command(phase).argv]
        for step, shown in zip(phase.steps, data.get("builds", ())):
            shown["build_argv"] = [redact(a) for a in self.build_command(phase, step).argv] \
                if step.how == SOURCE and step.build_requirement else []
        return data

    def step_json(self, phase: Phase, step: BuildStep) -> dict:
        """A build step's JSON as install reports it, with its ``pip wheel`` argv."""
        data = step.to_json()
        data["build_argv"] = [redact(a) for a in self.build_command(phase, step).argv] \
            if step.how == SOURCE and step.build_requirement else []
        return data

    def compile_command(self, phase: Phase, requirements_file: str, out: str) -> Command:
        """``uv pip compile`` of an install phase (uv only): the question ``uv pip install`` of
        the phase answers, with the same sources and switches, for a lock (issue 22 item 3,
        execute/lock_resolve.py): the requirements read from ``requirements_file``, uv's PEP 751
        lock written to ``out``. Nothing is installed; ``--target`` has no meaning there."""
        return self._uv(replace(phase, target_dir=None), True, True, verb="compile",
                        installs=("--quiet", "--format", "pylock.toml", "-o", out, requirements_file))

    # -- the parts ---------------------------------------------------------------------------------

    def _pip_env(self, phase: Phase) -> tuple[dict, tuple[str, ...]]:
        """What pip's environment changes for a phase's source."""
        if phase.source == BACKEND_INDEX:
            # The user's pip settings minus every package source (PIP_CONFIG_FILE=/dev/null, the
            # other settings back as variables).
            return env_delta(backend_phase_env(self.user_env, self.pip_config), self.user_env)
        if phase.source == OFFLINE:
            # Not a byte of the user's pip configuration: the wheels are here, their hashes known.
            isolated = {k: v for k, v in self.user_env.items() if not k.startswith("PIP_")}
            isolated["PIP_CONFIG_FILE"] = os.devnull
            return env_delta(isolated, self.user_env)
        if phase.action == UNINSTALL or self.prefix is None:
            return {}, ()
        # backendpick's own runs are not blocked by the pins it left in the environment
        # (state/environment_pins.py): PIP_CONSTRAINT with the user's own constraints.
        from backendpick.state.environment_pins import own_runs_env

        return dict(own_runs_env(self.user_env, self.prefix, self.pip_config)), ()

    def _options(self, phase: Phase, folded: bool, *, uv: bool) -> list[str]:
        """A phase's switches and sources in the installer's words, in one order for every phase."""
        words: list[str] = []
        if phase.target_dir:
            words += ["--target", phase.target_dir]
        if phase.upgrade:
            words.append("--upgrade")
        if phase.pre:
            words += ["--prerelease", "allow"] if uv else ["--pre"]
        if phase.no_cache or (uv and phase.no_build_isolation):
            words.append("--no-cache" if uv else "--no-cache-dir")
        if phase.no_build_isolation:
            words.append("--no-build-isolation")
        if phase.constraints_file:
            words += ["-c", phase.constraints_file]
        if phase.source == OFFLINE:
            words.append("--no-index")
        elif phase.source == BACKEND_INDEX and phase.index_url:
            words += ["--index-url", phase.index_url]
        words += uv_options(phase.options) if uv else list(phase.options)
        if folded or phase.steps:
            for link in phase.find_links:
                words += ["-f", link]
            if folded and phase.only_binary:
                words += ["--only-binary", ",".join(phase.only_binary)]
        if phase.no_deps:
            words.append("--no-deps")
        return words

    @staticmethod
    def _installs(phase: Phase, folded: bool) -> list[str]:
        if phase.steps:
            return [s.install_requirement() for s in phase.steps]
        wheels = [s.install_requirement() for s in phase.wheels] if folded else []
        return wheels + (["-r", phase.hashed_file] if phase.hashed_file else list(phase.requirements))

    def _uv_build(self, step: BuildStep, hide: bool) -> Command:
        """``uv build`` of the step's sdist file with the target interpreter, without isolation
        (the build imports the installed torch; its tools come on ``PYTHONPATH``, the step's
        build_env) and without uv's cache (a wheel built against another torch); no index is
        read, so none of the user's sources is needed, only uv's certificate and proxy.
        ``--no-create-gitignore``: the output folder holds the wheel alone."""
        assert self.uv is not None
        env, unset = env_delta(uv_env(self.user_env, self.pip_config), self.user_env)
        sdist = step.sdist_file or f"<sdist of {step.build_requirement}: none found>"
        argv = (self.uv, "build", "--no-config", "--python", self.python, "--wheel", "--no-build-isolation",
                "--no-cache", "--no-create-gitignore", "--out-dir", str(step.wheel_dir), sdist)
        moved: dict = {}
        if hide:
            hidden, moved = uv_args(argv)
            argv = tuple(hidden)
        return Command(tuple(argv), {**env, **moved, **step.build_env}, unset)

    def _uv(self, phase: Phase, folded: bool, hide: bool, *, verb: str = "install",
            installs: Sequence[str] | None = None) -> Command:
        """One phase as a uv command."""
        assert self.uv is not None
        env, unset = env_delta(uv_env(self.user_env, self.pip_config), self.user_env)
        if phase.action == UNINSTALL:  # uv never asks
            return Command((self.uv, "pip", "uninstall", "--python", self.python, *phase.requirements), env, unset)
        head = [self.uv, "pip", verb, "--python", self.python, "--no-config", *safety_flags(self.pip_config)]
        if phase.source == USER:
            head += source_flags(self.pip_config, phase.options)
        words = self._installs(phase, folded) if installs is None else list(installs)
        argv = (*head, *self._options(phase, folded, uv=True), *words)
        if not hide:
            return Command(argv, env, unset)
        hidden, moved = uv_args(argv)
        return Command(tuple(hidden), {**env, **moved}, unset)


def for_plan(plan: Plan, *, pip_config: PipConfig | None = None, user_env: Mapping[str, str] | None = None,
             prefix: Path | None = None) -> Renderer:
    """The renderer of a plan's phases: its installer, its target, the user's pip configuration
    and environment (``prefix``: the target's, for backendpick's own environment pins)."""
    return Renderer(plan.installer, str(plan.python), plan.pip or (str(plan.python), "-m", "pip"),
                    pip_config if pip_config is not None else PipConfig(), dict(user_env or {}), prefix, plan.uv)


def for_prepared(prepared) -> Renderer:
    """The renderer of a prepared plan (planning/request.py ``Prepared``)."""
    return for_plan(prepared.plan, pip_config=prepared.pip_config, user_env=prepared.user_env,
                    prefix=prepared.target.prefix)


def for_target(target, pip_config: PipConfig, user_env: Mapping[str, str], installer=None) -> Renderer:
    """The renderer for phases run in ``target`` outside a plan (restore): pip's, or uv's for
    ``installer`` uv (inputs/installer.py)."""
    uv = str(installer.uv) if installer is not None and installer.name == UV else None
    return Renderer(UV if uv else PIP, str(target.python), tuple(pip_argv(target, sys.executable)), pip_config,
                    dict(user_env), target.prefix, uv)
