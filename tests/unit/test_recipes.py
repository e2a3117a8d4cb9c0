"""Recipes (issue 12) as pure functions: the schema, the shipped data, placeholders, the backend
rule, routing against a stand-in page reader, the user's tables and mirrors, and the verify
fingerprints of installed builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from backendpick.checks import fingerprint
from backendpick.errors import ConfigError, NoBackendError
from backendpick.indexes.client import FileLink, IndexClient, PageNotFound
from backendpick.inputs import config
from backendpick.inputs.pip_config import PipConfig
from backendpick.knowledge import facts as facts_mod, recipes as rc
from backendpick.model import names
from backendpick.model.backend import Backend
from backendpick.model.environment import Installed, Target
from backendpick.planning import routing

FACTS = facts_mod.load()
PY = Path("/env/bin/python")
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11", "platform_machine": "x86_64"}
CU124, CU126, CPU = Backend.parse("cu124"), Backend.parse("cu126"), Backend.parse("cpu")
ROCM62 = Backend.parse("rocm6.2")


def target(*dists: Installed, files: dict | None = None) -> Target:
    return Target(
        python=PY, prefix=Path("/env"), version=(3, 11, 7), markers=dict(LINUX),
        tags=("cp311-cp311-linux_x86_64", "py3-none-any"), pip_version="24.0",
        purelib=Path("/env/lib/python3.11/site-packages"),
        installed={names.normalize(d.name): d for d in dists}, is_venv=True, files=dict(files or {}),
    )


def settings(tmp_path: Path, text: str = "") -> config.Settings:
    (tmp_path / "pyproject.toml").write_text(text)
    return config.load(FACTS, project_dir=tmp_path, env={})


class Pages(IndexClient):
    """A page reader serving fixed pages: routing's network side without a network."""

    def __init__(self, pages: dict):
        super().__init__(PipConfig())
        self.pages = pages
        self.asked: list[str] = []

    def page(self, url: str):
        self.asked.append(url)
        if url not in self.pages:
            raise PageNotFound(url)
        return [FileLink(name, url.rsplit("/", 1)[0] + "/files/" + name) for name in self.pages[url]]


def route(tmp_path: Path, reqs, backend: Backend, *, tgt: Target | None = None, torch: str | None = "2.6.0+cu124",
          pages: dict | None = None, pyproject: str = "", extra=()) -> routing.Routed:
    s = settings(tmp_path, pyproject)
    return routing.route(
        [Requirement(r) for r in reqs], settings=s, backend=backend, target=tgt or target(), torch=torch,
        backend_index=f"https://download.pytorch.org/whl/{backend}", client=Pages(pages or {}),
        markers_ok=lambda r: True, extra=extra,
    )


# -- the shipped data ----------------------------------------------------------------------------


def test_every_shipped_recipe_names_its_source_and_the_date_checked() -> None:
    shipped = rc.shipped()
    for name, rows in shipped.items():
        for r in rows:
            assert r.source.startswith("https://"), name
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r.checked), name
    wanted = {"torch-scatter", "torch-sparse", "torch-cluster", "torch-spline-conv", "pyg-lib", "cupy", "jax",
              "llama-cpp-python", "onnxruntime-gpu", "vllm", "sglang", "bitsandbytes", "deepspeed", "apex", "mmcv",
              "dgl", "spconv", "cudf", "tensorrt", "nvidia-dali", "faiss-gpu", "torchao", "triton"}
    assert wanted <= set(shipped)
    assert {n for n, rows in shipped.items() if any(r.unverified for r in rows)} == {
        "llama-cpp-python", "onnxruntime-gpu", "tensorrt", "apex"}


def test_unverified_rows_warn_when_used(tmp_path: Path) -> None:
    got = route(tmp_path, ["llama-cpp-python"], CU124,
                pages={"https://abetlen.github.io/llama-cpp-python/whl/cu124/llama-cpp-python/": ["llama_cpp_python-0.3.2-py3-none-any.whl"]})
    assert any("recipe for llama-cpp-python is partly unverified: cu125" in w for w in got.warnings)


# -- schema and validation --------------------------------------------------------------------------


@pytest.mark.parametrize("row, message", [
    ({"index-ur": "https://x/{backend}"}, "unknown key 'index-ur'"),
    ({"index-url": "https://x/{cuda_mjr}"}, "unknown placeholder {cuda_mjr}"),
    ({"name": {"cudaa": "x-{cuda_major}"}}, "unknown kind 'cudaa'"),
    ({"name": "a", "extra": "b"}, "name and extra exclude each other"),
    ({"backends": ["cu12x"]}, "'cu12x' is not a backend name"),
    ({"versions": "=>13"}, "is not a version specifier"),
    ({"cpu": "no thanks!"}, "is not \"same\", \"refuse\" or a requirement"),
    ({"build": "yes"}, "must be true or a list"),
])
def test_bad_recipes_are_named_errors(row: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        rc.parse("mylib", row, "pyproject.toml")
    assert message in exc.value.message
    assert "tool.backendpick.packages.mylib" in exc.value.message


def test_a_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError) as exc:
        rc.parse("mylib", {"find-link": "https://x/{backend}.html"}, "pyproject.toml")
    assert exc.value.hint == "did you mean 'find-links'?"
    with pytest.raises(ConfigError) as exc:
        rc.parse("mylib", {"name": "x-{cuda_mayor}"}, "pyproject.toml")
    assert "did you mean {cuda_major}?" in exc.value.hint


def test_a_user_table_with_a_mistake_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        settings(tmp_path, '[tool.backendpick.packages.cupy]\nnaem = "cupy-cuda{cuda_major}x"\n')
    assert "unknown key 'naem'" in exc.value.message and exc.value.exit_code == 2


# -- the backend rule and placeholders ----------------------------------------------------------------


@pytest.mark.parametrize("torch_backend, expected", [
    ("cu124", "cu124"), ("cu126", "cu125"), ("cu128", "cu125"), ("cu130", "cu130"), ("cu132", "cu132"),
    ("cu118", None), ("rocm6.2", None), ("cpu", "cpu"),
])
def test_newest_listed_backend_of_the_same_major_not_newer_than_torchs(torch_backend: str, expected) -> None:
    [llama] = rc.shipped()["llama-cpp-python"]
    got = rc.match_backend(llama, Backend.parse(torch_backend))
    assert (got.name if got else None) == expected


def test_placeholders_expand_for_the_matched_backend() -> None:
    vals = rc.values(Backend.parse("cu125"), torch="2.6.0+cu126", python_tag="cp311", platform="linux_x86_64",
                     backend_index="https://i/cu126")
    text = "{backend} {torch} {torch_minor} {cuda} {cuda_major} {cuda_nodot} {python_tag} {platform} {backend_index}"
    assert rc.expand(text, vals, "x") == "cu125 2.6.0 2.6 12.5 12 125 cp311 linux_x86_64 https://i/cu126"
    rocm = rc.values(ROCM62, torch=None, python_tag="cp311", platform=None, backend_index="")
    assert rc.expand("cupy-rocm-{rocm_major}-{rocm_minor} {rocm}", rocm, "cupy") == "cupy-rocm-6-2 6.2"
    with pytest.raises(NoBackendError, match="needs {torch_minor}.*torch is not installed"):
        rc.expand("https://x/torch-{torch_minor}.html", rocm, "torch-scatter")


def test_version_limited_recipes_follow_the_requirement() -> None:
    rows = rc.shipped()["onnxruntime-gpu"]
    assert rc.choose(rows, SpecifierSet()).versions == SpecifierSet(">=1.27")  # pip takes the newest
    assert rc.choose(rows, SpecifierSet("<1.27")).versions == SpecifierSet(">=1.19,<1.27")
    assert rc.choose(rows, SpecifierSet("==1.20.0")).versions == SpecifierSet(">=1.19,<1.27")
    assert rc.choose(rows, SpecifierSet("<1.18")).versions == SpecifierSet("<1.19")
    assert rc.choose(rows, SpecifierSet("~=1.28")).versions == SpecifierSet(">=1.27")


def test_mirrors_replace_the_longest_prefix() -> None:
    mirrors = (("https://data.pyg.org/", "https://m.example/all/"), ("https://data.pyg.org/whl/", "https://m.example/pyg/"))
    assert rc.mirror("https://data.pyg.org/whl/torch-2.5.0+cu124.html", mirrors) == "https://m.example/pyg/torch-2.5.0+cu124.html"
    assert rc.mirror("https://data.pyg.org/other", mirrors) == "https://m.example/all/other"
    assert rc.mirror("https://elsewhere/x", mirrors) == "https://elsewhere/x"


# -- routing -----------------------------------------------------------------------------------------------

PYG_PAGE = "https://data.pyg.org/whl/torch-2.6.0+cu124.html"
PYG_FILES = ["torch_scatter-2.1.2+pt26cu124-cp311-cp311-linux_x86_64.whl",
             "torch_scatter-2.1.2+pt26cu124-cp310-cp310-linux_x86_64.whl",
             "torch_scatter-2.1.1+pt26cu124-cp311-cp311-linux_x86_64.whl",
             "torch_sparse-0.6.18+pt26cu124-cp311-cp311-linux_x86_64.whl"]


def test_each_mechanism_becomes_the_requirement_for_the_backend(tmp_path: Path) -> None:
    got = route(tmp_path, ["torch", "torch-scatter", "cupy>=13", "jax", "spconv"], CU124, pages={PYG_PAGE: PYG_FILES})
    reqs = [str(r) for r in got.requirements]
    assert reqs[0] == "torch"
    assert reqs[1] == "torch-scatter @ https://data.pyg.org/whl/files/torch_scatter-2.1.2+pt26cu124-cp311-cp311-linux_x86_64.whl"
    assert reqs[2:] == ["cupy-cuda12x>=13", "jax[cuda12]", "spconv-cu124"]
    lines = [r.line() for r in got.routes]
    assert lines[0] == f"torch-scatter -> torch-scatter 2.1.2+pt26cu124 (recipe: find-links page per torch and backend; from {PYG_PAGE}; rest phase)"
    assert lines[1] == "cupy -> cupy-cuda12x>=13 (recipe: name per CUDA major; rest phase)"
    # What the plan does not install is fenced; what it installs, and the family, is not.
    assert "torch-sparse<0" in got.fences and "vllm<0" in got.fences and "dgl<0" in got.fences
    assert "cupy<0" in got.fences  # the sdist: only cupy-cuda12x may come in
    assert not {"torch-scatter<0", "triton<0", "deepspeed<0", "bitsandbytes<0"} & set(got.fences)


def test_find_links_page_missing_for_this_torch_is_an_error_before_anything_changes(tmp_path: Path) -> None:
    with pytest.raises(NoBackendError) as exc:
        route(tmp_path, ["torch-scatter"], CU124, torch="2.9.1+cu124")
    assert exc.value.message == "torch-scatter: no page for torch 2.9.1 and cu124 at https://data.pyg.org/whl/torch-2.9.0+cu124.html"


def test_mirrors_apply_to_pages_and_the_wheels_they_link(tmp_path: Path) -> None:
    mirrored = "https://m.example/pyg/torch-2.6.0+cu124.html"
    got = route(tmp_path, ["torch-scatter"], CU124, pages={mirrored: PYG_FILES[:1]},
                pyproject='[tool.backendpick.mirrors]\n"https://data.pyg.org/whl/" = "https://m.example/pyg/"\n')
    assert str(got.requirements[0]).endswith("@ https://m.example/pyg/files/torch_scatter-2.1.2+pt26cu124-cp311-cp311-linux_x86_64.whl")
    assert got.routes[0].url == mirrored


def test_an_installed_wheel_of_the_chosen_version_is_kept(tmp_path: Path) -> None:
    tgt = target(Installed("torch-scatter", "2.1.2+pt26cu124"))
    got = route(tmp_path, ["torch-scatter"], CU124, tgt=tgt, pages={PYG_PAGE: PYG_FILES})
    assert str(got.requirements[0]) == "torch-scatter==2.1.2+pt26cu124"


def test_rocm_names_and_the_backend_index(tmp_path: Path) -> None:
    got = route(tmp_path, ["cupy", "triton"], ROCM62, torch="2.5.1+rocm6.2")
    assert [str(r) for r in got.requirements] == ["cupy-rocm-6-2", "pytorch-triton-rocm"]
    assert got.routes[1].phase == "backend"


def test_a_pulled_in_triton_on_rocm_is_the_rocm_build(tmp_path: Path) -> None:
    got = route(tmp_path, ["torch"], ROCM62, torch="2.5.1+rocm6.2", extra=("triton",))
    assert [str(r) for r in got.requirements] == ["torch", "pytorch-triton-rocm"]


def test_a_backend_the_recipe_lacks_names_what_exists(tmp_path: Path) -> None:
    with pytest.raises(NoBackendError) as exc:
        route(tmp_path, ["jax"], ROCM62, torch="2.5.1+rocm6.2")
    assert exc.value.message.startswith("jax has no build for rocm6.2: its recipe lists cpu, cu120, cu130")
    with pytest.raises(NoBackendError) as exc:
        route(tmp_path, ["onnxruntime-gpu"], CU124)
    assert "onnxruntime-gpu has no build for cu124: its recipe lists cu130" in exc.value.message
    assert "pin onnxruntime-gpu<1.27" in exc.value.message
    got = route(tmp_path, ["onnxruntime-gpu<1.27"], CU124)
    assert [str(r) for r in got.requirements] == ["onnxruntime-gpu<1.27,>=1.19"]
    with pytest.raises(NoBackendError, match="onnxruntime-gpu has no build for cu124: its recipe lists cu118"):
        route(tmp_path, ["onnxruntime-gpu==1.17.1"], CU124)


def test_the_cpu_backend(tmp_path: Path) -> None:
    with pytest.raises(NoBackendError) as exc:
        route(tmp_path, ["cupy"], CPU, torch="2.6.0+cpu")
    assert exc.value.message.startswith("cupy is GPU-only: the cpu backend has no build of it")
    got = route(tmp_path, ["faiss-gpu>=1.8", "jax"], CPU, torch="2.6.0+cpu")
    assert [str(r) for r in got.requirements] == ["faiss-cpu>=1.8", "jax"]
    assert got.fences == tuple(sorted(got.fences)) and "jax<0" not in got.fences


def test_apex_by_name_would_be_another_project(tmp_path: Path) -> None:
    with pytest.raises(NoBackendError) as exc:
        route(tmp_path, ["apex"], CU124)
    assert exc.value.message.startswith("apex comes only from a direct URL or a local checkout (NVIDIA apex is not on PyPI")
    got = route(tmp_path, ["apex @ git+https://github.com/NVIDIA/apex"], CU124)
    assert str(got.requirements[0]) == "apex @ git+https://github.com/NVIDIA/apex"


def test_another_cuda_majors_build_is_removed_first(tmp_path: Path) -> None:
    got = route(tmp_path, ["cupy"], CU124, tgt=target(Installed("cupy-cuda11x", "13.3.0")))
    assert got.remove == ("cupy-cuda11x",)


def test_a_dependency_pulled_in_is_routed_like_a_request(tmp_path: Path) -> None:
    got = route(tmp_path, ["torch"], CU124, pages={PYG_PAGE: PYG_FILES}, extra=("torch-sparse",))
    assert str(got.requirements[1]).startswith("torch-sparse @ https://data.pyg.org/whl/files/torch_sparse-0.6.18+pt26cu124")


# -- the user's tables ---------------------------------------------------------------------------------


def test_a_user_recipe_replaces_the_shipped_one_and_adds_new_ones(tmp_path: Path) -> None:
    got = route(tmp_path, ["cupy", "mylib"], CU126, pyproject=(
        '[tool.backendpick.packages.cupy]\nname = { cuda = "cupy-cuda{cuda_nodot}" }\n'
        '[tool.backendpick.packages.mylib]\nname = "mylib-cu{cuda_major}"\nbackends = ["cu124"]\n'))
    assert [str(r) for r in got.requirements] == ["cupy-cuda126", "mylib-cu12"]


def test_build_and_prebuilt_keys_are_the_build_phase_settings(tmp_path: Path) -> None:
    s = settings(tmp_path, '[tool.backendpick.packages.flash-attn]\nprebuilt = ["https://m.example/fa/{filename}"]\n'
                           '[tool.backendpick.packages.mykernels]\nbuild = ["setuptools", "ninja"]\n')
    assert s.prebuilt["flash-attn"] == ("https://m.example/fa/{filename}",)
    assert s.no_build_isolation["mykernels"] == ("setuptools", "ninja")
    assert s.no_build_isolation["deepspeed"] == ("setuptools", "wheel", "packaging", "ninja")  # shipped
    got = route(tmp_path, ["deepspeed"], CU124,
                pyproject='[tool.backendpick.packages.mykernels]\nbuild = true\n')
    assert got.routes[0].phase == "build"


def test_mirrors_apply_to_the_backend_index_and_prebuilt_wheels(tmp_path: Path) -> None:
    from backendpick.build import wheel_choice

    s = settings(tmp_path, '[tool.backendpick.mirrors]\n"https://download.pytorch.org/whl/" = "https://m.example/pt/"\n'
                           '"https://github.com/" = "https://m.example/gh/"\n')
    assert s.index_url.value == "https://m.example/pt/{backend}"
    ctx = wheel_choice.BuildContext(project_dir=tmp_path, configured={}, build=s.build, pip_config=PipConfig(), gpu_caps=(),
                                    gpu_archs=(), cache_root=tmp_path, probe_root=tmp_path, python_tag="cp311",
                                    platform="linux_x86_64", target_bin=tmp_path, staging=tmp_path,
                                    mirrors=s.mirrors)
    [source] = ctx.sources_for("flash-attn")
    assert source.url.startswith("https://m.example/gh/Dao-AILab/flash-attention/releases/download/")


def test_a_plain_http_mirror_needs_a_trusted_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain http"):
        settings(tmp_path, '[tool.backendpick.mirrors]\n"https://data.pyg.org/whl/" = "http://mirror.corp/pyg/"\n')
    s = settings(tmp_path, '[tool.backendpick]\ntrusted-hosts = ["mirror.corp"]\n[tool.backendpick.mirrors]\n'
                           '"https://data.pyg.org/whl/" = "http://mirror.corp/pyg/"\n')
    assert s.mirrors == (("https://data.pyg.org/whl/", "http://mirror.corp/pyg/"),)


# -- verify fingerprints ---------------------------------------------------------------------------------


def problems(*dists: Installed, torch: str = "2.6.0+cu124", files: dict | None = None) -> list[str]:
    tgt = target(*dists, files=files)
    backend = Backend.parse(torch.split("+")[1])
    return [f"{p.package}: {p.message} | {p.fix}" for p in fingerprint.problems(tgt, backend, torch, rc.shipped(), "")]


def test_builds_matching_torch_are_fine() -> None:
    assert problems(Installed("cupy-cuda12x", "13.3.0"), Installed("torch-scatter", "2.1.2+pt26cu124"),
                    Installed("jax-cuda12-plugin", "0.4.35"), Installed("dgl", "2.4.0+cu124"),
                    Installed("llama-cpp-python", "0.3.2"), Installed("triton", "3.1.0")) == []


def test_builds_for_another_backend_are_named_with_the_fix() -> None:
    got = problems(Installed("cupy-cuda11x", "13.3.0"), Installed("torch-scatter", "2.1.2+pt25cu124"),
                   Installed("jax-cuda13-plugin", "0.4.35"), Installed("dgl", "2.4.0+cu118"),
                   Installed("spconv-cu118", "2.3.6"))
    assert got == [
        "cupy-cuda11x: built for CUDA 11, but torch is cu124 (CUDA 12) | /env/bin/python -m pip uninstall -y cupy-cuda11x && backendpick install cupy",
        "dgl: 2.4.0+cu118 is built for cu118, but torch is 2.6.0+cu124 | backendpick install --reinstall dgl dgl",
        "jax-cuda13-plugin: built for CUDA 13, but torch is cu124 (CUDA 12) | /env/bin/python -m pip uninstall -y jax-cuda13-plugin && backendpick install jax",
        "spconv-cu118: built for CUDA 11, but torch is cu124 (CUDA 12) | /env/bin/python -m pip uninstall -y spconv-cu118 && backendpick install spconv",
        "torch-scatter: 2.1.2+pt25cu124 is built for torch 2.5, but torch is 2.6.0+cu124 | backendpick install --reinstall torch-scatter torch-scatter",
    ]


def test_two_builds_at_once_and_triton_over_rocm() -> None:
    assert problems(Installed("cupy-cuda11x", "13.3.0"), Installed("cupy-cuda12x", "13.3.0")) == [
        "cupy: 2 builds installed at once: cupy-cuda11x, cupy-cuda12x | /env/bin/python -m pip uninstall -y "
        "cupy-cuda11x cupy-cuda12x && backendpick install cupy"]
    assert problems(Installed("triton", "3.1.0"), torch="2.5.1+rocm6.2") == [
        "triton: built for cuda, but torch is rocm6.2 | /env/bin/python -m pip uninstall -y triton && backendpick install triton"]


def test_onnxruntime_records_its_cuda() -> None:
    info = {fingerprint.ONNXRUNTIME_INFO: 'package_name = "onnxruntime-gpu"\ncuda_version = "13.0"\n'}
    got = problems(Installed("onnxruntime-gpu", "1.28.0"), files=info)
    assert got == ["onnxruntime-gpu: 1.28.0 is built for CUDA 13.0, but torch is cu124 (CUDA 12) | "
                   "backendpick install --reinstall onnxruntime-gpu onnxruntime-gpu (CUDA 12: pin onnxruntime-gpu<1.27)"]
    assert problems(Installed("onnxruntime-gpu", "1.28.0"), files=info, torch="2.9.1+cu130") == []


def test_bitsandbytes_follows_torch_unless_bnb_cuda_version_overrides() -> None:
    tgt = target(Installed("bitsandbytes", "0.45.0"))
    ok = fingerprint.problems(tgt, CU124, "2.6.0+cu124", rc.shipped(), "", env={"BNB_CUDA_VERSION": "126"})
    assert ok == []
    [bad] = fingerprint.problems(tgt, CU124, "2.6.0+cu124", rc.shipped(), "", env={"BNB_CUDA_VERSION": "118"})
    assert bad.message == "BNB_CUDA_VERSION=118 makes it load its CUDA 11.8 library, but torch is cu124 (CUDA 12)"
