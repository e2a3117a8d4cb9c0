"""A plan through a password-protected mirror (issue 19): both engines' commands hold no
credential (they are in the phase's environment, shown as ***), a wheel behind credentials the
installer would not find is downloaded by backendpick and installed from the local file, the
shell export writes URLs without user information, and the pins stay readable by pip in any
venv path."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from backendpick import redaction
from backendpick.errors import ConfigError
from backendpick.execute import engines, shell_export
from backendpick.indexes import fetches
from backendpick.inputs import config, pip_config
from backendpick.knowledge import facts as facts_mod
from backendpick.model.backend import Backend
from backendpick.model.choice import Decision
from backendpick.model.environment import Target
from backendpick.model.plan import BACKEND, REST
from backendpick.planning import planner
from backendpick.state import environment_pins

FACTS = facts_mod.load()
SECRET = "pw-5ecret-19"
INDEX = f"https://alice:{SECRET}@mirror.example/pytorch/cu124"
WHEEL = f"https://dave:{SECRET}@files.corp/private_tool-1.0-py3-none-any.whl"


def _target() -> Target:
    return Target(python=Path("/env/bin/python"), prefix=Path("/env"), version=(3, 11, 9),
                  markers={"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11",
                           "python_full_version": "3.11.9", "os_name": "posix", "implementation_name": "cpython",
                           "platform_system": "Linux", "platform_python_implementation": "CPython"},
                  tags=("py3-none-any",), pip_version="24.0", purelib=Path("/env/lib/python3.11/site-packages"),
                  is_venv=True)


def make_plan(tmp_path: Path, reqs, index: str = INDEX):
    settings = config.load(FACTS, project_dir=tmp_path, env={})
    return planner.make_plan(
        decision=Decision(Backend.parse("cu124"), "--backend", "chosen by --backend"),
        requirements=[Requirement(r) for r in reqs], settings=settings, target=_target(), index_url=index, offered=[],
        constraints_path=tmp_path / "state" / "constraints.txt", runner_python=sys.executable,
    )


def shown(plan, renderer=None) -> str:
    """Everything plan and --dry-run print of it, text and JSON."""
    renderer = renderer or engines.for_plan(plan)
    return "\n".join(renderer.shown(p) for p in plan.phases) + repr(plan.to_json(renderer.phase_json))


def phase(plan, name):
    return next(p for p in plan.phases if p.name == name)


def test_pip_gets_the_backend_index_in_its_environment_and_the_export_gets_netrc(tmp_path: Path):
    plan = make_plan(tmp_path, ["torch", "tqdm"])
    backend = engines.for_plan(plan).command(phase(plan, BACKEND))
    assert redaction.in_argv(backend.argv) is None and "--index-url" not in backend.argv
    assert backend.env["PIP_INDEX_URL"] == INDEX  # the child's environment: readable by this user only
    assert SECRET not in shown(plan) and "PIP_INDEX_URL='https://***@mirror.example/pytorch/cu124'" in shown(plan)
    script = shell_export.to_shell(plan)
    assert SECRET not in script and "alice" not in script
    assert "--index-url https://mirror.example/pytorch/cu124 torch" in script
    assert "mirror.example want them: put them in ~/.netrc" in script


def test_uv_gets_a_named_index_and_its_credentials_in_variables(tmp_path: Path):
    plan = replace(make_plan(tmp_path, ["torch"]), installer="uv", uv="/bin/uv")
    backend = engines.for_plan(plan).command(phase(plan, BACKEND))
    assert "backendpick-1=https://mirror.example/pytorch/cu124" in backend.argv
    assert redaction.in_argv(backend.argv) is None
    assert backend.env["UV_INDEX_BACKENDPICK_1_PASSWORD"] == SECRET
    assert "UV_INDEX_BACKENDPICK_1_PASSWORD='***'" in shown(plan) and SECRET not in shown(plan)
    assert "--index-url https://mirror.example/pytorch/cu124" in shell_export.to_shell(plan)


def test_a_wheel_behind_credentials_is_downloaded_first_and_installed_from_the_file(tmp_path: Path):
    plan = make_plan(tmp_path, ["torch", f"private-tool @ {WHEEL}"], index="https://mirror.example/pytorch/cu124")
    folder = tmp_path / "state" / "downloads"
    local = fetches.localize(plan, lambda url: "files.corp" in url, folder)
    rest = phase(local, REST)
    (url, path), = rest.downloads
    assert url == "https://files.corp/private_tool-1.0-py3-none-any.whl" and Path(path).parent.parent == folder
    argv = engines.for_plan(local).command(rest).argv
    assert f"private-tool @ {Path(path).as_uri()}" in argv and redaction.in_argv(argv) is None
    assert SECRET not in shown(local) and "downloaded first by backendpick" in engines.for_plan(local).shown(rest)
    script = shell_export.to_shell(local)  # the script's pip fetches it itself, with .netrc
    assert "private-tool @ https://files.corp/private_tool-1.0-py3-none-any.whl" in script and SECRET not in script
    assert "files.corp want them" in script
    # The backend index (the value of --index-url) is pip's to read, never downloaded.
    assert phase(fetches.localize(plan, lambda url: True, folder), BACKEND).downloads == ()
    untouched = fetches.localize(plan, lambda url: False, folder)
    assert phase(untouched, REST).downloads == () and phase(untouched, REST) == phase(plan, REST)


def test_a_vcs_url_with_credentials_is_refused_with_the_way_out(tmp_path: Path):
    plan = make_plan(tmp_path, [f"tool @ git+https://tok:{SECRET}@git.corp/org/tool"])
    with pytest.raises(ConfigError, match="git's command line") as err:
        fetches.localize(plan, lambda url: True, tmp_path)
    assert SECRET not in err.value.message and ".netrc" in err.value.hint


# -- the pins in any venv path ------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["plain-venv", "my venv", "it's", "vénv"])
def test_the_pins_are_named_so_that_pip_reads_one_value(tmp_path: Path, folder: str):
    prefix = tmp_path / folder
    prefix.mkdir()
    pins = environment_pins.write(prefix, ["torch==2.5.1+cu124"], env={}, backend="cu124")
    text = environment_pins.conf_path(prefix).read_text(encoding="utf-8")
    value = next(v for _s, _a, _b, k, v in pip_config.conf_entries(text.splitlines()) if k == "constraint")
    assert len(value.split()) == 1 and value.isascii()  # pip splits on whitespace, decodes in the locale
    assert pip_config.value_path(value) == pins
    assert (value == str(pins)) == (folder == "plain-venv")
    status = environment_pins.status(prefix, {}, ["torch"], {})
    assert status.in_place and status.unreadable is None
    quiet = {"XDG_CONFIG_DIRS": str(tmp_path / "none"), "HOME": str(tmp_path), "PIP_CONFIG_FILE": str(tmp_path / "no.conf")}
    assert pip_config.read(quiet, prefix).list("constraint") == []  # ours: not the user's constraint


def test_verify_sees_pins_pip_cannot_read(tmp_path: Path):
    """What an older backendpick wrote in a path with a space: the file is there, pip reads two."""
    prefix = tmp_path / "my venv"
    prefix.mkdir()
    pins = environment_pins.pins_path(prefix)
    pins.write_text("torch==2.5.1\n")
    environment_pins.conf_path(prefix).write_text(f"[global]\nconstraint = {pins}\n")
    status = environment_pins.status(prefix, {}, ["torch"], {})
    assert status.in_place and "cannot open" in status.unreadable and f"{tmp_path}/my" in status.unreadable
    # install rewrites it in a form pip reads (the old line is recognised as ours, not kept).
    environment_pins.write(prefix, ["torch==2.5.1"], env={}, backend="cu124")
    assert environment_pins.status(prefix, {}, ["torch"], {}).unreadable is None
    assert f"constraint = {pins}" not in environment_pins.conf_path(prefix).read_text()
