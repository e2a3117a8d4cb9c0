"""``backendpick detect``: what hardware is here and which backend it should get, with why."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from backendpick.errors import EXIT_OK
from backendpick.inputs import config
from backendpick.knowledge import facts as facts_mod
from backendpick.machine.probe import ProbeSettings, probe
from backendpick.model.choice import Decision
from backendpick.model.hardware import Hardware
from backendpick.output import Output
from backendpick.selection.backend_choice import choose, explicit_choice, keep_installed_gpu_backend, table_offers


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

    @property
    def warnings(self) -> list[str]:
        return list(self.hardware.warnings) + list(self.offer_warnings) + list(self.decision.warnings)


def detect(settings: config.Settings, offers=None) -> Detection:
    """Probe and choose. ``offers`` defaults to the packaged release table."""
    facts = facts_mod.load()
    hardware = probe(facts, ProbeSettings.from_env())
    decision = choose(
        hardware,
        facts,
        offers if offers is not None else table_offers(facts),
        policy=settings.cuda_compat.value,
        explicit=explicit_choice(settings),
    )
    return Detection(hardware, decision, settings)


def detect_as_plan(settings: config.Settings, *, python: Path | None, env: dict | None = None,
                   inspection=None) -> Detection:
    """The choice ``plan`` makes on this machine: the same candidates, the same index offers for
    the project's torch specifier and the target Python, the same rule for an installed GPU torch.
    ``inspection``: the target's, started early by the console script (``target.Inspection``)."""
    import os

    from packaging.requirements import Requirement
    from packaging.version import Version

    from backendpick.errors import ConfigError
    from backendpick.indexes.client import IndexClient
    from backendpick.inputs import pip_config, requirements
    from backendpick.selection import stays
    from backendpick.selection.backend_choice import runs_here
    from backendpick.selection.offers import candidate_kinds, gather
    from backendpick.selection.resolve import Pin
    from backendpick.selection.torch_version import torch_spec
    from backendpick.target import inspection as target_mod, torch_origin as origin_mod
    from backendpick.target.installed_torch import installed_backend

    env = dict(os.environ if env is None else env)
    facts = facts_mod.load()
    hardware = probe(facts, ProbeSettings.from_env(env))
    target = target_mod.take_or_inspect(inspection, target_mod.choose_python(python, env))
    try:
        wanted = requirements.gather((), (), settings.pyproject, (), ()).requirements
    except ConfigError:
        wanted = ()  # no project: any torch
    explicit = explicit_choice(settings)
    installed = origin_mod.of(target, facts, env)
    pins = [Pin(Requirement(f"torch{torch_spec(wanted)}"), "you")]
    if installed is not None and installed.foreign and stays.replace_reason(installed, explicit, pins) is None:
        # A torch no index serves that the project accepts stays, as plan keeps it: no index asked.
        nearest = stays.nearest_index_backend(installed, facts.all_backends())
        decision = stays.kept_decision(installed, upgrade=False, nearest=nearest)
        return Detection(hardware, decision, settings, "installed", (), installed_torch=installed)
    # The installed torch's backend, for "auto never downgrades" (not one no index serves).
    kept = installed_backend(target, facts) if installed is None or not installed.foreign else None
    if explicit is not None:
        candidates = [explicit.backend]
    else:
        kinds = candidate_kinds(hardware)
        candidates = [b for b in facts.all_backends() if b.kind in kinds]
        if kept is not None and kept.is_gpu and kept not in candidates:
            candidates.append(kept)
    from backendpick.indexes.credentials import configured_urls

    client = IndexClient(pip_config.read(env, target.prefix), env=env, urls=configured_urls(settings))
    offers = gather(facts, client, settings.index_url.value, candidates,
                    torch_spec(wanted), target)
    releases, source, notes = offers.releases, offers.source, list(offers.warnings)
    unanswered = offers.unanswered()
    if unanswered:
        # plan stops here with this error; detect still reports the hardware, from the table.
        releases, source = table_offers(facts), "table"
        notes.append(f"the backend index has no torch for any backend: {unanswered}; chose from backendpick's "
                     "packaged release table (plan and install stop here: check the index URL template)")
    decision = choose(hardware, facts, releases, policy=settings.cuda_compat.value, explicit=explicit)
    torch = target.get("torch")
    decision = keep_installed_gpu_backend(decision, kept, torch.version if torch is not None else None)
    if installed is not None and installed.backend in offers.versions and stays.index_build_stays(
            installed, decision, pins, runs_here=runs_here(facts, hardware, installed.backend,
                                                           Version(installed.version).release,
                                                           settings.cuda_compat.value)):
        decision = stays.stays_decision(installed, decision)  # as plan keeps it (issue 18, item 7)
    return Detection(hardware, decision, settings, source, tuple(notes), installed_torch=installed)


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


def run(out: Output, *, project_dir: Path, backend: str | None, cuda_compat: str | None, python: Path | None = None,
        index_url: str | None = None, offline: bool = False, inspection=None) -> int:
    facts = facts_mod.load()
    settings = config.load(facts, project_dir=project_dir, backend=backend, index_url=index_url, cuda_compat=cuda_compat)
    d = replace(detect(settings), offline=True) if offline else detect_as_plan(settings, python=python, inspection=inspection)
    if out.json_mode:
        out.emit_json(to_json(d))
    else:
        render(out, d)
    return EXIT_OK
