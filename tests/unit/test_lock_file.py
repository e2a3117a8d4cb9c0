"""The lock file as a value (model/lock.py): its PEP 751 text read back whole, the same lock
written to the same bytes, and a damaged file named, not a traceback."""

from __future__ import annotations

import pytest

from backendpick.errors import ConfigError
from backendpick.model.lock import Build, Fact, Lock, LockedFile, LockedPackage, parse, to_toml

SHA = "a" * 64


def _lock() -> Lock:
    torch = LockedPackage("torch", "2.6.0+cu124", "backend", "https://download.pytorch.org/whl/cu124", ">=3.9",
                          wheel=LockedFile("torch-2.6.0+cu124-cp311-cp311-linux_x86_64.whl",
                                           "https://download.pytorch.org/whl/cu124/torch-2.6.0%2Bcu124-cp311-cp311-linux_x86_64.whl",
                                           123, SHA))
    flash = LockedPackage("flash-attn", "2.7.4", "build", "https://pypi.org/simple",
                          sdist=LockedFile("flash_attn-2.7.4.tar.gz", "https://files.example/flash_attn-2.7.4.tar.gz", 9, "b" * 64))
    return Lock("cu124", "https://download.pytorch.org/whl/cu124", "3.11",
                {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}, (flash, torch),
                torch="2.6.0+cu124", builds={"flash-attn": Build("source", "torch 2.6.0+cu124", "no prebuilt wheel")},
                driver_minimum="550.54.14", compute_capabilities=("8.0", "9.0"),
                facts=(Fact("facts.toml [cuda.drivers]", "https://docs.nvidia.com/cuda/", "2026-11-30"),))


def test_a_lock_reads_back_whole_and_writes_the_same_bytes() -> None:
    text = to_toml(_lock())
    back = parse(text)
    assert back == _lock()
    assert to_toml(back) == text
    assert back.mismatch({"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}) is None
    assert back.mismatch({"python_version": "3.12", "sys_platform": "linux", "platform_machine": "x86_64"}) == \
        "the lock is for python_version 3.11, the target has 3.12"


@pytest.mark.parametrize("damage, said", [
    (lambda t: t.replace('lock-version = "1.0"', 'lock-version = "2.0"'), "lock-version"),
    (lambda t: t.replace(SHA, "not-a-hash"), "torch's wheel has no sha256 hash"),
    (lambda t: t.replace('torch = "backend"\n', ""), "torch has no phase"),
    (lambda t: t.replace("[tool.backendpick]", "[tool.other]"), "no [tool.backendpick] table"),
    (lambda t: t + "= broken", "is not TOML"),
])
def test_a_damaged_lock_is_named(damage, said) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(damage(to_toml(_lock())), "pylock.cu124.toml")
    assert said in caught.value.message and caught.value.message.startswith("pylock.cu124.toml")
