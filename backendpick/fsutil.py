"""Small file-system helpers shared by everything that writes backendpick's state."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` so that a reader (or a later run after a crash, a full disk or
    a kill -9) sees the old content or the new, never a truncated file: a temporary file in the
    same directory, flushed to disk, then renamed over ``path`` (``os.replace`` is atomic on
    one file system)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
