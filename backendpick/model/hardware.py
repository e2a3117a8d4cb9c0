"""What the probe found: plain data, built by ``probe`` and read by ``select`` and the renderers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

NVIDIA, AMD, INTEL, APPLE = "nvidia", "amd", "intel", "apple"


@dataclass(frozen=True)
class Accelerator:
    vendor: str
    name: str
    driver_version: str | None = None
    compute_capability: str | None = None  # NVIDIA, "8.6"
    arch: str | None = None  # AMD gfx target ("gfx942"), NVIDIA "sm_86"
    index: int | None = None
    memory_mib: int | None = None
    # Why this device does not take part in the choice (integrated graphics, say); None if it does.
    ignored: str | None = None

    @property
    def cap(self) -> tuple[int, ...] | None:
        if not self.compute_capability:
            return None
        major, _, minor = self.compute_capability.partition(".")
        return (int(major), int(minor or 0))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Hardware:
    accelerators: tuple[Accelerator, ...] = ()
    nvidia_driver: str | None = None
    # Highest CUDA the driver runs, and where that figure came from.
    driver_cuda: str | None = None
    driver_cuda_source: str | None = None
    rocm_version: str | None = None
    # CUDA_VERSION of an nvidia/cuda image (docker build: no driver visible, image says CUDA).
    container_cuda: str | None = None
    platform: str = "linux"
    machine: str = "x86_64"
    wsl: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def by_vendor(self, vendor: str) -> list[Accelerator]:
        return [a for a in self.accelerators if a.vendor == vendor and a.ignored is None]

    def to_json(self) -> dict:
        return {
            "accelerators": [a.to_json() for a in self.accelerators],
            "nvidia_driver": self.nvidia_driver,
            "driver_cuda": self.driver_cuda,
            "driver_cuda_source": self.driver_cuda_source,
            "rocm_version": self.rocm_version,
            "container_cuda": self.container_cuda,
            "platform": self.platform,
            "machine": self.machine,
            "wsl": self.wsl,
        }
