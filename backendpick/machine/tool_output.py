"""Parsers for what drivers and vendor tools print. Pure functions: text in, data out.

Each raises ``ValueError`` with a short reason on output it does not understand; the probe turns
that into a warning, never into a crash.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

_DOTTED = r"\d+\.\d+(?:\.\d+)?"


def driver_from_sys(text: str) -> str:
    """``/sys/module/nvidia/version``: the bare driver version."""
    value = text.strip()
    if not re.fullmatch(_DOTTED, value):
        raise ValueError(f"unexpected driver version {value[:40]!r}")
    return value


def driver_from_proc(text: str) -> str:
    """``/proc/driver/nvidia/version``: the version on the ``NVRM version:`` line.

    Proprietary: ``NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 ...``;
    open modules: ``NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.20  Release Build ...``.
    """
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            m = re.search(rf"\s({_DOTTED})\s", line + " ")
            if m:
                return m.group(1)
            break
    raise ValueError("no driver version on an 'NVRM version:' line")


@dataclass(frozen=True)
class SmiGpu:
    index: int
    name: str
    driver_version: str
    compute_capability: str | None
    uuid: str | None
    memory_mib: int | None


QUERY_FIELDS = ("index", "name", "driver_version", "compute_cap", "uuid", "memory.total")
# compute_cap is a query field only from about driver 510 on; older drivers get this one.
QUERY_FIELDS_NO_CAP = ("index", "name", "driver_version", "uuid", "memory.total")


def smi_query(text: str, fields: tuple[str, ...] = QUERY_FIELDS) -> list[SmiGpu]:
    """``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits``: one row per GPU."""
    gpus = []
    try:
        rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r]
    except csv.Error as exc:  # a stray \r or NUL: garbage, not a crash
        raise ValueError(f"unreadable CSV ({exc})") from None
    if not rows:
        raise ValueError("no GPU rows")
    for row in rows:
        if len(row) != len(fields):
            raise ValueError(f"expected {len(fields)} fields, got {row[0][:60]!r}...")
        cells = dict(zip(fields, (c.strip() for c in row)))
        try:
            index = int(cells["index"])
        except ValueError:
            raise ValueError(f"bad GPU index {cells['index'][:20]!r}") from None
        driver = cells["driver_version"]
        if not re.fullmatch(_DOTTED, driver):
            raise ValueError(f"bad driver version {driver[:20]!r}")
        cap = cells.get("compute_cap")
        if cap is not None and not re.fullmatch(r"\d+\.\d+", cap):
            cap = None  # "[N/A]" on some virtual GPUs; the caller warns
        memory = cells.get("memory.total", "")
        gpus.append(
            SmiGpu(
                index=index,
                name=cells["name"],
                driver_version=driver,
                compute_capability=cap,
                uuid=cells.get("uuid") or None,
                memory_mib=int(memory) if memory.isdigit() else None,
            )
        )
    return gpus


def smi_banner(text: str) -> tuple[str | None, str | None]:
    """Plain ``nvidia-smi``: (driver version, highest CUDA the driver supports)."""
    driver = re.search(rf"Driver Version:\s*({_DOTTED})", text)
    cuda = re.search(r"CUDA Version:\s*(\d+\.\d+)", text)
    if not driver and not cuda:
        raise ValueError("no 'Driver Version' or 'CUDA Version' in the nvidia-smi banner")
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


@dataclass(frozen=True)
class RocmAgent:
    gfx: str
    marketing_name: str | None
    device_type: str


def rocminfo(text: str) -> list[RocmAgent]:
    """``rocminfo``: the GPU agents (CPU agents are dropped).

    Agents are blocks after ``Agent N`` headers; the first ``Name:`` of a block is the agent's
    (later ``Name:`` lines belong to its ISA and memory pools).
    """
    blocks = re.split(r"^\*+\s*\n\s*Agent \d+\s*\n\*+\s*$", text, flags=re.M)
    if len(blocks) < 2:
        raise ValueError("no 'Agent N' blocks")
    agents = []
    for block in blocks[1:]:
        # CPU agents have names with spaces ("AMD EPYC 9654 96-Core Processor").
        name = re.search(r"^\s*Name:\s*(\S.*?)\s*$", block, flags=re.M)
        kind = re.search(r"^\s*Device Type:\s*(\S+)\s*$", block, flags=re.M)
        marketing = re.search(r"^\s*Marketing Name:\s*(.*?)\s*$", block, flags=re.M)
        if not name or not kind:
            raise ValueError("an agent block without Name or Device Type")
        if kind.group(1).upper() != "GPU":
            continue
        gfx = name.group(1)
        if not re.fullmatch(r"gfx[0-9a-f]+", gfx):
            raise ValueError(f"GPU agent named {gfx[:30]!r}, not a gfx target")
        agents.append(RocmAgent(gfx, marketing.group(1) if marketing else None, "GPU"))
    return agents


def agent_enumerator(text: str) -> list[str]:
    """``rocm_agent_enumerator``: gfx names one per line; ``gfx000`` is the CPU."""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [n for n in names if not re.fullmatch(r"gfx[0-9a-f]+", n)]
    if bad:
        raise ValueError(f"unexpected line {bad[0][:30]!r}")
    return [n for n in names if n != "gfx000"]


def rocm_version(text: str) -> str:
    """``/opt/rocm/.info/version``: ``6.2.4-120`` -> ``6.2.4``."""
    m = re.match(rf"\s*({_DOTTED})", text)
    if not m:
        raise ValueError(f"unexpected ROCm version {text.strip()[:30]!r}")
    return m.group(1)


def cuda_image_version(value: str) -> str:
    """``CUDA_VERSION`` of nvidia/cuda images: ``12.4.1`` -> ``12.4``."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)*\s*", value)
    if not m:
        raise ValueError(f"CUDA_VERSION={value[:30]!r} is not a version")
    return f"{m.group(1)}.{m.group(2)}"
