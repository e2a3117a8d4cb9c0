"""The plan's one resolution (selection/resolve.py): routing pip's dry-run report, or its failure, into
phases; the command; what is never handed to pip. Pure (unit tests start no subprocess)."""

from __future__ import annotations

from packaging.requirements import Requirement

from backendpick.selection import resolve
from backendpick.selection.resolve import Resolution, parse_report

FAMILY = ("torch", "torchvision", "xformers")
BUILD = ("flash-attn", "mamba-ssm")
MARKERS = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}


def test_report_names_go_to_their_phases():
    report = {"install": [{"metadata": {"name": n, "version": "1"}}
                          for n in ("needs-torch", "Torch", "filelock", "Flash_Attn")]}
    res = parse_report(report, family=FAMILY, build=BUILD, markers=MARKERS)
    assert set(res.pulled) == {"torch", "flash-attn"}
    assert [p for p in res.pulled if p in FAMILY] == ["torch"] and [p for p in res.pulled if p in BUILD] == ["flash-attn"]
    assert res.stopped == ""
    assert parse_report({}, family=FAMILY, build=BUILD, markers=MARKERS).pulled == ()


def test_failure_at_an_sdist_only_build_package_still_routes_it_and_says_so():
    output = ("ERROR: Could not find a version that satisfies the requirement flash-attn (from attn-helper) "
              "(from versions: none)\nERROR: No matching distribution found for flash-attn\n")
    names, note = resolve.stopped_at(output, FAMILY, BUILD)
    assert names == ("flash-attn",)
    assert not set(names) & set(FAMILY)
    assert "not fully resolved" in note and "no wheel of flash-attn" in note


def test_other_failure_is_said_with_pips_error_and_credentials_hidden():
    names, note = resolve.stopped_at("ERROR: Could not fetch https://bob:s3cret@pkgs.corp/simple/x/\n", FAMILY, BUILD)
    assert names == ()
    assert "https://***@pkgs.corp/simple/x/" in note and "s3cret" not in note


def test_dry_run_argv_builds_nothing_and_installs_nothing():
    argv = resolve.dry_run_argv(["py", "-m", "pip"], options=["--only-binary", "foo", "--pre"], stubs="/tmp/stubs",
                                constraints="/tmp/c.txt", report="/tmp/r.json")
    assert argv == ["py", "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", "/tmp/r.json",
                    "--quiet", "--disable-pip-version-check", "--no-input", "--only-binary", "foo", "--pre",
                    "--only-binary", ":all:", "--find-links", "/tmp/stubs", "-c", "/tmp/c.txt"]
    # The user's options come before ours: their --only-binary cannot undo ":all:".
    assert argv.index(":all:") > argv.index("foo")


def test_direct_references_to_sdists_are_never_prepared_by_the_look_ahead() -> None:
    """pip prepares an sdist or VCS reference even under --only-binary (its setup.py runs):
    the resolution leaves them out, and with nothing else left starts no pip at all (unit tests
    refuse subprocesses, so a pip run would fail this test)."""
    reqs = [Requirement("slow-pkg @ file:///tmp/dist/slow-pkg-1.0.tar.gz"),
            Requirement("proj @ git+https://example.invalid/proj.git")]
    asked = []
    res = resolve.resolve(reqs, ["python", "-m", "pip"], None, env={}, family=("torch",), build=("flash-attn",),
                          published=lambda: asked.append(1) or {})
    assert res == Resolution()
    assert asked == []  # not even the backend indexes were asked for the stubs
    wheel = Requirement("fast-pkg @ https://example.invalid/fast_pkg-1.0-py3-none-any.whl")
    assert resolve.resolvable([*reqs, wheel]) == [wheel]


def test_stubs_outrank_the_users_builds_of_the_same_version(tmp_path):
    """An untagged backend build (PyPI's CUDA torch) is stubbed with a local tag: at an equal
    version pip and uv would take the user's index's wheel for this platform over a py3-none-any
    stub, and resolve the real torch and its nvidia-* dependencies (issue 22, bench_real --large)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    stubs, cons = resolve.offered_as_stubs(tmp_path, lambda: {"Torch": ["2.14.1", "2.7.1+cu126"]}, ["numpy<3"])
    names = sorted(p.name for p in stubs.iterdir())
    assert names == ["torch-2.14.1+stub-py3-none-any.whl", "torch-2.7.1+cu126-py3-none-any.whl"]
    assert cons.read_text() == "numpy<3\ntorch>=2.7.1,<=2.14.1\n"
    # A pin without a local label still takes the stub.
    assert Version("2.14.1+stub") in SpecifierSet("==2.14.1") and Version("2.14.1+stub") > Version("2.14.1")
