"""``backendpick plan``: the backend, the reason and the pip phases, without running them.

Parse (cli.py) -> ``pipeline.prepare`` -> render: the plan as text, JSON or a shell script.
"""

from __future__ import annotations

from backendpick import redaction
from backendpick.errors import EXIT_OK
from backendpick.execute import engines
from backendpick.model import plan as plan_mod
from backendpick.output import Output
from backendpick.planning.pipeline import Request, prepare


def render(out: Output, p: plan_mod.Plan, renderer: engines.Renderer) -> None:
    notable = p.installed_torch is not None and p.installed_torch.notable
    out.fields(
        [
            ("backend", p.backend.name),
            ("decided-by", p.decided_by),
            ("reason", p.reason),
            ("python", str(p.python)),
            ("index", "none asked: the installed torch stays" if p.offers_source == "installed"
             else redaction.redact(p.index_url)),
            ("offers-from", p.offers_source),
        ]
        + ([("installed", p.installed_torch.describe())] if notable else [])
        + ([("replacing", p.replacing.removeprefix("replacing "))] if p.replacing else [])
        + ([("torch", p.torch.describe()), ("pins-from", p.torch.source)] if p.torch is not None else [])
        + ([("channel", p.torch.channel)] if p.torch is not None and p.torch.channel != "stable" else [])
    )
    for ph in p.phases:
        status = f"skip ({ph.skip})" if ph.skip else "run"
        out.line(f"phase {ph.name}: {status}: {' '.join(ph.requirements)}")
        for line in renderer.shown(ph).splitlines():  # a build phase: comments, pip wheel, pip install
            out.line(f"  {line}" if line.startswith("#") else f"  $ {line}")
        if ph.constraints and not ph.skip:
            pins = [c for c in ph.constraints if not c.endswith("<0")]
            fenced = len(ph.constraints) - len(pins)
            out.line(f"  constraints ({p.constraints_path}): {', '.join(pins)}"
                     + (f" (+{fenced} packages blocked unless an earlier phase installs them)" if fenced else ""))
    for route in p.routes:
        out.line(f"package {route.line()}")
    if not p.phases:
        out.line("nothing to install")
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
