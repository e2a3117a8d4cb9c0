"""What stays (issue 18): the installed torch, whenever it satisfies the request.

* A torch no index serves (``torch_origin.TorchOrigin.foreign``: NGC's, a source build, conda's, an
  editable install) serves every request it satisfies: no torch page is asked for, nothing is
  removed, builds run against it. It is replaced only when the request cannot be met with it:
  a pin it does not satisfy, an explicit backend that differs, ``--reinstall torch``.
* What pip sees from a base environment (``--system-site-packages``) is never removed: a venv
  that needs another torch gets its own, which hides the base's.
* A backend index's build that satisfies the request and still runs on this machine stays
  when a newer backend would run too (a driver upgrade): ``-U`` or ``--backend`` moves it.
* pip never removes what conda manages unless the user says so (``--replace-conda``).

Pure functions over the origin, the pins and the plan; the pipeline calls them.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from backendpick.errors import ConfigError, NoBackendError
from backendpick.model.backend import CUDA, ROCM, Backend
from backendpick.model.choice import Decision, Explicit
from backendpick.model.names import normalize
from backendpick.target.torch_origin import TorchOrigin

REPLACE_CONDA = "--replace-conda"


def accepts(pin, version: str) -> bool:
    """Whether ``pin`` (a resolve.Pin) accepts the torch ``version``, pre-releases included."""
    if pin.requirement.url:
        return False
    try:
        return pin.requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _meets(req: Requirement, dist) -> bool:
    """Whether the installed ``dist`` is what ``req`` asks for (its own version only)."""
    if req.url:
        return False
    try:
        return req.specifier.contains(Version(dist.version), prereleases=True)
    except InvalidVersion:
        return False


def replace_reason(origin: TorchOrigin | None, explicit: Explicit | None, pins: Iterable,
                   reinstall: Iterable[str] = ()) -> str | None:
    """Why the installed torch no index serves is replaced, in words; None when it stays (or
    there is none)."""
    if origin is None or not origin.foreign:
        return None
    if explicit is not None and explicit.backend != origin.backend:
        return f"{explicit.source} asks for {explicit.backend}"
    if "torch" in {normalize(n) for n in reinstall}:
        return "--reinstall torch asks for it"
    rejecting = [p for p in pins if p.name == "torch" and not accepts(p, origin.version)]
    if rejecting:
        return f"{rejecting[0].describe()}, which it does not satisfy"
    return None


def replacing_line(origin: TorchOrigin, why: str) -> str:
    """What plan and install say before anything changes."""
    if origin.outside:
        return (f"the installed {origin.describe()}; {why}: this environment gets a torch of its own, which "
                "hides the base environment's (that one stays as it is)")
    return f"replacing the installed {origin.describe()}: {why}"


def shadowing_line(plan, origin: TorchOrigin | None, target) -> str:
    """A base environment's index build that the backend phase installs another torch over
    (a venv made with --system-site-packages): pip cannot remove it there, the venv's hides it."""
    from backendpick.model.plan import BACKEND

    if origin is None or not origin.outside:
        return ""
    for phase in plan.phases:
        if phase.name != BACKEND or phase.skip is not None:
            continue
        for text in phase.requirements:
            req = Requirement(text)
            if normalize(req.name) == "torch" and not _meets(req, target.get("torch")):
                return replacing_line(origin, f"the plan installs {req}")
    return ""


def how_to_replace(origin: TorchOrigin, nearest: Backend | None) -> str:
    """The ways to replace a kept torch: another backend, --reinstall, or a pin it does not meet."""
    first = f"--backend {nearest}" if nearest is not None and nearest != origin.backend else "--reinstall torch"
    return f"{first}, or a torch pin it does not meet"


def nearest_index_backend(origin: TorchOrigin, known: Sequence[Backend]) -> Backend | None:
    """The newest index backend of the torch's kind and major not newer than it (cu124 for a
    CUDA 12.5 build): the choice that comes closest when it is replaced."""
    if origin.backend.kind not in (CUDA, ROCM):
        return None
    fits = [b for b in known if b.kind == origin.backend.kind and b.version[0] == origin.backend.version[0]
            and b.version <= origin.backend.version]
    return max(fits) if fits else None


def kept_decision(origin: TorchOrigin, *, upgrade: bool, nearest: Backend | None) -> Decision:
    """The backend decision of a kept torch no index serves: its own build (cu125 for CUDA 12.5),
    decided by what is installed."""
    how = how_to_replace(origin, nearest)
    reason = f"the installed {origin.label} {origin.version} satisfies the request, so it stays (to replace it: {how})"
    warnings = ()
    if upgrade:
        warnings = (f"-U does not replace the installed {origin.label} {origin.version} (no index can put it back); "
                    f"to replace it: {how}",)
    return Decision(origin.backend, "installed", reason, warnings=warnings)


def missing_companions(origin: TorchOrigin, wanted: Sequence[Requirement], installed,
                       nearest: Backend | None) -> None:
    """Family members the request needs next to a kept torch no index serves must be there
    already: no backend index has builds for that torch. Exit 3 naming the choices otherwise."""
    missing = [str(r) for r in wanted if normalize(r.name) != "torch"
               and (installed.get(normalize(r.name)) is None or not _meets(r, installed[normalize(r.name)]))]
    if not missing:
        return
    them = "them" if len(missing) > 1 else "it"
    raise NoBackendError(
        f"no index serves {', '.join(missing)} for the installed {origin.describe()}",
        hint=f"install a build of {them} made for this torch (the image's or your own), then run again; or "
             f"replace torch with an index build that has {them}: {how_to_replace(origin, nearest)}",
    )


def index_build_stays(origin: TorchOrigin | None, decision: Decision, pins, *, runs_here: bool) -> bool:
    """Whether an installed backend index build stays although auto selection prefers another
    backend now (a driver upgrade): it satisfies every pin and still runs here. PyPI's untagged
    build counts as the backend its torch/version.py names (the planner keeps it likewise)."""
    from backendpick.model.backend import local_tag_backend

    return (origin is not None and not origin.foreign and runs_here and decision.source == "detected"
            and local_tag_backend(origin.version) in (origin.backend, None) and origin.backend != decision.backend
            and origin.backend.kind == decision.backend.kind
            and all(accepts(p, origin.version) for p in pins if p.name == "torch"))


def stays_decision(origin: TorchOrigin, newer: Decision) -> Decision:
    return Decision(
        origin.backend, "installed",
        f"torch {origin.version} is installed for {origin.backend}, satisfies the request and runs here, so it stays; "
        f"a newer backend would run here: {newer.backend} ({newer.reason}); to move: -U, or --backend {newer.backend}",
        warnings=newer.warnings,
    )


def left_alone(target, stack: Iterable[str] = ()) -> tuple:
    """Installed names no remove phase may take: ``stack`` (the family around a kept torch no
    index serves) and what pip sees from a base environment (it cannot remove it from there)."""
    from backendpick.target.torch_origin import outside_environment

    names = {n for n, d in target.installed.items() if outside_environment(d, target)}
    names |= {n for n in target.installed if n in set(stack)}
    return tuple(sorted(names))


def with_held_lines(exc: NoBackendError, origin: TorchOrigin, target, pins) -> NoBackendError:
    """No backend can replace a torch no index serves while a constraint pins it (the NGC image's
    PIP_CONSTRAINT file pins NVIDIA's torch and torchvision): the hint names those lines."""
    held = [p for p in pins if p.by.startswith("constraint") and target.get(p.name) is not None
            and accepts(p, target.get(p.name).version)]
    if any(p.name == "torch" for p in held):
        these = ("these hold", "those lines") if len(held) > 1 else ("it holds", "that line")
        exc.hint = (f"{'; '.join(p.describe() for p in held)}: {these[0]} the installed {origin.label}; to replace "
                    f"it, remove {these[1]} (or point PIP_CONSTRAINT at a file without them); " + (exc.hint or ""))
    return exc


def with_choices(exc: NoBackendError, origin: TorchOrigin, facts) -> NoBackendError:
    """A recipe with nothing for a kept torch no index serves (no PyG page for NVIDIA's build):
    the error says that torch stays, and names the choices."""
    nearest = nearest_index_backend(origin, facts.all_backends())
    exc.message += f" (the installed {origin.describe()}, stays)"
    exc.args = (exc.message,)
    exc.hint = (f"{exc.hint}; or build it from source against this torch yourself; or replace torch with an "
                f"index build the project publishes for: {how_to_replace(origin, nearest)}")
    return exc


def conda_guard(plan, target, managed: Iterable[str], *, allowed: bool) -> list[str]:
    """pip must not remove or replace what conda manages (INSTALLER ``conda``): the stack's
    packages the plan removes, or installs at another version, are refused (exit 2) unless the
    user said ``--replace-conda``; then they are named as a warning."""
    from backendpick.model.plan import BACKEND, BUILD, REMOVE

    managed = {m.lower() for m in managed}
    hit: dict[str, str] = {}
    for phase in plan.phases:
        if phase.skip is not None or phase.name not in (REMOVE, BACKEND, BUILD):
            continue
        for text in phase.requirements:
            try:
                req = Requirement(text)
            except Exception:  # a path or URL: not an installed name
                continue
            dist = target.get(req.name)
            if dist is None or dist.installer.strip().lower() not in managed:
                continue
            if phase.name == REMOVE or not _meets(req, dist):
                hit[dist.name] = f"{dist.name} {dist.version} ({dist.installer.strip()})"
    if not hit:
        return []
    names = ", ".join(hit.values())
    tools = sorted({d.split("(")[-1].rstrip(")") for d in hit.values()})
    if not allowed:
        raise ConfigError(
            f"this install would make pip remove {names}, which {' and '.join(tools)} installed and manages",
            hint=f"change {'them' if len(hit) > 1 else 'it'} with {' or '.join(tools)} (e.g. conda install), or pass "
                 f"{REPLACE_CONDA} to let pip replace {'them' if len(hit) > 1 else 'it'}",
        )
    return [f"pip replaces {names} ({REPLACE_CONDA}); {' and '.join(tools)} will no longer know what is installed"]


__all__ = ["accepts", "conda_guard", "how_to_replace", "index_build_stays", "kept_decision", "left_alone",
           "missing_companions", "nearest_index_backend", "replace_reason", "replacing_line", "shadowing_line",
           "stays_decision", "with_choices", "with_held_lines"]
