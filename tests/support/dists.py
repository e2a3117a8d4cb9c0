"""Generators of tiny, valid distributions (wheels and sdists).

Everything is written with ``zipfile``/``tarfile`` only, so generating needs no
build backend. Archives are deterministic (fixed timestamps, sorted entries) so
hashes are stable within and across sessions.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import re
import tarfile
import textwrap
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Union

FileContent = Union[str, bytes]

# 1980-01-01 is the earliest timestamp a zip entry can hold.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_TAR_MTIME = 315532800  # the same instant, as a Unix time

_SKIPPED_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def normalize_name(name: str) -> str:
    """PEP 503 normalized name: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _escaped(name: str) -> str:
    """Name as it appears in wheel/sdist file names and dist-info directories."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _module_name(name: str) -> str:
    return _escaped(name)


def _to_bytes(content: FileContent) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _expand_tag(tag: str) -> list[str]:
    """``py2.py3-none-any`` -> ``["py2-none-any", "py3-none-any"]`` (for WHEEL)."""
    pythons, abis, platforms = tag.split("-")
    return [
        f"{py}-{abi}-{plat}"
        for py in pythons.split(".")
        for abi in abis.split(".")
        for plat in platforms.split(".")
    ]


def _compress_tags(tags: Iterable[str]) -> str:
    """Inverse of ``_expand_tag`` for the file name (order-preserving, deduplicated)."""
    parts: tuple[list[str], list[str], list[str]] = ([], [], [])
    for tag in tags:
        for bucket, value in zip(parts, tag.split("-")):
            if value not in bucket:
                bucket.append(value)
    return "-".join(".".join(bucket) for bucket in parts)


def _metadata_text(
    name: str,
    version: str,
    requires: Iterable[str],
    requires_python: str | None,
    summary: str,
) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {summary}",
    ]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    requires = list(requires)
    # Extras named in markers are declared, as real metadata does (pip ignores undeclared ones).
    extras = dict.fromkeys(m for req in requires for m in re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req))
    lines.extend(f"Provides-Extra: {extra}" for extra in extras)
    lines.extend(f"Requires-Dist: {req}" for req in requires)
    return "\n".join(lines) + "\n\n"


def _write_wheel_zip(path: Path, entries: Mapping[str, bytes], dist_info: str) -> None:
    """Write ``entries`` plus a correct RECORD (RECORD itself is listed unhashed)."""
    record_name = f"{dist_info}/RECORD"
    record_lines = [
        f"{arc},{_record_hash(data)},{len(data)}"
        for arc, data in sorted(entries.items())
    ]
    record_lines.append(f"{record_name},,")
    all_entries = dict(entries)
    all_entries[record_name] = ("\n".join(record_lines) + "\n").encode("utf-8")
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        # dist-info last, as the wheel spec recommends.
        for arc in sorted(
            all_entries, key=lambda a: (a.startswith(dist_info + "/"), a)
        ):
            info = zipfile.ZipInfo(arc, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, all_entries[arc])
    tmp.replace(path)  # atomic, so a concurrently serving index never sees half a file


def _init_py(version: str, attrs: Mapping[str, object] | None) -> str:
    lines = [f"__version__ = {version!r}"]
    for key, value in (attrs or {}).items():
        lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def make_wheel(
    dest_dir: Path,
    name: str,
    version: str,
    *,
    requires: Iterable[str] = (),
    files: Mapping[str, FileContent] | None = None,
    tag: str = "py3-none-any",
    requires_python: str | None = None,
    attrs: Mapping[str, object] | None = None,
    summary: str = "tiny test distribution",
) -> Path:
    """Write ``<name>-<version>-<tag>.whl`` into ``dest_dir`` and return its path.

    The wheel holds ``<module>/__init__.py`` defining ``__version__`` (plus one
    assignment per ``attrs`` item, e.g. ``{"__index__": "cu124"}`` to tell
    copies from different indexes apart). ``files`` maps archive paths to
    contents and may override the default ``__init__.py``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    escaped = _escaped(name)
    dist_info = f"{escaped}-{version}.dist-info"
    module = _module_name(name)

    entries: dict[str, bytes] = {
        f"{module}/__init__.py": _init_py(version, attrs).encode("utf-8")
    }
    for arc, content in (files or {}).items():
        entries[str(PurePosixPath(arc))] = _to_bytes(content)

    tags = _expand_tag(tag)
    wheel_lines = [
        "Wheel-Version: 1.0",
        "Generator: backendpick-tests",
        "Root-Is-Purelib: true",
    ]
    wheel_lines += [f"Tag: {t}" for t in tags]
    entries[f"{dist_info}/WHEEL"] = ("\n".join(wheel_lines) + "\n").encode("utf-8")
    entries[f"{dist_info}/METADATA"] = _metadata_text(
        name, version, requires, requires_python, summary
    ).encode("utf-8")

    path = dest_dir / f"{escaped}-{version}-{tag}.whl"
    _write_wheel_zip(path, entries, dist_info)
    return path


def torch_backend_info(backend: str) -> tuple[str | None, str | None]:
    """``(cuda, hip)`` versions as ``torch.version`` reports them for a backend tag.

    ``cu124`` -> ``("12.4", None)``; ``rocm6.2`` -> ``(None, "6.2")``;
    ``cpu`` -> ``(None, None)``.
    """
    cuda_match = re.fullmatch(r"cu(\d+)(\d)", backend)
    if cuda_match:
        return f"{int(cuda_match.group(1))}.{cuda_match.group(2)}", None
    rocm_match = re.fullmatch(r"rocm(\d+\.\d+(?:\.\d+)?)", backend)
    if rocm_match:
        return None, rocm_match.group(1)
    if backend in ("cpu", "xpu"):
        return None, None
    raise ValueError(f"unknown torch backend tag: {backend!r}")


def _abi_of(version: str) -> bool:
    major, minor = (int(p) for p in version.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 7)


def make_torch(
    dest: Path,
    version: str,
    backend: str,
    *,
    local_tag: bool | str = True,
    requires: Iterable[str] = ("filelock", "typing-extensions"),
    cxx11_abi: Optional[bool] = None,
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """A fake torch wheel whose ``torch.version`` mirrors the real one for ``backend``.

    With ``local_tag`` (the default) the version gets ``+<backend>`` like the
    download.pytorch.org builds; PyPI's builds have no local tag. A string is the local tag
    itself, for builds no index serves (NVIDIA's ``f70bd71a48.nv24.6``, a source build's
    ``git1a2b3c4``); ``backend`` then only says what ``torch.version`` reports.
    """
    cuda, hip = torch_backend_info(backend)
    if isinstance(local_tag, str):
        full_version = f"{version}+{local_tag}"
    else:
        full_version = f"{version}+{backend}" if local_tag else version
    version_py = textwrap.dedent(
        f"""\
        __version__ = {full_version!r}
        debug = False
        cuda = {cuda!r}
        hip = {hip!r}
        git_version = "0" * 40
        """
    )
    init_lines = [
        "from torch import version as version",
        "from torch import _C as _C",
        "from torch import cuda as cuda",
        "from torch.version import __version__ as __version__",
    ]
    init_lines += [f"{key} = {value!r}" for key, value in (attrs or {}).items()]
    files = {
        "torch/__init__.py": "\n".join(init_lines) + "\n",
        "torch/version.py": version_py,
        # Like the real wheels: the CXX11 ABI from torch 2.7 on, the old ABI before.
        "torch/_C.py": f"_GLIBCXX_USE_CXX11_ABI = {cxx11_abi if cxx11_abi is not None else _abi_of(version)!r}\n",
        # No real device exists in tests; code that probes must not crash.
        "torch/cuda/__init__.py": "def is_available():\n    return False\n",
    }
    return make_wheel(dest, "torch", full_version, requires=requires, files=files)


def make_sdist(
    dest_dir: Path,
    name: str,
    version: str,
    setup_py: str,
    *,
    pyproject: str | None = None,
    files: Mapping[str, FileContent] | None = None,
    requires: Sequence[str] = (),
) -> Path:
    """Write ``<name>-<version>.tar.gz`` with PKG-INFO (``requires`` as its Requires-Dist, as
    setuptools writes install_requires there), setup.py, [pyproject.toml]."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    base = f"{_escaped(name)}-{version}"
    members: dict[str, bytes] = {
        "PKG-INFO": _metadata_text(name, version, tuple(requires), None, "tiny test sdist").encode(
            "utf-8"
        ),
        "setup.py": setup_py.encode("utf-8"),
    }
    if pyproject is not None:
        members["pyproject.toml"] = pyproject.encode("utf-8")
    for arc, content in (files or {}).items():
        members[str(PurePosixPath(arc))] = _to_bytes(content)

    path = dest_dir / f"{base}.tar.gz"
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for arc in sorted(members):
            data = members[arc]
            info = tarfile.TarInfo(f"{base}/{arc}")
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path


# Stand-in for flash-attn's compiled CUDA extension (a top-level module, as in the real
# wheel): it loads only next to the torch it was built against, failing the way a real
# .so does otherwise.
_FLASH_ATTN_EXTENSION = """\
import torch
from flash_attn._built_with import torch_cuda, torch_version

if torch.__version__.split("+")[0] != torch_version.split("+")[0]:
    raise ImportError(
        __file__ + ": undefined symbol: _ZN3c105ErrorC2ENS_14SourceLocationESs"
        " (built against torch " + torch_version + ", found " + torch.__version__ + ")"
    )
if torch_cuda is not None and torch.version.cuda is None:
    raise ImportError(
        "libc10_cuda.so: cannot open shared object file: No such file or directory"
    )
"""


def flash_attn_setup_py(version: str) -> str:
    """setup.py text reproducing flash-attn's build: it imports torch at top level.

    Under build isolation this fails with ``No module named 'torch'``. Without
    isolation it records the torch it was built against in
    ``flash_attn/_built_with.py`` (``flash_attn.torch_version``/``torch_cuda``)
    and installs a top-level ``flash_attn_2_cuda`` module that, like the real
    compiled extension, fails to import (``undefined symbol``) once torch's
    version changes, or (missing ``libc10_cuda.so``) once a CUDA build is
    replaced by a CPU one. ``import flash_attn`` itself never imports it.
    """
    return textwrap.dedent(
        f"""\
        import torch  # like flash-attn: torch is needed at build time

        from pathlib import Path
        from setuptools import setup

        here = Path(__file__).resolve().parent
        pkg = here / "flash_attn"
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text(
            "__version__ = {version!r}\\n"
            "from flash_attn._built_with import torch_version, torch_cuda\\n"
        )
        built_with = (torch.__version__, torch.version.cuda)
        (pkg / "_built_with.py").write_text(
            "torch_version = %r\\ntorch_cuda = %r\\n" % built_with
        )
        (here / "flash_attn_2_cuda.py").write_text(EXTENSION)

        setup(
            name="flash-attn",
            version={version!r},
            packages=["flash_attn"],
            py_modules=["flash_attn_2_cuda"],
            install_requires=["torch", "einops"],
        )
        """
    ).replace("EXTENSION", repr(_FLASH_ATTN_EXTENSION))


def _installed_dist_info(dist: importlib.metadata.Distribution, name: str) -> str:
    for file in dist.files or ():
        parts = PurePosixPath(str(file)).parts
        if (
            len(parts) == 2
            and parts[0].endswith(".dist-info")
            and parts[1] == "METADATA"
        ):
            return parts[0]
    raise RuntimeError(
        f"{name!r} is installed without a .dist-info directory (egg-info or no "
        "RECORD); cannot repack it as a wheel"
    )


def repack_installed(dist_name: str, dest_dir: Path) -> Path:
    """Build a wheel from ``dist_name`` as installed in the test runner's environment.

    This serves real build tools (setuptools, wheel, packaging) from the local
    index without network. Files outside site-packages (console scripts) are
    left out: pip regenerates scripts from ``entry_points.txt``.
    """
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise LookupError(
            f"{dist_name!r} is not installed in the test runner's environment; "
            "the integration tests need it (add it to the test extras)"
        ) from None
    if dist.files is None:
        raise RuntimeError(f"{dist_name!r} has no RECORD; cannot repack it as a wheel")
    dist_info = _installed_dist_info(dist, dist_name)

    direct_url = dist.read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        raise RuntimeError(
            f"{dist_name!r} is an editable install; cannot repack it as a wheel"
        )

    entries: dict[str, bytes] = {}
    for file in dist.files:
        rel = PurePosixPath(str(file))
        if rel.parts[0] == ".." or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue
        if rel.parts[0] == dist_info and rel.name in _SKIPPED_DIST_INFO:
            continue
        source = Path(str(file.locate()))
        if source.is_file():  # RECORD may list files that were deleted since
            entries[str(rel)] = source.read_bytes()

    wheel_meta = entries.get(f"{dist_info}/WHEEL", b"").decode("utf-8")
    tags = [
        line.split(":", 1)[1].strip()
        for line in wheel_meta.splitlines()
        if line.startswith("Tag:")
    ]
    if not wheel_meta:
        tags = ["py3-none-any"]
        entries[f"{dist_info}/WHEEL"] = (
            b"Wheel-Version: 1.0\nGenerator: backendpick-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        )

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = (
        dest_dir
        / f"{_escaped(dist.metadata['Name'])}-{dist.version}-{_compress_tags(tags)}.whl"
    )
    _write_wheel_zip(path, entries, dist_info)
    return path


def repack_with_deps(dist_name: str, dest_dir: Path) -> list[Path]:
    """``repack_installed`` for ``dist_name`` and its runtime dependencies, recursively.

    Needed because e.g. wheel>=0.46 requires packaging; serving wheel alone
    would make pip fail to resolve it from the local index.
    """
    # packaging is always importable here: pytest depends on it.
    from packaging.requirements import Requirement

    done: dict[str, Path] = {}
    pending = [dist_name]
    while pending:
        name = normalize_name(pending.pop())
        if name in done:
            continue
        done[name] = repack_installed(name, dest_dir)
        for req_text in importlib.metadata.requires(name) or ():
            req = Requirement(req_text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(req.name)
    return list(done.values())
