"""``backend_choice.choose``: a pure function of hand-built hardware, the policy and the offers."""

from __future__ import annotations

import pytest

from backendpick.knowledge import facts as facts_mod
from backendpick.knowledge.facts import dotted, show
from backendpick.model.backend import CPU, CUDA, ROCM, XPU, Backend
from backendpick.model.choice import Decision, Explicit
from backendpick.model.hardware import AMD, APPLE, INTEL, NVIDIA, Accelerator, Hardware
from backendpick.selection.backend_choice import MINOR, STRICT, choose, table_offers

FACTS = facts_mod.load()
OFFERS = table_offers(FACTS)


def b(name: str) -> Backend:
    return Backend.parse(name)


def only(*releases: tuple) -> dict:
    """Offers limited to some torch releases."""
    return {k: [r for r in v if r in releases] for k, v in OFFERS.items() if any(r in releases for r in v)}


def nv(name: str, cap: str | None, driver: str = "550.54.14", index: int = 0) -> Accelerator:
    return Accelerator(NVIDIA, name, driver_version=driver, compute_capability=cap,
                       arch=f"sm_{cap.replace('.', '')}" if cap else None, index=index)


def nvidia(driver: str | None, *gpus: Accelerator, cuda: str | None = "table", source: str = "driver table") -> Hardware:
    if cuda == "table":
        found = FACTS.max_cuda_for_driver(dotted(driver)) if driver else None
        cuda = show(found) if found else None
    return Hardware(accelerators=gpus, nvidia_driver=driver, driver_cuda=cuda,
                    driver_cuda_source=source if cuda else None)


def amd(gfx: str, name: str | None = None, *, ignored: str | None = None, index: int = 0) -> Accelerator:
    return Accelerator(AMD, name or gfx, driver_version="6.2.4", arch=gfx, index=index, ignored=ignored)


T4 = nv("Tesla T4", "7.5", "525.147.05")
A100 = nv("NVIDIA A100-SXM4-80GB", "8.0")
RTX4090 = nv("NVIDIA GeForce RTX 4090", "8.9")
RTX5090 = nv("NVIDIA GeForce RTX 5090", "12.0", "570.133.20")
B200 = nv("NVIDIA B200", "10.0", "575.57.08")
V100 = nv("Tesla V100-PCIE-32GB", "7.0", "570.133.20", index=1)
P4000 = nv("Quadro P4000", "6.1", "560.35.03")
K80 = nv("Tesla K80", None, "470.256.02")


# -- NVIDIA: the driver ceiling ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "driver, gpu, expected",
    [
        ("525.147.05", T4, "cu118"),
        ("535.183.01", A100, "cu121"),
        ("550.127.05", RTX4090, "cu124"),
        ("560.35.03", nv("NVIDIA H100 80GB HBM3", "9.0"), "cu126"),
        ("570.133.20", RTX5090, "cu128"),
        ("575.57.08", B200, "cu129"),
        ("580.95.05", nv("NVIDIA H200", "9.0"), "cu130"),
        ("470.256.02", K80, "cpu"),
    ],
)
def test_newest_build_the_driver_supports(driver, gpu, expected):
    d = choose(nvidia(driver, gpu), FACTS, OFFERS)
    assert d.backend == b(expected)
    assert d.source == "detected"
    if expected != "cpu":
        assert f"{expected} is the newest build that runs here" in d.reason
        assert "minor version compatibility" not in d.reason


def test_strict_on_525_rejects_every_newer_build_with_a_reason():
    d = choose(nvidia("525.147.05", T4), FACTS, OFFERS, policy=STRICT)
    assert d.backend == b("cu118")
    rejected = {r.split(":")[0] for r in d.rejected}
    assert rejected == {"cu121", "cu124", "cu126", "cu128", "cu129", "cu130", "cu132"}
    assert all("supports CUDA 12.0" in r for r in d.rejected)


def test_minor_on_525_takes_the_newest_cu12():
    newest_cu12 = max(k for k in OFFERS if k.kind == CUDA and k.version[0] == 12)
    d = choose(nvidia("525.147.05", T4), FACTS, OFFERS, policy=MINOR)
    assert d.backend == newest_cu12 == b("cu129")
    assert "minor version compatibility" in d.reason
    assert {r.split(":")[0] for r in d.rejected} == {"cu130", "cu132"}


@pytest.mark.parametrize(
    "driver, releases, expected",
    [
        ("525.147.05", [(2, 5)], "cu118"),  # 12.0 < 12.1
        ("530.30.02", [(2, 5)], "cu121"),  # 12.1 driver, cu121 offered
        ("530.30.02", [(2, 6)], "cu118"),  # 2.6 has no cu121, and cu124 needs 12.4
        ("545.23.06", [(2, 5), (2, 6)], "cu121"),
        ("550.54.14", [(2, 6)], "cu124"),
    ],
)
def test_strict_depends_on_what_is_offered(driver, releases, expected):
    gpu = nv("NVIDIA L4", "8.9", driver)
    assert choose(nvidia(driver, gpu), FACTS, only(*releases), policy=STRICT).backend == b(expected)


def test_minor_on_530_with_only_2_6_takes_cu126():
    gpu = nv("NVIDIA L4", "8.9", "530.30.02")
    assert choose(nvidia("530.30.02", gpu), FACTS, only((2, 6)), policy=MINOR).backend == b("cu126")


def test_minor_does_not_cross_a_major():
    d = choose(nvidia("575.57.08", B200), FACTS, OFFERS, policy=MINOR)
    assert d.backend == b("cu129")  # cu130 needs a 580 driver even under minor compatibility


def test_minor_on_470_allows_cu118_for_unknown_architecture():
    assert choose(nvidia("470.256.02", K80), FACTS, OFFERS, policy=MINOR).backend == b("cu118")


def test_banner_cuda_beats_the_table():
    """WSL: a Windows driver number with the banner's CUDA 12.7."""
    hw = nvidia("566.36", nv("NVIDIA GeForce RTX 3080", "8.6", "566.36"), cuda="12.7", source="nvidia-smi")
    d = choose(hw, FACTS, OFFERS)
    assert d.backend == b("cu126")
    assert "CUDA 12.7 (nvidia-smi)" in d.reason


def test_cuda_ceiling_unknown_means_cpu_under_strict():
    hw = nvidia("550.54.14", A100, cuda=None)
    d = choose(hw, FACTS, OFFERS, policy=STRICT)
    assert d.backend == b("cpu")
    assert d.unserved == ("NVIDIA A100-SXM4-80GB",)


def test_driver_without_gpu_list_still_gets_cuda():
    """nvidia-smi hung or failed, the kernel module says 550: every GPU 550 drives is in cu124."""
    d = choose(nvidia("550.54.14"), FACTS, OFFERS)
    assert d.backend == b("cu124")
    assert "model unknown" in d.reason
    assert d.torch_releases is None


# -- NVIDIA: architectures -------------------------------------------------------------------------
def test_blackwell_needs_cu128_or_newer():
    d = choose(nvidia("570.133.20", RTX5090), FACTS, OFFERS)
    assert d.backend == b("cu128")
    assert d.torch_releases is None  # every cu128 release carries sm_120


def test_blackwell_without_cu128_on_offer_is_cpu():
    d = choose(nvidia("570.133.20", RTX5090), FACTS, only((2, 5), (2, 6)))
    assert d.backend == b("cpu")
    assert d.unserved == ("NVIDIA GeForce RTX 5090",)
    assert any(r.startswith("cu126: no torch build on offer carries code for NVIDIA GeForce RTX 5090") for r in d.rejected)


def test_blackwell_on_a_12_6_driver_is_cpu():
    d = choose(nvidia("560.35.03", nv("NVIDIA GeForce RTX 5090", "12.0", "560.35.03")), FACTS, OFFERS)
    assert d.backend == b("cpu")
    assert "no CUDA build on offer runs here" in d.reason


def test_sm89_is_served_by_sm86():
    d = choose(nvidia("550.127.05", RTX4090), FACTS, OFFERS)
    assert d.backend == b("cu124")
    assert not d.rejected or all("carries code" not in r for r in d.rejected)


def test_every_gpu_must_be_served_pascal_keeps_cu126():
    """P4000 (6.1) + A100 (8.0): cu128 and newer drop Pascal, even on a driver that allows them."""
    for driver in ("560.35.03", "570.133.20", "580.95.05"):
        d = choose(nvidia(driver, P4000, nv("NVIDIA A100-PCIE-40GB", "8.0", driver, 1)), FACTS, OFFERS)
        assert d.backend == b("cu126"), driver
    d = choose(nvidia("580.95.05", P4000, A100), FACTS, OFFERS)
    assert any(r.startswith("cu128: no torch build on offer carries code for Quadro P4000") for r in d.rejected)


def test_v100_and_rtx5090_restrict_cu128_to_releases_with_both():
    d = choose(nvidia("570.133.20", V100, RTX5090), FACTS, OFFERS)
    assert d.backend == b("cu128")
    assert d.torch_releases == ((2, 8), (2, 9), (2, 10))
    assert "(torch 2.8 to 2.10 only)" in d.reason
    assert d.to_json()["torch_releases"] == ["2.8", "2.9", "2.10"]


def test_v100_and_rtx5090_with_only_2_11_is_cpu():
    d = choose(nvidia("570.133.20", V100, RTX5090), FACTS, only((2, 11)))
    assert d.backend == b("cpu")
    assert set(d.unserved) == {"Tesla V100-PCIE-32GB", "NVIDIA GeForce RTX 5090"}


def test_gpu_without_compute_capability_counts_as_served():
    d = choose(nvidia("525.147.05", nv("GRID A100D-4C", None, "525.147.05")), FACTS, OFFERS)
    assert d.backend == b("cu118")
    assert d.torch_releases is None


def test_gpus_are_counted_in_the_reason():
    d = choose(nvidia("575.57.08", *[B200] * 8), FACTS, OFFERS)
    assert d.reason.startswith("8x NVIDIA B200 (sm 10.0);")


def test_backends_with_no_releases_are_ignored():
    offers = dict(OFFERS)
    offers[b("cu124")] = []
    d = choose(nvidia("550.127.05", RTX4090), FACTS, offers)
    assert d.backend == b("cu121")


def test_nvidia_wins_over_amd_with_a_warning():
    hw = Hardware(accelerators=(A100, amd("gfx1100")), nvidia_driver="550.54.14", driver_cuda="12.4",
                  driver_cuda_source="driver table")
    d = choose(hw, FACTS, OFFERS)
    assert d.backend == b("cu124")
    assert any("AMD GPUs are also present" in w for w in d.warnings)


# -- AMD -------------------------------------------------------------------------------------------
def amd_hw(*gpus: Accelerator, rocm: str | None = None) -> Hardware:
    return Hardware(accelerators=gpus, rocm_version=rocm)


def test_amd_newest_rocm_supporting_the_gpu_without_runtime_version():
    d = choose(amd_hw(*[amd("gfx942", "AMD Instinct MI300X")] * 8), FACTS, OFFERS)
    assert d.backend == max(k for k in OFFERS if k.kind == ROCM)
    assert d.reason.startswith("8x AMD Instinct MI300X (gfx942)")


def test_amd_integrated_gpu_is_ignored_not_fatal():
    gpus = (amd("gfx1100", "Radeon RX 7900 XTX"),
            amd("gfx1036", "AMD Radeon Graphics", index=1, ignored="integrated graphics"))
    d = choose(amd_hw(*gpus), FACTS, OFFERS)
    assert d.backend.kind == ROCM
    assert "gfx1036" not in d.reason
    assert d.unserved == ()


def test_amd_only_integrated_is_cpu_with_reason():
    d = choose(amd_hw(amd("gfx1036", "AMD Radeon Graphics", ignored="integrated graphics")), FACTS, OFFERS)
    assert d.backend == b("cpu")
    assert "AMD Radeon Graphics: integrated graphics" in d.reason


@pytest.mark.parametrize(
    "gfx, releases, expected",
    [
        ("gfx950", [(2, 9)], "cpu"),  # gfx950 only from rocm7.0
        ("gfx950", [(2, 10)], "rocm7.1"),
        ("gfx1102", [(2, 5)], "cpu"),  # rocm6.2 is older than 6.2.4
        ("gfx1102", [(2, 6)], "rocm6.2.4"),
        ("gfx1151", [(2, 10)], "cpu"),
        ("gfx1151", [(2, 11)], "rocm7.2"),
        ("gfx1010", None, "cpu"),  # not in the table at all
    ],
)
def test_amd_gfx_support(gfx, releases, expected):
    offers = OFFERS if releases is None else only(*releases)
    d = choose(amd_hw(amd(gfx)), FACTS, offers)
    assert d.backend == b(expected)
    if expected == "cpu":
        assert d.unserved == (gfx,)
        assert all(f"does not support {gfx}" in r for r in d.rejected)


def test_amd_every_gpu_must_be_supported():
    gpus = (amd("gfx90a"), amd("gfx950", index=1))
    assert choose(amd_hw(*gpus), FACTS, only((2, 9), (2, 10))).backend == b("rocm7.1")
    d = choose(amd_hw(*gpus), FACTS, only((2, 9)))
    assert d.backend == b("cpu")
    assert d.rejected == ("rocm6.4: does not support gfx950", "rocm6.3: does not support gfx950")
    assert d.unserved == ("gfx90a", "gfx950")


@pytest.mark.parametrize(
    "gfx, runtime, expected",
    [
        ("gfx942", "6.2.4", "rocm6.2.4"),  # amd-mi300x
        ("gfx90a", "6.1.2", "rocm6.1"),  # amd-mi250
        ("gfx90a", "6.4.0", "rocm6.4"),  # amd-rocminfo-missing-enumerator-only
        ("gfx1100", "6.3.1", "rocm6.3"),  # amd-rx7900xtx
        ("gfx942", "7.3.0", "rocm7.2"),  # a runtime newer than every build
    ],
)
def test_amd_build_not_newer_than_the_installed_rocm(gfx, runtime, expected):
    """BUG (design): ``_amd`` ignores the installed ROCm and always takes the newest build.

    The kernel driver that comes with ROCm X.Y supports user space only a release or two
    around it, so a rocm7.2 torch on a ROCm 6.1 host is the AMD analogue of a cu130 wheel on a
    535 driver. The fixtures' READMEs expect the newest build not above the installed runtime.
    """
    d = choose(amd_hw(amd(gfx), rocm=runtime), FACTS, OFFERS)
    assert d.backend == b(expected)


# -- containers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, expected, older",
    [("12.4", "cu124", False), ("12.5", "cu124", True), ("12.8", "cu128", False), ("12.7", "cu126", True),
     ("13.1", "cu130", True), ("11.8", "cu118", False)],
)
def test_container_cuda_version(image, expected, older):
    d = choose(Hardware(container_cuda=image), FACTS, OFFERS)
    assert d.backend == b(expected)
    assert d.source == "container"
    assert "CUDA_VERSION" in d.reason
    assert ("newest older one" in d.reason) is older


@pytest.mark.parametrize("image", ["11.7", "12.0", "10.2"])
def test_container_without_a_fitting_build_is_cpu(image):
    d = choose(Hardware(container_cuda=image), FACTS, OFFERS)
    assert d.backend == b("cpu")
    assert d.source == "container"
    assert d.unserved == (f"CUDA {image} image",)


def test_visible_driver_beats_container_hint():
    hw = Hardware(accelerators=(T4,), nvidia_driver="525.147.05", driver_cuda="12.0",
                  driver_cuda_source="driver table", container_cuda="12.4")
    d = choose(hw, FACTS, OFFERS)
    assert (d.backend, d.source) == (b("cu118"), "detected")


# -- Intel, Apple, nothing -------------------------------------------------------------------------
ARC = Accelerator(INTEL, "Intel Arc A-series (Alchemist) [0x56a0]", arch="0x56a0", index=0)
IRIS = Accelerator(INTEL, "Intel graphics [0x9a49]", arch="0x9a49", ignored="integrated")


def test_intel_discrete_is_xpu():
    d = choose(Hardware(accelerators=(ARC,)), FACTS, OFFERS)
    assert d.backend == Backend(XPU)
    assert "Intel Arc A-series" in d.reason


def test_intel_discrete_without_xpu_offer_is_cpu():
    offers = {k: v for k, v in OFFERS.items() if k.kind != XPU}
    d = choose(Hardware(accelerators=(ARC,)), FACTS, offers)
    assert d.backend == b("cpu")
    assert d.unserved == (ARC.name,)


def test_intel_integrated_is_cpu():
    d = choose(Hardware(accelerators=(IRIS,)), FACTS, OFFERS)
    assert d.backend == b("cpu")
    assert "Intel graphics [0x9a49]: integrated" in d.reason


def test_intel_with_nvidia_takes_cuda():
    d = choose(nvidia("550.127.05", RTX4090, ARC), FACTS, OFFERS)
    assert d.backend == b("cu124")


def test_apple_is_cpu_build_with_mps():
    hw = Hardware(accelerators=(Accelerator(APPLE, "Apple silicon GPU (MPS)"),), platform="darwin", machine="arm64")
    d = choose(hw, FACTS, OFFERS)
    assert d.backend == b("cpu")
    assert "MPS" in d.reason


def test_no_gpu_is_cpu():
    d = choose(Hardware(), FACTS, OFFERS)
    assert (d.backend, d.source, d.reason) == (b("cpu"), "detected", "no supported GPU found")
    assert d.rejected == () and d.unserved == () and d.warnings == ()


# -- explicit choices ------------------------------------------------------------------------------
def test_explicit_wins_with_warning_when_the_driver_is_too_old():
    d = choose(nvidia("525.147.05", T4), FACTS, OFFERS, explicit=Explicit(b("cu128"), "--backend"))
    assert (d.backend, d.source, d.reason) == (b("cu128"), "--backend", "chosen by --backend")
    assert len(d.warnings) == 1
    assert "driver 525.147.05 supports CUDA 12.0; cu128 will not run here" in d.warnings[0]


def test_explicit_under_minor_policy_has_no_driver_warning():
    d = choose(nvidia("525.147.05", T4), FACTS, OFFERS, policy=MINOR, explicit=Explicit(b("cu129"), "BACKENDPICK_BACKEND"))
    assert (d.backend, d.source, d.warnings) == (b("cu129"), "BACKENDPICK_BACKEND", ())


def test_explicit_that_runs_has_no_warning():
    d = choose(nvidia("550.127.05", RTX4090), FACTS, OFFERS, explicit=Explicit(b("cu121"), "pyproject.toml"))
    assert (d.backend, d.warnings) == (b("cu121"), ())


def test_explicit_without_code_for_the_gpu_warns():
    d = choose(nvidia("570.133.20", RTX5090), FACTS, OFFERS, explicit=Explicit(b("cu126"), "--backend"))
    assert d.backend == b("cu126")
    assert d.warnings == ("no cu126 torch build carries code for NVIDIA GeForce RTX 5090 (sm 12.0)",)


def test_explicit_not_on_offer_warns():
    d = choose(Hardware(), FACTS, OFFERS, explicit=Explicit(b("cu92"), "--backend"))
    assert d.backend == b("cu92")
    assert len(d.warnings) == 1 and d.warnings[0].startswith("cu92 is not among the builds on offer (cpu, cu118")


@pytest.mark.parametrize("name", ["cpu", "xpu", "rocm6.2.4", "cu124"])
def test_explicit_on_a_machine_without_gpus_is_quiet(name):
    d = choose(Hardware(), FACTS, OFFERS, explicit=Explicit(b(name), "--backend"))
    assert (d.backend, d.warnings) == (b(name), ())


def test_explicit_cpu_on_a_gpu_machine_is_quiet():
    d = choose(nvidia("580.95.05", A100), FACTS, OFFERS, explicit=Explicit(b("cpu"), "--backend"))
    assert (d.backend, d.warnings) == (b("cpu"), ())


# -- Decision --------------------------------------------------------------------------------------
def test_decision_to_json():
    d = Decision(b("cu128"), "detected", "why", ((2, 8), (2, 10)), ("gpu",), ("cu130: no",), ("w",))
    assert d.to_json() == {
        "backend": "cu128",
        "source": "detected",
        "reason": "why",
        "torch_releases": ["2.8", "2.10"],
        "unserved": ["gpu"],
        "rejected": ["cu130: no"],
    }


def test_table_offers_lists_every_release_per_backend():
    assert OFFERS[b("cu121")] == [(2, 5)]
    assert OFFERS[b("cu128")] == [(2, 7), (2, 8), (2, 9), (2, 10), (2, 11)]
    assert OFFERS[Backend(CPU)] == sorted(FACTS.releases)
