"""``backendpick verify`` on environments it did not build: each broken one is made with plain
pip (``--no-deps``, exact files), the way users end up with them, and the printed fix is run to
show it really repairs the environment.

Seeds: astral-sh/uv#16522 (CUDA torch next to CPU companions) and astral-sh/uv#7015
(flash-attn missing because its build needs torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.bp_helpers import (
    UNDEFINED_SYMBOL,
    backendpick,
    bp_env,
    flash_attn_wheel,
    flash_ok_index,
    module_index,
    no_gpu,
    nvidia,
    out,
    pip,
    pip_env,
    pip_from,
    problems_of,
    project,
    run_fix,
    torch_stack,
    verify_json,
    versions,
    xformers_wheel,
)
from tests.support.venvs import venv_python
from tests.support.world import World

pytestmark = pytest.mark.integration

RTX5090 = "0, NVIDIA GeForce RTX 5090, 570.124.04, 12.0, GPU-y, 32607\n"


def _assert_problem_shape(report: dict) -> None:
    for p in report["problems"]:
        assert set(p) == {"package", "message", "fix"}, p
        assert all(isinstance(v, str) and v for v in p.values()), p
        assert "\n" not in p["message"] and "\n" not in p["fix"], p


# -- the two seed failures --------------------------------------------------------------------


def test_seed_cuda_torch_next_to_cpu_torchvision_and_cpu_xformers(world: World, tmp_path: Path) -> None:
    """uv#16522: CUDA torch, CPU-only torchvision and xformers. verify names each one with the
    command that fixes it, and running those commands gives an environment that verifies."""
    machine = nvidia(tmp_path)
    env = bp_env(world, machine)
    py = venv_python(world.new_venv(tmp_path))
    cpu_xformers = xformers_wheel(tmp_path / "wheels", "0.0.28.post3", torch_pin="2.5.1",
                                  cpp_lib={"torch_version": "2.5.1+cpu", "cuda_version": None})
    pip_from(world, py, "torch==2.5.1+cu124", "filelock", "typing-extensions", "torchvision==0.20.1+cpu", cpu_xformers,
             indexes=["cu124", "cpu"])

    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 1 and report["ok"] is False
    _assert_problem_shape(report)
    assert report["torch"].pop("origin")["foreign"] is False  # an index build (issue 18)
    assert report["torch"] == {"version": "2.5.1+cu124", "backend": "cu124", "cuda": "12.4", "hip": None}
    assert problems_of(report, "torch") == []  # torch itself is right for this A100

    [tv] = problems_of(report, "torchvision")
    assert "0.20.1+cpu" in tv["message"] and "cpu" in tv["message"] and "cu124" in tv["message"]
    assert tv["fix"] == f"backendpick install --python {py} --backend cu124 torch==2.5.1 torchvision"

    [xf] = problems_of(report, "xformers")
    assert "CPU-only" in xf["message"] and "2.5.1+cu124" in xf["message"]
    assert xf["fix"] == f"backendpick install --python {py} --backend cu124 torch==2.5.1 xformers"

    for fix in (tv["fix"], xf["fix"]):
        proc = run_fix(fix, env=env, cwd=tmp_path)
        assert proc.returncode == 0, out(proc)

    rc, report, proc = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 0 and report["ok"] is True and report["problems"] == [], out(proc)
    got = versions(py, world)
    assert (got["torch"], got["torchvision"], got["xformers"]) == ("2.5.1+cu124", "0.20.1+cu124", "0.0.28.post3")
    assert module_index(py, "xformers", world) == "cu124"


def test_seed_missing_flash_attn_named_with_fix(world: World, tmp_path: Path) -> None:
    """uv#7015: the project lists flash-attn, which never got installed. verify names it and
    says `backendpick install`; running that (flash-attn wheels on the user's index) fixes it."""
    conf = flash_ok_index(world)
    env = bp_env(world, nvidia(tmp_path), conf)
    proj = project(tmp_path / "proj", ["torch==2.5.1", "flash-attn", "tqdm"])
    py = venv_python(world.new_venv(tmp_path))
    torch_stack(world, py, "2.5.1", "cu124")

    rc, report, _ = verify_json(py, env=env, cwd=proj)
    assert rc == 1
    _assert_problem_shape(report)
    [fa] = problems_of(report, "flash-attn")
    assert "flash-attn" in fa["message"] and "not installed" in fa["message"]
    assert "--no-build-isolation" in fa["message"]  # why it went missing (seed 7015)
    # --project too, so the fix works from any directory
    assert fa["fix"] == f"backendpick install --python {py} --project {proj.resolve()}"
    [tq] = problems_of(report, "tqdm")
    assert "not installed" in tq["message"]

    # The same report from another directory with --project.
    rc, report2, _ = verify_json(py, env=env, cwd=tmp_path, extra=["--project", proj])
    assert rc == 1 and {p["package"] for p in report2["problems"]} == {"flash-attn", "tqdm"}

    proc = run_fix(fa["fix"], env=env, cwd=proj)
    assert proc.returncode == 0, out(proc)
    rc, report, proc = verify_json(py, env=env, cwd=proj)
    assert rc == 0 and report["ok"], out(proc)
    assert versions(py, world)["flash-attn"] == "2.7.4"


def test_printed_fix_works_from_another_directory(world: World, tmp_path: Path) -> None:
    """verify --project DIR run elsewhere prints a fix that must work where it was printed."""
    env = bp_env(world, nvidia(tmp_path))
    proj = project(tmp_path / "proj", ["torch==2.5.1", "tqdm"])
    py = venv_python(world.new_venv(tmp_path))
    torch_stack(world, py, "2.5.1", "cu124")

    rc, report, _ = verify_json(py, env=env, cwd=tmp_path, extra=["--project", proj])
    [tq] = problems_of(report, "tqdm")
    proc = run_fix(tq["fix"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"fix {tq['fix']!r} does not work where verify printed it\n" + out(proc)
    rc, report, proc = verify_json(py, env=env, cwd=tmp_path, extra=["--project", proj])
    assert rc == 0, out(proc)


# -- companions built for another torch ---------------------------------------------------------


@pytest.mark.parametrize(
    ("torch_pin", "cpp_lib", "expected"),
    [
        ("2.5.1", None, "requires torch==2.5.1, but torch 2.6.0+cu124 is installed"),
        (None, {"torch_version": "2.5.1+cu124", "cuda_version": "1204"}, "was built for torch 2.5.1+cu124, but torch 2.6.0+cu124"),
        # (cpp_lib.json's CUDA version and CPU-only builds: the seed test above and the unit tests)
    ],
    ids=["metadata-pin", "cpp_lib-torch"],
)
def test_xformers_built_for_another_build(world: World, tmp_path: Path, torch_pin, cpp_lib, expected) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.6.0+cu124", "filelock", "typing-extensions",
             xformers_wheel(tmp_path / "w", "0.0.28.post3", torch_pin=torch_pin, cpp_lib=cpp_lib), indexes=["cu124"])

    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 1
    [xf] = problems_of(report, "xformers")
    assert expected in xf["message"]
    assert xf["fix"] == f"backendpick install --python {py} --backend cu124 torch==2.6.0 xformers"
    assert [p["package"] for p in report["problems"]] == ["xformers"]


def test_following_the_xformers_fix_repairs_it(world: World, tmp_path: Path) -> None:
    """xformers built for torch 2.5.1 (metadata pin and cpp_lib.json) next to torch 2.6.0."""
    env = bp_env(world, nvidia(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.6.0+cu124", "filelock", "typing-extensions",
             xformers_wheel(tmp_path / "w", "0.0.28.post3", torch_pin="2.5.1",
                            cpp_lib={"torch_version": "2.5.1+cu124", "cuda_version": "1204"}), indexes=["cu124"])

    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    fixes = {p["fix"] for p in problems_of(report, "xformers")}
    assert len(problems_of(report, "xformers")) >= 2  # the pin and cpp_lib.json both say so
    assert fixes == {f"backendpick install --python {py} --backend cu124 torch==2.6.0 xformers"}

    proc = run_fix(fixes.pop(), env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    rc, report, proc = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 0, out(proc)
    got = versions(py, world)
    assert (got["torch"], got["xformers"]) == ("2.6.0+cu124", "0.0.29.post2")


# -- compiled extensions ---------------------------------------------------------------------------


def test_undefined_symbol_becomes_a_plain_sentence(world: World, tmp_path: Path) -> None:
    env = bp_env(world, nvidia(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.5.1+cu124", "filelock", "typing-extensions", flash_attn_wheel(tmp_path / "w", broken=True),
             "einops", indexes=["cu124", "pypi"])

    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 1
    [fa] = report["problems"]
    assert fa["package"] == "flash-attn"
    assert fa["message"] == ("flash-attn was compiled against a different torch than the one installed "
                             "(flash_attn_2_cuda: undefined symbol)")
    assert "_ZN3c10" not in fa["message"] and UNDEFINED_SYMBOL not in fa["message"]
    assert fa["fix"].startswith(f"backendpick install --python {py} --backend cu124 --reinstall flash-attn flash-attn")


# -- torch against the hardware ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("install", "driver", "query", "expected", "fixed_torch"),
    [
        # A CPU torch on a GPU machine.
        (("2.5.1", "cpu"), "550.54.14", None, "torch 2.5.1+cpu is a CPU build, but this machine has 1 NVIDIA GPU(s) (NVIDIA A100-SXM4-80GB)", "2.6.0+cu124"),
        # A CUDA build newer than the driver supports.
        (("2.6.0", "cu126"), "550.54.14", None, "torch 2.6.0+cu126 is built for CUDA 12.6, but driver 550.54.14 supports CUDA 12.4", None),
        # PyPI's untagged torch is a CUDA build too (2.7.1: CUDA 12.6).
        (("2.7.1", "pypi"), "550.54.14", None, "torch 2.7.1 is built for CUDA 12.6, but driver 550.54.14 supports CUDA 12.4", None),
        # A build that lacks the GPU's architecture (Blackwell needs cu128 of torch 2.7+).
        (("2.5.1", "cu124"), "570.124.04", RTX5090, "torch 2.5.1+cu124 carries no code for NVIDIA GeForce RTX 5090 (compute capability 12.0)", None),
    ],
    ids=["cpu-torch-on-gpu", "cuda-newer-than-driver", "pypi-torch-newer-than-driver", "missing-arch"],
)
def test_torch_against_the_hardware(world: World, tmp_path: Path, install, driver, query, expected, fixed_torch) -> None:
    env = bp_env(world, nvidia(tmp_path, driver=driver, query=query))
    py = venv_python(world.new_venv(tmp_path))
    version, backend = install
    if backend == "pypi":
        pip_from(world, py, f"torch=={version}", "filelock", "typing-extensions", indexes=["pypi"])
    else:
        torch_stack(world, py, version, backend)

    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 1
    [problem] = report["problems"]
    assert problem["package"] == "torch"
    assert expected in problem["message"]
    assert problem["fix"].startswith(f"backendpick install --python {py} torch")
    if fixed_torch is None:
        return  # following the fix: shown for the first case (and by the seed tests)
    proc = run_fix(problem["fix"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    rc, report, proc = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 0, out(proc)
    assert versions(py, world)["torch"] == fixed_torch


def test_after_pip_uninstall_torch_every_fix_line_makes_verify_pass(world: World, tmp_path: Path) -> None:
    """torch removed by plain pip from a cu124 stack, on a machine whose newest backend is cu128:
    the fixes bring back the torch the companions were made for, not the newest one beside them
    (issue 18: ``backendpick install torch`` installed 2.7.1+cu128 beside packages pinned to 2.5.1)."""
    env = bp_env(world, nvidia(tmp_path, driver="570.133.20"))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.5.1+cu124", "filelock", "typing-extensions", "torchvision==0.20.1+cu124",
             "xformers==0.0.28.post3", indexes=["cu124"])
    proj = project(tmp_path / "proj", ["torch", "torchvision", "xformers"])
    pip(py, "uninstall", "-y", "torch", env=pip_env(world))

    rc, report, proc = verify_json(py, env=env, cwd=proj)
    assert rc == 1, out(proc)
    # "torch is required" (the project) and "torch is not installed, but torchvision, xformers
    # need it" (the stack): one fix, and running it alone repairs the environment.
    [fix] = {p["fix"] for p in report["problems"]}
    assert " --backend cu124 torch==2.5.1 torchvision xformers" in fix, report
    proc = run_fix(fix, env=env, cwd=proj)
    assert proc.returncode == 0, f"fix {fix!r} does not work\n" + out(proc)
    rc, report, proc = verify_json(py, env=env, cwd=proj)
    assert rc == 0, out(proc)
    assert versions(py, world)["torch"] == "2.5.1+cu124"


# -- pip check ---------------------------------------------------------------------------------


def test_pip_check_problem_in_the_stack_has_a_working_fix(world: World, tmp_path: Path) -> None:
    """torch installed with --no-deps: pip check says filelock is missing. The fix printed for
    it must work as printed (here: no pyproject.toml in the directory)."""
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.5.1+cu124", indexes=["cu124"])

    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 1
    torch_problems = problems_of(report, "torch")
    assert any("pip check" in p["message"] and "filelock" in p["message"] for p in torch_problems), report
    fix = torch_problems[0]["fix"]
    proc = run_fix(fix, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"fix {fix!r} does not work\n" + out(proc)
    rc, report, proc = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 0, out(proc)
    assert versions(py, world)["torch"] == "2.5.1+cu124"


# -- a consistent environment, and the JSON shape ----------------------------------------------------


def test_consistent_environment_exit_0_and_json_shape(world: World, tmp_path: Path) -> None:
    env = bp_env(world, nvidia(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.5.1+cu124", "filelock", "typing-extensions", "torchvision==0.20.1+cu124",
             "xformers==0.0.28.post3", flash_attn_wheel(tmp_path / "w", broken=False), "einops", "tqdm",
             indexes=["cu124", "pypi"])
    proj = project(tmp_path / "proj", ["torch==2.5.1", "torchvision", "xformers", "flash-attn", "tqdm"])

    proc = backendpick("verify", "--python", py, "--json", env=env, cwd=proj)
    assert proc.returncode == 0, out(proc)
    report = json.loads(proc.stdout)  # stdout is exactly one JSON document
    # {"ok": bool, "torch": {...}, "packages": [...], "problems": [{"package", "message", "fix"}],
    #  "warnings": [same shape], "lock": the lock checked, null without one}
    assert {"ok", "torch", "packages", "problems", "warnings"} <= set(report)
    assert set(report) - {"ok", "torch", "packages", "problems", "warnings"} <= {"python", "pins", "lock"}
    assert report["lock"] is None
    assert report["ok"] is True and report["problems"] == []
    # flash-attn came from plain pip: nothing records the torch it was built for.
    [warning] = report["warnings"]
    assert warning["package"] == "flash-attn" and "no record of the torch it was built for" in warning["message"]
    assert report["torch"].pop("origin")["label"] == "index build"
    assert report["torch"] == {"version": "2.5.1+cu124", "backend": "cu124", "cuda": "12.4", "hip": None}
    assert {p["name"].lower(): p["version"] for p in report["packages"]} == {
        "torch": "2.5.1+cu124", "torchvision": "0.20.1+cu124", "xformers": "0.0.28.post3", "flash-attn": "2.7.4",
    }
    assert all(set(p) == {"name", "version"} for p in report["packages"])

    text = backendpick("verify", "--python", py, env=env, cwd=proj)
    assert text.returncode == 0, out(text)
    assert text.stdout.splitlines() == [
        f"python: {py}",
        "torch: 2.5.1+cu124 (cu124, CUDA 12.4)",
        "pins: none (a plain pip can replace the stack; backendpick install writes them)",  # installed by plain pip
        f"warning: flash-attn: {warning['message']}",
        f"  fix: {warning['fix']}",
        "ok: the GPU stack is consistent",
    ]


def test_environment_without_torch_is_consistent(world: World, tmp_path: Path) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 0 and report["ok"] is True and report["torch"] is None and report["packages"] == []


def test_bad_python_is_a_usage_error(world: World, tmp_path: Path) -> None:
    proc = backendpick("verify", "--python", tmp_path / "nope" / "bin" / "python", "--json",
                       env=bp_env(world, no_gpu(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 2, out(proc)
    # One whole JSON object for the error too (issue 9), never a half document.
    data = json.loads(proc.stdout)
    assert data == {"ok": False, "error": f"target interpreter {tmp_path / 'nope' / 'bin' / 'python'} does not exist",
                    "hint": "pass --python PATH to an existing python", "exit_code": 2}
    assert proc.stderr.splitlines()[0] == f"error: target interpreter {tmp_path / 'nope' / 'bin' / 'python'} does not exist"
