"""A plan as a plain POSIX shell script of pip commands, for images without backendpick.

The script repeats what ``install`` does between phases: after the backend phase it writes
the constraints file from what is installed (pins) and what is not (fences), using only the
target Python's standard library: the rule of planning/constraint_rule.py, its source embedded.

Credentials are never written into it: every URL appears without its user information (a
``***`` user name would be sent as is and keep pip from reading .netrc), files backendpick
downloads behind credentials appear as their URL again, and the header names the hosts that
want credentials and how to give them: ``.netrc`` (or the file ``NETRC`` names), which pip and
uv both read, mounted as a build secret in a Dockerfile (examples/Dockerfile).
"""

from __future__ import annotations

import ast
import inspect
import os
import shlex
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Iterable, Mapping

from backendpick import __version__
from backendpick.edges import durable
from backendpick.execute import engines, shell_build
from backendpick.execute.engines import UV, UV_SOURCE_VARS, Renderer
from backendpick.indexes.credentials import has_credentials
from backendpick.inputs import pip_config
from backendpick.inputs.pip_config import SOURCE_KEYS, pins_value
from backendpick.model.plan import BACKEND, BACKEND_INDEX, BUILD, BUILD_REQS, REMOVE, Phase, Plan
from backendpick.planning import constraint_rule as constraints_mod
from backendpick.redaction import redact, strip
from backendpick.state import environment_pins
from backendpick.state.environment_pins import PINS_NAME, merge_conf, write_atomic

# Variables that name package sources: the backend phase runs without any of them.
_SOURCE_VARS = tuple(sorted("PIP_" + k.upper().replace("-", "_") for k in SOURCE_KEYS))

# The backend phase runs with PIP_CONFIG_FILE=/dev/null (no extra index or find-links of the
# machine that runs the script can supply torch); a script prints ``export PIP_X=...`` lines that
# give it back every other setting of that machine's pip configuration (cert, proxy, timeout,
# trusted-host...), as install does. A variable already set wins, as it does for pip.
def pip_settings_exports(config_list: str, source: Iterable[str], environ: Mapping[str, str]) -> list:
    """``export PIP_X=...`` lines for the settings in ``pip config list`` output (``install``
    over ``global``), leaving out the package sources, variables already set and PIP_CONFIG_FILE.
    Runs in the target Python too (its source is embedded in the script): standard library only."""
    values = {}
    for section in ("global", "install"):
        for line in config_list.splitlines():
            key, sep, raw = line.partition("=")
            where, _, name = key.partition(".")
            if not sep or where != section:
                continue
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                continue
            values[name] = " ".join(str(value).split())
    out = []
    for name, value in sorted(values.items()):
        var = "PIP_" + name.upper().replace("-", "_")
        if var not in source and var not in environ and var != "PIP_CONFIG_FILE":
            out.append("export %s=%s" % (var, shlex.quote(value)))
    return out


_PIP_SETTINGS_MAIN = '''
res = subprocess.run([sys.executable, "-m", "pip", "config", "list"], stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, universal_newlines=True)
for line in pip_settings_exports(res.stdout, set(sys.argv[1:]), os.environ):
    print(line)
'''


def pip_settings_script() -> str:
    """``pip_settings_exports`` as a standalone script for the target Python: argv names the
    source variables to leave out."""
    return "\n".join(["from __future__ import annotations", "import ast, os, shlex, subprocess, sys", "", "",
                      inspect.getsource(pip_settings_exports), _PIP_SETTINGS_MAIN])


def pin_stack(names: Iterable[str], backend: str, prefix: Path) -> str | None:
    """Pin the installed ``names`` in the environment at ``prefix`` (its own pip.conf and pins
    file), as install does; the message to show, None without a torch to pin. Runs in the target
    Python (the shell export embeds its source next to envpins')."""
    lines = []
    for name in sorted(set(names)):
        try:
            lines.append("%s==%s" % (metadata.metadata(name)["Name"], metadata.version(name)))
        except metadata.PackageNotFoundError:
            pass
    if not any(line.lower().startswith("torch==") for line in lines):
        return None
    pins = prefix / PINS_NAME
    head = ["# Written by a script that backendpick generated (plan --format sh): the GPU stack of this environment (%s)." % backend,
            "# A plain pip cannot replace torch or a companion; to change the stack: backendpick install.",
            "# uv: UV_CONSTRAINT=<this file>."]
    write_atomic(pins, "\n".join(head + lines) + "\n")
    conf = prefix / ("pip.ini" if os.name == "nt" else "pip.conf")
    old = conf.read_text() if conf.exists() else ""
    new = merge_conf(old, pins_value(pins))
    if new != old:
        write_atomic(conf, new)
    return "pinned the stack in %s (%s)" % (conf, pins)


_PIN_MAIN = '''
message = pin_stack(sys.argv[1].split(), sys.argv[2], Path(sys.prefix))
if message:
    print(message, file=sys.stderr)
'''


def _pin_script() -> str:
    """The environment pins (state/environment_pins.py) as a standalone script for the target Python: the same
    pip.conf merge, sources taken from envpins itself so the two cannot drift."""
    parts = ["from __future__ import annotations", "import os, sys, time",
             "from importlib import metadata", "from pathlib import Path",
             f"PINS_NAME = {environment_pins.PINS_NAME!r}", f"REPLACED = {environment_pins.REPLACED!r}",
             f"OWN = {environment_pins.OWN!r}", f"SECTIONS = {environment_pins.SECTIONS!r}",
             f"CONF_HEADER = {environment_pins.CONF_HEADER!r}"]
    # environment_pins.write_atomic calls durable.write_atomic: the script gets that one under the same name.
    parts += ["import types", inspect.getsource(durable._create_beside), inspect.getsource(durable.write_atomic),
              "durable = types.SimpleNamespace(write_atomic=write_atomic)"]
    parts.append(f"_PLAIN = frozenset({''.join(sorted(pip_config._PLAIN))!r})")
    for fn in (pip_config.section_of, pip_config.key_of, pip_config.conf_entries, pip_config.pins_value,
               environment_pins.unmerge_conf, environment_pins.merge_conf, environment_pins.write_atomic, pin_stack):
        parts.append(inspect.getsource(fn))
    parts.append(_PIN_MAIN)
    return "\n".join(parts)


def to_shell(plan: Plan, renderer: Renderer | None = None) -> str:
    """The plan as a POSIX shell script: the header, one block per phase, then the stack's pins.
    ``renderer``: the engine with the user's pip configuration (engines.for_prepared); a plan's
    own without (no configuration of the user's)."""
    renderer = renderer or engines.for_plan(plan)
    python = str(plan.python)
    uv = plan.installer == UV
    uv_exe = plan.uv if uv else None
    out = _header(plan, renderer, python, uv)
    wrote_constraints = False
    for phase in plan.phases:
        if phase.name == REMOVE:
            continue  # specific to the environment the plan was made for
        out.append("")
        out.append(f"# phase {phase.name}")
        if phase.name == BACKEND and plan.offers_source == "installed":
            # The installed torch no index serves stays (selection/stays.py): there is no index to ask.
            out.append(f"# skipped: {phase.skip}")
            continue
        if phase.name != BACKEND and not wrote_constraints:
            out.append(_constraints_line(plan))
            wrote_constraints = True
        if phase.name == BACKEND and plan.backend_constraints and plan.backend_constraints_path is not None:
            # The user's constraints (pip config, -c files) hold in the backend phase too.
            out.append('BACKEND_CONSTRAINTS="$BP_TMP/backend-constraints.txt"')
            out += _heredoc('"$BACKEND_CONSTRAINTS"', [strip(c) for c in plan.backend_constraints])
        if phase.hashed_file:
            # Requirements with their hashes: pip reads them from a file only (planning/hashes.py).
            out += _heredoc(_hashed_var(phase), [strip(line) for line in phase.hashed_lines])
        words = _words(plan, renderer, phase, python, uv_exe)
        if phase.name == BUILD_REQS and phase.target_dir:
            out += shell_build.requirements_lines(phase, words)
            continue
        if phase.name == BUILD and any(shell_build.chosen(s) for s in phase.steps):
            built = _with_sdists(phase) if uv else phase
            out += shell_build.cache_lines()
            out += shell_build.build_lines(
                built, getattr(phase.context, "torch", None), _separated(plan),
                lambda step: _words(plan, renderer, phase, python, uv_exe, step=step),
                uv_unset=UV_SOURCE_VARS if uv else None)
        out += _phase_lines(plan, phase, words, uv)
    if plan.pin_environment and plan.phases:
        # As install does: the stack's pins outlive the script (a later plain pip cannot swap it).
        names = " ".join(sorted(set(plan.backend_names) | set(plan.build_names)))
        out += ["", "# pin the stack in the environment's own pip.conf (pin-environment = false skips this)",
                f'"$PY" -c {shlex.quote(_pin_script())} {shlex.quote(names)} {shlex.quote(str(plan.backend))}']
    return "\n".join(out) + "\n"


def _header(plan: Plan, renderer: Renderer, python: str, uv: bool) -> list[str]:
    """The script's opening lines: the interpreter, the constraints file, uv, the routes."""
    out = [
        "#!/bin/sh",
        f"# Generated by backendpick {__version__}: backend {plan.backend} ({plan.decided_by}: {plan.reason})",
        "# The same pip phases as `backendpick install`; set PYTHON to the interpreter to install into.",
        "set -eu",
        f'PY="${{PYTHON:-{python}}}"',
        "# The files the script writes for itself go to a private temporary folder, removed when it ends",
        "# (an interrupt included).",
        # mktemp's template: eight X characters it replaces with random ones.
        'BP_TMP="$(mktemp -d "${TMPDIR:-/tmp}/backendpick.' + "X" * 8 + '")"',
        "trap 'rm -rf \"$BP_TMP\"' EXIT",
        "trap 'exit 130' INT",
        "trap 'exit 143' TERM",
        "# The constraints file: BACKENDPICK_CONSTRAINTS, else one in that folder.",
        'CONSTRAINTS="${BACKENDPICK_CONSTRAINTS:-$BP_TMP/constraints.txt}"',
    ]
    if uv:
        out.append("# uv reads no pip.conf: the package sources of this machine's pip configuration are on each command.")
        out.append('UV="${UV:-uv}"')
    out += _credentials_note(plan, renderer)
    for route in plan.routes:
        out.append(f"# {strip(route.line())}")
    return out


def credential_hosts(plan: Plan, renderer: Renderer | None = None) -> list[str]:
    """The hosts whose credentials the plan's commands would use, which the script leaves out:
    URLs holding them (on the command lines as the script writes them), and files backendpick
    downloads behind them."""
    from urllib.parse import urlsplit

    renderer = renderer or engines.for_plan(plan)
    wanted = [plan.index_url] if has_credentials(plan.index_url) else []
    for phase in plan.phases:
        command = renderer.command(phase, hide=False)
        words = [w.rpartition(" @ ")[2] for w in command.argv if "://" in w]
        wanted += [w.partition("=")[2] if "=" in w.split("://", 1)[0] else w for w in words if has_credentials(w)]
        wanted += [url for url, _path in phase.downloads]
        wanted += [s.wheel for s in phase.steps if s.fetched and s.wheel]
    hosts: list[str] = list(plan.credential_hosts)
    for url in wanted:
        host = urlsplit(url).hostname
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _credentials_note(plan: Plan, renderer: Renderer) -> list[str]:
    hosts = credential_hosts(plan, renderer)
    if not hosts:
        return []
    first = hosts[0]
    return [
        f"# Credentials are not written into this script. {', '.join(hosts)} want them: put them in ~/.netrc",
        "# (or the file the NETRC variable names), which pip and uv read, one line per host:",
        f"#   machine {first} login USER password SECRET",
        "# In a Docker build, mount that file as a secret, so no layer keeps it (see examples/Dockerfile):",
        "#   RUN --mount=type=secret,id=netrc,target=/root/.netrc sh install.sh",
    ]


def _constraints_line(plan: Plan) -> str:
    """The command that writes the constraints file after the backend phase (planning/constraint_rule.py's rule)."""
    building_names = " ".join(sorted(plan.building))
    args = [shlex.quote(" ".join(plan.backend_names)), shlex.quote(" ".join(plan.build_names)),
            shlex.quote(building_names), *(shlex.quote(c) for c in plan.user_constraints)]
    return f'"$PY" -c {shlex.quote(constraints_mod.script())} "$CONSTRAINTS" {" ".join(args)}'


def _separated(plan: Plan) -> bool:
    """Whether install keeps the build requirements in a folder of their own."""
    return any(p.name == BUILD_REQS and p.target_dir for p in plan.phases)


def _script_phase(phase: Phase) -> Phase:
    """The phase as the script runs it: without the wheels install chose on this machine (they
    are in its cache or build folders, not in the image); a build phase installs what the
    script chose for each package (execute/shell_build.py) and the rest as they are."""
    if phase.name != BUILD or not phase.steps:
        return replace(phase, wheels=())
    words = tuple(shell_build.placeholder(s) if shell_build.chosen(s) else s.requirement for s in phase.steps)
    return replace(phase, steps=(), wheels=(), requirements=words)


def _with_sdists(phase: Phase) -> Phase:
    """With uv, every chosen step with the sdist it would be built from (found now for a wheel
    chosen from the cache or a prebuilt URL, which the script may still have to build: uv
    builds a file; build/sdists.py)."""
    ctx = phase.context
    if getattr(ctx, "sdist_places", None) is None:
        return phase
    from backendpick.build import wheel_choice

    return replace(phase, steps=tuple(wheel_choice.with_sdist(s, ctx) if shell_build.chosen(s) else s
                                      for s in phase.steps))


def _build_step(step):
    """A step as the script builds it from source when it has no wheel for it (with uv: the
    sdist from the script's folder when it downloads it)."""
    version = step.version
    requirement = step.build_requirement or (f"{step.name}=={version}" if version else step.requirement)
    sdist = f"\0sdist:{step.sdist}" if step.sdist and "://" in step.sdist else step.sdist
    return replace(step, build_requirement=requirement, wheel_dir=f"\0dir:{step.name}", sdist_file=sdist)


def _words(plan: Plan, renderer: Renderer, phase: Phase, python: str, uv_exe: str | None, step=None) -> list[str]:
    """The phase's command (``step``: its ``pip wheel``) as shell words: the interpreter, uv, the
    script's files and the build wheels it chose as variables; credentials in place in the
    rendering, stripped here."""
    constraints = str(plan.constraints_path)
    words = []
    plain = _script_phase(phase)
    argv = list(renderer.build_command(plain, _build_step(step), hide=False).argv if step is not None
                else renderer.command(plain, hide=False).argv)
    # Files backendpick would download first are named by their URL: the script's pip or uv
    # fetches them (with the credentials of .netrc).
    back = {Path(path).as_uri(): url for p in plan.phases for url, path in p.downloads}
    back.update({path: url for p in plan.phases for url, path in p.downloads})
    argv = [_unfetched(a, back) for a in argv]
    for a in argv:
        if a == python:
            words.append('"$PY"')
        elif uv_exe is not None and a == uv_exe:
            words.append('"$UV"')
        elif a == constraints:
            words.append('"$CONSTRAINTS"')
        elif plan.build_constraints_path is not None and a == str(plan.build_constraints_path):
            words.append(shell_build.BUILD_CONSTRAINTS)
        elif phase.target_dir and a == phase.target_dir:
            words.append(shell_build.BUILD_ENV)
        elif a.startswith("\0dir:"):
            words.append(f'"$BP_TMP/build/{a[len(chr(0) + "dir:"):]}"')
        elif a.startswith("\0sdist:"):
            words.append(shell_build.sdist_word(a[len(chr(0) + "sdist:"):]))
        elif shell_build.install_word(a, phase.steps) is not None:
            words.append(shell_build.install_word(a, phase.steps))
        elif plan.backend_constraints_path is not None and a == str(plan.backend_constraints_path):
            words.append('"$BACKEND_CONSTRAINTS"')
        elif phase.hashed_file and a == phase.hashed_file:
            words.append(_hashed_var(phase))
        else:
            words.append(shlex.quote(strip(a)))
    return words


def _heredoc(path: str, lines) -> list[str]:
    """The lines that write ``lines`` to the file ``path`` (a shell word) as they are."""
    return [f"cat > {path} <<'BACKENDPICK_EOF'", *lines, "BACKENDPICK_EOF"]


def _hashed_var(phase: Phase) -> str:
    return f'"$BP_TMP/hashed-{phase.name}.txt"'


def _unfetched(word: str, back: Mapping[str, str]) -> str:
    for local, url in back.items():
        if local in word:
            return word.replace(local, url)
    return word


def _phase_lines(plan: Plan, phase: Phase, words: list[str], uv: bool) -> list[str]:
    """The lines that run one phase's command, with the environment it runs in."""
    if uv:
        # The plan decides every source: no UV_* variable of the image may add one (uv
        # reads no pip configuration, so the pip subshell below is not needed).
        return [" ".join(["env", *[f"-u {k}" for k in UV_SOURCE_VARS]] + words)]
    if phase.source == BACKEND_INDEX:
        # Whatever the image's environment says, the backend phase reads no pip sources
        # (PIP_CONSTRAINT included: a constraint could pin torch to another build); the
        # other settings of its pip configuration come back as variables, in a subshell.
        unset = [f"-u {k}" for k in _SOURCE_VARS]
        return ["(",
                f'  eval "$("$PY" -c {shlex.quote(pip_settings_script())} {" ".join(_SOURCE_VARS)})"',
                "  " + " ".join(["env", *unset, "PIP_CONFIG_FILE=/dev/null"] + words),
                ")"]
    # The other phases read the pip configuration of the machine running the script, as install's do.
    return [" ".join(words)]
