"""What the last install chose, kept in the environment's state folder, so a re-run on an
environment that already matches asks no index at all.

The record holds the request's fingerprint (requirements, settings, hardware, interpreter), the
environment's fingerprint as the install left it (every distribution and version), the backend,
its index URL, the torch installed and the offers the choice was made from. ``prepare`` uses
the offers instead of asking the indexes only when both fingerprints match; any change to the
request or to the environment (a package installed by hand, a new driver) or ``--refresh``
makes it ask again. The file is replaced atomically: a crash leaves the old record or the new.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from backendpick.edges import paths
from backendpick.edges.durable import write_atomic
from backendpick.errors import ConfigError
from backendpick.model.backend import Backend
from backendpick.model.environment import Target
from backendpick.redaction import strip

FORMAT = 1


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def request_key(**parts: Any) -> str:
    """Fingerprint of everything that decides which index is asked and what it is asked for."""
    return _digest(parts)


def environment_key(target: Target) -> str:
    """Fingerprint of the environment: the interpreter and every installed distribution."""
    dists = sorted((n, d.version, d.direct_url or "") for n, d in target.installed.items())
    return _digest({"python": str(target.python), "version": list(target.version), "dists": dists})


def load(state: Path, request: str, environment: str) -> dict | None:
    """The record when it was written for this request and this environment, else None."""
    try:
        data = json.loads(paths.last_install(state).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if data.get("request") != request or data.get("environment") != environment:
        return None
    return data


def offers(record: dict) -> dict | None:
    """The recorded offers as {Backend: [Version]}; None when the record cannot be read."""
    try:
        return {Backend.parse(name): sorted(Version(v) for v in versions)
                for name, versions in record["offers"].items()}
    except (KeyError, TypeError, AttributeError, ConfigError, InvalidVersion):
        return None


def save(state: Path, *, request: str, environment: str, backend: Backend, index_url: str, torch: str | None,
         offers: dict, offers_source: str) -> None:
    """Write the record atomically (a temporary file in the same folder, then a rename)."""
    data = {
        "format": FORMAT,
        "request": request,
        "environment": environment,
        "backend": backend.name,
        "index_url": strip(index_url),
        "torch": torch,
        "offers": {b.name: [str(v) for v in vs] for b, vs in offers.items()},
        "offers_source": offers_source,
    }
    state.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.last_install(state), json.dumps(data, indent=1))
