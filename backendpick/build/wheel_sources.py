"""Where prebuilt wheels are looked for: the sources of ``[tool.backendpick.prebuilt]`` (URL
templates, folders, ``"github"`` for the project's release) and whether a file is there.

A URL is asked with HEAD (a one-byte GET where HEAD is refused) through the run's
``transport.Session``, so the user's pip certificate, proxy, trusted hosts and credentials
apply; a folder is looked into directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote, urlsplit

from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from backendpick.build.wheel_names import wheel_filename
from backendpick.inputs.config import GITHUB_SOURCE
from backendpick.knowledge.facts import Package
from backendpick.redaction import redact
from backendpick.target.installed_torch import TorchInfo

CHECK_TIMEOUT = 15.0  # per source; a blackholed mirror must not stall an install for minutes


@dataclass(frozen=True)
class Source:
    text: str  # as configured, for messages
    url: str | None = None  # template with {filename} / {version}
    folder: Path | None = None

    def label(self) -> str:
        return redact(self.text)


def sources(package: Package, configured: Sequence[str] | None, project_dir: Path) -> list[Source]:
    """The configured sources in order; by default the project's GitHub release."""
    out = []
    for text in configured if configured is not None else (GITHUB_SOURCE,):
        if text == GITHUB_SOURCE:
            out.append(Source(text, url=package.release_url))
        elif "://" in text:
            out.append(Source(text, url=text))
        else:
            folder = Path(text).expanduser()
            out.append(Source(text, folder=folder if folder.is_absolute() else project_dir / folder))
    return out


@dataclass(frozen=True)
class Found:
    location: str  # URL, or the path of a local file
    source: Source


def url_exists(url: str, session, timeout: float = CHECK_TIMEOUT) -> tuple[bool | None, str]:
    """True when the URL serves a file, False when the server says it has none, None when it
    cannot be asked (no network); with the reason in words. ``session``: a transport.Session."""
    import urllib.error

    if urlsplit(url).scheme == "file":
        from urllib.request import url2pathname

        path = Path(url2pathname(urlsplit(url).path))
        return (True, "") if path.is_file() else (False, "no such file")
    # HEAD first; servers that refuse HEAD (signed storage URLs) get a one-byte GET instead.
    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        try:
            with session.open(url, method=method, headers=headers, timeout=timeout):
                return True, ""
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                return False, f"not published (HTTP {exc.code})"
            if exc.code in (401, 403, 405, 501) and method == "HEAD":
                continue
            if exc.code in (401, 403):
                found = session.keychain.find(url)
                return None, (f"HTTP {exc.code} (the credentials from {found.source} were refused)" if found
                              else f"HTTP {exc.code} (no credentials for this host in the URL, an index URL, "
                                   ".netrc or keyring)")
            return None, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"network unreachable ({reason})"
    return None, "no answer"  # pragma: no cover - the loop returns


def look(filename: str, version: str, where: Sequence[Source], session,
         timeout: float = CHECK_TIMEOUT) -> tuple[Found | None, list[str]]:
    """The first source holding ``filename``; otherwise what each source said."""
    said = []
    for source in where:
        if source.folder is not None:
            path = source.folder / filename
            if path.is_file():
                return Found(str(path), source), said
            said.append(f"{source.label()}: not there" if source.folder.is_dir() else f"{source.label()}: no such folder")
            continue
        url = (source.url or "").replace("{filename}", quote(filename)).replace("{version}", quote(version))
        ok, why = url_exists(url, session, timeout)
        if ok:
            return Found(url, source), said
        said.append(f"{source.label()}: {why}")
    return None, said


def look_any(package: Package, specifier: SpecifierSet, torch: TorchInfo, python_tag: str, platform: str | None,
             where: Sequence[Source]) -> Found | None:
    """The newest prebuilt wheel in the folder sources that fits torch and ``specifier``; used
    when the index cannot be read, so the version cannot be chosen there."""
    best: tuple[Version, Found] | None = None
    for source in where:
        if source.folder is None or not source.folder.is_dir():
            continue
        for path in source.folder.glob(f"{package.wheel_name}-*.whl"):
            try:
                _name, version, _build, _tags = parse_wheel_filename(path.name)
            except (InvalidWheelFilename, InvalidVersion):
                continue
            public = version.public
            expected, _ = wheel_filename(package, public, torch, python_tag, platform)
            if expected == path.name and specifier.contains(Version(public), prereleases=True):
                if best is None or Version(public) > best[0]:
                    best = (Version(public), Found(str(path), source))
    return best[1] if best else None
