"""Choose a backend: a pure function of the hardware, the policy, and what is on offer.

``offers`` maps each backend to the torch releases available for it. ``detect`` builds it from the
packaged table; ``plan`` builds it from the index itself, filtered by the requested torch
specifier and Python, so the choice is about builds that really exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from backendpick.errors import NoBackendError
from backendpick.knowledge.facts import Facts, dotted, show
from backendpick.model.backend import CPU, CUDA, ROCM, XPU, Backend
from backendpick.model.choice import Decision, Explicit
from backendpick.model.hardware import AMD, APPLE, INTEL, NVIDIA, Accelerator, Hardware

if TYPE_CHECKING:  # pragma: no cover
    from backendpick.inputs.config import Settings

ReleasesByBackend = Mapping[Backend, Sequence[tuple]]  # backend -> torch release tuples, e.g. (2, 7, 1)

STRICT, MINOR = "strict", "minor"


def explicit_choice(settings: Settings) -> Explicit | None:
    """The backend the user named (flag, environment or pyproject.toml), with where it came from."""
    if settings.chosen_backend is None:
        return None
    return Explicit(settings.chosen_backend, settings.backend.source)


def table_offers(facts: Facts) -> dict[Backend, list[tuple]]:
    """Releases by backend from the packaged release table: each backend with the releases publishing it."""
    offers: dict[Backend, list[tuple]] = {}
    for release, backends in sorted(facts.releases.items()):
        for b in backends:
            offers.setdefault(b, []).append(release)
    return offers


def choose(
    hardware: Hardware,
    facts: Facts,
    offers: ReleasesByBackend,
    *,
    policy: str = STRICT,
    explicit: Explicit | None = None,
) -> Decision:
    if explicit is not None:
        return _explicit(hardware, facts, offers, explicit, policy)
    nvidia = hardware.by_vendor(NVIDIA)
    if nvidia or hardware.nvidia_driver:
        decision = _nvidia(hardware, facts, offers, nvidia, policy)
        others = [a for a in hardware.by_vendor(AMD)]
        if others:
            decision = _with_warning(decision, "AMD GPUs are also present; they are not used by a CUDA build")
        return decision
    amd = hardware.by_vendor(AMD)
    if amd:
        return _amd(hardware, facts, offers, amd)
    if hardware.container_cuda:
        return _container(hardware, offers)
    intel = hardware.by_vendor(INTEL)
    if intel:
        xpu = Backend(XPU)
        if offers.get(xpu):
            names = ", ".join(a.name for a in intel)
            return Decision(xpu, "detected", f"discrete Intel GPU ({names})")
        return Decision(Backend(CPU), "detected", "discrete Intel GPU, but no xpu build is on offer",
                        unserved=tuple(a.name for a in intel))
    if hardware.by_vendor(APPLE):
        return Decision(Backend(CPU), "detected", "Apple silicon: the default macOS wheels include MPS support")
    ignored = [a for a in hardware.accelerators if a.ignored]
    reason = "no supported GPU found"
    if ignored:
        reason += " (" + "; ".join(f"{a.name}: {a.ignored}" for a in ignored) + ")"
    return Decision(Backend(CPU), "detected", reason)


def _with_warning(d: Decision, text: str) -> Decision:
    return Decision(d.backend, d.source, d.reason, d.torch_releases, d.unserved, d.rejected, d.warnings + (text,))


def _descending(offers: ReleasesByBackend, kind: str) -> list[Backend]:
    return sorted((b for b in offers if b.kind == kind and offers[b]), reverse=True)


def _serving(facts: Facts, backend: Backend, releases: Sequence[tuple], gpus: Sequence[Accelerator]):
    """Releases of ``backend`` that carry code for every GPU (unknown architecture rows count as yes)."""
    caps = [g.cap for g in gpus if g.cap is not None]
    return [r for r in releases if all(facts.serves_cap(r, backend, c) is not False for c in caps)]


def _gpu_list(gpus: Sequence[Accelerator]) -> str:
    counts: dict[str, int] = {}
    for g in gpus:
        label = g.name + (f" (sm {g.compute_capability})" if g.compute_capability else "")
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n}x {label}" if n > 1 else label for label, n in counts.items())


def _driver_runs(hw: Hardware, facts: Facts, b: Backend, policy: str) -> bool:
    """Whether the NVIDIA driver runs CUDA backend ``b`` (under the cuda-compat policy)."""
    return facts.cuda_allowed(
        b.version,
        driver_cuda=dotted(hw.driver_cuda) if hw.driver_cuda else None,
        driver=dotted(hw.nvidia_driver) if hw.nvidia_driver else None,
        policy=policy,
    )


def _nvidia(hw: Hardware, facts: Facts, offers: ReleasesByBackend, gpus: list[Accelerator], policy: str) -> Decision:
    driver_cuda = dotted(hw.driver_cuda) if hw.driver_cuda else None
    where = gpus and _gpu_list(gpus) or "NVIDIA GPU (model unknown)"
    ceiling = (
        f"driver {hw.nvidia_driver} supports CUDA {hw.driver_cuda} ({hw.driver_cuda_source})"
        if hw.driver_cuda
        else f"driver {hw.nvidia_driver or 'unknown'}"
    )
    rejected: list[str] = []
    for b in _descending(offers, CUDA):
        if not _driver_runs(hw, facts, b, policy):
            rejected.append(f"{b}: needs CUDA {b.version_text}, {ceiling}")
            continue
        releases = list(offers[b])
        serving = _serving(facts, b, releases, gpus)
        if not serving:
            missing = [g for g in gpus if g.cap and not any(facts.serves_cap(r, b, g.cap) for r in releases)]
            rejected.append(f"{b}: no torch build on offer carries code for {_gpu_list(missing)}")
            continue
        compat = ""
        if driver_cuda is None or b.version[:2] > driver_cuda[:2]:
            compat = " under CUDA minor version compatibility (cuda-compat = \"minor\")"
        reason = f"{where}; {ceiling}; {b} is the newest build that runs here{compat}"
        limited = tuple(serving) if len(serving) < len(releases) else None
        if limited:
            reason += f" (torch {show(limited[0])} to {show(limited[-1])} only)"
        return Decision(b, "detected", reason, limited, rejected=tuple(rejected))
    return Decision(
        Backend(CPU),
        "detected",
        f"{where}, but no CUDA build on offer runs here; {ceiling}",
        unserved=tuple(g.name for g in gpus) or (where,),
        rejected=tuple(rejected),
    )


def _amd(hw: Hardware, facts: Facts, offers: ReleasesByBackend, gpus: list[Accelerator]) -> Decision:
    where = _gpu_list([Accelerator(AMD, f"{g.name} ({g.arch})") for g in gpus])
    rejected = []
    # AMD's kernel driver supports only nearby ROCm releases: like a CUDA build newer than the
    # NVIDIA driver, a ROCm build newer than the installed runtime is not a candidate.
    runtime = dotted(hw.rocm_version) if hw.rocm_version else None
    for b in _descending(offers, ROCM):
        if runtime is not None and b.version[:2] > runtime[:2]:
            rejected.append(f"{b}: newer than the installed ROCm runtime {hw.rocm_version}")
            continue
        unsupported = [g for g in gpus if not facts.rocm_supports(g.arch or "", b)]
        if unsupported:
            rejected.append(f"{b}: does not support {', '.join(sorted({g.arch or '?' for g in unsupported}))}")
            continue
        runtime = f"; ROCm runtime {hw.rocm_version} installed" if hw.rocm_version else ""
        return Decision(b, "detected", f"{where}{runtime}; {b} is the newest ROCm build supporting them",
                        rejected=tuple(rejected))
    return Decision(Backend(CPU), "detected", f"{where}, but no ROCm build on offer supports them",
                    unserved=tuple(g.name for g in gpus), rejected=tuple(rejected))


def _container(hw: Hardware, offers: ReleasesByBackend) -> Decision:
    image = dotted(hw.container_cuda or "")
    label = f"no NVIDIA driver visible (docker build?), and the image is CUDA {hw.container_cuda} (CUDA_VERSION)"
    fitting = [b for b in _descending(offers, CUDA) if b.version[0] == image[0] and b.version <= image[:2]]
    if fitting:
        b = fitting[0]
        exact = "" if b.version == image[:2] else f"; no cu{image[0]}{image[1]} build, so the newest older one"
        return Decision(b, "container", f"{label}: {b}{exact}")
    return Decision(Backend(CPU), "container", f"{label}, but no CUDA {image[0]}.x build at or below it is on offer",
                    unserved=(f"CUDA {hw.container_cuda} image",))


def _explicit(hw: Hardware, facts: Facts, offers: ReleasesByBackend, ex: Explicit, policy: str) -> Decision:
    b = ex.backend
    warnings: list[str] = []
    if b not in offers:
        warnings.append(f"{b} is not among the builds on offer ({', '.join(map(str, _known(offers)))})")
    if b.kind == CUDA:
        gpus = hw.by_vendor(NVIDIA)
        driver = dotted(hw.nvidia_driver) if hw.nvidia_driver else None
        if driver is not None and not _driver_runs(hw, facts, b, policy):
            warnings.append(
                f"this machine's driver {hw.nvidia_driver} supports CUDA {hw.driver_cuda or '?'}; {b} will not "
                "run here (fine when building for another host)"
            )
        releases = list(offers.get(b, ()))
        if releases and gpus:
            serving = _serving(facts, b, releases, gpus)
            if not serving:
                warnings.append(f"no {b} torch build carries code for {_gpu_list(gpus)}")
    reason = f"chosen by {ex.source}"
    return Decision(b, ex.source, reason, warnings=tuple(warnings))


def _known(offers: ReleasesByBackend) -> list[Backend]:
    from backendpick.knowledge.facts import sort_key

    return sorted(offers, key=sort_key)


def keep_installed_gpu_backend(decision: Decision, installed: Backend | None, torch_version: str | None) -> Decision:
    """Auto never downgrades: no GPU seen now, but the environment holds a GPU torch
    (``installed``: the installed torch's backend, ``torch_version`` its version).

    A driver hiccup or a container started without --gpus must not turn a CUDA environment
    into a CPU one; only an explicit --backend cpu does that.
    """
    if decision.source != "detected" or decision.backend.kind != CPU or torch_version is None:
        return decision
    if installed is None or not installed.is_gpu:
        return decision
    return Decision(
        installed,
        "installed",
        f"no usable GPU detected now ({decision.reason}), but the environment already has torch "
        f"{torch_version}; keeping {installed} (pass --backend cpu to switch)",
        warnings=decision.warnings,
    )


def _fits(facts: Facts, hw: Hardware, b: Backend, release: tuple, gpus: Sequence[Accelerator], policy: str) -> bool:
    """Whether a GPU backend's build of ``release`` runs on every GPU here: the rules of
    ``_nvidia`` and ``_amd`` (code for each architecture, the driver's CUDA, ROCm support)."""
    return b.is_gpu and all(
        a.cap is None or facts.serves_cap(release, b, a.cap) for a in gpus if a.vendor == NVIDIA
    ) and (b.kind != CUDA or _driver_runs(hw, facts, b, policy)) and (
        b.kind != ROCM or all(facts.rocm_supports(a.arch or "", b) for a in gpus if a.vendor == AMD))


def runs_here(facts: Facts, hw: Hardware, backend: Backend, release: tuple, policy: str) -> bool:
    """Whether ``backend``'s build of torch ``release`` runs on every GPU here (auto's rules)."""
    gpus = [a for a in hw.accelerators if a.ignored is None]
    return bool(gpus) and _fits(facts, hw, backend, release, gpus, policy)


def no_backend(facts: Facts, hw: Hardware, decision: Decision, spec, policy: str) -> NoBackendError:
    """The exit-3 error when auto selection leaves GPUs unserved for the torch asked
    (``spec``): why each backend lost, and the torch releases that would run here."""
    gpus = [a for a in hw.accelerators if a.ignored is None]
    working = []
    for release, backends in sorted(facts.releases.items()):
        fit = [b for b in backends if _fits(facts, hw, b, release, gpus, policy)]
        if fit:
            working.append(f"{show(release)} ({', '.join(map(str, fit))})")
    hint = (
        f"torch releases that would work here: {'; '.join(working)}" if working
        else "no known torch release serves this hardware; pass --backend cpu to install CPU builds"
    )
    hint += "; or pass --backend to choose yourself"
    return NoBackendError(
        f"no backend serves {', '.join(decision.unserved)} with torch '{spec or 'any'}': " + "; ".join(decision.rejected),
        hint=hint,
    )


def lock_refusal(hw: Hardware, facts: Facts, b: Backend, torch: str | None, policy: str) -> str | None:
    """Why a lock for backend ``b`` (and its ``torch``) cannot run on the GPUs detected here
    (``install --lock``, exit 3), or None. No GPU seen (a ``docker build``) is not a refusal:
    the lock is for the host that runs the image."""
    if b.kind == CUDA:
        if hw.nvidia_driver and not _driver_runs(hw, facts, b, policy):
            minimum = next((show(d) for cuda, d in facts.cuda_drivers if cuda[:2] == b.version[:2]), None)
            needs = f"driver {minimum} or newer" if minimum else f"a driver for CUDA {b.version_text}"
            return (f"the lock is for {b} (CUDA {b.version_text}, {needs}); this machine's driver {hw.nvidia_driver} "
                    f"supports CUDA {hw.driver_cuda or '?'}")
        gpus = hw.by_vendor(NVIDIA)
        if torch and gpus:
            from packaging.version import InvalidVersion, Version

            try:
                release = Version(torch).release[:2]
            except InvalidVersion:
                return None
            missing = [g for g in gpus if g.cap and facts.serves_cap(release, b, g.cap) is False]
            if missing:
                return f"the lock's torch {torch} carries no code for {_gpu_list(missing)}"
    elif b.kind == ROCM:
        unsupported = [g for g in hw.by_vendor(AMD) if g.arch and facts.rocm_supports(g.arch, b) is False]
        if unsupported:
            return f"the lock is for {b}, which does not support {_gpu_list(unsupported)} ({unsupported[0].arch})"
    return None
