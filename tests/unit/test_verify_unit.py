"""``backendpick.verify`` as pure functions: hand-built targets and hardware in, problems out.

The subprocess checks (extension imports, pip check) get a stand-in for ``runner.capture``.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from backendpick.checks import dependencies, stack as verify
from backendpick.commands import verify as verify_cmd
from backendpick.edges.runner import Result
from backendpick.knowledge import facts as facts_mod
from backendpick.knowledge.facts import dotted, show
from backendpick.model.backend import Backend
from backendpick.model.environment import Installed, Target
from backendpick.model.hardware import AMD, NVIDIA, Accelerator, Hardware
from backendpick.output import Output
from backendpick.target import installed_stack, installed_torch

FACTS = facts_mod.load()
FAMILY = set(FACTS.backend_packages)
NBI = set(FACTS.no_build_isolation)
PY = Path("/env/bin/python")
FLAG = f" --python {PY}"
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11", "platform_machine": "x86_64"}


def version_py(cuda: str | None, hip: str | None = None) -> str:
    # The shape of a real torch/version.py (annotated assignments).
    return (f"__version__ = '2.x'\ndebug = False\ncuda: Optional[str] = {cuda!r}\n"
            f"git_version = '0'\nhip: Optional[str] = {hip!r}\n")


def target(*dists: Installed, files: dict | None = None, markers: dict | None = None, pip: str | None = "24.0") -> Target:
    return Target(
        python=PY, prefix=Path("/env"), version=(3, 11, 7), markers=dict(LINUX if markers is None else markers),
        tags=("py3-none-any",), pip_version=pip, purelib=Path("/env/lib/python3.11/site-packages"),
        installed={verify.normalize(d.name): d for d in dists}, is_venv=True, files=dict(files or {}),
    )


def dist(name: str, version: str, *requires: str) -> Installed:
    return Installed(name, version, tuple(requires), installer="pip")  # what pip writes into INSTALLER


def torch(version: str, *, cuda: str | None = "from-tag", hip: str | None = None) -> tuple[Installed, dict]:
    """An installed torch and its version.py; ``cuda="from-tag"`` derives it like the real wheels."""
    if cuda == "from-tag":
        tag = version.partition("+")[2]
        cuda = f"{tag[2:-1]}.{tag[-1]}" if tag.startswith("cu") else None
    return dist("torch", version, "filelock", "typing-extensions"), {"torch/version.py": version_py(cuda, hip)}


def stack(tgt: Target, hardware: Hardware | None = None, policy: str = "strict") -> list[verify.Problem]:
    return verify.stack_problems(tgt, FACTS, hardware, FAMILY, NBI, python_flag=FLAG, policy=policy)


def nvidia_hw(driver: str, cap: str = "8.0", name: str = "NVIDIA A100-SXM4-80GB", cuda: str | None = "table") -> Hardware:
    if cuda == "table":
        cuda = show(FACTS.max_cuda_for_driver(dotted(driver)))
    gpu = Accelerator(NVIDIA, name, driver_version=driver, compute_capability=cap, arch=f"sm_{cap.replace('.', '')}", index=0)
    return Hardware(accelerators=(gpu,), nvidia_driver=driver, driver_cuda=cuda, driver_cuda_source="driver table")


def amd_hw(gfx: str = "gfx942") -> Hardware:
    return Hardware(accelerators=(Accelerator(AMD, "AMD Instinct MI300X", arch=gfx, index=0),), rocm_version="6.2.4")


# -- reading torch's build ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cuda", "hip"),
    [
        ("cuda: Optional[str] = '12.4'\nhip: Optional[str] = None\n", "12.4", None),
        ('cuda = "12.6"\nhip = None\n', "12.6", None),
        ("cuda = None\nhip = '6.2.41133-dd7f95766'\n", None, "6.2.41133-dd7f95766"),
        ("__version__ = '2.5.1'\n", None, None),
        ("# cuda = '11.8'\ncuda_home = '12.1'\n", None, None),  # comments and other names do not count
    ],
)
def test_version_py_assignments(text: str, cuda, hip) -> None:
    assert installed_torch._assigned(text, "cuda") == cuda
    assert installed_torch._assigned(text, "hip") == hip


@pytest.mark.parametrize(
    ("version", "files", "markers", "expected"),
    [
        ("2.5.1+cu124", None, None, ("cu124", "12.4", None)),  # the tag, without version.py
        ("2.5.1+cpu", None, None, ("cpu", None, None)),
        ("2.5.1+rocm6.2", None, None, ("rocm6.2", None, "6.2")),
        # PyPI's untagged Linux torch is a CUDA build: version.py says which ...
        ("2.7.1", {"torch/version.py": version_py("12.6")}, None, ("cu126", "12.6", None)),
        # ... and without version.py, the table of PyPI's builds does.
        ("2.5.1", None, None, ("cu124", "12.4", None)),
        ("2.8.0", None, None, ("cu128", "12.8", None)),
        # The same version on macOS is a CPU build.
        ("2.5.1", None, {"sys_platform": "darwin"}, ("cpu", None, None)),
        # A ROCm build's version.py.
        ("2.5.1+rocm6.2", {"torch/version.py": version_py(None, "6.2.41133")}, None, ("rocm6.2", None, "6.2.41133")),
    ],
)
def test_torch_build(version, files, markers, expected) -> None:
    tb = installed_torch.torch_build(target(dist("torch", version), files=files, markers=markers), FACTS)
    assert (tb.backend.name, tb.cuda, tb.hip) == expected
    assert tb.to_json() == {"version": version, "backend": expected[0], "cuda": expected[1], "hip": expected[2]}


def test_no_torch_no_build() -> None:
    assert installed_torch.torch_build(target(), FACTS) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1204", "12.4"), (1204, "12.4"), ("1108", "11.8"), ("12.4", "12.4"), ("12.4.1", "12.4"),
     (None, None), ("", None), ("None", None), ("cuda", None)],
)
def test_cpp_lib_cuda_version(value, expected) -> None:
    assert installed_stack.cuda_of_cpp_lib(value) == expected


# -- companions against torch ------------------------------------------------------------------


def test_consistent_stack_has_no_problems() -> None:
    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("torchvision", "0.20.1+cu124", "torch==2.5.1"), dist("xformers", "0.0.28.post3", "torch==2.5.1"),
                 dist("flash-attn", "2.7.4", "torch", "einops"), dist("requests", "2.0", "torch==1.0"),
                 files={**files, "xformers/cpp_lib.json": json.dumps({"torch_version": "2.5.1+cu124", "cuda_version": 1204})})
    assert stack(tgt, nvidia_hw("550.54.14")) == []


def test_other_backend_tag_is_one_problem_with_the_stack_fix() -> None:
    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("torchvision", "0.20.1+cpu", "torch==2.5.1"), files=files)
    [p] = stack(tgt)
    assert p.package == "torchvision"
    assert p.message == "torchvision 0.20.1+cpu is built for cpu, torch 2.5.1+cu124 for cu124"
    # The fix keeps the installed torch pinned, so pip fetches the companion for it.
    assert p.fix == f"backendpick install{FLAG} --backend cu124 torch==2.5.1 torchvision"


def test_cpu_torch_with_cuda_torchvision() -> None:
    """The issue's example the other way round: torch +cpu next to torchvision +cu124."""
    t, files = torch("2.5.1+cpu")
    [p] = stack(target(t, dist("torchvision", "0.20.1+cu124", "torch==2.5.1"), files=files))
    assert p.package == "torchvision" and p.fix == f"backendpick install{FLAG} --backend cpu torch==2.5.1 torchvision"


def test_companion_pinned_to_another_torch() -> None:
    """xformers built for 2.9.0 next to torch 2.10.0 (the issue's example)."""
    t, files = torch("2.10.0+cu128")
    [p] = stack(target(t, dist("xformers", "0.0.33", "torch==2.9.0", "numpy"), files=files))
    assert p.package == "xformers"
    assert p.message == "xformers 0.0.33 requires torch==2.9.0, but torch 2.10.0+cu128 is installed"
    assert p.fix == f"backendpick install{FLAG} --backend cu128 torch==2.10.0 xformers"


def test_requirements_behind_an_extra_do_not_count() -> None:
    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("torchaudio", "2.5.1+cu124", "torch==2.5.1", 'torch==2.4.0; extra == "old"'), files=files)
    assert stack(tgt) == []


def test_packages_outside_the_stack_are_not_judged_here() -> None:
    t, files = torch("2.5.1+cu124")
    assert stack(target(t, dist("someproject", "1.0+cpu", "torch==1.13"), files=files)) == []


def test_companions_without_torch() -> None:
    """After ``pip uninstall torch`` the fix brings back the torch the companions were made for,
    on their backend, with them named: a plain ``install torch`` took the newest torch beside
    companions pinned to the old one (issue 18)."""
    [p] = stack(target(dist("torchvision", "0.20.1+cu124", "torch==2.5.1"), dist("flash-attn", "2.7.4", "torch"),
                       dist("xformers", "0.0.28.post3", "torch==2.5.1", 'torch>=9; extra == "dev"')))
    assert p.package == "torch" and "flash-attn, torchvision, xformers" in p.message
    assert p.fix == f"backendpick install{FLAG} --backend cu124 torch==2.5.1 flash-attn torchvision xformers"
    # Nothing pins torch: the newest the backend (unknown here) offers, the builds named to be rebuilt.
    [p] = stack(target(dist("flash-attn", "2.7.4", "torch")))
    assert p.fix == f"backendpick install{FLAG} torch flash-attn"
    assert stack(target(dist("tqdm", "4.66.0"))) == []


@pytest.mark.parametrize(
    ("cpp_lib", "needle"),
    [
        ({"torch_version": "2.9.0+cu128", "cuda_version": "1208"}, "xformers 0.0.33 was built for torch 2.9.0+cu128, but torch 2.10.0+cu128 is installed"),
        ({"torch_version": "2.10.0+cu128", "cuda_version": None}, "xformers 0.0.33 is a CPU-only build next to CUDA torch 2.10.0+cu128"),
        ({"torch_version": "2.10.0+cu126", "cuda_version": 1206}, "xformers 0.0.33 is built for CUDA 12.6, torch 2.10.0+cu128 for CUDA 12.8"),
    ],
    ids=["other-torch", "cpu-only", "other-cuda"],
)
def test_xformers_cpp_lib(cpp_lib, needle) -> None:
    t, files = torch("2.10.0+cu128")
    files["xformers/cpp_lib.json"] = json.dumps(cpp_lib)
    [p] = stack(target(t, dist("xformers", "0.0.33"), files=files))
    assert p.package == "xformers" and p.message.startswith(needle)
    assert p.fix == f"backendpick install{FLAG} --backend cu128 torch==2.10.0 xformers"


@pytest.mark.parametrize(
    "text",
    ['{"torch_version": "2.10.0+cu128", "cuda_version": "1208"}', "not json", "[1, 2]", ""],
)
def test_xformers_cpp_lib_that_fits_or_cannot_be_read(text) -> None:
    t, files = torch("2.10.0+cu128")
    files["xformers/cpp_lib.json"] = text
    assert stack(target(t, dist("xformers", "0.0.33"), files=files)) == []


def test_cpu_xformers_next_to_cpu_torch_is_fine() -> None:
    t, files = torch("2.5.1+cpu")
    files["xformers/cpp_lib.json"] = json.dumps({"torch_version": "2.5.1+cpu", "cuda_version": None})
    assert stack(target(t, dist("xformers", "0.0.28.post3"), files=files)) == []


def test_the_stack_names_the_companions_made_for_another_torch() -> None:
    """What planning replaces, read from the look at the target (no check runs): family members
    built for another backend or requiring another torch; torch itself and packages outside the
    names asked about never."""
    from backendpick.target import installed_stack

    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("torchvision", "0.20.1+cpu", "torch==2.5.1"), dist("xformers", "0.0.28", "torch==2.4.1"),
                 dist("torchaudio", "2.5.1+cu124", "torch==2.5.1"), dist("helper", "1.0", "torch<2"), files=files)
    stack = installed_stack.read(tgt, FACTS)
    assert stack.broken(FAMILY) == ["torchvision", "xformers"]
    assert stack.broken({"helper"}) == ["helper"]
    assert [p.package for p in verify.stack_problems(tgt, FACTS, None, FAMILY, NBI, stack=stack)] == ["torchvision",
                                                                                                     "xformers"]


# -- torch against the hardware -------------------------------------------------------------------


def test_cpu_torch_on_an_nvidia_machine() -> None:
    t, files = torch("2.5.1+cpu")
    [p] = stack(target(t, files=files), nvidia_hw("550.54.14"))
    assert p.message == "torch 2.5.1+cpu is a CPU build, but this machine has 1 NVIDIA GPU(s) (NVIDIA A100-SXM4-80GB)"
    assert p.fix == f"backendpick install{FLAG} torch"


def test_rocm_torch_on_an_nvidia_machine() -> None:
    t, files = torch("2.5.1+rocm6.2", cuda=None, hip="6.2.41133")
    [p] = stack(target(t, files=files), nvidia_hw("550.54.14"))
    assert "is a ROCm build, but this machine has 1 NVIDIA GPU(s)" in p.message


def test_cuda_torch_on_an_amd_machine() -> None:
    t, files = torch("2.5.1+cu124")
    [p] = stack(target(t, files=files), amd_hw())
    assert p.message == "torch 2.5.1+cu124 is not a ROCm build, but this machine has AMD GPU(s) (AMD Instinct MI300X)"


def test_gpu_torch_on_a_machine_without_gpu_is_not_a_problem() -> None:
    """A docker build or a CPU node: verify must not push a CUDA torch to CPU."""
    t, files = torch("2.5.1+cu124")
    assert stack(target(t, files=files), Hardware()) == []


def test_cuda_newer_than_the_driver_strict_and_minor() -> None:
    t, files = torch("2.6.0+cu126")
    tgt = target(t, files=files)
    [p] = stack(tgt, nvidia_hw("550.54.14"))
    assert p.message == "torch 2.6.0+cu126 is built for CUDA 12.6, but driver 550.54.14 supports CUDA 12.4"
    assert p.fix.startswith(f"backendpick install{FLAG} torch")
    # cuda-compat = "minor": a 12.x runtime starts on any driver >= 525.60.13.
    assert stack(tgt, nvidia_hw("550.54.14"), policy="minor") == []
    assert stack(tgt, nvidia_hw("560.35.03")) == []


def test_pypi_torch_is_checked_as_the_cuda_build_it_is() -> None:
    [p] = stack(target(dist("torch", "2.7.1"), files={"torch/version.py": version_py("12.6")}), nvidia_hw("550.54.14"))
    assert "torch 2.7.1 is built for CUDA 12.6" in p.message


def test_build_without_the_gpus_architecture() -> None:
    t, files = torch("2.5.1+cu124")
    [p] = stack(target(t, files=files), nvidia_hw("570.124.04", cap="12.0", name="NVIDIA GeForce RTX 5090"))
    assert p.message.startswith("torch 2.5.1+cu124 carries no code for NVIDIA GeForce RTX 5090 (compute capability 12.0)")
    # 8.9 runs the sm_86 code of the same major: no problem.
    assert stack(target(t, files=files), nvidia_hw("550.54.14", cap="8.9", name="NVIDIA GeForce RTX 4090")) == []


# -- the project's requirements and pip check from metadata ---------------------------------------------


def test_missing_and_mismatched_requirements() -> None:
    t, _ = torch("2.5.1+cu124")
    tgt = target(t, dist("tqdm", "4.0"), dist("filelock", "3.16.1"), dist("typing-extensions", "4.12.2"))
    wanted = [Requirement("torch==2.5.1"), Requirement("flash-attn>=2.6"), Requirement("tqdm>=4.60"),
              Requirement('pywin32; sys_platform == "win32"')]
    problems = dependencies.missing_problems(tgt, wanted, NBI, FLAG)
    assert [(p.package, p.message) for p in problems] == [
        ("flash-attn", ("flash-attn>=2.6 is required but not installed (it builds against torch: backendpick "
                        "installs it after torch with --no-build-isolation)")),
        ("tqdm", "tqdm>=4.60 is required but 4.0 is installed"),
    ]
    assert all(p.fix == f"backendpick install{FLAG}" for p in problems)


def test_a_requirement_a_recipe_renamed_counts_as_installed() -> None:
    """``cupy`` is installed as cupy-cuda12x (its recipe's name per CUDA major), ``faiss-gpu`` as
    faiss-cpu on the cpu backend: a Dockerfile's ``install && verify`` must pass (issue 18)."""
    from backendpick.knowledge import recipes

    t, _ = torch("2.5.1+cu124")
    tgt = target(t, dist("cupy-cuda12x", "13.3.0", "numpy"), dist("numpy", "1.26.4"), dist("faiss-cpu", "1.9.0"),
                 dist("jax", "0.4.35", 'jax-cuda12-plugin==0.4.35; extra == "cuda12"'),
                 dist("jax-cuda12-plugin", "0.4.35"))
    shipped = recipes.shipped()
    wanted = [Requirement("cupy>=13"), Requirement("faiss-gpu"), Requirement("jax")]
    assert dependencies.missing_problems(tgt, wanted, NBI, FLAG, recipes=shipped) == []
    # The version is still the requirement's to judge, and a build that is not there is missing.
    problems = dependencies.missing_problems(tgt, [Requirement("cupy>=14"), Requirement("spconv")], NBI, FLAG,
                                             recipes=shipped)
    assert [(p.package, p.message) for p in problems] == [
        ("cupy", "cupy>=14 is required but 13.3.0 is installed"), ("spconv", "spconv is required but not installed")]
    # Without the recipes (as before), cupy-cuda12x was not seen as cupy.
    assert [p.package for p in dependencies.missing_problems(tgt, wanted[:1], NBI, FLAG)] == ["cupy"]


def test_a_missing_torch_beside_its_companions_gets_their_torch() -> None:
    tgt = target(dist("torchvision", "0.20.1+cu124", "torch==2.5.1"), dist("tqdm", "4.66.0"))
    [p] = dependencies.missing_problems(tgt, [Requirement("torch"), Requirement("torchvision")], NBI, FLAG,
                                        family=["torch", "torchvision"])
    assert p.fix == f"backendpick install{FLAG} --backend cu124 torch==2.5.1 torchvision"


def test_missing_transitive_requirement_is_a_problem() -> None:
    """A backend switch interrupted after its remove phase: the project's package is there, the
    torch it needs is not. That is not ok (issue 9)."""
    tgt = target(dist("needs-torch", "1.0", "torch>=2", "helper[fast]"), dist("helper", "1.0", 'speedups; extra == "fast"',
                                                                             'never; extra == "other"'),
                 dist("flash-attn", "2.7.4", "torch", "einops"))
    problems = dependencies.missing_problems(tgt, [Requirement("needs-torch"), Requirement("flash-attn")], NBI, FLAG)
    assert [(p.package, p.message) for p in problems] == [
        ("torch", "torch>=2 is required by needs-torch 1.0 (for needs-torch) but not installed"),
        ("speedups", 'speedups is required by helper 1.0 (for needs-torch) but not installed'),
        ("einops", "einops is required by flash-attn 2.7.4 (for flash-attn) but not installed"),
    ]
    assert all(p.fix == f"backendpick install{FLAG}" for p in problems)
    # Named on the command line: the fix installs that requirement again.
    [p, *_] = dependencies.missing_problems(tgt, [Requirement("needs-torch")], NBI, FLAG, from_project=False)
    assert p.fix == f"backendpick install{FLAG} needs-torch"


def test_fix_names_only_a_torch_the_backend_index_offers() -> None:
    """``pip install -U torch`` took 2.9.9+cpu from an extra index: the fix must not repeat it."""
    t = dist("torch", "2.9.9+cpu", "filelock")
    tgt = target(t, dist("filelock", "3.16.1"), dist("torchvision", "0.20.1+cpu", "torch==2.5.1"))
    [p] = verify.stack_problems(tgt, FACTS, None, FAMILY, NBI, python_flag=FLAG, offered=frozenset({"2.5.1", "2.6.0"}))
    assert p.fix == f"backendpick install{FLAG} --backend cpu torch torchvision"
    # The index did not answer: nothing is known to be there, no version is named.
    [p] = verify.stack_problems(tgt, FACTS, None, FAMILY, NBI, python_flag=FLAG, offered=frozenset())
    assert "==" not in p.fix
    # An offered torch is kept pinned.
    tgt = target(dist("torch", "2.6.0+cpu"), dist("torchvision", "0.20.1+cpu", "torch==2.5.1"))
    [p] = verify.stack_problems(tgt, FACTS, None, FAMILY, NBI, python_flag=FLAG, offered=frozenset({"2.5.1", "2.6.0"}))
    assert p.fix == f"backendpick install{FLAG} --backend cpu torch==2.6.0 torchvision"
    # pip check's fixes follow the same rule.
    tb = installed_torch.torch_build(target(t), FACTS)
    fix = dependencies.dependency_fix(FLAG, tb, FAMILY, "xformers", Requirement("torch==2.5.1"), frozenset({"2.5.1"}))
    assert fix == f"backendpick install{FLAG} --backend cpu torch xformers"


def test_dependency_problems_from_metadata() -> None:
    t, _ = torch("2.5.1+cu124")
    tgt = target(t, dist("filelock", "3.16.1"), dist("flash-attn", "2.7.4", "torch", "einops>=0.8", 'pywin32; sys_platform == "win32"'),
                 dist("einops", "0.7.0"))
    problems = dependencies.dependency_problems(tgt, FAMILY | NBI, FLAG)
    assert [p.message for p in problems] == [
        "flash-attn 2.7.4 requires einops>=0.8, but 0.7.0 is installed",
        "torch 2.5.1+cu124 requires typing-extensions, which is not installed",
    ]


# -- subprocess checks with a stand-in runner ---------------------------------------------------------


class FakeCapture:
    def __init__(self, *results: Result):
        self.results = list(results)
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, timeout, env=None, cwd=None) -> Result:
        self.calls.append([str(a) for a in argv])
        return self.results.pop(0)


def ok(stdout: str, code: int = 0) -> Result:
    return Result(("python",), code, stdout, "")


def test_extension_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCapture(ok(json.dumps({
        "flash_attn_2_cuda": "ImportError: /x/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
        "selective_scan_cuda": "ModuleNotFoundError: No module named 'selective_scan_cuda'",
        "causal_conv1d_cuda": "ImportError: libcudart.so.11.0: cannot open shared object file",
    })))
    monkeypatch.setattr(verify, "capture", fake)
    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("flash-attn", "2.7.4"), dist("mamba-ssm", "2.2.2"), dist("causal-conv1d", "1.4.0"), files=files)
    facts = dataclasses.replace(FACTS, extensions={**FACTS.extensions, "causal-conv1d": ("causal_conv1d_cuda",)})
    problems = {p.package: p for p in verify.extension_problems(tgt, facts, FLAG, Backend.parse("cu124"))}
    assert fake.calls[0][0] == str(PY) and set(fake.calls[0][3:]) == {"flash_attn_2_cuda", "selective_scan_cuda", "causal_conv1d_cuda"}
    fa = problems["flash-attn"]
    assert fa.message == "flash-attn was compiled against a different torch than the one installed (flash_attn_2_cuda: undefined symbol)"
    assert fa.fix.startswith(f"backendpick install{FLAG} --backend cu124 --reinstall flash-attn flash-attn")
    assert problems["mamba-ssm"].message == "mamba-ssm is installed without its compiled extension selective_scan_cuda"
    assert problems["causal-conv1d"].message.startswith("causal-conv1d's extension causal_conv1d_cuda does not load: ImportError: libcudart")


def test_extension_check_runs_nothing_without_extension_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCapture()
    monkeypatch.setattr(verify, "capture", fake)
    t, files = torch("2.5.1+cu124")
    assert verify.extension_problems(target(t, files=files), FACTS, FLAG, None) == []
    assert fake.calls == []


def test_extension_check_when_torch_itself_does_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "capture", FakeCapture(ok(json.dumps({"torch": "OSError: libtorch_cuda.so: cannot open"}))))
    t, files = torch("2.5.1+cu124")
    [p] = verify.extension_problems(target(t, dist("flash-attn", "2.7.4"), files=files), FACTS, FLAG, None)
    assert p.package == "torch" and "import torch failed: OSError" in p.message
    assert p.fix == f"backendpick install{FLAG} torch"


def test_pip_check_keeps_the_stack_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dependencies, "capture", FakeCapture(ok(
        "torch 2.5.1+cu124 requires filelock, which is not installed.\n"
        "xformers 0.0.28.post3 has requirement torch==2.5.0, but you have torch 2.5.1+cu124.\n"
        "requests 2.0 requires idna, which is not installed.\n", code=1)))
    problems = dependencies.pip_check_problems(target(), FAMILY | NBI, FLAG)
    assert [p.package for p in problems] == ["torch", "xformers"]
    assert problems[0].message == "pip check: torch 2.5.1+cu124 requires filelock, which is not installed."


def test_pip_check_needs_pip_and_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCapture(ok("No broken requirements found.\n"))
    monkeypatch.setattr(dependencies, "capture", fake)
    assert dependencies.pip_check_problems(target(pip=None), FAMILY, FLAG) == []
    assert fake.calls == []
    assert dependencies.pip_check_problems(target(), FAMILY, FLAG) == []


# -- the command's report ---------------------------------------------------------------------------


def _settings(tmp_path: Path):
    from backendpick.inputs import config

    return config.load(FACTS, project_dir=tmp_path, env={})


def test_report_json_shape(tmp_path: Path) -> None:
    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("torchvision", "0.20.1+cpu", "torch==2.5.1"), dist("tqdm", "4.66.0"), files=files)
    report = verify_cmd.check(tgt, _settings(tmp_path), python=PY, wanted=[Requirement("flash-attn")], runtime=False)
    data = json.loads(json.dumps(report.to_json()))
    assert {"ok", "torch", "packages", "problems"} <= set(data)
    assert data["ok"] is False
    origin = data["torch"].pop("origin")
    assert data["torch"] == {"version": "2.5.1+cu124", "backend": "cu124", "cuda": "12.4", "hip": None}
    assert origin["foreign"] is False and origin["label"] == "index build" and origin["signs"] == []
    assert data["packages"] == [{"name": "torch", "version": "2.5.1+cu124"}, {"name": "torchvision", "version": "0.20.1+cpu"}]
    assert [p["package"] for p in data["problems"]] == ["torchvision", "flash-attn"]
    assert all(set(p) == {"package", "message", "fix"} for p in data["problems"])


def test_report_text(tmp_path: Path) -> None:
    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("torchvision", "0.20.1+cpu", "torch==2.5.1"), files=files)
    report = verify_cmd.check(tgt, _settings(tmp_path), python=PY, runtime=False)
    buffer = io.StringIO()
    verify_cmd.render(Output(stdout=buffer), report)
    assert buffer.getvalue().splitlines() == [
        f"python: {PY}",
        "torch: 2.5.1+cu124 (cu124, CUDA 12.4)",
        "pins: none (a plain pip can replace the stack; backendpick install writes them)",
        "problem: torchvision: torchvision 0.20.1+cpu is built for cpu, torch 2.5.1+cu124 for cu124",
        f"  fix: backendpick install{FLAG} --backend cu124 torch==2.5.1 torchvision",
        "not ok: 1 problem(s)",
    ]
    ok_report = verify_cmd.check(target(), _settings(tmp_path), python=None, runtime=False)
    buffer = io.StringIO()
    verify_cmd.render(Output(stdout=buffer), ok_report)
    assert ok_report.ok and buffer.getvalue().splitlines()[1:] == ["torch: not installed", "ok: the GPU stack is consistent"]


def test_fix_without_python_flag_has_none(tmp_path: Path) -> None:
    t, files = torch("2.5.1+cu124")
    tgt = target(t, dist("torchvision", "0.20.1+cpu", "torch==2.5.1"), files=files)
    [p] = verify_cmd.check(tgt, _settings(tmp_path), python=None, runtime=False).problems
    assert p.fix == "backendpick install --backend cu124 torch==2.5.1 torchvision"


# -- build records (builds.json) ----------------------------------------------------------------


def _records(**kw):
    from backendpick.state.build_records import Record

    base = dict(name="flash-attn", version="2.7.4", torch="2.5.1+cu124", cuda="12.4", hip=None, cxx11abi=False,
                how="source")
    base.update(kw)
    return {"flash-attn": Record(**base)}


def _build_check(records, torch_version="2.5.1+cu124", fa="2.7.4", abi=None):
    t, files = torch(torch_version)
    tgt = target(t, dist("flash-attn", fa, "torch"), files=files)
    return verify.build_record_problems(tgt, records, installed_torch.torch_build(tgt, FACTS), NBI, FLAG, cxx11abi=abi)


def test_a_build_recorded_for_the_installed_torch_is_fine():
    assert _build_check(_records()) == ([], [])
    # the prebuilt wheel's METADATA may carry its local tag or not: the same release either way
    assert _build_check(_records(version="2.7.4+cu12torch2.5cxx11abiFALSE"), fa="2.7.4") == ([], [])


@pytest.mark.parametrize(
    ("torch_version", "abi", "says"),
    [
        ("2.6.0+cu124", None, "version 2.6.0+cu124"),
        ("2.5.1+cu121", None, "CUDA 12.1"),
        ("2.5.1+cpu", None, "no CUDA"),
        ("2.5.1+cu124", True, "C++11 ABI on"),
    ],
)
def test_a_build_recorded_for_another_torch_is_a_problem_with_the_fix(torch_version, abi, says):
    problems, warnings = _build_check(_records(), torch_version=torch_version, abi=abi)
    assert warnings == []
    [p] = problems
    assert p.package == "flash-attn" and says in p.message
    assert "built from source against torch 2.5.1+cu124 (CUDA 12.4, C++11 ABI off)" in p.message
    assert p.fix.startswith(f"backendpick install{FLAG} --backend ") and "--reinstall flash-attn flash-attn" in p.fix


def test_a_build_package_without_a_record_is_a_warning_not_silence():
    for records in ({}, _records(version="2.6.3")):  # none, or one about another install
        problems, [w] = _build_check(records)
        assert problems == [] and "no record of the torch it was built for" in w.message
        assert "--reinstall flash-attn flash-attn" in w.fix


# -- which lock verify checks: --lock, else [tool.backendpick] lock; {backend} is the installed torch's --------


def test_the_lock_verify_checks_and_its_backend():
    from backendpick.checks.lock_diff import BY_FLAG, BY_SETTING, Chosen, chosen
    from backendpick.errors import EXIT_USAGE, ConfigError

    project = Path("/proj")
    assert chosen(None, None, project, "cu124", PY) is None
    assert chosen(Path("pylock.{backend}.toml"), "x.toml", project, "cu124", PY) == Chosen(Path("pylock.cu124.toml"), BY_FLAG)
    assert chosen(None, "pylock.{backend}.toml", project, "rocm6.2.4", PY) == Chosen(project / "pylock.rocm6.2.4.toml",
                                                                                      BY_SETTING)
    assert chosen(None, "pylock.toml", project, None, PY) == Chosen(project / "pylock.toml", BY_SETTING)
    for flag, setting in ((Path("pylock.{backend}.toml"), None), (None, "pylock.{backend}.toml")):
        with pytest.raises(ConfigError) as err:
            chosen(flag, setting, project, None, PY)
        assert err.value.exit_code == EXIT_USAGE and f"{PY} has no torch" in err.value.message
        assert err.value.hint == "name the lock: backendpick verify --lock pylock.cpu.toml"


def test_the_lock_setting_is_checked_and_shown_in_text_and_json(tmp_path: Path) -> None:
    from backendpick.model.lock import Lock, LockedFile, LockedPackage, to_toml

    wheel = LockedFile("torch.whl", "https://idx/torch.whl", 1, "a" * 64)
    lock = Lock("cu124", "https://idx/cu124", "3.11", {k: LINUX[k] for k in ("python_version", "sys_platform")},
                (LockedPackage("torch", "2.5.1+cu124", "backend", wheel=wheel),))
    (tmp_path / "pylock.cu124.toml").write_text(to_toml(lock), encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text('[tool.backendpick]\nlock = "pylock.{backend}.toml"\n', encoding="utf-8")
    settings = _settings(tmp_path)
    t, files = torch("2.5.1+cu124")
    for installed, differences in (((t,), 0), ((t, dist("tqdm", "4.66.0")), 1)):
        tgt = target(*installed, files=files)
        report = verify_cmd.with_lock(verify_cmd.check(tgt, settings, python=PY, runtime=False), None,
                                      settings.lock.value, settings, tgt, PY)
        assert report.to_json()["lock"] == {"path": str(tmp_path / "pylock.cu124.toml"),
                                            "named_by": "[tool.backendpick] lock", "backend": "cu124",
                                            "differences": differences}
        assert report.ok is (differences == 0)
        buffer = io.StringIO()
        verify_cmd.render(Output(stdout=buffer), report)
        said = "exactly as locked" if not differences else "1 difference(s)"
        assert f"lock: {tmp_path / 'pylock.cu124.toml'} ([tool.backendpick] lock), {said}" in buffer.getvalue()
    # Requirements named: they are what is checked (the run passes no setting), as install does.
    plain = verify_cmd.check(target(t, files=files), settings, python=PY, runtime=False)
    assert verify_cmd.with_lock(plain, None, None, settings, target(t, files=files), PY).to_json()["lock"] is None
