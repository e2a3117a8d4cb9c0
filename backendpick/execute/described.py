"""A plan and an install in words (issue 20 item 5): what ``plan``, ``install --dry-run`` and
install's progress show, made from the phases' intents (never from a command line), for the one
renderer (``output.py``) to print.

* The header: the backend, the reason and the torch first, then where they came from.
* Each phase: what it installs and why, the routes and build steps in words (a build step: built
  against the torch the backend phase installs, from the wheel cache, a prebuilt URL, or
  source), the commands that run exactly as printed (``engines.Renderer``), and the files that
  will be written before it runs (a dry run writes none of them).
* After an install, what changed, as uv prints it: ``+ torch 2.5.1+cu124``, ``- torch 2.4.0``,
  ``~ flash-attn 2.7.4 (built against 2.5.1+cu124, 6 s, cached)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from backendpick import redaction
from backendpick.execute.engines import Renderer
from backendpick.model.names import normalize
from backendpick.model.plan import (
    AFTER_BACKEND,
    AS_IS,
    BACKEND,
    BACKEND_INDEX,
    BUILD,
    BUILD_REQS,
    CACHED,
    CLEAR,
    OFFLINE,
    PREBUILT,
    REMOVE,
    REST,
    SOURCE,
    UNINSTALL,
    BuildStep,
    Phase,
    Plan,
)
from backendpick.output import Change, PhaseView, PlanView


def header(plan: Plan) -> tuple[tuple[str, str], ...]:
    """The backend, the reason and the torch first; then who decided, the target, the index."""
    rows = [("backend", plan.backend.name), ("reason", plan.reason)]
    if plan.torch is not None:
        rows.append(("torch", plan.torch.describe()))
    rows += [("decided-by", plan.decided_by), ("python", str(plan.python)),
             ("index", "none asked: the installed torch stays" if plan.offers_source == "installed"
              else redaction.redact(plan.index_url)),
             ("offers-from", plan.offers_source)]
    if plan.installed_torch is not None and plan.installed_torch.notable:
        rows.append(("installed", plan.installed_torch.describe()))
    if plan.replacing:
        rows.append(("replacing", plan.replacing.removeprefix("replacing ")))
    if plan.torch is not None:
        rows.append(("pins-from", plan.torch.source))
        if plan.torch.channel != "stable":
            rows.append(("channel", plan.torch.channel))
    return tuple(rows)


def plan_view(plan: Plan, renderer: Renderer, notes: Sequence[str] = ()) -> PlanView:
    """``notes``: said after the header (what a change keeps before it runs). A route is said
    under its phase; one whose phase the plan does not run, after the header."""
    running = {p.name for p in plan.phases if p.skip is None}
    elsewhere = [r.line() for r in plan.routes if r.phase not in running]
    return PlanView(header(plan), tuple(phase_view(plan, p, renderer) for p in plan.phases),
                    (*elsewhere, *notes))


def phase_view(plan: Plan, phase: Phase, renderer: Renderer) -> PhaseView:
    notes = [f"downloaded first by backendpick (the server wants credentials): {redaction.redact(url)} -> {path}"
             for url, path in phase.downloads]
    if phase.alongside:
        notes.append(f"runs alongside the {phase.alongside} phase")
    steps = [r.line() for r in plan.routes if r.phase == phase.name]
    steps += [w for s in phase.steps for w in _step_words(plan, phase, s)]
    if phase.steps and phase.deferred:
        steps.append(f"the wheels are installed by the rest phase's {renderer.installer} run")
    if phase.wheels and not _settled(phase.wheels):
        steps.append("the build phase's wheels are added to this command once the backend phase has installed torch")
    return PhaseView(phase.name, " ".join(redaction.redact(r) for r in phase.requirements), _why(plan, phase),
                     phase.skip, tuple(notes), tuple(steps), commands(renderer, phase), _files(plan, phase))


def commands(renderer: Renderer, phase: Phase) -> tuple[str, ...]:
    """The phase's command lines that run exactly as printed: each source build's ``pip wheel``,
    then its install. A wheel not chosen yet has no command; its step says in words what will be."""
    out = [renderer.build_command(phase, s).line() for s in phase.steps if s.how == SOURCE and s.build_requirement]
    if phase.steps and (phase.deferred or not _settled(phase.steps)):
        return tuple(out)
    if phase.wheels and not _settled(phase.wheels):
        phase = replace(phase, wheels=())
    return (*out, renderer.command(phase).line())


def _settled(steps: Iterable[BuildStep]) -> bool:
    """Whether each step's wheel is known, so its install requirement is exact."""
    return all(s.how == AS_IS or (s.find_links and s.version) or s.wheel for s in steps)


def _why(plan: Plan, phase: Phase) -> str:
    if phase.action == CLEAR:
        return "removes the folders an interrupted pip left beside the packages"
    if phase.action == UNINSTALL or phase.name == REMOVE:
        return (f"removes what is built for another backend or torch, so the {plan.backend.name} builds "
                "replace it")
    if phase.source == OFFLINE:
        return "from kept copies and local files only: no index asked"
    if phase.name == BACKEND:
        return (f"torch and its family from the {plan.backend.name} index alone "
                "(none of your pip configuration's indexes)")
    if phase.name == BUILD_REQS:
        where = "into a folder of their own, never the environment" if phase.target_dir else "into the environment"
        for_what = f" of {', '.join(sorted(plan.building))}" if plan.building else ""
        return f"the tools the builds{for_what} need, {where}"
    if phase.name == BUILD:
        return "packages compiled against torch: without build isolation, torch pinned"
    if phase.name == REST:
        pinned = ", the stack pinned" if phase.constraints_file else ""
        return f"everything else, from your pip configuration{pinned}"
    if phase.source == BACKEND_INDEX and phase.index_url:
        return f"from {redaction.redact(phase.index_url)} alone"
    return ""


def _step_words(plan: Plan, phase: Phase, step: BuildStep) -> list[str]:
    """One build package in words: why its wheel comes from where it does (the plan's note),
    then for which torch and how: from the wheel cache, a prebuilt URL, or built from source."""
    what = f"{step.name} {step.version}" if step.version else step.requirement
    torch = getattr(getattr(phase.context, "torch", None), "version", None) or \
        (getattr(plan.torch, "version", None) if plan.torch is not None else None)
    against = "the torch the backend phase installs" + (f" ({torch})" if torch else "")
    if step.how == CACHED:
        how = f"its wheel from the wheel cache, built before against {against}: no build"
    elif step.how == PREBUILT:
        how = f"the prebuilt wheel {redaction.redact(step.wheel or '')}, made for {against}: no build"
    elif step.how == SOURCE:
        limits = f", with {step.limits}" if step.limits else ""
        how = f"built from source against {against}{limits}; the wheel is then kept in the wheel cache"
        if step.sdist and step.sdist != step.sdist_file:  # uv builds a file (build/sdists.py)
            how += (f"; uv builds its sdist {redaction.redact(step.sdist)}, downloaded first by backendpick to "
                    f"{step.sdist_file}")
        elif step.sdist:
            how += f"; uv builds its sdist {step.sdist_file}"
    elif step.how == AS_IS:
        how = f"built by pip as it is, against {against}, without build isolation"
    else:  # PENDING: the note names the candidates, in order
        how = ""
    return [w for w in (redaction.redact(step.note), f"{what}: {how}" if how else "") if w]


def _files(plan: Plan, phase: Phase) -> tuple[str, ...]:
    """The files backendpick writes before the phase runs (a dry run writes none)."""
    if phase.skip:
        return ()
    out = []
    if phase.constraints_file:
        pins = [_pin_words(c) for c in phase.constraints if not c.endswith("<0")]
        fenced = sum(1 for c in phase.constraints if c.endswith("<0"))
        when = " after the backend phase" if phase.constraints_written == AFTER_BACKEND else ""
        held = [f"pins {', '.join(pins)}"] if pins else []
        if fenced:
            held.append(f"blocks {fenced} package{'' if fenced == 1 else 's'} unless an earlier phase installs them")
        out.append(f"{phase.constraints_file}{when}" + (f": {'; '.join(held)}" if held else ""))
    if phase.hashed_file:
        out.append(f"{phase.hashed_file}: the requirements with their hashes")
    return tuple(out)


def _pin_words(line: str) -> str:
    """``torch==<installed by the backend phase>`` (constraint_rule) in words."""
    name, sep, version = line.partition("==")
    if sep and version.startswith("<"):
        return f"{name} at the version the backend phase installs"
    return redaction.redact(line)


# -- what an install changed ------------------------------------------------------------------------


def changes(before: Mapping[str, object], after: Mapping[str, object], builds: Sequence[Mapping],
            torch: str | None) -> list[Change]:
    """``before``/``after``: normalized name -> Installed; ``builds``: the build phase's steps as
    run (``BuildStep.to_json()``); ``torch``: the version they were built against."""
    by_name = {normalize(b["name"]): b for b in builds}
    out: list[Change] = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        detail = _build_detail(by_name.get(name), torch) if new is not None else ""
        if old is not None and new is not None and old.version == new.version:
            if old == new and name not in by_name:
                continue
            out.append(Change("~", new.name, new.version, detail))
            continue
        if old is not None:
            out.append(Change("-", old.name, old.version))
        if new is not None:
            out.append(Change("+", new.name, new.version, detail))
    return out


def _build_detail(step: Mapping | None, torch: str | None) -> str:
    if step is None:
        return ""
    against = f" against {torch}" if torch else ""
    if step.get("how") == SOURCE:
        seconds = step.get("seconds")
        took = f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        return f"built{against}{took}, cached"
    if step.get("how") == CACHED:
        return f"built{against}, from the wheel cache"
    if step.get("how") == PREBUILT:
        return f"prebuilt for {torch}" if torch else "prebuilt"
    return ""


__all__ = ["changes", "commands", "header", "phase_view", "plan_view"]
