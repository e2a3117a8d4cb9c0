"""RECORD read and checked (target/distfiles.py), and a wheel made back from an installed distribution
(state/repack.py): its files are the installed ones, byte for byte, under a RECORD of its own; what
the installer makes again is left out; what cannot be repacked says why.

The installed distributions here are laid out as pip lays them out (files, then INSTALLER,
REQUESTED, direct_url.json, then RECORD with the installer's rows); the real pip round trip is
in tests/integration/test_restore_exact.py."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from backendpick.state import repack
from backendpick.target import distfiles
from tests.support.dists import make_wheel
from tests.support.installed import TAG, Installed, record_hash as _hash

def _entries(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


# -- RECORD ---------------------------------------------------------------------------------------


def test_record_rows_are_csv_with_optional_hash_and_size():
    rows = distfiles.parse_record('a/b.py,sha256=abc,12\n"a/with,comma.py",sha256=def,3\nx.dist-info/RECORD,,\n\n')
    assert rows == [distfiles.Row("a/b.py", "sha256=abc", 12), distfiles.Row("a/with,comma.py", "sha256=def", 3),
                    distfiles.Row("x.dist-info/RECORD", None, None)]
    with pytest.raises(ValueError, match="4 fields"):
        distfiles.parse_record('"a",b,1,extra\n')
    with pytest.raises(ValueError, match="no size"):
        distfiles.parse_record("a,b,1,extra\n")
    with pytest.raises(ValueError, match="no size"):
        distfiles.parse_record("a,sha256=x,big\n")


def test_identity_leaves_out_what_an_installer_adds(tmp_path: Path):
    one = Installed(tmp_path / "one")
    rows = distfiles.read_record(one.dist_info)
    own = {r.path for r in distfiles.own_rows(rows, one.dist_info.name)}
    assert own == {"demo/__init__.py", "demo/_ext.so", "demo_top.py", f"{one.dist_info.name}/METADATA",
                   f"{one.dist_info.name}/WHEEL"}
    # Another installer, another INSTALLER, no bytecode: the same distribution.
    other = [r for r in rows if "__pycache__" not in r.path and not r.path.endswith("INSTALLER")]
    other.append(distfiles.Row(f"{one.dist_info.name}/INSTALLER", _hash(b"uv\n"), 3))
    assert distfiles.identity(other, one.dist_info.name) == distfiles.installed_identity(one.dist_info)
    # One byte of one file different (flash-attn built against another torch): another build.
    rebuilt = Installed(tmp_path / "two", files={"demo/__init__.py": b"VALUE = 1\n", "demo/_ext.so": b"other",
                                                  "demo_top.py": b"x = 2\n"})
    assert distfiles.installed_identity(rebuilt.dist_info) != distfiles.installed_identity(one.dist_info)


def test_wheel_identity_equals_the_installed_identity_of_its_files(tmp_path: Path):
    """A wheel (as the test world makes them) against the same files laid out by an installer."""
    files = {"pkg/__init__.py": b"A = 1\n", "pkg/data.bin": b"\x01\x02"}
    wheel = make_wheel(tmp_path / "w", "pkg", "2.0", files=files)
    with zipfile.ZipFile(wheel) as zf:
        content = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/RECORD")}
    installed = Installed(tmp_path / "env", "pkg", "2.0", files=content, wheel=False)
    assert distfiles.wheel_identity(wheel) == distfiles.installed_identity(installed.dist_info)
    assert distfiles.wheel_identity(tmp_path / "missing.whl") is None


def test_damaged_notices_a_missing_file_or_another_size_without_reading_them(tmp_path: Path):
    inst = Installed(tmp_path)
    assert distfiles.damaged(inst.dist_info) is None
    (inst.lib / "demo" / "_ext.so").write_bytes(b"short")
    assert "demo/_ext.so has 5 bytes, RECORD says 10240" == distfiles.damaged(inst.dist_info)
    (inst.lib / "demo" / "_ext.so").unlink()
    assert distfiles.damaged(inst.dist_info) == "demo/_ext.so is missing"
    (inst.dist_info / "RECORD").unlink()
    assert "has no RECORD" in distfiles.damaged(inst.dist_info)


# -- repack -----------------------------------------------------------------------------------------


def test_repacked_wheel_holds_the_installed_files_under_a_correct_record(tmp_path: Path):
    script = b"#!/venv/bin/python3.11\nprint('tool')\n"
    inst = Installed(tmp_path / "env", scripts={"demo-cli": b"#!/venv/bin/python\n# generated\n", "tool": script},
                     data={"share/demo/table.txt": b"1 2 3\n"}, entry_points="[console_scripts]\ndemo-cli = demo:main\n")
    done = repack.repack(inst.dist_info, tmp_path / "kept", inst.layout())
    assert done.wheel.name == f"demo-1.0+local.7-{TAG}.whl"
    entries = _entries(done.wheel)
    info = inst.dist_info.name
    data = "demo-1.0+local.7.data"
    assert set(entries) == {"demo/__init__.py", "demo/_ext.so", "demo_top.py", f"{info}/METADATA", f"{info}/WHEEL",
                            f"{info}/entry_points.txt", f"{data}/scripts/tool", f"{data}/data/share/demo/table.txt",
                            f"{info}/RECORD"}
    for rel in ("demo/__init__.py", "demo/_ext.so", "demo_top.py"):
        assert entries[rel] == (inst.lib / rel).read_bytes()
    # pip turns "#!python" into this interpreter again; the generated console script it makes anew.
    assert entries[f"{data}/scripts/tool"] == b"#!python\nprint('tool')\n"
    assert entries[f"{data}/data/share/demo/table.txt"] == b"1 2 3\n"
    record = distfiles.parse_record(entries[f"{info}/RECORD"].decode())
    assert {r.path for r in record} == set(entries)
    for r in record:
        if r.path != f"{info}/RECORD":
            assert (r.hash, r.size) == (_hash(entries[r.path]), len(entries[r.path])), r.path
    assert list(entries)[-1] == f"{info}/RECORD" and all(n.startswith(info) for n in list(entries)[-4:])
    assert done.identity == distfiles.installed_identity(inst.dist_info) == distfiles.wheel_identity(done.wheel)
    assert done.sha256 == hashlib.sha256(done.wheel.read_bytes()).hexdigest() and done.size == done.wheel.stat().st_size
    assert not list((tmp_path / "kept").glob(".*")), "a temporary file was left behind"


def test_the_same_files_make_the_same_wheel(tmp_path: Path):
    inst = Installed(tmp_path / "env")
    first = repack.repack(inst.dist_info, tmp_path / "a", inst.layout())
    second = repack.repack(inst.dist_info, tmp_path / "b", inst.layout())
    assert first.sha256 == second.sha256


def test_a_dist_info_without_wheel_file_gets_the_interpreters_tag(tmp_path: Path):
    inst = Installed(tmp_path / "env", wheel=False)
    done = repack.repack(inst.dist_info, tmp_path / "kept", inst.layout())
    assert done.wheel.name.endswith(f"-{TAG}.whl")
    assert f"Tag: {TAG}" in _entries(done.wheel)[f"{inst.dist_info.name}/WHEEL"].decode()


@pytest.mark.parametrize("damage, reason", [
    (lambda i: (i.lib / "demo_top.py").write_bytes(b"x = 3\n"), "demo_top.py was changed since it was installed"),
    (lambda i: (i.lib / "demo" / "_ext.so").unlink(), "demo/_ext.so is missing"),
    (lambda i: (i.dist_info / "RECORD").unlink(), "no RECORD file"),
    (lambda i: (i.dist_info / "direct_url.json").write_text(json.dumps(
        {"url": "file:///src/pytorch", "dir_info": {"editable": True}})), "editable install of file:///src/pytorch"),
    (lambda i: (i.dist_info / "RECORD").write_text("/etc/demo.conf,sha256=x,1\n"), "outside the environment"),
], ids=["changed", "missing", "no-record", "editable", "outside"])
def test_what_cannot_be_repacked_says_why_and_leaves_nothing(tmp_path: Path, damage, reason: str):
    inst = Installed(tmp_path / "env")
    damage(inst)
    with pytest.raises(repack.NotRepackable, match=reason):
        repack.repack(inst.dist_info, tmp_path / "kept", inst.layout())
    assert not list(tmp_path.glob("kept/*")) and not list(tmp_path.glob("kept/.*"))


def test_an_egg_install_cannot_be_repacked(tmp_path: Path):
    egg = tmp_path / "demo.egg-info"
    egg.mkdir()
    with pytest.raises(repack.NotRepackable, match="setup.py install or develop"):
        repack.rows_to_repack(egg)


@pytest.mark.parametrize("quoted", [False, True])
def test_installed_identity_from_the_text_is_the_identity_of_its_rows(tmp_path: Path, quoted: bool):
    """installed_identity reads a RECORD without a Row per line (issue 22 item 2: a snapshot takes
    it of every distribution); it must leave out and keep exactly what identity(rows) does."""
    dist_info = tmp_path / "demo-1.0.dist-info"
    dist_info.mkdir()
    text = ("demo/__init__.py,sha256=a,1\ndemo/__pycache__/__init__.cpython-311.pyc,,\n"
            "demo/__pycache__/gone.cpython-311.pyc,sha256=g,2\n../../bin/demo,sha256=b,3\n"
            "demo-1.0.dist-info/RECORD,,\ndemo-1.0.dist-info/INSTALLER,sha256=c,4\ndemo-1.0.dist-info/METADATA,sha256=d,5\n\n"
            + ('"demo/with,comma.py",sha256=e,6\n' if quoted else "demo/plain.py,sha256=e,6\n"))
    (dist_info / "RECORD").write_text(text)
    rows = distfiles.parse_record(text)
    assert distfiles.installed_identity(dist_info) == distfiles.identity(rows, dist_info.name)
    assert distfiles.installed_identity(dist_info) != distfiles.identity(rows[:-1], dist_info.name)
    (dist_info / "RECORD").write_text("demo/__init__.py,sha256=a,big\n")
    assert distfiles.installed_identity(dist_info) is None
    (dist_info / "RECORD").unlink()
    assert distfiles.installed_identity(dist_info) is None
