"""Which GPUs torch will see: the ``*_VISIBLE_DEVICES`` variables as CUDA, HIP and ROCr read
them; the GPUs they hide stay listed, marked ignored."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Mapping, Sequence

from backendpick.model.hardware import Accelerator


def visible_devices(value: str | None, uuids: Sequence[str | None]) -> list[int] | None:
    """Positions (into ``uuids``, the devices in enumeration order) that a ``*_VISIBLE_DEVICES``
    value leaves visible; None when the variable is unset (no restriction).

    CUDA's rules, which HIP and ROCr share: comma-separated indices or UUIDs (``GPU-...``,
    ``MIG-...``, a unique prefix is enough); the list ends at the first entry that names no
    device (so ``-1`` hides every GPU, and so does an empty value).
    """
    if value is None:
        return None
    out: list[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        position = None
        if re.fullmatch(r"\d+", entry):
            position = int(entry) if int(entry) < len(uuids) else None
        elif entry:
            key = entry.lower()
            found = [i for i, u in enumerate(uuids) if u and key.startswith(("gpu-", "mig-")) and u.lower().startswith(key)]
            position = found[0] if len(found) == 1 else None
        if position is None or position in out:
            break  # CUDA ignores the rest of the list after an invalid or repeated entry
        out.append(position)
    return out


def visible_nvidia(env: Mapping[str, str], uuids: Sequence[str | None]) -> tuple[list[int] | None, str]:
    value = env.get("CUDA_VISIBLE_DEVICES")
    return visible_devices(value, uuids), f"CUDA_VISIBLE_DEVICES={value!r}"


def order_note(env: Mapping[str, str], gpus: Sequence[Accelerator]) -> str | None:
    """Indices are read in nvidia-smi's (PCI bus) order; CUDA numbers the fastest GPU first
    unless told otherwise, which matters only when the models differ."""
    value = env.get("CUDA_VISIBLE_DEVICES") or ""
    numeric = any(e.strip().isdigit() for e in value.split(","))
    if numeric and len({g.name for g in gpus}) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        return ("CUDA_VISIBLE_DEVICES indices were read in nvidia-smi's order (PCI bus), but CUDA numbers the "
                "fastest GPU first: set CUDA_DEVICE_ORDER=PCI_BUS_ID or list GPU UUIDs so both agree")
    return None


def visible_amd(env: Mapping[str, str], count: int) -> tuple[list[int] | None, str]:
    """ROCR_VISIBLE_DEVICES picks from all GPUs; HIP_VISIBLE_DEVICES (else CUDA_VISIBLE_DEVICES,
    which HIP also reads) then picks from what ROCr left, by position in that list."""
    positions: list[int] | None = None
    said = []
    rocr = env.get("ROCR_VISIBLE_DEVICES")
    if rocr is not None:
        positions = visible_devices(rocr, [None] * count)
        said.append(f"ROCR_VISIBLE_DEVICES={rocr!r}")
    hip_name = "HIP_VISIBLE_DEVICES" if env.get("HIP_VISIBLE_DEVICES") is not None else "CUDA_VISIBLE_DEVICES"
    hip = env.get(hip_name)
    if hip is not None:
        base = positions if positions is not None else list(range(count))
        picked = visible_devices(hip, [None] * len(base)) or []
        positions = [base[i] for i in picked]
        said.append(f"{hip_name}={hip!r}")
    return positions, " and ".join(said)


def hide(gpus: Sequence[Accelerator], visible: tuple[list[int] | None, str]) -> list[Accelerator]:
    """GPUs hidden by a ``*_VISIBLE_DEVICES`` variable stay listed, marked ignored: torch will
    not see them, so they must not steer the choice."""
    positions, why = visible
    if positions is None:
        return list(gpus)
    return [g if i in positions or g.ignored else replace(g, ignored=f"hidden by {why}") for i, g in enumerate(gpus)]
