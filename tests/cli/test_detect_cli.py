"""``backendpick detect`` as users run it, on a fake machine.

Each run gets the test environment (``tests.support.hermetic.subprocess_env``) on a
``FakeMachine`` (fake vendor tools only, probe root under tmp_path, nothing from the real
environment), goes through the one launcher (``tests.support.lab.launch``: detect runs in the test
process with that environment, as tests/cli/test_launch_modes.py checks against a process of its
own) and has a fresh working directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from backendpick import __version__
from tests.support.fakehw import SCENARIOS, FakeMachine
from tests.support.hermetic import subprocess_env
from tests.support.lab import Result, launch

# The backend each scenario should get under the default (strict) policy. From the scenario
# READMEs, checked against backendpick/knowledge/data/facts.toml; where they differ, the note says why.
EXPECTED_BACKEND = {
    # README: newest build not above the installed ROCm runtime (backendpick takes rocm7.2: bug)
    "amd-mi250": "rocm6.1",
    "amd-mi300x": "rocm6.2.4",
    "amd-rocminfo-missing-enumerator-only": "rocm6.4",
    "amd-rx7900xtx": "rocm6.3",
    # README says cpu under a strict reading and cu124/cu128 in an "image hint" mode; backendpick
    # trusts CUDA_VERSION by design (decided_by "container"), which these expectations follow.
    "container-build-cuda124": "cu124",
    "container-build-cuda128": "cu128",
    "intel-arc-a770": "xpu",
    "intel-igpu-only": "cpu",
    "intel-max-1550": "xpu",
    "none": "cpu",
    "nvidia-470-k80": "cpu",
    "nvidia-525-t4": "cu118",
    "nvidia-535-a100x8": "cu121",
    "nvidia-550-rtx4090": "cu124",
    "nvidia-560-h100-mig": "cu126",
    "nvidia-570-rtx5090": "cu128",
    "nvidia-575-b200x8": "cu129",
    "nvidia-580-h200": "cu130",
    "nvidia-driver-failed": "cpu",
    # nvidia-smi unusable; the kernel module's version still gives the CUDA ceiling
    "nvidia-hang": "cu124",
    "nvidia-smi-garbage": "cu121",
    "nvidia-mixed-p4000-a100": "cu126",
    "nvidia-mixed-v100-rtx5090": "cu128",
    "nvidia-wsl-rtx3080": "cu126",
}
ACCELERATOR_COUNT = {
    "amd-mi250": 8, "amd-mi300x": 8, "amd-rocminfo-missing-enumerator-only": 1, "amd-rx7900xtx": 2,
    "intel-arc-a770": 1, "intel-igpu-only": 1, "intel-max-1550": 2, "nvidia-470-k80": 2, "nvidia-525-t4": 1,
    "nvidia-535-a100x8": 8, "nvidia-550-rtx4090": 1, "nvidia-560-h100-mig": 2, "nvidia-570-rtx5090": 1,
    "nvidia-575-b200x8": 8, "nvidia-580-h200": 1, "nvidia-mixed-p4000-a100": 2, "nvidia-mixed-v100-rtx5090": 1,
    "nvidia-wsl-rtx3080": 1,
}
ACCELERATOR_KEYS = {"vendor", "name", "driver_version", "compute_capability", "arch"}


def run_cli(machine: FakeMachine, *args: str, cwd: Path, timeout: float = 60, offline: bool = True,
            **env: str) -> Result:
    """``detect`` runs with ``--offline`` (the packaged table; no index is asked) unless told."""
    if args and args[0] == "detect" and offline:
        args = (args[0], "--offline", *args[1:])
    return launch(*args, env=subprocess_env(machine=machine, extra=env), cwd=cwd, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def machine(tmp_path: Path, scenario: str) -> FakeMachine:
    return FakeMachine.from_scenario(tmp_path, scenario)


def detect_json(tmp_path: Path, workdir: Path, scenario: str, *args: str, **env: str) -> dict:
    proc = run_cli(machine(tmp_path, scenario), "detect", "--json", *args, cwd=workdir, **env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def test_every_scenario_has_an_expectation():
    assert set(SCENARIOS) == set(EXPECTED_BACKEND)


@pytest.mark.parametrize("scenario", sorted(EXPECTED_BACKEND))
def test_detect_json(scenario, tmp_path, workdir):
    data = detect_json(tmp_path, workdir, scenario)
    # shape
    assert {"backend", "reason", "decided_by", "accelerators", "warnings"} <= set(data)
    assert isinstance(data["reason"], str) and data["reason"]
    assert isinstance(data["warnings"], list) and all(isinstance(w, str) for w in data["warnings"])
    for acc in data["accelerators"]:
        assert ACCELERATOR_KEYS <= set(acc)
        assert acc["vendor"] in {"nvidia", "amd", "intel", "apple"}
        assert isinstance(acc["name"], str) and acc["name"]
    assert len(data["accelerators"]) == ACCELERATOR_COUNT.get(scenario, 0)
    # answer
    assert data["backend"] == EXPECTED_BACKEND[scenario], data["reason"]
    assert data["decided_by"] == ("container" if scenario.startswith("container") else "detected")


def test_nvidia_json_details(tmp_path, workdir):
    data = detect_json(tmp_path, workdir, "nvidia-570-rtx5090")
    (gpu,) = data["accelerators"]
    assert {k: gpu[k] for k in ACCELERATOR_KEYS} == {
        "vendor": "nvidia", "name": "NVIDIA GeForce RTX 5090", "driver_version": "570.133.20",
        "compute_capability": "12.0", "arch": "sm_120",
    }
    assert (data["nvidia_driver"], data["driver_cuda"], data["driver_cuda_source"]) == ("570.133.20", "12.8", "driver table")
    assert data["warnings"] == []
    assert data["cuda_compat"] == "strict"


def test_amd_json_details(tmp_path, workdir):
    data = detect_json(tmp_path, workdir, "amd-rx7900xtx")
    dgpu, igpu = data["accelerators"]
    assert (dgpu["vendor"], dgpu["arch"], dgpu["ignored"]) == ("amd", "gfx1100", None)
    assert (igpu["arch"], bool(igpu["ignored"])) == ("gfx1036", True)
    assert data["rocm_version"] == "6.3.1"


def test_torch_releases_in_json(tmp_path, workdir):
    """A single-GPU machine: every cu128 release on offer carries sm_120, so no restriction."""
    assert detect_json(tmp_path, workdir, "nvidia-570-rtx5090")["torch_releases"] is None


def test_hang_does_not_block(tmp_path, workdir):
    start = time.monotonic()
    data = detect_json(tmp_path, workdir, "nvidia-hang")
    assert time.monotonic() - start < 15
    assert any("did not answer" in w for w in data["warnings"])


def test_plain_output_is_stable_lines(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "nvidia-525-t4"), "detect", cwd=workdir)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [
        'gpu: index=0 vendor=nvidia name="Tesla T4" driver=525.147.05 arch=7.5 note=-',
        "nvidia-driver: 525.147.05",
        "driver-cuda: 12.0 (driver table)",
        "backend: cu118",
        "decided-by: detected",
        (
            "reason: Tesla T4 (sm 7.5); driver 525.147.05 supports CUDA 12.0 (driver table); "
            "cu118 is the newest build that runs here"
        ),
        "offers-from: table (--offline: no backend index was asked; plan asks them and may choose an older backend "
        "where the newest has no matching torch)",
        "rejected: cu132: needs CUDA 13.2, driver 525.147.05 supports CUDA 12.0 (driver table)",
        "rejected: cu130: needs CUDA 13.0, driver 525.147.05 supports CUDA 12.0 (driver table)",
        "rejected: cu129: needs CUDA 12.9, driver 525.147.05 supports CUDA 12.0 (driver table)",
        "rejected: cu128: needs CUDA 12.8, driver 525.147.05 supports CUDA 12.0 (driver table)",
        "rejected: cu126: needs CUDA 12.6, driver 525.147.05 supports CUDA 12.0 (driver table)",
        "rejected: cu124: needs CUDA 12.4, driver 525.147.05 supports CUDA 12.0 (driver table)",
        "rejected: cu121: needs CUDA 12.1, driver 525.147.05 supports CUDA 12.0 (driver table)",
    ]
    assert "\x1b[" not in proc.stdout


def test_plain_output_without_gpu(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "none"), "detect", cwd=workdir)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        "gpu: none found", "backend: cpu", "decided-by: detected", "reason: no supported GPU found",
        "offers-from: table (--offline: no backend index was asked; plan asks them and may choose an older backend "
        "where the newest has no matching torch)",
    ]


def test_plain_output_warnings_go_to_stderr(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "nvidia-driver-failed"), "detect", cwd=workdir)
    assert proc.returncode == 0
    assert "backend: cpu" in proc.stdout.splitlines()
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines)
    assert "couldn't communicate with the NVIDIA driver" in proc.stderr


def test_json_mode_prints_one_document_and_no_plain_warnings(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "nvidia-driver-failed"), "detect", "--json", cwd=workdir)
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data["warnings"] and proc.stderr == ""


# -- precedence ------------------------------------------------------------------------------------
PYPROJECT = '[project]\nname = "demo"\nversion = "0"\n\n[tool.backendpick]\nbackend = "cu121"\n'


@pytest.mark.parametrize(
    "flag, env, pyproject, backend, decided_by",
    [
        ("cu126", "cu124", True, "cu126", "--backend"),
        (None, "cu124", True, "cu124", "BACKENDPICK_BACKEND"),
        (None, None, True, "cu121", "pyproject.toml [tool.backendpick]"),
        (None, None, False, "cu118", "detected"),
        (None, "", True, "cu121", "pyproject.toml [tool.backendpick]"),  # empty means unset
        ("auto", "cu124", True, "cu118", "detected"),  # an explicit auto overrides the lower sources
        (None, "auto", True, "cu118", "detected"),
    ],
)
def test_backend_precedence(flag, env, pyproject, backend, decided_by, tmp_path, workdir):
    if pyproject:
        (workdir / "pyproject.toml").write_text(PYPROJECT)
    args = ["--backend", flag] if flag else []
    extra = {"BACKENDPICK_BACKEND": env} if env is not None else {}
    data = detect_json(tmp_path, workdir, "nvidia-525-t4", *args, **extra)
    assert (data["backend"], data["decided_by"]) == (backend, decided_by)


def test_decided_by_in_plain_output(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "nvidia-525-t4"), "detect", "--backend", "cu128", cwd=workdir)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert "backend: cu128" in lines and "decided-by: --backend" in lines and "reason: chosen by --backend" in lines
    assert proc.stderr.splitlines() == [
        (
            "warning: this machine's driver 525.147.05 supports CUDA 12.0; cu128 will not run here "
            "(fine when building for another host)"
        )
    ]


def test_project_option_reads_another_directory(tmp_path, workdir):
    project = tmp_path / "elsewhere"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    data = detect_json(tmp_path, workdir, "nvidia-525-t4", "--project", str(project))
    assert (data["backend"], data["decided_by"]) == ("cu121", "pyproject.toml [tool.backendpick]")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cuda_compat_minor(how, tmp_path, workdir):
    args, env = (["--cuda-compat", "minor"], {}) if how == "flag" else ([], {"BACKENDPICK_CUDA_COMPAT": "minor"})
    data = detect_json(tmp_path, workdir, "nvidia-525-t4", *args, **env)
    assert (data["backend"], data["cuda_compat"]) == ("cu129", "minor")
    assert "minor version compatibility" in data["reason"]


# -- the command line itself -----------------------------------------------------------------------
def test_version(tmp_path, workdir):
    proc = run_cli(FakeMachine(tmp_path), "--version", cwd=workdir)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"backendpick, version {__version__}"


def test_help_shows_examples(tmp_path, workdir):
    proc = run_cli(FakeMachine(tmp_path), "--help", cwd=workdir)
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout
    assert "backendpick detect --json" in proc.stdout
    assert "detect" in proc.stdout and "Exit codes" in proc.stdout


def test_detect_help_shows_examples(tmp_path, workdir):
    proc = run_cli(FakeMachine(tmp_path), "detect", "--help", cwd=workdir)
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout
    assert "backendpick detect --json | jq -r .backend" in proc.stdout
    for option in ("--backend", "--cuda-compat", "--json", "--project"):
        assert option in proc.stdout


def test_unknown_command_exits_2(tmp_path, workdir):
    proc = run_cli(FakeMachine(tmp_path), "dtect", cwd=workdir)
    assert proc.returncode == 2
    assert "No such command 'dtect'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_unknown_option_exits_2(tmp_path, workdir):
    proc = run_cli(FakeMachine(tmp_path), "detect", "--jsn", cwd=workdir)
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_bad_backend_flag_exits_2_with_one_error_line(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "nvidia-525-t4"), "detect", "--backend", "foo", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert _error_lines(proc.stderr) == ["error: 'foo' is not a backend name (from --backend)"]
    assert all(line.startswith(("error:", "hint:")) for line in proc.stderr.splitlines())


def test_bad_backend_env_names_its_source(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "nvidia-525-t4"), "detect", cwd=workdir, BACKENDPICK_BACKEND="cuda")
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == ["error: 'cuda' is not a backend name (from BACKENDPICK_BACKEND)"]


def test_unknown_pyproject_key_suggests_the_right_one(tmp_path, workdir):
    (workdir / "pyproject.toml").write_text('[tool.backendpick]\nbacknd = "cu124"\n')
    proc = run_cli(machine(tmp_path, "nvidia-525-t4"), "detect", cwd=workdir)
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == ["error: pyproject.toml: unknown key tool.backendpick.backnd"]
    assert "hint: did you mean 'backend'?" in proc.stderr.splitlines()


def test_pyproject_backend_of_wrong_type(tmp_path, workdir):
    (workdir / "pyproject.toml").write_text("[tool.backendpick]\nbackend = 124\n")
    proc = run_cli(machine(tmp_path, "nvidia-525-t4"), "detect", cwd=workdir)
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert "tool.backendpick.backend must be a str" in line


def test_invalid_toml_exits_2(tmp_path, workdir):
    (workdir / "pyproject.toml").write_text('[tool.backendpick\nbackend = "cu124"\n')
    proc = run_cli(machine(tmp_path, "nvidia-525-t4"), "detect", cwd=workdir)
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert line.startswith("error: pyproject.toml is not valid TOML")


def test_missing_project_directory_exits_2(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "none"), "detect", "--project", str(tmp_path / "nope"), cwd=workdir)
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert "does not exist" in line


def test_bad_cuda_compat_exits_2(tmp_path, workdir):
    proc = run_cli(machine(tmp_path, "none"), "detect", "--cuda-compat", "loose", cwd=workdir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
