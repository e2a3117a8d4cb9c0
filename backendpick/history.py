"""Snapshots of an environment before backendpick changes it, and the way back.

A snapshot lists every distribution with its version and where it came from (the backend
index for tagged torch builds, a direct URL, or the user's index). ``restore`` turns the
difference between now and a snapshot into pip phases, reusing the plan's ``Phase`` value.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from backendpick import paths
from backendpick.backend import local_tag_backend
from backendpick.config import normalize as _normalize
from backendpick.errors import ConfigError, StateError
from backendpick.fsutil import write_atomic
from backendpick.plan import Phase, env_delta, pip_argv
from backendpick.target import Target

# Never removed or downgraded by a restore: pip runs the restore itself. (setuptools and wheel
# that an install added for a build are removed like anything else it added.)
_KEEP = frozenset({"pip"})


@dataclass(frozen=True)
class Snapshot:
    id: str
    path: Path
    packages: dict  # normalized name -> {"name", "version", "direct_url"}


def record(target: Target, state_dir: Path) -> Snapshot:
    """Write a snapshot of ``target``. Not being able to is an error: a change without its
    snapshot has no way back."""
    folder = paths.history(state_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return _record(target, folder)
    except OSError as exc:
        what = f"{folder} is not a directory" if folder.exists() and not folder.is_dir() else (exc.strerror or str(exc))
        raise StateError(f"cannot record a snapshot in {folder}: {what}",
                         hint=f"make {folder} a writable directory (or remove it; older snapshots are in it), "
                              "then run again") from None


def _record(target: Target, folder: Path) -> Snapshot:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while (folder / f"{stamp}-{n}.json").exists():
        n += 1
    snap_id = f"{stamp}-{n}"
    packages = {
        key: {"name": d.name, "version": d.version, "direct_url": _url(d.direct_url)}
        for key, d in sorted(target.installed.items())
    }
    path = folder / f"{snap_id}.json"
    write_atomic(path, json.dumps({"id": snap_id, "python": str(target.python), "packages": packages}, indent=1))
    return Snapshot(snap_id, path, packages)


def _url(direct_url_json: str | None) -> str | None:
    if not direct_url_json:
        return None
    try:
        data = json.loads(direct_url_json)
    except ValueError:
        return None
    if data.get("dir_info", {}).get("editable"):
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
    paths = snapshots(state_dir)
    if not paths:
        raise ConfigError(f"no snapshots recorded for this environment ({state_dir})",
                          hint="backendpick records one before each install that changes the environment")
    if snap_id is None:
        path = paths[-1]
    else:
        matches = [p for p in paths if p.stem == snap_id]
        if not matches:
            raise ConfigError(f"no snapshot '{snap_id}'", hint=f"known: {', '.join(p.stem for p in paths[-5:])}")
        path = matches[0]
    return _parse(path, [p.stem for p in paths if p != path])


def _parse(path: Path, others: list[str]) -> Snapshot:
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
        hint = f"restore another snapshot ({', '.join(others[-3:])})" if others else "no other snapshot is recorded"
        raise StateError(f"snapshot {path} is damaged: {problem}",
                         hint=f"{hint}, or remove the damaged file (rm {path})")
    return Snapshot(str(data.get("id") or path.stem), path, data["packages"])


def _shape_problem(data) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("packages"), dict):
        return "no table of packages"
    for key, p in data["packages"].items():
        if not (isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("version"), str)
                and isinstance(p.get("direct_url"), (str, type(None)))):
            return f"entry {key!r} has no name and version"
    return None


def restore_phases(snapshot: Snapshot, target: Target, *, index_template: str, runner_python: str,
                   backend_env: dict, user_env: dict, default_index: str,
                   family: frozenset = frozenset()) -> list[Phase]:
    """Uninstall what the snapshot lacks or holds in another build, then reinstall each package
    from where it came from: backend builds from their backend index, PyPI's torch family from
    the user's main index alone (never an extra index), the rest through the user's pip config."""
    pip = pip_argv(target, runner_python)
    now = {k: d.version for k, d in target.installed.items()}
    snap_torch = snapshot.packages.get("torch")
    # When torch's build changed, untagged companions of the same version (xformers 0.0.31 exists
    # for cu126 and cu128 alike) are another build too.
    torch_changed = snap_torch is not None and now.get("torch") != snap_torch["version"]
    changed = [
        p for k, p in snapshot.packages.items()
        if k not in _KEEP and (now.get(k) != p["version"] or (torch_changed and k in family and k in now))
    ]
    extra = sorted(target.installed[k].name for k in now if k not in snapshot.packages and k not in _KEEP)
    # Same version, other build: pip would call it satisfied, so it goes first.
    replaced = sorted(target.installed[_normalize(p["name"])].name for p in changed if _normalize(p["name"]) in now)
    phases = []
    if extra or replaced:
        names = extra + replaced
        phases.append(Phase("remove", tuple(names), tuple(pip + ["uninstall", "-y", *names])))
    by_index: dict[str, list[str]] = {}
    plain: list[str] = []
    torch_backend = local_tag_backend(snap_torch["version"]) if snap_torch else None
    for p in changed:
        name = _normalize(p["name"])
        if p["direct_url"]:
            plain.append(f"{p['name']} @ {p['direct_url']}")
            continue
        tag = local_tag_backend(p["version"]) or (torch_backend if name in family else None)
        if tag is not None:
            by_index.setdefault(index_template.replace("{backend}", tag.name), []).append(f"{p['name']}=={p['version']}")
        elif name in family:
            by_index.setdefault(default_index, []).append(f"{p['name']}=={p['version']}")
        else:
            plain.append(f"{p['name']}=={p['version']}")
    # --no-deps: the snapshot already lists every dependency at its exact version.
    env, unset = env_delta(backend_env, user_env)  # backend packages only from the one index
    for n, (url, reqs) in enumerate(sorted(by_index.items())):
        label = "restore-backend" if len(by_index) == 1 else f"restore-backend-{n + 1}"
        phases.append(Phase(label, tuple(reqs), tuple(pip + ["install", "--no-deps", "--index-url", url, *reqs]),
                            index_url=url, env=env, unset=unset))
    if plain:
        phases.append(Phase("restore", tuple(plain), tuple(pip + ["install", "--no-deps", *plain])))
    return phases


def differences(snapshot: Snapshot, target: Target) -> list[str]:
    """What still differs from the snapshot after a restore (empty when it is back)."""
    now = {k: d.version for k, d in target.installed.items()}
    out = [f"{p['name']}: {now.get(k, 'not installed')} instead of {p['version']}"
           for k, p in snapshot.packages.items() if k not in _KEEP and now.get(k) != p["version"]]
    out += [f"{target.installed[k].name} {v} is not in the snapshot" for k, v in now.items()
            if k not in snapshot.packages and k not in _KEEP]
    return out
