"""Where the requirements come from: arguments, ``-r`` files, or pyproject.toml.

Every string is parsed here, so an invalid one is an error naming the string and its source
(file and line) before pip ever runs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

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


def read_file(path: Path, *, constraints: bool = False, _seen: frozenset = frozenset()) -> Wanted:
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
    seen = _seen | {path.resolve()}
    for number, line in _logical_lines(text):
        where = f"{path}:{number}"
        if line.startswith("-"):
            words = shlex.split(line)
            flag, _, inline = words[0].partition("=")
            value = inline or (words[1] if len(words) > 1 else "")
            if flag in ("-r", "--requirement", "-c", "--constraint"):
                if not value:
                    raise ConfigError(f"{where}: {flag} needs a file name")
                nested = read_file(path.parent / value, constraints=flag in ("-c", "--constraint"), _seen=seen)
                reqs += nested.requirements
                cons += nested.constraints
                options += nested.rest_options
            elif flag in _PASSTHROUGH:
                options += [flag, value] if _PASSTHROUGH[flag] else [flag]
            elif flag in ("-e", "--editable"):
                raise ConfigError(f"{where}: editable installs are not supported in backendpick requirements",
                                  hint="install the editable project with pip after backendpick has set up the stack")
            else:
                raise ConfigError(f"{where}: option {flag} is not supported in backendpick requirements files")
            continue
        (cons if constraints else reqs).append(parse_requirement(line, where))
    return Wanted(tuple(reqs), tuple(options), tuple(cons))


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
    args: Iterable[str], files: Iterable[Path], pyproject: Pyproject, extras: Iterable[str], groups: Iterable[str]
) -> Wanted:
    args, files = list(args), list(files)
    if not args and not files:
        return from_pyproject(pyproject, extras, groups)
    reqs = [parse_requirement(a, "the command line") for a in args]
    options: list[str] = []
    cons: list[Requirement] = []
    for f in files:
        w = read_file(f)
        reqs += w.requirements
        options += w.rest_options
        cons += w.constraints
    if list(extras) or list(groups):
        base = from_pyproject(pyproject, extras, groups)
        reqs += [r for r in base.requirements if r not in reqs]
    return Wanted(tuple(reqs), tuple(options), tuple(cons))
