"""Is an environment's GPU stack consistent? Works on any environment, not only ours.

``stack_problems`` is pure (installed metadata + hardware -> problems) and cheap, so the
pipeline also uses it to find broken companions to replace. The import check of compiled
extensions (``extension_problems``) runs a subprocess; missing requirements and unmet
dependencies (``pip check``) are in ``dependencies``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Collection, Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from backendpick.edges.runner import capture
from backendpick.knowledge.facts import Facts, dotted
from backendpick.model.backend import Backend, local_tag_backend
from backendpick.model.environment import Target
from backendpick.model.hardware import AMD, NVIDIA, Hardware
from backendpick.model.names import normalize
from backendpick.target.installed_torch import TorchBuild, torch_build
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


def _cpp_lib(target: Target) -> dict | None:
    text = target.files.get("xformers/cpp_lib.json")
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _cuda_of_cpp_lib(value) -> str | None:
    """cpp_lib.json writes CUDA as "1204", "12.4" or null."""
    if value in (None, "", "None"):
        return None
    text = str(value)
    if "." in text:
        return ".".join(text.split(".")[:2])
    if text.isdigit() and len(text) >= 3:
        return f"{int(text[:-2])}.{int(text[-2:])}"
    return None


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
    foreign: bool = False,
) -> list[Problem]:
    """``offered``: torch versions on the backend index (see ``torch_pin``); ``foreign``: the
    installed torch is one no index serves (target/torch_origin.py), so fixes name no backend index."""
    problems: list[Problem] = []
    tb = torch_build(target, facts)
    family = set(family)
    if tb is None:
        installed = sorted(d.name for n, d in target.installed.items() if n in family | set(build_packages))
        if installed:
            problems.append(Problem("torch", f"torch is not installed, but {', '.join(installed)} need it",
                                    torch_missing_fix(target, family, build_packages, python_flag)))
        return problems
    torch_version = Version(tb.version)
    fix_stack = lambda pkgs: _fix(python_flag, None if foreign else tb.backend,  # noqa: E731 - one-line helper
                                  [torch_pin(tb, offered), *pkgs])

    if hardware is not None:
        problems += _torch_vs_hardware(tb, torch_version, hardware, facts, python_flag, policy)

    for name, dist in sorted(target.installed.items()):
        if name == "torch" or (name not in family and name not in set(build_packages)):
            continue
        tag = local_tag_backend(dist.version)
        if tag is not None and tag != tb.backend:
            problems.append(Problem(dist.name, f"{dist.name} {dist.version} is built for {tag}, torch {tb.version} for {tb.backend}",
                                    fix_stack([dist.name])))
            continue
        for dep in _requires(dist):
            if normalize(dep.name) != "torch" or (dep.marker is not None and "extra" in str(dep.marker)):
                continue
            if not dep.specifier.contains(torch_version, prereleases=True):
                problems.append(Problem(dist.name, f"{dist.name} {dist.version} requires torch{dep.specifier}, "
                                                   f"but torch {tb.version} is installed", fix_stack([dist.name])))
        night = _nightly_mismatch(tb.version, dist.version)
        if night:
            problems.append(Problem(dist.name, f"{dist.name} {dist.version} {night}",
                                    f"backendpick install{python_flag} --channel nightly --backend {tb.backend} "
                                    f"torch=={tb.version.split('+')[0]} {dist.name}"))
            continue
        if name == "xformers":
            problems += _xformers(target, tb, dist.version, fix_stack)
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


def _nightly_mismatch(torch_version: str, version: str) -> str | None:
    """A nightly torch's companions must come from the same night (the date in ``.devYYYYMMDD``):
    another night's build is compiled against another torch, whatever its metadata says."""
    from backendpick.selection.torch_version import nightly_date

    night = nightly_date(torch_version)
    if night is None:
        return None
    theirs = nightly_date(version)
    if theirs is not None and theirs != night:
        return f"is the nightly of {theirs}, torch {torch_version} the nightly of {night}: they must come from the same night"
    return None


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


def _xformers(target: Target, tb: TorchBuild, version: str, fix_stack) -> list[Problem]:
    info = _cpp_lib(target)
    if info is None:
        return []
    out = []
    built_torch = str(info.get("torch_version") or "")
    built_cuda = _cuda_of_cpp_lib(info.get("cuda_version"))
    try:
        if built_torch and Version(built_torch).public != Version(tb.version).public:
            out.append(Problem("xformers", f"xformers {version} was built for torch {built_torch}, but torch {tb.version} "
                                           "is installed: its kernels will not load", fix_stack(["xformers"])))
            return out
    except InvalidVersion:
        pass
    if tb.cuda and not built_cuda:
        out.append(Problem("xformers", f"xformers {version} is a CPU-only build next to CUDA torch {tb.version} "
                                       "('No available CUDA kernel')", fix_stack(["xformers"])))
    elif tb.cuda and built_cuda and dotted(built_cuda)[:2] != dotted(tb.cuda)[:2]:
        out.append(Problem("xformers", f"xformers {version} is built for CUDA {built_cuda}, torch {tb.version} for "
                                       f"CUDA {tb.cuda}", fix_stack(["xformers"])))
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


def stale_packages(problems: Iterable[Problem]) -> list[str]:
    """Installed companions that must be replaced (install removes and reinstalls them)."""
    return sorted({p.package for p in problems if p.package != "torch"})


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


def build_records(target: Target, tb, nbi, flag: str, *, runtime: bool, abi: bool | None = None) -> tuple[list, list]:
    """build_record_problems with the records of the target's state folder; the installed
    torch's C++ ABI is read (one import of torch) only with ``runtime`` and a build package,
    unless the caller read it already (``abi``)."""
    from backendpick.edges.paths import state_dir
    from backendpick.state import build_records as records_file

    if tb is None or not any(target.get(n) is not None for n in nbi):
        return [], []
    if runtime and abi is None:
        from backendpick.errors import BackendpickError
        from backendpick.target.installed_torch import torch_info

        try:
            abi = torch_info(target.python).cxx11abi
        except BackendpickError:
            abi = None  # extension_problems reports a torch that does not import
    return build_record_problems(target, records_file.read(state_dir(target)), tb, nbi, flag, cxx11abi=abi)
