"""The build phase's wheels ride along in the rest phase's pip run, when that is safe."""

from __future__ import annotations

from backendpick.execute import engines
from backendpick.model.plan import (
    AS_IS,
    BUILD,
    CACHED,
    PENDING,
    PREBUILT,
    REST,
    SOURCE,
    BuildStep,
    Phase,
    fold,
    fold_builds,
    foldable,
)

HEAD = ("py", "-m", "pip", "install")
PIP = engines.Renderer(engines.PIP, "py", ("py", "-m", "pip"))


def build(*steps: BuildStep) -> Phase:
    reqs = tuple(s.requirement for s in steps)
    return Phase(BUILD, reqs, no_build_isolation=True, constraints_file="c.txt", steps=steps)


def rest(*reqs: str) -> Phase:
    return Phase(REST, reqs, constraints_file="c.txt")


SRC = BuildStep("flash-attn", "flash-attn", how=SOURCE, version="2.7.4", find_links="/s/build/flash-attn",
                build_requirement="flash-attn==2.7.4", wheel_dir="/s/build/flash-attn")
CACHE = BuildStep("mamba-ssm", "mamba-ssm", how=CACHED, version="2.2.4", wheel="/c/m/mamba_ssm-2.2.4.whl",
                  find_links="/c/m")
PRE = BuildStep("causal-conv1d", "causal-conv1d", how=PREBUILT, version="1.4.0", wheel="https://m/cc-1.4.0.whl")


def test_known_wheels_fold_into_the_rest_phase_with_only_binary():
    folded = fold(build(SRC, CACHE, PRE), rest("tqdm"))
    assert PIP.command(folded).argv == HEAD + (
        "-c", "c.txt", "-f", "/s/build/flash-attn", "-f", "/c/m",
        "--only-binary", "causal-conv1d,flash-attn,mamba-ssm",
        "flash-attn==2.7.4", "mamba-ssm==2.2.4", "causal-conv1d @ https://m/cc-1.4.0.whl", "tqdm",
    )
    assert PIP.command(folded, folded=False).argv == HEAD + ("-c", "c.txt", "tqdm")
    # Folding again (the executor, after choosing again) replaces the wheels.
    assert PIP.command(fold(build(SRC), folded)).argv[-2:] == ("flash-attn==2.7.4", "tqdm")
    # Where each comes from, for a lock writer: find-links folders, a URL, the user's indexes.
    assert folded.requirement_sources() == (
        ("flash-attn", "find-links", "/s/build/flash-attn"), ("mamba-ssm", "find-links", "/c/m"),
        ("causal-conv1d", "direct-url", "https://m/cc-1.4.0.whl"), ("tqdm", "user", None))


def test_what_still_needs_pip_to_build_is_not_folded():
    assert not foldable(build(BuildStep("x", "x", how=AS_IS)))
    assert not foldable(build(BuildStep("x", "x", how=PENDING)))
    assert not foldable(build(BuildStep("x", "x", how=SOURCE, version=None)))  # wheel name unknown
    assert not foldable(build(SRC, BuildStep("y", "y", how=AS_IS)))
    assert not foldable(Phase(BUILD, ("x",)))  # no steps at all


def test_fold_builds_marks_the_build_phase_and_needs_a_running_rest_phase():
    phases = fold_builds([build(SRC), rest("tqdm")])
    assert phases[0].deferred and "# the wheels are installed by the rest phase's pip run" in PIP.shown(phases[0])
    assert "pip install" not in PIP.shown(phases[0]).splitlines()[-1]
    assert "flash-attn==2.7.4" in PIP.command(phases[1]).argv
    skipped = Phase(REST, ("tqdm",), skip="already installed")
    assert fold_builds([build(SRC), skipped]) == (build(SRC), skipped)
    assert fold_builds([build(SRC)]) == (build(SRC),)
