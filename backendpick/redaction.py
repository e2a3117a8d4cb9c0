"""Credentials never leave backendpick: every URL it prints, logs or writes goes through
``redact`` (shown) or ``strip`` (written to a file or a script), and no argv it starts may hold
one (``in_argv``, checked by the runner)."""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")
# Variables whose whole value is a secret (uv's per-index credentials, indexes/credentials.py).
_SECRET_VARS = re.compile(r"_(USERNAME|PASSWORD|TOKEN)$")


def redact(text: str) -> str:
    """Hide credentials of every URL in ``text``: ``https://user:token@host`` -> ``https://***@host``.

    Works on whole URLs, requirement strings (``name @ https://user:token@host/x.whl``) and
    lines of pip output alike, so every place that prints can call it.
    """
    return _CREDENTIALS.sub(r"\1***@", text)


def strip(text: str) -> str:
    """Remove the user information of every URL in ``text``: ``https://user:token@host/x`` ->
    ``https://host/x``. For what is written down (state files, the page cache, the shell
    export): a ``***`` user name there would be sent to the server as the user ``***``, which
    keeps pip from looking in .netrc."""
    return _CREDENTIALS.sub(r"\1", text)


def redact_var(name: str, value: str) -> str:
    """A variable's value as shown: ``***`` for a credential variable
    (``UV_INDEX_<NAME>_PASSWORD``), URLs redacted otherwise."""
    return "***" if _SECRET_VARS.search(name) else redact(value)


def in_argv(argv) -> str | None:
    """The first word of ``argv`` holding a URL with credentials (redacted), or None. A child's
    command line is readable by every local user (``/proc/<pid>/cmdline``, ``ps``)."""
    for word in argv:
        # ssh's user name (git+ssh://git@host) is a login, not a secret: the key authenticates.
        if any(not m.group(1).lower().endswith("ssh://") for m in _CREDENTIALS.finditer(str(word))):
            return redact(str(word))
    return None
