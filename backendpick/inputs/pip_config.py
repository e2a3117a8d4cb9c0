"""The user's pip configuration, read the way pip reads it, so each phase can use the right part.

The backend phase must not see the user's ``extra-index-url`` or ``find-links`` (dependency
confusion: the torchtriton compromise), yet it should keep their certificates, proxy, timeouts
and cache. pip offers no flag that clears a configured extra index, and it ignores empty
``PIP_*`` variables, so the backend phase runs with ``PIP_CONFIG_FILE=os.devnull`` and gets the
safe keys back as ``PIP_*`` variables. The other phases run with the user's configuration as is.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from backendpick.knowledge import facts

# Keys that choose where packages come from (facts.toml [pip]). Everything else (cert, proxy,
# timeout, retries, cache-dir, trusted-host, keyring-provider, ...) is carried into the backend phase.
SOURCE_KEYS = facts.load().pip_source_keys
_SECTIONS = ("global", "install")


def _env_var(key: str) -> str:
    return "PIP_" + key.upper().replace("-", "_")


def _canonical(key: str) -> str:
    key = key.replace("_", "-").lower()
    return "default-timeout" if key == "timeout" else key


def config_files(env: Mapping[str, str], target_prefix: Path | None) -> list[Path]:
    """pip's files in override order (later wins), as pip 21-25 load them."""
    env_file = env.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    files: list[Path] = []
    xdg_dirs = env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files += [Path(d) / "pip" / "pip.conf" for d in xdg_dirs if d]
    files.append(Path("/etc/pip.conf"))
    # A PIP_CONFIG_FILE that exists replaces the user files (pip's own rule).
    if not (env_file and Path(env_file).exists()):
        home = Path(env.get("HOME") or Path.home())
        files.append(home / ".pip" / "pip.conf")
        files.append(Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    if target_prefix is not None:
        files.append(target_prefix / "pip.conf")
    if env_file:
        files.append(Path(env_file))
    return files


@dataclass(frozen=True)
class PipConfig:
    values: dict = field(default_factory=dict)  # canonical key -> raw string, files and env merged
    from_env: frozenset = frozenset()  # keys whose value came from a PIP_* variable

    def get(self, key: str) -> str | None:
        return self.values.get(_canonical(key))

    def list(self, key: str) -> list[str]:
        return (self.get(key) or "").split()

    @property
    def cert(self) -> str | None:
        return self.get("cert")

    @property
    def proxy(self) -> str | None:
        return self.get("proxy")

    @property
    def trusted_hosts(self) -> list[str]:
        return self.list("trusted-host")

    @property
    def timeout(self) -> float:
        try:
            return float(self.get("default-timeout") or 15)
        except ValueError:
            return 15.0


def read(env: Mapping[str, str] | None = None, target_prefix: Path | None = None) -> PipConfig:
    """The merged configuration as pip sees it: ``[global]`` of every file, then ``[install]`` of
    every file (pip orders by section first: a user's ``[install]`` beats a site ``[global]``),
    then PIP_* variables.

    The site file (``<prefix>/pip.conf``) is read as the user wrote it: the ``constraint`` that
    backendpick's environment pins put there (state/environment_pins.py) is policy for plain pip runs, not for
    backendpick's own, which would otherwise be blocked by the pins they are about to change."""
    env = os.environ if env is None else env
    by_section: dict[str, dict[str, str]] = {s: {} for s in _SECTIONS}
    site = target_prefix / "pip.conf" if target_prefix is not None else None
    for path in config_files(env, target_prefix):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            # pip itself refuses to start on a broken file; say which one.
            from backendpick.errors import ConfigError

            raise ConfigError(f"pip configuration file {path} is not valid: {exc}") from None
        own: dict[str, str | None] = {}
        if site is not None and path == site and path.is_file():
            own = user_constraints(path.read_text(encoding="utf-8"), Path(target_prefix) / PINS_NAME)
        for section in _SECTIONS:
            if parser.has_section(section):
                for key, value in parser.items(section):
                    key = _canonical(key)
                    if key == "constraint" and section in own:
                        if own[section] is None:
                            continue
                        value = own[section]
                    by_section[section][key] = value
    values: dict[str, str] = {**by_section["global"], **by_section["install"]}
    from_env = set()
    for name, value in env.items():
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE" and value != "":
            key = _canonical(name[4:])
            values[key] = value
            from_env.add(key)
    return PipConfig(values, frozenset(from_env))


def backend_phase_env(base: Mapping[str, str], config: PipConfig) -> dict[str, str]:
    """Environment for the backend phase: user's pip settings minus every package source."""
    env = {k: v for k, v in base.items() if not (k.startswith("PIP_") and _canonical(k[4:]) in SOURCE_KEYS)}
    env.pop("PIP_CONFIG_FILE", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    for key, value in config.values.items():
        if key in SOURCE_KEYS:
            continue
        env.setdefault(_env_var(key), value)
    return env


# -- pip.conf text (state/environment_pins.py writes the environment's pins into it; read() reads around them) --

PINS_NAME = "backendpick-pins.txt"  # next to the site pip.conf, in the environment's prefix
REPLACED = "# backendpick-replaced: constraint = "
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+~,@=:")


def pins_value(path) -> str:
    """How pip.conf names the pins file so that pip reads it as one value.

    pip splits list options (``constraint``) on whitespace, and reads pip.conf in the locale's
    encoding (a C locale cannot decode a non-ASCII path). A path of plain ASCII characters is
    written as it is; any other (a space, a quote, ``é``) as a ``file:`` URL, percent-encoded,
    which pip opens as a local file (its requirement-file reader takes ``file:`` URLs; checked
    with pip 23.2 under LANG=C). Standard library only: the shell export embeds it."""
    from pathlib import Path

    text = str(path)
    return text if text and set(text) <= _PLAIN else Path(path).absolute().as_uri()


def value_path(value: str):
    """The file a pip ``constraint`` value names (a path, or a ``file:`` URL as pip reads it)."""
    from pathlib import Path

    if value.startswith("file:"):
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        return Path(url2pathname(urlsplit(value).path))
    return Path(value).expanduser()


def is_pins(value: str, pins) -> bool:
    """Whether a ``constraint`` value names backendpick's pins file ``pins``, in either form (an
    older backendpick wrote the plain path even where it held a space)."""
    return value in (str(pins), pins_value(pins))


def section_of(line: str) -> str | None:
    s = line.strip()
    return s[1:-1].strip().lower() if s.startswith("[") and s.endswith("]") else None


def key_of(line: str) -> str | None:
    """The key of a ``key = value`` line (not a continuation line, not a comment)."""
    if not line or line[0] in " \t#;" or "=" not in line and ":" not in line:
        return None
    sep = min(i for i in (line.find("="), line.find(":")) if i >= 0)
    return line[:sep].strip().lower().replace("_", "-")


def conf_entries(lines: list[str]):
    """(section, start, end, key, value) for each key line with its continuation lines."""
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        name = section_of(line)
        if name is not None:
            section = name
            i += 1
            continue
        key = key_of(line)
        if key is None:
            i += 1
            continue
        sep = min(j for j in (line.find("="), line.find(":")) if j >= 0)
        value = [line[sep + 1:].strip()]
        j = i + 1
        while j < len(lines) and lines[j][:1] in (" ", "\t") and lines[j].strip():
            value.append(lines[j].strip())
            j += 1
        yield section, i, j, key, " ".join(v for v in value if v)
        i = j


def user_constraints(text: str, pins) -> dict[str, str | None]:
    """Section -> the user's own ``constraint`` value in this file, as if backendpick had never
    written it (our value replaced by what it replaced, or by nothing)."""
    lines = text.splitlines()
    out: dict[str, str | None] = {}
    replaced: dict[str, str] = {}
    section = None
    for line in lines:
        name = section_of(line)
        if name is not None:
            section = name
        elif line.startswith(REPLACED) and section:
            replaced[section] = line[len(REPLACED):].strip()
    for section, _s, _e, key, value in conf_entries(lines):
        if key != "constraint" or section is None:
            continue
        out[section] = replaced.get(section) if is_pins(value, pins) else value
    return out
