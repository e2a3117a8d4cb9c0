"""Whole-process wall times of ``backendpick install`` against the hermetic test world.

Compares, in the same run and on the same machine:

(a) a first install into a fresh venv: ``backendpick install --backend cu124 <stack>`` against the
    four pip commands a human would write for the same result (backend index alone, build tools,
    flash-attn without build isolation, the rest);
(b) a re-run of the same install on the finished venv against that first install.

Each sample is a fresh clone of the world's template venv; backendpick and the hand-written
commands alternate so drift hits both alike. The figures are medians over ``--runs`` (default 3).
Goals: (a) <= 1.1x, (b) < 0.3x. Results go to bench/results/ (gitignored).

    python bench/bench_install.py            # 3 runs
    python bench/bench_install.py --runs 5 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.venvs import venv_python  # noqa: E402
from tests.support.world import build_world  # noqa: E402

STACK = ["torch==2.5.1", "torchvision", "xformers", "flash-attn", "tqdm"]
BUILD_TOOLS = ["setuptools", "wheel", "packaging", "psutil", "ninja", "einops"]  # flash-attn's
GOAL_FIRST = 1.1
GOAL_RERUN = 0.3

# backendpick from this checkout, keeping its own bytecode as an installed copy would.
LAUNCH = (
    "import sys; sys.dont_write_bytecode = False; sys.path.insert(0, {root!r}); "
    "from backendpick.start import main; main()"
).format(root=str(ROOT))


def fake_build_host(base: Path) -> tuple[Path, Path]:
    """A docker-build-like machine: no GPU, a CUDA 12.4 toolchain (fake nvcc) on PATH."""
    root, bindir = base / "probe-root", base / "bin"
    root.mkdir(parents=True)
    bindir.mkdir(parents=True)
    nvcc = bindir / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    for tool in ("c++", "ninja"):
        if not shutil.which(tool, path="/usr/bin:/bin"):
            fake = bindir / tool
            fake.write_text(f"#!/bin/sh\necho 'fake {tool}'\n")
            fake.chmod(0o755)
    return root, bindir


def run(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    return seconds


def backendpick(args: list[str], env: dict[str, str], cwd: Path) -> float:
    return run([sys.executable, "-c", LAUNCH, *args], env, cwd)


def hand_written(python: Path, index_url: str, env: dict[str, str], cwd: Path) -> float:
    """What a careful human types for the same environment (the user's extra index must not
    reach the backend install, so that one command runs without the pip config)."""
    pip = [str(python), "-m", "pip", "install"]
    isolated = {**env, "PIP_CONFIG_FILE": os.devnull}
    total = 0.0
    total += run([*pip, "--index-url", index_url, "torch==2.5.1", "torchvision", "xformers"], isolated, cwd)
    total += run([*pip, *BUILD_TOOLS], env, cwd)
    total += run([*pip, "--no-build-isolation", "flash-attn"], env, cwd)
    total += run([*pip, "tqdm"], env, cwd)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="samples per measurement (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary world")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-install-"))
    world = build_world(tmp / "world")
    try:
        probe_root, bindir = fake_build_host(tmp / "host")
        template = world.server.base_url + "/{backend}/simple"
        env = world.env()
        # The test world's recipe points CUDA_HOME at an empty folder (no toolkit of this machine
        # may leak into a test); this host's toolkit is the fake nvcc on PATH.
        for key in [k for k in env if k.startswith("BACKENDPICK_") or k in ("CUDA_VERSION", "CUDA_HOME", "CUDA_PATH")]:
            del env[key]
        env.update(
            BACKENDPICK_PROBE_ROOT=str(probe_root),
            BACKENDPICK_INDEX_URL=template,
            PATH=f"{bindir}:/usr/bin:/bin",
            HOME=str(tmp / "home"),
            NO_COLOR="1",
        )
        cwd = tmp / "project"
        cwd.mkdir()

        def fresh(name: str) -> Path:
            return world.new_venv(tmp / "venvs" / name)

        def bp_env(sample: str) -> dict[str, str]:
            # An empty wheel cache per sample: the hand-written commands build flash-attn every
            # time (no pip cache either), so backendpick must not reuse its own build.
            return {**env, "XDG_CACHE_HOME": str(tmp / "cache" / sample)}

        # Warm-up, not measured: bytecode of backendpick, the server's hashes of every file.
        warm = fresh("warm")
        backendpick(["install", "--python", str(venv_python(warm)), "--backend", "cu124", *STACK], bp_env("warm"), cwd)

        first, hand, rerun = [], [], []
        for i in range(opts.runs):
            venv = fresh(f"bp-{i}")
            args = ["install", "--python", str(venv_python(venv)), "--backend", "cu124", *STACK]
            first.append(backendpick(args, bp_env(f"bp-{i}"), cwd))
            rerun.append(backendpick(args, bp_env(f"bp-{i}"), cwd))
            hand.append(hand_written(venv_python(fresh(f"hand-{i}")), world.url("cu124"), env, cwd))
            print(f"run {i + 1}/{opts.runs}: backendpick {first[-1]:.2f}s, re-run {rerun[-1]:.2f}s, "
                  f"hand-written pip {hand[-1]:.2f}s", flush=True)

        med = {name: statistics.median(xs) for name, xs in (("first", first), ("hand", hand), ("rerun", rerun))}
        ratio_first = med["first"] / med["hand"]
        ratio_rerun = med["rerun"] / med["first"]
        print(f"first install: backendpick {med['first']:.2f}s vs hand-written pip {med['hand']:.2f}s "
              f"= {ratio_first:.2f}x (goal <= {GOAL_FIRST}x: {'met' if ratio_first <= GOAL_FIRST else 'MISSED'})")
        print(f"re-run:        {med['rerun']:.2f}s vs first install {med['first']:.2f}s "
              f"= {ratio_rerun:.2f}x (goal < {GOAL_RERUN}x: {'met' if ratio_rerun < GOAL_RERUN else 'MISSED'})")

        pip_version = subprocess.run([str(venv_python(world.template_venv)), "-m", "pip", "--version"], env=env,
                                     capture_output=True, text=True).stdout.split()[1]
        result = {
            "bench": "install",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": opts.runs,
            "stack": STACK,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "pip": pip_version},
            "seconds": {"backendpick_first": first, "hand_written": hand, "backendpick_rerun": rerun},
            "median": med,
            "ratio": {"first_vs_hand_written": round(ratio_first, 3), "rerun_vs_first": round(ratio_rerun, 3)},
            "goals": {"first_vs_hand_written": GOAL_FIRST, "rerun_vs_first": GOAL_RERUN},
            "met": {"first_vs_hand_written": ratio_first <= GOAL_FIRST, "rerun_vs_first": ratio_rerun < GOAL_RERUN},
        }
        opts.out.mkdir(parents=True, exist_ok=True)
        path = opts.out / f"install-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    finally:
        world.close()
        if opts.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
