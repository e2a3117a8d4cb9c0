"""What a source build of flash-attn and friends needs, checked before pip starts compiling.

Three things decide a source build:

* the torch of the target (``target/installed_torch.py``: one subprocess, run only when a build
  phase runs): its version, CUDA or ROCm version and C++ ABI name the prebuilt wheel and key the
  wheel cache;
* the toolchain guards, here: nvcc (or hipcc) of torch's CUDA major, a C++ compiler and ninja. A
  build without them fails after minutes of pip output, or, worse, after an hour of compiling;
  the guard fails in seconds with the fix;
* the limits (``build/limits.py``): these builds run out of memory with ninja's default of one job
  per core, and compile for every GPU architecture unless told which ones matter.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from backendpick.edges.runner import capture
from backendpick.errors import InstallError
from backendpick.target.installed_torch import TorchInfo

PROBE_TIMEOUT = 10.0  # nvcc --version answers in well under a second

# -- toolchain guards -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str
    tool: str = ""  # compiler, cxx or ninja


@dataclass(frozen=True)
class Toolchain:
    compiler: str | None = None  # nvcc or hipcc, as torch's cpp_extension will find it
    compiler_version: str | None = None  # "12.4"
    cxx: str | None = None
    ninja: str | None = None
    env: dict = field(default_factory=dict)  # variables the build needs (PATH with the env's bin)
    problems: tuple[Problem, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.compiler:
            parts.append(f"{Path(self.compiler).name} {self.compiler_version or '?'} ({self.compiler})")
        if self.cxx:
            parts.append(f"C++ {self.cxx}")
        if self.ninja:
            parts.append(f"ninja {self.ninja}")
        return ", ".join(parts)


def _search_path(env: Mapping[str, str], first: Path | None = None) -> str:
    path = env.get("PATH", os.defpath)
    return f"{first}{os.pathsep}{path}" if first is not None else path


def _executable(path: Path) -> str | None:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def _find_compiler(name: str, home_vars: Iterable[str], default_home: str, env: Mapping[str, str],
                   root: Path) -> tuple[str | None, list[str]]:
    """The compiler torch's cpp_extension will use: $HOME_VAR/bin first, then PATH, then the
    default install folder (looked up under the probe root, like the probe's other files)."""
    looked: list[str] = []
    for var in home_vars:
        if env.get(var):
            looked.append(f"${var}/bin")
            found = _executable(Path(env[var]) / "bin" / name)
            # torch takes $CUDA_HOME as it is, so a wrong one is the user's to fix: say so.
            return found, looked
    looked.append("PATH")
    found = shutil.which(name, path=_search_path(env))
    if found:
        return found, looked
    looked.append(f"{default_home}/bin")
    return _executable(root / default_home.lstrip("/") / "bin" / name), looked


def _version(argv: list[str], pattern: str, timeout: float) -> tuple[str | None, str | None]:
    """(``major.minor``, None) from ``argv``'s output, or (None, why not)."""
    res = capture(argv, timeout=timeout)
    if res.returncode is None:
        return None, res.error or "did not run"
    m = re.search(pattern, res.stdout + "\n" + res.stderr)
    if not m:
        return None, f"`{' '.join(argv)}` printed no version (exit {res.returncode})"
    return f"{m.group(1)}.{m.group(2)}", None


def _find_cxx(env: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The C++ compiler a build would use ($CXX first), and the names looked for."""
    if sys.platform == "win32":  # pragma: no cover - the projects publish no Windows support
        return shutil.which("cl", path=_search_path(env)), ["cl"]
    names = [env["CXX"].split()[0]] if env.get("CXX") else ["c++", "g++", "clang++"]
    for name in names:
        cxx = shutil.which(name, path=_search_path(env))
        if cxx:
            return cxx, names
    return None, names


def inspect_toolchain(torch: TorchInfo, *, what: str, env: Mapping[str, str], target_bin: Path | None,
                      root: Path = Path("/"), skip_gpu: bool = False,
                      timeout: float = PROBE_TIMEOUT) -> Toolchain:
    """Find what a source build of ``what`` needs; every missing piece is a Problem with its fix."""
    problems: list[Problem] = []
    compiler = compiler_version = None
    cuda, hip = torch.cuda_version, torch.hip_version
    if skip_gpu:
        pass  # the user asked the package to compile no GPU code (its *_SKIP_CUDA_BUILD)
    elif cuda:
        compiler, looked = _find_compiler("nvcc", ("CUDA_HOME", "CUDA_PATH"), "/usr/local/cuda", env, root)
        toolkit = f"CUDA {cuda[0]}.{cuda[1]}"
        fix = (f"install the {toolkit} toolkit (CUDA {cuda[0]}.x works; e.g. the nvidia/cuda:{cuda[0]}.{cuda[1]}.x-devel "
               f"image, or the cuda-toolkit-{cuda[0]}-{cuda[1]} package) and put its bin folder on PATH or set CUDA_HOME")
        if compiler is None:
            problems.append(Problem(f"nvcc, the CUDA compiler, was not found (looked in {', '.join(looked)})", fix))
        else:
            compiler_version, why = _version([compiler, "--version"], r"release (\d+)\.(\d+)", timeout)
            if compiler_version is None:
                problems.append(Problem(f"nvcc at {compiler} did not report its version: {why}", fix))
            elif int(compiler_version.split(".")[0]) != cuda[0]:
                # torch.utils.cpp_extension refuses a toolkit of another CUDA major than its own.
                problems.append(Problem(
                    f"nvcc at {compiler} is CUDA {compiler_version}, but torch {torch.version} was built with "
                    f"CUDA {torch.cuda}; torch builds extensions only with the same CUDA major",
                    f"{fix}; or install torch for CUDA {compiler_version.split('.')[0]} "
                    f"(--backend cu{compiler_version.replace('.', '')})",
                ))
    elif hip:
        compiler, looked = _find_compiler("hipcc", ("ROCM_HOME", "ROCM_PATH"), "/opt/rocm", env, root)
        fix = (f"install ROCm {hip[0]}.{hip[1]} with its development packages (e.g. the rocm/dev-ubuntu image) "
               "and put /opt/rocm/bin on PATH or set ROCM_HOME")
        if compiler is None:
            problems.append(Problem(f"hipcc, the ROCm compiler, was not found (looked in {', '.join(looked)})", fix))
        else:
            compiler_version, why = _version([compiler, "--version"], r"HIP version: (\d+)\.(\d+)", timeout)
            if compiler_version is None:
                problems.append(Problem(f"hipcc at {compiler} did not report its version: {why}", fix))
            elif int(compiler_version.split(".")[0]) != hip[0]:
                problems.append(Problem(
                    f"hipcc at {compiler} is HIP {compiler_version}, but torch {torch.version} was built with "
                    f"ROCm {hip[0]}.{hip[1]}",
                    f"{fix}; or install torch for your ROCm (--backend rocm{compiler_version})",
                ))
    else:
        problems.append(Problem(
            f"torch {torch.version} is a CPU build, and {what} compiles CUDA or ROCm kernels against torch's",
            "install a GPU torch first: --backend cuXYZ or rocmX.Y (see `backendpick detect`)",
        ))

    cxx, names = _find_cxx(env)
    if cxx is None:
        problems.append(Problem(
            f"no C++ compiler found ({' or '.join(names)} on PATH)",
            "install one: apt-get install g++ (Debian, Ubuntu), dnf install gcc-c++ (Fedora, RHEL), "
            "or the Xcode command line tools",
        ))

    # pip installs the ninja package's binary into the environment's bin folder, which a
    # --no-build-isolation build does not put on PATH: the build gets it prepended.
    bin_dir = target_bin if target_bin is not None and target_bin.is_dir() else None
    ninja = shutil.which("ninja", path=_search_path(env, bin_dir))
    if ninja is None:
        problems.append(Problem(
            "ninja was not found (in the environment or on PATH); without it torch compiles one file at a time",
            "keep ninja in the build requirements ([tool.backendpick] build-requirements), or install it: "
            "apt-get install ninja-build",
            tool="ninja",
        ))
    extra = {}
    if bin_dir is not None and str(bin_dir) not in env.get("PATH", "").split(os.pathsep):
        extra["PATH"] = _search_path(env, bin_dir)
    return Toolchain(compiler, compiler_version, cxx, ninja, extra, tuple(problems))


def check(toolchain: Toolchain, *, what: str, why: str = "") -> None:
    """Raise the first problem as an InstallError: one line, the fix as the hint."""
    if not toolchain.problems:
        return
    first = toolchain.problems[0]
    others = [f"also: {p.message} (fix: {p.hint})" for p in toolchain.problems[1:]]
    details = "\n".join(([why] if why else []) + others) or None
    raise InstallError(f"cannot build {what} from source: {first.message}", hint=first.hint, details=details)


__all__ = ["Problem", "Toolchain", "check", "inspect_toolchain"]
