"""The console script's peek at the arguments (start.py): which runs start the target's
inspection before the CLI is imported, and that the CLI uses it only for the interpreter its
own parsing chooses."""

from __future__ import annotations

from pathlib import Path

import pytest

from backendpick import start, target


@pytest.mark.parametrize("args", [
    [], ["detect"], ["plan", "--python", "/x"], ["install", "--dry-run"], ["install", "--help"], ["install", "-h", "x"],
    ["install", "--python"], ["install", "--python", " "], ["install", "--python="],
])
def test_no_early_inspection(args, monkeypatch):
    monkeypatch.setattr(target, "start_inspect", lambda *a, **k: pytest.fail("started"))
    assert start.early_inspection(args) is None


@pytest.mark.parametrize("args, python", [
    (["install", "torch"], None),
    (["install", "--python", "/venv/bin/python", "torch"], "/venv/bin/python"),
    (["install", "--python=/venv/bin/python"], "/venv/bin/python"),
    (["install", "--", "--python", "/not/this"], None),  # after --, a requirement, not a flag
])
def test_early_inspection_of_the_flagged_python(args, python, monkeypatch):
    chosen = []
    monkeypatch.setattr(target, "choose_python", lambda flag, env=None: chosen.append(flag) or Path(flag or "/active"))
    monkeypatch.setattr(target, "start_inspect", lambda p, **k: ("inspection of", p))
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
    monkeypatch.setattr(target, "start_inspect", lambda p, **k: ("started", p))
    same = _Early("/venv/bin/python")
    assert target.reuse_or_start(same, Path("/venv/bin/python")) is same and not same.cancelled
    # e.g. `install -r --python /other/python`: click reads --python as -r's value.
    other = _Early("/other/python")
    assert target.reuse_or_start(other, Path("/venv/bin/python")) == ("started", Path("/venv/bin/python"))
    assert other.cancelled
    assert target.reuse_or_start(None, Path("/p")) == ("started", Path("/p"))

