"""The installed torch, as the target shows it: its build read from its files (``torch_build``:
version and backend, from the local tag, else torch/version.py) without importing it, and, for
source builds, imported once in the target (``torch_info``: CUDA or HIP and the C++ ABI). A
build against a torch the backend phase has not installed yet uses ``predict_torch``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from backendpick.edges.runner import capture
from backendpick.errors import InstallError
from backendpick.knowledge.facts import Facts, dotted, show
from backendpick.model.backend import CPU, CUDA, ROCM, Backend, local_tag_backend
from backendpick.model.environment import Target
from backendpick.target.probes_in_target import source

TORCH_TIMEOUT = 180.0  # importing torch reads gigabytes of shared libraries on a cold disk

# -- the torch a build builds against -------------------------------------------------------------


@dataclass(frozen=True)
class TorchInfo:
    version: str  # torch.__version__, e.g. 2.5.1+cu124
    cuda: str | None = None  # torch.version.cuda, e.g. 12.4
    hip: str | None = None  # torch.version.hip, e.g. 6.2.41133-dd7f95766
    cxx11abi: bool = True  # torch._C._GLIBCXX_USE_CXX11_ABI

    @property
    def major_minor(self) -> str:
        """``2.5`` from ``2.5.1+cu124``: what the prebuilt wheel names carry."""
        return ".".join(self.version.split("+")[0].split(".")[:2])

    @property
    def cuda_version(self) -> tuple[int, int] | None:
        return _major_minor(self.cuda)

    @property
    def hip_version(self) -> tuple[int, int] | None:
        return _major_minor(self.hip)

    @property
    def backend(self) -> str:
        """``cuda12.4``, ``rocm6.2`` or ``cpu``: the cache key's backend."""
        if self.cuda_version:
            return "cuda{}.{}".format(*self.cuda_version)
        if self.hip_version:
            return "rocm{}.{}".format(*self.hip_version)
        return "cpu"

    def to_json(self) -> dict:
        return {"version": self.version, "cuda": self.cuda, "hip": self.hip, "cxx11abi": self.cxx11abi}

    def built_with(self) -> dict:
        """What a build against this torch depends on, as the wheel cache records it."""
        return {"torch": self.version, "backend": self.backend, "cxx11abi": self.cxx11abi}

    def same_build(self, other: TorchInfo) -> bool:
        """Whether an extension built against one loads against the other."""
        return self.built_with() == other.built_with()


def _major_minor(text: str | None) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def predict_torch(version: str, backend, facts) -> TorchInfo:
    """The torch a backend phase will install, from the index's offer: its CUDA or HIP comes
    from the backend, its C++ ABI from the release and backend (facts.toml [torch.abi])."""
    release = Version(version).release[:2]
    return TorchInfo(
        version,
        cuda=backend.version_text if backend.kind == CUDA else None,
        hip=backend.version_text if backend.kind == ROCM else None,
        cxx11abi=facts.cxx11abi(release, backend),
    )


def torch_info(python: Path, *, timeout: float = TORCH_TIMEOUT) -> TorchInfo:
    """Import torch once in the target; InstallError when it cannot be imported there."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    res = capture([python, "-c", source("torch_info")], timeout=timeout, env=env)
    lines = res.stdout.strip().splitlines()
    if res.ok and lines:
        try:
            data = json.loads(lines[-1])
            return TorchInfo(str(data["version"]), data.get("cuda"), data.get("hip"), bool(data.get("cxx11abi", True)))
        except (ValueError, KeyError, TypeError):
            pass
    reason = res.error or (res.stderr.strip().splitlines() or ["no output"])[-1]
    raise InstallError(
        f"cannot import torch in {python} to build against it: {reason}",
        hint="add torch to the requirements (it is installed in the backend phase, before any build)",
    )


# -- the torch's build, from its files -----------------------------------------------------------


@dataclass(frozen=True)
class TorchBuild:
    version: str
    backend: Backend  # what the build is for: from the local tag, else torch/version.py
    cuda: str | None
    hip: str | None

    def to_json(self) -> dict:
        return {"version": self.version, "backend": self.backend.name, "cuda": self.cuda, "hip": self.hip}


def _assigned(text: str, name: str) -> str | None:
    """``cuda: Optional[str] = '12.4'`` or ``hip = None`` in torch/version.py."""
    m = re.search(rf"^{name}\s*(?::[^=\n]*)?=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, flags=re.M)
    if not m:
        return None
    return m.group(1) or m.group(2) or None


def torch_build(target: Target, facts: Facts) -> TorchBuild | None:
    dist = target.get("torch")
    if dist is None:
        return None
    text = target.files.get("torch/version.py")
    cuda = _assigned(text, "cuda") if text else None
    hip = _assigned(text, "hip") if text else None
    tagged = local_tag_backend(dist.version)
    if text is None and tagged is not None:
        cuda = tagged.version_text if tagged.kind == CUDA else None
        hip = tagged.version_text if tagged.kind == ROCM else None
    if text is None and tagged is None and target.markers.get("sys_platform") == "linux":
        # PyPI's untagged Linux torch is a CUDA build (torch/version.py says which).
        pypi = facts.pypi_cuda.get(Version(dist.version).release[:2])
        cuda = show(pypi) if pypi else None
    if tagged is not None:
        backend = tagged
    elif cuda:
        major, minor = dotted(cuda)[:2]
        backend = Backend.cuda(major, minor)
    elif hip:
        backend = Backend(ROCM, dotted(hip)[:2])
    else:
        backend = Backend(CPU)
    return TorchBuild(dist.version, backend, cuda, hip)
