"""Credentials for a company mirror: found as pip finds them for backendpick's own requests, and
handed to pip and uv in their environment, never on a command line (issue 19).

Where pip finds them (``pip/_internal/network/auth.py``, ``MultiDomainBasicAuth``; pip 23-25,
checked 2026-12-05), in this order, for every request:

1. the user information of the URL itself, when it has a user name and a password;
2. that of a configured index URL on the same host and port (the one sharing the longest path
   with the request first): wheels linked from a private index come with the
   index's credentials;
3. ``.netrc`` for the host name (the file ``NETRC`` names, else ``~/.netrc``, ``~/_netrc``;
   requests' ``get_netrc_auth``);
4. only after a 401, and only when pip's configuration names ``keyring-provider`` ``subprocess``
   or ``import`` (``auto`` asks no keyring without a terminal, and backendpick never prompts):
   ``keyring get <index URL> <user name>``, then with ``host:port``; the subprocess provider
   needs the user name from the URL (``https://alice@mirror/simple``).

Credentials found for a host are used for the rest of the run on that host (pip's cache per
netloc). A user name without a password (a token as user name) is sent with an empty password.

A child's argv is readable by every local user (``/proc/<pid>/cmdline``), its environment only
by the same user. So a URL with credentials never stays on pip's or uv's command line
(``pip_args``, ``uv_args``): pip gets the option as its ``PIP_*`` variable (beaten only by the
command line), uv a named index (``--index NAME=URL``) with ``UV_INDEX_<NAME>_USERNAME`` /
``_PASSWORD``, or ``UV_FIND_LINKS``. The runner refuses any argv that would still hold one
(``redaction.in_argv``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from backendpick.redaction import redact, strip

URL, INDEX, NETRC, KEYRING = "the URL", "an index URL on that host", ".netrc", "keyring"
KEYRING_TIMEOUT = 30.0  # seconds for one `keyring get`: a locked keyring must not stall a build
PROVIDERS = ("subprocess", "import")  # keyring-provider values that make pip ask without a terminal


@dataclass(frozen=True)
class Auth:
    username: str
    password: str = field(repr=False)
    source: str = URL  # where it was found, for messages ("credentials from .netrc")

    def header(self) -> str:
        import base64

        pair = f"{self.username}:{self.password}".encode("utf-8")
        return "Basic " + base64.b64encode(pair).decode("ascii")


def split(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its user information, and the user name and password it held
    (percent-decoded; None where absent)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user), unquote(password) if colon else None


def has_credentials(url: str) -> bool:
    scheme = urlsplit(url).scheme.lower()
    return "@" in urlsplit(url).netloc and not scheme.endswith("ssh")


@dataclass(frozen=True)
class _Index:
    url: str  # without user information, ending in "/"
    user: str | None
    password: str | None


class Keychain:
    """The credentials of one run. ``urls``: configured URLs besides pip's index URLs (the
    backend index template, mirrors, prebuilt sources), whose user information counts as an
    index URL's for their host."""

    def __init__(self, env: Mapping[str, str], pip_config=None, urls: Iterable[str] = ()):
        self._env = dict(env)
        self._lock = threading.RLock()
        self._indexes: list[_Index] = []
        self._hosts: dict[str, Auth] = {}  # netloc -> credentials used there (pip's cache)
        self._netrc: object = None
        self.provider = ((pip_config.get("keyring-provider") if pip_config is not None else None) or "auto").lower()
        self.keyring_said: str | None = None  # why keyring gave nothing, for the 401 message
        configured = [pip_config.get("index-url") or "", *pip_config.list("extra-index-url")] if pip_config else []
        for url in (*configured, *urls):
            self.learn(url)

    def learn(self, url: str) -> None:
        """Count ``url`` as an index URL (pip's ``index_urls``) for credential matching."""
        if not url or "://" not in url:
            return
        base = url.split("{", 1)[0]  # a template: the part before its first placeholder
        clean, user, password = split(base)
        index = _Index(clean.rstrip("/") + "/", user, password)
        with self._lock:
            if index not in self._indexes:
                self._indexes.append(index)

    def find(self, url: str) -> Auth | None:
        """The credentials pip would send with its first request for ``url`` (no keyring)."""
        clean, user, password = split(url)
        netloc = urlsplit(clean).netloc
        with self._lock:
            if user is not None and password is not None:
                return self._remember(netloc, Auth(user, password, URL))
            index = self._index_for(clean)
            if index is not None and index.user is not None:
                if index.password is not None:
                    return self._remember(netloc, Auth(index.user, index.password, INDEX))
                user = index.user
            found = self.from_netrc(clean)
            if found is not None:
                return self._remember(netloc, found)
            cached = self._hosts.get(netloc)
            if cached is not None and (user is None or user == cached.username):
                return cached
            if user is not None:  # a token as user name
                return self._remember(netloc, Auth(user, "", URL))
        return None

    def after_401(self, url: str) -> Auth | None:
        """Credentials from keyring for ``url`` after the server asked for them, as pip asks
        (index URL, then host:port, with the user name of the URL or its index)."""
        if self.provider not in PROVIDERS:
            return None
        clean, user, _ = split(url)
        netloc = urlsplit(clean).netloc
        with self._lock:
            index = self._index_for(clean)
            user = user if user is not None else index.user if index is not None else None
            for service in ([index.url] if index is not None else []) + [netloc]:
                found = self._keyring(service, user)
                if found is not None:
                    return self._remember(netloc, found)
        return None

    def child_cannot_find(self, url: str) -> bool:
        """Whether backendpick holds credentials for ``url`` that pip and uv would not find by
        themselves: from a URL's user information or keyring (both read .netrc)."""
        auth = self.find(url)
        return auth is not None and auth.source != NETRC

    def hosts(self) -> list[str]:
        """The host names credentials were used for in this run (for the shell export's note)."""
        with self._lock:
            return sorted({urlsplit("//" + netloc).hostname or netloc for netloc in self._hosts})

    def _remember(self, netloc: str, auth: Auth) -> Auth:
        self._hosts[netloc] = auth
        return auth

    def _index_for(self, clean: str) -> _Index | None:
        """The configured index on ``clean``'s host and port sharing the longest path (pip compares
        the netloc alone)."""
        wanted = urlsplit(clean.rstrip("/") + "/")
        best, length = None, -1
        for index in self._indexes:
            parts = urlsplit(index.url)
            if parts.netloc != wanted.netloc:
                continue
            shared = os.path.commonprefix([parts.path, wanted.path]).rfind("/")
            if shared > length:
                best, length = index, shared
        return best

    def from_netrc(self, url: str) -> Auth | None:
        """The .netrc entry for ``url``'s host (requests' get_netrc_auth: NETRC, else ~/.netrc, ~/_netrc;
        the login, or the account where the login is empty). A file that cannot be read or
        parsed is no entry, as for pip."""
        import netrc

        with self._lock:
            if self._netrc is None:
                self._netrc = self._read_netrc(netrc)
        if not self._netrc:
            return None
        entry = self._netrc.authenticators(urlsplit(split(url)[0]).netloc.split(":")[0])
        if not entry:
            return None
        return Auth(entry[0] or entry[1] or "", entry[2] or "", NETRC)

    def _read_netrc(self, netrc):
        """The parsed file, or False for none."""
        named = self._env.get("NETRC")
        home = self._env.get("HOME") or os.path.expanduser("~")
        for candidate in [named] if named is not None else [os.path.join(home, n) for n in (".netrc", "_netrc")]:
            if os.path.exists(candidate):
                try:
                    return netrc.netrc(candidate)
                except (netrc.NetrcParseError, OSError, UnicodeDecodeError):
                    return False
        return False

    def _keyring(self, service: str, user: str | None) -> Auth | None:
        if self.provider == "import":
            try:
                import keyring  # pip's import provider: keyring installed next to this interpreter
            except ImportError:
                self.keyring_said = "keyring-provider = import, but no keyring package next to backendpick"
                return None
            try:
                cred = keyring.get_credential(service, user)
            except Exception as exc:  # a keyring backend may fail in any way; pip skips it too
                self.keyring_said = f"keyring failed: {exc}"
                return None
            return Auth(cred.username, cred.password, KEYRING) if cred is not None else None
        if user is None:
            self.keyring_said = "keyring-provider = subprocess needs the user name in the URL (https://USER@host/...)"
            return None
        import shutil

        from backendpick.edges import runner

        exe = shutil.which("keyring", path=self._env.get("PATH", os.defpath))
        if exe is None:
            self.keyring_said = "keyring-provider = subprocess, but no keyring executable on PATH"
            return None
        res = runner.capture([exe, "get", service, user], timeout=KEYRING_TIMEOUT,
                             env={**self._env, "PYTHONIOENCODING": "utf-8"})
        if res.returncode is None:
            self.keyring_said = res.error
            return None
        if not res.ok:
            self.keyring_said = f"keyring has no password for {user} at {service}"
            return None
        return Auth(user, res.stdout.strip(os.linesep), KEYRING)


def configured_urls(settings) -> list[str]:
    """The URLs of backendpick's own settings whose user information counts for their host:
    the backend index template, the mirrors' replacements, the prebuilt sources, the user's
    recipes' indexes and pages."""
    urls = [settings.index_url.value, *(target for _prefix, target in settings.mirrors)]
    urls += [s for sources in settings.prebuilt.values() for s in sources if "://" in s]
    urls += [t for rows in settings.recipes.values() for r in rows if r.origin != "shipped"
             for t in (*r.index_url.values(), *r.find_links.values()) if "://" in t]
    return urls


# -- a child's command line -------------------------------------------------------------------------

_PIP_OPTIONS = {"--index-url": "index-url", "-i": "index-url", "--extra-index-url": "extra-index-url",
                "--find-links": "find-links", "-f": "find-links"}
_PIP_VARS = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL", "find-links": "PIP_FIND_LINKS"}


def _options(argv: Sequence[str], names: Mapping[str, str]) -> list[tuple[int, str, str]]:
    """(position, key, value) of each ``--option value`` / ``--option=value`` in ``names``."""
    out = []
    i = 0
    while i < len(argv):
        word = argv[i]
        flag, eq, value = word.partition("=")
        if word in names and i + 1 < len(argv):
            out.append((i, names[word], argv[i + 1]))
            i += 2
            continue
        if eq and flag in names and flag.startswith("--"):
            out.append((i, names[flag], value))
        i += 1
    return out


def _without(argv: Sequence[str], found: Sequence[tuple[int, str, str]], keys: set[str]) -> list[str]:
    drop: set[int] = set()
    for i, key, _value in found:
        if key in keys:
            drop.add(i)
            if "=" not in argv[i]:
                drop.add(i + 1)
    return [w for j, w in enumerate(argv) if j not in drop]


def pip_lists(pip_config) -> dict[str, list[str]]:
    """The list options of a pip configuration that a moved command-line value adds to."""
    return {key: pip_config.list(key) for key in ("extra-index-url", "find-links")}


def pip_args(argv: Sequence[str], configured: Mapping[str, Sequence[str]] | None) -> tuple[list[str], dict]:
    """``argv`` (a pip command) without any index or find-links URL holding credentials, and
    the variables that give them to pip instead.

    A moved ``--index-url`` becomes ``PIP_INDEX_URL`` (the command line beat the variable, and
    now nothing beats it). pip adds a command line's ``--extra-index-url`` / ``--find-links`` to
    its configuration's, while a variable replaces the configuration's: so all of the command's
    values of a key move, after the ones ``configured`` (the phase's pip configuration, None for a
    phase that reads none) already gives."""
    found = _options(argv, _PIP_OPTIONS)
    keys = {key for _i, key, value in found if has_credentials(value)}
    if not keys:
        return list(argv), {}
    env = {}
    for key in sorted(keys):
        values = [value for _i, k, value in found if k == key]
        if key == "index-url":
            env[_PIP_VARS[key]] = values[-1]
        else:
            env[_PIP_VARS[key]] = " ".join([*((configured or {}).get(key, ())), *values])
    return _without(argv, found, keys), env


_UV_OPTIONS = {"--index-url": "index-url", "-i": "index-url", "--default-index": "index-url",
               "--extra-index-url": "extra-index-url", "--index": "extra-index-url",
               "--find-links": "find-links", "-f": "find-links"}


def _uv_var(name: str) -> str:
    return "UV_INDEX_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def uv_args(argv: Sequence[str]) -> tuple[list[str], dict]:
    """``argv`` (a ``uv pip`` command) without credentials: an index URL holding them becomes a
    named index (``--default-index`` / ``--index backendpick-N=URL``) whose user name and
    password uv reads from ``UV_INDEX_BACKENDPICK_N_USERNAME`` / ``_PASSWORD``; every extra
    index of the command becomes named then, in its order (uv ranks ``--index`` before
    ``--extra-index-url``). Find-links URLs with credentials go to ``UV_FIND_LINKS``, all of the
    command's with them (the variable counts only without the option)."""
    found = _options(argv, _UV_OPTIONS)
    keys = {key for _i, key, value in found if has_credentials(value)}
    if not keys:
        return list(argv), {}
    env: dict[str, str] = {}
    out = _without(argv, found, keys)
    verb = next((w for w in ("install", "compile") if w in out), None)
    at = out.index(verb) + 1 if verb else len(out)
    added: list[str] = []
    for n, (_i, key, value) in enumerate([f for f in found if f[1] in keys - {"find-links"}], start=1):
        name, _, url = value.partition("=") if "=" in value.split("://", 1)[0] else ("", "", value)
        name = name or f"backendpick-{n}"
        clean, user, password = split(url)
        if user is not None:
            env[_uv_var(name) + "_USERNAME"] = user
        if password is not None:
            env[_uv_var(name) + "_PASSWORD"] = password
        added += ["--default-index" if key == "index-url" else "--index", f"{name}={clean}"]
    if "find-links" in keys:
        env["UV_FIND_LINKS"] = ",".join(value for _i, key, value in found if key == "find-links")
    out[at:at] = added
    return out, env


__all__ = ["Auth", "Keychain", "configured_urls", "has_credentials", "pip_args", "pip_lists", "redact", "split", "strip", "uv_args"]
