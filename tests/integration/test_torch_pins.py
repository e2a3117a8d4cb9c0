"""Issue 10: torch chosen from the whole request, user constraints everywhere, pins that outlive
backendpick, -U / --upgrade-package, channels.

The packages these scenarios need are added to the world's pypi index by the module fixture
``pinning_world`` (the way lab.py's EXTRA_PYPI does).
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from functools import partial
from pathlib import Path

import pytest

from tests.support.dists import make_torch, make_wheel
from tests.support.engines import ENGINES
from tests.support.lab import Lab, ok, py
from tests.support.world import TORCHVISION_FOR_TORCH, XFORMERS_FOR_TORCH

pytestmark = pytest.mark.integration

# name -> (version, requires)
PINNING = {
    # vllm-like: one exact torch, and a companion pinned with it.
    "pins-old-torch": ("1.0", ["torch==2.5.1"]),
    # the pin sits one level down the tree.
    "needs-pinner": ("1.0", ["pins-old-torch"]),
    "pins-vision": ("1.0", ["torchvision==0.20.1"]),
    "pins-torch-26": ("1.0", ["torch==2.6.0"]),
}


@pytest.fixture(scope="module")
def pinning_world(lab: Lab) -> Lab:
    directory = lab.server.index_dir("pypi")
    for name, (version, requires) in PINNING.items():
        if not list(directory.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
            make_wheel(directory, name, version, requires=requires, attrs={"__index__": "pypi"})
    return lab


@pytest.fixture(scope="module")
def untouched_venv(lab: Lab) -> Path:
    """A fresh venv that tests only plan for: nothing installs into it."""
    return lab.new_venv()


V100 = "nvidia-570-v100"  # driver 570 (CUDA 12.8); sm 7.0 runs every CUDA build of the world
A100_560 = "nvidia-560-a100"  # driver 560 (CUDA 12.6)


def _pins_file(venv: Path) -> Path:
    return venv / "backendpick-pins.txt"


# -- the torch comes from the whole request -------------------------------------------------------


def test_package_pinning_old_torch_installs_it_from_the_best_backend(pinning_world: Lab) -> None:
    """``install pkg`` where pkg requires torch==2.5.1, on a CUDA 12.8 driver: cu124 (the newest
    backend offering 2.5.1), torch from the backend index, then pkg; the stack is pinned after."""
    lab = pinning_world
    venv = lab.new_venv()
    dry = ok(lab.run("install", "--dry-run", "--python", py(venv), "pins-old-torch", machine=V100))
    assert "# torch: 2.5.1+cu124" in dry.stdout and "pins-old-torch 1.0 requires torch==2.5.1" in dry.stdout
    assert any("/cu124/simple" in c and "torch==2.5.1" in c for c in dry.dry_run_commands), dry
    res = ok(lab.run("install", "--python", py(venv), "pins-old-torch", machine=V100))
    v = lab.versions(venv)
    assert v["torch"] == "2.5.1+cu124" and v["pins-old-torch"] == "1.0"
    assert lab.python(venv, "import torch; print(torch.__index__)") == "cu124"
    # The pins outlive backendpick: the environment's own pip.conf points at them.
    assert "torch==2.5.1+cu124" in _pins_file(venv).read_text()
    conf = (venv / "pip.conf").read_text()
    assert f"constraint = {_pins_file(venv)}" in conf and "backendpick install" in conf
    assert "pinned the stack" in res.output

    # A later plain pip (the user's config: pypi + the hostile extra index) cannot replace the stack ...
    env = lab.env()
    up = lab.pip(venv, "install", "-U", "torch", env=env)
    assert lab.versions(venv)["torch"] == "2.5.1+cu124", up.stdout + up.stderr
    other = lab.pip(venv, "install", f"xformers=={XFORMERS_FOR_TORCH['2.7.1']}", env=env)
    assert other.returncode != 0 and "constraint" in (other.stdout + other.stderr), other.stdout + other.stderr
    assert "xformers" not in lab.versions(venv)
    # ... but adds ordinary packages freely.
    add = lab.pip(venv, "install", "einops", env=env)
    assert add.returncode == 0, add.stdout + add.stderr
    assert lab.versions(venv)["torch"] == "2.5.1+cu124"

    report = ok(lab.run("verify", "--python", py(venv), "--json", machine=V100)).json()
    assert report["pins"]["in_place"] and report["pins"]["current"], report


def test_torch_and_pinning_package_together(pinning_world: Lab) -> None:
    lab = pinning_world
    venv = lab.new_venv()
    ok(lab.run("install", "--python", py(venv), "torch", "pins-old-torch", "--no-pin-environment", machine=V100))
    assert lab.versions(venv)["torch"] == "2.5.1+cu124"
    # pin-environment off: nothing left behind.
    assert not _pins_file(venv).exists() and not (venv / "pip.conf").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_transitive_pin_and_companion_pin_reach_the_backend_phase(pinning_world: Lab, untouched_venv: Path,
                                                                   engine: str) -> None:
    """The same answers from pip's dry run and from uv's resolution (issue 22 item 3)."""
    lab = pinning_world
    res = ok(lab.run("plan", "--json", "--python", py(untouched_venv), "--installer", engine, "needs-pinner",
                     "pins-vision", machine=V100)).json()
    assert res["backend"] == "cu124"
    assert res["torch"]["version"] == "2.5.1+cu124"
    assert [p["text"] for p in res["torch"]["pins"]] == ["pins-old-torch 1.0 requires torch==2.5.1"]
    assert (res["resolution"]["source"], res["resolution"]["resolver"]) == ("resolution", engine)
    assert sorted(p["by"] for p in res["resolution"]["pins"]) == ["pins-old-torch 1.0", "pins-vision 1.0"]
    assert sorted(res["resolution"]["pulled"]) == ["torch", "torchvision"]
    backend = next(p for p in res["phases"] if p["name"] == "backend")
    assert set(backend["requirements"]) == {"torch==2.5.1", f"torchvision=={TORCHVISION_FOR_TORCH['2.5.1']}"}


def test_pins_that_cannot_hold_are_reported_before_anything_changes(pinning_world: Lab, untouched_venv: Path) -> None:
    lab = pinning_world
    res = ok(lab.run("install", "--python", py(untouched_venv), "torch>=2.7", "pins-old-torch", machine=V100), 2)
    assert "pins-old-torch 1.0 requires torch==2.5.1; you asked for torch>=2.7" in res.stderr, res
    assert "torch" not in lab.versions(untouched_venv)
    # Both ordinary packages pin torch, differently: pip's resolution fails; the fallback reads
    # their own metadata and names both.
    res = ok(lab.run("plan", "--python", py(untouched_venv), "pins-old-torch", "pins-torch-26", machine=V100), 2)
    assert "pins-old-torch 1.0 requires torch==2.5.1" in res.stderr and "pins-torch-26 1.0 requires torch==2.6.0" in res.stderr
    # Pins that could hold, but the chosen backend offers no such torch: exit 3.
    res = ok(lab.run("plan", "--python", py(untouched_venv), "--backend", "cu128", "pins-old-torch", machine=V100), 3)
    assert "cu128" in res.stderr and "2.5.1" in res.stderr


def test_plan_format_sh_carries_the_same_choice(pinning_world: Lab, untouched_venv: Path) -> None:
    lab = pinning_world
    sh = ok(lab.run("plan", "--format", "sh", "--python", py(untouched_venv), "pins-old-torch", machine=V100)).stdout
    backend = next(line for line in sh.splitlines() if "--index-url" in line)
    assert "/cu124/simple" in backend and "torch==2.5.1" in backend
    # The script, run without backendpick, installs that torch and pins the stack as install does.
    venv = lab.new_venv()
    script = venv.parent / "install-gpu.sh"
    script.write_text(sh)
    env = {**lab.env(V100), "PYTHON": py(venv), "BACKENDPICK_CONSTRAINTS": str(venv.parent / "c.txt")}
    run = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert lab.versions(venv)["torch"] == "2.5.1+cu124"
    assert "torch==2.5.1+cu124" in _pins_file(venv).read_text()
    blocked = lab.pip(venv, "install", "wants-newer-torch", env=lab.env())
    assert blocked.returncode != 0 and lab.versions(venv)["torch"] == "2.5.1+cu124"


# -- the user's constraints hold everywhere ------------------------------------------------------


@pytest.fixture()
def global_constraint(tmp_path: Path) -> tuple[Path, Path]:
    """A global pip config (XDG_CONFIG_DIRS) with ``constraint = <file>`` limiting torch."""
    cons = tmp_path / "site-constraints.txt"
    cons.write_text("torch<2.6\n")
    conf_dir = tmp_path / "xdg"
    (conf_dir / "pip").mkdir(parents=True)
    (conf_dir / "pip" / "pip.conf").write_text(f"[global]\nconstraint = {cons}\n")
    return conf_dir, cons


def test_user_pip_constraint_chooses_the_torch_and_holds_in_the_backend_phase(
        pinning_world: Lab, global_constraint: tuple[Path, Path]) -> None:
    lab = pinning_world
    conf_dir, cons = global_constraint
    env = lab.env(A100_560, XDG_CONFIG_DIRS=str(conf_dir))
    venv = lab.new_venv()
    plan = ok(lab.run("plan", "--json", "--python", py(venv), "torch", env=env)).json()
    # cu126 offers 2.6.0 and 2.7.1, neither allowed: cu124's 2.5.1.
    assert plan["backend"] == "cu124" and plan["torch"]["version"] == "2.5.1+cu124"
    assert plan["torch"]["pins"][0]["text"] == f"constraint file {cons}: torch<2.6"
    backend = next(p for p in plan["phases"] if p["name"] == "backend")
    assert "-c" in backend["argv"] and backend["constraints"] == ["torch<2.6"]
    ok(lab.run("install", "--python", py(venv), "torch", env=env))
    assert lab.versions(venv)["torch"] == "2.5.1+cu124"
    # The environment's pins keep the user's own constraint file in force.
    assert f"-c {cons}" in _pins_file(venv).read_text()
    # -c files count too, and a conflict names the file's pin.
    req = venv.parent / "req.txt"
    (venv.parent / "c.txt").write_text("torch<2.6\n")
    req.write_text("-c c.txt\npins-torch-26\n")
    res = ok(lab.run("plan", "--python", py(venv), "-r", str(req), machine=A100_560), 2)
    assert "pins-torch-26 1.0 requires torch==2.6.0; constraint (-c): torch<2.6" in res.stderr, res


# -- upgrades, and backendpick not blocked by its own pins ---------------------------------------


def test_upgrade_moves_the_pinned_stack_and_rewrites_the_pins(pinning_world: Lab) -> None:
    lab = pinning_world
    venv = lab.new_venv()
    args = ("--python", py(venv), "--backend", "cu124")
    ok(lab.run("install", *args, "torch==2.5.1", "torchvision", machine=V100))
    assert "torch==2.5.1+cu124" in _pins_file(venv).read_text()
    # Without -U a satisfied environment stays.
    again = ok(lab.run("install", *args, "torch", "torchvision", machine=V100))
    assert "nothing to do" in again.output and lab.versions(venv)["torch"] == "2.5.1+cu124"
    ok(lab.run("install", *args, "-U", "torch", "torchvision", machine=V100))
    v = lab.versions(venv)
    assert v["torch"] == "2.6.0+cu124" and v["torchvision"] == f"{TORCHVISION_FOR_TORCH['2.6.0']}+cu124"
    pins = _pins_file(venv).read_text()
    assert "torch==2.6.0+cu124" in pins and "2.5.1" not in pins
    # A backend switch is not blocked by the pins either.
    ok(lab.run("install", "--python", py(venv), "--backend", "cu126", "torch", "torchvision", machine=V100))
    switched = lab.versions(venv)["torch"]
    assert switched.endswith("+cu126") and f"torch=={switched}" in _pins_file(venv).read_text()
    report = ok(lab.run("verify", "--python", py(venv), "--json", machine=V100)).json()
    assert report["pins"]["current"], report
    # --reinstall and restore are not blocked either, and leave current pins.
    ok(lab.run("install", "--python", py(venv), "--backend", "cu126", "--reinstall", "torchvision", "torch",
               "torchvision", machine=V100))
    ok(lab.run("restore", "--python", py(venv), machine=V100))  # the latest snapshot: before the reinstall
    ok(lab.run("restore", "--python", py(venv), "--list", machine=V100))
    snapshots = sorted(p.stem for p in (venv / ".backendpick" / "history").glob("*.json"))
    ok(lab.run("restore", "--python", py(venv), snapshots[2], machine=V100))  # before the backend switch
    assert lab.versions(venv)["torch"] == "2.6.0+cu124"
    assert "torch==2.6.0+cu124" in _pins_file(venv).read_text()
    report = ok(lab.run("verify", "--python", py(venv), "--json", machine=V100)).json()
    assert report["pins"]["current"], report
    # A plain pip change behind backendpick's back: verify says the pins are stale.
    (venv / "backendpick-pins.txt").write_text("torch==2.5.1+cu124\n")
    report = ok(lab.run("verify", "--python", py(venv), "--json", machine=V100), 1).json()
    assert not report["pins"]["current"] and any(p["package"] == "pins" for p in report["problems"])


def test_upgrade_package_moves_only_that_package(pinning_world: Lab) -> None:
    lab = pinning_world
    venv = lab.new_venv()
    args = ("--python", py(venv), "--backend", "cu124")
    ok(lab.run("install", *args, "torch==2.5.1", "torchvision", machine=V100))
    dry = ok(lab.run("install", "--dry-run", *args, "--upgrade-package", "torch", "torch", "torchvision", machine=V100))
    assert any("--upgrade" in c and "torch==2.6.0" in c for c in dry.dry_run_commands), dry


# -- channels ---------------------------------------------------------------------------------------

NIGHTS = ("20251119", "20251120")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test output stays readable
        pass


@pytest.fixture(scope="module")
def nightly_index(lab: Lab, tmp_path_factory: pytest.TempPathFactory):
    """A static PEP 503 index laid out like download.pytorch.org/whl/nightly/cu128: torch and
    torchvision from two nights."""
    root = tmp_path_factory.mktemp("channels")
    files = root / "files"
    files.mkdir()
    made = [make_wheel(files, "filelock", "3.16.1"), make_wheel(files, "typing-extensions", "4.12.2")]
    for night in NIGHTS:
        made.append(make_torch(files, f"2.10.0.dev{night}", "cu128"))
        made.append(make_wheel(files, "torchvision", f"0.25.0.dev{night}+cu128",
                               requires=[f"torch==2.10.0.dev{night}"]))
    projects: dict[str, list[str]] = {}
    for wheel in made:
        projects.setdefault(wheel.name.split("-")[0].replace("_", "-").lower(), []).append(wheel.name)
    for project, names in projects.items():
        page = root / "nightly" / "cu128" / "simple" / project
        page.mkdir(parents=True)
        links = "".join(f'<a href="../../../../files/{n}">{n}</a><br/>\n' for n in names)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{{backend}}/simple"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_nightly_channel_installs_one_night_and_verify_knows_nights(pinning_world: Lab, nightly_index: str) -> None:
    lab = pinning_world
    venv = lab.new_venv()
    env = lab.env(V100, BACKENDPICK_INDEX_URL=nightly_index)
    plan = ok(lab.run("plan", "--json", "--channel", "nightly", "--python", py(venv), "torch", "torchvision", env=env)).json()
    assert plan["backend"] == "cu128" and plan["torch"]["channel"] == "nightly"
    assert plan["torch"]["version"] == f"2.10.0.dev{NIGHTS[-1]}+cu128"
    backend = next(p for p in plan["phases"] if p["name"] == "backend")
    assert "--pre" in backend["argv"] and "/nightly/cu128/simple" in backend["command"]
    # The same from [tool.backendpick] channel ... and BACKENDPICK_CHANNEL.
    project = venv.parent / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\ndependencies = ["torch", "torchvision"]\n'
                                            '[tool.backendpick]\nchannel = "nightly"\n')
    ok(lab.run("install", "--python", py(venv), env=env, cwd=project))
    v = lab.versions(venv)
    assert v["torch"] == f"2.10.0.dev{NIGHTS[-1]}+cu128" and v["torchvision"] == f"0.25.0.dev{NIGHTS[-1]}+cu128"
    ok(lab.run("verify", "--python", py(venv), env=env))
    # A torchvision from another night, forced in behind backendpick's back.
    forced = lab.pip(venv, "install", "--no-deps", "--pre", "--index-url", nightly_index.replace("{backend}", "nightly/cu128"),
                     f"torchvision==0.25.0.dev{NIGHTS[0]}", env={**env, "PIP_CONSTRAINT": "/dev/null"})
    assert forced.returncode == 0, forced.stdout + forced.stderr
    report = ok(lab.run("verify", "--python", py(venv), env=env), 1)
    assert "same night" in report.stdout, report
    bad = ok(lab.run("plan", "--channel", "weekly", "torch", env=env), 2)
    assert "weekly" in bad.stderr
