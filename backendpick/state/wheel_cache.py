"""The wheel cache: every wheel backendpick built from source, kept for the next install.

A flash-attn build takes up to hours; the wheel it produces fits any environment with the same
package version, torch build, Python and platform, for the same GPU architectures. So it is
stored under a key of exactly those, and the next install with that key (another venv, a
rebuilt Docker layer with the cache mounted) installs it in seconds instead of compiling again.

Layout: ``<root>/<name>/<version>/<digest of the key>/`` holding the wheel and ``key.json``.
``key.json`` also records ``built_with``: the torch (version, backend, C++ ABI) read from the
environment the wheel was built in. An entry is used only when that torch is the key's: an
entry without it (written by an older backendpick, or by hand) is never trusted.
An entry is written to a temporary directory and renamed into place, so a reader never sees
half an entry and two installs storing the same key at once both end with one good entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

KEY_FILE = "key.json"
DEFAULT_ARCH = "default"  # no architecture list set: the package's and torch's own defaults


@dataclass(frozen=True)
class Key:
    """What a built wheel depends on. Two builds with equal keys are interchangeable."""

    name: str  # normalized project name
    version: str  # normalized version of the built package
    torch: str  # torch.__version__, local tag included (2.5.1+cu124)
    backend: str  # cuda12.4, rocm6.2 or cpu: what torch was built with
    cxx11abi: bool
    python: str  # cp311
    platform: str  # linux_x86_64
    arch: str = DEFAULT_ARCH  # architecture variables the build saw, or "default"

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def same_build_target(self, other: Key) -> bool:
        """Equal in everything but the version and the architectures."""
        mine, theirs = asdict(self), asdict(other)
        for field in ("version", "arch"):
            mine.pop(field)
            theirs.pop(field)
        return mine == theirs


def arch_covers(have: str, want: str) -> bool:
    """Whether a wheel built for ``have`` serves a build that asks for ``want``.

    A build with no architecture list compiled the package's full default set, which serves
    any narrowed request; a narrowed build serves only the same list.
    """
    return have == want or have == DEFAULT_ARCH


def built_with(key: Key) -> dict:
    """What ``built_with`` must say for an entry to serve ``key``."""
    return {"torch": key.torch, "backend": key.backend, "cxx11abi": key.cxx11abi}


@dataclass(frozen=True)
class Entry:
    key: Key
    wheel: Path
    created: float
    size: int
    built_with: dict | None = None  # the torch the build saw; None: not recorded, not trusted

    @property
    def proven(self) -> bool:
        """Whether the torch recorded at build time is the torch of its key."""
        return self.built_with == built_with(self.key)

    @property
    def directory(self) -> Path:
        return self.wheel.parent

    def to_json(self) -> dict:
        return {
            **asdict(self.key),
            "wheel": str(self.wheel),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.created)),
            "size": self.size,
            "built_with": self.built_with,
        }


def normalize_version(text: str) -> str:
    try:
        return str(Version(text))
    except InvalidVersion:
        return text


def entry_dir(base: Path, key: Key) -> Path:
    return base / key.name / normalize_version(key.version) / key.digest()


def _read(directory: Path) -> Entry | None:
    """The entry in ``directory``, or None when it is incomplete or not an entry at all."""
    try:
        data = json.loads((directory / KEY_FILE).read_text(encoding="utf-8"))
        key = Key(**{k: data[k] for k in Key.__dataclass_fields__})
        wheel = directory / data["wheel"]
        stat = wheel.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    seen = data.get("built_with")
    return Entry(key, wheel, float(data.get("created", stat.st_mtime)), stat.st_size,
                 seen if isinstance(seen, dict) else None)


def entries(base: Path, names: Iterable[str] = ()) -> list[Entry]:
    """Every complete entry, for the named packages only when names are given."""
    from backendpick.model.names import normalize

    wanted = {normalize(n) for n in names}
    found = []
    if not base.is_dir():
        return found
    for key_file in sorted(base.glob(f"*/*/*/{KEY_FILE}")):
        entry = _read(key_file.parent)
        if entry is not None and (not wanted or entry.key.name in wanted):
            found.append(entry)
    return found


def lookup(base: Path, key: Key) -> Entry | None:
    """The entry for ``key``: the exact one, else one whose architectures cover it."""
    exact = _read(entry_dir(base, key))
    if exact is not None and exact.key == key and exact.proven:
        return exact
    version_dir = base / key.name / normalize_version(key.version)
    if not version_dir.is_dir():
        return None
    for directory in sorted(version_dir.iterdir()):
        entry = _read(directory)
        if (entry is not None and entry.proven and entry.key.same_build_target(key)
                and normalize_version(entry.key.version) == normalize_version(key.version)
                and arch_covers(entry.key.arch, key.arch)):
            return entry
    return None


def newest(base: Path, key: Key, specifier: SpecifierSet) -> Entry | None:
    """The newest entry for ``key`` in any version ``specifier`` allows (the index is unreachable,
    so the version cannot be chosen there)."""
    best: tuple[Version, Entry] | None = None
    for entry in entries(base, [key.name]):
        if not (entry.proven and entry.key.same_build_target(key) and arch_covers(entry.key.arch, key.arch)):
            continue
        try:
            version = Version(entry.key.version)
        except InvalidVersion:
            continue
        if specifier.contains(version, prereleases=True) and (best is None or version > best[0]):
            best = (version, entry)
    return best[1] if best else None


class NotProven(ValueError):
    """The torch a wheel was built against is not the torch of the key it would be stored under."""


def store(base: Path, key: Key, wheel: Path, seen: dict) -> Entry:
    """Copy ``wheel`` into the cache under ``key`` and return the stored entry.

    ``seen`` is the torch the build saw (``built_with`` of a TorchInfo); a wheel built against
    another torch than the key's raises NotProven and is not stored: it would poison every
    later install with that key. Raises OSError when the cache cannot be written (a read-only
    mount); the caller then installs from where the wheel was built.
    """
    if seen != built_with(key):
        raise NotProven(f"the build saw torch {seen}, the cache key says {built_with(key)}")
    existing = lookup(base, key)
    if existing is not None and existing.key == key:
        return existing
    base.mkdir(parents=True, exist_ok=True)
    import tempfile  # only when a wheel is stored

    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=base))
    try:
        shutil.copy2(wheel, staging / wheel.name)
        record = {**asdict(key), "wheel": wheel.name, "created": time.time(), "built_with": dict(seen)}
        (staging / KEY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        dest = entry_dir(base, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and (_read(dest) is None or not _read(dest).proven):
            shutil.rmtree(dest, ignore_errors=True)  # a broken entry (disk full, killed copy)
        try:
            os.rename(staging, dest)
        except OSError:
            stored = _read(dest)
            if stored is None:
                raise
            return stored  # another install stored the same key first
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    entry = _read(dest)
    if entry is None:
        raise OSError(f"cache entry {dest} was not readable after writing it")
    return entry


def clear(base: Path, names: Iterable[str] = ()) -> list[Entry]:
    """Remove the entries of the named packages (all when none are named); return them."""
    names = list(names)
    removed = entries(base, names)
    for entry in removed:
        shutil.rmtree(entry.directory, ignore_errors=True)
        for parent in (entry.directory.parent, entry.directory.parent.parent):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
    if not names and base.is_dir():
        for leftover in base.glob(".incoming-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


__all__ = ["Entry", "Key", "NotProven", "built_with", "clear", "entries", "lookup", "newest", "store"]
