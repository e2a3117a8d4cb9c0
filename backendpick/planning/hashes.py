"""Requirements with ``--hash``: the phases' requirements written to hash-checked requirement files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from backendpick.model import names, plan as plan_mod


def with_hashes(plan: plan_mod.Plan, hashes: dict, state: Path) -> plan_mod.Plan:
    """Requirements with ``--hash`` (pip-compile --generate-hashes) reach pip in a requirements
    file, the only place pip accepts hashes, one file per phase (``Phase.hashed_file``, written
    before the phase runs); pip then checks every file it downloads, as ``pip install -r`` of the
    user's file would.

    The backend phase installs its packages without dependencies: in hash-checking mode pip
    needs a hash for every dependency it installs, and the user's file lists torch's
    dependencies (hashed) among the ordinary packages, which the rest phase installs. Hashes of
    PyPI's torch do not match the backend index's builds; pip says so (generate them against
    that index)."""
    phases = []
    for ph in plan.phases:
        if ph.name not in (plan_mod.BACKEND, plan_mod.REST) or ph.skip is not None or ph.steps:
            phases.append(ph)
            continue
        named = [w for w in ph.requirements if not w.startswith("-") and hash_key(w) in hashes]
        if not named:
            phases.append(ph)
            continue
        lines = []
        words = list(ph.requirements)
        i = 0
        while i < len(words):
            w = words[i]
            if w == "-e":
                lines.append(f"-e {words[i + 1]}")
                i += 2
                continue
            key = hash_key(w)
            lines.append(" ".join([w, *(f"--hash={h}" for h in hashes.get(key, ()))]))
            i += 1
        phases.append(replace(ph, hashed_file=str(state / f"hashed-{ph.name}.txt"), hashed_lines=tuple(lines),
                              no_deps=ph.no_deps or ph.name == plan_mod.BACKEND))
    return replace(plan, phases=tuple(phases))


def hash_key(word: str) -> str | None:
    try:
        return names.normalize(Requirement(word).name)
    except InvalidRequirement:  # a path or URL passed as written: it has no hash of its own
        return None
