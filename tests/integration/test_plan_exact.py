"""Dry run and export are exact (issue 9): the plan holds what install runs, transitive backend
and build packages included, and the exported script installs what install installs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.dists import make_wheel
from tests.support.lab import Lab, ok, py

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def needs_torch(lab: Lab) -> None:
    """An ordinary package on the user's index that depends on torch only through its metadata."""
    directory = lab.server.index_dir("pypi")
    if not list(directory.glob("needs_torch-1.0-*.whl")):
        make_wheel(directory, "needs-torch", "1.0", requires=["torch"], attrs={"__index__": "pypi"})


def _phase(plan: dict, name: str) -> dict | None:
    return next((p for p in plan["phases"] if p["name"] == name), None)


def test_plan_shows_the_backend_phase_a_transitive_torch_needs(lab: Lab, tmp_path: Path) -> None:
    """The plan, the dry run and install agree, and the exported script installs what install
    installed. (One install serves both checks: they were two tests with the same install,
    issue 20 item 7.)"""
    venv, by_script = lab.new_venv(), lab.new_venv()
    plan = ok(lab.run("plan", "--python", py(venv), "--backend", "cpu", "needs-torch", "tqdm", "--json")).json()
    backend, rest = _phase(plan, "backend"), _phase(plan, "rest")
    assert backend is not None and backend["requirements"] == ["torch"], plan["phases"]
    assert rest["requirements"] == ["needs-torch", "tqdm"]
    assert "torch<0" not in rest["constraints"]
    assert not [w for w in plan["warnings"] if "not fully resolved" in w]

    dry = ok(lab.run("install", "--dry-run", "--python", py(venv), "--backend", "cpu", "needs-torch", "tqdm"))
    assert dry.dry_run_commands == [p["command"] for p in plan["phases"] if not p["skip"]]
    res = ok(lab.run("install", "-v", "--python", py(venv), "--backend", "cpu", "needs-torch", "tqdm"))
    assert "running again" not in res.stdout, res
    assert res.phases_run == ["backend", "rest"]
    assert res.commands == dry.dry_run_commands
    versions = lab.versions(venv)
    assert versions["torch"].endswith("+cpu") and versions["needs-torch"] == "1.0"

    # The exported script, planned for another fresh venv and run there without backendpick.
    script = ok(lab.run("plan", "--format", "sh", "--python", py(by_script), "--backend", "cpu", "needs-torch",
                        "tqdm")).stdout
    assert "torch<0" not in script
    path = tmp_path / "install.sh"
    path.write_text(script)
    env = lab.env(PYTHON=py(by_script), TMPDIR=str(tmp_path))
    ran = subprocess.run(["sh", str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert lab.versions(by_script) == versions
    assert [p.name for p in tmp_path.iterdir()] == ["install.sh"]  # its constraints file is gone


def test_plan_routes_transitive_torchvision_into_the_backend_phase(lab: Lab) -> None:
    venv = lab.new_venv()
    plan = ok(lab.run("plan", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "vision-helper",
                      "--json")).json()
    assert _phase(plan, "backend")["requirements"] == ["torch==2.5.1", "torchvision"]


def test_build_package_without_a_wheel_is_routed_and_the_fallback_is_said(lab: Lab) -> None:
    """flash-attn is only an sdist: the look-ahead builds nothing, stops there, still puts
    flash-attn into the build phase, and the plan says the resolution fell short."""
    venv = lab.new_venv()
    plan = ok(lab.run("plan", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "attn-helper",
                      "--json")).json()
    assert _phase(plan, "build")["requirements"] == ["flash-attn"]
    assert [w for w in plan["warnings"] if "not fully resolved" in w and "flash-attn" in w], plan["warnings"]


def test_detect_reports_the_backend_plan_chooses(lab: Lab) -> None:
    """Driver 575 runs CUDA 12.9: the packaged table has cu129, the world's indexes stop at
    cu128. detect asks the indexes as plan does; with --offline it says it did not.

    No build serves both the V100 (sm_70) and the RTX 5090 (sm_120): CUDA_VISIBLE_DEVICES=1
    leaves only the 5090, as torch would see it, and both commands choose for it."""
    machine, hidden = "nvidia-575-v100-rtx5090", {"CUDA_VISIBLE_DEVICES": "1"}
    venv = lab.new_venv()
    ok(lab.run("plan", "--python", py(venv), "torch", "--json", machine=machine), 3)  # both GPUs: none serves
    plan = ok(lab.run("plan", "--python", py(venv), "torch", "--json", machine=machine, **hidden)).json()
    detect = ok(lab.run("detect", "--python", py(venv), "--json", machine=machine, **hidden)).json()
    assert (detect["backend"], detect["offers_source"], detect["offline"]) == (plan["backend"], "index", False)
    assert plan["backend"] == "cu128"
    v100 = next(a for a in detect["accelerators"] if a["name"].startswith("Tesla V100"))
    assert v100["ignored"] == "hidden by CUDA_VISIBLE_DEVICES='1'"
    offline = ok(lab.run("detect", "--offline", "--json", machine=machine, **hidden)).json()
    assert (offline["offers_source"], offline["offline"]) == ("table", True)
    assert offline["backend"] == "cu129"
    text = ok(lab.run("detect", "--offline", machine=machine, **hidden)).stdout
    assert "offers-from: table (--offline: no backend index was asked" in text


def test_template_answering_404_everywhere_says_so(lab: Lab) -> None:
    nowhere = lab.server.base_url + "/nowhere/{backend}/simple"
    for args, machine in ((("torch",), "nvidia-560-a100"), (("--backend", "cu124", "torch"), "none")):
        res = ok(lab.run("plan", "--index-url", nowhere, *args, machine=machine), 3)
        assert "the backend index has no torch for any backend: " in res.stderr, res
        assert "/nowhere/" in res.stderr and "(HTTP 404)" in res.stderr
        assert "hint: check the index URL template from --index-url" in res.stderr
        assert "torch releases that would work here" not in res.stderr  # nothing from the packaged table
    detect = ok(lab.run("detect", "--index-url", nowhere, "--json", machine="nvidia-560-a100")).json()
    assert detect["offers_source"] == "table"
    assert any("no torch for any backend" in w and "(HTTP 404)" in w for w in detect["warnings"])


def test_file_index_template_is_supported(lab: Lab, tmp_path: Path) -> None:
    """A static PEP 503 tree on disk (what pip reads from file:// URLs): plan reads its offers
    from it (no silent fall back to the packaged table), and install installs from it."""
    import html

    for backend in ("cpu",):
        source = lab.server.index_dir(backend)
        projects: dict[str, list[Path]] = {}
        for wheel in sorted(source.glob("*.whl")):
            projects.setdefault(wheel.name.split("-")[0].replace("_", "-").lower(), []).append(wheel)
        for project, wheels in projects.items():
            folder = tmp_path / "static" / backend / "simple" / project
            folder.mkdir(parents=True)
            links = "".join(f'<a href="{html.escape(w.as_uri())}">{html.escape(w.name)}</a>\n' for w in wheels)
            (folder / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    template = (tmp_path / "static").as_uri() + "/{backend}/simple"
    venv = lab.new_venv()
    plan = ok(lab.run("plan", "--python", py(venv), "--index-url", template, "torch==2.5.1", "--json")).json()
    assert (plan["backend"], plan["offers_source"]) == ("cpu", "index")
    assert not [w for w in plan["warnings"] if "packaged release table" in w]
    ok(lab.run("install", "--python", py(venv), "--index-url", template, "torch==2.5.1"))
    assert lab.versions(venv)["torch"] == "2.5.1+cpu"
