"""The installer engines (pip, uv) and "nothing asked twice", end to end against the test world.

The request log of the world's index server says which index was asked for what: a re-run on
an environment that already matches asks nothing; auto selection asks only for the backends
the hardware can run, best first, and stops at the first that offers a matching torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.engines import ENGINES, has_uv
from tests.support.index import IndexServer
from tests.support.lab import Lab, ok, py

pytestmark = pytest.mark.integration

needs_uv = pytest.mark.skipif(not has_uv(), reason="uv is not installed (pip install uv)")
SMALL = ("torch==2.5.1", "torchvision", "tqdm")


def torch_pages(server: IndexServer) -> list[str]:
    """Indexes whose torch page was asked for, in order."""
    return [r.index for r in server.log if r.kind == "project" and r.name == "torch"]


def family_fetched_outside(server: IndexServer, index: str) -> list[str]:
    """Files and PEP 658 metadata of torch, torchvision or xformers fetched from any index but ``index``."""
    return [f"{r.index}: {r.name}" for r in server.log if r.kind in ("file", "metadata") and r.index != index
            and r.name.split("-")[0].lower() in ("torch", "torchvision", "xformers")]


# -- auto selection asks only what the hardware can run -----------------------------------------


def test_auto_on_a_cuda_12_4_driver_asks_for_the_cu124_page_only(lab: Lab, server: IndexServer) -> None:
    venv = lab.new_venv()
    res = ok(lab.run("plan", "--json", "--python", py(venv), "torch", machine="nvidia-550-a100"))
    assert res.json()["backend"] == "cu124"
    # The driver runs CUDA 12.4 at most (strict): cu126/cu128 are never asked for, and cu124,
    # the newest it can run, offers a torch, so nothing older is asked either.
    assert torch_pages(server) == ["cu124"]


def test_auto_goes_on_to_older_backends_newest_first_when_one_lacks_the_torch(lab: Lab, server: IndexServer) -> None:
    venv = lab.new_venv()
    # cu124 has no torch 2.7.1; older CUDA backends are not in the world (404); the CPU index has it.
    res = lab.run("plan", "--json", "--python", py(venv), "torch==2.7.1", machine="nvidia-550-a100")
    asked = torch_pages(server)
    assert asked[0] == "cu124" and asked[-1] == "cpu", asked
    assert not {"cu126", "cu128"} & set(asked), asked
    cuda = [int(i[2:]) for i in asked if i.startswith("cu")]
    assert cuda == sorted(cuda, reverse=True), asked
    assert res.returncode == 3, res  # the A100 would be left without a GPU build: said, not done


# -- nothing asked twice ------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_rerun_asks_nothing_until_the_request_or_the_environment_changes(
    lab: Lab, server: IndexServer, engine: str
) -> None:
    venv = lab.new_venv()
    args = ("install", "--python", py(venv), "--backend", "cpu", "--installer", engine, *SMALL)
    ok(lab.run(*args))
    record = json.loads((venv / ".backendpick" / "last-install.json").read_text())
    assert (record["backend"], record["torch"]) == ("cpu", "2.5.1+cpu")
    assert record["index_url"].endswith("/cpu/simple")

    server.clear_log()
    again = ok(lab.run(*args))
    assert "nothing to do" in again.stdout
    assert server.log == []  # not one request

    # --refresh asks the index again (and still finds nothing to do).
    refreshed = ok(lab.run(*args, "--refresh"))
    assert "nothing to do" in refreshed.stdout and torch_pages(server) == ["cpu"]

    # The environment changed behind backendpick's back: the record no longer applies.
    setup = lab.pip(venv, "install", "--no-index", "--find-links", str(server.index_dir("pypi")), "einops")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    server.clear_log()
    changed = ok(lab.run(*args))
    assert "nothing to do" in changed.stdout and torch_pages(server) == ["cpu"]
    server.clear_log()
    ok(lab.run(*args))  # ... and is recorded again
    assert server.log == []

    # Another request (one more package) asks again.
    more = ok(lab.run(*args[:-3], *SMALL, "numpy"))
    assert more.phases_run == ["rest"] and torch_pages(server) == ["cpu"]


def test_plan_and_dry_run_use_the_record_too(lab: Lab, server: IndexServer) -> None:
    venv = lab.new_venv()
    args = ("--python", py(venv), "--backend", "cpu", *SMALL)
    ok(lab.run("install", *args))
    server.clear_log()
    plan = ok(lab.run("plan", "--json", *args))
    assert all(p["skip"] for p in plan.json()["phases"]) and plan.json()["offers_source"] == "recorded"
    dry = ok(lab.run("install", "--dry-run", *args))
    assert dry.stdout.strip() == ""
    assert server.log == []


# -- the uv engine --------------------------------------------------------------------------------


def test_uv_missing_is_a_usage_error(lab: Lab, server: IndexServer) -> None:
    venv = lab.new_venv()
    res = lab.run("install", "--python", py(venv), "--backend", "cpu", "--installer", "uv", "torch",
                  BACKENDPICK_UV=str(lab.base / "no-such-uv"))
    ok(res, 2)
    assert "error: installer uv (from --installer) is not available" in res.stderr
    assert "backendpick[uv]" in res.stderr and "Traceback" not in res.output
    assert server.log == []  # said before asking any index


def test_installer_setting_is_checked(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.backendpick]\ninstaller = "conda"\n')
    res = lab.run("plan", "torch", "--backend", "cpu", cwd=tmp_path)
    ok(res, 2)
    assert 'installer from pyproject.toml [tool.backendpick] must be "pip" or "uv", not \'conda\'' in res.stderr


@needs_uv
def test_uv_plan_dry_run_and_script_print_uv_commands(lab: Lab, tmp_path: Path) -> None:
    venv = lab.new_venv()
    (tmp_path / "pyproject.toml").write_text('[tool.backendpick]\ninstaller = "uv"\nbackend = "cu124"\n')
    env = lab.env(UV_EXTRA_INDEX_URL=lab.world.url("hostile"), UV_INDEX_URL=lab.world.url("hostile"))
    plan = ok(lab.run("plan", "--json", "--python", py(venv), *SMALL, cwd=tmp_path, env=env)).json()
    assert plan["installer"] == "uv"
    backend, rest = plan["phases"]
    words = backend["argv"]
    assert Path(words[0]).name == "uv" and words[1:5] == ["pip", "install", "--python", py(venv)]
    assert "--no-config" in words and words[words.index("--index-url") + 1] == lab.world.url("cu124")
    assert "--extra-index-url" not in words and "--find-links" not in words  # the backend index alone
    assert "-u UV_EXTRA_INDEX_URL" in backend["command"] and "-u UV_INDEX_URL" in backend["command"]
    # uv reads no pip.conf: the user's sources are passed to the other phases explicitly.
    rwords = rest["argv"]
    assert rwords[rwords.index("--index-url") + 1] == lab.world.url("pypi")
    assert rwords[rwords.index("--extra-index-url") + 1] == lab.world.url("hostile")

    dry = ok(lab.run("install", "--dry-run", "--python", py(venv), *SMALL, cwd=tmp_path, env=env))
    assert [line for line in dry.dry_run_commands] == [backend["command"], rest["command"]]

    script = ok(lab.run("plan", "--format", "sh", "--python", py(venv), *SMALL, cwd=tmp_path, env=env)).stdout
    assert 'UV="${UV:-uv}"' in script
    lines = [line for line in script.splitlines() if '"$UV" pip install' in line]
    assert len(lines) == 2 and all("-u UV_INDEX_URL" in line and "PIP_CONFIG_FILE" not in line for line in lines)


@needs_uv
def test_both_engines_build_environments_that_verify_the_same(lab: Lab, server: IndexServer) -> None:
    venvs = {}
    # The user's uv variables point at the hostile index: the uv engine must not listen.
    env_extra = {"UV_EXTRA_INDEX_URL": lab.world.url("hostile"), "UV_INDEX_URL": lab.world.url("hostile")}
    for engine in ("pip", "uv"):
        venv = venvs[engine] = lab.new_venv()
        server.clear_log()
        ok(lab.run("install", "--python", py(venv), "--backend", "cu124", "--installer", engine,
                   "torch==2.5.1", "torchvision", "xformers", "vision-helper", "tqdm", **env_extra))
        # What is installed came from the backend index (the world marks each copy with its
        # index), and no file or metadata of a backend package came from anywhere else: the plan's
        # resolution offers them to pip as stubs, the later phases are pinned to the backend's builds.
        assert lab.python(venv, "import torch, torchvision, xformers; "
                          "print(torch.__index__, torchvision.__index__, xformers.__index__)") == "cu124 cu124 cu124"
        assert not family_fetched_outside(server, "cu124"), family_fetched_outside(server, "cu124")
    versions = {e: lab.versions(v) for e, v in venvs.items()}
    assert versions["pip"] == versions["uv"]
    assert versions["uv"]["torch"] == "2.5.1+cu124" and versions["uv"]["vision-helper"] == "1.0"
    reports = {}
    for engine, venv in venvs.items():
        res = ok(lab.run("verify", "--json", "--python", py(venv)))
        reports[engine] = {k: v for k, v in res.json().items() if k not in ("python", "environment")}
        reports[engine]["pins"].pop("file")  # each environment's own pins file
    assert reports["pip"] == reports["uv"]


def test_auto_with_pinned_torch_stops_at_the_newest_backend_offering_it(lab: Lab, server: IndexServer,
                                                                        tmp_path: Path) -> None:
    """The torch specifier gather_preferred gets is the final one: the request's and the user's
    pip constraint (here torch<2.7): cu128 (2.7.1 only) is passed over, cu126 (2.6.0) taken,
    nothing older asked."""
    venv = lab.new_venv()
    cons = tmp_path / "c.txt"
    cons.write_text("torch<2.7\n")
    res = ok(lab.run("plan", "--json", "--python", py(venv), "torch", machine="nvidia-570-v100",
                     PIP_CONSTRAINT=str(cons))).json()
    assert (res["backend"], res["torch"]["version"]) == ("cu126", "2.6.0+cu126")
    assert torch_pages(server) == ["cu128", "cu126"]


def test_rerun_that_asks_nothing_still_puts_back_missing_pins(lab: Lab, server: IndexServer) -> None:
    venv = lab.new_venv()
    args = ("install", "--python", py(venv), "--backend", "cpu", *SMALL)
    ok(lab.run(*args))
    pins = venv / "backendpick-pins.txt"
    written = pins.read_text()
    assert "torch==2.5.1+cpu" in written
    stamp = pins.stat().st_mtime_ns
    server.clear_log()
    ok(lab.run(*args))
    assert server.log == [] and pins.stat().st_mtime_ns == stamp  # current pins: left as they are
    pins.unlink()
    ok(lab.run(*args))
    assert server.log == []  # still nothing asked ...
    assert pins.read_text().splitlines()[1:] == written.splitlines()[1:]  # ... and the pins are back
    ok(lab.run(*args, "--no-pin-environment"))
    assert not pins.exists() and not (venv / "pip.conf").exists()
