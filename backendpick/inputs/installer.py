"""Which installer runs the phases: pip (the default) or uv, and where uv is.

The setting (``--installer``, ``BACKENDPICK_INSTALLER``, ``[tool.backendpick] installer``) is read
by ``inputs/config.py``; this module finds the executable, so asking for uv where there is none
is a usage error at once, before any look-up. The engines (``execute/engines.py``) render the
plan's phases for it.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from backendpick import envvars
from backendpick.errors import ConfigError

PIP, UV = "pip", "uv"
INSTALLERS = (PIP, UV)


@dataclass(frozen=True)
class Installer:
    name: str  # "pip" or "uv"
    uv: Path | None = None  # the uv executable (uv)


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


def resolve(name: str, env: Mapping[str, str], source: str = "--installer") -> Installer:
    """The installer for a setting value; uv missing is a usage error (exit 2) with the fix."""
    if name == PIP:
        return Installer(PIP)
    if name != UV:
        raise ConfigError(f"installer from {source} must be \"pip\" or \"uv\", not {name!r}")
    uv = find_uv(env)
    if uv is None:
        where = f"{envvars.UV}={envvars.uv(env)} is not an executable" if envvars.uv(env) else \
            "no uv on PATH and no uv package next to backendpick"
        raise ConfigError(f"installer uv (from {source}) is not available: {where}",
                          hint="pip install 'backendpick[uv]' (or install uv on PATH), or use --installer pip")
    return Installer(UV, uv)


def found(name: str, env: Mapping[str, str]) -> Installer | None:
    """The installer for a setting value where it is there, else None (detect: nothing is
    installed, so a missing uv is no error; pip resolves then)."""
    uv = find_uv(env) if name == UV else None
    return Installer(UV, uv) if uv is not None else None
