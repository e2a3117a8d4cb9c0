"""One requirement item as pip accepts it, beyond PEP 508: a local directory, wheel or sdist, a
wheel or sdist URL, a VCS URL, ``-e``; and the declared metadata (name, dependencies) of local
projects, wheels and sdists, read without a build. ``Wanted`` is what every source yields."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from backendpick.errors import ConfigError
from backendpick.model.names import normalize

_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar")
_VCS = ("git+", "hg+", "svn+", "bzr+")


@dataclass(frozen=True)
class Wanted:
    requirements: tuple[Requirement, ...]
    # Options from requirements files that pip users expect to work (an index for the
    # ordinary packages). They apply to the ordinary phases only, never the backend phase.
    rest_options: tuple[str, ...] = ()
    constraints: tuple[Requirement, ...] = field(default_factory=tuple)
    # pip arguments that are not PEP 508 requirements (``-e ./pkg``, a VCS URL without a name):
    # the rest phase passes them to pip as written. Their dependencies are in ``requirements``
    # where they could be read without a build; otherwise install's fence-and-retry finds them.
    rest_args: tuple[str, ...] = ()
    # normalized name -> ``--hash`` values (pip-compile --generate-hashes): pip checks them.
    hashes: dict = field(default_factory=dict)
    # The requirements files read, nested -r/-c ones included: what a re-run compares to know
    # that nothing changed (state/noop.py).
    files: tuple[Path, ...] = ()


def parse_requirement(text: str, source: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise ConfigError(f"invalid requirement {text!r} in {source}: {exc}") from None


def parse_item(text: str, where: str, cwd: Path) -> Wanted:
    """One requirement as pip accepts it: PEP 508, a local directory, wheel or sdist, a wheel or
    sdist URL, or a VCS URL. A name that can be known without a build makes it a PEP 508
    direct reference (``name @ URL``) that the plan sorts into its phase like any other; a local
    project's declared dependencies come along, so a torch it needs goes to the backend phase."""
    text = text.strip()
    if "://" in text.split("@")[0].split(";")[0] or text.startswith(_VCS):
        return _url_item(text, where)
    extras = ""
    m = re.match(r"^(.*?)(\[[^\]]*\])$", text)
    path_text = m.group(1) if m else text
    if m:
        extras = m.group(2)
    path = Path(path_text) if Path(path_text).is_absolute() else cwd / path_text
    looks_like_path = os.sep in path_text or path_text.startswith(".") or path_text.endswith(_ARCHIVES)
    if looks_like_path and path.exists():
        return _local_item(path.resolve(), extras, where)
    if looks_like_path and ("/" in path_text or path_text.startswith(".")) and not _is_pep508(text):
        raise ConfigError(f"{where}: {path_text} does not exist", hint="local paths are relative to the current directory, as with pip")
    return Wanted((parse_requirement(text, where),))


def _is_pep508(text: str) -> bool:
    try:
        Requirement(text)
        return True
    except InvalidRequirement:
        return False


def editable(value: str, where: str, cwd: Path) -> Wanted:
    """``-e ./pkg`` (or a VCS URL): passed to pip as written, with the project's declared
    dependencies as requirements of their own phases."""
    if value.startswith(_VCS) or "://" in value:
        return Wanted((), rest_args=("-e", value))
    m = re.match(r"^(.*?)(\[[^\]]*\])$", value)
    path_text, extras = (m.group(1), m.group(2)) if m else (value, "")
    path = (Path(path_text) if Path(path_text).is_absolute() else cwd / path_text).resolve()
    if not path.is_dir():
        raise ConfigError(f"{where}: -e {value}: {path} is not a directory",
                          hint="-e takes a project directory (with pyproject.toml or setup.py) or a VCS URL")
    _name, deps = project_metadata(path, _extra_names(extras))
    return Wanted(tuple(deps), rest_args=("-e", f"{path}{extras}"))


def _extra_names(extras: str) -> tuple[str, ...]:
    return tuple(e.strip() for e in extras.strip("[]").split(",") if e.strip())


def _local_item(path: Path, extras: str, where: str) -> Wanted:
    uri = path.as_uri()
    if path.is_dir():
        name, deps = project_metadata(path, _extra_names(extras))
    elif path.name.endswith(".whl"):
        name, deps = wheel_metadata(path, _extra_names(extras))
    else:
        name, deps = _sdist_name(path.name), sdist_metadata(path, _extra_names(extras))
    if name is None:  # pip learns it from a build; the rest phase passes the path as written
        return Wanted(tuple(deps), rest_args=(f"{path}{extras}",))
    return Wanted((parse_requirement(f"{name}{extras} @ {uri}", where), *deps))


def _url_item(text: str, where: str) -> Wanted:
    if _is_pep508(text):  # name @ URL
        return Wanted((Requirement(text),))
    if text.startswith(_VCS):
        # As written, #egg= or not: its dependencies are known only after a checkout (the fence
        # catches a torch among them), and pip before 23.3 rejects ``name @ git+file:///...``.
        return Wanted((), rest_args=(text,))
    url, _, fragment = text.partition("#")
    params = dict(p.partition("=")[::2] for p in fragment.split("&") if p)
    filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = params.get("egg") or (_wheel_name(filename) if filename.endswith(".whl") else _sdist_name(filename))
    if name is None:  # an archive URL of another shape: pip learns the name from it
        return Wanted((), rest_args=(text,))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{where}: #egg={name} is not a project name")
    rest = "&".join(f"{k}={v}" for k, v in params.items() if k != "egg")
    return Wanted((parse_requirement(f"{name} @ {url}" + (f"#{rest}" if rest else ""), where),))


def _wheel_name(filename: str) -> str | None:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        return str(parse_wheel_filename(filename)[0])
    except (InvalidWheelFilename, ValueError):
        return None


def _sdist_name(filename: str) -> str | None:
    for suffix in (".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar"):
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            name, sep, version = stem.rpartition("-")
            if sep and name and re.match(r"^\d", version):
                return normalize(name)
    return None


def _selected(deps: Iterable[str], extras: tuple[str, ...], where: str) -> list[Requirement]:
    """Declared dependencies for the requested extras: those without an ``extra`` marker, and
    those whose marker is exactly ``extra == "<requested>"`` (marker dropped). Anything subtler
    is left to pip, and the fence catches a backend package among it."""
    out = []
    wanted = {normalize(e) for e in extras}
    for text in deps:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue  # pip reports broken metadata itself
        if req.marker is None or "extra" not in str(req.marker):
            out.append(req)
            continue
        m = re.fullmatch(r"""extra\s*==\s*["']([^"']+)["']""", str(req.marker).strip())
        if m and normalize(m.group(1)) in wanted:
            out.append(Requirement(str(req).split(";", 1)[0]))
    return out


def project_metadata(path: Path, extras: tuple[str, ...] = ()) -> tuple[str | None, list[Requirement]]:
    """Name and dependencies of a project directory from pyproject.toml's [project] table, when
    it declares them statically (PEP 621); otherwise unknown without a build."""
    from backendpick.knowledge.facts import read_toml

    pyproject = path / "pyproject.toml"
    if not pyproject.is_file():
        return None, []
    try:
        data = read_toml(pyproject)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {pyproject}: {exc}") from None
    project = data.get("project")
    if not isinstance(project, dict):
        return None, []
    dynamic = project.get("dynamic", [])
    name = project.get("name") if isinstance(project.get("name"), str) else None
    deps: list[str] = []
    if "dependencies" not in dynamic and isinstance(project.get("dependencies", []), list):
        deps += project.get("dependencies", [])
    optional = project.get("optional-dependencies", {})
    if "optional-dependencies" not in dynamic and isinstance(optional, dict):
        for extra in extras:
            key = next((k for k in optional if normalize(k) == normalize(extra)), None)
            if key is not None and isinstance(optional[key], list):
                deps += optional[key]
    return name, _selected([d for d in deps if isinstance(d, str)], (), str(pyproject))


def _metadata_deps(text: str, extras: tuple[str, ...]) -> tuple[str | None, list[Requirement]]:
    from email.parser import Parser

    msg = Parser().parsestr(text)
    return msg.get("Name"), _selected(msg.get_all("Requires-Dist") or [], extras, "")


def wheel_metadata(path: Path, extras: tuple[str, ...] = ()) -> tuple[str | None, list[Requirement]]:
    import zipfile

    name = _wheel_name(path.name)
    try:
        with zipfile.ZipFile(path) as z:
            meta = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if meta is None:
                return name, []
            return name, _metadata_deps(z.read(meta).decode("utf-8", "replace"), extras)[1]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"cannot read the wheel {path}: {exc}") from None


def sdist_metadata(path: Path, extras: tuple[str, ...] = ()) -> list[Requirement]:
    """Requires-Dist of an sdist's PKG-INFO when it is reliable (metadata 2.2+, not Dynamic)."""
    import tarfile

    if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return []
    try:
        with tarfile.open(path) as tf:
            member = next((m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")), None)
            f = tf.extractfile(member) if member is not None else None
            text = f.read().decode("utf-8", "replace") if f is not None else ""
    except (OSError, tarfile.TarError):
        return []
    from email.parser import Parser

    msg = Parser().parsestr(text)
    try:
        version = tuple(int(p) for p in (msg.get("Metadata-Version") or "1.0").split("."))
    except ValueError:
        return []
    dynamic = {d.lower() for d in msg.get_all("Dynamic") or []}
    if version < (2, 2) or "requires-dist" in dynamic:
        return []
    return _selected(msg.get_all("Requires-Dist") or [], extras, str(path))
