"""Pure parts of issue 10: report parsing, pin intersection and conflicts, version choice,
pip.conf merging, channels, nightly dates."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from backendpick.target.installed_stack import _nightly_mismatch
from backendpick.errors import ConfigError
from backendpick.selection import torch_version
from backendpick.selection.resolve import DIRECT, Pin, parse_report
from backendpick.state import environment_pins

FAMILY = ("torch", "torchvision", "torchaudio", "xformers")
MARKERS = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
V = [Version(v) for v in ("2.5.1", "2.6.0", "2.7.1")]


def pin(text: str, by: str = "pkg 1.0") -> Pin:
    return Pin(Requirement(text), by)


def item(name, version, requires=(), extras=None):
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)},
            "requested_extras": extras}


def test_report_pins_from_ordinary_packages_and_their_dependencies() -> None:
    report = {"install": [
        item("vllm", "0.33.0", ["torch==2.5.1", "torchvision==0.20.1", "numpy", "xformers; sys_platform == 'win32'"]),
        item("helper", "1.0", ["torch>=2.5; extra == 'gpu'"], extras=["gpu"]),
        item("torch", "2.5.1"),  # the stub: never a pin of its own
        item("flash-attn", "2.7.4"),
        item("numpy", "1.26.4"),
    ]}
    res = parse_report(report, family=FAMILY, build=("flash-attn",), markers=MARKERS)
    assert [(str(p.requirement), p.by) for p in res.pins] == [
        ("torch==2.5.1", "vllm 0.33.0"), ("torchvision==0.20.1", "vllm 0.33.0"), ("torch>=2.5; extra == \"gpu\"", "helper 1.0")]
    assert set(res.pulled) == {"torch", "torchvision", "flash-attn"}
    assert ("numpy", "1.26.4") in res.dependencies and all(d[0] != "torch" for d in res.dependencies)


def test_report_fallback_source_and_empty_report() -> None:
    res = parse_report({}, family=FAMILY, build=(), markers=MARKERS, source=DIRECT, note="why")
    assert res.fallback and "fallback" in res.describe() and not res.pins


def test_pin_descriptions_name_who_wants_what() -> None:
    assert pin("torch==2.5.1").describe() == "pkg 1.0 requires torch==2.5.1"
    assert pin("torch>=2.7", "you").describe() == "you asked for torch>=2.7"
    assert pin("torch<2.6", "constraint (-c)").describe() == "constraint (-c): torch<2.6"


def test_conflicting_pins_exit_2_naming_both_package_first() -> None:
    with pytest.raises(ConfigError) as e:
        torch_version.check([pin("torch>=2.7", "you"), pin("torch==2.5.1")])
    assert "pkg 1.0 requires torch==2.5.1; you asked for torch>=2.7" in e.value.message
    assert e.value.exit_code == 2


def test_pins_that_hold_pass_and_narrow() -> None:
    pins = [pin("torch>=2.5"), pin("torch<2.7", "you")]
    torch_version.check(pins)
    assert torch_version.allowed(V, pins) == V[:2]
    assert str(torch_version.merged(pins)["torch"]) in ("<2.7,>=2.5", ">=2.5,<2.7")


def test_open_ranges_that_cannot_meet() -> None:
    with pytest.raises(ConfigError):
        torch_version.check([pin("torch>2.6"), pin("torch<2.6.0", "you")])
    torch_version.check([pin("torch>2.6"), pin("torch<2.7", "you")])  # 2.6.x holds


def test_choice_keeps_an_installed_torch_unless_upgrading() -> None:
    pins = [pin("torch<2.7")]
    assert torch_version.choose_version(V, pins, installed="2.5.1", upgrade=False)[0] == Version("2.5.1")
    assert torch_version.choose_version(V, pins, installed="2.5.1", upgrade=True)[0] == Version("2.6.0")
    assert torch_version.choose_version(V, [], installed=None, upgrade=False)[0] == Version("2.7.1")
    assert torch_version.choose_version(V, [], installed=None, upgrade=False, torch_releases=[(2, 6)])[0] == Version("2.6.0")


def test_apply_carries_outside_pins_and_pulled_companions() -> None:
    reqs = [Requirement("torch"), Requirement("pkg")]
    pins = [pin("torch==2.5.1"), pin("torchvision==0.20.1"), pin("torch>=2", "you")]
    out = [str(r) for r in torch_version.apply(reqs, pins, ("torch", "torchvision"), family=FAMILY, torch_exact=None)]
    assert out == ["torch==2.5.1", "pkg", "torchvision==0.20.1"]
    # A constraint alone never adds a package.
    out = torch_version.apply([Requirement("pkg")], [pin("torch<3", "constraint (-c)")], (), family=FAMILY, torch_exact=None)
    assert [str(r) for r in out] == ["pkg"]
    out = torch_version.apply([Requirement("torch")], [], (), family=FAMILY, torch_exact=Version("2.6.0+cu124"))
    assert [str(r) for r in out] == ["torch==2.6.0"]


def test_hold_others_for_upgrade_package() -> None:
    class D:
        def __init__(self, v):
            self.version = v
    installed = {"torch": D("2.5.1+cu124"), "torchvision": D("0.20.1+cu124"), "tqdm": D("4.0")}
    up = torch_version.Upgrade(packages=("tqdm",))
    out = [str(r) for r in torch_version.hold_others([Requirement("torch"), Requirement("tqdm")], installed, up, FAMILY)]
    assert out == ["torch==2.5.1+cu124", "tqdm"]
    up = torch_version.Upgrade(packages=("torch",))
    out = [str(r) for r in torch_version.hold_others([Requirement("torch"), Requirement("torchvision")], installed, up, FAMILY)]
    assert out == ["torch", "torchvision"]  # companions follow torch


def test_channel_templates() -> None:
    base = "https://download.pytorch.org/whl/{backend}"
    assert torch_version.channel_template(base, "stable") == base
    assert torch_version.channel_template(base, "test") == "https://download.pytorch.org/whl/test/{backend}"
    assert torch_version.channel_template(base, "nightly") == "https://download.pytorch.org/whl/nightly/{backend}"


def test_nightly_companions_must_come_from_the_same_night() -> None:
    assert torch_version.nightly_date("2.10.0.dev20251120+cu128") == "20251120"
    assert _nightly_mismatch("2.10.0.dev20251120+cu128", "0.25.0.dev20251120+cu128") is None
    assert "same night" in _nightly_mismatch("2.10.0.dev20251120+cu128", "0.25.0.dev20251119+cu128")
    assert _nightly_mismatch("2.7.1+cu128", "0.22.1+cu128") is None


# -- pip.conf merging ---------------------------------------------------------------------------

PINS = "/venv/backendpick-pins.txt"


def test_merge_into_empty_and_back() -> None:
    merged = environment_pins.merge_conf("", PINS)
    assert f"[global]\nconstraint = {PINS}" in merged and f"[install]\nconstraint = {PINS}" in merged
    assert "backendpick install" in merged.splitlines()[0]
    assert environment_pins.unmerge_conf(merged) == ""
    assert environment_pins.merge_conf(merged, PINS) == merged  # idempotent


def test_merge_keeps_the_users_file_and_their_constraint() -> None:
    user = "# mine\n[global]\ntimeout = 60\nconstraint = /etc/a.txt\n  /etc/b.txt\n[list]\nformat = columns\n"
    merged = environment_pins.merge_conf(user, PINS)
    assert "timeout = 60" in merged and "format = columns" in merged and "# mine" in merged
    assert environment_pins.REPLACED + "/etc/a.txt /etc/b.txt" in merged
    # Read as the user wrote it: backendpick's own runs see their value, not ours.
    assert environment_pins.user_constraints(merged, PINS) == {"global": "/etc/a.txt /etc/b.txt", "install": None}
    restored = environment_pins.unmerge_conf(merged)
    assert "constraint = /etc/a.txt /etc/b.txt" in restored and PINS not in restored and "timeout = 60" in restored


def test_pins_file_includes_the_users_constraints_and_reads_back() -> None:
    text = environment_pins.pins_text(["torch==2.5.1+cu124", "xformers==0.0.28.post3"], ["/etc/c.txt"], backend="cu124")
    assert "-c /etc/c.txt" in text and text.startswith("# Written by backendpick")
    assert environment_pins.read_pins(text) == {"torch": "2.5.1+cu124", "xformers": "0.0.28.post3"}


def test_status_and_write_are_atomic_and_current(tmp_path) -> None:
    class D:
        def __init__(self, name, v):
            self.name, self.version = name, v
    installed = {"torch": D("torch", "2.5.1+cu124")}
    assert not environment_pins.status(tmp_path, installed, ("torch",), {}).in_place
    (tmp_path / "pip.conf").write_text("[global]\ntimeout = 5\n")
    environment_pins.write(tmp_path, environment_pins.pin_lines(installed, ("torch",)),
                           env={"HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path / "none")}, backend="cu124")
    st = environment_pins.status(tmp_path, installed, ("torch",), {})
    assert st.in_place and st.current
    st = environment_pins.status(tmp_path, {"torch": D("torch", "2.6.0+cu124")}, ("torch",), {"PIP_CONSTRAINT": "/x"})
    assert not st.current and st.stale and st.hidden_by == "PIP_CONSTRAINT"
    assert environment_pins.remove(tmp_path)
    assert (tmp_path / "pip.conf").read_text() == "[global]\ntimeout = 5\n"
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_apply_keeps_the_users_words_when_a_package_pin_narrows_nothing() -> None:
    pins = [pin("torch>=2.5", "you"), pin("torch>=2.0.0", "accelerate 1.1.1"), pin("torch<=2.14.1", "constraint file c")]
    out = torch_version.apply([Requirement("torch>=2.5")], pins, ("torch",), family=FAMILY, torch_exact=None, offered=V)
    assert [str(r) for r in out] == ["torch>=2.5"]
    narrowing = [pin("torch>=2.5", "you"), pin("torch<2.7")]
    out = torch_version.apply([Requirement("torch>=2.5")], narrowing, ("torch",), family=FAMILY, torch_exact=None, offered=V)
    assert str(out[0].specifier) in ("<2.7,>=2.5", ">=2.5,<2.7")
