"""The console script's peek at the arguments (start.py): which runs start the target's
inspection before the CLI is imported, and that the CLI uses it only for the interpreter its
own parsing chooses."""

from __future__ import annotations

from pathlib import Path

import pytest

from backendpick import start
from backendpick.target import inspection


@pytest.mark.parametrize("args", [
    [], ["detect", "--offline"], ["cache", "list"], ["restore", "--python", "/x"], ["install", "--help"], ["install", "-h", "x"], ["plan", "--help"],
    ["install", "--python"], ["install", "--python", " "], ["install", "--python="], ["plan", "--python"],
])
def test_no_early_inspection(args, monkeypatch):
    monkeypatch.setattr(inspection, "start_inspect", lambda *a, **k: pytest.fail("started"))
    assert start.early_inspection(args) is None


@pytest.mark.parametrize("args, python", [
    (["install", "torch"], None),
    (["install", "--python", "/venv/bin/python", "torch"], "/venv/bin/python"),
    (["install", "--python=/venv/bin/python"], "/venv/bin/python"),
    (["install", "--", "--python", "/not/this"], None),  # after --, a requirement, not a flag
    (["install", "--dry-run", "--python", "/venv/bin/python"], "/venv/bin/python"),
    (["plan", "--python", "/venv/bin/python", "--format", "sh"], "/venv/bin/python"),
    (["plan", "torch"], None),
    (["detect", "--json", "--python", "/venv/bin/python"], "/venv/bin/python"),
    (["verify", "--python", "/venv/bin/python"], "/venv/bin/python"),
])
def test_early_inspection_of_the_flagged_python(args, python, monkeypatch):
    chosen = []
    monkeypatch.setattr(inspection, "choose_python", lambda flag, env=None: chosen.append(flag) or Path(flag or "/active"))
    monkeypatch.setattr(inspection, "start_inspect", lambda p, **k: ("inspection of", p))
    assert start.early_inspection(args) == ("inspection of", Path(python or "/active"))
    assert chosen == [python]


def test_an_unusable_python_is_left_to_the_cli(monkeypatch, tmp_path):
    # A venv directory without bin/python: choose_python raises ConfigError; the CLI raises it
    # again with its exit code, so the peek starts nothing.
    assert start.early_inspection(["install", "--python", str(tmp_path)]) is None


class _Early:
    def __init__(self, python: str):
        self.python, self.cancelled = Path(python), False

    def cancel(self) -> None:
        self.cancelled = True


def test_the_cli_uses_the_early_inspection_only_for_its_own_choice(monkeypatch):
    monkeypatch.setattr(inspection, "start_inspect", lambda p, **k: ("started", p))
    same = _Early("/venv/bin/python")
    assert inspection.reuse_or_start(same, Path("/venv/bin/python")) is same and not same.cancelled
    # e.g. `install -r --python /other/python`: click reads --python as -r's value.
    other = _Early("/other/python")
    assert inspection.reuse_or_start(other, Path("/venv/bin/python")) == ("started", Path("/venv/bin/python"))
    assert other.cancelled
    assert inspection.reuse_or_start(None, Path("/p")) == ("started", Path("/p"))



def _handed(monkeypatch, args, early, module: str, step: str) -> list:
    """Run the CLI as if start.py had started ``early``; ``module.step``, where the command takes
    the target, records the inspection it is handed and stops the run."""
    import importlib

    from backendpick import cli
    from backendpick.errors import ConfigError

    handed = []

    def stop(*args, **kw):
        handed.append(kw["inspection"] if "inspection" in kw else args[0])
        raise ConfigError("stop here")

    monkeypatch.setattr(inspection, "choose_python", lambda flag, env=None: Path(flag or "/active"))
    monkeypatch.setattr(inspection, "start_inspect", lambda *a, **k: pytest.fail("a second inspection was started"))
    monkeypatch.setattr(importlib.import_module(module), step, stop)
    with pytest.raises(SystemExit):
        cli.main(args, early_inspection=early)
    return handed


@pytest.mark.parametrize("args, module, step", [
    (["plan", "--python", "/venv/bin/python", "torch"], "backendpick.commands.plan", "prepare"),
    (["plan", "--python", "/venv/bin/python", "--format", "sh", "torch"], "backendpick.commands.plan", "prepare"),
    (["install", "--dry-run", "--python", "/venv/bin/python", "torch"], "backendpick.commands.install", "prepare"),
    (["detect", "--python", "/venv/bin/python"], "backendpick.planning.pipeline", "select_backend"),
    (["verify", "--python", "/venv/bin/python"], "backendpick.target.inspection", "take_or_inspect"),
])
def test_commands_take_the_early_inspection(args, module, step, monkeypatch):
    # plan, --dry-run, detect and verify inspect the target too: the one start.py started is
    # the one they take (where they inspected before), not a second inspection.
    early = _Early("/venv/bin/python")
    assert _handed(monkeypatch, args, early, module, step) == [early]


@pytest.mark.parametrize("args", [
    ["plan", "--python", "/other/python", "torch"],  # click chose another interpreter than the peek
    ["plan", "torch"],
])
def test_plan_without_a_matching_early_inspection_inspects_in_the_pipeline(args, monkeypatch):
    early = _Early("/venv/bin/python")
    assert _handed(monkeypatch, args, early, "backendpick.commands.plan", "prepare") == [None]
    assert early.cancelled


def test_an_early_inspection_is_taken_or_cancelled_once(monkeypatch):
    calls = []

    class FakeStarted:
        def result(self):
            calls.append("result")
            return "output"

        def cancel(self):
            calls.append("cancel")

    monkeypatch.setattr(inspection, "_parse", lambda python, res: ("target of", python))
    monkeypatch.setattr(inspection, "inspect", lambda python, **k: ("inspected now", python))
    mine = inspection.Inspection(Path("/venv/bin/python"), FakeStarted())
    assert inspection.take_or_inspect(mine, Path("/venv/bin/python")) == ("target of", Path("/venv/bin/python"))
    mine.cancel()  # the pipeline cancels what it did not take: nothing once taken
    assert calls == ["result"]
    other = inspection.Inspection(Path("/other/python"), FakeStarted())
    assert inspection.take_or_inspect(other, Path("/venv/bin/python")) == ("inspected now", Path("/venv/bin/python"))
    other.cancel()
    other.cancel()
    assert calls == ["result", "cancel"]



# What a plain install (an explicit backend, no lock, no build, no pinned companion, its index
# pages fresh in the cache) does not load: each was imported by it once and cost its start
# milliseconds (issue 22 item 2, bench/README.md). Loaded where the branch that uses them runs.
NOT_ON_THE_INSTALL_PATH = (
    "email", "email.parser",  # a pinned companion's metadata (selection/offers.py)
    "concurrent.futures",  # pages that need a request (indexes/client.py fetch_many)
    "socket", "ssl", "http.client", "urllib.request",  # a request (indexes/transport.py)
    "backendpick.planning.lock_plan", "backendpick.model.lock", "backendpick.checks.lock_diff",  # --lock
    "backendpick.build.toolchain", "backendpick.build.wheel_choice", "backendpick.state.wheel_cache",  # a build
    "backendpick.commands.plan", "backendpick.commands.detect", "backendpick.commands.lock",
    "backendpick.execute.shell_export", "backendpick.execute.lock_resolve", "backendpick.selection.uv_resolve",
)

_INSTALL_PATH = """
import sys
from types import SimpleNamespace

from packaging.requirements import Requirement

from backendpick import start

start.preload(["install"])
from backendpick.execute import build_phase
from backendpick.selection import offers

build_phase.check_before_changes(SimpleNamespace(phases=()), {})  # a plan without a build phase
offers.companion_pins(None, "", [], [Requirement("torch==2.14.1")], {"torch"}, None)  # no companion pinned
print("\\n".join(sorted(sys.modules)))
"""


@pytest.mark.allow_subprocess
def test_a_plain_install_does_not_load_what_it_does_not_use():
    import subprocess
    import sys

    from tests.support.hermetic import subprocess_env

    proc = subprocess.run([sys.executable, "-c", _INSTALL_PATH], capture_output=True, text=True,
                          env=subprocess_env(), cwd=str(Path(__file__).resolve().parents[2]), timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "backendpick.commands.install" in loaded and "backendpick.checks.suite" in loaded  # it did load
    assert sorted(loaded & set(NOT_ON_THE_INSTALL_PATH)) == []
