"""A lock file as a value: one backend's plan resolved to files (issue 21, PEP 751).

``pylock.<backend>.toml`` holds every package at its exact version (local tags kept) with the one
file the target installs (a wheel for its Python and platform; for a package built after torch
without a prebuilt wheel, its sdist), each with ``url``, ``size`` and ``hashes.sha256``, the
``index`` it was found on, and the target's ``requires-python`` and ``environments``. What pip
and uv do not read goes to ``[tool.backendpick]``: the backend, the torch, the phase of each
package, how each build is made, the driver minimum and compute capabilities the backend needs,
and the facts and recipes used with their dates.

Pure: ``to_toml`` writes a deterministic text (sorted packages, fixed key order, no time stamp:
the same inputs give the same bytes) and ``parse`` reads one back, naming what is wrong.
PEP 751: https://packaging.python.org/en/latest/specifications/pylock-toml/
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from packaging.markers import InvalidMarker, Marker
from packaging.version import InvalidVersion, Version

from backendpick.errors import ConfigError
from backendpick.model.names import normalize

LOCK_VERSION = "1.0"
CREATED_BY = "backendpick"
NAME_PATTERN = "pylock.{backend}.toml"
# How a build-phase package is made (``[tool.backendpick.builds]``).
PREBUILT, SOURCE = "prebuilt", "source"


@dataclass(frozen=True)
class LockedFile:
    """One file of a package: a wheel or an sdist."""

    name: str  # the file name
    url: str  # without user information (no credential is ever written down)
    size: int | None
    sha256: str


@dataclass(frozen=True)
class LockedPackage:
    name: str  # normalized
    version: str  # exact, local tag kept
    phase: str  # model.plan's BACKEND, BUILD_REQS, BUILD or REST
    index: str | None = None
    requires_python: str | None = None
    wheel: LockedFile | None = None
    sdist: LockedFile | None = None

    @property
    def file(self) -> LockedFile:
        """The file install takes: the wheel, else the sdist."""
        chosen = self.wheel or self.sdist
        assert chosen is not None
        return chosen


@dataclass(frozen=True)
class Build:
    """How one build-phase package is made."""

    how: str  # PREBUILT (the locked wheel) or SOURCE (the locked sdist, no isolation, against the locked torch)
    against: str  # the torch it is built or published for
    note: str = ""


@dataclass(frozen=True)
class Fact:
    """A table of facts or a recipe the lock stands on, with its source and the date checked."""

    what: str
    source: str
    checked: str


@dataclass(frozen=True)
class Lock:
    backend: str
    index_url: str  # the backend index (without user information)
    python: str  # the target's "3.11"
    environment: Mapping[str, str]  # the target's markers the lock is for: python, platform, machine
    packages: tuple[LockedPackage, ...]
    torch: str | None = None
    builds: Mapping[str, Build] = field(default_factory=dict)
    driver_minimum: str | None = None  # NVIDIA driver a cuXY backend needs (strict reading)
    compute_capabilities: tuple[str, ...] = ()
    facts: tuple[Fact, ...] = ()

    @property
    def environments(self) -> tuple[str, ...]:
        """PEP 751 ``environments``: the one marker the lock's wheels install on."""
        return (" and ".join(f'{k} == "{v}"' for k, v in self.environment.items()),)

    @property
    def requires_python(self) -> str:
        return f"=={self.python}.*"

    def package(self, name: str) -> LockedPackage | None:
        return next((p for p in self.packages if p.name == normalize(name)), None)

    def in_phase(self, phase: str) -> tuple[LockedPackage, ...]:
        return tuple(p for p in self.packages if p.phase == phase)

    def mismatch(self, markers: Mapping[str, str]) -> str | None:
        """Why the lock is not for an interpreter with ``markers``, or None."""
        for key, value in self.environment.items():
            if markers.get(key) != value:
                return f"the lock is for {key} {value}, the target has {markers.get(key) or 'none'}"
        return None


# -- writing ------------------------------------------------------------------------------------------


def _s(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for the characters a lock holds)."""
    return json.dumps(value, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _s(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} to TOML")


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _s(key)


def _file(f: LockedFile) -> dict:
    out: dict = {"name": f.name, "url": f.url}
    if f.size is not None:
        out["size"] = f.size
    out["hashes"] = {"sha256": f.sha256}
    return out


def to_toml(lock: Lock) -> str:
    """The lock file's text: the same lock gives the same bytes."""
    lines = [
        "# Written by backendpick lock: the plan for one backend, resolved to files.",
        f"# Install it with: backendpick install --lock pylock.{lock.backend}.toml",
        f"lock-version = {_s(LOCK_VERSION)}",
        f"environments = {_value(list(lock.environments))}",
        f"requires-python = {_s(lock.requires_python)}",
        f"created-by = {_s(CREATED_BY)}",
    ]
    for p in sorted(lock.packages, key=lambda p: p.name):
        lines += ["", "[[packages]]", f"name = {_s(p.name)}", f"version = {_s(p.version)}"]
        if p.requires_python:
            lines.append(f"requires-python = {_s(p.requires_python)}")
        if p.index:
            lines.append(f"index = {_s(p.index)}")
        if p.wheel is not None:
            lines.append(f"wheels = [{_value(_file(p.wheel))}]")
        if p.sdist is not None:
            lines.append(f"sdist = {_value(_file(p.sdist))}")
    tool: dict = {"backend": lock.backend, "index-url": lock.index_url, "python": lock.python}
    if lock.torch:
        tool["torch"] = lock.torch
    if lock.driver_minimum:
        tool["driver-minimum"] = lock.driver_minimum
    if lock.compute_capabilities:
        tool["compute-capabilities"] = list(lock.compute_capabilities)
    lines += ["", "[tool.backendpick]"] + [f"{_key(k)} = {_value(v)}" for k, v in tool.items()]
    lines += ["", "[tool.backendpick.phases]"]
    lines += [f"{_key(p.name)} = {_s(p.phase)}" for p in sorted(lock.packages, key=lambda p: p.name)]
    for name in sorted(lock.builds):
        b = lock.builds[name]
        lines += ["", f"[tool.backendpick.builds.{_key(name)}]", f"how = {_s(b.how)}", f"against = {_s(b.against)}",
                  "build-isolation = false"]
        if b.note:
            lines.append(f"note = {_s(b.note)}")
    for f in sorted(lock.facts, key=lambda f: f.what):
        lines += ["", "[[tool.backendpick.facts]]", f"what = {_s(f.what)}", f"source = {_s(f.source)}",
                  f"checked = {_s(f.checked)}"]
    return "\n".join(lines) + "\n"


# -- reading ------------------------------------------------------------------------------------------


def _load_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def _read_file(raw: Any, where: str) -> LockedFile:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("url"), str):
        raise ConfigError(f"{where} has no url", hint="backendpick installs files by URL; lock again with backendpick lock")
    hashes = raw.get("hashes")
    sha = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{where} has no sha256 hash", hint="every locked file needs hashes.sha256")
    size = raw.get("size")
    name = raw.get("name") or raw["url"].rsplit("/", 1)[-1]
    return LockedFile(str(name), raw["url"], size if isinstance(size, int) else None, sha)


def _read_package(raw: Any, phases: Mapping[str, str], n: int) -> LockedPackage:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not isinstance(raw.get("version"), str):
        raise ConfigError(f"packages[{n}] needs a name and a version")
    name = normalize(raw["name"])
    try:
        Version(raw["version"])
    except InvalidVersion:
        raise ConfigError(f"{name}: version {raw['version']!r} is not a version") from None
    wheels = raw.get("wheels") or []
    if not isinstance(wheels, list) or len(wheels) > 1:
        raise ConfigError(f"{name}: a backendpick lock holds one wheel per package, for its one target",
                          hint="lock again with backendpick lock")
    wheel = _read_file(wheels[0], f"{name}'s wheel") if wheels else None
    sdist = _read_file(raw["sdist"], f"{name}'s sdist") if raw.get("sdist") is not None else None
    if wheel is None and sdist is None:
        raise ConfigError(f"{name} has neither a wheel nor an sdist", hint="lock again with backendpick lock")
    phase = phases.get(name)
    if not isinstance(phase, str):
        raise ConfigError(f"{name} has no phase in [tool.backendpick.phases]", hint="lock again with backendpick lock")
    return LockedPackage(name, raw["version"], phase, raw.get("index"), raw.get("requires-python"), wheel, sdist)


def _environment(raw: Mapping) -> dict:
    envs = raw.get("environments")
    if not isinstance(envs, list) or len(envs) != 1 or not isinstance(envs[0], str):
        raise ConfigError("the lock needs one entry in environments (the target it was made for)")
    try:
        Marker(envs[0])
    except InvalidMarker as exc:
        raise ConfigError(f"environments: {exc}") from None
    pairs = re.findall(r'(\w+) == "([^"]*)"', envs[0])
    if not pairs:
        raise ConfigError(f"environments: {envs[0]!r} names no Python or platform")
    return dict(pairs)


def parse(text: str, where: str = "the lock") -> Lock:
    """A lock file read back; ConfigError naming what is wrong (exit 2)."""
    try:
        raw = _load_toml(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not TOML: {exc}") from None
    try:
        return _parse(raw)
    except ConfigError as exc:
        exc.message = f"{where}: {exc.message}"
        exc.args = (exc.message,)
        raise


def _parse(raw: Mapping) -> Lock:
    if raw.get("lock-version") != LOCK_VERSION:
        raise ConfigError(f"lock-version {raw.get('lock-version')!r} is not {LOCK_VERSION!r}")
    tool = (raw.get("tool") or {}).get("backendpick")
    if not isinstance(tool, Mapping) or not isinstance(tool.get("backend"), str):
        raise ConfigError("no [tool.backendpick] table naming the backend: not a lock backendpick wrote",
                          hint="pip install -r FILE (pip >= 26.1) or uv pip install -r FILE install other locks")
    phases = tool.get("phases") or {}
    packages = tuple(_read_package(p, phases, n) for n, p in enumerate(raw.get("packages") or []))
    builds = {normalize(k): Build(str(v.get("how")), str(v.get("against", "")), str(v.get("note", "")))
              for k, v in (tool.get("builds") or {}).items() if isinstance(v, Mapping)}
    facts = tuple(Fact(str(f.get("what")), str(f.get("source")), str(f.get("checked")))
                  for f in tool.get("facts") or [] if isinstance(f, Mapping))
    return Lock(
        backend=tool["backend"], index_url=str(tool.get("index-url", "")), python=str(tool.get("python", "")),
        environment=_environment(raw), packages=packages, torch=tool.get("torch"), builds=builds,
        driver_minimum=tool.get("driver-minimum"), compute_capabilities=tuple(tool.get("compute-capabilities") or ()),
        facts=facts,
    )
