"""The target environment as a value: the interpreter we install into (``Target``: its Python,
tags, markers and what is installed) and one installed distribution (``Installed``).
``target.inspection`` reads them from the interpreter."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    requires: tuple[str, ...] = ()
    installer: str = ""
    direct_url: str | None = None
    dist_info: str | None = None  # its metadata folder (``*.dist-info``, an egg-info or egg)


@dataclass(frozen=True)
class Target:
    python: Path
    prefix: Path
    version: tuple[int, int, int]
    markers: dict
    tags: tuple[str, ...]
    pip_version: str | None
    purelib: Path
    installed: dict = field(default_factory=dict)  # normalized name -> Installed
    is_venv: bool = False
    # Text of a few package files read without importing them ("torch/version.py", ...).
    files: dict = field(default_factory=dict)
    # The target's sys.path, its site dirs and what their .pth files added: ``rescan`` reads
    # the same folders again in this process.
    path: tuple[str, ...] = ()
    site_dirs: tuple[str, ...] = ()
    pth_paths: tuple[str, ...] = ()

    @property
    def python_tag(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    @property
    def python_version_text(self) -> str:
        return ".".join(str(p) for p in self.version)

    def get(self, name: str) -> Installed | None:
        from backendpick.model.names import normalize

        return self.installed.get(normalize(name))
