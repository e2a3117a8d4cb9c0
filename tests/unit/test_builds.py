"""builds.json: what each build package was built or downloaded for (issue 8)."""

from __future__ import annotations

import json

from backendpick.edges import paths
from backendpick.state import build_records
from backendpick.target.installed_torch import TorchInfo

CU124 = TorchInfo("2.5.1+cu124", cuda="12.4", cxx11abi=False)


def test_records_follow_what_is_installed(tmp_path):
    state = tmp_path / "state"
    fa = build_records.from_torch("flash-attn", "2.7.4", CU124, "prebuilt", "https://x/flash_attn.whl")
    mamba = build_records.from_torch("mamba-ssm", "2.2.4", CU124, "source")
    # The installed version is recorded (a prebuilt wheel may carry its local tag).
    written = build_records.update(state, [fa, mamba], {"flash-attn": "2.7.4+cu12torch2.5cxx11abiFALSE", "mamba-ssm": "2.2.4"})
    assert written["flash-attn"].version == "2.7.4+cu12torch2.5cxx11abiFALSE"
    assert build_records.read(state) == written
    data = json.loads(paths.builds_record(state).read_text())
    assert data["packages"]["mamba-ssm"]["cxx11abi"] is False and data["packages"]["mamba-ssm"]["how"] == "source"
    assert not list(state.glob(".builds-*"))  # the temporary file was renamed into place

    # A later install: mamba-ssm was uninstalled, flash-attn replaced by plain pip (another version).
    assert build_records.update(state, [], {"flash-attn": "2.8.0"}) == {}

    build_records.update(state, [fa], {"flash-attn": "2.7.4"})
    build_records.forget(state, ["flash-attn"])  # restore reinstalled it: no record is better than a wrong one
    assert build_records.read(state) == {}


def test_an_unreadable_file_means_no_records(tmp_path):
    paths.builds_record(tmp_path).write_text("{not json")
    assert build_records.read(tmp_path) == {}
    assert build_records.read(tmp_path / "missing") == {}
