"""Settings, merged in one place: command-line flag > environment > ``[tool.backendpick]`` > defaults.

Every key is validated here, so a typo in pyproject.toml is one clear line with a suggestion,
never a traceback or a silently ignored setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from backendpick import envvars
from backendpick.errors import ConfigError
from backendpick.inputs.settings_schema import validate
from backendpick.knowledge.facts import Facts
from backendpick.model.backend import Backend
from backendpick.model.names import normalize
from backendpick.redaction import redact

CHANNELS = ("stable", "test", "nightly")

GITHUB_SOURCE = "github"  # in a prebuilt list: the project's own GitHub release downloads


def _load_toml(path: Path) -> dict:
    from backendpick.knowledge.facts import read_toml

    try:
        return read_toml(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


@dataclass(frozen=True)
class Pyproject:
    path: Path | None  # None: the project has no pyproject.toml
    data: dict = field(default_factory=dict)

    @property
    def tool(self) -> dict:
        return self.data.get("tool", {}).get("backendpick", {})

    @property
    def project(self) -> dict:
        return self.data.get("project", {})


def read_pyproject(project_dir: Path) -> Pyproject:
    path = project_dir / "pyproject.toml"
    if not path.is_file():
        if not project_dir.is_dir():
            raise ConfigError(f"project directory {project_dir} does not exist")
        return Pyproject(None)
    data = _load_toml(path)
    if not isinstance(data.get("tool", {}), dict):
        raise ConfigError(f"{path}: [tool] must be a table")
    tool = data.get("tool", {}).get("backendpick", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{path}: [tool.backendpick] must be a table")
    validate(tool, path)
    return Pyproject(path, data)


@dataclass(frozen=True)
class Setting:
    """A value and who set it, so output can say which source decided."""

    value: Any
    source: str


@dataclass(frozen=True)
class BuildSettings:
    """``[tool.backendpick.build]``: how the source builds of the BUILD phase run (parallel jobs, GPU
    arch list, extra environment, post-build checks). Environment variables win over these."""

    max_jobs: int | None = None
    arch_list: str | None = None
    env: dict = field(default_factory=dict)
    checks: bool = True


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    pyproject: Pyproject
    backend: Setting  # "auto" or a backend name, as given
    index_url: Setting
    cuda_compat: Setting
    backend_packages: tuple[str, ...]
    no_build_isolation: dict  # normalized name -> build requirements
    trusted_hosts: tuple[str, ...] = ()
    # normalized name -> prebuilt wheel sources in order (configured ones only; the default
    # "github" applies to packages not named here)
    prebuilt: dict = field(default_factory=dict)
    build: BuildSettings = field(default_factory=BuildSettings)
    chosen_backend: Backend | None = None  # ``backend`` parsed once; None: auto (detect)
    # normalized name -> recipes.Recipe tuple: the shipped ones with [tool.backendpick.packages]
    recipes: dict = field(default_factory=dict)
    mirrors: tuple = ()  # (prefix, replacement) pairs
    installer: Setting = Setting("pip", "default")
    # PyTorch's release channel: which folder of the index the backend packages come from.
    channel: Setting = field(default_factory=lambda: Setting("stable", "default"))
    # Whether install leaves the stack's pins in the environment's pip.conf (state/environment_pins.py).
    pin_environment: Setting = field(default_factory=lambda: Setting(True, "default"))
    # [tool.backendpick] lock: the lock file install takes by default ({backend} filled), or None.
    lock: Setting = field(default_factory=lambda: Setting(None, "default"))


def _pick(flag: Any, env: Mapping[str, str], env_key: str, tool: Mapping, key: str, default: Any,
          pyproject: Path | None) -> Setting:
    if flag is not None:
        return Setting(flag, f"--{key}")
    value = envvars.setting(env, env_key)
    if value is not None:
        return Setting(value, env_key)
    if key in tool:
        return Setting(tool[key], f"{pyproject.name if pyproject else 'pyproject.toml'} [tool.backendpick]")
    return Setting(default, "default")


def load(
    facts: Facts,
    *,
    project_dir: Path,
    backend: str | None = None,
    index_url: str | None = None,
    cuda_compat: str | None = None,
    env: Mapping[str, str] | None = None,
    installer: str | None = None,
    channel: str | None = None,
    pin_environment: bool | None = None,
) -> Settings:
    """The settings for ``project_dir``: each from the CLI, else the environment, else
    ``[tool.backendpick]``, else the default, with where it came from; a wrong one is a ConfigError."""
    env = os.environ if env is None else env
    pyproject = read_pyproject(project_dir)
    tool = pyproject.tool
    backend_s = _pick(backend, env, envvars.BACKEND, tool, "backend", "auto", pyproject.path)
    chosen = _parse_backend(backend_s, facts)
    trusted = tuple(tool.get("trusted-hosts", ()))
    mirrors = tuple((str(k), str(v)) for k, v in tool.get("mirrors", {}).items())
    index_s = _load_index_url(index_url, env, tool, facts, pyproject, trusted, mirrors)
    compat_s, installer_s, channel_s, pin_s = _load_choices(cuda_compat, installer, channel, pin_environment,
                                                            env, tool, pyproject)

    packages = tuple(tool.get("backend-packages", facts.backend_packages)) + tuple(tool.get("extra-backend-packages", ()))
    from backendpick.knowledge import recipes as recipes_mod

    recipes = recipes_mod.merged(tool.get("packages", {}), pyproject.path.name if pyproject.path else "pyproject.toml")
    nbi = _load_no_build_isolation(tool, facts, recipes)
    prebuilt = _load_prebuilt(tool, recipes, nbi, trusted)
    raw_build = tool.get("build", {})
    build = BuildSettings(
        max_jobs=raw_build.get("max-jobs"),
        arch_list=raw_build.get("arch-list"),
        env=dict(raw_build.get("env", {})),
        checks=raw_build.get("checks", True),
    )
    return Settings(
        project_dir=project_dir,
        pyproject=pyproject,
        backend=backend_s,
        index_url=index_s,
        cuda_compat=compat_s,
        backend_packages=tuple(dict.fromkeys(normalize(p) for p in packages)),
        no_build_isolation=nbi,
        trusted_hosts=trusted,
        prebuilt=prebuilt,
        build=build,
        chosen_backend=chosen,
        recipes=recipes,
        mirrors=mirrors,
        installer=installer_s,
        channel=channel_s,
        pin_environment=pin_s,
        lock=_pick(None, {}, "", tool, "lock", None, pyproject.path),
    )


def _load_index_url(index_url: str | None, env: Mapping[str, str], tool: Mapping, facts: Facts,
                    pyproject: Pyproject, trusted: tuple, mirrors: tuple) -> Setting:
    """The backend index template, through the mirrors, checked for its placeholder and scheme."""
    index_s = _pick(index_url, env, envvars.INDEX_URL, tool, "index-url", facts.default_index_url, pyproject.path)
    if "{backend}" not in index_s.value:
        raise ConfigError(
            f"index URL from {index_s.source} has no {{backend}} placeholder: {redact(index_s.value)}",
            hint="write it as a template, e.g. https://mirror.example/pytorch/{backend}",
        )
    for prefix, replacement in mirrors:
        host = urlsplit(replacement).hostname or ""
        if replacement.startswith("http://") and host not in _LOCAL_HOSTS and host not in trusted:
            raise ConfigError(f"tool.backendpick.mirrors maps {redact(prefix)} to plain http: {redact(replacement)}",
                              hint=f"use https, or add \"{host}\" to tool.backendpick.trusted-hosts if you trust that network")
    if mirrors:
        from backendpick.knowledge.recipes import mirror

        index_s = Setting(mirror(index_s.value, mirrors), index_s.source)
    _check_index_scheme(index_s, trusted)
    return index_s


def _load_choices(cuda_compat: str | None, installer: str | None, channel: str | None,
                  pin_environment: bool | None, env: Mapping[str, str], tool: Mapping,
                  pyproject: Pyproject) -> tuple[Setting, Setting, Setting, Setting]:
    """cuda-compat, installer, channel and pin-environment, each checked against what it may be."""
    compat_s = _pick(cuda_compat, env, envvars.CUDA_COMPAT, tool, "cuda-compat", "strict", pyproject.path)
    if compat_s.value not in ("strict", "minor"):
        raise ConfigError(f"cuda-compat from {compat_s.source} must be \"strict\" or \"minor\", not {compat_s.value!r}")

    installer_s = _pick(installer, env, envvars.INSTALLER, tool, "installer", "pip", pyproject.path)
    if installer_s.value not in ("pip", "uv"):
        raise ConfigError(f"installer from {installer_s.source} must be \"pip\" or \"uv\", not {installer_s.value!r}")
    channel_s = _pick(channel, env, envvars.CHANNEL, tool, "channel", "stable", pyproject.path)
    if channel_s.value not in CHANNELS:
        raise ConfigError(f"channel from {channel_s.source} must be one of {', '.join(CHANNELS)}, not {channel_s.value!r}")
    pin_s = _pick(pin_environment, env, envvars.PIN_ENVIRONMENT, tool, "pin-environment", True, pyproject.path)
    if isinstance(pin_s.value, str):
        if pin_s.value.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{envvars.PIN_ENVIRONMENT} must be true or false, not {pin_s.value!r}")
        pin_s = Setting(pin_s.value.strip().lower() in ("1", "true", "yes"), pin_s.source)
    return compat_s, installer_s, channel_s, pin_s


def _load_no_build_isolation(tool: Mapping, facts: Facts, recipes: Mapping) -> dict[str, tuple]:
    """The packages built without build isolation, each with its build requirements."""
    nbi_names = tool.get("no-build-isolation", list(facts.no_build_isolation))
    build_reqs = {normalize(k): tuple(v) for k, v in tool.get("build-requirements", {}).items()}
    nbi = {}
    for name in nbi_names:
        key = normalize(name)
        nbi[key] = build_reqs.get(key, facts.no_build_isolation.get(key, facts.setuptools_fallback))
    user_recipes = {normalize(k) for k in tool.get("packages", {})}
    for name, rows in recipes.items():
        # A build recipe joins no-build-isolation; a user-set list replaces the shipped recipes' names.
        rows = [r for r in rows if r.build is not None or r.prebuilt is not None]
        if rows and name not in nbi and (name in user_recipes or "no-build-isolation" not in tool):
            nbi[name] = build_reqs.get(name, rows[-1].build or facts.no_build_isolation.get(name, facts.setuptools_fallback))
    unused = set(build_reqs) - set(nbi)
    if unused:
        raise ConfigError(
            f"tool.backendpick.build-requirements names {', '.join(sorted(unused))}, "
            "which is not in no-build-isolation",
            hint="add it to no-build-isolation, or remove its build-requirements",
        )
    return nbi


def _load_prebuilt(tool: Mapping, recipes: Mapping, nbi: Mapping, trusted: tuple) -> dict[str, tuple]:
    """The prebuilt wheel sources per build package, from the settings and the recipes."""
    prebuilt = {normalize(k): tuple(v) for k, v in tool.get("prebuilt", {}).items()}
    for name, rows in recipes.items():
        # The recipe key `prebuilt` is [tool.backendpick.prebuilt] for that package.
        if rows[-1].prebuilt is not None and name not in prebuilt:
            prebuilt[name] = rows[-1].prebuilt
    unknown = set(prebuilt) - set(nbi)
    if unknown:
        raise ConfigError(
            f"tool.backendpick.prebuilt names {', '.join(sorted(unknown))}, which is not in no-build-isolation",
            hint="prebuilt wheels are looked up for the packages built after torch; add it to no-build-isolation",
        )
    for name, sources in prebuilt.items():
        for source in sources:
            if source.startswith("http://"):
                host = urlsplit(source.replace("{filename}", "f").replace("{version}", "v")).hostname or ""
                if host not in _LOCAL_HOSTS and host not in trusted:
                    # A binary wheel over plain http is as dangerous as a plain-http index.
                    raise ConfigError(
                        f"tool.backendpick.prebuilt.{name} uses plain http: {redact(source)}",
                        hint=f"use https, or add \"{host}\" to tool.backendpick.trusted-hosts if you trust that network",
                    )
    return prebuilt


def _parse_backend(s: Setting, facts: Facts) -> Backend | None:
    """The backend a setting names, None for auto; a wrong name says where it came from.

    Exactly as its index is named (``cu124``): ``CU124`` or ``cu12.4`` would be a guess about
    what the user meant, so it is an error that says what to write."""
    from backendpick.model.backend import suggest

    if not isinstance(s.value, str):
        raise ConfigError(f"backend from {s.source} must be a string, not {type(s.value).__name__}")
    if s.value.strip().lower() == "auto":
        return None
    try:
        parsed = Backend.parse(s.value)
    except ConfigError as exc:
        hint = suggest(s.value, facts.all_backends()) or exc.hint
        raise ConfigError(f"{exc.message} (from {s.source})", hint=hint) from None
    if parsed.name != s.value:
        raise ConfigError(f"'{s.value}' is not a backend name (from {s.source})", hint=f"did you mean {parsed.name}?")
    return parsed


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _check_index_scheme(s: Setting, trusted: tuple[str, ...]) -> None:
    parts = urlsplit(s.value.replace("{backend}", "cpu"))
    if parts.scheme not in ("http", "https", "file"):
        raise ConfigError(f"index URL from {s.source} must be http(s) or file, not {redact(s.value)}")
    if parts.scheme == "http" and (parts.hostname or "") not in _LOCAL_HOSTS and parts.hostname not in trusted:
        raise ConfigError(
            f"index URL from {s.source} uses plain http: {redact(s.value)}",
            hint=f"use https, or add \"{parts.hostname}\" to tool.backendpick.trusted-hosts if you trust that network",
        )
