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

from backendpick.backend import local_tag_backend
from backendpick.config import normalize as _normalize
from backendpick.errors import ConfigError
from backendpick.plan import Phase, env_delta, pip_argv
from backendpick.target import Target

# Never removed or downgraded by a restore: the tools that run the restore itself.
_KEEP = frozenset({"pip", "setuptools", "wheel"})


@dataclass(frozen=True)
class Snapshot:
    id: str
    path: Path
    packages: dict  # normalized name -> {"name", "version", "direct_url"}


def record(target: Target, state_dir: Path) -> Snapshot:
    folder = state_dir / "history"
    folder.mkdir(parents=True, exist_ok=True)
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
    path.write_text(json.dumps({"id": snap_id, "python": str(target.python), "packages": packages}, indent=1))
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
    return sorted((state_dir / "history").glob("*.json"))


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
    data = json.loads(path.read_text())
    return Snapshot(data["id"], path, data["packages"])


def restore_phases(snapshot: Snapshot, target: Target, *, index_template: str, runner_python: str,
                   backend_env: dict, user_env: dict, family: frozenset = frozenset()) -> list[Phase]:
    """Uninstall what the snapshot lacks, reinstall what differs, each from where it came from."""
    pip = pip_argv(target, runner_python)
    now = {k: d.version for k, d in target.installed.items()}
    extra = sorted(target.installed[k].name for k in now if k not in snapshot.packages and k not in _KEEP)
    changed = [p for k, p in snapshot.packages.items() if now.get(k) != p["version"] and k not in _KEEP]
    phases = []
    if extra:
        phases.append(Phase("remove", tuple(extra), tuple(pip + ["uninstall", "-y", *extra])))
    by_backend: dict[str, list[str]] = {}
    plain: list[str] = []
    # Untagged family members (xformers) came from torch's backend index, not the user's.
    torch = snapshot.packages.get("torch")
    torch_backend = local_tag_backend(torch["version"]) if torch else None
    for p in changed:
        if p["direct_url"]:
            plain.append(f"{p['name']} @ {p['direct_url']}")
            continue
        tag = local_tag_backend(p["version"])
        if tag is None and torch_backend is not None and _normalize(p["name"]) in family:
            tag = torch_backend
        if tag is not None:
            by_backend.setdefault(tag.name, []).append(f"{p['name']}=={p['version']}")
        else:
            plain.append(f"{p['name']}=={p['version']}")
    # --no-deps: the snapshot already lists every dependency at its exact version.
    for backend, reqs in sorted(by_backend.items()):
        url = index_template.replace("{backend}", backend)
        env, unset = env_delta(backend_env, user_env)  # backend builds only from their index
        phases.append(Phase(f"restore-{backend}", tuple(reqs),
                            tuple(pip + ["install", "--no-deps", "--index-url", url, *reqs]),
                            index_url=url, env=env, unset=unset))
    if plain:
        phases.append(Phase("restore", tuple(plain), tuple(pip + ["install", "--no-deps", *plain])))
    return phases
