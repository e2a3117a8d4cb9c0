"""Where a uv source build finds its sdist (build/sdists.py): uv builds a file, not a requirement."""

from __future__ import annotations

from pathlib import Path

from packaging.specifiers import SpecifierSet

from backendpick.build import sdists
from backendpick.indexes.client import IndexClient
from backendpick.inputs.pip_config import PipConfig

PYPI = "https://pypi.org/simple"
CONF = PipConfig({"index-url": "https://mirror.example/simple", "extra-index-url": "https://extra.example/simple",
                  "find-links": "/wheels"})


def test_places_in_uvs_order_the_phases_own_options_first():
    assert sdists.places(CONF, (), offline=False, pypi=PYPI) == (
        ("index", "https://mirror.example/simple"), ("index", "https://extra.example/simple"),
        ("find-links", "/wheels"))
    own = ("--index-url", "https://own.example/simple", "-f", "/locked", "--extra-index-url=https://x.example/s")
    assert sdists.places(CONF, own, offline=False, pypi=PYPI) == (
        ("index", "https://own.example/simple"), ("index", "https://x.example/s"),
        ("index", "https://extra.example/simple"), ("find-links", "/locked"), ("find-links", "/wheels"))
    # A lock's build phase reads its own folder alone; --no-index leaves the find-links.
    assert sdists.places(CONF, ("--find-links", "/locked"), offline=True, pypi=PYPI) == (("find-links", "/locked"),)
    assert sdists.places(PipConfig(), ("--no-index", "-f", "/w"), offline=False, pypi=PYPI) == (("find-links", "/w"),)
    assert sdists.places(PipConfig(), (), offline=False, pypi=PYPI) == (("index", PYPI),)


def _index(root: Path, files: list[str]) -> str:
    """A file:// index (PEP 503 static layout) with flash-attn's files."""
    page = root / "simple" / "flash-attn"
    page.mkdir(parents=True)
    for name in files:
        (page / name).write_bytes(b"x")
    (page / "index.html").write_text("".join(f'<a href="{n}">{n}</a>\n' for n in files))
    return (root / "simple").as_uri()


def test_find_takes_the_first_place_with_a_fitting_sdist_and_says_what_each_had(tmp_path: Path):
    client = IndexClient(PipConfig())
    empty = _index(tmp_path / "a", ["flash_attn-2.7.3.tar.gz", "flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl"])
    links = tmp_path / "links"
    links.mkdir()
    (links / "flash_attn-2.7.4.tar.gz").write_bytes(b"x")
    (links / "flash_attn-2.6.0.tar.gz").write_bytes(b"x")
    where = (("index", empty), ("index", (tmp_path / "none").as_uri()), ("find-links", str(links)))

    found, said = sdists.find("flash-attn", SpecifierSet("==2.7.4"), where, client)
    assert found == str(links / "flash_attn-2.7.4.tar.gz")  # a wheel is no sdist; 2.7.3 does not fit
    assert said[0] == f"{empty}: no sdist of flash-attn==2.7.4" and "no flash-attn page" in said[1]
    # An open version takes the newest that fits.
    newest = sdists.find("flash-attn", SpecifierSet(">=2"), where, client)[0]
    assert newest == str(tmp_path / "a" / "simple" / "flash-attn" / "flash_attn-2.7.3.tar.gz")
    assert sdists.find("flash-attn", SpecifierSet("==9"), where, client)[0] is None


def test_a_remote_sdist_is_downloaded_beside_the_build_folder():
    assert sdists.local_file("https://h/files/flash_attn-2.7.4.tar.gz#sha256=ab", "/s/build/flash-attn") == \
        "/s/build/flash-attn-sdist/flash_attn-2.7.4.tar.gz"
    assert sdists.local_file("/locked/flash_attn-2.7.4.tar.gz", "/s/build/flash-attn") == \
        "/locked/flash_attn-2.7.4.tar.gz"


def test_a_json_pages_sha256_is_checked_as_an_html_pages_fragment_is(tmp_path: Path):
    """PEP 691 pages give the hash in ``hashes``, not in the URL: the download checks it all the same."""
    import hashlib
    import json

    import pytest

    from backendpick.errors import InstallError
    from backendpick.indexes.client import parse_page

    good = hashlib.sha256(b"the sdist").hexdigest()
    page = {"files": [{"filename": "flash_attn-2.7.4.tar.gz", "url": "../../files/flash_attn-2.7.4.tar.gz",
                       "hashes": {"sha256": good}}]}
    links = parse_page(json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json", "https://h/simple/flash-attn/")

    class Client:
        def project(self, index: str, name: str):
            return links

    class Session:
        def __init__(self, served: bytes):
            self.served = served

        def download(self, url: str, dest: Path) -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.served)

    url, _ = sdists.find("flash-attn", SpecifierSet("==2.7.4"), (("index", "https://h/simple"),), Client())
    assert url == f"https://h/files/flash_attn-2.7.4.tar.gz#sha256={good}"
    sdists.download(url, tmp_path / "ok" / "f.tar.gz", Session(b"the sdist"), lambda _t: None)
    with pytest.raises(InstallError, match="sha256"):
        sdists.download(url, tmp_path / "bad" / "f.tar.gz", Session(b"a swapped file"), lambda _t: None)
    assert not (tmp_path / "bad" / "f.tar.gz").exists()
