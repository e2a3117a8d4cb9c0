"""The no-op check of a re-run (state/noop.py, issue 22), in this process: which words it reads,
which variables count, where it finds the record, what each kind of change moves, and the
record's round trip. tests/integration/test_noop.py runs it with real pip and real processes."""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from backendpick.edges import envlock, paths
from backendpick.state import noop

PACKAGE = Path(noop.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_run_left_behind():
    yield
    noop._run = None


@pytest.mark.parametrize("args, ok", [
    (["torch", "--backend", "cu124", "--json"], True),
    (["-r", "requirements.txt", "-q", "--python", "venv"], True),
    (["--refresh"], False), (["-U", "torch"], False), (["--upgrade"], False),
    (["--upgrade-package", "torch"], False), (["--upgrade-package=torch"], False),
    (["--reinstall", "flash-attn"], False), (["--reinstall=flash-attn"], False), (["--dry-run"], False),
    (["-e", "."], False), (["--editable=."], False), (["--help"], False), (["-h"], False),
    (["-qU", "torch"], False),  # click reads it as -q -U
    (["-rrequirements.txt"], False),  # -r with its value attached: not read here
    (["--", "torch"], False),
])
def test_only_plain_words_that_ask_for_no_work_are_answered(args, ok):
    assert noop.eligible(args) is ok


def _variables_named_in_backendpick() -> set[str]:
    """Every environment variable backendpick's code or data names: constants shaped like one
    (``CUDA_VISIBLE_DEVICES``), names read with ``env.get``/``os.environ[...]`` (``PATH``), and
    the variables of the facts table (``NVIDIA_PYTORCH_VERSION``, ``FLASH_ATTENTION_FORCE_BUILD``)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+_?", node.value):
                found.add(node.value)
        found |= set(re.findall(r'(?:get|getenv|pop|setdefault)\(\s*"([A-Z][A-Z0-9_]*)"', text))
        found |= set(re.findall(r'(?:environ|env)\[\s*"([A-Z][A-Z0-9_]*)"\s*\]', text))
    for path in (PACKAGE / "knowledge" / "data").glob("*.toml"):
        found |= set(re.findall(r'(?m)^[a-z-]*env = "([A-Za-z0-9_]+)"', path.read_text(encoding="utf-8")))
    return found


# Constants shaped like variables that are none: the snapshot's installer marks, a value of
# CUDA_DEVICE_ORDER, and names in execute/shell_build.py's ``__all__`` (the shell export's paths).
NOT_VARIABLES = {"BY_INSTALL", "BY_RESTORE", "PCI_BUS_ID", "BUILD_CONSTRAINTS", "BUILD_ENV"}


def test_every_variable_backendpick_reads_counts():
    named = _variables_named_in_backendpick()
    assert {"PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_PYTORCH_VERSION", "BACKENDPICK_PROBE_ROOT"} <= named
    assert sorted(n for n in named - NOT_VARIABLES if not noop.counts(n)) == []
    for name in ("http_proxy", "HTTPS_PROXY", "no_proxy", "PIP_INDEX_URL", "UV_INDEX_MIRROR_PASSWORD",
                 "PYTHONUSERBASE", "XDG_CONFIG_DIRS", "SSL_CERT_DIR", "CONDA_PREFIX", "MAX_JOBS"):
        assert noop.counts(name), name
    for name in ("SHLVL", "OLDPWD", "GITHUB_RUN_ID", "HOSTNAME", "_"):
        assert not noop.counts(name), name


def _venv(base: Path) -> Path:
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python").write_text("")
    (base / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return base


def test_the_target_and_its_state_folder_are_found_without_starting_it(tmp_path: Path):
    venv = _venv(tmp_path / "venv")
    env = {"HOME": str(tmp_path / "home")}
    python = str(venv / "bin" / "python")
    assert noop.chosen_python(str(venv), env) == python
    assert noop.chosen_python(python, env) == python
    assert noop.chosen_python(None, {**env, "VIRTUAL_ENV": str(venv)}) == python
    assert noop.chosen_python(None, env) == os.path.abspath(sys.executable)
    assert noop.chosen_python("  ", env) is None
    assert noop.chosen_python(str(tmp_path), env) is None  # a folder without an interpreter
    assert noop.chosen_python(None, {**env, "VIRTUAL_ENV": python}) is None  # not a venv's folder
    assert noop.state_of(python, env) == str(venv / ".backendpick")
    # An interpreter that is neither a venv's nor this one: only its own inspection can tell.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "python3").write_text("")
    assert noop.state_of(str(tmp_path / "other" / "python3"), env) is None


class Machine:
    """A target's folders, input files and probe root, each changeable."""

    def __init__(self, base: Path):
        self.site = base / "site-packages"
        for name in ("torch-2.5.1+cu124.dist-info", "tqdm-4.66.0.dist-info"):
            (self.site / name).mkdir(parents=True)
            os.utime(self.site / name, ns=(10**18, 10**18))  # installed long ago, as in life
        (self.site / "extra.pth").write_text("/opt/extra\n")
        (self.site / "torch").mkdir()
        self.pyproject = base / "project" / "pyproject.toml"
        self.pyproject.parent.mkdir()
        self.pyproject.write_text('[project]\ndependencies = ["torch"]\n')
        self.pip_conf = base / "pip.conf"  # absent at first
        self.root = base / "root"
        (self.root / "sys/module/nvidia").mkdir(parents=True)
        (self.root / "sys/module/nvidia/version").write_text("550.54.14\n")
        self.bin = base / "bin"
        self.bin.mkdir()
        self.env = {"PATH": str(self.bin), "HOME": str(base), "BACKENDPICK_PROBE_ROOT": str(self.root),
                    "PIP_DEFAULT_TIMEOUT": "15", "SHLVL": "1"}
        self.args, self.cwd = ["--backend", "cu124"], str(self.pyproject.parent)

    def fingerprint(self) -> dict:
        return noop.fingerprint("/venv/bin/python", self.args, self.cwd, self.env,
                                [str(self.pyproject), str(self.pip_conf)], [str(self.site), "/nonexistent"])


def _uninstall(m: Machine):
    shutil.rmtree(m.site / "tqdm-4.66.0.dist-info")


def _reinstall_same_version(m: Machine):
    shutil.rmtree(m.site / "tqdm-4.66.0.dist-info")
    (m.site / "tqdm-4.66.0.dist-info").mkdir()  # perhaps with the freed inode: its time is new


CHANGES = {
    "a dependency uninstalled": (_uninstall, {"installed"}),
    "the same version installed again": (_reinstall_same_version, {"installed"}),
    "a .pth file's folder": (lambda m: (m.site / "extra.pth").write_text("/opt/other\n"), {"installed"}),
    "a pyproject line, same size": (lambda m: m.pyproject.write_text('[project]\ndependencies = ["tqdm."]\n'),
                                    {"files"}),
    "a pip.conf appears": (lambda m: m.pip_conf.write_text("[global]\n"), {"files"}),
    "a pip variable": (lambda m: m.env.update(PIP_DEFAULT_TIMEOUT="30"), {"environment"}),
    "a proxy": (lambda m: m.env.update(https_proxy="http://proxy:3128"), {"environment"}),
    "a visible device": (lambda m: m.env.update(CUDA_VISIBLE_DEVICES="1"), {"environment"}),
    "a new driver": (lambda m: (m.root / "sys/module/nvidia/version").write_text("560.35.03\n"), {"machine"}),
    "a GPU the driver lists": (lambda m: (m.root / "proc/driver/nvidia/gpus/0000:01:00.0").mkdir(parents=True),
                               {"machine"}),
    "the arguments": (lambda m: m.args.append("--json"), {"command"}),
    "the working directory": (lambda m: setattr(m, "cwd", str(m.site)), {"command"}),
    "a variable nothing reads": (lambda m: m.env.update(SHLVL="2"), set()),
    "a file inside a package": (lambda m: (m.site / "torch" / "x.py").write_text("x = 1\n"), set()),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_moves_its_own_part_of_the_fingerprint(tmp_path: Path, change: str):
    m = Machine(tmp_path)
    before = m.fingerprint()
    assert before == m.fingerprint()
    do, moved = CHANGES[change]
    do(m)
    after = m.fingerprint()
    assert {k for k in before if before[k] != after[k]} == moved


def test_another_backendpick_moves_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A new release, or an edited file of a checkout (a data table, a module), answers anew."""
    copy = tmp_path / "backendpick"
    (copy / "state").mkdir(parents=True)
    (copy / "data").mkdir()
    (copy / "state" / "noop.py").write_text("# the check\n")
    (copy / "data" / "facts.toml").write_text("[drivers]\n")
    (copy / "__pycache__").mkdir()
    monkeypatch.setattr(noop, "__file__", str(copy / "state" / "noop.py"))
    m = Machine(tmp_path / "m")
    before = m.fingerprint()
    (copy / "__pycache__" / "x.pyc").write_bytes(b"bytecode is no input")
    assert m.fingerprint() == before
    (copy / "data" / "facts.toml").write_text("[drivers]\nx = 1\n")
    after = m.fingerprint()
    assert {k for k in before if before[k] != after[k]} == {"backendpick"}
    monkeypatch.setattr(noop, "__version__", "99.0")
    assert {k for k in after if after[k] != m.fingerprint()[k]} == {"backendpick"}


def test_the_installer_counts_where_it_is_a_program_of_its_own(tmp_path: Path):
    first, second = tmp_path / "first", tmp_path / "second"
    _tool(second, "uv")
    env = {"PATH": f"{first}{os.pathsep}{second}"}

    def fingerprint() -> dict:
        return noop.fingerprint("/venv/bin/python", [], "/", env, [], [], [["uv", str(second / "uv")]])

    before = fingerprint()
    (second / "uv").write_text("#!/bin/sh\necho uv 0.14\n")  # upgraded in place
    after = fingerprint()
    assert {k for k in before if before[k] != after[k]} == {"programs"}
    _tool(first, "uv")  # another one, found first on PATH
    assert fingerprint()["programs"] != after["programs"]


def _tool(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n")
    (folder / name).chmod(0o755)


def test_a_vendor_tool_counts_only_where_the_drivers_files_tell_what_it_would_say(tmp_path: Path):
    m = Machine(tmp_path)
    assert noop.machine(m.env)[1]  # the driver's version file is all the probe reads
    _tool(m.bin, "nvidia-smi")
    assert not noop.machine(m.env)[1]  # nvidia-smi names the GPUs: nothing says so without running it
    (m.root / "proc/driver/nvidia/gpus/0000:01:00.0").mkdir(parents=True)
    (m.root / "proc/driver/nvidia/gpus/0000:01:00.0/information").write_text("Model: NVIDIA A100\n")
    assert noop.machine(m.env)[1]
    _tool(m.root / "opt/rocm/bin", "rocminfo")  # where the probe looks besides PATH
    assert not noop.machine(m.env)[1]
    (m.root / "sys/class/kfd/kfd/topology/nodes/1").mkdir(parents=True)
    (m.root / "sys/class/kfd/kfd/topology/nodes/1/properties").write_text("gfx_target_version 90400\n")
    assert noop.machine(m.env)[1]


class FakeOutput:
    def __init__(self):
        self.stdout, self.stderr = io.StringIO(), io.StringIO()


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    """A venv and a machine for answer(): this process's environment is the machine's."""
    m = Machine(tmp_path)
    m.venv = _venv(tmp_path / "venv")
    for key in list(os.environ):
        if noop.counts(key):
            monkeypatch.delenv(key)
    for key, value in m.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(m.cwd)
    m.args = ["--python", str(m.venv), "torch"]
    return m


def _full_run(m: Machine, *, printed: str = "nothing to do\n", change=None, unchanged: bool = True) -> bool:
    """What install does when answer() fell through and it found nothing to do."""
    assert not noop.answer(m.args, str(m.venv))
    out = FakeOutput()
    noop.listen(out)
    python = str(m.venv / "bin" / "python")
    watch = noop.watch(python, str(m.venv / ".backendpick"), [str(m.pyproject), str(m.pip_conf)], [str(m.site)])
    assert watch is not None
    out.stdout.write(printed)
    out.stderr.write("warning: w\n")
    if change:
        change(m)
    return watch.finish(unchanged=unchanged)


def test_a_full_run_with_nothing_to_do_leaves_the_answer_for_the_next(target: Machine, capsys):
    assert _full_run(target)
    assert noop.answer(target.args, str(target.venv))
    assert capsys.readouterr() == ("nothing to do\n", "warning: w\n")
    (target.site / "tqdm-4.66.0.dist-info").rename(target.site / "tqdm-4.67.0.dist-info")
    assert not noop.answer(target.args, str(target.venv))
    assert noop.pending()  # the full run may write it again
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("how", ["a file changed during the run", "the installed set changed", "it waited"])
def test_a_run_that_changed_something_leaves_no_answer(target: Machine, how: str):
    if how == "a file changed during the run":
        written = _full_run(target, change=lambda m: m.pip_conf.write_text("[global]\n"))
    elif how == "the installed set changed":
        written = _full_run(target, unchanged=False)
    else:
        written = _full_run(target, change=lambda m: noop.forgo())
    assert not written
    assert not paths.noop_record(target.venv / ".backendpick").exists()


def test_no_credential_reaches_the_record(target: Machine, monkeypatch: pytest.MonkeyPatch, capsys):
    secret = "s3cr3t-t0ken"
    target.args.append(f"--index-url=https://me:{secret}@mirror.example/{{backend}}")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"https://me:{secret}@mirror.example/simple")
    monkeypatch.setenv("UV_INDEX_MIRROR_PASSWORD", secret)
    target.pip_conf.write_text(f"[global]\nindex-url = https://me:{secret}@mirror.example/simple\n")
    assert _full_run(target)
    assert secret not in paths.noop_record(target.venv / ".backendpick").read_text()
    # Not a digest of it either: another password gives the same fingerprint (a re-run that has
    # nothing to do asks no index, so no password decides it).
    target.args[-1] = target.args[-1].replace(secret, "other")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://me:other@mirror.example/simple")
    monkeypatch.setenv("UV_INDEX_MIRROR_PASSWORD", "other")
    target.pip_conf.write_text("[global]\nindex-url = https://me:other@mirror.example/simple\n")
    assert noop.answer(target.args, str(target.venv))
    assert capsys.readouterr().out == "nothing to do\n"


def test_a_damaged_record_is_no_answer(target: Machine, capsys):
    assert _full_run(target)
    record = paths.noop_record(target.venv / ".backendpick")
    record.write_text(record.read_text().replace('"out"', '"elsewhere"'))
    assert not noop.answer(target.args, str(target.venv))
    record.write_text("{")
    assert not noop.answer(target.args, str(target.venv))
    assert capsys.readouterr() == ("", "")


def test_only_a_run_that_came_through_answer_for_that_target_records(target: Machine, tmp_path: Path):
    python = str(target.venv / "bin" / "python")
    assert noop.watch(python, str(target.venv / ".backendpick"), [], []) is None  # answer() never ran
    assert not noop.answer(target.args, str(target.venv))
    other = _venv(tmp_path / "other")
    assert noop.watch(str(other / "bin" / "python"), str(other / ".backendpick"), [], []) is None
    assert noop.watch(python, str(target.venv / ".backendpick"), [], []) is not None


def test_taking_the_environments_lock_removes_the_record(tmp_path: Path):
    state = tmp_path / ".backendpick"
    state.mkdir()
    paths.noop_record(state).write_text("{}")
    with envlock.hold(state, on_wait=print, env={}):
        assert not paths.noop_record(state).exists()
    with envlock.hold(state, on_wait=print, env={}):  # and without one there is nothing to remove
        pass


def _detect_run(m: Machine, args: list[str], fresh, printed: str) -> bool:
    """What detect does when answer() fell through: its answer made from pages fresh in ``fresh``."""
    assert not noop.answer(args, str(m.venv), "detect")
    out = FakeOutput()
    noop.listen(out)
    python, state = str(m.venv / "bin" / "python"), str(m.venv / ".backendpick")
    assert noop.watch(python, state, [str(m.pyproject)], [str(m.site)]) is None  # install's watch: not this run
    watch = noop.watch(python, state, [str(m.pyproject)], [str(m.site)], fresh=fresh, command="detect")
    out.stdout.write(printed)
    return watch.finish(unchanged=True)


def test_detect_answers_from_its_record_only_while_its_pages_are_fresh(target: Machine, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch):
    args = ["--python", str(target.venv)]
    now = noop.time.time()
    assert _detect_run(target, args, (now - 5, now + 60), "backend: cu124\n")
    assert _detect_run(target, [*args, "--json"], (now - 5, now + 60), '{"backend": "cu124"}\n')
    assert noop.answer(args, str(target.venv), "detect")
    assert noop.answer([*args, "--json"], str(target.venv), "detect")
    assert capsys.readouterr().out == 'backend: cu124\n{"backend": "cu124"}\n'
    assert not noop.answer(args, str(target.venv), "install")  # install's record is another
    for moment in (now + 61, now - 6):  # the pages stale, or the clock set back before they were stored
        monkeypatch.setattr(noop.time, "time", lambda: moment)
        assert not noop.answer(args, str(target.venv), "detect")
    monkeypatch.undo()
    assert capsys.readouterr() == ("", "")


def test_detect_keeps_the_answers_to_the_last_eight_questions(target: Machine):
    now = noop.time.time()
    for n in range(10):
        assert _detect_run(target, ["--python", str(target.venv), f"--backend=cu12{n}"], (now, now + 60), f"{n}\n")
    assert len(list(paths.detect_records(os.environ).glob("*.json"))) == 8
    assert not (target.venv / ".backendpick").exists()  # detect writes nothing into the environment
