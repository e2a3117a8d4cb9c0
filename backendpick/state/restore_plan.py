"""The phases back to a snapshot (``restore``), as the plan's ``Phase`` values.

A distribution that is not the snapshot's very one (``snapshots.Package.matches``: the version
and, where the snapshot knows them, the same files) comes back from, in this order:

1. its kept copy (state/kept_copies.py): offline, as ``name @ file:///...#sha256=`` so pip checks the hash,
   with no pip configuration at all (an image's ``PIP_CONSTRAINT`` or the environment's own
   pins must not stop the bytes that were there from coming back);
2. for a build package (flash-attn), a wheel of the wheel cache built for the snapshot's torch
   (its build record), again offline: never a source build, which in pip's isolation fails
   with ``No module named 'torch'`` (issue 18) and out of it builds against whatever torch is
   there;
3. its direct URL (a build package's only when it is a wheel);
4. its index: a backend build from its backend index, PyPI's torch family from the user's main
   index (never an extra index), anything else through the user's pip configuration.

Distributions the snapshot lacks are removed, and so are those about to come back in another
build (pip would call the same version satisfied). A dist-info folder without RECORD is what a
pip killed while installing leaves; pip refuses to uninstall it, so backendpick removes that
folder itself (the files the kept copy brings back are written over).

After the phases, ``put_back`` writes back what the installer changed in the metadata folder
(INSTALLER, REQUESTED, direct_url.json) as the snapshot recorded it, and the build records.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from packaging.version import InvalidVersion, Version

from backendpick.model.backend import local_tag_backend
from backendpick.model.environment import Target
from backendpick.model.names import normalize
from backendpick.model.plan import BACKEND_INDEX, CLEAR, OFFLINE, UNINSTALL, Phase
from backendpick.state.snapshots import Package, Snapshot
from backendpick.target import distfiles

# Never removed or downgraded by a restore: pip runs the restore itself. (setuptools and wheel
# that an install added for a build are removed like anything else it added.)
KEEP = frozenset({"pip"})
INCOMPLETE = "remove-incomplete"


@dataclass(frozen=True)
class RestorePlan:
    phases: tuple[Phase, ...]
    restored: tuple[str, ...] = ()  # normalized names the phases install
    unavailable: tuple[str, ...] = ()  # what cannot come back, and why: nothing may change then


@dataclass(frozen=True)
class Sources:
    """Where restore may take packages from besides their kept copies."""

    index_template: str
    default_index: str
    family: frozenset = frozenset()
    build_names: frozenset = frozenset()
    cache_base: Path | None = None
    state: Path | None = None  # the kept copies' state folder


def changed(snapshot: Snapshot, target: Target, family: Iterable[str] = ()) -> list[Package]:
    """The snapshot's packages that are not installed as they were."""
    now = target.installed
    snap_torch = snapshot.packages.get("torch")
    # An older snapshot knows versions only: when torch's build changed, untagged companions of
    # the same version (xformers 0.0.31 exists for cu126 and cu128 alike) are another build too.
    torch_moved = snap_torch is not None and not snap_torch.matches(now.get("torch"))
    family = set(family)
    return [p for k, p in snapshot.packages.items() if k not in KEEP and (
        not p.matches(now.get(k)) or (p.files is None and torch_moved and k in family and k in now))]


def plan(snapshot: Snapshot, target: Target, sources: Sources) -> RestorePlan:
    """The phases back to ``snapshot``, as intents (pip renders them: execute/engines.py)."""
    todo = changed(snapshot, target, sources.family)
    names = {normalize(p.name) for p in todo}
    extra = sorted(normalize(d.name) for k, d in target.installed.items() if k not in snapshot.packages and k not in KEEP)
    going = [target.installed[n] for n in sorted(names | set(extra)) if n in target.installed]
    incomplete = [d for d in going if d.dist_info and Path(d.dist_info).name.endswith(".dist-info")
                  and not (Path(d.dist_info) / "RECORD").exists()]
    removed = [d.name for d in going if d not in incomplete]
    phases: list[Phase] = []
    if incomplete:
        folders = tuple(str(d.dist_info) for d in incomplete)
        phases.append(Phase(INCOMPLETE, tuple(d.name for d in incomplete), action=CLEAR, folders=folders))
    if removed:
        phases.append(Phase("remove", tuple(removed), action=UNINSTALL))
    offline, by_index, plain, unavailable = _sources(todo, snapshot, target, sources)
    if offline:
        # Not a byte of the user's pip configuration: the wheels are here, their hashes known.
        phases.append(Phase("restore-kept", tuple(offline), source=OFFLINE, no_deps=True))
    for n, (url, reqs) in enumerate(sorted(by_index.items())):
        label = "restore-backend" if len(by_index) == 1 else f"restore-backend-{n + 1}"
        # No dependencies: the snapshot already lists every dependency at its exact version.
        # Backend packages only from the one index.
        phases.append(Phase(label, tuple(reqs), source=BACKEND_INDEX, index_url=url, no_deps=True))
    if plain:
        phases.append(Phase("restore", tuple(plain), no_deps=True))
    return RestorePlan(tuple(phases), tuple(sorted(names)), tuple(unavailable))


def _sources(todo: list[Package], snapshot: Snapshot, target: Target, sources: Sources):
    offline: list[str] = []
    by_index: dict[str, list[str]] = {}
    plain: list[str] = []
    unavailable: list[str] = []
    snap_torch = snapshot.packages.get("torch")
    torch_backend = local_tag_backend(snap_torch.version) if snap_torch else None
    for p in todo:
        name = normalize(p.name)
        wheel = _kept(p, sources) or (_cached_build(p, snapshot, target, sources) if name in sources.build_names else None)
        if wheel is not None:
            offline.append(f"{p.name} @ {wheel}")
        elif p.direct_url and (name not in sources.build_names or p.direct_url.split("#")[0].endswith(".whl")):
            plain.append(f"{p.name} @ {p.direct_url}")  # a build package's only as a wheel: no isolated build
        elif name in sources.build_names:
            torch = snap_torch.version if snap_torch else "?"
            unavailable.append(f"{p.name}=={p.version} (no kept copy, and no wheel in the cache built for torch {torch}; "
                               "backendpick does not build it again in pip's isolation)")
        else:
            tag = local_tag_backend(p.version) or (torch_backend if name in sources.family else None)
            if tag is not None:
                by_index.setdefault(sources.index_template.replace("{backend}", tag.name), []).append(f"{p.name}=={p.version}")
            elif name in sources.family:
                by_index.setdefault(sources.default_index, []).append(f"{p.name}=={p.version}")
            else:
                plain.append(f"{p.name}=={p.version}")
    return offline, by_index, plain, unavailable


def _kept(p: Package, sources: Sources) -> str | None:
    """``file:///...whl#sha256=...`` of the package's kept copy, when it names one that is there
    (one removed by hand leaves the other sources; one that is there with other bytes is an
    error before any change, restore.py)."""
    if not p.kept or sources.state is None:
        return None
    from backendpick.state import kept_copies

    copy = kept_copies.Copy.from_json(p.kept)
    path = copy.path(sources.state)
    return f"{path.as_uri()}#sha256={copy.sha256}" if path.is_file() else None


def _cached_build(p: Package, snapshot: Snapshot, target: Target, sources: Sources) -> str | None:
    """A wheel of the wheel cache for this build package: the one with the snapshot's files,
    else (an older snapshot knows no files) one built for the snapshot's torch."""
    if sources.cache_base is None:
        return None
    from backendpick.state import wheel_cache

    torch = (p.build or {}).get("torch") or (snapshot.packages["torch"].version if "torch" in snapshot.packages else None)
    best = None
    for entry in wheel_cache.entries(sources.cache_base, [p.name]):
        if not entry.proven or entry.key.python != target.python_tag or not _same_release(entry.key.version, p.version):
            continue
        if p.files is not None:
            if distfiles.wheel_identity(entry.wheel) == p.files:
                best = entry
                break
        elif entry.key.torch == torch:
            best = entry
    if best is None:
        return None
    return f"{best.wheel.as_uri()}#sha256={distfiles.sha256_file(best.wheel)}"


def _same_release(a: str, b: str) -> bool:
    try:
        return Version(a).public == Version(b).public
    except InvalidVersion:
        return a == b


def differences(snapshot: Snapshot, target: Target) -> list[str]:
    """What still differs from the snapshot after a restore (empty when it is back)."""
    out = []
    for k, p in snapshot.packages.items():
        if k in KEEP or p.matches(target.installed.get(k)):
            continue
        dist = target.installed.get(k)
        if dist is None or dist.version != p.version:
            out.append(f"{p.name}: {dist.version if dist else 'not installed'} instead of {p.version}")
        else:
            out.append(f"{p.name} {p.version}: not the files recorded (another build of that version)")
    out += [f"{d.name} {d.version} is not in the snapshot" for k, d in target.installed.items()
            if k not in snapshot.packages and k not in KEEP]
    return out


def put_back(snapshot: Snapshot, target: Target, names: Iterable[str]) -> None:
    """INSTALLER, REQUESTED and direct_url.json of the restored ``names`` as the snapshot
    recorded them (pip writes its own), with RECORD's rows to match. Snapshots from before
    these were recorded are left as pip wrote them."""
    for name in names:
        p, dist = snapshot.packages.get(name), target.installed.get(name)
        if p is None or p.installer is None or dist is None or not dist.dist_info:
            continue
        folder = Path(dist.dist_info)
        if not folder.name.endswith(".dist-info") or not (folder / "RECORD").exists():
            continue
        _markers(folder, {"INSTALLER": p.installer + "\n" if p.installer else None,
                          "REQUESTED": "" if p.requested else None,
                          "direct_url.json": p.direct_url_json})


def _markers(folder: Path, wanted: Mapping[str, str | None]) -> None:
    from backendpick.edges.durable import write_atomic

    own = {f"{folder.name}/{m}" for m in (*wanted, "RECORD")}
    rows = [r for r in distfiles.read_record(folder) or [] if r.path not in own]
    for marker, text in wanted.items():
        path = folder / marker
        if text is None:
            path.unlink(missing_ok=True)
            continue
        write_atomic(path, text)
        data = text.encode("utf-8")
        rows.append(distfiles.Row(f"{folder.name}/{marker}", distfiles.record_hash(hashlib.sha256(data).digest()), len(data)))
    rows.append(distfiles.Row(f"{folder.name}/RECORD", None, None))
    write_atomic(folder / "RECORD", _csv(rows))


def _csv(rows: list) -> str:
    """RECORD as pip writes it (the csv module's default dialect)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    for r in rows:
        writer.writerow([r.path, r.hash or "", "" if r.size is None else r.size])
    return buf.getvalue()


# pip's AdjacentTempDirectory: "~", some of these, then the end of the name it stands for.
_STASH_CHARS = "-~.=%0123456789"


def pip_stashes(target: Target) -> list[Path]:
    """What a pip killed while uninstalling left beside the install folder: ``~lash_attn`` for
    ``flash_attn``, ``~orch-2.5.1.dist-info`` (the files it had moved aside, not yet deleted).
    Only stashes of a name that is installed again: after a restore they hold nothing the
    environment lacks, and pip warns about them ("Ignoring invalid distribution ~orch")."""
    out = []
    for folder in dict.fromkeys(Path(d) for d in (*target.site_dirs, str(target.purelib))):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        present = [n for n in names if not n.startswith("~")]
        for n in names:
            rest = n[1:].lstrip(_STASH_CHARS)
            if n.startswith("~") and rest and any(len(p) == len(n) and p.endswith(rest) for p in present):
                out.append(folder / n)
    return sorted(out)


def build_records(snapshot: Snapshot, names: Iterable[str]) -> dict:
    """The snapshot's build records (build_records.Record fields) of the restored build packages."""
    return {n: snapshot.packages[n].build for n in names if n in snapshot.packages and snapshot.packages[n].build}


__all__ = ["INCOMPLETE", "KEEP", "RestorePlan", "Sources", "build_records", "changed", "differences", "pip_stashes",
           "plan", "put_back"]
