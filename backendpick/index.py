"""Read project pages of a package index (PEP 691 JSON, else PEP 503 HTML).

Used to learn which backends really publish a torch for this Python and this specifier, so a
new release or a company mirror works without a new backendpick. urllib keeps this cheap; it
honours the user's pip certificate, proxy and trusted hosts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence
from urllib.parse import urljoin, urlsplit

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from backendpick.config import normalize, redact
from backendpick.pipconf import PipConfig

_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"


@dataclass(frozen=True)
class FileLink:
    filename: str
    url: str
    requires_python: str | None = None
    yanked: bool = False


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
            FileLink(f["filename"], urljoin(base_url, f["url"]), f.get("requires-python"), bool(f.get("yanked")))
            for f in data.get("files", [])
        ]
    files = []
    for href, attrs in _links(body.decode("utf-8", errors="replace")):
        url = urljoin(base_url, href)
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        from urllib.parse import unquote

        files.append(FileLink(unquote(name), url, attrs.get("data-requires-python"), "data-yanked" in attrs))
    return files


class IndexClient:
    def __init__(self, pip_config: PipConfig, timeout: float | None = None):
        self.pip_config = pip_config
        # Short: a blackholed mirror must not stall a Docker build; pip retries on its own later.
        self.timeout = timeout if timeout is not None else min(pip_config.timeout, 15.0)
        self._cache: dict[str, list[FileLink]] = {}

    def _context(self, host: str):
        import ssl

        ctx = ssl.create_default_context(cafile=self.pip_config.cert) if self.pip_config.cert else ssl.create_default_context()
        if host in self.pip_config.trusted_hosts:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def project(self, index_url: str, name: str) -> list[FileLink]:
        """Files of ``name`` on the index at ``index_url``; PageNotFound for a 404."""
        return self.page(index_url.rstrip("/") + "/" + normalize(name) + "/")

    def page(self, url: str) -> list[FileLink]:
        """Files linked from the page at ``url`` (a project page, or a find-links page)."""
        import urllib.error
        import urllib.request

        if url in self._cache:
            return self._cache[url]
        parts = urlsplit(url)
        if parts.scheme == "file":
            files = _file_project(url)
            self._cache[url] = files
            return files
        handlers: list = []
        if self.pip_config.proxy:
            handlers.append(urllib.request.ProxyHandler({"http": self.pip_config.proxy, "https": self.pip_config.proxy}))
        if parts.scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=self._context(parts.hostname or "")))
        if parts.username:
            # Credentials in the URL: urllib does not send them by itself.
            mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            from urllib.parse import unquote

            mgr.add_password(None, f"{parts.scheme}://{parts.hostname}", unquote(parts.username), unquote(parts.password or ""))
            handlers.append(urllib.request.HTTPBasicAuthHandler(mgr))
            url_clean = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
        else:
            url_clean = url
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url_clean, headers={"Accept": _ACCEPT, "User-Agent": "backendpick"})
        try:
            with opener.open(request, timeout=self.timeout) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "text/html")
                final = resp.geturl()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise PageNotFound(f"{redact(url)} (HTTP 404)") from None
            raise IndexUnavailable(f"{redact(url)}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise IndexUnavailable(f"{redact(url)}: {reason}") from None
        files = parse_page(body, ctype, final)
        self._cache[url] = files
        return files


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


def matching_versions(
    files: Iterable[FileLink],
    name: str,
    specifier: SpecifierSet,
    python_version: str,
    tags: Sequence[str],
) -> list[Version]:
    """Versions of ``name`` with a wheel installable on the target that satisfy ``specifier``."""
    supported = set(tags)
    found: set[Version] = set()
    for f in files:
        if f.yanked or not f.filename.endswith(".whl"):
            continue
        try:
            wname, version, _build, wtags = parse_wheel_filename(f.filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        if normalize(wname) != normalize(name):
            continue
        if supported and not any(str(t) in supported for t in wtags):
            continue
        if f.requires_python:
            try:
                if not SpecifierSet(f.requires_python).contains(python_version, prereleases=True):
                    continue
            except InvalidSpecifier:
                pass
        if specifier.contains(version):
            found.add(version)
    return sorted(found)


def fetch_many(client: IndexClient, pages: dict) -> dict:
    """Fetch several ``{key: (index_url, project)}`` pages at once: {key: files | exception}."""
    from concurrent.futures import ThreadPoolExecutor

    def one(page: tuple):
        try:
            return client.project(*page)
        except (PageNotFound, IndexUnavailable) as exc:
            return exc

    if len(pages) == 1:  # no thread for a single page
        return {key: one(page) for key, page in pages.items()}
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(pages)))) as pool:
        return dict(zip(pages, pool.map(one, pages.values())))
