"""``backendpick detect``: what hardware is here and which backend it should get, with why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backendpick import config, facts as facts_mod
from backendpick.hardware import Hardware
from backendpick.output import Output
from backendpick.probe import ProbeSettings, probe
from backendpick.select import Decision, Explicit, choose, table_offers


@dataclass(frozen=True)
class Detection:
    hardware: Hardware
    decision: Decision
    settings: config.Settings

    @property
    def warnings(self) -> list[str]:
        return list(self.hardware.warnings) + list(self.decision.warnings)


def explicit_choice(settings: config.Settings) -> Explicit | None:
    if settings.chosen_backend is None:
        return None
    return Explicit(settings.chosen_backend, settings.backend.source)


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


def to_json(d: Detection) -> dict:
    return {
        "backend": d.decision.backend.name,
        "reason": d.decision.reason,
        "decided_by": d.decision.source,
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
            ("backend", d.decision.backend.name),
            ("decided-by", d.decision.source),
            ("reason", d.decision.reason),
        ]
    )
    for r in d.decision.rejected:
        out.line(f"rejected: {r}")
    for w in d.warnings:
        out.warn(w)


def run(out: Output, *, project_dir: Path, backend: str | None, cuda_compat: str | None) -> int:
    facts = facts_mod.load()
    settings = config.load(facts, project_dir=project_dir, backend=backend, cuda_compat=cuda_compat)
    d = detect(settings)
    if out.json_mode:
        out.emit_json(to_json(d))
    else:
        render(out, d)
    return 0
