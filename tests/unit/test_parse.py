"""The parsers of backendpick/machine/tool_output.py on real tool output (the hardware fixtures) and on junk.

Every parser answers data or ``ValueError``; anything else escaping would crash ``detect``,
because the probe turns only ``ValueError`` into a warning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backendpick.errors import ConfigError
from backendpick.knowledge.facts import dotted, show
from backendpick.machine import tool_output
from backendpick.model.backend import CPU, CUDA, ROCM, XPU, Backend
from tests.support.fakehw import HARDWARE, read_env_file


def fixture_text(scenario: str, name: str) -> str:
    return (HARDWARE / scenario / name).read_text(encoding="utf-8")


def scenarios_with(name: str) -> list[str]:
    return sorted(p.parent.name for p in HARDWARE.glob(f"*/{name}"))


HTML_ERROR = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><h1>Bad Gateway</h1><p>nginx/1.24.0</p></body></html>\n"
)
BINARY = "\x00\x01\x02\xff\xfe\ufffd\x7fELF\x02\x01\x01\x00"
JUNK = {
    "empty": "",
    "blank": "\n\n  \n",
    "binary": BINARY,
    "html": HTML_ERROR,
    "na": "[N/A]",
}

# -- expected values, read off each scenario's README and raw files --------------------------------
KERNEL_DRIVER = {
    "nvidia-470-k80": "470.256.02",
    "nvidia-525-t4": "525.147.05",
    "nvidia-535-a100x8": "535.183.01",
    "nvidia-550-rtx4090": "550.127.05",
    "nvidia-560-h100-mig": "560.35.03",
    "nvidia-570-rtx5090": "570.133.20",
    "nvidia-575-b200x8": "575.57.08",
    "nvidia-580-h200": "580.95.05",
    "nvidia-hang": "550.54.14",
    "nvidia-mixed-p4000-a100": "560.35.03",
    "nvidia-mixed-v100-rtx5090": "570.133.20",
    # the kernel module, not the newer userspace that NVML reports
    "nvidia-smi-garbage": "535.183.01",
}

# banner -> (driver, CUDA); None: not a banner (an error message), ValueError expected
BANNER = {
    "nvidia-470-k80": ("470.256.02", "11.4"),
    "nvidia-525-t4": ("525.147.05", "12.0"),
    "nvidia-535-a100x8": ("535.183.01", "12.2"),
    "nvidia-550-rtx4090": ("550.127.05", "12.4"),
    "nvidia-560-h100-mig": ("560.35.03", "12.6"),
    "nvidia-570-rtx5090": ("570.133.20", "12.8"),
    "nvidia-575-b200x8": ("575.57.08", "12.9"),
    "nvidia-580-h200": ("580.95.05", "13.0"),
    "nvidia-mixed-p4000-a100": ("560.35.03", "12.6"),
    "nvidia-mixed-v100-rtx5090": ("570.133.20", "12.8"),
    # WSL: the Windows driver number, not the "NVIDIA-SMI 565.77.01" userspace build
    "nvidia-wsl-rtx3080": ("566.36", "12.7"),
    "nvidia-driver-failed": None,
    "nvidia-smi-garbage": None,
}

# query CSV -> [(name, compute capability, memory MiB)]; None: an error message, ValueError expected
QUERY = {
    "nvidia-470-k80": None,  # 'Field "compute_cap" is not a valid field to query.'
    "nvidia-525-t4": [("Tesla T4", "7.5", 15360)],
    "nvidia-535-a100x8": [("NVIDIA A100-SXM4-80GB", "8.0", 81920)] * 8,
    "nvidia-550-rtx4090": [("NVIDIA GeForce RTX 4090", "8.9", 24564)],
    "nvidia-560-h100-mig": [("NVIDIA H100 80GB HBM3", "9.0", 81559)] * 2,  # MIG slices are not GPUs
    "nvidia-570-rtx5090": [("NVIDIA GeForce RTX 5090", "12.0", 32607)],
    "nvidia-575-b200x8": [("NVIDIA B200", "10.0", 183359)] * 8,
    "nvidia-580-h200": [("NVIDIA H200", "9.0", 143771)],
    "nvidia-mixed-p4000-a100": [("Quadro P4000", "6.1", 8192), ("NVIDIA A100-PCIE-40GB", "8.0", 40960)],
    "nvidia-mixed-v100-rtx5090": [("NVIDIA GeForce RTX 5090", "12.0", 32607)],
    "nvidia-wsl-rtx3080": [("NVIDIA GeForce RTX 3080", "8.6", 10240)],
    "nvidia-driver-failed": None,
    "nvidia-smi-garbage": None,
}

# rocminfo -> [(gfx, marketing name)] of GPU agents (CPU agents dropped)
ROCMINFO = {
    "amd-mi250": [("gfx90a", "AMD Instinct MI250X")] * 8,
    "amd-mi300x": [("gfx942", "AMD Instinct MI300X")] * 8,
    "amd-rx7900xtx": [("gfx1100", "Radeon RX 7900 XTX"), ("gfx1036", "AMD Radeon Graphics")],
}
ENUMERATOR = {
    "amd-mi250": ["gfx90a"] * 8,
    "amd-mi300x": ["gfx942"] * 8,
    "amd-rocminfo-missing-enumerator-only": ["gfx90a"],
    "amd-rx7900xtx": ["gfx1100", "gfx1036"],
}
ROCM_VERSION = {
    "amd-mi250": "6.1.2",
    "amd-mi300x": "6.2.4",
    "amd-rocminfo-missing-enumerator-only": "6.4.0",
    "amd-rx7900xtx": "6.3.1",
}
IMAGE_CUDA = {"container-build-cuda124": "12.4", "container-build-cuda128": "12.8"}


def test_expectation_tables_cover_every_fixture():
    """A new fixture file must get an expected value here, not be skipped silently."""
    assert set(scenarios_with("sys-module-nvidia-version")) <= set(KERNEL_DRIVER)
    assert set(scenarios_with("proc-driver-nvidia-version")) <= set(KERNEL_DRIVER)
    assert set(scenarios_with("nvidia-smi.txt")) == set(BANNER)
    assert set(scenarios_with("nvidia-smi-query.csv")) == set(QUERY)
    assert set(scenarios_with("rocminfo.txt")) == set(ROCMINFO)
    assert set(scenarios_with("rocm_agent_enumerator.txt")) == set(ENUMERATOR)
    assert set(scenarios_with("opt-rocm-info-version")) == set(ROCM_VERSION)
    assert set(scenarios_with("env")) == set(IMAGE_CUDA)


# -- NVIDIA driver version files -----------------------------------------------------------------
@pytest.mark.parametrize("scenario", scenarios_with("sys-module-nvidia-version"))
def test_driver_from_sys_fixture(scenario):
    assert tool_output.driver_from_sys(fixture_text(scenario, "sys-module-nvidia-version")) == KERNEL_DRIVER[scenario]


@pytest.mark.parametrize("scenario", scenarios_with("proc-driver-nvidia-version"))
def test_driver_from_proc_fixture(scenario):
    """Proprietary and open-module lines alike (the open one has 'for x86_64' after 'Module')."""
    assert tool_output.driver_from_proc(fixture_text(scenario, "proc-driver-nvidia-version")) == KERNEL_DRIVER[scenario]


@pytest.mark.parametrize("text, expected", [("550.54.14\n", "550.54.14"), ("  570.26 \n", "570.26"), ("580.95.05", "580.95.05")])
def test_driver_from_sys_valid(text, expected):
    assert tool_output.driver_from_sys(text) == expected


@pytest.mark.parametrize(
    "text",
    [*JUNK.values(), "550", "550.", "v550.54.14", "550.54.14 extra", "550.54.14.1.2", "550,54,14"],
    ids=[*JUNK, "major-only", "trailing-dot", "prefixed", "two-tokens", "five-parts", "commas"],
)
def test_driver_from_sys_junk(text):
    with pytest.raises(ValueError):
        tool_output.driver_from_sys(text)


def test_driver_from_proc_aarch64_open_module():
    text = (
        "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.124.06  Release Build  "
        "(dvs-builder@U16-I3-B13-2-1)  Wed Feb 26 01:07:42 UTC 2025\n"
    )
    assert tool_output.driver_from_proc(text) == "570.124.06"


def test_driver_from_proc_version_at_end_of_line():
    assert tool_output.driver_from_proc("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14") == "550.54.14"


@pytest.mark.parametrize(
    "text",
    [
        *JUNK.values(),
        # only the GCC line: its "12.3.0" must not pass for a driver version
        "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n",
        # truncated before the version
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module",
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  [N/A]  Thu Feb 22 01:44:30 UTC 2024\n",
        # the version on a line that is not the NVRM line
        "NVRM:\n  550.54.14  \n",
    ],
    ids=[*JUNK, "gcc-line-only", "truncated", "na-version", "not-on-nvrm-line"],
)
def test_driver_from_proc_junk(text):
    with pytest.raises(ValueError):
        tool_output.driver_from_proc(text)


# -- nvidia-smi ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", sorted(QUERY))
def test_smi_query_fixture(scenario):
    text = fixture_text(scenario, "nvidia-smi-query.csv")
    expected = QUERY[scenario]
    if expected is None:
        with pytest.raises(ValueError):
            tool_output.smi_query(text)
        return
    gpus = tool_output.smi_query(text)
    assert [(g.name, g.compute_capability, g.memory_mib) for g in gpus] == expected
    assert [g.index for g in gpus] == list(range(len(expected)))
    assert {g.driver_version for g in gpus} == {BANNER[scenario][0]}
    assert all(g.uuid and g.uuid.startswith("GPU-") for g in gpus)


def test_smi_query_without_compute_cap_fields():
    """Drivers before ~510 are asked without compute_cap (the 470 K80 fixture)."""
    text = fixture_text("nvidia-470-k80", "nvidia-smi-query-nocap.csv")
    gpus = tool_output.smi_query(text, tool_output.QUERY_FIELDS_NO_CAP)
    assert [(g.index, g.name, g.driver_version, g.compute_capability, g.memory_mib) for g in gpus] == [
        (0, "Tesla K80", "470.256.02", None, 11441),
        (1, "Tesla K80", "470.256.02", None, 11441),
    ]


def test_smi_query_na_cells_become_none():
    """Virtual GPUs print [N/A] for compute_cap and memory; that is no reason to fail."""
    (gpu,) = tool_output.smi_query("0, GRID A100D-4C, 535.129.03, [N/A], [N/A], [N/A]\n")
    assert gpu.compute_capability is None
    assert gpu.memory_mib is None
    assert gpu.uuid == "[N/A]"  # kept as printed; only its absence is None


def test_smi_query_name_with_comma_is_quoted():
    (gpu,) = tool_output.smi_query('0, "NVIDIA RTX 6000, Ada Generation", 550.54.14, 8.9, GPU-1, 49140\n')
    assert gpu.name == "NVIDIA RTX 6000, Ada Generation"


def test_smi_query_crlf_line_ends():
    gpus = tool_output.smi_query("0, Tesla T4, 525.147.05, 7.5, GPU-1, 15360\r\n1, Tesla T4, 525.147.05, 7.5, GPU-2, 15360\r\n")
    assert [g.index for g in gpus] == [0, 1]


@pytest.mark.parametrize(
    "text",
    [
        *JUNK.values(),
        # truncated mid-row: 5 of 6 fields
        "0, Tesla T4, 525.147.05, 7.5, GPU-2382d326-db5b",
        # wrong field count
        "0, Tesla T4, 525.147.05, 7.5, GPU-1, 15360, extra\n",
        "0, Tesla T4\n",
        # someone forgot noheader
        "index, name, driver_version, compute_cap, uuid, memory.total [MiB]\n",
        # None-like values where numbers must be
        "[N/A], Tesla T4, 525.147.05, 7.5, GPU-1, 15360\n",
        "0, Tesla T4, [N/A], 7.5, GPU-1, 15360\n",
        # a good row followed by a broken one
        "0, Tesla T4, 525.147.05, 7.5, GPU-1, 15360\n1, Tesla T4\n",
        'Field "compute_cap" is not a valid field to query.\n',
        "No devices were found\n",
    ],
    ids=[*JUNK, "truncated", "seven-fields", "two-fields", "header", "na-index", "na-driver", "second-row-broken",
         "invalid-field", "no-devices"],
)
def test_smi_query_junk(text):
    with pytest.raises(ValueError):
        tool_output.smi_query(text)


def test_smi_query_stray_carriage_return_is_value_error():
    """BUG: a lone CR inside a row makes csv raise ``_csv.Error``, which is not a ValueError.

    The probe only catches ValueError, so such nvidia-smi output crashes ``detect`` with a
    traceback instead of becoming a warning. (On Python 3.9/3.10 a NUL byte does the same.)
    """
    with pytest.raises(ValueError):
        tool_output.smi_query("0, Tesla T4\r, 525.147.05, 7.5, GPU-1, 15360\n")


@pytest.mark.parametrize("scenario", sorted(BANNER))
def test_smi_banner_fixture(scenario):
    """All four banner layouts: 79 columns (470/525), 89 (530-545), 91 (550+), the 580 rule line."""
    text = fixture_text(scenario, "nvidia-smi.txt")
    if BANNER[scenario] is None:
        with pytest.raises(ValueError):
            tool_output.smi_banner(text)
    else:
        assert tool_output.smi_banner(text) == BANNER[scenario]


def test_smi_banner_partial():
    assert tool_output.smi_banner("| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: N/A |") == ("580.95.05", None)
    assert tool_output.smi_banner("CUDA Version: 12.4") == (None, "12.4")


@pytest.mark.parametrize(
    "text",
    [*JUNK.values(), "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
     "| NVIDIA-SMI 550.54.14   Driver Version: [N/A]   CUDA Version: [N/A] |"],
    ids=[*JUNK, "driver-failed", "na-versions"],
)
def test_smi_banner_junk(text):
    with pytest.raises(ValueError):
        tool_output.smi_banner(text)


# -- AMD -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", sorted(ROCMINFO))
def test_rocminfo_fixture(scenario):
    """BUG (all three fixtures): CPU agents are named "AMD EPYC 9654 96-Core Processor", with spaces.

    ``tool_output.rocminfo`` looks for ``Name:\\s*(\\S+)\\s*$``, finds no single-token name in a CPU
    agent's block and raises "an agent block without Name or Device Type" on every real rocminfo.
    """
    agents = tool_output.rocminfo(fixture_text(scenario, "rocminfo.txt"))
    assert [(a.gfx, a.marketing_name) for a in agents] == ROCMINFO[scenario]
    assert {a.device_type for a in agents} == {"GPU"}


def _agent(n: int, name: str, kind: str, marketing: str | None = None) -> str:
    lines = ["*******", f"Agent {n}", "*******", f"  Name:                    {name}"]
    if marketing is not None:
        lines.append(f"  Marketing Name:          {marketing}")
    lines.append(f"  Device Type:             {kind}")
    return "\n".join(lines) + "\n"


def test_rocminfo_minimal_synthetic():
    text = "ROCk module is loaded\n" + _agent(1, "cpu0", "CPU") + _agent(2, "gfx1100", "GPU", "Radeon RX 7900 XTX")
    assert tool_output.rocminfo(text) == [tool_output.RocmAgent("gfx1100", "Radeon RX 7900 XTX", "GPU")]


def test_rocminfo_isa_name_is_not_the_agent_name():
    """Later ``Name:`` lines (ISA, pools) belong to the agent's sub-blocks."""
    text = _agent(1, "gfx942", "GPU", "AMD Instinct MI300X") + "  ISA Info:\n    ISA 1\n      Name:  amdgcn-amd-amdhsa--gfx942:sramecc+:xnack-\n"
    assert [a.gfx for a in tool_output.rocminfo(text)] == ["gfx942"]


def test_rocminfo_no_gpu_agents_is_empty():
    assert tool_output.rocminfo(_agent(1, "cpu0", "CPU")) == []


@pytest.mark.parametrize(
    "text",
    [
        *JUNK.values(),
        "ROCk module is NOT loaded, possibly no GPU devices\n",
        _agent(1, "gfx90a", "GPU").replace("  Device Type:             GPU\n", ""),
        _agent(1, "AMD-Radeon", "GPU"),
        # truncated right after the header
        "*******\nAgent 1\n*******\n",
    ],
    ids=[*JUNK, "rock-not-loaded", "no-device-type", "gpu-not-gfx", "truncated"],
)
def test_rocminfo_junk(text):
    with pytest.raises(ValueError):
        tool_output.rocminfo(text)


@pytest.mark.parametrize("scenario", sorted(ENUMERATOR))
def test_agent_enumerator_fixture(scenario):
    """gfx000 is the CPU agent and is dropped."""
    assert tool_output.agent_enumerator(fixture_text(scenario, "rocm_agent_enumerator.txt")) == ENUMERATOR[scenario]


def test_agent_enumerator_cpu_only_and_empty():
    assert tool_output.agent_enumerator("gfx000\n") == []
    assert tool_output.agent_enumerator("") == []


@pytest.mark.parametrize(
    "text",
    [BINARY, HTML_ERROR, "[N/A]", "gfx000\nhsa api call failure\n", "GFX90A\n", "gfx90a:xnack-\n"],
    ids=["binary", "html", "na", "error-line", "upper-case", "feature-suffix"],
)
def test_agent_enumerator_junk(text):
    with pytest.raises(ValueError):
        tool_output.agent_enumerator(text)


@pytest.mark.parametrize("scenario", sorted(ROCM_VERSION))
def test_rocm_version_fixture(scenario):
    assert tool_output.rocm_version(fixture_text(scenario, "opt-rocm-info-version")) == ROCM_VERSION[scenario]


@pytest.mark.parametrize("text", [*JUNK.values(), "6", "rocm-6.2.4", "six.two"], ids=[*JUNK, "major-only", "prefixed", "words"])
def test_rocm_version_junk(text):
    with pytest.raises(ValueError):
        tool_output.rocm_version(text)


# -- containers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", sorted(IMAGE_CUDA))
def test_cuda_image_version_fixture(scenario):
    env = read_env_file(HARDWARE / scenario / "env")
    assert tool_output.cuda_image_version(env["CUDA_VERSION"]) == IMAGE_CUDA[scenario]


@pytest.mark.parametrize("value, expected", [("12.4.1", "12.4"), ("12.8", "12.8"), (" 11.8.0 ", "11.8"), ("13.0.1.2", "13.0")])
def test_cuda_image_version_valid(value, expected):
    assert tool_output.cuda_image_version(value) == expected


@pytest.mark.parametrize("value", ["", "12", "12.4.1-cudnn", "cuda12.4", "[N/A]", HTML_ERROR, BINARY])
def test_cuda_image_version_junk(value):
    with pytest.raises(ValueError):
        tool_output.cuda_image_version(value)


# -- properties ------------------------------------------------------------------------------------
CSVISH = st.text(alphabet=st.sampled_from(list('0123456789.,"[]NA/ \t\r\n\x00GPU-Tesla')), max_size=120)
NVRMISH = st.text(alphabet=st.sampled_from(list("NVRM version: 0123456789.\t\r\nx_UNIX")), max_size=120)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), CSVISH))
@example("0\r1")  # the lone-CR case of test_smi_query_stray_carriage_return_is_value_error
def test_smi_query_raises_only_value_error(text):
    try:
        gpus = tool_output.smi_query(text)
    except ValueError:
        return
    for gpu in gpus:
        dotted(gpu.driver_version)  # a parsed driver is always a dotted version
        assert gpu.compute_capability is None or len(dotted(gpu.compute_capability)) == 2


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), NVRMISH))
def test_driver_from_proc_raises_only_value_error(text):
    try:
        version = tool_output.driver_from_proc(text)
    except ValueError:
        return
    assert version in text
    dotted(version)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_other_parsers_raise_only_value_error(text):
    for parser in (tool_output.driver_from_sys, tool_output.smi_banner, tool_output.rocminfo, tool_output.agent_enumerator,
                   tool_output.rocm_version, tool_output.cuda_image_version):
        try:
            parser(text)
        except ValueError:
            pass


OF_KIND = {
    CPU: st.just(Backend(CPU)),
    XPU: st.just(Backend(XPU)),
    CUDA: st.builds(lambda major, minor: Backend(CUDA, (major, minor)), st.integers(0, 99), st.integers(0, 9)),
    ROCM: st.builds(lambda parts: Backend(ROCM, tuple(parts)), st.lists(st.integers(0, 99), min_size=2, max_size=3)),
}
BACKENDS = st.one_of(*OF_KIND.values())


@given(BACKENDS)
def test_backend_name_round_trip(b):
    assert Backend.parse(b.name) == b
    assert Backend.parse(b.name.upper()) == b
    assert Backend.parse(f"  {b.name}\n") == b
    assert str(b) == b.name


@given(st.sampled_from(sorted(OF_KIND)).flatmap(lambda k: st.tuples(OF_KIND[k], OF_KIND[k], OF_KIND[k])))
def test_backend_order_is_total_within_a_kind(abc):
    a, b, c = abc
    assert sum([a < b, a == b, a > b]) == 1
    assert (a <= b) == (a < b or a == b)
    assert (a >= b) == (a > b or a == b)
    if a <= b <= c:
        assert a <= c
    assert (a < b) == (a.version < b.version)
    assert sorted([a, b, c]) == sorted([a, b, c], key=lambda x: x.version)


@given(BACKENDS, BACKENDS)
def test_backend_order_across_kinds_raises(a, b):
    if a.kind == b.kind:
        return
    for compare in (lambda: a < b, lambda: a <= b, lambda: a > b, lambda: a >= b, lambda: sorted([a, b])):
        with pytest.raises(TypeError):
            compare()
    assert a != b


@pytest.mark.parametrize(
    "text", ["", "cuda", "cu", "cu1", "cu1240", "cu12.4", "rocm", "rocm6", "rocm6.2.4.1", "rocm-6.2", "metal", "auto"]
)
def test_backend_parse_rejects(text):
    with pytest.raises(ConfigError):
        Backend.parse(text)


@pytest.mark.parametrize(
    "name, kind, version, text",
    [("cu118", CUDA, (11, 8), "11.8"), ("cu130", CUDA, (13, 0), "13.0"), ("rocm6.2.4", ROCM, (6, 2, 4), "6.2.4"),
     ("rocm7.1", ROCM, (7, 1), "7.1"), ("CPU", CPU, (), ""), ("xpu", XPU, (), "")],
)
def test_backend_parse_known(name, kind, version, text):
    b = Backend.parse(name)
    assert (b.kind, b.version, b.version_text) == (kind, version, text)
    assert b.is_gpu == (kind != CPU)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
def test_dotted_show_round_trip(parts):
    version = tuple(parts)
    assert dotted(show(version)) == version


@pytest.mark.parametrize("text", ["", "a.b", "1..2", "1.2-3", "v1"])
def test_dotted_rejects(text):
    with pytest.raises(ValueError):
        dotted(text)


def test_fixture_dir_is_present():
    assert Path(HARDWARE).is_dir()
