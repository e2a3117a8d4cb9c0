"""One backendpick at a time per environment: an advisory file lock in its state directory.

Two pip runs interleaving in one environment (a Makefile with -j, two terminals) can leave a
mix of both; the second run waits, says so, and then plans against what the first one left.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from backendpick.errors import LockTimeout

DEFAULT_TIMEOUT = 900.0  # a flash-attn source build can hold it for a long time


def _timeout(env) -> float:
    raw = env.get("BACKENDPICK_LOCK_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


@contextmanager
def hold(state_dir: Path, *, on_wait: Callable[[str], None], env=None) -> Iterator[bool]:
    """Hold the environment's lock; yields whether it had to wait (then the environment may
    have changed since the caller last looked)."""
    import fcntl  # POSIX only; imported here so the rest of backendpick stays importable elsewhere

    env = os.environ if env is None else env
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "lock"
    waited = False
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            waited = True
            f.seek(0)
            holder = f.read().strip() or "another process"
            limit = _timeout(env)
            on_wait(f"waiting for {holder} to finish with this environment (up to {limit:g}s)")
            deadline = time.monotonic() + limit
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"{holder} held {state_dir.parent} for more than {limit:g}s",
                            hint="wait for it to finish, or raise BACKENDPICK_LOCK_TIMEOUT",
                        ) from None
                    time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(f"backendpick pid {os.getpid()}")
        f.flush()
        try:
            yield waited
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
