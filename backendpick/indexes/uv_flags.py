"""The user's pip configuration in uv's words: uv reads no pip.conf, so every uv command
backendpick runs (the phases, execute/engines.py, and the resolution that chooses torch,
selection/uv_resolve.py) gets the user's package sources, trusted hosts, certificate, proxy and
timeout explicitly, with ``--no-config`` and the ``UV_*`` variables that choose sources cleared.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from backendpick.indexes.credentials import PROVIDERS
from backendpick.inputs.pip_config import PipConfig

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


def uv_options(options: Sequence[str]) -> list[str]:
    """A requirements file's pip options in uv's spelling."""
    out: list[str] = []
    for word in options:
        if word == "--pre":
            out += ["--prerelease", "allow"]
        elif word == "--prefer-binary":
            continue  # uv has no such preference; it takes a wheel whenever one fits
        else:
            out.append(_RENAMED.get(word, word))
    return out


def source_flags(pip_config: PipConfig, options: Sequence[str] = ()) -> list[str]:
    """The user's pip package sources (and configured constraints) as uv flags, for every phase
    that reads the user's configuration.

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


def safety_flags(pip_config: PipConfig) -> list[str]:
    """Settings that are not sources and apply to every phase: trusted hosts, and keyring where
    pip's configuration asks for it (uv has the subprocess provider only; it needs the user name
    in the index URL, as pip's does)."""
    flags = [w for host in pip_config.trusted_hosts for w in ("--allow-insecure-host", host)]
    if (pip_config.get("keyring-provider") or "").lower() in PROVIDERS:
        flags += ["--keyring-provider", "subprocess"]
    return flags


def uv_env(user_env: Mapping[str, str], pip_config: PipConfig) -> dict[str, str]:
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


__all__ = ["UV_SOURCE_VARS", "safety_flags", "source_flags", "uv_env", "uv_options"]
