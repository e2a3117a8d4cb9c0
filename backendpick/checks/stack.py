"""Is an environment's GPU stack consistent? Works on any environment, not only ours.

``stack_problems`` is pure (the installed stack, ``target/installed_stack.py``, + hardware ->
problems, each with its fix) and cheap. The import check of compiled extensions
(``extension_problems``) runs a subprocess; missing requirements and unmet dependencies
(``pip check``) are in ``dependencies``; ``suite.py`` runs them all, for verify and for install's
self-check.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Collection, Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from backendpick.edges.runner import capture
from backendpick.knowledge.facts import Facts, dotted
from backendpick.model.backend import Backend, local_tag_backend
from backendpick.model.environment import Target
from backendpick.model.hardware import AMD, NVIDIA, Hardware
from backendpick.model.names import normalize
from backendpick.target.installed_stack import InstalledStack, read as read_stack
from backendpick.target.installed_torch import TorchBuild
from backendpick.target.probes_in_target import source


@dataclass(frozen=True)
class Problem:
    package: str
    message: str
    fix: str

    def to_json(self) -> dict:
        return asdict(self)


def _fix(python_flag: str, backend: Backend | None, packages: Iterable[str]) -> str:
    """The install command that fixes ``packages``; ``backend`` None: the torch's own, which no
    index serves (issue 18): install keeps that torch without being told a backend."""
    where = f" --backend {backend}" if backend is not None else ""
    return f"backendpick install{python_flag}{where} {' '.join(packages)}"


def torch_pin(tb: TorchBuild, offered: Collection[str] | None) -> str:
    """How a fix names torch: pinned to the installed release, so pip fetches the companion that
    suits it instead of moving torch, but only when the backend index offers that release.

    ``offered``: public versions the backend index has for this target (empty: the index did
    not answer, so nothing is known to be there); None: not asked, the installed one is trusted.
    A torch from elsewhere (``pip install -U torch`` took 2.9.9+cpu from an extra index) is not
    repeated: the fix names plain ``torch`` and lets the backend index decide.
    """
    public = Version(tb.version).public
    if offered is not None and public not in offered:
        return "torch"
    return f"torch=={public}"


def _requires(dist) -> list[Requirement]:
    """A distribution's Requires-Dist, parsed; a broken line is skipped (pip check reports it)."""
    out = []
    for raw in dist.requires:
        try:
            out.append(Requirement(raw))
        except InvalidRequirement:
            continue
    return out


def stack_problems(
    target: Target,
    facts: Facts,
    hardware: Hardware | None,
    family: Iterable[str],
    build_packages: Iterable[str],
    *,
    python_flag: str = "",
    policy: str = "strict",
    offered: Collection[str] | None = None,
    stack: InstalledStack | None = None,
) -> list[Problem]:
    """``offered``: torch versions on the backend index (see ``torch_pin``); ``stack``: the
    look at the target the caller took (read here when not given). A torch no index serves
    (target/torch_origin.py) gets fixes that name no backend index."""
    if stack is None:
        stack = read_stack(target, facts)
    problems: list[Problem] = []
    tb = stack.torch
    family = set(family)
    if tb is None:
        installed = sorted(d.name for n, d in target.installed.items() if n in family | set(build_packages))
        if installed:
            problems.append(Problem("torch", f"torch is not installed, but {', '.join(installed)} need it",
                                    torch_missing_fix(target, family, build_packages, python_flag)))
        return problems
    torch_version = Version(tb.version)
    fix_stack = lambda pkgs: _fix(python_flag, None if stack.foreign else tb.backend,  # noqa: E731 - one-line helper
                                  [torch_pin(tb, offered), *pkgs])

    if hardware is not None:
        problems += _torch_vs_hardware(tb, torch_version, hardware, facts, python_flag, policy)

    for m in stack.among(family | set(build_packages)):
        if m.nightly:
            fix = (f"backendpick install{python_flag} --channel nightly --backend {tb.backend} "
                   f"torch=={tb.version.split('+')[0]} {m.package}")
        else:
            fix = fix_stack([m.package])
        problems.append(Problem(m.package, m.message, fix))
    return problems


def torch_missing_fix(target: Target, family: Iterable[str], build_packages: Iterable[str], python_flag: str) -> str:
    """The fix when torch is gone but its companions and builds are not (``pip uninstall torch``):
    the torch they were made for, on their backend, with them named, so the result verifies.
    A plain ``backendpick install torch`` would take the newest torch beside companions pinned
    to the old one (issue 18)."""
    import shlex

    from packaging.specifiers import SpecifierSet

    stack = set(family) | set(build_packages)
    names = sorted((d.name for n, d in target.installed.items() if n in stack and n != "torch"), key=str.lower)
    spec, backend = SpecifierSet(), None
    for name in names:
        dist = target.get(name)
        backend = backend or local_tag_backend(dist.version)
        for dep in _requires(dist):
            if normalize(dep.name) == "torch" and (dep.marker is None or "extra" not in str(dep.marker)):
                spec &= dep.specifier
    words = (["--backend", str(backend)] if backend else []) + [shlex.quote(f"torch{spec}"), *names]
    return f"backendpick install{python_flag} {' '.join(words)}"


def _torch_vs_hardware(tb: TorchBuild, version: Version, hw: Hardware, facts: Facts, python_flag: str, policy: str) -> list[Problem]:
    out: list[Problem] = []
    nvidia = hw.by_vendor(NVIDIA)
    amd = hw.by_vendor(AMD)
    if nvidia and tb.cuda is None:
        out.append(Problem("torch", f"torch {tb.version} is a {'ROCm' if tb.hip else 'CPU'} build, but this machine has "
                                    f"{len(nvidia)} NVIDIA GPU(s) ({nvidia[0].name})",
                           f"backendpick install{python_flag} torch"))
        return out
    if amd and not nvidia and tb.hip is None:
        out.append(Problem("torch", f"torch {tb.version} is not a ROCm build, but this machine has AMD GPU(s) ({amd[0].name})",
                           f"backendpick install{python_flag} torch"))
        return out
    if nvidia and tb.cuda:
        cuda = dotted(tb.cuda)[:2]
        driver = dotted(hw.nvidia_driver) if hw.nvidia_driver else None
        driver_cuda = dotted(hw.driver_cuda) if hw.driver_cuda else None
        if driver is not None and not facts.cuda_allowed(cuda, driver_cuda=driver_cuda, driver=driver, policy=policy):
            out.append(Problem("torch", f"torch {tb.version} is built for CUDA {tb.cuda}, but driver {hw.nvidia_driver} "
                                        f"supports CUDA {hw.driver_cuda or '?'}",
                               f"backendpick install{python_flag} torch   # picks a build this driver runs; or update the NVIDIA driver"))
        backend = Backend.cuda(*cuda)
        for gpu in nvidia:
            if gpu.cap is not None and facts.serves_cap(version.release, backend, gpu.cap) is False:
                out.append(Problem("torch", f"torch {tb.version} carries no code for {gpu.name} (compute capability "
                                            f"{gpu.compute_capability}): 'no kernel image is available' at run time",
                                   f"backendpick install{python_flag} torch   # chooses a release and build that serve this GPU"))
                break
    return out


def build_record_problems(target: Target, records: dict, tb: TorchBuild | None, build_packages: Iterable[str],
                          python_flag: str, *, cxx11abi: bool | None = None) -> tuple[list[Problem], list[Problem]]:
    """Each installed build package against what install recorded it was built for (state/build_records.py).

    Returns (problems, warnings): a record naming another torch (version, CUDA or HIP, C++ ABI
    when ``cxx11abi`` is known) is a problem; a package without a record of its installed
    version (installed by plain pip) is a warning: nothing tells which torch it was built for."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    if tb is None:
        return problems, warnings  # stack_problems says torch is missing
    for name in sorted(set(build_packages)):
        dist = target.get(name)
        if dist is None:
            continue
        fix = (f"backendpick install{python_flag} --backend {tb.backend} --reinstall {dist.name} {dist.name}"
               "   # rebuilds it against the installed torch")
        record = records.get(normalize(name))
        if record is None or not record.matches(dist.version):
            warnings.append(Problem(dist.name, f"{dist.name} {dist.version} has no record of the torch it was built "
                                               "for (installed outside backendpick); it may not match torch "
                                               f"{tb.version}", fix))
            continue
        differs = []
        if record.torch != tb.version:
            differs.append(f"version {tb.version}")
        if _major_minor(record.cuda) != _major_minor(tb.cuda):
            differs.append(f"CUDA {tb.cuda}" if tb.cuda else "no CUDA")
        if _major_minor(record.hip) != _major_minor(tb.hip):
            differs.append(f"HIP {tb.hip}" if tb.hip else "no HIP")
        if cxx11abi is not None and record.cxx11abi != cxx11abi:
            differs.append(f"C++11 ABI {'on' if cxx11abi else 'off'}")
        if differs:
            problems.append(Problem(dist.name, f"{dist.name} {dist.version} was {_how_words(record.how)} "
                                               f"{record.torch_words()}, but the installed torch has "
                                               f"{', '.join(differs)}", fix))
    return problems, warnings


def _major_minor(text: str | None) -> tuple[int, int] | None:
    """``(6, 2)`` from ``6.2.41133-dd7f95766`` (torch.version.hip), None from None."""
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _how_words(how: str) -> str:
    return {"prebuilt": "downloaded prebuilt for", "cache": "taken from the wheel cache for",
            "source": "built from source against"}.get(how, "installed for")


# -- subprocess checks ------------------------------------------------------------------------

def extension_problems(target: Target, facts: Facts, python_flag: str, backend: Backend | None) -> list[Problem]:
    modules = {}
    for pkg, mods in facts.extensions.items():
        if target.get(pkg) is not None:
            for m in mods:
                modules[m] = pkg
    if not modules:
        return []
    res = capture([target.python, "-c", source("import_check"), *modules], timeout=180)
    if not res.ok:
        return [Problem("torch", f"importing torch failed in {target.python}: {(res.error or res.stderr.strip()[-200:])}",
                        f"backendpick verify{python_flag}")]
    try:
        results = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return []
    if "torch" in results:
        return [Problem("torch", f"import torch failed: {results['torch']}", f"backendpick install{python_flag} torch")]
    out = []
    for mod, error in results.items():
        if error is None:
            continue
        pkg = modules[mod]
        backend_flag = f" --backend {backend}" if backend else ""
        fix = f"backendpick install{python_flag}{backend_flag} --reinstall {pkg} {pkg}   # rebuilds it against the installed torch"
        if "undefined symbol" in error:
            msg = f"{pkg} was compiled against a different torch than the one installed ({mod}: undefined symbol)"
        elif "No module named" in error:
            msg = f"{pkg} is installed without its compiled extension {mod}"
        else:
            msg = f"{pkg}'s extension {mod} does not load: {error[:200]}"
        out.append(Problem(pkg, msg, fix))
    return out
