"""The files of an installed distribution, as its RECORD lists them (PEP 376, PEP 627).

An installer writes ``RECORD`` last: every file it put down, relative to the folder that holds
the ``*.dist-info`` folder, with the hash and size the wheel gave it. That is enough to tell
one build of a release from another (flash-attn 2.6.1 built against torch 2.5.1 or 2.7.1, the
same xformers version from two CUDA indexes) without reading a byte of the files: the
``identity`` of a distribution is a digest of its RECORD's rows for the wheel's own files.
Rows an installer adds (INSTALLER, REQUESTED, direct_url.json, RECORD itself, bytecode it
compiled, scripts it generated or rewrote for this interpreter) are left out, so the identity
of a wheel and of its installed files are the same, whoever installed it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# Files an installer writes into the dist-info folder itself (pip, uv, installer).
MARKERS = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"})
CHUNK = 1 << 20


@dataclass(frozen=True)
class Row:
    path: str  # as in RECORD: "/"-separated, relative to the folder holding the dist-info
    hash: str | None  # "sha256=<urlsafe base64, no padding>"; None: not recorded
    size: int | None

    @property
    def outside(self) -> bool:
        """A file outside the install folder (a script, a data or header file): ``../../bin/x``."""
        return _outside(self.path)


def _outside(path: str) -> bool:
    return path.startswith("../") or path.startswith("/")


def _entries(text: str) -> list[tuple[str, str | None, int | None]]:
    """(path, hash, size) of each row of a RECORD file; ValueError for one that is not RECORD's
    CSV. (Without a quote in it, as nearly every RECORD, a row is split at its last two commas:
    several times quicker than the csv module on torch's 15,000 rows.)"""
    entries = []
    lines = (line.rsplit(",", 2) for line in text.splitlines()) if '"' not in text else csv.reader(io.StringIO(text))
    for fields in lines:
        if len(fields) != 3:  # nearly every row has its three fields
            if len(fields) > 3:
                raise ValueError(f"a RECORD row has {len(fields)} fields: {fields!r}")
            fields = (fields + ["", "", ""])[:3]
        path, digest, size = fields
        if not path.strip():
            continue
        try:
            entries.append((path, digest or None, int(size) if size else None))
        except ValueError:
            raise ValueError(f"a RECORD row has no size in bytes: {fields!r}") from None
    return entries


def parse_record(text: str) -> list[Row]:
    """The rows of a RECORD file; ValueError for one that is not RECORD's CSV."""
    return [Row(*entry) for entry in _entries(text)]


def read_record(dist_info: Path) -> list[Row] | None:
    """The rows of ``dist_info``'s RECORD; None when it has none (a distutils or egg install,
    or an install that was stopped before its installer wrote RECORD)."""
    try:
        text = (Path(dist_info) / "RECORD").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return parse_record(text)


def record_hash(digest: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def hasher(row_hash: str | None):
    """A new hash object of the algorithm a RECORD hash names (sha256 when none)."""
    algorithm = (row_hash or "sha256=").split("=", 1)[0]
    try:
        return hashlib.new(algorithm)
    except ValueError:
        raise ValueError(f"RECORD names an unknown hash algorithm {algorithm!r}") from None


def hash_file(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    """RECORD's hash of a file and its size, read in chunks (a torch library is gigabytes)."""
    h = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return record_hash(h.digest(), algorithm), size


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (what a wheel's ``#sha256=`` fragment carries)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _bytecode(path: str, listed: set[str]) -> bool:
    """``pkg/__pycache__/m.cpython-311.pyc`` of a listed ``pkg/m.py``: compiled by the
    installer, so not part of the wheel. (String operations: torch has 12,000 rows.)"""
    if not path.endswith(".pyc"):
        return False
    head, _, name = path.rpartition("/")
    if head != "__pycache__" and not head.endswith("/__pycache__"):
        return False
    return head[: -len("__pycache__")] + name.split(".", 1)[0] + ".py" in listed


def _own(paths: Iterable[str], dist_info_name: str) -> list[bool]:
    """For each of a RECORD's ``paths``: whether it is one of the wheel's own files inside the
    install folder (no installer marker, no bytecode it compiled, nothing outside)."""
    paths = list(paths)
    listed = set(paths)
    markers = {f"{dist_info_name}/{m}" for m in MARKERS}
    return [not _outside(p) and p not in markers and not _bytecode(p, listed) for p in paths]


def own_rows(rows: Iterable[Row], dist_info_name: str) -> list[Row]:
    """The rows of the wheel's own files inside the install folder: no installer markers, no
    bytecode it compiled, nothing outside (scripts are rewritten for the interpreter)."""
    rows = list(rows)
    return [r for r, own in zip(rows, _own((r.path for r in rows), dist_info_name)) if own]


def identity(rows: Iterable[Row], dist_info_name: str) -> str:
    """A digest of the wheel's own files (path and hash of each): equal for two installs of one
    wheel, different for two builds of one version."""
    return _digest([(r.path, r.hash) for r in rows], dist_info_name)


def _digest(files: list[tuple[str, str | None]], dist_info_name: str) -> str:
    own = _own((path for path, _hash in files), dist_info_name)
    lines = sorted(f"{path},{digest or ''}" for (path, digest), mine in zip(files, own) if mine)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def installed_identity(dist_info: Path) -> str | None:
    """``identity`` of an installed distribution; None without a readable RECORD. From the
    RECORD's text, without a ``Row`` per line: a snapshot takes this of every distribution in
    the environment, 18,000 rows with torch's CUDA wheels (~35 ms as rows, issue 22 item 2)."""
    try:
        text = (Path(dist_info) / "RECORD").read_text(encoding="utf-8")
        entries = _entries(text)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return _digest([(path, digest) for path, digest, _size in entries], Path(dist_info).name)


def wheel_identity(wheel: Path) -> str | None:
    """``identity`` of a wheel file, from the RECORD inside it (``name.data/purelib`` and
    ``platlib`` files count as installed into the install folder, as a venv has it). None when
    it is not a readable wheel."""
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            record = next((n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")), None)
            if record is None:
                return None
            rows = parse_record(zf.read(record).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, zipfile.BadZipFile):
        return None
    mapped = []
    for r in rows:
        parts = r.path.split("/", 2)
        if parts[0].endswith(".data"):
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue
            r = Row(parts[2], r.hash, r.size)
        mapped.append(r)
    return identity(mapped, record.split("/", 1)[0])


def damaged(dist_info: Path, rows: Iterable[Row] | None = None) -> str | None:
    """The first of ``dist_info``'s own files that is missing or has another size than its
    RECORD says (a stat per file, nothing read), or None. A half-done uninstall leaves the
    dist-info folder behind with its files gone."""
    dist_info = Path(dist_info)
    if rows is None:
        try:
            rows = read_record(dist_info)
        except (OSError, ValueError, UnicodeDecodeError):
            return f"{dist_info / 'RECORD'} is not readable"
        if rows is None:
            return f"{dist_info} has no RECORD"
    base = dist_info.parent
    for r in own_rows(rows, dist_info.name):
        try:
            size = os.stat(base / r.path).st_size
        except OSError:
            return f"{r.path} is missing"
        if r.size is not None and size != r.size:
            return f"{r.path} has {size} bytes, RECORD says {r.size}"
    return None


__all__ = ["MARKERS", "Row", "damaged", "hash_file", "hasher", "identity", "installed_identity", "own_rows",
           "parse_record", "read_record", "record_hash", "sha256_file", "wheel_identity"]
