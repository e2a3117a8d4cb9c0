"""What the user asked for (``Request``), what the pipeline hands the commands (``Prepared``),
the request's fingerprint for the last install's record (``request_key``), and the request's own
checks."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backendpick.errors import ConfigError
from backendpick.inputs import config, pip_config as pipconf
from backendpick.model import environment, plan as plan_mod
from backendpick.model.choice import Decision
from backendpick.model.hardware import Hardware
from backendpick.model.names import normalize
from backendpick.selection.offers import Offers
from backendpick.target.installed_stack import InstalledStack


@dataclass(frozen=True)
class Request:
    """Everything the user said on the command line about what to install and where."""

    project_dir: Path = Path(".")
    requirements: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    editables: tuple[str, ...] = ()  # -e PATH or VCS URL, as pip -e
    extras: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    python: Path | None = None
    backend: str | None = None
    index_url: str | None = None
    cuda_compat: str | None = None
    extra_backend: tuple[str, ...] = field(default_factory=tuple)  # set by install's retry
    extra_build: tuple[str, ...] = field(default_factory=tuple)
    extra_recipe: tuple[str, ...] = field(default_factory=tuple)  # recipe packages a dependency pulled in
    reinstall: tuple[str, ...] = ()  # --reinstall: remove these first, then install them again
    installer: str | None = None  # --installer: pip or uv
    refresh: bool = False  # --refresh: ask the indexes even when the last install's record matches
    upgrade: bool = False  # -U: the newest torch (and packages) the machine and the request allow
    upgrade_packages: tuple[str, ...] = ()  # --upgrade-package NAME
    channel: str | None = None  # --channel stable|test|nightly
    pin_environment: bool | None = None  # --pin-environment / --no-pin-environment
    replace_conda: bool = False  # --replace-conda: pip may replace what conda installed (selection/stays.py)
    lock: Path | None = None  # --lock FILE: install exactly this lock file (planning/lock_plan.py)


@dataclass(frozen=True)
class Prepared:
    plan: plan_mod.Plan
    target: environment.Target
    settings: config.Settings
    hardware: Hardware
    decision: Decision
    pip_config: pipconf.PipConfig
    backend_env: dict
    user_env: dict
    request_key: str = ""  # lastrun: the request's fingerprint
    offers: Offers | None = None  # what the choice was made from
    client: object = None  # the run's client.IndexClient: its session downloads what the plan names
    stack: InstalledStack | None = None  # the look at the target the plan was made from
    basis: object = None  # the pipeline's inputs, which install's retry starts from (pipeline.again)


def check_reinstall(names, reqs, target: environment.Target, settings: config.Settings) -> None:
    """--reinstall NAME must be something this install installs: a requirement, or an installed
    backend or build package (which their phases install again). Anything else would be removed
    and never installed again, or ignored in silence."""
    requested = {normalize(r.name) for r in reqs}
    phased = set(settings.backend_packages) | set(settings.no_build_isolation)
    for name in names:
        key = normalize(name)
        if key in requested or (key in phased and target.get(key) is not None):
            continue
        where = "is not installed and not requested" if target.get(key) is None else "is not among the requirements"
        raise ConfigError(f"--reinstall {name}: {name} {where}, so this install would not install it again",
                          hint=f"name it as a requirement too (backendpick install {name} --reinstall {name})")


# Request fields the fingerprint leaves out, each with why. Every other field is in it, so a
# field added to Request is in it too (tests/unit/test_request_key.py changes each one).
NOT_IN_KEY = {
    # --refresh only says not to trust the record; the install it makes records under the key
    # a plain run computes, so the next plain run finds it.
    "refresh": "asks again; the record it writes serves the next plain run",
}


def request_key(req: Request, **inputs: Any) -> str:
    """The fingerprint of everything that decides which index is asked and what for: every
    field of ``req`` (but ``NOT_IN_KEY``) and the ``inputs`` derived from it (the settings, the
    requirements as read, the hardware, the interpreter, the constraints), each whole: a field
    added to those dataclasses is in the key without anyone listing it. URLs count without their
    user information: a new password is the same request."""
    from backendpick.state import last_install

    fields = {f.name: getattr(req, f.name) for f in dataclasses.fields(req) if f.name not in NOT_IN_KEY}
    return last_install.request_key(request=_plain(fields), **{k: _plain(v) for k, v in sorted(inputs.items())})


def _plain(value: Any) -> Any:
    """``value`` as JSON data, the same from one run to the next: dataclasses by field (a
    ``Setting`` by its value: where a setting came from does not change the request), mappings
    with sorted keys, paths and requirements as text, credentials out of every string."""
    from backendpick.inputs.config import Setting
    from backendpick.redaction import strip

    if isinstance(value, Setting):
        return _plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return strip(str(value))  # str, Path, Requirement, Backend, Version, ...
