"""The one renderer: rich on a terminal, plain stable lines in logs, JSON for scripts.

Plain lines are an interface (CI logs, Docker build output, grep): ``key: value`` and
``warning: ...``, no colour, no wrapping. rich is imported only when a terminal will show it,
which keeps ``detect`` and ``plan`` quick to start. ``NO_COLOR`` turns colour off everywhere.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Sequence


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
