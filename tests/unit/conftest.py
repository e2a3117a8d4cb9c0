"""Unit tests never start processes by accident.

An autouse fixture replaces ``subprocess.Popen`` with a function that fails the test, so a unit
test that reaches a real ``nvidia-smi`` (or pip) fails loudly instead of depending on the
machine it runs on. Tests that need the fake vendor tools of ``tests/support/fakehw.py`` opt out
with ``@pytest.mark.allow_subprocess`` (``test_probe.py`` does so for the whole module).
"""

from __future__ import annotations

import subprocess

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_subprocess: this unit test may start processes (the fake vendor tools)"
    )


class SubprocessInUnitTest(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _no_subprocess(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("allow_subprocess"):
        return

    def refuse(args, *a, **kw):
        raise SubprocessInUnitTest(
            f"unit test {request.node.nodeid} tried to run {args!r}; mark it allow_subprocess "
            "and use tests/support/fakehw.py, or move it to tests/cli"
        )

    monkeypatch.setattr(subprocess, "Popen", refuse)
