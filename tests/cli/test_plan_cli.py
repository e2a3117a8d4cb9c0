"""``backendpick plan`` (and install's checks before pip) through the command line: the backend
auto picks on fake machines from what the world's indexes publish, the JSON schema, the exit
codes, and configuration errors. Nothing here installs; one fresh venv serves every test.

The harness (``Lab``) is tests/support/lab.py; the world and lab fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.lab import Lab, ok, py
from tests.support.dists import make_torch, make_wheel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def target(lab: Lab) -> str:
    """A fresh venv that only gets planned for, never installed into."""
    return py(lab.new_venv())


def plan_json(lab: Lab, target: str, *args: str, machine: str = "none", **env: str) -> dict:
    return ok(lab.run("plan", "--json", "--python", target, *args, machine=machine, **env)).json()


def project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(text))
    return tmp_path


# -- plan --json ----------------------------------------------------------------------------------


def test_plan_json_has_the_documented_shape(lab: Lab, target: str, tmp_path: Path) -> None:
    # A wheel cache of its own: a flash-attn that another test built into the lab's cache would
    # make the build phase a note instead of a pip command.
    plan = plan_json(lab, target, "--backend", "cu124", "torch==2.5.1", "torchvision", "xformers", "flash-attn", "tqdm",
                     BACKENDPICK_CACHE_DIR=str(tmp_path / "wheels"))
    assert {"backend", "reason", "phases", "warnings"} <= set(plan)
    assert plan["backend"] == "cu124"
    assert isinstance(plan["reason"], str) and plan["reason"]
    assert isinstance(plan["warnings"], list)
    assert [p["name"] for p in plan["phases"]] == ["backend", "build-requirements", "build", "rest"]
    for phase in plan["phases"]:
        assert {"name", "requirements", "index_url", "no_build_isolation", "constraints", "command"} <= set(phase)
        assert isinstance(phase["requirements"], list) and isinstance(phase["constraints"], list)
        assert isinstance(phase["command"], str) and " -m pip " in phase["command"]
    backend, build_reqs, build, rest = plan["phases"]
    assert backend["index_url"] == lab.world.url("cu124")
    assert backend["requirements"] == ["torch==2.5.1", "torchvision", "xformers"]
    assert f"--index-url {lab.world.url('cu124')}" in backend["command"]
    assert backend["constraints"] == []
    assert "setuptools" in build_reqs["requirements"]
    assert build["requirements"] == ["flash-attn"] and build["no_build_isolation"] is True
    assert "--no-build-isolation" in build["command"]
    assert rest["requirements"] == ["tqdm"] and rest["no_build_isolation"] is False
    for later in (build_reqs, build, rest):
        assert later["index_url"] is None  # the user's own pip configuration
        assert " -c " in later["command"]
        assert "torchaudio<0" in later["constraints"]  # a backend package the plan does not install
    for later in (build, rest):
        assert any(c.startswith("torch==") for c in later["constraints"])
    # The build tools go to a folder of their own, beside the backend phase: no torch there.
    assert "torch<0" in build_reqs["constraints"] and build_reqs["alongside"] == "backend"


def test_plan_text_shows_backend_reason_and_phases(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target, "--backend", "cpu", "torch", "tqdm"))
    lines = res.stdout.splitlines()
    assert "backend: cpu" in lines
    assert "decided-by: --backend" in lines
    assert f"python: {target}" in lines
    assert "offers-from: index" in lines
    assert any(line.startswith("phase backend: run: torch") for line in lines)
    assert any(line.startswith("phase rest: run: tqdm") for line in lines)


def test_plan_without_backend_packages_has_only_a_rest_phase(lab: Lab, target: str) -> None:
    plan = plan_json(lab, target, "tqdm", "numpy")
    assert [p["name"] for p in plan["phases"]] == ["rest"]


# -- 2. auto: newest backend the hardware runs, learned from the index ----------------------------


@pytest.mark.parametrize(
    ("machine", "reqs", "backend", "decided_by", "in_reason"),
    [
        ("nvidia-560-a100", ("torch",), "cu126", "detected", "driver 560.35.03"),
        ("nvidia-560-a100", ("torch==2.6.0",), "cu126", "detected", "sm 8.0"),
        # cu126 has no 2.5.1 on the index: the newest backend that does and runs here.
        ("nvidia-560-a100", ("torch==2.5.1",), "cu124", "detected", "cu124"),
        ("nvidia-550-a100", ("torch",), "cu124", "detected", "CUDA 12.4"),
        # The driver runs cu128, but its only torch (2.7.1) has no sm 7.0 code: every GPU's arch.
        ("nvidia-570-v100", ("torch",), "cu126", "detected", "Tesla V100"),
        ("container-cuda126", ("torch",), "cu126", "container", "CUDA_VERSION"),
        ("none", ("torch",), "cpu", "detected", "no supported GPU"),
    ],
    ids=["560-a100", "560-a100-torch2.6", "560-a100-torch2.5", "550-a100", "570-v100", "container-12.6.3", "no-gpu"],
)
def test_auto_picks_the_newest_backend_that_runs_here(
    lab: Lab, target: str, machine: str, reqs: tuple, backend: str, decided_by: str, in_reason: str
) -> None:
    plan = plan_json(lab, target, *reqs, machine=machine)
    assert (plan["backend"], plan["decided_by"]) == (backend, decided_by), plan["reason"]
    assert in_reason in plan["reason"]
    assert plan["offers_source"] == "index"
    assert plan["phases"][0]["index_url"] == lab.world.url(backend)


def test_auto_asks_the_backend_indexes_what_they_publish(lab: Lab, target: str) -> None:
    lab.server.clear_log()
    plan_json(lab, target, "torch", machine="nvidia-560-a100")
    asked = lab.server.indexes_asked_for("torch")
    # Driver 560 runs CUDA 12.6 at most: cu128 is never asked, and cu126, the best it can run,
    # publishes a torch, so the search stops there (issue 13: newest first, stop at the first).
    assert asked == ["cu126"]
    assert not set(asked) & {"pypi", "hostile"}


def test_auto_goes_by_the_index_not_the_packaged_table(lab: Lab, target: str, tmp_path: Path) -> None:
    """A mirror publishing torch 2.7.1 for cu124, which PyTorch never did: driver 550 gets it."""
    for backend, versions in {"cpu": ["2.7.1"], "cu124": ["2.7.1"], "cu126": ["2.7.1"]}.items():
        directory = lab.server.index_dir(f"mirror-{backend}")
        for version in versions:
            make_torch(directory, version, backend, requires=(), attrs={"__index__": f"mirror-{backend}"})
    template = lab.server.base_url + "/mirror-{backend}/simple"
    plan = plan_json(lab, target, "torch==2.7.1", machine="nvidia-550-a100", BACKENDPICK_INDEX_URL=template)
    assert plan["backend"] == "cu124", plan["reason"]
    assert plan["phases"][0]["index_url"] == lab.world.url("mirror-cu124")


def test_auto_offline_falls_back_to_the_packaged_table_and_says_so(lab: Lab, target: str) -> None:
    dead = "http://127.0.0.1:9/{backend}/simple"  # the discard port: nothing answers
    res = ok(lab.run("plan", "--python", target, "torch", machine="nvidia-560-a100", BACKENDPICK_INDEX_URL=dead))
    assert "backend: cu126" in res.stdout.splitlines()
    assert "offers-from: table" in res.stdout.splitlines()
    assert "packaged release table" in res.stderr


def test_auto_blackwell_with_old_torch_is_exit_3_naming_gpu_and_working_releases(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target, "torch==2.5.1", machine="nvidia-570-rtx5090"), 3)
    err = res.stderr
    assert "NVIDIA GeForce RTX 5090" in err
    assert "2.5.1" in err
    hint = next(line for line in err.splitlines() if line.startswith("hint:"))
    assert "2.7 (cu128)" in hint  # the first release with Blackwell builds, on a backend driver 570 runs
    assert "cu129" not in hint and "cu130" not in hint  # driver 570 supports CUDA 12.8 only
    assert "--backend" in hint
    assert res.stdout == ""


def test_auto_mixed_gpus_no_backend_serves_both_is_exit_3(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target, "torch", machine="nvidia-575-v100-rtx5090"), 3)
    err = res.stderr
    assert "Tesla V100-SXM2-32GB" in err and "NVIDIA GeForce RTX 5090" in err
    assert "cu128: no torch build on offer carries code for Tesla V100" in err
    hint = next(line for line in err.splitlines() if line.startswith("hint:"))
    assert "2.8 (cu128, cu129)" in hint  # the releases whose builds carry both 7.0 and 12.0


def test_auto_blackwell_with_new_torch_gets_cu128(lab: Lab, target: str) -> None:
    plan = plan_json(lab, target, "torch>=2.7", machine="nvidia-570-rtx5090")
    assert plan["backend"] == "cu128", plan["reason"]


def test_install_checks_the_backend_before_touching_anything(lab: Lab, target: str) -> None:
    res = ok(lab.run("install", "--python", target, "torch==2.5.1", "tqdm", machine="nvidia-570-rtx5090"), 3)
    assert "NVIDIA GeForce RTX 5090" in res.stderr
    assert "phase" not in res.stdout


# -- explicit backends ----------------------------------------------------------------------------


def test_explicit_backend_without_matching_torch_is_exit_3_listing_backends_that_have_one(
    lab: Lab, target: str
) -> None:
    res = ok(lab.run("plan", "--python", target, "--backend", "cu124", "torch==2.7.1"), 3)
    err = res.stderr
    assert "cu124 (from --backend) has no torch matching '==2.7.1'" in err
    hint = next(line for line in err.splitlines() if line.startswith("hint:"))
    for backend in ("cpu", "cu126", "cu128"):
        assert f"{backend}: 2.7.1" in hint
    assert "cu124:" not in hint


def test_explicit_backend_from_env_and_pyproject_with_precedence(lab: Lab, target: str, tmp_path: Path) -> None:
    proj = project(tmp_path, """
        [tool.backendpick]
        backend = "cu126"
    """)
    plan = plan_json(lab, target, "--project", str(proj), "torch")
    assert plan["backend"] == "cu126" and "pyproject.toml" in plan["decided_by"]
    plan = plan_json(lab, target, "--project", str(proj), "torch", BACKENDPICK_BACKEND="cu124")
    assert (plan["backend"], plan["decided_by"]) == ("cu124", "BACKENDPICK_BACKEND")
    plan = plan_json(lab, target, "--project", str(proj), "--backend", "cpu", "torch", BACKENDPICK_BACKEND="cu124")
    assert (plan["backend"], plan["decided_by"]) == ("cpu", "--backend")


def test_explicit_family_member_missing_on_the_backend_is_exit_3(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target, "--backend", "cpu", "torch", "xformers"), 3)
    assert "xformers" in res.stderr and "cpu" in res.stderr


# -- the target interpreter -----------------------------------------------------------------------


def test_python_defaults_to_the_active_venv(lab: Lab, target: str) -> None:
    venv = Path(target).parent.parent
    plan = ok(lab.run("plan", "--json", "torch", VIRTUAL_ENV=str(venv))).json()
    assert plan["python"] == target


def test_python_accepts_a_venv_directory(lab: Lab, target: str) -> None:
    venv = Path(target).parent.parent
    plan = ok(lab.run("plan", "--json", "--python", str(venv), "torch")).json()
    assert plan["python"] == target


def test_missing_python_is_a_usage_error(lab: Lab, tmp_path: Path) -> None:
    res = ok(lab.run("plan", "--python", str(tmp_path / "nope" / "python"), "torch"), 2)
    assert "does not exist" in res.stderr


# -- 10. configuration errors: exit 2, naming the key or string -----------------------------------


def test_unknown_tool_key_is_named_with_a_suggestion(lab: Lab, target: str, tmp_path: Path) -> None:
    proj = project(tmp_path, """
        [tool.backendpick]
        index_url = "https://mirror.example/{backend}"
    """)
    res = ok(lab.run("plan", "--python", target, "--project", str(proj), "torch"), 2)
    assert "tool.backendpick.index_url" in res.stderr
    assert "did you mean 'index-url'?" in res.stderr


def test_wrong_type_is_named(lab: Lab, target: str, tmp_path: Path) -> None:
    proj = project(tmp_path, """
        [tool.backendpick]
        backend-packages = "torch"
    """)
    res = ok(lab.run("plan", "--python", target, "--project", str(proj), "torch"), 2)
    assert "tool.backendpick.backend-packages must be a list" in res.stderr


def test_bad_backend_name_is_a_usage_error(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target, "--backend", "cuda12", "torch"), 2)
    assert "'cuda12' is not a backend name" in res.stderr
    assert "cu124" in res.stderr  # the hint shows the form


@pytest.mark.parametrize("where", ["flag", "env", "pyproject"])
def test_plain_http_index_elsewhere_needs_trusted_hosts(lab: Lab, target: str, tmp_path: Path, where: str) -> None:
    url = "http://mirror.example/{backend}/simple"
    args: tuple = ("plan", "--python", target, "--project", str(tmp_path), "torch")
    env = {}
    if where == "flag":
        args += ("--index-url", url)
    elif where == "env":
        env["BACKENDPICK_INDEX_URL"] = url
    else:
        project(tmp_path, f'[tool.backendpick]\nindex-url = "{url}"\n')
        env["BACKENDPICK_INDEX_URL"] = ""
    res = ok(lab.run(*args, **env), 2)
    assert "plain http" in res.stderr
    assert "trusted-hosts" in res.stderr and "mirror.example" in res.stderr


def test_plain_http_index_with_trusted_hosts_is_accepted(lab: Lab, target: str, tmp_path: Path) -> None:
    proj = project(tmp_path, """
        [tool.backendpick]
        index-url = "http://mirror.example/{backend}/simple"
        trusted-hosts = ["mirror.example"]
    """)
    # mirror.example is unreachable here (dead proxy): the plan falls back to the table.
    res = ok(lab.run("plan", "--python", target, "--project", str(proj), "--backend", "cu124", "torch",
                     BACKENDPICK_INDEX_URL=""))
    assert "index: http://mirror.example/cu124/simple" in res.stdout.splitlines()


def test_index_url_without_placeholder_is_a_usage_error(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target, "--index-url", "https://mirror.example/whl/cu124", "torch"), 2)
    assert "{backend}" in res.stderr


@pytest.mark.parametrize("bad", ["torch>>2.5", "torch==2.5.1;", "flash attn"])
def test_invalid_requirement_on_the_command_line(lab: Lab, target: str, bad: str) -> None:
    res = ok(lab.run("plan", "--python", target, "torch", bad), 2)
    assert f"invalid requirement {bad!r} in the command line" in res.stderr


def test_invalid_requirement_in_pyproject_names_the_table(lab: Lab, target: str, tmp_path: Path) -> None:
    proj = project(tmp_path, """
        [project]
        name = "demo"
        version = "0"
        dependencies = ["torch", "tqdm>=>4"]
    """)
    res = ok(lab.run("plan", "--python", target, "--project", str(proj)), 2)
    assert "'tqdm>=>4'" in res.stderr and "[project].dependencies" in res.stderr


def test_invalid_requirement_in_a_file_names_file_and_line(lab: Lab, target: str, tmp_path: Path) -> None:
    (tmp_path / "nested.txt").write_text("# ok\n\nnumpy\nnumpy>=>1\n")
    (tmp_path / "requirements.txt").write_text("torch\n-r nested.txt\n")
    res = ok(lab.run("plan", "--python", target, "-r", str(tmp_path / "requirements.txt")), 2)
    assert f"{tmp_path / 'nested.txt'}:4" in res.stderr and "'numpy>=>1'" in res.stderr


def test_missing_extra_and_group_are_named_with_the_known_ones(lab: Lab, target: str, tmp_path: Path) -> None:
    proj = project(tmp_path, """
        [project]
        name = "demo"
        version = "0"
        dependencies = ["torch"]
        [project.optional-dependencies]
        train = ["tqdm"]
        [dependency-groups]
        dev = ["numpy"]
    """)
    res = ok(lab.run("plan", "--python", target, "--project", str(proj), "--extra", "trian"), 2)
    assert "'trian'" in res.stderr and "train" in res.stderr
    res = ok(lab.run("plan", "--python", target, "--project", str(proj), "--group", "test"), 2)
    assert "'test'" in res.stderr and "dev" in res.stderr


def test_invalid_build_requirement_names_key_and_string(lab: Lab, target: str, tmp_path: Path) -> None:
    proj = project(tmp_path, """
        [tool.backendpick]
        build-requirements = { flash-attn = ["setuptools>=>64", "ninja"] }
    """)
    res = lab.run("plan", "--python", target, "--project", str(proj), "--backend", "cu124", "torch==2.5.1",
                  "flash-attn", machine="cuda124-devel")
    assert "Traceback" not in res.stderr
    ok(res, 2)
    assert "build-requirements" in res.stderr and "'setuptools>=>64'" in res.stderr


@pytest.mark.parametrize(
    ("key", "bad"),
    [("backend-packages", "torch>=2"), ("extra-backend-packages", "my pkg"), ("no-build-isolation", "flash-attn[x]")],
)
def test_invalid_package_name_in_a_name_list_is_a_usage_error(
    lab: Lab, target: str, tmp_path: Path, key: str, bad: str
) -> None:
    # Names only: "torch>=2" would match no requirement and send torch to the user's indexes.
    proj = project(tmp_path, f"""
        [tool.backendpick]
        {key} = ["{bad}", "torchvision"]
    """)
    res = ok(lab.run("plan", "--python", target, "--project", str(proj), "--backend", "cu124", "torch"), 2)
    assert key in res.stderr and repr(bad) in res.stderr


def test_requirement_names_are_matched_normalized(lab: Lab, target: str) -> None:
    plan = plan_json(lab, target, "--backend", "cpu", "Torch==2.5.1", "TorchVision", "TQDM")
    backend, rest = plan["phases"]
    assert backend["requirements"] == ["Torch==2.5.1", "TorchVision"]
    assert rest["requirements"] == ["TQDM"]


def test_no_requirements_and_no_pyproject_is_a_usage_error(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target), 2)
    assert "no requirements given and no pyproject.toml found" in res.stderr


def test_bad_pip_config_is_a_usage_error(lab: Lab, target: str, tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global\nindex-url = x\n")
    res = ok(lab.run("plan", "--python", target, "torch", env=lab.env(pip_conf=conf)), 2)
    assert str(conf) in res.stderr


def test_unknown_option_is_exit_2(lab: Lab, target: str) -> None:
    res = ok(lab.run("plan", "--python", target, "--no-such-flag", "torch"), 2)
    assert "--no-such-flag" in res.stderr


# A plain package whose name is in backend-packages only through extra-backend-packages.
def test_extra_backend_packages_come_from_the_backend_index(lab: Lab, target: str, tmp_path: Path) -> None:
    make_wheel(lab.server.index_dir("cu124"), "torch-companion-x", "1.0", requires=["torch==2.5.1"],
               attrs={"__index__": "cu124"})
    proj = project(tmp_path, """
        [tool.backendpick]
        extra-backend-packages = ["torch-companion-x"]
    """)
    plan = plan_json(lab, target, "--project", str(proj), "--backend", "cu124", "torch==2.5.1", "torch-companion-x",
                     "tqdm")
    backend, rest = plan["phases"]
    assert backend["requirements"] == ["torch==2.5.1", "torch-companion-x"]
    assert rest["requirements"] == ["tqdm"]
