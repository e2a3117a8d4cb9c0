"""The one resolution run by uv (selection/uv_resolve.py, issue 22 item 3): uv's lock and the
packages' metadata read into the report pip would have written, so the same pins and the same
"who pinned torch" come out; uv's failures in its own words; the command. Pure: no uv runs."""

from __future__ import annotations

import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from backendpick.checks.dependencies import _PIP_CHECK
from backendpick.inputs.pip_config import PipConfig
from backendpick.selection import uv_resolve
from backendpick.selection.resolve import parse_report
from backendpick.selection.uv_resolve import Locked

FAMILY = ("torch", "torchvision", "xformers")
BUILD = ("flash-attn",)
MARKERS = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
           "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _meta(name: str, version: str, *requires: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)


def test_the_report_from_uvs_lock_names_who_pinned_torch_as_pips_would():
    # vllm-like: torch pinned one level down, and only under an extra the request asks for
    # through another package; a pin under an extra nobody asks for does not count.
    locked = [Locked("serve-app", "1.0", "w"), Locked("Engine_Pkg", "0.6.3", "w"), Locked("torch", "2.5.1+cu124", "s"),
              Locked("torchvision", "0.20.1+cu124", "s"), Locked("filelock", "3.16.1", "w")]
    metadata = {
        "serve-app": _meta("serve-app", "1.0", "engine-pkg[gpu]>=0.6", "filelock"),
        "engine-pkg": _meta("Engine_Pkg", "0.6.3", "filelock", "torch==2.5.1; extra == 'gpu'",
                            "torchvision==0.20.1; extra == 'gpu'", "torch==2.4.0; extra == 'old'",
                            "xformers; sys_platform == 'win32'"),
        "filelock": _meta("filelock", "3.16.1"),
    }
    report = uv_resolve.report(locked, metadata, [Requirement("serve-app")], MARKERS)
    items = {i["metadata"]["name"]: i for i in report["install"]}
    assert items["Engine_Pkg"]["requested_extras"] == ["gpu"] and items["serve-app"]["requested_extras"] == []
    res = parse_report(report, family=FAMILY, build=BUILD, markers=MARKERS)
    assert [p.describe() for p in res.pins] == ["Engine_Pkg 0.6.3 requires torch==2.5.1",
                                                "Engine_Pkg 0.6.3 requires torchvision==0.20.1"]
    assert set(res.pulled) == {"torch", "torchvision"}
    assert ("filelock", "3.16.1") in res.dependencies and ("torch", "2.5.1+cu124") not in res.dependencies


def test_extras_asked_by_the_request_itself_count():
    locked = [Locked("pinner", "2.0", "w")]
    metadata = {"pinner": _meta("pinner", "2.0", "torch>=2.6; extra == 'cuda'")}
    res = parse_report(uv_resolve.report(locked, metadata, [Requirement("pinner[cuda]")], MARKERS),
                       family=FAMILY, build=BUILD, markers=MARKERS)
    assert [p.describe() for p in res.pins] == ["pinner 2.0 requires torch>=2.6"]


def test_read_lock_keeps_what_holds_on_the_target_and_finds_each_wheel(tmp_path: Path):
    lock = tmp_path / "pylock.toml"
    lock.write_text('''lock-version = "1.0"
created-by = "uv"

[[packages]]
name = "accelerate"
version = "1.15.0"
wheels = [{ url = "https://pkgs.corp/files/accelerate-1.15.0-py3-none-any.whl", hashes = { sha256 = "97ea" } }]

[[packages]]
name = "pywin32"
version = "311"
marker = "sys_platform == 'win32'"
wheels = [{ url = "https://pkgs.corp/files/pywin32-311-cp311-cp311-win_amd64.whl", hashes = { sha256 = "11" } }]

[[packages]]
name = "tqdm"
version = "4.70.1"
archive = { path = "wheels/tqdm-4.70.1-py3-none-any.whl", hashes = { sha256 = "c293" } }
''')
    assert uv_resolve.read_lock(lock, MARKERS) == [
        Locked("accelerate", "1.15.0", "https://pkgs.corp/files/accelerate-1.15.0-py3-none-any.whl", "97ea"),
        Locked("tqdm", "4.70.1", str(tmp_path / "wheels" / "tqdm-4.70.1-py3-none-any.whl"), "c293"),
    ]
    assert uv_resolve.read_lock(tmp_path / "missing.toml", MARKERS) == []


def test_a_local_wheels_metadata_is_read_from_the_wheel(tmp_path: Path):
    wheel = tmp_path / "pins_torch-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pins_torch-1.0.dist-info/METADATA", _meta("pins-torch", "1.0", "torch==2.5.1"))
    assert "Requires-Dist: torch==2.5.1" in uv_resolve.wheel_metadata(None, wheel.as_uri())
    assert "Requires-Dist: torch==2.5.1" in uv_resolve.wheel_metadata(None, str(wheel))
    assert uv_resolve.wheel_metadata(None, str(tmp_path / "gone.whl")) is None


# uv 0.13's words (uv pip compile --only-binary :all:), as it prints them.
NO_WHEEL = """error: No solution found when resolving dependencies
  cause: Because flash-attn==2.7.4 has no usable wheels and only flash-attn==2.7.4 is available, we can conclude that all versions of flash-attn cannot be used.
         And because attn-helper==1.0 depends on flash-attn, we can conclude that attn-helper==1.0 cannot be used.

hint: Wheels are required for `flash-attn` because building from source is disabled for all packages (i.e., with `--no-build`)
"""
CONFLICT = """error: No solution found when resolving dependencies
  cause: Because pins-old-torch==1.0 depends on torch==2.5.1 and pins-torch-26==1.0 depends on torch==2.6.0, we can conclude that pins-old-torch==1.0 and pins-torch-26==1.0 are incompatible.
         And because you require pins-old-torch and pins-torch-26, we can conclude that your requirements are unsatisfiable.
"""


def test_uv_saying_a_build_package_has_no_wheel_routes_it_and_says_so():
    names, note = uv_resolve.stopped_names(NO_WHEEL, FAMILY, BUILD)
    assert names == ("flash-attn",)
    assert "not fully resolved" in note and "no wheel of flash-attn" in note and "when uv asks" in note


def test_uvs_reason_is_one_line_with_its_cause_and_credentials_hidden():
    why = uv_resolve.reason(CONFLICT)
    assert why.startswith("No solution found when resolving dependencies: Because pins-old-torch==1.0 depends on torch==2.5.1")
    assert "\n" not in why and len(why) <= 300
    hidden = uv_resolve.reason("error: Failed to fetch: `https://bob:s3cret@pkgs.corp/simple/x/`\n")
    assert "s3cret" not in hidden and "***" in hidden
    assert uv_resolve.stopped_names(CONFLICT, FAMILY, BUILD)[0] == ()


def test_compile_argv_passes_the_pip_configuration_and_builds_nothing():
    config = PipConfig({"index-url": "https://pkgs.corp/simple", "extra-index-url": "https://extra.corp/simple",
                        "trusted-host": "pkgs.corp", "constraint": "/etc/pip-constraints.txt"})
    argv = uv_resolve.compile_argv("uv", "/venv/bin/python", config, options=["--pre", "--only-binary", "foo"],
                                   stubs="/tmp/stubs", constraints="/tmp/c.txt", out="/tmp/pylock.toml",
                                   requirements="/tmp/r.txt", no_deps=True)
    assert argv[:7] == ["uv", "pip", "compile", "--python", "/venv/bin/python", "--no-config", "--quiet"]
    pairs = set(zip(argv, argv[1:]))
    assert {("--index-url", "https://pkgs.corp/simple"), ("--extra-index-url", "https://extra.corp/simple"),
            ("--allow-insecure-host", "pkgs.corp"), ("-c", "/etc/pip-constraints.txt"), ("--prerelease", "allow"),
            ("--find-links", "/tmp/stubs"), ("-c", "/tmp/c.txt"), ("--format", "pylock.toml")} <= pairs
    # The requirements files' options come before ours: their --only-binary cannot undo ":all:".
    assert argv.index(":all:") > argv.index("foo")
    assert "--no-deps" in argv and argv[-3:] == ["-o", "/tmp/pylock.toml", "/tmp/r.txt"]


def test_uv_pip_check_lines_are_read_like_pips():
    line = "The package `xformers` requires `torch==2.7.1`, but `2.5.1+cu124` is installed"
    match = next(m for m in (r.match(line) for r in _PIP_CHECK) if m)
    assert (match.group("pkg"), match.group("dep")) == ("xformers", "torch==2.7.1")
    line = "The package `vision-helper` requires `torchvision`, but it's not installed"
    match = next(m for m in (r.match(line) for r in _PIP_CHECK) if m)
    assert (match.group("pkg"), match.group("dep")) == ("vision-helper", "torchvision")
