"""phase_log.failed: what a failed pip run of a phase becomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from backendpick.edges.runner import Result
from backendpick.errors import InstallError
from backendpick.execute import phase_log
from backendpick.model.backend import Backend
from backendpick.model.plan import BACKEND, BUILD_REQS, REST, Phase, Plan

PIP = ("/v/bin/python", "-m", "pip")
# pip 23's report when a package needs a fenced one (the constraints say torch<0).
CONFLICT = ("ERROR: Cannot install kernel-tool==1.0 because these package versions have conflicting dependencies.\n"
            "The conflict is caused by:\n    kernel-tool 1.0 depends on torch>=2.0\n"
            "    The user requested (constraint) torch<0\n")


def _plan(*phases: Phase) -> Plan:
    return Plan(backend=Backend.parse("cu124"), reason="r", decided_by="--backend", python=Path(PIP[0]),
                index_url="https://idx/cu124", phases=phases, constraints_path=Path("/s/c.txt"),
                backend_names=("torch", "torchvision"), build_names=("flash-attn",))


def test_a_later_phase_needing_the_stack_is_moved_by_the_retry():
    rest = Phase(REST, ("kernel-tool",))
    plan = _plan(Phase(BACKEND, ("torch",)), rest)
    with pytest.raises(phase_log.FenceConflict) as hit:
        phase_log.failed(plan, rest, rest, Result(PIP, 1, CONFLICT, ""), Path("/s/logs/rest.log"), "pip install")
    assert hit.value.hit.backend == ("torch",)


def test_a_build_tool_needing_the_stack_is_named_not_retried():
    reqs = Phase(BUILD_REQS, ("setuptools", "kernel-tool"), target_dir="/s/build-env", alongside=BACKEND)
    plan = _plan(Phase(BACKEND, ("torch",)), reqs)
    with pytest.raises(InstallError) as err:
        phase_log.failed(plan, reqs, reqs, Result(PIP, 1, CONFLICT, ""), Path("/s/logs/reqs.log"), "pip install")
    assert "a build requirement depends on torch" in err.value.message
    assert "the environment is as phase 'backend' left it" in err.value.message
    assert "leave it out of [tool.backendpick] build-requirements" in err.value.hint
    assert "kernel-tool 1.0 depends on torch>=2.0" in err.value.details
