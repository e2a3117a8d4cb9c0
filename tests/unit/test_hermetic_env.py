"""The one environment recipe (``tests.support.hermetic.subprocess_env``) keeps the runner's
machine out: its pip configuration, CA bundles, GPU selection, CUDA toolkit and proxies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.fakehw import FakeMachine
from tests.support.hermetic import DEAD_PROXY, GPU_TOOLS, host_bin, session_dir, subprocess_env

# What a hostile CI runner sets (this project's own machines set most of these).
HOSTILE = {
    "PIP_CONSTRAINT": "/etc/xdg/pip/constraints.txt",
    "PIP_FIND_LINKS": "/opt/wheels",
    "PIP_INDEX_URL": "https://hostile.example/simple",
    "PIP_EXTRA_INDEX_URL": "https://hostile.example/extra",
    "PIP_CERT": "/hostile/ca.pem",
    "PIP_DEFAULT_TIMEOUT": "1",
    "PIP_NO_CACHE_DIR": "0",
    "UV_INDEX_URL": "https://hostile.example/uv",
    "UV_CONSTRAINT": "/hostile/uv-constraints.txt",
    "REQUESTS_CA_BUNDLE": "/hostile/ca.pem",
    "SSL_CERT_FILE": "/hostile/ca.pem",
    "SSL_CERT_DIR": "/hostile/certs",
    "CURL_CA_BUNDLE": "/hostile/ca.pem",
    "BACKENDPICK_BACKEND": "rocm6.2",
    "BACKENDPICK_INDEX_URL": "https://hostile.example/{backend}",
    "CUDA_VERSION": "13.0.0",
    "CUDA_VISIBLE_DEVICES": "3",
    "HIP_VISIBLE_DEVICES": "1",
    "CUDA_HOME": "/usr/local/cuda",
    "CUDA_PATH": "/usr/local/cuda",
    "PYTHONPATH": "/hostile/site",
    "VIRTUAL_ENV": "/hostile/venv",
    "XDG_CONFIG_DIRS": "/etc/xdg",
    "XDG_CONFIG_HOME": "/hostile/config",
    "XDG_CACHE_HOME": "/hostile/cache",
    "HOME": "/hostile/home",
    "HTTPS_PROXY": "http://proxy.hostile.example:3128",
    "NO_PROXY": "*",
    "MAX_JOBS": "64",
    "CXX": "/hostile/c++",
}


@pytest.fixture
def hostile_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The runner's environment as hostile as it gets, with a real-looking nvcc on PATH."""
    for key, value in HOSTILE.items():
        monkeypatch.setenv(key, value)
    cuda_bin = tmp_path / "cuda" / "bin"
    cuda_bin.mkdir(parents=True)
    (cuda_bin / "nvcc").write_text("#!/bin/sh\necho 'release 99.0, V99.0.1'\n")
    monkeypatch.setenv("PATH", f"{cuda_bin}{os.pathsep}{os.environ['PATH']}")
    return cuda_bin


def _no_runner_values(env: dict[str, str]) -> None:
    for key in HOSTILE:
        assert env.get(key) != HOSTILE[key], key
    assert not [k for k in env if k.startswith("UV_")]
    allowed_pip = {"PIP_CONFIG_FILE", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT", "PIP_NO_CACHE_DIR"}
    assert {k for k in env if k.startswith("PIP_")} == allowed_pip
    assert env["PIP_NO_CACHE_DIR"] == "1"
    for key in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "CUDA_VERSION",
                "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "PYTHONPATH", "VIRTUAL_ENV", "MAX_JOBS", "CXX",
                "BACKENDPICK_BACKEND", "BACKENDPICK_INDEX_URL"):
        assert key not in env, key


def _gpu_tools_on(path: str) -> list[str]:
    return [os.path.join(d, t) for d in path.split(os.pathsep) for t in GPU_TOOLS if os.path.lexists(os.path.join(d, t))]


def test_nothing_of_the_runner_reaches_a_child(hostile_runner: Path) -> None:
    env = subprocess_env()
    _no_runner_values(env)
    session = session_dir()
    assert env["XDG_CONFIG_DIRS"] == str(session / "xdg-config-dirs")
    assert list(Path(env["XDG_CONFIG_DIRS"]).iterdir()) == []  # no pip/pip.conf to find
    assert env["HOME"] == str(session / "home")
    assert env["XDG_CONFIG_HOME"] == str(session / "home" / ".config")
    assert env["XDG_CACHE_HOME"] == str(session / "cache")
    assert env["PIP_CONFIG_FILE"] == os.devnull  # no config file at all, /etc/pip.conf included
    assert env["CUDA_HOME"] == env["CUDA_PATH"] == str(session / "no-cuda")
    assert list(Path(env["CUDA_HOME"]).iterdir()) == []
    assert env["BACKENDPICK_PROBE_ROOT"] == str(session / "no-hardware")
    assert env["PATH"] == str(host_bin())
    assert _gpu_tools_on(env["PATH"]) == []
    assert str(hostile_runner) not in env["PATH"]
    for proxy in ("http_proxy", "https_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        assert env[proxy] == DEAD_PROXY
    assert env["NO_PROXY"] == env["no_proxy"] == "127.0.0.1,localhost"
    assert env["NO_COLOR"] == "1"


def test_host_bin_is_the_system_bin_without_gpu_tools() -> None:
    names = {p.name for p in host_bin().iterdir()}
    assert "sh" in names and not names & GPU_TOOLS
    for link in host_bin().iterdir():
        assert os.path.dirname(os.readlink(link)) in ("/usr/bin", "/bin")


def test_fake_machine_comes_first_and_brings_its_own_toolkit(hostile_runner: Path, tmp_path: Path) -> None:
    m = FakeMachine(tmp_path).driver("550.54.14").nvidia_smi(query="0, A100, 550.54.14, 8.0, GPU-1, 1\n")
    m.set_env({"CUDA_VERSION": "12.4.1"})
    env = subprocess_env(tmp_path / "pip.conf", machine=m, home=tmp_path / "h", cache=tmp_path / "c",
                         pip_cache=tmp_path / "pc", extra={"BACKENDPICK_INDEX_URL": "http://127.0.0.1:1/{backend}"})
    assert env["PATH"].split(os.pathsep) == [str(m.bin), str(m.sysbin), str(host_bin())]
    assert _gpu_tools_on(env["PATH"]) == [str(m.bin / "nvidia-smi")]
    assert env["BACKENDPICK_PROBE_ROOT"] == str(m.root)
    assert env["CUDA_VERSION"] == "12.4.1"  # the machine's own, not the runner's 13.0.0
    assert env["CUDA_HOME"] == str(session_dir() / "no-cuda")  # no toolkit on this machine
    assert (env["HOME"], env["XDG_CACHE_HOME"]) == (str(tmp_path / "h"), str(tmp_path / "c"))
    assert env["PIP_CONFIG_FILE"] == str(tmp_path / "pip.conf")
    assert env["PIP_CACHE_DIR"] == str(tmp_path / "pc") and "PIP_NO_CACHE_DIR" not in env
    assert env["BACKENDPICK_INDEX_URL"] == "http://127.0.0.1:1/{backend}"

    m.nvcc("12.4")
    env = subprocess_env(machine=m)
    assert env["CUDA_HOME"] == env["CUDA_PATH"] == str(m.bin.parent)
    assert (Path(env["CUDA_HOME"]) / "bin" / "nvcc").is_file()
