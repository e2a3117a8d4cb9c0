"""Read the machine: NVIDIA, AMD, Intel, Apple. Each failure is a warning; nothing raises.

Files are read below a configurable root (``BACKENDPICK_PROBE_ROOT``, default ``/``) so tests can
point the probe at a fake machine. Cheap sources come first: the driver version from /sys or
/proc costs no subprocess, and ``nvidia-smi`` is run at most twice.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from backendpick import envvars
from backendpick.edges.runner import capture
from backendpick.knowledge.facts import Facts, dotted, show
from backendpick.machine import tool_output, visible_devices
from backendpick.model.hardware import AMD, APPLE, INTEL, NVIDIA, Accelerator, Hardware

DEFAULT_TIMEOUT = 5.0


@dataclass
class ProbeSettings:
    root: Path = Path("/")
    timeout: float = DEFAULT_TIMEOUT
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    platform: str = ""  # sys.platform-like; empty means this machine's
    machine: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProbeSettings:
        env = dict(os.environ if env is None else env)
        return cls(root=envvars.probe_root(env), timeout=envvars.probe_timeout(env, DEFAULT_TIMEOUT), env=env)


class _Notes:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)


def _read(root: Path, path: str) -> str | None:
    """A file's text below root, or None when absent/unreadable (absent is the common case)."""
    try:
        return (root / path.lstrip("/")).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _which(name: str, settings: ProbeSettings, *extra_dirs: str) -> str | None:
    found = shutil.which(name, path=settings.env.get("PATH", os.defpath))
    if found:
        return found
    for d in extra_dirs:
        candidate = settings.root / d.lstrip("/") / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def probe(facts: Facts, settings: ProbeSettings | None = None) -> Hardware:
    settings = settings or ProbeSettings.from_env()
    notes = _Notes()
    plat = settings.platform or platform.system().lower()
    machine = settings.machine or platform.machine().lower()
    accelerators: list[Accelerator] = []

    wsl = _is_wsl(settings)
    nvidia = _probe_nvidia(settings, facts, notes, wsl)
    accelerators += visible_devices.hide(nvidia.gpus, visible_devices.visible_nvidia(settings.env, nvidia.uuids))
    order_note = visible_devices.order_note(settings.env, nvidia.gpus)
    if order_note:
        notes.add(order_note)
    amd_gpus, rocm = _probe_amd(settings, facts, notes)
    accelerators += visible_devices.hide(amd_gpus, visible_devices.visible_amd(settings.env, len(amd_gpus)))
    accelerators += _probe_pci(settings, facts, notes, has_nvidia=len(nvidia.gpus))
    if plat == "darwin" and machine in ("arm64", "aarch64"):
        accelerators.append(Accelerator(APPLE, "Apple silicon GPU (MPS)"))

    container_cuda = None
    raw_cuda = settings.env.get("CUDA_VERSION")
    if raw_cuda:
        try:
            container_cuda = tool_output.cuda_image_version(raw_cuda)
        except ValueError as exc:
            notes.add(f"ignoring {exc}")

    return Hardware(
        accelerators=tuple(accelerators),
        nvidia_driver=nvidia.driver,
        driver_cuda=nvidia.cuda,
        driver_cuda_source=nvidia.cuda_source,
        rocm_version=rocm,
        container_cuda=container_cuda,
        platform=plat,
        machine=machine,
        wsl=wsl,
        warnings=tuple(notes.items),
    )


def _is_wsl(settings: ProbeSettings) -> bool:
    release = _read(settings.root, "/proc/sys/kernel/osrelease") or ""
    return "microsoft" in release.lower() or (settings.root / "usr/lib/wsl/lib").is_dir()


@dataclass
class _Nvidia:
    gpus: list[Accelerator] = field(default_factory=list)
    driver: str | None = None
    cuda: str | None = None
    cuda_source: str | None = None
    uuids: list = field(default_factory=list)  # per GPU, in nvidia-smi's order (None: not reported)


def _probe_nvidia(settings: ProbeSettings, facts: Facts, notes: _Notes, wsl: bool) -> _Nvidia:
    result = _Nvidia()
    for path, parser in (
        ("/sys/module/nvidia/version", tool_output.driver_from_sys),
        ("/proc/driver/nvidia/version", tool_output.driver_from_proc),
    ):
        text = _read(settings.root, path)
        if text is None:
            continue
        try:
            result.driver = parser(text)
            break
        except ValueError as exc:
            notes.add(f"{path}: {exc}")

    smi = _which("nvidia-smi", settings, "/usr/lib/wsl/lib", "/usr/bin")
    if smi is None:
        if result.driver:
            notes.add(f"NVIDIA driver {result.driver} is loaded but nvidia-smi was not found; GPU models unknown")
            _cuda_from_table(result, facts)
        return result

    gpus, driver_from_smi, result.uuids = _smi_gpus(smi, settings, notes)
    result.gpus = gpus
    if result.driver is None:
        result.driver = driver_from_smi

    # The banner is authoritative for the CUDA ceiling; it costs a second nvidia-smi run, so ask
    # only when the table cannot answer: WSL (Windows driver numbers), a driver newer than the
    # table, or a driver we only know from nothing.
    need_banner = wsl or result.driver is None or (
        facts.driver_beyond_table(dotted(result.driver))
        or facts.max_cuda_for_driver(dotted(result.driver)) is None  # older than the table (470)
    )
    if gpus and need_banner:
        banner = capture([smi], timeout=settings.timeout, env=settings.env)
        if banner.ok:
            try:
                driver, cuda = tool_output.smi_banner(banner.stdout)
                result.driver = result.driver or driver
                if cuda:
                    result.cuda, result.cuda_source = cuda, "nvidia-smi"
            except ValueError as exc:
                notes.add(f"nvidia-smi: {exc}")
    if result.cuda is None:
        # Also when nvidia-smi hung or failed: the driver file still tells the CUDA ceiling.
        _cuda_from_table(result, facts)
    return result


def _cuda_from_table(result: _Nvidia, facts: Facts) -> None:
    if result.driver is None:
        return
    best = facts.max_cuda_for_driver(dotted(result.driver))
    if best is not None:
        result.cuda, result.cuda_source = show(best), "driver table"


def _smi_failure(res, what: str) -> str:
    text = (res.stdout + "\n" + res.stderr).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if res.error:
        return f"{what}: {res.error}"
    return f"{what} failed (exit {res.returncode}): {first[:160] or 'no output'}"


def _smi_gpus(smi: str, settings: ProbeSettings, notes: _Notes) -> tuple[list[Accelerator], str | None, list]:
    fields = tool_output.QUERY_FIELDS
    res = capture(
        [smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
        timeout=settings.timeout,
        env=settings.env,
    )
    if not res.ok and "compute_cap" in (res.stdout + res.stderr) and "not a valid field" in (res.stdout + res.stderr):
        # Drivers before ~510 do not know compute_cap; ask again without it.
        fields = tool_output.QUERY_FIELDS_NO_CAP
        res = capture(
            [smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            timeout=settings.timeout,
            env=settings.env,
        )
        if res.ok:
            notes.add("this driver's nvidia-smi cannot report compute capability; GPU architecture not checked")
    if not res.ok:
        notes.add(_smi_failure(res, "nvidia-smi"))
        return [], None, []
    try:
        rows = tool_output.smi_query(res.stdout, fields)
    except ValueError as exc:
        notes.add(f"nvidia-smi printed output backendpick does not understand ({exc})")
        return [], None, []
    gpus = []
    for row in rows:
        if row.compute_capability is None and "compute_cap" in fields:
            notes.add(f"GPU {row.index} ({row.name}): compute capability not reported")
        gpus.append(
            Accelerator(
                NVIDIA,
                row.name,
                driver_version=row.driver_version,
                compute_capability=row.compute_capability,
                arch=f"sm_{row.compute_capability.replace('.', '')}" if row.compute_capability else None,
                index=row.index,
                memory_mib=row.memory_mib,
            )
        )
    return gpus, rows[0].driver_version, [row.uuid for row in rows]


# -- which GPUs torch will see ------------------------------------------------------------------


def _probe_amd(settings: ProbeSettings, facts: Facts, notes: _Notes) -> tuple[list[Accelerator], str | None]:
    version = None
    text = _read(settings.root, "/opt/rocm/.info/version")
    if text is not None:
        try:
            version = tool_output.rocm_version(text)
        except ValueError as exc:
            notes.add(f"/opt/rocm/.info/version: {exc}")

    agents: list[tuple[str, str | None]] = []
    rocminfo = _which("rocminfo", settings, "/opt/rocm/bin")
    enumerator = _which("rocm_agent_enumerator", settings, "/opt/rocm/bin")
    # The ROCm tools' failures are said only where an AMD GPU is there to miss: rocminfo
    # installed on an NVIDIA machine fails ("ROCk module is NOT loaded") on every run (issue 20).
    failures = _Notes()
    if rocminfo:
        res = capture([rocminfo], timeout=settings.timeout, env=settings.env)
        if res.ok:
            try:
                agents = [(a.gfx, a.marketing_name) for a in tool_output.rocminfo(res.stdout)]
            except ValueError as exc:
                failures.add(f"rocminfo printed output backendpick does not understand ({exc})")
        else:
            failures.add(_smi_failure(res, "rocminfo"))
    if not agents and enumerator:
        res = capture([enumerator], timeout=settings.timeout, env=settings.env)
        if res.ok:
            try:
                agents = [(gfx, None) for gfx in tool_output.agent_enumerator(res.stdout)]
            except ValueError as exc:
                failures.add(f"rocm_agent_enumerator printed output backendpick does not understand ({exc})")
        else:
            failures.add(_smi_failure(res, "rocm_agent_enumerator"))
    if agents or _amd_gpu_signs(settings, facts):
        for item in failures.items:
            notes.add(item)

    gpus = []
    for i, (gfx, name) in enumerate(agents):
        ignored = None
        if gfx in facts.integrated_gfx and gfx not in facts.rocm_gfx:
            ignored = "integrated graphics; PyTorch's ROCm builds do not support it"
        gpus.append(Accelerator(AMD, name or gfx, driver_version=version, arch=gfx, index=i, ignored=ignored))
    return gpus, version


_DISPLAY_CLASSES = ("0x0300", "0x0302", "0x0380")  # VGA, 3D controller, other display


def _amd_gpu_signs(settings: ProbeSettings, facts: Facts) -> bool:
    """Whether the machine shows an AMD GPU without the ROCm tools: the amdgpu kernel driver's
    compute device (/dev/kfd), its module, or an AMD display device on the PCI bus."""
    root = settings.root
    if (root / "dev/kfd").exists() or (root / "sys/module/amdgpu").is_dir():
        return True
    amd = facts.pci_vendors.get("amd")
    try:
        slots = sorted((root / "sys/bus/pci/devices").iterdir())
    except OSError:
        return False
    for slot in slots:
        try:
            if ((slot / "vendor").read_text().strip().lower() == amd
                    and (slot / "class").read_text().strip().lower().startswith(_DISPLAY_CLASSES)):
                return True
        except OSError:
            continue
    return False


def _probe_pci(settings: ProbeSettings, facts: Facts, notes: _Notes, *, has_nvidia: int) -> list[Accelerator]:
    """Intel GPUs from sysfs PCI ids, and a hint when an NVIDIA/AMD card has no working driver."""
    base = settings.root / "sys/bus/pci/devices"
    try:
        slots = sorted(base.iterdir())
    except OSError:
        return []
    found = []
    nvidia_cards = 0
    for slot in slots:
        try:
            cls = (slot / "class").read_text().strip().lower()
            vendor = (slot / "vendor").read_text().strip().lower()
            device = (slot / "device").read_text().strip().lower()
        except OSError:
            continue
        if not cls.startswith(_DISPLAY_CLASSES):
            continue
        if vendor == facts.pci_vendors["nvidia"]:
            nvidia_cards += 1
        elif vendor == facts.pci_vendors["intel"]:
            try:
                dev_id = int(device, 16)
            except ValueError:
                continue
            family = next((fam for lo, hi, fam in facts.intel_discrete if lo <= dev_id <= hi), None)
            if family:
                found.append(Accelerator(INTEL, f"Intel {family} [{device}]", arch=device, index=len(found)))
            else:
                found.append(
                    Accelerator(
                        INTEL,
                        f"Intel graphics [{device}]",
                        arch=device,
                        ignored="integrated or unsupported Intel graphics; xpu needs a discrete Arc, Flex or Max GPU",
                    )
                )
    if nvidia_cards and not has_nvidia:
        notes.add(
            f"{nvidia_cards} NVIDIA GPU(s) on the PCI bus, but no working driver was found; "
            "install the NVIDIA driver, or pass --backend to choose"
        )
    elif nvidia_cards > has_nvidia:
        notes.add(
            f"{nvidia_cards} NVIDIA GPUs on the PCI bus, but the driver shows only {has_nvidia}; "
            "the others are not driven (an open-module driver does not support pre-Turing GPUs)"
        )
    return found
