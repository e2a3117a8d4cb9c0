"""Recipes end to end (issue 12): the GPU packages beyond the torch family get torch's backend.

The recipe world (tests/support/recipe_world.py) serves each mechanism on 127.0.0.1: a PyG-style
find-links page per torch and backend, a llama-cpp-python-style index per backend, per-CUDA
names, an extra per CUDA major, and trap sdists on the default index whose setup.py fails
loudly. Every shipped recipe URL is pointed at the server through [tool.backendpick.mirrors].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.lab import Lab, Result, ok, py
from tests.support.recipe_world import CUPY_VERSION, JAX_VERSION, LLAMA_VERSION, PYG, add_recipe_world, project

pytestmark = pytest.mark.integration

DONE = ("torch", "torch-scatter", "cupy", "jax", "llama-cpp-python")
MACHINE = "nvidia-550-a100"  # driver 550: CUDA 12.4 at most, so cu124 and torch 2.6.0


@pytest.fixture(scope="module")
def proj(lab: Lab, tmp_path_factory) -> Path:
    add_recipe_world(lab.server)
    return project(tmp_path_factory.mktemp("recipes") / "proj", lab.server)


@dataclass
class Done:
    venv: Path
    plan: Result
    dry: Result
    sh: Result
    install: Result
    versions: dict
    verify: Result
    rerun: Result
    plan_json: dict


@pytest.fixture(scope="module")
def done(lab: Lab, proj: Path) -> Done:
    """The issue's done criterion, run once: plan, dry run, sh export, install, verify."""
    venv = lab.new_venv()
    where = ("--python", py(venv), "--project", str(proj))
    plan = ok(lab.run("plan", *where, *DONE, machine=MACHINE))
    plan_json = ok(lab.run("plan", "--json", *where, *DONE, machine=MACHINE)).json()
    dry = ok(lab.run("install", "--dry-run", *where, *DONE, machine=MACHINE))
    sh = ok(lab.run("plan", "--format", "sh", *where, *DONE, machine=MACHINE))
    lab.server.clear_log()
    install = ok(lab.run("install", *where, *DONE, machine=MACHINE))
    versions = lab.versions(venv)
    verify = lab.run("verify", *where, machine=MACHINE)
    rerun = ok(lab.run("install", *where, *DONE, machine=MACHINE))
    return Done(venv, plan, dry, sh, install, versions, verify, rerun, plan_json)


def test_each_package_gets_its_cu124_build_without_a_source_build(done: Done, lab: Lab) -> None:
    v = done.versions
    assert v["torch"] == "2.6.0+cu124"
    assert v["torch-scatter"] == f"{PYG['torch-scatter']}+pt26cu124"
    assert v["cupy-cuda12x"] == CUPY_VERSION and "cupy" not in v and "cupy-cuda11x" not in v
    assert v["jax"] == JAX_VERSION and v["jax-cuda12-plugin"] == JAX_VERSION
    assert v["llama-cpp-python"] == LLAMA_VERSION  # not the newer sdist of the default index
    assert lab.python(done.venv, "import llama_cpp_python as m; print(m.__index__)") == "llama-cu124"
    assert "TRAP" not in done.install.output
    downloaded = lab.server.files_downloaded("pypi")
    assert not [f for f in downloaded if f.endswith(".tar.gz")], downloaded


def test_a_rerun_on_the_finished_environment_runs_no_pip(done: Done) -> None:
    assert done.rerun.phases_run == [], done.rerun
    assert "nothing to do" in done.rerun.output


def test_plan_says_where_each_package_comes_from(done: Done, lab: Lab) -> None:
    out = done.plan.stdout
    assert "# cupy -> cupy-cuda12x (recipe: name per CUDA major; rest phase)" in out
    assert "# jax -> jax[cuda12] (recipe: extra per CUDA major; rest phase)" in out
    page = f"{lab.server.base_url}/pyg/torch-2.6.0+cu124.html"
    assert f"# torch-scatter -> torch-scatter 2.1.2+pt26cu124 " \
           f"(recipe: find-links page per torch and backend; from {page}; rest phase)" in out
    assert f"# llama-cpp-python -> llama-cpp-python {LLAMA_VERSION} (recipe: index per backend; " \
           f"from {lab.server.base_url}/llama-cu124/simple; rest phase)" in out
    # The dry run and the sh export carry the same routes and run the same wheel URLs.
    for res in (done.dry, done.sh):
        assert "# cupy -> cupy-cuda12x" in res.stdout
        assert "torch-scatter @ http://127.0.0.1" in res.stdout
    # Recipe names the plan does not install are fenced, so a dependency cannot pull them in.
    constraints = (done.venv / ".backendpick" / "constraints.txt").read_text().split()
    assert "onnxruntime-gpu<0" in constraints and "torch-sparse<0" in constraints
    assert "cupy<0" in constraints  # the sdist name: only cupy-cuda12x may come in


def test_plan_json_lists_each_route(done: Done) -> None:
    routes = {r["package"]: r for r in done.plan_json["packages"]}
    assert set(routes) == {"torch-scatter", "cupy", "jax", "llama-cpp-python"}
    assert routes["cupy"]["requirement"] == "cupy-cuda12x" and routes["cupy"]["phase"] == "rest"
    assert routes["torch-scatter"]["url"].endswith("/pyg/torch-2.6.0+cu124.html")
    assert routes["jax"]["source"] == "https://docs.jax.dev/en/latest/installation.html"


def test_a_project_without_torchs_backend_takes_the_newest_of_the_same_major(lab: Lab, proj: Path) -> None:
    res = ok(lab.run("plan", "--project", str(proj), "torch", "llama-cpp-python", machine="nvidia-560-a100"))
    assert "backend: cu126" in res.stdout
    assert f"from {lab.server.base_url}/llama-cu125/simple" in res.stdout
    assert "the recipe for llama-cpp-python is partly unverified" in res.stderr


def test_install_then_verify_of_a_project_with_renamed_packages_passes(done: Done, lab: Lab, tmp_path: Path) -> None:
    """A Dockerfile's ``backendpick install && backendpick verify`` of a project listing ``cupy``
    and ``jax``: installed as cupy-cuda12x and jax[cuda12], they count as installed (issue 18)."""
    deps = ", ".join(f'"{d}"' for d in DONE)
    proj = project(tmp_path / "proj", lab.server, f'[project]\nname = "demo"\nversion = "0.1"\ndependencies = [{deps}]\n')
    where = ("--python", py(done.venv), "--project", str(proj))
    ok(lab.run("install", *where, machine=MACHINE))
    res = ok(lab.run("verify", *where, machine=MACHINE))
    assert "cupy" not in res.stdout and "ok: the GPU stack is consistent" in res.stdout, res


def test_verify_accepts_the_result_then_names_a_mismatch(done: Done, lab: Lab) -> None:
    ok(done.verify)
    # Another CUDA major's cupy next to ours, and a PyG wheel for the cpu backend.
    res = lab.pip(done.venv, "install", "--no-deps", "cupy-cuda11x",
                  f"{lab.server.base_url}/pyg/files/torch_scatter-2.1.2%2Bpt26cpu-py3-none-any.whl",
                  "--force-reinstall", env=lab.env())
    assert res.returncode == 0, res.stderr
    bad = lab.run("verify", "--python", py(done.venv), machine=MACHINE)
    ok(bad, 1)
    assert "cupy: 2 builds installed at once: cupy-cuda11x, cupy-cuda12x" in bad.stdout
    assert "torch-scatter: 2.1.2+pt26cpu is built for cpu, but torch is 2.6.0+cu124" in bad.stdout
    assert "pip uninstall -y cupy-cuda11x cupy-cuda12x && backendpick install" in bad.stdout


def test_a_dependency_pulling_a_recipe_package_in_is_routed(lab: Lab, proj: Path) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("install", "--python", py(venv), "--project", str(proj), "torch", "needs-scatter",
                     machine=MACHINE))
    assert "a dependency needs torch-scatter" in res.output
    assert lab.versions(venv)["torch-scatter"].endswith("+pt26cu124")
    assert "TRAP" not in res.output


def test_a_dependency_on_a_renamed_package_is_an_error_not_a_source_build(lab: Lab, proj: Path) -> None:
    venv = lab.new_venv()
    res = lab.run("install", "--python", py(venv), "--project", str(proj), "torch", "needs-cupy", machine=MACHINE)
    ok(res, 1)
    assert "TRAP" not in res.output
    assert "a requested package depends on cupy, but cupy's build for cu124 is the distribution cupy-cuda12x" in res.stderr
    assert "cupy" not in lab.versions(venv)


def test_cpu_backend_refuses_gpu_only_packages_at_once(lab: Lab, proj: Path) -> None:
    res = lab.run("plan", "--project", str(proj), "--backend", "cpu", "torch", "cupy")
    ok(res, 3)
    assert "cupy is GPU-only" in res.stderr


def test_a_backend_the_recipe_does_not_cover_is_an_error_naming_what_exists(lab: Lab, proj: Path) -> None:
    res = lab.run("plan", "--project", str(proj), "--backend", "cu124", "torch", "vllm")
    ok(res, 3)
    assert "vllm has no build for cu124: its recipe lists cu130" in res.stderr


def test_a_user_recipe_overrides_the_shipped_one(lab: Lab, proj: Path, tmp_path: Path) -> None:
    text = (proj / "pyproject.toml").read_text() + (
        '\n[tool.backendpick.packages.cupy]\nname = { cuda = "cupy-cuda{cuda_major}x" }\n'
        'versions = ">=13"\nsource = "https://docs.cupy.dev/en/stable/install.html"\n'
        '\n[tool.backendpick.packages.torch-scatter]\nfind-links = "https://data.pyg.org/whl/torch-{torch_minor}.0+cpu.html"\n'
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "pyproject.toml").write_text(text)
    res = ok(lab.run("plan", "--project", str(mine), "torch", "torch-scatter", "cupy", machine=MACHINE))
    assert "torch-scatter -> torch-scatter 2.1.2+pt26cpu" in res.stdout  # the user's page, not the shipped one
    assert "cupy -> cupy-cuda12x>=13" in res.stdout


def test_a_recipe_with_an_unknown_placeholder_is_a_usage_error(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.backendpick.packages.mylib]\nindex-url = "https://x.example/{cuda_mjr}"\n')
    res = lab.run("plan", "--project", str(tmp_path), "mylib")
    ok(res, 2)
    assert "unknown placeholder {cuda_mjr}" in res.stderr and "did you mean {cuda_major}" in res.stderr
