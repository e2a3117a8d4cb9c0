"""runner.Beside: a pip run beside the foreground one is stopped with its group and reaped
when the foreground fails or is stopped (install never leaves a pip running)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from backendpick.edges import runner

pytestmark = pytest.mark.integration


def test_stop_ends_the_child_and_its_group():
    pids: list[int] = []
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)"
    beside = runner.Beside(lambda started: runner.stream([sys.executable, "-c", code], on_line=pids.append,
                                                         on_started=lambda proc: (started(proc), pids.append(proc.pid))))
    deadline = time.monotonic() + 30
    while "up" not in pids and time.monotonic() < deadline:
        time.sleep(0.01)
    beside.stop()
    result = beside.wait()
    assert result.returncode is not None and result.returncode != 0
    assert not _group_alive(pids[0]), "a process of its group is still running"


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (SIGKILLed ones are zombies until their new
    parent reaps them: those do not count)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive = True
                break
        if not alive:
            return False
        time.sleep(0.05)
    return True


def test_wait_gives_the_result_or_raises_what_the_run_raised():
    beside = runner.Beside(lambda started: runner.stream([sys.executable, "-c", "print('hi')"], on_line=lambda _: None,
                                                         on_started=started))
    assert beside.wait().stdout == "hi"

    def broken(started):
        raise OSError("no log folder")

    with pytest.raises(OSError, match="no log folder"):
        runner.Beside(broken).wait()
