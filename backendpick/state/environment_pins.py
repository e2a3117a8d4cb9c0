"""Pins that outlive backendpick: the stack's versions in the environment's own pip configuration.

pip reads ``<sys.prefix>/pip.conf`` (the "site" file) for every run of that interpreter, so a
``constraint =`` there makes a later plain ``pip install -U torch`` or ``pip install
xformers==<other>`` fail with pip's conflict message instead of quietly swapping the CUDA stack,
while ``pip install some-package`` still works. Files written:

* ``<prefix>/backendpick-pins.txt``: a pip constraints file. Header: what wrote it and how to
  change the stack; ``-c`` lines for the user's own constraint files (see below); then
  ``name==version`` for every installed backend and build package.
* ``<prefix>/pip.conf``: ``constraint = <that file>`` in ``[global]`` and ``[install]``, merged
  into a file the user may already have. pip keeps one value per key (``[install]`` beats
  ``[global]``, and the site file beats the user and global files), so our value would hide the
  user's own ``constraint``: their value stays in force through the ``-c`` lines of the pins file,
  and a value we replace in the site file is kept as a ``# backendpick-replaced:`` comment, put
  back when the pins are removed.

backendpick must not be blocked by its own pins (an upgrade, a backend switch, ``restore``):
``pip_config.read`` reads the site file as if we had never written it, and our pip runs get
``PIP_CONSTRAINT`` (which beats every file) set to the user's own constraints, or os.devnull.

uv does not read pip.conf: ``UV_CONSTRAINT=<prefix>/backendpick-pins.txt`` is the equivalent.
Files are written atomically (temp file + os.replace): an interrupted run leaves the old file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from backendpick import __version__
from backendpick.edges import durable
from backendpick.inputs import pip_config as pipconf
from backendpick.model.names import normalize
from backendpick.inputs.pip_config import PINS_NAME, REPLACED, conf_entries, is_pins, pins_value, section_of, user_constraints  # noqa: F401 (user_constraints: environment_pins API)

OWN = "# backendpick: "
SECTIONS = ("global", "install")
CONF_HEADER = (
    f"{OWN}the constraint lines below pin this environment's GPU stack ({PINS_NAME}); "
    "`backendpick install` changes the stack, `backendpick install --no-pin-environment` removes them"
)


def conf_path(prefix: Path) -> Path:
    """The site configuration file pip reads for this interpreter."""
    return Path(prefix) / ("pip.ini" if os.name == "nt" else "pip.conf")


def pins_path(prefix: Path) -> Path:
    return Path(prefix) / PINS_NAME


# -- pip.conf text, pure ----------------------------------------------------------------------------


def merge_conf(text: str, pins: str) -> str:
    """``text`` (a pip.conf, maybe empty) with ``constraint = pins`` in [global] and [install].

    Nothing of the user's is lost: their own constraint line becomes a ``# backendpick-replaced:``
    comment (and stays in force through the pins file's ``-c`` lines). Idempotent."""
    lines = unmerge_conf(text).splitlines()
    out: list[str] = []
    seen: set[str] = set()
    entries = {(sec, start): (end, key, value) for sec, start, end, key, value in conf_entries(lines)}
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        name = section_of(line)
        if name is not None:
            section = name
            out.append(line)
            if name in SECTIONS and name not in seen:
                seen.add(name)
                out.append(f"constraint = {pins}")
            i += 1
            continue
        entry = entries.get((section, i))
        if entry and entry[1] == "constraint" and section in SECTIONS:
            out.append(REPLACED + entry[2])
            i = entry[0]
            continue
        out.append(line)
        i += 1
    for name in SECTIONS:
        if name not in seen:
            if out and out[-1].strip():
                out.append("")
            out += [f"[{name}]", f"constraint = {pins}"]
    return "\n".join([CONF_HEADER, *out]) + "\n"


def unmerge_conf(text: str) -> str:
    """``text`` without backendpick's lines, the user's replaced values put back."""
    lines = text.splitlines()
    pins_lines = {start for sec, start, end, key, value in conf_entries(lines)
                  if key == "constraint" and value.endswith(PINS_NAME)}
    out = []
    for i, line in enumerate(lines):
        if line.startswith(OWN) or i in pins_lines:
            continue
        if line.startswith(REPLACED):
            out.append("constraint = " + line[len(REPLACED):].strip())
            continue
        out.append(line)
    # Sections we created and left empty go too.
    cleaned: list[str] = []
    for i, line in enumerate(out):
        name = section_of(line)
        if name in SECTIONS:
            rest = next((ln for ln in out[i + 1:] if ln.strip()), None)
            if rest is None or section_of(rest) is not None:
                continue
        cleaned.append(line)
    while cleaned and not cleaned[-1].strip():
        cleaned.pop()
    return "\n".join(cleaned) + ("\n" if cleaned else "")


def pins_text(pins: Iterable[str], includes: Iterable[str], *, backend: str) -> str:
    lines = [
        f"# Written by backendpick {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}: the GPU stack of this "
        f"environment ({backend}).",
        "# pip reads it through this environment's pip.conf, so a plain pip cannot replace torch or a companion.",
        "# To change the stack: backendpick install (-U for newer, --backend NAME to switch);",
        "# to remove these pins: backendpick install --no-pin-environment. uv: UV_CONSTRAINT=<this file>.",
    ]
    lines += [f"# your own constraint file, kept in force:\n-c {p}" for p in includes]
    lines += list(pins)
    return "\n".join(lines) + "\n"


def pin_lines(installed: Mapping[str, object], names: Iterable[str]) -> list[str]:
    """``name==version`` for the installed packages of ``names`` (exact, local tag included)."""
    out = []
    for name in sorted({normalize(n) for n in names}):
        dist = installed.get(name)
        if dist is not None:
            out.append(f"{dist.name}=={dist.version}")
    return out


def read_pins(text: str) -> dict[str, str]:
    """Normalized name -> pinned version, from a pins file."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")) or "==" not in line:
            continue
        name, _, version = line.partition("==")
        out[normalize(name.strip())] = version.strip()
    return out


# -- files ------------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Atomically, into a folder made if missing (a venv without a pip.conf yet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.write_atomic(path, text)


def user_includes(env: Mapping[str, str], prefix: Path) -> list[str]:
    """The user's own constraint files that pip would apply from its configuration files (global,
    user, and the site file as the user wrote it): our site value hides them, so the pins file
    ``-c`` includes them. PIP_CONSTRAINT and PIP_CONFIG_FILE beat the site file and need nothing."""
    from backendpick.inputs import pip_config as pipconf

    quiet = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    return [p for p in pipconf.read(quiet, prefix).list("constraint") if not p.endswith(PINS_NAME)]


def write(prefix: Path, pins: list[str], *, env: Mapping[str, str], backend: str) -> Path:
    """Write the pins file and merge its constraint into the site pip.conf. Returns the pins file."""
    target = pins_path(prefix)
    includes = user_includes(env, prefix)
    write_atomic(target, pins_text(pins, includes, backend=backend))
    conf = conf_path(prefix)
    old = conf.read_text(encoding="utf-8") if conf.exists() else ""
    new = merge_conf(old, pins_value(target))
    if new != old:
        write_atomic(conf, new)
    return target


def up_to_date(prefix: Path, pins: list[str], *, env: Mapping[str, str]) -> bool:
    """Whether the pins file already holds ``pins`` (and the user's includes) and the site pip.conf
    points at it: then nothing is rewritten (the first line, when it was written, aside)."""
    target = pins_path(prefix)
    try:
        old = target.read_text(encoding="utf-8")
        conf = conf_path(prefix).read_text(encoding="utf-8")
    except OSError:
        return False
    new = pins_text(pins, user_includes(env, prefix), backend="")
    return old.splitlines()[1:] == new.splitlines()[1:] and merge_conf(conf, pins_value(target)) == conf


def remove(prefix: Path) -> bool:
    """Remove backendpick's pins (the user's own pip.conf lines stay). True when there were any."""
    conf = conf_path(prefix)
    changed = False
    if conf.exists():
        old = conf.read_text(encoding="utf-8")
        new = unmerge_conf(old)
        if new != old:
            changed = True
            if new.strip():
                write_atomic(conf, new)
            else:
                conf.unlink()
    target = pins_path(prefix)
    if target.exists():
        target.unlink()
        changed = True
    return changed


def own_runs_env(env: Mapping[str, str], prefix: Path, pip_config) -> dict[str, str]:
    """What backendpick's own pip runs set so the pins it wrote do not block it: PIP_CONSTRAINT
    (which beats every file) with the user's own constraints, or os.devnull for none."""
    if "PIP_CONSTRAINT" in env and env["PIP_CONSTRAINT"]:
        return {}
    conf = conf_path(prefix)
    try:
        text = conf.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not any(key == "constraint" and value.endswith(PINS_NAME) for _s, _a, _b, key, value in conf_entries(text.splitlines())):
        return {}
    own = pip_config.list("constraint")
    return {"PIP_CONSTRAINT": " ".join(own) if own else os.devnull}


@dataclass(frozen=True)
class PinStatus:
    in_place: bool  # the site pip.conf points at the pins file, and the file exists
    current: bool  # it pins exactly what is installed
    stale: tuple[str, ...] = ()  # "torch: pinned 2.5.1+cu124, installed 2.6.0+cu124"
    hidden_by: str | None = None  # PIP_CONSTRAINT / PIP_CONFIG_FILE overriding the site file
    path: str = ""
    # Why pip cannot read the pins its pip.conf names (a path split at a space, a file that is
    # not there, a file pip cannot decode), or None when it can.
    unreadable: str | None = None

    def to_json(self) -> dict:
        return {"in_place": self.in_place, "current": self.current, "stale": list(self.stale),
                "hidden_by": self.hidden_by, "file": self.path, "readable_by_pip": self.unreadable is None,
                "unreadable": self.unreadable}


def pip_reads(text: str, target: Path) -> str | None:
    """Why pip, reading the site pip.conf ``text`` as it does, would not apply the pins file
    ``target``; None when it would. pip takes ``[install]`` over ``[global]`` in one file,
    splits the value on whitespace, opens each part (a path or a ``file:`` URL), and decodes the
    file in the locale's encoding."""
    import locale

    values: dict[str, str] = {}
    for section, _a, _b, key, value in conf_entries(text.splitlines()):
        if key == "constraint" and section in SECTIONS:
            values[section] = value
    value = values.get("install", values.get("global"))
    if value is None:
        return "its pip.conf names no constraint"
    parts = value.split()
    missing = [p for p in parts if not pipconf.value_path(p).is_file()]
    if missing:
        return f"pip reads `constraint = {value}` as {len(parts)} file(s) and cannot open {missing[0]}"
    if not any(pipconf.value_path(p) == target for p in parts):
        return f"`constraint = {value}` does not name {target}"
    encoding = locale.getpreferredencoding(False)
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return f"pip.conf holds characters pip cannot decode in this locale ({encoding})"
    return None


def status(prefix: Path, installed: Mapping[str, object], names: Iterable[str], env: Mapping[str, str]) -> PinStatus:
    conf, target = conf_path(prefix), pins_path(prefix)
    try:
        text = conf.read_text(encoding="utf-8")
    except OSError:
        text = ""
    pointed = any(key == "constraint" and is_pins(value, target)
                  for _s, _a, _b, key, value in conf_entries(text.splitlines()))
    if not pointed or not target.exists():
        return PinStatus(False, False, path=str(target))
    unreadable = pip_reads(text, target)
    pinned = read_pins(target.read_text(encoding="utf-8"))
    stale = []
    for name in sorted({normalize(n) for n in names} | set(pinned)):
        dist = installed.get(name)
        have = dist.version if dist is not None else None
        want = pinned.get(name)
        if have != want and not (want is None and have is None):
            stale.append(f"{name}: pinned {want or '(not pinned)'}, installed {have or '(not installed)'}")
    hidden = None
    if env.get("PIP_CONSTRAINT"):
        hidden = "PIP_CONSTRAINT"
    elif env.get("PIP_CONFIG_FILE") and env["PIP_CONFIG_FILE"] != os.devnull:
        try:
            other = Path(env["PIP_CONFIG_FILE"]).read_text(encoding="utf-8")
        except OSError:
            other = ""
        if any(key == "constraint" for _s, _a, _b, key, _v in conf_entries(other.splitlines())):
            hidden = f"PIP_CONFIG_FILE ({env['PIP_CONFIG_FILE']})"
    return PinStatus(True, not stale, tuple(stale), hidden, str(target), unreadable)
