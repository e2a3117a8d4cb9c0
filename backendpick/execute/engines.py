"""The installer that runs a plan's phases: pip (the default) or uv.

The plan is the value backendpick adds: the backend, where each package comes from, the phase
order, the pins. ``planner.make_plan`` writes it in pip's words; an engine turns each phase into the
argv and environment of its installer. The pip engine is the identity. The uv engine runs the
same phases as ``uv pip install --python <target>``:

* uv reads no pip.conf, so the user's pip settings that matter are passed explicitly: the
  package sources (index-url, extra-index-url, find-links, no-index) to every phase except the
  backend phase, which gets the backend index alone, exactly like the pip engine; certificate,
  proxy, trusted hosts and timeout to every phase;
* ``--no-config`` and the ``UV_*`` variables that choose sources cleared: the user's pip
  configuration is the one source of truth for both engines, so both build the same
  environment, and nothing (a ``UV_EXTRA_INDEX_URL``, a ``uv.toml`` index, ``UV_TORCH_BACKEND``)
  can add a source to the backend phase. uv's default index strategy (first-index: a package
  comes from the first index that has it) is the safe one and stays;
* a build phase that installs with ``--no-build-isolation`` runs with ``--no-cache``: uv
  caches wheels it built from an sdist by the sdist alone, so a flash-attn built against one
  torch would otherwise be served to an environment with another. (Source builds of known
  packages run ``pip wheel`` into backendpick's own torch-keyed wheel cache either way.)

uv keeps its own cache on otherwise: that is where its speed on a warm machine comes from.

Both engines keep credentials off the command line (indexes/credentials.py): an index or find-links URL
that holds them goes to pip as its ``PIP_*`` variable, to uv as a named index with
``UV_INDEX_<NAME>_USERNAME`` / ``_PASSWORD`` (or ``UV_FIND_LINKS``).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from backendpick import envvars
from backendpick.errors import ConfigError
from backendpick.indexes.credentials import PROVIDERS, pip_args, pip_lists, strip, uv_args

PIP, UV = "pip", "uv"
ENGINES = (PIP, UV)

# uv variables that choose where packages come from or how they are resolved: a uv phase never
# sees them (the plan and the user's pip configuration decide).
UV_SOURCE_VARS = (
    "UV_INDEX", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_NO_INDEX",
    "UV_INDEX_STRATEGY", "UV_TORCH_BACKEND", "UV_CONSTRAINT", "UV_OVERRIDE", "UV_BUILD_CONSTRAINT",
    "UV_CONFIG_FILE", "UV_NO_CONFIG", "UV_PRERELEASE", "UV_RESOLUTION", "UV_NO_BUILD_ISOLATION",
    "UV_NO_SOURCES", "UV_SYSTEM_PYTHON", "UV_PYTHON", "UV_EXCLUDE_NEWER", "UV_NO_BINARY", "UV_NO_BUILD",
    "UV_OFFLINE", "UV_INSECURE_HOST", "UV_PROJECT", "UV_WORKING_DIR",
)
# pip options of requirements files (inputs/requirements.py passes them on) in uv's words.
_RENAMED = {"--trusted-host": "--allow-insecure-host"}


def find_uv(env: Mapping[str, str]) -> Path | None:
    """``BACKENDPICK_UV``, else ``uv`` on PATH, else the one the ``uv`` package installed next to
    backendpick's interpreter (``pip install backendpick[uv]``)."""
    explicit = envvars.uv(env)
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("uv", path=env.get("PATH", os.defpath))
    if found:
        return Path(found)
    try:
        from uv import find_uv_bin  # the uv package on PyPI ships the binary and this helper

        path = Path(find_uv_bin())
        if path.is_file():
            return path
    except (ImportError, FileNotFoundError, OSError):
        pass
    for candidate in (Path(sys.prefix) / "bin" / "uv", Path(sys.prefix) / "Scripts" / "uv.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class Engine:
    name: str  # "pip" or "uv"
    uv: Path | None = None  # the uv executable (uv engine)

    def apply(self, plan, *, pip_config, user_env: Mapping[str, str]):
        """The plan with each phase in this engine's argv and environment."""
        if self.name == PIP:
            return replace(plan, phases=tuple(pip_phase(p, pip_config) for p in plan.phases))
        assert self.uv is not None
        phases = tuple(uv_phase(p, uv=str(self.uv), python=str(plan.python), pip_config=pip_config,
                                user_env=user_env) for p in plan.phases)
        return replace(plan, phases=phases, installer=UV)


def resolve(name: str, env: Mapping[str, str], source: str = "--installer") -> Engine:
    """The engine for a setting value; uv missing is a usage error (exit 2) with the fix."""
    if name == PIP:
        return Engine(PIP)
    if name != UV:
        raise ConfigError(f"installer from {source} must be \"pip\" or \"uv\", not {name!r}")
    uv = find_uv(env)
    if uv is None:
        where = f"{envvars.UV}={envvars.uv(env)} is not an executable" if envvars.uv(env) else \
            "no uv on PATH and no uv package next to backendpick"
        raise ConfigError(f"installer uv (from {source}) is not available: {where}",
                          hint="pip install 'backendpick[uv]' (or install uv on PATH), or use --installer pip")
    return Engine(UV, uv)


# -- the uv translation -----------------------------------------------------------------------------


def _split(argv: Sequence[str]) -> tuple[str, list[str]]:
    """pip's command and its arguments from ``<python> -m pip [--python T] <command> ...``."""
    i = list(argv).index("pip") + 1
    if argv[i] == "--python":
        i += 2
    return argv[i], list(argv[i + 1:])


def uv_options(options: Sequence[str]) -> list[str]:
    """pip install options (the plan's and a requirements file's) in uv's spelling."""
    out: list[str] = []
    for word in options:
        if word == "--pre":
            out += ["--prerelease", "allow"]
        elif word == "--prefer-binary":
            continue  # uv has no such preference; it takes a wheel whenever one fits
        elif word == "--no-cache-dir":
            if "--no-cache" not in out:  # pip's spelling; the build phase already has uv's
                out.append("--no-cache")
        else:
            out.append(_RENAMED.get(word, word))
    return out


def source_flags(pip_config, options: Sequence[str] = ()) -> list[str]:
    """The user's pip package sources (and configured constraints) as uv flags, for every phase
    but the backend phase.

    A requirements file's own ``--index-url`` (already in ``options``) wins, as with pip."""
    flags: list[str] = []
    if pip_config.get("no-index") and pip_config.get("no-index").lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    index = pip_config.get("index-url")
    if index and "--index-url" not in options and "-i" not in options:
        flags += ["--index-url", index]
    for url in pip_config.list("extra-index-url"):
        flags += ["--extra-index-url", url]
    for link in pip_config.list("find-links"):
        flags += ["--find-links", link]
    for path in pip_config.list("constraint"):  # pip applies a configured constraints file too
        flags += ["-c", path]
    return flags


def safety_flags(pip_config) -> list[str]:
    """Settings that are not sources and apply to every phase: trusted hosts, and keyring where
    pip's configuration asks for it (uv has the subprocess provider only; it needs the user name
    in the index URL, as pip's does)."""
    flags = [w for host in pip_config.trusted_hosts for w in ("--allow-insecure-host", host)]
    if (pip_config.get("keyring-provider") or "").lower() in PROVIDERS:
        flags += ["--keyring-provider", "subprocess"]
    return flags


def pip_phase(phase, pip_config):
    """A phase of the pip engine with every index or find-links URL that holds credentials moved
    from its argv to its environment (credentials.pip_args); ``plain_argv`` keeps the command
    for the shell export. A phase that reads no pip configuration (the backend phase) adds to
    nothing configured."""
    reads_config = phase.env.get("PIP_CONFIG_FILE") != os.devnull
    configured = pip_lists(pip_config) if reads_config else None
    argv, moved = pip_args(phase.argv, configured)
    base, moved_base = pip_args(phase.base_argv, configured) if phase.base_argv else ([], {})
    if not moved and not moved_base:
        return phase
    return replace(phase, argv=tuple(argv), base_argv=tuple(base), env={**phase.env, **moved_base, **moved},
                   plain_argv=tuple(strip(w) for w in (phase.base_argv or phase.argv)))


def uv_env(user_env: Mapping[str, str], pip_config) -> dict[str, str]:
    """The user's environment for uv: no ``UV_*`` source variables; pip's certificate, proxy and
    timeout in the variables uv reads."""
    env = {k: v for k, v in user_env.items() if k not in UV_SOURCE_VARS}
    if pip_config.cert:
        env["SSL_CERT_FILE"] = pip_config.cert
    client_cert = pip_config.get("client-cert")
    if client_cert:
        env["SSL_CLIENT_CERT"] = client_cert
    if pip_config.proxy:
        env["HTTP_PROXY"] = env["HTTPS_PROXY"] = pip_config.proxy
    if pip_config.get("default-timeout"):
        env["UV_HTTP_TIMEOUT"] = str(int(pip_config.timeout))
    return env


def uv_phase(phase, *, uv: str, python: str, pip_config, user_env: Mapping[str, str]):
    """One phase of the plan as a uv command (``plan.Phase`` in, ``plan.Phase`` out)."""
    from backendpick.model.plan import BACKEND, BUILD, env_delta

    command, args = _split(phase.argv)
    env, unset = env_delta(uv_env(user_env, pip_config), user_env)
    if command == "uninstall":
        names = [a for a in args if a != "-y"]  # uv never asks
        return replace(phase, argv=(uv, "pip", "uninstall", "--python", python, *names), env=env, unset=unset)
    n = len(phase.requirements)
    options, reqs = args[: len(args) - n], args[len(args) - n:]
    head = [uv, "pip", "install", "--python", python, "--no-config", *safety_flags(pip_config)]
    if phase.name != BACKEND:
        head += source_flags(pip_config, options)
    if phase.name == BUILD and phase.no_build_isolation and "--no-cache-dir" not in options:
        head.append("--no-cache")
    argv = (*head, *uv_options(options), *reqs)
    base: tuple = ()
    if phase.base_argv:  # the rest phase with the build phase's wheels folded in: its plain form too
        b_args = _split(phase.base_argv)[1]
        base = (*head, *uv_options(b_args[: len(b_args) - n]), *reqs)
    hidden, moved = uv_args(argv)
    hidden_base, moved_base = uv_args(base) if base else ([], {})
    if moved or moved_base:
        return replace(phase, argv=tuple(hidden), base_argv=tuple(hidden_base), env={**env, **moved_base, **moved},
                       unset=unset, plain_argv=tuple(strip(w) for w in (base or argv)))
    return replace(phase, argv=argv, base_argv=base, env=env, unset=unset)
