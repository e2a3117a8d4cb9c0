"""The installers backendpick can run its phases with, as a pytest parameter: ``pip`` always,
``uv`` where the ``uv`` package (the test extra) is installed."""

from __future__ import annotations

import pytest


def has_uv() -> bool:
    try:
        from uv import find_uv_bin

        find_uv_bin()
    except (ImportError, FileNotFoundError):
        return False
    return True


ENGINES = (
    pytest.param("pip", id="pip"),
    pytest.param("uv", id="uv", marks=pytest.mark.skipif(not has_uv(), reason="uv is not installed (pip install uv)")),
)
