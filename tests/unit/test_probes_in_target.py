"""The programs run in the target interpreter, called in this process: their pure functions,
and that they stay standard-library-only (the target has no backendpick)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from backendpick.target.probes_in_target import import_check, inspect_env, source, torch_info

PROBES = ("inspect_env", "import_check", "torch_info")


@pytest.mark.parametrize("name", PROBES)
def test_a_probe_imports_only_the_standard_library(name):
    tree = ast.parse(source(name))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, "a relative import cannot work when the source is passed with -c"
            imported.add((node.module or "").split(".")[0])
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib is None:
        pytest.skip("sys.stdlib_module_names is Python 3.10+")
    # pip (inspect_env's version and tags) and torch (what it inspects) belong to the target.
    outside = imported - set(stdlib) - {"__future__", "pip", "torch"}
    assert not outside, outside


@pytest.mark.parametrize("name", PROBES)
def test_a_probe_compiles_as_python_3_8(name):
    ast.parse(source(name), feature_version=(3, 8))


def test_source_is_the_module_file():
    assert source("import_check") == Path(import_check.__file__).read_text(encoding="utf-8")


def test_inspect_env_describes_this_interpreter():
    data = inspect_env.collect(["--no-tags"])
    assert data["version"] == list(sys.version_info[:3])
    assert data["tags"] == []
    assert data["markers"]["python_version"] == "%d.%d" % sys.version_info[:2]
    assert data["dists"]["packaging"]["name"].lower() == "packaging"
    assert "torch/version.py" not in inspect_env.package_files({"packaging": {}})


def test_inspect_env_reads_a_package_file_without_importing_it():
    assert "def check" in inspect_env.package_file("backendpick", "target/probes_in_target/import_check.py")
    assert inspect_env.package_file("backendpick", "no-such-file") is None
    assert inspect_env.package_file("no_such_package_here", "x.py") is None


def test_import_check_reports_each_module():
    def load(name):
        if name == "broken._C":
            raise ImportError("undefined symbol: _ZN3c10")

    assert import_check.check(["ok", "broken._C"], load) == {"ok": None, "broken._C": "ImportError: undefined symbol: _ZN3c10"}


def test_import_check_stops_when_torch_does_not_import():
    def load(name):
        if name == "torch":
            raise OSError("libcudart.so.12: cannot open shared object file")
        raise AssertionError("nothing after torch is imported")

    assert import_check.check(["xformers._C"], load) == {"torch": "OSError: libcudart.so.12: cannot open shared object file"}


def test_torch_info_describes_a_build():
    torch = SimpleNamespace(__version__="2.5.1+cu124", version=SimpleNamespace(cuda="12.4"),
                            _C=SimpleNamespace(_GLIBCXX_USE_CXX11_ABI=False))
    assert torch_info.describe(torch) == {"version": "2.5.1+cu124", "cuda": "12.4", "hip": None, "cxx11abi": False}
    rocm = SimpleNamespace(__version__="2.5.1+rocm6.2", version=SimpleNamespace(cuda=None, hip="6.2.41133"), _C=SimpleNamespace())
    assert torch_info.describe(rocm)["cxx11abi"] is True
