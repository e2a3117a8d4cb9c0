"""Credentials (issue 19): found as pip finds them (credentials.Keychain), sent by backendpick's
own requests (transport.Session, against the in-process test index server with Basic auth),
moved off every child's command line (pip_args, uv_args, the runner's refusal), kept out of
the page cache, and the proxy choice pip makes (no_proxy)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from backendpick import redaction
from backendpick.edges import runner
from backendpick.errors import InstallError
from backendpick.indexes import credentials, transport
from backendpick.indexes.client import IndexClient, IndexUnavailable
from backendpick.indexes.credentials import INDEX, KEYRING, NETRC, URL, Auth, Keychain, pip_args, uv_args
from backendpick.inputs.pip_config import PipConfig
from tests.support.dists import make_wheel
from tests.support.index import IndexServer

SECRET = "pw-5ecret-19"


def conf(**values: str) -> PipConfig:
    return PipConfig({k: v for k, v in values.items()})


# -- where pip finds them ---------------------------------------------------------------------------


def test_the_url_itself_then_an_index_url_of_the_host_longest_path_first():
    chain = Keychain({"HOME": "/nonexistent"}, conf(**{"index-url": "https://a:1@m.example/simple",
                                                     "extra-index-url": "https://b:2@m.example/pyg/simple"}))
    assert chain.find(f"https://u:{SECRET}@other.example/x.whl") == Auth("u", SECRET, URL)
    assert chain.find("https://m.example/simple/torch/") == Auth("a", "1", INDEX)
    assert chain.find("https://m.example/pyg/simple/x/") == Auth("b", "2", INDEX)
    assert chain.find("https://nobody.example/x") is None


def test_netrc_named_by_NETRC_or_in_home_for_the_host_without_port(tmp_path: Path):
    named = tmp_path / "netrc"
    named.write_text(f"machine m.example login alice password {SECRET}\n")
    (tmp_path / ".netrc").write_text("machine m.example login home password other\n")
    assert Keychain({"NETRC": str(named)}).find("https://m.example:8443/simple/") == Auth("alice", SECRET, NETRC)
    assert Keychain({"HOME": str(tmp_path)}).find("https://m.example/simple/") == Auth("home", "other", NETRC)
    broken = tmp_path / "broken"
    broken.write_text("machine\n")
    assert Keychain({"NETRC": str(broken)}).find("https://m.example/") is None  # as pip: no entry


def test_a_token_as_user_name_and_the_credentials_kept_for_the_host():
    chain = Keychain({"HOME": "/nonexistent"})
    assert chain.find("https://TOKEN@m.example/simple/") == Auth("TOKEN", "", URL)
    # Found once for a host, used for its other URLs (pip's cache per netloc).
    assert chain.find(f"https://u:{SECRET}@n.example/simple/") is not None
    assert chain.find("https://n.example/files/x.whl") == Auth("u", SECRET, URL)
    assert chain.child_cannot_find("https://n.example/files/x.whl")


def test_keyring_only_after_a_401_and_only_when_pip_config_names_it(monkeypatch):
    asked = []
    fake = types.SimpleNamespace(get_credential=lambda service, user: asked.append((service, user))
                                 or types.SimpleNamespace(username=user or "kr", password=SECRET))
    monkeypatch.setitem(sys.modules, "keyring", fake)
    assert Keychain({}, conf()).after_401("https://m.example/simple/x/") is None  # auto: no terminal, no keyring
    chain = Keychain({"HOME": "/nonexistent"}, conf(**{"keyring-provider": "import",
                                                     "index-url": "https://alice@m.example/simple"}))
    assert chain.after_401("https://m.example/simple/torch/") == Auth("alice", SECRET, KEYRING)
    assert asked == [("https://m.example/simple/", "alice")]
    assert chain.find("https://m.example/files/t.whl") == Auth("alice", SECRET, KEYRING)  # kept for the host
    assert chain.child_cannot_find("https://m.example/files/t.whl")


@pytest.mark.allow_subprocess
def test_keyring_subprocess_is_run_as_pip_runs_it(tmp_path: Path):
    log = tmp_path / "argv"
    exe = tmp_path / "keyring"
    exe.write_text(f'#!/bin/sh\necho "$@" >> {log}\n[ "$3" = alice ] && echo {SECRET} || exit 1\n')
    exe.chmod(0o755)
    env = {"PATH": str(tmp_path), "HOME": "/nonexistent"}
    chain = Keychain(env, conf(**{"keyring-provider": "subprocess"}), urls=["http://alice@m.example:81/{backend}/simple"])
    assert chain.after_401("http://m.example:81/cu124/simple/torch/") == Auth("alice", SECRET, KEYRING)
    assert log.read_text().split() == ["get", "http://m.example:81/", "alice"]
    nameless = Keychain(env, conf(**{"keyring-provider": "subprocess"}))
    assert nameless.after_401("http://x.example/simple/") is None
    assert "needs the user name in the URL" in nameless.keyring_said


# -- requests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory):
    with IndexServer(tmp_path_factory.mktemp("private")) as srv:
        make_wheel(srv.index_dir("sec"), "torch", "2.5.1+cpu")
        srv.require_auth("sec", "alice", SECRET)
        srv.page_caching("sec", "max-age=600", etag=True)
        yield srv


def _client(tmp_path: Path, url_creds: bool = False, **env: str) -> IndexClient:
    return IndexClient(PipConfig(), env={"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), **env})


def test_a_private_index_answers_with_the_credentials_and_says_why_not_without(tmp_path: Path, private: IndexServer):
    url = private.url("sec")
    with pytest.raises(IndexUnavailable, match=r"HTTP 401 \(no credentials for this host in the URL, an index URL"):
        _client(tmp_path).project(url, "torch")
    authed = url.replace("://", f"://alice:{SECRET}@")
    assert [f.filename for f in _client(tmp_path).project(authed, "torch")] == ["torch-2.5.1+cpu-py3-none-any.whl"]
    with pytest.raises(IndexUnavailable, match=r"HTTP 401 \(the credentials from the URL were refused\)"):
        _client(tmp_path / "other").project(url.replace("://", "://alice:wrong@"), "torch")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login alice password {SECRET}\n")
    private.clear_log()
    # Not the name pip normalizes to: the PEP 503 redirect on the same host keeps the credentials.
    assert _client(tmp_path / "n", NETRC=str(netrc)).page(url + "/Torch/")
    assert [(r.status, r.user) for r in private.log] == [(301, "alice"), (200, "alice")]


def test_an_authenticated_page_is_kept_without_the_secret_and_revalidated_for_whoever_asks(tmp_path: Path,
                                                                                           private: IndexServer):
    url = private.url("sec").replace("://", f"://alice:{SECRET}@")
    private.clear_log()
    _client(tmp_path).project(url, "torch")
    _client(tmp_path).project(url, "torch")  # max-age=600, yet asked again: it needed credentials
    first, second = [(r.status, r.conditional, r.user) for r in private.page_requests("sec", "torch")]
    assert first == (200, False, "alice") and second == (304, True, "alice")
    (stored,) = (tmp_path / "cache").rglob("*.json")
    assert SECRET not in stored.read_text() and "alice" not in stored.read_text()
    assert json.loads(stored.read_text())["authenticated"] is True
    # The same cache without credentials: the server says no, the kept page is not shown.
    with pytest.raises(IndexUnavailable, match="HTTP 401"):
        _client(tmp_path).project(private.url("sec"), "torch")


# -- proxies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, no_proxy, proxied", [
    ("http://mirror.corp:8080/simple/", "corp", False),  # a suffix of the host, as requests matches it
    ("http://mirror.corp:8080/simple/", "mirror.corp:8080", False),
    ("http://mirror.corp/simple/", "other.corp", True),
    ("http://10.1.2.3/simple/", "10.0.0.0/8", False),  # an IPv4 range
    ("http://10.1.2.3/simple/", "10.1.2.4", True),
    ("https://pypi.org/simple/", "*", False),
    ("https://pypi.org/simple/", "", True),
])
def test_environment_proxies_honour_no_proxy_as_requests_does(url: str, no_proxy: str, proxied: bool):
    env = {"http_proxy": "http://proxy:3128", "HTTPS_PROXY": "http://sproxy:3128", "no_proxy": no_proxy}
    expected = ("http://proxy:3128" if url.startswith("http:") else "http://sproxy:3128") if proxied else None
    assert transport.proxy_for(url, PipConfig(), env) == expected


@pytest.mark.parametrize("new, kept", [
    ("https://m.example/simple/x/", True), ("https://m.example:443/x", True), ("http://m.example/x", False),
    ("https://cdn.example/x.whl", False), ("https://m.example:8443/x", False),
])
def test_a_redirect_keeps_the_credentials_on_the_same_host_only(new: str, kept: bool):
    assert transport.same_origin("https://m.example/simple/x", new) is kept
    assert transport.same_origin("http://m.example/simple/x", "https://m.example/x")  # the upgrade to https


def test_pips_own_proxy_setting_takes_every_request_as_pip_sends_it():
    assert transport.proxy_for("http://mirror.corp/", conf(proxy="http://p:1"), {"no_proxy": "corp"}) == "http://p:1"


# -- never on a command line ------------------------------------------------------------------------------

PIP = ["py", "-m", "pip", "install"]


def test_pip_gets_index_urls_with_credentials_in_its_variables_with_the_configured_ones_kept():
    argv, env = pip_args([*PIP, "--index-url", f"https://u:{SECRET}@m/simple", "-c", "c.txt", "torch"], None)
    assert argv == [*PIP, "-c", "c.txt", "torch"] and env == {"PIP_INDEX_URL": f"https://u:{SECRET}@m/simple"}
    # A command-line --extra-index-url adds to the configuration's; the variable replaces it.
    argv, env = pip_args([*PIP, "--extra-index-url", "https://pub/simple", f"--find-links=https://u:{SECRET}@m/f",
                          "--extra-index-url", f"https://t:{SECRET}@m/x", "tqdm"], {"extra-index-url": ["https://conf/"]})
    assert argv == [*PIP, "tqdm"]
    assert env == {"PIP_EXTRA_INDEX_URL": f"https://conf/ https://pub/simple https://t:{SECRET}@m/x",
                   "PIP_FIND_LINKS": f"https://u:{SECRET}@m/f"}
    assert pip_args([*PIP, "--index-url", "https://m/simple", "torch"], None) == ([*PIP, "--index-url", "https://m/simple",
                                                                                    "torch"], {})


def test_uv_gets_named_indexes_with_their_credentials_in_the_environment():
    argv, env = uv_args(["uv", "pip", "install", "--python", "p", "--index-url", f"https://u:{SECRET}@m/simple",
                         "--extra-index-url", "https://pub/simple", "--extra-index-url", "https://TOK@m2/simple", "torch"])
    assert argv == ["uv", "pip", "install", "--default-index", "backendpick-1=https://m/simple",
                    "--index", "backendpick-2=https://pub/simple", "--index", "backendpick-3=https://m2/simple",
                    "--python", "p", "torch"]
    assert env == {"UV_INDEX_BACKENDPICK_1_USERNAME": "u", "UV_INDEX_BACKENDPICK_1_PASSWORD": SECRET,
                   "UV_INDEX_BACKENDPICK_3_USERNAME": "TOK"}
    assert redaction.in_argv(argv) is None
    # Keyring named by pip's configuration: uv's own provider (it needs the user name too).
    from backendpick.execute.engines import safety_flags

    assert safety_flags(conf(**{"keyring-provider": "subprocess"})) == ["--keyring-provider", "subprocess"]
    assert safety_flags(conf(**{"keyring-provider": "auto"})) == []


def test_the_runner_refuses_an_argv_with_a_credential_before_starting_anything():
    with pytest.raises(InstallError, match=r"refusing to start pip: .*https://\*\*\*@m/x\.whl"):
        runner.capture(["pip", "install", f"x @ https://u:{SECRET}@m/x.whl"], timeout=5)
    assert redaction.in_argv(["pip", "install", "git+ssh://git@github.com/o/r"]) is None  # a login, not a secret


def test_shown_and_written_forms():
    assert redaction.strip(f"x @ https://u:{SECRET}@m/x.whl") == "x @ https://m/x.whl"
    assert redaction.redact_var("UV_INDEX_BACKENDPICK_1_PASSWORD", SECRET) == "***"
    assert redaction.redact_var("PIP_INDEX_URL", f"https://u:{SECRET}@m/") == "https://***@m/"
    assert credentials.split(f"https://u%40corp:{SECRET}%2F@m/s") == ("https://m/s", "u@corp", SECRET + "/")
