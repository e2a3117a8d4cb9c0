"""``backendpick restore``: return an environment to a snapshot taken before an install."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from backendpick import config, facts as facts_mod, history, lock, pipconf, runner, target as target_mod
from backendpick.errors import InstallError
from backendpick.output import Output
from backendpick.plan import state_dir


def run(out: Output, *, python: Path | None, snapshot_id: str | None, project_dir: Path,
        index_url: str | None, dry_run: bool, list_only: bool) -> int:
    facts = facts_mod.load()
    settings = config.load(facts, project_dir=project_dir, index_url=index_url)
    target = target_mod.inspect(target_mod.choose_python(python))
    state = state_dir(target)
    if list_only:
        paths = history.snapshots(state)
        if out.json_mode:
            out.emit_json({"snapshots": [p.stem for p in paths]})
        for p in paths if not out.json_mode else ():
            out.line(f"snapshot: {p.stem}")
        if not paths and not out.json_mode:
            out.line("no snapshots recorded for this environment")
        return 0
    env = dict(os.environ)
    pip_config = pipconf.read(env, target.prefix)
    with lock.hold(state, on_wait=out.info):
        snap = history.load(state, snapshot_id)
        phases = history.restore_phases(
            snap, target, index_template=settings.index_url.value, runner_python=sys.executable,
            backend_env=pipconf.backend_phase_env(env, pip_config), user_env=env,
            family=frozenset(settings.backend_packages),
            default_index=pip_config.get("index-url") or "https://pypi.org/simple",
        )
        if dry_run or not phases:
            for ph in phases:
                out.line(ph.command_line())
            if not phases:
                out.info(f"the environment already matches snapshot {snap.id}")
            return 0
        for ph in phases:
            out.info(f"phase {ph.name}: {' '.join(ph.requirements)}\n  $ {ph.command_line()}")
            run_env = {k: v for k, v in env.items() if k not in ph.unset}
            run_env.update(ph.env)
            res = runner.stream(ph.argv, on_line=(lambda line: out.info(f"  | {line}")) if out.verbose else (lambda line: None),
                                env=run_env)
            if not res.ok:
                tail = "\n".join(res.stdout.splitlines()[-20:])
                raise InstallError(f"restore phase '{ph.name}' failed (pip exit {res.returncode})", details=tail)
        _forget_builds(state, phases)
        left = history.differences(snap, target_mod.inspect(target.python))
        if left:
            raise InstallError(f"restore of snapshot {snap.id} did not bring everything back: {'; '.join(left[:5])}",
                               hint="the package index may no longer offer those versions")
        out.info(f"restored snapshot {snap.id}")
    return 0


def _forget_builds(state: Path, phases) -> None:
    """Build packages restore reinstalled carry no record of the torch they were built for."""
    from packaging.requirements import InvalidRequirement, Requirement

    from backendpick import builds

    names = []
    for ph in phases:
        for text in ph.requirements:
            try:
                names.append(config.normalize(Requirement(text).name))
            except InvalidRequirement:
                continue
    builds.forget(state, names)
