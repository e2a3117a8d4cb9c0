"""Benchmark: installing flash-attn from the wheel cache vs building it again.

Runs ``backendpick install --json torch==2.5.1 flash-attn --backend cu124`` in fresh venvs of
the test world (tests/support/world.py: local indexes, fake torch, a flash-attn sdist whose
build imports torch), on a fake machine with one A100 and a fake CUDA 12.4 toolchain:

* cold: an empty wheel cache, so the build phase runs ``pip wheel`` and stores the wheel;
* warm: the same cache, a new venv: the build phase installs the cached wheel.

It reports the build phase's seconds (from install's JSON ``ran`` list) for each, and the
ratio cold / warm. The fake sdist compiles nothing, so the cold build is pip's overhead
only; ``--compile-seconds N`` makes its setup.py sleep N seconds to stand for a real
compile (flash-attn takes 10 minutes to hours), which the cache saves entirely.

    python bench/bench_cache.py                      # pip overhead only
    python bench/bench_cache.py --compile-seconds 30 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.dists import make_sdist  # noqa: E402 - after the path is set
from tests.support.fakehw import FakeMachine  # noqa: E402
from tests.support.venvs import venv_python, write_pip_conf  # noqa: E402
from tests.support.world import World, build_world  # noqa: E402

VERSION = "2.7.4"
A100 = "0, NVIDIA A100-SXM4-80GB, 550.54.14, 8.0, GPU-00000000-0000-0000-0000-000000000000, 81920\n"


def setup_py(compile_seconds: float) -> str:
    return textwrap.dedent(
        f"""\
        import time
        import torch
        from pathlib import Path
        from setuptools import setup

        import sys
        if "bdist_wheel" in sys.argv:  # not while pip only reads the metadata
            time.sleep({compile_seconds!r})  # stands for nvcc compiling the CUDA kernels
        here = Path(__file__).resolve().parent
        (here / "flash_attn").mkdir(exist_ok=True)
        (here / "flash_attn" / "__init__.py").write_text("__version__ = {VERSION!r}\\n")
        (here / "flash_attn_2_cuda.py").write_text("def fwd(*a, **kw):\\n    return None\\n")
        setup(name="flash-attn", version={VERSION!r}, packages=["flash_attn"],
              py_modules=["flash_attn_2_cuda"], install_requires=["torch", "einops"])
        """
    )


def private_index(world: World, compile_seconds: float) -> Path:
    """The world's pypi index with the benchmark's flash-attn sdist; a pip.conf using it."""
    directory = world.server.root / "bench-pypi"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for f in world.server.index_dir("pypi").iterdir():
        if f.is_file() and not f.name.startswith("flash_attn"):
            shutil.copy2(f, directory / f.name)
    make_sdist(directory, "flash-attn", VERSION, setup_py(compile_seconds))
    return write_pip_conf(world.root / "bench-pip.conf", index_url=world.url("bench-pypi"))


def machine(base: Path) -> tuple[FakeMachine, Path]:
    m = FakeMachine(base)
    m.driver("550.54.14").nvidia_smi(query=A100)
    tools = base / "tools"
    tools.mkdir()
    for name, body in (("nvcc", 'echo "Cuda compilation tools, release 12.4, V12.4.131"'), ("c++", "exit 0"),
                       ("ninja", "echo 1.11.1")):
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    return m, tools


def install(world: World, conf: Path, m: FakeMachine, tools: Path, cache: Path, base: Path) -> dict:
    venv = world.new_venv(base)
    env = world.env(conf)
    for key in ("CUDA_HOME", "CUDA_PATH", "MAX_JOBS", "TORCH_CUDA_ARCH_LIST", "VIRTUAL_ENV"):
        env.pop(key, None)
    env.update(m.cli_env())
    env.update(PATH=f"{tools}{os.pathsep}{m.path}", BACKENDPICK_CACHE_DIR=str(cache),
               BACKENDPICK_INDEX_URL=world.url("cpu").replace("/cpu/", "/{backend}/"))
    proc = subprocess.run(
        [sys.executable, "-m", "backendpick", "install", "--json", "--python", str(venv_python(venv)),
         "--backend", "cu124", "torch==2.5.1", "flash-attn", "--project", str(base)],
        env=env, cwd=base, capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"install failed:\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(proc.stdout)
    [build] = [p for p in report["ran"] if p["name"] == "build"]
    # Which way the wheel came, from install's notes (stderr in JSON mode).
    how = "cache" if "(wheel cache:" in proc.stderr else "source" if "from source" in proc.stderr else "other"
    return {"seconds": build["seconds"], "how": how}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile-seconds", type=float, default=0.0,
                        help="seconds the fake build sleeps, standing for compiling (default 0)")
    parser.add_argument("--repeat", type=int, default=3, help="cold/warm pairs to run (default 3; medians reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        base = Path(tmp)
        world = build_world(base / "world")
        try:
            conf = private_index(world, args.compile_seconds)
            m, tools = machine(base / "machine")
            cold, warm = [], []
            for i in range(args.repeat):
                cache = base / f"cache-{i}"
                run = base / f"run-{i}"
                run.mkdir()
                first = install(world, conf, m, tools, cache, run)
                second = install(world, conf, m, tools, cache, run)
                assert (first["how"], second["how"]) == ("source", "cache"), (first, second)
                cold.append(first["seconds"])
                warm.append(second["seconds"])
        finally:
            world.close()

    result = {
        "compile_seconds": args.compile_seconds,
        "repeat": args.repeat,
        "build_phase_seconds": {"source_build": statistics.median(cold), "from_cache": statistics.median(warm)},
        "runs": {"source_build": cold, "from_cache": warm},
        "ratio": round(statistics.median(cold) / max(statistics.median(warm), 1e-6), 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"build phase, source build: {result['build_phase_seconds']['source_build']:.2f}s (median of {args.repeat})")
        print(f"build phase, from cache:   {result['build_phase_seconds']['from_cache']:.2f}s")
        print(f"ratio: {result['ratio']}x (simulated compile time {args.compile_seconds:g}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
