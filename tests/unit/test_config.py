"""``config.load`` in process: which source wins, what is refused, and what it hands on.

The CLI tests (tests/cli/test_detect_cli.py) show the same rules through a real process; these
pin each rule on its own, without a subprocess.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backendpick import envvars
from backendpick.errors import ConfigError
from backendpick.inputs import config, settings_schema
from backendpick.knowledge import facts as facts_mod
from backendpick.model import names
from backendpick.model.backend import CUDA, ROCM, Backend

FACTS = facts_mod.load()
TEMPLATE = "https://mirror.example/pytorch/{backend}"


def project(tmp_path: Path, tool: str = "", *, project_table: str = "") -> Path:
    text = project_table
    if tool:
        text += "\n[tool.backendpick]\n" + tool + "\n"
    (tmp_path / "pyproject.toml").write_text(text, encoding="utf-8")
    return tmp_path


def load(tmp_path: Path, env: dict[str, str] | None = None, **flags) -> config.Settings:
    return config.load(FACTS, project_dir=tmp_path, env=env or {}, **flags)


def refused(tmp_path: Path, env: dict[str, str] | None = None, **flags) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env, **flags)
    return caught.value


# -- precedence: flag > environment > pyproject.toml > default --------------------------------------

PYPROJECT_SOURCE = "pyproject.toml [tool.backendpick]"


@pytest.mark.parametrize(
    "flag, env, in_pyproject, value, source",
    [
        ("cu126", "cu124", True, "cu126", "--backend"),
        (None, "cu124", True, "cu124", "BACKENDPICK_BACKEND"),
        (None, None, True, "cu121", PYPROJECT_SOURCE),
        (None, None, False, "auto", "default"),
        (None, "", True, "cu121", PYPROJECT_SOURCE),  # an empty variable is unset
        ("auto", "cu124", True, "auto", "--backend"),  # an explicit auto wins like any flag
    ],
)
def test_backend_precedence(tmp_path, flag, env, in_pyproject, value, source):
    if in_pyproject:
        project(tmp_path, 'backend = "cu121"')
    settings = load(tmp_path, {} if env is None else {envvars.BACKEND: env}, backend=flag)
    assert (settings.backend.value, settings.backend.source) == (value, source)


@pytest.mark.parametrize(
    "flag, env, in_pyproject, source",
    [
        ("https://flag.example/{backend}", "https://env.example/{backend}", True, "--index-url"),
        (None, "https://env.example/{backend}", True, "BACKENDPICK_INDEX_URL"),
        (None, None, True, PYPROJECT_SOURCE),
        (None, None, False, "default"),
    ],
)
def test_index_url_precedence(tmp_path, flag, env, in_pyproject, source):
    if in_pyproject:
        project(tmp_path, 'index-url = "https://pyproject.example/{backend}"')
    settings = load(tmp_path, {} if env is None else {envvars.INDEX_URL: env}, index_url=flag)
    expected = {
        "--index-url": flag,
        "BACKENDPICK_INDEX_URL": env,
        PYPROJECT_SOURCE: "https://pyproject.example/{backend}",
        "default": FACTS.default_index_url,
    }[source]
    assert (settings.index_url.value, settings.index_url.source) == (expected, source)


@pytest.mark.parametrize(
    "flag, env, in_pyproject, value, source",
    [
        ("strict", "minor", True, "strict", "--cuda-compat"),
        (None, "minor", False, "minor", "BACKENDPICK_CUDA_COMPAT"),
        (None, None, True, "minor", PYPROJECT_SOURCE),
        (None, None, False, "strict", "default"),
    ],
)
def test_cuda_compat_precedence(tmp_path, flag, env, in_pyproject, value, source):
    if in_pyproject:
        project(tmp_path, 'cuda-compat = "minor"')
    settings = load(tmp_path, {} if env is None else {envvars.CUDA_COMPAT: env}, cuda_compat=flag)
    assert (settings.cuda_compat.value, settings.cuda_compat.source) == (value, source)


def test_process_environment_is_not_read_when_env_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv(envvars.BACKEND, "cu118")
    assert load(tmp_path, {}).backend.source == "default"


def test_defaults_without_pyproject(tmp_path):
    settings = load(tmp_path)
    assert settings.pyproject.path is None
    assert settings.backend_packages == tuple(dict.fromkeys(names.normalize(p) for p in FACTS.backend_packages))
    # The facts' list, and the shipped recipes that build after torch (deepspeed, apex).
    from backendpick.knowledge import recipes

    built = {n for n, rows in recipes.shipped().items() if rows[-1].build is not None}
    assert built == {"deepspeed", "apex"}
    assert set(settings.no_build_isolation) == {names.normalize(n) for n in FACTS.no_build_isolation} | built
    assert settings.build == config.BuildSettings()
    assert settings.chosen_backend is None


# -- the backend, parsed once into a Backend -----------------------------------------------------


@pytest.mark.parametrize(
    "name, kind, version",
    [("cu124", CUDA, (12, 4)), ("cu130", CUDA, (13, 0)), ("rocm6.2.4", ROCM, (6, 2, 4)), ("cpu", "cpu", ()),
     ("xpu", "xpu", ())],
)  # exactly as the index names it: CU130 is refused with "did you mean cu130?" (issue 9,
#    tests/unit/test_inputs_state.py)
def test_backend_is_parsed_into_a_backend(tmp_path, name, kind, version):
    chosen = load(tmp_path, backend=name).chosen_backend
    assert isinstance(chosen, Backend)
    assert (chosen.kind, chosen.version) == (kind, version)


def test_backend_from_pyproject_is_parsed_too(tmp_path):
    project(tmp_path, 'backend = "rocm6.3"')
    assert load(tmp_path).chosen_backend == Backend.parse("rocm6.3")


@pytest.mark.parametrize("auto", ["auto", "AUTO", " auto "])
def test_auto_means_no_backend_chosen(tmp_path, auto):
    assert load(tmp_path, backend=auto).chosen_backend is None


@pytest.mark.parametrize(
    "env, flag, source",
    [({}, "foo", "--backend"), ({envvars.BACKEND: "cuda"}, None, "BACKENDPICK_BACKEND")],
)
def test_bad_backend_name_says_where_it_came_from(tmp_path, env, flag, source):
    err = refused(tmp_path, env, backend=flag)
    bad = flag or env[envvars.BACKEND]
    assert err.message == f"'{bad}' is not a backend name (from {source})"
    assert "cuXY" in (err.hint or "")


def test_bad_backend_in_pyproject_names_the_file(tmp_path):
    project(tmp_path, 'backend = "cu12.4"')
    err = refused(tmp_path)
    assert err.message == f"'cu12.4' is not a backend name (from {PYPROJECT_SOURCE})"


# -- unknown keys and near misses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "tool, key, suggestion",
    [
        ('backnd = "cu124"', "tool.backendpick.backnd", "backend"),
        ('index_url = "https://x.example/{backend}"', "tool.backendpick.index_url", "index-url"),
        ("extra-backend-package = []", "tool.backendpick.extra-backend-package", "extra-backend-packages"),
        ("[tool.backendpick.build]\nmax-job = 2", "tool.backendpick.build.max-job", "max-jobs"),
    ],
)
def test_unknown_key_suggests_the_near_miss(tmp_path, tool, key, suggestion):
    project(tmp_path, tool)
    err = refused(tmp_path)
    assert err.message == f"{tmp_path / 'pyproject.toml'}: unknown key {key}"
    assert err.hint == f"did you mean '{suggestion}'?"


def test_unknown_key_far_from_any_lists_the_known_ones(tmp_path):
    project(tmp_path, "zzzzzz = 1")
    err = refused(tmp_path)
    assert err.message.endswith("unknown key tool.backendpick.zzzzzz")
    assert err.hint == "known keys: " + ", ".join(settings_schema.KEYS)


# -- wrong types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool, fragment",
    [
        ("backend = 124", "tool.backendpick.backend must be a str"),
        ('backend-packages = "torch"', "tool.backendpick.backend-packages must be a list"),
        ("extra-backend-packages = [1, 2]", "tool.backendpick.extra-backend-packages must be a list of strings"),
        ('no-build-isolation = ["flash-attn>=2"]', "holds 'flash-attn>=2', which is not a package name"),
        ('build-requirements = { flash-attn = "setuptools" }',
         "tool.backendpick.build-requirements.flash-attn must be a list of strings"),
        ('prebuilt = { flash-attn = "github" }', "tool.backendpick.prebuilt.flash-attn must be a list of strings"),
        ("build = 3", "tool.backendpick.build must be a dict"),
        ("[tool.backendpick.build]\nmax-jobs = true", "tool.backendpick.build.max-jobs must be a int"),
        ("[tool.backendpick.build]\nmax-jobs = 0", "tool.backendpick.build.max-jobs must be at least 1"),
        ('[tool.backendpick.build]\nchecks = "no"', "tool.backendpick.build.checks must be a bool"),
    ],
)
def test_wrong_types_are_refused(tmp_path, tool, fragment):
    project(tmp_path, tool)
    assert fragment in refused(tmp_path).message


def test_tool_table_that_is_not_a_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool]\nbackendpick = "cu124"\n', encoding="utf-8")
    assert refused(tmp_path).message.endswith("[tool.backendpick] must be a table")


def test_invalid_toml_is_one_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.backendpick\n", encoding="utf-8")
    assert refused(tmp_path).message.startswith(f"{tmp_path / 'pyproject.toml'} is not valid TOML")


def test_missing_project_directory(tmp_path):
    err = refused(tmp_path / "nope")
    assert err.message == f"project directory {tmp_path / 'nope'} does not exist"


# -- values checked after merging ----------------------------------------------------------------


def test_index_url_needs_the_placeholder(tmp_path):
    err = refused(tmp_path, index_url="https://mirror.example/pytorch/cu124")
    assert err.message.startswith("index URL from --index-url has no {backend} placeholder")


def test_plain_http_index_needs_a_trusted_host(tmp_path):
    err = refused(tmp_path, {envvars.INDEX_URL: "http://mirror.lan/{backend}"})
    assert err.message == "index URL from BACKENDPICK_INDEX_URL uses plain http: http://mirror.lan/{backend}"
    project(tmp_path, 'trusted-hosts = ["mirror.lan"]')
    assert load(tmp_path, {envvars.INDEX_URL: "http://mirror.lan/{backend}"}).trusted_hosts == ("mirror.lan",)


def test_credentials_in_a_bad_index_url_are_redacted(tmp_path):
    err = refused(tmp_path, index_url="ftp://alice:s3cret@mirror.example/{backend}")
    assert "s3cret" not in err.message and "***@mirror.example" in err.message


def test_bad_cuda_compat(tmp_path):
    err = refused(tmp_path, {envvars.CUDA_COMPAT: "loose"})
    assert err.message == "cuda-compat from BACKENDPICK_CUDA_COMPAT must be \"strict\" or \"minor\", not 'loose'"


def test_backend_packages_are_normalized_and_extended(tmp_path):
    project(tmp_path, 'backend-packages = ["Torch", "torch_vision"]\nextra-backend-packages = ["My.Kernels", "torch"]')
    assert load(tmp_path).backend_packages == ("torch", "torch-vision", "my-kernels")


def test_build_requirements_belong_to_no_build_isolation_packages(tmp_path):
    project(tmp_path, 'no-build-isolation = ["Flash_Attn"]\nbuild-requirements = { flash-attn = ["setuptools>=70"] }')
    assert load(tmp_path).no_build_isolation == {"flash-attn": ("setuptools>=70",)}
    project(tmp_path, 'no-build-isolation = []\nbuild-requirements = { flash-attn = ["setuptools"] }')
    err = refused(tmp_path)
    assert err.message.startswith("tool.backendpick.build-requirements names flash-attn")


def test_build_table_becomes_build_settings(tmp_path):
    project(tmp_path, '[tool.backendpick.build]\nmax-jobs = 4\narch-list = "8.0;9.0"\nenv = { NVCC_THREADS = "2" }\n'
                      "checks = false")
    assert load(tmp_path).build == config.BuildSettings(max_jobs=4, arch_list="8.0;9.0", env={"NVCC_THREADS": "2"},
                                                        checks=False)
