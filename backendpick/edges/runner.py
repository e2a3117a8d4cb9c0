"""The one place that starts subprocesses: always an argv list, never a shell, never a
credential (every local user can read a child's argv in ``/proc/<pid>/cmdline``: an argv with
a URL holding one is refused, indexes/credentials.py moves them to the child's environment).

Probes pass a timeout. On timeout the whole process group is killed: a wedged ``nvidia-smi``
may leave children holding our pipes open, and waiting for them would hang backendpick too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int | None  # None: it did not finish (timeout) or could not start
    stdout: str
    stderr: str
    error: str | None = None  # why it did not run or finish, in words

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _spawn(args: tuple[str, ...], env: Mapping[str, str] | None, cwd: Path | None, *, stderr: int,
           pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """The one Popen: no stdin, stdout captured, the child in a session of its own (so a stop
    reaches its whole group). Raises OSError when the program cannot start."""
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=sys.platform != "win32",
        pass_fds=tuple(pass_fds),
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if sys.platform != "win32":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


class Started:
    """A child started by ``start``; ``result`` waits for it like ``capture``."""

    def __init__(self, args: tuple[str, ...], proc: subprocess.Popen | None, timeout: float, error: str | None = None):
        self.args, self.proc, self.timeout, self.error = args, proc, timeout, error

    def result(self) -> Result:
        if self.proc is None:
            return Result(self.args, None, "", "", error=self.error)
        return _finish(self.args, self.proc, self.timeout)

    def cancel(self) -> None:
        """Stop the child (its group) and reap it; its output is not wanted."""
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc)
        if self.proc is not None:
            self.proc.communicate()


def _checked(argv: Sequence[str | Path]) -> tuple[str, ...]:
    """``argv`` as strings; an InstallError (nothing is started) when a word holds a credential."""
    from backendpick.redaction import in_argv

    args = tuple(str(a) for a in argv)
    leaked = in_argv(args)
    if leaked is not None:
        from backendpick.errors import InstallError

        raise InstallError(f"refusing to start {Path(args[0]).name}: {leaked} would show a credential on its "
                           "command line, which every local user can read",
                           hint="put the credentials in ~/.netrc (machine HOST login USER password SECRET) "
                                "instead of the URL; please report this case as a backendpick bug")
    return args


def start(
    argv: Sequence[str | Path],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Started:
    """Start ``argv`` with captured output and return at once: the caller does other work (imports,
    probing) while it runs, then calls ``result()``. The timeout counts from ``result()``."""
    args = _checked(argv)
    try:
        proc = _spawn(args, env, cwd, stderr=subprocess.PIPE)
    except OSError as exc:
        return Started(args, None, timeout, error=f"could not run {args[0]}: {exc.strerror or exc}")
    return Started(args, proc, timeout)


def capture(
    argv: Sequence[str | Path],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Result:
    """Run ``argv`` to completion, capturing output; never raises for the child's failures."""
    return start(argv, timeout=timeout, env=env, cwd=cwd).result()


def _finish(args: tuple[str, ...], proc: subprocess.Popen, timeout: float) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    except (KeyboardInterrupt, Interrupted):
        _kill_group(proc)  # a probe or inspection is never worth finishing once stopped
        proc.wait()
        raise
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
        return Result(
            args, None, _text(out), _text(err), error=f"{Path(args[0]).name} did not answer within {timeout:g}s"
        )
    return Result(args, proc.returncode, _text(out), _text(err))


def stream(
    argv: Sequence[str | Path],
    *,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_started: Callable[[subprocess.Popen], None] | None = None,
) -> Result:
    """Run ``argv`` (pip), handing each output line to ``on_line`` as it comes.

    stderr is merged into stdout so the log keeps pip's own order.

    pip runs in a process group of its own, so that stopping it stops the compilers and build
    backends it started too. Two things keep it from outliving backendpick unnoticed:

    * Inside ``stop_children_on_signals`` (install and restore), SIGINT and SIGTERM stop pip's
      whole group (SIGTERM, then SIGKILL after a grace period), wait for it, and only then end
      backendpick with ``Interrupted``. A group signal (docker stop, CI cancel, ``timeout``)
      would not reach pip's own group otherwise.
    * pip inherits the descriptors of the environment locks this process holds (``edges/envlock.py``).
      flock belongs to the open file, not the process, so the lock stays held until pip exits
      too: after a ``kill -9`` of backendpick (no handler runs), a second backendpick waits for
      the orphaned pip instead of writing beside it. The kernel releases it when pip ends.
    """
    from backendpick.edges import envlock

    args = _checked(argv)
    try:
        proc = _spawn(args, env, cwd, stderr=subprocess.STDOUT, pass_fds=envlock.held_fds())
    except OSError as exc:
        return Result(args, None, "", "", error=f"could not run {args[0]}: {exc.strerror or exc}")
    _children.add(proc)
    envlock.note_child(proc.pid)
    if on_started is not None:
        on_started(proc)
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = _text(raw).rstrip("\n")
            lines.append(line)
            on_line(line)
        proc.wait()
    except BaseException:
        # Ctrl-C, Interrupted from the signal handler, or a bug in on_line: pip must not go on.
        _stop_group(proc)
        raise
    finally:
        _children.discard(proc)
        envlock.note_child(None)
    return Result(args, proc.returncode, "\n".join(lines), "")


class Beside:
    """``stream`` in a thread, for a pip run beside the one in the foreground (the build
    requirements beside the backend phase). ``wait`` gives its result (or raises what it
    raised); ``stop`` ends it like a signal would (its group, SIGTERM then SIGKILL) and waits."""

    def __init__(self, run: Callable[[Callable[[subprocess.Popen], None]], object]):
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self._value: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(run,), daemon=True)
        self._thread.start()

    def _main(self, run) -> None:
        try:
            self._value = run(self._started)
        except BaseException as exc:  # handed to the caller by wait()
            self._error = exc

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        if self._stopping:  # stop() came before the child was there
            _terminate(proc)

    def wait(self) -> object:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def stop(self) -> None:
        self._stopping = True
        if self._thread.is_alive() and self._proc is not None:
            _stop_group(self._proc)
        self._thread.join()


GRACE_SECONDS = 10.0  # pip cleans up its temporary build folders on SIGTERM
_children: set = set()  # pip runs in progress (stream), stopped by the signal handler


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's group, SIGKILL after the grace period, and wait for the child.

    A second Ctrl-C while this waits is held back (then delivered), so it cannot leave pip
    running."""
    blocked = sys.platform != "win32" and threading.current_thread() is threading.main_thread()
    if blocked:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        _terminate(proc)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None and sys.platform != "win32":
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    # The group may outlive its leader (a compiler started by pip): end it in any case.
    _kill_group(proc)
    proc.wait()


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while ``stop_children_on_signals`` was active. A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_children_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread; ``stream`` stops pip's group
    before the exception leaves it. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def stopped(exc: BaseException, state: str, hint: str | None = None):
    """The ``errors.Stopped`` for Ctrl-C (SIGINT) or SIGTERM, after any pip run was stopped
    (``stream`` waits for it); ``state`` says what that left of the environment."""
    from backendpick.errors import Stopped

    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    return Stopped(f"stopped by {signal.Signals(signum).name}; {state}", signum=signum, hint=hint)
