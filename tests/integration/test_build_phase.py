"""The build phase end to end: prebuilt wheels first, guarded source builds, the wheel cache.

Each test runs ``python -m backendpick install`` against the session world with:

* a private copy of the world's pypi index (``bp-build``) whose flash-attn 2.7.4 sdist builds
  in a second, like the world's, and also records the build variables it saw (MAX_JOBS, the
  architecture lists, FLASH_ATTENTION_FORCE_BUILD), so the limits are visible in the result;
* a private index directory per test standing for the project's GitHub releases;
* a fake machine (one A100, probe root with 16 GB of free memory, fake ``nvcc``, ``c++`` and
  ``ninja`` on its PATH), so no test depends on this host's toolchain or GPUs;
* its own wheel cache folder (``BACKENDPICK_CACHE_DIR``).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dists import make_sdist, make_wheel
from tests.support.engines import ENGINES, has_uv
from tests.support.fakehw import FakeMachine
from tests.support.hermetic import subprocess_env
from tests.support.index import IndexServer
from tests.support.lab import Result, launch
from tests.support.venvs import installed_versions, venv_python, write_pip_conf
from tests.support.world import World

pytestmark = pytest.mark.integration

TIMEOUT = 240
VERSION = "2.7.4"
PY = f"cp{sys.version_info[0]}{sys.version_info[1]}"
# What flash-attn 2.7.4's setup.py asks GitHub for under torch 2.5.1+cu124 (C++11 ABI on).
PREBUILT = f"flash_attn-{VERSION}+cu12torch2.5cxx11abiFALSE-{PY}-{PY}-linux_{platform.machine()}.whl"
SDIST = f"flash_attn-{VERSION}.tar.gz"
BUILD_VARS = ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST", "FLASH_ATTN_CUDA_ARCHS", "FLASH_ATTENTION_FORCE_BUILD")
A100 = "0, NVIDIA A100-SXM4-80GB, 550.54.14, 8.0, GPU-00000000-0000-0000-0000-000000000000, 81920\n"


def _flash_attn_setup_py() -> str:
    """Like the world's flash-attn sdist (imports torch, records it, ships flash_attn_2_cuda),
    plus the build variables it was built with."""
    return textwrap.dedent(
        f"""\
        import os
        import torch

        from pathlib import Path
        from setuptools import setup

        here = Path(__file__).resolve().parent
        pkg = here / "flash_attn"
        pkg.mkdir(exist_ok=True)
        seen = {{k: os.environ.get(k) for k in {BUILD_VARS!r}}}
        (pkg / "__init__.py").write_text(
            "__version__ = {VERSION!r}\\nprebuilt = False\\n"
            "torch_version = %r\\nbuild_env = %r\\n" % (torch.__version__, seen)
        )
        (here / "flash_attn_2_cuda.py").write_text("def fwd(*a, **kw):\\n    return None\\n")
        setup(name="flash-attn", version={VERSION!r}, packages=["flash_attn"],
              py_modules=["flash_attn_2_cuda"], install_requires=["torch", "einops"])
        """
    )


def _private_pypi(server: IndexServer) -> None:
    """``bp-build``: the world's pypi index with our flash-attn sdist in place of its own."""
    directory = server.root / "bp-build"
    if directory.is_dir():
        return
    staging = server.root / ".bp-build.tmp"  # dot names are never served
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for f in server.index_dir("pypi").iterdir():
        if f.is_file() and not f.name.startswith("flash_attn"):
            shutil.copy2(f, staging / f.name)
    make_sdist(staging, "flash-attn", VERSION, _flash_attn_setup_py(), requires=["torch", "einops"])
    staging.rename(directory)


def _prebuilt_wheel(server: IndexServer, releases: str) -> Path:
    """The release asset, as the project publishes it (a wheel that needs no build)."""
    return make_wheel(
        server.index_dir(releases), "flash-attn", f"{VERSION}+cu12torch2.5cxx11abiFALSE",
        tag=f"{PY}-{PY}-linux_{platform.machine()}", requires=["torch", "einops"],
        files={"flash_attn/__init__.py": f"__version__ = {VERSION!r}\nprebuilt = True\n",
               "flash_attn_2_cuda.py": "def fwd(*a, **kw):\n    return None\n"},
    )


@dataclass
class Scene:
    world: World
    base: Path
    machine: FakeMachine  # with fake c++, ninja and (unless removed) nvcc
    cache: Path
    project: Path
    pip_conf: Path
    releases: str  # this test's index directory standing for the project's GitHub releases

    @property
    def releases_template(self) -> str:
        return self.world.server.base_url + f"/{self.releases}/files/{{filename}}"

    def env(self) -> dict[str, str]:
        return subprocess_env(self.pip_conf, machine=self.machine, extra={
            "BACKENDPICK_INDEX_URL": self.world.url("cpu").replace("/cpu/", "/{backend}/"),
            "BACKENDPICK_CACHE_DIR": str(self.cache),
        })

    def backendpick(self, *args: str) -> Result:
        return launch(*args, env=self.env(), cwd=self.base, timeout=TIMEOUT)

    def no_nvcc(self) -> None:
        (self.machine.bin / "nvcc").unlink()

    def install(self, venv: Path, *extra: str) -> Result:
        return self.backendpick("install", "--python", str(venv_python(venv)), "--backend", "cu124",
                                "torch==2.5.1", "flash-attn", "--project", str(self.project), *extra)

    def prebuilt_sources(self, *sources: str) -> None:
        listed = ", ".join(json.dumps(s) for s in sources)
        (self.project / "pyproject.toml").write_text(f"[tool.backendpick.prebuilt]\nflash-attn = [{listed}]\n")

    def flash_attn(self, venv: Path) -> dict:
        code = ("import flash_attn, json; print(json.dumps({'prebuilt': flash_attn.prebuilt, "
                "'env': getattr(flash_attn, 'build_env', None), 'torch': getattr(flash_attn, 'torch_version', None)}))")
        proc = subprocess.run([str(venv_python(venv)), "-c", code], env=subprocess_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def cache_entries(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.cache.glob("*/*/*/key.json"))]


@pytest.fixture
def scene(world: World, server: IndexServer, tmp_path: Path) -> Scene:
    _private_pypi(server)
    machine = FakeMachine(tmp_path)
    machine.driver("550.54.14").nvidia_smi(query=A100)
    machine.meminfo(65536000, 16777216)  # 16 GB free
    machine.nvcc("12.4").tool("c++", "exit 0\n").tool("ninja", "echo 1.11.1\n")
    project = tmp_path / "project"
    project.mkdir()
    conf = write_pip_conf(tmp_path / "pip.conf", index_url=world.url("bp-build"))
    return Scene(world, tmp_path, machine, tmp_path / "wheel-cache", project, conf, f"bp-rel-{tmp_path.name}")


def _output(proc: Result | subprocess.CompletedProcess[str]) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.mark.parametrize("engine", ENGINES)
def test_prebuilt_wheel_is_installed_without_any_build(scene: Scene, server: IndexServer, engine: str) -> None:
    _prebuilt_wheel(server, scene.releases)
    scene.no_nvcc()  # nothing is compiled, so no toolkit is needed
    empty = scene.base / "offline-wheels"
    empty.mkdir()
    # A folder without the file first, then the mirror: the order of the list is the order tried.
    scene.prebuilt_sources(str(empty), scene.releases_template)
    venv = scene.world.new_venv(scene.base)

    proc = scene.install(venv, "--installer", engine)
    assert proc.returncode == 0, _output(proc)
    assert f"prebuilt wheel {PREBUILT}" in proc.stdout + proc.stderr, _output(proc)
    assert scene.flash_attn(venv)["prebuilt"] is True
    assert installed_versions(venv, scene.world.env())["flash-attn"] == f"{VERSION}+cu12torch2.5cxx11abiFALSE"
    assert set(server.files_downloaded(scene.releases)) == {PREBUILT}  # the existence check, then pip
    assert SDIST not in server.files_downloaded("bp-build")  # nothing built
    assert scene.cache_entries() == []


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_prebuilt_is_built_once_then_installed_from_the_cache(scene: Scene, server: IndexServer,
                                                                     engine: str) -> None:
    server.index_dir(scene.releases)
    scene.prebuilt_sources(scene.releases_template)  # holds no such file
    first = scene.world.new_venv(scene.base)

    proc = scene.install(first, "--installer", engine)
    assert proc.returncode == 0, _output(proc)
    said = proc.stdout + proc.stderr
    assert f"no prebuilt wheel {PREBUILT}" in said and "HTTP 404" in said, _output(proc)
    assert "building flash-attn 2.7.4 from source: MAX_JOBS=1" in said, _output(proc)
    built = scene.flash_attn(first)
    assert built["prebuilt"] is False and built["torch"] == "2.5.1+cu124"
    # 16 GB free at ~9 GB per job; only the A100's architecture; setup.py told not to download.
    assert built["env"] == {"MAX_JOBS": "1", "TORCH_CUDA_ARCH_LIST": "8.0", "FLASH_ATTN_CUDA_ARCHS": "80",
                            "FLASH_ATTENTION_FORCE_BUILD": "TRUE"}
    assert server.files_downloaded("bp-build").count(SDIST) == 1
    [entry] = scene.cache_entries()
    assert (entry["name"], entry["version"], entry["torch"], entry["backend"], entry["python"]) == (
        "flash-attn", VERSION, "2.5.1+cu124", "cuda12.4", PY)
    assert entry["arch"] == "FLASH_ATTN_CUDA_ARCHS=80,TORCH_CUDA_ARCH_LIST=8.0"

    # A second environment: before torch is there, the plan predicts the torch the backend
    # phase installs (2.5.1+cu124 from the index), so --dry-run already names the cached wheel.
    second = scene.world.new_venv(scene.base)
    dry = scene.install(second, "--dry-run", "--installer", engine)
    assert dry.returncode == 0, _output(dry)
    assert "# flash-attn 2.7.4: built before for torch 2.5.1+cu124 (wheel cache:" in dry.stdout, _output(dry)
    [key_file] = sorted(scene.cache.glob("*/*/*/key.json"))
    assert f"-f {key_file.parent} flash-attn==2.7.4" in dry.stdout, _output(dry)
    # With torch installed (and kept), the plan chooses now: the dry run is the exact command.
    torch = subprocess.run([str(venv_python(second)), "-m", "pip", "install", "--index-url", scene.world.url("cu124"),
                            "torch==2.5.1"], env=subprocess_env(), capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert torch.returncode == 0, torch.stderr
    dry = scene.install(second, "--dry-run", "--installer", engine)
    assert dry.returncode == 0, _output(dry)
    cached = Path(scene.cache_entries()[0]["wheel"]).name
    [install_line] = [line for line in dry.stdout.splitlines() if "--no-build-isolation" in line]
    assert f"-f {key_file.parent} flash-attn==2.7.4" in install_line, _output(dry)

    server.clear_log()
    proc = scene.install(second, "-v", "--installer", engine)  # -v: the commands it runs
    assert proc.returncode == 0, _output(proc)
    assert "built before for torch 2.5.1+cu124 (wheel cache" in proc.stdout + proc.stderr, _output(proc)
    expected = (f"{venv_python(second)} -m pip install " if engine == "pip"
                else f"/uv pip install --python {venv_python(second)} --no-config ")
    assert expected in install_line, install_line  # the engine's own command
    assert install_line in proc.stdout, _output(proc)  # the command the dry run printed
    assert "building" not in proc.stdout + proc.stderr
    assert SDIST not in server.files_downloaded("bp-build")
    assert scene.flash_attn(second)["env"]["FLASH_ATTN_CUDA_ARCHS"] == "80"  # the cached build
    assert len(scene.cache_entries()) == 1

    listed = scene.backendpick("cache", "list", "--json")
    assert listed.returncode == 0, _output(listed)
    [shown] = json.loads(listed.stdout)["entries"]
    assert (shown["name"], shown["torch"], Path(shown["wheel"]).name) == ("flash-attn", "2.5.1+cu124", cached)
    cleared = scene.backendpick("cache", "clear", "flash-attn")
    assert cleared.returncode == 0 and "removed 1 cached wheels of flash-attn" in cleared.stdout, _output(cleared)
    assert scene.cache_entries() == []


def test_missing_nvcc_fails_before_building_with_the_fix(scene: Scene, server: IndexServer) -> None:
    scene.no_nvcc()
    venv = scene.world.new_venv(scene.base)
    server.clear_log()

    proc = scene.install(venv)
    assert proc.returncode == 1, _output(proc)
    assert "error: cannot build flash-attn 2.7.4 from source: nvcc, the CUDA compiler, was not found" in proc.stderr
    assert "hint: install the CUDA 12.4 toolkit" in proc.stderr
    # The reason there was no download: the default source, GitHub, is out of reach here.
    assert f"no prebuilt wheel {PREBUILT} (github: network unreachable" in proc.stderr, _output(proc)
    assert SDIST not in server.files_downloaded("bp-build")  # pip wheel never started
    assert "flash-attn" not in installed_versions(venv, scene.world.env())


@pytest.mark.parametrize("engine", ENGINES)
def test_build_requirements_run_beside_the_backend_phase(scene: Scene, server: IndexServer, engine: str) -> None:
    """The build tools go to a folder of their own and need nothing of the stack, so their pip
    run starts with the backend phase. The server holds the installer's torch page until the
    build tools' run has asked for ninja, and ninja's page until the torch page was asked for:
    whichever run comes first waits for the other, which only runs in flight at the same time
    can answer (runs one after the other would make the first gate time out)."""
    server.index_dir(scene.releases)
    scene.prebuilt_sources(scene.releases_template)  # holds no such file: a source build
    venv = scene.world.new_venv(scene.base)
    torch_page = lambda p: p.startswith("/cu124/") and p.rstrip("/").endswith("/torch")  # noqa: E731
    ninja_page = lambda p: p.startswith("/bp-build/") and p.rstrip("/").endswith("/ninja")  # noqa: E731
    gates = [server.gate(held=torch_page, opens=ninja_page, timeout=30),
             server.gate(held=ninja_page, opens=torch_page, timeout=30)]
    try:
        proc = scene.install(venv, "--installer", engine)
    finally:
        for gate in gates:
            server.ungate(gate)
    assert proc.returncode == 0, _output(proc)
    assert not any(g.timed_out for g in gates), "the build requirements did not run beside the backend phase"
    assert sum(g.waited for g in gates) >= 1  # the first of the two runs did wait for the other
    said = proc.stdout + proc.stderr
    assert "phase build-requirements: setuptools wheel packaging psutil ninja einops\n  # runs alongside the backend phase" in said
    assert scene.flash_attn(venv)["torch"] == "2.5.1+cu124"
    state = venv / ".backendpick"
    assert {"flash-attn<0", "torch<0"} <= set((state / "build-constraints.txt").read_text().splitlines())
    assert any((state / "build-env").glob("ninja*")), "the build tools are in the build folder"
    assert "ninja" not in installed_versions(venv, scene.world.env())  # and not in the environment


def test_the_shell_export_installs_what_install_installs(scene: Scene, server: IndexServer) -> None:
    """``plan --format sh`` is install's twin (issue 20 item 6): run under ``sh`` into one venv,
    it builds flash-attn from source with the build tools in its own private folder (never in
    the venv) and the plan's limits, and stores the wheel in backendpick's wheel cache; install
    into another venv then takes that very wheel from the cache. Package for package, the two
    environments are the same, pins included, and the script leaves no file behind."""
    server.index_dir(scene.releases)
    scene.prebuilt_sources(scene.releases_template)  # holds no such file: a source build
    by_script, by_install = scene.world.new_venv(scene.base), scene.world.new_venv(scene.base)
    plan = scene.backendpick("plan", "--format", "sh", "--python", str(venv_python(by_install)), "--backend", "cu124",
                             "torch==2.5.1", "flash-attn", "tqdm", "--project", str(scene.project))
    assert plan.returncode == 0, _output(plan)
    script = scene.base / "install.sh"
    script.write_text(plan.stdout)
    tmp = scene.base / "script-tmp"
    tmp.mkdir()
    run_env = {**scene.env(), "PYTHON": str(venv_python(by_script)), "TMPDIR": str(tmp)}
    ran = subprocess.run(["sh", str(script)], env=run_env, cwd=scene.base, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert ran.returncode == 0, _output(ran)
    assert list(tmp.iterdir()) == []  # its private folder is gone: build tools, constraints, wheels
    built = scene.flash_attn(by_script)
    assert built["prebuilt"] is False and built["torch"] == "2.5.1+cu124"
    assert built["env"] == {"MAX_JOBS": "1", "TORCH_CUDA_ARCH_LIST": "8.0", "FLASH_ATTN_CUDA_ARCHS": "80",
                            "FLASH_ATTENTION_FORCE_BUILD": "TRUE"}  # the plan's limits, as install builds
    [entry] = scene.cache_entries()
    assert (entry["torch"], entry["built_with"]["torch"]) == ("2.5.1+cu124", "2.5.1+cu124")

    server.clear_log()
    proc = scene.backendpick("install", "--python", str(venv_python(by_install)), "--backend", "cu124",
                             "torch==2.5.1", "flash-attn", "tqdm", "--project", str(scene.project))
    assert proc.returncode == 0, _output(proc)
    assert "built before for torch 2.5.1+cu124 (wheel cache" in proc.stdout + proc.stderr, _output(proc)
    assert SDIST not in server.files_downloaded("bp-build")  # the script's build, from the cache
    scripted, installed = (installed_versions(v, scene.world.env()) for v in (by_script, by_install))
    assert scripted == installed
    assert {"torch", "flash-attn", "einops", "tqdm"} <= set(scripted)
    assert not {"ninja", "psutil"} & set(scripted)  # the build tools stayed apart in both
    assert scene.flash_attn(by_install) == built  # the very wheel the script built
    pins = [(v / "backendpick-pins.txt").read_text().splitlines()[-2:] for v in (by_script, by_install)]
    assert pins[0] == pins[1] and pins[0][-1] == "torch==2.5.1+cu124"


def test_a_lock_builds_flash_attn_from_its_locked_sdist_against_the_locked_torch(scene: Scene,
                                                                                 server: IndexServer) -> None:
    """issue 21: without a prebuilt wheel, the lock holds flash-attn's sdist (and its build
    requirements) with hashes; ``install --lock`` builds it without isolation against the
    locked torch, reading no index page, and gives what a plain install gives. With a prebuilt
    wheel published, the lock holds that wheel instead."""
    server.index_dir(scene.releases)
    scene.prebuilt_sources(scene.releases_template)  # holds no such file yet
    locks = scene.base / "locks"
    locks.mkdir()
    lock_venv = scene.world.new_venv(scene.base)
    args = ("--backend", "cu124", "torch==2.5.1", "flash-attn", "--python", str(venv_python(lock_venv)),
            "--project", str(scene.project))
    proc = scene.backendpick("lock", *args, "-o", str(locks))
    assert proc.returncode == 0, _output(proc)
    text = (locks / "pylock.cu124.toml").read_text()
    assert f'sdist = {{ name = "{SDIST}"' in text and '[tool.backendpick.builds.flash-attn]\nhow = "source"' in text
    assert 'setuptools = "build-requirements"' in text and 'flash-attn = "build"' in text
    assert 'einops = "rest"' in text  # a build requirement too, but the environment needs its own
    if has_uv():  # issue 22 item 3: uv resolves each phase (build requirements, einops) to the same bytes
        proc = scene.backendpick("lock", *args, "--installer", "uv", "-o", str(scene.base))
        assert proc.returncode == 0, _output(proc)
        assert (scene.base / "pylock.cu124.toml").read_text() == text

    venv = scene.world.new_venv(scene.base / "a")
    server.clear_log()
    proc = scene.backendpick("install", "--lock", str(locks / "pylock.cu124.toml"), "--python", str(venv_python(venv)))
    assert proc.returncode == 0, _output(proc)
    assert [r for r in server.log if r.kind in ("project", "root")] == []
    built = scene.flash_attn(venv)
    assert built["prebuilt"] is False and built["torch"] == "2.5.1+cu124"
    # What a plain install of the same request leaves (test_missing_prebuilt_is_built_once...):
    # the stack, flash-attn and its einops; the build tools stay in the build folder.
    versions = installed_versions(venv, scene.world.env())
    assert {n: versions.get(n) for n in ("torch", "flash-attn", "einops", "setuptools")} == {
        "torch": "2.5.1+cu124", "flash-attn": VERSION, "einops": "0.8.0", "setuptools": None}

    _prebuilt_wheel(server, scene.releases)
    proc = scene.backendpick("lock", *args, "-o", str(locks))
    assert proc.returncode == 0, _output(proc)
    text = (locks / "pylock.cu124.toml").read_text()
    assert f'name = "{PREBUILT}"' in text and 'how = "prebuilt"' in text and "setuptools" not in text
