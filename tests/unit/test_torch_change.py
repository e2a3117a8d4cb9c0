"""A plan that replaces torch replaces every installed build package with one built for the new
torch (issue 8): flash-attn compiled against the old torch fails with ``undefined symbol``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from backendpick.inputs import config
from backendpick.knowledge import facts as facts_mod
from backendpick.model import names, plan as plan_mod
from backendpick.model.backend import Backend
from backendpick.model.choice import Decision
from backendpick.model.environment import Installed, Target
from backendpick.planning import planner

FACTS = facts_mod.load()
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11", "platform_machine": "x86_64"}


def _plan(tmp_path: Path, reqs, installed, backend="cu124", torch_build=None) -> plan_mod.Plan:
    target = Target(python=Path("/env/bin/python"), prefix=Path("/env"), version=(3, 11, 7), markers=LINUX,
                    tags=("py3-none-any",), pip_version="24.0", purelib=Path("/env/lib/python3.11/site-packages"),
                    installed={names.normalize(d.name): d for d in installed}, is_venv=True)
    return planner.make_plan(
        decision=Decision(Backend.parse(backend), "--backend", "chosen by --backend"),
        requirements=[Requirement(r) for r in reqs], settings=config.load(FACTS, project_dir=tmp_path, env={}),
        target=target, index_url=f"https://download.pytorch.org/whl/{backend}", offered=[],
        constraints_path=tmp_path / "constraints.txt", runner_python=sys.executable,
        torch_build=Backend.parse(torch_build) if torch_build else None,
    )


INSTALLED = (Installed("torch", "2.5.1+cu124", ("filelock",)), Installed("filelock", "3.16.1"),
             Installed("flash-attn", "2.7.4", ("torch",)), Installed("mamba-ssm", "2.2.4", ("torch",)),
             Installed("setuptools", "75.0"), Installed("ninja", "1.11.1"), Installed("packaging", "24.0"),
             Installed("wheel", "0.45.0"), Installed("einops", "0.8.0"))


def _phases(plan):
    return {p.name: p for p in plan.phases}


@pytest.mark.parametrize(
    ("reqs", "backend"),
    [
        (["torch==2.6.0", "flash-attn"], "cu124"),  # another torch version
        (["torch"], "cu121"),  # a backend switch, build packages not even named
    ],
)
def test_a_torch_change_removes_and_rebuilds_every_installed_build_package(tmp_path, reqs, backend):
    phases = _phases(_plan(tmp_path, reqs, INSTALLED, backend))
    assert {"flash-attn", "mamba-ssm"} <= set(phases["remove"].requirements)
    build = phases["build"]
    assert build.skip is None
    assert {names.normalize(Requirement(r).name) for r in build.requirements} >= {"flash-attn", "mamba-ssm"}
    # What the user did not name comes back at the version that was installed.
    assert "mamba-ssm==2.2.4" in build.requirements
    if "flash-attn" in reqs:
        assert "flash-attn" in build.requirements


def test_torch_kept_keeps_the_builds(tmp_path):
    phases = _phases(_plan(tmp_path, ["torch==2.5.1", "flash-attn"], INSTALLED))
    assert "remove" not in phases
    assert phases["build"].skip == "already installed"


# PyPI's untagged torch is the CUDA build its torch/version.py names (2.7.1: CUDA 12.6), with
# PyPI's companions built for it.
PYPI = (Installed("torch", "2.7.1", ("filelock", "triton==3.3.1")), Installed("filelock", "3.16.1"),
        Installed("torchvision", "0.22.1", ("torch==2.7.1",)), Installed("triton", "3.3.1"))


@pytest.mark.parametrize("reqs", [["einops"], ["torch", "torchvision", "einops"]])
def test_pypi_torch_built_for_the_requested_backend_stays(tmp_path, reqs):
    """Keep what already satisfies the request, whoever installed it (issue 18, expectation 3):
    no remove phase, nothing of the family installed again from the backend index."""
    phases = _phases(_plan(tmp_path, reqs, PYPI, "cu126", torch_build="cu126"))
    assert "remove" not in phases
    if "torch" in reqs:
        assert phases["backend"].skip == "already installed for cu126"


@pytest.mark.parametrize("backend", ["cu128", "cpu"])
def test_pypi_torch_built_for_another_backend_is_replaced(tmp_path, backend):
    phases = _phases(_plan(tmp_path, ["einops"], PYPI, backend, torch_build="cu126"))
    assert set(phases["remove"].requirements) == {"torch", "torchvision", "triton"}
    assert set(phases["backend"].requirements) == {"torch", "torchvision", "triton"}


def test_untagged_builds_whose_build_is_unknown_are_replaced_as_before(tmp_path):
    # No build read (a torch no index serves: the pipeline passes none), or an untagged
    # torchvision beside an index's tagged torch: PyPI's torchvision may be for another CUDA.
    assert "remove" in _phases(_plan(tmp_path, ["einops"], PYPI, "cu126"))
    beside_index = (Installed("torch", "2.7.1+cu126"), *PYPI[1:])
    assert set(_phases(_plan(tmp_path, ["einops"], beside_index, "cu126", torch_build="cu126"))["remove"].requirements) \
        == {"torch", "torchvision", "triton"}


def test_installed_backend_mismatch_of_an_untagged_build() -> None:
    cu126, cu128, cpu = Backend.parse("cu126"), Backend.parse("cu128"), Backend.parse("cpu")
    pypi = Installed("torch", "2.7.1")
    assert not plan_mod.installed_backend_mismatch(pypi, cu126, "linux", cu126)
    assert plan_mod.installed_backend_mismatch(pypi, cu128, "linux", cu126)
    assert plan_mod.installed_backend_mismatch(pypi, cpu, "linux", cu126)
    assert not plan_mod.installed_backend_mismatch(pypi, cpu, "darwin", cpu)  # macOS: PyPI's is the CPU build
    assert plan_mod.installed_backend_mismatch(pypi, cu126, "linux")  # build unknown: replaced as before
    assert not plan_mod.installed_backend_mismatch(pypi, cpu, "darwin")
    assert plan_mod.installed_backend_mismatch(Installed("torch", "2.7.1+cu128"), cu126, "linux", cu126)
