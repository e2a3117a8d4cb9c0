"""Small file-system helpers shared by everything that writes backendpick's state."""

from __future__ import annotations

import os
from pathlib import Path


def _create_beside(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` (same directory, so the rename stays on one file system),
    created with O_EXCL like ``tempfile.mkstemp`` does; tempfile itself (with random and
    shutil) is not imported for it on every start."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_atomic(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` so that a reader (or a later run after a crash, a full disk or
    a kill -9) sees the old content or the new, never a truncated file: a temporary file in the
    same directory, flushed to disk, then renamed over ``path`` (``os.replace`` is atomic on
    one file system). The file keeps the mode it had; a new one is 0644 like any file pip reads
    (a pip.conf in a venv shared by several users), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a file just renamed into it) to disk: after a crash or a kill
    the new name is there, not only its data. Where folders cannot be opened (Windows) the
    rename stands as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file written by another means than ``write_atomic`` (a zip, a copy) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
