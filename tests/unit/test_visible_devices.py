"""``*_VISIBLE_DEVICES``: the GPUs torch will use are the GPUs backendpick chooses for. Pure."""

from __future__ import annotations

import pytest

from backendpick.knowledge import facts as facts_mod
from backendpick.machine.visible_devices import hide, visible_amd, visible_devices, visible_nvidia
from backendpick.model.backend import Backend
from backendpick.model.hardware import AMD, NVIDIA, Accelerator, Hardware
from backendpick.selection.backend_choice import choose, table_offers

UUIDS = ["GPU-41ac5863-a62d-10aa-ed8a-ce2060ca02a6", "GPU-06162320-1d3b-4278-3464-197de5d63b6b",
         "MIG-7d1c2a9e-0000-0000-0000-000000000000"]


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),  # unset: every GPU
        ("", []),  # empty: none (torch.cuda.device_count() == 0)
        ("-1", []),
        ("0", [0]),
        ("1,0", [1, 0]),
        (" 1 , 0 ", [1, 0]),
        ("1,7,0", [1]),  # the list ends at the first index that names no device
        ("0,-1,1", [0]),
        ("0,0", [0]),  # a repeated entry ends it too
        ("GPU-06162320-1d3b-4278-3464-197de5d63b6b", [1]),
        ("GPU-0616", [1]),  # a unique prefix
        ("gpu-41AC", [0]),
        ("41ac5863", []),  # a UUID without its GPU- prefix names no device
        ("GPU-", []),  # ambiguous: matches every GPU
        ("MIG-7d1c", [2]),
        ("GPU-ffff,0", []),
        ("abc", []),
    ],
)
def test_visible_devices(value, expected):
    assert visible_devices(value, UUIDS) == expected


def _gpu(name: str, cap: str, index: int, vendor: str = NVIDIA) -> Accelerator:
    return Accelerator(vendor, name, driver_version="575.51.03", compute_capability=cap, index=index)


def test_hidden_gpus_stay_listed_but_ignored():
    gpus = [_gpu("Tesla V100", "7.0", 0), _gpu("RTX 5090", "12.0", 1)]
    shown = hide(gpus, visible_nvidia({"CUDA_VISIBLE_DEVICES": "1"}, UUIDS[:2]))
    assert [g.ignored for g in shown] == ["hidden by CUDA_VISIBLE_DEVICES='1'", None]
    assert hide(gpus, visible_nvidia({}, UUIDS[:2])) == gpus


def test_already_ignored_reason_is_kept():
    igpu = Accelerator(AMD, "AMD Radeon Graphics", arch="gfx1036", index=1, ignored="integrated graphics")
    shown = hide([igpu], (([]), "HIP_VISIBLE_DEVICES=''"))
    assert shown[0].ignored == "integrated graphics"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"HIP_VISIBLE_DEVICES": "2"}, [2]),
        ({"ROCR_VISIBLE_DEVICES": "1,3"}, [1, 3]),
        # HIP numbers what ROCr left visible: its 1 is ROCr's 3.
        ({"ROCR_VISIBLE_DEVICES": "1,3", "HIP_VISIBLE_DEVICES": "1"}, [3]),
        ({"CUDA_VISIBLE_DEVICES": "0"}, [0]),  # HIP reads CUDA_VISIBLE_DEVICES too
        ({"HIP_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "0"}, [1]),  # HIP's own wins
        ({"HIP_VISIBLE_DEVICES": "-1"}, []),
        ({"ROCR_VISIBLE_DEVICES": ""}, []),
    ],
)
def test_visible_amd(env, expected):
    assert visible_amd(env, 4)[0] == expected


def test_choice_follows_the_visible_gpu():
    """A Pascal P4000 (sm_61, dropped in cu128) next to an RTX 5090 (sm_120, needs cu128+): no
    backend serves both, but with only the 5090 visible cu128+ does, with only the P4000 cu126."""
    facts = facts_mod.load()
    gpus = [_gpu("Quadro P4000", "6.1", 0), _gpu("NVIDIA GeForce RTX 5090", "12.0", 1)]

    def decide(value: str | None):
        env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
        hw = Hardware(tuple(hide(gpus, visible_nvidia(env, UUIDS[:2]))), nvidia_driver="575.51.03",
                      driver_cuda="12.9", driver_cuda_source="nvidia-smi")
        return choose(hw, facts, table_offers(facts), policy="strict")

    assert decide(None).unserved
    only_5090 = decide("1")
    assert not only_5090.unserved and only_5090.backend >= Backend.cuda(12, 8)
    only_v100 = decide("0")
    assert not only_v100.unserved and only_v100.backend < Backend.cuda(12, 8)
    # No GPU visible: no architecture constrains the choice; the driver still sets the CUDA
    # ceiling (the environment outlives this shell's variable, as the installed-GPU rule says).
    none_visible = decide("")
    assert not none_visible.unserved and none_visible.backend == Backend.cuda(12, 9)
