"""A local PEP 503 (HTML) / PEP 691 (JSON) "simple" index server on 127.0.0.1.

One server hosts several named indexes; each is a directory of distribution
files under ``root``::

    root/<name>/<file>              served at /<name>/files/<file>
    /<name>/simple/                 project list
    /<name>/simple/<project>/       links with #sha256=... and data-requires-python

    /<name>/files/<wheel>.metadata  the wheel's METADATA (PEP 658/714, as PyPI serves it)

Directories are read on every request, so files may be added while serving.
Every request is logged so tests can assert which index served what.

Every response says ``Cache-Control: no-store`` (pages change when tests add files), unless
``page_caching`` gives an index's project pages a policy of their own: any Cache-Control (or
none), and an ETag the server honours in ``If-None-Match`` with a 304.

``require_auth`` puts an index behind HTTP Basic auth, as a company mirror (Artifactory, Nexus,
devpi) is: every request for it without the right ``Authorization`` header gets a 401 with a
``WWW-Authenticate: Basic`` challenge, and the log says which requests were authorized.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import html
import json
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from typing import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from .dists import normalize_name

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
_OCTET_STREAM = "application/octet-stream"
_DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the server answered."""

    path: str  # raw request path, percent-decoded
    index: str | None  # first path segment, when it names an existing index
    kind: str  # "root" | "project" | "file" | "metadata" | "other"
    name: str  # normalized project for "project", file name for "file", else ""
    status: int
    content_type: str  # "" for errors and files
    conditional: bool = False  # sent If-None-Match or If-Modified-Since
    user: str | None = None  # the Basic-auth user name the request carried, if any
    agent: str = ""  # its User-Agent


@dataclass(frozen=True)
class _Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain"
    location: str | None = None
    cache_control: str | None = "no-store"  # None: no Cache-Control header at all
    etag: str | None = None
    last_modified: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == HTTPStatus.OK

    @classmethod
    def redirect(cls, location: str) -> _Response:
        return cls(HTTPStatus.MOVED_PERMANENTLY, location=location)


def project_of(filename: str) -> str | None:
    """Normalized project name a distribution file belongs to, or None if not one."""
    if filename.endswith(".whl"):
        return normalize_name(filename.split("-", 1)[0])
    for suffix in _DIST_SUFFIXES[1:]:
        if filename.endswith(suffix):
            return normalize_name(filename[: -len(suffix)].rsplit("-", 1)[0])
    return None


def _read_requires_python(path: Path) -> str | None:
    """Requires-Python from a wheel's METADATA or an sdist's PKG-INFO."""
    raw: bytes | None = None
    try:
        if path.name.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    parts = member.split("/")
                    if (
                        len(parts) == 2
                        and parts[0].endswith(".dist-info")
                        and parts[1] == "METADATA"
                    ):
                        raw = zf.read(member)
                        break
        elif path.name.endswith((".tar.gz", ".tar.bz2")):
            with tarfile.open(path) as tf:
                for info in tf.getmembers():
                    parts = info.name.split("/")
                    if len(parts) == 2 and parts[1] == "PKG-INFO":
                        extracted = tf.extractfile(info)
                        raw = extracted.read() if extracted else None
                        break
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        return None
    if raw is None:
        return None
    headers = email.parser.BytesHeaderParser().parsebytes(raw)
    value = headers.get("Requires-Python")
    return str(value).strip() if value else None


def _wheel_metadata(path: Path) -> bytes | None:
    """A wheel's ``*.dist-info/METADATA``, served as its PEP 658 metadata file."""
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                parts = member.split("/")
                if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                    return zf.read(member)
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def _negotiate(accept: str, json_api: bool) -> str:
    """Pick the response media type per PEP 691 content negotiation."""
    best, best_q = "text/html", 0.0
    offered = (
        [JSON_TYPE, HTML_TYPE, "text/html"] if json_api else [HTML_TYPE, "text/html"]
    )
    for item in (accept or "text/html").split(","):
        fields = [f.strip() for f in item.split(";")]
        media, q = fields[0].lower(), 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        choice = "text/html" if media == "*/*" else media if media in offered else None
        if choice is not None and q > best_q:
            best, best_q = choice, q
    return best


class Gate:
    """Installer requests matching ``held`` wait until a request matching ``opens`` arrived (at
    most ``timeout`` seconds; ``timed_out`` then says so): how a test proves that two pip runs
    overlap without timing them. backendpick's own look-ups (User-Agent backendpick) neither
    open nor wait: only the installers' requests count."""

    def __init__(self, held: Callable[[str], bool], opens: Callable[[str], bool], timeout: float):
        self.held, self.opens, self.timeout = held, opens, timeout
        self.open = threading.Event()
        self.timed_out = False
        self.waited = 0

    def see(self, path: str, agent: str) -> None:
        if self.opens(path) and not agent.startswith("backendpick"):
            self.open.set()

    def hold(self, path: str, agent: str) -> None:
        if self.held(path) and not self.opens(path) and not agent.startswith("backendpick") and not self.open.is_set():
            self.waited += 1
            if not self.open.wait(self.timeout):
                self.timed_out = True


class IndexServer:
    """Threaded HTTP server hosting named simple indexes from ``root/<name>/``."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        json_api: bool = True,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.json_api = json_api
        self._log: list[RequestRecord] = []
        self._gates: list[Gate] = []
        self._lock = threading.Lock()
        # (path, mtime_ns, size) -> (sha256, requires_python, sha256 of the PEP 658 metadata).
        # Keyed on stat because tests may rewrite files (atomically) while the server runs.
        self._file_info: dict[tuple[str, int, int], tuple[str, str | None, str | None]] = {}
        self._host = host
        # index -> (Cache-Control of its project pages or None for none, send an ETag)
        self._caching: dict[str, tuple[str | None, bool, str | None]] = {}
        self._auth: dict[str, tuple[str, str]] = {}  # index -> (user, password) it requires
        self._current = threading.local()  # the request a handler thread is answering: (user, agent)
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="index-server", daemon=True
        )
        self._thread.start()

    # -- public API ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._httpd.server_address[1]}"

    def url(self, name: str) -> str:
        """Simple-API URL of index ``name``, e.g. ``http://127.0.0.1:PORT/cu124/simple``."""
        return f"{self.base_url}/{name}/simple"

    def file_url(self, name: str, filename: str) -> str:
        return f"{self.base_url}/{name}/files/{quote(filename)}"

    def index_dir(self, name: str) -> Path:
        """Directory holding index ``name``'s files (created on first use)."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def indexes(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    @property
    def log(self) -> list[RequestRecord]:
        """Snapshot of all requests so far, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def paths(self) -> list[str]:
        return [record.path for record in self.log]

    def gate(self, held: Callable[[str], bool], opens: Callable[[str], bool], timeout: float = 60.0) -> Gate:
        """Hold the requests ``held`` accepts until one ``opens`` accepts has come (``Gate``);
        ``ungate`` removes it."""
        gate = Gate(held, opens, timeout)
        with self._lock:
            self._gates.append(gate)
        return gate

    def ungate(self, gate: Gate) -> None:
        with self._lock:
            self._gates.remove(gate)
        gate.open.set()

    def page_caching(self, index: str, cache_control: str | None, *, etag: bool = False,
                     last_modified: str | None = None) -> None:
        """How ``index`` answers for its project pages: ``cache_control`` (None: no such
        header) and, with ``etag``, an ETag of the page's content, a 304 to a request whose
        If-None-Match names the current one."""
        with self._lock:
            self._caching[index] = (cache_control, etag, last_modified)

    def require_auth(self, index: str, user: str, password: str) -> None:
        """Answer requests for ``index`` only with HTTP Basic auth of ``user``/``password``: a 401
        (``WWW-Authenticate: Basic``) without it or with any other."""
        with self._lock:
            self._auth[index] = (user, password)

    def _authorized(self, index: str | None, header: str | None) -> tuple[bool, str | None]:
        """Whether a request for ``index`` with ``Authorization: header`` may be answered, and the
        user name it carried."""
        user = None
        if header and header.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = None, None
        else:
            password = None
        with self._lock:
            wanted = self._auth.get(index or "")
        return wanted is None or (user, password) == wanted, user

    def page_requests(self, index: str, project: str) -> list[RequestRecord]:
        """The requests for ``project``'s page on ``index`` (any status), oldest first."""
        wanted = normalize_name(project)
        return [r for r in self.log if r.index == index and r.kind == "project" and r.name == wanted]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def projects_requested(self, index: str) -> list[str]:
        """Normalized project names whose pages were requested from ``index``."""
        return [r.name for r in self.log if r.index == index and r.kind == "project"]

    def files_downloaded(self, index: str) -> list[str]:
        """File names successfully downloaded from ``index``."""
        return [
            r.name
            for r in self.log
            if r.index == index and r.kind == "file" and r.status == 200
        ]

    def indexes_asked_for(self, project: str) -> list[str]:
        """Indexes whose page for ``project`` was requested (any status), in order."""
        wanted = normalize_name(project)
        return [
            r.index
            for r in self.log
            if r.kind == "project" and r.name == wanted and r.index
        ]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> IndexServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _info(self, path: Path) -> tuple[str, str | None, str | None]:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._file_info.get(key)
        if cached is None:
            metadata = _wheel_metadata(path) if path.name.endswith(".whl") else None
            cached = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                _read_requires_python(path),
                hashlib.sha256(metadata).hexdigest() if metadata is not None else None,
            )
            with self._lock:
                self._file_info[key] = cached
        return cached

    def _dist_files(self, index: str) -> list[Path]:
        directory = self.root / index
        return sorted(
            p for p in directory.iterdir() if p.is_file() and project_of(p.name)
        )

    def _root_page(self, index: str, media: str) -> bytes:
        projects = sorted({project_of(p.name) or "" for p in self._dist_files(index)})
        if media == JSON_TYPE:
            return json.dumps(
                {
                    "meta": {"api-version": "1.0"},
                    "projects": [{"name": p} for p in projects],
                }
            ).encode("utf-8")
        links = "".join(
            f'<a href="{html.escape(p)}/">{html.escape(p)}</a><br/>\n' for p in projects
        )
        return _html_page("Simple index", links)

    def _project_page(self, index: str, project: str, media: str) -> bytes | None:
        files = [p for p in self._dist_files(index) if project_of(p.name) == project]
        if not files:
            return None
        entries = []
        for path in files:
            sha256, requires_python, meta = self._info(path)
            entries.append(
                (path.name, f"../../files/{quote(path.name)}", sha256, requires_python, meta)
            )
        if media == JSON_TYPE:
            body = {
                "meta": {"api-version": "1.0"},
                "name": project,
                "files": [
                    {
                        "filename": name,
                        "url": href,
                        "hashes": {"sha256": sha256},
                        **({"requires-python": rp} if rp else {}),
                        **({"core-metadata": {"sha256": meta}, "dist-info-metadata": {"sha256": meta}} if meta else {}),
                    }
                    for name, href, sha256, rp, meta in entries
                ],
            }
            return json.dumps(body).encode("utf-8")
        links = []
        for name, href, sha256, rp, meta in entries:
            rp_attr = f' data-requires-python="{html.escape(rp)}"' if rp else ""
            if meta:
                rp_attr += f' data-core-metadata="sha256={meta}" data-dist-info-metadata="sha256={meta}"'
            anchor = f'href="{html.escape(href)}#sha256={sha256}"{rp_attr}'
            links.append(f"<a {anchor}>{html.escape(name)}</a><br/>\n")
        return _html_page(f"Links for {project}", "".join(links))

    def _cached_page(self, index: str, body: bytes, media: str, if_none_match: str | None) -> _Response:
        """A project page under the index's ``page_caching`` policy (a 304 when it matches)."""
        with self._lock:
            cache_control, with_etag, modified = self._caching.get(index, ("no-store", False, None))
        etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"' if with_etag else None
        if etag is not None and if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
            return _Response(HTTPStatus.NOT_MODIFIED, cache_control=cache_control, etag=etag, last_modified=modified)
        return _Response(HTTPStatus.OK, body, media, cache_control=cache_control, etag=etag, last_modified=modified)

    def _respond(self, path: str, accept: str, conditional: dict | None = None) -> _Response:
        """Route one GET/HEAD request and log it. ``conditional``: its If-* headers."""
        conditional = conditional or {}
        parts = [part for part in path.split("/") if part]
        index = parts[0] if parts else None
        # Dot names would let "/../" escape the root.
        if index is None or index.startswith(".") or not (self.root / index).is_dir():
            return self._logged(
                path, None, "other", "", _Response(HTTPStatus.NOT_FOUND)
            )
        section, rest = (parts[1], parts[2:]) if len(parts) > 1 else ("", [])
        if section == "simple" and not rest:
            if not path.endswith("/"):
                redirect = _Response.redirect(f"/{index}/simple/")
                return self._logged(path, index, "root", "", redirect)
            media = _negotiate(accept, self.json_api)
            page = _Response(HTTPStatus.OK, self._root_page(index, media), media)
            return self._logged(path, index, "root", "", page)
        if section == "simple" and len(rest) == 1:
            project = normalize_name(rest[0])
            if rest[0] != project or not path.endswith("/"):
                # PEP 503: redirect to the normalized, slash-terminated URL.
                redirect = _Response.redirect(f"/{index}/simple/{project}/")
                return self._logged(path, index, "project", project, redirect)
            media = _negotiate(accept, self.json_api)
            body = self._project_page(index, project, media)
            if body is None:
                missing = _Response(HTTPStatus.NOT_FOUND)
                return self._logged(path, index, "project", project, missing)
            page = self._cached_page(index, body, media, conditional.get("If-None-Match"))
            return self._logged(path, index, "project", project, page, conditional=bool(conditional))
        if section == "files" and len(rest) == 1 and rest[0].endswith(".whl.metadata"):
            wheel = self.root / index / rest[0][: -len(".metadata")]
            metadata = _wheel_metadata(wheel) if wheel.is_file() else None
            if metadata is not None:
                return self._logged(path, index, "metadata", rest[0], _Response(HTTPStatus.OK, metadata, _OCTET_STREAM))
            return self._logged(path, index, "metadata", rest[0], _Response(HTTPStatus.NOT_FOUND))
        if section.endswith(".html") and not rest:
            # A find-links page (data.pyg.org/whl/torch-2.5.0+cu124.html): a static file of
            # the index folder whose links point into its files/.
            page_path = self.root / index / section
            if page_path.is_file():
                page = _Response(HTTPStatus.OK, page_path.read_bytes(), "text/html")
                return self._logged(path, index, "page", section, page)
            return self._logged(path, index, "page", section, _Response(HTTPStatus.NOT_FOUND))
        if section == "files" and len(rest) == 1:
            file_path = self.root / index / rest[0]
            if project_of(rest[0]) and file_path.is_file():
                data = _Response(HTTPStatus.OK, file_path.read_bytes(), _OCTET_STREAM)
                return self._logged(path, index, "file", rest[0], data)
            missing = _Response(HTTPStatus.NOT_FOUND)
            return self._logged(path, index, "file", rest[0], missing)
        return self._logged(path, index, "other", "", _Response(HTTPStatus.NOT_FOUND))

    def _logged(
        self, path: str, index: str | None, kind: str, name: str, response: _Response,
        *, conditional: bool = False,
    ) -> _Response:
        page_type = response.content_type if kind in ("root", "project") else ""
        user, agent = getattr(self._current, "who", (None, ""))
        record = RequestRecord(
            path,
            index,
            kind,
            name,
            int(response.status),
            page_type if response.ok else "",
            conditional,
            user,
            agent,
        )
        with self._lock:
            self._log.append(record)
        return response

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: pip reuses connections

            def do_GET(self) -> None:
                self._serve(send_body=True)

            def do_HEAD(self) -> None:
                self._serve(send_body=False)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the request log replaces stderr noise

            def _serve(self, send_body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                with server._lock:
                    gates = list(server._gates)
                agent = self.headers.get("User-Agent", "")
                for gate in gates:  # every gate sees the request before any holds it
                    gate.see(path, agent)
                for gate in gates:
                    gate.hold(path, agent)
                conditional = {h: self.headers[h] for h in ("If-None-Match", "If-Modified-Since") if h in self.headers}
                parts = [part for part in path.split("/") if part]
                allowed, user = server._authorized(parts[0] if parts else None, self.headers.get("Authorization"))
                server._current.who = (user, agent)  # for the log record of this request
                if allowed:
                    response = server._respond(path, self.headers.get("Accept", ""), conditional)
                else:
                    response = server._logged(path, parts[0], "denied", "", _Response(HTTPStatus.UNAUTHORIZED))
                self.send_response(response.status)
                content_type = response.content_type
                if content_type.startswith("text/"):
                    content_type += "; charset=utf-8"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(response.body)))
                if response.location:
                    self.send_header("Location", response.location)
                if response.status == HTTPStatus.UNAUTHORIZED:
                    self.send_header("WWW-Authenticate", 'Basic realm="test index"')
                # Pages change when tests add files: no HTTP caching unless a test asks for it.
                if response.cache_control is not None:
                    self.send_header("Cache-Control", response.cache_control)
                if response.etag is not None:
                    self.send_header("ETag", response.etag)
                if response.last_modified is not None:
                    self.send_header("Last-Modified", response.last_modified)
                self.end_headers()
                if send_body:
                    self.wfile.write(response.body)

        return Handler


def _html_page(title: str, links: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta name="pypi:repository-version" content="1.0">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{links}</body>\n</html>\n"
    ).encode()
