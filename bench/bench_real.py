"""Whole-process wall times on real torch wheels: backendpick with each engine against plain pip
and plain uv, cold and warm cache, each sample in a fresh venv.

The wheels come from folders already on disk (by default this machine's package mirror:
/opt/pypi-more/files holds torch 2.14.1, PyPI's CUDA 13.0 build, with its nvidia-* wheels and
torchvision; /opt/pypi/files the plain dependencies). They are served as a PEP 503 index
(``/cu130/simple/``) from 127.0.0.1 by a static file server that lets the installers cache
files as PyPI does (``Cache-Control: max-age`` on files). Nothing reaches the network.

Per round, in this order (so drift hits every tool alike), each in a fresh venv:

* plain pip:        pip install --index-url <mirror> torch==2.14.1 torchvision
* plain uv:         uv pip install --python <venv> --no-config --index-url <mirror> torch==2.14.1 torchvision
* backendpick pip:  backendpick install --backend cu130 --installer pip torch==2.14.1 torchvision
* backendpick uv:   backendpick install --backend cu130 --installer uv torch==2.14.1 torchvision

backendpick runs as users run it: its console script, from a venv where this checkout is
installed (with this machine's pip configuration) at the start of the run.

"cold": an empty cache of the installer for the sample; "warm": the installer's cache after one
earlier install of the same wheels (another venv, a Docker layer rebuilt with the cache
mounted); for backendpick also its own cache (index pages) after one earlier install.
Medians over ``--runs``; ratios from the same run. About 5 GB are installed per sample: each
venv and each cold cache is removed as soon as it was measured. Results go to bench/results/
(gitignored).

    python bench/bench_real.py                       # 3 runs, the default folders
    python bench/bench_real.py --runs 5 /srv/wheels  # other folders
    python bench/bench_real.py --overhead --runs 9   # backendpick's own time around a warm uv

``--overhead`` measures what the ratio hides in uv's noise: backendpick --installer uv on a warm
cache with ``BACKENDPICK_UV`` set to a wrapper that records uv's own wall time; the whole
process's time less uv's is backendpick's (start, plan, snapshot, verification, pins, exit, and
the wrapper's own start, a few ms). uv links ~5 GB per sample, whose time scatters by 2x with the
machine's load; backendpick's own time does not. Each round also times ``python -m pip --version``
(the issue's yardstick) and two floors in backendpick's own venv: ``python -c pass`` and
``python -c "import click, packaging.requirements, ..."`` (``FLOOR``: what any process that imports
the prescribed dependencies costs before one line of backendpick runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDERS = (Path("/opt/pypi-more/files"), Path("/opt/pypi/files"))
TORCH_WHEEL = "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl"
REQUIREMENTS = ["torch==2.14.1", "torchvision"]
# ``--large``: torch and about forty ordinary packages of the mirror, as an ML project asks for
# them (issue 22 item 3): the whole-request resolution that chooses torch has real work to do.
LARGE = [
    *REQUIREMENTS, "transformers", "accelerate", "datasets", "peft", "trl", "sentence-transformers", "timm",
    "safetensors", "tokenizers", "huggingface-hub", "einops", "torchmetrics", "lightning", "xxhash",
    "scikit-learn", "scipy", "pandas", "numpy", "matplotlib", "seaborn", "tqdm", "rich", "pydantic", "fastapi",
    "uvicorn", "requests", "aiohttp", "pyyaml", "tabulate", "tensorboard", "jinja2", "sentencepiece", "tiktoken",
    "regex", "nltk", "pillow", "opencv-python-headless", "jsonschema", "typer", "click",
]
GOAL_UV_COLD_LARGE = 1.3  # backendpick --installer uv against plain uv, cold cache, --large
BACKEND = "cu130"
# Required by the torch wheel but in no folder of this machine's mirror: a stand-in wheel of a
# few hundred bytes (the real cuda-bindings is about 10 MB of the ~5 GB), named in the output.
STAND_INS = {"cuda-bindings": "13.0.3"}
GOAL_UV_WARM = 1.2  # backendpick --installer uv against plain uv, warm cache
# ``--overhead``'s floor: what any process that imports the dependencies the brief prescribes
# (click, packaging) and the stdlib modules every install needs costs before one line of
# backendpick runs (issue 22 item 2).
FLOOR = ("import click, packaging.requirements, packaging.specifiers, packaging.version, packaging.tags, json, "
         "hashlib, subprocess, pathlib, dataclasses, tomllib")
LAUNCH = (
    "import sys; sys.dont_write_bytecode = False; sys.path.insert(0, {root!r}); "
    "from backendpick.start import main; main()"
).format(root=str(ROOT))


def _project(filename: str) -> str | None:
    if not filename.endswith(".whl"):
        return None
    return re.sub(r"[-_.]+", "-", filename.split("-", 1)[0]).lower()


def make_mirror(folders: list[Path], root: Path) -> int:
    """``root/cu130/simple/<project>/index.html`` linking to ``root/cu130/files/<wheel>``
    (symlinks to the folders' files; the first folder holding a file name wins)."""
    files_dir = root / BACKEND / "files"
    files_dir.mkdir(parents=True)
    projects: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            name = _project(path.name)
            if name is None or (files_dir / path.name).exists():
                continue
            (files_dir / path.name).symlink_to(path)
            projects.setdefault(name, []).append(path.name)
    sys.path.insert(0, str(ROOT))
    from tests.support.dists import make_wheel

    for name, version in STAND_INS.items():
        if not any(f.split("-")[1] == version for f in projects.get(name, [])):
            wheel = make_wheel(root / "stand-ins", name, version, summary="stand-in of bench_real.py")
            (files_dir / wheel.name).symlink_to(wheel)
            projects.setdefault(name, []).append(wheel.name)
            print(f"stand-in: {name} {version} is in no folder; serving a placeholder wheel", flush=True)
    simple = root / BACKEND / "simple"
    for name, files in projects.items():
        page = simple / name
        page.mkdir(parents=True)
        for f in files:  # PEP 658 metadata, as PyPI serves it: resolvers read it, not the wheel
            _write_metadata(files_dir / f)
        # Each file's sha256 in its link, as PyPI serves it: a lock (uv's pylock.toml) takes the
        # hash from the page instead of downloading the wheel to compute it.
        links = "".join(f'<a href="../../files/{quote(f)}#sha256={_sha256(files_dir / f)}" '
                        f'data-dist-info-metadata="true" data-core-metadata="true">{f}</a><br/>\n' for f in files)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    index = "".join(f'<a href="{n}/">{n}</a><br/>\n' for n in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{index}</body></html>\n")
    return sum(len(f) for f in projects.values())


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_metadata(wheel: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        Path(f"{wheel}.metadata").write_bytes(zf.read(name))


class _Handler(SimpleHTTPRequestHandler):
    """Static files; wheels cacheable for a year as on files.pythonhosted.org."""

    def end_headers(self) -> None:
        if self.path.endswith(".whl"):
            self.send_header("Cache-Control", "max-age=365000000, immutable, public")
        else:
            self.send_header("Cache-Control", "max-age=600, public")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


def serve(root: Path) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def base_env(tmp: Path, template: str) -> dict[str, str]:
    """No PIP_*/UV_* of this machine, no pip configuration, no GPU (explicit backend)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "BACKENDPICK_", "VIRTUAL_ENV", "PYTHON"))}
    probe_root = tmp / "probe-root"
    probe_root.mkdir(exist_ok=True)
    env.update(
        PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
        BACKENDPICK_PROBE_ROOT=str(probe_root), BACKENDPICK_INDEX_URL=template,
        BACKENDPICK_CACHE_DIR=str(tmp / "bp-wheels"), HOME=str(tmp / "home"), NO_COLOR="1",
        PATH="/usr/bin:/bin", no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost",
    )
    return env


def installed_backendpick(tmp: Path) -> list[str]:
    """backendpick as users run it: its console script in a venv where it is installed from this
    checkout (not editable: a development install's import hook costs every start ~8 ms). Set up
    with this machine's pip configuration (its index or mirror provides click, rich, packaging);
    where that fails, the checkout is run in place and the output says so."""
    venv = tmp / "backendpick-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{ROOT}[uv]"],
                          capture_output=True, text=True)
    script = venv / "bin" / "backendpick"
    if proc.returncode == 0 and script.is_file():
        return [str(script)]
    print(f"note: could not install backendpick into a venv ({(proc.stderr or proc.stdout).strip()[-300:]}); "
          "running the checkout in place", flush=True)
    return [sys.executable, "-c", LAUNCH]


def find_uv() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise SystemExit("skipped: uv is not installed (pip install uv, or backendpick[uv])") from None
        return found


def overhead(runs: int, tmp: Path, venv, command, uv: str, env: dict[str, str], cwd: Path, python: str,
             out: Path) -> None:
    """backendpick's own time around uv: whole process less uv's run (``--overhead``), and the
    floors beside it; ``python``: the interpreter backendpick runs on."""
    times = tmp / "uv-times"
    wrapper = tmp / "uv-timed"
    wrapper.write_text(f'''#!/bin/sh
start=$(date +%s%N)
{uv!r} "$@"
rc=$?
echo $(( $(date +%s%N) - start )) >> {str(times)!r}
exit $rc
''')
    wrapper.chmod(0o755)
    env = {**env, "BACKENDPICK_UV": str(wrapper)}
    v = venv()
    print(f"warm-up (fills uv's cache and backendpick's): {timed(command('bp-uv', v), env, cwd):.1f}s", flush=True)
    shutil.rmtree(v)
    own, whole, floor = [], [], []
    pip_version = [sys.executable, "-m", "pip", "--version"]
    # The floors, in backendpick's own venv: its interpreter doing nothing, and importing what any
    # process with the prescribed dependencies imports (click, packaging, the stdlib it needs).
    floors = {"python -c pass": [python, "-c", "pass"], "python -c 'import click, packaging...'": [python, "-c", FLOOR]}
    floor_times: dict[str, list[float]] = {k: [] for k in floors}
    timed(pip_version, env, cwd)
    for i in range(runs):
        v = venv()
        times.unlink(missing_ok=True)
        seconds = timed(command("bp-uv", v), env, cwd)
        inner = sum(int(x) for x in times.read_text().split()) / 1e9
        shutil.rmtree(v)
        own.append(seconds - inner)
        whole.append(seconds)
        floor.append(timed(pip_version, env, cwd))  # the yardstick (issue 22), in the same round
        for name, argv in floors.items():
            floor_times[name].append(timed(argv, env, cwd))
        print(f"run {i + 1}/{runs}: whole {seconds:5.3f}s, uv {inner:5.3f}s, backendpick {1000 * (seconds - inner):5.1f} ms"
              f", python -m pip --version {1000 * floor[-1]:5.1f} ms, "
              + ", ".join(f"{name} {1000 * t[-1]:5.1f} ms" for name, t in floor_times.items()), flush=True)
    mine, pip = statistics.median(own), statistics.median(floor)
    print(f"median: backendpick's own time {1000 * mine:.1f} ms (whole {statistics.median(whole):.3f}s); "
          f"python -m pip --version {1000 * pip:.1f} ms; ratio {mine / pip:.2f}x (goal <= 0.35x: "
          f"{'met' if mine / pip <= 0.35 else 'not met'})")
    for name, t in floor_times.items():
        print(f"floor: {name} {1000 * statistics.median(t):.1f} ms = {statistics.median(t) / pip:.2f}x pip --version")
    print(f"floor's import line: {FLOOR}")
    result = {"bench": "overhead", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "seconds": {"own": own, "whole": whole, "pip_version": floor, **floor_times},
              "median": {"own": mine, "pip_version": pip, **{k: statistics.median(t) for k, t in floor_times.items()}},
              "ratio": {"own_vs_pip_version": round(mine / pip, 3),
                        **{f"{k} vs pip_version": round(statistics.median(t) / pip, 3) for k, t in floor_times.items()}},
              "goal": 0.35, "met": mine / pip <= 0.35, "floor_imports": FLOOR}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders of wheels (default: this machine's mirror)")
    parser.add_argument("--runs", type=int, default=3, help="samples per measurement (default 3)")
    parser.add_argument("--tmp", type=Path, default=None, help="where venvs and caches go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", default="", metavar="TOOLS",
                        help="comma-separated subset of pip,uv,bp-pip,bp-uv (ratios need a tool and its bp- twin)")
    parser.add_argument("--warm-only", action="store_true", help="measure warm caches only")
    parser.add_argument("--cold-only", action="store_true", help="measure cold caches only")
    parser.add_argument("--large", action="store_true",
                        help=f"torch and {len(LARGE) - len(REQUIREMENTS)} ordinary packages instead of torch and torchvision")
    parser.add_argument("--overhead", action="store_true",
                        help="only backendpick's own time around a warm uv install (see the module doc)")
    opts = parser.parse_args()

    requirements = LARGE if opts.large else REQUIREMENTS
    folders = opts.folders or list(DEFAULT_FOLDERS)
    missing = [f for f in folders if not f.is_dir()]
    if missing or not any((f / TORCH_WHEEL).is_file() for f in folders):
        print(f"skipped: the real-wheel benchmark needs {TORCH_WHEEL} and its dependencies in "
              f"{', '.join(map(str, folders))} ({'missing: ' + ', '.join(map(str, missing)) if missing else 'no torch wheel'})")
        return
    uv = find_uv()
    tmp = Path(tempfile.mkdtemp(prefix="bench-real-", dir=opts.tmp))
    httpd = None
    try:
        count = make_mirror(folders, tmp / "mirror")
        httpd, base = serve(tmp / "mirror")
        index_url = f"{base}/{BACKEND}/simple"
        env = base_env(tmp, f"{base}/{{backend}}/simple")
        # The user's pip configuration names the mirror, as the plain tools' --index-url does:
        # backendpick's resolution and rest phase read it (uv gets it as --index-url).
        env["PIP_INDEX_URL"] = index_url
        cwd = tmp / "project"
        cwd.mkdir()
        backendpick = installed_backendpick(tmp)
        print(f"mirror: {count} wheels from {', '.join(map(str, folders))} at {index_url}", flush=True)
        n = 0

        def venv() -> Path:
            nonlocal n
            n += 1
            path = tmp / "venvs" / f"v{n}"
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, env=env)
            return path

        def caches(kind: str, cache: Path) -> dict[str, str]:
            return {**env, "PIP_CACHE_DIR": str(cache)} if kind == "pip" else {**env, "UV_CACHE_DIR": str(cache)}

        def command(tool: str, v: Path) -> list[str]:
            py = str(v / "bin" / "python")
            if tool == "pip":
                return [py, "-m", "pip", "install", "--index-url", index_url, *requirements]
            if tool == "uv":
                return [uv, "pip", "install", "--python", py, "--no-config", "--index-url", index_url, *requirements]
            engine = tool.split("-")[1]
            return [*backendpick, "install", "--python", py, "--backend", BACKEND,
                    "--installer", engine, *requirements]

        if opts.overhead:
            # The console script's own interpreter (else this one, running the checkout in place).
            python = str(Path(backendpick[0]).with_name("python")) if len(backendpick) == 1 else sys.executable
            overhead(opts.runs, tmp, venv, command, uv, caches("uv", tmp / "warm-uv-cache"), cwd, python, opts.out)
            return
        tools = tuple(t for t in ("pip", "uv", "bp-pip", "bp-uv") if not opts.only or t in opts.only.split(","))
        states = ("warm",) if opts.warm_only else ("cold",) if opts.cold_only else ("cold", "warm")
        warm_cache = {"pip": tmp / "warm-pip-cache", "uv": tmp / "warm-uv-cache"}
        # Warm-up, not measured: fills the warm caches (each tool's: uv's or pip's, and for
        # backendpick also its own cache of index pages), compiles bytecode, pages the wheels
        # into the OS cache (every sample then reads them from memory alike).
        for tool in [k for k in ("pip", "uv") if any(t.endswith(k) for t in tools)] + \
                [t for t in tools if t.startswith("bp-") and "warm" in states]:
            kind = "pip" if tool.endswith("pip") else "uv"
            v = venv()
            print(f"warm-up: {tool} ... ", end="", flush=True)
            print(f"{timed(command(tool, v), caches(kind, warm_cache[kind]), cwd):.1f}s", flush=True)
            shutil.rmtree(v)
        samples: dict[str, list[float]] = {f"{t} {c}": [] for t in tools for c in states}
        for i in range(opts.runs):
            for tool in tools:
                kind = "pip" if tool.endswith("pip") else "uv"
                for state in states:
                    cache = tmp / "cold-cache" if state == "cold" else warm_cache[kind]
                    v = venv()
                    seconds = timed(command(tool, v), caches(kind, cache), cwd)
                    samples[f"{tool} {state}"].append(seconds)
                    shutil.rmtree(v)
                    if state == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
                    print(f"run {i + 1}/{opts.runs}: {tool:7s} {state}: {seconds:6.2f}s", flush=True)

        med = {k: statistics.median(v) for k, v in samples.items()}
        ratios = {f"backendpick {e} / plain {e}, {c}": med[f"bp-{e} {c}"] / med[f"{e} {c}"]
                  for e in ("pip", "uv") for c in states if f"bp-{e} {c}" in med and f"{e} {c}" in med}
        print("\nmedians (s):")
        for k, v in med.items():
            print(f"  {k:12s} {v:7.2f}")
        print("ratios:")
        for k, v in ratios.items():
            print(f"  {k:36s} {v:5.2f}x")
        warm_uv = ratios.get("backendpick uv / plain uv, warm")
        if warm_uv is not None:
            print(f"goal: backendpick uv within {GOAL_UV_WARM}x of plain uv on a warm cache: "
                  f"{'met' if warm_uv <= GOAL_UV_WARM else 'MISSED'} ({warm_uv:.2f}x)")
        cold_uv = ratios.get("backendpick uv / plain uv, cold")
        if cold_uv is not None and opts.large:
            print(f"goal: backendpick uv within {GOAL_UV_COLD_LARGE}x of plain uv on a cold cache, {len(requirements)} "
                  f"requirements: {'met' if cold_uv <= GOAL_UV_COLD_LARGE else 'MISSED'} ({cold_uv:.2f}x)")
        pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                                     text=True).stdout.split()[1]
        uv_version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.split()[1]
        result = {
            "bench": "real",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": opts.runs,
            "requirements": requirements,
            "folders": [str(f) for f in folders],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "pip": pip_version, "uv": uv_version},
            "seconds": samples,
            "median": med,
            "ratio": {k: round(v, 3) for k, v in ratios.items()},
            "goal": {"backendpick uv / plain uv, warm": GOAL_UV_WARM,
                     **({"backendpick uv / plain uv, cold": GOAL_UV_COLD_LARGE} if opts.large else {})},
        }
        opts.out.mkdir(parents=True, exist_ok=True)
        path = opts.out / f"real-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    finally:
        if httpd is not None:
            httpd.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
