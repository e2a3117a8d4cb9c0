"""``backendpick lock``: one ``pylock.<backend>.toml`` per backend (issue 21, PEP 751).

For each backend (``--backend``, repeatable; without one, the backend auto selection chooses
here) the pipeline makes the plan install would make for an empty environment of the target
interpreter (``--python``): the same selection (selection/selector.py), the same phases of
intents. A named backend needs no GPU here: a CUDA lock is made on a laptop, as a Docker build
makes one. ``execute/lock_resolve.py`` resolves the phases to files; the file is written
atomically, in the project folder unless ``-o DIR``. Nothing in the target changes: every
resolution is a dry run (pip's, or ``uv pip compile`` with ``--installer uv``: then no pip
process runs), and no state is written into it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from backendpick.edges.durable import write_atomic
from backendpick.errors import EXIT_OK, ConfigError
from backendpick.execute import lock_resolve
from backendpick.model import lock as lock_mod
from backendpick.output import Output
from backendpick.planning.pipeline import Request, prepare
from backendpick.target import inspection as target_mod


def run(out: Output, req: Request, backends: tuple[str, ...], output_dir: Path | None) -> int:
    target = target_mod.inspect(target_mod.choose_python(req.python))
    # The lock is the whole plan, not what this environment still lacks: plan for an empty one.
    empty = replace(target, installed={}, files={})
    folder = output_dir if output_dir is not None else req.project_dir
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a directory", hint="pass -o DIR naming an existing folder")
    written = []
    for name in dict.fromkeys(backends or (None,)):
        prepared = prepare(replace(req, backend=name), target=empty, use_lock=False)
        if not prepared.plan.active:
            raise ConfigError("nothing to lock: the request installs no package",
                              hint="name requirements, -r FILE, or [project].dependencies in pyproject.toml")
        locked = lock_resolve.lock(prepared, on_note=out.info)
        path = folder / lock_mod.NAME_PATTERN.format(backend=locked.backend)
        try:
            write_atomic(path, lock_mod.to_toml(locked))
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        for w in prepared.plan.warnings:
            out.warn(w)
        written.append((path, locked))
        if not out.json_mode:
            out.result(f"wrote {path}: {len(locked.packages)} packages for {locked.backend}"
                       + (f" (torch {locked.torch})" if locked.torch else ""))
    if out.json_mode:
        out.emit_json({"ok": True, "locks": [
            {"path": str(p), "backend": lk.backend, "torch": lk.torch, "packages": len(lk.packages),
             "phases": {pkg.name: pkg.phase for pkg in lk.packages},
             "builds": {n: b.how for n, b in lk.builds.items()}} for p, lk in written]})
    return EXIT_OK
