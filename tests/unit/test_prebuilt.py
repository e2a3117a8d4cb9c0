"""Prebuilt wheel names, where they are looked for, the version choice, the build phase's
choice between cache, prebuilt wheel and source build, the wheel cache, and the settings.

The naming rows of ``data/facts.toml`` are checked against the file names the projects'
setup.py (get_wheel_url) computes at the release tags the rows name.
"""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from backendpick.build import limits, wheel_choice, wheel_sources
from backendpick.build.wheel_names import platform_tag, wheel_filename
from backendpick.edges import paths
from backendpick.errors import ConfigError
from backendpick.execute import engines
from backendpick.indexes.client import FileLink, IndexUnavailable, PageNotFound
from backendpick.inputs import config
from backendpick.inputs.config import BuildSettings
from backendpick.inputs.pip_config import PipConfig
from backendpick.knowledge import facts as facts_mod
from backendpick.knowledge.facts import Package
from backendpick.model.environment import Target
from backendpick.model.plan import AS_IS, CACHED, PENDING, PREBUILT, SOURCE, BuildStep, Phase
from backendpick.state import wheel_cache
from backendpick.target.installed_torch import TorchInfo

CU124 = TorchInfo("2.5.1+cu124", cuda="12.4", cxx11abi=False)
CU130 = TorchInfo("2.9.1+cu130", cuda="13.0", cxx11abi=True)
CU118 = TorchInfo("2.5.1+cu118", cuda="11.8", cxx11abi=False)
ROCM62 = TorchInfo("2.5.1+rocm6.2", hip="6.2.41133-dd7f95766", cxx11abi=False)
CPU = TorchInfo("2.5.1+cpu")
LINUX = "linux_x86_64"


def pkg(name: str) -> Package:
    return wheel_choice.packages()[name]


# -- the file names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "torch", "expected"),
    [
        # flash-attn: cu118/cu122 until 2.6.0.post1, cu118/cu123 in 2.6.1-2.6.3, the major from 2.7.0.
        ("flash-attn", "2.5.9.post1", CU124, "flash_attn-2.5.9.post1+cu122torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn", "2.6.3", CU124, "flash_attn-2.6.3+cu123torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn", "2.6.3", CU118, "flash_attn-2.6.3+cu118torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn", "2.7.4", CU124, "flash_attn-2.7.4+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn", "2.7.4.post1", CU118, "flash_attn-2.7.4.post1+cu11torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn", "2.8.3.post1", CU130, "flash_attn-2.8.3.post1+cu13torch2.9cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn", "2.7.4", ROCM62, "flash_attn-2.7.4+rocm62torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        # mamba-ssm and causal-conv1d tag ROCm wheels "hip".
        ("mamba-ssm", "2.2.4", CU124, "mamba_ssm-2.2.4+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("mamba-ssm", "2.2.2", CU124, "mamba_ssm-2.2.2+cu122torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("mamba-ssm", "2.2.4", ROCM62, "mamba_ssm-2.2.4+hip62torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("mamba-ssm", "2.3.0", CU130, "mamba_ssm-2.3.0+cu13torch2.9cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"),
        ("causal-conv1d", "1.4.0", CU124, "causal_conv1d-1.4.0+cu122torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("causal-conv1d", "1.5.0.post8", CU124, "causal_conv1d-1.5.0.post8+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("causal-conv1d", "1.6.1", CU130, "causal_conv1d-1.6.1+cu13torch2.9cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"),
    ],
)
def test_wheel_filename_follows_each_release_naming(name, version, torch, expected):
    assert wheel_filename(pkg(name), version, torch, "cp311", LINUX) == (expected, "")


@pytest.mark.parametrize(
    ("name", "version", "torch", "why"),
    [
        ("flash-attn", "2.8.3", CU130, "publishes no wheels for CUDA 13"),  # cu13 from 2.8.3.post1
        ("flash-attn", "2.6.1", ROCM62, "publishes no ROCm wheels"),  # ROCm from 2.6.2
        ("causal-conv1d", "1.2.0", ROCM62, "publishes no ROCm wheels"),
        ("flash-attn", "2.7.4", CPU, "is a CPU build"),
    ],
)
def test_no_wheel_name_when_the_project_publishes_none(name, version, torch, why):
    filename, reason = wheel_filename(pkg(name), version, torch, "cp311", LINUX)
    assert filename is None and why in reason


def test_no_wheel_name_off_linux():
    assert platform_tag({"sys_platform": "darwin", "platform_machine": "arm64"}) is None
    assert platform_tag({"sys_platform": "linux", "platform_machine": "aarch64"}) == "linux_aarch64"
    filename, why = wheel_filename(pkg("flash-attn"), "2.7.4", CU124, "cp311", None)
    assert filename is None and "Linux wheels only" in why


@pytest.mark.parametrize("name", sorted(wheel_choice.packages()))
def test_every_prebuilt_row_is_complete(name):
    row = pkg(name)
    assert "{version}" in row.release_url and "{filename}" in row.release_url
    assert row.naming and min(n.since for n in row.naming).release == (0,)
    assert all("11" in n.cuda and "12" in n.cuda for n in row.naming)
    # Every package with prebuilt rows is built after torch, without isolation.
    assert name in facts_mod.load().no_build_isolation


# -- where to look ----------------------------------------------------------------------------------


def test_sources_default_to_the_github_release(tmp_path):
    [source] = wheel_sources.sources(pkg("flash-attn"), None, tmp_path)
    assert source.url == pkg("flash-attn").release_url and source.text == "github"


def test_sources_keep_the_configured_order_and_resolve_folders(tmp_path):
    got = wheel_sources.sources(pkg("flash-attn"), ("wheels", "/abs/w", "https://m.example/{filename}", "github"), tmp_path)
    assert [s.folder for s in got[:2]] == [tmp_path / "wheels", Path("/abs/w")]
    assert got[2].url == "https://m.example/{filename}"
    assert got[3].url.startswith("https://github.com/Dao-AILab/flash-attention/releases/download/")


def test_look_finds_a_wheel_in_a_folder_and_says_why_not_elsewhere(tmp_path):
    name = "flash_attn-2.7.4+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"
    (tmp_path / "full").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "full" / name).write_bytes(b"wheel")
    where = wheel_sources.sources(pkg("flash-attn"), ("missing", "empty", "full"), tmp_path)
    found, said = wheel_sources.look(name, "2.7.4", where, PipConfig())
    assert found is not None and found.location == str(tmp_path / "full" / name)
    assert said == ["missing: no such folder", "empty: not there"]


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {"/w/present.whl"}
    refuse_head = {"/signed/present.whl"}

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        if self.command == "HEAD" and path in self.refuse_head:
            self.send_response(403)
        elif path in self.files or (path in self.refuse_head and "Range" in self.headers):
            self.send_response(206 if "Range" in self.headers else 200)
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_url_exists_answers_found_missing_and_unreachable(http_server, no_proxy):
    from backendpick.indexes.transport import Session

    conf = Session(PipConfig())
    assert wheel_sources.url_exists(f"{http_server}/w/present.whl", conf) == (True, "")
    assert wheel_sources.url_exists(f"{http_server}/w/absent.whl", conf) == (False, "not published (HTTP 404)")
    # Storage that refuses HEAD (signed URLs) gets a one-byte GET.
    assert wheel_sources.url_exists(f"{http_server}/signed/present.whl", conf) == (True, "")
    ok, why = wheel_sources.url_exists("http://127.0.0.1:9/nothing.whl", conf, timeout=2)
    assert ok is None and why.startswith("network unreachable")


def test_look_formats_the_template_and_quotes_the_plus(http_server, no_proxy, monkeypatch):
    asked = []
    monkeypatch.setattr(wheel_sources, "url_exists", lambda url, conf, timeout=0: (asked.append(url), (False, "nope"))[1])
    where = wheel_sources.sources(pkg("flash-attn"), ("https://m.example/{version}/{filename}",), Path("."))
    found, said = wheel_sources.look("flash_attn-2.7.4+cu12x.whl", "2.7.4", where, PipConfig())
    assert found is None and said == ["https://m.example/{version}/{filename}: nope"]
    assert asked == ["https://m.example/2.7.4/flash_attn-2.7.4%2Bcu12x.whl"]


def test_look_any_takes_the_newest_fitting_folder_wheel(tmp_path):
    for v in ("2.6.3+cu123", "2.7.3+cu12", "2.7.4+cu12", "2.8.0+cu12"):
        tag = "cxx11abiFALSE-cp311-cp311-linux_x86_64"
        (tmp_path / f"flash_attn-{v}torch2.5{tag}.whl").write_bytes(b"w")
    (tmp_path / "flash_attn-2.9.0+cu12torch2.4cxx11abiFALSE-cp311-cp311-linux_x86_64.whl").write_bytes(b"w")
    where = wheel_sources.sources(pkg("flash-attn"), (str(tmp_path),), tmp_path)
    found = wheel_sources.look_any(pkg("flash-attn"), SpecifierSet("<2.8"), CU124, "cp311", LINUX, where)
    assert found is not None and Path(found.location).name.startswith("flash_attn-2.7.4+cu12torch2.5")


# -- which version ----------------------------------------------------------------------------------


class _Client:
    def __init__(self, files=None, error=None):
        self.files, self.error, self.asked = files or [], error, []

    def project(self, index_url, name):
        self.asked.append((index_url, name))
        if self.error:
            raise self.error
        return self.files


def _target(**kw) -> Target:
    base = dict(python=Path("/venv/bin/python"), prefix=Path("/venv"), version=(3, 11, 7),
                markers={"sys_platform": "linux", "platform_machine": "x86_64"},
                tags=("cp311-cp311-manylinux_2_17_x86_64", "py3-none-any"), pip_version="24.0",
                purelib=Path("/venv/lib/python3.11/site-packages"), is_venv=True)
    base.update(kw)
    return Target(**base)


FILES = [
    FileLink("flash_attn-2.6.3.tar.gz", "u"),
    FileLink("flash_attn-2.7.4.post1.tar.gz", "u"),
    FileLink("flash_attn-2.8.0.tar.gz", "u", yanked=True),
    FileLink("flash_attn-2.8.1.tar.gz", "u", requires_python=">=3.12"),
    FileLink("flash_attn-2.9.0b1.tar.gz", "u"),
    FileLink("flash_attn-2.9.1-cp39-cp39-win_amd64.whl", "u"),  # not installable here
]


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("flash-attn", "2.7.4.post1"),  # yanked, wrong Python, pre-release and foreign wheel skipped
        ("flash-attn<2.7", "2.6.3"),
        ("flash-attn>=2.9.0b1", "2.9.0b1"),  # a pre-release when the specifier names one
        ("flash-attn==2.5.8", "2.5.8"),  # a pin needs no index
    ],
)
def test_choose_version_is_pips_choice(requirement, expected):
    client = _Client(FILES)
    version, why = wheel_choice.choose_version(Requirement(requirement), client=client, index_url="https://i/simple",
                                               target=_target())
    assert (version, why) == (expected, "")
    assert client.asked == ([] if "==" in requirement else [("https://i/simple", "flash-attn")])


def test_choose_version_says_why_when_it_cannot():
    req = Requirement("flash-attn")
    v, why = wheel_choice.choose_version(req, client=_Client(error=IndexUnavailable("https://i/simple/flash-attn/: timed out")),
                                         index_url="https://i/simple", target=_target())
    assert v is None and why == "cannot read https://i/simple/flash-attn/: timed out"
    v, why = wheel_choice.choose_version(req, client=_Client(error=PageNotFound("x")), index_url="https://u:p@i/simple",
                                         target=_target())
    assert v is None and why == "flash-attn is not on https://***@i/simple"
    v, why = wheel_choice.choose_version(Requirement("flash-attn>3"), client=_Client(FILES), index_url="https://i/simple",
                                         target=_target())
    assert v is None and "satisfies '>3'" in why


def test_default_index_for_the_version_choice():
    assert wheel_choice.default_index(PipConfig(), ()) == "https://pypi.org/simple"
    assert wheel_choice.default_index(PipConfig({"index-url": "https://m/simple"}), ()) == "https://m/simple"
    assert wheel_choice.default_index(PipConfig({"index-url": "https://m/simple"}), ("--index-url", "https://r/simple")) \
        == "https://r/simple"


# -- the choice: cache, prebuilt, source --------------------------------------------------------------


def _ctx(tmp_path: Path, **kw) -> wheel_choice.BuildContext:
    base = dict(
        project_dir=tmp_path, configured={}, build=BuildSettings(), pip_config=PipConfig(), gpu_caps=("8.0",),
        gpu_archs=(), cache_root=tmp_path / "cache", probe_root=tmp_path / "root", python_tag="cp311",
        platform=LINUX, target_bin=tmp_path / "venv" / "bin", staging=tmp_path / "state" / "build",
        torch=CU124,
    )
    base.update(kw)
    return wheel_choice.BuildContext(**base)


def _offline(monkeypatch):
    monkeypatch.setattr(wheel_sources, "url_exists", lambda url, conf, timeout=0: (None, "network unreachable (test)"))


ENV = {"PATH": "/usr/bin"}


def test_a_cached_build_comes_first(tmp_path, monkeypatch):
    _offline(monkeypatch)
    ctx = _ctx(tmp_path)
    wheel = tmp_path / "flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"built")
    key = wheel_choice.cache_key(ctx, "flash-attn", "2.7.4", "FLASH_ATTN_CUDA_ARCHS=80,TORCH_CUDA_ARCH_LIST=8.0")
    stored = wheel_cache.store(ctx.cache_root, key, wheel, ctx.torch.built_with())
    [step] = wheel_choice.resolve([BuildStep("flash-attn", "flash-attn", version="2.7.4")], ctx, ENV)
    assert (step.how, step.wheel) == (CACHED, str(stored.wheel))
    # pip gets the cache entry's folder and the exact version: a command known before install.
    assert (step.find_links, step.install_requirement()) == (str(stored.directory), "flash-attn==2.7.4")
    assert PIP.command(_phase(step)).argv[-3:] == ("-f", str(stored.directory), "flash-attn==2.7.4")


def test_a_prebuilt_wheel_comes_before_a_build(tmp_path, monkeypatch):
    _offline(monkeypatch)
    name = "flash_attn-2.7.4+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / name).write_bytes(b"w")
    ctx = _ctx(tmp_path, configured={"flash-attn": ("github", "wheels")})
    [step] = wheel_choice.resolve([BuildStep("flash-attn[extra]", "flash-attn", version="2.7.4")], ctx, ENV)
    assert step.how == PREBUILT and step.wheel == str(tmp_path / "wheels" / name)
    assert step.note == f"flash-attn 2.7.4: prebuilt wheel {name} from wheels"
    assert step.install_requirement() == f"flash-attn[extra] @ {(tmp_path / 'wheels' / name).as_uri()}"


def test_otherwise_a_source_build_with_limits_says_why(tmp_path, monkeypatch):
    _offline(monkeypatch)
    root = tmp_path / "root" / "proc"
    root.mkdir(parents=True)
    (root / "meminfo").write_text("MemAvailable:   41943040 kB\n")  # 40 GB
    ctx = _ctx(tmp_path)
    [step] = wheel_choice.resolve([BuildStep("flash-attn>=2.7", "flash-attn", version="2.7.4")], ctx, ENV)
    assert step.how == SOURCE
    assert "no prebuilt wheel flash_attn-2.7.4+cu12torch2.5cxx11abiFALSE" in step.note
    assert "github: network unreachable (test)" in step.note
    # pip's wheel cache and any wheel of the package are off for this build only: it must
    # compile against the installed torch.
    built = Phase("build", ("flash-attn>=2.7",), no_build_isolation=True, no_cache=True, constraints_file="/state/c.txt")
    renderer = engines.Renderer(engines.PIP, "/venv/bin/python", ("/venv/bin/python", "-m", "pip"))
    assert renderer.build_command(built, step).argv == (
        "/venv/bin/python", "-m", "pip", "wheel", "--no-cache-dir", "--no-build-isolation", "-c", "/state/c.txt",
        "--no-binary", "flash-attn", "--no-deps", "-w", str(tmp_path / "state" / "build" / "flash-attn"),
        "flash-attn==2.7.4")
    jobs = str(min(4, limits.cpu_count()))  # 40 GB / 9 GB per job
    assert step.build_env == {"MAX_JOBS": jobs, "TORCH_CUDA_ARCH_LIST": "8.0", "FLASH_ATTN_CUDA_ARCHS": "80",
                              "FLASH_ATTENTION_FORCE_BUILD": "TRUE"}
    assert step.arch_key == "FLASH_ATTN_CUDA_ARCHS=80,TORCH_CUDA_ARCH_LIST=8.0"


def test_the_users_force_build_is_left_alone(tmp_path, monkeypatch):
    _offline(monkeypatch)
    [step] = wheel_choice.resolve([BuildStep("flash-attn", "flash-attn", version="2.7.4")], _ctx(tmp_path),
                                  {**ENV, "FLASH_ATTENTION_FORCE_BUILD": "FALSE", "MAX_JOBS": "3"})
    assert "FLASH_ATTENTION_FORCE_BUILD" not in step.build_env and "MAX_JOBS" not in step.build_env


def test_unknown_version_uses_the_newest_cached_or_folder_wheel(tmp_path, monkeypatch):
    _offline(monkeypatch)
    ctx = _ctx(tmp_path, gpu_caps=())
    for v in ("2.6.3", "2.7.4"):
        wheel = tmp_path / f"flash_attn-{v}-cp311-cp311-linux_x86_64.whl"
        wheel.write_bytes(b"built")
        wheel_cache.store(ctx.cache_root, wheel_choice.cache_key(ctx, "flash-attn", v, "default"), wheel, ctx.torch.built_with())
    unknown = BuildStep("flash-attn<2.7", "flash-attn", note="cannot read https://i/simple/flash-attn/: timed out")
    [step] = wheel_choice.resolve([unknown], ctx, ENV)
    assert (step.how, step.version) == (CACHED, "2.6.3")
    [step] = wheel_choice.resolve([replace(unknown, requirement="flash-attn>=3")], ctx, ENV)
    assert step.how == SOURCE and step.build_requirement == "flash-attn>=3"
    assert "cannot read https://i/simple/flash-attn/" in step.note


def test_a_narrowed_request_reuses_a_build_for_all_architectures(tmp_path, monkeypatch):
    _offline(monkeypatch)
    ctx = _ctx(tmp_path)
    wheel = tmp_path / "flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"built")
    wheel_cache.store(ctx.cache_root, wheel_choice.cache_key(ctx, "flash-attn", "2.7.4", wheel_cache.DEFAULT_ARCH), wheel,
                      ctx.torch.built_with())
    [step] = wheel_choice.resolve([BuildStep("flash-attn", "flash-attn", version="2.7.4")], ctx, ENV)
    assert step.how == CACHED
    # ... but not one built for other GPUs only, nor for another torch.
    other = _ctx(tmp_path / "o", gpu_caps=("9.0",))
    wheel_cache.store(other.cache_root, wheel_choice.cache_key(other, "flash-attn", "2.7.4", "TORCH_CUDA_ARCH_LIST=8.0"), wheel,
                      other.torch.built_with())
    assert wheel_choice.resolve([BuildStep("flash-attn", "flash-attn", version="2.7.4")], other, ENV)[0].how == SOURCE
    newer = replace(ctx, torch=TorchInfo("2.6.0+cu124", cuda="12.4", cxx11abi=False))
    assert wheel_choice.resolve([BuildStep("flash-attn", "flash-attn", version="2.7.4")], newer, ENV)[0].how == SOURCE


# -- how the build phase prints ----------------------------------------------------------------------


PIP = engines.Renderer(engines.PIP, "py", ("py", "-m", "pip"))


def _phase(*steps: BuildStep) -> Phase:
    reqs = tuple(s.requirement for s in steps)
    return Phase("build", reqs, no_build_isolation=True, constraints_file="c.txt", steps=steps)


def test_build_phase_prints_every_command_and_why():
    source = BuildStep("flash-attn", "flash-attn", how=SOURCE, version="2.7.4", note="flash-attn 2.7.4: building",
                       build_requirement="flash-attn==2.7.4", wheel_dir="/s/build/flash-attn", build_env={"MAX_JOBS": "2"})
    pending = BuildStep("mamba-ssm", "mamba-ssm", how=PENDING, version="2.2.4", note="mamba-ssm 2.2.4: chosen after")
    plain = BuildStep("my-ext", "my-ext", how=AS_IS)
    phase = _phase(source, pending, plain)
    assert PIP.shown(phase).splitlines() == [
        "# flash-attn 2.7.4: building",
        "# mamba-ssm 2.2.4: chosen after",
        "env MAX_JOBS=2 py -m pip wheel --no-cache-dir --no-build-isolation -c c.txt --no-binary flash-attn --no-deps "
        "-w /s/build/flash-attn flash-attn==2.7.4",
        "py -m pip install --no-build-isolation -c c.txt 'flash-attn @ <the wheel built above>' "
        "'<wheel for mamba-ssm (2.2.4): chosen after the backend phase>' my-ext",
    ]
    data = PIP.phase_json(phase)
    assert [b["how"] for b in data["builds"]] == [SOURCE, PENDING, AS_IS]
    assert data["builds"][0]["build_argv"][3:5] == ["wheel", "--no-cache-dir"] and data["builds"][1]["build_argv"] == []
    assert data["argv"][-1] == "my-ext"


def test_prebuilt_url_credentials_are_never_printed():
    step = BuildStep("flash-attn", "flash-attn", how=PREBUILT, version="2.7.4",
                     wheel="https://u:secret@m.example/flash_attn-2.7.4.whl", note="from https://u:secret@m.example")
    line = PIP.shown(_phase(step))
    assert "secret" not in line and "***@m.example" in line
    assert "secret" not in str(PIP.phase_json(_phase(step)))


def test_a_phase_without_steps_prints_its_requirements():
    phase = Phase("build", ("flash-attn",))
    assert PIP.shown(phase) == "py -m pip install flash-attn"
    assert PIP.phase_json(phase)["argv"] == ["py", "-m", "pip", "install", "flash-attn"]


# -- the wheel cache ------------------------------------------------------------------------------------


def _key(**kw) -> wheel_cache.Key:
    base = dict(name="flash-attn", version="2.7.4", torch="2.5.1+cu124", backend="cuda12.4", cxx11abi=False,
                python="cp311", platform=LINUX, arch="TORCH_CUDA_ARCH_LIST=8.0")
    base.update(kw)
    return wheel_cache.Key(**base)


def test_cache_root_follows_the_platform_convention(monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    assert paths.wheel_cache({"BACKENDPICK_CACHE_DIR": "~/bp"}) == Path("~/bp").expanduser()
    assert paths.wheel_cache({"XDG_CACHE_HOME": "/xdg", "HOME": "/h"}) == Path("/xdg/backendpick/wheels")
    assert paths.wheel_cache({"HOME": "/h"}) == Path("/h/.cache/backendpick/wheels")
    monkeypatch.setattr("sys.platform", "darwin")
    assert paths.wheel_cache({"HOME": "/h"}) == Path("/h/Library/Caches/backendpick/wheels")


def test_cache_store_lookup_list_clear(tmp_path):
    wheel = tmp_path / "flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"x" * 10)
    root = tmp_path / "cache"
    entry = wheel_cache.store(root, _key(), wheel, wheel_cache.built_with(_key()))
    assert entry.wheel.read_bytes() == b"x" * 10 and entry.size == 10
    assert wheel_cache.store(root, _key(), wheel, wheel_cache.built_with(_key())) == entry  # storing again keeps the one entry
    assert wheel_cache.lookup(root, _key()) == entry
    assert wheel_cache.lookup(root, _key(python="cp312")) is None
    assert wheel_cache.lookup(root, _key(cxx11abi=True)) is None
    other = tmp_path / "mamba_ssm-2.2.4-cp311-cp311-linux_x86_64.whl"
    other.write_bytes(b"m")
    wheel_cache.store(root, _key(name="mamba-ssm", version="2.2.4"), other, wheel_cache.built_with(_key()))
    assert [e.key.name for e in wheel_cache.entries(root)] == ["flash-attn", "mamba-ssm"]
    assert [e.key.name for e in wheel_cache.entries(root, ["Mamba_SSM"])] == ["mamba-ssm"]
    assert [e.key.name for e in wheel_cache.clear(root, ["mamba-ssm"])] == ["mamba-ssm"]
    assert not (root / "mamba-ssm").exists()
    assert len(wheel_cache.clear(root)) == 1 and wheel_cache.entries(root) == []


def test_a_broken_entry_is_ignored_and_replaced(tmp_path):
    wheel = tmp_path / "flash_attn-2.7.4-py3-none-any.whl"
    wheel.write_bytes(b"w")
    root = tmp_path / "cache"
    broken = wheel_cache.entry_dir(root, _key())
    broken.mkdir(parents=True)
    (broken / "key.json").write_text("{not json")
    assert wheel_cache.lookup(root, _key()) is None and wheel_cache.entries(root) == []
    assert wheel_cache.store(root, _key(), wheel, wheel_cache.built_with(_key())).wheel.parent == broken


def test_only_an_entry_proven_to_belong_to_the_torch_of_its_key_is_used(tmp_path):
    wheel = tmp_path / "flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"w")
    root = tmp_path / "cache"
    # A wheel that came from another torch (pip's cache handed back an old build) is refused.
    with pytest.raises(wheel_cache.NotProven):
        wheel_cache.store(root, _key(), wheel, {**wheel_cache.built_with(_key()), "torch": "2.4.1+cu124"})
    assert wheel_cache.entries(root) == []
    entry = wheel_cache.store(root, _key(), wheel, wheel_cache.built_with(_key()))
    assert entry.proven and wheel_cache.lookup(root, _key()) == entry
    # An entry without the record of the torch its build saw (an older backendpick) is not used.
    record = entry.directory / wheel_cache.KEY_FILE
    data = json.loads(record.read_text())
    del data["built_with"]
    record.write_text(json.dumps(data))
    assert wheel_cache.lookup(root, _key()) is None
    assert wheel_cache.newest(root, _key(), SpecifierSet(">=2")) is None
    assert wheel_cache.store(root, _key(), wheel, wheel_cache.built_with(_key())).proven  # replaced by a proven one


def test_cache_write_failure_is_an_oserror(tmp_path):
    wheel = tmp_path / "flash_attn-2.7.4-py3-none-any.whl"
    wheel.write_bytes(b"w")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("file")
    with pytest.raises(OSError):
        wheel_cache.store(blocker / "cache", _key(), wheel, wheel_cache.built_with(_key()))


# -- settings -------------------------------------------------------------------------------------------


def _settings(tmp_path: Path, tool: str) -> config.Settings:
    (tmp_path / "pyproject.toml").write_text(f"[tool.backendpick]\n{tool}\n")
    return config.load(facts_mod.load(), project_dir=tmp_path, env={})


def test_prebuilt_and_build_settings_are_read(tmp_path):
    s = _settings(tmp_path, 'prebuilt = { flash_attn = ["https://m.example/{filename}", "/opt/w", "github"] }\n'
                            'build = { max-jobs = 2, arch-list = "8.0;9.0", env = { NVCC_THREADS = "2" }, checks = false }')
    assert s.prebuilt == {"flash-attn": ("https://m.example/{filename}", "/opt/w", "github")}
    assert s.build == BuildSettings(max_jobs=2, arch_list="8.0;9.0", env={"NVCC_THREADS": "2"}, checks=False)
    assert _settings(tmp_path, "").build == BuildSettings()


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ('prebuilt = { flash-attn = "https://m/{filename}" }', "must be a list of strings"),
        ('prebuilt = { flash-attn = ["https://m.example/wheels/"] }', "has no {filename} placeholder"),
        ('prebuilt = { flash-attn = ["ftp://m/{filename}"] }', "must be an http(s) or file URL"),
        ('prebuilt = { flash-attn = ["https://m/{name}/{filename}"] }', "only use the placeholders"),
        ('prebuilt = { flash-attn = ["http://mirror.corp/{filename}"] }', "uses plain http"),
        ('prebuilt = { xformers = ["/opt/w"] }', "not in no-build-isolation"),
        ("build = { max_jobs = 2 }", "unknown key tool.backendpick.build.max_jobs"),
        ("build = { max-jobs = true }", "must be a int"),
        ("build = { max-jobs = 0 }", "at least 1"),
        ('build = { checks = "no" }', "must be a bool"),
        ("build = { env = { X = 1 } }", "must be a string value"),
    ],
)
def test_bad_prebuilt_and_build_settings_are_one_clear_error(tmp_path, tool, message):
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, tool)
    assert message in err.value.message


def test_typo_in_a_build_key_gets_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, "build = { max-job = 2 }")
    assert err.value.hint == "did you mean 'max-jobs'?"


def test_plain_http_prebuilt_is_fine_on_localhost_and_trusted_hosts(tmp_path):
    s = _settings(tmp_path, 'trusted-hosts = ["mirror.corp"]\n'
                            'prebuilt = { flash-attn = ["http://mirror.corp/{filename}", "http://127.0.0.1:8/{filename}"] }')
    assert len(s.prebuilt["flash-attn"]) == 2


# -- the plan's build phase gets its steps ----------------------------------------------------------


def _plan(tmp_path: Path, reqs: tuple[str, ...], *, backend_runs: bool):
    from backendpick.model.backend import Backend
    from backendpick.model.plan import BACKEND, BUILD, Plan

    phases = [Phase(BACKEND, ("torch",), skip=None if backend_runs else "installed"),
              Phase(BUILD, reqs, no_build_isolation=True, constraints_file=str(tmp_path / "c.txt"))]
    return Plan(Backend.parse("cu124"), "r", "test", Path("/venv/bin/python"), "u", tuple(phases), tmp_path / "c.txt")


def _attach(tmp_path, monkeypatch, plan, tool_text="", installed=()):
    from backendpick.model.environment import Installed
    from backendpick.model.hardware import Hardware

    _offline(monkeypatch)
    monkeypatch.setattr("backendpick.indexes.client.IndexClient.project",
                        lambda self, url, name: [FileLink(f"{name.replace('-', '_')}-2.7.4.tar.gz", "u")])
    monkeypatch.setattr(wheel_choice.installed_torch, "torch_info", lambda python: CU124)
    (tmp_path / "pyproject.toml").write_text(f"[tool.backendpick]\n{tool_text}\n")
    settings = config.load(facts_mod.load(), project_dir=tmp_path, env={})
    target = _target(installed={n: Installed(n, "2.5.1+cu124") for n in installed})
    env = {"BACKENDPICK_CACHE_DIR": str(tmp_path / "cache"), "BACKENDPICK_PROBE_ROOT": str(tmp_path / "root"),
           "PATH": str(tmp_path / "nothing")}
    return wheel_choice.attach(plan, settings=settings, target=target, hardware=Hardware(), pip_config=PipConfig(), env=env)


def test_attach_chooses_later_while_the_backend_phase_changes_torch(tmp_path, monkeypatch):
    plan = _attach(tmp_path, monkeypatch, _plan(tmp_path, ("flash-attn",), backend_runs=True), installed=("torch",))
    [step] = plan.phases[-1].steps
    assert (step.how, step.version) == (PENDING, "2.7.4")
    assert "flash_attn-2.7.4+cu12torch<X.Y>cxx11abi<TRUE|FALSE>-cp311-cp311-linux_x86_64.whl from github" in step.note
    assert plan.phases[-1].context.torch is None


def test_attach_chooses_now_when_torch_is_installed_and_kept(tmp_path, monkeypatch):
    plan = _attach(tmp_path, monkeypatch, _plan(tmp_path, ("flash-attn", "my-ext"), backend_runs=False),
                   tool_text='no-build-isolation = ["flash-attn", "my-ext"]\nprebuilt = { my-ext = ["/w"] }',
                   installed=("torch",))
    source, plain = plan.phases[-1].steps
    assert source.how == SOURCE and source.build_requirement == "flash-attn==2.7.4"
    assert plain.how == AS_IS and plain.install_requirement() == "my-ext"
    # A source build is coming and this machine has no nvcc: the plan says so before install.
    assert any("flash-attn will be built from source, but nvcc" in w for w in plan.warnings), plan.warnings
    assert any("[tool.backendpick.prebuilt] my-ext" in w for w in plan.warnings), plan.warnings


def test_attach_leaves_a_build_phase_without_known_packages_alone(tmp_path, monkeypatch):
    plan = _plan(tmp_path, ("my-ext",), backend_runs=True)
    got = _attach(tmp_path, monkeypatch, plan, tool_text='no-build-isolation = ["my-ext"]')
    assert got is plan
