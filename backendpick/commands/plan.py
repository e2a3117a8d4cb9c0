"""``backendpick plan``: the backend, the reason and the pip phases, without running them.

Parse (cli.py) -> ``pipeline.prepare`` -> render: the plan as text, JSON or a shell script.
"""

from __future__ import annotations

from backendpick.errors import EXIT_OK
from backendpick.execute import engines
from backendpick.model import plan as plan_mod
from backendpick.output import Output
from backendpick.planning.pipeline import Request, prepare


def render(out: Output, p: plan_mod.Plan, renderer: engines.Renderer) -> None:
    """The plan in words, from its phases' intents (execute/described.py), then its warnings."""
    from backendpick.execute import described

    out.plan(described.plan_view(p, renderer))
    for w in p.warnings:
        out.warn(w)


def run(out: Output, req: Request, fmt: str = "text", inspection=None) -> int:
    """``inspection``: the target's inspection (``target.Inspection``) started early by the
    console script, which the pipeline takes in its turn; None inspects there."""
    prepared = prepare(req, inspection=inspection, fetch=False)  # a lock's files: named, not downloaded
    renderer = engines.for_prepared(prepared)
    if fmt == "sh":
        from backendpick.execute.shell_export import to_shell

        out.stdout.write(to_shell(prepared.plan, renderer))
        for w in prepared.plan.warnings:
            out.warn(w)
        return EXIT_OK
    if out.json_mode:
        out.emit_json(prepared.plan.to_json(renderer.phase_json))
    else:
        render(out, prepared.plan, renderer)
    return EXIT_OK
