"""Index pages kept between runs as HTTP caching allows (indexes/page_cache.py), end to end: backendpick
runs against the test index server with the Cache-Control/ETag a test chooses, and the
server's request log says which runs asked for the torch page.

Each test has indexes of its own (copies of the world's ``cpu`` index under another name, so
the policy set here touches no other test) and a cache folder of its own.
"""

from __future__ import annotations

import shutil
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.support.index import IndexServer
from tests.support.lab import Lab, ok, py

pytestmark = pytest.mark.integration

HEAVY_IMPORTS = ("urllib.request", "http.client", "ssl", "html.parser")


def cpu_copy(server: IndexServer, prefix: str, cache_control: str | None, *, etag: bool = False,
             last_modified: str | None = None) -> str:
    """A copy of the world's cpu index as ``<prefix>-cpu`` with the given caching; its template."""
    name = f"{prefix}-cpu"
    directory = server.root / name
    if not directory.is_dir():
        staging = server.root / f".{name}.tmp"  # dot names are never served
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(server.index_dir("cpu"), staging)
        staging.rename(directory)
    server.page_caching(name, cache_control, etag=etag, last_modified=last_modified)
    return server.base_url + f"/{prefix}-{{backend}}/simple"


def plan(lab: Lab, venv: Path, template: str, cache: Path, *args: str, **extra: str) -> dict:
    res = ok(lab.run("plan", "--json", "--python", py(venv), "--backend", "cpu", *args, "torch",
                     BACKENDPICK_INDEX_URL=template, XDG_CACHE_HOME=str(cache), **extra))
    return res.json()


def torch_of(report: dict) -> str:
    return report["torch"]["version"]


def test_a_fresh_page_is_not_asked_for_again(lab: Lab, server: IndexServer, tmp_path: Path) -> None:
    template = cpu_copy(server, "pc-fresh", "max-age=600")
    venv = lab.new_venv()
    first = plan(lab, venv, template, tmp_path / "cache")
    assert len(server.page_requests("pc-fresh-cpu", "torch")) == 1
    res = ok(lab.run("plan", "--json", "--python", py(venv), "--backend", "cpu", "torch", BACKENDPICK_INDEX_URL=template,
                     XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPROFILEIMPORTTIME="1"))
    assert len(server.page_requests("pc-fresh-cpu", "torch")) == 1  # answered from the cache
    assert res.json()["phases"] == first["phases"]
    # Answered fully from the cache: not even the HTTP machinery is imported.
    profile = [line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")]
    assert "backendpick.indexes.page_cache" in profile, res  # the profile is there and the cache was read
    assert not set(HEAVY_IMPORTS) & set(profile), sorted(set(HEAVY_IMPORTS) & set(profile))


def test_refresh_revalidates_and_a_304_keeps_the_answer(lab: Lab, server: IndexServer, tmp_path: Path) -> None:
    template = cpu_copy(server, "pc-refresh", "max-age=600", etag=True)
    venv = lab.new_venv()
    first = plan(lab, venv, template, tmp_path / "cache")
    refreshed = plan(lab, venv, template, tmp_path / "cache", "--refresh")
    asked = server.page_requests("pc-refresh-cpu", "torch")
    assert [(r.status, r.conditional) for r in asked] == [(200, False), (304, True)]
    assert refreshed["phases"] == first["phases"]
    # The 304 refreshed the entry: the next run asks nothing.
    plan(lab, venv, template, tmp_path / "cache")
    assert len(server.page_requests("pc-refresh-cpu", "torch")) == 2


@pytest.mark.parametrize("cache_control", ["no-store", None])
def test_without_a_lifetime_or_validator_every_run_asks(lab: Lab, server: IndexServer, tmp_path: Path,
                                                        cache_control: str | None) -> None:
    prefix = "pc-nostore" if cache_control else "pc-noheader"
    template = cpu_copy(server, prefix, cache_control)
    venv = lab.new_venv()
    for _ in range(2):
        plan(lab, venv, template, tmp_path / "cache")
    assert [r.status for r in server.page_requests(f"{prefix}-cpu", "torch")] == [200, 200]


def test_a_page_changed_after_its_lifetime_is_seen(lab: Lab, server: IndexServer, tmp_path: Path) -> None:
    template = cpu_copy(server, "pc-changed", "max-age=0", etag=True)
    venv = lab.new_venv()
    assert torch_of(plan(lab, venv, template, tmp_path / "cache")) == "2.7.1+cpu"
    again = plan(lab, venv, template, tmp_path / "cache")
    assert torch_of(again) == "2.7.1+cpu"
    assert [r.status for r in server.page_requests("pc-changed-cpu", "torch")] == [200, 304]
    for wheel in (server.root / "pc-changed-cpu").glob("torch-2.7.1*"):
        wheel.unlink()
    assert torch_of(plan(lab, venv, template, tmp_path / "cache")) == "2.6.0+cpu"
    assert [r.status for r in server.page_requests("pc-changed-cpu", "torch")] == [200, 304, 200]


def test_cache_clear_without_names_removes_the_kept_pages(lab: Lab, server: IndexServer, tmp_path: Path) -> None:
    template = cpu_copy(server, "pc-clear", "max-age=600")
    venv = lab.new_venv()
    cache = tmp_path / "cache"
    plan(lab, venv, template, cache)
    named = ok(lab.run("cache", "clear", "flash-attn", XDG_CACHE_HOME=str(cache)))
    assert "index pages" not in named.stdout  # naming packages touches their wheels only
    plan(lab, venv, template, cache)
    assert len(server.page_requests("pc-clear-cpu", "torch")) == 1
    cleared = ok(lab.run("cache", "clear", "--json", XDG_CACHE_HOME=str(cache)))
    assert cleared.json()["pages_removed"] >= 1 and cleared.json()["pages_dir"] == str(cache / "backendpick" / "pages")
    plan(lab, venv, template, cache)
    assert len(server.page_requests("pc-clear-cpu", "torch")) == 2  # asked again


def test_a_page_served_as_download_pytorch_org_serves_it_is_fresh_by_its_last_modified(
        lab: Lab, server: IndexServer, tmp_path: Path) -> None:
    # download.pytorch.org: no Cache-Control, an ETag and a Last-Modified (S3 behind CloudFront).
    # A page last changed a day ago is fresh for 600 s (a tenth of a day, capped), as uv treats it.
    day_ago = formatdate(time.time() - 86400, usegmt=True)
    template = cpu_copy(server, "pc-s3", None, etag=True, last_modified=day_ago)
    venv = lab.new_venv()
    plan(lab, venv, template, tmp_path / "cache")
    plan(lab, venv, template, tmp_path / "cache")
    assert len(server.page_requests("pc-s3-cpu", "torch")) == 1  # the second run asked nothing
