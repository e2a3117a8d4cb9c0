"""End to end: ``backendpick plan`` and ``install`` with real pip against the fake world.

The harness (``Lab``) is tests/support/lab.py; the session's world and lab are fixtures of
tests/conftest.py. The module-scoped ``cu124_stack`` fixture does the expensive work once (a dry
run, the first install, a re-run) and several tests read its results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.engines import ENGINES
from tests.support.lab import FAMILY, Lab, Result, ok, py
from tests.support.world import FLASH_ATTN_VERSION, PYPI_PLAIN, TORCHVISION_FOR_TORCH, XFORMERS_FOR_TORCH

pytestmark = pytest.mark.integration


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untouched(lab: Lab) -> Path:
    """A fresh venv that tests only plan for (or dry-run into): nothing installs into it."""
    return lab.new_venv()


STACK = ("torch==2.5.1", "torchvision", "xformers", "flash-attn", "tqdm")
BUILD_HOST = "cuda124-devel"


@dataclass
class StackRun:
    engine: str
    venv: Path
    dry: Result
    first: Result
    first_log: list
    versions: dict
    rerun: Result
    rerun_log: list
    logs_after_first: list
    logs_after_rerun: list


@pytest.fixture(scope="module", params=ENGINES)
def cu124_stack(lab: Lab, request: pytest.FixtureRequest) -> Iterator[StackRun]:
    """Dry run, first install, re-run of the whole cu124 stack in one fresh venv, with each
    installer (pip, and uv where it is installed)."""
    venv = lab.new_venv()
    args = ("--python", py(venv), "--backend", "cu124", "--installer", request.param, *STACK)
    # A wheel cache per engine: each builds flash-attn itself.
    env = lab.env(BUILD_HOST, BACKENDPICK_CACHE_DIR=str(venv.parent / f"wheels-{request.param}"))
    dry = lab.run("install", "--dry-run", *args, env=env)
    ok(dry)
    lab.server.clear_log()
    first = lab.run("install", "-v", *args, env=env)  # -v: the commands it runs
    ok(first)
    first_log = lab.server.log
    versions = lab.versions(venv)
    logs_dir = venv / ".backendpick" / "logs"
    logs_after_first = sorted(p.name for p in logs_dir.iterdir())
    lab.server.clear_log()
    rerun = lab.run("install", "-v", *args, env=env)
    rerun_log = lab.server.log
    logs_after_rerun = sorted(p.name for p in logs_dir.iterdir())
    yield StackRun(request.param, venv, dry, first, first_log, versions, rerun, rerun_log, logs_after_first, logs_after_rerun)


# -- 1. explicit backend: the whole stack on cu124 --------------------------------------------------


def test_explicit_cu124_installs_every_member_from_cu124(cu124_stack: StackRun) -> None:
    v = cu124_stack.versions
    assert v["torch"] == "2.5.1+cu124"
    assert v["torchvision"] == f"{TORCHVISION_FOR_TORCH['2.5.1']}+cu124"
    assert v["xformers"] == XFORMERS_FOR_TORCH["2.5.1"]  # the build pinned to torch 2.5.1
    assert v["flash-attn"] == FLASH_ATTN_VERSION
    assert v["tqdm"] == PYPI_PLAIN["tqdm"]
    assert cu124_stack.first.phases_run == ["backend", "build-requirements", "build", "rest"]
    # flash-attn's build requirements served its build only: none of them is in the environment
    # (einops is also one of its runtime dependencies), all are in the state folder's build env.
    assert not {"setuptools", "wheel", "packaging", "psutil", "ninja"} & set(v), v
    build_env = cu124_stack.venv / ".backendpick" / "build-env"
    assert (build_env / "setuptools").is_dir() and list(build_env.glob("ninja-*.dist-info"))
    # Plain lines for logs: no colour, no spinner control codes when stdout is not a terminal.
    assert "\x1b" not in cu124_stack.first.output and "\r" not in cu124_stack.first.output


def test_explicit_cu124_members_really_come_from_the_cu124_index(lab: Lab, cu124_stack: StackRun) -> None:
    files = {r.name: r.index for r in cu124_stack.first_log if r.kind == "file" and r.status == 200}
    for name, index in files.items():
        if name.split("-", 1)[0] in ("torch", "torchvision", "xformers"):
            assert index == "cu124", (name, index)
    assert files[f"tqdm-{PYPI_PLAIN['tqdm']}-py3-none-any.whl"] == "pypi"
    # The xformers package on disk is cu124's copy (the world tags each copy with its index).
    assert lab.python(cu124_stack.venv, "import xformers, torch, torchvision; "
                      "print(xformers.__index__, torch.__index__, torchvision.__index__)") == "cu124 cu124 cu124"


def test_explicit_cu124_hostile_index_never_asked_for_backend_packages(cu124_stack: StackRun) -> None:
    log = cu124_stack.first_log
    hostile_pages = [r.name for r in log if r.index == "hostile" and r.kind == "project"]
    pypi_pages = [r.name for r in log if r.index == "pypi" and r.kind == "project"]
    assert not [r for r in log if r.index == "hostile" and r.kind == "file"]
    assert not [r for r in log if r.index == "pypi" and r.kind == "file" and r.name.split("-", 1)[0] in FAMILY]
    if cu124_stack.engine == "pip":
        # pip does not even read their pages: installed, pinned packages are not looked up.
        assert not set(hostile_pages) & set(FAMILY), hostile_pages
        assert not set(pypi_pages) & set(FAMILY), pypi_pages
    else:
        # uv resolves the whole tree in the later phases and reads torch's page on the user's
        # indexes too; the constraints (torch==2.5.1+cu124) let it take nothing from there.
        assert [r for r in log if r.kind == "project" and r.name == "torch" and r.index == "cu124"]
    # The ordinary packages still follow the user's pip configuration, extra index included.
    assert "tqdm" in pypi_pages and "tqdm" in hostile_pages


def test_flash_attn_is_built_against_the_installed_torch(lab: Lab, cu124_stack: StackRun) -> None:
    built = lab.python(cu124_stack.venv, "import flash_attn; print(flash_attn.torch_version, flash_attn.torch_cuda)")
    assert built == "2.5.1+cu124 12.4"
    # ... with --no-build-isolation, after the build requirements, pinned by constraints.
    lines = cu124_stack.first.stdout.splitlines()
    block = lines[lines.index("phase build: flash-attn") + 1 :]
    block = block[: next(i for i, line in enumerate(block) if line.startswith("phase build: done"))]
    pip_lines = [line for line in block if line.startswith("  $ ") and " -m pip " in line]
    if cu124_stack.engine == "pip":
        assert pip_lines and all("--no-build-isolation" in line.split() and "-c" in line.split() for line in pip_lines)
    else:  # uv builds the sdist file itself, without isolation or uv's cache: no pip (issue 22 item 3)
        uv_lines = [line for line in block if line.startswith("  $ ") and " build --no-config " in line]
        assert uv_lines and all({"--no-build-isolation", "--no-cache"} <= set(line.split()) for line in uv_lines)
        assert not pip_lines, block
    order = cu124_stack.first.phases_run
    assert order.index("build-requirements") < order.index("build") and order.index("backend") < order.index("build")
    # What changed, as uv says it: the build with the torch it was built against and its time.
    changed = [line for line in lines if line[:2] in ("+ ", "- ", "~ ")]
    assert "+ torch 2.5.1+cu124" in changed, cu124_stack.first
    assert any(line.startswith(f"+ flash-attn {FLASH_ATTN_VERSION} (built against 2.5.1+cu124, ") and line.endswith(" s, cached)")
               for line in changed), cu124_stack.first


# -- 4. a re-run on the finished environment ------------------------------------------------------


def test_rerun_on_finished_env_runs_no_pip(cu124_stack: StackRun) -> None:
    rerun = cu124_stack.rerun
    ok(rerun)
    assert "nothing to do" in rerun.stdout
    assert rerun.commands == [] and rerun.phases_run == []
    # No pip ran: no new phase log, no file or page fetched by pip (only backendpick's own look
    # at the torch pages of the backend index may remain).
    assert cu124_stack.logs_after_rerun == cu124_stack.logs_after_first
    # Nothing asked twice: the environment matches what the last install recorded, so no index
    # is asked at all, not even the backend index's torch page.
    assert cu124_stack.rerun_log == []
    assert (cu124_stack.venv / ".backendpick" / "last-install.json").is_file()
    print(f"first install {cu124_stack.first.seconds:.2f}s, re-run {cu124_stack.rerun.seconds:.2f}s")


def test_plan_on_finished_env_marks_every_phase_skipped(lab: Lab, cu124_stack: StackRun) -> None:
    res = lab.run("plan", "--json", "--python", py(cu124_stack.venv), "--backend", "cu124", *STACK, machine=BUILD_HOST)
    ok(res)
    phases = res.json()["phases"]
    assert [p["name"] for p in phases] == ["backend", "build-requirements", "build", "rest"]
    assert all(p["skip"] for p in phases), phases
    dry = lab.run("install", "--dry-run", "--python", py(cu124_stack.venv), "--backend", "cu124", *STACK,
                  machine=BUILD_HOST)
    assert dry.returncode == 0 and dry.stdout.strip() == "", dry


def test_plan_with_one_new_requirement_runs_only_the_rest_phase(lab: Lab, cu124_stack: StackRun) -> None:
    res = lab.run("plan", "--json", "--python", py(cu124_stack.venv), "--backend", "cu124", *STACK, "numpy",
                  machine=BUILD_HOST)
    ok(res)
    active = [p["name"] for p in res.json()["phases"] if not p["skip"]]
    assert active == ["rest"]
    rest = res.json()["phases"][-1]
    assert "numpy" in rest["requirements"]
    # The rest phase pins the stack that is installed (with its local tags).
    assert "torch==2.5.1+cu124" in rest["constraints"]


# -- 5. the dry run prints exactly what install runs ----------------------------------------------


def test_dry_run_prints_exactly_the_commands_install_runs(cu124_stack: StackRun) -> None:
    assert cu124_stack.dry.dry_run_commands == cu124_stack.first.commands


def test_dry_run_matches_install_outside_the_build_phase(cu124_stack: StackRun) -> None:
    dry, ran = cu124_stack.dry.dry_run_commands, cu124_stack.first.commands
    assert dry[:2] == ran[:2]  # backend, build-requirements
    assert dry[-1] == ran[-1]  # rest
    assert len(dry) >= 4 and "--index-url" in dry[0]


def test_dry_run_changes_nothing(lab: Lab, untouched: Path) -> None:
    venv = untouched
    before = lab.versions(venv)
    lab.server.clear_log()
    res = lab.run("install", "--dry-run", "--python", py(venv), "--backend", "cu124", *STACK, machine=BUILD_HOST)
    ok(res)
    assert lab.versions(venv) == before
    # Only the plan's resolution of the ordinary requirements reads files (pip before 23.3 downloads
    # wheels even in a dry run; newer pip reads their PEP 658 metadata), from the user's own index:
    # nothing of the backend indexes, nothing at all of the hostile one, and no backend package
    # from anywhere (the resolution offers them as stubs).
    fetched = [r for r in lab.server.log if r.kind in ("file", "metadata")]
    assert not [r for r in fetched if r.index != "pypi"], fetched
    assert not [r for r in fetched if r.name.split("-")[0].lower() in ("torch", "torchvision", "xformers")], fetched
    assert not (venv / ".backendpick").exists()  # no lock, snapshot, constraints or log either


# -- 2. auto never downgrades an installed GPU build ----------------------------------------------


def test_auto_without_gpu_keeps_the_installed_cu124(lab: Lab, cu124_stack: StackRun) -> None:
    res = lab.run("plan", "--json", "--python", py(cu124_stack.venv), *STACK, machine="none")
    ok(res)
    plan = res.json()
    assert plan["backend"] == "cu124"
    assert plan["decided_by"] == "installed"
    assert "--backend cpu" in plan["reason"]
    assert not [p for p in plan["phases"] if not p["skip"]], plan["phases"]


# -- 6. an ordinary package that depends on a backend package -------------------------------------


def test_transitive_backend_package_comes_from_the_backend_index(lab: Lab) -> None:
    venv = lab.new_venv()
    lab.server.clear_log()
    res = lab.run("install", "-v", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "vision-helper")
    ok(res)
    versions = lab.versions(venv)
    assert versions["torchvision"] == f"{TORCHVISION_FOR_TORCH['2.5.1']}+cu124"
    assert versions["torch"] == "2.5.1+cu124"
    assert versions["vision-helper"] == "1.0"
    # The plan found torchvision behind vision-helper: the backend phase installs it, no retry.
    assert "running again" not in res.stdout
    assert res.phases_run == ["backend", "rest"]
    backend_cmds = [c for c in res.commands if "--index-url" in c]
    assert "torchvision" in backend_cmds[-1].split()
    torchvision_files = [r.index for r in lab.server.log if r.kind in ("file", "metadata")
                         and r.name.startswith("torchvision-")]
    # The installed one is cu124's, and the only one fetched: the plan's resolution of
    # vision-helper offers torchvision to pip as a stub, on any pip (pip before 23.3 downloads
    # what it resolved even in a dry run); the hostile index serves no file at all.
    assert set(torchvision_files) == {"cu124"}, torchvision_files
    assert not [r for r in lab.server.log if r.index == "hostile" and r.kind in ("file", "metadata")]
    # Done is done: the re-run finds nothing to do, and reads no file at all.
    lab.server.clear_log()
    again = ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "vision-helper"))
    assert "nothing to do" in again.stdout and again.commands == []
    assert not [r for r in lab.server.log if r.kind == "file"]


def test_transitive_no_build_isolation_package_is_built_in_the_build_phase(lab: Lab) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "attn-helper",
                     machine=BUILD_HOST))
    # The plan found flash-attn behind attn-helper (pip stopped at its sdist, the name is enough).
    assert "running again" not in res.stdout
    assert res.phases_run[-3:] == ["build-requirements", "build", "rest"]
    versions = lab.versions(venv)
    assert versions["attn-helper"] == "1.0" and versions["flash-attn"] == FLASH_ATTN_VERSION
    assert versions["torch"] == "2.5.1+cu124"
    built = lab.python(venv, "import flash_attn; print(flash_attn.torch_version)")
    assert built == "2.5.1+cu124"


# -- 7. switching backend -------------------------------------------------------------------------


def test_switching_cpu_env_to_cu124_removes_then_reinstalls_everything(lab: Lab) -> None:
    venv = lab.new_venv()
    setup = lab.pip(
        venv, "install", "--index-url", lab.world.url("cpu"), "torch==2.5.1", "torchvision==0.20.1",
        env=lab.env(PIP_CONFIG_FILE=os.devnull),
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert lab.versions(venv)["torch"] == "2.5.1+cpu"

    plan = lab.run("plan", "--json", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "torchvision")
    ok(plan)
    phases = plan.json()["phases"]
    assert [p["name"] for p in phases] == ["remove", "backend"]
    assert set(phases[0]["requirements"]) == {"torch", "torchvision"}

    res = lab.run("install", "-v", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "torchvision")
    ok(res)
    assert res.phases_run == ["remove", "backend"]
    assert res.commands == [p["command"] for p in phases]
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cu124"
    assert versions["torchvision"] == "0.20.1+cu124"
    assert not [n for n, v in versions.items() if v.endswith("+cpu")]
    # -v streams pip's own output.
    streamed = [line[4:].strip() for line in res.stdout.splitlines() if line.startswith("  | ")]
    assert "Successfully uninstalled torch-2.5.1+cpu" in streamed
    assert "Successfully installed torch-2.5.1+cu124 torchvision-0.20.1+cu124" in streamed


# -- 3. requirements from pyproject.toml and from requirements files ------------------------------


PYPROJECT = """\
[project]
name = "demo"
version = "0.1"
dependencies = ["torch==2.5.1", "tqdm"]

[project.optional-dependencies]
vision = ["torchvision"]
unused = ["requests-lite"]

[dependency-groups]
dev = ["numpy", {include-group = "lint"}]
lint = ["einops"]
never = ["psutil"]

[tool.backendpick]
backend = "cpu"
"""


def test_pyproject_dependencies_with_extra_and_group(lab: Lab, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    venv = lab.new_venv()
    args = ("--python", py(venv), "--project", str(project), "--extra", "vision", "--group", "dev")
    dry = ok(lab.run("install", "--dry-run", *args))
    res = ok(lab.run("install", "-v", *args))
    # 5. without a build phase, the dry run is exactly what install ran
    assert dry.dry_run_commands == res.commands and len(res.commands) == 2
    assert "pyproject.toml" in res.stdout  # who decided the backend
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu"
    assert versions["torchvision"] == "0.20.1+cpu"
    for name in ("tqdm", "numpy", "einops"):
        assert versions[name] == PYPI_PLAIN[name]
    assert "requests-lite" not in versions and "psutil" not in versions


def test_pyproject_in_the_working_directory_is_the_default(lab: Lab, untouched: Path, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    venv = untouched
    res = lab.run("plan", "--json", "--python", py(venv), "--group", "lint", cwd=tmp_path)
    ok(res)
    plan = res.json()
    assert plan["backend"] == "cpu"
    reqs = [r for p in plan["phases"] for r in p["requirements"]]
    assert set(reqs) == {"torch==2.5.1", "tqdm", "einops"}


def test_requirements_file_with_comments_continuations_and_nested_files(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("# shared\nnumpy  # numerics\n")
    (tmp_path / "requirements.txt").write_text(
        "# the stack\n"
        "torch==2.5.1 \\\n"
        "    ; python_version >= '3.9'\n"
        "\n"
        "-r base.txt\n"
        "tqdm\t# progress bars\n"
        "torchvision  # from the backend index\n"
    )
    venv = lab.new_venv()
    res = ok(lab.run("install", "--json", "--python", py(venv), "--backend", "cpu",
                     "-r", str(tmp_path / "requirements.txt")))
    # --json: stdout is one document (progress goes to stderr)
    report = res.json()
    assert [r["name"] for r in report["ran"]] == ["backend", "rest"]
    assert "phase backend:" in res.stderr
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu"
    assert versions["torchvision"] == "0.20.1+cpu"
    assert versions["numpy"] == PYPI_PLAIN["numpy"]
    assert versions["tqdm"] == PYPI_PLAIN["tqdm"]
    backend, rest = report["phases"]
    assert backend["requirements"] == ["torch==2.5.1; python_version >= \"3.9\"", "torchvision"]
    assert rest["requirements"] == ["numpy", "tqdm"]


