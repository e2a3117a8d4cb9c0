"""backendpick's own HTTP requests (index pages, prebuilt checks and downloads), sent as pip
would send them: the user's pip certificate (else ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, as
requests reads them for pip), client certificate, trusted hosts, proxy and credentials.

* Credentials: ``credentials.Keychain`` (the URL, an index URL of the host, .netrc, keyring
  after a 401), sent with the first request as pip sends them, never to another host: a
  redirect elsewhere (a CDN) gets that host's .netrc entry or nothing, as requests rebuilds it.
* Proxies as requests chooses them for pip: pip's ``proxy`` setting (``--proxy``) for every
  request; otherwise ``<scheme>_proxy`` / ``all_proxy`` from the environment (lower case first)
  unless ``no_proxy`` names the host (a suffix of the host or ``host:port``, an IPv4 address or
  CIDR range, ``*``). pip applies no ``no_proxy`` to its own ``proxy`` setting, so neither do we
  (requests' ``resolve_proxies`` keeps an explicit proxy; checked 2026-12-05).

urllib is imported only when a request is sent: a run answered from the page cache pays nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from backendpick.indexes.credentials import Auth, Keychain, split


def _no_proxy_hit(url: str, env: Mapping[str, str]) -> bool:
    """requests' ``should_bypass_proxies``: whether ``no_proxy`` exempts ``url``'s host."""
    parts = urlsplit(url)
    host = parts.hostname
    if host is None:
        return True
    value = env.get("no_proxy") or env.get("NO_PROXY") or ""
    entries = [e for e in value.replace(" ", "").split(",") if e]
    if "*" in entries:
        return True
    import ipaddress

    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        address = None
    if address is not None:
        for entry in entries:
            if "/" in entry:
                try:
                    if address in ipaddress.IPv4Network(entry, strict=False):
                        return True
                except ValueError:
                    continue
            elif entry == host:
                return True
        return False
    with_port = f"{host}:{parts.port}" if parts.port else host
    return any(host.endswith(e) or with_port.endswith(e) for e in entries)


def proxy_for(url: str, pip_config, env: Mapping[str, str]) -> str | None:
    """The proxy pip would send ``url`` through, or None for a direct connection."""
    if pip_config.proxy:
        return pip_config.proxy
    if _no_proxy_hit(url, env):
        return None
    scheme = urlsplit(url).scheme.lower()
    for name in (f"{scheme}_proxy", "all_proxy"):
        value = env.get(name) or env.get(name.upper())
        if value:
            return value
    return None


class Session:
    """Requests with the user's pip settings and the run's credentials (one per IndexClient)."""

    def __init__(self, pip_config, env: Mapping[str, str] | None = None, keychain: Keychain | None = None,
                 timeout: float = 15.0):
        self.pip_config = pip_config
        self.env = dict(os.environ if env is None else env)
        self.keychain = keychain if keychain is not None else Keychain(self.env, pip_config)
        self.timeout = timeout

    def open(self, url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None,
             timeout: float | None = None):
        """The response to ``url`` (a context manager); urllib's HTTPError or URLError otherwise.
        A 401 is asked once more with keyring's credentials, when pip's configuration names it."""
        import urllib.error

        clean = split(url)[0]
        auth = self.keychain.find(url)
        try:
            return self._send(clean, auth, method, headers, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
            retry = self.keychain.after_401(url)
            if retry is None or retry == auth:
                raise
            exc.close()
            return self._send(clean, retry, method, headers, timeout)

    def _send(self, clean: str, auth: Auth | None, method: str, headers, timeout):
        import urllib.request

        request = urllib.request.Request(clean, method=method, headers={"User-Agent": "backendpick", **(headers or {})})
        if auth is not None:
            # Unredirected: urllib would copy it to wherever a redirect goes (redirect_request).
            request.add_unredirected_header("Authorization", auth.header())
        return self._opener(clean, auth).open(request, timeout=self.timeout if timeout is None else timeout)

    def _opener(self, url: str, auth: Auth | None):
        import ssl
        import urllib.request

        session = self
        proxy = proxy_for(url, self.pip_config, self.env)
        handlers: list = [_always_proxy({} if proxy is None else {"http": proxy, "https": proxy})]
        parts = urlsplit(url)
        if parts.scheme == "https":
            # pip's `cert`, else the bundle requests takes from the environment for pip.
            cafile = self.pip_config.cert or self.env.get("REQUESTS_CA_BUNDLE") or self.env.get("CURL_CA_BUNDLE")
            ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
            client_cert = self.pip_config.get("client-cert")
            if client_cert:
                ctx.load_cert_chain(client_cert)
            if parts.hostname in self.pip_config.trusted_hosts:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            handlers.append(urllib.request.HTTPSHandler(context=ctx))

        class Redirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, hdrs, newurl):
                new = super().redirect_request(req, fp, code, msg, hdrs, newurl)
                if new is not None:
                    again = auth if same_origin(url, newurl) else session.keychain.from_netrc(newurl)
                    if again is not None:
                        new.add_unredirected_header("Authorization", again.header())
                return new

        handlers.append(Redirect())
        return urllib.request.build_opener(*handlers)

    def download(self, url: str, dest: Path) -> None:
        """``url`` into the file ``dest`` (written beside it, then renamed: never half a file).
        OSError, or urllib's HTTPError / URLError when it cannot be fetched."""
        import shutil

        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        with self.open(url, timeout=max(self.timeout, 60.0)) as resp, open(part, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.replace(part, dest)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(old: str, new: str) -> bool:
    """requests' ``should_strip_auth`` inverted: whether a redirect from ``old`` to ``new`` keeps
    the credentials. The same host, and the same scheme and port (a default port written or
    not), or http to https on the default ports."""
    a, b = urlsplit(old), urlsplit(new)
    if a.hostname != b.hostname:
        return False
    if a.scheme == "http" and a.port in (80, None) and b.scheme == "https" and b.port in (443, None):
        return True
    if a.scheme != b.scheme:
        return False
    default = (_DEFAULT_PORTS.get(a.scheme), None)
    return a.port == b.port or (a.port in default and b.port in default)


def _always_proxy(proxies: dict):
    """urllib's ProxyHandler without its own ``no_proxy`` test (``proxy_for`` made the choice,
    as requests does for pip) and without reading the process environment: ``{}`` means direct.
    Defined on first use: urllib.request is not imported by a run that sends nothing."""
    import base64
    import urllib.request
    from urllib.parse import unquote

    class AlwaysProxy(urllib.request.ProxyHandler):
        def proxy_open(self, req, proxy, type):
            if "://" not in proxy:
                proxy = "http://" + proxy
            parts = urlsplit(proxy)
            if parts.username:
                pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
                req.add_header("Proxy-authorization", "Basic " + base64.b64encode(pair).decode("ascii"))
            orig = req.type
            req.set_proxy((parts.hostname or "") + (f":{parts.port}" if parts.port else ""), parts.scheme)
            if orig == parts.scheme or orig == "https":
                return None  # the other handlers open it (https: a CONNECT tunnel through the proxy)
            return self.parent.open(req, timeout=req.timeout)

    return AlwaysProxy(proxies)
