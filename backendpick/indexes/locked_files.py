"""The files a lock names, fetched and checked before anything changes (``install --lock``).

Each file is kept in the cache folder's ``locked/<sha256>/<file name>``: a copy there whose
hash still matches is used as it is (a warm cache installs offline, as pip's would); anything
else is downloaded from its locked URL (through the run's transport: the user's certificate,
proxy and credentials) and checked. A file whose sha256 is not the lock's is refused, naming
it, and install stops before its first change. No index page is read: only the locked URLs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

from backendpick.errors import ConfigError, InstallError
from backendpick.redaction import redact
from backendpick.target.distfiles import sha256_file


def cached_path(root: Path, sha256: str, name: str) -> Path:
    """Where a locked file is kept (its name without any folder part)."""
    return root / sha256 / Path(name).name


def fetch(files: Iterable, session, root: Path, on_note: Callable[[str], None]) -> dict[str, Path]:
    """``files``: (package name, model.lock.LockedFile). Returns package name -> checked local file.
    ConfigError (exit 2) when a file does not match its locked hash."""
    out: dict[str, Path] = {}
    for name, f in files:
        dest = cached_path(root, f.sha256, f.name)
        if dest.is_file() and sha256_file(dest) == f.sha256:
            out[name] = dest
            continue
        _get(f.url, dest, session, on_note)
        got = sha256_file(dest)
        if got != f.sha256:
            bad = dest.with_name(dest.name + ".mismatch")
            os.replace(dest, bad)
            raise ConfigError(
                f"{name}: {redact(f.url)} has sha256 {got}, the lock says {f.sha256}; nothing was changed",
                hint="the lock file or the server's file was altered: lock again with backendpick lock, or "
                     "restore the lock from version control")
        out[name] = dest
    return out


def _get(url: str, dest: Path, session, on_note: Callable[[str], None]) -> None:
    parts = urlsplit(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if parts.scheme == "file":
        import shutil

        part = dest.with_name(dest.name + ".part")
        try:
            shutil.copyfile(unquote(parts.path), part)
        except OSError as exc:
            raise InstallError(f"cannot read the locked file {unquote(parts.path)}: {exc.strerror or exc}") from None
        os.replace(part, dest)
        return
    on_note(f"downloading {redact(url)}")
    try:
        session.download(url, dest)
    except OSError as exc:
        raise InstallError(f"cannot download the locked file {redact(url)}: {exc}",
                           hint="a warm cache (the cache folder's locked/) installs without the network") from None
