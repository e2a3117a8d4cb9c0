"""The guard of tests/unit/conftest.py: a unit test that shells out fails loudly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from backendpick.edges.runner import capture


def test_popen_is_refused():
    with pytest.raises(AssertionError, match="tried to run"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_runner_does_not_swallow_the_refusal():
    with pytest.raises(AssertionError, match="allow_subprocess"):
        capture(["nvidia-smi"], timeout=1.0)


@pytest.mark.allow_subprocess
def test_marker_allows_it():
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
