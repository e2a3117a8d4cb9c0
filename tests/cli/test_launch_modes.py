"""The launcher's two ways (tests/support/lab.py ``launch``): the commands that change nothing run
inside the test process, the rest as a process of their own. These smoke tests run the same
command both ways and want the same exit code, stdout and stderr, so a difference between the
two (an environment variable, the working directory, a stream, an exception) fails here first."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.support import inprocess
from tests.support.lab import Lab, launch, py

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def target(lab: Lab) -> str:
    return py(lab.new_venv())


def both(lab: Lab, *args: str, machine: str = "none", cwd: Path | None = None, **extra: str):
    env = lab.env(machine, **extra)
    where = cwd or lab.empty_project
    return (launch(*args, env=env, cwd=where, process=True), launch(*args, env=env, cwd=where, process=False))


def same(a, b) -> None:
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), f"{a!r}\n=== in process ===\n{b!r}"


@pytest.mark.parametrize("args, machine", [
    (("detect", "--offline", "--json"), "nvidia-560-a100"),
    (("detect",), "nvidia-550-a100"),
    (("plan", "--backend", "cu124", "torch==2.5.1", "xformers", "tqdm"), "none"),
    (("plan", "--json", "torch"), "nvidia-570-v100"),
    (("install", "--dry-run", "--backend", "cpu", "torch", "tqdm"), "none"),
    (("plan", "--backend", "cu999", "torch"), "none"),  # a usage error: exit 2, one line
    (("plan", "--json", "--backend", "cu999", "torch"), "none"),  # the same as one JSON object
    (("verify", "--json"), "nvidia-550-a100"),
    (("verify",), "none"),
    (("--version",), "none"),
    (("plan", "--help"), "none"),
], ids=["detect-offline-json", "detect", "plan", "plan-json-auto", "dry-run", "bad-backend", "bad-backend-json",
        "verify-json", "verify", "version", "help"])
def test_in_process_run_is_the_run_of_a_process(lab: Lab, target: str, args, machine) -> None:
    if args[0] in ("plan", "install", "detect", "verify"):
        args = (args[0], "--python", target, *args[1:])
    process, here = both(lab, *args, machine=machine)
    same(process, here)


def test_relative_paths_are_read_from_the_working_directory(lab: Lab, target: str, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch==2.5.1\ntqdm\n")
    process, here = both(lab, "install", "--dry-run", "--python", target, "--backend", "cpu", "-r", "requirements.txt",
                         cwd=tmp_path)
    same(process, here)
    assert process.returncode == 0 and "tqdm" in process.stdout


def test_only_the_commands_that_change_nothing_run_in_process() -> None:
    assert inprocess.suits(["plan", "torch"]) and inprocess.suits(["detect", "--json"])
    assert inprocess.suits(["install", "--dry-run", "torch"]) and inprocess.suits(["--version"])
    assert not inprocess.suits(["install", "torch"])
    assert not inprocess.suits(["install", "--", "--dry-run"])  # a requirement, not the flag
    assert inprocess.suits(["verify", "--json"]) and not inprocess.suits(["restore", "--dry-run"])
    assert not inprocess.suits(["cache", "clear"])
    # The interpreter's own settings (-X importtime here) need an interpreter of their own.
    assert not inprocess.suits(["plan", "torch"], {"PYTHONPROFILEIMPORTTIME": "1"})
    assert inprocess.suits(["plan", "torch"], {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/bin"})


def test_the_run_leaves_the_test_process_as_it_found_it(lab: Lab, target: str, tmp_path: Path) -> None:
    environ, cwd, threads = dict(os.environ), os.getcwd(), set(threading.enumerate())
    env = lab.env("nvidia-560-a100", SOME_SETTING="x")
    res = launch("plan", "--python", target, "torch", env=env, cwd=tmp_path, process=False)
    assert res.returncode == 0, res
    assert dict(os.environ) == environ and os.getcwd() == cwd
    assert not [t for t in threading.enumerate() if t not in threads and t.is_alive()]


def test_a_command_that_is_not_read_only_cannot_be_forced_in_process(lab: Lab, target: str) -> None:
    with pytest.raises(ValueError, match="cannot run inside the test process"):
        launch("install", "--python", target, "tqdm", env=lab.env(), cwd=lab.empty_project, process=False)


# -- what a process of its own would have done with a command that misbehaves --------------------


def _detect_does(monkeypatch: pytest.MonkeyPatch, action) -> None:
    from backendpick.commands import detect

    monkeypatch.setattr(detect, "run", lambda *a, **kw: action())


def test_an_escaping_exception_is_a_traceback_and_exit_1(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail():
        raise RuntimeError("a bug")

    _detect_does(monkeypatch, fail)
    res = launch("detect", "--offline", env=lab.env(), cwd=lab.empty_project, process=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("Traceback (most recent call last):") and res.stderr.endswith("RuntimeError: a bug\n")


def test_a_thread_left_running_fails_the_test(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()

    def leave_a_thread():
        threading.Thread(target=stop.wait, args=(30,), name="left-behind", daemon=True).start()
        return 0

    _detect_does(monkeypatch, leave_a_thread)
    try:
        with pytest.raises(inprocess.LeakedState, match="left-behind"):
            launch("detect", "--offline", env=lab.env(), cwd=lab.empty_project, process=False)
    finally:
        stop.set()


def test_a_run_past_its_timeout_raises_as_subprocess_would(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import time

    _detect_does(monkeypatch, lambda: time.sleep(60))
    environ, cwd = dict(os.environ), os.getcwd()
    with pytest.raises(subprocess.TimeoutExpired):
        launch("detect", "--offline", env=lab.env(), cwd=lab.empty_project, timeout=0.5, process=False)
    assert dict(os.environ) == environ and os.getcwd() == cwd  # put back on the way out
