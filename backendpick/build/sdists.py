"""The sdist a source build compiles with the uv engine (issue 22 item 3: no pip process).

``uv build`` builds a file or a folder, never a requirement, and uv has no ``pip download``;
so with ``--installer uv`` backendpick finds the build package's sdist where ``pip wheel`` would
have looked, in uv's order (first-index: the first index that has the package wins): the
build phase's own ``--find-links`` (a lock's locked sdist) and ``--index-url``, else pip's
configured index (else PyPI), then each extra index, then the configured find-links; none but
the find-links with ``--no-index`` or an offline phase. A file on a server is downloaded by
backendpick (the run's certificate, proxy and credentials, as every request it makes) beside
the build's output folder, its sha256 checked where the page gives one (an HTML page's
``#sha256=`` fragment, a JSON page's ``hashes``); ``plan`` and
``--dry-run`` name the download and the file ``uv build`` gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import unquote, urlsplit

from packaging.specifiers import SpecifierSet

from backendpick.inputs.pip_config import PipConfig
from backendpick.redaction import redact

INDEX, LINKS = "index", "find-links"

_VALUED = {"--index-url": INDEX, "-i": INDEX, "--extra-index-url": INDEX, "--find-links": LINKS, "-f": LINKS}


def places(pip_config: PipConfig, options: Sequence[str], *, offline: bool, pypi: str) -> tuple[tuple[str, str], ...]:
    """Where the sdist is looked for, in order: (INDEX, index URL) or (LINKS, URL or folder)."""
    own: list[tuple[str, str, str]] = []  # (flag, kind, value) of the phase's own options
    words = list(options)
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if flag in _VALUED:
            value = value if eq else (words[i + 1] if i + 1 < len(words) else "")
            if value:
                own.append((flag, _VALUED[flag], value))
    configured_off = (pip_config.get("no-index") or "").lower() in ("1", "true", "yes", "on")
    no_index = offline or "--no-index" in words or configured_off
    links = [(LINKS, v) for _f, k, v in own if k == LINKS]
    if offline:
        return tuple(links)
    indexes: list[tuple[str, str]] = []
    if not no_index:
        main = next((v for f, _k, v in own if f in ("--index-url", "-i")), None)
        indexes.append((INDEX, main or pip_config.get("index-url") or pypi))
        indexes += [(INDEX, v) for f, _k, v in own if f == "--extra-index-url"]
        indexes += [(INDEX, u) for u in pip_config.list("extra-index-url")]
    links += [(LINKS, link) for link in pip_config.list("find-links")]
    return tuple(indexes + links)


def find(name: str, specifier: SpecifierSet, where: Sequence[tuple[str, str]], client,
         python_version: str | None = None) -> tuple[str | None, list[str]]:
    """The newest sdist of ``name`` that ``specifier`` accepts, from the first place that has
    one: its URL (a local file as its path); otherwise None and what each place said."""
    from backendpick.indexes.client import FileLink, IndexUnavailable, PageNotFound, installable

    said: list[str] = []
    for kind, location in where:
        try:
            if kind == INDEX:
                files = client.project(location, name)
            elif "://" not in location:
                folder = Path(location)
                files = [FileLink(p.name, p.resolve().as_uri()) for p in sorted(folder.iterdir()) if p.is_file()] \
                    if folder.is_dir() else []
            else:
                files = client.page(location)
        except PageNotFound:
            said.append(f"{redact(location)}: no {name} page")
            continue
        except (IndexUnavailable, OSError) as exc:
            said.append(f"{redact(location)}: cannot read it ({exc})")
            continue
        found = [c for c in installable(files, name, python_version=python_version, sdists=True) if not c.wheel]
        fitting = sorted((c for c in found if specifier.contains(c.version, prereleases=True)),
                         key=lambda c: c.version)
        if fitting:
            link = fitting[-1].file
            if urlsplit(link.url).scheme == "file":
                return _path(link.url), said
            # A JSON page's hash goes where an HTML page puts it, so ``download`` checks it too.
            known = link.sha256 and not urlsplit(link.url).fragment
            return (f"{link.url}#sha256={link.sha256}" if known else link.url), said
        said.append(f"{redact(location)}: no sdist of {name}{specifier}")
    return None, said


def local_file(sdist: str, wheel_dir: str) -> str:
    """The file ``uv build`` gets: a local sdist as it is; a URL's file downloaded into a folder
    beside the build's output folder (which each build empties first)."""
    if "://" not in sdist:
        return sdist
    name = unquote(urlsplit(sdist).path.rsplit("/", 1)[-1])
    return str(Path(wheel_dir).with_name(Path(wheel_dir).name + "-sdist") / name)


def download(url: str, dest: Path, session, say: Callable[[str], None]) -> None:
    """``url`` into ``dest`` with backendpick's own session, its sha256 checked against the
    link's ``#sha256=`` where there is one; an InstallError names what failed."""
    import urllib.error

    from backendpick.errors import InstallError
    from backendpick.target.distfiles import sha256_file

    say(f"downloading the sdist {redact(url)} to {dest} (uv build takes a file)")
    try:
        session.download(url.split("#", 1)[0], dest)
    except urllib.error.HTTPError as exc:
        raise InstallError(f"cannot download {redact(url)}: HTTP {exc.code}",
                           hint="check the index and its credentials (URL, .netrc or keyring)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InstallError(f"cannot download {redact(url)}: {getattr(exc, 'reason', exc)}") from None
    fragment = urlsplit(url).fragment
    if fragment.startswith("sha256="):
        digest = sha256_file(dest)
        if digest != fragment[len("sha256="):]:
            dest.unlink()
            raise InstallError(f"{redact(url)}: sha256 {digest} is not the {fragment[len('sha256='):]} its index "
                               "names; nothing was built")


def _path(url: str) -> str:
    from urllib.request import url2pathname

    return url2pathname(urlsplit(url).path)


__all__ = ["INDEX", "LINKS", "download", "find", "local_file", "places"]
