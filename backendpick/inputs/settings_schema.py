"""The schema of ``[tool.backendpick]``: every key with its type and meaning, and the checks that
turn a wrong key, type or value into one ``ConfigError`` naming it (with a suggestion for a
near-miss). ``config.load`` calls ``validate`` before it reads a single setting."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from backendpick.errors import ConfigError
from backendpick.redaction import redact

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
    "prebuilt": (dict, 'package -> where its prebuilt wheels are looked for, in order: URL templates with '
                       '{filename} (and {version}), local folders, or "github" (the project\'s releases)'),
    "build": (dict, "source builds: max-jobs, arch-list, env, checks"),
    "packages": (dict, "recipes: package -> how it gets the build for torch's backend (replaces or adds to the shipped ones)"),
    "mirrors": (dict, "URL prefix -> replacement, for every URL backendpick derives (indexes, pages, wheels)"),
    "installer": (str, '"pip" (default) or "uv": the installer that runs the plan\'s phases'),
    "channel": (str, '"stable" (default), "test" (release candidates) or "nightly"'),
    "pin-environment": (bool, "write the stack's pins into the environment's pip.conf (default true)"),
    "lock": (str, 'the lock file install takes without --lock, "pylock.{backend}.toml" (none by default)'),
}

# [tool.backendpick.build] keys -> (expected type, description).
BUILD_KEYS: dict[str, tuple[type, str]] = {
    "max-jobs": (int, "parallel compile jobs (MAX_JOBS); default from cores and free memory"),
    "arch-list": (str, 'GPU architectures to compile for, e.g. "8.0;9.0" or "gfx942"; default: the detected GPUs'),
    "env": (dict, "more variables for source builds, e.g. { NVCC_THREADS = \"2\" }"),
    "checks": (bool, "check nvcc/hipcc, a C++ compiler and ninja before a source build (default true)"),
}

_NAME_LISTS = ("backend-packages", "extra-backend-packages", "no-build-isolation")
_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)  # PEP 508 names


def _known_key(key: str, known: Mapping[str, Any], message: str) -> None:
    """A key must be one of ``known``; a near-miss gets a suggestion."""
    if key in known:
        return
    import difflib  # only for the mistake, off the start-up path

    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
    raise ConfigError(message, hint=hint)


def validate(tool: Mapping[str, Any], path: Path) -> None:
    for key, value in tool.items():
        _known_key(key, KEYS, f"{path}: unknown key tool.backendpick.{key}")
        expected, what = KEYS[key]
        if not isinstance(value, expected):
            raise ConfigError(
                f"{path}: tool.backendpick.{key} must be a {expected.__name__} ({what}), "
                f"not {type(value).__name__}"
            )
        if expected is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: tool.backendpick.{key} must be a list of strings")
        if key in _NAME_LISTS:
            # Names, not requirements: "torch>=2" would match no requirement and silently send
            # torch to the user's indexes.
            bad = [v for v in value if not _NAME_RE.match(v)]
            if bad:
                raise ConfigError(f"{path}: tool.backendpick.{key} holds {bad[0]!r}, which is not a package name",
                                  hint="list bare names (torch, xformers); versions go in the requirements")
        if key == "build-requirements":
            # Imported here: packaging's requirement parser is the slowest import detect could pay.
            from packaging.requirements import InvalidRequirement, Requirement

            for name, reqs in value.items():
                if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
                    raise ConfigError(f"{path}: tool.backendpick.build-requirements.{name} must be a list of strings")
                for text in reqs:
                    try:
                        Requirement(text)
                    except InvalidRequirement as exc:
                        raise ConfigError(f"{path}: tool.backendpick.build-requirements.{name} holds an invalid "
                                          f"requirement {text!r}: {exc}") from None
        if key == "prebuilt":
            for name, sources in value.items():
                if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
                    raise ConfigError(
                        f"{path}: tool.backendpick.prebuilt.{name} must be a list of strings",
                        hint='e.g. flash-attn = ["https://mirror.example/wheels/{filename}", "/opt/wheels", "github"]',
                    )
                for source in sources:
                    _check_prebuilt_source(source, f"{path}: tool.backendpick.prebuilt.{name}")
        if key == "build":
            _validate_build(value, path)
        if key in ("packages", "mirrors"):
            from backendpick.knowledge import recipes

            (recipes.validate_user if key == "packages" else recipes.validate_mirrors)(value, path)


def _validate_build(table: Mapping[str, Any], path: Path) -> None:
    for key, value in table.items():
        _known_key(key, BUILD_KEYS, f"{path}: unknown key tool.backendpick.build.{key}")
        expected, what = BUILD_KEYS[key]
        # bool is an int to Python; max-jobs = true is a mistake, not 1.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{path}: tool.backendpick.build.{key} must be a {expected.__name__} ({what}), not {type(value).__name__}"
            )
        if key == "max-jobs" and value < 1:
            raise ConfigError(f"{path}: tool.backendpick.build.max-jobs must be at least 1, not {value}")
        if key == "env":
            for var, text in value.items():
                if not isinstance(text, str) or not var or "=" in var:
                    raise ConfigError(f"{path}: tool.backendpick.build.env.{var} must be a string value of a variable name")


_PLACEHOLDERS = ("{filename}", "{version}")


def _check_prebuilt_source(source: str, where: str) -> None:
    """A URL template must name the file; folders and "github" are checked when used."""
    if "://" not in source:
        return
    scheme = urlsplit(source.replace("{filename}", "f").replace("{version}", "v")).scheme
    if scheme not in ("http", "https", "file"):
        raise ConfigError(f"{where}: {redact(source)} must be an http(s) or file URL, or a folder")
    if "{filename}" not in source:
        raise ConfigError(
            f"{where}: URL {redact(source)} has no {{filename}} placeholder",
            hint="write it as a template, e.g. https://mirror.example/flash-attn/{filename}",
        )
    leftover = source
    for placeholder in _PLACEHOLDERS:
        leftover = leftover.replace(placeholder, "")
    if "{" in leftover or "}" in leftover:
        raise ConfigError(f"{where}: URL {redact(source)} may only use the placeholders {{filename}} and {{version}}")
