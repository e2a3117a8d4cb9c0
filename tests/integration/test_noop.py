"""A re-run with nothing to do, answered before the machinery loads (state/noop.py, issue 22),
with real pip: the answer is what the full pipeline prints, it asks no index and imports neither
click nor packaging; every change to what decides the install falls through to the full pipeline
(a real install where there is something to install); an install that fails or is stopped
leaves no record behind.

Whether a run took the fast path is read from the process itself: the launcher writes which of
click, packaging, rich and the pipeline it imported to a file named by a variable the check
does not read (``BP_TEST_LOADED``).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fakehw import FakeMachine
from tests.support.hermetic import subprocess_env
from tests.support.index import IndexServer
from tests.support.lab import ROOT, Lab, Result, py
from tests.support.venvs import venv_python

pytestmark = pytest.mark.integration

HEAVY = ("click", "packaging", "rich", "backendpick.planning.pipeline")
_LAUNCH = (
    "import atexit, json, os, sys; sys.dont_write_bytecode = False; sys.path.insert(0, {root!r})\n"
    "atexit.register(lambda: open(os.environ['BP_TEST_LOADED'], 'w').write("
    "json.dumps([m for m in {heavy!r} if m in sys.modules])))\n"
    "from backendpick.start import main; main()"
).format(root=str(ROOT), heavy=HEAVY)


@dataclass
class Run:
    result: Result
    loaded: list  # which of HEAVY the process imported

    @property
    def fast(self) -> bool:
        return self.loaded == []


class Env:
    """A finished venv, its project, its own user pip.conf, and a way to run backendpick there."""

    def __init__(self, lab: Lab, base: Path, machine: FakeMachine | None = None):
        self.lab, self.base = lab, base
        self.venv = lab.new_venv()
        self.project = base / "project"
        self.project.mkdir(parents=True)
        self.pyproject = self.project / "pyproject.toml"
        self.pyproject.write_text('[project]\nname = "demo"\nversion = "0.1"\ndependencies = ["torch", "tqdm"]\n'
                                  '\n[tool.backendpick]\nbackend = "cpu"\n')
        self.pip_conf = base / "pip.conf"
        shutil.copy(lab.world.pip_conf, self.pip_conf)
        self.machine = machine
        self.runs = 0
        self.args = ["--python", py(self.venv), "--project", str(self.project)]

    def env(self, **extra: str) -> dict:
        if self.machine is None:
            return self.lab.env(pip_conf=self.pip_conf, **extra)
        return subprocess_env(self.pip_conf, machine=self.machine, home=self.lab.home, cache=self.lab.cache,
                              extra={"BACKENDPICK_INDEX_URL": self.lab.template, **extra})

    def run(self, *args: str, cwd: Path | None = None, env: dict | None = None, command: str = "install") -> Run:
        self.runs += 1
        marker = self.base / f"loaded-{self.runs}.json"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _LAUNCH, command, *(args or self.args)],
                              env={**(env or self.env()), "BP_TEST_LOADED": str(marker)}, cwd=str(cwd or self.base),
                              capture_output=True, text=True, timeout=300)
        result = Result(tuple(args), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)
        assert proc.returncode == 0, result
        return Run(result, json.loads(marker.read_text()))

    def answered(self, *args: str, **kw) -> Run:
        """The record answers ``args``. Before, one full run writes it, or two: a run that asked
        the indexes (a request the last install's record does not hold) rewrites that record,
        and a run that changed a file the next one reads leaves no answer."""
        for _ in range(3):
            last = self.run(*args, **kw)
            if last.fast:
                return last
        raise AssertionError(f"three runs and no answer from the record:\n{last.result!r}")

    @property
    def record(self) -> Path:
        return self.venv / ".backendpick" / "noop.json"

    def versions(self) -> dict:
        return self.lab.versions(self.venv)


@pytest.fixture(scope="module")
def finished(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Env:
    """torch and tqdm from pyproject.toml, on cpu, installed once for the module."""
    e = Env(lab, tmp_path_factory.mktemp("noop"))
    first = e.run()
    assert "installed for cpu" in first.result.stdout, first.result
    return e


@pytest.mark.parametrize("extra", [[], ["--json"], ["-q"]], ids=["plain", "json", "quiet"])
def test_a_rerun_prints_what_the_full_pipeline_prints_without_loading_it(finished: Env, server: IndexServer,
                                                                         extra: list) -> None:
    args = [*finished.args, *extra]
    full = finished.run(*args)
    if full.fast:  # the module's runs so far wrote this one's record: take it away
        finished.record.unlink()
        full = finished.run(*args)
    assert {"click", "packaging", "backendpick.planning.pipeline"} <= set(full.loaded)  # rich: on a terminal
    server.clear_log()
    fast = finished.run(*args)
    assert fast.fast, fast.result
    assert server.log == []
    assert (fast.result.stdout, fast.result.stderr) == (full.result.stdout, full.result.stderr)
    if extra == ["--json"]:
        assert fast.result.json()["ok"] and fast.result.json()["ran"] == []
    else:
        assert fast.result.stdout == "nothing to do: the environment already matches the plan for cpu\n"


def _uninstall_tqdm(e: Env) -> None:
    done = e.lab.pip(e.venv, "uninstall", "-y", "tqdm", env=subprocess_env())
    assert done.returncode == 0, done.stderr


def _pyproject_line(e: Env) -> None:
    e.pyproject.write_text(e.pyproject.read_text().replace('"tqdm"]', '"tqdm", "requests-lite"]'))


def _pth_folder(e: Env) -> None:
    site = next((e.venv / "lib").glob("python*/site-packages"))
    (site / "zz-noop-test.pth").write_text(str(e.base) + "\n")


CHANGES = {
    # name: (the change, the words of the run after it, what that run did)
    "a dependency uninstalled": (_uninstall_tqdm, None, "installed"),
    "a new line in pyproject.toml": (_pyproject_line, None, "installed"),
    "a changed pip.conf": (lambda e: e.pip_conf.write_text(e.pip_conf.read_text() + "timeout = 30\n"), None, "nothing"),
    "a folder added by a .pth file": (_pth_folder, None, "nothing"),
    "another value of a pip variable": (None, {"PIP_DEFAULT_TIMEOUT": "31"}, "nothing"),
    "another working directory": (None, "cwd", "nothing"),
    "other words": (None, ["--installer", "pip"], "nothing"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_falls_through_to_the_full_pipeline(finished: Env, change: str) -> None:
    finished.answered()
    do, how, did = CHANGES[change]
    if do is not None:
        do(finished)
    if isinstance(how, dict):
        after = finished.run(env=finished.env(**how))
    elif how == "cwd":
        after = finished.run(cwd=finished.project)
    elif isinstance(how, list):
        after = finished.run(*finished.args, *how)
    else:
        after = finished.run()
    assert not after.fast, after.result
    if did == "installed":
        assert "installed for cpu" in after.result.stdout, after.result
    else:
        assert after.result.stdout.startswith("nothing to do"), after.result
    assert {"torch", "tqdm"} <= set(finished.versions())


def test_a_changed_nested_requirements_file_falls_through_to_an_install(finished: Env) -> None:
    reqs = finished.base / "reqs"
    reqs.mkdir(exist_ok=True)
    (reqs / "requirements.txt").write_text("torch\n-r more.txt\n")
    (reqs / "more.txt").write_text("tqdm\n${EXTRA_PACKAGE}\n")  # pip expands ${NAME}: any name counts
    args = ["--python", py(finished.venv), "--backend", "cpu", "-r", "reqs/requirements.txt"]
    finished.answered(*args, env=finished.env(EXTRA_PACKAGE="tqdm"))
    after = finished.run(*args, env=finished.env(EXTRA_PACKAGE="numpy"))
    assert not after.fast and "installed for cpu" in after.result.stdout, after.result
    assert "numpy" in finished.versions()
    (reqs / "more.txt").write_text("tqdm\neinops\n")
    after = finished.run(*args)
    assert not after.fast and "installed for cpu" in after.result.stdout, after.result
    assert "einops" in finished.versions()


def test_a_locked_rerun_is_answered_until_the_lock_changes(finished: Env, server: IndexServer) -> None:
    """``make install-locked`` is a re-run too: ``install --lock`` on the environment the lock
    describes is answered from the record, and a changed lock file falls through."""
    project = finished.base / "locked"
    project.mkdir()
    shutil.copy(finished.pyproject, project)
    finished.run("--backend", "cpu", "--python", py(finished.venv), "--project", str(project), command="lock")
    lock = project / "pylock.cpu.toml"
    args = ["--python", py(finished.venv), "--lock", str(lock)]
    server.clear_log()
    fast = finished.answered(*args)
    assert fast.result.stdout.startswith("nothing to do"), fast.result
    assert server.log == []
    lock.write_text(lock.read_text() + "# reviewed\n")
    after = finished.run(*args)
    assert not after.fast and after.result.stdout == fast.result.stdout, after.result
    # With ``{backend}`` and auto selection, the lock this machine would take first: cpu here.
    assert finished.answered("--python", py(finished.venv), "--backend", "auto", "--lock", "pylock.{backend}.toml",
                             cwd=project).fast


def test_a_failed_install_leaves_no_record(finished: Env) -> None:
    finished.answered()
    proc = finished.lab.run("install", *finished.args, "no-such-package-anywhere", env=finished.env())
    assert proc.returncode != 0, proc
    assert not finished.record.exists()
    assert not finished.run().fast


def test_an_install_stopped_half_way_leaves_no_record(finished: Env, server: IndexServer) -> None:
    finished.answered()
    psutil = lambda p: "/psutil-" in p  # noqa: E731 (pip's look-up of the new package)
    gate = server.gate(held=psutil, opens=lambda p: False, timeout=120)
    from tests.support.lab import argv
    proc = subprocess.Popen(argv("install", *finished.args, "psutil"), env=finished.env(), cwd=finished.base,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not gate.waited:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "pip never asked for psutil"
            time.sleep(0.05)
        # Holding the lock, before any change: the record is gone while it runs.
        assert not finished.record.exists()
        proc.send_signal(signal.SIGTERM)
        said = proc.communicate(timeout=60)[0]
    finally:
        server.ungate(gate)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, said
    assert not finished.record.exists()
    assert not finished.run().fast


def test_auto_selection_falls_through_on_a_new_driver_or_another_gpu(lab: Lab, tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path / "a100")
    machine.driver("550.54.14")
    machine.nvidia_smi(query="0, NVIDIA A100-SXM4-80GB, 550.54.14, 8.0, GPU-x, 81920\n")
    machine.driver_gpus(["NVIDIA A100-SXM4-80GB"])
    e = Env(lab, tmp_path, machine)
    e.pyproject.write_text('[project]\nname = "demo"\nversion = "0.1"\ndependencies = ["torch"]\n')
    first = e.run()
    assert "installed for cu124" in first.result.stdout, first.result
    e.answered()
    machine.driver("560.35.03")  # the driver's version file, as after an upgrade and a reboot
    assert not e.run().fast
    e.answered()
    machine.driver_gpus(["NVIDIA H100 80GB HBM3"])
    assert not e.run().fast
    e.answered()
    # Without the driver's list of GPUs, what nvidia-smi would say is not read again: no record.
    machine.driver_gpus([])
    assert not e.run().fast and not e.run().fast
    assert not e.record.exists()
    assert venv_python(e.venv).exists()


def _cached_copy(server: IndexServer, backend: str) -> str:
    """The world's ``backend`` index copied as ``noop-<backend>`` with pages fresh for 600 s (as
    PyPI serves them; the copy keeps the policy from every other test); its template."""
    name = f"noop-{backend}"
    if not (server.root / name).is_dir():
        staging = server.root / f".{name}.tmp"  # dot names are never served
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(server.index_dir(backend), staging)
        staging.rename(server.root / name)
    server.page_caching(name, "max-age=600")
    return server.base_url + "/noop-{backend}/simple"


def test_detect_answers_from_fresh_pages_and_falls_through_on_any_change(lab: Lab, server: IndexServer,
                                                                         tmp_path: Path) -> None:
    """detect asks the index; once its pages are fresh in the cache and nothing else changed, the
    next detect is answered before the machinery loads, with what the full run printed."""
    machine = FakeMachine(tmp_path / "h100")
    machine.driver("550.54.14")
    machine.nvidia_smi(query="0, NVIDIA H100 80GB HBM3, 550.54.14, 9.0, GPU-x, 81920\n")
    machine.driver_gpus(["NVIDIA H100 80GB HBM3"])
    template = [_cached_copy(server, b) for b in ("cpu", "cu124", "cu126")][0]
    e = Env(lab, tmp_path, machine)
    e.pyproject.write_text('[project]\nname = "demo"\nversion = "0.1"\ndependencies = ["torch"]\n')
    cache = tmp_path / "cache"
    env = e.env(BACKENDPICK_INDEX_URL=template, XDG_CACHE_HOME=str(cache))
    args = ["--python", py(e.venv), "--project", str(e.project)]

    def detect(*extra: str, env: dict = env) -> Run:
        return e.run(*args, *extra, env=env, command="detect")

    for extra in ([], ["--json"]):
        full = detect(*extra)
        assert not full.fast and "cu124" in full.result.stdout, full.result
        server.clear_log()
        fast = detect(*extra)
        assert fast.fast, fast.result
        assert server.log == []
        assert (fast.result.stdout, fast.result.stderr) == (full.result.stdout, full.result.stderr)

    changes = {
        "a new driver": lambda: machine.driver("560.35.03"),
        "a line in pyproject.toml": lambda: e.pyproject.write_text(e.pyproject.read_text() + "[tool.backendpick]\n"
                                                                                           'backend = "cpu"\n'),
        "a distribution installed": lambda: _dist(e.venv, "zz-noop", "1.0"),
    }
    for name, change in changes.items():
        change()
        after = detect()
        assert not after.fast, (name, after.result)
        assert detect().fast, name  # and that run left the answer for the next
    assert not detect(env={**env, "BACKENDPICK_CUDA_COMPAT": "minor"}).fast
    # The pages gone stale (stored 601 s ago): the full run asks the index again.
    for entry in cache.rglob("pages/*.json"):
        data = json.loads(entry.read_text())
        entry.write_text(json.dumps({**data, "stored": data["stored"] - 601}))
    server.clear_log()
    assert not detect().fast
    assert server.log != []


def _dist(venv: Path, name: str, version: str) -> None:
    site = next((venv / "lib").glob("python*/site-packages"))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
