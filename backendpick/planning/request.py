"""What the user asked for (``Request``), what the pipeline hands the commands (``Prepared``),
and the request's own checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backendpick.errors import ConfigError
from backendpick.inputs import config, pip_config as pipconf
from backendpick.model import environment, plan as plan_mod
from backendpick.model.choice import Decision
from backendpick.model.hardware import Hardware
from backendpick.model.names import normalize
from backendpick.selection.offers import Offers


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
