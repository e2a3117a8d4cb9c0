"""install's safety promises, with real pip: failures are reported and contained, credentials
never printed, no package source but the backend index reaches the backend phase, nothing in a
later phase replaces the stack, and the tests themselves never see this machine's pip setup.

The harness (``Lab``) and the shared world live in ``test_plan_install.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.lab import Lab, ok, py
from tests.support.dists import make_torch, make_wheel
from tests.support.venvs import write_pip_conf
from tests.support.world import HOSTILE_TORCH_VERSION

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-t0ken"


@pytest.fixture(scope="module")
def hostile_links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links directory offering torch and torchvision 99 (newer than anything real)."""
    directory = tmp_path_factory.mktemp("hostile-find-links")
    make_torch(directory, "99.0.0", "cpu", requires=(), attrs={"__index__": "find-links"})
    make_wheel(directory, "torchvision", "99.0.0", attrs={"__index__": "find-links"})
    return directory


# -- 8. failure reporting -------------------------------------------------------------------------


def test_rest_phase_failure_names_the_phase_shows_the_tail_and_keeps_the_backend(lab: Lab) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cpu", "torch==2.5.1", "tqdm",
                     "no-such-package-anywhere"), 1)
    err = res.stderr
    assert "error: phase 'rest' failed (pip exit 1)" in err
    assert "the environment is as phase 'backend' left it" in err
    # The command and the tail of pip's output, before the one-line error.
    assert "--- pip output (last" in err
    assert "No matching distribution found for no-such-package-anywhere" in err
    failed = next(line for line in err.splitlines() if line.startswith("$ "))
    assert failed.endswith("tqdm no-such-package-anywhere")
    assert err.index("No matching distribution") < err.index("error: phase 'rest' failed")
    # The full output is in the log the hint names.
    log = Path(err.split("full pip output: ", 1)[1].split(";", 1)[0].strip())
    assert "no-such-package-anywhere" in log.read_text()
    # The backend phase ran and stays done; the failed phase installed nothing.
    assert res.phases_run == ["backend"]
    versions = lab.versions(venv)
    assert versions["torch"] == "2.5.1+cpu"
    assert "tqdm" not in versions


def test_backend_phase_failure_leaves_the_environment_unchanged(lab: Lab) -> None:
    venv = lab.new_venv()
    before = lab.versions(venv)
    # torchvision 0.21.0 exists on cu124 but needs torch 2.6.0: pip itself cannot resolve it. (Pinned
    # exactly, its own torch pin would stop the plan before any pip runs: a range is not read.)
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1",
                     "torchvision>=0.21.0", "tqdm"), 1)
    assert "error: phase 'backend' failed" in res.stderr
    assert "the environment is unchanged" in res.stderr
    assert "ResolutionImpossible" in res.stderr or "conflicting dependencies" in res.stderr
    assert res.phases_run == []
    assert lab.versions(venv) == before


# -- later phases cannot replace the stack --------------------------------------------------------


def test_rest_phase_cannot_replace_torch(lab: Lab) -> None:
    """A package that wants another torch than the one asked for: the plan's resolution sees its
    pin and stops before anything changes (it used to surface as a failed rest phase)."""
    venv = lab.new_venv()
    lab.server.clear_log()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1",
                     "wants-newer-torch"), 2)
    assert "wants-newer-torch 1.0 requires torch>=2.7; you asked for torch==2.5.1" in res.stderr
    versions = lab.versions(venv)
    assert "torch" not in versions and "wants-newer-torch" not in versions
    # No other torch is ever installed, nor even downloaded, on any pip: the plan's resolution
    # offers torch as a stub, so neither the hostile torch 99 nor PyPI's is fetched (file or metadata).
    assert not [r for r in lab.server.log if r.kind in ("file", "metadata") and r.name.startswith("torch-")]
    # With the stack installed, the rest phase still runs pinned to it: the constraints file holds
    # the installed torch with its local tag.
    ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1"))
    plan = ok(lab.run("plan", "--json", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "tqdm")).json()
    rest = next(p for p in plan["phases"] if p["name"] == "rest")
    assert "torch==2.5.1+cu124" in rest["constraints"]


# -- no other package source in the backend phase -------------------------------------------------


def test_backend_phase_ignores_extra_index_and_find_links_from_config_and_env(
    lab: Lab, hostile_links: Path, tmp_path: Path
) -> None:
    """torch and torchvision unpinned: any leak of the 99.0.0 builds would win."""
    conf = write_pip_conf(
        tmp_path / "pip.conf",
        index_url=lab.world.url("pypi"),
        extra_index_urls=[lab.world.url("hostile")],
        find_links=[str(hostile_links)],
    )
    env = lab.env(
        pip_conf=conf,
        PIP_EXTRA_INDEX_URL=lab.world.url("hostile"),
        PIP_FIND_LINKS=str(hostile_links),
    )
    venv = lab.new_venv()
    dry = ok(lab.run("install", "--dry-run", "--python", py(venv), "--backend", "cu124", "torch", "torchvision",
                     env=env))
    backend = dry.dry_run_commands[0]  # the "#" lines before it say which torch and why
    assert "-u PIP_EXTRA_INDEX_URL" in backend and "-u PIP_FIND_LINKS" in backend
    assert "PIP_CONFIG_FILE=/dev/null" in backend

    lab.server.clear_log()
    res = ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "torch", "torchvision", env=env))
    versions = lab.versions(venv)
    assert versions["torch"] == "2.6.0+cu124"
    assert versions["torchvision"] == "0.21.0+cu124"
    assert versions["torch"] != HOSTILE_TORCH_VERSION
    assert lab.python(venv, "import torch, torchvision; print(torch.__index__, torchvision.__index__)") == "cu124 cu124"
    assert lab.server.indexes_asked_for("torch") and set(lab.server.indexes_asked_for("torch")) == {"cu124"}
    assert set(lab.server.indexes_asked_for("torchvision")) == {"cu124"}
    assert "hostile" not in {r.index for r in lab.server.log}, res


# -- 9. credentials in the index URL --------------------------------------------------------------


def _cred_template(lab: Lab) -> str:
    return lab.server.base_url.replace("http://", f"http://alice:{SECRET}@") + "/{backend}/simple"


def test_credentials_never_printed_by_plan_dry_run_or_json(lab: Lab) -> None:
    venv = lab.new_venv()
    common = ("--python", py(venv), "--index-url", _cred_template(lab), "--backend", "cu124", *(
        "torch==2.5.1", "torchvision", "xformers", "flash-attn", "tqdm"))
    for args in (("plan",), ("plan", "--json"), ("install", "--dry-run"), ("install", "--dry-run", "--json")):
        res = ok(lab.run(*args, *common))
        assert SECRET not in res.output, res
        assert "***@127.0.0.1" in res.output, res  # the URL is shown, its credentials are not
    plan = lab.run("plan", "--json", *common).json()
    assert plan["index_url"].startswith("http://***@127.0.0.1")
    assert plan["phases"][0]["index_url"].startswith("http://***@127.0.0.1")


def test_credentials_never_printed_by_install_or_its_logs(lab: Lab) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("install", "-v", "--python", py(venv), "--index-url", _cred_template(lab), "--backend", "cpu",
                     "torch==2.5.1"))
    assert lab.versions(venv)["torch"] == "2.5.1+cpu"  # the credentialed index really served it
    assert SECRET not in res.output, res
    logs = list((venv / ".backendpick" / "logs").iterdir())
    assert logs
    for log in logs:
        assert SECRET not in log.read_text(), log


def test_credentials_never_printed_in_errors(lab: Lab) -> None:
    venv = lab.new_venv()
    template = _cred_template(lab)
    # No matching torch on the explicit backend: exit 3 naming the index.
    res = ok(lab.run("plan", "--python", py(venv), "--index-url", template, "--backend", "cu124", "torch==2.7.1"), 3)
    assert "***@127.0.0.1" in res.stderr and SECRET not in res.output, res
    # No index answers: the warning names the index.
    dead = f"http://alice:{SECRET}@127.0.0.1:9/{{backend}}/simple"
    res = ok(lab.run("plan", "--python", py(venv), "--index-url", dead, "torch"))
    assert "no backend index answered (http://***@127.0.0.1:9/" in res.stderr and SECRET not in res.output, res
    # pip fails in the backend phase: the tail of its output is shown. (A range: an exact
    # torchvision pin's own torch pin would stop the plan before pip runs.)
    res = ok(lab.run("install", "--python", py(venv), "--index-url", template, "--backend", "cu124",
                     "torch==2.5.1", "torchvision>=0.21.0"), 1)
    assert "--- pip output" in res.stderr
    assert SECRET not in res.output, res
    for log in (venv / ".backendpick" / "logs").iterdir():
        assert SECRET not in log.read_text(), log


# -- 11. hermeticity of the tests themselves ------------------------------------------------------


def test_lab_env_keeps_this_machines_settings_out(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, hostile_links: Path
) -> None:
    """Poison the test process's own environment: nothing may reach backendpick or pip."""
    monkeypatch.setenv("PIP_INDEX_URL", lab.world.url("hostile"))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", lab.world.url("hostile"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(hostile_links))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("BACKENDPICK_BACKEND", "cu128")
    monkeypatch.setenv("BACKENDPICK_INDEX_URL", "https://download.pytorch.org/whl/{backend}")
    monkeypatch.setenv("CUDA_VERSION", "12.8.1")
    monkeypatch.setenv("VIRTUAL_ENV", str(lab.world.template_venv))
    env = lab.env()
    allowed = {"PIP_CONFIG_FILE", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT", "PIP_NO_CACHE_DIR"}
    assert {k for k in env if k.startswith("PIP_")} <= allowed
    assert env["PIP_CONFIG_FILE"] == str(lab.world.pip_conf)
    assert env["BACKENDPICK_INDEX_URL"] == lab.template
    assert "BACKENDPICK_BACKEND" not in env and "CUDA_VERSION" not in env and "VIRTUAL_ENV" not in env

    venv = lab.new_venv()
    lab.server.clear_log()
    res = ok(lab.run("plan", "--json", "--python", py(venv), "torch", "tqdm"))
    plan = res.json()
    assert plan["backend"] == "cpu" and plan["decided_by"] == "detected"
    text = res.stdout
    assert str(hostile_links) not in text and "hostile" not in text and "download.pytorch.org" not in text
    assert "/opt/wheels" not in text  # this machine's own PIP_FIND_LINKS, if it has one
    for key in ("PIP_INDEX_URL", "PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT"):
        assert f"{key}=" not in text
    # The plan's look-ahead resolved tqdm with the world's user configuration (pypi, and hostile
    # as its extra index, as the rest phase will): the poisoned PIP_NO_INDEX would have failed it.
    assert not [w for w in plan["warnings"] if "not fully resolved" in w], plan["warnings"]
    assert {r.name for r in lab.server.log if r.index == "hostile" and r.kind == "project"} <= {"tqdm"}
    assert not [r for r in lab.server.log if r.index == "hostile" and r.kind in ("file", "metadata")]


def test_pip_in_the_lab_sees_only_the_world_config(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "/nonexistent/machine-wheels")
    venv = lab.new_venv()
    proc = lab.pip(venv, "config", "list")
    assert proc.returncode == 0, proc.stderr
    settings = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert settings["global.index-url"] == repr(lab.world.url("pypi"))
    assert settings["global.extra-index-url"] == repr(lab.world.url("hostile"))
    assert not [k for k in settings if "find-links" in k or "no-index" in k]
    assert [k for k in settings if k.endswith("index-url")] == ["global.extra-index-url", "global.index-url"]
    assert "machine-wheels" not in proc.stdout
    assert os.environ["PIP_FIND_LINKS"] == "/nonexistent/machine-wheels"  # the poison was there
