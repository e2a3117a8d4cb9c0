"""A lock's resolution with ``--installer uv`` (issue 22 item 3, execute/lock_resolve.py): each
phase as ``uv pip compile`` (execute/engines.py ``compile_command``) with the sources and
switches its ``uv pip install`` gets, credentials off the command line with the stubs' folder
among the find-links they move with; uv's lock read to the file pip takes for the target. Pure:
no uv runs (tests/integration/test_lock.py runs it)."""

from __future__ import annotations

from pathlib import Path

from backendpick.execute import engines
from backendpick.execute.lock_resolve import _lines
from backendpick.inputs.pip_config import PipConfig
from backendpick.model.plan import BACKEND, BACKEND_INDEX, BUILD_REQS, REST, Phase
from backendpick.selection import uv_resolve
from backendpick.selection.uv_resolve import Locked

PY = "/env/bin/python"
CONF = PipConfig({"index-url": "https://ci:s3cret@mirror.example/simple",
                  "find-links": "https://ci:s3cret@files.example/", "trusted-host": "mirror.example"})
UV = engines.Renderer(engines.UV, PY, (PY, "-m", "pip"), CONF, {"UV_INDEX_URL": "https://evil.example/simple"},
                      uv="/bin/uv")
TAIL = ("--quiet", "--format", "pylock.toml", "-o", "/w/pylock.toml", "/w/requirements.txt")


def test_a_backend_phase_compiles_against_the_backend_index_alone():
    phase = Phase(BACKEND, ("torch", "torchvision"), source=BACKEND_INDEX, index_url="https://idx/cu124",
                  constraints_file="/w/constraints.txt")
    command = UV.compile_command(phase, "/w/requirements.txt", "/w/pylock.toml")
    assert command.argv == ("/bin/uv", "pip", "compile", "--python", PY, "--no-config", "--allow-insecure-host",
                            "mirror.example", "-c", "/w/constraints.txt", "--index-url", "https://idx/cu124", *TAIL)
    assert command.unset == ("UV_INDEX_URL",)
    # The same phase installed: the same words before the requirements.
    assert UV.command(phase).argv[:-2] == ("/bin/uv", "pip", "install", *command.argv[3:-len(TAIL)])


def test_a_later_phase_keeps_credentials_off_the_line_with_the_stubs_among_the_find_links():
    rest = Phase(REST, ("numpy", "tqdm"), constraints_file="/w/constraints.txt", upgrade=False,
                 options=("--find-links", "/w/stubs"))
    command = UV.compile_command(rest, "/w/requirements.txt", "/w/pylock.toml")
    assert "s3cret" not in " ".join(command.argv) and "--find-links" not in command.argv
    assert command.argv[-len(TAIL):] == TAIL
    assert command.argv[command.argv.index("--default-index") + 1] == "backendpick-1=https://mirror.example/simple"
    assert command.env["UV_INDEX_BACKENDPICK_1_PASSWORD"] == "s3cret"
    # uv reads UV_FIND_LINKS only without the option: the stubs go there too, beside the user's.
    assert command.env["UV_FIND_LINKS"] == "https://ci:s3cret@files.example/,/w/stubs"
    # A folder install targets has no meaning to a resolution.
    reqs = Phase(BUILD_REQS, ("setuptools",), target_dir="/s/build-env")
    assert "--target" not in UV.compile_command(reqs, "/w/r.txt", "/w/l.toml").argv


def test_requirement_words_become_requirement_file_lines():
    assert _lines(("torch", "-e", "/src/app", "./local.whl")) == ["torch", "-e /src/app", "./local.whl"]


def test_uvs_lock_gives_the_file_pip_takes_for_the_target(tmp_path: Path):
    lock = tmp_path / "pylock.toml"
    lock.write_text('''lock-version = "1.0"
created-by = "uv"

[[packages]]
name = "numpy"
version = "2.2.1"
sdist = { url = "https://m/files/numpy-2.2.1.tar.gz", hashes = { sha256 = "aa" } }
wheels = [
    { url = "https://m/files/numpy-2.2.1-cp312-cp312-manylinux_2_17_x86_64.whl", hashes = { sha256 = "12" } },
    { url = "https://m/files/numpy-2.2.1-cp311-cp311-manylinux_2_17_x86_64.whl", hashes = { sha256 = "11" } },
    { url = "https://m/files/numpy-2.2.1-cp311-cp311-manylinux_2_28_x86_64.whl", hashes = { sha256 = "28" } },
]

[[packages]]
name = "odd"
version = "1.0"
sdist = { url = "https://m/files/odd-1.0.tar.gz", hashes = { sha256 = "bb" } }
wheels = [{ url = "https://m/files/odd-1.0-cp39-cp39-win_amd64.whl", hashes = { sha256 = "99" } }]

[[packages]]
name = "torch"
version = "2.6.0+cu124"
wheels = [{ url = "https://idx/files/torch-2.6.0%2Bcu124-py3-none-any.whl", hashes = { sha256 = "cc" } }]
''')
    tags = ("cp311-cp311-manylinux_2_28_x86_64", "cp311-cp311-manylinux_2_17_x86_64",
            "cp311-abi3-manylinux_2_17_x86_64", "py3-none-any")
    markers = {"python_version": "3.11", "sys_platform": "linux"}
    assert uv_resolve.read_lock(lock, markers, tags) == [
        Locked("numpy", "2.2.1", "https://m/files/numpy-2.2.1-cp311-cp311-manylinux_2_28_x86_64.whl", "28"),
        Locked("odd", "1.0", "https://m/files/odd-1.0.tar.gz", "bb"),  # no wheel for the target: the sdist
        Locked("torch", "2.6.0+cu124", "https://idx/files/torch-2.6.0%2Bcu124-py3-none-any.whl", "cc"),
    ]
    # Without tags (the whole-request resolution, which reads metadata only): the first wheel.
    assert uv_resolve.read_lock(lock, markers)[0].wheel.endswith("cp312-cp312-manylinux_2_17_x86_64.whl")


# -- a local folder is refused, named as written, before any resolution (PEP 751 would write it as a
# [packages.directory] entry without a hash; install --lock installs only hash-checked files) -------------


def test_a_local_folder_is_refused_with_the_fix_before_anything_resolves(tmp_path: Path, monkeypatch):
    import pytest

    from backendpick.errors import EXIT_USAGE, ConfigError
    from backendpick.execute.lock_resolve import refuse_folders

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    cases = [
        (("numpy", f"pkg @ {pkg.as_uri()}"), f"pkg @ {pkg.as_uri()}", "pip wheel --no-deps -w wheels"),  # ./pkg, pyproject
        (("-e", str(pkg)), f"-e {pkg}", f"pip install --no-deps -e {pkg}"),  # -e in a requirements file
        ((pkg.as_uri(),), pkg.as_uri(), "name that .whl file"),
        (("./pkg",), "./pkg", "pip wheel"),
    ]
    for words, named, fix in cases:
        with pytest.raises(ConfigError) as err:
            refuse_folders(Phase(REST, words))
        assert err.value.exit_code == EXIT_USAGE
        assert err.value.message.startswith(f"cannot lock {named}: {pkg} is a local folder"), err.value.message
        assert fix in err.value.hint
    # Files and indexes are locked as before: a local wheel or sdist, a VCS URL (not a folder), names.
    refuse_folders(Phase(REST, (f"pkg @ {wheel.as_uri()}", str(wheel), "-e", "git+https://example/x.git", "tqdm")))


def test_a_folder_a_dependency_pulls_in_is_refused_too(tmp_path: Path):
    import pytest

    from backendpick.errors import ConfigError
    from backendpick.execute.lock_resolve import Locker, _Item

    locker = Locker.__new__(Locker)  # _add reads only what the lock holds so far
    locker.locked = {}
    with pytest.raises(ConfigError, match=f"cannot lock dep: {tmp_path} is a local folder"):
        locker._add(_Item("dep", "1.0", tmp_path.as_uri(), None, None), REST, None)
