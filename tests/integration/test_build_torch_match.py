"""Builds that always match the torch they sit on (issue 8).

A flash-attn build loads only next to the torch it was compiled against (version, CUDA or ROCm,
C++ ABI). These tests run backendpick against the session world with:

* ``bm-pypi``: the world's pypi index with a flash-attn 2.7.4 sdist whose build records the
  torch it saw (``torch.__version__``, ``torch.version.cuda`` and the C++ ABI) in the package,
  and whose stand-in extension fails with ``undefined symbol`` next to another torch;
* a project whose prebuilt source is a local folder (never the network);
* the ``cuda124-devel`` machine (fake nvcc 12.4, c++ and ninja; no GPU), explicit backends;
* a wheel cache per test.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dists import make_sdist, make_torch, make_wheel
from tests.support.lab import Lab, make_machine, ok, py
from tests.support.venvs import write_pip_conf

pytestmark = pytest.mark.integration

VERSION = "2.7.4"
PY = f"cp{sys.version_info[0]}{sys.version_info[1]}"
PLATFORM = f"linux_{platform.machine()}"
PYPI = "bm-pypi"

_SETUP_PY = textwrap.dedent(
    f"""\
    import torch
    from pathlib import Path
    from setuptools import setup

    here = Path(__file__).resolve().parent
    pkg = here / "flash_attn"
    pkg.mkdir(exist_ok=True)
    seen = (torch.__version__, torch.version.cuda, bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    (pkg / "__init__.py").write_text(
        "__version__ = {VERSION!r}\\nprebuilt = False\\n"
        "torch_version, torch_cuda, cxx11abi = %r\\n" % (seen,)
    )
    (here / "flash_attn_2_cuda.py").write_text(
        "import torch, flash_attn\\n"
        "if (torch.__version__, bool(torch._C._GLIBCXX_USE_CXX11_ABI)) != "
        "(flash_attn.torch_version, flash_attn.cxx11abi):\\n"
        "    raise ImportError('undefined symbol: _ZN3c105ErrorC2E (built against torch '"
        " + flash_attn.torch_version + ')')\\n"
    )
    setup(name="flash-attn", version={VERSION!r}, packages=["flash_attn"],
          py_modules=["flash_attn_2_cuda"], install_requires=["torch", "einops"])
    """
)


def _private_pypi(lab: Lab) -> None:
    """``bm-pypi``: the world's pypi with the recording flash-attn sdist in place of its own."""
    server = lab.server
    directory = server.root / PYPI
    if directory.is_dir():
        return
    staging = server.root / f".{PYPI}.tmp"  # dot names are never served
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for f in server.index_dir("pypi").iterdir():
        if f.is_file() and not f.name.startswith("flash_attn"):
            shutil.copy2(f, staging / f.name)
    make_sdist(staging, "flash-attn", VERSION, _SETUP_PY)
    staging.rename(directory)


def _prebuilt(folder: Path, torch_mm: str, abi: bool) -> Path:
    """A release asset as flash-attn publishes it. Its stand-in extension loads next to any
    torch, as a real one may until it crashes: only the install record can tell."""
    return make_wheel(folder, "flash-attn", f"{VERSION}+cu12torch{torch_mm}cxx11abi{'TRUE' if abi else 'FALSE'}",
                      tag=f"{PY}-{PY}-{PLATFORM}", requires=["torch", "einops"],
                      files={"flash_attn/__init__.py": f"__version__ = {VERSION!r}\nprebuilt = True\n",
                             "flash_attn_2_cuda.py": "import torch\n"})


@dataclass
class Bench:
    lab: Lab
    base: Path
    project: Path
    prebuilt: Path  # the project's prebuilt source: a local folder
    pip_conf: Path
    cache: Path
    machine: str = "cuda124-devel"

    def env(self, **extra: str) -> dict[str, str]:
        return self.lab.env(self.machine, self.pip_conf, BACKENDPICK_CACHE_DIR=str(self.cache), **extra)

    def install(self, venv: Path, *args: str, env: dict | None = None):
        return self.lab.run("install", "--python", py(venv), "--project", str(self.project), *args,
                            env=env or self.env())

    def verify(self, venv: Path, *args: str):
        return self.lab.run("verify", "--python", py(venv), "--project", str(self.project), *args, env=self.env())

    def built_with(self, venv: Path) -> dict:
        return json.loads(self.lab.python(venv, (
            "import json, flash_attn as f; print(json.dumps({'prebuilt': f.prebuilt, "
            "'torch': getattr(f, 'torch_version', None), 'cuda': getattr(f, 'torch_cuda', None), "
            "'abi': getattr(f, 'cxx11abi', None)}))")))

    def extension_loads(self, venv: Path) -> None:
        self.lab.python(venv, "import flash_attn_2_cuda")

    def records(self, venv: Path) -> dict:
        return json.loads((venv / ".backendpick" / "builds.json").read_text())["packages"]

    def cache_keys(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.cache.glob("*/*/*/key.json"))]


@pytest.fixture
def bench(lab: Lab, tmp_path: Path) -> Bench:
    _private_pypi(lab)
    project = tmp_path / "project"
    project.mkdir()
    prebuilt = tmp_path / "releases"
    prebuilt.mkdir()
    (project / "pyproject.toml").write_text(f"[tool.backendpick.prebuilt]\nflash-attn = [{json.dumps(str(prebuilt))}]\n")
    conf = write_pip_conf(tmp_path / "pip.conf", index_url=lab.world.url(PYPI))
    return Bench(lab, tmp_path, project, prebuilt, conf, tmp_path / "wheel-cache")


# -- 1: a torch change replaces every build package ------------------------------------------------


def test_a_torch_change_rebuilds_the_installed_build_packages(bench: Bench) -> None:
    venv = bench.lab.new_venv()
    ok(bench.install(venv, "--backend", "cu124", "torch==2.5.1", "flash-attn"))
    assert bench.built_with(venv)["torch"] == "2.5.1+cu124"

    # Another torch version on the same backend: flash-attn is removed and built again.
    res = ok(bench.install(venv, "-v", "--backend", "cu124", "torch==2.6.0", "flash-attn"))
    assert res.phases_run[0] == "remove" and "flash-attn" in res.commands[0], res
    changed = res.stdout.splitlines()
    assert "- torch 2.5.1+cu124" in changed and "+ torch 2.6.0+cu124" in changed, res
    assert any(line.startswith("~ flash-attn ") and "2.6.0+cu124" in line for line in changed), res
    assert bench.built_with(venv)["torch"] == "2.6.0+cu124", res
    bench.extension_loads(venv)

    # A backend switch that does not even name flash-attn replaces it too.
    res = ok(bench.install(venv, "--backend", "cu126", "torch==2.6.0"))
    assert bench.built_with(venv)["torch"] == "2.6.0+cu126", res
    bench.extension_loads(venv)
    assert bench.records(venv)["flash-attn"]["torch"] == "2.6.0+cu126"
    ok(bench.verify(venv))


# -- 2: pip's own wheel cache never hands back an old build ----------------------------------------


def test_pips_wheel_cache_does_not_poison_a_build_for_another_torch(bench: Bench) -> None:
    env = bench.env(PIP_CACHE_DIR=str(bench.base / "pip-cache"))
    env.pop("PIP_NO_CACHE_DIR", None)  # pip's cache on, as a user has it
    first = bench.lab.new_venv()
    ok(bench.install(first, "--backend", "cu124", "torch==2.5.1", "flash-attn", env=env))
    assert bench.built_with(first)["torch"] == "2.5.1+cu124"

    second = bench.lab.new_venv()
    res = ok(bench.install(second, "--backend", "cu124", "torch==2.6.0", "flash-attn", env=env))
    assert "Using cached flash_attn" not in res.output, res
    assert bench.built_with(second)["torch"] == "2.6.0+cu124", res
    bench.extension_loads(second)
    # The wheel cache holds each build under its own torch, proven by what the build saw.
    keys = {json.loads(p.read_text())["torch"]: p for p in bench.cache.glob("*/*/*/key.json")}
    assert set(keys) == {"2.5.1+cu124", "2.6.0+cu124"}
    for torch, key_file in keys.items():
        key = json.loads(key_file.read_text())
        assert key["built_with"] == {"torch": torch, "backend": "cuda12.4", "cxx11abi": False}
        with zipfile.ZipFile(key_file.parent / key["wheel"]) as zf:
            assert f"'{torch}'" in zf.read("flash_attn/__init__.py").decode()


# -- 3: the C++ ABI is read from the installed torch, not only predicted -----------------------------


def _abi_index(lab: Lab) -> str:
    """Backend indexes ``bm-abi-<backend>`` whose torch 2.5.1+cu124 uses the CXX11 ABI, which the
    release table does not predict (a wrong row, or a custom build mirrored by a company)."""
    directory = lab.server.root / "bm-abi-cu124"
    if not directory.is_dir():
        staging = lab.server.root / ".bm-abi-cu124.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for f in lab.server.index_dir("cu124").iterdir():
            if f.name.startswith(("filelock", "typing_extensions")):
                shutil.copy2(f, staging / f.name)
        make_torch(staging, "2.5.1", "cu124", cxx11_abi=True)
        staging.rename(directory)
    return lab.server.base_url + "/bm-abi-{backend}/simple"


def test_the_abi_of_the_installed_torch_chooses_the_prebuilt_wheel(bench: Bench) -> None:
    template = _abi_index(bench.lab)
    _prebuilt(bench.prebuilt, "2.5", abi=True)  # only the ABI the installed torch really has
    venv = bench.lab.new_venv()
    res = ok(bench.install(venv, "--backend", "cu124", "torch==2.5.1", "flash-attn",
                           env=bench.env(BACKENDPICK_INDEX_URL=template)))
    assert "not 2.5.1+cu124 (CUDA 12.4, C++11 ABI off) as predicted; choosing the build phase's wheels again" \
        in res.output, res
    assert bench.built_with(venv)["prebuilt"] is True, res
    record = bench.records(venv)["flash-attn"]
    assert (record["how"], record["cxx11abi"], record["torch"]) == ("prebuilt", True, "2.5.1+cu124")


def test_a_source_build_is_cached_under_the_abi_it_was_built_with(bench: Bench) -> None:
    env = bench.env(BACKENDPICK_INDEX_URL=_abi_index(bench.lab))
    first = bench.lab.new_venv()
    ok(bench.install(first, "--backend", "cu124", "torch==2.5.1", "flash-attn", env=env))
    assert bench.built_with(first)["abi"] is True
    [key] = bench.cache_keys()
    assert key["cxx11abi"] is True and key["built_with"]["cxx11abi"] is True

    second = bench.lab.new_venv()  # the next environment finds its own build
    res = ok(bench.install(second, "--backend", "cu124", "torch==2.5.1", "flash-attn", env=env))
    assert "built before for torch 2.5.1+cu124 (wheel cache" in res.output, res
    assert "building flash-attn" not in res.output, res
    assert len(bench.cache_keys()) == 1


# -- 4: verify compares the record with the installed torch --------------------------------------------


def test_verify_names_a_prebuilt_wheel_left_next_to_another_torch(bench: Bench) -> None:
    _prebuilt(bench.prebuilt, "2.5", abi=False)
    venv = bench.lab.new_venv()
    ok(bench.install(venv, "--backend", "cu124", "torch==2.5.1", "flash-attn"))
    record = bench.records(venv)["flash-attn"]
    assert (record["how"], record["torch"], record["cuda"], record["cxx11abi"]) == ("prebuilt", "2.5.1+cu124", "12.4", False)
    ok(bench.verify(venv))

    # torch replaced behind backendpick's back: the installed metadata cannot tell, the record can.
    # (The environment's pins stop a plain pip from doing it; PIP_CONSTRAINT overrides them.)
    pip = bench.lab.pip(venv, "install", "--index-url", bench.lab.world.url("cu124"), "torch==2.6.0",
                        env={**bench.env(), "PIP_CONSTRAINT": "/dev/null"})
    assert pip.returncode == 0, pip.stderr
    res = ok(bench.verify(venv, "--json"), 1)
    [problem] = [p for p in res.json()["problems"] if p["package"] == "flash-attn"]
    assert "downloaded prebuilt for torch 2.5.1+cu124" in problem["message"], res
    assert "version 2.6.0+cu124" in problem["message"], res
    assert "--reinstall flash-attn flash-attn" in problem["fix"]


def test_verify_warns_about_a_build_package_installed_by_plain_pip(bench: Bench) -> None:
    venv = bench.lab.new_venv()
    env = bench.env()
    for args in (("--index-url", bench.lab.world.url("cu124"), "torch==2.5.1"),
                 ("setuptools", "wheel"), ("--no-build-isolation", "flash-attn")):
        pip = bench.lab.pip(venv, "install", *args, env=env)
        assert pip.returncode == 0, pip.stdout + pip.stderr
    res = ok(bench.verify(venv))
    assert "warning: flash-attn: flash-attn 2.7.4 has no record of the torch it was built for" in res.stdout, res
    assert "--reinstall flash-attn flash-attn" in res.stdout, res
    [warning] = ok(bench.verify(venv, "--json")).json()["warnings"]
    assert warning["package"] == "flash-attn"


# -- 5: a build that cannot succeed stops before the environment changes -----------------------------


def test_a_wrong_nvcc_stops_the_install_before_torch_is_installed(bench: Bench) -> None:
    lab = bench.lab
    if "cuda118-devel" not in lab.machines:
        lab.machines["cuda118-devel"] = make_machine(lab.base / "bm-machines", "cuda118-devel", nvcc="11.8",
                                                     env={"CUDA_VERSION": "11.8.0"})
    bench.machine = "cuda118-devel"
    venv = lab.new_venv()
    before = lab.versions(venv)
    res = ok(bench.install(venv, "--backend", "cu124", "torch==2.5.1", "flash-attn"), 1)
    assert res.phases_run == [], res
    assert lab.versions(venv) == before  # torch was never installed
    assert "error: cannot build flash-attn 2.7.4 from source: nvcc at " in res.stderr, res
    assert "is CUDA 11.8, but torch 2.5.1+cu124 was built with CUDA 12.4" in res.stderr, res
    assert "hint: install the CUDA 12.4 toolkit" in res.stderr, res
    assert "nothing was installed or removed" in res.stderr, res
