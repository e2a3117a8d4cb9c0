"""Virtual environments for the tests (their environment: ``tests.support.hermetic``).

A template venv is created once per session; tests get cheap copies of it.
Always run pip as ``<venv>/bin/python -m pip``: console scripts copied from the
template are rewritten, but ``-m pip`` cannot go wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.hermetic import subprocess_env


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv``."""
    venv = Path(venv)
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _scripts_dir(venv: Path) -> Path:
    return Path(venv) / ("Scripts" if os.name == "nt" else "bin")


def write_pip_conf(
    path: Path,
    *,
    index_url: str | None = None,
    extra_index_urls: Iterable[str] = (),
    find_links: Iterable[str] = (),
    **settings: str | bool,
) -> Path:
    """Write a ``[global]`` pip config; ``settings`` keys use ``_`` for ``-``."""
    lines = ["[global]"]
    if index_url is not None:
        lines.append(f"index-url = {index_url}")
    extras = list(extra_index_urls)
    if extras:
        lines.append("extra-index-url = " + " ".join(extras))
    links = list(find_links)
    if links:
        lines.append("find-links = " + " ".join(links))
    for key, value in settings.items():
        text = ("true" if value else "false") if isinstance(value, bool) else value
        lines.append(f"{key.replace('_', '-')} = {text}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_template_venv(
    path: Path,
    python: str | Path = sys.executable,
    *,
    keep_setuptools: bool = False,
) -> Path:
    """Create a venv with pip at ``path`` and return it.

    Python <= 3.11 venvs also get setuptools from ensurepip, 3.12+ do not; it is
    removed unless ``keep_setuptools`` so tests behave the same on every Python.
    """
    path = Path(path)
    env = subprocess_env()
    subprocess.run(
        [str(python), "-m", "venv", str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if not keep_setuptools:
        # "Skipping ... not installed" on 3.12+, still exit status 0.
        subprocess.run(
            [
                str(venv_python(path)),
                "-m",
                "pip",
                "uninstall",
                "-y",
                "-q",
                "setuptools",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    return path


def clone_venv(template: Path, dest: Path) -> Path:
    """Copy ``template`` to ``dest`` and return ``dest``.

    ``bin/python`` stays a symlink to the base interpreter; Python finds
    ``pyvenv.cfg`` next to the unresolved executable path, so the copy is a
    venv of its own. Script shebangs and activate files hard-code the template
    path, so they are rewritten (as new files).

    The other files are hard links to the template's (a copy where the filesystem refuses): a
    clone takes 0.03 s instead of 0.2, and the suite makes about 150. pip never writes into an
    installed file (it installs new files and moves old ones away), nor does Python (bytecode is
    written to a new file, then renamed), so a clone's changes stay its own. A test must not
    write into a file it did not create inside a venv; ``template_changes`` finds one that did.
    """
    template, dest = Path(template), Path(dest)
    shutil.copytree(template, dest, symlinks=True, copy_function=_link_or_copy)
    old, new = str(template), str(dest)
    for file in [*_scripts_dir(dest).iterdir(), dest / "pyvenv.cfg"]:
        if file.is_symlink() or not file.is_file():
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary launcher (Windows); nothing to rewrite
        if old in text:
            mode = file.stat().st_mode
            file.unlink()  # a link to the template's file: write a file of its own
            file.write_text(text.replace(old, new), encoding="utf-8")
            file.chmod(mode)
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fingerprint(venv: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of each regular file under ``venv``, by relative path."""
    venv = Path(venv)
    found = {}
    for path in venv.rglob("*"):
        if not path.is_symlink() and path.is_file():
            stat = path.stat()
            found[str(path.relative_to(venv))] = (stat.st_size, stat.st_mtime_ns)
    return found


def template_changes(venv: Path, before: Mapping[str, tuple[int, int]]) -> list[str]:
    """The files of ``venv`` that differ from ``before`` (its ``fingerprint``): written into through
    a clone's hard link, or added or removed in the template itself."""
    now = fingerprint(venv)
    return sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))


def site_packages(venv: Path) -> Path:
    """The one site-packages folder of ``venv`` (POSIX layout)."""
    [site] = (venv / "lib").glob("python3*/site-packages")
    return site


def files_of(venv: Path) -> dict[str, str]:
    """Every file of ``venv``'s site-packages (sha256), bytecode and the kill hooks of
    test_restore_exact aside; each RECORD as the set of its rows less bytecode (pip orders rows as
    the wheel's RECORD does, and a .pyc holds its compile time). Two equal results: the same
    distributions with the same files, INSTALLER and direct_url.json included."""
    site = site_packages(venv)
    out = {}
    for path in sorted(site.rglob("*")):
        rel = path.relative_to(site).as_posix()
        if not path.is_file() or "__pycache__" in rel or rel.startswith(("_bp_killhook", "zz-bp-killhook")):
            continue
        if path.name == "RECORD":
            rows = sorted(r for r in path.read_text().splitlines() if ".pyc," not in r)
            out[rel] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_in_venv(
    venv: Path,
    *args: str,
    env: Mapping[str, str],
    timeout: float = 180,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``<venv python> *args``, capturing text; never raises on failure."""
    return subprocess.run(
        [str(venv_python(venv)), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_LIST_DISTS = (
    "import importlib.metadata as m, json, re\n"
    "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
    " for d in m.distributions()}))"
)


def installed_versions(venv: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``{normalized name: version}`` of every distribution installed in ``venv``."""
    proc = run_in_venv(venv, "-c", _LIST_DISTS, env=env, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"listing distributions in {venv} failed:\n{proc.stderr}")
    result: dict[str, str] = json.loads(proc.stdout)
    return result
