"""Snapshots of an environment before backendpick changes it.

A snapshot lists every distribution with what tells it apart from another build of the same
version (issue 18): the identity of its files (``distfiles.identity``), its installer, its
direct URL, whether it was requested, the build record of a build package (``builds.json``:
the torch flash-attn was built against), and, for what the change was about to remove or
replace, the kept copy (``state/kept_copies.py``) that restore installs back offline. It also says when it
was taken, before which command, and which torch it holds (``restore --list``).

Durable before the first change: the file is written atomically and flushed, its folder
flushed too, and rewritten the same way once the kept copies are on disk. Which snapshot a
plain ``restore`` goes back to: the newest taken before an install (``load``), so a second
``restore`` finds the environment already there instead of undoing the first.

``state/restore_plan.py`` turns a snapshot into the phases back to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

from backendpick.edges import paths
from backendpick.edges.durable import fsync_dir, write_atomic
from backendpick.errors import ConfigError, StateError
from backendpick.model.environment import Installed, Target
from backendpick.target import distfiles

FORMAT = 2
BY_INSTALL, BY_RESTORE = "install", "restore"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    direct_url: str | None = None  # where it was installed from (PEP 610), editable installs aside
    files: str | None = None  # distfiles.identity; None: no RECORD, or an older snapshot
    installer: str | None = None  # INSTALLER; None: not recorded (an older snapshot)
    requested: bool | None = None  # REQUESTED
    direct_url_json: str | None = None  # direct_url.json as it was, to write back
    build: dict | None = None  # build_records.Record.to_json() of a build package
    kept: dict | None = None  # kept_copies.Copy.to_json()

    def to_json(self) -> dict:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None or k == "direct_url"}

    @classmethod
    def from_json(cls, data: Mapping) -> Package:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def matches(self, dist: Installed | None) -> bool:
        """Whether ``dist`` is this very distribution: the version and, where the snapshot knows
        them, the same files, all present (a half-done uninstall leaves the metadata behind)."""
        if dist is None or dist.version != self.version:
            return False
        if self.files is None:
            return True  # all an older snapshot knows is the version
        if dist.dist_info is None:
            return False
        folder = Path(dist.dist_info)
        return distfiles.installed_identity(folder) == self.files and distfiles.damaged(folder) is None


@dataclass(frozen=True)
class Snapshot:
    id: str
    path: Path
    packages: dict  # normalized name -> Package
    created: str = ""
    by: str = BY_INSTALL
    command: str = ""
    torch: str | None = None
    backend: str | None = None
    python: str = ""

    def to_json(self) -> dict:
        return {"format": FORMAT, "id": self.id, "python": self.python, "created": self.created, "by": self.by,
                "command": self.command, "torch": self.torch, "backend": self.backend,
                "packages": {k: p.to_json() for k, p in sorted(self.packages.items())}}

    def kept_bytes(self) -> int:
        return sum(int(p.kept.get("size", 0)) for p in self.packages.values() if p.kept)


def _package(dist: Installed, builds: Mapping) -> Package:
    folder = Path(dist.dist_info) if dist.dist_info else None
    record = builds.get(_key(dist.name))
    return Package(
        dist.name, dist.version, _url(dist.direct_url),
        files=distfiles.installed_identity(folder) if folder and folder.name.endswith(".dist-info") else None,
        installer=dist.installer, requested=bool(folder and (folder / "REQUESTED").exists()),
        direct_url_json=dist.direct_url,
        build=record.to_json() if record is not None and record.matches(dist.version) else None)


def _key(name: str) -> str:
    from backendpick.model.names import normalize

    return normalize(name)


def record(target: Target, state_dir: Path, *, by: str = BY_INSTALL, command: str = "", torch: str | None = None,
           backend: str | None = None) -> Snapshot:
    """Write a snapshot of ``target``. Not being able to is an error: a change without its
    snapshot has no way back."""
    from backendpick.state import build_records

    folder = paths.history(state_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        recorded = build_records.read(state_dir)
        packages = {key: _package(d, recorded) for key, d in sorted(target.installed.items())}
        snap = Snapshot(_new_id(folder), Path(), packages, time.strftime("%Y-%m-%dT%H:%M:%S"), by, command, torch,
                        backend, str(target.python))
        snap = replace(snap, path=folder / f"{snap.id}.json")
        _write(snap)
        return snap
    except OSError as exc:
        raise _unwritable(folder, exc) from None


def with_kept(snapshot: Snapshot, copies: Mapping) -> Snapshot:
    """The snapshot naming the kept copies (kept_copies.Copy by normalized name), rewritten durably."""
    if not copies:
        return snapshot
    packages = dict(snapshot.packages)
    for name, copy in copies.items():
        if name in packages:
            packages[name] = replace(packages[name], kept=copy.to_json())
    updated = replace(snapshot, packages=packages)
    try:
        _write(updated)
    except OSError as exc:
        raise _unwritable(snapshot.path.parent, exc) from None
    return updated


def _write(snap: Snapshot) -> None:
    write_atomic(snap.path, json.dumps(snap.to_json(), indent=1))
    fsync_dir(snap.path.parent)


def _unwritable(folder: Path, exc: OSError) -> StateError:
    what = f"{folder} is not a directory" if folder.exists() and not folder.is_dir() else (exc.strerror or str(exc))
    return StateError(f"cannot record a snapshot in {folder}: {what}",
                      hint=f"make {folder} a writable directory (or remove it; older snapshots are in it), "
                           "then run again")


def _new_id(folder: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while (folder / f"{stamp}-{n}.json").exists():
        n += 1
    return f"{stamp}-{n}"


def _url(direct_url_json: str | None) -> str | None:
    if not direct_url_json:
        return None
    try:
        data = json.loads(direct_url_json)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("dir_info", {}).get("editable"):
        return None
    return data.get("url")


def snapshots(state_dir: Path) -> list[Path]:
    folder = paths.history(state_dir)
    if folder.exists() and not folder.is_dir():
        raise StateError(f"{folder} is not a directory, so no snapshot can be read",
                         hint=f"remove it (rm {folder}); backendpick records snapshots there")
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot read the snapshots in {folder}: {exc.strerror or exc}",
                         hint=f"make {folder} readable (chmod u+rwx {folder})") from None


def load(state_dir: Path, snap_id: str | None) -> Snapshot:
    """Snapshot ``snap_id``; without one, the newest taken before an install (a restore's own
    snapshot is the way back from that restore, not an install to undo)."""
    found = snapshots(state_dir)
    if not found:
        raise ConfigError(f"no snapshots recorded for this environment ({state_dir})",
                          hint="backendpick records one before each install that changes the environment")
    others = lambda path: [p.stem for p in found if p != path]  # noqa: E731 - one-line helper
    if snap_id is not None:
        matches = [p for p in found if p.stem == snap_id]
        if not matches:
            raise ConfigError(f"no snapshot '{snap_id}'", hint=f"known: {', '.join(p.stem for p in found[-5:])}")
        return parse(matches[0], others(matches[0]))
    for path in reversed(found):
        snap = parse(path, others(path))
        if snap.by != BY_RESTORE:
            return snap
    raise ConfigError(f"no snapshot taken before an install in {paths.history(state_dir)}, only before restores",
                      hint="name the snapshot to go back to (backendpick restore --list)")


def parse(path: Path, others: list[str] = ()) -> Snapshot:
    """A snapshot file as written by ``record``; anything else (empty, truncated, edited) is an
    error naming the file, never a traceback and never a partial restore."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = _shape_problem(data)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    except ValueError as exc:  # JSON and UTF-8 errors
        problem = "empty file" if not path.stat().st_size else f"not valid JSON ({exc})"
    if problem:
        hint = f"restore another snapshot ({', '.join(list(others)[-3:])})" if others else "no other snapshot is recorded"
        raise StateError(f"snapshot {path} is damaged: {problem}",
                         hint=f"{hint}, or remove the damaged file (rm {path})")
    text = lambda key: str(data[key]) if isinstance(data.get(key), str) else None  # noqa: E731
    return Snapshot(str(data.get("id") or path.stem), path,
                    {k: Package.from_json(p) for k, p in data["packages"].items()},
                    text("created") or "", text("by") or BY_INSTALL, text("command") or "", text("torch"),
                    text("backend"), text("python") or "")


_TYPES = {"direct_url": (str, type(None)), "files": (str, type(None)), "installer": (str, type(None)),
          "requested": (bool, type(None)), "direct_url_json": (str, type(None)), "build": (dict, type(None)),
          "kept": (dict, type(None))}


def _shape_problem(data) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("packages"), dict):
        return "no table of packages"
    for key, p in data["packages"].items():
        if not (isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("version"), str)
                and all(isinstance(p.get(k), t) for k, t in _TYPES.items())):
            return f"entry {key!r} has no name and version"
        kept = p.get("kept")
        if kept is not None and not (isinstance(kept.get("wheel"), str) and isinstance(kept.get("sha256"), str)
                                     and isinstance(kept.get("size"), int) and isinstance(kept.get("identity"), str)):
            return f"entry {key!r} names a kept copy without its file, hash and size"
    return None


@dataclass(frozen=True)
class Listed:
    """One snapshot for ``restore --list``: its summary, or why it cannot be read."""

    id: str
    snapshot: Snapshot | None = None
    problem: str | None = None
    default: bool = False

    def to_json(self) -> dict:
        s = self.snapshot
        if s is None:
            return {"id": self.id, "damaged": self.problem}
        return {"id": self.id, "created": s.created or None, "by": s.by, "command": s.command or None,
                "torch": s.torch, "backend": s.backend, "packages": len(s.packages),
                "kept": {k: p.kept["size"] for k, p in sorted(s.packages.items()) if p.kept},
                "kept_bytes": s.kept_bytes(), "default": self.default}


def listing(state_dir: Path) -> list[Listed]:
    """Every snapshot, oldest first; the one a plain ``restore`` takes is ``default``."""
    out = []
    for path in snapshots(state_dir):
        try:
            out.append(Listed(path.stem, parse(path)))
        except StateError as exc:
            out.append(Listed(path.stem, problem=exc.message.rsplit(": ", 1)[-1]))
    default = next((i for i in range(len(out) - 1, -1, -1)
                    if out[i].snapshot is None or out[i].snapshot.by != BY_RESTORE), None)
    if default is not None and out[default].snapshot is not None:
        out[default] = replace(out[default], default=True)
    return out


__all__ = ["BY_INSTALL", "BY_RESTORE", "Listed", "Package", "Snapshot", "listing", "load", "parse", "record",
           "snapshots", "with_kept"]
