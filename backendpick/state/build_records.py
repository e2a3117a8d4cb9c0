"""What each build package of an environment was built or downloaded for.

A flash-attn wheel works only next to the torch it was compiled against (version, CUDA or ROCm,
C++ ABI), and nothing installed says which one that was: a source build's metadata is plain
``2.7.4``, and the prebuilt wheels' METADATA drops the ``+cu12torch2.5cxx11abiFALSE`` of their
file name. So install records it, per package, in ``builds.json`` of the environment's state
folder (``paths.state_dir``), and ``verify`` compares the record with the torch installed now.

The file is replaced atomically (temporary file + rename): a reader sees the old record or the
new one, never half of one. Reading it is part of a look at the target
(``target/built_for.py``, read into ``target/installed_stack.py``); this module writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

from backendpick.edges.durable import write_atomic
from backendpick.target.built_for import FORMAT, Record, path, read

PIP = "pip"  # a build phase without steps: pip built it with --no-build-isolation


def write(state: Path, records: Mapping[str, Record]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, "packages": {n: r.to_json() for n, r in sorted(records.items())}},
                      indent=2, sort_keys=True) + "\n"
    write_atomic(path(state), text)


def update(state: Path, new: Iterable[Record], installed: Mapping[str, str]) -> dict[str, Record]:
    """Add ``new`` to the records and drop those of packages no longer installed at the recorded
    version (``installed``: normalized name -> version). Returns what was written."""
    records = {n: r for n, r in read(state).items() if n in installed and r.matches(installed[n])}
    for record in new:
        if record.name in installed:
            records[record.name] = Record(**{**record.to_json(), "version": installed[record.name]})
    write(state, records)
    return records


def forget(state: Path, names: Iterable[str]) -> None:
    """Drop the records of ``names`` (reinstalled by something that does not record builds, such
    as restore): verify then warns that nothing says which torch they were built for."""
    records = read(state)
    drop = {n for n in names if n in records}
    if drop:
        write(state, {n: r for n, r in records.items() if n not in drop})


def from_torch(name: str, version: str, torch, how: str, wheel: str | None = None) -> Record:
    """A record for a package built or chosen for ``torch`` (a installed_torch.TorchInfo); its wheel's
    URL without user information (the file is read by anyone who can read the environment)."""
    from backendpick.redaction import strip

    return Record(name, version, torch.version, torch.cuda, torch.hip, torch.cxx11abi, how,
                  strip(wheel) if wheel else wheel)


def after_install(state: Path, phase, target) -> None:
    """Record the build phase that just ran (its steps, or its plain pip run) for ``target`` (a
    target.Target inspected before the phases)."""
    from backendpick.model.names import normalize
    from backendpick.target import installed_torch
    from backendpick.target.inspection import rescan
    from packaging.requirements import Requirement

    python = target.python
    after = rescan(target)
    installed = {n: d.version for n, d in after.installed.items()}
    ctx = phase.context
    torch = getattr(ctx, "torch", None) if phase.steps else None
    if torch is None:
        torch = installed_torch.torch_info(python)
    if phase.steps:
        new = [from_torch(s.name, s.version or "", torch, s.how, s.wheel) for s in phase.steps]
    else:
        new = [from_torch(normalize(Requirement(r).name), "", torch, PIP) for r in phase.requirements]
    update(state, new, installed)


__all__ = ["Record", "after_install", "forget", "from_torch", "path", "read", "update", "write"]
