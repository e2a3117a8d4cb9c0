"""Settings, merged in one place: command-line flag > environment > ``[tool.backendpick]`` > defaults.

Every key is validated here, so a typo in pyproject.toml is one clear line with a suggestion,
never a traceback or a silently ignored setting.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from backendpick.errors import ConfigError
from backendpick.facts import Facts

ENV_BACKEND = "BACKENDPICK_BACKEND"
ENV_INDEX_URL = "BACKENDPICK_INDEX_URL"
ENV_CUDA_COMPAT = "BACKENDPICK_CUDA_COMPAT"

# key -> (expected type, description). The README's settings table documents the same keys.
KEYS: dict[str, tuple[type, str]] = {
    "backend": (str, '"auto" or a backend name such as cu124, rocm6.2.4, xpu, cpu'),
    "index-url": (str, "backend index URL template containing {backend}"),
    "backend-packages": (list, "packages that come only from the backend index (replaces the default list)"),
    "extra-backend-packages": (list, "packages added to the default backend-packages"),
    "no-build-isolation": (list, "packages built with --no-build-isolation after torch (replaces the default list)"),
    "build-requirements": (dict, "package -> requirements installed before its no-build-isolation build"),
    "cuda-compat": (str, '"strict" (default) or "minor"'),
    "trusted-hosts": (list, "hosts whose plain-http backend index is accepted"),
}


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
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
    tool = data.get("tool", {}).get("backendpick", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{path}: [tool.backendpick] must be a table")
    _validate(tool, path)
    return Pyproject(path, data)


def _validate(tool: Mapping[str, Any], path: Path) -> None:
    for key, value in tool.items():
        if key not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(KEYS)}"
            raise ConfigError(f"{path}: unknown key tool.backendpick.{key}", hint=hint)
        expected, what = KEYS[key]
        if not isinstance(value, expected):
            raise ConfigError(
                f"{path}: tool.backendpick.{key} must be a {expected.__name__} ({what}), "
                f"not {type(value).__name__}"
            )
        if expected is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: tool.backendpick.{key} must be a list of strings")
        if key == "build-requirements":
            for name, reqs in value.items():
                if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
                    raise ConfigError(f"{path}: tool.backendpick.build-requirements.{name} must be a list of strings")


@dataclass(frozen=True)
class Setting:
    """A value and who set it, so output can say which source decided."""

    value: Any
    source: str


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    pyproject: Pyproject
    backend: Setting  # "auto" or a backend name
    index_url: Setting
    cuda_compat: Setting
    backend_packages: tuple[str, ...]
    no_build_isolation: dict  # normalized name -> build requirements
    trusted_hosts: tuple[str, ...] = ()


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _pick(flag: Any, env: Mapping[str, str], env_key: str, tool: Mapping, key: str, default: Any,
          pyproject: Path | None) -> Setting:
    if flag is not None:
        return Setting(flag, f"--{key}")
    if env.get(env_key):
        return Setting(env[env_key], env_key)
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
) -> Settings:
    env = os.environ if env is None else env
    pyproject = read_pyproject(project_dir)
    tool = pyproject.tool
    backend_s = _pick(backend, env, ENV_BACKEND, tool, "backend", "auto", pyproject.path)
    _check_backend_name(backend_s)
    index_s = _pick(index_url, env, ENV_INDEX_URL, tool, "index-url", facts.default_index_url, pyproject.path)
    if "{backend}" not in index_s.value:
        raise ConfigError(
            f"index URL from {index_s.source} has no {{backend}} placeholder: {redact(index_s.value)}",
            hint="write it as a template, e.g. https://mirror.example/pytorch/{backend}",
        )
    trusted = tuple(tool.get("trusted-hosts", ()))
    _check_index_scheme(index_s, trusted)
    compat_s = _pick(cuda_compat, env, ENV_CUDA_COMPAT, tool, "cuda-compat", "strict", pyproject.path)
    if compat_s.value not in ("strict", "minor"):
        raise ConfigError(f"cuda-compat from {compat_s.source} must be \"strict\" or \"minor\", not {compat_s.value!r}")

    packages = tuple(tool.get("backend-packages", facts.backend_packages)) + tuple(tool.get("extra-backend-packages", ()))
    nbi_names = tool.get("no-build-isolation", list(facts.no_build_isolation))
    build_reqs = {normalize(k): tuple(v) for k, v in tool.get("build-requirements", {}).items()}
    nbi = {}
    for name in nbi_names:
        key = normalize(name)
        nbi[key] = build_reqs.get(key, facts.no_build_isolation.get(key, ("setuptools", "wheel")))
    unused = set(build_reqs) - set(nbi)
    if unused:
        raise ConfigError(
            f"tool.backendpick.build-requirements names {', '.join(sorted(unused))}, "
            "which is not in no-build-isolation",
            hint="add it to no-build-isolation, or remove its build-requirements",
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
    )


def _check_backend_name(s: Setting) -> None:
    from backendpick.backend import Backend

    if not isinstance(s.value, str) or s.value.strip().lower() == "auto":
        return
    try:
        Backend.parse(s.value)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (from {s.source})", hint=exc.hint) from None


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


def redact(url: str) -> str:
    """Hide credentials in a URL (``https://user:token@host`` -> ``https://***@host``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()
