"""write_atomic: the old content or the new, never a half-written file, and never someone
else's file (the temporary name is created with O_EXCL, as tempfile.mkstemp would)."""

from __future__ import annotations

import os

import pytest

from backendpick.edges import durable


def test_writes_and_keeps_the_mode(tmp_path):
    path = tmp_path / "pip.conf"
    durable.write_atomic(path, "a\n")
    assert path.read_text() == "a\n" and path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    durable.write_atomic(path, "b\n")
    assert path.read_text() == "b\n" and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pip.conf"]  # no temporary file left


def test_a_taken_temporary_name_is_skipped(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    names = iter([b"\x00" * 6, b"\x00" * 6, b"\x01" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(names))
    taken = tmp_path / f".state.json.{'00' * 6}.tmp"
    taken.write_text("another writer's")
    durable.write_atomic(path, "new")
    assert path.read_text() == "new" and taken.read_text() == "another writer's"


def test_no_free_name_is_an_error_not_an_overwrite(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "urandom", lambda n: b"\x00" * n)
    (tmp_path / f".x.{'00' * 6}.tmp").write_text("kept")
    with pytest.raises(FileExistsError):
        durable.write_atomic(tmp_path / "x", "new")
    assert not (tmp_path / "x").exists()


def test_a_failed_write_leaves_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        durable.write_atomic(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
