"""The one resolution (selection/resolve.py) run by uv, for ``--installer uv``: no pip process.

    uv pip compile --python <target> --no-config <the user's pip configuration as uv flags>
        --only-binary :all: --find-links <stubs> -c <constraints> --format pylock.toml
        -o <tmp>/pylock.toml <tmp>/requirements.txt

The same question as pip's dry run, with the same inputs: the same stub wheels of the torch
family at the versions the backend indexes publish and the same bounds (``offered_as_stubs``),
the user's package sources, configured constraint files, trusted hosts, certificate, proxy and
timeout (indexes/uv_flags.py, as the uv phases get them), the requirements files' options,
nothing built. ``uv pip compile`` resolves from nothing, as pip's ``--ignore-installed`` does.

uv writes no installation report: its lock names each package, its version and its wheel, not
what the package requires. That is read from each wheel's core metadata (``Requires-Dist``): a
local wheel's own METADATA, else the index's PEP 658 file (``<wheel URL>.metadata``, a few kB,
which uv has just read too), else the wheel itself, through backendpick's index client (the
user's credentials, certificate and proxy). From them ``report`` builds the report pip would
have written, the extras each package is asked for included, and ``resolve.parse_report``
reads it: the same pins, the same "who pinned torch", the same pulled-in packages.

A failure takes the same way down as pip's: one ``--no-deps`` compile reads the direct
requirements' own metadata (``DIRECT``); when that fails too, only the request and the
constraints pin torch (``REQUEST``). uv says that a package has no wheel (an sdist-only build
package under ``--only-binary``) in its own words, read by ``stopped_names``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement

from backendpick.edges.runner import capture
from backendpick.model.names import normalize
from backendpick.redaction import redact
from backendpick.selection.resolve import (
    DIRECT,
    REQUEST,
    TIMEOUT,
    Question,
    Resolution,
    _marker_ok,
    offered_as_stubs,
    parse_report,
    resolvable,
)

UV = "uv"


@dataclass(frozen=True)
class Locked:
    """One package of uv's lock: its name, version, and where its wheel is (a URL or a path;
    an sdist's where the lock has no wheel that installs), with the sha256 uv wrote for it."""

    name: str
    version: str
    wheel: str
    sha256: str | None = None


def compile_argv(uv: str, python: str, pip_config, *, options: Sequence[str], stubs: str, constraints: str,
                 out: str, requirements: str, pre: bool = False, no_deps: bool = False) -> list[str]:
    """The resolution's uv command: the user's sources as the uv phases get them, then the stubs
    and their bounds, nothing built (``--only-binary`` after the requirements files' options)."""
    from backendpick.indexes.uv_flags import safety_flags, source_flags, uv_options

    return [uv, "pip", "compile", "--python", python, "--no-config", "--quiet", "--no-header",
            *safety_flags(pip_config), *source_flags(pip_config, options), *uv_options(options),
            "--only-binary", ":all:", "--find-links", stubs, "-c", constraints,
            *(["--prerelease", "allow"] if pre else []), *(["--no-deps"] if no_deps else []),
            "--format", "pylock.toml", "-o", out, requirements]


def read_lock(path: Path, markers: Mapping[str, str], tags: Sequence[str] = ()) -> list[Locked]:
    """The packages of uv's ``pylock.toml`` (PEP 751) whose marker holds on the target.
    ``tags``: the target's wheel tags, best first: each package's file is then the wheel pip
    would take (its best-ranked tag), else its sdist; without, the first file listed."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    from packaging.markers import InvalidMarker, Marker

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for pkg in data.get("packages", []):
        marker = pkg.get("marker")
        try:
            if marker and not Marker(marker).evaluate(dict(markers)):
                continue
        except InvalidMarker:
            pass  # uv wrote it; keep the package rather than guess
        first = _file(pkg, tags)
        where = first.get("url") or first.get("path") or ""
        if where and "://" not in where and not Path(where).is_absolute():
            where = str(path.parent / where)  # PEP 751: relative to the lock file's folder
        out.append(Locked(pkg.get("name", ""), str(pkg.get("version", "")), where,
                          (first.get("hashes") or {}).get("sha256")))
    return out


def _file(pkg: Mapping, tags: Sequence[str]) -> Mapping:
    """A locked package's file: with ``tags``, the wheel whose best tag ranks first among them
    (as pip's candidate order ranks the wheels of one version), else the sdist."""
    wheels = list(pkg.get("wheels") or [])
    if tags and wheels:
        from urllib.parse import unquote

        from packaging.utils import InvalidWheelFilename, parse_wheel_filename

        rank = {tag: i for i, tag in enumerate(tags)}
        scored = []
        for i, wheel in enumerate(wheels):
            name = wheel.get("name") or unquote((wheel.get("url") or wheel.get("path") or "").rsplit("/", 1)[-1])
            try:
                found = [rank[str(t)] for t in parse_wheel_filename(name.split("#", 1)[0])[3] if str(t) in rank]
            except InvalidWheelFilename:
                found = []
            if found:
                scored.append((min(found), i))
        # No wheel for the target: the sdist (pip builds it); without one, the first wheel.
        wheels = [wheels[min(scored)[1]]] if scored else ([] if pkg.get("sdist") else wheels[:1])
    return (wheels or [pkg.get("sdist") or pkg.get("archive") or pkg.get("directory") or {}])[0]


def metadata_in_wheel(path) -> str | None:
    """The METADATA of a wheel file (a path or an open file); None where it has none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            return zf.read(name).decode("utf-8", errors="replace") if name else None
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def wheel_metadata(client, wheel: str) -> str | None:
    """A wheel's core metadata: a local file's own, else the index's PEP 658 file, else the wheel
    downloaded (an index without PEP 658; only its METADATA is read). None: not readable."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    if not wheel:
        return None
    if "://" not in wheel or urlsplit(wheel).scheme == "file":
        return metadata_in_wheel(Path(url2pathname(urlsplit(wheel).path)) if "://" in wheel else Path(wheel))
    from backendpick.indexes.client import FileLink

    url = wheel.split("#", 1)[0]
    text = client.metadata(FileLink(url.rsplit("/", 1)[-1], url, metadata=True))
    if text is not None:
        return text
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        try:
            with client.session.open(url) as resp:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    tmp.write(chunk)
        except (OSError, ValueError):
            return None
        return metadata_in_wheel(tmp)


def _requires(text: str | None) -> tuple[str, list[str]]:
    """(Name, the Requires-Dist lines) of a core metadata text."""
    from email.parser import Parser

    if not text:
        return "", []
    msg = Parser().parsestr(text, headersonly=True)
    return msg.get("Name", ""), list(msg.get_all("Requires-Dist") or [])


def report(locked: Sequence[Locked], metadata: Mapping[str, str | None], requirements: Sequence[Requirement],
           markers: Mapping[str, str]) -> dict:
    """The installation report pip would have written for uv's lock (``resolve.parse_report``
    reads it): each package's metadata, and the extras it is asked for, by the request or by
    another package's requirement, followed until nothing new is asked."""
    names, requires = {}, {}
    for pkg in locked:
        key = normalize(pkg.name)
        shown, lines = _requires(metadata.get(key))
        names[key], requires[key] = shown or pkg.name, lines
    parsed = {key: [r for r in (_parse(line) for line in lines) if r is not None] for key, lines in requires.items()}
    extras: dict[str, set] = {}
    for req in requirements:
        extras.setdefault(normalize(req.name), set()).update(req.extras)
    changed = True
    while changed:
        changed = False
        for key, reqs in parsed.items():
            for req in reqs:
                dep = normalize(req.name)
                if dep in parsed and not set(req.extras) <= extras.get(dep, set()) and \
                        _marker_ok(req, markers, extras.get(key, ())):
                    extras.setdefault(dep, set()).update(req.extras)
                    changed = True
    return {"version": "1", "install": [
        {"metadata": {"name": names[normalize(p.name)], "version": p.version,
                      "requires_dist": requires[normalize(p.name)]},
         "requested_extras": sorted(extras.get(normalize(p.name), ()))} for p in locked]}


def _parse(line: str) -> Requirement | None:
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


def read_all(client, locked: Sequence[Locked], skip: set) -> dict[str, str | None]:
    """Each locked package's core metadata (the family's stubs and build packages need none), at
    most eight at once."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [p for p in locked if normalize(p.name) not in skip]
    if not todo:
        return {}
    if any("://" in p.wheel and not p.wheel.startswith("file:") for p in todo):
        client.session  # made once, before the threads share it
    with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
        texts = list(pool.map(lambda p: wheel_metadata(client, p.wheel), todo))
    return {normalize(p.name): text for p, text in zip(todo, texts)}


# uv's words for "no wheel of X" (``--only-binary :all:``): the hint, and the resolver's reason.
_NO_WHEEL = (
    re.compile(r"Wheels are required for `([A-Za-z0-9][A-Za-z0-9._-]*)`"),
    re.compile(r"Because (?:only )?([A-Za-z0-9][A-Za-z0-9._-]*)(?:[=<>!~][^ ]*)? has no (?:usable )?wheels"),
)


def reason(output: str) -> str:
    """uv's reason in one line: its ``error:`` line and the ``cause:`` after it, credentials hidden."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), None)
    if start is None:
        return redact((lines[-1] if lines else "uv failed")[:300])
    text = lines[start][len("error:"):].strip()
    cause = [ln for ln in lines[start + 1:] if not ln.startswith("hint:")]
    if cause:
        text += ": " + " ".join(cause).replace("cause: ", "", 1)
    return redact(" ".join(text.split())[:300])


def stopped_names(output: str, family: Iterable[str], build: Iterable[str]) -> tuple[tuple[str, ...], str]:
    """As ``resolve.stopped_at`` for uv's output: the backend or build packages uv found no wheel
    of (their names route them to their phase), and the plan's note that the dependencies were
    not fully resolved, with uv's reason."""
    names = sorted({normalize(m) for rx in _NO_WHEEL for m in rx.findall(output)})
    keep = {normalize(n) for n in family} | {normalize(n) for n in build}
    why = f"no wheel of {', '.join(names)}" if names else reason(output)
    note = redact(f"the dependencies of the ordinary requirements were not fully resolved before installing "
                  f"({why[:200]}); install moves a backend or build package pulled in after that to its "
                  "phase when uv asks for it")
    return tuple(n for n in names if n in keep), note


def resolve(question: Question, uv: str, *, env: Mapping[str, str], pip_config, client) -> Resolution:
    """``resolve.resolve`` with uv: one ``uv pip compile`` of the question's requirements (the
    ordinary ones) for its target, its packages' requirements read from their core metadata
    (``client``: the plan's index client). ``env``: the user's environment (its ``UV_*`` source
    variables are dropped, pip's certificate, proxy and timeout given in uv's)."""
    import tempfile

    from backendpick.indexes.credentials import uv_args
    from backendpick.indexes.uv_flags import uv_env

    q, target = question, question.target
    family, build = tuple(q.family), tuple(q.build)
    requirements = resolvable(q.requirements)
    if not requirements:
        return Resolution(resolver=UV)
    with tempfile.TemporaryDirectory(prefix="backendpick-resolve-") as tmp:
        folder = Path(tmp)
        stubs, cons = offered_as_stubs(folder, q.published, q.constraints)
        wanted = folder / "requirements.txt"
        wanted.write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")
        lock = folder / "pylock.toml"

        def run(no_deps: bool):
            argv, moved = uv_args(compile_argv(uv, str(target.python), pip_config, options=q.options, stubs=str(stubs),
                                               constraints=str(cons), out=str(lock), requirements=str(wanted),
                                               pre=q.pre, no_deps=no_deps))
            lock.unlink(missing_ok=True)
            res = capture(argv, timeout=TIMEOUT, env={**uv_env(env, pip_config), **moved}, cwd=folder)
            return res, (read_lock(lock, target.markers) if res.ok and lock.is_file() else None)

        res, locked = run(False)
        if locked is not None:
            return _answer(client, locked, requirements, target, family, build)
        output = res.stdout + "\n" + res.stderr if res.returncode is not None else f"error: {res.error}"
        why = reason(output)
        stopped, note = stopped_names(output, family, build)
        res, locked = run(True)
        if locked is not None:
            direct = _answer(client, locked, requirements, target, family, build, source=DIRECT,
                             note=f"the full resolution failed: {why}")
            return replace(direct, pulled=tuple(dict.fromkeys((*direct.pulled, *stopped))), stopped=note)
        again = res.stdout + "\n" + res.stderr if res.returncode is not None else f"error: {res.error}"
        return Resolution(pulled=stopped, source=REQUEST, stopped=note, resolver=UV,
                          note=f"uv could not read the requirements' metadata: {reason(again)}")


def _answer(client, locked: Sequence[Locked], requirements, target, family, build, **how) -> Resolution:
    """The Resolution of uv's lock: its packages' metadata read, the report built and parsed."""
    skip = {normalize(n) for n in (*family, *build)}
    metadata = read_all(client, locked, skip)
    answer = parse_report(report(locked, metadata, requirements, target.markers), family=family, build=build,
                          markers=target.markers, **how)
    unread = sorted(p.name for p in locked if normalize(p.name) not in skip and metadata.get(normalize(p.name)) is None)
    answer = replace(answer, resolver=UV)
    if not unread:
        return answer
    note = redact(f"the requirements of {', '.join(unread[:5])}{' and more' if len(unread) > 5 else ''} could not "
                  "be read from their index (no core metadata, the wheel not readable): their pins on the torch "
                  "family are not known before installing; install moves a backend or build package pulled in "
                  "after that to its phase when uv asks for it")
    return replace(answer, stopped=answer.stopped or note)
