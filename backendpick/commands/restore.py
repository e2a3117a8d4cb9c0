"""``backendpick restore``: return an environment to a snapshot taken before an install.

Nothing is removed before every distribution the snapshot needs is known to come back: its kept
copy there with its hash, a cached build, or its version on its index (``check_available``).
The environment as it is now is recorded first, with copies of what the restore removes, so a
restore can itself be undone exactly. The phases (state/restore_plan.py) run through install's executor
(execute/executor.py): the same environment, log files, signal handling and redacted output as an
install. Afterwards the metadata pip rewrote (INSTALLER, REQUESTED, direct_url.json) and the
build records are put back as the snapshot has them, and every distribution is compared with
the snapshot, files included.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import Requirement
from packaging.version import Version

from backendpick import redaction
from backendpick.edges import envlock, paths, runner
from backendpick.edges.paths import logs, state_dir
from backendpick.edges.runner import stopped
from backendpick.errors import EXIT_OK, InstallError, StateError
from backendpick.execute import engines, executor
from backendpick.inputs import config, installer as installer_mod, pip_config as pipconf
from backendpick.knowledge import facts as facts_mod
from backendpick.model.plan import Phase
from backendpick.output import Output, size_text, where_flags
from backendpick.state import environment_pins, restore_plan, snapshots
from backendpick.target import inspection as target_mod


def run(out: Output, *, python: Path | None, snapshot_id: str | None, project_dir: Path,
        index_url: str | None, dry_run: bool, list_only: bool, installer: str | None = None) -> int:
    """``installer``: --installer; uv runs the phases with no pip process (a venv uv made has none)."""
    facts = facts_mod.load()
    settings = config.load(facts, project_dir=project_dir, index_url=index_url, installer=installer)
    target = target_mod.inspect(target_mod.choose_python(python))
    state = state_dir(target)
    if list_only:
        return _list(out, state)
    env = dict(os.environ)
    chosen = installer_mod.resolve(settings.installer.value, env, settings.installer.source)
    pip_config = pipconf.read(env, target.prefix)
    # The pins install left in the environment would block the way back: our runs ignore them.
    env.update(environment_pins.own_runs_env(env, target.prefix, pip_config))

    try:
        with runner.stop_children_on_signals(), envlock.hold(state, on_wait=out.info) as waited:
            if waited:  # another run changed it meanwhile
                target = target_mod.inspect(target.python)
            return _restore_locked(out, target, state, settings, pip_config, env, snapshot_id, dry_run, python,
                                   chosen)
    except (runner.Interrupted, KeyboardInterrupt) as exc:
        raise stopped(exc, "the environment is unchanged") from None


def _list(out: Output, state: Path) -> int:
    """Each snapshot: when, before which command, its torch, what it keeps; the one a plain
    ``restore`` takes is marked."""
    items = snapshots.listing(state)
    if out.json_mode:
        out.emit_json({"ok": True, "snapshots": [i.to_json() for i in items]})
        return EXIT_OK
    if not items:
        out.line("no snapshots recorded for this environment")
        return EXIT_OK
    rows = []
    for i in items:
        s = i.snapshot
        if s is None:
            rows.append((i.id, None, None, None, None, f"damaged: {i.problem}"))
            continue
        torch = f"{s.torch} ({s.backend})" if s.torch and s.backend else s.torch or "none"
        before = s.command or s.by  # the command names its verb: "install --backend cu128 torch"
        kept = size_text(s.kept_bytes()) if s.kept_bytes() else None
        rows.append((i.id, s.created.replace("T", " ") or None, before, torch, kept, "default" if i.default else None))
    out.table("Snapshot", ["Id", "Taken", "Before", "Torch", "Kept", "Note"], rows)
    return EXIT_OK


def _sources(target, state: Path, settings, pip_config, env: dict) -> restore_plan.Sources:
    return restore_plan.Sources(
        index_template=settings.index_url.value, default_index=pip_config.get("index-url") or facts_mod.load().pypi_url,
        family=frozenset(settings.backend_packages), build_names=frozenset(settings.no_build_isolation),
        cache_base=paths.wheel_cache(env), state=state)


def _restore_locked(out: Output, target, state: Path, settings, pip_config, env: dict, snapshot_id: str | None,
                    dry_run: bool, python: Path | None, installer: installer_mod.Installer) -> int:
    snap = snapshots.load(state, snapshot_id)
    sources = _sources(target, state, settings, pip_config, env)
    rplan = restore_plan.plan(snap, target, sources)
    phases = list(rplan.phases)
    # The installer runs the restore; an index URL holding credentials goes to its environment,
    # never on its command line (execute/engines.py).
    renderer = engines.for_target(target, pip_config, env, installer)
    if dry_run or not phases:
        for ph in phases if not out.json_mode else ():
            out.line(renderer.shown(ph))
        if not phases:
            out.info(f"the environment already matches snapshot {snap.id}" + _taken(snap))
        if out.json_mode:
            out.emit_json({"ok": True, "snapshot": snap.id, "dry_run": dry_run,
                           "phases": [renderer.phase_json(ph) for ph in phases]})
        return EXIT_OK
    missing = list(rplan.unavailable) + _kept_problems(snap, rplan, state) + check_available(phases, target, pip_config, env)
    if missing:
        raise InstallError(
            f"cannot restore snapshot {snap.id}: not available any more: {'; '.join(missing[:5])}",
            hint="nothing was changed; restore another snapshot (backendpick restore --list)",
        )
    before = _snapshot_before(out, target, state, snap, phases, settings, env)
    undo = f"backendpick restore{where_flags(python, settings)} {before.id}"
    out.info(f"snapshot {before.id} recorded; to undo this restore: {undo}")
    _run(out, renderer, phases, env, logs(state), undo)
    after = target_mod.rescan(target)
    restore_plan.put_back(snap, after, rplan.restored)
    _records(state, snap, rplan.restored, settings)
    left = restore_plan.differences(snap, after)
    if left:
        raise InstallError(f"restore of snapshot {snap.id} did not bring everything back: {'; '.join(left[:5])}",
                           hint=f"the package index may no longer offer those versions; to undo: {undo}")
    _clear_stashes(out, after)
    if environment_pins.pins_path(target.prefix).exists():
        # The pins follow the stack back (an install wrote them; they are rewritten here).
        names = set(settings.backend_packages) | set(settings.no_build_isolation)
        environment_pins.write(target.prefix, environment_pins.pin_lines(after.installed, names), env=env,
                               backend=f"restored snapshot {snap.id}")
        out.info(f"rewrote the environment's pins ({environment_pins.pins_path(target.prefix)})")
    if out.json_mode:
        out.emit_json({"ok": True, "snapshot": snap.id, "undo_snapshot": before.id,
                       "phases": [renderer.phase_json(ph) for ph in phases]})
    else:
        out.result(f"restored snapshot {snap.id}" + _taken(snap))
    return EXIT_OK


def _clear_stashes(out: Output, after) -> None:
    """pip's stash of an uninstall it was killed in (the environment is back, so they hold
    nothing it lacks)."""
    import shutil

    gone = []
    for path in restore_plan.pip_stashes(after):
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            gone.append(path.name)
        except OSError as exc:
            out.warn(f"cannot remove {path}, left by an interrupted pip: {exc.strerror or exc}")
    if gone:
        out.info(f"removed what an interrupted pip left beside the packages: {', '.join(gone)}")


def _taken(snap: snapshots.Snapshot) -> str:
    """`` (taken 2026-11-30 10:15:00 before install --backend cu128 torch)``, as far as known."""
    when = f"taken {snap.created.replace('T', ' ')}" if snap.created else ""
    before = f"before {snap.command}" if snap.command else ""  # it names its verb (install, restore)
    words = " ".join(w for w in (when, before) if w)
    return f" ({words})" if words else ""


def _kept_problems(snap: snapshots.Snapshot, rplan: restore_plan.RestorePlan, state: Path) -> list[str]:
    """Kept copies the restore installs that are gone or not the bytes kept: checked before any
    change (pip checks the hash again as it installs)."""
    from backendpick.state import kept_copies

    out = []
    for name in rplan.restored:
        p = snap.packages.get(name)
        if p is not None and p.kept and kept_copies.Copy.from_json(p.kept).path(state).is_file():
            problem = kept_copies.check(kept_copies.Copy.from_json(p.kept), state)
            if problem:
                out.append(f"{p.name}=={p.version} ({problem})")
    return out


def _snapshot_before(out: Output, target, state: Path, snap, phases, settings, env: dict) -> snapshots.Snapshot:
    """The environment as it is now, recorded, with copies of what the restore removes, so the
    restore itself can be undone exactly."""
    from backendpick.state import kept_copies
    from backendpick.target.installed_torch import torch_build

    tb = torch_build(target, facts_mod.load())
    before = snapshots.record(target, state, by=snapshots.BY_RESTORE, command=f"restore {snap.id}",
                              torch=tb.version if tb else None, backend=str(tb.backend) if tb else None)
    before, kept = kept_copies.before_change(phases, target, before, state, build_names=settings.no_build_isolation,
                                             cache_base=paths.wheel_cache(env))
    for name, why in sorted(kept.unkept.items()):
        out.warn(f"{name} may be replaced, and no copy of it can be kept: {why}")
    if kept.copies:
        out.info(f"kept a copy of {kept_copies.describe(kept)} in {paths.kept(state)} ({kept.seconds:.1f}s)")
    return before


def _run(out: Output, renderer: engines.Renderer, phases, env: dict, log_dir: Path, undo: str) -> None:
    executor.open_logs(log_dir)
    try:
        for ph in phases:
            shown = renderer.shown(ph)
            out.info(f"phase {ph.name}: {' '.join(ph.requirements)}\n  $ {shown}")
            res, log_path, _seconds = executor.run_phase(
                renderer.command(ph), ph.name, shown=shown, user_env=env, log_dir=log_dir,
                on_line=(lambda line: out.info(f"  | {line}")) if out.verbose else (lambda line: None))
            if not res.ok:
                raise InstallError(f"restore phase '{ph.name}' failed (exit {res.returncode})",
                                   details=executor.failure_details(res.stdout, shown),
                                   hint=f"full output: {log_path}; to return to the environment before "
                                        f"this restore: {undo}")
    except (runner.Interrupted, KeyboardInterrupt) as exc:
        raise stopped(exc, "pip was stopped and the environment may be partly restored",
                      f"to return to the environment before this restore: {undo}") from None


def _records(state: Path, snap: snapshots.Snapshot, restored, settings) -> None:
    """The build records of the restored build packages: the snapshot's (what they were built
    for), or none where it has none (verify then says nothing tells which torch they match)."""
    from backendpick.state import build_records

    nbi = set(settings.no_build_isolation)
    names = [n for n in restored if n in nbi]
    if not names:
        return
    recorded = restore_plan.build_records(snap, names)
    current = {n: r for n, r in build_records.read(state).items() if n not in names}
    for name, row in recorded.items():
        current[name] = build_records.Record(**{k: row.get(k) for k in build_records.Record.__dataclass_fields__})
    build_records.write(state, current)


def check_available(phases: list[Phase], target, pip_config, env: dict | None = None) -> list[str]:
    """Each ``name==version`` the restore installs, looked up on the index its phase uses (the
    backend index for backend builds, the user's indexes otherwise); the ones not offered there
    for this interpreter. An index that cannot be asked is an error: without the answer the
    restore could remove what it cannot put back."""
    from backendpick.indexes.client import IndexClient, IndexUnavailable, PageNotFound, fetch_many

    client = IndexClient(pip_config, env=env)
    user_indexes = [pip_config.get("index-url") or facts_mod.load().pypi_url, *pip_config.list("extra-index-url")]
    if pip_config.get("no-index"):
        user_indexes = []
    find_links = bool(pip_config.list("find-links"))
    missing: list[str] = []
    pages: dict = {}
    wanted: dict = {}
    for ph in phases:
        if ph.name in ("remove", "restore-kept", restore_plan.INCOMPLETE):
            continue  # kept copies and cached wheels are checked by hash
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
        missing.append(f"{text} ({', '.join(redaction.redact(u) for u in indexes) or 'no index configured'})")
    return missing


def _offers(files, name: str, version: str, target) -> bool:
    """A wheel of exactly ``version`` for the target's tags, or its sdist (pip builds it). A
    yanked file counts: pip installs a yanked release when it is pinned with ``==``."""
    from backendpick.indexes.client import installable

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
