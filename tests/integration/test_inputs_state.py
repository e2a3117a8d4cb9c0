"""Issue 9 with real pip: requirement forms pip accepts, bad inputs as one line (and one JSON
object), damaged state, signals that stop pip, a lock that covers pip, and a safe restore."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.dists import make_sdist, make_wheel
from tests.support.lab import ROOT, Lab, ok, py
from tests.support.world import FILELOCK_VERSION, TYPING_EXTENSIONS_VERSION

pytestmark = pytest.mark.integration

LAUNCH = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from backendpick.start import main; main()"


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def one(directory: Path, pattern: str) -> Path:
    [found] = sorted(directory.glob(pattern))
    return found


# -- requirement forms pip accepts ----------------------------------------------------------------


def hashed_file(lab: Lab, path: Path, tqdm_hash: str | None = None) -> Path:
    """What pip-compile --generate-hashes writes (against the cpu index for torch)."""
    cpu, pypi = lab.server.index_dir("cpu"), lab.server.index_dir("pypi")
    lines = [
        ("torch==2.5.1+cpu", one(cpu, "torch-2.5.1+cpu-*.whl")),
        (f"filelock=={FILELOCK_VERSION}", one(pypi, f"filelock-{FILELOCK_VERSION}-*.whl")),
        (f"typing-extensions=={TYPING_EXTENSIONS_VERSION}", one(pypi, f"typing_extensions-{TYPING_EXTENSIONS_VERSION}-*.whl")),
        ("tqdm==4.66.0", one(pypi, "tqdm-4.66.0-*.whl")),
    ]
    text = "#\n# pip-compile --generate-hashes\n#\n"
    for req, wheel in lines:
        digest = tqdm_hash if (tqdm_hash and req.startswith("tqdm")) else sha256(wheel)
        text += f"{req} \\\n    --hash={digest}\n    # via -r requirements.in\n"
    path.write_text(text)
    return path


def test_hashed_requirements_install_and_pip_checks_the_hashes(lab: Lab, tmp_path: Path) -> None:
    venv = lab.new_venv()
    req = hashed_file(lab, tmp_path / "requirements.txt")
    res = ok(lab.run("install", "-v", "--python", py(venv), "--backend", "cpu", "-r", str(req)))
    assert res.phases_run == ["backend", "rest"]
    backend_cmd, rest_cmd = res.commands
    assert "--no-deps -r " in backend_cmd and "hashed-backend.txt" in backend_cmd
    assert "hashed-rest.txt" in rest_cmd
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu" and versions["tqdm"] == "4.66.0"
    assert versions["filelock"] == FILELOCK_VERSION

    bad = hashed_file(lab, tmp_path / "bad.txt", tqdm_hash="sha256:" + "0" * 64)
    venv2 = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv2), "--backend", "cpu", "-r", str(bad)), 1)
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in res.stderr
    assert "tqdm" not in lab.versions(venv2)


def make_project(path: Path, name: str, deps: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=64", "wheel"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "1.0"
        dependencies = {json.dumps(deps)}
    """))
    module = path / name.replace("-", "_")
    module.mkdir()
    (module / "__init__.py").write_text("VALUE = 1\n")
    return path


def test_editable_local_project_gets_torch_from_the_backend_phase(lab: Lab, tmp_path: Path) -> None:
    make_project(tmp_path / "pkg", "my-proj", ["torch==2.5.1", "tqdm"])
    (tmp_path / "requirements.txt").write_text("-e ./pkg\n")
    venv = lab.new_venv()
    res = ok(lab.run("install", "-v", "--python", py(venv), "--backend", "cpu", "-r", "requirements.txt", cwd=tmp_path))
    assert res.phases_run == ["backend", "rest"]
    assert res.commands[0].endswith("torch==2.5.1")
    assert res.commands[1].endswith(f"tqdm -e {tmp_path / 'pkg'}")
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu" and versions["my-proj"] == "1.0"
    assert lab.python(venv, "import my_proj, os; print(os.path.dirname(my_proj.__file__))") == str(tmp_path / "pkg" / "my_proj")


def test_editable_dot_on_the_command_line(lab: Lab, tmp_path: Path) -> None:
    pkg = make_project(tmp_path / "pkg", "dot-proj", ["torch==2.5.1"])
    venv = lab.new_venv()
    res = ok(lab.run("install", "-v", "--python", py(venv), "--backend", "cpu", "-e", ".", cwd=pkg))
    assert res.phases_run == ["backend", "rest"] and res.commands[0].endswith("torch==2.5.1")
    assert res.commands[1].endswith(f"-e {pkg}")
    assert lab.versions(venv)["dot-proj"] == "1.0"


def test_local_directory_wheel_and_sdist_paths(lab: Lab, tmp_path: Path) -> None:
    make_project(tmp_path / "proj", "dir-proj", ["torch==2.5.1"])
    wheel = make_wheel(tmp_path / "dist", "wheel-proj", "1.0", requires=["tqdm"])
    sdist = make_sdist(tmp_path / "dist", "sdist-proj", "1.0",
                       "from setuptools import setup\nsetup(name='sdist-proj', version='1.0')\n")
    venv = lab.new_venv()
    res = ok(lab.run("install", "-v", "--python", py(venv), "--backend", "cpu", "./proj", str(wheel),
                     f"dist/{sdist.name}", cwd=tmp_path))
    assert res.phases_run == ["backend", "rest"]
    assert res.commands[0].endswith("torch==2.5.1")
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu"
    assert {versions[n] for n in ("dir-proj", "wheel-proj", "sdist-proj", "tqdm")} == {"1.0", "4.66.0"}


def test_wheel_url_depending_on_torch_gets_torch_from_the_backend_phase(lab: Lab) -> None:
    """The plan's look-ahead reads the URL wheel's dependencies: torch is in the backend phase
    from the start, with no fence retry."""
    pypi = lab.server.index_dir("pypi")
    if not list(pypi.glob("url_needs_torch-1.0-*.whl")):
        make_wheel(pypi, "url-needs-torch", "1.0", requires=["torch"])
    url = lab.server.file_url("pypi", one(pypi, "url_needs_torch-1.0-*.whl").name)
    venv = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", url))
    assert res.phases_run == ["backend", "rest"]
    assert "moving it to its phase and running again" not in res.stdout
    versions = lab.versions(venv)
    assert versions["torch"].endswith("+cpu") and versions["url-needs-torch"] == "1.0"
    # Without -v: a line per phase, no command line; at the end what changed, as uv says it.
    assert res.commands == [] and "phase backend: torch\n" in res.stdout, res
    assert f"+ torch {versions['torch']}\n" in res.stdout and "+ url-needs-torch 1.0\n" in res.stdout, res
    # It starts as plan does: the backend, the reason and the torch (issue 20 item 5).
    assert res.stdout.splitlines()[:2] == ["backend: cpu", "reason: chosen by --backend"], res
    assert res.stdout.splitlines()[2].startswith("torch: "), res


def git_repo(path: Path, name: str = "git-proj") -> Path:
    make_project(path, name, ["torch==2.5.1"])
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "init"]):
        subprocess.run([*git, *args], cwd=path, check=True, capture_output=True)
    return path


def test_vcs_urls_with_and_without_egg(lab: Lab, tmp_path: Path) -> None:
    """One install of two VCS URLs (one install and its retry for both spellings)."""
    with_egg = f"git+{git_repo(tmp_path / 'repo').as_uri()}#egg=git-proj"
    without = f"git+{git_repo(tmp_path / 'repo2', 'git-proj2').as_uri()}"
    venv = lab.new_venv()
    res = ok(lab.run("install", "-v", "--python", py(venv), "--backend", "cpu", with_egg, without))
    # Passed as written; their dependencies are known only after a checkout: the fence moves torch.
    assert f" {shlex.quote(with_egg)} " in res.commands[-1] + " " and res.commands[-1].endswith(shlex.quote(without))
    assert "a dependency needs torch" in res.stdout
    # The retry asks the backend phase for the torch the projects pin, not the newest one.
    backend = [c for c in res.commands if "--index-url" in c][-1]
    assert backend.endswith("'torch==2.5.1'") or backend.endswith("torch==2.5.1")
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu" and versions["git-proj"] == versions["git-proj2"] == "1.0"


def test_env_vars_nested_files_and_constraints(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.txt").write_text("tqdm\n-c pins.txt\n")
    (tmp_path / "sub" / "pins.txt").write_text("tqdm==${TQDM_VERSION}\n")
    (tmp_path / "requirements.txt").write_text("torch==${TORCH_VERSION}\n-r sub/base.txt\n")
    venv = lab.new_venv()
    res = ok(lab.run("install", "-v", "--python", py(venv), "--backend", "cpu", "-r", "requirements.txt", cwd=tmp_path,
                     TORCH_VERSION="2.5.1", TQDM_VERSION="4.66.0"))
    assert res.commands[0].endswith("torch==2.5.1")
    constraints = Path(res.commands[1].split(" -c ", 1)[1].split()[0]).read_text()
    assert "tqdm==4.66.0" in constraints.splitlines()
    assert lab.versions(venv)["torch"] == "2.5.1+cpu"


# -- bad inputs: one line, exit 2, and with --json one object -------------------------------------


def test_dependencies_string_is_an_error_before_pip(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\ndependencies = "torch"\n')
    venv = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "--project", str(tmp_path)), 2)
    assert res.stderr.strip().splitlines()[0].endswith('[project].dependencies must be a list of requirement '
                                                       'strings, not str (write ["torch"])')
    assert "t" not in lab.versions(venv)


def test_python_problems_are_one_line(lab: Lab, tmp_path: Path) -> None:
    res = ok(lab.run("plan", "--python", "", "torch"), 2)
    assert res.stderr.splitlines()[0] == "error: --python is empty"
    broken = tmp_path / "venv"
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "python").symlink_to(tmp_path / "deleted" / "python3")
    res = ok(lab.run("plan", "--python", str(broken), "torch"), 2)
    assert "is a broken link to" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"torch # caf\xe9\n")
    res = ok(lab.run("plan", "--python", str(broken), "-r", str(bad)), 2)
    assert "is not UTF-8 text" in res.stderr


def test_json_for_every_outcome_and_quiet_result_line(lab: Lab) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("install", "--json", "--python", py(venv), "--backend", "cpu", "torch==2.5.1"))
    data = res.json()
    assert data["ok"] is True and data["backend"] == "cpu"
    assert {"change": "+", "name": "torch", "version": "2.5.1+cpu", "detail": None} in data["changes"]
    res = ok(lab.run("install", "--json", "--python", py(venv), "--backend", "cpu", "torch==2.5.1",
                     "--reinstall", "tqdm"), 2)
    assert res.json() == {"ok": False, "exit_code": 2, "error": res.json()["error"], "hint": res.json()["hint"]}
    assert "--reinstall tqdm" in res.json()["error"]
    res = ok(lab.run("install", "-q", "--python", py(venv), "--backend", "cpu", "torch==2.5.1"))
    assert res.stdout.strip() == "nothing to do: the environment already matches the plan for cpu"
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1",
                     BACKENDPICK_LOCK_TIMEOUT="abc"), 2)
    assert "BACKENDPICK_LOCK_TIMEOUT='abc' is not a number of seconds" in res.stderr


# -- state --------------------------------------------------------------------------------------


def test_damaged_state_is_one_line_with_the_fix(lab: Lab) -> None:
    venv = lab.new_venv()
    ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1"))
    history = venv / ".backendpick" / "history"
    (history / "29991231-000000-0.json").write_text("")
    res = ok(lab.run("restore", "--python", py(venv)), 2)
    assert "29991231-000000-0.json is damaged: empty file" in res.stderr and "Traceback" not in res.stderr
    (history / "29991231-000000-0.json").write_text('{"packages": []}')
    res = ok(lab.run("restore", "--json", "--python", py(venv)), 2)
    assert "is damaged: no table of packages" in res.json()["error"]
    (history / "29991231-000000-0.json").unlink()
    lock = venv / ".backendpick" / "lock"
    lock.unlink()
    lock.mkdir()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1"), 2)
    assert f"error: {lock} is a directory, not backendpick's lock file" in res.stderr
    assert f"rm -r {lock}" in res.stderr


def test_restore_checks_availability_first_and_snapshots_before(lab: Lab) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1"))
    first = res.stdout.split("snapshot ", 1)[1].split()[0]
    history = venv / ".backendpick" / "history"
    # A snapshot whose tqdm release is gone from the index: nothing may change.
    data = json.loads((history / f"{first}.json").read_text())
    data["packages"]["tqdm"] = {"name": "tqdm", "version": "9.9.9", "direct_url": None}
    (history / "20000101-000000-0.json").write_text(json.dumps({**data, "id": "20000101-000000-0"}))
    before = lab.versions(venv)
    res = ok(lab.run("restore", "--python", py(venv), "20000101-000000-0"), 1)
    assert "not available any more: tqdm==9.9.9" in res.stderr and "nothing was changed" in res.stderr
    assert lab.versions(venv) == before
    (history / "20000101-000000-0.json").unlink()

    # The real restore: snapshot first, so the restore itself can be undone.
    res = ok(lab.run("restore", "--python", py(venv), first))
    undo = res.stdout.split("to undo this restore: ", 1)[1].splitlines()[0].split()[-1]
    assert "torch" not in lab.versions(venv)
    res = ok(lab.run("restore", "--python", py(venv), undo))
    assert lab.versions(venv).get("torch") == "2.5.1+cpu", res


# -- signals and the lock ----------------------------------------------------------------------------


def slow_sdist(directory: Path, pidfile: Path) -> Path:
    """An sdist whose build announces its pid and then sleeps: a pip step that is still running."""
    setup = (f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
             "from setuptools import setup\nsetup(name='slow-pkg', version='1.0')\n")
    return make_sdist(directory, "slow-pkg", "1.0", setup)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waits for a parent to collect it; it runs nothing


def start(lab: Lab, venv: Path, sdist: Path, pidfile: Path) -> subprocess.Popen:
    """backendpick in its own process group, like a job under a shell, CI runner or `timeout`."""
    argv = [sys.executable, "-c", LAUNCH, "install", "--python", py(venv), "--backend", "cpu",
            "torch==2.5.1", str(sdist)]
    proc = subprocess.Popen(argv, env=lab.env(), cwd=str(lab.empty_project), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not pidfile.exists() or not pidfile.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the slow build never started"
        time.sleep(0.2)
    return proc


def pip_pid(venv: Path) -> int:
    text = (venv / ".backendpick" / "lock").read_text()
    return int(text.split("(pip pid ", 1)[1].rstrip(")"))


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_the_group_stops_pip_and_prints_the_way_back(lab: Lab, tmp_path: Path, sig, code) -> None:
    venv = lab.new_venv()
    pidfile = tmp_path / "build.pid"
    proc = start(lab, venv, slow_sdist(tmp_path / "dist", pidfile), pidfile)
    build, pip = int(pidfile.read_text()), pip_pid(venv)
    try:
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        for pid in (build, pip):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == code, err
    assert not alive(build) and not alive(pip)
    assert f"error: stopped by {sig.name}; pip was stopped and the environment may be partly changed" in err
    assert "hint: to return to the environment before this install: backendpick restore --python" in err
    assert lab.versions(venv)["torch"] == "2.5.1+cpu"  # the backend phase had finished


def test_kill_9_leaves_the_lock_with_pip_until_pip_ends(lab: Lab, tmp_path: Path) -> None:
    venv = lab.new_venv()
    pidfile = tmp_path / "build.pid"
    proc = start(lab, venv, slow_sdist(tmp_path / "dist", pidfile), pidfile)
    pip = pip_pid(venv)
    try:
        proc.kill()  # SIGKILL to backendpick alone: no handler runs, pip goes on
        proc.communicate(timeout=60)
        assert alive(pip)
        res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1",
                         BACKENDPICK_LOCK_TIMEOUT="1"), 4)
        assert f"(pip pid {pip})" in res.output
    finally:
        try:
            os.killpg(pip, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 60
    while alive(pip) and time.monotonic() < deadline:
        time.sleep(0.2)
    # pip gone: the kernel released the lock with it.
    ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1", BACKENDPICK_LOCK_TIMEOUT="5"))


def test_state_files_in_the_way_are_named(lab: Lab) -> None:
    venv = lab.new_venv()
    state = venv / ".backendpick"
    (state / "constraints.txt").mkdir(parents=True)
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1", "tqdm"), 2)
    assert f"error: cannot write {state / 'constraints.txt'}: Is a directory" in res.stderr
    assert "to return to the environment before this install: backendpick restore" in res.stderr
    assert "Traceback" not in res.stderr
    (state / "constraints.txt").rmdir()
    state_file = lab.new_venv() / ".backendpick"
    state_file.write_text("")
    res = ok(lab.run("install", "--python", py(state_file.parent), "--backend", "cpu", "torch==2.5.1"), 2)
    assert f"error: {state_file} is not a directory" in res.stderr
