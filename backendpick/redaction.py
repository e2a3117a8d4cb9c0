"""Credentials never leave backendpick: every URL it prints, logs or writes goes through
``redact``."""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """Hide credentials of every URL in ``text``: ``https://user:token@host`` -> ``https://***@host``.

    Works on whole URLs, requirement strings (``name @ https://user:token@host/x.whl``) and
    lines of pip output alike, so every place that prints can call it.
    """
    return _CREDENTIALS.sub(r"\1***@", text)
