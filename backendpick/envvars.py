"""The ``BACKENDPICK_*`` environment variables: every name, its default and how its value is read,
in one module (issue 20). Everything else asks here; ``tests/unit/test_architecture.py`` keeps
the names out of other modules.

Each reader takes the environment as a mapping (``os.environ`` or a test's dict), so a command
reads the environment it was given, never this process's own behind its back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from backendpick.errors import ConfigError

# Settings: each stands for a ``[tool.backendpick]`` key and loses to its command-line flag
# (inputs/config.py merges them).
BACKEND = "BACKENDPICK_BACKEND"
INDEX_URL = "BACKENDPICK_INDEX_URL"
CUDA_COMPAT = "BACKENDPICK_CUDA_COMPAT"
INSTALLER = "BACKENDPICK_INSTALLER"
CHANNEL = "BACKENDPICK_CHANNEL"
PIN_ENVIRONMENT = "BACKENDPICK_PIN_ENVIRONMENT"

CACHE_DIR = "BACKENDPICK_CACHE_DIR"  # the wheel cache's folder (edges/paths.py)
UV = "BACKENDPICK_UV"  # an explicit uv executable (wins over PATH and the uv package)
LOCK_TIMEOUT = "BACKENDPICK_LOCK_TIMEOUT"  # seconds to wait for another backendpick
PROBE_ROOT = "BACKENDPICK_PROBE_ROOT"  # the root below which the probe reads /proc, /sys, /dev
PROBE_TIMEOUT = "BACKENDPICK_PROBE_TIMEOUT"  # seconds for each vendor tool the probe runs
DEBUG = "BACKENDPICK_DEBUG"  # a traceback instead of the one-line error

DEFAULT_LOCK_TIMEOUT = 900.0  # a flash-attn source build can hold the lock for a long time


def setting(env: Mapping[str, str], name: str) -> str | None:
    """The value of a settings variable (``BACKEND`` ... ``PIN_ENVIRONMENT``); None when it is
    unset or empty, so an empty variable leaves the choice to pyproject.toml."""
    return env.get(name) or None


def cache_dir(env: Mapping[str, str]) -> Path | None:
    """``BACKENDPICK_CACHE_DIR`` with ``~`` expanded; None when unset or empty."""
    value = env.get(CACHE_DIR)
    return Path(value).expanduser() if value else None


def uv(env: Mapping[str, str]) -> str | None:
    """``BACKENDPICK_UV``: the uv executable the user named; None when unset or empty."""
    return env.get(UV) or None


def probe_root(env: Mapping[str, str]) -> Path:
    """``BACKENDPICK_PROBE_ROOT`` (tests point it at a fake machine), else ``/``."""
    return Path(env.get(PROBE_ROOT) or "/")


def probe_timeout(env: Mapping[str, str], default: float) -> float:
    """``BACKENDPICK_PROBE_TIMEOUT`` in seconds, at least 0.1; ``default`` when unset or not a
    number (a probe never fails over its own timeout)."""
    raw = env.get(PROBE_TIMEOUT)
    if raw:
        try:
            return max(0.1, float(raw))
        except ValueError:
            pass
    return default


def lock_timeout(env: Mapping[str, str]) -> float:
    """``BACKENDPICK_LOCK_TIMEOUT`` in seconds; a value that is not a number is an error, never the
    default in silence (a CI job that meant 10 would otherwise wait 15 minutes)."""
    raw = env.get(LOCK_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also rejects nan
        raise ConfigError(f"{LOCK_TIMEOUT}={raw!r} is not a number of seconds",
                          hint="set it to seconds to wait for another backendpick, e.g. 600, or unset it")
    return value


def debug(env: Mapping[str, str]) -> bool:
    """``BACKENDPICK_DEBUG`` set to anything: errors raise with their traceback."""
    return bool(env.get(DEBUG))
