"""The plan's look-ahead: routing pip's dry-run report (or its failure) into phases. Pure."""

from __future__ import annotations

from packaging.requirements import Requirement

from backendpick import transitive

FAMILY = ("torch", "torchvision", "xformers")
BUILD = ("flash-attn", "mamba-ssm")


def test_report_names_go_to_their_phases():
    report = {"install": [{"metadata": {"name": n}} for n in ("needs-torch", "Torch", "filelock", "Flash_Attn")]}
    found = transitive.from_report(report, FAMILY, BUILD)
    assert (found.backend, found.build, found.note) == (("torch",), ("flash-attn",), None)
    assert transitive.from_report({}, FAMILY, BUILD) == transitive.Found()


def test_failure_at_an_sdist_only_build_package_still_routes_it_and_says_so():
    output = ("ERROR: Could not find a version that satisfies the requirement flash-attn (from attn-helper) "
              "(from versions: none)\nERROR: No matching distribution found for flash-attn\n")
    found = transitive.from_failure(output, FAMILY, BUILD)
    assert (found.backend, found.build) == ((), ("flash-attn",))
    assert "not fully resolved" in found.note and "no wheel of flash-attn" in found.note


def test_other_failure_is_said_with_pips_error_and_credentials_hidden():
    found = transitive.from_failure("ERROR: Could not fetch https://bob:s3cret@pkgs.corp/simple/x/\n", FAMILY, BUILD)
    assert found.backend == () and found.build == ()
    assert "https://***@pkgs.corp/simple/x/" in found.note and "s3cret" not in found.note


def test_dry_run_argv_builds_nothing_and_installs_nothing():
    argv = transitive.dry_run_argv(["py", "-m", "pip"], ["needs-torch", "tqdm>=4"], ["--only-binary", "foo", "--pre"],
                                   "/tmp/c.txt", "/tmp/r.json")
    assert argv == ["py", "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                    "/tmp/r.json", "--only-binary", "foo", "--pre", "--only-binary", ":all:", "-c", "/tmp/c.txt",
                    "needs-torch", "tqdm>=4"]


def test_direct_references_to_sdists_are_never_prepared_by_the_look_ahead() -> None:
    """pip prepares an sdist or VCS reference even under --only-binary (its setup.py runs):
    the look-ahead leaves them out, and with nothing else left starts no pip at all (unit tests
    refuse subprocesses, so a pip run would fail this test)."""
    reqs = [Requirement("slow-pkg @ file:///tmp/dist/slow-pkg-1.0.tar.gz"),
            Requirement("proj @ git+https://example.invalid/proj.git")]
    found = transitive.find(["python", "-m", "pip"], reqs, rest_options=(), user_constraints=(), env={},
                            family=("torch",), build=("flash-attn",))
    assert found == transitive.Found()
