"""A plan and an install in words (execute/described.py, issue 20 item 5): made from the phases'
intents, with commands only where they run as printed, and install's changes as uv prints them."""

from __future__ import annotations

import shlex
from pathlib import Path

from backendpick.execute import described, engines
from backendpick.model.backend import Backend
from backendpick.model.environment import Installed
from backendpick.model.plan import AFTER_BACKEND, BACKEND_INDEX, PENDING, SOURCE, BuildStep, Phase, Plan
from backendpick.output import Change

RENDERER = engines.Renderer(engines.PIP, "/venv/bin/python", ("/venv/bin/python", "-m", "pip"))
PENDING_NOTE = ("flash-attn 2.7.4: chosen after the backend phase installs torch: a build in the wheel cache "
                "(/cache), else the prebuilt wheel from github, else a source build with pip wheel")


def _plan(*phases: Phase) -> Plan:
    return Plan(Backend.parse("cu124"), "chosen by --backend", "--backend", Path("/venv/bin/python"),
                "https://download.pytorch.org/whl/cu124", phases, Path("/venv/.backendpick/constraints.txt"))


def test_a_wheel_chosen_after_the_backend_phase_is_described_in_words_not_a_placeholder() -> None:
    """Before torch is installed the build phase's wheel is not known: no command holds a
    placeholder (``<wheel for flash-attn ...>``); the step says in words what will happen."""
    step = BuildStep("flash-attn", "flash-attn", how=PENDING, version="2.7.4", note=PENDING_NOTE)
    constraints = "/venv/.backendpick/constraints.txt"
    plan = _plan(
        Phase("backend", ("torch==2.5.1",), source=BACKEND_INDEX, index_url="https://download.pytorch.org/whl/cu124"),
        Phase("build", ("flash-attn",), no_build_isolation=True, steps=(step,), constraints_file=constraints,
              constraints=("torch==<installed by the backend phase>", "torchaudio<0"),
              constraints_written=AFTER_BACKEND),
        Phase("rest", ("tqdm",), constraints_file=constraints, wheels=(step,)),
    )
    assert "<wheel for flash-attn" in RENDERER.shown(plan.phases[1])  # what there was
    view = described.plan_view(plan, RENDERER)
    backend, build, rest = view.phases
    assert build.commands == ()
    assert build.steps == (PENDING_NOTE,)
    assert build.files == (f"{constraints} after the backend phase: pins torch at the version the backend phase "
                           "installs; blocks 1 package unless an earlier phase installs them",)
    assert rest.commands == (f"/venv/bin/python -m pip install -c {constraints} tqdm",)
    assert "added to this command once the backend phase has installed torch" in rest.steps[-1]
    for command in backend.commands + rest.commands:
        assert "<" not in command and shlex.split(command)
    assert [k for k, _ in view.header[:2]] == ["backend", "reason"]


def test_a_source_build_says_against_which_torch_and_its_pip_wheel_runs_as_printed() -> None:
    step = BuildStep("flash-attn==2.7.4", "flash-attn", how=SOURCE, version="2.7.4",
                     note="flash-attn 2.7.4: building from source: no prebuilt wheel", build_requirement="flash-attn==2.7.4",
                     wheel_dir="/venv/.backendpick/build/flash-attn", build_env={"MAX_JOBS": "2"},
                     limits="MAX_JOBS=2", find_links="/venv/.backendpick/build/flash-attn")
    phase = Phase("build", ("flash-attn==2.7.4",), no_build_isolation=True, steps=(step,))
    view = described.phase_view(_plan(phase), phase, RENDERER)
    assert view.steps == ("flash-attn 2.7.4: building from source: no prebuilt wheel",
                          "flash-attn 2.7.4: built from source against the torch the backend phase installs, with "
                          "MAX_JOBS=2; the wheel is then kept in the wheel cache")
    wheel, install = view.commands
    assert wheel.startswith("env MAX_JOBS=2 /venv/bin/python -m pip wheel ") and wheel.endswith(" flash-attn==2.7.4")
    assert install.endswith("-f /venv/.backendpick/build/flash-attn flash-attn==2.7.4")


def test_the_changes_of_an_install_as_uv_prints_them() -> None:
    before = {"torch": Installed("torch", "2.4.0"), "flash-attn": Installed("flash-attn", "2.6.1"),
              "tqdm": Installed("tqdm", "4.66.0"), "old": Installed("old", "1.0")}
    after = {"torch": Installed("torch", "2.5.1+cu124"), "flash-attn": Installed("flash-attn", "2.6.1"),
             "tqdm": Installed("tqdm", "4.66.0"), "numpy": Installed("numpy", "2.1.0")}
    builds = [{"name": "flash-attn", "how": SOURCE, "seconds": 6.2}]
    changes = described.changes(before, after, builds, "2.5.1+cu124")
    assert [c.line() for c in changes] == [
        "~ flash-attn 2.6.1 (built against 2.5.1+cu124, 6 s, cached)",
        "+ numpy 2.1.0",
        "- old 1.0",
        "- torch 2.4.0",
        "+ torch 2.5.1+cu124",
    ]  # tqdm is unchanged: not named
    assert changes[0] == Change("~", "flash-attn", "2.6.1", "built against 2.5.1+cu124, 6 s, cached")
    assert described.changes(after, after, [], "2.5.1+cu124") == []


def test_a_uv_source_build_says_which_sdist_it_builds_and_that_backendpick_downloads_it() -> None:
    """uv builds a file (issue 22 item 3): the plan names the sdist, its download, and the
    ``uv build`` line that runs as printed; no pip."""
    url = "https://mirror.example/files/flash_attn-2.7.4.tar.gz"
    step = BuildStep("flash-attn", "flash-attn", how=SOURCE, version="2.7.4", build_requirement="flash-attn==2.7.4",
                     wheel_dir="/venv/.backendpick/build/flash-attn", find_links="/venv/.backendpick/build/flash-attn",
                     sdist=url, sdist_file="/venv/.backendpick/build/flash-attn-sdist/flash_attn-2.7.4.tar.gz")
    plan = _plan(Phase("build", ("flash-attn",), no_build_isolation=True, steps=(step,)))
    uv = engines.Renderer(engines.UV, "/venv/bin/python", ("/venv/bin/python", "-m", "pip"), uv="/bin/uv")
    [build] = described.plan_view(plan, uv).phases
    assert any(f"uv builds its sdist {url}, downloaded first by backendpick to {step.sdist_file}" in s
               for s in build.steps), build.steps
    assert build.commands[0].startswith("/bin/uv build --no-config --python /venv/bin/python --wheel ")
    assert not any(" -m pip " in c for c in build.commands), build.commands
