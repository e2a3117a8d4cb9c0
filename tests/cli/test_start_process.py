"""The console script's start-up (start.py) in a Python of its own: gc.freeze and the imported
modules are process-wide, so they are checked in a fresh interpreter, not in pytest's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hermetic import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def _in_a_fresh_interpreter(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}"],
                          capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("args, loaded", [
    (["verify", "--json"], ["backendpick.commands.verify", "backendpick.output"]),
    (["install", "torch"], ["backendpick.commands.install", "backendpick.output"]),
    (["--help"], []), (["instal"], []), ([], []),
])
def test_preload_imports_only_the_named_command(args, loaded):
    names = _in_a_fresh_interpreter(
        f"import sys; from backendpick import start; start.preload({args!r})\n"
        "print(*sorted(m for m in sys.modules if m.startswith('backendpick.commands.') or m == 'backendpick.output'))")
    assert names == loaded


@pytest.mark.parametrize("collector_on", [True, False])
def test_main_leaves_the_collector_as_it_found_it(collector_on):
    # The collector is paused only while the command's modules load; what they created is frozen.
    state = _in_a_fresh_interpreter(
        f"import gc\nif not {collector_on}: gc.disable()\n"
        "from backendpick import start\n"
        "try:\n    start.main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)")
    assert state[-2:] == [str(collector_on), "True"]  # after the version line
