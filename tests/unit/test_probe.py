"""``probe.probe`` against fake machines built from the hardware fixtures.

These run the fake ``nvidia-smi``/``rocminfo`` scripts of ``tests/support/fakehw.py`` (and
nothing else: PATH holds only the fake tools), so the module opts out of the no-subprocess rule.
"""

from __future__ import annotations

import time

import pytest

from backendpick.knowledge import facts as facts_mod
from backendpick.machine.probe import DEFAULT_TIMEOUT, ProbeSettings, probe
from backendpick.model.hardware import AMD, APPLE, INTEL, NVIDIA
from tests.support.fakehw import SCENARIOS, FakeMachine, wait_gone

pytestmark = pytest.mark.allow_subprocess

FACTS = facts_mod.load()

# accelerators: (vendor, name, compute capability or arch, ignored?)
# warn: substrings, one per expected warning (the count must match too); optional: may appear
EXPECTED = {
    "amd-mi250": dict(accel=[(AMD, "AMD Instinct MI250X", "gfx90a", False)] * 8, rocm="6.1.2"),
    "amd-mi300x": dict(accel=[(AMD, "AMD Instinct MI300X", "gfx942", False)] * 8, rocm="6.2.4"),
    "amd-rocminfo-missing-enumerator-only": dict(accel=[(AMD, "gfx90a", "gfx90a", False)], rocm="6.4.0"),
    "amd-rx7900xtx": dict(
        accel=[(AMD, "Radeon RX 7900 XTX", "gfx1100", False), (AMD, "AMD Radeon Graphics", "gfx1036", True)],
        rocm="6.3.1",
    ),
    "container-build-cuda124": dict(container="12.4"),
    "container-build-cuda128": dict(container="12.8"),
    "intel-arc-a770": dict(accel=[(INTEL, "Intel Arc A-series (Alchemist) [0x56a0]", "0x56a0", False)]),
    "intel-igpu-only": dict(accel=[(INTEL, "Intel graphics [0x9a49]", "0x9a49", True)]),
    "intel-max-1550": dict(accel=[(INTEL, "Intel Data Center GPU Max (Ponte Vecchio) [0x0bd5]", "0x0bd5", False)] * 2),
    "none": dict(),
    "nvidia-470-k80": dict(
        # Older than every row of the driver table: the banner gives the CUDA ceiling.
        accel=[(NVIDIA, "Tesla K80", None, False)] * 2, driver="470.256.02", cuda="11.4",
        cuda_source="nvidia-smi", warn=["cannot report compute capability"],
    ),
    "nvidia-525-t4": dict(accel=[(NVIDIA, "Tesla T4", "7.5", False)], driver="525.147.05", cuda="12.0"),
    "nvidia-535-a100x8": dict(accel=[(NVIDIA, "NVIDIA A100-SXM4-80GB", "8.0", False)] * 8, driver="535.183.01", cuda="12.2"),
    "nvidia-550-rtx4090": dict(accel=[(NVIDIA, "NVIDIA GeForce RTX 4090", "8.9", False)], driver="550.127.05", cuda="12.4"),
    "nvidia-560-h100-mig": dict(accel=[(NVIDIA, "NVIDIA H100 80GB HBM3", "9.0", False)] * 2, driver="560.35.03", cuda="12.6"),
    "nvidia-570-rtx5090": dict(accel=[(NVIDIA, "NVIDIA GeForce RTX 5090", "12.0", False)], driver="570.133.20", cuda="12.8"),
    "nvidia-575-b200x8": dict(accel=[(NVIDIA, "NVIDIA B200", "10.0", False)] * 8, driver="575.57.08", cuda="12.9"),
    "nvidia-580-h200": dict(accel=[(NVIDIA, "NVIDIA H200", "9.0", False)], driver="580.95.05", cuda="13.0"),
    "nvidia-driver-failed": dict(warn=["nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"]),
    # kernel module 535 (never NVML's 550.54); CUDA from the driver table although nvidia-smi failed
    "nvidia-smi-garbage": dict(driver="535.183.01", cuda="12.2", warn=["Driver/library version mismatch"]),
    "nvidia-hang": dict(driver="550.54.14", cuda="12.4", warn=["nvidia-smi did not answer within 1s"]),
    "nvidia-mixed-p4000-a100": dict(
        accel=[(NVIDIA, "Quadro P4000", "6.1", False), (NVIDIA, "NVIDIA A100-PCIE-40GB", "8.0", False)],
        driver="560.35.03", cuda="12.6",
    ),
    "nvidia-mixed-v100-rtx5090": dict(
        accel=[(NVIDIA, "NVIDIA GeForce RTX 5090", "12.0", False)], driver="570.133.20", cuda="12.8",
        warn=["2 NVIDIA GPUs on the PCI bus, but the driver shows only 1"],  # the undriven V100
    ),
    "nvidia-wsl-rtx3080": dict(
        accel=[(NVIDIA, "NVIDIA GeForce RTX 3080", "8.6", False)], driver="566.36", cuda="12.7",
        cuda_source="nvidia-smi", wsl=True,
    ),
}


def test_every_scenario_has_an_expectation():
    assert set(SCENARIOS) == set(EXPECTED)


def run_probe(fake: FakeMachine, **overrides):
    return probe(FACTS, fake.settings(**overrides))


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Each scenario probed once per module (the hang scenario costs its timeout every time)."""
    cache = {}

    def get(scenario: str):
        if scenario not in cache:
            cache[scenario] = run_probe(FakeMachine.from_scenario(tmp_path_factory.mktemp(scenario), scenario))
        return cache[scenario]

    return get


def accel_view(hw):
    return [(a.vendor, a.name, a.compute_capability or a.arch, a.ignored is not None) for a in hw.accelerators]


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_scenario_accelerators(scenario, probed):
    hw = probed(scenario)
    assert accel_view(hw) == EXPECTED[scenario].get("accel", [])


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_scenario_versions(scenario, probed):
    exp = EXPECTED[scenario]
    hw = probed(scenario)
    cuda = exp.get("cuda")
    got = (hw.nvidia_driver, hw.driver_cuda, hw.driver_cuda_source, hw.rocm_version, hw.container_cuda, hw.wsl)
    want = (exp.get("driver"), cuda, cuda and exp.get("cuda_source", "driver table"), exp.get("rocm"),
            exp.get("container"), exp.get("wsl", False))
    assert got == want


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_scenario_warnings(scenario, probed):
    exp = EXPECTED[scenario]
    hw = probed(scenario)
    remaining = list(hw.warnings)
    for want in exp.get("warn", []):
        hits = [w for w in remaining if want in w]
        assert hits, f"no warning containing {want!r} in {hw.warnings}"
        remaining.remove(hits[0])
    remaining = [w for w in remaining if not any(o in w for o in exp.get("optional", []))]
    assert remaining == [], "unexpected warnings"


@pytest.mark.parametrize("scenario", [s for s in sorted(EXPECTED) if s.startswith("nvidia")])
def test_nvidia_details(scenario, probed):
    hw = probed(scenario)
    nvidia = [a for a in hw.accelerators if a.vendor == NVIDIA]
    assert [a.index for a in nvidia] == list(range(len(nvidia)))
    for a in nvidia:
        assert a.driver_version == hw.nvidia_driver
        assert a.memory_mib and a.memory_mib > 1000
        if a.compute_capability:
            assert a.arch == "sm_" + a.compute_capability.replace(".", "")
        else:
            assert a.arch is None


# -- how nvidia-smi is used ------------------------------------------------------------------------
QUERY_CAP = "--query-gpu=index,name,driver_version,compute_cap,uuid,memory.total --format=csv,noheader,nounits"
QUERY_NOCAP = "--query-gpu=index,name,driver_version,uuid,memory.total --format=csv,noheader,nounits"


def test_table_answers_so_one_nvidia_smi_run(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-525-t4")
    run_probe(m)
    assert m.calls("nvidia-smi") == [QUERY_CAP]


def test_470_retries_without_compute_cap(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-470-k80")
    hw = run_probe(m)
    assert m.calls("nvidia-smi") == [QUERY_CAP, QUERY_NOCAP, ""]
    assert [a.memory_mib for a in hw.accelerators] == [11441, 11441]


def test_wsl_finds_nvidia_smi_below_the_root_and_uses_the_banner(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-wsl-rtx3080")
    assert not (m.bin / "nvidia-smi").exists()
    assert (m.root / "usr/lib/wsl/lib/nvidia-smi").is_file()
    hw = run_probe(m)
    assert hw.wsl
    assert m.calls("nvidia-smi") == [QUERY_CAP, ""]
    assert (hw.driver_cuda, hw.driver_cuda_source) == ("12.7", "nvidia-smi")


def test_wsl_detected_from_the_directory_alone(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-wsl-rtx3080")
    (m.root / "proc/sys/kernel/osrelease").unlink()
    assert run_probe(m).wsl


def test_driver_newer_than_the_table_asks_the_banner(tmp_path):
    banner = "| NVIDIA-SMI 590.44.01   Driver Version: 590.44.01   CUDA Version: 13.1 |\n"
    m = FakeMachine(tmp_path).driver("590.44.01").nvidia_smi(
        query="0, NVIDIA H200, 590.44.01, 9.0, GPU-1, 143771\n", banner=banner)
    hw = run_probe(m)
    assert (hw.driver_cuda, hw.driver_cuda_source) == ("13.1", "nvidia-smi")
    assert len(m.calls("nvidia-smi")) == 2


def test_driver_from_smi_when_no_kernel_files(tmp_path):
    m = FakeMachine(tmp_path).nvidia_smi(query="0, Tesla T4, 525.147.05, 7.5, GPU-1, 15360\n",
                                         banner="Driver Version: 525.147.05   CUDA Version: 12.0\n")
    hw = run_probe(m)
    assert hw.nvidia_driver == "525.147.05"
    assert (hw.driver_cuda, hw.driver_cuda_source) == ("12.0", "driver table")
    assert m.calls("nvidia-smi") == [QUERY_CAP]


def test_proc_only_open_module(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-570-rtx5090")
    (m.root / "sys/module/nvidia/version").unlink()
    assert run_probe(m).nvidia_driver == "570.133.20"


def test_garbage_sys_file_falls_back_to_proc_with_a_warning(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-550-rtx4090").sys_driver("\x00\xff garbage\n")
    hw = run_probe(m)
    assert hw.nvidia_driver == "550.127.05"
    assert [w for w in hw.warnings if w.startswith("/sys/module/nvidia/version:")]


def test_driver_loaded_but_no_nvidia_smi(tmp_path):
    m = FakeMachine(tmp_path).driver("550.54.14")
    hw = run_probe(m)
    assert hw.accelerators == ()
    assert (hw.nvidia_driver, hw.driver_cuda, hw.driver_cuda_source) == ("550.54.14", "12.4", "driver table")
    assert hw.warnings == ("NVIDIA driver 550.54.14 is loaded but nvidia-smi was not found; GPU models unknown",)


def test_hang_is_cut_off_and_its_children_killed(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-hang")
    assert m.timeout == 1.0
    start = time.monotonic()
    hw = run_probe(m)
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"probe took {elapsed:.1f}s"
    assert any("did not answer" in w for w in hw.warnings)
    children = m.hang_children()
    assert children, "the fake nvidia-smi did not start its child"
    assert wait_gone(children) == [], "the background child of nvidia-smi survived the timeout"
    assert hw.accelerators == ()


def test_failing_driver_gives_the_nvidia_message_and_no_gpus(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-driver-failed")
    hw = run_probe(m)
    assert hw.accelerators == () and hw.nvidia_driver is None
    (warning,) = hw.warnings
    assert warning.startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate")


def test_nvidia_card_without_driver_gets_a_hint(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-driver-failed").pci_devices(
        ["0000:00:02.0 0x030000 0x8086 0x9a49", "0000:01:00.0 0x030000 0x10de 0x2684", "0000:01:00.1 0x040300 0x10de 0x22ba"]
    )
    hw = run_probe(m)
    hints = [w for w in hw.warnings if "on the PCI bus, but no working driver" in w]
    assert hints == [
        "1 NVIDIA GPU(s) on the PCI bus, but no working driver was found; install the NVIDIA driver, or pass --backend to choose"
    ]


def test_nvidia_card_and_nothing_else(tmp_path):
    m = FakeMachine(tmp_path).pci_device("0000:21:00.0", "0x030200", "0x10de", "0x1db6")
    hw = run_probe(m)
    assert hw.accelerators == ()
    assert len(hw.warnings) == 1 and "no working driver" in hw.warnings[0]


def test_garbage_query_output_is_a_warning(tmp_path):
    m = FakeMachine(tmp_path).driver("550.54.14").nvidia_smi(query="<html><body>proxy error</body></html>\n")
    hw = run_probe(m)
    assert hw.accelerators == ()
    assert any("nvidia-smi printed output backendpick does not understand" in w for w in hw.warnings)


def test_binary_query_output_is_a_warning(tmp_path):
    m = FakeMachine(tmp_path).driver("550.54.14").nvidia_smi(query=b"\x7fELF\x00\xff\xfe\n")
    hw = run_probe(m)
    assert hw.accelerators == ()
    assert any("does not understand" in w for w in hw.warnings)


def test_carriage_return_in_query_output_is_a_warning_not_a_crash(tmp_path):
    """BUG: ``_csv.Error`` escapes ``tool_output.smi_query``; probe() must never raise."""
    m = FakeMachine(tmp_path).driver("550.54.14").nvidia_smi(query="0, Tesla T4\r, 525.147.05, 7.5, GPU-1, 15360\n")
    hw = run_probe(m)
    assert any("does not understand" in w for w in hw.warnings)


def test_missing_compute_capability_is_a_warning(tmp_path):
    m = FakeMachine(tmp_path).driver("535.129.03").nvidia_smi(query="0, GRID A100D-4C, 535.129.03, [N/A], [N/A], 4096\n")
    hw = run_probe(m)
    (gpu,) = hw.accelerators
    assert (gpu.compute_capability, gpu.arch, gpu.memory_mib) == (None, None, 4096)
    assert hw.warnings == ("GPU 0 (GRID A100D-4C): compute capability not reported",)


# -- AMD -------------------------------------------------------------------------------------------
def test_rocm_tools_in_opt_rocm_bin_are_found(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "amd-rocminfo-missing-enumerator-only", rocm_on_path=False)
    assert not (m.bin / "rocm_agent_enumerator").exists()
    hw = run_probe(m)
    assert [a.arch for a in hw.accelerators] == ["gfx90a"]
    assert m.calls("rocm_agent_enumerator") == [""]


def test_enumerator_not_run_when_rocminfo_answers(tmp_path):
    m = FakeMachine(tmp_path).rocminfo(
        "*******\nAgent 1\n*******\n  Name:  gfx1100\n  Marketing Name:  Radeon RX 7900 XTX\n  Device Type:  GPU\n"
    ).agent_enumerator("gfx000\ngfx1100\n")
    hw = run_probe(m)
    assert [(a.name, a.arch, a.index) for a in hw.accelerators] == [("Radeon RX 7900 XTX", "gfx1100", 0)]
    assert m.calls("rocm_agent_enumerator") == []
    assert hw.warnings == ()


def test_failing_rocminfo_falls_back_to_the_enumerator(tmp_path):
    m = FakeMachine(tmp_path).rocminfo("ROCk module is NOT loaded, possibly no GPU devices\n", exit_code=1)
    m.agent_enumerator("gfx000\ngfx942\n").rocm_version("6.2.4-120\n")
    hw = run_probe(m)
    assert [(a.vendor, a.arch, a.driver_version) for a in hw.accelerators] == [(AMD, "gfx942", "6.2.4")]
    assert hw.warnings == ("rocminfo failed (exit 1): ROCk module is NOT loaded, possibly no GPU devices",)


def test_bad_rocm_version_file_is_a_warning(tmp_path):
    m = FakeMachine(tmp_path).agent_enumerator("gfx90a\n").rocm_version("unknown\n")
    hw = run_probe(m)
    assert hw.rocm_version is None
    assert [a.arch for a in hw.accelerators] == ["gfx90a"]
    assert hw.warnings == ("/opt/rocm/.info/version: unexpected ROCm version 'unknown'",)


def test_garbage_enumerator_is_a_warning(tmp_path):
    # An AMD card on the PCI bus: the tool that should have listed it failed.
    m = FakeMachine(tmp_path).agent_enumerator("hsa api call failure at line 42\n")
    hw = run_probe(m.pci_device("0000:03:00.0", "0x030000", "0x1002", "0x744c"))
    assert hw.accelerators == ()
    assert any("rocm_agent_enumerator printed output backendpick does not understand" in w for w in hw.warnings)


def test_rocm_tools_failing_on_an_nvidia_machine_are_no_warning(tmp_path):
    """rocminfo installed where no AMD GPU is (an NVIDIA machine): its failure and the
    enumerator's are not warnings (issue 20: two of them closed every run). Where the machine
    shows an AMD GPU (/dev/kfd, the amdgpu module, an AMD display device), they still are."""
    m = FakeMachine(tmp_path).driver("550.127.05").nvidia_smi(
        query="0, NVIDIA A100-SXM4-80GB, 550.127.05, 8.0, GPU-1, 81920\n")
    m.rocminfo("ROCk module is NOT loaded, possibly no GPU devices\n", exit_code=1)
    m.agent_enumerator("", exit_code=1)
    hw = run_probe(m)
    assert [a.vendor for a in hw.accelerators] == [NVIDIA]
    assert hw.warnings == ()
    (m.root / "dev").mkdir(parents=True, exist_ok=True)
    (m.root / "dev/kfd").write_text("")
    assert run_probe(m).warnings == ("rocminfo failed (exit 1): ROCk module is NOT loaded, possibly no GPU devices",
                                     "rocm_agent_enumerator failed (exit 1): no output")


# -- other sources ---------------------------------------------------------------------------------
def test_apple_silicon(tmp_path):
    hw = run_probe(FakeMachine(tmp_path), platform="darwin", machine="arm64")
    assert [(a.vendor, a.name) for a in hw.accelerators] == [(APPLE, "Apple silicon GPU (MPS)")]
    assert (hw.platform, hw.machine) == ("darwin", "arm64")


def test_intel_mac_has_no_mps(tmp_path):
    assert run_probe(FakeMachine(tmp_path), platform="darwin", machine="x86_64").accelerators == ()


def test_bad_cuda_version_env_is_a_warning(tmp_path):
    hw = run_probe(FakeMachine(tmp_path).set_env({"CUDA_VERSION": "latest"}))
    assert hw.container_cuda is None
    assert hw.warnings == ("ignoring CUDA_VERSION='latest' is not a version",)


def test_real_cuda_version_does_not_leak_in(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VERSION", "12.4.1")
    assert run_probe(FakeMachine(tmp_path)).container_cuda is None


def test_unreadable_pci_entries_are_skipped(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "intel-arc-a770")
    (m.root / "sys/bus/pci/devices/0000:00:00.0/device").unlink()
    (m.root / "sys/bus/pci/devices/0000:09:00.0").mkdir()
    m.pci_device("0000:0a:00.0", "0x030000", "0x8086", "nonsense")
    hw = run_probe(m)
    assert [a.arch for a in hw.accelerators] == ["0x56a0"]


# -- settings from the environment -----------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, expected",
    [(None, DEFAULT_TIMEOUT), ("2.5", 2.5), ("0", 0.1), ("-3", 0.1), ("soon", DEFAULT_TIMEOUT), ("", DEFAULT_TIMEOUT)],
)
def test_settings_timeout_from_env(raw, expected):
    env = {} if raw is None else {"BACKENDPICK_PROBE_TIMEOUT": raw}
    assert ProbeSettings.from_env(env).timeout == expected


def test_settings_root_from_env(tmp_path):
    assert str(ProbeSettings.from_env({"BACKENDPICK_PROBE_ROOT": str(tmp_path)}).root) == str(tmp_path)
    assert str(ProbeSettings.from_env({}).root) == "/"


def test_fake_machine_env_is_hermetic(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "container-build-cuda124")
    env = m.env
    assert env["PATH"].split(":") == [str(m.bin), str(m.sysbin)]
    assert env["CUDA_VERSION"] == "12.4.1"
    assert env["BACKENDPICK_PROBE_ROOT"] == str(m.root)
    assert env["HOME"] == str(m.home)
    assert sorted(p.name for p in m.sysbin.iterdir()) == ["cat", "sh", "sleep"]


# -- *_VISIBLE_DEVICES -----------------------------------------------------------------------------
def test_cuda_visible_devices_hides_gpus_by_uuid(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-mixed-p4000-a100")
    hw = run_probe(m.set_env({"CUDA_VISIBLE_DEVICES": "GPU-06162320"}))
    assert [(a.name, a.ignored) for a in hw.accelerators] == [
        ("Quadro P4000", "hidden by CUDA_VISIBLE_DEVICES='GPU-06162320'"), ("NVIDIA A100-PCIE-40GB", None)]
    assert [a.name for a in hw.by_vendor(NVIDIA)] == ["NVIDIA A100-PCIE-40GB"]
    assert not any("CUDA_DEVICE_ORDER" in w for w in hw.warnings)


def test_cuda_visible_devices_index_on_mixed_models_warns_about_order(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "nvidia-mixed-p4000-a100")
    hw = run_probe(m.set_env({"CUDA_VISIBLE_DEVICES": "1"}))
    assert [a.name for a in hw.by_vendor(NVIDIA)] == ["NVIDIA A100-PCIE-40GB"]
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in w for w in hw.warnings)
    ordered = run_probe(FakeMachine.from_scenario(tmp_path / "b", "nvidia-mixed-p4000-a100").set_env(
        {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}))
    assert not any("CUDA_DEVICE_ORDER" in w for w in ordered.warnings)


def test_hip_visible_devices_hides_amd_gpus(tmp_path):
    m = FakeMachine.from_scenario(tmp_path, "amd-mi300x")
    hw = run_probe(m.set_env({"HIP_VISIBLE_DEVICES": "-1"}))
    assert len(hw.accelerators) == 8 and hw.by_vendor(AMD) == []
    hw = run_probe(FakeMachine.from_scenario(tmp_path / "b", "amd-mi300x").set_env({"ROCR_VISIBLE_DEVICES": "2,5"}))
    assert [a.index for a in hw.by_vendor(AMD)] == [2, 5]
