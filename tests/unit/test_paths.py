"""edges/paths.py: one rule for the cache folder, used by the wheel cache and by the state folder of
an environment backendpick cannot write into; the environment is what the caller passes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from backendpick.edges import paths


@dataclass(frozen=True)
class Env:
    prefix: Path
    is_venv: bool = False


@pytest.mark.parametrize(
    ("platform", "env", "home"),
    [
        ("linux", {"HOME": "/h"}, Path("/h/.cache/backendpick")),
        ("linux", {"HOME": "/h", "XDG_CACHE_HOME": "/xdg"}, Path("/xdg/backendpick")),
        ("darwin", {"HOME": "/h", "XDG_CACHE_HOME": "/xdg"}, Path("/h/Library/Caches/backendpick")),
        ("win32", {"HOME": "/h", "LOCALAPPDATA": "/l"}, Path("/l/backendpick/Cache")),
    ],
)
def test_wheel_cache_and_foreign_state_share_one_root(monkeypatch, platform, env, home):
    monkeypatch.setattr("sys.platform", platform)
    assert paths.cache_home(env) == home
    assert paths.wheel_cache(env) == home / "wheels"
    state = paths.state_dir(Env(Path("/usr")), env)
    assert state.parent == home / "envs"
    assert state == paths.state_dir(Env(Path("/usr")), dict(env))  # keyed by the prefix alone
    assert state != paths.state_dir(Env(Path("/opt/py")), env)


def test_cache_dir_variable_moves_the_wheels_only(monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    env = {"HOME": "/h", "BACKENDPICK_CACHE_DIR": "/w"}
    assert paths.wheel_cache(env) == Path("/w")
    assert paths.state_dir(Env(Path("/usr")), env).parent == Path("/h/.cache/backendpick/envs")


def test_the_environment_passed_in_wins_over_the_process(monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", "/process")
    assert paths.cache_home({"HOME": "/h"}) == Path("/h/.cache/backendpick")
    assert paths.cache_home() == Path("/process/backendpick")


def test_writable_venv_keeps_its_state_inside(tmp_path):
    assert paths.state_dir(Env(tmp_path, is_venv=True), {}) == tmp_path / ".backendpick"
    state = tmp_path / ".backendpick"
    assert {paths.constraints(state).name, paths.logs(state).name, paths.history(state).name,
            paths.lock(state).name, paths.last_install(state).name, paths.builds_record(state).name,
            paths.build_staging(state).name, paths.build_env(state).name, paths.kept(state).name} == {
        "constraints.txt", "logs", "history", "lock", "last-install.json", "builds.json", "build", "build-env", "kept"}
