"""``restore`` puts back exactly what was there (issue 18, items 4 and 5), with the real pip
against the test world:

* a torch no index serves (the NGC image's ``2.4.0a0+f70bd71a48.nv24.6``, installed from a file
  by plain pip), replaced on request (``--backend cpu``), comes back from the copy kept of it,
  byte for byte, with its INSTALLER and direct_url.json; verify passes; a second restore
  changes nothing;
* the measured repro: cu124 torch with flash-attn built for it, then cu128 torch with flash-attn
  built for that, then ``restore``: torch and the flash-attn built for 2.5.1 come back, offline,
  and verify passes (before: torch came back, flash-attn stayed built for 2.7.1);
* ``kill -9`` of everything the install started at four points of that switch (nothing changed
  yet, halfway through pip's uninstall, while pip writes the new torch's metadata, while
  flash-attn builds), then ``restore``: everything back as it was, verify passes.

The switch tests share one environment (cu124 torch 2.5.1 and flash-attn built from the world's
sdist, whose extension fails to import next to another torch), cloned per test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.bp_helpers import pip_from, versions
from tests.support.dists import make_wheel
from tests.support.hermetic import subprocess_env
from tests.support.index import IndexServer
from tests.support.lab import Result, argv, launch, make_machine, ok
from tests.support.venvs import clone_venv, files_of, site_packages, venv_python
from tests.support.world import World

pytestmark = pytest.mark.integration

A100 = (("NVIDIA A100-SXM4-80GB", "8.0"),)
NGC_TORCH = "2.4.0a0+f70bd71a48.nv24.6"
SWITCH = ("--backend", "cu128", "torch==2.7.1", "flash-attn")


def ngc_torch(dest: Path) -> Path:
    """NVIDIA's torch of the 24.06 container, as far as backendpick can tell: a local version no
    backend index uses, CUDA 12.5 in torch/version.py, the C++11 ABI."""
    version_py = f"__version__ = {NGC_TORCH!r}\ndebug = False\ncuda = '12.5'\nhip = None\n"
    return make_wheel(dest, "torch", NGC_TORCH, requires=["filelock", "typing-extensions"], tag="py3-none-any", files={
        "torch/__init__.py": "from torch import version as version\nfrom torch.version import __version__\n",
        "torch/version.py": version_py, "torch/_C.py": "_GLIBCXX_USE_CXX11_ABI = True\n",
        "torch/lib/libtorch_cuda.so": bytes(range(256)) * 64})


def test_a_torch_no_index_serves_comes_back_exactly_and_a_second_restore_changes_nothing(
        world: World, tmp_path: Path, server: IndexServer) -> None:
    env = subprocess_env(world.pip_conf, machine=make_machine(tmp_path, "cpu-only"), extra={
        "BACKENDPICK_INDEX_URL": world.server.base_url + "/{backend}/simple"})
    venv = world.new_venv(tmp_path)
    py = venv_python(venv)
    pip_from(world, py, ngc_torch(tmp_path / "ngc"), "filelock", "typing-extensions", indexes=["pypi"])
    before = files_of(venv)
    direct_url = (site_packages(venv) / f"torch-{NGC_TORCH}.dist-info" / "direct_url.json").read_text()

    dry = ok(launch("install", "--python", py, "--backend", "cpu", "torch", "--dry-run", env=env, cwd=tmp_path))
    assert f"# before any change, a copy is kept for restore of: torch {NGC_TORCH} (" in dry.stdout, dry
    replaced = ok(launch("install", "--python", py, "--backend", "cpu", "torch", env=env, cwd=tmp_path))
    assert versions(py, world)["torch"] == "2.7.1+cpu"
    assert f"kept a copy of torch {NGC_TORCH} (" in replaced.stdout and ", repacked)" in replaced.stdout, replaced

    server.clear_log()
    back = ok(launch("restore", "--python", py, env=env, cwd=tmp_path))
    assert "phase restore-kept: torch @ file://" in back.stdout, back
    assert server.log == [], "the kept copy is installed offline"
    assert versions(py, world)["torch"] == NGC_TORCH
    assert files_of(venv) == before, "not the files that were there"
    assert (site_packages(venv) / f"torch-{NGC_TORCH}.dist-info" / "direct_url.json").read_text() == direct_url
    report = ok(launch("verify", "--python", py, "--json", env=env, cwd=tmp_path)).json()
    assert report["ok"] and report["torch"]["version"] == NGC_TORCH and report["torch"]["cuda"] == "12.5", report

    again = ok(launch("restore", "--python", py, env=env, cwd=tmp_path))
    assert "the environment already matches snapshot" in again.output and "phase" not in again.output, again
    assert files_of(venv) == before
    listed = ok(launch("restore", "--python", py, "--list", "--json", env=env, cwd=tmp_path)).json()["snapshots"]
    assert [(s["by"], s["torch"], s["default"]) for s in listed] == [
        ("install", NGC_TORCH, True), ("restore", "2.7.1+cpu", False)], listed
    assert listed[0]["command"] == "install --backend cpu torch" and listed[0]["kept"].keys() == {"torch"}


# -- a backend switch with a build package ----------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """One environment of the switch tests and the backendpick environment it is run with."""

    world: World
    venv: Path
    env: dict

    @property
    def py(self) -> Path:
        return venv_python(self.venv)

    def run(self, *args: str | Path, cwd: Path) -> Result:
        return launch(*args, env=self.env, cwd=cwd)

    def built_for(self) -> str:
        code = "import flash_attn; print(flash_attn.torch_version)"
        proc = subprocess.run([str(self.py), "-c", code], env=subprocess_env(), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def verified(self, cwd: Path) -> dict:
        res = self.run("verify", "--python", self.py, "--json", cwd=cwd)
        assert res.returncode in (0, 1), res
        return res.json()

    def clone(self, tmp_path: Path) -> Env:
        """A copy of the environment (its pip.conf naming its own pins file, as install wrote
        it) with a copy of the wheel cache as it is now, for one test alone."""
        venv = clone_venv(self.venv, tmp_path / "venv")
        conf = venv / "pip.conf"
        text = conf.read_text().replace(str(self.venv), str(venv))
        conf.unlink()  # a new file: a clone may share the original's (hard links)
        conf.write_text(text)
        shutil.copytree(self.env["BACKENDPICK_CACHE_DIR"], tmp_path / "wheel-cache")
        return Env(self.world, venv, {**self.env, "BACKENDPICK_CACHE_DIR": str(tmp_path / "wheel-cache")})


@pytest.fixture(scope="module")
def base(world: World, tmp_path_factory: pytest.TempPathFactory) -> Env:
    """cu124 torch 2.5.1 with flash-attn 2.7.4 built against it, on an A100 with driver 570."""
    root = tmp_path_factory.mktemp("restore-exact")
    machine = make_machine(root, "a100-570", driver="570.133.20", gpus=A100, cuda="12.8", nvcc="12.8")
    env = subprocess_env(world.pip_conf, machine=machine, extra={
        "BACKENDPICK_INDEX_URL": world.server.base_url + "/{backend}/simple",
        "BACKENDPICK_CACHE_DIR": str(root / "wheel-cache")})
    built = Env(world, world.new_venv(root), env)
    ok(built.run("install", "--python", built.py, "--backend", "cu124", "torch==2.5.1", "flash-attn", cwd=root))
    assert built.built_for() == "2.5.1+cu124"
    return built


def test_restore_after_a_backend_switch_brings_back_torch_and_the_flash_attn_built_for_it(
        base: Env, tmp_path: Path, server: IndexServer) -> None:
    e = base.clone(tmp_path)
    before, was = files_of(e.venv), versions(e.py, e.world)

    switch = ok(e.run("install", "--python", e.py, *SWITCH, cwd=tmp_path))
    assert versions(e.py, e.world)["torch"] == "2.7.1+cu128" and e.built_for() == "2.7.1+cu128"
    kept = switch.stdout.split("kept a copy of ", 1)[1].splitlines()[0]
    # flash-attn's copy is the wheel backendpick built then, from its cache; torch is repacked.
    assert "torch 2.5.1+cu124 (" in kept and "flash-attn 2.7.4 (" in kept and "from the wheel cache" in kept, switch

    server.clear_log()
    back = ok(e.run("restore", "--python", e.py, cwd=tmp_path))
    assert server.log == [], "restore asked an index although every copy was kept"
    assert versions(e.py, e.world) == was
    assert e.built_for() == "2.5.1+cu124", "flash-attn is still the build for torch 2.7.1"
    assert files_of(e.venv) == before
    report = e.verified(tmp_path)
    assert report["ok"] and not report["warnings"], report  # the build record came back too
    assert "restored snapshot" in back.stdout

    again = ok(e.run("restore", "--python", e.py, cwd=tmp_path))
    assert "already matches" in again.output and "phase" not in again.output, again
    assert files_of(e.venv) == before


# -- kill -9 at any point ----------------------------------------------------------------------------

# Loaded by a .pth file of the cloned environment into every Python started there; it acts only
# in the pip process of the run under test (BP_TEST_KILL_AT), at one point of pip's own work,
# where it says so and waits to be killed.
HOOK = textwrap.dedent("""\
    import os, sys, time

    def _stop(what):
        with open(os.environ["BP_TEST_KILL_MARKER"], "w") as f:
            f.write(what)
        time.sleep(600)

    def _install():
        point = os.environ.get("BP_TEST_KILL_AT")
        argv = getattr(sys, "orig_argv", [])
        if not point or "pip" not in argv[:4]:
            return
        if point in ("uninstall-start", "uninstall-commit") and "uninstall" in argv:
            from pip._internal.req import req_uninstall as m
            name = "remove" if point == "uninstall-start" else "commit"
            original = getattr(m.UninstallPathSet, name)
            def hooked(self, *a, **kw):
                _stop(name)
                return original(self, *a, **kw)
            setattr(m.UninstallPathSet, name, hooked)
        elif point == "torch-record" and "install" in argv:
            from pip._internal.operations.install import wheel as w
            original = w.ZipBackedFile.save
            def hooked(self):
                folder = os.path.basename(os.path.dirname(self.dest_path))
                if os.path.basename(self.dest_path) == "RECORD" and folder.startswith("torch-2.7.1"):
                    _stop(self.dest_path)
                return original(self)
            w.ZipBackedFile.save = hooked

    _install()
    """)


def _run_processes(token: str) -> list[int]:
    """Every process started with ``BP_TEST_RUN=token`` in its environment (backendpick, the pip
    runs it started in their own sessions, their builds)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"BP_TEST_RUN={token}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_everything(token: str) -> None:
    """kill -9 of the whole run, as an OOM kill or `docker kill` ends it: nothing gets to clean up."""
    for _ in range(50):
        pids = _run_processes(token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"processes of the run would not die: {_run_processes(token)}")


KILL_POINTS = {
    # Snapshot and kept copies written, pip about to uninstall the first package: nothing changed.
    "uninstall-start": "hook",
    # pip moved flash-attn's files aside (its stash, ~lash_attn...) and was killed before
    # deleting them: flash-attn is gone, torch 2.5.1 still there.
    "uninstall-commit": "hook",
    # Both removed; torch 2.7.1's files and METADATA written, not yet the RECORD that comes last
    # in the wheel: a torch pip refuses to uninstall ("RECORD file not found").
    "torch-record": "hook",
    # torch 2.7.1 installed, flash-attn's source build for it under way (its sdist requested).
    "flash-attn-build": "gate",
}


def _reached(point: str, site: Path, now: dict, was: dict) -> None:
    """The environment the kill left is the one the point stands for."""
    if point == "uninstall-start":
        assert now == was
    elif point == "uninstall-commit":
        # (importlib.metadata still lists flash-attn: the stash holds its dist-info as ~lash_attn-...)
        assert not (site / "flash_attn-2.7.4.dist-info").exists() and now["torch"] == "2.5.1+cu124", now
        assert (site / "~lash_attn-2.7.4.dist-info").is_dir(), "no stash of pip's uninstall"
    elif point == "torch-record":
        assert now["torch"] == "2.7.1+cu128" and "flash-attn" not in now, now
        assert not (site / "torch-2.7.1+cu128.dist-info" / "RECORD").exists()
    else:
        assert now["torch"] == "2.7.1+cu128" and "flash-attn" not in now, now


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the pip hook finds pip's command line in sys.orig_argv")
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_at_any_point_of_a_switch_then_restore_brings_everything_back(
        base: Env, tmp_path: Path, server: IndexServer, point: str) -> None:
    e = base.clone(tmp_path)
    before, was = files_of(e.venv), versions(e.py, e.world)
    site = site_packages(e.venv)
    (site / "_bp_killhook.py").write_text(HOOK)
    (site / "zz-bp-killhook.pth").write_text("import _bp_killhook\n")
    marker = tmp_path / "reached"
    token = uuid.uuid4().hex
    gate = None
    if KILL_POINTS[point] == "gate":
        sdist = lambda p: p.endswith("/flash_attn-2.7.4.tar.gz")  # noqa: E731
        gate = server.gate(held=sdist, opens=lambda p: False, timeout=120)
    proc = subprocess.Popen(argv("install", "--python", e.py, *SWITCH), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**e.env, "BP_TEST_RUN": token, "BP_TEST_KILL_AT": point,
                                 "BP_TEST_KILL_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + 180
        while not (marker.exists() if gate is None else gate.waited):
            assert proc.poll() is None, f"the install ended before {point}:\n{proc.communicate()[0]}"
            assert time.monotonic() < deadline, f"{point} was never reached"
            time.sleep(0.05)
        _kill_everything(token)
        said = proc.communicate(timeout=60)[0]
    finally:
        if gate is not None:
            server.ungate(gate)
        _kill_everything(token)
    assert proc.returncode == -signal.SIGKILL, said
    (site / "zz-bp-killhook.pth").unlink()
    (site / "_bp_killhook.py").unlink()
    _reached(point, site, versions(e.py, e.world), was)

    back = ok(e.run("restore", "--python", e.py, cwd=tmp_path))
    if point == "torch-record":
        assert "phase remove-incomplete: torch" in back.stdout, back
    assert not any(p.name.startswith("~") for p in site.iterdir()), "pip's stash was left behind"
    assert versions(e.py, e.world) == was, back
    assert e.built_for() == "2.5.1+cu124"
    assert files_of(e.venv) == before, back
    report = e.verified(tmp_path)
    assert report["ok"] and not report["warnings"], report
