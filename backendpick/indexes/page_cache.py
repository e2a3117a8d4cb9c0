"""The disk cache of index project pages, following HTTP caching (RFC 9111) as uv and pip's
CacheControl apply it to a private cache.

A page is kept as its parsed links (not its body) with what freshness needs: when it was
stored, how long the server said it stays fresh (``Cache-Control: max-age`` less ``Age``) and
its validators (``ETag``, ``Last-Modified``). A fresh page answers with no request at all (PyPI
sends ``max-age=600``); a stale one is revalidated with a conditional request, whose 304
refreshes the entry. ``no-store`` is never kept; ``no-cache`` or a malformed ``max-age`` keep a
page only with a validator, and always revalidate it.

A page without ``max-age`` but with ``Last-Modified`` gets the heuristic freshness RFC 9111
4.2.2 allows: a tenth of its age when sent, at most 600 s. download.pytorch.org's pages are
served that way (no Cache-Control; ETag and Last-Modified from S3), and uv gives them 600 s
the same way (astral-sh/uv#15481, checked 2026-12-01). ``Expires`` is not honoured (neither
index backendpick talks to relies on it; ``max-age`` wins over it anyway).

Entries live in ``cache_home()/pages/<sha256 of the URL>.json``, the URL taken without its user
information both in the key and in the entry: no secret, not even hashed (a hash of a short
password can be searched for), is written down. A page fetched with credentials is kept with
``authenticated`` set and is never used without asking: every later use revalidates it, with
that run's credentials, so a server that has not just accepted them (a 401 or 403 is an error,
as it was without a cache) shows nothing; a 304 says these credentials may see the page kept.
Such a page needs a validator (``ETag`` / ``Last-Modified``) to be kept at all. The folder is
the user's own (``XDG_CACHE_HOME``): another local user never reads it. A damaged entry is a
miss; a cache folder backendpick cannot write is no cache, never an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from backendpick.redaction import strip

FORMAT = 1


def parse_cache_control(values: Sequence[str]) -> dict[str, str | None]:
    """The directives of ``Cache-Control`` header values, names lowercased, quotes removed;
    of a repeated directive the first (RFC 9111 4.2.1 allows it)."""
    out: dict[str, str | None] = {}
    for value in values:
        for item in value.split(","):
            name, sep, arg = item.strip().partition("=")
            name = name.strip().lower()
            if not name or name in out:
                continue
            arg = arg.strip()
            if len(arg) >= 2 and arg[0] == arg[-1] == '"':
                arg = arg[1:-1]
            out[name] = arg if sep else None
    return out


def _seconds(text: str | None) -> int | None:
    """A delta-seconds value (RFC 9111 1.2.2): digits only; anything else is None."""
    if text is None or not text.isdigit():
        return None
    return int(text)


HEURISTIC_MAX = 600  # seconds: what PyPI declares for its pages, and uv's figure for PyTorch's


def lifetime(directives: Mapping[str, str | None], age: str | None, *, last_modified: str | None = None,
             date: str | None = None, now: float = 0.0) -> int:
    """Seconds a response stays fresh from now: ``max-age`` less ``Age``; 0 (stale at once) for
    ``no-cache`` or a malformed ``max-age`` (RFC 9111 4.2.1: treat it as stale); without any
    ``max-age``, a tenth of the time since ``Last-Modified`` (at ``Date``, else ``now``), at most
    HEURISTIC_MAX, less ``Age`` (RFC 9111 4.2.2), else 0."""
    if "no-cache" in directives:
        return 0
    spent = _seconds(age.strip() if age else None) or 0
    if "max-age" not in directives:
        modified, sent = _http_date(last_modified), _http_date(date)
        if modified is None:
            return 0
        return max(0, min(HEURISTIC_MAX, int(((sent if sent is not None else now) - modified) / 10)) - spent)
    max_age = _seconds(directives.get("max-age"))
    if max_age is None:
        return 0
    return max(0, max_age - spent)


def _http_date(text: str | None) -> float | None:
    """An HTTP date as a POSIX timestamp, or None when absent or unreadable."""
    if not text:
        return None
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


@dataclass(frozen=True)
class Entry:
    """One stored page."""

    url: str  # redacted, for whoever reads the folder
    stored: float  # time.time() when stored or last revalidated
    lifetime: int  # seconds fresh after ``stored``
    etag: str | None
    last_modified: str | None
    cache_control: str  # the directives the lifetime came from; a 304 without any keeps them
    # (filename, url, requires_python, yanked, metadata served, sha256): client.FileLink's fields
    files: tuple[tuple[str, str, str | None, bool, bool, str | None], ...]
    authenticated: bool = False  # fetched with credentials: revalidated before every use

    @property
    def has_validator(self) -> bool:
        return bool(self.etag or self.last_modified)

    def fresh(self, now: float) -> bool:
        # A clock set back makes the entry look younger than it is: treat that as stale.
        return self.stored <= now < self.stored + self.lifetime

    def conditional_headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


def new_entry(url: str, headers, files: Sequence[tuple], now: float, *, authenticated: bool = False) -> Entry | None:
    """The entry for a 200 response with ``headers`` (a Message-like: ``get``, ``get_all``), or
    None when it must not be stored: ``no-store``, stale at once without a validator, or
    fetched with credentials without a validator (it could never be revalidated)."""
    control = ", ".join(headers.get_all("Cache-Control") or [])
    directives = parse_cache_control([control])
    if "no-store" in directives:
        return None
    fresh_for = lifetime(directives, headers.get("Age"), last_modified=headers.get("Last-Modified"),
                         date=headers.get("Date"), now=now)
    entry = Entry(strip(url), now, fresh_for, headers.get("ETag"), headers.get("Last-Modified"), control,
                  tuple(tuple(f) for f in files), authenticated)
    if authenticated:
        return entry if entry.has_validator else None
    return entry if entry.lifetime > 0 or entry.has_validator else None


def revalidated(entry: Entry, headers, now: float) -> Entry | None:
    """The entry after a 304 with ``headers``: the 304's caching headers replace the stored
    ones (RFC 9111 4.3.4), its freshness counts from now. None: the 304 says ``no-store``."""
    control = ", ".join(headers.get_all("Cache-Control") or []) or entry.cache_control
    directives = parse_cache_control([control])
    if "no-store" in directives:
        return None
    last_modified = headers.get("Last-Modified") or entry.last_modified
    fresh_for = lifetime(directives, headers.get("Age"), last_modified=last_modified, date=headers.get("Date"), now=now)
    return replace(entry, stored=now, lifetime=fresh_for, cache_control=control,
                   etag=headers.get("ETag") or entry.etag, last_modified=last_modified)


def key(url: str) -> str:
    """The entry's file name: the URL without its user information, hashed (see the module's
    docstring for why credentials are not part of it)."""
    return hashlib.sha256(strip(url).encode("utf-8")).hexdigest() + ".json"


class PageCache:
    """Entries in ``folder``; every failure to read is a miss, every failure to write is ignored."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def load(self, url: str) -> Entry | None:
        try:
            data = json.loads((self.folder / key(url)).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                return None
            # An entry written before the metadata column was kept reads as "no metadata served",
            # one before the sha256 column as "no hash named" (the URL's fragment still holds it).
            files = tuple((str(f[0]), str(f[1]), None if f[2] is None else str(f[2]), bool(f[3]),
                           bool(f[4]) if len(f) > 4 else False, str(f[5]) if len(f) > 5 and f[5] else None)
                          for f in data["files"])
            return Entry(str(data["url"]), float(data["stored"]), int(data["lifetime"]), data.get("etag"),
                         data.get("last_modified"), str(data.get("cache_control", "")), files,
                         bool(data.get("authenticated", False)))
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None

    def store(self, url: str, entry: Entry) -> None:
        from backendpick.edges.durable import write_atomic

        data = {"format": FORMAT, "url": entry.url, "stored": entry.stored, "lifetime": entry.lifetime,
                "etag": entry.etag, "last_modified": entry.last_modified, "cache_control": entry.cache_control,
                "files": [list(f) for f in entry.files], "authenticated": entry.authenticated}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.folder / key(url), json.dumps(data))
        except OSError:
            pass  # a read-only or full cache: this run just does not cache

    def clear(self) -> int:
        """Remove every kept page; how many were removed."""
        removed = 0
        for entry in self.folder.glob("*.json"):
            try:
                entry.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def forget(self, url: str) -> None:
        try:
            (self.folder / key(url)).unlink()
        except OSError:
            pass
