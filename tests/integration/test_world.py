"""Baselines: the fake world behaves like the real one, and plain pip gets it wrong.

These tests run plain pip (no backendpick) so that later tests can show
backendpick fixing exactly these failures.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.dists import repack_installed
from tests.support.index import JSON_TYPE, IndexServer
from tests.support.venvs import clone_venv, fingerprint, installed_versions, template_changes, venv_python
from tests.support.world import World

pytestmark = pytest.mark.integration

TIMEOUT = 180


def pip(
    venv: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_python(venv)), "-m", "pip", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def python(venv: Path, code: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(venv_python(venv)), "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def would_install(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Distributions from pip's ``--dry-run`` "Would install a-1 b-2" line."""
    for line in proc.stdout.splitlines():
        if line.startswith("Would install "):
            return line[len("Would install ") :].split()
    return []


def test_backend_index_installs_local_tagged_torch(
    world: World, venv: Path, server: IndexServer
) -> None:
    env = world.env()
    proc = pip(
        venv, "install", "--index-url", world.url("cu124"), "torch==2.5.1", env=env
    )
    assert proc.returncode == 0, output(proc)

    assert installed_versions(venv, env)["torch"] == "2.5.1+cu124"
    assert python(venv, "import torch; print(torch.version.cuda)", env) == "12.4"
    assert (
        python(
            venv,
            "import torch; print(torch.version.hip, torch._C._GLIBCXX_USE_CXX11_ABI)",
            env,
        )
        == "None False"  # torch 2.5 wheels use the old C++ ABI
    )
    assert sorted(server.files_downloaded("cu124")) == [
        "filelock-3.16.1-py3-none-any.whl",
        "torch-2.5.1+cu124-py3-none-any.whl",
        "typing_extensions-4.12.2-py3-none-any.whl",
    ]
    # --index-url replaces only index-url: the config's extra index is still asked.
    assert server.indexes_asked_for("torch") == ["cu124", "hostile"]
    assert "torch" not in server.projects_requested("pypi")


def test_user_config_lets_hostile_extra_index_win(
    world: World, venv: Path, server: IndexServer
) -> None:
    env = world.env()
    proc = pip(venv, "install", "torch", env=env)
    assert proc.returncode == 0, output(proc)

    assert installed_versions(venv, env)["torch"] == "99.0.0+cpu"
    assert (
        python(venv, "import torch; print(torch.version.cuda, torch.__index__)", env)
        == "None hostile"
    )
    assert server.files_downloaded("hostile") == ["torch-99.0.0+cpu-py3-none-any.whl"]


@pytest.mark.parametrize(
    ("extra_env", "expected"),
    [
        # The flag alone does not drop extra-index-url from the user's config ...
        ({}, "torch-99.0.0+cpu"),
        # ... an empty variable is ignored by pip, but a blank one clears it,
        ({"PIP_EXTRA_INDEX_URL": ""}, "torch-99.0.0+cpu"),
        ({"PIP_EXTRA_INDEX_URL": " "}, "torch-2.6.0+cu124"),
        # and os.devnull as config file skips every config file.
        ({"PIP_CONFIG_FILE": os.devnull}, "torch-2.6.0+cu124"),
    ],
    ids=["flag-only", "empty-env", "blank-env", "devnull-config"],
)
def test_index_url_flag_and_config_extra_index(
    world: World, venv: Path, extra_env: dict[str, str], expected: str
) -> None:
    proc = pip(
        venv,
        "install",
        "--dry-run",
        "--index-url",
        world.url("cu124"),
        "torch",
        env=world.env(**extra_env),
    )
    assert proc.returncode == 0, output(proc)
    assert expected in would_install(proc)


def test_flash_attn_needs_no_build_isolation_and_build_tools(
    world: World, venv: Path, server: IndexServer
) -> None:
    env = world.env()
    proc = pip(
        venv, "install", "--index-url", world.url("cu124"), "torch==2.5.1", env=env
    )
    assert proc.returncode == 0, output(proc)

    # Build isolation: pip fetches setuptools (and, before pip 24.1, wheel) from the
    # index into a fresh env without torch; that env is what lacks torch.
    server.clear_log()
    proc = pip(venv, "install", "flash-attn", env=env)
    assert proc.returncode != 0
    assert "No module named 'torch'" in output(proc)
    assert "setuptools" in server.projects_requested("pypi")

    # No isolation, but the venv (like any 3.12+ venv) lacks setuptools.
    proc = pip(venv, "install", "--no-build-isolation", "flash-attn", env=env)
    assert proc.returncode != 0
    assert "No module named 'setuptools'" in output(proc)

    proc = pip(venv, "install", "setuptools", "wheel", env=env)
    assert proc.returncode == 0, output(proc)
    proc = pip(venv, "install", "--no-build-isolation", "flash-attn", env=env)
    assert proc.returncode == 0, output(proc)

    versions = installed_versions(venv, env)
    assert versions["flash-attn"] == "2.7.4"
    # torch was already satisfied, so the hostile torch was not pulled in.
    assert versions["torch"] == "2.5.1+cu124"
    built_with = python(
        venv,
        "import flash_attn; print(flash_attn.torch_version, flash_attn.torch_cuda)",
        env,
    )
    assert built_with == "2.5.1+cu124 12.4"
    assert python(venv, "import flash_attn_2_cuda; print('ok')", env) == "ok"

    # Changing torch underneath breaks the "compiled" extension, as in real life.
    proc = pip(
        venv, "install", "--index-url", world.url("cu124"), "torch==2.6.0", env=env
    )
    assert proc.returncode == 0, output(proc)
    broken = subprocess.run(
        [str(venv_python(venv)), "-c", "import flash_attn_2_cuda"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert broken.returncode != 0
    assert "undefined symbol" in broken.stderr


def test_server_log_and_pages(world: World, server: IndexServer) -> None:
    base = world.url("cu126")
    with urllib.request.urlopen(f"{base}/") as response:
        root = response.read().decode()
    assert '<a href="xformers/">xformers</a>' in root

    # Non-normalized names redirect to the PEP 503 form.
    with urllib.request.urlopen(f"{base}/Typing_Extensions") as response:
        assert response.url.endswith("/cu126/simple/typing-extensions/")
        page = response.read().decode()
    wheel = server.index_dir("cu126") / "typing_extensions-4.12.2-py3-none-any.whl"
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (
        f'href="../../files/typing_extensions-4.12.2-py3-none-any.whl#sha256={digest}"'
        in page
    )

    request = urllib.request.Request(
        f"{world.url('pypi')}/wheel/", headers={"Accept": JSON_TYPE}
    )
    with urllib.request.urlopen(request) as response:
        assert response.headers["Content-Type"] == JSON_TYPE
        files = json.loads(response.read())["files"]
    assert files[0]["requires-python"]  # real wheel declares Requires-Python
    with urllib.request.urlopen(f"{world.url('pypi')}/wheel/") as response:
        assert 'data-requires-python="&gt;=' in response.read().decode()

    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(f"{world.url('cpu')}/xformers/")  # CUDA indexes only
    assert excinfo.value.code == 404

    assert server.projects_requested("cu126") == [
        "typing-extensions",
        "typing-extensions",
    ]
    assert [r.status for r in server.log if r.index == "cu126"] == [200, 301, 200]
    assert server.projects_requested("cpu") == ["xformers"]


def test_clone_is_an_independent_venv(
    world: World, venv: Path, server: IndexServer
) -> None:
    env = world.env()
    proc = pip(venv, "--version", env=env)
    assert proc.returncode == 0, output(proc)
    assert str(venv) in proc.stdout
    assert python(venv, "import sys; print(sys.prefix)", env) == str(venv)
    assert "setuptools" not in installed_versions(venv, env)

    proc = pip(venv, "install", "tqdm", env=env)
    assert proc.returncode == 0, output(proc)
    assert installed_versions(venv, env)["tqdm"] == "4.66.0"
    assert "tqdm" not in installed_versions(world.template_venv, env)
    assert server.files_downloaded("pypi") == ["tqdm-4.66.0-py3-none-any.whl"]
    # Console scripts point at the clone, not the template.
    assert (venv / "bin" / "pip").read_text().startswith(f"#!{venv}/bin/python")
    # The clone shares the template's files as hard links: removing a distribution there (pip
    # moves its files away) leaves the template's copy whole.
    proc = pip(venv, "uninstall", "-y", "pip", env=env)
    assert proc.returncode == 0, output(proc)
    assert "pip" not in installed_versions(venv, env)
    assert "pip" in installed_versions(world.template_venv, env)
    assert world.template_changes() == []


def test_a_prepared_venv_holds_what_its_install_would(world: World, tmp_path: Path) -> None:
    env = world.env()
    runs = []

    def setup(venv: Path) -> None:
        runs.append(venv)
        proc = pip(venv, "install", "--no-deps", "--no-index", "--find-links", str(world.server.index_dir("cpu")),
                   "torch==2.5.1+cpu", "filelock", env=env)
        assert proc.returncode == 0, output(proc)

    first, second, direct = (world.new_venv(tmp_path) for _ in range(3))
    assert world.is_fresh_clone(first)
    world.prepare(first, "test-world-torch-cpu", setup)
    world.prepare(second, "test-world-torch-cpu", setup)
    assert len(runs) == 1 and runs[0] not in (first, second)  # installed once, into a template of its own
    setup(direct)
    assert installed_versions(first, env) == installed_versions(second, env) == installed_versions(direct, env)
    assert installed_versions(first, env)["torch"] == "2.5.1+cpu"
    assert python(second, "import torch; print(torch.__file__)", env).startswith(str(second))
    assert not world.is_fresh_clone(first) and world.template_changes() == []


def test_a_write_into_a_clones_shared_file_is_found(tmp_path: Path) -> None:
    template = tmp_path / "template"
    (template / "bin").mkdir(parents=True)
    (template / "bin" / "tool").write_text(f"#!{template}/bin/python\n")
    (template / "pyvenv.cfg").write_text("home = /usr/bin\n")
    module = template / "lib" / "site-packages" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text("VALUE = 1\n")
    before = fingerprint(template)
    clone = clone_venv(template, tmp_path / "clone")
    assert (clone / "bin" / "tool").read_text() == f"#!{clone}/bin/python\n"
    assert (template / "bin" / "tool").read_text() == f"#!{template}/bin/python\n"
    assert template_changes(template, before) == []
    with open(clone / "lib" / "site-packages" / "mod.py", "a") as f:  # in place, through the link
        f.write("VALUE = 2\n")
    assert template_changes(template, before) == [os.path.join("lib", "site-packages", "mod.py")]


def test_pip_sees_only_the_test_config(world: World, venv: Path) -> None:
    proc = pip(venv, "config", "list", env=world.env())
    assert proc.returncode == 0, output(proc)
    settings = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert settings["global.index-url"] == repr(world.url("pypi"))
    assert settings["global.extra-index-url"] == repr(world.url("hostile"))
    assert not [
        key for key in settings if "find-links" in key or key.endswith("no-index")
    ]

    # Anything beyond 127.0.0.1 hits a dead proxy instead of the network.
    proc = pip(
        venv,
        "download",
        "-vvv",
        "--no-deps",
        "--retries",
        "0",
        "--index-url",
        "https://pypi.org/simple",
        "-d",
        str(venv.parent / "dl"),
        "six",
        env=world.env(),
    )
    assert proc.returncode != 0
    assert "ProxyError" in output(proc)


def test_repack_of_missing_distribution_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="not installed in the test runner"):
        repack_installed("surely-not-installed-dist", tmp_path)
