"""``backendpick detect``: what hardware is here and which backend it should get, with why.

The backend is the one ``plan`` chooses (its one selection, selection/selector.py, reached
through ``pipeline.select_backend``): the same candidates, index offers, pins and installed torch,
for the project's torch (``plan torch`` where there is no project). Where plan would stop (exit
3), detect still reports the hardware and the decision, and says why plan stops. ``--offline``
asks no index and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from backendpick.errors import EXIT_OK
from backendpick.inputs import config
from backendpick.knowledge import facts as facts_mod
from backendpick.model.choice import Decision
from backendpick.model.hardware import Hardware
from backendpick.output import Output


OFFLINE_NOTE = ("table (--offline: no backend index was asked; plan asks them and may choose an older "
                "backend where the newest has no matching torch)")


@dataclass(frozen=True)
class Detection:
    hardware: Hardware
    decision: Decision
    settings: config.Settings
    # "index": chosen as plan chooses; "table": from the packaged table (--offline, or no index answered)
    offers_source: str = "table"
    offer_warnings: tuple = ()
    offline: bool = False
    installed_torch: object = None  # torch_origin.TorchOrigin of the target's torch (not with --offline)
    # What the answer was made from, for the record the next detect may answer from
    # (state/noop.py): (the target's interpreter and state folder, None for --offline's own;
    # files; folders of the installed set; variables; span in which the index pages read are
    # fresh); None: the next one must ask again.
    inputs: tuple | None = None

    @property
    def warnings(self) -> list[str]:
        return list(self.hardware.warnings) + list(self.offer_warnings) + list(self.decision.warnings)


def detect_offline(settings: config.Settings) -> Detection:
    """Probe, and choose from the packaged release table: no index, no target."""
    from backendpick.machine.probe import ProbeSettings, probe
    from backendpick.selection import selector

    facts = facts_mod.load()
    hardware = probe(facts, ProbeSettings.from_env())
    inputs = (None, None, [str(settings.project_dir / "pyproject.toml")], [], [], None)
    return Detection(hardware, selector.table_choice(facts, hardware, settings), settings, offline=True,
                     inputs=inputs)


def detect_as_plan(req, *, inspection=None) -> Detection:
    """The choice ``plan`` makes on this machine for ``req`` (a ``pipeline.Request``).
    ``inspection``: the target's, started early by the console script (``target.Inspection``)."""
    from backendpick.planning import pipeline  # not for --offline: plan's machinery

    found = pipeline.select_backend(req, inspection=inspection)
    chosen = found.chosen
    # Hardware warnings are the Detection's own; the rest are what plan would warn about.
    notes = [w for w in found.warnings if w not in found.hardware.warnings]
    if chosen.refusal is not None:
        notes.append(f"plan and install stop here (exit 3): {chosen.refusal.message}")
    # As plan says it: "index", "table" (no index answered), "recorded" (the last install's record), "installed".
    source = "installed" if chosen.kept else chosen.offers.source if chosen.offers is not None else "table"
    inputs = None
    if found.pages is not None:  # every index page came fresh from the cache, no pip ran
        from backendpick.state import noop

        from backendpick.edges.paths import state_dir

        target = found.target
        files, names = noop.inputs_of(target, found.settings.project_dir, found.pip_config, os.environ)
        inputs = (str(target.python), str(state_dir(target, os.environ)), files + found.pages[0], list(target.path),
                  names, found.pages[1])
    return Detection(found.hardware, chosen.decision, found.settings, source, tuple(notes),
                     installed_torch=found.stack.origin, inputs=inputs)


def to_json(d: Detection) -> dict:
    return {
        "backend": d.decision.backend.name,
        "reason": d.decision.reason,
        "decided_by": d.decision.source,
        "offers_source": d.offers_source,
        "offline": d.offline,
        "cuda_compat": d.settings.cuda_compat.value,
        "accelerators": [a.to_json() for a in d.hardware.accelerators],
        "nvidia_driver": d.hardware.nvidia_driver,
        "driver_cuda": d.hardware.driver_cuda,
        "driver_cuda_source": d.hardware.driver_cuda_source,
        "rocm_version": d.hardware.rocm_version,
        "container_cuda": d.hardware.container_cuda,
        "wsl": d.hardware.wsl,
        "torch_releases": d.decision.to_json()["torch_releases"],
        "rejected": list(d.decision.rejected),
        "unserved": list(d.decision.unserved),
        "warnings": d.warnings,
        "installed_torch": d.installed_torch.to_json() if d.installed_torch is not None else None,
    }


def render(out: Output, d: Detection) -> None:
    hw = d.hardware
    rows = [
        (
            a.index if a.index is not None else "-",
            a.vendor,
            a.name,
            a.driver_version,
            a.compute_capability or a.arch,
            a.ignored and f"ignored: {a.ignored}" or "",
        )
        for a in hw.accelerators
    ]
    if rows:
        out.table("GPU", ["Index", "Vendor", "Name", "Driver", "Arch", "Note"], rows)
    else:
        out.line("gpu: none found")
    out.fields(
        [
            ("nvidia-driver", hw.nvidia_driver),
            ("driver-cuda", hw.driver_cuda and f"{hw.driver_cuda} ({hw.driver_cuda_source})"),
            ("rocm", hw.rocm_version),
            ("container-cuda", hw.container_cuda),
            ("installed", d.installed_torch.describe() if d.installed_torch is not None
             and d.installed_torch.notable else None),
            ("backend", d.decision.backend.name),
            ("decided-by", d.decision.source),
            ("reason", d.decision.reason),
            ("offers-from", OFFLINE_NOTE if d.offline else d.offers_source),
        ]
    )
    for r in d.decision.rejected:
        out.line(f"rejected: {r}")
    for w in d.warnings:
        out.warn(w)


def _watch(d: Detection):
    """A ``noop.Watch`` of what this answer was made from, so that the next ``detect`` asking the
    same prints it before the machinery loads while none of it has changed and its pages are
    fresh (state/noop.py); None where it cannot. Not after a probe warning: a tool that failed
    may answer next time."""
    from backendpick.state import noop

    if d.inputs is None or d.hardware.warnings or not noop.pending():
        return None
    python, state, files, folders, names, fresh = d.inputs
    return noop.watch(python, state, files, folders, variables=names, fresh=fresh, command="detect")


def run(out: Output, *, project_dir: Path, backend: str | None, cuda_compat: str | None, python: Path | None = None,
        index_url: str | None = None, offline: bool = False, inspection=None) -> int:
    from backendpick.state import noop

    noop.listen(out)  # what the next detect asking the same prints, kept for its record
    if offline:
        facts = facts_mod.load()
        settings = config.load(facts, project_dir=project_dir, backend=backend, index_url=index_url,
                               cuda_compat=cuda_compat)
        d = detect_offline(settings)
    else:
        from backendpick.planning.request import Request

        # Without a project, the torch plan would choose for `plan torch`.
        no_project = config.read_pyproject(project_dir).path is None
        d = detect_as_plan(Request(project_dir=project_dir, requirements=("torch",) if no_project else (),
                                   python=python, backend=backend, index_url=index_url, cuda_compat=cuda_compat),
                           inspection=inspection)
    watch = _watch(d)
    if out.json_mode:
        out.emit_json(to_json(d))
    else:
        render(out, d)
    if watch is not None:
        watch.finish(unchanged=True)
    return EXIT_OK
