"""Errors the CLI turns into one line and an exit code.

Every failure a user can cause or fix (a bad setting, a backend that does not exist, pip
failing) is one of these; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import NewType

ExitCode = NewType("ExitCode", int)

EXIT_OK = ExitCode(0)
EXIT_INSTALL_FAILED = ExitCode(1)  # pip failed, or the result did not verify
EXIT_USAGE = ExitCode(2)  # bad flag, bad pyproject setting, bad requirement (click uses 2 too)
EXIT_NO_BACKEND = ExitCode(3)  # no backend serves this hardware and this torch
EXIT_LOCKED = ExitCode(4)  # another backendpick held the environment for too long


class BackendpickError(Exception):
    """Base class: a message for the user, a remedy and the process exit code."""

    exit_code: ExitCode = EXIT_INSTALL_FAILED

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Longer material (the tail of pip's output) printed after the one-line message.
        self.details = details


class ConfigError(BackendpickError):
    """A setting, flag or requirement string is wrong."""

    exit_code = EXIT_USAGE


class NoBackendError(BackendpickError):
    """No backend serves the hardware together with the requested torch."""

    exit_code = EXIT_NO_BACKEND



class InstallError(BackendpickError):
    """A pip phase failed."""

    exit_code = EXIT_INSTALL_FAILED


class StateError(BackendpickError):
    """backendpick's own files in the target (snapshots, lock, state directory) are damaged or
    not writable; the message names the file and how to repair it."""

    exit_code = EXIT_USAGE


class KeepError(BackendpickError):
    """A distribution a change would remove or replace cannot be kept for restore (an editable
    install, files changed since it was installed, no RECORD): refused before anything changes
    (issue 18: nothing is removed that cannot be put back)."""

    exit_code = EXIT_USAGE


class Stopped(BackendpickError):
    """SIGINT or SIGTERM ended the run (after stopping pip); exits 128 + the signal number,
    as the shell reports a process killed by it (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, *, signum: int, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.exit_code = ExitCode(128 + signum)


class LockTimeout(BackendpickError):
    exit_code = EXIT_LOCKED
