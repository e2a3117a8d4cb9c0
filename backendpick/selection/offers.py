"""What the backend indexes really offer: torch versions per backend for this target.

Only candidate backends of the vendors present are asked (in parallel); when no index answers,
the packaged release table stands in and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from backendpick.errors import NoBackendError
from backendpick.indexes.client import IndexClient, IndexUnavailable, PageNotFound, fetch_many, matching_versions
from backendpick.knowledge.facts import Facts, sort_key
from backendpick.model.backend import CPU, CUDA, ROCM, XPU, Backend
from backendpick.model.choice import Explicit
from backendpick.model.environment import Target
from backendpick.model.hardware import AMD, INTEL, NVIDIA, Hardware
from backendpick.model.names import normalize
from backendpick.redaction import redact
from backendpick.selection.backend_choice import table_offers
from backendpick.selection.torch_version import allowed


@dataclass(frozen=True)
class Offers:
    versions: dict  # Backend -> sorted list[Version] of torch matching the spec on this target
    source: str  # "index" or "table"
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # What the index answered for backends it has no torch page for: "URL (HTTP 404)", credentials hidden.
    not_found: tuple[str, ...] = field(default_factory=tuple)
    asked: int = 0  # how many backend indexes were asked

    def unanswered(self) -> str | None:
        """When no index asked has a torch page at all (a template that points nowhere), what
        they answered, in one line; None otherwise."""
        if self.source != "index" or self.versions or not self.asked or len(self.not_found) < self.asked:
            return None
        more = f" (and the same for the other {self.asked - 1} backend indexes asked)" if self.asked > 1 else ""
        return f"{self.not_found[0]}{more}"

    @property
    def releases(self) -> dict:
        """Backend -> release tuples, the form ``backend_choice.choose`` takes."""
        return {b: [v.release for v in vs] for b, vs in self.versions.items()}


def candidate_kinds(hardware: Hardware) -> set[str]:
    kinds = {CPU}
    if hardware.by_vendor(NVIDIA) or hardware.nvidia_driver or hardware.container_cuda:
        kinds.add(CUDA)
    if hardware.by_vendor(AMD):
        kinds.add(ROCM)
    if hardware.by_vendor(INTEL):
        kinds.add(XPU)
    return kinds


def index_url_for(template: str, backend: Backend) -> str:
    return template.replace("{backend}", backend.name)


def gather(
    facts: Facts,
    client: IndexClient,
    template: str,
    candidates: list[Backend],
    torch_spec: SpecifierSet,
    target: Target,
) -> Offers:
    urls = {b: index_url_for(template, b) for b in candidates}
    results = fetch_many(client, {b: (u, "torch") for b, u in urls.items()})
    versions: dict[Backend, list[Version]] = {}
    failures = []
    not_found = []
    for b, res in results.items():
        if isinstance(res, PageNotFound):
            not_found.append(str(res))
            continue  # this index (or mirror) has no such backend
        if isinstance(res, IndexUnavailable):
            failures.append(str(res))
            continue
        found = matching_versions(res, "torch", torch_spec, target.python_version_text, target.tags)
        if found:
            versions[b] = found
    if failures and len(failures) == len(candidates):
        return _from_table(facts, candidates, torch_spec, failures)
    warnings = tuple(f"could not read {f}" for f in failures)
    return Offers(versions, "index", warnings, tuple(not_found), len(candidates))


def _from_table(facts: Facts, candidates: list[Backend], spec: SpecifierSet, failures: list[str]) -> Offers:
    """Offline fallback: no backend index answered."""
    return from_table(facts, candidates, spec, f"no backend index answered ({failures[0]}); chose from "
                                                 "backendpick's packaged release table")


def from_table(facts: Facts, candidates: list[Backend], spec: SpecifierSet, warning: str | None = None) -> Offers:
    """The packaged release table as offers: a release X.Y counts when X.Y.0 through X.Y.99
    could satisfy the spec."""
    table = table_offers(facts)
    versions = {}
    for b in candidates:
        rel = [r for r in table.get(b, []) if any(spec.contains(Version(f"{r[0]}.{r[1]}.{p}")) for p in range(0, 10))]
        if rel:
            versions[b] = [Version(f"{r[0]}.{r[1]}") for r in rel]
    return Offers(versions, "table", (warning,) if warning else ())


def preference(facts: Facts, hardware: Hardware, candidates: list[Backend], policy: str) -> list[Backend]:
    """The candidates this hardware can run, in the order ``backend_choice.choose`` prefers them: GPU
    builds newest first, then CPU, then anything else asked for (the installed backend kept
    by auto). A CUDA build the driver cannot run under the policy is never asked for."""
    from backendpick.knowledge.facts import dotted

    driver = dotted(hardware.nvidia_driver) if hardware.nvidia_driver else None
    driver_cuda = dotted(hardware.driver_cuda) if hardware.driver_cuda else None
    image = dotted(hardware.container_cuda) if hardware.container_cuda else None
    runtime = dotted(hardware.rocm_version) if hardware.rocm_version else None
    nvidia = bool(hardware.by_vendor(NVIDIA) or hardware.nvidia_driver)

    def runs(b: Backend) -> bool:
        if b.kind == CUDA:
            if nvidia:
                return facts.cuda_allowed(b.version, driver_cuda=driver_cuda, driver=driver, policy=policy)
            if image is not None:  # docker build: the image's CUDA major, at or below its version
                return b.version[0] == image[0] and b.version[:2] <= image[:2]
            return True
        if b.kind == ROCM:
            return runtime is None or b.version[:2] <= runtime[:2]
        return True

    rank = {CUDA: 0, ROCM: 1, XPU: 2}  # choose's vendor order; newest first within a kind
    gpu = sorted((b for b in candidates if b.is_gpu and runs(b)),
                 key=lambda b: (rank.get(b.kind, 3), tuple(-x for x in b.version)))
    cpu = [b for b in candidates if b.kind == CPU]
    return gpu + cpu + [b for b in candidates if b not in gpu and b not in cpu and not b.is_gpu]


def gather_preferred(
    facts: Facts,
    client: IndexClient,
    template: str,
    hardware: Hardware,
    candidates: list[Backend],
    torch_spec: SpecifierSet,
    target: Target,
    *,
    policy: str,
    keep: Backend | None = None,
    accept=None,
) -> Offers:
    """Auto selection: ask the backends the hardware allows one at a time, best first, and stop
    at the first that ``backend_choice.choose`` takes (a GPU build with a matching torch for every GPU).

    ``keep``: the installed GPU backend, asked for too when no GPU build is chosen (auto never
    downgrades an installed GPU torch to CPU). ``accept(backend)``: a further condition on a
    backend with a matching torch (its index offers the companions a package pins)."""
    from backendpick.selection.backend_choice import choose

    order = preference(facts, hardware, candidates, policy)
    if keep is not None and keep not in order:
        order.append(keep)
    versions: dict[Backend, list[Version]] = {}
    failures: list[str] = []
    not_found: list[str] = []
    asked = 0
    for b in order:
        asked += 1
        try:
            res = client.project(index_url_for(template, b), "torch")
        except PageNotFound as exc:
            not_found.append(str(exc))
            continue  # this index (or mirror) has no such backend
        except IndexUnavailable as exc:
            failures.append(str(exc))
            continue
        found = matching_versions(res, "torch", torch_spec, target.python_version_text, target.tags)
        if not found or (accept is not None and not accept(b)):
            continue
        versions[b] = found
        decision = choose(hardware, facts, {k: [v.release for v in vs] for k, vs in versions.items()}, policy=policy)
        if decision.backend.is_gpu and decision.backend in versions and not decision.unserved:
            break
    if failures and len(failures) == asked:
        return _from_table(facts, order, torch_spec, failures)
    return Offers(versions, "index", tuple(f"could not read {f}" for f in failures), tuple(not_found), asked)


# Companions published next to torch, with versions of their own: a package may pin one of them
# (vllm pins torchvision), so the resolution offers them as stubs and the choice checks them.
COMPANIONS = ("torchvision", "torchaudio", "xformers")


def published(client, template, backends, family, target, spec) -> dict:
    """name -> every version the ``backends``' indexes publish of torch and the companions in
    ``family`` (local tags kept): the resolution's stubs. Pages read at once, in parallel; the
    backend choice reads them again from the plan's page cache."""
    names = ["torch", *(n for n in COMPANIONS if n in family)]
    pages = {(n, b): (index_url_for(template, b), n) for n in names for b in backends}
    out: dict = {}
    for (name, _b), files in fetch_many(client, pages).items() if pages else ():
        if isinstance(files, (PageNotFound, IndexUnavailable)):
            continue
        out.setdefault(name, set()).update(matching_versions(files, name, spec, target.python_version_text, target.tags))
    return {n: sorted(vs) for n, vs in out.items()}


def companions_check(client, template, pins, family, target, spec):
    """``backend -> bool``: whether the backend's index offers every companion pinned (a
    package pins torchvision==0.20.1) at a version the pins accept. Reads a page only for a
    companion something pins, only for a backend the choice gets to (the page cache keeps it)."""
    pinned = sorted({p.name for p in pins} & (set(COMPANIONS) & set(family)))

    def serves(backend: Backend) -> bool:
        for name in pinned:
            try:
                files = client.project(index_url_for(template, backend), name)
            except PageNotFound:
                return False
            except IndexUnavailable:
                continue  # pip will say; the torch decided
            if not allowed(matching_versions(files, name, spec, target.python_version_text, target.tags), pins, name):
                return False
        return True

    return serves


def companion_pins(client, template, backends, requirements, family, target) -> list:
    """Issue 18 item 9: a companion pinned to one release (``xformers==0.0.31``) requires one
    torch (``torch==2.7.1``), and that pin takes part in the backend choice like a package's.
    Read from the companion's core metadata (PEP 658, no wheel downloaded) on the first index
    of ``backends`` (in the order the choice asks them) that publishes the release; nothing
    when none serves its metadata (pip then judges in the backend phase)."""
    from packaging.requirements import InvalidRequirement, Requirement

    from backendpick.indexes.client import installable
    from backendpick.model.plan import marker_ok
    from backendpick.selection.resolve import Pin

    out = []
    for req in requirements:
        name = normalize(req.name)
        exact = [s for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
        if name not in set(COMPANIONS) & set(family) or not exact:
            continue
        for backend in backends:
            try:
                files = client.project(index_url_for(template, backend), name)
            except (PageNotFound, IndexUnavailable):
                continue
            found = [c for c in installable(files, name, tags=target.tags, python_version=target.python_version_text)
                     if req.specifier.contains(c.version, prereleases=True)]
            if not found:
                continue
            best = min(found, key=lambda c: c.rank)
            text = client.metadata(best.file)
            # Imported here, not above: a request without a pinned companion (most) never
            # parses metadata, and email.parser costs ~7 ms of every start (issue 22 item 2).
            from email.parser import Parser

            for raw in (Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or []) if text else []:
                try:
                    dep = Requirement(raw)
                except InvalidRequirement:
                    continue
                if normalize(dep.name) == "torch" and dep.specifier and marker_ok(dep, target.markers):
                    out.append(Pin(Requirement(f"torch{dep.specifier}"), f"{req.name} {best.version}"))
            break
    return out


def torch_on(client, template, backend: Backend, target, spec) -> list:
    """Every torch the backend's index publishes for this target (from the plan's page cache)."""
    try:
        files = client.project(index_url_for(template, backend), "torch")
    except (PageNotFound, IndexUnavailable):
        return []
    return matching_versions(files, "torch", spec, target.python_version_text, target.tags)


def check_family_published(client, url: str, backend: Backend, reqs, family: set[str], target) -> None:
    """Every requested family member must have a build on the backend index.

    Falling back to another index would mix backends, so a missing one is an error naming it.
    """
    wanted = {normalize(r.name): r for r in reqs if normalize(r.name) in family and normalize(r.name) != "torch"}
    if not wanted:
        return
    missing = []
    results = fetch_many(client, {n: (url, n) for n in wanted})
    for name, files in results.items():
        if isinstance(files, IndexUnavailable):
            continue  # pip will report it with its own retries
        if isinstance(files, PageNotFound) or not matching_versions(
            files, name, wanted[name].specifier, target.python_version_text, target.tags
        ):
            missing.append(str(wanted[name]))
    if missing:
        raise NoBackendError(f"not published for {backend} at {redact(url)}: {', '.join(missing)}", hint=_UNPUBLISHED)


_UNPUBLISHED = ("choose another backend, or limit those requirements with a marker or an extra (taking them from "
                "another index would mix backends)")


def check_family_in_table(facts: Facts, url: str, backend: Backend, reqs, family: set[str]) -> None:
    """``check_family_published`` where no backend index answered and the packaged table stands
    in: a requested family member whose project publishes no build for the backend's kind
    (facts.toml ``[packages.published-for]``: xformers has no CPU build) is refused as the
    index's answer would refuse it, not left for pip to fail on."""
    missing = [r for r in reqs if normalize(r.name) in family
               and backend.kind not in facts.published_for.get(normalize(r.name), {backend.kind})]
    if missing:
        kinds = {normalize(r.name): " and ".join(sorted(facts.published_for[normalize(r.name)])) for r in missing}
        why = "; ".join(f"{n} publishes {k} builds only" for n, k in kinds.items())
        raise NoBackendError(
            f"not published for {backend}: {', '.join(map(str, missing))} ({why}; no backend index answered at "
            f"{redact(url)}, so backendpick's packaged table says so)", hint=_UNPUBLISHED)


def check_answered(offers: Offers, settings) -> None:
    """An index template under which no backend has a torch page is not "no backend serves
    this GPU" (nor a reason to consult the packaged table): say what the index answered."""
    unanswered = offers.unanswered()
    if unanswered:
        raise NoBackendError(
            f"the backend index has no torch for any backend: {unanswered}",
            hint=f"check the index URL template from {settings.index_url.source} "
                 f"({redact(settings.index_url.value)}): it must name a PEP 503 simple index, with {{backend}} "
                 "where the backend name goes",
        )


def explicit_missing(facts: Facts, client, template, explicit: Explicit, spec, target, offers: Offers,
                      settings) -> None:
    if offers.source != "index":
        return  # offline: the table cannot prove absence; pip will say
    others = gather(facts, client, template, [b for b in facts.all_backends() if b != explicit.backend], spec, target)
    if offers.not_found:
        check_answered(Offers(others.versions, "index", (), offers.not_found + others.not_found, others.asked + 1), settings)
    raise NoBackendError(
        f"{explicit.backend} (from {explicit.source}) has no torch matching '{spec or 'any'}' for "
        f"Python {target.python_version_text} at {redact(index_url_for(template, explicit.backend))}",
        hint=_available_hint(others),
    )


def on_offer_hint(offers: Offers) -> str:
    """What the candidate backends offer at all (the pins aside), for the exit-3 message."""
    if not offers.versions:
        return "no backend index asked offers a torch for this Python and platform"
    return f"torch on offer: {_listing(offers)}"


def _available_hint(offers: Offers) -> str:
    if not offers.versions:
        return "no backend index offers a matching torch; check the torch specifier and the index URL"
    return f"backends with a matching torch: {_listing(offers)}"


def _listing(offers: Offers) -> str:
    """``cu124: 2.4.1, 2.5.1; cu126: 2.6.0``: the newest three versions of each backend, in order."""
    return "; ".join(f"{b}: {', '.join(str(v) for v in vs[-3:])}"
                     for b, vs in sorted(offers.versions.items(), key=lambda kv: sort_key(kv[0])))
