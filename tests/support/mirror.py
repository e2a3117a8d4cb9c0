"""A password-protected company mirror on the session's test server, and the means to prove
that its password goes nowhere (issue 19).

* ``secure_copy``: a copy of one of the world's index folders under ``sec-<name>`` that answers
  only with HTTP Basic auth (``IndexServer.require_auth``);
* ``record_python``: a pip shim, a ``.pth`` file in a venv that appends the command line of
  every process of that venv's Python (pip, its build backends, backendpick's probes) to a log,
  read from ``/proc/self/cmdline``: exactly what any local user can read;
* ``uv_wrapper``: the same for uv, an executable to name in ``BACKENDPICK_UV``;
* ``fake_keyring``: a ``keyring`` executable answering ``keyring get URL USER`` as the real
  one does, logging its command line too;
* ``leaks``: every file under some folders, and every text, that holds the secret.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from tests.support.index import IndexServer

USER = "alice"
SECRET = "pw-5ecret-19"
ARGV_LOG = "BP_TEST_ARGV_LOG"  # the variable naming the log of the pip shim


def secure_copy(server: IndexServer, name: str) -> str:
    """``sec-<name>``: the index folder ``name`` copied (once per session) and put behind Basic
    auth of USER/SECRET; its name."""
    secured = f"sec-{name}"
    directory = server.root / secured
    if not directory.is_dir():
        staging = server.root / f".{secured}.tmp"  # dot names are never served
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(server.index_dir(name), staging)
        staging.rename(directory)
    server.require_auth(secured, USER, SECRET)
    return secured


def with_password(url: str) -> str:
    return url.replace("://", f"://{USER}:{SECRET}@", 1)


_SHIM = ("import os; p = os.environ.get({var!r}); "
         "p and open(p, 'a').write(open('/proc/self/cmdline', 'rb').read().replace(bytes(1), b' ')"
         ".decode('utf-8', 'replace') + '\\n')\n")


def record_python(venv: Path) -> None:
    """Log the command line of every process of ``venv``'s Python to the file ``BP_TEST_ARGV_LOG``
    names (a ``.pth`` file runs at every start of that interpreter)."""
    purelib = next(venv.glob("lib/python3*/site-packages"), None) or venv / "Lib" / "site-packages"
    (purelib / "zz_bp_argv_log.pth").write_text(_SHIM.format(var=ARGV_LOG))


def uv_wrapper(folder: Path, log: Path) -> Path:
    """An executable that logs its command line to ``log`` and runs the real uv."""
    from uv import find_uv_bin

    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "uv"
    wrapper.write_text(f'#!/bin/sh\necho "uv $*" >> "{log}"\nexec "{find_uv_bin()}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def fake_keyring(folder: Path, log: Path) -> Path:
    """A ``keyring`` executable on ``folder``: ``keyring get SERVICE USER`` prints SECRET for
    USER (any service), exits 1 otherwise, as the real one does without an entry."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "keyring"
    exe.write_text(f'#!/bin/sh\necho "keyring $*" >> "{log}"\n'
                   f'if [ "$1" = get ] && [ "$3" = {USER} ]; then echo {SECRET}; else exit 1; fi\n')
    exe.chmod(0o755)
    return exe


def leaks(roots: Iterable[Path], texts: dict[str, str] | None = None) -> list[str]:
    """Each file under ``roots`` and each named text holding SECRET (bytes, any encoding of it
    that pip or a log might use: as is, or percent-encoded)."""
    needles = (SECRET.encode(), SECRET.replace("-", "%2D").encode())
    found = [name for name, text in (texts or {}).items() if any(n.decode() in text for n in needles)]
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    found.append(str(path))
    return found
