"""Every place backendpick writes to, in one module.

Two roots, one rule for both:

* the user's cache folder, ``cache_home``: ``~/Library/Caches/backendpick`` on macOS,
  ``%LOCALAPPDATA%\\backendpick\\Cache`` on Windows, else ``$XDG_CACHE_HOME/backendpick``
  (``~/.cache/backendpick`` without it), as pip and other tools place their caches. The wheel
  cache is its ``wheels`` folder unless ``BACKENDPICK_CACHE_DIR`` names another; index project
  pages are kept in its ``pages`` folder; the state of an environment backendpick cannot write
  into is its ``envs/<hash of the prefix>`` folder.
* the environment's state folder, ``state_dir``: ``<venv>/.backendpick`` inside a writable
  virtual environment (so it goes when the environment goes), else the cache's ``envs`` folder.
  The constraints file, logs, history, the copies kept for restore, lock and records of one
  environment live there.

The environment is passed in (``env``, a mapping); ``os.environ`` is read only as the default,
so tests and the CLI decide which variables count.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Mapping, Protocol

from backendpick import envvars

STATE_FOLDER = ".backendpick"


class Environment(Protocol):
    """What ``state_dir`` needs of a ``target.Target``. A protocol, not the class: target/inspection.py
    reaches this module through runner and lock, and a type import back would be a cycle."""

    prefix: Path
    is_venv: bool


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def cache_home(env: Mapping[str, str] | None = None) -> Path:
    """The user's cache folder for backendpick, by the platform's convention."""
    env = _env(env)
    home = Path(env.get("HOME") or Path.home())
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "backendpick"
    if sys.platform == "win32":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "backendpick" / "Cache"
    return Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "backendpick"


def wheel_cache(env: Mapping[str, str] | None = None) -> Path:
    """Where built wheels are kept: ``BACKENDPICK_CACHE_DIR``, else ``cache_home()/wheels``."""
    env = _env(env)
    return envvars.cache_dir(env) or cache_home(env) / "wheels"


def page_cache(env: Mapping[str, str] | None = None) -> Path:
    """Where index project pages are kept between runs (indexes/page_cache.py): ``cache_home()/pages``.
    Not under ``BACKENDPICK_CACHE_DIR``, which names the wheel cache alone."""
    return cache_home(env) / "pages"


def locked_files(env: Mapping[str, str] | None = None) -> Path:
    """Where the files of lock files are kept (``install --lock``): ``cache_home()/locked``, one
    folder per sha256, so a warm cache installs a lock offline."""
    return cache_home(env) / "locked"


def state_dir(target: Environment, env: Mapping[str, str] | None = None) -> Path:
    """Where backendpick keeps per-environment files (constraints, logs, history, lock).

    Inside the environment when it is a writable venv (removed with it); otherwise in the
    user's cache, keyed by the interpreter's prefix.
    """
    if target.is_venv and os.access(target.prefix, os.W_OK):
        return target.prefix / STATE_FOLDER
    return cache_home(env) / "envs" / hashlib.sha256(str(target.prefix).encode()).hexdigest()[:16]


# -- inside the state folder -----------------------------------------------------------------------


def constraints(state: Path) -> Path:
    """The constraints file every phase after the backend phase installs under."""
    return state / "constraints.txt"


def backend_constraints(state: Path) -> Path:
    """The constraints the backend phase installs under (the torch pins of the resolution)."""
    return state / "backend-constraints.txt"


def logs(state: Path) -> Path:
    """One log file per pip phase run."""
    return state / "logs"


def history(state: Path) -> Path:
    """The snapshots ``restore`` goes back to."""
    return state / "history"


def kept(state: Path) -> Path:
    """Copies of what installs and restores removed or replaced (state/kept_copies.py), one folder per identity."""
    return state / "kept"


def lock(state: Path) -> Path:
    """The file one install at a time holds."""
    return state / "lock"


def last_install(state: Path) -> Path:
    """What the last install was asked and installed (a re-run with nothing to do stops early)."""
    return state / "last-install.json"


def noop_record(state: Path) -> Path:
    """What the last re-run that found nothing to do printed, and the fingerprint of everything
    that decided it (state/noop.py): the next one answers from it before the machinery loads."""
    return state / "noop.json"


def detect_records(env: Mapping[str, str] | None = None) -> Path:
    """The folder of ``detect``'s answers, one per question asked (state/noop.py), each with the
    fingerprint of what decided it: the next one answers from it before the machinery loads. In
    the user's cache, not the environment's state folder: detect changes nothing in the
    environment, not even that."""
    return cache_home(env) / "detect"


def builds_record(state: Path) -> Path:
    """Which torch each build-phase package was built against."""
    return state / "builds.json"


def build_staging(state: Path) -> Path:
    """Where ``pip wheel`` writes source builds before they go into the wheel cache."""
    return state / "build"


def build_constraints(state: Path) -> Path:
    """The build-requirements phase's constraints: the stack fenced, the user's lines."""
    return state / "build-constraints.txt"


def build_env(state: Path) -> Path:
    """The build requirements of source builds (``pip install --target``), seen by the builds only."""
    return state / "build-env"


def downloads(state: Path) -> Path:
    """Files backendpick downloads for a phase (behind credentials the installer would not find;
    indexes/fetches.py), removed when install ends."""
    return state / "downloads"
