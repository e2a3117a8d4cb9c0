"""``backendpick restore``: return an environment to a snapshot taken before an install.

Nothing is removed before every version the snapshot needs is known to be on its index
(``check_available``), and the environment as it is now is recorded first, so a restore can
itself be undone. The phases run through install's executor (install.py): the same
environment, log files, signal handling and redacted output as an install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import Requirement
from packaging.version import Version

from backendpick import config, envpins, facts as facts_mod, history, install as executor, lock, pipconf, runner
from backendpick import target as target_mod
from backendpick.errors import EXIT_OK, InstallError, StateError
from backendpick.output import Output, where_flags
from backendpick.paths import logs, state_dir
from backendpick.plan import Phase
from backendpick.runner import stopped


def run(out: Output, *, python: Path | None, snapshot_id: str | None, project_dir: Path,
        index_url: str | None, dry_run: bool, list_only: bool) -> int:
    facts = facts_mod.load()
    settings = config.load(facts, project_dir=project_dir, index_url=index_url)
    target = target_mod.inspect(target_mod.choose_python(python))
    state = state_dir(target)
    if list_only:
        paths = history.snapshots(state)
        if out.json_mode:
            out.emit_json({"ok": True, "snapshots": [p.stem for p in paths]})
        for p in paths if not out.json_mode else ():
            out.line(f"snapshot: {p.stem}")
        if not paths and not out.json_mode:
            out.line("no snapshots recorded for this environment")
        return EXIT_OK
    env = dict(os.environ)
    pip_config = pipconf.read(env, target.prefix)
    # The pins install left in the environment would block the way back: our runs ignore them.
    env.update(envpins.own_runs_env(env, target.prefix, pip_config))

    try:
        with runner.stop_children_on_signals(), lock.hold(state, on_wait=out.info) as waited:
            if waited:  # another run changed it meanwhile
                target = target_mod.inspect(target.python)
            return _restore_locked(out, target, state, settings, pip_config, env, snapshot_id, dry_run, python)
    except (runner.Interrupted, KeyboardInterrupt) as exc:
        raise stopped(exc, "the environment is unchanged") from None


def _restore_locked(out: Output, target, state: Path, settings, pip_config, env: dict, snapshot_id: str | None,
                    dry_run: bool, python: Path | None) -> int:

    snap = history.load(state, snapshot_id)
    phases = history.restore_phases(
        snap, target, index_template=settings.index_url.value, runner_python=sys.executable,
        backend_env=pipconf.backend_phase_env(env, pip_config), user_env=env,
        family=frozenset(settings.backend_packages),
        default_index=pip_config.get("index-url") or facts.pypi_url,
    )
    if dry_run or not phases:
        for ph in phases if not out.json_mode else ():
            out.line(ph.command_line())
        if not phases:
            out.info(f"the environment already matches snapshot {snap.id}")
        if out.json_mode:
            out.emit_json({"ok": True, "snapshot": snap.id, "dry_run": dry_run,
                           "phases": [ph.to_json() for ph in phases]})
        return EXIT_OK
    missing = check_available(phases, target, pip_config, env)
    if missing:
        raise InstallError(
            f"cannot restore snapshot {snap.id}: not available any more: {'; '.join(missing[:5])}",
            hint="nothing was changed; restore another snapshot (backendpick restore --list)",
        )
    before = history.record(target, state)
    undo = f"backendpick restore{where_flags(python, settings)} {before.id}"
    out.info(f"snapshot {before.id} recorded; to undo this restore: {undo}")
    log_dir = logs(state)
    executor.open_logs(log_dir)
    try:
        for ph in phases:
            out.info(f"phase {ph.name}: {' '.join(ph.requirements)}\n  $ {ph.command_line()}")
            res, log_path, _seconds = executor.run_phase(
                ph, env=executor.phase_env(env, ph), log_dir=log_dir,
                on_line=(lambda line: out.info(f"  | {line}")) if out.verbose else (lambda line: None))
            if not res.ok:
                raise InstallError(f"restore phase '{ph.name}' failed (pip exit {res.returncode})",
                                   details=executor.failure_details(res.stdout, ph),
                                   hint=f"full pip output: {log_path}; to return to the environment before "
                                        f"this restore: {undo}")
    except (runner.Interrupted, KeyboardInterrupt) as exc:
        raise stopped(exc, "pip was stopped and the environment may be partly restored",
                      f"to return to the environment before this restore: {undo}") from None
    _forget_builds(state, phases)
    after = target_mod.inspect(target.python)
    left = history.differences(snap, after)
    if left:
        raise InstallError(f"restore of snapshot {snap.id} did not bring everything back: {'; '.join(left[:5])}",
                           hint=f"the package index may no longer offer those versions; to undo: {undo}")
    if envpins.pins_path(target.prefix).exists():
        # The pins follow the stack back (an install wrote them; they are rewritten here).
        names = set(settings.backend_packages) | set(settings.no_build_isolation)
        envpins.write(target.prefix, envpins.pin_lines(after.installed, names), env=env,
                      backend=f"restored snapshot {snap.id}")
        out.info(f"rewrote the environment's pins ({envpins.pins_path(target.prefix)})")
    if out.json_mode:
        out.emit_json({"ok": True, "snapshot": snap.id, "undo_snapshot": before.id,
                       "phases": [ph.to_json() for ph in phases]})
    else:
        out.result(f"restored snapshot {snap.id}")
    return EXIT_OK


def _forget_builds(state: Path, phases) -> None:
    """Build packages restore reinstalled carry no record of the torch they were built for."""
    from packaging.requirements import InvalidRequirement

    from backendpick import builds

    names = []
    for ph in phases:
        for text in ph.requirements:
            try:
                names.append(config.normalize(Requirement(text).name))
            except InvalidRequirement:
                continue
    builds.forget(state, names)


def check_available(phases: list[Phase], target, pip_config, env: dict | None = None) -> list[str]:
    """Each ``name==version`` the restore installs, looked up on the index its phase uses (the
    backend index for backend builds, the user's indexes otherwise); the ones not offered there
    for this interpreter. An index that cannot be asked is an error: without the answer the
    restore could remove what it cannot put back."""
    from backendpick.index import IndexClient, IndexUnavailable, PageNotFound, fetch_many

    client = IndexClient(pip_config, env=env)
    user_indexes = [pip_config.get("index-url") or facts_mod.load().pypi_url, *pip_config.list("extra-index-url")]
    if pip_config.get("no-index"):
        user_indexes = []
    find_links = bool(pip_config.list("find-links"))
    missing: list[str] = []
    pages: dict = {}
    wanted: dict = {}
    for ph in phases:
        if ph.name == "remove":
            continue
        for text in ph.requirements:
            req = Requirement(text)
            if req.url:
                problem = _url_problem(req.url)
                if problem:
                    missing.append(f"{req.name} ({problem})")
                continue
            version = next(iter(req.specifier)).version
            indexes = [ph.index_url] if ph.index_url else user_indexes
            wanted[text] = (req.name, version, indexes, ph.index_url is None and find_links)
            for url in indexes:
                pages[(url, req.name)] = (url, req.name)
    answers = fetch_many(client, pages) if pages else {}
    for text, (name, version, indexes, elsewhere) in wanted.items():
        found = False
        unknown = []
        for url in indexes:
            files = answers[(url, name)]
            if isinstance(files, IndexUnavailable):
                unknown.append(str(files))
            elif not isinstance(files, PageNotFound) and _offers(files, name, version, target):
                found = True
        if found or elsewhere:  # find-links folders are pip's to search
            continue
        if unknown:
            raise StateError(f"cannot check that {text} is still available: {unknown[0]}",
                             hint="nothing was changed; run again when the index answers")
        missing.append(f"{text} ({', '.join(config.redact(u) for u in indexes) or 'no index configured'})")
    return missing


def _offers(files, name: str, version: str, target) -> bool:
    """A wheel of exactly ``version`` for the target's tags, or its sdist (pip builds it). A
    yanked file counts: pip installs a yanked release when it is pinned with ``==``."""
    from backendpick.index import installable

    want = Version(version)
    return any(c.version == want for c in installable(files, name, tags=target.tags, sdists=True, yanked=True))


def _url_problem(url: str) -> str | None:
    """A local file or folder the snapshot installed from must still exist; remote URLs are
    left to pip (a VCS URL has no page to ask)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    path = Path(unquote(parts.path))
    return None if path.exists() else f"{path} no longer exists"
