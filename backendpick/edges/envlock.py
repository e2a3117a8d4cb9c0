"""One backendpick at a time per environment: an advisory file lock in its state directory.
Taking it removes the no-op record (state/noop.py): the holder may change the environment.

Two pip runs interleaving in one environment (a Makefile with -j, two terminals) can leave a
mix of both; the second run waits, says so, and then plans against what the first one left.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from backendpick import envvars
from backendpick.edges import paths
from backendpick.errors import LockTimeout, StateError

# Locks this process holds: (open lock file, what it says about us). runner.stream passes
# their descriptors to pip, so the lock lives as long as pip does (see runner.stream).
_held: list = []


def held_fds() -> tuple[int, ...]:
    return tuple(f.fileno() for f, _ in _held)


def note_child(pid: int | None) -> None:
    """Name the pip run in progress in the lock file, for the message of a waiting run."""
    for f, who in _held:
        try:
            _write(f, who + (f" (pip pid {pid})" if pid else ""))
        except OSError:
            pass  # the message is a courtesy; the flock is what excludes


def _write(f, text: str) -> None:
    f.seek(0)
    f.truncate()
    f.write(text)
    f.flush()


def _open(state_dir: Path):
    """The lock file, or a StateError that says how to repair what is in its place."""
    if state_dir.exists() and not state_dir.is_dir():
        raise StateError(f"{state_dir} is not a directory, so backendpick cannot keep its lock and snapshots there",
                         hint=f"move it away (mv {state_dir} {state_dir}.bak) and run again")
    path = paths.lock(state_dir)
    if path.is_dir():
        raise StateError(f"{path} is a directory, not backendpick's lock file",
                         hint=f"remove it (rm -r {path}) and run again")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        return path.open("a+")
    except OSError as exc:
        raise StateError(f"cannot open the lock file {path}: {exc.strerror or exc}",
                         hint=f"make {state_dir} a directory you can write") from None


def _forget_noop(state_dir: Path) -> None:
    """Whoever holds the lock may change the environment: the record that lets a re-run answer
    "nothing to do" before the machinery loads (state/noop.py) goes first, so a change that
    stops half-way never looks finished; a run that ends with nothing to do writes it again."""
    try:
        os.unlink(paths.noop_record(state_dir))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateError(f"cannot remove {paths.noop_record(state_dir)}: {exc.strerror or exc}",
                         hint=f"make {state_dir} a directory you can write") from None


@contextmanager
def hold(state_dir: Path, *, on_wait: Callable[[str], None], env=None) -> Iterator[bool]:
    """Hold the environment's lock; yields whether it had to wait (then the environment may
    have changed since the caller last looked)."""
    import fcntl  # POSIX only; imported here so the rest of backendpick stays importable elsewhere

    env = os.environ if env is None else env
    limit = envvars.lock_timeout(env)  # checked before anything waits, so a bad value fails every run
    waited = False
    with _open(state_dir) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            waited = True
            f.seek(0)
            holder = f.read().strip() or "another process"
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
                            hint=f"wait for it to finish, or raise {envvars.LOCK_TIMEOUT}",
                        ) from None
                    time.sleep(0.2)
        _forget_noop(state_dir)
        who = f"backendpick pid {os.getpid()}"
        _write(f, who)
        _held.append((f, who))
        try:
            yield waited
        finally:
            _held.remove((f, who))
            _write(f, "")
            # No explicit unlock: closing our descriptor releases the lock unless a pip we
            # started still holds the inherited one (it then ends with pip).
