"""The one recipe for the environment of every process a test starts (pip, backendpick, python).

``subprocess_env`` builds it from an allow-list, never by copying ``os.environ`` and deleting what is
known to be dangerous: whatever the runner's machine sets (``PIP_*``, ``UV_*``, CA bundles,
``BACKENDPICK_*``, ``CUDA_*``, ``*_VISIBLE_DEVICES``, proxies, ``XDG_*``, ``HOME``) is simply not
there. pip reads ``pip/pip.conf`` under every ``XDG_CONFIG_DIRS`` entry even when
``PIP_CONFIG_FILE`` points elsewhere, so ``XDG_CONFIG_DIRS`` names an empty folder of this test
session. (``/etc/pip.conf`` is still read unless ``PIP_CONFIG_FILE`` is ``os.devnull``: pip offers
no switch for it.) ``PATH`` is the fake machine's folders plus a session copy of /usr/bin and /bin
without GPU tools, so the host's ``nvcc`` or ``nvidia-smi`` never answers for a fake machine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: fakehw imports nothing from here either
    from tests.support.fakehw import FakeMachine

# The only variables taken from the runner: locale, temp folder, and Windows' system root.
KEPT_VARS = ("LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TEMP", "TMP", "TZ", "SYSTEMROOT")
# Host tools that would answer for the fake machine's hardware or toolkit.
GPU_TOOLS = frozenset({
    "nvidia-smi", "nvcc", "rocminfo", "rocm_agent_enumerator", "rocm-smi", "amd-smi", "hipcc",
    "hipconfig", "xpu-smi", "sycl-ls", "clinfo",
})
SYSTEM_BIN = ("/usr/bin", "/bin")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# Nothing listens on the discard port, so any non-local request fails at once.
DEAD_PROXY = "http://127.0.0.1:9"
LOCAL_HOSTS = "127.0.0.1,localhost"

_session: Path | None = None


def session_dir() -> Path:
    """This process's folder for the recipe: an empty XDG config dir, a home, a cache, an
    empty CUDA home, an empty probe root and the filtered system bin. Removed at exit."""
    global _session
    if _session is None:
        root = Path(tempfile.mkdtemp(prefix="backendpick-tests-"))
        atexit.register(shutil.rmtree, root, True)
        for sub in ("xdg-config-dirs", "home/.config", "cache", "no-cuda", "no-hardware"):
            (root / sub).mkdir(parents=True)
        _fill_host_bin(root / "host-bin")
        _session = root
    return _session


def _fill_host_bin(dest: Path) -> None:
    dest.mkdir()
    for folder in SYSTEM_BIN:
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            link = dest / entry
            # /usr/bin first, like PATH=/usr/bin:/bin would find it.
            if entry not in GPU_TOOLS and not os.path.lexists(link):
                link.symlink_to(os.path.join(folder, entry))


def host_bin() -> Path:
    """/usr/bin and /bin as links, without the GPU tools (``GPU_TOOLS``)."""
    return session_dir() / "host-bin"


def subprocess_env(
    pip_conf: Path | str | None = None,
    *,
    machine: FakeMachine | None = None,
    home: Path | None = None,
    cache: Path | None = None,
    pip_cache: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a test subprocess.

    ``pip_conf``: the pip config file it sees (``PIP_CONFIG_FILE``); None means ``os.devnull``,
    which makes pip read no config file at all. ``machine``: the fake hardware (probe root, its
    tools first on PATH, its own variables such as ``CUDA_VERSION``); None is a machine without
    any hardware. ``home``/``cache``: HOME and XDG_CACHE_HOME (default: the session's).
    ``pip_cache``: pip's cache folder; None disables pip's cache, so no built wheel is reused
    across tests. ``extra`` is applied last and may override anything.
    """
    session = session_dir()
    home = Path(home) if home is not None else session / "home"
    env = {key: os.environ[key] for key in KEPT_VARS if key in os.environ}
    bins: list[str] = []
    cuda_home = session / "no-cuda"
    if machine is not None:
        env.update(machine.env)
        bins = [str(machine.bin), str(machine.sysbin)]
        if (machine.bin / "nvcc").exists():
            # torch and backendpick look in $CUDA_HOME/bin only when it is set.
            cuda_home = machine.bin.parent
    else:
        env["BACKENDPICK_PROBE_ROOT"] = str(session / "no-hardware")
    env.update(
        PATH=os.pathsep.join([*bins, str(host_bin())]),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CONFIG_DIRS=str(session / "xdg-config-dirs"),
        XDG_CACHE_HOME=str(cache if cache is not None else session / "cache"),
        CUDA_HOME=str(cuda_home),
        CUDA_PATH=str(cuda_home),
        PIP_CONFIG_FILE=str(pip_conf) if pip_conf is not None else os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PYTHONDONTWRITEBYTECODE="1",
        NO_COLOR="1",
        TERM="dumb",
        no_proxy=LOCAL_HOSTS,
        NO_PROXY=LOCAL_HOSTS,
    )
    for var in _PROXY_VARS:
        env[var] = DEAD_PROXY
    extra = dict(extra or {})
    if pip_cache is not None:
        extra.setdefault("PIP_CACHE_DIR", str(pip_cache))
    if "PIP_CACHE_DIR" not in extra:
        # PIP_NO_CACHE_DIR would win over any PIP_CACHE_DIR, so set only one.
        env["PIP_NO_CACHE_DIR"] = "1"
    env.update(extra)
    return env

