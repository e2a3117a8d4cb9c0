"""The limits of one source build: MAX_JOBS from cores and free memory (these builds run out of
memory with ninja's default of one job per core) and the GPU architecture lists narrowed to the
GPUs detected, unless the user set them (environment, then ``[tool.backendpick.build]``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from backendpick.target.installed_torch import TorchInfo

if TYPE_CHECKING:  # pragma: no cover
    from backendpick.inputs.config import BuildSettings
    from backendpick.knowledge.facts import Package

DEFAULT_JOB_MEMORY_GB = 4.0  # a CUDA compile job of these packages needs several GB


@dataclass(frozen=True)
class Limits:
    env: dict  # what backendpick sets for the build (never a variable the user set)
    arch_key: str  # the architecture variables the build sees, for the cache key
    summary: str  # one line: what was chosen and why


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def available_memory_gb(root: Path = Path("/")) -> float | None:
    """MemAvailable of /proc/meminfo (below the probe root) in GiB; None where there is none."""
    try:
        text = (root / "proc" / "meminfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) / (1024 * 1024) if m else None


def _caps(text: str) -> list[str]:
    """Compute capabilities in an arch list ("8.0;9.0+PTX", "8.6 9.0"), in order, deduplicated."""
    return list(dict.fromkeys(f"{a}.{b}" for a, b in re.findall(r"(\d+)\.(\d+)", text)))


def _gfx(text: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"gfx[0-9a-f]+", text.lower())))


def _sort_caps(caps: Iterable[str]) -> list[str]:
    return sorted(set(caps), key=lambda c: tuple(int(p) for p in c.split(".")))


def limits(torch: TorchInfo, package: Package | None, settings: BuildSettings, *, env: Mapping[str, str],
           gpu_caps: Iterable[str] = (), gpu_archs: Iterable[str] = (), root: Path = Path("/"),
           cores: int | None = None, memory_gb: float | None = None) -> Limits:
    """MAX_JOBS and the architecture lists for one build, and a line saying what was chosen."""
    def user_set(var: str) -> bool:
        return bool(env.get(var))

    chosen: dict[str, str] = {}
    said: list[str] = []

    # MAX_JOBS: ninja's default is one job per core, and each job of these builds needs GBs.
    if user_set("MAX_JOBS"):
        said.append(f"MAX_JOBS={env['MAX_JOBS']} (your environment)")
    elif settings.max_jobs:
        chosen["MAX_JOBS"] = str(settings.max_jobs)
        said.append(f"MAX_JOBS={settings.max_jobs} ([tool.backendpick.build] max-jobs)")
    else:
        cores = cores or cpu_count()
        memory_gb = memory_gb if memory_gb is not None else available_memory_gb(root)
        per_job = float(getattr(package, "job_memory_gb", None) or DEFAULT_JOB_MEMORY_GB)
        if memory_gb is None:
            jobs = max(1, cores // 2)
            said.append(f"MAX_JOBS={jobs} ({cores} cores, free memory unknown)")
        else:
            jobs = max(1, min(cores, int(memory_gb // per_job)))
            said.append(f"MAX_JOBS={jobs} ({cores} cores, {memory_gb:.0f} GB free, ~{per_job:g} GB per job)")
        chosen["MAX_JOBS"] = str(jobs)

    # Architectures: the config's list, else the user's torch variable, else the detected GPUs.
    if torch.cuda_version:
        main_var, pkg_var = "TORCH_CUDA_ARCH_LIST", getattr(package, "cuda_archs_env", None)
        if settings.arch_list:
            caps, source = _caps(settings.arch_list), "[tool.backendpick.build] arch-list"
        elif user_set(main_var):
            caps, source = _caps(env[main_var]), f"your {main_var}"
        else:
            caps, source = _sort_caps(gpu_caps), "the detected GPUs"
        if caps and not user_set(main_var):
            chosen[main_var] = ";".join(caps)
        if caps and pkg_var and not user_set(pkg_var):
            # The package's own list names a family by its X0 member (sm_80 code runs on 8.6).
            known = list(getattr(package, "cuda_archs", ()) or ())
            values = sorted({f"{c.split('.')[0]}0" for c in caps} & set(known), key=int)
            if values:
                chosen[pkg_var] = ";".join(values)
            else:
                said.append(f"{pkg_var} left at its default: it has no code for compute capability {', '.join(caps)}")
        arch_vars = [main_var] + ([pkg_var] if pkg_var else [])
    elif torch.hip_version:
        main_var, pkg_var = "PYTORCH_ROCM_ARCH", getattr(package, "rocm_archs_env", None)
        if settings.arch_list:
            archs, source = _gfx(settings.arch_list), "[tool.backendpick.build] arch-list"
        elif user_set(main_var):
            archs, source = _gfx(env[main_var]), f"your {main_var}"
        else:
            archs, source = sorted(set(gpu_archs)), "the detected GPUs"
        for var in [main_var] + ([pkg_var] if pkg_var else []):
            if archs and not user_set(var):
                chosen[var] = ";".join(archs)
        arch_vars = [main_var] + ([pkg_var] if pkg_var else [])
    else:
        arch_vars, source = [], ""

    for key, value in settings.env.items():  # [tool.backendpick.build] env: anything else
        if not user_set(key):
            chosen[key] = value

    arch_values = {v: chosen.get(v) or env.get(v) for v in arch_vars if chosen.get(v) or env.get(v)}
    if arch_values:
        shown = " ".join(f"{k}={v}" for k, v in arch_values.items())
        said.append(f"{shown} (from {source})" if source else shown)
    elif arch_vars:
        said.append("architectures: the package's defaults (no GPU detected)")
    extra = sorted(k for k in settings.env if k in chosen)
    if extra:
        said.append("from [tool.backendpick.build] env: " + " ".join(f"{k}={chosen[k]}" for k in extra))
    arch_key = ",".join(f"{k}={v}" for k, v in sorted(arch_values.items())) or "default"
    return Limits(chosen, arch_key, "; ".join(said))
