"""``detect`` reports the backend ``plan`` chooses (issue 20 item 2): both go through the one
selection (selection/selector.py), so on each fake machine the backend, who decided and why are
the same, for a project's torch, from the same indexes: NVIDIA driver levels, AMD, no GPU, a GPU
torch already installed, and a pin that only the project's dependencies state (which detect, with
a selection of its own, used to ignore). Where plan stops (exit 3), detect says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.bp_helpers import pip_from, private_index, project
from tests.support.dists import make_torch
from tests.support.fakehw import FakeMachine
from tests.support.hermetic import subprocess_env
from tests.support.lab import Lab, ok, py
from tests.support.world import BACKENDS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def template(lab: Lab) -> str:
    """The world's backend indexes plus a ROCm 6.2 one (torch 2.5.1), under names of their own."""
    for backend in BACKENDS:
        dest = lab.server.root / f"agree-{backend}"
        if not dest.exists():
            shutil.copytree(lab.server.index_dir(backend), dest)
    make_torch(lab.server.index_dir("agree-rocm6.2"), "2.5.1", "rocm6.2")
    return lab.server.base_url + "/agree-{backend}/simple"


@pytest.fixture(scope="module")
def conf(lab: Lab) -> Path:
    """The user's pip.conf: the world's pypi with a package whose own requirement pins torch."""
    return private_index(lab.world, "bp-agree", [("wants-older-torch", "1.0", {"requires": ["torch<2.6"]})])


def _env(lab: Lab, machine: str | FakeMachine, template: str, conf: Path) -> dict:
    if isinstance(machine, str):
        return lab.env(machine, pip_conf=conf, BACKENDPICK_INDEX_URL=template)
    return subprocess_env(conf, machine=machine, home=lab.home, cache=lab.cache,
                          extra={"BACKENDPICK_INDEX_URL": template})


def _both(lab: Lab, env: dict, proj: Path, venv: Path, code: int = 0):
    detect = ok(lab.run("detect", "--json", "--python", py(venv), env=env, cwd=proj)).json()
    plan = ok(lab.run("plan", "--json", "--python", py(venv), env=env, cwd=proj), code)
    return detect, plan


CASES = {
    # machine, dependencies, the backend both choose
    "driver 550 (CUDA 12.4)": ("nvidia-550-a100", ["torch", "torchvision"], "cu124"),
    "driver 560 (CUDA 12.6)": ("nvidia-560-a100", ["torch"], "cu126"),
    # cu126 has no torch below 2.6: the dependency's pin moves the choice to cu124.
    "a dependency's pin": ("nvidia-560-a100", ["torch", "wants-older-torch"], "cu124"),
    "no GPU": ("none", ["torch", "tqdm"], "cpu"),
    "AMD MI300X (ROCm 6.2.4 runtime)": ("amd-mi300x", ["torch"], "rocm6.2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_detect_reports_what_plan_chooses(lab: Lab, template: str, conf: Path, tmp_path: Path, case: str) -> None:
    machine, deps, backend = CASES[case]
    if machine.startswith("amd"):
        machine = FakeMachine.from_scenario(tmp_path / "machine", machine)
    proj = project(tmp_path / "proj", deps)
    detect, plan = _both(lab, _env(lab, machine, template, conf), proj, lab.new_venv())
    plan = plan.json()
    assert (detect["backend"], detect["decided_by"], detect["reason"]) == \
        (plan["backend"], plan["decided_by"], plan["reason"]) == (backend, "detected", plan["reason"])
    assert detect["offers_source"] == plan["offers_source"] == "index"


def test_a_gpu_torch_installed_is_kept_by_both(lab: Lab, template: str, conf: Path, tmp_path: Path) -> None:
    """No GPU visible now, CUDA torch installed: neither downgrades it to CPU."""
    venv = lab.new_venv()
    pip_from(lab.world, py(venv), "torch==2.5.1+cu124", "filelock", "typing-extensions", indexes=["cu124"])
    detect, plan = _both(lab, _env(lab, "none", template, conf), project(tmp_path / "proj", ["torch"]), venv)
    plan = plan.json()
    assert (detect["backend"], detect["decided_by"], detect["reason"]) == \
        (plan["backend"], plan["decided_by"], plan["reason"])
    assert (plan["backend"], plan["decided_by"]) == ("cu124", "installed")


def test_where_plan_stops_detect_says_why(lab: Lab, template: str, conf: Path, tmp_path: Path) -> None:
    """The RTX 5090 needs cu128, which has no torch below 2.7: plan stops with exit 3, and
    detect reports the same decision and plan's reason to stop."""
    proj = project(tmp_path / "proj", ["torch", "wants-older-torch"])
    detect, plan = _both(lab, _env(lab, "nvidia-570-rtx5090", template, conf), proj, lab.new_venv(), code=3)
    error = next(line for line in plan.stderr.splitlines() if line.startswith("error: "))[len("error: "):]
    assert detect["backend"] == "cpu" and detect["unserved"] == ["NVIDIA GeForce RTX 5090"]
    assert f"plan and install stop here (exit 3): {error}" in detect["warnings"]
