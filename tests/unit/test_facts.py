"""The packaged facts table, tested from its own rows (as light-the-torch tests its driver table).

A new row in ``backendpick/knowledge/data/facts.toml`` is covered here without new test code; the
hand-written cases pin the rules the table encodes (same-major cubin compatibility, Blackwell
only from cu128, Volta dropped from cu128 in 2.11).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from backendpick.errors import ConfigError
from backendpick.knowledge import facts as facts_mod
from backendpick.knowledge.facts import build, dotted, read_toml, show, sort_key
from backendpick.model.backend import CPU, CUDA, ROCM, XPU, Backend

FACTS = facts_mod.load()
RAW = read_toml(Path(facts_mod.__file__).parent / "data" / "facts.toml")

CUDA_ROWS = list(FACTS.cuda_drivers)
ALL_OFFERED = sorted({(release, b) for release, backends in FACTS.releases.items() for b in backends},
                     key=lambda rb: (rb[0], sort_key(rb[1])))


def below(version: tuple[int, ...]) -> tuple[int, ...]:
    """One patch level below ``version``: 570.26 -> 570.25, 520.61.05 -> 520.61.4."""
    *head, last = version
    if last > 0:
        return (*head, last - 1)
    return (*below(tuple(head)), 999)


def row_id(row) -> str:
    return f"cuda{show(row[0])}-driver{show(row[1])}"


def cu(name: str) -> Backend:
    return Backend.parse(name)


# -- NVIDIA driver table ---------------------------------------------------------------------------
@pytest.mark.parametrize("cuda, minimum", CUDA_ROWS, ids=[row_id(r) for r in CUDA_ROWS])
def test_minimum_driver_maps_to_its_cuda(cuda, minimum):
    assert FACTS.max_cuda_for_driver(minimum) == cuda


@pytest.mark.parametrize("cuda, minimum", CUDA_ROWS, ids=[row_id(r) for r in CUDA_ROWS])
def test_one_patch_below_minimum_does_not(cuda, minimum):
    got = FACTS.max_cuda_for_driver(below(minimum))
    assert got != cuda
    earlier = [c for c, _ in CUDA_ROWS if c < cuda]
    assert got == (earlier[-1] if earlier else None)


@pytest.mark.parametrize("cuda, minimum", CUDA_ROWS, ids=[row_id(r) for r in CUDA_ROWS])
def test_strict_policy_allows_exactly_up_to_the_table(cuda, minimum):
    driver_cuda = FACTS.max_cuda_for_driver(minimum)
    for other, _ in CUDA_ROWS:
        allowed = FACTS.cuda_allowed(other, driver_cuda=driver_cuda, driver=minimum, policy="strict")
        assert allowed == (other <= cuda), show(other)


def test_driver_table_is_monotonic():
    toolkits = [c for c, _ in CUDA_ROWS]
    drivers = [d for _, d in CUDA_ROWS]
    assert toolkits == sorted(toolkits) and len(set(toolkits)) == len(toolkits)
    assert drivers == sorted(drivers) and len(set(drivers)) == len(drivers)


def test_driver_below_the_table_has_no_cuda():
    assert FACTS.max_cuda_for_driver(dotted("470.256.02")) is None
    assert FACTS.max_cuda_for_driver(dotted("450.80.02")) is None


def test_driver_version_compares_numerically_not_as_text():
    # "570.133.20" < "570.26" as strings; as numbers it is newer
    assert FACTS.max_cuda_for_driver(dotted("570.133.20")) == (12, 8)
    assert FACTS.max_cuda_for_driver(dotted("525.147.05")) == (12, 0)
    assert FACTS.max_cuda_for_driver(dotted("575.57.08")) == (12, 9)


def test_driver_beyond_table():
    newest = CUDA_ROWS[-1][1]
    assert not FACTS.driver_beyond_table(newest)
    assert not FACTS.driver_beyond_table((newest[0], 999))
    assert FACTS.driver_beyond_table((newest[0] + 1, 0))
    assert not FACTS.driver_beyond_table(dotted("470.256.02"))


@pytest.mark.parametrize("major, minimum", sorted(FACTS.minor_compat.items()))
def test_minor_compat(major, minimum):
    rows = [c for c, _ in CUDA_ROWS if c[0] == major]
    newest_of_major = max(rows) if rows else (major, 9)
    assert FACTS.cuda_allowed(newest_of_major, driver_cuda=None, driver=minimum, policy="minor")
    assert not FACTS.cuda_allowed(newest_of_major, driver_cuda=None, driver=below(minimum), policy="minor")
    assert not FACTS.cuda_allowed(newest_of_major, driver_cuda=None, driver=minimum, policy="strict")


def test_minor_compat_12_matches_the_12_0_row():
    assert FACTS.minor_compat[12] == dict(CUDA_ROWS)[(12, 0)]


def test_cuda_allowed_without_driver():
    assert not FACTS.cuda_allowed((11, 8), driver_cuda=None, driver=None, policy="minor")
    assert not FACTS.cuda_allowed((11, 8), driver_cuda=None, driver=None, policy="strict")
    assert not FACTS.cuda_allowed((14, 0), driver_cuda=None, driver=(999, 0), policy="minor")  # no such major


# -- architectures ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "torch, backend, cap, served",
    [
        ((2, 5), "cu124", (8, 9), True),  # no build lists 8.9: the 8.6 cubin runs on it (same major)
        ((2, 5), "cu118", (3, 7), True),  # the last release with Kepler
        ((2, 6), "cu118", (3, 7), False),
        ((2, 6), "cu126", (12, 0), False),  # a 9.0 build does not serve Blackwell
        ((2, 6), "cu126", (9, 0), True),
        ((2, 7), "cu128", (12, 0), True),  # Blackwell from cu128 on torch 2.7
        ((2, 7), "cu128", (10, 0), True),
        ((2, 7), "cu128", (7, 0), False),  # 2.7 cu128 starts at 7.5
        ((2, 8), "cu128", (7, 0), True),
        ((2, 10), "cu128", (7, 0), True),
        ((2, 11), "cu128", (7, 0), False),  # 2.11 drops Volta from cu128
        ((2, 11), "cu128", (12, 0), True),
        ((2, 8), "cu128", (6, 1), False),  # Pascal only in cu126 from 2.8
        ((2, 8), "cu126", (6, 1), True),
        ((2, 8), "cu129", (10, 0), True),  # "10.0" compares as a number, above "9.0"
        ((2, 8), "cu129", (12, 1), True),
        ((2, 9), "cu130", (7, 0), False),  # CUDA 13 drops 5.x-7.0
        ((2, 9), "cu130", (7, 5), True),
        ((2, 12), "cu132", (9, 0), True),
        ((2, 13), "cu126", (5, 2), True),  # rows carry forward to later releases
        ((2, 5), "cu121", (8, 7), True),
        ((2, 5), "cu121", (8, 5), True),  # 8.0 serves 8.5
    ],
)
def test_serves_cap(torch, backend, cap, served):
    assert FACTS.serves_cap(torch, cu(backend), cap) is served


def test_eight_zero_build_serves_eight_nine_but_not_nine():
    raw = copy.deepcopy(RAW)
    raw["torch"]["arch"] = [{"since": "2.5", "backend": "cu124", "caps": ["8.0"]}]
    f = build(raw)
    assert f.serves_cap((2, 5), cu("cu124"), (8, 9)) is True
    assert f.serves_cap((2, 5), cu("cu124"), (8, 0)) is True
    assert f.serves_cap((2, 5), cu("cu124"), (7, 5)) is False
    assert f.serves_cap((2, 5), cu("cu124"), (9, 0)) is False


def test_serves_cap_unknown_row_is_none():
    assert FACTS.caps_for((2, 4), cu("cu118")) is None
    assert FACTS.serves_cap((2, 4), cu("cu118"), (8, 0)) is None
    assert FACTS.serves_cap((2, 5), Backend(CPU), (8, 0)) is None


def test_newest_row_wins():
    assert FACTS.caps_for((2, 7, 1), cu("cu118")) == FACTS.caps_for((2, 6), cu("cu118"))
    assert (7, 0) in FACTS.caps_for((2, 10), cu("cu128"))
    assert (7, 0) not in FACTS.caps_for((2, 11), cu("cu128"))


@pytest.mark.parametrize(
    "release, backend",
    [(r, b) for r, b in ALL_OFFERED if b.kind == CUDA],
    ids=[f"{show(r)}-{b}" for r, b in ALL_OFFERED if b.kind == CUDA],
)
def test_every_offered_cuda_build_has_an_arch_row(release, backend):
    """Without a row, architecture checks silently pass; every published build should have one."""
    assert FACTS.caps_for(release, backend), f"no [[torch.arch]] row covers torch {show(release)} {backend}"


# -- releases --------------------------------------------------------------------------------------
@pytest.mark.parametrize("release, backend", ALL_OFFERED, ids=[f"{show(r)}-{b}" for r, b in ALL_OFFERED])
def test_every_release_backend_parses_and_round_trips(release, backend):
    assert Backend.parse(backend.name) == backend
    assert Backend.parse(str(backend)) == backend
    assert backend in FACTS.backends_of(release)
    assert backend in FACTS.all_backends()


@pytest.mark.parametrize("release", sorted(FACTS.releases), ids=show)
def test_every_release_has_cpu_and_pypi_cuda(release):
    backends = FACTS.backends_of(release)
    assert Backend(CPU) in backends
    assert release in FACTS.pypi_cuda
    assert len(set(backends)) == len(backends)
    if release >= (2, 5):
        assert Backend(XPU) in backends


def test_backends_of_ignores_patch():
    assert FACTS.backends_of((2, 7, 1)) == FACTS.backends_of((2, 7))
    assert FACTS.backends_of((1, 13)) == ()


def test_all_backends_sorted_for_display():
    names = [b.name for b in FACTS.all_backends()]
    assert names[0] == "cpu"
    kinds = [Backend.parse(n).kind for n in names]
    assert kinds == sorted(kinds, key=lambda k: {CPU: 0, CUDA: 1, ROCM: 2, XPU: 3}[k])


def test_newest_release():
    assert FACTS.newest_release() == max(FACTS.releases)


# -- AMD -------------------------------------------------------------------------------------------
ROCM_OFFERED = sorted({b for _, b in ALL_OFFERED if b.kind == ROCM})


@pytest.mark.parametrize("gfx", sorted(FACTS.rocm_gfx))
@pytest.mark.parametrize("backend", ROCM_OFFERED, ids=str)
def test_rocm_supports_follows_first_and_last(gfx, backend):
    first, last = FACTS.rocm_gfx[gfx]
    expected = backend.version >= first and (last is None or backend.version <= last)
    assert FACTS.rocm_supports(gfx, backend) is expected


@pytest.mark.parametrize(
    "gfx, backend, supported",
    [("gfx942", "rocm6.1", True), ("gfx1101", "rocm6.1", True), ("gfx1102", "rocm6.2", False),
     ("gfx1102", "rocm6.2.4", True), ("gfx950", "rocm6.4", False), ("gfx950", "rocm7.0", True),
     ("gfx1151", "rocm7.1", False), ("gfx1151", "rocm7.2", True), ("gfx1010", "rocm7.2", None)],
)
def test_rocm_supports_cases(gfx, backend, supported):
    assert FACTS.rocm_supports(gfx, Backend.parse(backend)) is supported


def test_integrated_gfx_are_not_rocm_targets():
    assert FACTS.integrated_gfx
    assert not FACTS.integrated_gfx & set(FACTS.rocm_gfx)


# -- Intel -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lo, hi, family", FACTS.intel_discrete, ids=lambda v: v if isinstance(v, str) else hex(v))
def test_intel_ranges_well_formed(lo, hi, family):
    assert lo <= hi
    others = [(a, b) for a, b, f in FACTS.intel_discrete if f != family]
    assert all(hi < a or lo > b for a, b in others), "ranges overlap"


@pytest.mark.parametrize("device, family", [(0x56A0, "Arc A-series"), (0x0BD5, "Max"), (0x56C0, "Flex"),
                                            (0xE20B, "Arc B-series"), (0x9A49, None), (0x4F90, None)])
def test_intel_device_ids(device, family):
    found = [f for lo, hi, f in FACTS.intel_discrete if lo <= device <= hi]
    if family is None:
        assert found == []
    else:
        assert len(found) == 1 and family in found[0]


# -- the rest of the table -------------------------------------------------------------------------
def test_packages_and_index():
    assert "{backend}" in FACTS.default_index_url
    assert {"torch", "torchvision", "torchaudio", "xformers", "triton"} <= set(FACTS.backend_packages)
    assert "flash-attn" in FACTS.no_build_isolation
    assert all(reqs for reqs in FACTS.no_build_isolation.values())


def test_build_rejects_a_bad_backend_name():
    raw = copy.deepcopy(RAW)
    raw["torch"]["releases"]["2.5"]["cuda"].append("cuda12.4")
    with pytest.raises(ConfigError, match="not a backend name"):
        build(raw)


def test_load_is_cached():
    assert facts_mod.load() is facts_mod.load()
