"""Small file-system helpers shared by everything that writes backendpick's state."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` so that a reader (or a later run after a crash, a full disk or
    a kill -9) sees the old content or the new, never a truncated file: a temporary file in the
    same directory, flushed to disk, then renamed over ``path`` (``os.replace`` is atomic on
    one file system). The file keeps the mode it had; a new one is 0644 like any file pip reads
    (a pip.conf in a venv shared by several users), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
