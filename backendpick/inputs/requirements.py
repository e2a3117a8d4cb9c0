"""Where the requirements come from: arguments, ``-r`` files, or pyproject.toml.

Every string is parsed here, so an invalid one is an error naming the string and its source
(file and line) before pip ever runs.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Iterable, Mapping

from packaging.requirements import Requirement

from backendpick.errors import ConfigError
from backendpick.inputs.config import Pyproject
from backendpick.inputs.requirement_items import Wanted, editable, parse_item, parse_requirement
from backendpick.model.names import normalize

# The items' types and readers, named where the requirements' callers look for them.
__all__ = ["Wanted", "editable", "expand_vars", "from_pyproject", "gather", "parse_item", "parse_requirement",
           "read_file", "variables"]


# Options a requirements file may carry, and whether they take a value.
_PASSTHROUGH = {
    "-i": True, "--index-url": True, "--extra-index-url": True, "-f": True, "--find-links": True,
    "--trusted-host": True, "--pre": False, "--prefer-binary": False, "--only-binary": True, "--no-binary": True,
}
_ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")  # pip's rule: only ${NAME} of upper case, digits, _
_HASH_SPLIT = re.compile(r"\s+(?=--hash[=\s])")


def expand_vars(line: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` as pip expands it in requirements files; unset variables stay as written."""
    return _ENV_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), line)


def variables(text: str) -> set[str]:
    """The variables a requirements file's text names as pip expands them (``${NAME}``)."""
    return set(_ENV_VAR.findall(text))


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
    files: list[Path] = [path]
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
                files += nested.files
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
    return Wanted(tuple(reqs), tuple(options), tuple(cons), tuple(args), {k: tuple(v) for k, v in hashes.items()},
                  tuple(files))


def _hash_value(word: str, where: str) -> str:
    value = word[len("--hash"):].lstrip("= ").strip()
    algo, _, digest = value.partition(":")
    if algo not in ("sha256", "sha384", "sha512") or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise ConfigError(f"{where}: {word.strip()!r} is not a hash pip accepts (--hash=sha256:HEX)")
    return value


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
    read: list[Path] = []
    for f in files:
        w = read_file(f, env=env, cwd=cwd)
        reqs += w.requirements
        options += w.rest_options
        cons += w.constraints
        rest_args += w.rest_args
        hashes.update(w.hashes)
        read += w.files
    if list(extras) or list(groups):
        base = from_pyproject(pyproject, extras, groups)
        reqs += [r for r in base.requirements if r not in reqs]
    # A local project's declared dependencies may repeat a line of the file (pip-compile lists
    # everything): once is enough.
    unique = list({str(r): r for r in reqs}.values())
    return Wanted(tuple(unique), tuple(options), tuple(cons), tuple(rest_args), hashes, tuple(read))
