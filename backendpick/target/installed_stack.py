"""The installed stack, read once per look at the target (issue 20 item 3): the torch (version,
backend, CUDA or HIP, from its files: ``installed_torch.torch_build``), where it came from
(``torch_origin.of``), its C++ ABI when torch was imported, what each build package was recorded
built for (``built_for.read``), and which installed companions and build packages were made for
another torch or backend.

Selection, planning, ``verify`` and install's self-check take this one value; none of them reads
these facts again. The mismatches are facts about the installed files, not judgements: the checks
(``checks/stack.py``) turn them into problems with fixes, and planning replaces the companions
they name (``broken``) without asking the checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from backendpick.knowledge.facts import Facts, dotted
from backendpick.model.backend import Backend, local_tag_backend, nightly_date
from backendpick.model.environment import Target
from backendpick.model.names import normalize
from backendpick.target.built_for import Record
from backendpick.target.installed_torch import TorchBuild, torch_build
from backendpick.target.torch_origin import TorchOrigin


@dataclass(frozen=True)
class Mismatch:
    """An installed companion or build package that was not made for the installed torch."""

    package: str  # as installed
    message: str  # "xformers 0.0.28 is built for cu121, torch 2.5.1+cu124 for cu124"
    nightly: bool = False  # another night's nightly: only that channel's build of the same night fits


@dataclass(frozen=True)
class InstalledStack:
    """The target's torch and what was made for it, as one look at the target found them."""

    torch: TorchBuild | None = None  # None: torch is not installed
    origin: TorchOrigin | None = None  # an index build, or one no index serves (with its ABI, once imported)
    cxx11abi: bool | None = None  # torch._C._GLIBCXX_USE_CXX11_ABI, when torch was imported for this look
    records: Mapping[str, Record] = field(default_factory=dict)  # builds.json: normalized name -> Record
    mismatches: tuple[Mismatch, ...] = ()

    @property
    def backend(self) -> Backend | None:
        return self.torch.backend if self.torch is not None else None

    @property
    def version(self) -> str | None:
        return self.torch.version if self.torch is not None else None

    @property
    def foreign(self) -> bool:
        """Whether the installed torch is one no index serves (NGC's, a source build, conda's)."""
        return self.origin is not None and self.origin.foreign

    def broken(self, names: Iterable[str]) -> list[str]:
        """Installed packages among ``names`` (normalized) made for another torch or backend:
        the companions a plan replaces."""
        return sorted({m.package for m in self.among(names)})

    def among(self, names: Iterable[str]) -> tuple[Mismatch, ...]:
        """The mismatches of the installed packages among ``names`` (normalized)."""
        wanted = set(names)
        return tuple(m for m in self.mismatches if normalize(m.package) in wanted)

    def to_json(self) -> dict | None:
        """What verify reports about the torch: its build, and where it came from."""
        if self.torch is None:
            return None
        out = self.torch.to_json()
        if self.origin is not None:
            out["origin"] = self.origin.to_json()
        return out


def read(target: Target, facts: Facts, env: Mapping[str, str] | None = None, *, abi: bool = False,
         build: Iterable[str] = ()) -> InstalledStack:
    """One look at ``target``'s stack. ``abi``: import torch once to read its C++ ABI where it
    matters (a torch no index serves, or one of the ``build`` packages installed); only verify
    asks, where it imports torch anyway."""
    from backendpick.edges.paths import state_dir
    from backendpick.target import built_for, torch_origin

    tb = torch_build(target, facts)
    origin = torch_origin.of(target, facts, env, tb)
    records = built_for.read(state_dir(target, env))
    if tb is None:
        return InstalledStack(None, origin, None, records)
    cxx11abi = None
    if abi and (origin is not None and origin.foreign or any(target.get(n) is not None for n in build)):
        cxx11abi = _imported_abi(target)
        if origin is not None and origin.foreign:
            origin = origin.with_abi(cxx11abi)  # output names it for a torch no index serves
    return InstalledStack(tb, origin, cxx11abi, records, tuple(_mismatches(target, tb)))


def _imported_abi(target: Target) -> bool | None:
    from backendpick.errors import BackendpickError
    from backendpick.target.installed_torch import torch_info

    try:
        return torch_info(target.python).cxx11abi
    except BackendpickError:
        return None  # the extension check reports a torch that does not import


def _mismatches(target: Target, tb: TorchBuild) -> list[Mismatch]:
    """Every installed distribution made for another torch or backend than the installed torch:
    a backend tag (+cu121) not torch's, a requirement on torch it does not meet, another night's
    nightly, xformers' kernels built for another torch. Callers look at the names they judge."""
    out: list[Mismatch] = []
    torch_version = Version(tb.version)
    for name, dist in sorted(target.installed.items()):
        if name == "torch":
            continue
        tag = local_tag_backend(dist.version)
        if tag is not None and tag != tb.backend:
            out.append(Mismatch(dist.name, f"{dist.name} {dist.version} is built for {tag}, torch {tb.version} "
                                           f"for {tb.backend}"))
            continue
        for dep in _torch_requirements(dist):
            if not dep.specifier.contains(torch_version, prereleases=True):
                out.append(Mismatch(dist.name, f"{dist.name} {dist.version} requires torch{dep.specifier}, "
                                               f"but torch {tb.version} is installed"))
        night = _nightly_mismatch(tb.version, dist.version)
        if night:
            out.append(Mismatch(dist.name, f"{dist.name} {dist.version} {night}", nightly=True))
            continue
        if name == "xformers":
            out += _xformers(target, tb, dist)
    return out


def _torch_requirements(dist) -> list[Requirement]:
    """``dist``'s requirements on torch, extras' aside. Only lines that start with the name are
    parsed: a look at a large environment stays cheap."""
    out = []
    for raw in dist.requires:
        if not raw.lstrip()[:5].lower() == "torch":
            continue
        try:
            dep = Requirement(raw)
        except InvalidRequirement:
            continue
        if normalize(dep.name) == "torch" and not (dep.marker is not None and "extra" in str(dep.marker)):
            out.append(dep)
    return out


def _nightly_mismatch(torch_version: str, version: str) -> str | None:
    """A nightly torch's companions must come from the same night (the date in ``.devYYYYMMDD``):
    another night's build is compiled against another torch, whatever its metadata says."""
    night = nightly_date(torch_version)
    if night is None:
        return None
    theirs = nightly_date(version)
    if theirs is not None and theirs != night:
        return f"is the nightly of {theirs}, torch {torch_version} the nightly of {night}: they must come from the same night"
    return None


def cpp_lib(target: Target) -> dict | None:
    """xformers' ``cpp_lib.json``: the torch and CUDA its kernels were built with."""
    text = target.files.get("xformers/cpp_lib.json")
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def cuda_of_cpp_lib(value) -> str | None:
    """cpp_lib.json writes CUDA as "1204", "12.4" or null."""
    if value in (None, "", "None"):
        return None
    text = str(value)
    if "." in text:
        return ".".join(text.split(".")[:2])
    if text.isdigit() and len(text) >= 3:
        return f"{int(text[:-2])}.{int(text[-2:])}"
    return None


def _xformers(target: Target, tb: TorchBuild, dist) -> list[Mismatch]:
    info = cpp_lib(target)
    if info is None:
        return []
    version = dist.version
    built_torch = str(info.get("torch_version") or "")
    built_cuda = cuda_of_cpp_lib(info.get("cuda_version"))
    try:
        if built_torch and Version(built_torch).public != Version(tb.version).public:
            return [Mismatch("xformers", f"xformers {version} was built for torch {built_torch}, but torch "
                                         f"{tb.version} is installed: its kernels will not load")]
    except InvalidVersion:
        pass
    if tb.cuda and not built_cuda:
        return [Mismatch("xformers", f"xformers {version} is a CPU-only build next to CUDA torch {tb.version} "
                                     "('No available CUDA kernel')")]
    if tb.cuda and built_cuda and dotted(built_cuda)[:2] != dotted(tb.cuda)[:2]:
        return [Mismatch("xformers", f"xformers {version} is built for CUDA {built_cuda}, torch {tb.version} for "
                                     f"CUDA {tb.cuda}")]
    return []


__all__ = ["InstalledStack", "Mismatch", "cpp_lib", "cuda_of_cpp_lib", "read"]
