"""The engines' rendering of plan phases (pip and uv argv from the same intent), finding uv, the last-install record and the order
in which auto selection asks the backend indexes. Pure: no subprocess."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from backendpick import envvars
from backendpick.edges import paths
from backendpick.errors import EXIT_USAGE, ConfigError
from backendpick.execute import engines
from backendpick.inputs.pip_config import PipConfig
from backendpick.knowledge import facts as facts_mod
from backendpick.model.backend import Backend
from backendpick.model.environment import Installed, Target
from backendpick.model.hardware import NVIDIA, Accelerator, Hardware
from backendpick.inputs import installer
from backendpick.model.plan import (BACKEND, BACKEND_INDEX, BUILD, BUILD_REQS, CACHED, OFFLINE, REMOVE, REST,
                                    UNINSTALL, BuildStep, Phase, Plan)
from backendpick.selection.offers import preference
from backendpick.state import last_install
from packaging.version import Version

PY = "/env/bin/python"
PIP = (PY, "-m", "pip")
CONF = PipConfig({
    "index-url": "https://mirror.example/simple",
    "extra-index-url": "https://extra.example/simple https://more.example/simple",
    "find-links": "/wheels",
    "trusted-host": "mirror.example",
    "cert": "/etc/ssl/company.pem",
    "proxy": "http://proxy.example:3128",
    "default-timeout": "60",
    "constraint": "/etc/pip-constraints.txt",
})
USER_ENV = {"PATH": "/usr/bin", "UV_EXTRA_INDEX_URL": "https://evil.example/simple", "UV_TORCH_BACKEND": "cu128",
            "UV_CACHE_DIR": "/cache/uv"}


UV = engines.Renderer(engines.UV, PY, PIP, CONF, USER_ENV, uv="/bin/uv")
PIP_ENGINE = engines.Renderer(engines.PIP, PY, PIP, CONF, USER_ENV)


def translate(phase: Phase) -> engines.Command:
    return UV.command(phase)


def test_backend_phase_gets_the_backend_index_alone():
    phase = Phase(BACKEND, ("torch==2.5.1",), source=BACKEND_INDEX, index_url="https://idx/cu124")
    uv = translate(phase)
    assert uv.argv == ("/bin/uv", "pip", "install", "--python", PY, "--no-config",
                       "--allow-insecure-host", "mirror.example", "--index-url", "https://idx/cu124", "torch==2.5.1")
    # No UV_* source variable reaches it; pip's certificate, proxy and timeout do, in uv's names.
    assert set(uv.unset) == {"UV_EXTRA_INDEX_URL", "UV_TORCH_BACKEND"}
    assert uv.env == {"SSL_CERT_FILE": "/etc/ssl/company.pem", "HTTP_PROXY": "http://proxy.example:3128",
                      "HTTPS_PROXY": "http://proxy.example:3128", "UV_HTTP_TIMEOUT": "60"}
    assert uv.line().startswith("env -u UV_EXTRA_INDEX_URL -u UV_TORCH_BACKEND ")
    # pip: the same intent, the same index alone, pip's configuration left out by its variable.
    pip = PIP_ENGINE.command(phase)
    assert pip.argv == (*PIP, "install", "--index-url", "https://idx/cu124", "torch==2.5.1")
    assert pip.env["PIP_CONFIG_FILE"] == os.devnull and pip.env["PIP_CERT"] == "/etc/ssl/company.pem"


def test_later_phases_get_the_users_pip_sources_explicitly():
    rest = Phase(REST, ("tqdm",), constraints_file="/s/c.txt", options=("--pre", "--trusted-host", "h"))
    argv = translate(rest).argv
    assert argv[:6] == ("/bin/uv", "pip", "install", "--python", PY, "--no-config")
    assert argv[argv.index("--index-url") + 1] == "https://mirror.example/simple"
    extras = [argv[i + 1] for i, a in enumerate(argv) if a == "--extra-index-url"]
    assert extras == ["https://extra.example/simple", "https://more.example/simple"]
    assert argv[argv.index("--find-links") + 1] == "/wheels"
    assert ("-c", "/etc/pip-constraints.txt") == argv[argv.index("/etc/pip-constraints.txt") - 1:][:2]
    # a requirements file's options in uv's spelling; the requirement stays last
    assert argv[-7:] == ("-c", "/s/c.txt", "--prerelease", "allow", "--allow-insecure-host", "h", "tqdm")
    assert argv[-1] == "tqdm"
    # pip reads its configuration itself: the file's options as the user wrote them.
    assert PIP_ENGINE.command(rest).argv == (*PIP, "install", "-c", "/s/c.txt", "--pre", "--trusted-host", "h", "tqdm")


def test_requirements_file_index_url_wins_over_the_configured_one():
    rest = Phase(REST, ("tqdm",), options=("--index-url", "https://file.example/simple"))
    argv = translate(rest).argv
    assert argv.count("--index-url") == 1 and argv[argv.index("--index-url") + 1] == "https://file.example/simple"


def test_build_phase_runs_without_uvs_cache_and_remove_needs_no_yes():
    build = Phase(BUILD, ("flash-attn",), constraints_file="c.txt", no_build_isolation=True, no_cache=True)
    argv = translate(build).argv
    assert "--no-cache" in argv and "--no-build-isolation" in argv and argv[-1] == "flash-attn"
    assert PIP_ENGINE.command(build).argv == (*PIP, "install", "--no-cache-dir", "--no-build-isolation", "-c", "c.txt",
                                              "flash-attn")
    # uv caches what it built by the sdist alone: no cache for any install without isolation.
    assert "--no-cache" in translate(Phase(BUILD, ("x",), no_build_isolation=True)).argv
    reqs = Phase(BUILD_REQS, ("setuptools",), target_dir="/s/build-env", upgrade=True)
    assert translate(reqs).argv[-4:] == ("--target", "/s/build-env", "--upgrade", "setuptools")
    remove = Phase(REMOVE, ("torch",), action=UNINSTALL)
    assert translate(remove).argv == ("/bin/uv", "pip", "uninstall", "--python", PY, "torch")
    assert PIP_ENGINE.command(remove).argv == (*PIP, "uninstall", "-y", "torch")


def test_folded_rest_phase_keeps_its_plain_form():
    wheel = BuildStep("flash-attn", "flash-attn", how=CACHED, version="2.7.4", wheel="/w/f.whl", find_links="/w")
    rest = Phase(REST, ("tqdm",), constraints_file="c", wheels=(wheel,))
    uv = translate(rest)
    assert uv.argv[-6:] == ("-f", "/w", "--only-binary", "flash-attn", "flash-attn==2.7.4", "tqdm")
    plain = UV.command(rest, folded=False).argv
    assert plain[-3:] == ("-c", "c", "tqdm") and plain[0] == "/bin/uv"


def test_switches_and_hashes_in_each_engines_words():
    backend = Phase(BACKEND, ("torch",), source=BACKEND_INDEX, index_url="https://idx/cu124", pre=True, upgrade=True,
                    constraints_file="/s/b.txt", no_deps=True, hashed_file="/s/hashed-backend.txt",
                    hashed_lines=("torch --hash=sha256:00",))
    assert PIP_ENGINE.command(backend).argv == (*PIP, "install", "--upgrade", "--pre", "-c", "/s/b.txt", "--index-url",
                                                "https://idx/cu124", "--no-deps", "-r", "/s/hashed-backend.txt")
    assert UV.command(backend).argv[-10:] == ("--upgrade", "--prerelease", "allow", "-c", "/s/b.txt", "--index-url",
                                              "https://idx/cu124", "--no-deps", "-r", "/s/hashed-backend.txt")
    offline = Phase("restore-kept", ("torch @ file:///k/torch.whl",), source=OFFLINE, no_deps=True)
    command = PIP_ENGINE.command(offline)
    assert command.argv == (*PIP, "install", "--no-index", "--no-deps", "torch @ file:///k/torch.whl")
    assert command.env == {"PIP_CONFIG_FILE": os.devnull}  # not a byte of the user's configuration


def _plan(*phases: Phase) -> Plan:
    return Plan(backend=Backend.parse("cu124"), reason="r", decided_by="--backend", python=Path(PY),
                index_url="https://idx/cu124", phases=phases, constraints_path=Path("/s/c.txt"), pip=PIP)


def test_the_plan_names_its_installer_and_the_renderer_follows_it():
    plan = _plan(Phase(BACKEND, ("torch",), source=BACKEND_INDEX, index_url="https://idx/cu124"))
    assert engines.for_plan(plan).command(plan.phases[0]).argv[:4] == (*PIP, "install")
    uv = replace(plan, installer="uv", uv="/bin/uv")
    assert uv.to_json()["installer"] == "uv" and engines.for_plan(uv).command(uv.phases[0]).argv[0] == "/bin/uv"


def test_missing_uv_is_a_usage_error_with_the_fix(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        installer.resolve("uv", {envvars.UV: str(tmp_path / "nope"), "PATH": ""})
    assert err.value.exit_code == EXIT_USAGE
    assert "installer uv (from --installer) is not available" in err.value.message
    assert "backendpick[uv]" in (err.value.hint or "")
    with pytest.raises(ConfigError):
        installer.resolve("conda", {})


def test_explicit_uv_executable_is_used(tmp_path: Path):
    uv = tmp_path / "uv"
    uv.write_text("#!/bin/sh\n")
    uv.chmod(uv.stat().st_mode | stat.S_IXUSR)
    assert installer.resolve("uv", {envvars.UV: str(uv)}) == installer.Installer(installer.UV, uv)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "uv").write_bytes(b"#!/bin/sh\n")
    (on_path / "uv").chmod(0o755)
    assert installer.find_uv({"PATH": str(on_path)}) == on_path / "uv"
    # detect installs nothing: uv where the setting says uv and uv is there, else pip, no error.
    assert installer.found("uv", {envvars.UV: str(uv)}) == installer.Installer(installer.UV, uv)
    assert installer.found("uv", {envvars.UV: str(tmp_path / "nope"), "PATH": ""}) is None
    assert installer.found("pip", {envvars.UV: str(uv)}) is None


def test_restore_renders_with_the_installer_asked_for(tmp_path: Path):
    target = _target(torch="2.5.1+cu124")
    phase = Phase("remove", ("torch",), action=UNINSTALL)
    uv = engines.for_target(target, PipConfig(), {}, installer.Installer(installer.UV, Path("/bin/uv")))
    assert uv.command(phase).argv == ("/bin/uv", "pip", "uninstall", "--python", PY, "torch")
    pip = engines.for_target(target, PipConfig(), {})
    assert pip.command(phase).argv == (PY, "-m", "pip", "uninstall", "-y", "torch")


# -- the record of the last install ------------------------------------------------------------------


def _target(**installed: str) -> Target:
    return Target(python=Path(PY), prefix=Path("/env"), version=(3, 11, 7), markers={}, tags=(), pip_version="24",
                  purelib=Path("/env/lib"), installed={n: Installed(n, v) for n, v in installed.items()})


def test_record_applies_only_to_the_same_request_and_environment(tmp_path: Path):
    env_key = last_install.environment_key(_target(torch="2.5.1+cu124", pip="24"))
    request = last_install.request_key(requirements=["torch==2.5.1"], backend="auto")
    offers = {Backend.parse("cu124"): [Version("2.5.1"), Version("2.6.0")]}
    last_install.save(tmp_path, request=request, environment=env_key, backend=Backend.parse("cu124"),
                      index_url="https://user:token@idx/cu124", torch="2.5.1+cu124", offers=offers, offers_source="index")
    data = json.loads(paths.last_install(tmp_path).read_text())
    assert data["index_url"] == "https://idx/cu124"  # no credentials on disk
    record = last_install.load(tmp_path, request, env_key)
    assert record is not None and last_install.offers(record) == offers
    assert last_install.load(tmp_path, last_install.request_key(requirements=["torch"], backend="auto"), env_key) is None
    changed = last_install.environment_key(_target(torch="2.5.1+cu124", pip="24", einops="0.8.0"))
    assert last_install.load(tmp_path, request, changed) is None
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # written atomically
    paths.last_install(tmp_path).write_text("{not json")
    assert last_install.load(tmp_path, request, env_key) is None


# -- auto selection: which indexes, in which order ---------------------------------------------------


def test_auto_asks_only_what_a_cuda_12_4_driver_runs_newest_first():
    facts = facts_mod.load()
    hw = Hardware(accelerators=(Accelerator(NVIDIA, "A100", "550.54.14", "8.0"),), nvidia_driver="550.54.14",
                  driver_cuda="12.4", driver_cuda_source="driver table")
    candidates = [b for b in facts.all_backends() if b.kind in ("cpu", "cuda")]
    order = preference(facts, hw, candidates, "strict")
    cuda = [b for b in order if b.kind == "cuda"]
    assert cuda[0] == Backend.parse("cu124") and all(b.version <= (12, 4) for b in cuda)
    assert cuda == sorted(cuda, reverse=True) and order[-1] == Backend.parse("cpu")
    assert len(order) < len(candidates)


class _Pages:
    """An index client answering from a dict: URL -> torch versions (missing: 404)."""

    def __init__(self, pages):
        self.pages, self.asked = pages, []

    def project(self, url, name):
        from backendpick.indexes.client import FileLink, PageNotFound

        self.asked.append(url.split("/")[-1])
        if url not in self.pages:
            raise PageNotFound(f"{url}/{name}/ (HTTP 404)")
        return [FileLink(f"torch-{v}-py3-none-any.whl", f"{url}/torch-{v}.whl") for v in self.pages[url]]


def _target_any():
    return Target(python=Path(PY), prefix=Path("/env"), version=(3, 11, 7), markers={}, tags=("py3-none-any",),
                  pip_version="24", purelib=Path("/env/lib"), installed={})


def test_preferred_takes_the_final_spec_and_an_accept_check_and_stops_at_the_first():
    from packaging.specifiers import SpecifierSet

    from backendpick.selection.offers import gather_preferred

    facts = facts_mod.load()
    hw = Hardware(accelerators=(Accelerator(NVIDIA, "V100", "570.86.10", "7.0"),), nvidia_driver="570.86.10",
                  driver_cuda="12.8", driver_cuda_source="driver table")
    pages = {"x/cu128": ["2.7.1+cu128"], "x/cu126": ["2.6.0+cu126", "2.7.1+cu126"], "x/cu124": ["2.6.0+cu124"],
             "x/cpu": ["2.6.0+cpu"]}
    candidates = [b for b in facts.all_backends() if b.kind in ("cpu", "cuda")]
    client = _Pages(pages)
    offers = gather_preferred(facts, client, "x/{backend}", hw, candidates, SpecifierSet("<2.7"), _target_any(),
                              policy="strict")
    assert list(offers.versions) == [Backend.parse("cu126")] and client.asked == ["cu128", "cu126"]
    # cu126 lacks a companion a package pins: the choice moves on to cu124.
    client = _Pages(pages)
    offers = gather_preferred(facts, client, "x/{backend}", hw, candidates, SpecifierSet("<2.7"), _target_any(),
                              policy="strict", accept=lambda b: b != Backend.parse("cu126"))
    assert Backend.parse("cu124") in offers.versions and Backend.parse("cu126") not in offers.versions
    # Nothing anywhere: what the index answered is kept for the message.
    empty = gather_preferred(facts, _Pages({}), "x/{backend}", hw, candidates, SpecifierSet(), _target_any(),
                             policy="strict")
    assert empty.unanswered() and "HTTP 404" in empty.unanswered()


# -- golden: one planned stack, both engines --------------------------------------------------------


def _stack_plan(tmp_path: Path) -> Plan:
    """The planner's phases for a stack with a build package, its source build chosen (as
    wheel_choice.attach leaves it), the wheels folded into the rest phase."""
    import sys

    from packaging.requirements import Requirement

    from backendpick.inputs import config
    from backendpick.model.choice import Decision
    from backendpick.model.plan import SOURCE, fold_builds
    from backendpick.planning import planner

    settings = config.load(facts_mod.load(), project_dir=tmp_path, env={})
    target = Target(python=Path(PY), prefix=Path("/env"), version=(3, 11, 7), markers={"sys_platform": "linux"},
                    tags=(), pip_version="24", purelib=Path("/env/lib"), installed={})
    plan = planner.make_plan(
        decision=Decision(Backend.parse("cu124"), "--backend", "chosen by --backend"), settings=settings,
        requirements=[Requirement(r) for r in ("torch==2.5.1", "flash-attn", "tqdm")], target=target,
        index_url="https://idx/cu124", offered=[], constraints_path=Path("/s/c.txt"), runner_python=sys.executable,
        rest_options=["--extra-index-url", "https://extra.example/simple"])
    step = BuildStep("flash-attn", "flash-attn", how=SOURCE, version="2.7.4", find_links="/s/build/flash-attn",
                     build_requirement="flash-attn==2.7.4", wheel_dir="/s/build/flash-attn", build_env={"MAX_JOBS": "2"})
    phases = [replace(p, steps=(step,)) if p.name == BUILD else
              replace(p, target_dir="/s/build-env", upgrade=True, constraints_file="/s/build-constraints.txt")
              if p.name == BUILD_REQS else p for p in plan.phases]
    return replace(plan, phases=fold_builds(phases))


def test_golden_pip_and_uv_commands_from_the_same_intents(tmp_path: Path):
    plan = _stack_plan(tmp_path)
    assert [p.name for p in plan.phases] == ["backend", "build-requirements", "build", "rest"]
    extra = ("--extra-index-url", "https://extra.example/simple")
    pip = engines.Renderer(engines.PIP, PY, PIP, CONF, {})
    assert [pip.command(p).argv for p in plan.phases if not p.deferred] == [
        (*PIP, "install", "--index-url", "https://idx/cu124", "torch==2.5.1"),
        (*PIP, "install", "--target", "/s/build-env", "--upgrade", "-c", "/s/build-constraints.txt", *extra,
         "setuptools", "wheel", "packaging", "psutil", "ninja", "einops"),
        (*PIP, "install", "-c", "/s/c.txt", *extra, "-f", "/s/build/flash-attn", "--only-binary", "flash-attn",
         "flash-attn==2.7.4", "tqdm"),
    ]
    build = plan.phases[2]
    assert pip.build_command(build, build.steps[0]).argv == (
        *PIP, "wheel", "--no-cache-dir", "--no-build-isolation", "-c", "/s/c.txt", *extra, "--no-binary", "flash-attn",
        "--no-deps", "-w", "/s/build/flash-attn", "flash-attn==2.7.4")
    uv = engines.Renderer(engines.UV, PY, PIP, CONF, {}, uv="/bin/uv")
    head = ("/bin/uv", "pip", "install", "--python", PY, "--no-config", "--allow-insecure-host", "mirror.example")
    sources = ("--index-url", "https://mirror.example/simple", "--extra-index-url", "https://extra.example/simple",
               "--extra-index-url", "https://more.example/simple", "--find-links", "/wheels",
               "-c", "/etc/pip-constraints.txt")
    assert [uv.command(p).argv for p in plan.phases if not p.deferred] == [
        (*head, "--index-url", "https://idx/cu124", "torch==2.5.1"),
        (*head, *sources, "--target", "/s/build-env", "--upgrade", "-c", "/s/build-constraints.txt", *extra,
         "setuptools", "wheel", "packaging", "psutil", "ninja", "einops"),
        (*head, *sources, "-c", "/s/c.txt", *extra, "-f", "/s/build/flash-attn", "--only-binary", "flash-attn",
         "flash-attn==2.7.4", "tqdm"),
    ]
    # uv builds the sdist file (issue 22 item 3: no pip process), downloaded first where it is on
    # a server; no index is read, so none of the user's sources are on the command line.
    sdist = "https://mirror.example/files/flash_attn-2.7.4.tar.gz#sha256=ab"
    step = replace(build.steps[0], sdist=sdist, sdist_file="/s/build/flash-attn-sdist/flash_attn-2.7.4.tar.gz")
    built = uv.build_command(build, step)
    assert built.argv == (
        "/bin/uv", "build", "--no-config", "--python", PY, "--wheel", "--no-build-isolation", "--no-cache",
        "--no-create-gitignore", "--out-dir", "/s/build/flash-attn", "/s/build/flash-attn-sdist/flash_attn-2.7.4.tar.gz")
    # uv's certificate and proxy are pip's, as for its installs; the build's limits are the plan's.
    assert built.env == {"MAX_JOBS": "2", "SSL_CERT_FILE": "/etc/ssl/company.pem", "UV_HTTP_TIMEOUT": "60",
                         "HTTP_PROXY": "http://proxy.example:3128", "HTTPS_PROXY": "http://proxy.example:3128"}
    shown = uv.shown(replace(build, steps=(step,))).splitlines()
    assert shown[-3:] == [
        f"# downloaded first by backendpick (uv build takes a file): {sdist} -> "
        "/s/build/flash-attn-sdist/flash_attn-2.7.4.tar.gz",
        "env HTTPS_PROXY=http://proxy.example:3128 HTTP_PROXY=http://proxy.example:3128 MAX_JOBS=2 "
        "SSL_CERT_FILE=/etc/ssl/company.pem UV_HTTP_TIMEOUT=60 /bin/uv build --no-config --python /env/bin/python "
        "--wheel --no-build-isolation --no-cache --no-create-gitignore --out-dir /s/build/flash-attn "
        "/s/build/flash-attn-sdist/flash_attn-2.7.4.tar.gz",
        "# the wheels are installed by the rest phase's uv run"]
    assert uv.step_json(build, step)["build_argv"] == list(built.argv)
    # What --dry-run prints for the deferred build phase: why, the build, where its wheel goes.
    assert pip.shown(build).splitlines()[-2:] == [
        "env MAX_JOBS=2 /env/bin/python -m pip wheel --no-cache-dir --no-build-isolation -c /s/c.txt --extra-index-url "
        "https://extra.example/simple --no-binary flash-attn --no-deps -w /s/build/flash-attn flash-attn==2.7.4",
        "# the wheels are installed by the rest phase's pip run"]
