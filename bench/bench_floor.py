"""Issue 22's four ratios in one run: each benchmark below in turn, on the same machine, each
ratio against its baseline measured in the same benchmark (medians), then one table.

    python bench/bench_floor.py [--runs 9] [--large-runs 3]

1. a re-run on a finished environment (``bench_noop.py``): <= 0.3x ``python -m pip --version``;
2. backendpick's own time around a warm uv install (``bench_real.py --overhead``): <= 0.35x
   ``python -m pip --version``;
3. a large request (torch and about 40 ordinary packages) with ``--installer uv`` on a cold cache
   (``bench_real.py --large --cold-only --only uv,bp-uv``): <= 1.3x plain uv;
4. ``detect`` with its index pages fresh (``bench_detect.py``), with and without a GPU: <= 0.3x
   ``python -m pip --version``.

Each benchmark prints as it goes; the load average is noted before and after each (two shared
cores: compare ratios, not single figures). The table and the figures go to
``bench/results/floor-<time>.json``. Items 2 and 3 need this machine's mirror of real wheels
(``bench_real.py`` says "skipped" without it); the whole run takes 10-20 minutes, most of it
item 3's cold installs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# (item, what, script and its words, the JSON file's prefix, the goal)
ITEMS = (
    (1, "re-run on a finished environment vs python -m pip --version", ["bench_noop.py"], "noop", 0.3),
    (2, "own time around a warm uv install vs python -m pip --version", ["bench_real.py", "--overhead"],
     "overhead", 0.35),
    (3, "large request, --installer uv, cold cache vs plain uv",
     ["bench_real.py", "--large", "--cold-only", "--only", "uv,bp-uv"], "real", 1.3),
    (4, "detect, pages fresh, vs python -m pip --version", ["bench_detect.py"], "detect", 0.3),
)


def ratios(item: int, data: dict) -> dict[str, float]:
    """The ratios an item's goal is about, by name, from its benchmark's JSON."""
    ratio = data["ratio"]
    if item == 1:
        return {"re-run": ratio["fast_vs_pip_version"]}
    if item == 2:
        return {"own time": ratio["own_vs_pip_version"]}
    if item == 3:
        return {"cold, large": ratio["backendpick uv / plain uv, cold"]}
    return {k.split(":")[0]: v for k, v in ratio.items() if k.endswith(": detect")}


def run(item: int, words: list[str], runs: int, out: Path) -> tuple[dict | None, str]:
    """One benchmark as its own process; its JSON (None when it skipped) and the load around it."""
    before = os.getloadavg()[0]
    argv = [sys.executable, str(BENCH / words[0]), *words[1:], "--runs", str(runs), "--out", str(out)]
    print(f"\n== item {item}: {' '.join(argv[1:])} (load {before:.1f})", flush=True)
    subprocess.run(argv, check=True)
    found = sorted(out.glob(f"{ITEMS[item - 1][3]}-*.json"))
    load = f"{before:.1f} -> {os.getloadavg()[0]:.1f}"
    return (json.loads(found[-1].read_text()) if found else None), load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="samples for items 1, 2 and 4 (default 9)")
    parser.add_argument("--large-runs", type=int, default=3, help="pairs of cold installs for item 3 (default 3)")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    opts = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        for item, what, words, prefix, goal in ITEMS:
            data, load = run(item, words, opts.large_runs if item == 3 else opts.runs, Path(tmp) / prefix)
            if data is None:
                rows.append({"item": item, "what": what, "goal": goal, "load": load, "skipped": True})
                continue
            for name, value in ratios(item, data).items():
                rows.append({"item": item, "what": f"{what} ({name})", "goal": goal, "ratio": round(value, 3),
                             "met": value <= goal, "load": load, "median": data["median"]})
    print(f"\nissue 22, one run ({started} to {time.strftime('%H:%M:%S')}):")
    for r in rows:
        state = "skipped" if r.get("skipped") else f"{r['ratio']:.2f}x (goal <= {r['goal']}x: " \
            f"{'met' if r['met'] else 'NOT met'})"
        print(f"  {r['item']}. {r['what']}: {state}; load {r['load']}")
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"bench": "floor", "when": started, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")
    if not all(r.get("met") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
