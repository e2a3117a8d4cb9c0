"""The suite passes on a hostile machine: the proof that the one recipe is enough.

A child pytest runs a plan, an install, plain pip against the world and build-phase tests under a
runner environment built to break them: a global pip config (``XDG_CONFIG_DIRS``) with a
``torch<0`` constraint, an extra index that does not exist and a find-links folder holding a
hostile torch; the same through ``PIP_*`` variables; CA-bundle variables naming missing files;
``BACKENDPICK_*``/``CUDA_*`` settings; and an ``nvcc`` 99.0 first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dists import make_torch
from tests.support.venvs import write_pip_conf

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# One of each kind: plain pip against the world (the baseline that failed on machines with a global
# constraint), a plan, an install (cu124 stack with a flash-attn source build: the build phase
# under the hostile settings), and the missing-nvcc error a host nvcc would hide. pip's runs
# only: the uv engine reads the same configuration through backendpick (uv reads no pip.conf),
# and each case's uv run doubles the child's time (CI runs it on two cores).
SUBSET = (
    "tests/integration/test_world.py::test_backend_index_installs_local_tagged_torch",
    "tests/integration/test_world.py::test_user_config_lets_hostile_extra_index_win",
    "tests/integration/test_world.py::test_index_url_flag_and_config_extra_index",
    "tests/cli/test_plan_cli.py::test_plan_json_has_the_documented_shape",
    "tests/integration/test_plan_install.py::test_explicit_cu124_installs_every_member_from_cu124[pip]",
    "tests/integration/test_build_phase.py::test_missing_nvcc_fails_before_building_with_the_fix",
)


def hostile_machine(base: Path) -> dict[str, str]:
    """The runner's environment of a machine whose every pip and CUDA setting is hostile."""
    constraints = base / "constraints.txt"
    constraints.write_text("torch<0\n", encoding="utf-8")
    links = base / "find-links"
    links.mkdir()
    make_torch(links, "999.0.0", "cpu", requires=())
    dead_index = "http://127.0.0.1:9/no-such-index/simple"
    xdg = base / "xdg"
    write_pip_conf(xdg / "pip" / "pip.conf", extra_index_urls=[dead_index, "file:///nonexistent/simple"],
                   find_links=[str(links)], constraint=str(constraints))
    cuda_bin = base / "cuda-99" / "bin"
    cuda_bin.mkdir(parents=True)
    nvcc = cuda_bin / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    "echo 'Cuda compilation tools, release 99.0, V99.0.1'\n", encoding="utf-8")
    nvcc.chmod(0o755)
    missing_ca = str(base / "no-such-ca.pem")
    env = dict(os.environ)
    env.update(
        XDG_CONFIG_DIRS=str(xdg),
        PIP_CONSTRAINT=str(constraints),
        PIP_FIND_LINKS=str(links),
        PIP_EXTRA_INDEX_URL=dead_index,
        PIP_CERT=missing_ca,
        PIP_DEFAULT_TIMEOUT="1",
        PIP_NO_BUILD_ISOLATION="0",
        UV_INDEX_URL=dead_index,
        UV_CONSTRAINT=str(constraints),
        REQUESTS_CA_BUNDLE=missing_ca,
        SSL_CERT_FILE=missing_ca,
        SSL_CERT_DIR=str(base / "no-such-certs"),
        CURL_CA_BUNDLE=missing_ca,
        BACKENDPICK_BACKEND="rocm6.2",
        CUDA_VERSION="99.0.0",
        CUDA_HOME=str(cuda_bin.parent),
        CUDA_PATH=str(cuda_bin.parent),
        CUDA_VISIBLE_DEVICES="7",
        HIP_VISIBLE_DEVICES="7",
        PATH=f"{cuda_bin}{os.pathsep}{env.get('PATH', os.defpath)}",
    )
    return env


def test_hostile_machine_config_does_break_plain_pip(tmp_path: Path, world) -> None:
    """The poison works: a pip that sees it cannot install torch. (Without this, the test below
    could pass because the hostile config is harmless.)"""
    env = hostile_machine(tmp_path)
    venv = world.new_venv(tmp_path)
    # --retries 0: the dead extra index refuses at once, and pip's five retries would only wait
    # 7.5 s of back-off before the same answer.
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--retries", "0", "--index-url",
                           world.url("cpu"), "torch==2.5.1"], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "torch<0" in proc.stdout + proc.stderr or "ResolutionImpossible" in proc.stdout + proc.stderr, (
        proc.stdout + proc.stderr)


def test_suite_passes_on_a_machine_with_hostile_pip_and_cuda_settings(tmp_path: Path) -> None:
    env = hostile_machine(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "child"),
         *SUBSET],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    # Every selected test ran and passed: none skipped, deselected or missing.
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"(\d+) passed in .*", summary), tail
    assert int(summary.split()[0]) >= len(SUBSET), tail
