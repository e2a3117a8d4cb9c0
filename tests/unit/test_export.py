"""``shell_export.to_shell``: a plan as a POSIX shell script of pip commands.

Plans are built with ``planner.make_plan`` from hand-made targets (no pip, no index). ``sh -n`` and the
script's own constraints step run as subprocesses (``allow_subprocess``). That the script
installs what ``install`` installs is shown against the local world in
``tests/integration/test_examples.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from backendpick.execute import engines, shell_build, shell_export
from backendpick.inputs import config, pip_config
from backendpick.knowledge import facts as facts_mod
from backendpick.model import names
from backendpick.model.backend import Backend
from backendpick.model.choice import Decision
from backendpick.model.environment import Installed, Target
from backendpick.planning import planner

FACTS = facts_mod.load()
PY = "/env/bin/python"
INDEX = "https://download.pytorch.org/whl/cu124"
SH = "/bin/sh" if os.path.exists("/bin/sh") else "sh"


def target(*dists: Installed) -> Target:
    return Target(
        python=Path(PY), prefix=Path("/env"), version=(3, 11, 7),
        markers={"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11",
                 "python_full_version": "3.11.7", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython"},
        tags=("py3-none-any",), pip_version="24.0", purelib=Path("/env/lib/python3.11/site-packages"),
        installed={names.normalize(d.name): d for d in dists}, is_venv=True,
    )


def make_plan(tmp_path: Path, reqs, *, index: str = INDEX, installed=(), backend: str = "cu124", constraints=(),
              rest_options=()):
    settings = config.load(FACTS, project_dir=tmp_path, env={})
    decision = Decision(Backend.parse(backend), "--backend", "chosen by --backend")
    return planner.make_plan(
        decision=decision, requirements=[Requirement(r) for r in reqs], settings=settings, target=target(*installed),
        index_url=index, offered=[], constraints_path=tmp_path / "state" / "constraints.txt",
        runner_python=sys.executable, user_constraints=[Requirement(c) for c in constraints],
        rest_options=list(rest_options),
    )


STACK = ["torch>=2.5,<2.10", "torchvision", "xformers", "flash-attn>=2.6", "transformers>=4.40",
         'pywin32; sys_platform == "win32"', "tqdm"]


def phase_lines(script: str) -> dict[str, str]:
    """``# phase NAME`` -> the pip command line under it."""
    lines = script.splitlines()
    out = {}
    for i, line in enumerate(lines):
        if line.startswith("# phase "):
            out[line[len("# phase "):]] = next(x.strip() for x in lines[i + 1:] if "-m pip " in x)
    return out


def sh_syntax_ok(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([SH, "-n"], input=script, check=False, capture_output=True, text=True, timeout=30)


# -- shape ------------------------------------------------------------------------------------


@pytest.mark.allow_subprocess
def test_script_structure(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, STACK, constraints=["numpy<2"])
    script = shell_export.to_shell(plan)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -eu" in lines
    assert f'PY="${{PYTHON:-{PY}}}"' in lines
    # No fixed, predictable name in the shared temporary folder.
    assert "/tmp/backendpick-constraints.txt" not in script
    assert 'BP_TMP="$(mktemp -d "${TMPDIR:-/tmp}/backendpick.XXXXXXXX")"' in lines
    assert """trap 'rm -rf "$BP_TMP"' EXIT""" in lines
    assert 'CONSTRAINTS="${BACKENDPICK_CONSTRAINTS:-$BP_TMP/constraints.txt}"' in lines
    phases = phase_lines(script)
    assert list(phases) == ["backend", "build-requirements", "build", "rest"]
    # The backend phase reads no pip source of the machine it runs on, PIP_CONSTRAINT included.
    assert phases["backend"] == (
        "env -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_NO_INDEX "
        "-u PIP_REQUIREMENT PIP_CONFIG_FILE=/dev/null "
        f"\"$PY\" -m pip install --index-url {INDEX} 'torch<2.10,>=2.5' torchvision xformers")
    assert phases["build"] == "\"$PY\" -m pip install --no-cache-dir --no-build-isolation -c \"$CONSTRAINTS\" 'flash-attn>=2.6'"
    assert phases["rest"] == "\"$PY\" -m pip install -c \"$CONSTRAINTS\" 'transformers>=4.40' tqdm"
    # The constraints are written once, after the backend phase and before the first later one.
    writer = [i for i, line in enumerate(lines) if line.startswith('"$PY" -c \'import sys')]
    assert len(writer) == 1
    # Last, as install does: the stack's pins in the environment's pip.conf (state/environment_pins.py).
    pinning = [i for i, line in enumerate(lines) if line.startswith('"$PY" -c \'from __future__')]
    assert len(pinning) == 1 and pinning[0] > lines.index(phases["rest"]) and "backendpick-pins.txt" in script
    assert lines.index("# phase backend") < writer[0] < lines.index(phases["build-requirements"])
    assert any(x.endswith("'numpy<2'") for x in lines[writer[0]:lines.index(phases["build-requirements"])])
    # Nothing of the planning machine's paths is left but the default of PY.
    assert str(plan.constraints_path) not in script
    assert sum(PY in line for line in lines) == 1
    assert sh_syntax_ok(script).returncode == 0


def test_remove_phase_is_left_out(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ["torch==2.5.1"], installed=[Installed("torch", "2.5.1+cpu")])
    assert [p.name for p in plan.phases][:1] == ["remove"]
    script = shell_export.to_shell(plan)
    assert "uninstall" not in script and "# phase remove" not in script
    assert list(phase_lines(script)) == ["backend"]


@pytest.mark.allow_subprocess
@pytest.mark.parametrize(
    "reqs",
    [
        STACK,
        ["torch"],
        ["tqdm", "requests-lite>=1.0; python_version >= '3.9'"],
        ["torch==2.5.1", "flash-attn", "mamba-ssm", "causal-conv1d>=1.4", "einops"],
        ["torch", "weird-name[extra1,extra2]>=1; platform_machine == \"x86_64\""],
    ],
    ids=["stack", "torch", "rest-only", "builds", "extras-markers"],
)
def test_script_is_valid_posix_sh(tmp_path: Path, reqs) -> None:
    check = sh_syntax_ok(shell_export.to_shell(make_plan(tmp_path, reqs)))
    assert check.returncode == 0, check.stderr


# -- credentials -------------------------------------------------------------------------------


def test_index_credentials_are_not_written(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, STACK, index="https://alice:t0ken-s3cret@mirror.example/pytorch/cu124")
    script = shell_export.to_shell(plan)
    assert "t0ken-s3cret" not in script and "alice" not in script
    # Without user information: a "***" user name would be sent as is, and pip would never
    # look in .netrc (issue 19); the header says where the credentials go instead.
    assert " --index-url https://mirror.example/pytorch/cu124 " in script and "***" not in script
    assert "mirror.example want them: put them in ~/.netrc" in script
    assert "#   machine mirror.example login USER password SECRET" in script
    assert "--mount=type=secret,id=netrc,target=/root/.netrc" in script


def test_pip_settings_of_the_planning_machine_are_not_written(tmp_path: Path) -> None:
    """The backend phase's environment carries the user's proxy, certificate, token... none of
    it belongs in a script that goes into an image."""
    user_env = {"PIP_PROXY": "http://bob:pr0xy-pw@proxy.corp:3128", "PIP_CERT": "/etc/corp.pem",
                "PIP_INDEX_URL": "https://carol:idx-pw@pypi.corp/simple"}
    plan = make_plan(tmp_path, STACK)
    renderer = engines.for_plan(plan, pip_config=pip_config.read(user_env), user_env=user_env)
    backend = renderer.command(plan.phases[0]).environ(user_env)  # install's backend phase: settings, no sources
    assert backend["PIP_PROXY"] == user_env["PIP_PROXY"] and "PIP_INDEX_URL" not in backend
    script = shell_export.to_shell(plan, renderer)
    assert "pr0xy-pw" not in script and "idx-pw" not in script and "corp.pem" not in script


@pytest.mark.allow_subprocess
def test_direct_url_credentials_are_not_written(tmp_path: Path) -> None:
    """A requirement pointing at a private wheel URL with a token (PEP 508 ``name @ url``)."""
    plan = make_plan(tmp_path, ["torch", "private-tool @ https://dave:wh33l-t0ken@files.corp/private_tool-1.0-py3-none-any.whl"])
    script = shell_export.to_shell(plan)
    assert "wh33l-t0ken" not in script, [line for line in script.splitlines() if "files.corp" in line]
    assert sh_syntax_ok(script).returncode == 0


def test_rest_options_credentials_are_not_written(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ["torch", "tqdm"], rest_options=["--extra-index-url", "https://erin:opt-t0ken@pkgs.corp/simple"])
    script = shell_export.to_shell(plan)
    assert "opt-t0ken" not in script and "erin" not in script
    assert "--extra-index-url https://pkgs.corp/simple" in script and "pkgs.corp want them" in script


# -- the constraints step -----------------------------------------------------------------------


_SEEN_VARS = ("PIP_CONFIG_FILE", "PIP_CONSTRAINT", "PIP_CERT", "PIP_TIMEOUT", "PIP_TRUSTED_HOST", "PIP_EXTRA_INDEX_URL")


def _hermetic_pip_env(tmp_path: Path, pip_conf: str = "") -> dict[str, str]:
    """No pip configuration of this machine: pip reads only ``pip_conf`` (as the image's own)."""
    (tmp_path / "xdg").mkdir(exist_ok=True)
    conf = tmp_path / "image-pip.conf"
    conf.write_text(pip_conf)
    return {"PATH": os.defpath, "HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path / "xdg"),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PIP_CONFIG_FILE": str(conf)}


def _run_script(script: str, tmp_path: Path, env: dict | None = None, constraints: bool = True):
    """Run the whole script with PYTHON set to a stand-in: ``-m pip`` is logged (with the pip
    variables it sees), not run, but for ``pip config``; all else (the constraints step) runs
    on this interpreter. Returns (pip calls, constraints)."""
    fake = tmp_path / "fakepy"
    log = tmp_path / "pip-calls"
    seen = " ".join(f"{v}=${{{v}-}}" for v in _SEEN_VARS)
    fake.write_text(f"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ] && [ "$3" != "config" ]; then
  shift 2; echo "$*" >> {shlex.quote(str(log))}; echo "  {seen}" >> {shlex.quote(str(log))}; exit 0
fi
exec {shlex.quote(sys.executable)} "$@"
""")
    fake.chmod(0o755)
    path = tmp_path / "install.sh"
    path.write_text(script)
    constraints_path = tmp_path / "constraints.txt"
    env = {**(env or _hermetic_pip_env(tmp_path)), "PYTHON": str(fake)}
    if constraints:
        env["BACKENDPICK_CONSTRAINTS"] = str(constraints_path)
    proc = subprocess.run([SH, str(path)], env=env, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines() if log.exists() else []
    calls = [x for x in lines if not x.startswith("  ")]
    if env.get("BACKENDPICK_SEEN"):
        return [x for x in lines], []
    return calls, constraints_path.read_text().splitlines() if constraints_path.exists() else []


def _run_constraints_step(script: str, tmp_path: Path) -> list[str]:
    return _run_script(script, tmp_path)[1]


@pytest.mark.allow_subprocess
def test_script_runs_its_phases_in_order(tmp_path: Path) -> None:
    calls, constraints = _run_script(shell_export.to_shell(make_plan(tmp_path, STACK)), tmp_path)
    assert calls == [
        f"install --index-url {INDEX} torch<2.10,>=2.5 torchvision xformers",
        f"install -c {tmp_path / 'constraints.txt'} setuptools wheel packaging psutil ninja einops",
        f"install --no-cache-dir --no-build-isolation -c {tmp_path / 'constraints.txt'} flash-attn>=2.6",
        f"install -c {tmp_path / 'constraints.txt'} transformers>=4.40 tqdm",
    ]
    assert "torch<0" in constraints  # nothing installed by the stand-in: fenced


@pytest.mark.allow_subprocess
def test_constraints_step_pins_installed_and_fences_missing(tmp_path: Path) -> None:
    """Run the script's constraints line with this interpreter as PY: ``packaging`` stands in
    for an installed backend package, the real family is not installed here."""
    plan = make_plan(tmp_path, ["torch==2.5.1", "flash-attn", "tqdm"], constraints=["numpy<2"])
    plan = dataclasses.replace(plan, backend_names=("packaging", "torch", "xformers"))
    lines = _run_constraints_step(shell_export.to_shell(plan), tmp_path)
    assert lines[0] == f"packaging=={metadata.version('packaging')}"
    assert "torch<0" in lines and "xformers<0" in lines
    # flash-attn is built in the build phase: it must not be fenced; the other builds are.
    assert "flash-attn<0" not in lines
    assert "mamba-ssm<0" in lines and "causal-conv1d<0" in lines
    assert lines[-1] == "numpy<2"


@pytest.mark.allow_subprocess
@pytest.mark.parametrize("requirement", ["flash-attn~=2.7", "flash-attn!=2.7.0", "flash_attn>=2.6", "Flash-Attn", "flash-attn @ https://files.example/flash_attn-2.7.4-py3-none-any.whl"])
def test_constraints_step_does_not_fence_what_the_build_phase_builds(tmp_path: Path, requirement: str) -> None:
    """Any spelling of the requirement: a fence on the package being built makes its phase fail."""
    plan = make_plan(tmp_path, ["torch==2.5.1", requirement])
    assert [p.name for p in plan.phases] == ["backend", "build-requirements", "build"]
    lines = _run_constraints_step(shell_export.to_shell(plan), tmp_path)
    assert not [x for x in lines if names.normalize(x.split("<")[0]) == "flash-attn"], lines


@pytest.mark.allow_subprocess
def test_backend_phase_keeps_the_machines_pip_settings_but_no_sources(tmp_path: Path) -> None:
    """cert, timeout and trusted-host of the pip.conf of the machine running the script reach
    the backend phase (as install does), its extra index and PIP_CONSTRAINT do not; later
    phases read the configuration as it is."""
    cert = tmp_path / "corp.pem"
    cert.write_text("")
    env = _hermetic_pip_env(tmp_path, f"[global]\ncert = {cert}\ntimeout = 77\ntrusted-host = mirror.corp\n"
                                      "    other.corp\nextra-index-url = https://evil.example/simple\n"
                                      "constraint = /etc/evil-constraints.txt\n")
    env.update(PIP_CONSTRAINT="/etc/evil-constraints.txt", BACKENDPICK_SEEN="1")
    lines, _ = _run_script(shell_export.to_shell(make_plan(tmp_path, ["torch", "tqdm"])), tmp_path, env)
    assert lines[0].startswith("install --index-url ") and lines[2].startswith("install -c ")
    assert lines[1].split() == ["PIP_CONFIG_FILE=/dev/null", "PIP_CONSTRAINT=", f"PIP_CERT={cert}", "PIP_TIMEOUT=77",
                                "PIP_TRUSTED_HOST=mirror.corp", "other.corp", "PIP_EXTRA_INDEX_URL="]
    # The rest phase: the user's own configuration, untouched.
    assert lines[3].split()[:2] == [f"PIP_CONFIG_FILE={env['PIP_CONFIG_FILE']}", "PIP_CONSTRAINT=/etc/evil-constraints.txt"]


@pytest.mark.allow_subprocess
def test_constraints_go_to_a_private_temporary_file_removed_at_the_end(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**_hermetic_pip_env(tmp_path), "TMPDIR": str(tmpdir), "BACKENDPICK_SEEN": "1"}
    lines, _ = _run_script(shell_export.to_shell(make_plan(tmp_path, ["torch", "tqdm"])), tmp_path, env, constraints=False)
    rest = lines[2].split()
    used = Path(rest[rest.index("-c") + 1])
    assert used.parent.parent == tmpdir and used.parent.name.startswith("backendpick.") and used.name == "constraints.txt"
    assert list(tmpdir.iterdir()) == []  # removed when the script ends


# -- the scripts the export embeds, in-process ------------------------------------------------------


def test_pip_settings_exports_give_back_settings_but_no_sources() -> None:
    listing = "\n".join([
        "global.timeout='60'",
        "global.index-url='https://mirror.example/simple'",
        "install.timeout='90'",
        "global.cert='/etc/ssl/a b.pem'",
        "global.proxy='http://proxy:3128'",
        "global.config-file='/x'",
        "not a setting",
        "global.broken=[unclosed",
    ])
    lines = shell_export.pip_settings_exports(listing, {"PIP_INDEX_URL"}, {"PIP_PROXY": "set already"})
    assert lines == ["export PIP_CERT='/etc/ssl/a b.pem'", "export PIP_TIMEOUT=90"]


def test_the_embedded_scripts_compile() -> None:
    compile(shell_export.pip_settings_script(), "<pip settings>", "exec")
    compile(shell_export._pin_script(), "<pins>", "exec")


class _Metadata:
    """Installed distributions as ``importlib.metadata`` shows them: name -> version."""

    PackageNotFoundError = metadata.PackageNotFoundError

    def __init__(self, dists: dict) -> None:
        self.dists = dists

    def _get(self, name: str) -> tuple:
        for dist, version in self.dists.items():
            if dist.lower() == name.lower():
                return dist, version
        raise metadata.PackageNotFoundError(name)

    def metadata(self, name: str) -> dict:
        return {"Name": self._get(name)[0]}

    def version(self, name: str) -> str:
        return self._get(name)[1]


def test_pin_stack_writes_pins_and_the_environments_pip_conf(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shell_export, "metadata", _Metadata({"torch": "2.5.1+cu124", "xformers": "0.0.28"}))
    message = shell_export.pin_stack(["torch", "xformers", "flash-attn"], "cu124", tmp_path)
    pins = tmp_path / shell_export.PINS_NAME
    conf = tmp_path / ("pip.ini" if os.name == "nt" else "pip.conf")
    assert message == f"pinned the stack in {conf} ({pins})"
    body = pins.read_text()
    assert body.endswith("\ntorch==2.5.1+cu124\nxformers==0.0.28\n") and "(cu124)" in body
    assert str(pins) in conf.read_text()


def test_pin_stack_without_torch_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shell_export, "metadata", _Metadata({"xformers": "0.0.28"}))
    assert shell_export.pin_stack(["torch", "xformers"], "cpu", tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_the_pin_script_writes_files_with_only_what_it_embeds(tmp_path: Path) -> None:
    """The script's functions run without backendpick: everything they call is in the script."""
    namespace: dict = {"__name__": "pins"}
    exec(compile(shell_export._pin_script().replace(shell_export._PIN_MAIN, ""), "<pins>", "exec"), namespace)
    namespace["write_atomic"](tmp_path / "new" / "pip.conf", "[global]\n")
    assert (tmp_path / "new" / "pip.conf").read_text() == "[global]\n"


# -- the build phase: install's twin (execute/shell_build.py) ----------------------------------------


def _bp_wheel(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", shell_build.helper_script(), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.allow_subprocess
def test_the_scripts_wheel_cache_is_backendpicks(tmp_path: Path) -> None:
    """What the script stores, backendpick finds (and the other way round): the helper is the
    wheel cache's own code, embedded; the prebuilt URL only for the torch the plan chose it for."""
    from backendpick.state import wheel_cache
    from backendpick.target.installed_torch import TorchInfo

    torch = TorchInfo("2.5.1+cu124", cuda="12.4", cxx11abi=False)
    info = json.dumps(torch.to_json())
    built = tmp_path / "build"
    built.mkdir()
    (built / "flash_attn-2.7.4-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
    cache = tmp_path / "cache"
    arch = "FLASH_ATTN_CUDA_ARCHS=80,TORCH_CUDA_ARCH_LIST=8.0"
    assert _bp_wheel("lookup", info, str(cache), "flash-attn", "2.7.4", arch, "", "") == ""
    uri = _bp_wheel("store", info, str(cache), "flash-attn", "2.7.4", arch, str(built))
    [entry] = wheel_cache.entries(cache)
    assert entry.proven and uri == entry.wheel.resolve().as_uri()
    import platform as platform_mod
    key = wheel_cache.Key("flash-attn", "2.7.4", torch.version, torch.backend, torch.cxx11abi,
                          f"cp{sys.version_info[0]}{sys.version_info[1]}",
                          f"linux_{platform_mod.machine()}" if sys.platform.startswith("linux") else "unknown", arch)
    assert wheel_cache.lookup(cache, key) == entry  # backendpick finds the script's build
    assert _bp_wheel("lookup", info, str(cache), "flash-attn", "2.7.4", arch, "", "") == uri
    other = json.dumps(TorchInfo("2.6.0+cu124", cuda="12.4", cxx11abi=False).to_json())
    url = "https://example.org/flash_attn-2.7.4+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"
    # Not in the cache: the prebuilt wheel chosen for this torch; for another torch, nothing (a source build).
    assert _bp_wheel("lookup", info, str(cache), "flash-attn", "2.7.3", arch, info, url) == url
    assert _bp_wheel("lookup", other, str(cache), "flash-attn", "2.7.4", arch, info, url) == ""
    # No cache folder: the wheel as built.
    assert _bp_wheel("store", info, "", "flash-attn", "2.7.4", arch, str(built)).endswith(".whl")


@pytest.mark.allow_subprocess
def test_a_chosen_build_keeps_its_tools_apart_and_its_limits(tmp_path: Path) -> None:
    """The build phase as wheel_choice leaves it: the script looks in the cache, then builds with
    the build requirements in its private folder and the plan's limits, never in the venv."""
    from backendpick.model.plan import BUILD, BUILD_REQS, SOURCE, BuildStep

    plan = make_plan(tmp_path, ["torch==2.5.1", "flash-attn==2.7.4", "tqdm"])
    step = BuildStep("flash-attn==2.7.4", "flash-attn", how=SOURCE, version="2.7.4", note="flash-attn 2.7.4: building",
                     build_requirement="flash-attn==2.7.4", wheel_dir=str(tmp_path / "state" / "build" / "flash-attn"),
                     build_env={"MAX_JOBS": "2", "PYTHONPATH": str(tmp_path / "state" / "build-env")},
                     arch_key="TORCH_CUDA_ARCH_LIST=8.0")
    own = tmp_path / "state" / "build-constraints.txt"
    phases = tuple(dataclasses.replace(p, steps=(step,)) if p.name == BUILD else
                   dataclasses.replace(p, target_dir=str(tmp_path / "state" / "build-env"), upgrade=True,
                                       constraints_file=str(own), constraints=("torch<0", "numpy<2"))
                   if p.name == BUILD_REQS else p for p in plan.phases)
    script = shell_export.to_shell(dataclasses.replace(plan, phases=phases, build_constraints_path=own))
    lines = script.splitlines()
    assert '    "$PY" -m pip install --target "$BP_TMP/build-env" --upgrade -c "$BP_TMP/build-constraints.txt" ' \
           'setuptools wheel packaging psutil ninja einops' in lines
    assert lines[lines.index("cat > \"$BP_TMP/build-constraints.txt\" <<'BACKENDPICK_EOF'") + 1:][:2] == ["torch<0", "numpy<2"]
    assert '  env PYTHONPATH="$BP_TMP/build-env" PATH="$BP_TMP/build-env/bin:$PATH" MAX_JOBS=2 "$PY" -m pip wheel ' \
           '--no-cache-dir --no-build-isolation -c "$CONSTRAINTS" --no-binary flash-attn --no-deps ' \
           '-w "$BP_TMP/build/flash-attn" flash-attn==2.7.4' in lines
    assert '"$PY" -m pip install --no-cache-dir --no-build-isolation -c "$CONSTRAINTS" "flash-attn @ $WHEEL_FLASH_ATTN"' \
        in lines
    assert str(tmp_path) not in script.replace(f'PY="${{PYTHON:-{PY}}}"', "")  # nothing of this machine
    assert sh_syntax_ok(script).returncode == 0


@pytest.mark.allow_subprocess
def test_with_uv_the_script_runs_no_pip_its_build_is_uv_build_of_the_fetched_sdist(tmp_path: Path) -> None:
    """Issue 22 item 3: the script of a uv plan builds as install does: the sdist downloaded by
    the script's helper (reading .netrc), then ``uv build`` without isolation; no pip anywhere."""
    from backendpick.model.plan import BUILD, BUILD_REQS, SOURCE, BuildStep

    plan = make_plan(tmp_path, ["torch==2.5.1", "flash-attn==2.7.4", "tqdm"])
    url = "https://files.example/packages/flash_attn-2.7.4.tar.gz#sha256=ab"
    step = BuildStep("flash-attn==2.7.4", "flash-attn", how=SOURCE, version="2.7.4", note="flash-attn 2.7.4: building",
                     build_requirement="flash-attn==2.7.4", wheel_dir=str(tmp_path / "state" / "build" / "flash-attn"),
                     build_env={"MAX_JOBS": "2", "PYTHONPATH": str(tmp_path / "state" / "build-env")},
                     sdist=url, sdist_file=str(tmp_path / "state" / "build" / "flash-attn-sdist" / "x.tar.gz"))
    own = tmp_path / "state" / "build-constraints.txt"
    phases = tuple(dataclasses.replace(p, steps=(step,)) if p.name == BUILD else
                   dataclasses.replace(p, target_dir=str(tmp_path / "state" / "build-env"), upgrade=True,
                                       constraints_file=str(own), constraints=("torch<0",))
                   if p.name == BUILD_REQS else p for p in plan.phases)
    plan = dataclasses.replace(plan, phases=phases, build_constraints_path=own, installer="uv", uv="/bin/uv")
    script = shell_export.to_shell(plan)
    lines = script.splitlines()
    assert f"  bp_wheel fetch '{url}' \"$BP_TMP/sdist/\"flash_attn-2.7.4.tar.gz" in lines
    [build] = [line for line in lines if '"$UV" build ' in line]
    assert build.startswith("  env -u UV_INDEX ") and build.endswith(
        'PYTHONPATH="$BP_TMP/build-env" PATH="$BP_TMP/build-env/bin:$PATH" MAX_JOBS=2 "$UV" build --no-config --python '
        '"$PY" --wheel --no-build-isolation --no-cache --no-create-gitignore --out-dir "$BP_TMP/build/flash-attn" '
        '"$BP_TMP/sdist/"flash_attn-2.7.4.tar.gz'), build
    assert " -m pip " not in script and str(tmp_path) not in script.replace(f'PY="${{PYTHON:-{PY}}}"', "")
    assert sh_syntax_ok(script).returncode == 0


@pytest.mark.allow_subprocess
def test_the_scripts_fetch_checks_the_sha256_and_reads_netrc(tmp_path: Path) -> None:
    """``bp_wheel fetch`` (the script's own download, standard library only)."""
    import hashlib
    import http.server
    import threading

    body = b"sdist bytes"
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login me password secret\n")
    env = {"PATH": os.environ.get("PATH", ""), "NETRC": str(tmp_path / "netrc")}  # no proxy variables

    def fetch(url: str, dest: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", shell_build.helper_script(), "fetch", url, str(dest)], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    try:
        url = f"http://127.0.0.1:{server.server_port}/f.tar.gz"
        done = fetch(f"{url}#sha256={hashlib.sha256(body).hexdigest()}", tmp_path / "sdist" / "f.tar.gz")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "sdist" / "f.tar.gz").read_bytes() == body and seen == ["Basic bWU6c2VjcmV0"]
        wrong = fetch(f"{url}#sha256=00", tmp_path / "other.tar.gz")
        assert wrong.returncode != 0 and "does not have the sha256" in wrong.stderr
        assert not (tmp_path / "other.tar.gz").exists()
    finally:
        server.shutdown()
