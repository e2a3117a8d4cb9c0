"""CI runs the README's test command verbatim (.ci/run), so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _test_command(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.match(r"\s*python -m pip install -e .*pytest", line)]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = _test_command((ROOT / "README.md").read_text(encoding="utf-8"))
    ci = _test_command((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert len(readme) == 1 and ci == readme, (readme, ci)
    # The suite runs on every core, a test file per worker (module fixtures built once), and CI's
    # log names the slowest steps.
    assert "-n auto --dist loadfile" in readme[0] and "--durations=25" in readme[0]
