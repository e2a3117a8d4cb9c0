"""A re-run of ``backendpick install`` on a finished environment, next to ``python -m pip --version``.

The case of ``make install``, a CI step before the tests, a rebuilt Docker layer (issue 22): the
environment already matches, so the answer is "nothing to do". Measured in the same run, whole
processes, the same interpreter, alternating so drift hits all alike:

* the re-run as it runs: answered from the record before the machinery loads (state/noop.py);
* the re-run through the full pipeline (the record removed before each sample, so the full run
  writes it again), as every re-run was before;
* ``python -m pip --version``, the yardstick.

The machine is a fake NVIDIA host (driver 550.54.14 in /sys and /proc, the driver's list of one
A100, a fake nvidia-smi on PATH) and the choice is automatic, so the check reads the hardware
too. The world is the tests' hermetic one (indexes on 127.0.0.1, tiny fake torch wheels). Every
fast sample is checked: the record untouched (a full run rewrites it) and no index request.
Goal: the fast re-run at most 0.3x ``python -m pip --version`` (medians). Results go to
bench/results/ (gitignored).

    python bench/bench_noop.py               # medians of 15
    python bench/bench_noop.py --runs 31
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import LAUNCH, save, ROOT, nvidia_host, options, timed  # bench/common.py; puts ROOT on sys.path
from tests.support.hermetic import subprocess_env  # noqa: E402
from tests.support.venvs import venv_python  # noqa: E402
from tests.support.world import build_world  # noqa: E402

GOAL = 0.3
REQUEST = ["torch", "torchvision", "xformers", "tqdm"]


# Where a fast re-run's time goes, measured inside one such process (same interpreter, same
# environment): the imports of the check, then each part of the fingerprint.
BREAKDOWN = """
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from backendpick.state import noop
t1 = time.perf_counter()
record = json.load(open(sys.argv[1]))
env = os.environ
parts = {{
    "backendpick's own files": noop._code,
    "variables": lambda: sorted((k, v) for k, v in env.items() if noop.counts(k)),
    "files by content": lambda: [noop._content(f) for f in record["files"]],
    "installed set": lambda: [noop._listing(d) for d in record["folders"]],
    "machine": lambda: noop.machine(env),
}}
out = {{"imports": t1 - t0}}
for name, part in parts.items():
    s = time.perf_counter()
    part()
    out[name] = time.perf_counter() - s
s = time.perf_counter()
noop.fingerprint(record["python"], sys.argv[2:], os.getcwd(), env, record["files"], record["folders"],
                 record["programs"], record["variables"])
out["whole fingerprint"] = time.perf_counter() - s
print(json.dumps(out))
"""


def identity(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def main() -> None:
    opts = options(__doc__)

    tmp = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    world = build_world(tmp / "world")
    try:
        env = subprocess_env(world.pip_conf, machine=nvidia_host(tmp / "a100", "NVIDIA A100-SXM4-80GB", "8.0"),
                             extra={"BACKENDPICK_INDEX_URL": world.server.base_url + "/{backend}/simple"})
        venv = world.new_venv(tmp)
        cwd = tmp / "project"
        cwd.mkdir()
        install = [sys.executable, "-c", LAUNCH, "install", "--python", str(venv_python(venv)), *REQUEST]
        pip = [sys.executable, "-m", "pip", "--version"]
        record = venv / ".backendpick" / "noop.json"

        _, said = timed(install, env, cwd)  # the first install (auto: cu124 for the A100's driver)
        print(said.strip().splitlines()[-1])
        for _ in range(3):  # the full re-runs that write the record; then warm bytecode
            timed(install, env, cwd)
            if record.exists():
                break
        if not record.exists():
            raise SystemExit("no record after three re-runs: the fast path never engages here")
        timed(pip, env, cwd)

        samples: dict[str, list[float]] = {"fast": [], "full": [], "pip_version": []}
        for _ in range(opts.runs):
            record.unlink()
            samples["full"].append(timed(install, env, cwd)[0])
            before = identity(record)  # written again by the full run
            world.server.clear_log()
            seconds, said = timed(install, env, cwd)
            if identity(record) != before or world.server.log:
                raise SystemExit("a re-run took the full path or asked an index")
            samples["fast"].append(seconds)
            samples["pip_version"].append(timed(pip, env, cwd)[0])
        med = {k: statistics.median(v) for k, v in samples.items()}
        ratio = {"fast_vs_pip_version": med["fast"] / med["pip_version"],
                 "full_vs_pip_version": med["full"] / med["pip_version"]}
        print(f"re-run, answered from the record: {med['fast'] * 1000:.0f} ms; through the full pipeline: "
              f"{med['full'] * 1000:.0f} ms; python -m pip --version: {med['pip_version'] * 1000:.0f} ms "
              f"(medians of {opts.runs}, 0 index requests)")
        print(f"= {ratio['fast_vs_pip_version']:.2f}x pip --version (goal <= {GOAL}x: "
              f"{'met' if ratio['fast_vs_pip_version'] <= GOAL else 'MISSED'}); the full pipeline "
              f"{ratio['full_vs_pip_version']:.2f}x")

        floor = statistics.median(timed([sys.executable, "-c", "pass"], env, cwd)[0] for _ in range(opts.runs))
        breakdown = [sys.executable, "-c", BREAKDOWN.format(root=str(ROOT)), str(record), *install[4:]]
        parts = [json.loads(timed(breakdown, env, cwd)[1])
                 for _ in range(5)]
        where = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
        print(f"where the fast re-run goes: interpreter start and exit (python -c pass) {floor * 1000:.1f} ms; "
              + "; ".join(f"{k} {v * 1000:.2f} ms" for k, v in where.items()))

        save(opts, "noop", samples, med, ratio, GOAL, ratio["fast_vs_pip_version"] <= GOAL, request=REQUEST,
             interpreter_floor=floor, fast_breakdown=where)
    finally:
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
