"""Issue 18 as pure functions: where the installed torch came from (target/torch_origin.py), and what stays or
goes (selection/stays.py): hand-built targets in, origins, reasons and refusals out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from backendpick.errors import ConfigError, NoBackendError
from backendpick.indexes.client import parse_page
from backendpick.knowledge import facts as facts_mod
from backendpick.model.backend import Backend
from backendpick.model.choice import Decision, Explicit
from backendpick.model.environment import Installed, Target
from backendpick.model.plan import BACKEND, REMOVE, Phase, Plan
from backendpick.selection import stays
from backendpick.selection.resolve import Pin
from backendpick.target import torch_origin

FACTS = facts_mod.load()
SITE = "/env/lib/python3.11/site-packages"
BASE = "/usr/local/lib/python3.11/site-packages"
NGC = "2.4.0a0+f70bd71a48.nv24.6"


def _version_py(cuda: str | None) -> str:
    return f"__version__ = 'x'\ncuda: Optional[str] = {cuda!r}\nhip: Optional[str] = None\n"


def target(version: str, *, cuda: str | None = "12.4", installer: str = "pip", location: str = SITE,
           direct_url: str | None = None, others: tuple = ()) -> Target:
    # torch's own requirements (not installed here): only torch's version decides what pip replaces.
    torch = Installed("torch", version, ("filelock", "typing-extensions"), installer, direct_url,
                      f"{location}/torch-{version}.dist-info")
    dists = {d.name: d for d in (torch, *others)}
    return Target(python=Path("/env/bin/python"), prefix=Path("/env"), version=(3, 11, 7),
                  markers={"sys_platform": "linux"}, tags=("py3-none-any",), pip_version="24.0",
                  purelib=Path(SITE), installed=dists, is_venv=True,
                  files={"torch/version.py": _version_py(cuda)}, site_dirs=(SITE, BASE))


# -- origin -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version, label", [
    (NGC, "NVIDIA build"),
    ("2.7.0a0+git1a2b3c4", "source build"),
    ("2.10.0a0+b4e4ee81d3", "build of a commit"),  # NGC 25.12's torch as its release notes name it
    ("2.7.0a0", "pre-release build"),
    ("2.5.1+mycompany.7", "local build"),
])
def test_versions_no_index_publishes(version: str, label: str) -> None:
    got, note, signs = torch_origin.version_signs(version, FACTS, {})
    assert got == label and signs and note == ""


@pytest.mark.parametrize("version", ["2.5.1+cu124", "2.5.1", "2.6.0+rocm6.2.4", "2.10.0.dev20251120+cu128",
                                     "2.6.0rc1+cu124", "2.5.1+cpu"])
def test_index_builds_have_no_signs(version: str) -> None:
    assert torch_origin.version_signs(version, FACTS, {}) == (None, "", [])


def test_the_ngc_image_is_named_from_its_variable() -> None:
    o = torch_origin.of(target(NGC, cuda="12.5"), FACTS, {"NVIDIA_PYTORCH_VERSION": "24.06"})
    assert o.foreign and o.backend == Backend.parse("cu125") and o.note == "NGC 24.06"
    assert o.describe() == f"NVIDIA build {NGC} (NGC 24.06), CUDA 12.5; no index serves it"
    assert o.with_abi(True).describe() == f"NVIDIA build {NGC} (NGC 24.06), CUDA 12.5, C++11 ABI on; no index serves it"


def test_installers_and_install_kinds_are_signs() -> None:
    conda = torch_origin.of(target("2.5.1", installer="conda"), FACTS, {})
    assert conda.foreign and conda.managed_by == "conda" and conda.describe().endswith("conda manages it")
    assert torch_origin.of(target("2.5.1+cu124", installer="uv"), FACTS, {}).foreign is False
    assert torch_origin.of(target("2.5.1+cu124", installer=""), FACTS, {}).label == "torch installed without pip"
    editable = torch_origin.of(target("2.7.0", direct_url=json.dumps({"url": "file:///src/pytorch",
                                                                       "dir_info": {"editable": True}})), FACTS, {})
    assert editable.label == "editable install" and "editable install of /src/pytorch" in editable.signs[0]
    develop = torch_origin.of(target("2.7.0", location="/src/pytorch"), FACTS, {})
    assert develop.label == "develop install"


def test_a_base_environments_index_build_is_outside_but_not_foreign() -> None:
    o = torch_origin.of(target("2.5.1+cu124", location=BASE), FACTS, {})
    assert not o.foreign and o.outside == BASE and o.notable
    assert o.describe() == f"torch 2.5.1+cu124, CUDA 12.4; seen through the base environment's {BASE}, where pip cannot remove it"
    assert torch_origin.of(target("2.5.1+cu124"), FACTS, {}).notable is False


def test_a_base_environments_torch_is_named_only_when_the_plan_installs_another() -> None:
    t = target("2.5.1+cu124", location=BASE)
    o = torch_origin.of(t, FACTS, {})
    assert stays.shadowing_line(_plan(Phase(BACKEND, ("torch", "torchvision"), ())), o, t) == ""
    line = stays.shadowing_line(_plan(Phase(BACKEND, ("torch==2.6.0",), ())), o, t)
    assert "the plan installs torch==2.6.0: this environment gets a torch of its own" in line
    assert stays.left_alone(t) == ("torch",)


# -- stays -----------------------------------------------------------------------------------------------


def _pin(text: str, by: str = "you") -> Pin:
    return Pin(Requirement(text), by)


def test_a_foreign_torch_goes_only_when_the_request_cannot_be_met_with_it() -> None:
    o = torch_origin.of(target(NGC, cuda="12.5"), FACTS, {})
    assert stays.replace_reason(o, None, [_pin("torch")]) is None
    assert stays.replace_reason(o, None, [_pin(f"torch=={NGC}", "constraint file /etc/pip/constraint.txt")]) is None
    assert stays.replace_reason(o, Explicit(Backend.parse("cu125"), "--backend"), []) is None
    assert stays.replace_reason(o, Explicit(Backend.parse("cu124"), "--backend"), []) == "--backend asks for cu124"
    # PEP 440: 2.4.0a0 is below 2.4, as pip sees it.
    assert stays.replace_reason(o, None, [_pin("torch>=2.4")]) == "you asked for torch>=2.4, which it does not satisfy"
    assert stays.replace_reason(o, None, [_pin("torch>=2.3")]) is None
    assert stays.replace_reason(o, None, [], reinstall=("torch",)) == "--reinstall torch asks for it"
    index_build = torch_origin.of(target("2.5.1+cu124"), FACTS, {})
    assert stays.replace_reason(index_build, Explicit(Backend.parse("cu126"), "--backend"), []) is None


def test_the_ways_to_replace_name_a_backend_only_when_it_differs() -> None:
    ngc = torch_origin.of(target(NGC, cuda="12.5"), FACTS, {})
    nearest = stays.nearest_index_backend(ngc, FACTS.all_backends())
    assert nearest == Backend.parse("cu124")
    assert stays.how_to_replace(ngc, nearest) == "--backend cu124, or a torch pin it does not meet"
    conda = torch_origin.of(target("2.5.1", installer="conda"), FACTS, {})
    assert stays.how_to_replace(conda, stays.nearest_index_backend(conda, FACTS.all_backends())) == \
        "--reinstall torch, or a torch pin it does not meet"


def test_a_kept_torch_needs_its_companions_installed() -> None:
    ngc = torch_origin.of(target(NGC, cuda="12.5"), FACTS, {})
    installed = target(NGC, cuda="12.5", others=(Installed("torchvision", "0.19.0a0+nv24.6", ("torch",), "pip"),))
    stays.missing_companions(ngc, [Requirement("torch"), Requirement("torchvision")], installed.installed,
                            Backend.parse("cu124"))
    with pytest.raises(NoBackendError, match="no index serves xformers for the installed NVIDIA build") as exc:
        stays.missing_companions(ngc, [Requirement("xformers")], installed.installed, Backend.parse("cu124"))
    assert "--backend cu124" in exc.value.hint


def test_an_index_build_that_still_runs_stays_after_a_driver_upgrade() -> None:
    o = torch_origin.of(target("2.6.0+cu124"), FACTS, {})
    newer = Decision(Backend.parse("cu126"), "detected", "driver supports CUDA 12.6")
    assert stays.index_build_stays(o, newer, [_pin("torch")], runs_here=True)
    assert not stays.index_build_stays(o, newer, [_pin("torch")], runs_here=False)
    assert not stays.index_build_stays(o, newer, [_pin("torch>=2.7")], runs_here=True)
    assert not stays.index_build_stays(o, Decision(newer.backend, "--backend", ""), [], runs_here=True)
    pypi = torch_origin.of(target("2.6.0", cuda="12.4"), FACTS, {})  # PyPI's untagged build: its CUDA 12.4 stays too
    assert pypi.backend == Backend.parse("cu124") and stays.index_build_stays(pypi, newer, [], runs_here=True)
    assert not stays.index_build_stays(pypi, newer, [], runs_here=False)
    kept = stays.stays_decision(o, newer)
    assert kept.backend == Backend.parse("cu124") and kept.source == "installed"
    assert "a newer backend would run here: cu126" in kept.reason and "-U, or --backend cu126" in kept.reason


def _plan(*phases: Phase) -> Plan:
    return Plan(backend=Backend.parse("cu124"), reason="", decided_by="detected", python=Path("/env/bin/python"),
                index_url="http://i/cu124", phases=phases, constraints_path=Path("/env/.backendpick/c.txt"))


def test_pip_is_refused_what_conda_manages_unless_the_user_says_so() -> None:
    t = target("2.5.1", installer="conda")
    removing = _plan(Phase(REMOVE, ("torch",), ()), Phase(BACKEND, ("torch==2.6.0",), ()))
    with pytest.raises(ConfigError, match=r"make pip remove torch 2\.5\.1 \(conda\), which conda installed") as exc:
        stays.conda_guard(removing, t, FACTS.managed_installers, allowed=False)
    assert "--replace-conda" in exc.value.hint
    assert stays.conda_guard(removing, t, FACTS.managed_installers, allowed=True) == [
        "pip replaces torch 2.5.1 (conda) (--replace-conda); conda will no longer know what is installed"]
    # The installed torch satisfies the backend phase: pip leaves it alone.
    assert stays.conda_guard(_plan(Phase(BACKEND, ("torch>=2.5", "torchvision"), ())), t, FACTS.managed_installers,
                            allowed=False) == []
    skipped = _plan(Phase(BACKEND, ("torch==2.6.0",), (), skip="already installed"))
    assert stays.conda_guard(skipped, t, FACTS.managed_installers, allowed=False) == []


# -- the index says which files have their metadata served (PEP 658/714) ------------------------------


def test_pages_say_which_files_have_metadata() -> None:
    html = (b'<a href="x-1-py3-none-any.whl" data-core-metadata="sha256=ab">x-1-py3-none-any.whl</a>'
            b'<a href="x-2-py3-none-any.whl" data-dist-info-metadata="true">x-2-py3-none-any.whl</a>'
            b'<a href="x-3-py3-none-any.whl">x-3-py3-none-any.whl</a>')
    assert [f.metadata for f in parse_page(html, "text/html", "http://i/x/")] == [True, True, False]
    body = json.dumps({"files": [{"filename": "x-1-py3-none-any.whl", "url": "x-1-py3-none-any.whl",
                                  "core-metadata": {"sha256": "ab"}},
                                 {"filename": "x-2-py3-none-any.whl", "url": "x-2-py3-none-any.whl",
                                  "core-metadata": False}]}).encode()
    assert [f.metadata for f in parse_page(body, "application/vnd.pypi.simple.v1+json", "http://i/x/")] == [True, False]

