"""The one renderer: rich on a terminal, stable plain lines elsewhere, NO_COLOR respected."""

from __future__ import annotations

import io
import json

import pytest

from backendpick import output as output_mod
from backendpick.output import Output


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


ROWS = [(0, "nvidia", "NVIDIA A100-SXM4-80GB", "535.183.01", "8.0", "")]
COLUMNS = ["Index", "Vendor", "Name", "Driver", "Arch", "Note"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "120")


def test_a_terminal_gets_a_rich_table() -> None:
    out = Output(stdout=Tty(), stderr=io.StringIO())
    assert out.fancy
    out.table("GPU", COLUMNS, ROWS)
    text = out.stdout.getvalue()
    assert "┃" in text and "NVIDIA A100-SXM4-80GB" in text and "gpu:" not in text


def test_no_color_keeps_the_table_and_drops_every_escape_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = Output(stdout=Tty(), stderr=io.StringIO())
    out.table("GPU", COLUMNS, ROWS)
    text = out.stdout.getvalue()
    assert "NVIDIA A100-SXM4-80GB" in text and "\x1b[" not in text


def test_logs_get_plain_key_value_lines() -> None:
    out = Output(stdout=io.StringIO(), stderr=io.StringIO())
    assert not out.fancy
    out.table("GPU", COLUMNS, ROWS)
    assert out.stdout.getvalue() == (
        'gpu: index=0 vendor=nvidia name="NVIDIA A100-SXM4-80GB" driver=535.183.01 arch=8.0 note=-\n'
    )


def test_a_dumb_terminal_or_missing_rich_falls_back_to_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    assert not Output(stdout=Tty()).fancy
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(output_mod, "_have_rich", lambda: False)
    out = Output(stdout=Tty(), stderr=io.StringIO())
    assert not out.fancy
    out.table("GPU", COLUMNS, ROWS)
    assert out.stdout.getvalue().startswith("gpu: index=0")


def test_json_mode_keeps_stdout_one_document() -> None:
    out = Output(json_mode=True, stdout=Tty(), stderr=io.StringIO())
    assert not out.fancy
    out.info("progress goes to stderr")
    out.emit_json({"backend": "cu124"})
    assert json.loads(out.stdout.getvalue()) == {"backend": "cu124"}
    assert "progress" in out.stderr.getvalue()


VIEW = output_mod.PhaseView("backend", "torch", "torch and its family from the cu124 index alone")


@pytest.mark.parametrize("verbose", [0, 1])
def test_install_progress_on_a_terminal_and_in_logs(verbose: int) -> None:
    """A spinner per phase on a terminal, one stable line per phase in logs; the command line
    and the installer's own lines only with -v (issue 20 item 5)."""
    for stdout in (Tty(), io.StringIO()):
        out = Output(stdout=stdout, stderr=io.StringIO(), verbose=verbose)
        progress = out.progress()
        progress.start(VIEW, ["py -m pip install torch"])
        assert (progress.status is not None) == (out.fancy and not verbose)  # the spinner
        progress.line("Collecting torch")
        progress.note("a build-phase note")
        progress.end("backend", 1.25)
        text = stdout.getvalue()
        assert "phase backend: done in 1.2s" in text and "a build-phase note" in text
        assert ("  $ py -m pip install torch" in text) == bool(verbose)
        assert ("  | Collecting torch" in text) == bool(verbose)
        if not out.fancy:
            assert text.startswith("phase backend: torch\n")


def test_the_change_summary_reads_as_uv_prints_it(monkeypatch: pytest.MonkeyPatch) -> None:
    changes = [output_mod.Change("-", "torch", "2.4.0"), output_mod.Change("+", "torch", "2.5.1+cu124"),
               output_mod.Change("~", "flash-attn", "2.6.1", "built against 2.5.1+cu124, 6 s, cached")]
    plain = Output(stdout=io.StringIO(), stderr=io.StringIO())
    plain.changes(changes)
    assert plain.stdout.getvalue() == ("- torch 2.4.0\n+ torch 2.5.1+cu124\n"
                                       "~ flash-attn 2.6.1 (built against 2.5.1+cu124, 6 s, cached)\n")
    tty = Output(stdout=Tty(), stderr=io.StringIO())
    tty.changes(changes)
    assert "\x1b[" in tty.stdout.getvalue() and "+ torch 2.5.1+cu124" in tty.stdout.getvalue()  # coloured
    monkeypatch.setenv("NO_COLOR", "1")
    bare = Output(stdout=Tty(), stderr=io.StringIO())
    bare.changes(changes)
    assert bare.stdout.getvalue() == plain.stdout.getvalue()  # NO_COLOR: the plain lines
    quiet = Output(stdout=io.StringIO(), stderr=io.StringIO(), quiet=True)
    quiet.changes(changes)
    assert quiet.stdout.getvalue() == ""


PLAN = output_mod.PlanView(
    (("backend", "cu124"), ("reason", "chosen by --backend"), ("torch", "2.5.1+cu124")),
    (output_mod.PhaseView("backend", "torch[opt]==2.5.1", "torch and its family from the cu124 index alone",
                          commands=("py -m pip install --index-url https://x/cu124 'torch[opt]==2.5.1'",),
                          files=("/v/.backendpick/constraints.txt: pins torch",)),
     output_mod.PhaseView("rest", "tqdm", "everything else", skip="already satisfied")))


def test_a_plan_in_logs_on_a_terminal_and_without_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same lines everywhere (a terminal adds colour only, never wraps a command), so what is
    printed copies as it is; the dry run is a script's body: everything but commands a comment."""
    plain = Output(stdout=io.StringIO(), stderr=io.StringIO())
    plain.plan(PLAN)
    assert plain.stdout.getvalue().splitlines() == [
        "backend: cu124", "reason: chosen by --backend", "torch: 2.5.1+cu124",
        "phase backend: run: torch[opt]==2.5.1", "  # torch and its family from the cu124 index alone",
        "  $ py -m pip install --index-url https://x/cu124 'torch[opt]==2.5.1'",
        "  will be written: /v/.backendpick/constraints.txt: pins torch",
        "phase rest: skip (already satisfied): tqdm"]
    coloured = Output(stdout=Tty(), stderr=io.StringIO())
    coloured.plan(PLAN)
    assert "\x1b[" in coloured.stdout.getvalue() and "torch[opt]==2.5.1'" in coloured.stdout.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    bare = Output(stdout=Tty(), stderr=io.StringIO())
    bare.plan(PLAN)
    assert bare.stdout.getvalue() == plain.stdout.getvalue()
    dry = Output(stdout=io.StringIO(), stderr=io.StringIO())
    dry.dry_run(PLAN)
    assert [line for line in dry.stdout.getvalue().splitlines() if not line.startswith("# ")] == [
        "py -m pip install --index-url https://x/cu124 'torch[opt]==2.5.1'"]
    assert "# will be written: /v/.backendpick/constraints.txt: pins torch" in dry.stdout.getvalue()


def test_install_header_is_progress_hidden_by_quiet_and_off_stdout_with_json() -> None:
    """install starts as plan does (issue 20 item 5), as progress: -q hides it, --json keeps
    stdout one document."""
    rows = (("backend", "cu124"), ("reason", "chosen by --backend"), ("torch", "2.5.1+cu124"))
    plain = Output(stdout=io.StringIO(), stderr=io.StringIO())
    plain.install_header(rows)
    assert plain.stdout.getvalue() == "backend: cu124\nreason: chosen by --backend\ntorch: 2.5.1+cu124\n"
    quiet = Output(quiet=True, stdout=io.StringIO(), stderr=io.StringIO())
    quiet.install_header(rows)
    assert quiet.stdout.getvalue() == quiet.stderr.getvalue() == ""
    js = Output(json_mode=True, stdout=io.StringIO(), stderr=io.StringIO())
    js.install_header(rows)
    assert js.stdout.getvalue() == "" and js.stderr.getvalue().startswith("backend: cu124\n")
