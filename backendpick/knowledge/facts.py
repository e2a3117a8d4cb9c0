"""Typed access to ``data/facts.toml``: the one place backend knowledge lives.

Everything that changes when NVIDIA, AMD or PyTorch ship something new is a row in that file;
the functions here only answer questions about the rows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from backendpick.model.backend import CPU, CUDA, ROCM, XPU, Backend


def dotted(text: str) -> tuple[int, ...]:
    """``"550.54.14"`` -> ``(550, 54, 14)``; raises ValueError on anything else."""
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a dotted version: {text!r}")
    return tuple(int(p) for p in parts)


def show(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


@dataclass(frozen=True)
class ArchRow:
    since: tuple[int, ...]  # torch release (major, minor) from which the row applies
    backend: Backend
    caps: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Naming:
    """One ``[[prebuilt.<name>.naming]]`` row: how the project names its wheels from ``since`` on."""

    since: Version
    cuda: dict  # CUDA major (str) -> tag in the file name ("cu12")
    rocm: str | None = None  # format with hip_major, hip_minor ("rocm{hip_major}{hip_minor}")


@dataclass(frozen=True)
class Package:
    """A ``[prebuilt.<name>]`` table: what a project that PyPI has only as an sdist publishes."""

    name: str
    wheel_name: str
    release_url: str
    naming: tuple[Naming, ...]
    force_build_env: str | None = None
    skip_build_env: str | None = None
    job_memory_gb: float | None = None
    cuda_archs_env: str | None = None
    cuda_archs: tuple[str, ...] = ()
    rocm_archs_env: str | None = None

    def naming_for(self, version: Version) -> Naming | None:
        rows = [n for n in self.naming if n.since <= version]
        return max(rows, key=lambda n: n.since) if rows else None


def _package(name: str, row: dict) -> Package:
    return Package(
        name=name,
        wheel_name=row["wheel-name"],
        release_url=row["release-url"],
        naming=tuple(
            Naming(Version(n["since"]), {str(k): v for k, v in n.get("cuda", {}).items()}, n.get("rocm"))
            for n in row.get("naming", [])
        ),
        force_build_env=row.get("force-build-env"),
        skip_build_env=row.get("skip-build-env"),
        job_memory_gb=row.get("job-memory-gb"),
        cuda_archs_env=row.get("cuda-archs-env"),
        cuda_archs=tuple(row.get("cuda-archs", ())),
        rocm_archs_env=row.get("rocm-archs-env"),
    )


@dataclass(frozen=True)
class ForeignBuild:
    """A ``[[torch.foreign.builds]]`` row: the local version segment of torch builds no index
    serves, who makes them, and the variable their images set (``NVIDIA_PYTORCH_VERSION``)."""

    label: str  # "NVIDIA build"
    local: str  # regular expression on the part after "+"
    env: str | None = None
    env_label: str | None = None  # "NGC": named with the variable's value ("NGC 24.06")


@dataclass(frozen=True)
class Facts:
    default_index_url: str
    cuda_drivers: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (toolkit, min driver), ascending
    cxx11abi_from: tuple[int, ...]  # first torch release whose wheels use the CXX11 ABI
    pypi_url: str  # pip's default index (PEP 503 simple API)
    pip_source_keys: frozenset  # pip settings that choose where packages come from
    pci_vendors: dict  # "nvidia" / "intel" / "amd" -> PCI vendor id as sysfs writes it ("0x10de")
    tagged: frozenset  # packages whose backend builds carry a local version tag naming the backend
    setuptools_fallback: tuple[str, ...]  # build requirements of a setup.py project without its own
    minor_compat: dict = field(default_factory=dict)  # major -> min driver
    releases: dict = field(default_factory=dict)  # torch (major, minor) -> tuple[Backend, ...]
    pypi_cuda: dict = field(default_factory=dict)  # torch (major, minor) -> CUDA (major, minor)
    arch: tuple[ArchRow, ...] = ()
    rocm_gfx: dict = field(default_factory=dict)  # gfx -> (first, last or None)
    integrated_gfx: frozenset = frozenset()
    intel_discrete: tuple = ()  # (low id, high id, family)
    backend_packages: tuple[str, ...] = ()
    no_build_isolation: dict = field(default_factory=dict)  # name -> build requirements
    extensions: dict = field(default_factory=dict)  # name -> compiled extension module names
    # name -> the backend kinds whose indexes publish it (absent: every backend's index)
    published_for: dict = field(default_factory=dict)
    # torch (major, minor) -> backend names whose builds use the CXX11 ABI before cxx11abi_from
    cxx11abi_early: dict = field(default_factory=dict)
    prebuilt: dict = field(default_factory=dict)  # normalized name -> Package
    # [torch.foreign]: how a torch no index serves is recognised (target/torch_origin.py)
    foreign_builds: tuple[ForeignBuild, ...] = ()
    index_installers: frozenset = frozenset()  # [torch.foreign] index-installers
    managed_installers: frozenset = frozenset()

    def cxx11abi(self, release: tuple[int, ...], backend) -> bool:
        """Whether the Linux wheels of torch ``release`` for ``backend`` use the CXX11 ABI."""
        if tuple(release[:2]) >= tuple(self.cxx11abi_from[:2]):
            return True
        return str(backend) in self.cxx11abi_early.get(tuple(release[:2]), frozenset())

    # -- NVIDIA ---------------------------------------------------------------------------------
    def max_cuda_for_driver(self, driver: tuple[int, ...]) -> tuple[int, ...] | None:
        """Highest CUDA toolkit whose minimum driver is at most ``driver`` (strict reading)."""
        best = None
        for cuda, minimum in self.cuda_drivers:
            if driver >= minimum:
                best = cuda
        return best

    def driver_beyond_table(self, driver: tuple[int, ...]) -> bool:
        """True when the driver is newer than the newest row, so it may know newer CUDA."""
        newest = self.cuda_drivers[-1][1]
        return driver[0] > newest[0]

    def cuda_allowed(
        self,
        cuda: tuple[int, ...],
        *,
        driver_cuda: tuple[int, ...] | None,
        driver: tuple[int, ...] | None,
        policy: str,
    ) -> bool:
        """Whether a cuXY build may run on this driver under the strict or minor policy."""
        if driver_cuda is not None and cuda[:2] <= driver_cuda[:2]:
            return True
        if policy == "minor" and driver is not None:
            minimum = self.minor_compat.get(cuda[0])
            return minimum is not None and driver >= minimum
        return False

    def caps_for(self, torch: tuple[int, ...], backend: Backend) -> tuple[tuple[int, ...], ...] | None:
        """Compute capabilities of a build, or None when the table has no row for it."""
        rows = [r for r in self.arch if r.backend == backend and r.since <= torch[:2]]
        if not rows:
            return None
        return max(rows, key=lambda r: r.since).caps

    def serves_cap(self, torch: tuple[int, ...], backend: Backend, cap: tuple[int, ...]) -> bool | None:
        """Whether a build runs on a GPU of compute capability ``cap``; None if unknown."""
        caps = self.caps_for(torch, backend)
        if caps is None:
            return None
        return any(c[0] == cap[0] and c[1] <= cap[1] for c in caps)

    # -- PyTorch releases -----------------------------------------------------------------------
    def backends_of(self, torch: tuple[int, ...]) -> tuple[Backend, ...]:
        return self.releases.get(torch[:2], ())

    def all_backends(self) -> list[Backend]:
        seen: set[Backend] = set()
        for backends in self.releases.values():
            seen.update(backends)
        return sorted(seen, key=sort_key)

    def newest_release(self) -> tuple[int, ...]:
        return max(self.releases)

    # -- AMD ------------------------------------------------------------------------------------
    def rocm_supports(self, gfx: str, backend: Backend) -> bool | None:
        row = self.rocm_gfx.get(gfx)
        if row is None:
            return None
        first, last = row
        return backend.version >= first and (last is None or backend.version <= last)


# cpu < every GPU backend, then vendors grouped; only used for a stable display order.
_KIND_ORDER = {CPU: 0, CUDA: 1, ROCM: 2, XPU: 3}


def sort_key(b: Backend) -> tuple:
    return (_KIND_ORDER[b.kind], b.version)


def read_toml(path: Path) -> dict:
    """tomllib on 3.11+, tomli before; raises OSError or ValueError (TOMLDecodeError)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    with path.open("rb") as f:
        return tomllib.load(f)


META = ("source", "checked")  # every table's provenance, not rows


def rows(table: dict) -> dict:
    """A table's rows: everything but its ``source`` and ``checked``."""
    return {k: v for k, v in table.items() if k not in META}


def build(raw: dict) -> Facts:
    """Turn the TOML document into ``Facts`` (separate from loading so tests can vary rows)."""
    cuda = raw["cuda"]
    torch = raw["torch"]
    releases = {}
    for release, row in rows(torch["releases"]).items():
        backends = [Backend(CPU)]
        backends += [Backend.parse(n) for n in row.get("cuda", [])]
        backends += [Backend.parse(n) for n in row.get("rocm", [])]
        if row.get("xpu"):
            backends.append(Backend(XPU))
        releases[dotted(release)] = tuple(backends)
    return Facts(
        default_index_url=raw["index"]["default-url"],
        cuda_drivers=tuple(sorted((dotted(k), dotted(v)) for k, v in rows(cuda["drivers"]).items())),
        pypi_url=raw["pypi"]["simple-url"],
        pip_source_keys=frozenset(raw["pip"]["source-keys"]),
        pci_vendors=rows(raw["pci"]),
        tagged=frozenset(torch["tagged"]["packages"]),
        setuptools_fallback=tuple(raw["packages"]["setuptools-fallback"]["requirements"]),
        minor_compat={int(k): dotted(v) for k, v in rows(cuda["minor-compat"]).items()},
        releases=releases,
        pypi_cuda={dotted(k): dotted(v) for k, v in rows(torch["pypi-cuda"]).items()},
        arch=tuple(
            ArchRow(dotted(r["since"]), Backend.parse(r["backend"]), tuple(dotted(c) for c in r["caps"]))
            for r in torch["arch"]
        ),
        rocm_gfx={
            gfx: (dotted(row["first"]), dotted(row["last"]) if "last" in row else None)
            for gfx, row in rows(raw["rocm"]["gfx"]).items()
        },
        integrated_gfx=frozenset(raw["rocm"]["integrated-gfx"]),
        intel_discrete=tuple(
            (int(r["from"], 16), int(r["to"], 16), r["family"]) for r in raw["intel"]["discrete"]
        ),
        backend_packages=tuple(raw["packages"]["backend"]),
        no_build_isolation={k: tuple(v) for k, v in rows(raw["packages"]["no-build-isolation"]).items()},
        extensions={k: tuple(v) for k, v in rows(raw["packages"].get("extensions", {})).items()},
        published_for={canonicalize_name(k): frozenset(v)
                       for k, v in rows(raw["packages"].get("published-for", {})).items()},
        cxx11abi_from=dotted(torch["abi"]["cxx11-from"]),
        cxx11abi_early={dotted(k): frozenset(v) for k, v in rows(torch["abi"].get("cxx11-early", {})).items()},
        prebuilt={
            canonicalize_name(name): _package(canonicalize_name(name), row)
            for name, row in raw.get("prebuilt", {}).items()
        },
        foreign_builds=tuple(ForeignBuild(r["label"], r["local"], r.get("env"), r.get("env-label"))
                             for r in torch.get("foreign", {}).get("builds", [])),
        index_installers=frozenset(torch["foreign"]["index-installers"]),
        managed_installers=frozenset(torch.get("foreign", {}).get("managed-installers", [])),
    )


@lru_cache(maxsize=1)
def raw() -> dict:
    """facts.toml as parsed, once per process (``load`` and the prebuilt rows both read it)."""
    return read_toml(Path(__file__).parent / "data" / "facts.toml")


@lru_cache(maxsize=1)
def load() -> Facts:
    return build(raw())
