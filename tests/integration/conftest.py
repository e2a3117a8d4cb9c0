"""Fixtures for integration tests: a hermetic package world served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.index import IndexServer
from tests.support.world import World, build_world


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: runs real pip in venvs against the local fake indexes (slow)",
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Indexes, simulated user pip.conf and template venv, built once per session."""
    built = build_world(tmp_path_factory.mktemp("world"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def venv(world: World, tmp_path: Path) -> Path:
    """A fresh venv (pip only, no setuptools) cloned from the session template."""
    return world.new_venv(tmp_path)


@pytest.fixture
def server(world: World) -> IndexServer:
    """The session's index server with its request log cleared for this test."""
    world.server.clear_log()
    return world.server
