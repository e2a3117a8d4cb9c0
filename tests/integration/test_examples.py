"""examples/ is runnable: pyproject.toml loads, and the backendpick commands of the Dockerfile
and the Makefile succeed against the local world (install with --dry-run; plan and verify as
they are). ``plan --format sh`` writes a script that installs what ``install`` installs.

The example project asks for packages the world lacks (transformers, accelerate, safetensors):
they are tiny wheels in a private copy of the world's pypi index, which also holds a
flash-attn wheel with its compiled module (the world's sdist builds none, verify rejects that).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.bp_helpers import (
    REPO,
    backendpick,
    bp_env,
    freeze,
    no_gpu,
    nvidia,
    out,
    pip_env,
    pip_from,
    private_index,
    template_url,
)
from tests.support.venvs import clone_venv, venv_python
from tests.support.world import World

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples"
# What the example project needs beyond the world's pypi index.
EXTRA_WHEELS = [
    ("transformers", "4.46.0", {"requires": ["safetensors>=0.4.1", "tqdm>=4.27"]}),
    ("accelerate", "1.1.1", {"requires": ["torch>=2.0.0", "safetensors>=0.4.3", "numpy<3"]}),
    ("safetensors", "0.4.5", {}),
    ("pytest", "8.3.3", {}),
    ("flash-attn", "2.7.4", {"requires": ["torch", "einops"], "files": {"flash_attn_2_cuda.py": "ok = True\n"}}),
]


def examples_conf(world: World) -> Path:
    return private_index(world, "bp-examples", EXTRA_WHEELS, drop=["flash_attn"])


# -- parsing the examples ------------------------------------------------------------------------


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comment lines dropped (Dockerfile, make)."""
    lines, buffer = [], ""
    for raw in text.splitlines():
        if not buffer and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        lines.append(buffer + raw)
        buffer = ""
    if buffer:
        lines.append(buffer)
    return lines


def shell_commands(line: str) -> list[list[str]]:
    """Simple commands of a shell line split at && || ; (enough for these files)."""
    words = shlex.split(line, comments=True)
    commands, current = [], []
    for w in words:
        if w in ("&&", "||", ";"):
            commands.append(current)
            current = []
        else:
            current.append(w)
    commands.append(current)
    return [c for c in commands if c]


def dockerfile_backendpick_commands(text: str) -> list[list[str]]:
    out = []
    for line in logical_lines(text):
        m = re.match(r"\s*RUN\s+(.*)", line)
        if not m:
            continue
        body = " ".join(w for w in m.group(1).split() if not w.startswith("--mount="))
        out += [c for c in shell_commands(body) if c[0] == "backendpick"]
    return out


def makefile_targets(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``VAR ?= value`` defaults and each target's recipe lines, variables not yet expanded."""
    variables: dict[str, str] = {}
    recipes: dict[str, list[str]] = {}
    current = None
    for line in logical_lines(text):
        if line.startswith("\t"):
            if current is not None:
                recipes[current].append(line.strip())
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(\?=|:=|=)\s*(.*)$", line)
        if m:
            variables[m.group(1)] = m.group(3).strip()
            current = None
            continue
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line)
        if m and not m.group(1).startswith("."):
            current = m.group(1)
            recipes[current] = []
        elif line.strip():
            current = None
    return variables, recipes


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: variables.get(m.group(1), ""), text)


def makefile_backendpick_commands(target: str, variables: dict[str, str] | None = None) -> list[list[str]]:
    defaults, recipes = makefile_targets((EXAMPLES / "Makefile").read_text())
    values = {**defaults, **(variables or {})}
    return [c for line in recipes[target] for c in shell_commands(expand(line, values)) if c[0] == "backendpick"]


def with_flags(argv: list[str], world: World, *, dry_run: bool) -> list[str]:
    """The same command against the world: --index-url for install/plan, --dry-run for install."""
    args = list(argv[1:])
    if args[0] in ("install", "plan"):
        args += ["--index-url", template_url(world)]
    if args[0] == "install" and dry_run:
        args.append("--dry-run")
    return args


@pytest.fixture(scope="module")
def app(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project copied as the Dockerfile does (WORKDIR /app, COPY pyproject.toml),
    with ``.venv`` (the Makefile's PYTHON) holding the example's stack, installed by plain pip."""
    app = tmp_path_factory.mktemp("example") / "app"
    app.mkdir()
    shutil.copy(EXAMPLES / "pyproject.toml", app / "pyproject.toml")
    venv = clone_venv(world.template_venv, app / ".venv")
    py = venv_python(venv)
    examples_conf(world)
    pip_from(world, py, "torch==2.6.0+cu124", "filelock", "typing-extensions", "torchvision==0.21.0+cu124",
             "xformers==0.0.29.post2", "flash-attn==2.7.4", "einops", "transformers", "accelerate", "safetensors", "tqdm",
             "numpy", indexes=["cu124", "bp-examples"])
    return app


# -- pyproject.toml ---------------------------------------------------------------------------------


def test_example_pyproject_loads() -> None:
    from backendpick.inputs import config, requirements
    from backendpick.knowledge import facts

    settings = config.load(facts.load(), project_dir=EXAMPLES, env={})
    assert settings.backend.value == "auto"
    assert settings.index_url.value == "https://download.pytorch.org/whl/{backend}"
    assert settings.cuda_compat.value == "strict"
    assert all("pyproject.toml" in s.source for s in (settings.backend, settings.index_url, settings.cuda_compat))
    wanted = requirements.gather((), (), settings.pyproject, ("audio",), ("dev",))
    names = [r.name for r in wanted.requirements]
    assert names[:8] == ["torch", "torchvision", "xformers", "flash-attn", "transformers", "accelerate", "safetensors", "tqdm"]
    assert set(names[8:]) == {"torchaudio", "pytest"}
    # The comment in the Dockerfile says what the example's stack is: check it is true.
    assert {"torch", "torchvision", "xformers"} <= set(settings.backend_packages)
    assert "flash-attn" in settings.no_build_isolation


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_uses_an_explicit_backend_matching_its_image() -> None:
    text = (EXAMPLES / "Dockerfile").read_text()
    commands = dockerfile_backendpick_commands(text)
    assert [c[1] for c in commands] == ["install", "verify"]
    install = commands[0]
    assert "--backend" in install, install
    backend = install[install.index("--backend") + 1]
    assert backend not in ("auto", ""), "a docker build sees no GPU: the backend must be explicit"
    image = re.search(r"^FROM\s+nvidia/cuda:(\d+)\.(\d+)", text, flags=re.MULTILINE)
    assert image and backend == f"cu{image.group(1)}{image.group(2)}", "the backend should match the CUDA image"
    # Both commands work on the venv the image creates.
    venv_python_path = re.search(r"python3 -m venv (\S+)", text).group(1) + "/bin/python"
    assert all(c[c.index("--python") + 1] == venv_python_path for c in commands)


def test_dockerfile_commands_run(world: World, app: Path, tmp_path: Path) -> None:
    """docker build: no GPU; install --dry-run and verify against the world succeed."""
    env = bp_env(world, no_gpu(tmp_path), examples_conf(world), CUDA_VERSION="12.4.1")
    fresh = str(venv_python(world.new_venv(tmp_path)))  # the image's new /opt/venv
    built = str(venv_python(app / ".venv"))  # the same venv after install: the example's stack
    for argv in dockerfile_backendpick_commands((EXAMPLES / "Dockerfile").read_text()):
        py = fresh if argv[1] == "install" else built
        argv = [py if a == "/opt/venv/bin/python" else a for a in argv]
        proc = backendpick(*with_flags(argv, world, dry_run=True), env=env, cwd=app)
        assert proc.returncode == 0, out(proc)
        if argv[1] == "install":
            lines = proc.stdout.splitlines()
            assert any(world.url("cu124") in line and "torch<2.10,>=2.5" in line for line in lines), out(proc)
            assert any("--no-build-isolation" in line for line in lines), out(proc)
            assert "flash-attn" in proc.stdout, out(proc)
            assert any("transformers>=4.40" in line for line in lines), out(proc)
            assert "download.pytorch.org" not in proc.stdout + proc.stderr
        else:
            assert proc.stdout.splitlines()[-1] == "ok: the GPU stack is consistent", out(proc)


# -- the README's first commands -------------------------------------------------------------------

# A backend index nobody answers on (the discard port): the packaged release table stands in.
NOWHERE = "http://127.0.0.1:9/{backend}/simple"


def readme_first_command() -> list[str]:
    """The backendpick command of the README's first code block, as the README writes it."""
    block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S).group(1)
    return next(c for c in shell_commands(block.splitlines()[0]) if c[0] == "backendpick")


@pytest.mark.parametrize("index", ["answers", "unreachable"])
def test_readme_first_commands_keep_their_promises(world: World, tmp_path: Path, index: str) -> None:
    """On a machine without a GPU, wherever the backend index is: with ``--backend cu124`` the
    command prints the plan for a CUDA 12.4 machine; without it (detection: CPU) it stops with
    exit 3 and says why, xformers having no CPU build (issue 20 item 5)."""
    argv = readme_first_command()
    assert argv == ["backendpick", "install", "--dry-run", "--backend", "cu124", "--project", "examples"]
    template = template_url(world) if index == "answers" else NOWHERE
    env = bp_env(world, no_gpu(tmp_path), examples_conf(world), BACKENDPICK_INDEX_URL=template,
                 VIRTUAL_ENV=str(world.new_venv(tmp_path)))
    planned = backendpick(*argv[1:], env=env, cwd=REPO)
    assert planned.returncode == 0, out(planned)
    lines = planned.stdout.splitlines()
    assert any(template.replace("{backend}", "cu124") in line and "xformers" in line for line in lines), out(planned)
    assert any("--no-build-isolation" in line and "flash-attn" in line for line in lines), out(planned)
    assert any("transformers>=4.40" in line for line in lines), out(planned)
    i = argv.index("--backend")
    detected = backendpick(*argv[1:i], *argv[i + 2:], env=env, cwd=REPO)
    assert detected.returncode == 3, out(detected)
    assert detected.stdout == "", out(detected)
    error = detected.stderr.splitlines()[0]
    assert error.startswith("error: not published for cpu") and "xformers" in error, out(detected)


# -- Makefile ----------------------------------------------------------------------------------


def test_makefile_targets_parse_as_make_sees_them() -> None:
    variables, recipes = makefile_targets((EXAMPLES / "Makefile").read_text())
    assert variables == {"PYTHON": ".venv/bin/python", "BACKEND": "auto"}
    assert {"install", "plan", "verify", "restore"} <= set(recipes)
    assert makefile_backendpick_commands("install") == [
        ["backendpick", "install", "--python", ".venv/bin/python", "--backend", "auto"]]
    assert makefile_backendpick_commands("verify") == [["backendpick", "verify", "--python", ".venv/bin/python"]]
    make = shutil.which("make")
    if make is None:
        return
    for target in ("install", "plan", "verify", "restore"):
        proc = subprocess.run([make, "-n", "-f", str(EXAMPLES / "Makefile"), target], check=False, capture_output=True, text=True,
                              cwd=EXAMPLES, timeout=30)
        assert proc.returncode == 0, proc.stderr
        printed = [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("backendpick")]
        assert printed == makefile_backendpick_commands(target), target


def test_makefile_commands_run_on_a_gpu_dev_box(world: World, app: Path, tmp_path: Path) -> None:
    env = bp_env(world, nvidia(tmp_path), examples_conf(world))
    for target in ("plan", "install", "verify"):
        for argv in makefile_backendpick_commands(target):
            proc = backendpick(*with_flags(argv, world, dry_run=True), env=env, cwd=app)
            assert proc.returncode == 0, (target, out(proc))
            if target == "plan":
                assert "backend: cu124" in proc.stdout and "decided-by: detected" in proc.stdout, out(proc)
            if target == "verify":
                assert proc.stdout.splitlines()[-1] == "ok: the GPU stack is consistent", out(proc)
    # `make install BACKEND=cu124` (the Makefile's own comment) works too.
    for argv in makefile_backendpick_commands("install", {"BACKEND": "cu124"}):
        proc = backendpick(*with_flags(argv, world, dry_run=True), env=env, cwd=app)
        assert proc.returncode == 0, out(proc)


# -- plan --format sh ----------------------------------------------------------------------------


def test_plan_sh_has_no_credentials(world: World, tmp_path: Path) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    secret_template = template_url(world).replace("http://", "http://alice:s3cr3t-t0ken@")
    proc = backendpick("plan", "--format", "sh", "--backend", "cu124", "--index-url", secret_template,
                       "torch==2.5.1", "torchvision", "tqdm", env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    script = proc.stdout
    assert "s3cr3t" not in script and "alice" not in script
    # The URL without user information: a "***" user name would keep pip from reading .netrc.
    assert "***@" not in script and " --index-url http://127.0.0.1:" in script
    assert "127.0.0.1 want them: put them in ~/.netrc" in script  # the comment that says how
    check = subprocess.run(["sh", "-n"], input=script, check=False, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_plan_sh_installs_what_install_installs(world: World, tmp_path: Path) -> None:
    """The example project, as the Dockerfile would install it: all four phases (backend,
    build-requirements, build of flash-attn, rest with the stack pinned; accelerate depends on
    torch). install then finds the script's environment to be its own: nothing to do.
    (tests/integration/test_build_phase.py compares a script's and an install's environments
    package for package.)"""
    conf = examples_conf(world)
    env = bp_env(world, no_gpu(tmp_path), conf)
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(EXAMPLES / "pyproject.toml", proj / "pyproject.toml")
    by_script = venv_python(world.new_venv(tmp_path))

    # Planned for another venv, run for this one: PYTHON chooses the interpreter.
    plan = backendpick("plan", "--format", "sh", "--backend", "cu124", "--python", venv_python(world.template_venv),
                       "--index-url", template_url(world), env=env, cwd=proj)
    assert plan.returncode == 0, out(plan)
    script = tmp_path / "install.sh"
    script.write_text(plan.stdout)
    check = subprocess.run(["sh", "-n", str(script)], check=False, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr

    # The script runs where backendpick is not installed: the user's pip config, no PYTHONPATH.
    run_env = pip_env(world) | {"PIP_CONFIG_FILE": str(conf), "PYTHON": str(by_script),
                                "BACKENDPICK_CONSTRAINTS": str(tmp_path / "constraints.txt")}
    ran = subprocess.run(["sh", str(script)], env=run_env, cwd=proj, check=False, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    proc = backendpick("install", "--backend", "cu124", "--python", by_script, "--index-url", template_url(world),
                       env=env, cwd=proj)
    assert proc.returncode == 0, out(proc)
    assert proc.stdout.splitlines()[-1].startswith("nothing to do: the environment already matches the plan for cu124"), out(proc)
    names = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() for line in freeze(by_script, world)}
    assert {"torch", "flash-attn", "accelerate", "transformers"} <= names, names
