"""The fake package world the integration tests run against.

Indexes (all on one local server):

* ``cpu``, ``cu124``, ``cu126``, ``cu128``: like download.pytorch.org/whl/<backend>:
  local-tagged torch/torchvision, untagged xformers (CUDA indexes only),
  plus filelock and typing-extensions that torch requires.
* ``pypi``: the user's default index: ordinary packages, the flash-attn sdist
  whose setup.py imports torch, real repacked setuptools/wheel/packaging and a
  PyPI-style untagged CUDA torch 2.7.1.
* ``hostile``: torch 99.0.0+cpu and torchvision 99.0.0, configured as the
  user's extra-index-url; it must never win for backend packages.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .dists import (
    flash_attn_setup_py,
    make_sdist,
    make_torch,
    make_wheel,
    repack_with_deps,
)
from .hermetic import subprocess_env
from .index import IndexServer
from .venvs import (
    clone_venv,
    fingerprint,
    make_template_venv,
    template_changes,
    venv_python,
    write_pip_conf,
)

BACKENDS = ("cpu", "cu124", "cu126", "cu128")
TORCH_BY_BACKEND: dict[str, tuple[str, ...]] = {
    "cpu": ("2.5.1", "2.6.0", "2.7.1"),
    "cu124": ("2.5.1", "2.6.0"),
    "cu126": ("2.6.0", "2.7.1"),
    "cu128": ("2.7.1",),
}
TORCHVISION_FOR_TORCH = {"2.5.1": "0.20.1", "2.6.0": "0.21.0", "2.7.1": "0.22.1"}
XFORMERS_FOR_TORCH = {
    "2.5.1": "0.0.28.post3",
    "2.6.0": "0.0.29.post2",
    "2.7.1": "0.0.31",
}
FILELOCK_VERSION = "3.16.1"
TYPING_EXTENSIONS_VERSION = "4.12.2"
PYPI_TORCH_VERSION = "2.7.1"  # PyPI's torch: untagged, built for CUDA 12.6
PYPI_TORCH_BACKEND = "cu126"
FLASH_ATTN_VERSION = "2.7.4"
HOSTILE_TORCH_VERSION = "99.0.0+cpu"
HOSTILE_TORCHVISION_VERSION = "99.0.0"
# Plain packages on the pypi index: name -> version.
PYPI_PLAIN = {
    "requests-lite": "1.0",
    "tqdm": "4.66.0",
    "numpy": "1.26.4",
    "psutil": "6.1.0",
    "ninja": "1.11.1.3",
    "einops": "0.8.0",
}


@dataclass
class World:
    server: IndexServer
    root: Path
    pip_conf: Path  # the simulated user config: index-url=pypi, extra-index-url=hostile
    template_venv: Path
    timings: dict[str, float] = field(default_factory=dict)  # seconds per build step
    # The template's files as built: clones share them as hard links (venvs.clone_venv).
    template_files: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Templates that hold more than pip (``prepare``): key -> (venv, its files as made).
    prepared: dict[Hashable, tuple[Path, dict[str, tuple[int, int]]]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        """Simple-API URL of index ``name``."""
        return self.server.url(name)

    def env(self, pip_conf: Path | None = None, /, **extra: str) -> dict[str, str]:
        """The test environment (``subprocess_env``) with ``pip_conf`` (default: the simulated
        user config) and no hardware."""
        return subprocess_env(self.pip_conf if pip_conf is None else pip_conf, extra=extra)

    def new_venv(self, tmp_path: Path) -> Path:
        """A fresh clone of the template venv under ``tmp_path``."""
        dest = Path(tmp_path) / "venv"
        counter = 1
        while dest.exists():
            counter += 1
            dest = Path(tmp_path) / f"venv-{counter}"
        return clone_venv(self.template_venv, dest)

    @staticmethod
    def python(venv: Path) -> Path:
        return venv_python(venv)

    def is_fresh_clone(self, venv: Path) -> bool:
        """Whether ``venv`` holds the template's files and no others: nothing was installed into
        it or removed since it was cloned."""
        venv = Path(venv)
        return (venv / "pyvenv.cfg").is_file() and fingerprint(venv).keys() == self.template_files.keys()

    def prepare(self, venv: Path, key: Hashable, setup: Callable[[Path], None]) -> None:
        """Make the fresh clone ``venv`` hold what ``setup(venv)`` would install, without running
        it each time: the first time for ``key`` it runs into a template of its own, then ``venv``
        becomes a clone of that template (the same files, from the same pip and the same wheels)."""
        if key not in self.prepared:
            template = clone_venv(self.template_venv, self.root / "prepared" / f"venv-{len(self.prepared)}")
            setup(template)
            self.prepared[key] = (template, fingerprint(template))
        shutil.rmtree(venv)
        clone_venv(self.prepared[key][0], venv)

    def template_changes(self) -> list[str]:
        """Files of the templates (the template venv and the ``prepare`` ones) changed since they
        were made: written into through a clone's hard link."""
        changed = template_changes(self.template_venv, self.template_files)
        for template, files in self.prepared.values():
            changed += [str(template / name) for name in template_changes(template, files)]
        return changed

    def close(self) -> None:
        self.server.close()


def _populate_backend(server: IndexServer, backend: str) -> None:
    directory = server.index_dir(backend)
    attrs = {"__index__": backend}
    make_wheel(directory, "filelock", FILELOCK_VERSION, attrs=attrs)
    make_wheel(directory, "typing-extensions", TYPING_EXTENSIONS_VERSION, attrs=attrs)
    for torch_version in TORCH_BY_BACKEND[backend]:
        make_torch(directory, torch_version, backend, attrs=attrs)
        make_wheel(
            directory,
            "torchvision",
            f"{TORCHVISION_FOR_TORCH[torch_version]}+{backend}",
            requires=[f"torch=={torch_version}"],
            attrs=attrs,
        )
        if backend.startswith("cu"):
            # Real PyTorch indexes host xformers per CUDA backend, without local tags.
            make_wheel(
                directory,
                "xformers",
                XFORMERS_FOR_TORCH[torch_version],
                requires=[f"torch=={torch_version}"],
                attrs=attrs,
            )


def _populate_pypi(server: IndexServer) -> None:
    directory = server.index_dir("pypi")
    attrs = {"__index__": "pypi"}
    for name, version in PYPI_PLAIN.items():
        make_wheel(directory, name, version, attrs=attrs)
    make_wheel(directory, "filelock", FILELOCK_VERSION, attrs=attrs)
    make_wheel(directory, "typing-extensions", TYPING_EXTENSIONS_VERSION, attrs=attrs)
    make_torch(
        directory, PYPI_TORCH_VERSION, PYPI_TORCH_BACKEND, local_tag=False, attrs=attrs
    )
    make_wheel(
        directory,
        "xformers",
        XFORMERS_FOR_TORCH[PYPI_TORCH_VERSION],
        requires=[f"torch=={PYPI_TORCH_VERSION}"],
        attrs=attrs,
    )
    make_sdist(
        directory,
        "flash-attn",
        FLASH_ATTN_VERSION,
        flash_attn_setup_py(FLASH_ATTN_VERSION),
    )
    # Real build tools, so isolated and non-isolated builds can really run.
    for tool in ("setuptools", "wheel", "packaging"):
        repack_with_deps(tool, directory)


def _populate_hostile(server: IndexServer) -> None:
    directory = server.index_dir("hostile")
    attrs = {"__index__": "hostile"}
    version, backend = HOSTILE_TORCH_VERSION.split("+")
    make_torch(directory, version, backend, requires=(), attrs=attrs)
    make_wheel(directory, "torchvision", HOSTILE_TORCHVISION_VERSION, attrs=attrs)


def build_world(root: Path, *, python: str | Path = sys.executable) -> World:
    """Generate the indexes under ``root``, serve them, create the template venv."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The venv is subprocess-bound; generate distributions meanwhile.
        venv_future = pool.submit(make_template_venv, root / "template-venv", python)
        server = IndexServer(root / "indexes")
        try:
            for backend in BACKENDS:
                _populate_backend(server, backend)
            _populate_pypi(server)
            _populate_hostile(server)
            timings["distributions"] = time.perf_counter() - start
            template = venv_future.result()
        except BaseException:
            server.close()
            raise
    timings["total"] = time.perf_counter() - start
    pip_conf = write_pip_conf(
        root / "user-pip.conf",
        index_url=server.url("pypi"),
        extra_index_urls=[server.url("hostile")],
    )
    return World(
        server=server,
        root=root,
        pip_conf=pip_conf,
        template_venv=template,
        timings=timings,
        template_files=fingerprint(template),
    )
