"""Virtual environments and hermetic subprocess environments for pip.

A template venv is created once per session; tests get cheap copies of it.
Always run pip as ``<venv>/bin/python -m pip``: console scripts copied from the
template are rewritten, but ``-m pip`` cannot go wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# Variables that would leak the runner's interpreter or target into child pythons.
_DROPPED_VARS = {
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "__PYVENV_LAUNCHER__",
}
_PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)
# Nothing listens on the discard port, so any non-local request fails at once.
_DEAD_PROXY = "http://127.0.0.1:9"
_LOCAL_HOSTS = "127.0.0.1,localhost"


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv``."""
    venv = Path(venv)
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _scripts_dir(venv: Path) -> Path:
    return Path(venv) / ("Scripts" if os.name == "nt" else "bin")


def hermetic_env(
    pip_conf: Path,
    extra: Mapping[str, str] | None = None,
    *,
    cache_dir: Path | None = None,
) -> dict[str, str]:
    """``os.environ`` made safe for pip subprocesses.

    All ``PIP_*`` variables are removed and ``PIP_CONFIG_FILE`` points at
    ``pip_conf``, which makes pip skip the user config file (global files such
    as /etc/pip.conf are still read; pip offers no way to skip them).
    Proxies point at a dead local port with 127.0.0.1 exempt, so anything that
    tries the real network fails fast instead of silently succeeding. The pip
    cache is disabled unless ``cache_dir`` (or ``PIP_CACHE_DIR`` in ``extra``)
    is given, so built wheels are never reused across tests. ``extra`` is
    applied last and may override anything.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("PIP_") and key not in _DROPPED_VARS
    }
    env["PIP_CONFIG_FILE"] = str(pip_conf)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for var in _PROXY_VARS:
        env[var] = _DEAD_PROXY
    env["no_proxy"] = env["NO_PROXY"] = _LOCAL_HOSTS
    extra = dict(extra or {})
    if cache_dir is not None:
        extra.setdefault("PIP_CACHE_DIR", str(cache_dir))
    if "PIP_CACHE_DIR" not in extra:
        # PIP_NO_CACHE_DIR would win over any PIP_CACHE_DIR, so set only one.
        env["PIP_NO_CACHE_DIR"] = "1"
    env.update(extra)
    return env


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
    env = hermetic_env(Path(os.devnull))
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
    path, so they are rewritten.
    """
    template, dest = Path(template), Path(dest)
    shutil.copytree(template, dest, symlinks=True)
    old, new = str(template), str(dest)
    for file in [*_scripts_dir(dest).iterdir(), dest / "pyvenv.cfg"]:
        if file.is_symlink() or not file.is_file():
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary launcher (Windows); nothing to rewrite
        if old in text:
            file.write_text(text.replace(old, new), encoding="utf-8")
    return dest


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
