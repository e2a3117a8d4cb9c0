"""Issue 22 item 3: with ``--installer uv`` no pip process runs at all, in a venv that uv made
(no pip in it), with the same torch choice and the same "who pinned torch" as pip's, and a
flash-attn built from its sdist (``uv build`` without isolation, its build tools put into the
build folder by uv) against the torch the backend phase installed.

Every way a pip could start is a recorder that fails: ``pip``/``pip3`` on PATH, and a ``pip``
package first on PYTHONPATH that answers ``python -m pip`` (backendpick's own interpreter has a
real pip, which ``--python`` would otherwise reach). The recorder's log must stay empty.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.dists import make_wheel
from tests.support.engines import has_uv
from tests.support.hermetic import subprocess_env
from tests.support.lab import Lab, make_machine, ok, py
from tests.support.world import FLASH_ATTN_VERSION

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not has_uv(), reason="uv is not installed (pip install uv)")]

V100 = "nvidia-570-v100"  # driver 570: cu124 is the newest backend offering torch 2.5.1
V100_DEVEL = "uvonly-570-v100-devel"  # the same machine with a CUDA 12.4 toolchain: flash-attn builds
PINNING = {"uvonly-pins-torch": ("1.0", ["torch==2.5.1"]), "uvonly-needs-pinner": ("1.0", ["uvonly-pins-torch"])}

_RECORD = "import os, sys\nwith open(os.environ['PIP_CALLS'], 'a') as f:\n    f.write(repr(sys.argv) + '\\n')\n"
# ``python -m pip``: while the module is located, sys.argv[0] is "-m"; a plain ``import pip``
# (the target inspection asks for pip's version) finds no pip, as in a venv uv made.
_PACKAGE = ("import sys\nif sys.argv[:1] == ['-m']:\n" + "".join(f"    {ln}\n" for ln in _RECORD.splitlines())
            + "    sys.exit(1)\nraise ImportError('no pip here')\n")


def _pip_recorders(base: Path) -> tuple[Path, Path, Path]:
    """(a folder for PATH, a folder for PYTHONPATH, the log they append to)."""
    bin_dir, lib = base / "bin", base / "lib" / "pip"
    bin_dir.mkdir(parents=True)
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(_PACKAGE)
    for name in ("pip", "pip3"):
        script = bin_dir / name
        script.write_text("#!/bin/sh\necho \"$0 $*\" >> \"$PIP_CALLS\"\nexit 1\n")
        script.chmod(0o755)
    return bin_dir, lib.parent, base / "pip-calls.log"


def _uv_venv(lab: Lab, dest: Path) -> Path:
    import sys

    from uv import find_uv_bin

    subprocess.run([find_uv_bin(), "venv", "--no-config", "--python", sys.executable, str(dest)],
                   env=subprocess_env(), check=True, capture_output=True, timeout=120)
    assert not list(dest.glob("lib/python*/site-packages/pip")), "uv venv made a venv with pip"
    return dest


def test_uv_installer_runs_no_pip_in_a_venv_uv_made(lab: Lab, tmp_path: Path) -> None:
    directory = lab.server.index_dir("pypi")
    for name, (version, requires) in PINNING.items():
        if not list(directory.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
            make_wheel(directory, name, version, requires=requires, attrs={"__index__": "pypi"})
    venv = _uv_venv(lab, tmp_path / "venv")
    bin_dir, lib, log = _pip_recorders(tmp_path / "recorders")
    if V100_DEVEL not in lab.machines:
        lab.machines[V100_DEVEL] = make_machine(lab.base / "machines", V100_DEVEL, driver="570.133.20",
                                                gpus=(("Tesla V100-SXM2-32GB", "7.0"),), cuda="12.8", nvcc="12.4")
    # A wheel cache of its own: flash-attn is built here, not found built by another test.
    env = lab.env(V100_DEVEL, PIP_CALLS=str(log), PYTHONPATH=str(lib), BACKENDPICK_INSTALLER="uv",
                  BACKENDPICK_CACHE_DIR=str(tmp_path / "wheels"))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"

    # The torch comes from the whole request, resolved by uv: the pin sits one level down.
    res = ok(lab.run("install", "--json", "--python", py(venv), "uvonly-needs-pinner", "flash-attn", env=env)).json()
    assert res["torch"]["version"] == "2.5.1+cu124", res
    assert [p["text"] for p in res["torch"]["pins"]] == ["uvonly-pins-torch 1.0 requires torch==2.5.1"]
    assert res["resolution"]["source"] == "resolution"
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cu124" and versions["uvonly-needs-pinner"] == "1.0"
    assert "pip" not in versions
    # flash-attn from its sdist, by uv build, against the installed torch: its extension loads
    # next to it; the build tools stayed in the build folder, the wheel went to the cache.
    [build] = [b for r in res["ran"] if r["name"] == "build" for b in r["builds"]]
    assert build["how"] == "source" and build["build_argv"][1:3] == ["build", "--no-config"], build
    assert versions["flash-attn"] == FLASH_ATTN_VERSION
    assert lab.python(venv, "import flash_attn_2_cuda, flash_attn._built_with as b; print(b.torch_version)") \
        .strip() == "2.5.1+cu124"
    assert not {"setuptools", "wheel", "packaging", "ninja"} & set(versions), versions
    assert (venv / ".backendpick" / "build-env" / "setuptools").is_dir()
    assert list((tmp_path / "wheels").glob("*/*/*/key.json"))

    ok(lab.run("verify", "--python", py(venv), env=env))
    snapshots = ok(lab.run("restore", "--list", "--json", "--python", py(venv), env=env)).json()
    first = snapshots["snapshots"][-1]["id"]
    ok(lab.run("restore", first, "--python", py(venv), env=env))
    assert "torch" not in lab.versions(venv)
    assert not log.exists(), log.read_text()
