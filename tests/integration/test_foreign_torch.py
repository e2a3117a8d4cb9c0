"""Issue 18: the torch backendpick did not install is recognised and kept; it is replaced only when
the request cannot be met with it, and the plan says so first; pip never removes what conda
manages; a satisfied environment stays; a constraint only constrains; a companion's own torch
pin takes part in the choice.

The stand-ins (NGC image, source build, conda, --system-site-packages venv) are
``tests/support/foreign.py``; each test builds its own environment from them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import foreign
from tests.support.dists import make_torch, make_wheel
from tests.support.lab import Lab, ok, py
from tests.support.recipe_world import add_recipe_world, project
from tests.support.venvs import files_of, site_packages
from tests.support.world import XFORMERS_FOR_TORCH

pytestmark = pytest.mark.integration

NGC_TEXT = f"NVIDIA build {foreign.NGC_TORCH} (NGC {foreign.NGC_RELEASE}), CUDA 12.5"


def _torch_pages(lab: Lab) -> list:
    """Every request for a torch project page, on any index."""
    return [r for r in lab.server.log if r.kind == "project" and r.name == "torch"]


# -- the NGC image (uv#7015) --------------------------------------------------------------------


def test_ngc_torch_serves_flash_attn_and_torch_einops_then_goes_only_when_asked(lab: Lab) -> None:
    """Done-when of issue 18 in the NGC stand-in: flash-attn is built against NVIDIA's torch
    without a torch page fetched, ``torch einops`` keeps it, verify names it; an explicit other
    backend replaces it, saying so before anything changes (the image's constraint pinning
    NVIDIA's torch first stops that with exit 3 naming the line); ``restore`` then brings
    NVIDIA's build back exactly, offline, and a second restore changes nothing."""
    ngc = foreign.ngc(lab)
    run = lambda *a, code=0, **kw: ok(lab.run(*a, "--python", ngc.python, machine=ngc.machine,  # noqa: E731
                                                  **{**ngc.extra, **kw}), code)
    lab.server.clear_log()
    res = run("install", "flash-attn")
    assert "no prebuilt wheel is built against the NVIDIA build" in res.stdout, res
    assert "toolchain: nvcc 12.5" in res.stdout, res  # checked against ITS CUDA
    assert lab.python(ngc.venv, "import flash_attn; print(flash_attn.torch_version)") == foreign.NGC_TORCH
    assert "phase remove" not in res.stdout and lab.versions(ngc.venv)["torch"] == foreign.NGC_TORCH

    res = run("install", "torch", "einops")
    assert lab.versions(ngc.venv)["torch"] == foreign.NGC_TORCH and "einops" in lab.versions(ngc.venv)
    assert _torch_pages(lab) == [], "no torch page may be fetched while NVIDIA's torch serves"
    report = run("verify")
    assert f"torch: {NGC_TEXT}, C++11 ABI on; no index serves it" in report.stdout, report

    blocked = run("install", "--backend", "cu124", "torch", code=3)
    assert f"constraint file {ngc.constraint}: torch=={foreign.NGC_TORCH}; " in blocked.stderr, blocked
    assert "these hold the installed NVIDIA build; to replace it, remove those lines" in blocked.stderr, blocked
    assert lab.versions(ngc.venv)["torch"] == foreign.NGC_TORCH

    ngc.constraint.write_text("numpy==1.26.4\npsutil==6.1.0\n")  # the user removes the stack's lines
    plan = run("plan", "--backend", "cu124", "torch")
    assert f"replacing: the installed {NGC_TEXT}; no index serves it: --backend asks for cu124" in plan.stdout, plan
    assert "phase remove: run: flash-attn torch torchvision" in plan.stdout, plan
    before = files_of(ngc.venv)
    res = run("install", "--backend", "cu124", "torch")
    assert f"warning: replacing the installed {NGC_TEXT}" in res.stderr, res
    assert lab.versions(ngc.venv)["torch"] == "2.6.0+cu124"

    # restore brings NVIDIA's build back from the copies kept before the replacement: the same
    # files (RECORD, INSTALLER, direct_url.json), torchvision and the flash-attn built against it.
    lab.server.clear_log()
    back = run("restore")
    assert "phase restore-kept: " in back.stdout and lab.server.log == [], back  # offline
    assert "restored snapshot " in back.stdout and " before install --backend cu124 torch)" in back.stdout, back
    assert files_of(ngc.venv) == before, "restore did not bring back NVIDIA's build as it was"
    assert (site_packages(ngc.venv) / f"torch-{foreign.NGC_TORCH}.dist-info" / "INSTALLER").read_text() == "pip\n"
    assert lab.python(ngc.venv, "import flash_attn, torch; print(torch.__version__, flash_attn.torch_version)") \
        == f"{foreign.NGC_TORCH} {foreign.NGC_TORCH}"
    assert f"torch: {NGC_TEXT}, C++11 ABI on; no index serves it" in run("verify").stdout
    again = run("restore")
    assert "the environment already matches snapshot" in again.output and "phase" not in again.output, again


def test_ngc_plan_detect_and_recipes_name_the_installed_torch(lab: Lab, tmp_path: Path) -> None:
    """plan, detect and recipes for NVIDIA's torch: its own CUDA (cupy -> cupy-cuda12x), no
    index asked; a project with nothing for it (PyG's pages) is an error that names the choices;
    a companion it lacks is an error too; a pin it does not meet replaces it."""
    add_recipe_world(lab.server)
    ngc = foreign.ngc(lab)
    proj = project(tmp_path / "proj", lab.server)
    run = lambda *a, code=0: ok(lab.run(*a, "--python", ngc.python, machine=ngc.machine, cwd=proj,  # noqa: E731
                                        **ngc.extra), code)
    lab.server.clear_log()
    plan = run("plan", "--json", "cupy").json()
    assert plan["backend"] == "cu125" and plan["decided_by"] == "installed" and plan["offers_source"] == "installed"
    assert plan["installed_torch"]["label"] == "NVIDIA build" and plan["installed_torch"]["note"] == "NGC 24.06"
    assert plan["packages"][0]["requirement"].startswith("cupy-cuda12x")
    assert not [p for p in plan["phases"] if p["name"] == "remove"]
    up = run("plan", "-U", "torch", "einops")  # -U moves the rest, never NVIDIA's torch
    assert "phase backend: skip (the installed NVIDIA build stays)" in up.stdout, up
    assert "-U does not replace the installed NVIDIA build" in up.stderr, up
    sh = run("plan", "--format", "sh", "torch", "einops").stdout
    assert "# skipped: the installed NVIDIA build stays" in sh and "/cu125/" not in sh, sh
    detect = run("detect")
    assert f"installed: {NGC_TEXT}; no index serves it" in detect.stdout and "decided-by: installed" in detect.stdout
    assert _torch_pages(lab) == []
    pyg = run("plan", "torch-scatter", code=3)
    assert "no page for torch 2.4.0a0 and cu125" in pyg.stderr and "stays" in pyg.stderr, pyg
    assert "--backend cu124" in pyg.stderr, pyg
    missing = run("plan", "xformers", code=3)
    assert f"no index serves xformers for the installed {NGC_TEXT}" in missing.stderr, missing
    pinned = run("plan", "torch==2.5.1", code=2)  # the image's constraint holds NVIDIA's torch
    assert f"constraint file {ngc.constraint}: torch=={foreign.NGC_TORCH}" in pinned.stderr, pinned


# -- a source build, conda, a base environment ------------------------------------------------------


def test_source_built_torch_stays_and_builds_against_it(lab: Lab) -> None:
    src = foreign.source_built(lab)
    run = lambda *a, code=0: ok(lab.run(*a, "--python", src.python, machine=src.machine), code)  # noqa: E731
    res = run("install", "torch", "einops")
    assert lab.versions(src.venv)["torch"] == foreign.SOURCE_TORCH and "phase rest: done" in res.stdout, res
    plan = run("plan", "flash-attn")
    assert f"building from source: no prebuilt wheel is built against the source build {foreign.SOURCE_TORCH}" \
        in plan.stdout and "TORCH_CUDA_ARCH_LIST=12.0" in plan.stdout, plan
    report = run("verify")
    assert f"torch: source build {foreign.SOURCE_TORCH}, CUDA 12.8, C++11 ABI on; no index serves it" in report.stdout
    plan = run("plan", "torch==2.7.1")
    assert "replacing: the installed source build" in plan.stdout and "torch==2.7.1, which it does not satisfy" \
        in plan.stdout, plan


def test_pip_never_removes_what_conda_installed_unless_told(lab: Lab) -> None:
    conda = foreign.conda_torch(lab)
    run = lambda *a, code=0: ok(lab.run(*a, "--python", conda.python, machine=conda.machine), code)  # noqa: E731
    res = run("install", "--dry-run", "torch", "einops")
    assert "# installed: conda package torch 2.5.1, CUDA 12.4; conda manages it" in res.stdout, res
    assert "pip uninstall" not in res.stdout
    refused = run("install", "torch==2.6.0", code=2)
    assert "torch 2.5.1 (conda), which conda installed" in refused.stderr and "--replace-conda" in refused.stderr
    assert lab.versions(conda.venv)["torch"] == foreign.CONDA_TORCH
    allowed = run("plan", "torch==2.6.0", "--replace-conda")
    assert "phase remove: run: torch" in allowed.stdout and "pip replaces torch 2.5.1 (conda)" in allowed.stderr
    assert "conda package torch 2.5.1" in run("verify").stdout


def test_a_base_environments_torch_is_kept_and_never_removed(lab: Lab) -> None:
    """A venv made with --system-site-packages over a base whose site-packages hold torch: it
    serves the request; when another torch is asked for, the venv gets its own, the base's stays;
    restore takes the venv's own away again."""
    stand = foreign.system_site_venv(lab)
    run = lambda *a, code=0: ok(lab.run(*a, "--python", stand.python, machine=stand.machine), code)  # noqa: E731
    plan = run("plan", "torch", "einops")
    assert "installed: torch 2.5.1+cu124, CUDA 12.4; seen through the base environment's" in plan.stdout, plan
    assert "phase backend: skip" in plan.stdout and "phase remove" not in plan.stdout
    before = files_of(stand.venv)
    res = run("install", "torch==2.6.0")
    assert "this environment gets a torch of its own" in res.stderr and "phase remove" not in res.stdout, res
    where = "import torch; print(torch.__version__, torch.__file__.startswith(__import__('sys').prefix))"
    assert lab.python(stand.venv, where) == "2.6.0+cu124 True"
    base = Path(lab.python(stand.venv, "import site; print(site.getsitepackages()[-1])"))
    assert list(base.glob("torch-2.5.1+cu124.dist-info")), "the base environment's torch must stay"
    assert "torch: 2.6.0+cu124 (cu124, CUDA 12.4)" in run("verify").stdout
    run("restore")  # the venv's own torch goes; the base's shows through again, none put in the venv
    assert files_of(stand.venv) == before and lab.python(stand.venv, where) == "2.5.1+cu124 False"


# -- a satisfied environment stays (item 7) ---------------------------------------------------------


def test_a_driver_upgrade_keeps_the_installed_backend_until_asked(lab: Lab) -> None:
    venv = lab.new_venv()
    ok(lab.run("install", "--python", py(venv), "torch", machine="nvidia-550-a100"))
    assert lab.versions(venv)["torch"] == "2.6.0+cu124"
    # The driver goes from 550 (CUDA 12.4) to 560 (CUDA 12.6): cu126 would run too.
    plan = ok(lab.run("plan", "--json", "--python", py(venv), "torch", machine="nvidia-560-a100")).json()
    assert plan["backend"] == "cu124" and plan["decided_by"] == "installed", plan
    assert "a newer backend would run here: cu126" in plan["reason"] and "-U, or --backend cu126" in plan["reason"]
    again = ok(lab.run("install", "--python", py(venv), "torch", machine="nvidia-560-a100"))
    assert "nothing to do" in again.stdout and lab.versions(venv)["torch"] == "2.6.0+cu124"
    up = ok(lab.run("plan", "--json", "-U", "--python", py(venv), "torch", machine="nvidia-560-a100")).json()
    assert up["backend"] == "cu126" and up["torch"]["version"] == "2.7.1+cu126"


# -- a constraint only constrains (item 8) ----------------------------------------------------------


def _index_without_torchvision(lab: Lab) -> str:
    """A cpu backend index with torch 2.13.0+cpu and no torchvision page."""
    directory = lab.server.root / "fc8-cpu"
    if not directory.is_dir():
        staging = lab.server.root / ".fc8-cpu"
        staging.mkdir()
        make_wheel(staging, "filelock", "3.16.1")
        make_wheel(staging, "typing-extensions", "4.12.2")
        make_torch(staging, "2.13.0", "cpu")
        staging.rename(directory)
    return lab.server.base_url + "/fc8-{backend}/simple"


def test_a_constraint_on_a_package_nobody_asked_for_neither_requires_it_nor_blocks(lab: Lab, tmp_path: Path) -> None:
    venv = lab.new_venv()
    cons = tmp_path / "machine-constraints.txt"
    cons.write_text("torchvision<=0.29.1\n")
    plan = ok(lab.run("plan", "--json", "--python", py(venv), "--backend", "cpu", "torch==2.13.0",
                      BACKENDPICK_INDEX_URL=_index_without_torchvision(lab), PIP_CONSTRAINT=str(cons))).json()
    assert plan["torch"]["version"] == "2.13.0+cpu"
    assert [p["requirement"] for p in plan["torch"]["pins"]] == ["torch==2.13.0"]
    cons.write_text(f"torchvision=={foreign.NGC_TORCHVISION}\n")
    plan = ok(lab.run("plan", "--json", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "einops",
                      PIP_CONSTRAINT=str(cons))).json()
    backend = next(p for p in plan["phases"] if p["name"] == "backend")
    assert plan["torch"]["version"] == "2.5.1+cu124" and backend["requirements"] == ["torch==2.5.1"], plan


# -- a companion's own torch pin (item 9) -----------------------------------------------------------


def test_a_companions_own_torch_pin_takes_part_in_the_choice(lab: Lab) -> None:
    make_wheel(lab.server.index_dir("pypi"), "pins-torch", "1.0", requires=["torch==2.6.0"])
    venv = lab.new_venv()
    xformers = f"xformers=={XFORMERS_FOR_TORCH['2.7.1']}"
    res = ok(lab.run("install", "--python", py(venv), "pins-torch", xformers, machine="nvidia-570-v100"), 2)
    assert f"{xformers.replace('==', ' ')} requires torch==2.7.1" in res.stderr, res
    assert "pins-torch 1.0 requires torch==2.6.0" in res.stderr and "torch" not in lab.versions(venv)
    plan = ok(lab.run("plan", "--json", "--python", py(venv), xformers, machine="nvidia-560-a100")).json()
    assert plan["backend"] == "cu126" and plan["torch"]["version"] == "2.7.1+cu126", plan
    assert [p["text"] for p in plan["torch"]["pins"]] == [f"{xformers.replace('==', ' ')} requires torch==2.7.1"]
