"""The one place that starts subprocesses: always an argv list, never a shell.

Probes pass a timeout. On timeout the whole process group is killed: a wedged ``nvidia-smi``
may leave children holding our pipes open, and waiting for them would hang backendpick too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence


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


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if sys.platform != "win32":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def capture(
    argv: Sequence[str | Path],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Result:
    """Run ``argv`` to completion, capturing output; never raises for the child's failures."""
    args = tuple(str(a) for a in argv)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=sys.platform != "win32",
        )
    except OSError as exc:
        return Result(args, None, "", "", error=f"could not run {args[0]}: {exc.strerror or exc}")
    try:
        out, err = proc.communicate(timeout=timeout)
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
) -> Result:
    """Run ``argv`` (pip), handing each output line to ``on_line`` as it comes.

    stderr is merged into stdout so the log keeps pip's own order. Ctrl-C stops the child
    group too, so an interrupted build does not keep compiling in the background.
    """
    args = tuple(str(a) for a in argv)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=sys.platform != "win32",
        )
    except OSError as exc:
        return Result(args, None, "", "", error=f"could not run {args[0]}: {exc.strerror or exc}")
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = _text(raw).rstrip("\n")
            lines.append(line)
            on_line(line)
        proc.wait()
    except KeyboardInterrupt:
        _kill_group(proc)
        proc.wait()
        raise
    return Result(args, proc.returncode, "\n".join(lines), "")


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")
