"""The file names flash-attn, mamba-ssm and causal-conv1d give their prebuilt wheels.

Their setup.py (``get_wheel_url``) computes the name of a GitHub release asset from the
installed torch; these functions compute the same name from a ``TorchInfo`` and the
``[prebuilt.<name>.naming]`` rows of facts.toml, so the choice needs no network:

    {wheel-name}-{version}+{gpu}torch{torch major.minor}cxx11abi{TRUE|FALSE}-{cpXY}-{cpXY}-linux_{machine}.whl
"""

from __future__ import annotations

from typing import Mapping

from packaging.version import InvalidVersion, Version

from backendpick.knowledge.facts import Package
from backendpick.target.installed_torch import TorchInfo


def platform_tag(markers: Mapping[str, str]) -> str | None:
    """``linux_x86_64``: the platform part of the projects' wheel names (they publish Linux only)."""
    if markers.get("sys_platform") != "linux":
        return None
    return f"linux_{markers.get('platform_machine') or 'x86_64'}"


def gpu_tag(package: Package, version: Version, torch: TorchInfo) -> tuple[str | None, str]:
    """The ``cu12`` / ``rocm62`` part of the name, or None and why there is none."""
    row = package.naming_for(version)
    if row is None:
        return None, f"{package.name} {version} predates its prebuilt wheels"
    if torch.cuda_version:
        major = str(torch.cuda_version[0])
        if major not in row.cuda:
            return None, f"{package.name} {version} publishes no wheels for CUDA {major}"
        return row.cuda[major], ""
    if torch.hip_version:
        if not row.rocm:
            return None, f"{package.name} {version} publishes no ROCm wheels"
        return row.rocm.format(hip_major=torch.hip_version[0], hip_minor=torch.hip_version[1]), ""
    return None, f"torch {torch.version} is a CPU build; {package.name} publishes CUDA and ROCm wheels only"


def wheel_filename(package: Package, version: str, torch: TorchInfo, python_tag: str,
                   platform: str | None) -> tuple[str | None, str]:
    """The file name the project publishes for this torch, or None and why there is none."""
    if platform is None:
        return None, f"{package.name} publishes Linux wheels only"
    try:
        parsed = Version(version)
    except InvalidVersion:
        return None, f"{version!r} is not a version"
    tag, why = gpu_tag(package, parsed, torch)
    if tag is None:
        return None, why
    abi = "TRUE" if torch.cxx11abi else "FALSE"
    return (f"{package.wheel_name}-{version}+{tag}torch{torch.major_minor}cxx11abi{abi}"
            f"-{python_tag}-{python_tag}-{platform}.whl"), ""
