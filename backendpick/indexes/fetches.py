"""Files behind credentials that pip and uv would not find themselves: backendpick downloads them.

A requirement's URL may need credentials that only backendpick holds: a password in a
``[tool.backendpick.prebuilt]`` or mirror URL, an index URL with one whose host also serves a
PyG page, a keyring answer. On pip's command line the URL would show the password to every
local user (``/proc/<pid>/cmdline``), and without it pip gets a 401 (pip takes credentials for
such a URL only from an index URL on its host, .netrc or keyring). So backendpick downloads the
file before the phase, with the credentials as pip finds them (``transport.Session``), into the
environment's state folder (``downloads/``, removed when install ends), and the phase installs
the local file. Credentials pip and uv read themselves (.netrc) leave the URL to them.

``plan`` and ``--dry-run`` show the download and the local file the command names; a VCS URL
with credentials (git would get them on its command line too) is an error with the way out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from backendpick.errors import ConfigError
from backendpick.indexes.credentials import has_credentials
from backendpick.model.plan import AS_IS, BUILD, PREBUILT, Plan
from backendpick.redaction import redact, strip

_SCHEMES = ("http", "https")


def _local(folder: Path, url: str) -> Path:
    """Where ``url``'s file goes: its own name, in a folder per URL (two mirrors may serve one name)."""
    import hashlib

    digest = hashlib.sha256(strip(url).encode("utf-8")).hexdigest()[:12]
    return folder / digest / unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _vcs_error(url: str) -> ConfigError:
    return ConfigError(
        f"{redact(url)}: credentials in a VCS URL would be on git's command line, which every local user can read",
        hint="remove them from the URL and give them to git another way: ~/.netrc "
             "(machine HOST login USER password TOKEN) or a git credential helper",
    )


def _word(word: str, needs: Callable[[str], bool], folder: Path, found: dict) -> str:
    """``word`` (a requirement or an unnamed URL of a command line) naming the local file instead
    of a URL that needs backendpick's credentials; ``found`` collects URL -> local file."""
    if "://" not in word or word.startswith("-"):
        return word
    try:
        req = Requirement(word)
        url = req.url
    except InvalidRequirement:
        req, url = None, word  # an unnamed URL (a rest argument)
    if not url:
        return word
    scheme = urlsplit(url).scheme.lower()
    if "+" in scheme:  # git+https://...
        if has_credentials(url):
            raise _vcs_error(url)
        return word
    if scheme not in _SCHEMES or not needs(url):
        return word
    path = _local(folder, url)
    found[strip(url)] = str(path)
    return word.replace(url, path.as_uri()) if req is not None else str(path)


def localize(plan: Plan, needs: Callable[[str], bool], folder: Path) -> Plan:
    """The plan with each URL that ``needs`` (credentials.Keychain.child_cannot_find) replaced by
    the local file backendpick downloads it to first (``Phase.downloads``)."""
    phases = []
    for phase in plan.phases:
        found: dict[str, str] = {}
        steps, wheels = phase.steps, phase.wheels
        if phase.name == BUILD:
            steps, found = localize_steps(phase.steps, needs, folder)
        if wheels:  # the build phase's wheels the rest phase installs (model/plan.py fold)
            wheels, more = localize_steps(wheels, needs, folder)
            found.update(more)

        # A requirement's URL only: index and find-links URLs are the installer's to read
        # (indexes/credentials.py moves one holding credentials into its environment).
        changed = replace(phase, requirements=tuple(_word(w, needs, folder, found) for w in phase.requirements),
                          steps=steps, wheels=wheels)
        if found:
            changed = replace(changed, downloads=tuple(sorted({**dict(phase.downloads), **found}.items())))
        phases.append(changed)
    return replace(plan, phases=tuple(phases))


def localize_steps(steps, needs: Callable[[str], bool], folder: Path) -> tuple[tuple, dict[str, str]]:
    """The build steps with ``fetched`` set where ``needs`` says so, and URL -> local file of
    each (again after the build phase chose its wheels for the torch really installed)."""
    found: dict[str, str] = {}
    return tuple(_step(s, needs, folder, found) for s in steps), found


def _step(step, needs: Callable[[str], bool], folder: Path, found: dict):
    """A build step whose prebuilt wheel (or direct URL) needs backendpick's credentials: its
    ``fetched`` file, and its wheel's URL without user information."""
    if step.how == PREBUILT and step.wheel and urlsplit(step.wheel).scheme in _SCHEMES and needs(step.wheel):
        path = _local(folder, step.wheel)
        found[strip(step.wheel)] = str(path)
        return replace(step, wheel=strip(step.wheel), fetched=str(path))
    if step.how == AS_IS:
        try:
            url = Requirement(step.requirement).url
        except InvalidRequirement:
            url = None
        if url and "+" not in urlsplit(url).scheme and urlsplit(url).scheme in _SCHEMES and needs(url):
            path = _local(folder, url)
            found[strip(url)] = str(path)
            return replace(step, fetched=str(path))
        if url and "+" in urlsplit(url).scheme and has_credentials(url):
            raise _vcs_error(url)
    return step


def fetch(downloads, session, on_note: Callable[[str], None]) -> None:
    """Download each (URL, local file) not there yet; an InstallError names the one that failed."""
    import urllib.error

    from backendpick.errors import InstallError

    for url, path in downloads:
        dest = Path(path)
        if dest.is_file():
            continue
        on_note(f"downloading {redact(url)} (the server wants credentials) to {dest}")
        try:
            session.download(url, dest)
        except urllib.error.HTTPError as exc:
            raise InstallError(f"cannot download {redact(url)}: HTTP {exc.code}",
                               hint="check the credentials for that host (URL, .netrc or keyring)") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise InstallError(f"cannot download {redact(url)}: {getattr(exc, 'reason', exc)}") from None
