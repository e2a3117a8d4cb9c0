"""Stand-ins for the places torch is already installed before backendpick (issue 18): a torch
no index serves, installed by plain pip from a file, as the images and source builds leave it.

* ``ngc``: NVIDIA's NGC PyTorch image (nvcr.io/nvidia/pytorch:24.06-py3, the setting of
  uv#7015): torch ``2.4.0a0+f70bd71a48.nv24.6`` built with CUDA 12.5 and the C++11 ABI, and
  NVIDIA's torchvision, on no index, installed from wheel files the image no longer holds;
  ``PIP_CONSTRAINT`` naming a file that pins them and other packages (the image sets it);
  ``NVIDIA_PYTORCH_VERSION`` and ``CUDA_VERSION`` set; an H100 on a 555 driver with the CUDA
  12.5 toolkit (``nvcc``) the image carries.
* ``source_built``: ``2.7.0a0+git1a2b3c4`` (CUDA 12.8), what ``python setup.py bdist_wheel``
  of a PyTorch checkout produces, installed from its wheel.
* ``conda_torch``: a torch whose ``INSTALLER`` says ``conda``.
* ``system_site_venv``: a venv made with ``--system-site-packages`` over a base Python whose
  site-packages hold torch: the venv sees torch, pip cannot remove it from there.

Each returns a ``Stand`` (the venv and the environment of a backendpick run in it), built on
the session ``Lab``; the wheels live in one folder per lab, made once.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.dists import make_torch, make_wheel
from tests.support.lab import Lab, make_machine
from tests.support.venvs import clone_venv, venv_python

NGC_TORCH = "2.4.0a0+f70bd71a48.nv24.6"
NGC_TORCHVISION = "0.19.0a0+nv24.6"
NGC_RELEASE = "24.06"  # NVIDIA_PYTORCH_VERSION
NGC_CUDA = "12.5.0.23"  # CUDA_VERSION of the 24.06 image
SOURCE_TORCH = "2.7.0a0+git1a2b3c4"
CONDA_TORCH = "2.5.1"  # conda's builds carry no local tag; torch/version.py says CUDA 12.4

NGC_MACHINE = "ngc-h100-555"  # Lab.machines key
SOURCE_MACHINE = "src-rtx5090-570"


@dataclass(frozen=True)
class Stand:
    """An environment with a torch backendpick did not install."""

    venv: Path
    machine: str  # the Lab.machines key to run backendpick on
    extra: dict  # variables of the image (PIP_CONSTRAINT, ...), for ``Lab.run(**extra)``
    torch: str  # the installed torch's version
    constraint: Path | None = None

    @property
    def python(self) -> str:
        return str(venv_python(self.venv))


def _wheels(lab: Lab) -> Path:
    """The stand-ins' wheels, made once per lab (on no index: installed from files)."""
    folder = lab.base / "foreign-wheels"
    if not folder.is_dir():
        staging = lab.base / ".foreign-wheels"
        staging.mkdir()
        version, tag = NGC_TORCH.split("+")
        make_torch(staging, version, "cu125", local_tag=tag, cxx11_abi=True)
        make_wheel(staging, "torchvision", NGC_TORCHVISION, requires=["torch"])
        version, tag = SOURCE_TORCH.split("+")
        make_torch(staging, version, "cu128", local_tag=tag, cxx11_abi=True)
        make_torch(staging, CONDA_TORCH, "cu124", local_tag=False)
        world = lab.server.index_dir("pypi")
        for dep in ("filelock", "typing_extensions"):
            for f in world.glob(f"{dep}-*.whl"):
                (staging / f.name).write_bytes(f.read_bytes())
        staging.rename(folder)
    return folder


def _machines(lab: Lab) -> None:
    if NGC_MACHINE in lab.machines:
        return
    base = lab.base / "machines"
    lab.machines[NGC_MACHINE] = make_machine(
        base, NGC_MACHINE, driver="555.42.06", gpus=(("NVIDIA H100 80GB HBM3", "9.0"),), cuda="12.5", nvcc="12.5",
        env={"NVIDIA_PYTORCH_VERSION": NGC_RELEASE, "CUDA_VERSION": NGC_CUDA})
    lab.machines[SOURCE_MACHINE] = make_machine(
        base, SOURCE_MACHINE, driver="570.133.20", gpus=(("NVIDIA GeForce RTX 5090", "12.0"),), cuda="12.8",
        nvcc="12.8")


def _pip_files(lab: Lab, python: Path | str, *names: str, extra: tuple = (), gone: bool = False) -> None:
    """Plain ``pip install`` of wheel files from the stand-ins' folder (no index at all).
    ``gone``: installed from copies removed afterwards, as an image's build stage leaves them
    (its direct_url.json names a file that is not there: nothing but a kept copy brings it back)."""
    folder = _wheels(lab)
    files = [next(folder.glob(n)) for n in names]
    build = Path(tempfile.mkdtemp(prefix="image-build-", dir=lab.base)) if gone else None
    if build is not None:
        files = [Path(shutil.copy(f, build)) for f in files]
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--find-links", str(folder), *extra,
                           *map(str, files)], env=lab.env(), capture_output=True, text=True, timeout=180)
    if build is not None:
        shutil.rmtree(build)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wheel_glob(version: str, name: str = "torch") -> str:
    return f"{name}-{version}-*.whl"


def ngc(lab: Lab) -> Stand:
    """A fresh venv standing for the NGC 24.06 image (see the module doc)."""
    _machines(lab)
    venv = lab.new_venv()
    _pip_files(lab, venv_python(venv), _wheel_glob(NGC_TORCH), _wheel_glob(NGC_TORCHVISION, "torchvision"), gone=True)
    # The image's /etc/pip/constraint.txt: NVIDIA's own builds and versions, torchaudio among them
    # although the image does not ship it (a line for a package nobody asked for).
    constraint = venv.parent / "pip-constraint.txt"
    constraint.write_text(f"torch=={NGC_TORCH}\ntorchvision=={NGC_TORCHVISION}\ntorchaudio==2.4.0a0+nv24.6\n"
                          "numpy==1.26.4\npsutil==6.1.0\n", encoding="utf-8")
    return Stand(venv, NGC_MACHINE, {"PIP_CONSTRAINT": str(constraint)}, NGC_TORCH, constraint)


def source_built(lab: Lab) -> Stand:
    """A venv whose torch was built from a PyPI checkout (CUDA 12.8) and installed from its wheel."""
    _machines(lab)
    venv = lab.new_venv()
    _pip_files(lab, venv_python(venv), _wheel_glob(SOURCE_TORCH))
    return Stand(venv, SOURCE_MACHINE, {}, SOURCE_TORCH)


def conda_torch(lab: Lab) -> Stand:
    """A venv whose torch conda installed: ``INSTALLER`` says ``conda`` (CUDA 12.4)."""
    venv = lab.new_venv()
    _pip_files(lab, venv_python(venv), _wheel_glob(CONDA_TORCH))
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    installer = next(site.glob(f"torch-{CONDA_TORCH}.dist-info")) / "INSTALLER"
    installer.write_text("conda\n", encoding="utf-8")
    return Stand(venv, "nvidia-550-a100", {}, CONDA_TORCH)


def system_site_venv(lab: Lab, name: str = "base") -> Stand:
    """A venv made with ``--system-site-packages`` over a base Python that holds torch
    2.5.1+cu124 (from the cu124 index) in its own site-packages.

    The base is a prefix of links to this interpreter's standard library with a site-packages
    folder of its own (Python finds a venv's base prefix from the ``home`` of its pyvenv.cfg),
    so the test never writes into the real interpreter."""
    parent = lab.base / "system-site"
    parent.mkdir(exist_ok=True)
    root = parent / f"{name}-{len(list(parent.iterdir()))}"
    stdlib = Path(sysconfig.get_path("stdlib"))
    base_lib = root / "base" / stdlib.relative_to(sysconfig.get_config_var("installed_base") or stdlib.parents[1])
    base_lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages"):
            (base_lib / entry.name).symlink_to(entry)
    (root / "base" / "bin").mkdir()
    venv = clone_venv(lab.world.template_venv, root / "venv")
    cfg = venv / "pyvenv.cfg"
    lines = [ln for ln in cfg.read_text(encoding="utf-8").splitlines()
             if not ln.startswith(("home", "include-system-site-packages"))]
    cfg.write_text("\n".join([f"home = {root / 'base' / 'bin'}", "include-system-site-packages = true", *lines]) + "\n",
                   encoding="utf-8")
    # The base's site-packages as the venv's interpreter computes it.
    proc = subprocess.run([str(venv_python(venv)), "-I", "-c", "import site; print('\\n'.join(site.getsitepackages()))"],
                          env=lab.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    base_site = next(Path(p) for p in proc.stdout.splitlines() if Path(p).is_relative_to(root / "base"))
    base_site.mkdir(parents=True, exist_ok=True)
    folder = lab.server.index_dir("cu124")
    pip = subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                          str(base_site), str(next(folder.glob("torch-2.5.1+cu124-*.whl"))),
                          *map(str, folder.glob("filelock-*.whl")), *map(str, folder.glob("typing_extensions-*.whl"))],
                         env=lab.env(), capture_output=True, text=True, timeout=180)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return Stand(venv, "nvidia-550-a100", {}, "2.5.1+cu124")
