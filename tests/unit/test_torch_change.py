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


def _plan(tmp_path: Path, reqs, installed, backend="cu124") -> plan_mod.Plan:
    target = Target(python=Path("/env/bin/python"), prefix=Path("/env"), version=(3, 11, 7), markers=LINUX,
                    tags=("py3-none-any",), pip_version="24.0", purelib=Path("/env/lib/python3.11/site-packages"),
                    installed={names.normalize(d.name): d for d in installed}, is_venv=True)
    return planner.make_plan(
        decision=Decision(Backend.parse(backend), "--backend", "chosen by --backend"),
        requirements=[Requirement(r) for r in reqs], settings=config.load(FACTS, project_dir=tmp_path, env={}),
        target=target, index_url=f"https://download.pytorch.org/whl/{backend}", offered=[],
        constraints_path=tmp_path / "constraints.txt", runner_python=sys.executable,
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
