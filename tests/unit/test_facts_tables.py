"""facts.toml as a document: every table says where it comes from and when that was checked,
and tables that describe the same releases agree with each other.

A row added to one table without the rows it implies in another (a PyPI CUDA for a torch
release the release table does not have) fails here, before it reaches a user.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from backendpick.knowledge import facts as facts_mod
from backendpick.knowledge.facts import dotted, read_toml, show
from backendpick.model.backend import CUDA, Backend

PATH = Path(facts_mod.__file__).parent / "data" / "facts.toml"
RAW = read_toml(PATH)
FACTS = facts_mod.load()
TODAY = date(2026, 12, 6)  # no table may claim a check later than this


def _headers() -> list[tuple[str, bool]]:
    """Every table header of the file, in order: (dotted name, is an array of tables)."""
    found = []
    for line in PATH.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$", line)
        if m:
            found.append((m.group(2), m.group(1) == "[["))
    return found


def _at(name: str) -> dict:
    node = RAW
    for part in name.split("."):
        node = node[part]
    return node


TABLES = sorted({name for name, array in _headers() if not array})
ROW_ARRAYS = sorted({name for name, array in _headers() if array})


def test_the_header_reader_sees_the_file():
    assert "cuda.drivers" in TABLES and "torch.arch" in ROW_ARRAYS


@pytest.mark.parametrize("name", TABLES)
def test_every_table_names_its_source_and_date(name):
    table = _at(name)
    assert str(table.get("source", "")).startswith("https://"), f"[{name}] needs source = \"https://...\""
    checked = date.fromisoformat(str(table.get("checked", "")))
    assert checked <= TODAY


@pytest.mark.parametrize("name", ROW_ARRAYS)
def test_row_arrays_take_the_source_of_their_table(name):
    parent = name.rpartition(".")[0]
    assert parent in TABLES, f"[[{name}]] rows need a [{parent}] table with source and checked"


def test_source_and_checked_are_not_rows():
    assert "source" not in FACTS.minor_compat and "checked" not in FACTS.no_build_isolation
    assert all(isinstance(k, tuple) for k in FACTS.releases)


def test_pypi_cuda_has_one_row_per_release():
    assert sorted(FACTS.pypi_cuda) == sorted(FACTS.releases)


@pytest.mark.parametrize("release", sorted(FACTS.pypi_cuda), ids=show)
def test_pypi_cuda_is_one_of_the_release_builds(release):
    cuda = FACTS.pypi_cuda[release]
    assert Backend.cuda(*cuda[:2]) in FACTS.backends_of(release)


def test_abi_cut_over_is_a_release():
    assert FACTS.cxx11abi_from[:2] in FACTS.releases


@pytest.mark.parametrize("release", sorted(FACTS.cxx11abi_early), ids=show)
def test_early_cxx11_builds_are_published_builds(release):
    assert release < FACTS.cxx11abi_from
    offered = {str(b) for b in FACTS.backends_of(release)}
    assert set(FACTS.cxx11abi_early[release]) <= offered


@pytest.mark.parametrize("row", FACTS.arch, ids=lambda r: f"{r.backend}-{show(r.since)}")
def test_arch_rows_start_at_a_release_that_publishes_the_build(row):
    assert row.backend.kind == CUDA
    assert row.backend in FACTS.backends_of(row.since)


def test_tagged_packages_are_backend_packages():
    assert FACTS.tagged <= set(FACTS.backend_packages)


def test_package_tables_agree():
    assert set(FACTS.extensions) <= set(FACTS.no_build_isolation)
    assert set(FACTS.prebuilt) <= set(FACTS.no_build_isolation)


def test_pci_vendor_ids_are_sysfs_hex():
    assert FACTS.pci_vendors
    for vendor in FACTS.pci_vendors.values():
        assert re.fullmatch(r"0x[0-9a-f]{4}", vendor)


def test_pip_source_keys_are_pip_option_names():
    assert {"index-url", "extra-index-url", "find-links", "constraint"} <= FACTS.pip_source_keys
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", k) for k in FACTS.pip_source_keys)


def test_urls_are_urls():
    assert FACTS.pypi_url.startswith("https://") and "{backend}" in FACTS.default_index_url
    assert dotted(show(FACTS.cxx11abi_from)) == FACTS.cxx11abi_from
