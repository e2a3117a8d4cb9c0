"""Where the requirements come from: arguments, ``-r`` files, or pyproject.toml.

Every string is parsed here, so an invalid one is an error naming the string and its source
(file and line) before pip ever runs.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from backendpick.config import Pyproject, normalize
from backendpick.errors import ConfigError


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


def parse_requirement(text: str, source: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise ConfigError(f"invalid requirement {text!r} in {source}: {exc}") from None


# Options a requirements file may carry, and whether they take a value.
_PASSTHROUGH = {
    "-i": True, "--index-url": True, "--extra-index-url": True, "-f": True, "--find-links": True,
    "--trusted-host": True, "--pre": False, "--prefer-binary": False, "--only-binary": True, "--no-binary": True,
}
_ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")  # pip's rule: only ${NAME} of upper case, digits, _
_HASH_SPLIT = re.compile(r"\s+(?=--hash[=\s])")
_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar")
_VCS = ("git+", "hg+", "svn+", "bzr+")


def expand_vars(line: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` as pip expands it in requirements files; unset variables stay as written."""
    return _ENV_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), line)


def read_file(path: Path, *, constraints: bool = False, _seen: frozenset = frozenset(),
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Wanted:
    """A requirements file as pip reads it. Nested ``-r``/``-c`` files are found next to the file
    that names them; local paths on requirement lines, as with pip, from the current directory."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if path.resolve() in _seen:
        raise ConfigError(f"{path} includes itself")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read requirements file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"requirements file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line})",
                          hint="save it as UTF-8 (iconv -f latin1 -t utf-8)") from None
    reqs: list[Requirement] = []
    cons: list[Requirement] = []
    options: list[str] = []
    args: list[str] = []
    hashes: dict = {}
    seen = _seen | {path.resolve()}
    for number, line in _logical_lines(text):
        where = f"{path}:{number}"
        line = expand_vars(line, env)
        if line.startswith("-"):
            words = shlex.split(line)
            flag, _, inline = words[0].partition("=")
            value = inline or (words[1] if len(words) > 1 else "")
            if flag in ("-r", "--requirement", "-c", "--constraint"):
                if not value:
                    raise ConfigError(f"{where}: {flag} needs a file name")
                nested = read_file(path.parent / value, constraints=flag in ("-c", "--constraint"), _seen=seen,
                                   env=env, cwd=cwd)
                reqs += nested.requirements
                cons += nested.constraints
                options += nested.rest_options
                args += nested.rest_args
                hashes.update(nested.hashes)
            elif flag in _PASSTHROUGH:
                options += [flag, value] if _PASSTHROUGH[flag] else [flag]
            elif flag in ("-e", "--editable"):
                if not value:
                    raise ConfigError(f"{where}: {flag} needs a path or a VCS URL")
                item = editable(value, where, cwd)
                reqs += item.requirements
                args += item.rest_args
            else:
                raise ConfigError(f"{where}: option {flag} is not supported in backendpick requirements files")
            continue
        head, *hash_words = _HASH_SPLIT.split(line)
        item = parse_item(head, where, cwd)
        if hash_words:
            if not item.requirements or item.rest_args:
                raise ConfigError(f"{where}: --hash needs a requirement with a name")
            name = normalize(item.requirements[0].name)
            hashes.setdefault(name, [])
            hashes[name] += [_hash_value(w, where) for w in hash_words]
        if constraints:
            cons += item.requirements
        else:
            reqs += item.requirements
            args += item.rest_args
    return Wanted(tuple(reqs), tuple(options), tuple(cons), tuple(args), {k: tuple(v) for k, v in hashes.items()})


def _hash_value(word: str, where: str) -> str:
    value = word[len("--hash"):].lstrip("= ").strip()
    algo, _, digest = value.partition(":")
    if algo not in ("sha256", "sha384", "sha512") or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise ConfigError(f"{where}: {word.strip()!r} is not a hash pip accepts (--hash=sha256:HEX)")
    return value


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
    from backendpick.facts import read_toml

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


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Join backslash continuations, drop comments (pip's rule: `#` after whitespace)."""
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw
        if line.lstrip().startswith("#"):
            line = ""
        elif " #" in line or "\t#" in line:
            line = line[: min(i for i in (line.find(" #"), line.find("\t#")) if i >= 0)]
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1]
            continue
        full = (buffer + line).strip()
        buffer = ""
        if full:
            yield start, full


def from_pyproject(pyproject: Pyproject, extras: Iterable[str], groups: Iterable[str]) -> Wanted:
    if pyproject.path is None:
        raise ConfigError(
            "no requirements given and no pyproject.toml found",
            hint="pass requirements (backendpick install torch), -r requirements.txt, or --project DIR",
        )
    where = str(pyproject.path)
    project = pyproject.project
    if not isinstance(project, dict):
        raise ConfigError(f"{where}: [project] must be a table, not {type(project).__name__}")
    deps = _string_list(project.get("dependencies", []), f"{where}: [project].dependencies")
    reqs = [parse_requirement(r, f"{where} [project].dependencies") for r in deps]
    optional = project.get("optional-dependencies", {})
    if not isinstance(optional, dict):
        raise ConfigError(f"{where}: [project.optional-dependencies] must be a table of lists, "
                          f"not {type(optional).__name__}")
    for extra in extras:
        key = next((k for k in optional if normalize(k) == normalize(extra)), None)
        if key is None:
            raise ConfigError(f"{where} has no optional-dependencies group '{extra}'",
                              hint=f"known: {', '.join(optional) or 'none'}")
        items = _string_list(optional[key], f"{where}: [project.optional-dependencies].{key}")
        reqs += [parse_requirement(r, f"{where} [project.optional-dependencies].{key}") for r in items]
    all_groups = pyproject.data.get("dependency-groups", {})
    if not isinstance(all_groups, dict):
        raise ConfigError(f"{where}: [dependency-groups] must be a table of lists, not {type(all_groups).__name__}")
    for group in groups:
        reqs += _group(all_groups, group, where, ())
    return Wanted(tuple(reqs))


def _string_list(value, where: str) -> list:
    """A list of strings, or an error naming the key: a string would be split into characters
    (``dependencies = "torch"`` installing ``t``, ``o``, ``r``... from the user's index)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        got = type(value).__name__ if not isinstance(value, list) else "a list with non-strings"
        example = f' (write ["{value}"])' if isinstance(value, str) else ""
        raise ConfigError(f"{where} must be a list of requirement strings, not {got}{example}")
    return value


def _group(groups: dict, name: str, where: str, stack: tuple[str, ...]) -> list[Requirement]:
    """PEP 735 dependency groups, with include-group and cycle detection."""
    key = next((k for k in groups if normalize(k) == normalize(name)), None)
    if key is None:
        raise ConfigError(f"{where} has no [dependency-groups] group '{name}'", hint=f"known: {', '.join(groups) or 'none'}")
    if key in stack:
        raise ConfigError(f"{where}: dependency group '{key}' includes itself ({' -> '.join(stack + (key,))})")
    out: list[Requirement] = []
    if not isinstance(groups[key], list):
        raise ConfigError(f"{where}: [dependency-groups].{key} must be a list, not {type(groups[key]).__name__}")
    for item in groups[key]:
        if isinstance(item, str):
            out.append(parse_requirement(item, f"{where} [dependency-groups].{key}"))
        elif isinstance(item, dict) and "include-group" in item:
            out += _group(groups, item["include-group"], where, stack + (key,))
        else:
            raise ConfigError(f"{where} [dependency-groups].{key}: unexpected entry {item!r}")
    return out


def gather(
    args: Iterable[str], files: Iterable[Path], pyproject: Pyproject, extras: Iterable[str], groups: Iterable[str],
    *, env: Mapping[str, str] | None = None, cwd: Path | None = None, editables: Iterable[str] = (),
) -> Wanted:
    args, files, editables = list(args), list(files), list(editables)
    if not args and not files and not editables:
        return from_pyproject(pyproject, extras, groups)
    cwd = Path.cwd() if cwd is None else cwd
    reqs: list[Requirement] = []
    rest_args: list[str] = []
    for value in editables:
        item = editable(value, "the command line", cwd)
        reqs += item.requirements
        rest_args += item.rest_args
    for a in args:
        item = parse_item(a, "the command line", cwd)
        reqs += item.requirements
        rest_args += item.rest_args
    options: list[str] = []
    cons: list[Requirement] = []
    hashes: dict = {}
    for f in files:
        w = read_file(f, env=env, cwd=cwd)
        reqs += w.requirements
        options += w.rest_options
        cons += w.constraints
        rest_args += w.rest_args
        hashes.update(w.hashes)
    if list(extras) or list(groups):
        base = from_pyproject(pyproject, extras, groups)
        reqs += [r for r in base.requirements if r not in reqs]
    # A local project's declared dependencies may repeat a line of the file (pip-compile lists
    # everything): once is enough.
    unique = list({str(r): r for r in reqs}.values())
    return Wanted(tuple(unique), tuple(options), tuple(cons), tuple(rest_args), hashes)
