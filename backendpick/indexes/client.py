"""Read project pages of a package index (PEP 691 JSON, else PEP 503 HTML).

Used to learn which backends really publish a torch for this Python and this specifier, so a
new release or a company mirror works without a new backendpick. urllib keeps this cheap; the
requests go out as pip's would (indexes/transport.py: the user's certificate, proxy, trusted hosts and
credentials).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from backendpick.inputs.pip_config import PipConfig
from backendpick.model.names import normalize
from backendpick.redaction import redact

_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"


@dataclass(frozen=True)
class FileLink:
    filename: str
    url: str
    requires_python: str | None = None
    yanked: bool = False
    metadata: bool = False  # the index serves its core metadata at URL + ".metadata" (PEP 658/714)
    # The file's sha256 where a JSON page names it (PEP 691 ``hashes``); an HTML page gives it
    # as the URL's ``#sha256=`` fragment instead (PEP 503), which stays in ``url``.
    sha256: str | None = None


class PageNotFound(Exception):
    pass


class IndexUnavailable(Exception):
    pass


def _links(body: str) -> list[tuple[str, dict]]:
    """(href, attributes) of every anchor of an HTML page. html.parser is imported here: a
    run that asks no index (a re-run on a finished environment) does not pay for it."""
    from html.parser import HTMLParser

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.links: list[tuple[str, dict]] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "a":
                self.links.append((dict(attrs).get("href") or "", dict(attrs)))

    parser = Links()
    parser.feed(body)
    return parser.links


def parse_page(body: bytes, content_type: str, base_url: str) -> list[FileLink]:
    """Files on a project page, in either format."""
    if "json" in content_type:
        data = json.loads(body.decode("utf-8"))
        return [
            FileLink(f["filename"], urljoin(base_url, f["url"]), f.get("requires-python"), bool(f.get("yanked")),
                     bool(f.get("core-metadata") or f.get("dist-info-metadata")), (f.get("hashes") or {}).get("sha256"))
            for f in data.get("files", [])
        ]
    files = []
    for href, attrs in _links(body.decode("utf-8", errors="replace")):
        url = urljoin(base_url, href)
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        from urllib.parse import unquote

        meta = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        files.append(FileLink(unquote(name), url, attrs.get("data-requires-python"), "data-yanked" in attrs,
                              meta is not None and meta.lower() != "false"))
    return files


class IndexClient:
    """Project pages of indexes, each read once per run; with ``env`` (the user's environment)
    http(s) pages are also kept on disk between runs as HTTP caching allows (indexes/page_cache.py), and
    ``refresh`` (``--refresh``) revalidates every kept page before using it. ``urls``: configured
    URLs whose credentials count for their host (``credentials.configured_urls``).

    ``session`` sends every request backendpick makes itself (pages, prebuilt checks and
    downloads) with the run's credentials (``credentials.Keychain``)."""

    def __init__(self, pip_config: PipConfig, timeout: float | None = None, *,
                 env: Mapping[str, str] | None = None, refresh: bool = False, urls: Iterable[str] = ()):
        from backendpick.indexes.credentials import Keychain

        self.pip_config = pip_config
        # Short: a blackholed mirror must not stall a Docker build; pip retries on its own later.
        self.timeout = timeout if timeout is not None else min(pip_config.timeout, 15.0)
        self.refresh = refresh
        self._cache: dict[str, list[FileLink]] = {}
        # Per page answered: (stored, fresh until) of the kept entry that answers a later run
        # alike without a request, or None where a later run would ask again (``kept_pages``).
        self._answered: dict[str, tuple[float, float] | None] = {}
        self._disk = None
        self._env = dict(os.environ if env is None else env)
        self.keychain = Keychain(self._env, pip_config, urls)
        self._session = None
        if env is not None:
            from backendpick.edges import paths
            from backendpick.indexes.page_cache import PageCache

            self._disk = PageCache(paths.page_cache(env))

    @property
    def session(self):
        """The transport (created on first use: a run answered from the cache sends nothing)."""
        if self._session is None:
            from backendpick.indexes.transport import Session

            self._session = Session(self.pip_config, self._env, self.keychain, self.timeout)
        return self._session

    def project(self, index_url: str, name: str) -> list[FileLink]:
        """Files of ``name`` on the index at ``index_url``; PageNotFound for a 404."""
        self.keychain.learn(index_url)  # an index URL, as pip's --index-url: its credentials count for its host
        return self.page(_project_url(index_url, name))

    def page(self, url: str) -> list[FileLink]:
        """Files linked from the page at ``url`` (a project page, or a find-links page)."""
        if url in self._cache:
            return self._cache[url]
        if urlsplit(url).scheme == "file":
            self._answered[url] = None  # read from its folder each time, which nothing watches
            files = _file_project(url)
        else:
            files = self._http_page(url)
        self._cache[url] = files
        return files

    def _http_page(self, url: str) -> list[FileLink]:
        """A page from the disk cache while it is fresh (no request: urllib is not even
        imported), else from the index, revalidating what the cache holds."""
        entry = self._disk.load(url) if self._disk is not None else None
        files = self._fresh(url, entry)
        if files is not None:
            return files
        self._answered[url] = None  # until the answer is kept fresh (_keep)
        return self._fetch(url, entry if entry is not None and entry.has_validator else None)

    def _fresh(self, url: str, entry) -> list[FileLink] | None:
        """The links of ``entry`` (the disk cache's page for ``url``) while it answers without a
        request, else None."""
        import time

        # A page that needed credentials is shown to no one the server has not just accepted:
        # always revalidated, with this run's credentials (indexes/page_cache.py).
        if entry is not None and not self.refresh and not entry.authenticated and entry.fresh(time.time()):
            self._answered[url] = (entry.stored, entry.stored + entry.lifetime)
            return [FileLink(*f) for f in entry.files]
        return None

    def kept_project(self, index_url: str, name: str) -> list[FileLink] | None:
        """``project``'s answer when it needs no request (read before in this run, or fresh in
        the disk cache), else None: ``fetch_many`` asks in threads only for the others."""
        self.keychain.learn(index_url)
        url = _project_url(index_url, name)
        if url not in self._cache and self._disk is not None and urlsplit(url).scheme != "file":
            files = self._fresh(url, self._disk.load(url))
            if files is not None:
                self._cache[url] = files
        return self._cache.get(url)

    def _fetch(self, url: str, entry) -> list[FileLink]:
        """GET the page, conditional when ``entry`` (a stored page with validators) is given:
        a 304 keeps its links and refreshes it, a 200 replaces it. Errors are never answered
        from the cache: an index that is down is an error as it was without one."""
        import time
        import urllib.error

        from backendpick.indexes import page_cache

        headers = {"Accept": _ACCEPT}
        if entry is not None:
            headers.update(entry.conditional_headers())
        try:
            with self.session.open(url, headers=headers) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "text/html")
                final = resp.geturl()
                reply = resp.headers
        except urllib.error.HTTPError as exc:
            # Closed here: the error below keeps it as its context, and closed only at the
            # interpreter's exit its socket may be gone ("Exception ignored ... I/O operation on
            # closed file" on stderr, after the answer).
            exc.close()
            if exc.code == 304 and entry is not None:
                self._keep(url, page_cache.revalidated(entry, exc.headers, time.time()))
                return [FileLink(*f) for f in entry.files]
            if exc.code == 404:
                raise PageNotFound(f"{redact(url)} (HTTP 404)") from None
            raise IndexUnavailable(f"{redact(url)}: HTTP {exc.code}{self.unauthorized(url, exc.code)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise IndexUnavailable(f"{redact(url)}: {reason}") from None
        files = parse_page(body, ctype, final)
        rows = [(f.filename, f.url, f.requires_python, f.yanked, f.metadata, f.sha256) for f in files]
        # Sent with credentials (found before, or from keyring after a 401: then kept for the host).
        authenticated = self.keychain.find(url) is not None
        self._keep(url, page_cache.new_entry(url, reply, rows, time.time(), authenticated=authenticated))
        return files

    def unauthorized(self, url: str, code: int) -> str:
        """What a 401 or 403 means here, in words: which credentials went, or where none were found."""
        if code not in (401, 403):
            return ""
        auth = self.keychain.find(url)
        if auth is not None:
            return f" (the credentials from {auth.source} were refused)"
        said = f"; {self.keychain.keyring_said}" if self.keychain.keyring_said else ""
        return f" (no credentials for this host in the URL, an index URL, .netrc or keyring{said})"

    def metadata(self, file: FileLink) -> str | None:
        """The core metadata (METADATA text) of a wheel the page says the index serves it for
        (PEP 658/714), without downloading the wheel; None when not served or not readable. Sent
        through the session, with the credentials the keychain holds for its host."""
        if not file.metadata:
            return None
        import urllib.error

        self._answered[file.url] = None  # asked each time: never kept

        url = file.url.split("#", 1)[0] + ".metadata"
        if urlsplit(url).scheme == "file":
            from pathlib import Path
            from urllib.request import url2pathname

            try:
                return Path(url2pathname(urlsplit(url).path)).read_text(encoding="utf-8", errors="replace")
            except OSError:
                return None
        try:
            with self.session.open(url) as resp:
                return resp.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _keep(self, url: str, entry) -> None:
        """Store ``entry`` for ``url``; None (the server said not to keep it): drop the old one."""
        if self._disk is None:
            return
        if entry is None:
            self._disk.forget(url)
        else:
            self._disk.store(url, entry)
            if not entry.authenticated and entry.lifetime > 0:
                self._answered[url] = (entry.stored, entry.stored + entry.lifetime)

    def kept_pages(self) -> tuple[list[str], tuple[float, float] | None] | None:
        """The kept entries' files of every page this client answered, and the span of time in
        which all of them answer a later run alike, without a request (each fresh; None: no page
        was read). None when a later run would ask an index again: a page not kept or kept
        stale, one that needed credentials (always revalidated), a metadata file, a local page.
        What lets ``detect`` answer from a record (state/noop.py)."""
        if self._disk is None or any(span is None for span in self._answered.values()):
            return None
        from backendpick.indexes.page_cache import key

        spans = list(self._answered.values())
        files = [str(self._disk.folder / key(url)) for url in self._answered]
        return files, ((max(s for s, _ in spans), min(u for _, u in spans)) if spans else None)


def _file_project(url: str) -> list[FileLink]:
    """A project page of a ``file://`` index, read as pip reads it: a folder per project holding
    an ``index.html`` (PEP 503's static layout)."""
    from pathlib import Path
    from urllib.request import url2pathname

    folder = Path(url2pathname(urlsplit(url).path))
    page = folder / "index.html"
    if not folder.is_dir() or not page.is_file():
        raise PageNotFound(f"{redact(url)} (no {page})")
    try:
        body = page.read_bytes()
    except OSError as exc:
        raise IndexUnavailable(f"{redact(url)}: {exc.strerror or exc}") from None
    return parse_page(body, "text/html", page.as_uri())


@dataclass(frozen=True)
class Candidate:
    """A file of a project page that installs on the target."""

    file: FileLink
    version: Version
    rank: int  # where its best tag stands in the target's tag list (lower is better); 0 for an sdist

    @property
    def wheel(self) -> bool:
        return self.file.filename.endswith(".whl")


def installable(
    files: Iterable[FileLink],
    name: str,
    *,
    tags: Sequence[str] = (),
    python_version: str | None = None,
    sdists: bool = False,
    yanked: bool = False,
) -> list[Candidate]:
    """The files of ``name`` a target can install, as pip filters them: the name, a wheel tag
    the target supports (no tags given: any), its Requires-Python (no Python given: not
    checked), not yanked unless ``yanked`` (pip installs a yanked release pinned with ``==``),
    sdists only with ``sdists``. Files whose names do not parse are left out."""
    order: dict[str, int] = {}
    for i, tag in enumerate(tags):
        order.setdefault(str(tag), i)
    wanted = normalize(name)
    out = []
    for f in files:
        if f.yanked and not yanked:
            continue
        rank = 0
        try:
            if f.filename.endswith(".whl"):
                fname, version, _build, ftags = parse_wheel_filename(f.filename)
                if order:
                    ranks = [order[str(t)] for t in ftags if str(t) in order]
                    if not ranks:
                        continue
                    rank = min(ranks)
            elif sdists:
                fname, version = parse_sdist_filename(f.filename)
            else:
                continue
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            continue
        if normalize(fname) != wanted:
            continue
        if python_version is not None and f.requires_python:
            try:
                if not SpecifierSet(f.requires_python).contains(python_version, prereleases=True):
                    continue
            except InvalidSpecifier:
                pass  # pip ignores a Requires-Python it cannot read
        out.append(Candidate(f, version, rank))
    return out


def matching_versions(
    files: Iterable[FileLink],
    name: str,
    specifier: SpecifierSet,
    python_version: str,
    tags: Sequence[str],
) -> list[Version]:
    """Versions of ``name`` with a wheel installable on the target that satisfy ``specifier``."""
    found = {c.version for c in installable(files, name, tags=tags, python_version=python_version)}
    return sorted(v for v in found if specifier.contains(v))


def _project_url(index_url: str, name: str) -> str:
    return index_url.rstrip("/") + "/" + normalize(name) + "/"


def fetch_many(client: IndexClient, pages: dict) -> dict:
    """Fetch several ``{key: (index_url, project)}`` pages at once: {key: files | exception}."""

    def one(page: tuple):
        try:
            return client.project(*page)
        except (PageNotFound, IndexUnavailable) as exc:
            return exc

    # Pages answered without a request (fresh in the page cache, as on any warm run) are read here;
    # threads only for those that need one, so a warm run does not even import
    # concurrent.futures (issue 22 item 2). Test doubles of the client have ``project`` only.
    kept = client.kept_project if isinstance(client, IndexClient) else (lambda *_page: None)
    answers = {key: files for key, page in pages.items() if (files := kept(*page)) is not None}
    asking = {key: page for key, page in pages.items() if key not in answers}
    if len(asking) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(asking))) as pool:
            answers.update(zip(asking, pool.map(one, asking.values())))
    else:  # no thread for a single page
        answers.update((key, one(page)) for key, page in asking.items())
    return {key: answers[key] for key in pages}
