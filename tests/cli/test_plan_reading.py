"""``plan`` and ``install --dry-run`` as a person reads them (issue 20 item 5), run in the test
process through the CLI's main: a header with the backend, the reason and the torch first; each
phase named with what it installs and why, a build step in words; commands that run as printed;
the files a dry run does not write named as "will be written"; no warning about rocminfo on an
NVIDIA machine where it is installed but finds no AMD GPU.

Nothing here installs; one fresh venv serves every test.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.support.lab import Lab, make_machine, ok, py

pytestmark = pytest.mark.integration

REQUEST = ("torch==2.5.1", "torchvision", "flash-attn", "tqdm")
MACHINE = "nvidia-550-a100-rocminfo"


@pytest.fixture(scope="module")
def target(lab: Lab) -> str:
    """A fresh venv only planned for; the lab gets an A100 machine where rocminfo is installed
    and fails, as on an NVIDIA machine with the ROCm tools from the distribution."""
    if MACHINE not in lab.machines:
        machine = make_machine(lab.base / "machines", MACHINE, driver="550.127.05",
                               gpus=(("NVIDIA A100-SXM4-80GB", "8.0"),), cuda="12.4")
        machine.rocminfo("ROCk module is NOT loaded, possibly no GPU devices\n", exit_code=1)
        machine.agent_enumerator("", exit_code=1)
        lab.machines[MACHINE] = machine
    return py(lab.new_venv())


def _run(lab: Lab, tmp_path: Path, *args: str):
    # A wheel cache of its own: a flash-attn another test built would make the build a cache hit.
    return ok(lab.run(*args, machine=MACHINE, BACKENDPICK_CACHE_DIR=str(tmp_path / "wheels")))


def _constraints(target: str) -> Path:
    return Path(target).parents[1] / ".backendpick" / "constraints.txt"


def test_plan_has_a_header_then_each_phase_in_words_and_commands_that_run_as_printed(
        lab: Lab, target: str, tmp_path: Path) -> None:
    res = _run(lab, tmp_path, "plan", "--python", target, *REQUEST)
    lines = res.stdout.splitlines()
    # The backend, the reason and the torch first: nothing unasked before them.
    assert [line.split(":", 1)[0] for line in lines[:3]] == ["backend", "reason", "torch"], res
    assert lines[0] == "backend: cu124" and "A100" in lines[1] and lines[2].startswith("torch: 2.5.1+cu124 ")
    assert [line.split(":")[0] for line in lines if line.startswith("phase ")] == [
        "phase backend", "phase build-requirements", "phase build", "phase rest"]
    assert "  # torch and its family from the cu124 index alone (none of your pip configuration's indexes)" in lines
    assert "  # everything else, from your pip configuration, the stack pinned" in lines
    # The build step in words: against the torch the backend phase installs, and how.
    assert any(line.startswith("  # flash-attn 2.7.4: built from source against the torch the backend phase "
                               "installs (2.5.1+cu124), with MAX_JOBS=") for line in lines), res
    commands = [line[4:] for line in lines if line.startswith("  $ ")]
    assert len(commands) == 4  # backend, build tools, pip wheel, rest (which installs the wheel)
    for command in commands:
        assert "<" not in command and shlex.split(command), command
    # The constraints file is named as what will be written, and planning wrote nothing.
    written = [line for line in lines if line.startswith("  will be written: ")]
    assert any(line.startswith(f"  will be written: {_constraints(target)} after the backend phase: pins torch "
                               "at the version the backend phase installs") for line in written), res
    assert not _constraints(target).exists()
    assert "rocminfo" not in res.output and "rocm_agent_enumerator" not in res.output  # an NVIDIA machine


def test_dry_run_reads_as_a_script_whose_commands_run_as_printed(lab: Lab, target: str, tmp_path: Path) -> None:
    res = _run(lab, tmp_path, "install", "--dry-run", "--python", target, *REQUEST)
    lines = [line for line in res.stdout.splitlines() if line]
    assert lines[0] == "# backend: cu124" and lines[1].startswith("# reason: ") and lines[2].startswith("# torch: 2.5.1+")
    assert [line for line in lines if line.startswith("# phase ")] == [
        "# phase backend: torch==2.5.1 torchvision", "# phase build-requirements: setuptools wheel packaging psutil "
        "ninja einops", "# phase build: flash-attn", "# phase rest: tqdm"]
    commands = res.dry_run_commands
    assert len(commands) == 4 and all(not c.startswith("#") for c in commands)
    for command in commands:
        assert "<" not in command and shlex.split(command), command
    assert f"# will be written: {_constraints(target)} after the backend phase: pins torch at the version the " \
           "backend phase installs, torchvision at the version the backend phase installs; blocks" in res.stdout
    assert not _constraints(target).exists()
    assert "rocminfo" not in res.output
