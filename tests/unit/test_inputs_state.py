"""Inputs pip accepts, bad inputs that must fail in one line, and backendpick's own state files
when they are damaged (issue 9). Pure: no subprocess is started."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from backendpick import envvars
from backendpick.cli import _wants_json, main
from backendpick.edges import envlock
from backendpick.edges.durable import write_atomic
from backendpick.errors import ConfigError, StateError
from backendpick.inputs import config, requirements
from backendpick.knowledge import facts as facts_mod
from backendpick.model.backend import suggest
from backendpick.model.environment import Installed, Target
from backendpick.state import snapshots
from backendpick.target.inspection import choose_python

FACTS = facts_mod.load()


def pyproject(tmp_path: Path, text: str) -> config.Pyproject:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(text))
    return config.read_pyproject(tmp_path)


# -- wrong types in [project] and [tool.backendpick] ---------------------------------------------


def test_dependencies_as_a_string_is_an_error_not_characters(tmp_path: Path) -> None:
    pp = pyproject(tmp_path, '[project]\nname = "x"\ndependencies = "torch"\n')
    with pytest.raises(ConfigError) as exc:
        requirements.from_pyproject(pp, (), ())
    assert "[project].dependencies must be a list of requirement strings, not str" in exc.value.message
    assert '["torch"]' in exc.value.message
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("text, key", [
    ('[project]\ndependencies = ["torch", 3]\n', "[project].dependencies"),
    ('[project.optional-dependencies]\ngpu = "xformers"\n', "[project.optional-dependencies].gpu"),
    ('[project]\noptional-dependencies = ["x"]\n', "[project.optional-dependencies]"),
    ('dependency-groups = ["x"]\n', "[dependency-groups]"),
    ('[dependency-groups]\ndev = "pytest"\n', "[dependency-groups].dev"),
])
def test_wrong_types_in_project_tables_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    pp = pyproject(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        requirements.from_pyproject(pp, ("gpu",) if "optional" in text else (), ("dev",) if "dev" in text else ())
    assert key in exc.value.message


@pytest.mark.parametrize("text, key", [
    ('[tool.backendpick]\nbackend = 124\n', "tool.backendpick.backend must be a str"),
    ('[tool.backendpick]\nextra-backend-packages = "xformers"\n', "tool.backendpick.extra-backend-packages must be a list"),
    ('tool = "x"\n', "[tool] must be a table"),
])
def test_wrong_types_in_tool_backendpick_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        pyproject(tmp_path, text)
    assert key in exc.value.message


# -- backend names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("given, hint", [
    ("cu12.4", "did you mean cu124?"),
    ("CU124", "did you mean cu124?"),
    ("cuda12.8", "did you mean cu128?"),
    ("Rocm6.2", "did you mean rocm6.2?"),
    ("cpu ", "did you mean cpu?"),
])
def test_near_miss_backend_names_get_the_exact_name(tmp_path: Path, given: str, hint: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(FACTS, project_dir=tmp_path, backend=given, env={})
    assert f"'{given}' is not a backend name (from --backend)" in exc.value.message
    assert exc.value.hint == hint


@pytest.mark.parametrize("given, kind", [("cuda", "cuda"), ("rocm", "rocm")])
def test_bare_vendor_suggests_the_newest_known_and_auto(tmp_path: Path, given: str, kind: str) -> None:
    newest = max(b for b in FACTS.all_backends() if b.kind == kind)
    with pytest.raises(ConfigError) as exc:
        config.load(FACTS, project_dir=tmp_path, env={"BACKENDPICK_BACKEND": given})
    assert "(from BACKENDPICK_BACKEND)" in exc.value.message
    form = "cuXY" if kind == "cuda" else "rocmX.Y"
    assert exc.value.hint == f"did you mean {newest.name} (the newest known {form}) or auto (detect it)?"


def test_exact_backend_names_still_load(tmp_path: Path) -> None:
    for name in ("cu124", "rocm6.2.4", "cpu", "xpu", "auto"):
        assert config.load(FACTS, project_dir=tmp_path, backend=name, env={}).backend.value == name
    assert suggest("zzz", FACTS.all_backends()) is None


# -- BACKENDPICK_LOCK_TIMEOUT ----------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["abc", "-5", "nan", "inf", "10s"])
def test_bad_lock_timeout_is_an_error(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as exc:
        with envlock.hold(tmp_path / ".backendpick", on_wait=print, env={"BACKENDPICK_LOCK_TIMEOUT": raw}):
            pass
    assert f"BACKENDPICK_LOCK_TIMEOUT={raw!r} is not a number of seconds" in exc.value.message
    assert exc.value.exit_code == 2


def test_good_lock_timeout_values() -> None:
    assert envvars.lock_timeout({"BACKENDPICK_LOCK_TIMEOUT": "2.5"}) == 2.5
    assert envvars.lock_timeout({"BACKENDPICK_LOCK_TIMEOUT": " "}) == envvars.DEFAULT_LOCK_TIMEOUT
    assert envvars.lock_timeout({}) == envvars.DEFAULT_LOCK_TIMEOUT


# -- requirements files ---------------------------------------------------------------------------


def test_non_utf8_requirements_file_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_bytes(b"torch\n# caf\xe9\n")
    with pytest.raises(ConfigError) as exc:
        requirements.read_file(f)
    assert exc.value.message == f"requirements file {f} is not UTF-8 text (byte 0xe9 on line 2)"


# -- --python ----------------------------------------------------------------------------------


def test_empty_python_flag_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--python is empty"):
        choose_python("")


def _unreadable(monkeypatch, path: Path) -> None:
    """chmod 0, and the same answer from the file system where root would read it anyway."""
    path.chmod(0)
    if os.geteuid() == 0:
        import backendpick.target.inspection

        real_access, real_iterdir = os.access, Path.iterdir
        monkeypatch.setattr(backendpick.target.inspection.os, "access",
                            lambda p, mode: False if Path(p) == path else real_access(p, mode))

        def iterdir(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_iterdir(self)

        monkeypatch.setattr(Path, "iterdir", iterdir)


def test_unreadable_python_directory_is_named(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "venv"
    (d / "bin").mkdir(parents=True)
    _unreadable(monkeypatch, d)
    try:
        with pytest.raises(ConfigError) as exc:
            choose_python(d)
    finally:
        d.chmod(0o755)
    assert exc.value.message == f"cannot read the directory {d} (from --python): permission denied"


def test_broken_venv_symlink_is_named(tmp_path: Path) -> None:
    d = tmp_path / "venv"
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.12")
    for flag, env, source in ((d, {}, "--python"), (None, {"VIRTUAL_ENV": str(d)}, "VIRTUAL_ENV")):
        with pytest.raises(ConfigError) as exc:
            choose_python(flag, env)
        assert exc.value.message == f"{d / 'bin' / 'python'} (from {source}) is a broken link to {tmp_path / 'gone' / 'python3.12'}"
        assert "python -m venv --clear" in exc.value.hint


def test_directory_without_python_is_not_a_venv(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a virtual environment"):
        choose_python(tmp_path)


def test_broken_interpreter_link_is_named_by_inspect(tmp_path: Path) -> None:
    from backendpick.target.inspection import inspect

    link = tmp_path / "python"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is a broken link to"):
        inspect(link)


# -- --json errors ------------------------------------------------------------------------------


def test_json_mode_is_read_from_the_command_line() -> None:
    assert _wants_json(["plan", "--json"])
    assert _wants_json(["plan", "--format", "json"])
    assert _wants_json(["plan", "--format=json"])
    assert not _wants_json(["plan", "--format", "sh"])
    assert not _wants_json(["plan", "--", "--json"])


@pytest.mark.parametrize("args, code, text", [
    (["plan", "--json", "--backend", "cu12.4", "torch"], 2, "'cu12.4' is not a backend name"),
    (["plan", "--json", "--no-such-flag"], 2, "--no-such-flag"),
    (["install", "--json", "--python", "", "torch"], 2, "--python is empty"),
])
def test_json_errors_are_one_object_on_stdout(tmp_path: Path, capsys, monkeypatch, args, code, text) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == code
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # exactly one JSON document
    assert data["ok"] is False and data["exit_code"] == code and text in data["error"]
    assert set(data) == {"ok", "error", "hint", "exit_code"}
    assert f"error: {data['error']}" in captured.err


# -- state files ---------------------------------------------------------------------------------


def _target(tmp_path: Path, **versions: str) -> Target:
    return Target(python=tmp_path / "python", prefix=tmp_path, version=(3, 12, 0), markers={}, tags=(),
                  pip_version="24.0", purelib=tmp_path,
                  installed={k: Installed(k, v) for k, v in versions.items()})


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    f = tmp_path / "constraints.txt"
    f.write_text("old\n")
    write_atomic(f, "new\n")
    assert f.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["constraints.txt"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    f = tmp_path / "snap.json"
    f.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(f, "\udcff", encoding="utf-8")
    assert f.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["snap.json"]


def test_snapshots_are_written_whole(tmp_path: Path) -> None:
    snap = snapshots.record(_target(tmp_path, torch="2.5.1+cpu"), tmp_path / "state")
    assert json.loads(snap.path.read_text())["packages"]["torch"]["version"] == "2.5.1+cpu"
    assert snapshots.load(tmp_path / "state", None).packages == snap.packages


@pytest.mark.parametrize("content, problem", [
    ("", "empty file"),
    ('{"packages": []}', "no table of packages"),
    ('{"id": "x", "packages": {"torch": {"version": "2.5.1"}}}', "entry 'torch' has no name and version"),
    ('{"id": "x", "pack', "not valid JSON"),
])
def test_damaged_snapshot_is_one_line_with_the_fix(tmp_path: Path, content: str, problem: str) -> None:
    state = tmp_path / "state"
    good = snapshots.record(_target(tmp_path, torch="2.5.1+cpu"), state)
    bad = state / "history" / "29991231-235959-0.json"
    bad.write_text(content)
    with pytest.raises(StateError) as exc:
        snapshots.load(state, None)
    assert exc.value.message.startswith(f"snapshot {bad} is damaged: {problem}")
    assert good.id in exc.value.hint and f"rm {bad}" in exc.value.hint
    assert snapshots.load(state, good.id).packages == good.packages  # the others still work


def test_history_that_is_a_file_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "history").write_text("")
    with pytest.raises(StateError, match="history is not a directory"):
        snapshots.snapshots(state)
    with pytest.raises(StateError, match="cannot record a snapshot in .*history is not a directory"):
        snapshots.record(_target(tmp_path), state)


def test_unreadable_history_is_named(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "state" / "history"
    folder.mkdir(parents=True)
    _unreadable(monkeypatch, folder)
    try:
        with pytest.raises(StateError) as exc:
            snapshots.snapshots(tmp_path / "state")
    finally:
        folder.chmod(0o755)
    assert exc.value.message == f"cannot read the snapshots in {folder}: Permission denied"
    assert "chmod" in exc.value.hint


def test_state_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    state = tmp_path / ".backendpick"
    state.write_text("")
    with pytest.raises(StateError) as exc:
        with envlock.hold(state, on_wait=print, env={}):
            pass
    assert "is not a directory" in exc.value.message and f"mv {state}" in exc.value.hint


def test_lock_that_is_a_directory_is_named(tmp_path: Path) -> None:
    state = tmp_path / ".backendpick"
    (state / "lock").mkdir(parents=True)
    with pytest.raises(StateError) as exc:
        with envlock.hold(state, on_wait=print, env={}):
            pass
    assert exc.value.message == f"{state / 'lock'} is a directory, not backendpick's lock file"


def test_lock_names_the_running_pip_and_is_handed_to_it(tmp_path: Path) -> None:
    state = tmp_path / ".backendpick"
    with envlock.hold(state, on_wait=print, env={}):
        [fd] = envlock.held_fds()
        envlock.note_child(4242)
        assert (state / "lock").read_text() == f"backendpick pid {os.getpid()} (pip pid 4242)"
        envlock.note_child(None)
        assert (state / "lock").read_text() == f"backendpick pid {os.getpid()}"
    assert envlock.held_fds() == ()
    assert (state / "lock").read_text() == ""


# -- requirement forms pip accepts -----------------------------------------------------------------

from tests.support.dists import make_sdist, make_wheel  # noqa: E402

HASH_A = "sha256:" + "a" * 64
HASH_B = "sha256:" + "b" * 64


def test_hashes_from_pip_compile_are_kept_per_package(tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_text(
        "# pip-compile --generate-hashes\n"
        f"torch==2.5.1 \\\n    --hash={HASH_A} \\\n    --hash={HASH_B}\n"
        "    # via -r requirements.in\n"
        f"tqdm==4.66.1 --hash {HASH_A}\n"
    )
    w = requirements.read_file(f, env={}, cwd=tmp_path)
    assert [str(r) for r in w.requirements] == ["torch==2.5.1", "tqdm==4.66.1"]
    assert w.hashes == {"torch": (HASH_A, HASH_B), "tqdm": (HASH_A,)}


def test_a_malformed_hash_is_named(tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_text("torch==2.5.1 --hash=md5:abc\n")
    with pytest.raises(ConfigError, match=r"req.txt:1: '--hash=md5:abc' is not a hash pip accepts"):
        requirements.read_file(f, env={}, cwd=tmp_path)


def test_env_vars_expand_as_pip_does(tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_text("torch==${TORCH_VERSION}\n--extra-index-url https://${TOKEN}@mirror.example/simple\n"
                 "tqdm${lower_case_stays}\n")
    with pytest.raises(ConfigError, match=r"tqdm\$\{lower_case_stays\}"):
        requirements.read_file(f, env={"TORCH_VERSION": "2.5.1", "TOKEN": "t"}, cwd=tmp_path)
    f.write_text("torch==${TORCH_VERSION}\n--extra-index-url https://${TOKEN}@mirror.example/simple\n")
    w = requirements.read_file(f, env={"TORCH_VERSION": "2.5.1", "TOKEN": "t"}, cwd=tmp_path)
    assert [str(r) for r in w.requirements] == ["torch==2.5.1"]
    assert w.rest_options == ("--extra-index-url", "https://t@mirror.example/simple")


def test_nested_requirements_and_constraints_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.txt").write_text("tqdm\n-c pins.txt\n")
    (tmp_path / "sub" / "pins.txt").write_text("tqdm==4.66.1\n")
    f = tmp_path / "req.txt"
    f.write_text("torch\n-r sub/base.txt\n")
    w = requirements.read_file(f, env={}, cwd=tmp_path)
    assert [str(r) for r in w.requirements] == ["torch", "tqdm"]
    assert [str(c) for c in w.constraints] == ["tqdm==4.66.1"]


def _project(path: Path, deps: str, dynamic: str = "") -> Path:
    path.mkdir(parents=True)
    (path / "pyproject.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "my-proj"
        version = "1.0"
        dependencies = {deps}
        {dynamic}
        [project.optional-dependencies]
        gpu = ["xformers"]
    """))
    return path


def test_editable_projects_pass_to_pip_with_their_dependencies(tmp_path: Path) -> None:
    _project(tmp_path / "pkg", '["torch>=2.4", "tqdm"]')
    f = tmp_path / "req.txt"
    f.write_text("-e ./pkg[gpu]\n")
    w = requirements.read_file(f, env={}, cwd=tmp_path)
    assert w.rest_args == ("-e", f"{tmp_path / 'pkg'}[gpu]")
    assert [str(r) for r in w.requirements] == ["torch>=2.4", "tqdm", "xformers"]


def test_editable_of_a_missing_directory_is_named(tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_text("-e ./nope\n")
    with pytest.raises(ConfigError, match=r"req.txt:1: -e ./nope: .*nope is not a directory"):
        requirements.read_file(f, env={}, cwd=tmp_path)


def test_local_directory_becomes_a_direct_reference_with_its_dependencies(tmp_path: Path) -> None:
    pkg = _project(tmp_path / "pkg", '["torch"]')
    w = requirements.gather(["./pkg"], [], config.Pyproject(None), (), (), env={}, cwd=tmp_path)
    assert [str(r) for r in w.requirements] == [f"my-proj @ {pkg.as_uri()}", "torch"]
    assert w.rest_args == ()


def test_local_directory_with_dynamic_dependencies_is_left_to_pip(tmp_path: Path) -> None:
    pkg = _project(tmp_path / "pkg", "[]", 'dynamic = ["dependencies"]')
    w = requirements.gather([str(pkg)], [], config.Pyproject(None), (), (), env={}, cwd=tmp_path)
    assert [str(r) for r in w.requirements] == [f"my-proj @ {pkg.as_uri()}"]
    setup_only = tmp_path / "legacy"
    setup_only.mkdir()
    (setup_only / "setup.py").write_text("from setuptools import setup\nsetup(name='legacy')\n")
    w = requirements.gather(["./legacy"], [], config.Pyproject(None), (), (), env={}, cwd=tmp_path)
    assert w.requirements == () and w.rest_args == (str(setup_only),)


def test_local_wheel_and_sdist_files(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "dist", "needs-torch", "1.0", requires=["torch>=2", "tqdm; extra == 'x'"])
    sdist = make_sdist(tmp_path / "dist", "plain-sdist", "2.0", "from setuptools import setup\nsetup()\n")
    w = requirements.gather([str(wheel), f"./dist/{sdist.name}"], [], config.Pyproject(None), (), (),
                            env={}, cwd=tmp_path)
    assert [str(r) for r in w.requirements] == [
        f"needs-torch @ {wheel.resolve().as_uri()}", "torch>=2", f"plain-sdist @ {sdist.resolve().as_uri()}"]


@pytest.mark.parametrize("given, expected", [
    ("https://files.example/pkgs/needs_torch-1.0-py3-none-any.whl", "needs-torch @ https://files.example/pkgs/needs_torch-1.0-py3-none-any.whl"),
    ("https://files.example/pkgs/plain-sdist-2.0.tar.gz", "plain-sdist @ https://files.example/pkgs/plain-sdist-2.0.tar.gz"),
    ("proj @ git+https://github.com/org/proj.git", "proj @ git+https://github.com/org/proj.git"),
])
def test_urls_with_a_name_become_direct_references(tmp_path: Path, given: str, expected: str) -> None:
    w = requirements.gather([given], [], config.Pyproject(None), (), (), env={}, cwd=tmp_path)
    assert [str(r) for r in w.requirements] == [expected] and w.rest_args == ()


def test_vcs_urls_go_to_pip_as_written(tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_text("git+https://github.com/org/proj.git@main\n-e git+https://github.com/org/other.git#egg=other\n"
                 "git+https://github.com/org/third.git#egg=third&subdirectory=py\n")
    w = requirements.read_file(f, env={}, cwd=tmp_path)
    assert w.requirements == ()
    assert w.rest_args == ("git+https://github.com/org/proj.git@main", "-e",
                           "git+https://github.com/org/other.git#egg=other",
                           "git+https://github.com/org/third.git#egg=third&subdirectory=py")


def test_missing_local_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the command line: ./missing-pkg does not exist"):
        requirements.gather(["./missing-pkg"], [], config.Pyproject(None), (), (), env={}, cwd=tmp_path)


def test_editable_on_the_command_line(tmp_path: Path) -> None:
    _project(tmp_path / "pkg", '["torch"]')
    w = requirements.gather([], [], config.Pyproject(None), (), (), env={}, cwd=tmp_path / "pkg", editables=["."])
    assert w.rest_args == ("-e", str(tmp_path / "pkg")) and [str(r) for r in w.requirements] == ["torch"]
