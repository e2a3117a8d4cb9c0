"""The guards of issue 4, each shown by a test that fails without it:

* auto never downgrades a GPU environment on a machine where no GPU is seen now;
* a snapshot before every change, and ``backendpick restore`` back to it;
* one backendpick at a time per environment (lock, message, timeout, exit 4);
* install fails loudly when its own result does not verify.
"""

from __future__ import annotations

import json
import os
import shutil
import queue
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.bp_helpers import (
    UNDEFINED_SYMBOL,
    backendpick,
    bp_env,
    fix_argv,
    module_index,
    no_gpu,
    out,
    pip_from,
    private_index,
    project,
    template_url,
    torch_stack,
    verify_json,
    versions,
    xformers_wheel,
)
from tests.support.dists import make_wheel
from tests.support.index import IndexServer
from tests.support.lab import spawn
from tests.support.venvs import venv_python
from tests.support.world import World

pytestmark = pytest.mark.integration

STACK_124 = ("torch==2.5.1", "torchvision", "xformers")


def _snapshot_command(output: str) -> str:
    """The way back install prints: ``... to return to it: backendpick restore ... ID``."""
    m = re.search(r"to return to (?:it|the environment before this install): (backendpick restore [^\n;]+)", output)
    assert m, f"no restore command in the output:\n{output}"
    return m.group(1).strip()


# -- auto never downgrades -------------------------------------------------------------------------


@pytest.mark.parametrize("backend_args", [(), ("--backend", "auto")], ids=["default", "auto"])
def test_auto_keeps_installed_cuda_torch_without_gpu_and_says_why(world: World, tmp_path: Path, backend_args) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    torch_stack(world, py, "2.5.1", "cu124")

    proc = backendpick("install", "--python", py, "torch==2.5.1", *backend_args, env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    assert versions(py, world)["torch"] == "2.5.1+cu124"
    said = proc.stdout + proc.stderr
    # The user learns why their CPU-only machine kept a CUDA torch, and how to switch.
    assert "no usable GPU detected" in said and "keeping cu124" in said and "--backend cpu" in said, out(proc)


def test_auto_keeps_cuda_when_it_changes_something_and_explicit_cpu_switches(world: World, tmp_path: Path) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    torch_stack(world, py, "2.5.1", "cu124")

    proc = backendpick("install", "--python", py, "torch==2.5.1", "torchvision", env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    got = versions(py, world)
    assert (got["torch"], got["torchvision"]) == ("2.5.1+cu124", "0.20.1+cu124")
    assert "installed for cu124 (installed: no usable GPU detected now" in proc.stdout, out(proc)
    assert "keeping cu124 (pass --backend cpu to switch)" in proc.stdout

    proc = backendpick("install", "--python", py, "--backend", "cpu", "torch==2.5.1", "torchvision", env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    got = versions(py, world)
    assert (got["torch"], got["torchvision"]) == ("2.5.1+cpu", "0.20.1+cpu")


def test_auto_keeps_pypi_cuda_torch_without_gpu(world: World, tmp_path: Path) -> None:
    """PyPI's untagged Linux torch is a CUDA build (torch.version.cuda == "12.6" for 2.7.1):
    no GPU seen now must not turn it into a CPU torch either."""
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.7.1", "filelock", "typing-extensions", indexes=["pypi"])

    proc = backendpick("install", "--python", py, "torch==2.7.1", env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    _, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert report["torch"]["cuda"] == "12.6", (report["torch"], out(proc))
    assert "keeping" in proc.stdout and "--backend cpu" in proc.stdout, out(proc)
    # ... and kept as it is: not reinstalled from the cu126 index as 2.7.1+cu126.
    assert versions(py, world)["torch"] == "2.7.1", out(proc)


def test_pypi_torch_stays_for_its_own_backend_and_goes_for_another(world: World, tmp_path: Path) -> None:
    """PyPI's untagged torch 2.7.1 is the CUDA 12.6 build (its torch/version.py): --backend cu126
    is met with it, so nothing removes or reinstalls it (issue 18, expectation 3), and verify
    finds nothing wrong; --backend cu128 differs, so it is replaced."""
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.7.1", "filelock", "typing-extensions", indexes=["pypi"])
    version_py = next((py.parent.parent / "lib").glob("python3*/site-packages/torch/version.py"))
    before = version_py.stat()

    proc = backendpick("install", "--python", py, "--backend", "cu126", "einops", env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    assert "remove" not in proc.stdout, out(proc)
    after = version_py.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), out(proc)
    assert module_index(py, "torch", world) == "pypi" and versions(py, world)["einops"] == "0.8.0"
    code, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert code == 0 and report["problems"] == [] and report["torch"]["backend"] == "cu126", report

    plan = backendpick("plan", "--json", "--python", py, "--backend", "cu128", "einops", env=env, cwd=tmp_path)
    assert plan.returncode == 0, out(plan)
    phases = {p["name"]: p for p in json.loads(plan.stdout)["phases"]}
    assert phases["remove"]["requirements"] == ["torch"] and phases["backend"]["requirements"] == ["torch"], phases


# -- snapshots and restore --------------------------------------------------------------------------


def test_snapshot_and_restore_round_trip(world: World, tmp_path: Path, server: IndexServer) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    venv = world.new_venv(tmp_path)
    py = venv_python(venv)
    empty = versions(py, world)

    first = backendpick("install", "--python", py, "--backend", "cu124", *STACK_124, env=env, cwd=tmp_path)
    assert first.returncode == 0, out(first)
    back_to_empty = _snapshot_command(first.stdout)
    on_cu124 = versions(py, world)
    assert on_cu124["torch"] == "2.5.1+cu124" and on_cu124["xformers"] == "0.0.28.post3"

    second = backendpick("install", "--python", py, "--backend", "cu126", "torch==2.6.0", "torchvision", "xformers",
                         env=env, cwd=tmp_path)
    assert second.returncode == 0, out(second)
    back_to_cu124 = _snapshot_command(second.stdout)
    on_cu126 = versions(py, world)
    assert (on_cu126["torch"], on_cu126["torchvision"], on_cu126["xformers"]) == ("2.6.0+cu126", "0.21.0+cu126", "0.0.29.post2")

    # What was recorded: every distribution with its name, version, source and files; what the
    # switch removed (torch and its companions) with the copy kept of it.
    snap_id = back_to_cu124.split()[-1]
    recorded = json.loads((venv / ".backendpick" / "history" / f"{snap_id}.json").read_text())["packages"]
    assert {k: v["version"] for k, v in recorded.items()} == on_cu124
    torch = recorded["torch"]
    assert (torch["name"], torch["version"], torch["direct_url"], torch["installer"]) == ("torch", "2.5.1+cu124", None, "pip")
    assert {k for k, v in recorded.items() if "kept" in v} == {"torch", "torchvision", "xformers"}
    assert torch["kept"]["identity"] == torch["files"]
    assert (venv / ".backendpick" / "kept" / torch["kept"]["wheel"]).is_file()

    listing = backendpick("restore", "--python", py, "--list", env=env, cwd=tmp_path)
    assert listing.returncode == 0, out(listing)
    lines = listing.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["snapshot:", f"id={back_to_empty.split()[-1]}"],
                                                    ["snapshot:", f"id={snap_id}"]], out(listing)
    assert 'torch=none' in lines[0] and 'torch="2.5.1+cu124 (cu124)"' in lines[1] and lines[1].endswith("note=default")
    assert 'before="install --backend cu126 torch==2.6.0 torchvision xformers"' in lines[1], out(listing)
    # Without its kept copies (removed by hand), a snapshot's backend builds come from their index.
    shutil.rmtree(venv / ".backendpick" / "kept")

    dry = backendpick(*fix_argv(back_to_cu124), "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, out(dry)
    assert "torch==2.5.1+cu124" in dry.stdout and world.url("cu124") in dry.stdout
    assert versions(py, world) == on_cu126  # --dry-run changes nothing

    server.clear_log()
    proc = backendpick(*fix_argv(back_to_cu124), env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    assert versions(py, world) == on_cu124
    # Backend packages come back from the backend index only: the user's extra index (hostile)
    # and default index are never asked for them (restore's availability check asks the same
    # index first, then pip).
    for name in ("torch", "torchvision", "xformers"):
        assert set(server.indexes_asked_for(name)) == {"cu124"}, (name, server.log)

    proc = backendpick(*fix_argv(back_to_empty), env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    assert versions(py, world) == empty


def test_restore_brings_back_pypi_torch_and_a_local_wheel_from_where_they_came(
        world: World, tmp_path: Path, server: IndexServer) -> None:
    """A snapshot records where packages came from: PyPI's (untagged, CUDA) torch and an xformers
    installed from a wheel file come back from there, and torch is never looked up on the
    user's extra index (hostile)."""
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    wheel = xformers_wheel(tmp_path / "w", "0.0.31", torch_pin="2.7.1",
                           cpp_lib={"torch_version": "2.7.1", "cuda_version": "1206"})
    pip_from(world, py, "torch==2.7.1", "filelock", "typing-extensions", wheel, indexes=["pypi"])
    before = versions(py, world)

    # cu128: PyPI's torch 2.7.1 is the cu126 build, which --backend cu126 would keep as it is.
    proc = backendpick("install", "--python", py, "--backend", "cu128", "torch==2.7.1", "xformers", env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    assert versions(py, world)["torch"] == "2.7.1+cu128"

    server.clear_log()
    back = backendpick(*fix_argv(_snapshot_command(proc.stdout)), env=env, cwd=tmp_path)
    assert back.returncode == 0, out(back)
    assert versions(py, world)["torch"] == "2.7.1", "restore said it restored, but torch is still the cu128 build"
    assert versions(py, world) == before
    assert module_index(py, "torch", world) == "pypi"
    assert module_index(py, "xformers", world) == "file"
    assert "hostile" not in server.indexes_asked_for("torch"), server.indexes_asked_for("torch")


def test_restore_brings_back_the_build_not_only_the_version(world: World, tmp_path: Path) -> None:
    """xformers 0.0.31 exists on cu126 and cu128 under one version (no local tag): going back
    from the cu126 stack to the cu128 one must also bring back cu128's xformers."""
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    pip_from(world, py, "torch==2.7.1+cu128", "filelock", "typing-extensions", "xformers==0.0.31", indexes=["cu128"])

    proc = backendpick("install", "--python", py, "--backend", "cu126", "torch==2.7.1", "xformers", env=env, cwd=tmp_path)
    assert proc.returncode == 0, out(proc)
    assert module_index(py, "xformers", world) == "cu126"

    back = backendpick(*fix_argv(_snapshot_command(proc.stdout)), env=env, cwd=tmp_path)
    assert back.returncode == 0, out(back)
    assert versions(py, world)["torch"] == "2.7.1+cu128"
    assert module_index(py, "xformers", world) == "cu128", "torch is back on cu128, xformers is still cu126's build"


# -- the lock ----------------------------------------------------------------------------------


def _state_dir(py: Path) -> Path:
    from backendpick.edges import paths
    from backendpick.target import inspection

    return paths.state_dir(inspection.inspect(py))


@contextmanager
def _held(state_dir: Path) -> Iterator[None]:
    """Hold the environment's lock the way a running backendpick does, from this process."""
    from backendpick.edges import envlock

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with envlock.hold(state_dir, on_wait=lambda message: None, env={}):
            taken.set()
            release.wait(120)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def _lines(proc) -> queue.Queue[str | None]:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue, needle: str, seen: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} never appeared; output so far:\n" + "\n".join(seen))


def test_install_waits_for_the_lock_then_finishes(world: World, tmp_path: Path) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    state = _state_dir(py)
    seen: list[str] = []
    with _held(state):
        proc = spawn("install", "--python", py, "--backend", "cu124", *STACK_124, env=env, cwd=tmp_path)
        try:
            lines = _lines(proc)
            waiting = _wait_for(lines, "waiting for", seen)
            assert f"waiting for backendpick pid {os.getpid()} to finish with this environment" in waiting
            time.sleep(1.0)
            assert proc.poll() is None  # still waiting, and nothing changed meanwhile
            assert "torch" not in versions(py, world)
            assert not list(state.glob("history/*.json"))  # no snapshot yet: it waits before planning
        except BaseException:
            proc.kill()
            raise
    rc = proc.wait(120)
    while True:
        line = lines.get(timeout=30)
        if line is None:
            break
        seen.append(line)
    text = "\n".join(seen)
    assert rc == 0, text
    assert text.index("waiting for") < text.index("snapshot ") < text.index("phase backend: done"), text
    assert versions(py, world)["torch"] == "2.5.1+cu124"
    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 0, report


def test_lock_timeout_is_exit_4_with_one_error_line(world: World, tmp_path: Path) -> None:
    env = bp_env(world, no_gpu(tmp_path), BACKENDPICK_LOCK_TIMEOUT="1")
    venv = world.new_venv(tmp_path)
    py = venv_python(venv)
    before = versions(py, world)
    with _held(_state_dir(py)):
        started = time.monotonic()
        proc = backendpick("install", "--python", py, "--backend", "cu124", "torch==2.5.1", env=env, cwd=tmp_path)
        waited = time.monotonic() - started
        restore = backendpick("restore", "--python", py, env=env, cwd=tmp_path)
    assert proc.returncode == 4, out(proc)
    assert waited >= 1.0
    assert "waiting for backendpick pid" in proc.stdout and "(up to 1s)" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: backendpick pid {os.getpid()} held {venv} for more than 1s"], out(proc)
    assert "Traceback" not in proc.stderr
    assert all(line.startswith(("error:", "hint:")) for line in proc.stderr.splitlines()), out(proc)
    assert versions(py, world) == before
    # restore changes the environment too, so it takes the same lock.
    assert restore.returncode == 4, out(restore)


def test_two_concurrent_installs_do_not_interleave(world: World, tmp_path: Path) -> None:
    env = bp_env(world, no_gpu(tmp_path))
    py = venv_python(world.new_venv(tmp_path))
    procs = [spawn("install", "--python", py, "--backend", "cu124", *STACK_124, env=env, cwd=tmp_path) for _ in range(2)]
    outputs = []
    for p in procs:
        text, _ = p.communicate(timeout=180)
        outputs.append(text)
        assert p.returncode == 0, text
    joined = "\n".join(outputs)
    # pip ran once: the second run waited, then found the first one's result complete.
    assert joined.count("phase backend: done") == 1, joined
    assert sum("nothing to do" in o for o in outputs) == 1, joined
    got = versions(py, world)
    assert (got["torch"], got["torchvision"], got["xformers"]) == ("2.5.1+cu124", "0.20.1+cu124", "0.0.28.post3")
    rc, report, _ = verify_json(py, env=env, cwd=tmp_path)
    assert rc == 0, report


# -- install verifies its own result ----------------------------------------------------------------


def _bad_backend_indexes(world: World) -> str:
    """An index template whose cu124 index serves an xformers build for another torch (its
    metadata pin fits, cpp_lib.json says torch 2.4.0): pip is happy, the result is broken."""
    directory = world.server.root / "bpbad-cu124"
    if not directory.is_dir():
        staging = world.server.root / ".bpbad-cu124.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        for f in world.server.index_dir("cu124").iterdir():
            if f.is_file() and not f.name.startswith("xformers"):
                (staging / f.name).write_bytes(f.read_bytes())
        make_wheel(staging, "xformers", "0.0.28.post3", requires=["torch==2.5.1"],
                   files={"xformers/cpp_lib.json": json.dumps({"torch_version": "2.4.0+cu124", "cuda_version": "1204"})})
        staging.rename(directory)
    return template_url(world).replace("/{backend}/", "/bpbad-{backend}/")


def test_install_fails_loudly_when_its_backend_result_does_not_verify(world: World, tmp_path: Path) -> None:
    env = bp_env(world, no_gpu(tmp_path), BACKENDPICK_INDEX_URL=_bad_backend_indexes(world))
    py = venv_python(world.new_venv(tmp_path))
    before = versions(py, world)

    proc = backendpick("install", "--python", py, "--backend", "cu124", "torch==2.5.1", "xformers", env=env, cwd=tmp_path)
    assert proc.returncode == 1, out(proc)
    assert "error: installed, but the result does not verify" in proc.stderr
    assert "problem: xformers: xformers 0.0.28.post3 was built for torch 2.4.0+cu124" in proc.stderr
    hint = [line for line in proc.stderr.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1 and "backendpick restore --python" in hint[0], out(proc)

    back = backendpick(*fix_argv(_snapshot_command(hint[0])), env=env, cwd=tmp_path)
    assert back.returncode == 0, out(back)
    assert versions(py, world) == before


def test_install_fails_loudly_when_the_built_extension_does_not_load(world: World, tmp_path: Path) -> None:
    """A project depending on flash-attn whose compiled module is broken (built against another
    torch): pip succeeds, backendpick must not."""
    conf = private_index(world, "bp-flash-broken", drop=["flash_attn"], wheels=[("flash-attn", "2.7.4", {
        "requires": ["torch", "einops"], "files": {"flash_attn_2_cuda.py": f"raise ImportError({UNDEFINED_SYMBOL!r})\n"}})])
    env = bp_env(world, no_gpu(tmp_path), conf)
    proj = project(tmp_path / "proj", ["torch==2.5.1", "flash-attn"])
    py = venv_python(world.new_venv(tmp_path))
    before = versions(py, world)

    proc = backendpick("install", "--python", py, "--backend", "cu124", env=env, cwd=proj)
    assert proc.returncode == 1, out(proc)
    assert "does not verify" in proc.stderr, out(proc)
    assert "problem: flash-attn: flash-attn was compiled against a different torch" in proc.stderr
    hint = [line for line in proc.stderr.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1 and "backendpick restore --python" in hint[0], out(proc)

    back = backendpick(*fix_argv(_snapshot_command(hint[0])), env=env, cwd=proj)
    assert back.returncode == 0, out(back)
    assert versions(py, world) == before

