"""``backendpick detect`` with the index pages fresh in the cache, next to ``python -m pip --version``.

detect asks the backend indexes what they offer (issue 20); once those pages are fresh in the
page cache and nothing else changed, asking again should cost nothing (issue 22, item 4). Two
machines, both against the tests' hermetic world (indexes on 127.0.0.1 serving their pages with
``Cache-Control: max-age=600``, as PyPI does), the target an activated venv:

* no GPU: an empty probe root, no vendor tools on PATH;
* a fake NVIDIA host: an H100 on driver 550.54.14 (in /sys and /proc, the driver's list of
  GPUs, a fake ``nvidia-smi`` on PATH), automatic selection (candidates cu124 and older, cpu).

In one run, whole processes alternating so drift hits all alike, for each machine: ``detect``
as it runs now (answered from the record of the last detect, state/noop.py), ``detect`` through
the full pipeline with the page cache warm (its record removed before each sample, so it writes
it again: what every detect cost before), and ``python -m pip --version``. Every fast sample is
checked: the answer the full run printed, no index request. Goal: detect at most 0.3x ``python
-m pip --version`` (medians). Results go to bench/results/ (gitignored).

    python bench/bench_detect.py               # medians of 15
    python bench/bench_detect.py --runs 31
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import LAUNCH, save, nvidia_host, options, timed  # bench/common.py; puts the checkout on sys.path
from tests.support.hermetic import subprocess_env  # noqa: E402
from tests.support.world import BACKENDS, build_world  # noqa: E402

GOAL = 0.3


def main() -> None:
    opts = options(__doc__)

    tmp = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    world = build_world(tmp / "world")
    try:
        for backend in BACKENDS:
            world.server.page_caching(backend, "max-age=600")
        venv = world.new_venv(tmp)
        extra = {"BACKENDPICK_INDEX_URL": world.server.base_url + "/{backend}/simple", "VIRTUAL_ENV": str(venv),
                 "XDG_CACHE_HOME": str(tmp / "cache"), "NO_COLOR": "1"}
        machines = {"no GPU": subprocess_env(os.devnull, extra=extra),
                    "H100, driver 550": subprocess_env(os.devnull, machine=nvidia_host(tmp / "h100", "NVIDIA H100 80GB HBM3", "9.0"), extra=extra)}
        records = tmp / "cache" / "backendpick" / "detect"  # paths.detect_records
        detect = [sys.executable, "-c", LAUNCH, "detect"]
        pip = [sys.executable, "-m", "pip", "--version"]
        cwd = tmp / "project"
        cwd.mkdir()

        answers = {}
        for name, env in machines.items():  # warm-up: bytecode, the page cache, the records
            for _ in range(2):
                answers[name] = timed(detect, env, cwd)[1]
            print(f"{name}: " + " / ".join(line for line in answers[name].splitlines() if line.startswith("backend")))
        timed(pip, machines["no GPU"], cwd)
        if len(list(records.glob("*.json"))) != len(machines):
            raise SystemExit(f"no record of each detect in {records}: the fast path never engages here")
        kept = {p: p.read_bytes() for p in records.glob("*.json")}

        samples: dict[str, list[float]] = {"pip_version": []}
        for _ in range(opts.runs):
            for name, env in machines.items():
                world.server.clear_log()
                seconds, said = timed(detect, env, cwd)
                if said != answers[name] or world.server.log:
                    raise SystemExit(f"{name}: a detect answered otherwise or asked an index")
                samples.setdefault(f"{name}: detect", []).append(seconds)
                for path in records.glob("*.json"):
                    path.unlink()
                seconds, said = timed(detect, env, cwd)  # the full pipeline, pages fresh in the cache
                if said != answers[name] or world.server.log:
                    raise SystemExit(f"{name}: the full detect answered otherwise or asked an index")
                samples.setdefault(f"{name}: full pipeline", []).append(seconds)
                for path, data in kept.items():  # the records as the warm-up left them
                    path.write_bytes(data)
            samples["pip_version"].append(timed(pip, machines["no GPU"], cwd)[0])
        med = {k: statistics.median(v) for k, v in samples.items()}
        ratio = {k: med[k] / med["pip_version"] for k in med if k != "pip_version"}
        print(f"python -m pip --version: {med['pip_version'] * 1000:.0f} ms (medians of {opts.runs}, "
              "0 index requests in every detect sample)")
        for k, r in ratio.items():
            goal = f" (goal <= {GOAL}x: {'met' if r <= GOAL else 'MISSED'})" if k.endswith(": detect") else ""
            print(f"  {k}: {med[k] * 1000:.0f} ms = {r:.2f}x{goal}")
        floor = statistics.median(timed([sys.executable, "-c", "pass"], machines["no GPU"], cwd)[0]
                                  for _ in range(opts.runs))
        print(f"  python -c pass: {floor * 1000:.0f} ms")

        met = all(r <= GOAL for k, r in ratio.items() if k.endswith(": detect"))
        save(opts, "detect", samples, med, ratio, GOAL, met, interpreter_floor=floor)
    finally:
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
