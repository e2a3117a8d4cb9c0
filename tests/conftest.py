"""Session fixtures shared by the integration and CLI tests: one hermetic package world
(indexes on 127.0.0.1, a simulated user pip.conf, a template venv) and the backendpick
harness on top of it, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.index import IndexServer
from tests.support.lab import Lab
from tests.support.world import World, build_world


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        # Under the README's test command (-n auto --dist loadfile) a worker takes a file at a
        # time. xdist would hand out the files with the most tests first, which says nothing about
        # their time: the two-test hostile-machine file, the longest, ran alone at the end. In
        # collection order the many short unit-test files come last and fill the workers' ends.
        config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than the cores. The tests wait on pip's children and the local
    index for much of their time: with one worker per core, the 2-core CI machine used 412 s of CPU
    in 273 s of pytest (cores idle a quarter of the time); a third worker filled the waits and the
    same suite took 232 s (issue 20 item 7)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + 1


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Indexes, simulated user pip.conf and template venv, built once per session."""
    built = build_world(tmp_path_factory.mktemp("world"))
    try:
        yield built
    finally:
        built.close()
    changed = built.template_changes()
    # Clones share the template's files as hard links: a test that wrote into one changed them all.
    assert not changed, f"a test wrote into files of a cloned venv that it did not create: {changed[:10]}"


@pytest.fixture(scope="session")
def lab(world: World, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """Fake machines and hermetic backendpick/pip runs against the session's world."""
    return Lab(world, tmp_path_factory.mktemp("lab"))


@pytest.fixture
def venv(world: World, tmp_path: Path) -> Path:
    """A fresh venv (pip only, no setuptools) cloned from the session template."""
    return world.new_venv(tmp_path)


@pytest.fixture
def server(world: World) -> IndexServer:
    """The session's index server with its request log cleared for this test."""
    world.server.clear_log()
    return world.server
