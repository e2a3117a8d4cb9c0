"""The target's installed distributions read without importlib.metadata (inspect_env.scan) and
read again in backendpick's own process after an install (target.rescan): the same answers as
importlib.metadata, in the target and here."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

from backendpick.model import environment
from backendpick.target import inspection as target_mod
from backendpick.target.probes_in_target import inspect_env


def _by_importlib(paths: list[str]) -> dict:
    """importlib.metadata's answers, less pip's stash of an interrupted uninstall (``~orch-...``),
    which pip itself ignores ("Ignoring invalid distribution ~orch")."""
    out = {}
    for d in metadata.distributions(path=paths):
        name = d.metadata["Name"]
        if not name or name.lower() in out or Path(str(d._path)).name.startswith("~"):
            continue
        try:
            direct = d.read_text("direct_url.json")
        except Exception:
            direct = None
        out[name.lower()] = {"name": name, "version": d.version, "requires": d.requires or [],
                             "installer": (d.read_text("INSTALLER") or "").strip(), "direct_url": direct,
                             "path": str(d._path)}
    return out


def _dist_info(site: Path, name: str, version: str, *, metadata_text: str | None = None, **files: str) -> Path:
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    if metadata_text is None:
        metadata_text = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    (folder / "METADATA").write_text(metadata_text, encoding="utf-8")
    for fname, text in files.items():
        (folder / fname.replace("_json", ".json")).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    site.mkdir()
    _dist_info(site, "plain", "1.0", INSTALLER="pip\n")
    _dist_info(site, "torch", "2.5.1+cu124", metadata_text=(
        "Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1+cu124\n"
        "Requires-Dist: filelock\nRequires-Dist: nvidia-cublas-cu12==12.4.5.8; platform_system == \"Linux\"\n"
        "Requires-Dist: sympy==1.13.1; python_version >= \"3.9\"\n"
        "Description-Content-Type: text/markdown\n\nName: not-a-header\nVersion: 0\nRequires-Dist: evil\n"),
        INSTALLER="uv", direct_url_json='{"url": "file:///w/torch.whl", "archive_info": {}}')
    _dist_info(site, "crlf", "3", metadata_text="Metadata-Version: 2.1\r\nName: crlf\r\nVersion: 3\r\nRequires-Dist: a\r\n\r\nbody")
    (site / "nometa-1.dist-info").mkdir()  # no METADATA: importlib.metadata finds no name either
    _dist_info(site, "noname", "1", metadata_text="Metadata-Version: 2.1\nVersion: 1\n")
    egg = site / "legacy.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: legacy\nVersion: 0.3\n")
    (egg / "requires.txt").write_text("six\n\n[fast]\ncython\n")
    (site / "single-0.1.egg-info").write_text("Metadata-Version: 1.1\nName: single\nVersion: 0.1\n")
    (site / "not-a-dist-info.dist-info").write_text("a file, not a folder\n")
    # What a pip killed in the middle of uninstalling torch 2.4.0 leaves: its stash, before the
    # real torch in listing order.
    _dist_info(site, "~orch", "2.4.0", metadata_text="Metadata-Version: 2.1\nName: torch\nVersion: 2.4.0\n")
    return site


def test_scan_answers_as_importlib_metadata(site: Path, tmp_path: Path):
    second = tmp_path / "second"
    _dist_info(second, "plain", "9.9")  # shadowed: the first of a name on the path wins
    _dist_info(second, "Other_Name", "2")
    paths = [str(site), str(tmp_path / "missing"), str(second)]
    scanned = inspect_env.scan(paths)
    assert scanned == _by_importlib(paths)
    assert scanned["plain"]["version"] == "1.0" and scanned["torch"]["installer"] == "uv"
    assert scanned["torch"]["version"] == "2.5.1+cu124", "pip's stash (~orch-2.4.0.dist-info) was taken for torch"
    assert scanned["torch"]["path"] == str(site / "torch-2.5.1+cu124.dist-info")
    assert scanned["legacy"]["requires"] == ["six", 'cython; extra == "fast"']  # egg-info: importlib's answer
    assert "not-a-header" not in scanned and "nometa" not in scanned


def test_scan_of_this_interpreter_matches_importlib_metadata():
    assert inspect_env.scan(sys.path) == _by_importlib(sys.path)


def test_pth_paths_reads_folders_as_site_does(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "src").mkdir()
    (site / "local").mkdir()
    (site / "a.pth").write_text(f"# comment\nimport os; os.environ\n{tmp_path / 'src'}\nlocal\nnot-there\n\n")
    (site / "b.pth").write_text("local\n")  # a folder twice is on the path once
    (site / ".hidden.pth").write_text(f"{tmp_path}\n")  # site skips dot files
    assert inspect_env.pth_paths([str(site), str(tmp_path / "no-site")]) == [str(tmp_path / "src"), str(site / "local")]


def _target(site: Path, **kw) -> environment.Target:
    return environment.Target(python=Path("/nonexistent/python"), prefix=site.parent, version=(3, 11, 7), markers={},
                              tags=(), pip_version=None, purelib=site, path=("/nonexistent/lib", str(site)),
                              site_dirs=(str(site),), **kw)


def test_rescan_sees_what_an_install_changed(site: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(target_mod, "inspect", lambda *a, **k: pytest.fail("rescan started the target"))
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text("")
    (site / "torch" / "version.py").write_text("cuda = '12.4'\n")
    editable = tmp_path / "editable"
    _dist_info(editable, "from-pth", "1")
    (site / "__editable__.x.pth").write_text(f"{editable}\n")
    _dist_info(site, "pip", "24.0")
    before = _target(site, pth_paths=())
    after = target_mod.rescan(before)
    assert after.get("from-pth").version == "1" and after.pth_paths == (str(editable),)
    assert after.files == {"torch/version.py": "cuda = '12.4'\n"}
    assert after.pip_version == "24.0" and after.get("torch").requires[0] == "filelock"
    (site / "__editable__.x.pth").unlink()  # uninstalled: its folder leaves the path
    assert target_mod.rescan(after).get("from-pth") is None


def test_rescan_falls_back_to_the_target_when_a_package_is_not_in_a_folder(site: Path, monkeypatch):
    # torch's dist-info is there but its package is not on a plain folder (an import hook of an
    # editable build): only the target itself can say where torch/version.py is.
    asked = []
    monkeypatch.setattr(target_mod, "inspect", lambda python, **k: asked.append(python) or "inspected")
    before = _target(site)
    assert target_mod.rescan(before) == "inspected" and asked == [before.python]
    assert target_mod.rescan(environment.Target(**{**before.__dict__, "path": ()})) == "inspected"
