"""Which torch (and companions) the whole request allows: every pin, merged, checked, chosen.

Pins come from four places, each named in messages so a conflict says who wants what:

* the request itself (``torch>=2.7`` on the command line, in a file or pyproject.toml): "you";
* ordinary packages and their dependencies (``selection/resolve.py``): "pkg 1.0";
* the request's ``-c`` files: "constraint (-c)";
* the user's pip ``constraint`` setting (pip.conf or PIP_CONSTRAINT): "constraint file PATH".
  A constraint is policy, not a package source: it holds for the backend phase too.

Pure functions: the pipeline (planning/pipeline.py) calls them between the index look-up and the backend
choice, so the choice is "the newest backend the hardware allows *and* that offers a torch all
pins accept".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from backendpick.errors import ConfigError, NoBackendError
from backendpick.model import backend as backend_mod
from backendpick.model.names import normalize
from backendpick.selection.resolve import Pin, Resolution

CHANNELS = ("stable", "test", "nightly")


@dataclass(frozen=True)
class TorchChoice:
    """The torch the plan installs, what allowed it, and where the pins came from (for output)."""

    version: str | None  # None: no backend index answered (table offers), pip decides within the pins
    pins: tuple[Pin, ...] = ()
    source: str = ""  # Resolution.describe()
    why: str = ""  # "newest allowed", "installed, still allowed", "--upgrade: newest allowed"
    channel: str = "stable"

    def describe(self) -> str:
        version = self.version or "newest the backend index offers within the pins"
        pinned = "; ".join(p.describe() for p in self.pins) or "nothing pins torch"
        return f"{version} ({self.why}); pinned by: {pinned}"

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "why": self.why,
            "channel": self.channel,
            "pins": [{"requirement": str(p.requirement), "by": p.by, "text": p.describe()} for p in self.pins],
            "pins_from": self.source,
        }


def direct_pins(requirements: Iterable[Requirement], family: Iterable[str]) -> list[Pin]:
    family = {normalize(n) for n in family}
    return [Pin(r, "you") for r in requirements if normalize(r.name) in family and r.specifier]


def constraint_pins(lines: Iterable[Requirement], family: Iterable[str], by: str) -> list[Pin]:
    family = {normalize(n) for n in family}
    return [Pin(r, by) for r in lines if normalize(r.name) in family and (r.specifier or r.url)]


def read_constraint_files(paths: Iterable[str]) -> tuple[list[tuple[str, Requirement]], list[str]]:
    """The requirement lines of the user's pip ``constraint`` files (nested ``-c`` followed), as
    (file, requirement); and warnings for files that cannot be read (pip will fail on them too)."""
    from backendpick.inputs.requirements import read_file

    out, warnings = [], []
    from backendpick.inputs.pip_config import value_path

    for raw in paths:
        path = value_path(raw)  # a path, or a file: URL (pip reads both)
        if str(path) == os.devnull:
            continue
        try:
            wanted = read_file(path, constraints=True)
        except ConfigError as exc:
            warnings.append(f"pip constraint file: {exc.message}")
            continue
        out += [(str(path), r) for r in (*wanted.constraints, *wanted.requirements)]
    return out, warnings


def merged(pins: Iterable[Pin]) -> dict[str, SpecifierSet]:
    """Normalized name -> the intersection of every pin's specifier."""
    out: dict[str, SpecifierSet] = {}
    for p in pins:
        out[p.name] = out.get(p.name, SpecifierSet()) & p.requirement.specifier
    return out


_OPERAND = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")


def _probe_versions(pins: Sequence[Pin], offered: Iterable[Version]) -> list[Version]:
    """Versions to test pins against: what is offered, every version a pin names, and its
    neighbours (``>2.5`` needs something above 2.5 to be satisfiable)."""
    probes = set(offered)
    for p in pins:
        for spec in p.requirement.specifier:
            text = spec.version.replace(".*", "")
            if not _OPERAND.match(text):
                continue
            try:
                v = Version(text)
            except InvalidVersion:
                continue
            probes.add(v)
            rel = list(v.release) + [0] * (3 - len(v.release))
            for i in range(len(rel)):
                up = rel[: i + 1]
                up[-1] += 1
                probes.add(Version(".".join(map(str, up + [0] * (len(rel) - i - 1)))))
                if rel[i] > 0:
                    down = rel[: i + 1]
                    down[-1] -= 1
                    probes.add(Version(".".join(map(str, down + [99] * (len(rel) - i - 1)))))
    return sorted(probes)


def _accepts(pin: Pin, v: Version) -> bool:
    return pin.requirement.specifier.contains(v, prereleases=True)


def check(pins: Sequence[Pin], *, name: str = "torch") -> None:
    """Pins on ``name`` that cannot all hold raise before anything changes (ConfigError, exit 2),
    naming two that no version satisfies together, package pins first."""
    # Packages first, then the user's own pins: "pkg 1.0 requires torch==2.5.1; you asked for torch>=2.7".
    mine = sorted((p for p in pins if p.name == name), key=lambda p: p.by == "you" or p.by.startswith("constraint"))
    if not mine:
        return
    probes = _probe_versions(mine, ())
    for i, a in enumerate(mine):
        for b in mine[i + 1:]:
            if not any(_accepts(a, v) and _accepts(b, v) for v in probes):
                raise ConfigError(
                    f"the {name} pins cannot all hold: {a.describe()}; {b.describe()}",
                    hint=f"change one of them; every pin on {name}: " + "; ".join(p.describe() for p in mine),
                )
    if not any(all(_accepts(p, v) for p in mine) for v in probes):
        raise ConfigError(
            f"the {name} pins cannot all hold together: " + "; ".join(p.describe() for p in mine),
            hint="change one of them",
        )


def allowed(versions: Sequence[Version], pins: Sequence[Pin], name: str = "torch") -> list[Version]:
    mine = [p for p in pins if p.name == name]
    return [v for v in versions if all(_accepts(p, v) for p in mine)]


def choose_version(
    offered: Sequence[Version],
    pins: Sequence[Pin],
    *,
    installed: str | None,
    upgrade: bool,
    torch_releases: Sequence[tuple] | None = None,
) -> tuple[Version | None, str]:
    """The torch the backend phase will install on the chosen backend, and why.

    Without --upgrade an installed torch that every pin still accepts stays (pip's own rule: a
    satisfied requirement is not reinstalled); otherwise the newest allowed one."""
    versions = allowed(offered, pins)
    if torch_releases:
        keep = {tuple(r[:2]) for r in torch_releases}
        versions = [v for v in versions if v.release[:2] in keep]
    if not versions:
        return None, "none on offer"
    if installed and not upgrade:
        try:
            have = Version(installed)
        except InvalidVersion:
            have = None
        if have is not None and have in versions:
            return have, "installed, and every pin still accepts it"
    return versions[-1], ("--upgrade: the newest the machine and the request allow" if upgrade
                          else "the newest the backend offers that every pin accepts")


def with_pins(req: Requirement, spec: SpecifierSet) -> Requirement:
    """``req`` with ``spec`` added (extras and marker kept)."""
    combined = req.specifier & spec
    text = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "") + str(combined)
    if req.marker is not None:
        text += f"; {req.marker}"
    return Requirement(text)


def apply(
    requirements: Sequence[Requirement],
    pins: Sequence[Pin],
    pulled: Iterable[str],
    *,
    family: Iterable[str],
    torch_exact: Version | None,
    offered: Sequence[Version] = (),
) -> tuple[Requirement, ...]:
    """The request with the packages' pins on backend packages carried into its requirements.

    Constraints are not copied in (the backend phase gets them as a ``-c`` file), nor a torch pin
    that excludes nothing on ``offered`` (``accelerate`` requires ``torch>=2.0``): the backend
    phase's command keeps the user's own words unless a package really narrows them. Backend
    packages that ordinary packages need (``pulled``) join the request, so the backend phase
    installs them from the backend index at the pinned version instead of the rest phase failing on
    the fence. ``torch_exact`` (--upgrade) pins torch itself to the chosen version."""
    family = {normalize(n) for n in family}
    from_packages = [p for p in pins if p.by != "you" and not p.by.startswith("constraint")]
    outside = merged(from_packages)
    if "torch" in outside and offered:
        others = [p for p in pins if p not in from_packages]
        if allowed(offered, others) == allowed(offered, pins):
            del outside["torch"]
    if torch_exact is not None:
        outside["torch"] = outside.get("torch", SpecifierSet()) & SpecifierSet(f"=={torch_exact.public}")
    out = []
    present = set()
    for r in requirements:
        key = normalize(r.name)
        if key in family:
            present.add(key)
            if key in outside:
                r = with_pins(r, outside[key])
        out.append(r)
    # Only what ordinary packages need joins the request; a constraint alone installs nothing.
    for name in sorted(set(pulled)):
        if name in family and name not in present:
            out.append(Requirement(name + str(outside.get(name, SpecifierSet()))))
    return tuple(out)


@dataclass(frozen=True)
class Upgrade:
    """``-U`` (everything requested) or ``--upgrade-package NAME`` (only those)."""

    all: bool = False
    packages: tuple[str, ...] = field(default_factory=tuple)  # normalized

    @property
    def any(self) -> bool:
        return self.all or bool(self.packages)

    def torch(self, family: Iterable[str]) -> bool:
        """Whether the torch stack moves: -U, or --upgrade-package of torch (companions follow torch)."""
        return self.all or "torch" in self.packages


def hold_others(requirements: Sequence[Requirement], installed: Mapping[str, object], upgrade: Upgrade,
                family: Iterable[str]) -> tuple[Requirement, ...]:
    """``--upgrade-package NAME``: every other requested package stays at its installed version
    (when its requirement allows it), so pip's ``--upgrade`` moves NAME alone. Backend packages
    follow torch when torch is the one upgraded; they are not held then."""
    family = {normalize(n) for n in family}
    out = []
    for r in requirements:
        key = normalize(r.name)
        dist = installed.get(key)
        held = (dist is not None and key not in upgrade.packages and not r.url
                and not (key in family and "torch" in upgrade.packages))
        if held:
            base = Version(dist.version)
            if r.specifier.contains(base, prereleases=True):
                r = with_pins(r, SpecifierSet(f"=={dist.version}"))
        out.append(r)
    for name in upgrade.packages:
        if not any(normalize(r.name) == name for r in out):
            out.append(Requirement(name))
    return tuple(out)


# -- channels -----------------------------------------------------------------------------------


def channel_template(template: str, channel: str) -> str:
    """PyTorch's layout: ``.../whl/{backend}`` (stable), ``.../whl/test/{backend}`` (release
    candidates), ``.../whl/nightly/{backend}``: the channel folder goes right before
    ``{backend}``, in the default URL and in a mirror that copies the layout."""
    if channel == "stable":
        return template
    return template.replace("{backend}", f"{channel}/{{backend}}", 1)


nightly_date = backend_mod.nightly_date  # model/backend.py: the installed stack reads it too


# -- the plan's finishing touches ----------------------------------------------------------------


def _names(words: Iterable[str]) -> set[str]:
    """Normalized names of a phase's requirements; ``-e PATH``, paths and URLs passed to pip as
    written (issue 9's inputs) and placeholders have none."""
    out = set()
    for w in words:
        try:
            out.add(normalize(Requirement(w).name))
        except InvalidRequirement:
            continue
    return out


def finish(plan, *, upgrade: Upgrade, choice: TorchChoice | None, resolution: Resolution,
           backend_constraints: Sequence[str], backend_constraints_path: Path, pre: bool, pin_environment: bool,
           family: Iterable[str], keep_torch: bool = False):
    """What this module adds to ``planner.make_plan``'s plan, in one place:

    * the backend phase gets the user's constraints (their own file: policy holds there too)
      and, on the nightly channel, pre-releases (for the torch family only: the other phases don't);
    * ``-U`` / ``--upgrade-package``: upgrade for the phases holding what moves, which then
      run even when their requirements are already satisfied.

    ``keep_torch``: the installed torch no index serves stays (selection/stays.py): ``-U`` does not move
    the backend phase, which has no index to move to.
    """
    from dataclasses import replace

    from backendpick.model.plan import BACKEND, BEFORE, REST

    family = {normalize(n) for n in family}
    phases = []
    lines = tuple(dict.fromkeys(backend_constraints))
    for ph in plan.phases:
        names = _names(ph.requirements)
        if ph.name == BACKEND:
            if lines:
                ph = replace(ph, constraints=lines, constraints_file=str(backend_constraints_path),
                             constraints_written=BEFORE)
            if not keep_torch and (upgrade.torch(family) or names & set(upgrade.packages)):
                ph = replace(ph, upgrade=True, skip=None)
            ph = replace(ph, pre=pre)
        elif ph.name == REST and (upgrade.all or names & set(upgrade.packages)):
            ph = replace(ph, upgrade=True, skip=None)
        phases.append(ph)
    return replace(plan, phases=tuple(phases), torch=choice, resolution=resolution,
                   backend_constraints=lines if any(p.name == BACKEND for p in phases) else (),
                   backend_constraints_path=backend_constraints_path, pin_environment=pin_environment)


def torch_spec(reqs) -> SpecifierSet:
    """What the requirements ask of torch, every torch requirement's specifier together."""
    spec = SpecifierSet()
    for r in reqs:
        if normalize(r.name) == "torch":
            spec &= r.specifier
    return spec


def pins_text(pins) -> str:
    return ("; pinned by: " + "; ".join(p.describe() for p in pins)) if pins else ""


def error_with_pins(err: NoBackendError, pins) -> NoBackendError:
    """The error, its message saying who pinned the torch that no backend serves."""
    if pins:
        err.message += f" ({pins_text(pins)[2:]})"
        err.args = (err.message,)
    return err
