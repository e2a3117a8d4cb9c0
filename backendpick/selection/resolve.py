"""What the ordinary packages of a request pull in, from one ``pip install --dry-run --report``.

vllm, sglang and model repositories pin one exact torch (and torchvision, xformers); a pin can
sit deep in the dependency tree. backendpick must know them *before* it chooses a backend and a
torch, or the rest phase fails against the stack it just installed. pip is the resolver the user
trusts, so we ask it, once:

    pip install --dry-run --ignore-installed --only-binary=:all: --report FILE <ordinary requirements>

with the user's own pip configuration (their indexes, their ``constraint``), so the answer is what
the rest phase would see. The restrictions, and why:

* ``--only-binary=:all:``: nothing is built. flash-attn's sdist cannot even produce metadata
  without torch, and a plan must never run a setup.py.
* Backend packages are not taken from the user's indexes for real; torch is offered as metadata-only
  *stub* wheels (from a throwaway ``--find-links`` folder) at exactly the versions the backend indexes
  publish, and limited to that range by a constraint, so a pin to ``torch==2.5.1+cu124`` or to a
  version the user's index lacks still resolves. Only the pins on them are read from the report.
* ``--ignore-installed``: installed packages are reported too (their pins count as much).
* The stubs keep the backend builds' local tags (``2.7.1+cu126``): a higher version than an
  untagged PyPI torch ``2.7.1``, so pip takes the stub and never fetches a family wheel or its
  metadata from the user's indexes (it still reads their pages, as for any package). A build the
  backend index publishes untagged (PyPI's CUDA torch ``2.14.1``) is stubbed as ``2.14.1+stub``
  for the same reason: at an equal version the resolver prefers the index's wheel for this
  platform over a ``py3-none-any`` stub, and would resolve the real torch and its dependencies.

This is the plan's ONE resolution: it also says which backend and build packages the ordinary
requirements pull in (``Resolution.pulled``), so the plan holds what install runs (issue 9). An
sdist-only build package stops ``--only-binary`` (``No matching distribution found for
flash-attn``): its name still routes it to its phase (``stopped_at``), and the plan says the
dependencies were not fully resolved.

When that resolution fails (no wheel for some package, a conflict among the ordinary packages, no
network), one ``--no-deps`` run reads the direct requirements' own metadata instead, and the
``source`` says which answer the plan stands on. When that fails too, only the request itself and
the constraints pin torch, and the plan says so.

The one entry point is ``resolve(requirements, pip_config, target) -> Resolution``; the pure part
(``parse_report``) is unit-tested.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from backendpick.edges.runner import capture
from backendpick.model.names import normalize
from backendpick.redaction import redact

RESOLUTION = "resolution"  # the full dry-run resolution answered
DIRECT = "direct"  # fallback: the direct requirements' own metadata (--no-deps)
REQUEST = "request"  # fallback: nothing could be read; the request and constraints only
NOTHING = "nothing to resolve"  # no ordinary requirements
INSTALLED = "installed"  # every ordinary requirement is satisfied: the installed metadata answers

TIMEOUT = 300.0  # seconds: a resolution against a slow mirror
STUB_TAG = "stub"  # the local label of a stub of an untagged backend build


@dataclass(frozen=True)
class Pin:
    """One requirement on a backend package, and who states it."""

    requirement: Requirement
    by: str  # "pkg 1.0", "you", "constraint file /etc/pip-constraints.txt"

    @property
    def name(self) -> str:
        return normalize(self.requirement.name)

    def describe(self) -> str:
        """``pkg 1.0 requires torch==2.5.1``, ``you asked for torch>=2.7``, ``constraint ... : torch<2.7``."""
        text = f"{self.requirement.name}{self.requirement.specifier}"
        if self.by == "you":
            return f"you asked for {text}"
        if self.by.startswith("constraint"):
            return f"{self.by}: {text}"
        return f"{self.by} requires {text}"


@dataclass(frozen=True)
class Resolution:
    """``dependencies``: (name, version) of every ordinary package pip resolved; ``pins``: their
    requirements on backend packages; ``pulled``: backend and build packages they need (normalized
    names), which must join their phase; ``source``: which answer this is (see the module doc)."""

    dependencies: tuple[tuple[str, str], ...] = ()
    pins: tuple[Pin, ...] = ()
    pulled: tuple[str, ...] = ()
    source: str = NOTHING
    note: str = ""  # why a fallback answered, in one line
    # Set when pip's resolution fell short: that the dependencies were not fully resolved, why,
    # and that install's fence-and-retry moves what pip asks for later (for the plan's warnings).
    stopped: str = ""
    resolver: str = "pip"  # which installer resolved: "pip" or "uv" (--installer uv: uv_resolve.py)

    @property
    def torch_pins(self) -> tuple[Pin, ...]:
        return tuple(p for p in self.pins if p.name == "torch")

    @property
    def fallback(self) -> bool:
        return self.source in (DIRECT, REQUEST)

    def describe(self) -> str:
        if self.source == RESOLUTION:
            return f"{self.resolver}'s resolution of the whole request (dry run)"
        if self.source == DIRECT:
            return f"fallback: the direct requirements' metadata only ({self.note})"
        if self.source == REQUEST:
            return f"fallback: the request and constraints only ({self.note})"
        if self.source == INSTALLED:
            return "the installed packages' metadata (every ordinary requirement is already satisfied)"
        return "the request (no other packages)"

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "resolver": self.resolver,
            "note": self.note,
            "pins": [{"requirement": str(p.requirement), "by": p.by} for p in self.pins],
            "pulled": list(self.pulled),
            "dependencies": [list(d) for d in self.dependencies],
        }


@dataclass(frozen=True)
class Question:
    """What the one resolution is asked, whichever installer answers it: the ordinary
    requirements for ``target``; the family and build package names; ``published``: name ->
    versions the candidate backend indexes publish (the stubs), or a function returning that;
    the requirements files' options; the request's constraint lines; pre-releases."""

    requirements: tuple
    target: object
    family: tuple
    build: tuple
    published: object = None
    options: tuple = ()
    constraints: tuple = ()
    pre: bool = False


def _marker_ok(req: Requirement, markers: Mapping[str, str], extras: Iterable[str]) -> bool:
    from backendpick.model.plan import marker_ok

    return any(marker_ok(req, markers, e) for e in (*extras, ""))


def parse_report(report: dict, *, family: Iterable[str], build: Iterable[str], markers: Mapping[str, str],
                 source: str = RESOLUTION, note: str = "") -> Resolution:
    """Pins and pulled packages from pip's installation report (``pip install --report``, v1).

    Only ordinary packages count: the backend packages in the report are our stubs or whatever the
    user's index would have given, neither of which is installed."""
    family, build = {normalize(n) for n in family}, {normalize(n) for n in build}
    deps, pins, pulled = [], [], []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, version = meta.get("name", ""), meta.get("version", "")
        key = normalize(name)
        if not name:
            continue
        if key in family:
            # Our stub (or, for a report not made by ``resolve``, whatever pip found): in the
            # report because an ordinary package needs it, so it joins the backend phase.
            pulled.append(key)
            continue
        if key in build:
            pulled.append(key)
            continue
        deps.append((name, version))
        extras = item.get("requested_extras") or ()
        for raw in meta.get("requires_dist") or ():
            try:
                req = Requirement(raw)
            except InvalidRequirement:
                continue  # pip reports a broken line itself
            dep = normalize(req.name)
            if dep not in family and dep not in build:
                continue
            if not _marker_ok(req, markers, extras):
                continue
            if dep in build and source == DIRECT:
                pulled.append(dep)
            if dep in family:
                pulled.append(dep)
                if req.specifier or req.url:
                    pins.append(Pin(req, f"{name} {version}"))
    return Resolution(tuple(deps), tuple(pins), tuple(dict.fromkeys(pulled)), source, note)


def from_installed(requirements: Sequence[Requirement], installed: Mapping[str, object], markers: Mapping[str, str],
                   *, family: Iterable[str], build: Iterable[str]) -> Resolution | None:
    """The pins of an environment that already satisfies ``requirements``, from installed metadata
    (no pip, no index: a re-run of a finished install asks nothing). None when something is
    missing or at another version: then only a resolution can tell."""
    from backendpick.model.plan import satisfied

    if satisfied(requirements, installed, markers) is not None:
        return None
    family, build = {normalize(n) for n in family}, {normalize(n) for n in build}
    items, seen = [], set()
    stack = [(r, tuple(sorted(r.extras))) for r in requirements]
    while stack:
        req, extras = stack.pop()
        key = normalize(req.name)
        dist = installed.get(key)
        if dist is None or (key, extras) in seen or key in family or key in build:
            continue
        seen.add((key, extras))
        items.append({"metadata": {"name": dist.name, "version": dist.version, "requires_dist": list(dist.requires)},
                      "requested_extras": list(extras)})
        for raw in dist.requires:
            try:
                dep = Requirement(raw)
            except InvalidRequirement:
                continue
            if _marker_ok(dep, markers, extras):
                stack.append((dep, tuple(sorted(dep.extras))))
    return parse_report({"install": items}, family=family, build=build, markers=markers, source=INSTALLED)


def resolvable(requirements: Sequence[Requirement]) -> list[Requirement]:
    """The requirements a metadata-only resolution may see: names, and direct URLs of wheels.

    A direct URL or path of an sdist, a project folder or a VCS checkout would be built to read
    its metadata (its setup.py runs, whatever ``--only-binary`` says): the plan never does that.
    Their declared dependencies are read without a build where possible (inputs/requirements.py), and
    install's fence finds the rest."""
    from urllib.parse import urlsplit

    return [r for r in requirements if not r.url or urlsplit(r.url).path.endswith(".whl")]


def stub_wheel(folder: Path, name: str, version: Version) -> None:
    """A metadata-only wheel: enough for pip's resolver, never installed (dry run)."""
    import zipfile  # only when a resolution runs, not on every start

    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    info = f"{dist}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: backendpick\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")


def offered_as_stubs(folder: Path, published, constraints: Sequence[str]) -> tuple[Path, Path]:
    """The stub wheels of ``published`` (name -> versions, or a function returning that) in
    ``folder/stubs``, and ``folder/constraints.txt``: the request's constraint lines plus each
    stubbed name's bounds. The same two files for pip's resolution and uv's (uv_resolve.py)."""
    if callable(published):
        published = published()
    # Local tags kept: a stub 2.7.1+cu126 outranks an untagged 2.7.1 on the user's index (a
    # higher version), so the resolver takes the stub and never fetches the real wheel or its metadata.
    published = {normalize(n): sorted({Version(str(v)) for v in vs}) for n, vs in (published or {}).items()}
    stubs = folder / "stubs"
    stubs.mkdir()
    lines = list(constraints)
    for name, versions in published.items():
        for v in versions:
            # An untagged build (PyPI's CUDA torch, 2.14.1) gets a local tag of its own: at the
            # same version the resolver would prefer the user's index's wheel for its platform
            # tag over the stub's py3-none-any, and resolve (and download) the real torch and its
            # nvidia-* dependencies. A pin without a local label still matches it (PEP 440).
            stub_wheel(stubs, name, v if v.local else Version(f"{v}+{STUB_TAG}"))
        if versions:
            # The user's indexes may offer torch 99 (a dependency-confusion upload) or PyPI's
            # own builds: the resolution stays within what the backend indexes publish.
            lines.append(f"{name}>={versions[0].public},<={versions[-1].public}")
    cons = folder / "constraints.txt"
    cons.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return stubs, cons


def _failure(res, report: Path) -> str:
    """pip's reason in one line: its ERROR line, else the last line."""
    if res.returncode is None:
        return res.error or "pip did not finish"
    lines = [ln.strip() for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return redact((errors[0] if errors else lines[-1] if lines else f"pip exit {res.returncode}")[:300])


_NO_MATCH = re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)")


def stopped_at(output: str, family: Iterable[str], build: Iterable[str]) -> tuple[tuple[str, ...], str]:
    """What a failed resolution still tells: the backend or build packages pip found no wheel for
    (``No matching distribution found for flash-attn``: an sdist-only build package, which
    ``--only-binary`` stops at; the name alone routes it to its phase), and the note saying the
    dependencies were not fully resolved, with pip's reason (credentials hidden)."""
    names = sorted({normalize(m) for m in _NO_MATCH.findall(output)})
    keep = {normalize(n) for n in family} | {normalize(n) for n in build}
    last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip().startswith("ERROR:")), "")
    reason = f"no wheel of {', '.join(names)}" if names else (last[len("ERROR:"):].strip() or "pip failed")
    note = redact(f"the dependencies of the ordinary requirements were not fully resolved before installing "
                  f"({reason[:200]}); install moves a backend or build package pulled in after that to its "
                  "phase when pip asks for it")
    return tuple(n for n in names if n in keep), note


def conflict_lines(output: str) -> list[str]:
    """The ``X depends on torch==...`` / ``The user requested ...`` lines of pip's conflict report."""
    out = []
    for ln in output.splitlines():
        s = ln.strip()
        if " depends on " in s or s.startswith("The user requested"):
            out.append(s)
    return out


def dry_run_argv(pip_argv: Sequence[str], *, options: Sequence[str], stubs: str, constraints: str, report: str,
                 pre: bool = False) -> list[str]:
    """The resolution's pip command, without the requirements: a dry run (nothing installed),
    every package reported (``--ignore-installed``), nothing built (``--only-binary :all:``, after
    the requirements files' own options so it holds), the stubs and their bounds."""
    return [*pip_argv, "install", "--dry-run", "--ignore-installed", "--report", report, "--quiet",
            "--disable-pip-version-check", "--no-input", *options, "--only-binary", ":all:",
            "--find-links", stubs, "-c", constraints, *(["--pre"] if pre else [])]


def resolve(
    requirements: Sequence[Requirement],
    pip_argv: Sequence[str],
    target,
    *,
    env: Mapping[str, str],
    family: Iterable[str],
    build: Iterable[str],
    published=None,
    options: Sequence[str] = (),
    constraints: Sequence[str] = (),
    pre: bool = False,
    configured: Mapping[str, Sequence[str]] | None = None,
) -> Resolution:
    """One dry-run resolution of ``requirements`` (the ordinary ones) for ``target``.

    ``pip_argv`` runs pip for the target; ``env`` is the user's environment as the rest phase sees
    it (their pip configuration); ``published``: name -> versions the candidate backend indexes
    publish (the stubs), or a function returning that, called only when pip runs;
    ``constraints``: lines from the request's ``-c`` files; ``options``: the requirements files'
    index options (one holding credentials goes to pip's environment, credentials.pip_args, after
    the ``configured`` lists of the user's pip configuration)."""
    family, build = tuple(family), tuple(build)
    requirements = resolvable(requirements)
    if not requirements:
        return Resolution()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="backendpick-resolve-") as tmp:
        folder = Path(tmp)
        stubs, cons = offered_as_stubs(folder, published, constraints)
        report = folder / "report.json"
        from backendpick.indexes.credentials import pip_args

        base, moved = pip_args(dry_run_argv(pip_argv, options=options, stubs=str(stubs), constraints=str(cons),
                                            report=str(report), pre=pre), configured or {})
        reqs = [str(r) for r in requirements]
        run_env = {**env, "PIP_NO_INPUT": "1", **moved}
        res = capture([*base, *reqs], timeout=TIMEOUT, env=run_env)
        markers = target.markers
        if res.ok and report.is_file():
            return parse_report(_load(report), family=family, build=build, markers=markers)
        output = res.stdout + "\n" + res.stderr
        why = _failure(res, report)
        conflicts = conflict_lines(output)
        if conflicts:
            why += " (" + "; ".join(conflicts[:4]) + ")"
        stopped, note = stopped_at(output if res.returncode is not None else f"ERROR: {res.error}", family, build)
        report.unlink(missing_ok=True)
        res = capture([*base, "--no-deps", *reqs], timeout=TIMEOUT, env=run_env)
        if res.ok and report.is_file():
            direct = parse_report(_load(report), family=family, build=build, markers=markers, source=DIRECT,
                                  note=f"the full resolution failed: {why}")
            return replace(direct, pulled=tuple(dict.fromkeys((*direct.pulled, *stopped))), stopped=note)
        return Resolution(pulled=stopped, source=REQUEST, stopped=note,
                          note=f"pip could not read the requirements' metadata: {_failure(res, report)}")


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}

