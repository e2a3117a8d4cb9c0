"""Copies of the distributions a change is about to remove or replace, kept so that ``restore``
can put them back offline, checked by hash (issue 18: nothing is removed that cannot be put
back).

Which ones (``at_risk``), known before anything runs: what a remove phase uninstalls, and what
an install phase names while the installed version does not meet the requirement (pip replaces
it). pip may also replace a dependency of what it installs; such a dependency is kept too when
no index could give it back (``from_an_index``: a local version that is not a backend tag, an
installer not among facts.toml's ``index-installers``, a direct URL, a build package); the others
come back from their index, as restore already asks it.

From where (``keep``): a copy kept before with the same identity (the same files,
``distfiles.identity``), else a wheel of the wheel cache with that identity (flash-attn built
by backendpick: the original wheel, not a repack), else a wheel repacked from the installed
files (``state/repack.py``). Each copy is flushed to disk before the snapshot names it. A distribution
that must go but cannot be kept (an editable install, files changed since it was installed, no
RECORD) is refused before any change, with the way out.

Layout: ``<state>/kept/<identity>/<wheel>`` and ``kept.json`` beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from backendpick.edges import paths
from backendpick.edges.durable import fsync_dir, fsync_file, write_atomic
from backendpick.knowledge import facts
from backendpick.model.backend import local_tag_backend
from backendpick.model.environment import Installed, Target
from backendpick.model.names import normalize
from backendpick.model.plan import UNINSTALL
from backendpick.target import distfiles

INFO = "kept.json"
REPACKED, REUSED, FROM_CACHE = "repacked", "kept before", "from the wheel cache"
# Phases that change nothing a copy could bring back: the build requirements' own folder, and
# restore's removal of dist-info folders a killed pip left without RECORD.
_NOT_TARGET = ("remove-incomplete",)


@dataclass(frozen=True)
class Copy:
    """One kept wheel: what it is, where (relative to the kept folder), its hash."""

    name: str  # normalized
    version: str
    identity: str
    wheel: str  # "<identity>/<file>.whl"
    sha256: str
    size: int
    how: str = REPACKED

    def path(self, state: Path) -> Path:
        return paths.kept(state) / self.wheel

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Copy:
        return cls(**{k: data[k] for k in ("name", "version", "identity", "wheel", "sha256", "size")},
                   how=str(data.get("how") or REPACKED))


@dataclass(frozen=True)
class Kept:
    copies: dict  # normalized name -> Copy
    refused: dict  # normalized name -> why it cannot be kept (certain removals)
    unkept: dict  # normalized name -> why (pip may replace it; not kept)
    seconds: float = 0.0


def from_an_index(dist: Installed, build_names: Iterable[str] = ()) -> bool:
    """Whether ``name==version`` from an index gives this distribution back: installed from an
    index (no direct URL) by an installer of facts.toml's ``[torch.foreign] index-installers``,
    the table that also tells a torch no index serves (target/torch_origin.py), a public version
    or a backend's local tag, not a package built against the installed torch."""
    if normalize(dist.name) in set(build_names) or dist.direct_url:
        return False
    if dist.installer.strip().lower() not in facts.load().index_installers:
        return False
    try:
        local = Version(dist.version).local
    except InvalidVersion:
        return False
    return local is None or local_tag_backend(dist.version) is not None


def _names(phase) -> list[Requirement]:
    out = []
    for text in phase.requirements:
        try:
            out.append(Requirement(text))
        except InvalidRequirement:
            continue  # a placeholder of a build step chosen later: its package is named elsewhere
    return out


def at_risk(phases: Sequence, target: Target, build_names: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(certain, maybe): installed names the phases remove or replace, and installed
    dependencies of what they install that pip may replace and no index gives back."""
    certain: set[str] = set()
    requested: set[str] = set()
    # Half-installed by a killed pip (no RECORD): nothing there to keep, restore clears it.
    unfinished = {normalize(n) for p in phases if p.name in _NOT_TARGET for n in p.requirements}
    for phase in phases:
        if phase.skip is not None or phase.name in _NOT_TARGET or phase.target_dir:
            continue
        if phase.action == UNINSTALL:
            certain.update(normalize(n) for n in phase.requirements if target.get(n) is not None)
            continue
        upgrade = phase.upgrade
        for req in _names(phase):
            name = normalize(req.name)
            dist = target.get(name)
            requested.add(name)
            if dist is None:
                continue
            try:
                fits = not req.url and req.specifier.contains(Version(dist.version), prereleases=True)
            except InvalidVersion:
                fits = False
            if not fits or (upgrade and not from_an_index(dist, build_names)):
                certain.add(name)
    maybe = {n for n in _dependencies(requested, target) if n not in certain
             and not from_an_index(target.installed[n], build_names)}
    return sorted(certain - unfinished), sorted(maybe - unfinished)


def _dependencies(names: Iterable[str], target: Target) -> set[str]:
    """Installed distributions the installed ``names`` require, at any depth."""
    seen: set[str] = set()
    stack = list(names)
    while stack:
        dist = target.get(stack.pop())
        if dist is None:
            continue
        for raw in dist.requires:
            try:
                dep = normalize(Requirement(raw).name)
            except InvalidRequirement:
                continue
            if dep not in seen and dep in target.installed:
                seen.add(dep)
                stack.append(dep)
    return seen - set(names)


def keep(target: Target, certain: Iterable[str], maybe: Iterable[str], state: Path, *,
         cache_base: Path | None = None, identities: Mapping[str, str] | None = None) -> Kept:
    """Keep a copy of each named distribution. ``identities``: the snapshot's (name -> files,
    None where unknown); when given, a distribution the snapshot lacks or holds with other
    files is not kept: after a failed attempt, what the attempt itself installed is not what
    restore must bring back."""
    from backendpick.state import repack

    started = time.monotonic()
    layout = repack.Layout.of(target)
    copies, refused, unkept = {}, {}, {}
    for name, must in [(n, True) for n in certain] + [(n, False) for n in maybe]:
        dist = target.get(name)
        if dist is None or dist.dist_info is None:
            if dist is not None:
                (refused if must else unkept)[name] = "its metadata folder was not found"
            continue
        identity = distfiles.installed_identity(Path(dist.dist_info))
        if identities is not None and (name not in identities or None not in (identity, identities[name])
                                       and identities[name] != identity):
            continue  # installed since the snapshot: not what restore brings back
        try:
            copies[name] = _one(dist, identity, state, layout, cache_base)
        except repack.NotRepackable as exc:
            (refused if must else unkept)[name] = str(exc)
        except OSError as exc:
            raise _unwritable(paths.kept(state), exc) from None
    return Kept(copies, refused, unkept, time.monotonic() - started)


def _one(dist: Installed, identity: str | None, state: Path, layout, cache_base: Path | None) -> Copy:
    from backendpick.state import repack

    name = normalize(dist.name)
    if identity is None:
        repack.rows_to_repack(Path(dist.dist_info))  # raises why it has none
        raise repack.NotRepackable("its RECORD is not readable")
    folder = paths.kept(state) / identity
    found = _kept_before(folder)
    if found is not None:
        return Copy(name, dist.version, identity, f"{identity}/{found['wheel']}", found["sha256"], found["size"], REUSED)
    wheel = _from_cache(name, identity, cache_base)
    if wheel is not None:
        how, file = FROM_CACHE, _copy_in(wheel, folder)
    else:
        how, file = REPACKED, repack.repack(Path(dist.dist_info), folder, layout).wheel
    sha = distfiles.sha256_file(file)
    copy = Copy(name, dist.version, identity, f"{identity}/{file.name}", sha, file.stat().st_size, how)
    write_atomic(folder / INFO, json.dumps({**copy.to_json(), "wheel": file.name}, indent=1) + "\n")
    fsync_dir(folder)
    return copy


def _kept_before(folder: Path) -> dict | None:
    """The copy in ``folder``, when complete (its wheel there with the recorded size)."""
    try:
        data = json.loads((folder / INFO).read_text(encoding="utf-8"))
        if (folder / data["wheel"]).stat().st_size == data["size"] and isinstance(data["sha256"], str):
            return data
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _from_cache(name: str, identity: str, cache_base: Path | None) -> Path | None:
    """A wheel of the wheel cache with exactly these files (the build installed from it)."""
    if cache_base is None:
        return None
    from backendpick.state import wheel_cache

    for entry in wheel_cache.entries(cache_base, [name]):
        if distfiles.wheel_identity(entry.wheel) == identity:
            return entry.wheel
    return None


def _copy_in(wheel: Path, folder: Path) -> Path:
    """``wheel`` into ``folder``: a hard link where the file system allows (no space, no time),
    else a copy flushed to disk, renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / wheel.name
    tmp = folder / f".{wheel.name}.{os.getpid()}.part"
    try:
        os.link(wheel, tmp)
    except OSError:
        shutil.copyfile(wheel, tmp)
    fsync_file(tmp)  # the cache stored it without flushing
    os.replace(tmp, final)
    fsync_dir(folder)
    return final


def _unwritable(folder: Path, exc: OSError):
    from backendpick.errors import StateError

    return StateError(f"cannot keep a copy in {folder}: {exc.strerror or exc}",
                      hint=f"nothing was changed; make {folder} writable, or free space there, then run again")


def before_change(phases: Sequence, target: Target, snapshot, state: Path, *, build_names: Iterable[str] = (),
                  cache_base: Path | None = None, skip: Iterable[str] = (), unchanged: bool = True):
    """Keep copies of what ``phases`` would remove or replace and name them in ``snapshot``
    (a snapshots.Snapshot, rewritten durably): (snapshot, Kept). A distribution that must go but
    cannot be kept stops everything here (KeepError), before any change. ``skip``: names
    already kept; only distributions whose files are still the snapshot's are kept (after a
    failed attempt, what the attempt installed is not what restore brings back). ``unchanged``:
    whether nothing was changed yet (the error says so)."""
    from backendpick.state import snapshots

    certain, maybe = at_risk(phases, target, build_names)
    done = set(skip)
    certain, maybe = [n for n in certain if n not in done], [n for n in maybe if n not in done]
    if not certain and not maybe:
        return snapshot, Kept({}, {}, {})
    identities = {k: p.files for k, p in snapshot.packages.items()}
    kept = keep(target, certain, maybe, state, cache_base=cache_base, identities=identities)
    snapshot = snapshots.with_kept(snapshot, kept.copies)
    if kept.refused:
        from backendpick.errors import KeepError

        name, why = next(iter(sorted(kept.refused.items())))
        dist = target.get(name)
        raise KeepError(f"{dist.name} {dist.version} would be removed or replaced, but no copy of it can be kept: {why}",
                        hint=("nothing was changed; " if unchanged else "")
                        + "backendpick removes nothing it cannot put back. If it may go, "
                             f"uninstall it yourself (pip uninstall {dist.name}), or reinstall it so its files "
                             "match its RECORD, then run again")
    return snapshot, kept


@dataclass(frozen=True)
class Planned:
    """A copy the plan will keep (``install --dry-run``): what, and how large installed."""

    name: str
    version: str
    size: int  # bytes its RECORD lists
    maybe: bool  # only if pip replaces it

    def words(self) -> str:
        from backendpick.output import size_text

        return f"{self.name} {self.version} ({size_text(self.size)} installed{', if pip replaces it' if self.maybe else ''})"

    def to_json(self) -> dict:
        return asdict(self)


def preview(phases: Sequence, target: Target, build_names: Iterable[str] = ()) -> list[Planned]:
    """What ``before_change`` would keep, without copying anything (a RECORD read each)."""
    certain, maybe = at_risk(phases, target, build_names)
    out = []
    for name in certain + maybe:
        dist = target.get(name)
        rows = None
        if dist.dist_info:
            try:
                rows = distfiles.read_record(Path(dist.dist_info))
            except (OSError, ValueError, UnicodeDecodeError):
                rows = None
        out.append(Planned(dist.name, dist.version, sum(r.size or 0 for r in rows or ()), name in maybe))
    return out


def check(copy: Copy, state: Path) -> str | None:
    """Why the kept wheel cannot be installed (gone, or not the bytes kept), or None."""
    path = copy.path(state)
    try:
        sha = distfiles.sha256_file(path)
    except OSError as exc:
        return f"its kept copy {path} is not readable ({exc.strerror or exc})"
    return None if sha == copy.sha256 else f"its kept copy {path} is not the file kept (sha256 differs)"


def describe(kept: Kept) -> str:
    """``torch 2.4.0a0+nv24.6 (1.1 GB, repacked), flash-attn 2.6.1 (kept before)``."""
    from backendpick.output import size_text

    return ", ".join(f"{c.name} {c.version} ({size_text(c.size)}, {c.how})" for c in kept.copies.values())


__all__ = ["Copy", "Kept", "Planned", "at_risk", "before_change", "check", "describe", "from_an_index", "keep",
           "preview"]
