"""The one constraint rule (planning/constraint_rule.py): install, the dry run and the shell export write the
same constraints for the same plan and the same environment."""

from __future__ import annotations

import dataclasses
from importlib import metadata
from pathlib import Path

import pytest

from backendpick.execute import shell_export
from backendpick.model.environment import Installed
from backendpick.model.plan import REST
from backendpick.planning import constraint_rule
from tests.unit.test_export import _run_constraints_step, make_plan, target


def _this_interpreter(names) -> dict:
    """The named distributions as installed in the interpreter that runs the script's step."""
    out = {}
    for name in names:
        try:
            out[name] = Installed(metadata.metadata(name)["Name"], metadata.version(name))
        except metadata.PackageNotFoundError:
            pass
    return out


@pytest.mark.allow_subprocess
def test_install_and_shell_export_write_the_same_constraints(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ["torch==2.5.1", "flash-attn", "tqdm"], constraints=["numpy<2"])
    # ``packaging`` stands in for an installed backend package; the real family is not installed here.
    plan = dataclasses.replace(plan, backend_names=("packaging", "torch", "xformers"))
    from_script = _run_constraints_step(shell_export.to_shell(plan), tmp_path)
    installed = _this_interpreter([*plan.backend_names, *plan.build_names])
    from_install = constraint_rule.after_backend(plan, target(*installed.values()), plan.user_constraints)
    assert from_script == from_install
    assert "packaging==" + metadata.version("packaging") in from_install and "torch<0" in from_install


def test_dry_run_shows_what_install_writes(tmp_path: Path) -> None:
    """With the stack installed, the rest phase's constraints as planned (what plan and
    --dry-run show) are the lines install writes after the backend phase."""
    stack = [Installed("torch", "2.5.1+cu124"), Installed("torchvision", "0.20.1+cu124"),
             Installed("flash-attn", "2.7.4")]
    plan = make_plan(tmp_path, ["torch==2.5.1", "torchvision", "tqdm"], installed=stack, constraints=["numpy<2"])
    rest = next(p for p in plan.phases if p.name == REST)
    written = constraint_rule.after_backend(plan, target(*stack), plan.user_constraints)
    assert sorted(rest.constraints) == sorted(written)
    assert "torch==2.5.1+cu124" in written and "xformers<0" in written and "flash-attn<0" not in written
    assert written[-1] == "numpy<2"


def test_rule_fences_what_is_missing_and_spares_what_the_build_phase_builds() -> None:
    installed = {"torch": ("torch", "2.5.1")}
    lines = constraint_rule.rule(["torch", "xformers"], ["flash-attn", "mamba-ssm"], ["flash-attn"], installed.get,
                                 ["numpy<2"])
    assert lines == ["torch==2.5.1", "xformers<0", "mamba-ssm<0", "numpy<2"]
