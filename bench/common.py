"""What bench_noop.py and bench_detect.py share: backendpick launched from this checkout, a timed
whole process, a fake NVIDIA host, the options."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fakehw import FakeMachine  # noqa: E402

# backendpick from this checkout, keeping its own bytecode as an installed copy would.
LAUNCH = (
    "import sys; sys.dont_write_bytecode = False; sys.path.insert(0, {root!r}); "
    "from backendpick.start import main; main()"
).format(root=str(ROOT))


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Seconds of one whole process, and what it printed; a failure ends the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def nvidia_host(base: Path, model: str, capability: str) -> FakeMachine:
    """One ``model`` GPU on driver 550.54.14: the driver's files in /sys and /proc, its GPU list,
    a fake ``nvidia-smi`` on PATH."""
    machine = FakeMachine(base)
    machine.driver("550.54.14")
    machine.nvidia_smi(query=f"0, {model}, 550.54.14, {capability}, GPU-x, 81920\n")
    return machine.driver_gpus([model])


def options(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="samples per command (default 15)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args()


def save(opts: argparse.Namespace, bench: str, samples: dict, median: dict, ratio: dict, goal: float,
         met: bool, **more) -> None:
    """The samples, medians and ratios of a run, with when and where it was measured, as JSON
    in ``opts.out`` (bench/results/)."""
    result = {"bench": bench, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": opts.runs,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "seconds": samples, "median": median, "ratio": {k: round(v, 3) for k, v in ratio.items()},
              "goal": goal, "met": met, **more}
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"{bench}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
