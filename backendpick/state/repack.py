"""A wheel made back from an installed distribution, so what is removed can be put back.

A torch that no index serves (NVIDIA's ``2.4.0a0+f70bd71a48.nv24.6``, one built from source),
flash-attn built against the torch installed then: once pip uninstalls them, nothing brings
them back. Before backendpick lets anything remove one, ``repack`` writes a wheel of exactly
the files its RECORD lists, each checked against the hash RECORD gives it, with a correct
RECORD of its own: pip installs it back byte for byte (issue 18).

What does not go into the wheel, because the installer makes it again: bytecode, the console
scripts of ``entry_points.txt``, and INSTALLER, REQUESTED and direct_url.json (restore writes
the recorded ones back). A script of the wheel's own gets its ``#!python`` line back, which pip
turns into this interpreter again; a data or header file outside the install folder goes to
``name.data/data``, relative to the environment's prefix, where pip installs it again.

What cannot be repacked says why (``NotRepackable``): no RECORD (a distutils or egg install,
``setup.py develop``), an editable install (its files are a source tree), a file changed or
gone since it was installed, a file outside the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from backendpick.edges.durable import fsync_dir, fsync_file
from backendpick.target import distfiles
from backendpick.target.distfiles import Row

# The copy is made while the user waits for an install, so speed comes first: files of a MiB and
# more (torch's shared libraries: 14 files, 1054 of the 1146 MB of torch 2.14.1) are stored as
# they are, smaller ones compressed at level 1. Measured on that torch: 1146 MB in about 6 s
# stored, 584 MB in 17 s at level 1, 554 MB in 30 s at pip's level 6 (bench/README.md).
COMPRESSLEVEL = 1
STORE_FROM = 1 << 20


class NotRepackable(Exception):
    """A distribution whose installed files cannot be made into a wheel again, and why."""


@dataclass(frozen=True)
class Layout:
    """Where an environment's installers put what is not in the install folder."""

    prefix: Path  # sys.prefix: data files go there, relative
    scripts: Path  # bin/ (Scripts\\ on Windows)
    tag: str  # a wheel tag of the interpreter, for a dist-info without a WHEEL file

    @classmethod
    def of(cls, target) -> Layout:
        """The layout of a ``target.Target``."""
        scripts = "Scripts" if target.markers.get("sys_platform") == "win32" else "bin"
        return cls(Path(target.prefix), Path(target.prefix) / scripts, target.tags[0] if target.tags else "py3-none-any")


@dataclass(frozen=True)
class Repacked:
    wheel: Path
    size: int
    sha256: str
    identity: str
    seconds: float


def editable(dist_info: Path) -> str | None:
    """The source folder of an editable install (PEP 610 ``dir_info.editable``), else None."""
    try:
        data = json.loads((dist_info / "direct_url.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("url") or "?" if isinstance(data, dict) and data.get("dir_info", {}).get("editable") else None


def _entry_points(dist_info: Path) -> set[str]:
    """Names of the console and GUI scripts pip generates from entry_points.txt."""
    names, section = set(), ""
    try:
        text = (dist_info / "entry_points.txt").read_text(encoding="utf-8")
    except OSError:
        return names
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif "=" in line and section in ("console_scripts", "gui_scripts"):
            names.add(line.split("=", 1)[0].strip())
    return names


def _generated(name: str, entry_points: set[str]) -> bool:
    for suffix in (".exe", "-script.py", ".pya"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name in entry_points


def _arcname(row: Row, base: Path, layout: Layout, data_dir: str, entry_points: set[str]) -> tuple[str | None, bool]:
    """Where ``row``'s file goes in the wheel (None: the installer makes it), and whether it is
    a script whose ``#!`` line pip rewrote."""
    if not row.outside:
        return row.path, False
    path = Path(os.path.normpath(base / row.path))
    if path.parent == layout.scripts:
        if _generated(path.name, entry_points):
            return None, False
        return f"{data_dir}/scripts/{path.name}", True
    try:
        relative = path.relative_to(layout.prefix)
    except ValueError:
        raise NotRepackable(f"RECORD lists {path}, outside the environment ({layout.prefix})") from None
    return f"{data_dir}/data/{relative.as_posix()}", False


_SHEBANG = re.compile(rb"^#![^\n]*python[^\n]*\n")


def _unrewritten(first: bytes) -> bytes:
    """A script's first chunk with pip's ``#!/path/to/python`` turned back into ``#!python``."""
    m = _SHEBANG.match(first)
    return b"#!python\n" + first[m.end():] if m else first


def _info(arcname: str, mode: int = 0o644, size: int = 0) -> zipfile.ZipInfo:
    """An entry with a fixed date (pip does not keep dates; the same files make the same wheel)
    and the file's permission bits (pip keeps the executable bit)."""
    info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = ((mode & 0o777) | 0o100000) << 16
    info.compress_type = zipfile.ZIP_STORED if size >= STORE_FROM else zipfile.ZIP_DEFLATED
    info._compresslevel = COMPRESSLEVEL  # a ZipInfo given to open() or writestr() brings its own level
    return info


def _copy_checked(zf: zipfile.ZipFile, source: Path, arcname: str, row: Row, script: bool) -> tuple[str, int]:
    """Stream ``source`` into the wheel while hashing it; NotRepackable when it is not what
    RECORD says. Returns the RECORD hash and size of what went into the wheel."""
    try:
        st = source.stat()
        f = open(source, "rb")
    except OSError as exc:
        raise NotRepackable(f"{row.path} is missing ({exc.strerror or exc})") from None
    info = _info(arcname, st.st_mode, st.st_size)
    on_disk = distfiles.hasher(row.hash)
    written = distfiles.hasher(None)
    size = out = 0
    with f, zf.open(info, "w", force_zip64=st.st_size > (1 << 30)) as dest:
        first = True
        for chunk in iter(lambda: f.read(distfiles.CHUNK), b""):
            on_disk.update(chunk)
            size += len(chunk)
            if first and script:
                chunk = _unrewritten(chunk)
            first = False
            written.update(chunk)
            out += len(chunk)
            dest.write(chunk)
    if script:
        return distfiles.record_hash(written.digest()), out  # its #! line names the interpreter: moving a venv rewrites it
    if row.hash is not None and distfiles.record_hash(on_disk.digest(), on_disk.name) != row.hash:
        raise NotRepackable(f"{row.path} was changed since it was installed (its hash is not RECORD's)")
    if row.size is not None and size != row.size:
        raise NotRepackable(f"{row.path} was changed since it was installed ({size} bytes, RECORD says {row.size})")
    return distfiles.record_hash(written.digest()), out


def _tags(wheel_text: str | None, layout: Layout) -> str:
    tags = [line.split(":", 1)[1].strip() for line in (wheel_text or "").splitlines() if line.startswith("Tag:")]
    tags = tags or [layout.tag]
    parts: tuple[list, list, list] = ([], [], [])
    for tag in tags:
        for bucket, value in zip(parts, tag.split("-")):
            if value not in bucket:
                bucket.append(value)
    return "-".join(".".join(b) for b in parts)


def _escape(text: str) -> str:
    return re.sub(r"[^\w\d.+!]+", "_", text, flags=re.UNICODE)


def _metadata(dist_info: Path) -> tuple[str, str]:
    name = version = ""
    try:
        with open(dist_info / "METADATA", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key.lower() == "name" and not name:
                    name = value.strip()
                elif key.lower() == "version" and not version:
                    version = value.strip()
    except OSError:
        pass
    if not name or not version:
        raise NotRepackable(f"{dist_info} has no METADATA naming it")
    return name, version


def rows_to_repack(dist_info: Path) -> list[Row]:
    """The RECORD rows of an installed distribution that can be repacked, or NotRepackable."""
    where = editable(dist_info)
    if where is not None:
        raise NotRepackable(f"it is an editable install of {where}: its files are that source tree")
    if not dist_info.name.endswith(".dist-info"):
        raise NotRepackable(f"it is installed as {dist_info.name} (setup.py install or develop), "
                            "which lists no files with their hashes")
    try:
        rows = distfiles.read_record(dist_info)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise NotRepackable(f"its RECORD is not readable: {exc}") from None
    if rows is None:
        raise NotRepackable("it has no RECORD file, so which files are its own is unknown")
    return rows


def repack(dist_info: Path, dest: Path, layout: Layout) -> Repacked:
    """Write the wheel of the installed distribution ``dist_info`` into the folder ``dest``:
    durable (written under a temporary name, flushed to disk, renamed, the folder flushed)
    before it is returned, so a kill -9 right after cannot lose it."""
    started = time.monotonic()
    dist_info = Path(dist_info)
    rows = rows_to_repack(dist_info)
    name, version = _metadata(dist_info)
    wheel_text = None
    try:
        wheel_text = (dist_info / "WHEEL").read_text(encoding="utf-8")
    except OSError:
        pass
    filename = f"{_escape(name)}-{_escape(version)}-{_tags(wheel_text, layout)}.whl"
    data_dir = dist_info.name[: -len(".dist-info")] + ".data"
    entry_points = _entry_points(dist_info)
    keep = distfiles.own_rows(rows, dist_info.name) + [r for r in rows if r.outside]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{filename}.{os.getpid()}.part"
    try:
        _write(tmp, dist_info, keep, layout, data_dir, entry_points, wheel_text)
        fsync_file(tmp)
        final = dest / filename
        os.replace(tmp, final)
        fsync_dir(dest)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    # Every file was checked against its RECORD hash: the wheel's identity is the installed one.
    return Repacked(final, final.stat().st_size, distfiles.sha256_file(final),
                    distfiles.identity(rows, dist_info.name), time.monotonic() - started)


def _write(tmp: Path, dist_info: Path, rows: list[Row], layout: Layout, data_dir: str, entry_points: set[str],
           wheel_text: str | None) -> None:
    """The wheel's entries, dist-info last, and its RECORD."""
    base = dist_info.parent
    record: list[Row] = []
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESSLEVEL,
                         allowZip64=True) as zf:
        for row in sorted(rows, key=lambda r: (PurePosixPath(r.path).parts[:1] == (dist_info.name,), r.path)):
            arcname, script = _arcname(row, base, layout, data_dir, entry_points)
            if arcname is None:
                continue
            digest, size = _copy_checked(zf, Path(os.path.normpath(base / row.path)), arcname, row, script)
            record.append(Row(arcname, digest, size))
        if wheel_text is None:
            # A dist-info without WHEEL (some conda packages): the interpreter's own tag.
            text = f"Wheel-Version: 1.0\nGenerator: backendpick repack\nRoot-Is-Purelib: false\nTag: {layout.tag}\n"
            zf.writestr(_info(f"{dist_info.name}/WHEEL"), text)
            data = text.encode()
            record.append(Row(f"{dist_info.name}/WHEEL", distfiles.record_hash(hashlib.sha256(data).digest()), len(data)))
        lines = [f"{r.path},{r.hash},{r.size}" for r in record] + [f"{dist_info.name}/RECORD,,"]
        zf.writestr(_info(f"{dist_info.name}/RECORD"), "\n".join(lines) + "\n")


__all__ = ["Layout", "NotRepackable", "Repacked", "editable", "repack", "rows_to_repack"]
