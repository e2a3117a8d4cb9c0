"""What keeping a copy of a real torch costs (issue 18): a torch wheel installed with plain pip
(``--no-deps``, no bytecode) into a throwaway venv, then repacked from its RECORD as install
does before it removes or replaces it, at the compression backendpick uses and at the others
for comparison; each wheel checked to hold the same files (``distfiles.wheel_identity``) as the
original. Measurement only: not part of the test suite.

    python bench/bench_repack.py [WHEEL]   # default: PyPI's torch 2.14.1 (cu130) in /opt/pypi-more/files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backendpick.state import repack  # noqa: E402
from backendpick.target import distfiles  # noqa: E402

DEFAULT = Path("/opt/pypi-more/files/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl")
# (label, files of STORE_FROM bytes and more stored, compression level of the others)
SETTINGS = (("backendpick: >= 1 MiB stored, the rest level 1", 1 << 20, 1),
            ("all stored", 0, 0), ("all level 1", 1 << 62, 1), ("all level 6 (pip's)", 1 << 62, 6))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("wheel", nargs="?", type=Path, default=DEFAULT)
    args = parser.parse_args()
    if not args.wheel.is_file():
        print(f"skipped: {args.wheel} is not here")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-repack-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        "--no-deps", "--no-index", "--no-compile", str(args.wheel)], check=True, env=env)
        installed = time.perf_counter() - started
        [dist_info] = (venv / "lib").glob("python3*/site-packages/torch-*.dist-info")
        size = sum(r.size or 0 for r in distfiles.read_record(dist_info))
        print(f"{args.wheel.name}: {args.wheel.stat().st_size / 1e6:.0f} MB wheel, {size / 1e6:.0f} MB installed "
              f"(pip install --no-deps from the file: {installed:.1f} s)")
        want = distfiles.wheel_identity(args.wheel)
        results = []
        for label, store_from, level in SETTINGS:
            repack.STORE_FROM, repack.COMPRESSLEVEL = store_from, level
            out = Path(tmp) / f"out-{len(results)}"
            done = repack.repack(dist_info, out, repack.Layout(venv, venv / "bin", "py3-none-any"))
            same = done.identity == want == distfiles.wheel_identity(done.wheel)
            assert zipfile.ZipFile(done.wheel).testzip() is None
            print(f"  {label}: {done.size / 1e6:.0f} MB in {done.seconds:.1f} s, same files: {same}")
            results.append({"setting": label, "bytes": done.size, "seconds": round(done.seconds, 2), "same": same})
            done.wheel.unlink()
        folder = ROOT / "bench" / "results"
        folder.mkdir(exist_ok=True)
        (folder / f"repack-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(
            {"wheel": args.wheel.name, "installed_bytes": size, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
