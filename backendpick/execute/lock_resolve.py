"""A plan's phases resolved to files, for a lock (issue 21): ``lock`` writes what this returns.

The plan is the one ``install`` would make for an empty environment (the same selection, the
same phases of intents); each phase that installs is rendered by the engines exactly as install
runs it, and resolved by the installer that installs: pip as a dry run with
``--ignore-installed --report``, or with ``--installer uv`` ``uv pip compile --format
pylock.toml`` (no pip process at all, issue 22 item 3; uv's lock read to the same items: the file
pip takes for the target, its sha256, and ``Requires-Python`` from the file's core metadata).
Nothing is installed, the target is not touched. In phase order:

* **backend**: torch and its companions from the backend index alone; every file comes from it;
* **build** (flash-attn and friends): the version pip would take, then the prebuilt wheel the
  project publishes for the locked torch (the same name and sources install looks for), else
  the sdist on the user's index, built at install time without isolation against the locked torch;
* **build-requirements**: only when a build is made from source, so install needs no index;
* **rest**: the ordinary packages with the stack pinned, as install's constraints file pins it.
  What an earlier phase locked is offered to the resolver as a metadata-only stub at its locked
  version (it must not look for ``torch==2.5.1+cu124`` on the user's index, where it is not),
  and stays in the phase that installs it; the build requirements are no stubs (they go to the
  build folder, and the environment needs its own copy of one it uses, flash-attn's einops).

Each file's sha256 comes from the index (pip's report, uv's lock) or, where the index gives none (a
prebuilt wheel on a release page), from downloading it; its size from the index server
(``Content-Length``) or the download. URLs are written without user information.
"""

from __future__ import annotations

import email.message
import email.parser
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from packaging.requirements import Requirement
from packaging.version import Version

from backendpick.edges.runner import capture
from backendpick.errors import ConfigError, InstallError
from backendpick.execute import engines
from backendpick.inputs.installer import UV
from backendpick.knowledge import facts as facts_mod
from backendpick.model import lock as lock_mod
from backendpick.model.names import normalize
from backendpick.model.plan import BACKEND, BUILD, BUILD_REQS, DIRECT, INSTALL, REST, Phase
from backendpick.planning import constraint_rule
from backendpick.redaction import redact, strip
from backendpick.selection.resolve import stub_wheel
from backendpick.target.distfiles import sha256_file

TIMEOUT = 900.0  # seconds for one phase's resolution against a slow mirror


@dataclass(frozen=True)
class _Item:
    """One distribution of pip's report."""

    name: str
    version: str
    url: str
    sha256: str | None
    requires_python: str | None


def parse_report(report: dict) -> list[_Item]:
    """The distributions of a ``pip install --dry-run --report`` (format 1)."""
    out = []
    for entry in report.get("install", []):
        meta, info = entry.get("metadata", {}), entry.get("download_info", {})
        hashes = (info.get("archive_info") or {}).get("hashes") or {}
        legacy = (info.get("archive_info") or {}).get("hash") or ""
        sha = hashes.get("sha256") or (legacy[len("sha256="):] if legacy.startswith("sha256=") else None)
        out.append(_Item(normalize(meta["name"]), str(meta["version"]), info.get("url", ""), sha,
                         meta.get("requires_python")))
    return out


class Locker:
    """Resolves one prepared plan (planning/request.py ``Prepared``) to a ``model.lock.Lock``."""

    def __init__(self, prepared, folder: Path, on_note: Callable[[str], None]):
        self.prepared = prepared
        self.plan = prepared.plan
        self.folder = folder
        self.note = on_note
        # The lock resolves with the engine that installs: pip's dry run, or ``uv pip compile``
        # with ``--installer uv`` (no pip process at all, issue 22 item 3).
        self.renderer = engines.for_prepared(prepared)
        self.session = prepared.client.session
        self.locked: dict[str, lock_mod.LockedPackage] = {}
        self.builds: dict[str, lock_mod.Build] = {}

    # -- the phases ------------------------------------------------------------------------------------

    def run(self) -> dict[str, lock_mod.LockedPackage]:
        # With an empty environment nothing is "already installed"; the build requirements'
        # phase may say "nothing is built from source" where the plan found a prebuilt wheel:
        # the lock decides that for itself (below), so it is taken whatever its skip says.
        phases = {p.name: p for p in self.plan.phases if p.action == INSTALL
                  and (p.skip is None or p.name == BUILD_REQS)}
        for phase in phases.values():
            refuse_folders(phase)
        if BACKEND in phases:
            phase = phases[BACKEND]
            lines = list(self.plan.backend_constraints) if phase.constraints_file else []
            for item in self._report(phase, lines):
                self._add(item, BACKEND, self.plan.index_url)
        if BUILD in phases:
            for text in phases[BUILD].requirements:
                self._build(Requirement(text))
        if BUILD_REQS in phases and any(b.how == lock_mod.SOURCE for b in self.builds.values()):
            for item in self._report(replace(phases[BUILD_REQS], target_dir=None), list(phases[BUILD_REQS].constraints)):
                self._add(item, BUILD_REQS, None)
        # A build package's own dependencies (einops for flash-attn) come with the rest, as
        # pip installs them after the build: read from its wheel's or sdist's metadata.
        needs = [d for name in self.builds for d in self._dependencies(name)]
        rest = phases.get(REST) or (Phase(REST, (), options=tuple(self.prepared.basis.wanted.rest_options))
                                    if needs else None)
        if rest is not None:
            rest = replace(rest, requirements=tuple(dict.fromkeys((*rest.requirements, *needs))), wheels=())
            for item in self._report(rest, self._pins()):
                self._add(item, REST, None)
        return self.locked

    def _dependencies(self, name: str) -> list[str]:
        """The Requires-Dist of a locked build package that no phase installs yet (not the
        stack, not another build package), for the target's markers."""
        p = self.locked[name]
        markers = self.prepared.target.markers
        out = []
        for text in _headers(self._local(p.file.url)).get_all("Requires-Dist") or []:
            try:
                req = Requirement(text)
            except ValueError:
                continue
            if req.marker is not None and not req.marker.evaluate({**markers, "extra": ""}):
                continue
            dep = normalize(req.name)
            if dep in self.plan.backend_names or dep in self.plan.build_names or dep in self.builds:
                continue
            out.append(str(req))
        return out

    def _local(self, url: str) -> Path:
        parts = urlsplit(url)
        if parts.scheme == "file":
            return Path(unquote(parts.path))
        dest = Path(tempfile.mkdtemp(dir=self.folder)) / _filename(url)
        try:
            self.session.download(url, dest)
        except OSError as exc:
            raise InstallError(f"cannot download {redact(url)} to read its dependencies: {exc}") from None
        return dest

    def _pins(self) -> list[str]:
        """The rest phase's constraints file as install writes it after the backend phase
        (planning/constraint_rule.py), from what the lock holds so far."""
        def installed(name):
            p = self.locked.get(normalize(name))
            return (p.name, p.version) if p is not None else None

        return constraint_rule.rule(self.plan.backend_names, self.plan.build_names, self.plan.building, installed,
                                    list(self.plan.user_constraints))

    def _add(self, item: _Item, phase: str, index: str | None) -> None:
        earlier = self.locked.get(item.name)
        if earlier is not None and earlier.phase != BUILD_REQS:
            return  # installed by an earlier phase; the later one found it there
        url = strip(item.url)
        folder = _folder(url)
        if folder is not None:  # pulled in by another package (``dep @ file:///src/dep``)
            raise folder_refusal(item.name, folder, editable=False)
        size, sha = self._size_and_hash(url, item.sha256)
        wheel = lock_mod.LockedFile(_filename(url), url, size, sha)
        is_wheel = wheel.name.endswith(".whl")
        self.locked[item.name] = lock_mod.LockedPackage(
            item.name, item.version, phase, strip(index or self._index_of(item.name, url, phase) or "") or None,
            item.requires_python, wheel if is_wheel else None, None if is_wheel else wheel)

    # -- one phase's resolution ------------------------------------------------------------------------

    def _report(self, phase: Phase, constraints: list[str]) -> list[_Item]:
        """The resolution of ``phase`` as install renders it (pip's dry run, or uv's compile),
        everything locked so far offered as stubs at its locked version (and pinned there)."""
        work = Path(tempfile.mkdtemp(prefix=f"{phase.name}-", dir=self.folder))
        stubs = work / "stubs"
        stubs.mkdir()
        # The build requirements go to a folder of their own, not the environment: a later phase
        # that needs one (flash-attn's einops) installs it itself, so it is no stub there (pip
        # took the index's file over the stub at the same version, uv the stub).
        stubbed = [p for p in self.locked.values() if p.phase != BUILD_REQS]
        for p in stubbed:
            stub_wheel(stubs, p.name, Version(p.version))
        lines = list(dict.fromkeys([*constraints, *(f"{p.name}=={p.version}" for p in self.locked.values())]))
        cons = work / "constraints.txt"
        cons.write_text("\n".join(lines) + "\n", encoding="utf-8")
        hashed = None
        if phase.hashed_file:
            hashed = work / "hashed.txt"
            hashed.write_text("\n".join(phase.hashed_lines) + "\n", encoding="utf-8")
        # The stubs' folder is one of the phase's find-links (its options), so the engines move it
        # with the user's: uv reads UV_FIND_LINKS (a find-links URL with credentials) only
        # without the option (indexes/credentials.py ``uv_args``).
        phase = replace(phase, constraints_file=str(cons), hashed_file=str(hashed) if hashed else None,
                        upgrade=False, no_cache=False,
                        options=(*phase.options, *(("--find-links", str(stubs)) if stubbed else ())))
        self.note(f"resolving the {phase.name} phase: {' '.join(phase.requirements)}")
        items = self._uv_items(phase, work) if self.renderer.installer == UV else self._pip_items(phase, work)
        # The stubs stand for what is locked already: they are not files to lock.
        return [i for i in items if not i.url.startswith(stubs.as_uri()) and not Path(unquote(urlsplit(i.url).path)).is_relative_to(stubs)]

    def _pip_items(self, phase: Phase, work: Path) -> list[_Item]:
        """pip's dry run of the phase (``--ignore-installed``): its installation report."""
        command = self.renderer.command(phase)
        report = work / "report.json"
        extra = ["--dry-run", "--ignore-installed", "--report", str(report), "--quiet", "--disable-pip-version-check"]
        res = capture([*command.argv, *extra], timeout=TIMEOUT, env=command.environ(self.prepared.user_env))
        if not res.ok or not report.is_file():
            tail = "\n".join((res.stderr or res.stdout or res.error or "").strip().splitlines()[-15:])
            raise _unresolved("pip", phase, redact(tail))
        return parse_report(json.loads(report.read_text(encoding="utf-8")))

    def _uv_items(self, phase: Phase, work: Path) -> list[_Item]:
        """``uv pip compile`` of the phase (it resolves from nothing, as ``--ignore-installed``):
        uv's PEP 751 lock, each package's file the one pip takes for the target (its best wheel
        tag, else the sdist) with the sha256 from the index, and its ``Requires-Python`` from the
        file's core metadata, where pip's report takes it (uv's lock does not hold it)."""
        from backendpick.selection import uv_resolve

        wanted, out = work / "requirements.txt", work / "pylock.toml"
        wanted.write_text("".join(f"{line}\n" for line in (phase.hashed_lines if phase.hashed_file
                                                            else _lines(phase.requirements))), encoding="utf-8")
        command = self.renderer.compile_command(phase, str(wanted), str(out))
        res = capture(command.argv, timeout=TIMEOUT, env=command.environ(self.prepared.user_env), cwd=work)
        if not res.ok or not out.is_file():
            raise _unresolved("uv", phase, uv_resolve.reason(f"{res.stdout}\n{res.stderr}" if res.returncode is not None
                                                             else f"error: {res.error}"))
        target = self.prepared.target
        stubs = work / "stubs"
        locked = [p for p in uv_resolve.read_lock(out, target.markers, target.tags)
                  if "://" in p.wheel or not Path(p.wheel).resolve().is_relative_to(stubs.resolve())]
        wheels = [p for p in locked if _filename(p.wheel).endswith(".whl")]
        texts = uv_resolve.read_all(self.prepared.client, wheels, set())
        items = []
        for p in locked:
            url = p.wheel if "://" in p.wheel else Path(p.wheel).resolve().as_uri()
            text = texts.get(normalize(p.name))
            headers = email.parser.Parser().parsestr(text, headersonly=True) if text is not None \
                else _headers(self._local(url))  # an sdist's PKG-INFO
            items.append(_Item(normalize(p.name), p.version, url, p.sha256, headers.get("Requires-Python")))
        return items

    # -- build packages ---------------------------------------------------------------------------------

    def _build(self, req: Requirement) -> None:
        """A build-phase package: its prebuilt wheel for the locked torch, else its sdist."""
        from backendpick.build import wheel_choice
        from backendpick.build.wheel_names import wheel_filename
        from backendpick.build.wheel_sources import look, sources
        from backendpick.indexes.client import IndexUnavailable, PageNotFound, installable
        from backendpick.target.installed_torch import predict_torch

        name = normalize(req.name)
        prepared, target = self.prepared, self.prepared.target
        torch = self.locked.get("torch")
        if torch is None:
            raise InstallError(f"{req.name} is built against torch, and the lock has no torch",
                               hint="add torch to the requirements")
        index = wheel_choice.default_index(prepared.pip_config, prepared.basis.wanted.rest_options)
        version, why = wheel_choice.choose_version(req, client=prepared.client, index_url=index, target=target)
        if version is None:
            raise InstallError(f"cannot lock {req.name}: {why}")
        facts = facts_mod.load()
        package = wheel_choice.packages().get(name)
        info = predict_torch(torch.version, self.plan.backend, facts)
        reasons = []
        if package is not None:
            filename, said = wheel_filename(package, version, info, target.python_tag, _platform(target))
            if filename is not None:
                where = sources(package, prepared.settings.prebuilt.get(name), prepared.settings.project_dir)
                if prepared.settings.mirrors:
                    from backendpick.knowledge.recipes import mirror

                    where = [replace(s, url=mirror(s.url, prepared.settings.mirrors)) if s.url else s for s in where]
                found, answers = look(filename, version, where, self.session)
                if found is not None:
                    self._prebuilt(name, version, found.location, torch.version)
                    return
                reasons.append(f"no prebuilt wheel {filename} ({'; '.join(answers)})")
            else:
                reasons.append(said)
        try:
            files = prepared.client.project(index, name)
        except (PageNotFound, IndexUnavailable) as exc:
            raise InstallError(f"cannot lock {req.name}: {exc}") from None
        sdists = [c.file for c in installable(files, name, python_version=target.python_version_text, sdists=True)
                  if not c.wheel and str(c.version) == str(Version(version))]
        if not sdists:
            raise InstallError(f"cannot lock {req.name} {version}: no wheel for torch {torch.version} and no sdist on "
                               f"{redact(index)}")
        link = sorted(sdists, key=lambda f: f.filename)[0]
        url = strip(link.url.split("#", 1)[0])
        size, sha = self._size_and_hash(url, _fragment_sha(link.url))
        self.locked[name] = lock_mod.LockedPackage(name, version, BUILD, strip(index), link.requires_python,
                                                   sdist=lock_mod.LockedFile(link.filename, url, size, sha))
        self.builds[name] = lock_mod.Build(lock_mod.SOURCE, f"torch {torch.version}",
                                           f"built from the sdist without isolation: {'; '.join(reasons) or 'no prebuilt wheel'}")

    def _prebuilt(self, name: str, version: str, location: str, torch: str) -> None:
        url = location if "://" in location else Path(location).resolve().as_uri()
        size, sha = self._size_and_hash(strip(url), None)
        self.locked[name] = lock_mod.LockedPackage(
            name, version, BUILD, None, None, wheel=lock_mod.LockedFile(_filename(url), strip(url), size, sha))
        self.builds[name] = lock_mod.Build(lock_mod.PREBUILT, f"torch {torch}", "the wheel the project publishes")

    # -- files -------------------------------------------------------------------------------------------

    def _size_and_hash(self, url: str, sha: str | None) -> tuple[int | None, str]:
        """The file's size and sha256: the hash from the index when it gave one, the size from
        the server; without a hash, the file is downloaded and hashed."""
        parts = urlsplit(url)
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
            return path.stat().st_size, sha or sha256_file(path)
        if sha is not None:
            try:
                with self.session.open(url, method="HEAD") as resp:
                    length = resp.headers.get("Content-Length")
                    if length and length.isdigit():
                        return int(length), sha
            except OSError:
                pass
        dest = Path(tempfile.mkdtemp(dir=self.folder)) / _filename(url)
        try:
            self.session.download(url, dest)
        except OSError as exc:
            raise InstallError(f"cannot download {redact(url)} to lock it: {exc}") from None
        digest = sha256_file(dest)
        if sha is not None and digest != sha:
            raise InstallError(f"{redact(url)} does not match the sha256 its index gives ({sha})")
        size = dest.stat().st_size
        dest.unlink()
        return size, digest

    def _index_of(self, name: str, url: str, phase: str) -> str | None:
        """The first of the phase's indexes whose project page lists ``url``."""
        from backendpick.indexes.client import IndexUnavailable, PageNotFound

        for index in self._indexes():
            try:
                files = self.prepared.client.project(index, name)
            except (PageNotFound, IndexUnavailable):
                continue
            if any(strip(f.url.split("#", 1)[0]) == url for f in files):
                return index
        return None

    def _indexes(self) -> list[str]:
        """The user's indexes in pip's order: a requirements file's, else pip's configuration, else PyPI."""
        from backendpick.build import wheel_choice

        options = list(self.prepared.basis.wanted.rest_options)
        extra = [options[i + 1] for i, w in enumerate(options[:-1]) if w == "--extra-index-url"]
        config = self.prepared.pip_config
        return [wheel_choice.default_index(config, options), *extra, *config.list("extra-index-url")]


def refuse_folders(phase: Phase) -> None:
    """A local folder (``./pkg``, ``-e ./pkg``, ``pkg @ file:///src/pkg``) cannot be locked:
    refused before any resolution, named as the user wrote it."""
    for requirement, source, location in phase.requirement_sources():
        folder = _folder(location) if source == DIRECT and location else None
        if folder is not None:
            raise folder_refusal(requirement, folder, editable=requirement.startswith("-e "))


def folder_refusal(requirement: str, folder: Path, *, editable: bool) -> ConfigError:
    """Why a folder is not locked: PEP 751 writes one as a ``[packages.directory]`` entry, with a
    path and no hash, so its content is whatever the folder holds at install time. ``install
    --lock`` installs only files whose sha256 it checks (the same bytes everywhere), so the
    folder is refused (exit 2) with the two ways that keep that promise."""
    hint = (f"lock without it and install it after the lock: pip install --no-deps -e {folder}" if editable else
            f"lock a wheel of it instead: pip wheel --no-deps -w wheels {folder}, then name that .whl file "
            "in its place (or leave it out of the lock and pip install --no-deps it after)")
    return ConfigError(f"cannot lock {requirement}: {folder} is a local folder, and a lock holds only files "
                       "with a sha256", hint=hint)


def _folder(location: str) -> Path | None:
    """The local folder ``location`` (a ``file:`` URL or a path) names, or None."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
    elif "://" in location or "+" in parts.scheme:
        return None
    else:
        path = Path(location)
    return path.resolve() if path.is_dir() else None


def _unresolved(installer: str, phase: Phase, details: str) -> InstallError:
    return InstallError(f"{installer} could not resolve the {phase.name} phase for the lock", details=details,
                        hint="run `backendpick plan` for the same backend to see the phase")


def _lines(words) -> list[str]:
    """A phase's requirement words as requirements-file lines (``-e PATH`` on one line)."""
    out, i = [], 0
    while i < len(words):
        pair = words[i] == "-e" and i + 1 < len(words)
        out.append(f"-e {words[i + 1]}" if pair else words[i])
        i += 2 if pair else 1
    return out


def _headers(path: Path) -> email.message.Message:
    """The core metadata headers of a wheel's METADATA or an sdist's PKG-INFO (none where it has none)."""
    if path.name.endswith(".whl"):
        from backendpick.selection.uv_resolve import metadata_in_wheel

        return email.parser.Parser().parsestr(metadata_in_wheel(path) or "", headersonly=True)
    import tarfile

    raw = b""
    try:
        with tarfile.open(path) as tf:
            member = next((m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")), None)
            handle = tf.extractfile(member) if member is not None else None
            raw = handle.read() if handle is not None else b""
    except (OSError, tarfile.TarError):
        raw = b""
    return email.parser.BytesHeaderParser().parsebytes(raw)


def _filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _fragment_sha(url: str) -> str | None:
    fragment = urlsplit(url).fragment
    return fragment[len("sha256="):] if fragment.startswith("sha256=") else None


def _platform(target) -> str | None:
    from backendpick.build.wheel_names import platform_tag

    return platform_tag(target.markers)


# -- the lock ------------------------------------------------------------------------------------------

# The markers a lock's files depend on: the wheels are for one Python, one platform, one machine.
ENVIRONMENT = ("python_version", "implementation_name", "sys_platform", "platform_machine")


def lock(prepared, *, on_note: Callable[[str], None]) -> lock_mod.Lock:
    """The prepared plan (made for an empty environment) resolved to files."""
    with tempfile.TemporaryDirectory(prefix="backendpick-lock-") as tmp:
        locker = Locker(prepared, Path(tmp), on_note)
        locked = locker.run()
    plan, target = prepared.plan, prepared.target
    torch = locked.get("torch")
    facts = facts_mod.load()
    backend = plan.backend
    driver, caps = None, ()
    if backend.kind == "cuda":
        driver = next((".".join(map(str, d)) for cuda, d in facts.cuda_drivers if cuda[:2] == backend.version[:2]), None)
    if torch is not None:
        found = facts.caps_for(Version(torch.version).release[:2], backend)
        caps = tuple(".".join(map(str, c)) for c in found or ())
    return lock_mod.Lock(
        backend=backend.name, index_url=strip(plan.index_url), python=f"{target.version[0]}.{target.version[1]}",
        environment={k: target.markers[k] for k in ENVIRONMENT if k in target.markers},
        packages=tuple(locked.values()), torch=torch.version if torch else None, builds=dict(locker.builds),
        driver_minimum=driver, compute_capabilities=caps, facts=used_facts(plan, backend, bool(locker.builds)),
    )


def used_facts(plan, backend, builds: bool) -> tuple[lock_mod.Fact, ...]:
    """The tables of facts.toml and the recipes the lock stands on, with their source and date."""
    raw = facts_mod.raw()
    tables = ["index", "torch.releases", "torch", "torch.tagged"]
    if backend.kind == "cuda":
        tables.append("cuda.drivers")
    if builds:
        tables.append("torch.abi")
        tables += [f"prebuilt.{n}" for n in sorted(plan.building) if n in raw.get("prebuilt", {})]
    out = []
    for dotted in tables:
        table = raw
        for part in dotted.split("."):
            table = table.get(part, {}) if isinstance(table, dict) else {}
        if isinstance(table, dict) and table.get("source"):
            out.append(lock_mod.Fact(f"facts.toml [{dotted}]", str(table["source"]), str(table.get("checked", ""))))
    for route in plan.routes:
        out.append(lock_mod.Fact(f"recipe {route.package}: {route.why}", strip(route.source or route.url or ""),
                                 route.checked))
    return tuple(out)
