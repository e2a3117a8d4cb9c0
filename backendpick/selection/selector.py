"""The one backend selection (issue 20 item 2): ``detect``, ``plan``, ``install`` (and a lock
made for a list of backends) all choose here, so what detect reports is what plan chooses.

``candidates`` says which backends may serve and in which order auto selection asks them;
``select`` chooses from what their indexes offer for the pins: an installed torch no index serves
that satisfies the pins stays (selection/stays.py); otherwise the indexes are asked (or the last
install's record answers), ``backend_choice.choose`` decides, an installed GPU torch is never
downgraded, and an installed index build that still runs here stays. A choice that cannot serve
(GPUs left without a build, no torch on the chosen index, an index template that points nowhere)
comes back as a refusal next to the decision: plan and install raise it (exit 3), detect shows
the decision and says that plan stops there.

Everything here is a function of the ``Ground`` value; the hardware only matters for auto
selection, so a lock for named backends passes a ``Ground`` with the backend as ``explicit`` and
any hardware (``Hardware()`` where there is no GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from backendpick import redaction
from backendpick.errors import NoBackendError
from backendpick.indexes.client import IndexClient
from backendpick.inputs.config import Settings
from backendpick.knowledge.facts import Facts
from backendpick.model.backend import Backend
from backendpick.model.choice import Decision, Explicit
from backendpick.model.environment import Target
from backendpick.model.hardware import Hardware
from backendpick.selection import offers as offers_mod, stays, torch_version
from backendpick.selection.backend_choice import choose, keep_installed_gpu_backend, no_backend, runs_here, table_offers
from backendpick.selection.offers import Offers, candidate_kinds, gather, gather_preferred, index_url_for, preference
from backendpick.target.installed_stack import InstalledStack


@dataclass(frozen=True)
class Ground:
    """What the choice stands on: the machine, the target and its installed stack, the
    settings, the backend the user named (if any), the index and the run's client."""

    facts: Facts
    hardware: Hardware
    target: Target
    stack: InstalledStack
    settings: Settings
    explicit: Explicit | None
    template: str  # the backend index URL template of the channel (torch_version.channel_template)
    client: IndexClient

    @property
    def policy(self) -> str:
        return self.settings.cuda_compat.value

    @property
    def family(self) -> set:
        return set(self.settings.backend_packages)

    @property
    def nightly(self) -> SpecifierSet:
        return SpecifierSet(">=0.dev0") if self.settings.channel.value == "nightly" else SpecifierSet()


@dataclass(frozen=True)
class Candidates:
    candidates: tuple  # the explicit backend, or those of the vendors present
    order: tuple  # the candidates the hardware runs, in the order auto selection prefers them
    keep: Backend | None  # the installed GPU backend auto selection keeps (never downgrades), or None


@dataclass(frozen=True)
class Chosen:
    """The backend decision, the offers it was made from, and what plan makes of it."""

    decision: Decision
    offers: Offers | None  # None: nothing asked the indexes (a kept torch no index serves, or no backend wanted)
    kept: bool = False  # the installed torch no index serves stays: nothing of the stack is asked for
    replacing: str | None = None  # why an installed torch no index serves is replaced
    refusal: NoBackendError | None = None  # why plan and install stop here (exit 3)


def candidates(g: Ground) -> Candidates:
    """The backends that may serve, and the order auto selection asks them in (only those the
    hardware runs, the installed GPU backend last)."""
    if g.explicit is not None:
        return Candidates((g.explicit.backend,), (g.explicit.backend,), None)
    kinds = candidate_kinds(g.hardware)
    found = [b for b in g.facts.all_backends() if b.kind in kinds]
    # A torch no index serves is kept by its own rule (selection/stays.py), never asked for on an index.
    kept = g.stack.backend if not g.stack.foreign else None
    keep = kept if kept is not None and kept.is_gpu else None  # auto never downgrades
    order = preference(g.facts, g.hardware, found, g.policy)
    if keep is not None and keep not in order:
        order = [*order, keep]
    return Candidates(tuple(found), tuple(order), keep)


def select(g: Ground, c: Candidates, pins: list, *, named: set, wants: bool = True, recorded: dict | None = None,
           upgrade_torch: bool = False, reinstall=()) -> Chosen:
    """The backend for ``pins`` (every pin on the torch family; ``named``: the family members the
    request names or pulls in, whose pins ask the indexes). ``wants``: the request installs a
    backend package (otherwise the packaged table decides and no index is asked); ``recorded``:
    the last install's offers, which answer instead of the indexes."""
    origin = g.stack.origin
    replacing = stays.replace_reason(origin, g.explicit, pins, reinstall)
    if g.stack.foreign and replacing is None:
        nearest = stays.nearest_index_backend(origin, g.facts.all_backends())
        return Chosen(stays.kept_decision(origin, upgrade=upgrade_torch, nearest=nearest), None, kept=True)
    # A constraint only constrains (issue 18, item 8): a line on a companion nobody asked for
    # neither makes it required nor blocks a backend whose index lacks it.
    asked = [p for p in pins if p.name in named]
    spec = torch_version.merged(pins).get("torch", SpecifierSet())
    offers, refusal = _offers(g, c, asked, spec, recorded) if wants else (None, None)
    releases = offers.releases if offers is not None else table_offers(g.facts)
    decision = choose(g.hardware, g.facts, releases, policy=g.policy, explicit=g.explicit)
    decision = keep_installed_gpu_backend(decision, c.keep, g.stack.version)
    if wants and refusal is None:
        if not upgrade_torch:
            decision, offers = _installed_stays(g, decision, offers, asked, spec)
        refusal = _served(g, c, decision, offers, asked, spec)
    if refusal is not None and replacing:
        refusal = stays.with_held_lines(refusal, origin, g.target, pins)
    return Chosen(decision, offers, replacing=replacing, refusal=refusal)


def table_choice(facts: Facts, hardware: Hardware, settings: Settings) -> Decision:
    """``detect --offline``: the choice from the packaged release table alone (no index asked,
    no target looked at), and nothing else of the selection."""
    from backendpick.selection.backend_choice import explicit_choice

    return choose(hardware, facts, table_offers(facts), policy=settings.cuda_compat.value,
                  explicit=explicit_choice(settings))


def _offers(g: Ground, c: Candidates, pins: list, spec: SpecifierSet,
            recorded: dict | None) -> tuple[Offers, NoBackendError | None]:
    """What the backend indexes offer for the torch the pins allow (or the last install's
    record), and why no choice can be made from it (None when one can)."""
    asked = spec & g.nightly
    # A backend whose index lacks a pinned companion (torchvision==0.20.1) cannot serve the
    # request either: the choice moves on to one that has it.
    serves = offers_mod.companions_check(g.client, g.template, pins, g.family, g.target, g.nightly)
    refusal = None
    if recorded is not None:
        # Nothing changed since the last install: its offers decide again, no index is asked.
        return Offers(recorded, "recorded"), None
    if g.explicit is not None:
        offers = gather(g.facts, g.client, g.template, [g.explicit.backend], asked, g.target)
        if offers.source == "index" and g.explicit.backend in offers.versions and not serves(g.explicit.backend):
            offers = replace(offers, versions={})
        if g.explicit.backend not in offers.versions:
            try:
                offers_mod.explicit_missing(g.facts, g.client, g.template, g.explicit, asked, g.target, offers,
                                            g.settings)
            except NoBackendError as exc:
                refusal = torch_version.error_with_pins(exc, [p for p in pins if p.by != "you"])
    else:
        # Newest allowed first, stopping at the first that offers a torch every pin accepts.
        offers = gather_preferred(g.facts, g.client, g.template, g.hardware, list(c.candidates), asked, g.target,
                                  policy=g.policy, keep=c.keep, accept=serves)
        try:
            offers_mod.check_answered(offers, g.settings)
        except NoBackendError as exc:
            # No page anywhere under the template: nothing to choose from but the packaged table.
            refusal, offers = exc, offers_mod.from_table(g.facts, list(c.order), asked)
    if offers.source == "index":
        offers = replace(offers, versions={b: v for b, vs in offers.versions.items()
                                           if (v := torch_version.allowed(vs, pins))})
    return offers, refusal


def _installed_stays(g: Ground, decision: Decision, offers: Offers | None, pins: list, spec: SpecifierSet):
    """A satisfied environment stays as it is (issue 18, item 7): an installed backend index
    build that every pin accepts and that still runs here is kept when auto selection now
    prefers another backend (a driver upgrade), and the decision says how to move."""
    origin = g.stack.origin
    if g.explicit is not None or origin is None or origin.foreign or offers is None:
        return decision, offers
    release = Version(origin.version).release
    runs = runs_here(g.facts, g.hardware, origin.backend, release, g.policy)
    if not stays.index_build_stays(origin, decision, pins, runs_here=runs):
        return decision, offers
    versions = dict(offers.versions)
    if origin.backend not in versions and offers.source == "index":
        mine = gather(g.facts, g.client, g.template, [origin.backend], spec & g.nightly, g.target)
        serves = offers_mod.companions_check(g.client, g.template, pins, g.family, g.target, g.nightly)
        found = torch_version.allowed(mine.versions.get(origin.backend, []), pins)
        if found and serves(origin.backend):
            versions[origin.backend] = found
    if origin.backend not in versions:
        return decision, offers  # its index no longer offers what the request needs
    return stays.stays_decision(origin, decision), replace(offers, versions=versions)


def _served(g: Ground, c: Candidates, decision: Decision, offers: Offers | None, pins,
            spec) -> NoBackendError | None:
    """Exit 3 when the chosen backend cannot serve: GPUs left unserved, or no torch on its index."""
    if decision.unserved and decision.source == "detected":
        return torch_version.error_with_pins(no_backend(g.facts, g.hardware, decision, spec, g.policy), pins)
    if offers is not None and decision.backend not in offers.versions:
        # Only now every candidate is asked: the message lists what exists.
        everything = gather(g.facts, g.client, g.template, list(c.order), g.nightly, g.target) \
            if offers.source == "index" else offers
        return NoBackendError(
            f"no torch matching '{spec or 'any'}' for Python {g.target.python_version_text} "
            f"on the {decision.backend} index ({redaction.redact(index_url_for(g.template, decision.backend))})",
            hint=offers_mod.on_offer_hint(everything) + torch_version.pins_text(pins),
        )
    return None


__all__ = ["Candidates", "Chosen", "Ground", "candidates", "select", "table_choice"]
