"""Helpers for the verify / guards / examples tests: fake machines, broken environments,
private indexes and running backendpick as a user would (through the one launcher,
``tests.support.lab.launch``/``spawn``, in the one recipe's environment).

Everything builds on the session ``world`` (tests/support/world.py) without changing what
other tests see: broken environments are venv clones changed with plain pip, and the extra
packages some tests need live in private indexes (new directories on the same server).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.dists import make_wheel
from tests.support.fakehw import FakeMachine
from tests.support.hermetic import subprocess_env
from tests.support.lab import Result, launch
from tests.support.venvs import venv_python, write_pip_conf
from tests.support.world import World

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 180

A100_QUERY = "0, NVIDIA A100-SXM4-80GB, 550.54.14, 8.0, GPU-x, 81920\n"
UNDEFINED_SYMBOL = (
    "/venv/lib/python3.11/site-packages/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: "
    "undefined symbol: _ZN3c104cuda9SetDeviceEi"
)


# -- machines -----------------------------------------------------------------------------------


def no_gpu(tmp_path: Path) -> FakeMachine:
    """A machine without any GPU: an empty probe root and no vendor tools on PATH."""
    return FakeMachine(tmp_path / "nogpu")


def nvidia(tmp_path: Path, *, driver: str = "550.54.14", query: str | None = None) -> FakeMachine:
    """An NVIDIA machine (default: one A100, driver 550.54.14, i.e. CUDA 12.4)."""
    m = FakeMachine(tmp_path / f"nvidia-{driver}")
    m.driver(driver)
    m.nvidia_smi(query=query or A100_QUERY.replace("550.54.14", driver))
    return m


def template_url(world: World) -> str:
    return world.url("cpu").replace("/cpu/", "/{backend}/")


def bp_env(world: World, machine: FakeMachine, pip_conf: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment of a backendpick child on ``machine`` against the world (``pip_conf``:
    default the simulated user config)."""
    return subprocess_env(world.pip_conf if pip_conf is None else pip_conf, machine=machine,
                          extra={"BACKENDPICK_INDEX_URL": template_url(world), **extra})


def pip_env(world: World) -> dict[str, str]:
    """For plain pip and listings in the test: no pip configuration at all."""
    return subprocess_env()


def backendpick(*args: str | Path, env: Mapping[str, str], cwd: Path, timeout: float = TIMEOUT) -> Result:
    return launch(*args, env=env, cwd=cwd, timeout=timeout)


def out(proc: Result | subprocess.CompletedProcess) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def verify_json(python: Path, *, env: Mapping[str, str], cwd: Path, extra: Iterable[str] = ()) -> tuple[int, dict, Result]:
    proc = backendpick("verify", "--python", python, "--json", *extra, env=env, cwd=cwd)
    assert proc.returncode in (0, 1), out(proc)
    return proc.returncode, json.loads(proc.stdout), proc


def problems_of(report: dict, package: str) -> list[dict]:
    return [p for p in report["problems"] if p["package"].lower() == package.lower()]


def fix_argv(fix: str) -> list[str]:
    """A printed fix (``backendpick install ...   # comment``) as arguments for ``backendpick``."""
    words = shlex.split(fix, comments=True)
    assert words and words[0] == "backendpick", f"a fix should be a backendpick command: {fix!r}"
    return words[1:]


def run_fix(fix: str, *, env: Mapping[str, str], cwd: Path) -> Result:
    return backendpick(*fix_argv(fix), env=env, cwd=cwd)


# -- environments ---------------------------------------------------------------------------------


def pip(python: Path, *args: str, env: Mapping[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(python), "-m", "pip", *map(str, args)], env=dict(env), cwd=cwd,
                          check=False, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, out(proc)
    return proc


def pip_from(world: World, python: Path, *reqs: str | Path, indexes: Iterable[str]) -> None:
    """``pip install --no-deps`` of exact files or pins found in the named world indexes only.

    Pins (no files) into a fresh clone of the template are installed once a session into a
    template of their own, which the venv then becomes a clone of (``World.prepare``): several
    tests start from the same torch."""
    venv, indexes = Path(python).parent.parent, tuple(indexes)
    if all(isinstance(r, str) and os.sep not in r for r in reqs) and Path(python) == venv_python(venv) \
            and world.is_fresh_clone(venv):
        world.prepare(venv, ("pip_from", reqs, indexes), lambda v: _pip_from(world, venv_python(v), reqs, indexes))
    else:
        _pip_from(world, python, reqs, indexes)


def _pip_from(world: World, python: Path, reqs: Iterable[str | Path], indexes: Iterable[str]) -> None:
    links: list[str] = []
    for name in indexes:
        links += ["--find-links", str(world.server.index_dir(name))]
    pip(python, "install", "--no-deps", "--no-index", *links, *map(str, reqs), env=pip_env(world))


def freeze(python: Path, world: World) -> list[str]:
    proc = pip(python, "list", "--format=freeze", env=pip_env(world), cwd=Path(python).parent)
    return sorted(line for line in proc.stdout.splitlines() if line.strip())


_LIST = (
    "import importlib.metadata as m, json, re\n"
    "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in m.distributions()}))"
)


def versions(python: Path, world: World) -> dict[str, str]:
    """``{normalized name: version}`` of what is installed (importlib.metadata: faster than
    pip list). ``-I``: neither the working directory nor PYTHONPATH adds distributions."""
    proc = subprocess.run([str(python), "-I", "-c", _LIST], env=pip_env(world), check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def module_index(python: Path, module: str, world: World) -> str:
    """Which index a world wheel came from (its ``__index__``); "file" for the tests' own wheels."""
    code = f"import {module}; print(getattr({module}, '__index__', 'file'))"
    proc = subprocess.run([str(python), "-I", "-c", code], env=pip_env(world), check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def torch_stack(world: World, python: Path, torch: str, backend: str) -> None:
    """torch (with its two dependencies) from a backend index, as pip would install it."""
    pip_from(world, python, f"torch=={torch}+{backend}", "filelock", "typing-extensions", indexes=[backend])


def xformers_wheel(dest: Path, version: str, *, torch_pin: str | None, cpp_lib: dict | None) -> Path:
    """An xformers build like the real ones: a torch pin in its metadata, xformers/cpp_lib.json."""
    files = {"xformers/cpp_lib.json": json.dumps(cpp_lib)} if cpp_lib is not None else None
    return make_wheel(dest, "xformers", version, requires=[f"torch=={torch_pin}"] if torch_pin else [], files=files)


def flash_attn_wheel(dest: Path, version: str = "2.7.4", *, broken: bool) -> Path:
    """flash-attn with its compiled extension ``flash_attn_2_cuda`` as a top-level module;
    ``broken``: importing it fails like a build against another torch does."""
    body = f"raise ImportError({UNDEFINED_SYMBOL!r})\n" if broken else "def fwd(*a, **kw):\n    return None\n"
    return make_wheel(dest, "flash-attn", version, requires=["torch", "einops"],
                      files={"flash_attn_2_cuda.py": body})


def private_index(world: World, name: str, wheels: Iterable[tuple] = (), *, drop: Iterable[str] = ()) -> Path:
    """A copy of the world's pypi index named ``name`` plus ``wheels`` (make_wheel argument
    tuples: (name, version, kwargs)), without files whose name starts with one of ``drop``.
    Returns a pip.conf using it as index-url, with the hostile index as extra-index-url."""
    directory = world.server.root / name
    if not directory.is_dir():
        staging = world.server.root / f".{name}.tmp"  # dot names are never served
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for f in world.server.index_dir("pypi").iterdir():
            if f.is_file() and not any(f.name.startswith(p) for p in drop):
                shutil.copy2(f, staging / f.name)
        for wname, wversion, kw in wheels:
            make_wheel(staging, wname, wversion, **kw)
        staging.rename(directory)
    return write_pip_conf(world.root / f"{name}-pip.conf", index_url=world.url(name),
                          extra_index_urls=[world.url("hostile")])


def flash_ok_index(world: World) -> Path:
    """pip.conf whose index is the world's pypi with a working flash-attn 2.7.4 wheel instead
    of the sdist (the world's sdist builds no compiled extension, which verify rejects)."""
    return private_index(world, "bp-flash-ok", drop=["flash_attn"], wheels=[("flash-attn", "2.7.4", {
        "requires": ["torch", "einops"], "files": {"flash_attn_2_cuda.py": "ok = True\n"}})])


def project(dest: Path, dependencies: Iterable[str], tool: str = "") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    deps = ", ".join(json.dumps(d) for d in dependencies)
    (dest / "pyproject.toml").write_text(
        f'[project]\nname = "demo"\nversion = "0.1"\ndependencies = [{deps}]\n' + (f"\n[tool.backendpick]\n{tool}\n" if tool else ""),
        encoding="utf-8",
    )
    return dest

