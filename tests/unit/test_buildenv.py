"""Before a source build: the toolchain guards (fake compilers) and the limits (MAX_JOBS, the
architecture lists), which never override what the user set."""

from __future__ import annotations

from pathlib import Path

import pytest

from backendpick.build import limits as buildlimits, toolchain, wheel_choice
from backendpick.errors import InstallError
from backendpick.inputs.config import BuildSettings
from backendpick.target import installed_torch
from backendpick.target.installed_torch import TorchInfo
from tests.support.hermetic import subprocess_env

CU124 = TorchInfo("2.5.1+cu124", cuda="12.4", cxx11abi=False)
ROCM62 = TorchInfo("2.5.1+rocm6.2", hip="6.2.41133-dd7f95766")
CPU = TorchInfo("2.5.1+cpu")
FLASH = wheel_choice.packages()["flash-attn"]
MAMBA = wheel_choice.packages()["mamba-ssm"]


# -- torch --------------------------------------------------------------------------------------------


def test_torch_info_names_what_wheels_and_cache_keys_need():
    assert (CU124.major_minor, CU124.cuda_version, CU124.backend) == ("2.5", (12, 4), "cuda12.4")
    assert (ROCM62.hip_version, ROCM62.backend) == ((6, 2), "rocm6.2")
    assert (CPU.cuda_version, CPU.hip_version, CPU.backend) == (None, None, "cpu")
    assert TorchInfo("2.10.0a0+git1234").major_minor == "2.10"


# -- limits -------------------------------------------------------------------------------------------


def limits(torch=CU124, package=FLASH, settings=BuildSettings(), env=None, caps=("8.0",), archs=(), cores=32,
           memory=64.0):
    return buildlimits.limits(torch, package, settings, env=env or {}, gpu_caps=caps, gpu_archs=archs,
                           cores=cores, memory_gb=memory)


@pytest.mark.parametrize(
    ("package", "cores", "memory", "jobs"),
    [
        (FLASH, 32, 64.0, "7"),  # flash-attn needs ~9 GB per job
        (MAMBA, 32, 64.0, "16"),  # the default ~4 GB per job
        (FLASH, 4, 512.0, "4"),  # never more jobs than cores
        (FLASH, 32, 3.0, "1"),  # at least one
    ],
)
def test_max_jobs_from_cores_and_free_memory(package, cores, memory, jobs):
    got = limits(package=package, cores=cores, memory=memory)
    assert got.env["MAX_JOBS"] == jobs
    assert got.summary.startswith(f"MAX_JOBS={jobs} ({cores} cores, {memory:.0f} GB free")


def test_max_jobs_when_free_memory_is_unknown(tmp_path):
    got = buildlimits.limits(CU124, FLASH, BuildSettings(), env={}, root=tmp_path, cores=8)
    assert got.env["MAX_JOBS"] == "4" and "free memory unknown" in got.summary


def test_free_memory_comes_from_meminfo_below_the_probe_root(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1 kB\nMemAvailable:   20971520 kB\n")
    assert buildlimits.available_memory_gb(tmp_path) == 20.0
    assert buildlimits.available_memory_gb(tmp_path / "nothing") is None


def test_users_max_jobs_wins_over_config_and_the_estimate():
    got = limits(env={"MAX_JOBS": "2"}, settings=BuildSettings(max_jobs=6))
    assert "MAX_JOBS" not in got.env and "MAX_JOBS=2 (your environment)" in got.summary
    got = limits(settings=BuildSettings(max_jobs=6))
    assert got.env["MAX_JOBS"] == "6" and "max-jobs" in got.summary


def test_architectures_narrowed_to_the_detected_gpus():
    got = limits(caps=("9.0", "8.6", "8.6"))
    assert got.env["TORCH_CUDA_ARCH_LIST"] == "8.6;9.0"
    assert got.env["FLASH_ATTN_CUDA_ARCHS"] == "80;90"  # sm_80 code runs on 8.6
    assert got.arch_key == "FLASH_ATTN_CUDA_ARCHS=80;90,TORCH_CUDA_ARCH_LIST=8.6;9.0"
    assert "(from the detected GPUs)" in got.summary


def test_a_gpu_flash_attn_has_no_code_for_keeps_its_default_list():
    got = limits(caps=("7.5",))
    assert got.env["TORCH_CUDA_ARCH_LIST"] == "7.5" and "FLASH_ATTN_CUDA_ARCHS" not in got.env
    assert "FLASH_ATTN_CUDA_ARCHS left at its default" in got.summary


def test_no_gpu_means_the_packages_defaults():
    got = limits(caps=())
    assert set(got.env) == {"MAX_JOBS"} and got.arch_key == "default"
    assert "the package's defaults" in got.summary


def test_users_arch_list_is_kept_and_drives_the_packages_list():
    got = limits(env={"TORCH_CUDA_ARCH_LIST": "9.0+PTX"}, caps=("8.0",))
    assert "TORCH_CUDA_ARCH_LIST" not in got.env
    assert got.env["FLASH_ATTN_CUDA_ARCHS"] == "90"
    assert got.arch_key == "FLASH_ATTN_CUDA_ARCHS=90,TORCH_CUDA_ARCH_LIST=9.0+PTX"
    got = limits(env={"FLASH_ATTN_CUDA_ARCHS": "100"})
    assert "FLASH_ATTN_CUDA_ARCHS" not in got.env and "FLASH_ATTN_CUDA_ARCHS=100" in got.arch_key


def test_config_arch_list_and_env():
    got = limits(settings=BuildSettings(arch_list="9.0", env={"NVCC_THREADS": "2", "MAX_JOBS": "3"}))
    assert got.env == {"MAX_JOBS": "3", "TORCH_CUDA_ARCH_LIST": "9.0", "FLASH_ATTN_CUDA_ARCHS": "90",
                       "NVCC_THREADS": "2"}
    assert "arch-list" in got.summary and "NVCC_THREADS=2" in got.summary


def test_rocm_architectures():
    got = limits(torch=ROCM62, caps=(), archs=("gfx942", "gfx90a"))
    assert got.env["PYTORCH_ROCM_ARCH"] == "gfx90a;gfx942" and got.env["GPU_ARCHS"] == "gfx90a;gfx942"
    got = limits(torch=ROCM62, package=MAMBA, caps=(), archs=("gfx942",))
    assert got.env["PYTORCH_ROCM_ARCH"] == "gfx942" and "GPU_ARCHS" not in got.env


def test_cpu_torch_gets_no_architecture_variables():
    assert limits(torch=CPU).arch_key == "default"


# -- toolchain guards ---------------------------------------------------------------------------------


def tool(directory: Path, name: str, output: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    path.chmod(0o755)
    return path


NVCC_124 = "Cuda compilation tools, release 12.4, V12.4.131"


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    """c++ and ninja on PATH; each test adds the compiler it needs."""
    path = tmp_path / "bin"
    tool(path, "c++")
    tool(path, "ninja", "1.11.1")
    return path


def inspect(torch, bins: Path, tmp_path: Path, env=None, **kw) -> toolchain.Toolchain:
    return toolchain.inspect_toolchain(torch, what="flash-attn 2.7.4", env={"PATH": str(bins), **(env or {})},
                                       target_bin=kw.pop("target_bin", None), root=tmp_path / "root", **kw)


@pytest.mark.allow_subprocess
def test_a_complete_cuda_toolchain_passes(bins, tmp_path):
    nvcc = tool(bins, "nvcc", NVCC_124)
    tc = inspect(CU124, bins, tmp_path)
    assert tc.problems == () and (tc.compiler, tc.compiler_version) == (str(nvcc), "12.4")
    toolchain.check(tc, what="flash-attn 2.7.4")  # does not raise


@pytest.mark.allow_subprocess
def test_missing_nvcc_is_an_error_with_the_toolkit_to_install(bins, tmp_path):
    tc = inspect(CU124, bins, tmp_path)
    with pytest.raises(InstallError) as err:
        toolchain.check(tc, what="flash-attn 2.7.4", why="no prebuilt wheel x.whl (github: HTTP 404)")
    assert err.value.message == ("cannot build flash-attn 2.7.4 from source: nvcc, the CUDA compiler, was not found "
                                 "(looked in PATH, /usr/local/cuda/bin)")
    assert err.value.hint.startswith("install the CUDA 12.4 toolkit")
    assert err.value.details == "no prebuilt wheel x.whl (github: HTTP 404)"
    assert err.value.exit_code == 1


@pytest.mark.allow_subprocess
def test_nvcc_of_another_cuda_major_is_refused(bins, tmp_path):
    tool(bins, "nvcc", "Cuda compilation tools, release 11.8, V11.8.89")
    [problem] = inspect(CU124, bins, tmp_path).problems
    assert "is CUDA 11.8, but torch 2.5.1+cu124 was built with CUDA 12.4" in problem.message
    assert "--backend cu118" in problem.hint


@pytest.mark.allow_subprocess
def test_another_cuda_minor_is_fine(bins, tmp_path):
    tool(bins, "nvcc", "Cuda compilation tools, release 12.6, V12.6.20")
    assert inspect(CU124, bins, tmp_path).problems == ()


@pytest.mark.allow_subprocess
def test_cuda_home_decides_like_torch_does(bins, tmp_path):
    tool(bins, "nvcc", NVCC_124)  # on PATH, but torch's cpp_extension takes $CUDA_HOME first
    home = tmp_path / "cuda-11.8"
    tool(home / "bin", "nvcc", "Cuda compilation tools, release 11.8, V11.8.89")
    [problem] = inspect(CU124, bins, tmp_path, env={"CUDA_HOME": str(home)}).problems
    assert f"nvcc at {home / 'bin' / 'nvcc'} is CUDA 11.8" in problem.message
    empty = tmp_path / "no-cuda"
    [problem] = inspect(CU124, bins, tmp_path, env={"CUDA_HOME": str(empty)}).problems
    assert "looked in $CUDA_HOME/bin)" in problem.message


@pytest.mark.allow_subprocess
def test_nvcc_in_the_default_folder_below_the_probe_root(bins, tmp_path):
    tool(tmp_path / "root" / "usr" / "local" / "cuda" / "bin", "nvcc", NVCC_124)
    assert inspect(CU124, bins, tmp_path).compiler_version == "12.4"


@pytest.mark.allow_subprocess
def test_nvcc_without_a_version_is_reported(bins, tmp_path):
    tool(bins, "nvcc", "something else")
    [problem] = inspect(CU124, bins, tmp_path).problems
    assert "did not report its version" in problem.message


@pytest.mark.allow_subprocess
def test_rocm_needs_hipcc_of_torchs_major(bins, tmp_path):
    [problem] = inspect(ROCM62, bins, tmp_path).problems
    assert "hipcc, the ROCm compiler, was not found" in problem.message
    tool(bins, "hipcc", "HIP version: 5.7.31921-d1770ee1b")
    [problem] = inspect(ROCM62, bins, tmp_path).problems
    assert "is HIP 5.7, but torch 2.5.1+rocm6.2 was built with ROCm 6.2" in problem.message
    tool(bins, "hipcc", "HIP version: 6.2.41133-dd7f95766")
    assert inspect(ROCM62, bins, tmp_path).problems == ()


@pytest.mark.allow_subprocess
def test_cpu_torch_cannot_build_gpu_kernels_unless_the_package_is_told_to_skip_them(bins, tmp_path):
    [problem] = inspect(CPU, bins, tmp_path).problems
    assert "is a CPU build" in problem.message and "--backend" in problem.hint
    assert inspect(CPU, bins, tmp_path, skip_gpu=True).problems == ()


@pytest.mark.allow_subprocess
def test_missing_cxx_and_ninja_each_have_a_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    tool(empty, "nvcc", NVCC_124)
    problems = inspect(CU124, empty, tmp_path).problems
    assert [p.message.split(" (")[0].split(";")[0] for p in problems] == [
        "no C++ compiler found", "ninja was not found"]
    assert "apt-get install g++" in problems[0].hint and "ninja" in problems[1].hint
    with pytest.raises(InstallError) as err:
        toolchain.check(toolchain.Toolchain(problems=problems), what="x")
    assert "also: ninja was not found" in err.value.details


@pytest.mark.allow_subprocess
def test_cxx_variable_names_the_compiler(bins, tmp_path):
    tool(bins, "nvcc", NVCC_124)
    tool(bins, "clang++-17")
    assert inspect(CU124, bins, tmp_path, env={"CXX": "clang++-17 -stdlib=libc++"}).cxx == str(bins / "clang++-17")
    [problem] = inspect(CU124, bins, tmp_path, env={"CXX": "g++-99"}).problems
    assert problem.message.startswith("no C++ compiler found (g++-99")


@pytest.mark.allow_subprocess
def test_ninja_of_the_environment_is_found_and_put_on_the_builds_path(tmp_path):
    path = tmp_path / "bin"
    tool(path, "c++")
    tool(path, "nvcc", NVCC_124)
    venv_bin = tmp_path / "venv" / "bin"
    ninja = tool(venv_bin, "ninja", "1.11.1")
    tc = inspect(CU124, path, tmp_path, target_bin=venv_bin)
    assert tc.problems == () and tc.ninja == str(ninja)
    assert tc.env == {"PATH": f"{venv_bin}:{path}"}


# -- a long build -------------------------------------------------------------------------------------


def _fake_pip(tmp_path: Path, exit_code: int) -> Path:
    """Stands for ``pip wheel``: takes a while, prints, writes a wheel into -w DIR (or fails)."""
    return _write_script(tmp_path / "pipbin" / "pip-wheel", (
        'while [ $# -gt 0 ]; do [ "$1" = "-w" ] && d="$2"; shift; done\n'
        "sleep 0.35\n"
        "echo 'Building wheel for flash-attn (setup.py)'\n"
        + (f"echo 'error: nvcc died' ; exit {exit_code}\n" if exit_code else
           ': > "$d/flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl"\n')
    ))


def _write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _build(tmp_path: Path, exit_code: int, monkeypatch):
    from backendpick.execute import build_phase
    from backendpick.model.backend import Backend
    from backendpick.model.plan import SOURCE, BuildStep, Phase, Plan

    monkeypatch.setattr(build_phase, "HEARTBEAT_SECONDS", 0.1)
    out_dir = tmp_path / "state" / "build" / "flash-attn"
    step = BuildStep("flash-attn", "flash-attn", how=SOURCE, version="2.7.4", limits="MAX_JOBS=1 (test)",
                     build_requirement="flash-attn==2.7.4", wheel_dir=str(out_dir))
    phase = Phase("build", ("flash-attn",), steps=(step,))
    argv = (str(_fake_pip(tmp_path, exit_code)), "-w", str(out_dir))
    plan = Plan(Backend.parse("cu124"), "r", "test", Path("py"), "u", (phase,), tmp_path / "c.txt")
    notes, lines = [], []
    log_path = tmp_path / "build.log"
    with log_path.open("w") as log:
        def call():
            return build_phase.build_wheel(plan, phase, step, argv, env=subprocess_env(), tee=lines.append,
                                           log=log, log_path=log_path, on_note=notes.append)
        if exit_code:
            with pytest.raises(InstallError) as err:
                call()
            return err.value, notes, lines, log_path
        return call(), notes, lines, log_path


@pytest.mark.allow_subprocess
def test_a_long_build_says_it_is_still_going_and_where_its_output_is(tmp_path, monkeypatch):
    wheel, notes, lines, log_path = _build(tmp_path, 0, monkeypatch)
    assert wheel.name == "flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl"
    assert notes[0] == f"building flash-attn 2.7.4 from source: MAX_JOBS=1 (test); pip output: {log_path}"
    assert any(n.startswith("still building flash-attn 2.7.4: 0s elapsed (Ctrl-C stops it)") for n in notes), notes
    assert notes[-1].startswith("built flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl in ")
    assert lines == ["Building wheel for flash-attn (setup.py)"]


@pytest.mark.allow_subprocess
def test_a_failed_build_names_its_log_and_the_memory_fix(tmp_path, monkeypatch):
    err, notes, lines, log_path = _build(tmp_path, 1, monkeypatch)
    assert err.message.startswith("building flash-attn 2.7.4 from source failed after 0s (pip exit 1); ")
    assert err.hint.startswith(f"full build output: {log_path}") and "MAX_JOBS" in err.hint
    assert "error: nvcc died" in err.details


@pytest.mark.parametrize(
    ("version", "backend", "abi"),
    [
        ("2.5.1", "cu124", False),
        ("2.6.0", "cu124", False),  # manylinux2014, old ABI (pytorch/pytorch#141565)
        ("2.6.0", "cpu", False),
        ("2.6.0", "cu126", True),  # CUDA 12.6 moved to the CXX11 ABI in 2.6 (pytorch/pytorch#142064)
        ("2.6.0", "rocm6.2.4", True),
        ("2.7.1", "cu118", True),  # every Linux build from 2.7 on
        ("2.9.1", "cpu", True),
    ],
)
def test_the_predicted_abi_follows_release_and_backend(version, backend, abi):
    from backendpick.knowledge import facts
    from backendpick.model.backend import Backend

    predicted = installed_torch.predict_torch(version, Backend.parse(backend), facts.load())
    assert predicted.cxx11abi is abi


def test_two_torches_are_the_same_build_only_in_version_gpu_and_abi():
    assert CU124.same_build(TorchInfo("2.5.1+cu124", cuda="12.4", cxx11abi=False))
    assert not CU124.same_build(TorchInfo("2.5.1+cu124", cuda="12.4", cxx11abi=True))
    assert not CU124.same_build(TorchInfo("2.5.1+cu121", cuda="12.1", cxx11abi=False))
    assert not CU124.same_build(TorchInfo("2.6.0+cu124", cuda="12.4", cxx11abi=False))


def test_with_uv_a_source_build_without_an_sdist_stops_before_any_change():
    """uv builds a file: a plan whose source build found no sdist stops before the first phase
    (issue 22 item 3), naming where it looked; with pip, pip wheel finds the sdist itself."""
    from dataclasses import replace

    from backendpick.execute import build_phase
    from backendpick.model.plan import BUILD, SOURCE, BuildStep, Phase, Plan
    from backendpick.model.backend import Backend

    step = BuildStep("flash-attn", "flash-attn", how=SOURCE, version="2.7.4", build_requirement="flash-attn==2.7.4",
                     note="flash-attn 2.7.4: building from source; no sdist of flash-attn==2.7.4 for uv build "
                          "(https://mirror.example/simple: no flash-attn page)")
    plan = Plan(backend=Backend.parse("cu124"), reason="", decided_by="--backend", python=Path("/env/bin/python"),
                index_url="https://idx/cu124", phases=(Phase(BUILD, ("flash-attn",), steps=(step,)),),
                constraints_path=Path("/s/c.txt"), installer="uv")
    with pytest.raises(InstallError) as caught:
        build_phase.check_before_changes(plan, {})
    err = caught.value
    assert err.message == ("cannot build flash-attn 2.7.4 with uv: no sdist of it was found (uv build takes a file); "
                           "the environment is unchanged")
    assert "no flash-attn page" in err.details and "--installer pip" in err.hint
    build_phase.check_before_changes(replace(plan, installer="pip"), {})  # no context, no check: nothing raised
    build_phase.check_before_changes(replace(plan, phases=(Phase(BUILD, ("flash-attn",), steps=(
        replace(step, sdist_file="/s/flash_attn-2.7.4.tar.gz"),)),)), {})
