"""End to end: ``backendpick plan`` and ``install`` with real pip against the fake world.

Every backendpick process runs hermetically (``Lab.env``): the world's environment
(``World.env``: no PIP_* of this machine, the simulated user pip.conf with a hostile
extra index), fake hardware (``BACKENDPICK_PROBE_ROOT`` and a PATH with a fake
``nvidia-smi``), and the world's local indexes as the backend index template.

The module-scoped ``cu124_stack`` fixture does the expensive work once (a dry run, the
first install, a re-run) and several tests read its results.

This module also holds the shared harness (``Lab``, ``shared_lab``) that
``test_install_safety.py`` and ``tests/cli/test_plan_cli.py`` import, so the three files
build one world per session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.dists import make_wheel
from tests.support.index import IndexServer
from tests.support.venvs import installed_versions, venv_python
from tests.support.world import (
    FLASH_ATTN_VERSION,
    PYPI_PLAIN,
    TORCHVISION_FOR_TORCH,
    XFORMERS_FOR_TORCH,
    World,
    build_world,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# backendpick from this checkout. World.env sets PYTHONDONTWRITEBYTECODE (for pip's children);
# backendpick's own modules may keep their bytecode, as an installed copy would.
_LAUNCH = (
    "import sys; sys.dont_write_bytecode = False; sys.path.insert(0, {root!r}); "
    "from backendpick.cli import main; main()"
)
TIMEOUT = 300

# Backend packages of the world (the default backend-packages list has more names).
FAMILY = ("torch", "torchvision", "torchaudio", "xformers", "triton", "pytorch-triton")


# -- the harness ----------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Result:
    """One finished backendpick process."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def commands(self) -> list[str]:
        """Commands install's plain progress says it ran: its ``  $ <command>`` lines
        (``#`` lines are notes, not commands)."""
        lines = self.stdout.splitlines()
        return [line[4:] for line in lines if line.startswith("  $ ") and not line[4:].startswith("#")]

    @property
    def dry_run_commands(self) -> list[str]:
        """What ``install --dry-run`` printed: one command per line, ``#`` lines are notes."""
        return [line.strip() for line in self.stdout.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    @property
    def phases_run(self) -> list[str]:
        """Names of the phases install reported as done, in order."""
        return [
            line.split(":", 1)[0][len("phase ") :]
            for line in self.stdout.splitlines()
            if line.startswith("phase ") and ": done in " in line
        ]

    def json(self) -> dict:
        return json.loads(self.stdout)

    def __repr__(self) -> str:  # shown by failed asserts
        return (
            f"backendpick {' '.join(self.args)} -> exit {self.returncode} in {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


@dataclass(frozen=True)
class Machine:
    """Fake hardware: a probe root, a PATH directory, and extra variables (CUDA_VERSION)."""

    name: str
    root: Path
    bin: Path
    env: dict = field(default_factory=dict)


_PROBE_TOOLS = ("nvidia-smi", "rocminfo", "rocm_agent_enumerator")


def _script(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


def make_machine(
    base: Path,
    name: str,
    *,
    driver: str | None = None,
    gpus: tuple[tuple[str, str], ...] = (),
    cuda: str | None = None,
    nvcc: str | None = None,
    env: dict | None = None,
) -> Machine:
    """A fake machine: ``driver`` in /sys/module/nvidia/version, ``gpus`` as (name, compute
    capability) rows of a fake ``nvidia-smi``. ``cuda`` is the CUDA version its banner shows;
    ``nvcc`` puts a CUDA compiler of that version (with a C++ compiler and ninja) on PATH."""
    root, bindir = base / name / "root", base / name / "bin"
    root.mkdir(parents=True)
    bindir.mkdir(parents=True)
    if driver:
        sysdir = root / "sys" / "module" / "nvidia"
        sysdir.mkdir(parents=True)
        (sysdir / "version").write_text(driver + "\n")
    if gpus:
        rows = "".join(
            f"{i}, {gpu}, {driver}, {cap}, GPU-{i:08d}-0000-0000-0000-000000000000, 81920\n"
            for i, (gpu, cap) in enumerate(gpus)
        )
        banner = f"| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda or '12.4'}     |\n"
        (base / name / "query.csv").write_text(rows)
        (base / name / "banner.txt").write_text(banner)
        _script(
            bindir / "nvidia-smi",
            "#!/bin/sh\n"
            f'case "$*" in\n  *--query-gpu*) exec cat "{base / name / "query.csv"}" ;;\n'
            f'  *) exec cat "{base / name / "banner.txt"}" ;;\nesac\n',
        )
    if nvcc:
        # A CUDA devel image: flash-attn's source build finds its toolchain (the world's
        # flash-attn compiles nothing, so fakes do).
        _script(bindir / "nvcc", "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                f"echo 'Cuda compilation tools, release {nvcc}, V{nvcc}.131'\n")
        for tool in ("c++", "ninja"):
            if not shutil.which(tool, path="/usr/bin:/bin"):
                _script(bindir / tool, f"#!/bin/sh\necho 'fake {tool} 1.0'\n")
    # A real tool on this host (a GPU CI runner) must not answer for the fake machine.
    for tool in _PROBE_TOOLS:
        if not (bindir / tool).exists() and shutil.which(tool, path="/usr/bin:/bin"):
            _script(bindir / tool, f"#!/bin/sh\necho '{tool}: no device (fake machine {name})' >&2\nexit 9\n")
    return Machine(name, root, bindir, dict(env or {}))


# Plain packages the scenarios need on the user's default index (added to the world's pypi).
EXTRA_PYPI = {
    # An ordinary package that pulls a backend package in: the fence must move torchvision
    # into the backend phase instead of letting the rest phase take it from PyPI/hostile.
    "vision-helper": ("1.0", ["torchvision"]),
    # An ordinary package that pulls a no-build-isolation package in: flash-attn must still be
    # built in the build phase, against the backend's torch.
    "attn-helper": ("1.0", ["flash-attn"]),
    # An ordinary package that wants another torch: nothing in the rest phase may replace it.
    "wants-newer-torch": ("1.0", ["torch>=2.7"]),
}


def _add_pypi_extras(server: IndexServer) -> None:
    directory = server.index_dir("pypi")
    for name, (version, requires) in EXTRA_PYPI.items():
        if not list(directory.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
            make_wheel(directory, name, version, requires=requires, attrs={"__index__": "pypi"})


class Lab:
    """The world, fake machines, and a hermetic way to run backendpick and pip."""

    def __init__(self, world: World, base: Path):
        self.world = world
        self.server = world.server
        self.base = base
        self.template = world.server.base_url + "/{backend}/simple"
        self.empty_project = base / "empty-project"
        self.empty_project.mkdir()
        self.home = base / "home"
        self.home.mkdir()
        self.cache = base / "cache"
        self.xdg_config_dirs = base / "xdg-config-dirs"  # empty: no /etc/xdg/pip/pip.conf
        self.xdg_config_dirs.mkdir()
        machines = base / "machines"
        a100 = (("NVIDIA A100-SXM4-80GB", "8.0"),)
        self.machines = {
            m.name: m
            for m in (
                make_machine(machines, "none"),
                make_machine(machines, "nvidia-560-a100", driver="560.35.03", gpus=a100, cuda="12.6"),
                make_machine(machines, "nvidia-550-a100", driver="550.127.05", gpus=a100, cuda="12.4"),
                make_machine(
                    machines, "nvidia-570-rtx5090", driver="570.133.20",
                    gpus=(("NVIDIA GeForce RTX 5090", "12.0"),), cuda="12.8",
                ),
                make_machine(
                    machines, "nvidia-570-v100", driver="570.133.20",
                    gpus=(("Tesla V100-SXM2-32GB", "7.0"),), cuda="12.8",
                ),
                make_machine(
                    machines, "nvidia-575-v100-rtx5090", driver="575.51.03",
                    gpus=(("Tesla V100-SXM2-32GB", "7.0"), ("NVIDIA GeForce RTX 5090", "12.0")), cuda="12.9",
                ),
                make_machine(machines, "container-cuda126", env={"CUDA_VERSION": "12.6.3"}),
                # docker build FROM nvidia/cuda:12.4.1-devel: no GPU, but a CUDA toolchain.
                make_machine(machines, "cuda124-devel", nvcc="12.4", env={"CUDA_VERSION": "12.4.1"}),
            )
        }
        _add_pypi_extras(self.server)
        self._venvs = 0

    # -- environments -----------------------------------------------------------------------

    def env(self, machine: str = "none", pip_conf: Path | None = None, **extra: str) -> dict[str, str]:
        """World.env plus fake hardware; the runner's own BACKENDPICK_*/CUDA_VERSION dropped."""
        m = self.machines[machine]
        env = self.world.env(pip_conf)
        for key in list(env):
            if key.startswith("BACKENDPICK_") or key in ("CUDA_VERSION", "XDG_CONFIG_HOME"):
                del env[key]
        env.update(
            BACKENDPICK_PROBE_ROOT=str(m.root),
            PATH=f"{m.bin}:/usr/bin:/bin",
            BACKENDPICK_INDEX_URL=self.template,
            HOME=str(self.home),
            XDG_CACHE_HOME=str(self.cache),
            XDG_CONFIG_DIRS=str(self.xdg_config_dirs),
            NO_COLOR="1",
            TERM="dumb",
        )
        env.update(m.env)
        env.update(extra)
        return env

    def run(
        self,
        *args: str,
        machine: str = "none",
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
        **extra: str,
    ) -> Result:
        """Run ``backendpick *args`` (this checkout) as its own process."""
        if "install" in args and "--dry-run" not in args:
            # Never the runner's interpreter: install targets --python or VIRTUAL_ENV only.
            full = env if env is not None else self.env(machine, **extra)
            assert "--python" in args or "VIRTUAL_ENV" in full, "install without a target venv"
        argv = [sys.executable, "-c", _LAUNCH.format(root=str(ROOT)), *args]
        started = time.perf_counter()
        proc = subprocess.run(
            argv,
            env=env if env is not None else self.env(machine, **extra),
            cwd=str(cwd or self.empty_project),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(tuple(args), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)

    def pip(self, venv: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv_python(venv)), "-m", "pip", *args],
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def python(self, venv: Path, code: str) -> str:
        proc = subprocess.run(
            [str(venv_python(venv)), "-c", code], env=self.env(), capture_output=True, text=True, timeout=TIMEOUT
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def versions(self, venv: Path) -> dict[str, str]:
        return installed_versions(venv, self.env())

    def new_venv(self) -> Path:
        self._venvs += 1
        return self.world.new_venv(self.base / "venvs" / f"v{self._venvs}")


def shared_world(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> World:
    """One world for all three backendpick test files (cached on the pytest config)."""
    world = getattr(config, "_backendpick_plan_world", None)
    if world is None:
        world = build_world(tmp_path_factory.mktemp("plan-world"))
        config._backendpick_plan_world = world  # type: ignore[attr-defined]
        config.add_cleanup(world.close)
    return world


def shared_lab(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    lab = getattr(config, "_backendpick_plan_lab", None)
    if lab is None:
        lab = Lab(shared_world(config, tmp_path_factory), tmp_path_factory.mktemp("plan-lab"))
        config._backendpick_plan_lab = lab  # type: ignore[attr-defined]
    return lab


def ok(res: Result, code: int = 0) -> Result:
    """``res`` exited with ``code``; otherwise fail showing its whole output (asserts truncate)."""
    if res.returncode != code:
        pytest.fail(f"expected exit {code}\n{res!r}", pytrace=False)
    return res


def py(venv: Path) -> str:
    return str(venv_python(venv))


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    """Overrides the conftest world so the three backendpick files share one."""
    return shared_world(request.config, tmp_path_factory)


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return shared_lab(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def untouched(lab: Lab) -> Path:
    """A fresh venv that tests only plan for (or dry-run into): nothing installs into it."""
    return lab.new_venv()


STACK = ("torch==2.5.1", "torchvision", "xformers", "flash-attn", "tqdm")
BUILD_HOST = "cuda124-devel"


@dataclass
class StackRun:
    venv: Path
    dry: Result
    first: Result
    first_log: list
    versions: dict
    rerun: Result
    rerun_log: list
    logs_after_first: list
    logs_after_rerun: list


@pytest.fixture(scope="module")
def cu124_stack(lab: Lab) -> Iterator[StackRun]:
    """Dry run, first install, re-run of the whole cu124 stack in one fresh venv."""
    venv = lab.new_venv()
    args = ("--python", py(venv), "--backend", "cu124", *STACK)
    dry = lab.run("install", "--dry-run", *args, machine=BUILD_HOST)
    ok(dry)
    lab.server.clear_log()
    first = lab.run("install", *args, machine=BUILD_HOST)
    ok(first)
    first_log = lab.server.log
    versions = lab.versions(venv)
    logs_dir = venv / ".backendpick" / "logs"
    logs_after_first = sorted(p.name for p in logs_dir.iterdir())
    lab.server.clear_log()
    rerun = lab.run("install", *args, machine=BUILD_HOST)
    rerun_log = lab.server.log
    logs_after_rerun = sorted(p.name for p in logs_dir.iterdir())
    yield StackRun(venv, dry, first, first_log, versions, rerun, rerun_log, logs_after_first, logs_after_rerun)


# -- 1. explicit backend: the whole stack on cu124 --------------------------------------------------


def test_explicit_cu124_installs_every_member_from_cu124(cu124_stack: StackRun) -> None:
    v = cu124_stack.versions
    assert v["torch"] == "2.5.1+cu124"
    assert v["torchvision"] == f"{TORCHVISION_FOR_TORCH['2.5.1']}+cu124"
    assert v["xformers"] == XFORMERS_FOR_TORCH["2.5.1"]  # the build pinned to torch 2.5.1
    assert v["flash-attn"] == FLASH_ATTN_VERSION
    assert v["tqdm"] == PYPI_PLAIN["tqdm"]
    assert cu124_stack.first.phases_run == ["backend", "build-requirements", "build", "rest"]
    # Plain lines for logs: no colour, no spinner control codes when stdout is not a terminal.
    assert "\x1b" not in cu124_stack.first.output and "\r" not in cu124_stack.first.output


def test_explicit_cu124_members_really_come_from_the_cu124_index(lab: Lab, cu124_stack: StackRun) -> None:
    files = {r.name: r.index for r in cu124_stack.first_log if r.kind == "file" and r.status == 200}
    for name, index in files.items():
        if name.split("-", 1)[0] in ("torch", "torchvision", "xformers"):
            assert index == "cu124", (name, index)
    assert files[f"tqdm-{PYPI_PLAIN['tqdm']}-py3-none-any.whl"] == "pypi"
    # The xformers package on disk is cu124's copy (the world tags each copy with its index).
    assert lab.python(cu124_stack.venv, "import xformers, torch, torchvision; "
                      "print(xformers.__index__, torch.__index__, torchvision.__index__)") == "cu124 cu124 cu124"


def test_explicit_cu124_hostile_index_never_asked_for_backend_packages(cu124_stack: StackRun) -> None:
    log = cu124_stack.first_log
    hostile_pages = [r.name for r in log if r.index == "hostile" and r.kind == "project"]
    assert not set(hostile_pages) & set(FAMILY), hostile_pages
    assert not [r for r in log if r.index == "hostile" and r.kind == "file"]
    pypi_pages = [r.name for r in log if r.index == "pypi" and r.kind == "project"]
    assert not set(pypi_pages) & set(FAMILY), pypi_pages
    # The ordinary packages still follow the user's pip configuration, extra index included.
    assert "tqdm" in pypi_pages and "tqdm" in hostile_pages


def test_flash_attn_is_built_against_the_installed_torch(lab: Lab, cu124_stack: StackRun) -> None:
    built = lab.python(cu124_stack.venv, "import flash_attn; print(flash_attn.torch_version, flash_attn.torch_cuda)")
    assert built == "2.5.1+cu124 12.4"
    # ... with --no-build-isolation, after the build requirements, pinned by constraints.
    lines = cu124_stack.first.stdout.splitlines()
    block = lines[lines.index("phase build: flash-attn") + 1 :]
    block = block[: next(i for i, line in enumerate(block) if line.startswith("phase build: done"))]
    pip_lines = [line for line in block if " -m pip " in line]
    assert pip_lines and all("--no-build-isolation" in line.split() and "-c" in line.split() for line in pip_lines)
    order = cu124_stack.first.phases_run
    assert order.index("build-requirements") < order.index("build") and order.index("backend") < order.index("build")


# -- 4. a re-run on the finished environment ------------------------------------------------------


def test_rerun_on_finished_env_runs_no_pip(cu124_stack: StackRun) -> None:
    rerun = cu124_stack.rerun
    ok(rerun)
    assert "nothing to do" in rerun.stdout
    assert rerun.commands == [] and rerun.phases_run == []
    # No pip ran: no new phase log, no file or page fetched by pip (only backendpick's own look
    # at the torch pages of the backend index may remain).
    assert cu124_stack.logs_after_rerun == cu124_stack.logs_after_first
    assert not [r for r in cu124_stack.rerun_log if r.kind == "file"]
    assert not [r for r in cu124_stack.rerun_log if r.index in ("pypi", "hostile")]
    print(f"first install {cu124_stack.first.seconds:.2f}s, re-run {cu124_stack.rerun.seconds:.2f}s")


def test_plan_on_finished_env_marks_every_phase_skipped(lab: Lab, cu124_stack: StackRun) -> None:
    res = lab.run("plan", "--json", "--python", py(cu124_stack.venv), "--backend", "cu124", *STACK, machine=BUILD_HOST)
    ok(res)
    phases = res.json()["phases"]
    assert [p["name"] for p in phases] == ["backend", "build-requirements", "build", "rest"]
    assert all(p["skip"] for p in phases), phases
    dry = lab.run("install", "--dry-run", "--python", py(cu124_stack.venv), "--backend", "cu124", *STACK,
                  machine=BUILD_HOST)
    assert dry.returncode == 0 and dry.stdout.strip() == "", dry


def test_plan_with_one_new_requirement_runs_only_the_rest_phase(lab: Lab, cu124_stack: StackRun) -> None:
    res = lab.run("plan", "--json", "--python", py(cu124_stack.venv), "--backend", "cu124", *STACK, "numpy",
                  machine=BUILD_HOST)
    ok(res)
    active = [p["name"] for p in res.json()["phases"] if not p["skip"]]
    assert active == ["rest"]
    rest = res.json()["phases"][-1]
    assert "numpy" in rest["requirements"]
    # The rest phase pins the stack that is installed (with its local tags).
    assert "torch==2.5.1+cu124" in rest["constraints"]


# -- 5. the dry run prints exactly what install runs ----------------------------------------------


def test_dry_run_prints_exactly_the_commands_install_runs(cu124_stack: StackRun) -> None:
    assert cu124_stack.dry.dry_run_commands == cu124_stack.first.commands


def test_dry_run_matches_install_outside_the_build_phase(cu124_stack: StackRun) -> None:
    dry, ran = cu124_stack.dry.dry_run_commands, cu124_stack.first.commands
    assert dry[:2] == ran[:2]  # backend, build-requirements
    assert dry[-1] == ran[-1]  # rest
    assert len(dry) >= 4 and "--index-url" in dry[0]


def test_dry_run_changes_nothing(lab: Lab, untouched: Path) -> None:
    venv = untouched
    before = lab.versions(venv)
    lab.server.clear_log()
    res = lab.run("install", "--dry-run", "--python", py(venv), "--backend", "cu124", *STACK, machine=BUILD_HOST)
    ok(res)
    assert lab.versions(venv) == before
    assert not [r for r in lab.server.log if r.kind == "file"]
    assert not (venv / ".backendpick").exists()  # no lock, snapshot, constraints or log either


# -- 2. auto never downgrades an installed GPU build ----------------------------------------------


def test_auto_without_gpu_keeps_the_installed_cu124(lab: Lab, cu124_stack: StackRun) -> None:
    res = lab.run("plan", "--json", "--python", py(cu124_stack.venv), *STACK, machine="none")
    ok(res)
    plan = res.json()
    assert plan["backend"] == "cu124"
    assert plan["decided_by"] == "installed"
    assert "--backend cpu" in plan["reason"]
    assert not [p for p in plan["phases"] if not p["skip"]], plan["phases"]


# -- 6. an ordinary package that depends on a backend package -------------------------------------


def test_transitive_backend_package_comes_from_the_backend_index(lab: Lab) -> None:
    venv = lab.new_venv()
    lab.server.clear_log()
    res = lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "vision-helper")
    ok(res)
    versions = lab.versions(venv)
    assert versions["torchvision"] == f"{TORCHVISION_FOR_TORCH['2.5.1']}+cu124"
    assert versions["torch"] == "2.5.1+cu124"
    assert versions["vision-helper"] == "1.0"
    # The fence stopped the rest phase, torchvision moved into the backend phase, rest re-ran.
    assert "torchvision" in res.stdout.split("running again")[0].splitlines()[-1]
    assert res.phases_run == ["backend", "backend", "rest"]
    backend_cmds = [c for c in res.commands if "--index-url" in c]
    assert "torchvision" in backend_cmds[-1].split()
    torchvision_files = [r.index for r in lab.server.log if r.kind == "file" and r.name.startswith("torchvision-")]
    assert torchvision_files and set(torchvision_files) == {"cu124"}
    # Done is done: the re-run finds nothing to do.
    again = ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "vision-helper"))
    assert "nothing to do" in again.stdout and again.commands == []
    # (pip still reads torchvision's page on the user's indexes while the fence rejects every
    # version there; no file of theirs is ever taken.)
    assert not [r for r in lab.server.log if r.kind == "file" and r.index in ("pypi", "hostile")
                and not r.name.startswith("vision_helper-")]


def test_transitive_no_build_isolation_package_is_built_in_the_build_phase(lab: Lab) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "attn-helper",
                     machine=BUILD_HOST))
    assert "flash-attn" in res.stdout.split("running again")[0].splitlines()[-1]
    assert res.phases_run[-3:] == ["build-requirements", "build", "rest"]
    versions = lab.versions(venv)
    assert versions["attn-helper"] == "1.0" and versions["flash-attn"] == FLASH_ATTN_VERSION
    assert versions["torch"] == "2.5.1+cu124"
    built = lab.python(venv, "import flash_attn; print(flash_attn.torch_version)")
    assert built == "2.5.1+cu124"


# -- 7. switching backend -------------------------------------------------------------------------


def test_switching_cpu_env_to_cu124_removes_then_reinstalls_everything(lab: Lab) -> None:
    venv = lab.new_venv()
    setup = lab.pip(
        venv, "install", "--index-url", lab.world.url("cpu"), "torch==2.5.1", "torchvision==0.20.1",
        env=lab.env(PIP_CONFIG_FILE=os.devnull),
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert lab.versions(venv)["torch"] == "2.5.1+cpu"

    plan = lab.run("plan", "--json", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "torchvision")
    ok(plan)
    phases = plan.json()["phases"]
    assert [p["name"] for p in phases] == ["remove", "backend"]
    assert set(phases[0]["requirements"]) == {"torch", "torchvision"}

    res = lab.run("install", "-v", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "torchvision")
    ok(res)
    assert res.phases_run == ["remove", "backend"]
    assert res.commands == [p["command"] for p in phases]
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cu124"
    assert versions["torchvision"] == "0.20.1+cu124"
    assert not [n for n, v in versions.items() if v.endswith("+cpu")]
    # -v streams pip's own output.
    streamed = [line[4:].strip() for line in res.stdout.splitlines() if line.startswith("  | ")]
    assert "Successfully uninstalled torch-2.5.1+cpu" in streamed
    assert "Successfully installed torch-2.5.1+cu124 torchvision-0.20.1+cu124" in streamed


# -- 3. requirements from pyproject.toml and from requirements files ------------------------------


PYPROJECT = """\
[project]
name = "demo"
version = "0.1"
dependencies = ["torch==2.5.1", "tqdm"]

[project.optional-dependencies]
vision = ["torchvision"]
unused = ["requests-lite"]

[dependency-groups]
dev = ["numpy", {include-group = "lint"}]
lint = ["einops"]
never = ["psutil"]

[tool.backendpick]
backend = "cpu"
"""


def test_pyproject_dependencies_with_extra_and_group(lab: Lab, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    venv = lab.new_venv()
    args = ("--python", py(venv), "--project", str(project), "--extra", "vision", "--group", "dev")
    dry = ok(lab.run("install", "--dry-run", *args))
    res = ok(lab.run("install", *args))
    # 5. without a build phase, the dry run is exactly what install ran
    assert dry.dry_run_commands == res.commands and len(res.commands) == 2
    assert "pyproject.toml" in res.stdout  # who decided the backend
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu"
    assert versions["torchvision"] == "0.20.1+cpu"
    for name in ("tqdm", "numpy", "einops"):
        assert versions[name] == PYPI_PLAIN[name]
    assert "requests-lite" not in versions and "psutil" not in versions


def test_pyproject_in_the_working_directory_is_the_default(lab: Lab, untouched: Path, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    venv = untouched
    res = lab.run("plan", "--json", "--python", py(venv), "--group", "lint", cwd=tmp_path)
    ok(res)
    plan = res.json()
    assert plan["backend"] == "cpu"
    reqs = [r for p in plan["phases"] for r in p["requirements"]]
    assert set(reqs) == {"torch==2.5.1", "tqdm", "einops"}


def test_requirements_file_with_comments_continuations_and_nested_files(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("# shared\nnumpy  # numerics\n")
    (tmp_path / "requirements.txt").write_text(
        "# the stack\n"
        "torch==2.5.1 \\\n"
        "    ; python_version >= '3.9'\n"
        "\n"
        "-r base.txt\n"
        "tqdm\t# progress bars\n"
        "torchvision  # from the backend index\n"
    )
    venv = lab.new_venv()
    res = ok(lab.run("install", "--json", "--python", py(venv), "--backend", "cpu",
                     "-r", str(tmp_path / "requirements.txt")))
    # --json: stdout is one document (progress goes to stderr)
    report = res.json()
    assert [r["name"] for r in report["ran"]] == ["backend", "rest"]
    assert "phase backend:" in res.stderr
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu"
    assert versions["torchvision"] == "0.20.1+cpu"
    assert versions["numpy"] == PYPI_PLAIN["numpy"]
    assert versions["tqdm"] == PYPI_PLAIN["tqdm"]
    backend, rest = report["phases"]
    assert backend["requirements"] == ["torch==2.5.1; python_version >= \"3.9\"", "torchvision"]
    assert rest["requirements"] == ["numpy", "tqdm"]


