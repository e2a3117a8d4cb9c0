"""Start-up cost of ``backendpick detect`` next to ``python -m pip --version``.

Both run as whole processes with the same interpreter, hermetically (no pip configuration of
this machine), on a machine without GPUs: an empty probe root and a PATH without vendor tools.
The figure is the median over ``--runs`` (default 10) after one warm-up run of each; results go
to bench/results/ (gitignored).

    python bench/bench_detect.py
    python bench/bench_detect.py --runs 30
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

from tests.support.hermetic import subprocess_env  # noqa: E402

# backendpick from this checkout, keeping its own bytecode as an installed copy would.
LAUNCH = (
    "import sys; sys.dont_write_bytecode = False; sys.path.insert(0, {root!r}); "
    "from backendpick.start import main; main()"
).format(root=str(ROOT))


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="samples per command (default 10)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    try:
        (tmp / "root").mkdir()
        (tmp / "bin").mkdir()
        (tmp / "project").mkdir()
        env = subprocess_env(os.devnull)
        for key in [k for k in env if k.startswith("BACKENDPICK_") or k == "CUDA_VERSION"]:
            del env[key]
        env.update(BACKENDPICK_PROBE_ROOT=str(tmp / "root"), PATH=f"{tmp / 'bin'}:/usr/bin:/bin", NO_COLOR="1")
        for tool in ("nvidia-smi", "rocminfo", "rocm_agent_enumerator"):
            if shutil.which(tool, path="/usr/bin:/bin"):  # a real GPU host: keep its tools out
                fake = tmp / "bin" / tool
                fake.write_text("#!/bin/sh\nexit 9\n")
                fake.chmod(0o755)
        detect = [sys.executable, "-c", LAUNCH, "detect"]
        pip = [sys.executable, "-m", "pip", "--version"]
        cwd = tmp / "project"

        timed(detect, env, cwd), timed(pip, env, cwd)  # warm-up: bytecode, page cache
        samples: dict[str, list[float]] = {"detect": [], "pip_version": []}
        for _ in range(opts.runs):  # alternate, so drift hits both alike
            samples["detect"].append(timed(detect, env, cwd))
            samples["pip_version"].append(timed(pip, env, cwd))
        med = {k: statistics.median(v) for k, v in samples.items()}
        ratio = med["detect"] / med["pip_version"]
        print(f"backendpick detect: {med['detect'] * 1000:.0f} ms, python -m pip --version: "
              f"{med['pip_version'] * 1000:.0f} ms (medians of {opts.runs}) = {ratio:.2f}x")

        result = {
            "bench": "detect",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": opts.runs,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "seconds": samples,
            "median": med,
            "ratio": {"detect_vs_pip_version": round(ratio, 3)},
        }
        opts.out.mkdir(parents=True, exist_ok=True)
        path = opts.out / f"detect-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
