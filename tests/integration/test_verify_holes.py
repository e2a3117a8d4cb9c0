"""verify must not say ok when it is not (issue 9): environments made with plain pip, the way
an interrupted install or a stray ``pip install -U torch`` leaves them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.lab import Lab, ok, py

pytestmark = pytest.mark.integration


def _project(base: Path, deps: list[str]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    (base / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0"\ndependencies = [' + ", ".join(json.dumps(d) for d in deps) + "]\n")
    return base


def _pip_ok(lab: Lab, venv: Path, *args: str) -> None:
    proc = lab.pip(venv, "install", "--no-deps", "--disable-pip-version-check", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_torch_behind_a_project_requirement_is_a_problem(lab: Lab, tmp_path: Path) -> None:
    """A backend switch interrupted after its remove phase: wants-newer-torch is there, the
    torch it needs is not."""
    venv = lab.new_venv()
    _pip_ok(lab, venv, "--index-url", lab.world.url("pypi"), "wants-newer-torch")
    proj = _project(tmp_path / "proj", ["wants-newer-torch"])
    res = ok(lab.run("verify", "--python", py(venv), "--json", cwd=proj), 1)
    report = res.json()
    assert report["ok"] is False
    [p] = [p for p in report["problems"] if p["package"] == "torch"]
    assert "required by wants-newer-torch 1.0" in p["message"] and "not installed" in p["message"]
    assert p["fix"].startswith(f"backendpick install --python {py(venv)} --project ")
    text = ok(lab.run("verify", "--python", py(venv), cwd=proj), 1)
    assert "ok: the GPU stack is consistent" not in text.stdout


def test_fix_does_not_repeat_a_torch_the_backend_index_lacks(lab: Lab, tmp_path: Path) -> None:
    """``pip install -U torch`` took the hostile 99.0.0+cpu: torchvision's fix names plain torch
    for the cpu index, never 99.0.0, and following it repairs the environment."""
    venv = lab.new_venv()
    _pip_ok(lab, venv, "--index-url", lab.world.url("hostile"), "torch")
    _pip_ok(lab, venv, "--index-url", lab.world.url("cpu"), "torchvision==0.20.1+cpu", "filelock", "typing-extensions")
    res = ok(lab.run("verify", "--python", py(venv), "--json"), 1)
    fixes = [p["fix"] for p in res.json()["problems"] if p["package"] == "torchvision"]
    assert fixes == [f"backendpick install --python {py(venv)} --backend cpu torch torchvision"], res
    assert not [p for p in res.json()["problems"] if "99.0.0" in p["fix"]]
    ok(lab.run(*fixes[0].split()[1:]))
    after = ok(lab.run("verify", "--python", py(venv), "--json"))
    assert after.json()["ok"] is True and after.json()["torch"]["version"] in ("2.5.1+cpu", "2.6.0+cpu", "2.7.1+cpu")


def test_offered_torch_stays_pinned_in_the_fix(lab: Lab) -> None:
    venv = lab.new_venv()
    _pip_ok(lab, venv, "--index-url", lab.world.url("cpu"), "torch==2.6.0+cpu", "torchvision==0.20.1+cpu",
            "filelock", "typing-extensions")
    res = ok(lab.run("verify", "--python", py(venv), "--json"), 1)
    fixes = {p["fix"] for p in res.json()["problems"] if p["package"] == "torchvision"}
    assert fixes == {f"backendpick install --python {py(venv)} --backend cpu torch==2.6.0 torchvision"}
