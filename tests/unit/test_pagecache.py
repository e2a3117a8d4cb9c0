"""The disk cache of index pages (indexes/page_cache.py): Cache-Control parsing, the freshness decision,
the stored entries, and IndexClient using them against the in-process test index server (a
thread, no subprocess): a fresh page asks nothing, a stale one is revalidated (304), a
changed one replaces the entry, ``refresh`` always asks, a damaged entry is a miss."""

from __future__ import annotations

import json
import sys
import time
from email.message import Message
from pathlib import Path

import pytest

from backendpick.edges import paths
from backendpick.indexes import page_cache
from backendpick.indexes.client import IndexClient, IndexUnavailable, PageNotFound, fetch_many
from backendpick.indexes.page_cache import PageCache, lifetime, new_entry, parse_cache_control, revalidated
from backendpick.inputs.pip_config import PipConfig
from tests.support.dists import make_wheel
from tests.support.index import IndexServer


def headers(**fields: str) -> Message:
    msg = Message()
    for name, value in fields.items():
        msg[name.replace("_", "-")] = value
    return msg


FILES = [("torch-2.5.1+cpu-py3-none-any.whl", "http://i/cpu/files/torch-2.5.1%2Bcpu-py3-none-any.whl", ">=3.9", False, True, "ab" * 32)]


# -- Cache-Control ----------------------------------------------------------------------------------


def test_cache_control_directives_are_parsed_case_and_space_insensitively():
    assert parse_cache_control(["max-age=600, public"]) == {"max-age": "600", "public": None}
    assert parse_cache_control(['Max-Age="30" ,NO-CACHE']) == {"max-age": "30", "no-cache": None}
    assert parse_cache_control(["max-age=5, max-age=900"]) == {"max-age": "5"}  # the first
    assert parse_cache_control(["private", "max-age=60"]) == {"private": None, "max-age": "60"}
    assert parse_cache_control([""]) == {} and parse_cache_control([]) == {}


@pytest.mark.parametrize("control, age, seconds", [
    ("max-age=600", None, 600),
    ("public, max-age=600", "100", 500),  # Age: already that old when it left the server
    ("max-age=600", "900", 0),
    ("max-age=600", "soon", 600),  # an Age that is no number is ignored
    ("max-age=600, no-cache", None, 0),  # no-cache: always revalidate
    ("no-cache", None, 0),
    ("public", None, 0),  # no max-age: stale at once (Expires is not honoured)
    ("max-age=abc", None, 0),  # malformed: stale (RFC 9111 4.2.1)
    ("max-age=-1", None, 0),
    ("max-age=1.5", None, 0),
    ("max-age", None, 0),
])
def test_lifetime_is_max_age_less_age_else_zero(control: str, age: str | None, seconds: int):
    assert lifetime(parse_cache_control([control]), age) == seconds


DATE = "Tue, 01 Dec 2026 12:00:00 GMT"


@pytest.mark.parametrize("control, age, modified, seconds", [
    ("", None, "Mon, 30 Nov 2026 12:00:00 GMT", 600),  # a day old: a tenth is 8640 s, capped at 600
    ("", None, "Tue, 01 Dec 2026 11:00:00 GMT", 360),  # an hour old: a tenth
    ("", "60", "Tue, 01 Dec 2026 11:00:00 GMT", 300),  # less Age
    ("public", None, "Tue, 01 Dec 2026 11:00:00 GMT", 360),  # no expiration: heuristic allowed
    ("", None, "not a date", 0),
    ("", None, "Tue, 01 Dec 2026 13:00:00 GMT", 0),  # changed after it was sent: no freshness
    ("max-age=0", None, "Mon, 30 Nov 2026 12:00:00 GMT", 0),  # an explicit lifetime wins
    ("max-age=abc", None, "Mon, 30 Nov 2026 12:00:00 GMT", 0),  # a malformed one is stale, not heuristic
    ("no-cache", None, "Mon, 30 Nov 2026 12:00:00 GMT", 0),
])
def test_heuristic_freshness_from_last_modified(control: str, age: str | None, modified: str, seconds: int):
    assert lifetime(parse_cache_control([control]), age, last_modified=modified, date=DATE) == seconds


def test_a_page_as_download_pytorch_org_sends_it_is_fresh_for_600_s():
    sent = headers(ETag='"39758beefc9f06fc180a92f8225577da"', Last_Modified="Mon, 30 Nov 2026 12:00:00 GMT", Date=DATE)
    entry = new_entry("https://download.pytorch.org/whl/cu124/torch/", sent, FILES, 1000.0)
    assert entry.fresh(1599.0) and not entry.fresh(1600.0) and entry.has_validator
    # Without a Date the age counts to now (here a minute after the Last-Modified).
    late = new_entry("u", headers(Last_Modified="Thu, 01 Jan 1970 00:00:00 GMT"), FILES, 60.0)
    assert late.lifetime == 6


# -- the freshness decision --------------------------------------------------------------------------


def test_max_age_makes_a_page_fresh_for_that_long():
    entry = new_entry("http://i/cpu/simple/torch/", headers(Cache_Control="max-age=600"), FILES, 1000.0)
    assert entry is not None and not entry.has_validator
    assert entry.fresh(1000.0) and entry.fresh(1599.0)
    assert not entry.fresh(1600.0)
    assert not entry.fresh(999.0)  # a clock set back: not trusted


def test_age_shortens_the_freshness():
    entry = new_entry("u", headers(Cache_Control="max-age=600", Age="590"), FILES, 1000.0)
    assert entry.fresh(1009.0) and not entry.fresh(1010.0)


def test_no_store_is_never_stored():
    assert new_entry("u", headers(Cache_Control="no-store, max-age=600", ETag='"x"'), FILES, 0.0) is None


@pytest.mark.parametrize("fields", [
    {"Cache_Control": "no-cache"},
    {},
    {"Cache_Control": "max-age=nope"},
    {"Cache_Control": "max-age=600", "Age": "600"},
])
def test_stale_at_once_is_stored_only_with_a_validator_and_always_revalidated(fields: dict):
    assert new_entry("u", headers(**fields), FILES, 0.0) is None
    with_etag = new_entry("u", headers(ETag='"abc"', **fields), FILES, 0.0)
    assert with_etag is not None and not with_etag.fresh(0.0)
    assert with_etag.conditional_headers() == {"If-None-Match": '"abc"'}
    dated = new_entry("u", headers(Last_Modified="Tue, 01 Dec 2026 10:00:00 GMT", **fields), FILES, 0.0)
    assert dated.conditional_headers() == {"If-Modified-Since": "Tue, 01 Dec 2026 10:00:00 GMT"}


def test_stale_with_validators_is_revalidated_and_a_304_refreshes_it():
    entry = new_entry("u", headers(Cache_Control="max-age=60", ETag='"a"'), FILES, 0.0)
    assert not entry.fresh(100.0)
    # The 304's own Cache-Control and validators win; its freshness counts from now.
    again = revalidated(entry, headers(Cache_Control="max-age=600", ETag='"b"'), 100.0)
    assert again.fresh(699.0) and not again.fresh(700.0) and again.etag == '"b"' and again.files == entry.files
    # A 304 without caching headers keeps the stored ones.
    kept = revalidated(entry, headers(), 100.0)
    assert kept.fresh(159.0) and not kept.fresh(160.0) and kept.etag == '"a"'
    assert revalidated(entry, headers(Cache_Control="no-store"), 100.0) is None


# -- the stored entries ------------------------------------------------------------------------------


def test_an_entry_round_trips_and_no_part_of_the_credentials_is_in_its_name_or_text(tmp_path: Path):
    cache = PageCache(tmp_path / "pages")
    url = "https://user:s3cret@mirror.example/cpu/simple/torch/"
    entry = new_entry(url, headers(Cache_Control="max-age=600", ETag='"a"'), FILES, 5.0, authenticated=True)
    cache.store(url, entry)
    assert cache.load(url) == entry and entry.authenticated
    # One entry per URL: the key is the URL without user information (issue 19: no secret,
    # not even its hash, is written). Who may see it is the server's call on every use.
    assert cache.load("https://mirror.example/cpu/simple/torch/") == entry
    assert page_cache.key(url) == page_cache.key("https://mirror.example/cpu/simple/torch/")
    (stored,) = (tmp_path / "pages").iterdir()
    assert "s3cret" not in stored.read_text() and "user" not in stored.read_text()
    assert json.loads(stored.read_text())["url"] == "https://mirror.example/cpu/simple/torch/"


def test_a_page_fetched_with_credentials_is_kept_only_with_a_validator():
    # It is revalidated before every use; without a validator it never could be.
    assert new_entry("https://m/x/", headers(Cache_Control="max-age=600"), FILES, 5.0, authenticated=True) is None
    assert new_entry("https://m/x/", headers(Cache_Control="max-age=600"), FILES, 5.0) is not None


def test_an_entry_kept_before_the_metadata_column_reads_as_no_metadata(tmp_path: Path):
    cache = PageCache(tmp_path / "pages")
    url = "https://mirror.example/cpu/simple/torch/"
    cache.store(url, new_entry(url, headers(Cache_Control="max-age=600"), FILES, 5.0))
    (stored,) = (tmp_path / "pages").iterdir()
    data = json.loads(stored.read_text())
    data["files"] = [row[:4] for row in data["files"]]  # as an earlier backendpick wrote it
    stored.write_text(json.dumps(data))
    assert cache.load(url).files == (FILES[0][:4] + (False, None),)
    data["files"] = [list(FILES[0][:5])]  # before the sha256 column: no hash named
    stored.write_text(json.dumps(data))
    assert cache.load(url).files == (FILES[0][:5] + (None,),)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 1, "url": "u"}', '{"format": 99}', ""])
def test_a_damaged_entry_is_a_miss(tmp_path: Path, content: str):
    cache = PageCache(tmp_path)
    (tmp_path / page_cache.key("u")).write_text(content)
    assert cache.load("u") is None


def test_an_unwritable_cache_is_no_cache_not_an_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    cache = PageCache(blocker / "pages")
    cache.store("u", new_entry("u", headers(Cache_Control="max-age=600"), FILES, 0.0))
    assert cache.load("u") is None
    cache.forget("u")


def test_the_page_cache_is_in_the_user_cache_not_the_wheel_cache(tmp_path: Path):
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "BACKENDPICK_CACHE_DIR": str(tmp_path / "w")}
    assert paths.page_cache(env) == paths.cache_home(env) / "pages"


# -- IndexClient with the cache, against the in-process test server ----------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pc-index")
    with IndexServer(root) as srv:
        make_wheel(srv.index_dir("fresh"), "torch", "2.5.1+cpu")
        make_wheel(srv.index_dir("etag"), "torch", "2.5.1+cpu")
        make_wheel(srv.index_dir("plain"), "torch", "2.5.1+cpu")
        srv.page_caching("fresh", "max-age=600")
        srv.page_caching("etag", "max-age=0", etag=True)
        srv.page_caching("plain", None)  # no Cache-Control, no validator
        yield srv


def client(tmp_path: Path, **kw) -> IndexClient:
    return IndexClient(PipConfig(), env={"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}, **kw)


def versions(files) -> list[str]:
    return sorted(f.filename.split("-")[1] for f in files)


def test_a_fresh_page_is_used_with_no_request(tmp_path: Path, server: IndexServer):
    server.clear_log()
    first = client(tmp_path).project(server.url("fresh"), "torch")
    second = client(tmp_path).project(server.url("fresh"), "torch")
    assert first == second and versions(second) == ["2.5.1+cpu"]
    assert len(server.page_requests("fresh", "torch")) == 1
    # --refresh asks again (no validator here: a plain request).
    assert client(tmp_path, refresh=True).project(server.url("fresh"), "torch") == first
    assert len(server.page_requests("fresh", "torch")) == 2


def test_a_stale_page_is_revalidated_and_a_change_is_seen(tmp_path: Path, server: IndexServer):
    server.clear_log()
    url = server.url("etag")
    assert versions(client(tmp_path).project(url, "torch")) == ["2.5.1+cpu"]
    assert versions(client(tmp_path).project(url, "torch")) == ["2.5.1+cpu"]
    first, second = server.page_requests("etag", "torch")
    assert (first.status, first.conditional) == (200, False) and (second.status, second.conditional) == (304, True)
    make_wheel(server.index_dir("etag"), "torch", "2.6.0+cpu")
    assert versions(client(tmp_path).project(url, "torch")) == ["2.5.1+cpu", "2.6.0+cpu"]
    assert server.page_requests("etag", "torch")[-1].status == 200
    assert versions(client(tmp_path).project(url, "torch")) == ["2.5.1+cpu", "2.6.0+cpu"]
    assert server.page_requests("etag", "torch")[-1].status == 304  # the new page was stored


def test_without_cache_headers_every_run_asks(tmp_path: Path, server: IndexServer):
    server.clear_log()
    for _ in range(2):
        client(tmp_path).project(server.url("plain"), "torch")
    assert [r.status for r in server.page_requests("plain", "torch")] == [200, 200]
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_a_fresh_entry_needs_no_index_and_a_stale_one_is_not_served_when_the_index_is_down(tmp_path: Path):
    url = "http://127.0.0.1:9/cpu/simple/torch/"  # nothing listens there
    c = client(tmp_path)
    c._disk.store(url, new_entry(url, headers(Cache_Control="max-age=600", ETag='"a"'), FILES, time.time()))
    assert [f.filename for f in client(tmp_path).page(url)] == [FILES[0][0]]
    with pytest.raises(IndexUnavailable):
        client(tmp_path, refresh=True).page(url)
    c._disk.store(url, new_entry(url, headers(Cache_Control="max-age=1", ETag='"a"'), FILES, 0.0))
    with pytest.raises(IndexUnavailable):
        client(tmp_path).page(url)


def test_a_damaged_entry_is_fetched_again_and_overwritten(tmp_path: Path, server: IndexServer):
    server.clear_log()
    url = server.url("fresh") + "/torch/"
    entry_file = paths.page_cache({"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}) / page_cache.key(url)
    entry_file.parent.mkdir(parents=True)
    entry_file.write_text("{damaged")
    assert versions(client(tmp_path).page(url)) == ["2.5.1+cpu"]
    assert json.loads(entry_file.read_text())["lifetime"] == 600
    assert len(server.page_requests("fresh", "torch")) == 1


def test_a_404_is_not_cached(tmp_path: Path, server: IndexServer):
    server.clear_log()
    for _ in range(2):
        with pytest.raises(PageNotFound):
            client(tmp_path).project(server.url("fresh"), "nothing-here")
    assert len(server.page_requests("fresh", "nothing-here")) == 2


def test_a_cache_folder_that_cannot_be_made_still_answers(tmp_path: Path, server: IndexServer):
    server.clear_log()
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    for _ in range(2):
        assert versions(client(tmp_path).project(server.url("fresh"), "torch")) == ["2.5.1+cpu"]
    assert len(server.page_requests("fresh", "torch")) == 2


def test_without_env_nothing_is_kept_on_disk(server: IndexServer):
    server.clear_log()
    for _ in range(2):
        IndexClient(PipConfig()).project(server.url("fresh"), "torch")
    assert len(server.page_requests("fresh", "torch")) == 2


def test_the_pages_a_client_answered_say_when_a_later_run_would_ask_again(tmp_path: Path, server: IndexServer):
    """What lets detect answer from a record (state/noop.py): the kept pages' files and the span
    in which all are fresh; None where a later run would send a request."""
    assert client(tmp_path).kept_pages() == ([], None)  # no page read
    first = client(tmp_path)
    first.project(server.url("fresh"), "torch")  # asked, kept fresh for 600 s
    files, (since, until) = first.kept_pages()
    assert until - since == 600 and [Path(f).is_file() for f in files] == [True]
    second = client(tmp_path)
    second.project(server.url("fresh"), "torch")  # from the cache, no request
    assert second.kept_pages() == (files, (since, until))
    for index in ("etag", "plain"):  # always revalidated; never kept
        c = client(tmp_path)
        c.project(server.url("fresh"), "torch")
        c.project(server.url(index), "torch")
        assert c.kept_pages() is None, index
    missing = client(tmp_path)
    with pytest.raises(PageNotFound):
        missing.project(server.url("fresh"), "nothing-here")
    assert missing.kept_pages() is None
    assert IndexClient(PipConfig()).kept_pages() is None  # no disk cache at all


def test_fetch_many_reads_fresh_pages_in_this_thread_and_asks_only_for_the_others(tmp_path: Path, server: IndexServer,
                                                                                    monkeypatch: pytest.MonkeyPatch):
    """Issue 22 item 2: on a warm run the pages come from the cache without a thread pool
    (concurrent.futures, a few ms of every start, is not imported); a page that needs a request
    is still asked, and the answers keep the order of the keys."""
    server.clear_log()
    client(tmp_path).project(server.url("fresh"), "torch")  # kept fresh for 600 s
    monkeypatch.setitem(sys.modules, "concurrent.futures", None)  # importing it fails
    pages = {"plain": (server.url("plain"), "torch"), "fresh": (server.url("fresh"), "torch"),
             "again": (server.url("fresh") + "/", "torch")}
    answers = fetch_many(client(tmp_path), pages)
    assert list(answers) == ["plain", "fresh", "again"]
    assert all(versions(files) == ["2.5.1+cpu"] for files in answers.values())
    assert len(server.page_requests("fresh", "torch")) == 1 and len(server.page_requests("plain", "torch")) == 1
    monkeypatch.delitem(sys.modules, "concurrent.futures")  # two pages to ask: a thread each
    answers = fetch_many(client(tmp_path), {"a": (server.url("plain"), "torch"), "b": (server.url("fresh"), "nothing-here"),
                                            "c": (server.url("fresh"), "torch")})
    assert versions(answers["a"]) == versions(answers["c"]) == ["2.5.1+cpu"] and isinstance(answers["b"], PageNotFound)
    assert len(server.page_requests("plain", "torch")) == 2 and len(server.page_requests("fresh", "torch")) == 1
