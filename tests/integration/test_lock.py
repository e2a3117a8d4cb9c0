"""Locks per backend (issue 21): ``backendpick lock`` writes ``pylock.<backend>.toml`` from the
plan, ``install --lock`` installs exactly its files in backendpick's phases without asking an
index, ``verify --lock`` names each difference, and pip (>= 26.1) and uv read the same file.

One ``lock`` run makes the cpu, cu124 and rocm6.2.4 locks of one project (module
fixture; the ROCm index is added to the session's world here); the tests below share them.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lab import Lab, ok, py
from tests.support.venvs import fingerprint
from tests.support.dists import make_torch, make_wheel
from tests.support.world import FILELOCK_VERSION, TYPING_EXTENSIONS_VERSION, World

pytestmark = pytest.mark.integration

ROCM = "rocm6.2.4"
PROJECT = '[project]\nname = "app"\nversion = "0"\ndependencies = ["torch", "torchvision", "numpy", "tqdm"]\n'


@pytest.fixture(scope="module")
def locks(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The project folder holding pylock.{cpu,cu124,rocm6.2.4}.toml, and the venv they were made for."""
    _rocm_index(lab)
    project = tmp_path_factory.mktemp("lock-project")
    (project / "pyproject.toml").write_text(PROJECT, encoding="utf-8")
    venv = lab.new_venv()
    # On a machine without a GPU: the CUDA locks are made as a Docker build or a laptop makes them.
    ok(lab.run("lock", "--backend", "cpu", "--backend", "cu124", "--backend", ROCM, "--python", py(venv),
               "--project", str(project)))
    assert lab.world.is_fresh_clone(venv), "locking changed the target environment"
    return project, venv


def _rocm_index(lab: Lab) -> None:
    """A ROCm backend index like download.pytorch.org/whl/rocm6.2.4 (the world serves none)."""
    directory = lab.server.index_dir(ROCM)
    if any(directory.iterdir()):
        return
    attrs = {"__index__": ROCM}
    make_wheel(directory, "filelock", FILELOCK_VERSION, attrs=attrs)
    make_wheel(directory, "typing-extensions", TYPING_EXTENSIONS_VERSION, attrs=attrs)
    make_torch(directory, "2.6.0", ROCM, attrs=attrs)
    make_wheel(directory, "torchvision", f"0.21.0+{ROCM}", requires=["torch==2.6.0"], attrs=attrs)


def _index_sha(world: World, index: str, filename: str) -> str:
    return hashlib.sha256((world.server.index_dir(index) / filename).read_bytes()).hexdigest()


def _lock_of(path: Path):
    from backendpick.model.lock import parse

    return parse(path.read_text(encoding="utf-8"))


def test_lock_round_trip_per_backend(lab: Lab, locks, tmp_path: Path) -> None:
    """Each backend's file holds every package at its exact version (local tags kept) with the
    index's own file and hash; the same inputs give the same bytes, and no credential (the
    index URL here carries one) reaches the file."""
    project, venv = locks
    world = lab.world
    torches = {"cpu": "2.7.1+cpu", "cu124": "2.6.0+cu124", ROCM: f"2.6.0+{ROCM}"}
    for backend, torch in torches.items():
        lock = _lock_of(project / f"pylock.{backend}.toml")
        assert lock.backend == backend and lock.torch == torch
        assert {p.name: p.phase for p in lock.packages} == {
            "torch": "backend", "torchvision": "backend", "filelock": "backend", "typing-extensions": "backend",
            "numpy": "rest", "tqdm": "rest"}
        for p in lock.packages:
            index = backend if p.phase == "backend" else "pypi"
            assert p.index == world.url(index)
            assert p.wheel is not None and p.wheel.url.startswith(world.server.base_url + f"/{index}/files/")
            assert p.wheel.sha256 == _index_sha(world, index, p.wheel.name), p
            assert p.wheel.size == (world.server.index_dir(index) / p.wheel.name).stat().st_size
    assert _lock_of(project / "pylock.cu124.toml").driver_minimum
    # Deterministic, and no credential written: the same lock through a URL with a password.
    secret_template = lab.template.replace("http://", "http://ci-user:s3cret-token@")
    ok(lab.run("lock", "--backend", "cpu", "--python", py(venv), "--project", str(project), "-o", str(tmp_path),
               env=lab.env(BACKENDPICK_INDEX_URL=secret_template)))
    again = (tmp_path / "pylock.cpu.toml").read_text(encoding="utf-8")
    assert "s3cret" not in again and "ci-user" not in again
    assert again == (project / "pylock.cpu.toml").read_text(encoding="utf-8")


def test_install_lock_is_the_plain_install_without_an_index_page(lab: Lab, server, locks) -> None:
    """install --lock gives the environment a plain install gives, package for package, asking
    no index page; verify --lock then finds it exact (its {backend} the installed torch's), and names
    each difference of another lock."""
    project, _ = locks
    locked_venv, plain_venv = lab.new_venv(), lab.new_venv()
    server.clear_log()
    ok(lab.run("install", "--lock", str(project / "pylock.cu124.toml"), "--python", py(locked_venv),
               "--project", str(project)))
    pages = [r for r in server.log if r.kind in ("project", "root")]
    assert pages == [], f"install --lock read index pages: {pages}"
    # A re-run on the finished environment, its locked files gone from the cache (a CI runner, a
    # rebuilt layer): nothing to do, and not one request (tests/integration/test_noop.py: the
    # record's answer).
    shutil.rmtree(lab.cache / "backendpick" / "locked")
    server.clear_log()
    again = ok(lab.run("install", "--lock", str(project / "pylock.cu124.toml"), "--python", py(locked_venv),
                       "--project", str(project)))
    assert again.stdout.startswith("nothing to do") and server.log == [], again
    ok(lab.run("install", "--backend", "cu124", "--python", py(plain_venv), "--project", str(project)))
    assert lab.versions(locked_venv) == lab.versions(plain_venv)
    # verify takes {backend} from the torch installed (cu124 here, on a machine without a GPU).
    res = ok(lab.run("verify", "--lock", "pylock.{backend}.toml", "--python", py(locked_venv), "--project", str(project),
                     cwd=project))
    assert "lock: pylock.cu124.toml (--lock), exactly as locked" in res.stdout, res
    res = ok(lab.run("verify", "--lock", str(project / "pylock.cpu.toml"), "--python", py(locked_venv),
                     "--project", str(project)), 1)
    assert "problem: torch: installed 2.6.0+cu124, locked 2.7.1+cpu" in res.stdout


def test_refusals_before_any_change(lab: Lab, locks, tmp_path: Path) -> None:
    """A tampered hash (exit 2), a lock for another Python (exit 2), a CUDA 12.8 lock on a CUDA
    12.4 driver (exit 3): each refused with the environment as it was; requirements beside
    --lock are a usage error."""
    project, _ = locks
    cpu = (project / "pylock.cpu.toml").read_text(encoding="utf-8")
    torch_sha = _lock_of(project / "pylock.cpu.toml").package("torch").wheel.sha256
    tampered = tmp_path / "pylock.cpu.toml"
    tampered.write_text(cpu.replace(torch_sha, "0" * 64), encoding="utf-8")
    other = tmp_path / "other" / "pylock.cpu.toml"
    other.parent.mkdir()
    other.write_text(re.sub(r'python_version == \\"3\.\d+\\"', 'python_version == \\\\"3.99\\\\"', cpu), encoding="utf-8")
    # A CUDA 12.8 lock: the cu124 one with the backend and torch of a cu128 lock (only the
    # [tool.backendpick] table is read before the refusal).
    cu128 = tmp_path / "cu128" / "pylock.cu128.toml"
    cu128.parent.mkdir()
    cu128.write_text((project / "pylock.cu124.toml").read_text(encoding="utf-8")
                     .replace('backend = "cu124"', 'backend = "cu128"').replace('torch = "2.6.0+cu124"', 'torch = "2.7.1+cu128"'),
                     encoding="utf-8")
    cases = [
        (tampered, "none", 2, "the lock says 0000"),
        (other, "none", 2, "the lock is for python_version 3.99"),
        (cu128, "nvidia-550-a100", 3, "driver 550.127.05 supports CUDA 12.4"),
    ]
    for lock, machine, code, said in cases:
        venv = lab.new_venv()
        res = ok(lab.run("install", "--lock", str(lock), "--python", py(venv), machine=machine), code)
        assert said in res.stderr, res
        # The environment's files as cloned (its state folder holds install's lock file only).
        files = {k for k in fingerprint(venv) if not k.startswith(".backendpick/")}
        assert files == set(lab.world.template_files), f"{lock} changed the environment before its refusal"
    # No GPU (docker build) is not a refusal: the dry run names the locked files.
    ok(lab.run("install", "--dry-run", "--lock", str(cu128), "--python", py(lab.new_venv())))
    # A lock is the whole request: requirements beside it are a usage error, before anything.
    res = ok(lab.run("install", "--lock", str(project / "pylock.cpu.toml"), "tqdm", "--python", py(lab.new_venv())), 2)
    assert "--lock installs the lock alone" in res.stderr, res


def _pip_with_pylock() -> str | None:
    """Why the test runner's own pip (run with ``--python`` against a test venv, whose
    ensurepip pip is older) cannot install a pylock file, or None. The test extra asks for
    pip >= 26.1 (pyproject.toml), so this is only for a runner installed some other way."""
    from importlib.metadata import version

    from packaging.version import Version

    have = version("pip")
    return None if Version(have) >= Version("26.1") else f"runner's pip is {have}; installing pylock.toml needs pip >= 26.1"


def _uv() -> str | None:
    try:
        from uv import find_uv_bin
    except ImportError:
        return shutil.which("uv")
    return find_uv_bin()


def test_pip_and_uv_install_the_wheel_only_lock_as_backendpick_does(lab: Lab, locks) -> None:
    """The standard tools read the same file: pip (>= 26.1) and uv install the cu124 lock (no
    source build) with the versions ``install --lock`` gives, here with uv running its phases
    (``--installer uv``; the pip engine's install --lock is the plain install's twin above)."""
    why, uv = _pip_with_pylock(), _uv()
    if why or uv is None:
        pytest.skip(why or "no uv in the test environment")
    project, _ = locks
    lock = project / "pylock.cu124.toml"
    reference = lab.new_venv()
    ok(lab.run("install", "--lock", str(lock), "--installer", "uv", "--python", py(reference), "--project", str(project)))
    ok(lab.run("verify", "--lock", str(lock), "--python", py(reference), "--project", str(project)))
    installers = {d.read_text().strip() for d in reference.glob("lib/python*/site-packages/*.dist-info/INSTALLER")
                  if not d.parent.name.startswith(("pip-", "setuptools-"))}
    assert installers == {"uv"}, installers
    env = lab.env()
    for argv in ([sys.executable, "-m", "pip", "--python", "{py}", "install", "-r", str(lock)],
                 [uv, "pip", "install", "--python", "{py}", "-r", str(lock)]):
        venv = lab.new_venv()
        proc = subprocess.run([a.replace("{py}", py(venv)) for a in argv], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert lab.versions(venv) == {k: v for k, v in lab.versions(reference).items()}, argv[:3]


def test_lock_with_uv_runs_no_pip_and_writes_the_lock_pip_resolves(lab: Lab, locks, tmp_path: Path) -> None:
    """Issue 22 item 3: ``lock --installer uv`` resolves each phase with ``uv pip compile`` (earlier
    phases stubbed at their locked versions, as pip's dry runs have them): in a venv uv made
    (no pip in it), with every way a pip could start recording, no pip process runs, and each
    backend's file is byte for byte the one pip's resolution wrote (the module's locks), here
    with a password in the backend index URL (uv gets it as a named index's variables; none
    reaches the file). The uv lock then installs with uv, hashes checked, again without a pip
    process."""
    if _uv() is None:
        pytest.skip("no uv in the test environment")
    from tests.integration.test_uv_only import _pip_recorders, _uv_venv

    project, _ = locks
    venv = _uv_venv(lab, tmp_path / "venv")
    bin_dir, lib, log = _pip_recorders(tmp_path / "recorders")
    env = lab.env(PIP_CALLS=str(log), PYTHONPATH=str(lib),
                  BACKENDPICK_INDEX_URL=lab.template.replace("http://", "http://ci-user:s3cret-token@"))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    out = tmp_path / "locks"
    out.mkdir()
    ok(lab.run("lock", "--installer", "uv", "--backend", "cpu", "--backend", "cu124", "--backend", ROCM,
               "--python", py(venv), "--project", str(project), "-o", str(out), env=env))
    for backend in ("cpu", "cu124", ROCM):
        name = f"pylock.{backend}.toml"
        assert (out / name).read_text(encoding="utf-8") == (project / name).read_text(encoding="utf-8"), name
    ok(lab.run("install", "--lock", str(out / "pylock.cu124.toml"), "--installer", "uv", "--python", py(venv),
               "--project", str(project), env=env))
    assert lab.versions(venv)["torch"] == "2.6.0+cu124" and "pip" not in lab.versions(venv)
    assert not log.exists(), log.read_text()


def test_the_lock_setting_names_the_lock_per_backend(lab: Lab, locks, tmp_path: Path) -> None:
    """``[tool.backendpick] lock = "pylock.{backend}.toml"`` (or ``--lock`` with ``{backend}``):
    plan and install take the lock of the backend named (here by flag), or else of the first
    backend this machine runs (cpu without a GPU), without asking an index or downloading a file;
    verify takes the installed torch's, and without one says so (exit 2)."""
    project, venv = locks
    (tmp_path / "pyproject.toml").write_text(PROJECT + '\n[tool.backendpick]\nlock = "pylock.{backend}.toml"\n',
                                             encoding="utf-8")
    for backend in ("cpu", "cu124"):
        shutil.copy(project / f"pylock.{backend}.toml", tmp_path)
    res = ok(lab.run("plan", "--backend", "cu124", "--python", py(venv), "--project", str(tmp_path)))
    assert "decided-by: lock" in res.stdout and "torch-2.6.0%2Bcu124" in res.stdout, res
    res = ok(lab.run("install", "--dry-run", "--python", py(venv), "--project", str(tmp_path)))
    assert "torch-2.7.1%2Bcpu" in res.stdout and "cu124" not in res.stdout, res
    # verify checks the setting's lock too, {backend} the installed torch's: none here, so it says
    # so and names the lock to pass.
    res = ok(lab.run("verify", "--python", py(venv), "--project", str(tmp_path)), 2)
    assert "has no torch" in res.stderr and "--lock pylock.cpu.toml" in res.stderr, res
    # The same choice from the flag, without the setting (examples/Makefile's install-locked
    # with BACKEND=auto): the lock folder holds the cpu, cu124 and ROCm locks.
    res = ok(lab.run("install", "--dry-run", "--backend", "auto", "--lock", "pylock.{backend}.toml",
                     "--python", py(venv), cwd=project))
    assert "torch-2.7.1%2Bcpu" in res.stdout and "cu124" not in res.stdout, res


def test_a_local_folder_is_refused_before_anything_is_written(lab: Lab, locks, tmp_path: Path) -> None:
    """``lock ./pkg`` (a folder: PEP 751's ``[packages.directory]`` has no hash to check) stops
    with one error and its fix, exit 2, no traceback and no lock file; a local wheel file is
    locked as any file (tests/unit/test_lock_resolve.py has the other spellings)."""
    _, venv = locks
    pkg = tmp_path / "pkg"
    (pkg / "pkg").mkdir(parents=True)
    (pkg / "pkg" / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "pyproject.toml").write_text('[project]\nname = "pkg"\nversion = "1.0"\n', encoding="utf-8")
    res = ok(lab.run("lock", "--backend", "cpu", "./pkg", "--python", py(venv), "-o", str(tmp_path), cwd=tmp_path), 2)
    assert res.stderr.startswith(f"error: cannot lock pkg @ {pkg.as_uri()}: {pkg} is a local folder"), res
    assert "Traceback" not in res.output and "pip wheel --no-deps -w wheels" in res.stderr, res
    assert not list(tmp_path.glob("pylock.*")), "a lock was written"
