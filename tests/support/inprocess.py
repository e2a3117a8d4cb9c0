"""backendpick's CLI run inside the test process, as ``launch`` does for the commands that change
nothing (``plan``, ``detect``, ``verify``, ``install --dry-run``, ``--help``/``--version``): a Python
start and the imports of backendpick cost about 0.1 s of CPU per run, and the suite runs these
commands some 230 times (issue 20, item 7). The pip and Python children they start (the target's
inspection, pip's resolution) stay real processes.

What the command sees is what a process of its own would see:

* ``os.environ`` *is* the test's environment (the one recipe, ``tests.support.hermetic``) for the
  run: cleared and refilled in place, so the C environment that children inherit changes too,
  then put back. Whatever the runner's machine sets is not there.
* The working directory is ``cwd``.
* File descriptors 1 and 2 are files of the run, and ``sys.stdout``/``sys.stderr`` write to them:
  the command's lines and anything a child writes to an inherited descriptor land where they would
  in a process, in the same order.
* The start-up is ``start.py``'s (the early inspection of the target, then ``cli.main``) without
  ``gc.freeze`` and the preload, which are process-wide and checked in a fresh interpreter
  (tests/cli/test_start_process.py).
* An exception that escapes ``main`` is printed as Python prints it and exits 1; ``SystemExit``
  gives the exit code as it would.

A run that leaves a thread or a child process behind fails the test (``LeakedState``): such a
leak would reach the next test here, where a process of its own would have hidden it.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

# Commands that change nothing and install no signal handler or lock: run in this process.
_READ_ONLY = frozenset({"plan", "detect", "verify"})
# Set to "0" to launch every command as a process of its own (the harness's own check, and a way
# to compare the two when one looks wrong).
SWITCH = "BACKENDPICK_TESTS_IN_PROCESS"


class LeakedState(AssertionError):
    pass


class _TimedOut(BaseException):  # not an Exception: no ``except Exception`` on the way stops it
    pass


# Read by the interpreter as it starts (``-X importtime``, ``sys.path``, ...): a run that sets one
# needs an interpreter of its own. The recipe always sets the first, which only stops .pyc writes.
_INTERPRETER_VARS_OK = frozenset({"PYTHONDONTWRITEBYTECODE"})


def suits(args: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """Whether ``backendpick *args`` changes nothing, so it may run in this process, and ``env``
    asks nothing of the interpreter's start."""
    if env is not None and any(k.startswith("PYTHON") and k not in _INTERPRETER_VARS_OK for k in env):
        return False
    words = list(args[: list(args).index("--")] if "--" in args else args)
    if not words:
        return True  # click's usage text
    if words[0] in _READ_ONLY:
        return True
    if words[0] == "install":
        return "--dry-run" in words
    return words[0].startswith("-") and any(w in ("--help", "-h", "--version") for w in words)


def possible(args: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """``suits``, and this is the main thread of a POSIX process (the deadline is a SIGALRM)."""
    return (suits(args, env) and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread())


def enabled() -> bool:
    """In-process runs are on: ``SWITCH`` is not "0"."""
    return os.environ.get(SWITCH, "1") != "0"


def run(args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """Run ``backendpick *args`` here; (exit code, stdout, stderr). Raises ``TimeoutExpired`` after
    ``timeout`` seconds, as ``subprocess.run`` would."""
    threads, children = set(threading.enumerate()), _children()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with _environment(env), _directory(cwd), _streams(out, err), _deadline(args, timeout):
            code = _main(list(args))
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
    _check_nothing_left(args, threads, children)
    return code, texts[0], texts[1]


def _check_nothing_left(args: Sequence[str], threads: set, children: set[int]) -> None:
    """The threads the run started have ended, given a moment between their last statement and
    their end (the test's index server, in this process too, answers each request in a thread of
    its own), and so have its child processes."""
    import time

    deadline = time.monotonic() + 2
    new = [t for t in threading.enumerate() if t not in threads]
    for thread in new:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    left = [t.name for t in new if t.is_alive()]
    left_children = sorted(_children() - children)
    if left or left_children:
        raise LeakedState(f"backendpick {' '.join(args)} left threads {left} and child processes "
                          f"{left_children} running")


def _main(args: list[str]) -> int:
    from backendpick import cli, start

    try:
        early = start.early_inspection(args)
        cli.main(args, early_inspection=early)
    except SystemExit as exc:
        return _exit_code(exc)
    except _TimedOut:
        raise
    except BaseException:  # what Python does with an exception nothing caught
        sys.stderr.write(traceback.format_exc())
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("text"): printed, exit status 1
    return 1


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()  # unsetenv for each: children inherit exactly ``env``
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _directory(cwd: Path) -> Iterator[None]:
    saved = os.getcwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved)


@contextmanager
def _streams(out, err) -> Iterator[None]:
    """fd 1 and 2 (and sys.stdout/stderr over them) go to ``out`` and ``err``. As in a process
    whose output is a pipe: stdout block-buffered, stderr line-buffered, UTF-8."""
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        stream.flush()
    saved_fds = os.dup(1), os.dup(2)
    try:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                      line_buffering=True)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except ValueError:
                pass  # closed by the command
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        os.close(saved_fds[0])
        os.close(saved_fds[1])


@contextmanager
def _deadline(args: Sequence[str], timeout: float) -> Iterator[None]:
    import subprocess

    def expire(signum, frame):
        raise _TimedOut()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    except _TimedOut:
        raise subprocess.TimeoutExpired(["backendpick", *args], timeout) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def _children() -> set[int]:
    """The pids of this process's children (Linux: /proc; elsewhere nothing is checked)."""
    pids: set[int] = set()
    tasks = Path(f"/proc/{os.getpid()}/task")
    if not tasks.is_dir():
        return pids
    for task in tasks.iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return pids
