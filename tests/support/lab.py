"""The harness: the one launcher of backendpick runs (``launch``/``spawn``; the commands that
change nothing run inside the test process, ``tests.support.inprocess``), and ``Lab``, fake
machines plus a hermetic way to run backendpick and pip against the test world.

Every environment comes from the one recipe, ``tests.support.hermetic.subprocess_env``;
``Lab.env`` adds the simulated user pip.conf (with a hostile extra index), a fake machine
(``tests.support.fakehw.FakeMachine``) and the world's local indexes as the backend index template.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import inprocess
from tests.support.dists import make_wheel
from tests.support.fakehw import FakeMachine
from tests.support.hermetic import host_bin, subprocess_env
from tests.support.index import IndexServer
from tests.support.venvs import installed_versions, venv_python
from tests.support.world import (
    World,
)

ROOT = Path(__file__).resolve().parents[2]
# backendpick from this checkout. The recipe sets PYTHONDONTWRITEBYTECODE (for pip's children);
# backendpick's own modules may keep their bytecode, as an installed copy would.
_LAUNCH = (
    "import sys; sys.dont_write_bytecode = False; sys.path.insert(0, {root!r}); "
    "from backendpick.start import main; main()"
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


def argv(*args: str | Path) -> list[str]:
    """The command line of ``backendpick *args`` run from this checkout."""
    return [sys.executable, "-c", _LAUNCH.format(root=str(ROOT)), *map(str, args)]


def launch(*args: str | Path, env: Mapping[str, str], cwd: Path, timeout: float = TIMEOUT,
           process: bool | None = None) -> Result:
    """Run ``backendpick *args`` to its end: the one launcher every test uses.

    The commands that change nothing (``plan``, ``detect``, ``verify``, ``install --dry-run``,
    ``--help``) run inside the test process, with the environment, working directory and streams
    a process of their own would have (``tests.support.inprocess``); the others run as a process
    of their own. ``process``: True for a process of its own whatever the command, False for the
    test process (an error for a command that cannot run there)."""
    words = tuple(map(str, args))
    if process is None:
        here = inprocess.enabled() and inprocess.possible(words, env)
    elif not process and not inprocess.possible(words, env):
        raise ValueError(f"backendpick {' '.join(words)} cannot run inside the test process")
    else:
        here = not process
    started = time.perf_counter()
    if here:
        code, stdout, stderr = inprocess.run(words, env=env, cwd=Path(cwd), timeout=timeout)
        return Result(words, code, stdout, stderr, time.perf_counter() - started)
    proc = subprocess.run(argv(*args), env=dict(env), cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Result(words, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)


def spawn(*args: str | Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``backendpick *args`` without waiting (stdout and stderr together, as text)."""
    return subprocess.Popen(argv(*args), env=dict(env), cwd=str(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def make_machine(
    base: Path,
    name: str,
    *,
    driver: str | None = None,
    gpus: tuple[tuple[str, str], ...] = (),
    cuda: str | None = None,
    nvcc: str | None = None,
    env: dict | None = None,
) -> FakeMachine:
    """A ``FakeMachine`` under ``base/name``: ``driver`` in /sys/module/nvidia/version, ``gpus``
    as (name, compute capability) rows of its ``nvidia-smi``, whose banner shows CUDA ``cuda``;
    ``nvcc`` puts a CUDA compiler of that version on its PATH (a -devel image: the test
    environment points CUDA_HOME at it), with fakes for a C++ compiler and ninja the host lacks
    (the world's flash-attn compiles nothing)."""
    machine = FakeMachine(base / name)
    if driver:
        machine.sys_driver(driver + "\n")
    if gpus:
        rows = "".join(
            f"{i}, {gpu}, {driver}, {cap}, GPU-{i:08d}-0000-0000-0000-000000000000, 81920\n"
            for i, (gpu, cap) in enumerate(gpus)
        )
        banner = f"| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda or '12.4'}     |\n"
        machine.nvidia_smi(query=rows, banner=banner)
    if nvcc:
        machine.nvcc(nvcc)
        for tool in ("c++", "ninja"):
            if not shutil.which(tool, path=str(host_bin())):
                machine.tool(tool, f"echo 'fake {tool} 1.0'\n")
    return machine.set_env(env or {})


def lab_machines(base: Path) -> dict[str, FakeMachine]:
    """The machines of ``Lab.machines``, by name."""
    a100 = (("NVIDIA A100-SXM4-80GB", "8.0"),)
    return {
        m.name: m
        for m in (
            make_machine(base, "none"),
            make_machine(base, "nvidia-560-a100", driver="560.35.03", gpus=a100, cuda="12.6"),
            make_machine(base, "nvidia-550-a100", driver="550.127.05", gpus=a100, cuda="12.4"),
            make_machine(base, "nvidia-570-rtx5090", driver="570.133.20",
                         gpus=(("NVIDIA GeForce RTX 5090", "12.0"),), cuda="12.8"),
            make_machine(base, "nvidia-570-v100", driver="570.133.20",
                         gpus=(("Tesla V100-SXM2-32GB", "7.0"),), cuda="12.8"),
            make_machine(base, "nvidia-575-v100-rtx5090", driver="575.51.03",
                         gpus=(("Tesla V100-SXM2-32GB", "7.0"), ("NVIDIA GeForce RTX 5090", "12.0")), cuda="12.9"),
            make_machine(base, "container-cuda126", env={"CUDA_VERSION": "12.6.3"}),
            # docker build FROM nvidia/cuda:12.4.1-devel: no GPU, but a CUDA toolchain.
            make_machine(base, "cuda124-devel", nvcc="12.4", env={"CUDA_VERSION": "12.4.1"}),
        )
    }


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
        self.machines = lab_machines(base / "machines")
        _add_pypi_extras(self.server)
        self._venvs = 0

    # -- environments -----------------------------------------------------------------------

    def env(self, machine: str = "none", pip_conf: Path | None = None, **extra: str) -> dict[str, str]:
        """The recipe (``subprocess_env``) with the simulated user pip.conf unless ``pip_conf``,
        fake hardware ``machine``, the lab's home and cache, and the world's backend indexes."""
        return subprocess_env(
            self.world.pip_conf if pip_conf is None else pip_conf,
            machine=self.machines[machine], home=self.home, cache=self.cache,
            extra={"BACKENDPICK_INDEX_URL": self.template, **extra},
        )

    def run(
        self,
        *args: str,
        machine: str = "none",
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
        **extra: str,
    ) -> Result:
        """Run ``backendpick *args`` (this checkout) through ``launch``."""
        full = env if env is not None else self.env(machine, **extra)
        if "install" in args and "--dry-run" not in args:
            # Never the runner's interpreter: install targets --python or VIRTUAL_ENV only.
            assert "--python" in args or "VIRTUAL_ENV" in full, "install without a target venv"
        return launch(*args, env=full, cwd=cwd or self.empty_project, timeout=timeout)

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


def ok(res: Result, code: int = 0) -> Result:
    """``res`` exited with ``code``; otherwise fail showing its whole output (asserts truncate)."""
    if res.returncode != code:
        pytest.fail(f"expected exit {code}\n{res!r}", pytrace=False)
    return res


def py(venv: Path) -> str:
    return str(venv_python(venv))
