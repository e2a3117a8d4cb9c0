"""Programs run inside the TARGET interpreter, which does not have backendpick installed.

Each module here uses only the standard library and stays Python 3.8+ compatible; backendpick
passes a module's source to the target with ``-c`` (``source``), so the target imports
nothing from this package. Their pure functions are unit-tested in this process.
"""

from __future__ import annotations

from pathlib import Path


def source(name: str) -> str:
    """The text of the probe module ``name`` (``inspect_env``, ``import_check``, ``torch_info``)."""
    return (Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8")
