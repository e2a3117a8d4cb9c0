"""The one renderer: rich on a terminal, plain stable lines in logs, JSON for scripts.

Plain lines are an interface (CI logs, Docker build output, grep): ``key: value`` and
``warning: ...``, no colour, no wrapping. rich is imported only when a terminal will show it,
which keeps ``detect`` and ``plan`` quick to start. ``NO_COLOR`` turns colour off everywhere.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Sequence


@dataclass(frozen=True)
class PhaseView:
    """One phase as a person reads it (execute/described.py makes it from the phase's intent)."""

    name: str
    what: str  # the requirements, as the user wrote them
    why: str  # what the phase is for, in words
    skip: str | None = None
    notes: tuple[str, ...] = ()  # before the phase: a download first, a phase run alongside
    steps: tuple[str, ...] = ()  # what happens in it, in words (routes, build steps)
    commands: tuple[str, ...] = ()  # command lines that run as printed
    files: tuple[str, ...] = ()  # "path: what it holds" for the files written before it runs


@dataclass(frozen=True)
class PlanView:
    """A plan as a person reads it: a header (backend, reason and torch first), then its phases."""

    header: tuple[tuple[str, str], ...]
    phases: tuple[PhaseView, ...]
    notes: tuple[str, ...] = ()  # after the header: what a change keeps first


@dataclass(frozen=True)
class Change:
    """One line of install's summary, as uv prints it: ``+`` added, ``-`` removed, ``~`` the same
    version installed again (a build against another torch)."""

    sign: str
    name: str
    version: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.sign} {self.name} {self.version}" + (f" ({self.detail})" if self.detail else "")

    def to_json(self) -> dict:
        return {"change": self.sign, "name": self.name, "version": self.version, "detail": self.detail or None}


class Output:
    def __init__(self, *, json_mode: bool = False, verbose: int = 0, quiet: bool = False,
                 stdout: IO[str] | None = None, stderr: IO[str] | None = None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.json_mode = json_mode
        self.verbose = verbose
        self.quiet = quiet
        term_ok = os.environ.get("TERM", "") != "dumb"
        # rich is a dependency, but a broken or partial environment must still get output.
        self.fancy = not json_mode and term_ok and _isatty(self.stdout) and _have_rich()
        self.color = self.fancy and not os.environ.get("NO_COLOR")

    # -- low level ------------------------------------------------------------------------------
    def console(self, stderr: bool = False):
        from rich.console import Console

        # NO_COLOR: no escape codes at all (bold and italic included), only the table's lines.
        return Console(file=self.stderr if stderr else self.stdout, no_color=not self.color,
                       color_system="auto" if self.color else None, highlight=False, soft_wrap=True)

    def line(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def info(self, text: str) -> None:
        """Progress and notes. In JSON mode they go to stderr so stdout stays one document."""
        if self.quiet:
            return
        print(text, file=self.stderr if self.json_mode else self.stdout, flush=True)

    def result(self, text: str) -> None:
        """The outcome line (``installed for cu124 ...``): shown even with -q, which hides only
        progress. In JSON mode it goes to stderr; the JSON object carries the same."""
        print(text, file=self.stderr if self.json_mode else self.stdout, flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=self.stderr, flush=True)

    def error(self, message: str, hint: str | None = None, details: str | None = None) -> None:
        if details:
            print(details.rstrip("\n"), file=self.stderr)
        print(f"error: {message}", file=self.stderr)
        if hint:
            print(f"hint: {hint}", file=self.stderr)
        self.stderr.flush()

    def emit_json(self, obj: Any) -> None:
        import json  # only --json and plain values with spaces need it: off the start-up path

        json.dump(obj, self.stdout, indent=2, sort_keys=False)
        self.stdout.write("\n")
        self.stdout.flush()

    def fields(self, pairs: Sequence[tuple[str, Any]]) -> None:
        for key, value in pairs:
            if value is not None and value != "":
                self.line(f"{key}: {value}")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A rich table on a terminal; otherwise one ``title: col=value ...`` line per row."""
        if self.fancy:
            from rich.table import Table

            t = Table(title=title, title_justify="left")
            for c in columns:
                t.add_column(c)
            for r in rows:
                t.add_row(*("" if v is None else str(v) for v in r))
            self.console().print(t)
            return
        for r in rows:
            cells = " ".join(f"{c.lower().replace(' ', '_')}={_plain_value(v)}" for c, v in zip(columns, r))
            self.line(f"{title.lower()}: {cells}")


    # -- plans and installs -------------------------------------------------------------------------
    def plan(self, view: PlanView) -> None:
        """``plan``: ``key: value`` header lines, then each phase; commands after ``  $ ``."""
        lines = [("key", f"{k}: {v}") for k, v in view.header]
        lines += [("note", f"# {n}") for n in view.notes]
        for ph in view.phases:
            lines.append(("phase", f"phase {ph.name}: {f'skip ({ph.skip})' if ph.skip else 'run'}: {ph.what}"))
            if ph.skip:
                continue
            lines += [("note", f"  # {n}") for n in (*ph.notes, ph.why, *ph.steps) if n]
            lines += [("command", f"  $ {c}") for c in ph.commands]
            lines += [("file", f"  will be written: {f}") for f in ph.files]
        if not view.phases:
            lines.append(("key", "nothing to install"))
        self._styled(lines)

    def dry_run(self, view: PlanView) -> None:
        """``install --dry-run``: a shell script's body: every line but the commands a ``#``
        comment, so the whole output reads and copies as printed."""
        lines = [("key", f"# {k}: {v}") for k, v in view.header]
        lines += [("note", f"# {n}") for n in view.notes]
        for ph in view.phases:
            if ph.skip:
                continue
            lines.append(("phase", f"# phase {ph.name}: {ph.what}"))
            lines += [("note", f"# {n}") for n in (*ph.notes, ph.why, *ph.steps) if n]
            lines += [("file", f"# will be written: {f}") for f in ph.files]
            lines += [("command", c) for c in ph.commands]
        self._styled(lines)

    def install_header(self, rows: Sequence[tuple[str, str]]) -> None:
        """install's first lines, as ``plan`` starts (issue 20 item 5): the backend, the reason and
        the torch. Progress: hidden by -q, on stderr with --json."""
        self._styled([("key", f"{k}: {v}") for k, v in rows], progress=True)

    def changes(self, changes: Sequence[Change]) -> None:
        """What an install changed, one package a line, ``-`` before ``+`` for the same name."""
        for change in changes:
            self._styled([("minus" if change.sign == "-" else "plus" if change.sign == "+" else "tilde",
                           change.line())], progress=True)

    def progress(self) -> "Progress":
        return Progress(self)

    _STYLES = {"key": "bold", "phase": "bold cyan", "note": "dim", "command": "", "file": "yellow",
               "plus": "green", "minus": "red", "tilde": "yellow"}

    def _styled(self, lines: Sequence[tuple[str, str]], progress: bool = False) -> None:
        """Plain lines in logs; the same lines with colour on a terminal (never wrapped: a command
        copies as printed). ``progress``: hidden by -q, on stderr with --json."""
        if progress and self.quiet:
            return
        if self.json_mode or not self.fancy:
            for _, text in lines:
                (self.info if progress else self.line)(text)
            return
        from rich.text import Text

        console = self.console()
        for kind, text in lines:
            console.print(Text(text, style=self._STYLES[kind] if self.color else ""))


class Progress:
    """install's phases as they run: a spinner per phase on a terminal (rich), one stable line per
    phase in logs; the command lines only with ``-v``, which also streams the installer's output."""

    def __init__(self, out: Output):
        self.out = out
        self.status = None
        self.label = ""
        self.started = 0.0

    def start(self, view: PhaseView, commands: Sequence[str]) -> None:
        self.label = f"phase {view.name}: {view.what}"
        self.started = time.monotonic()
        if self.out.fancy and not self.out.verbose and not self.out.quiet:
            from rich.text import Text

            for n in view.notes:
                self.out.console().print(Text(f"  # {n}", style="dim" if self.out.color else ""))
            # Text, not markup: requirements hold brackets (extras).
            self.status = self.out.console().status(Text(f"{self.label} ({view.why})" if view.why else self.label))
            self.status.start()
        else:
            self.out.info(self.described(view, commands))

    def described(self, view: PhaseView, commands: Sequence[str]) -> str:
        lines = [f"phase {view.name}: {view.what}", *(f"  # {n}" for n in view.notes)]
        if self.out.verbose:
            lines += [f"  $ {c}" for c in commands]
        return "\n".join(lines)

    def beside(self, view: PhaseView, commands: Sequence[str]) -> None:
        """A phase started beside the one running (its lines come when it is joined)."""
        self.note(self.described(view, commands))

    def note(self, text: str) -> None:
        """Build-phase notes (which wheel and why, limits, elapsed time of a long build)."""
        if self.status is not None:
            self.status.console.print(text, markup=False, highlight=False)
        else:
            self.out.info(text)

    def line(self, text: str) -> None:
        if self.out.verbose:
            self.out.info(f"  | {text}")
        elif self.status is not None:
            from rich.text import Text

            elapsed = time.monotonic() - self.started
            self.status.update(Text(f"{self.label} [{elapsed:.0f}s] {text.strip()[:80]}"))

    def end(self, name: str, seconds: float) -> None:
        self.stop()
        self.out.info(f"phase {name}: done in {seconds:.1f}s")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def note(text: str, stream: IO[str] | None = None) -> None:
    """One line to stderr at once, for callers that have no ``Output`` (the executor's default)."""
    print(text, file=stream or sys.stderr, flush=True)


def size_text(n: float) -> str:
    """``1.1 GB``, ``350.2 KB``, ``12 B``: a size in bytes for people (1024-based)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _plain_value(value: Any) -> str:
    """``-`` for none, JSON-style quotes around values with spaces, so lines split as key=value."""
    if value is None or value == "":
        return "-"
    text = str(value)
    import json

    return json.dumps(text) if (" " in text or '"' in text) else text


def _have_rich() -> bool:
    import importlib.util

    return importlib.util.find_spec("rich") is not None


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def where_flags(python: Path | None, settings) -> str:
    """``--python`` and ``--project`` for the printed fixes, so they work from any directory
    (``settings``: config.Settings, for its project)."""
    import shlex

    flags = f" --python {shlex.quote(str(python))}" if python is not None else ""
    if settings.pyproject.path is not None:
        flags += f" --project {shlex.quote(str(settings.project_dir.resolve()))}"
    return flags
