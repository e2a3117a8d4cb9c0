"""A re-run with nothing to do, answered before the machinery loads (issue 22).

``make install``, a CI step before the tests and a rebuilt Docker layer run ``backendpick
install`` on an environment that already matches. The console script (start.py) calls
``answer`` before click, packaging, rich or the planner are imported: when nothing that decides
the install has changed since a full run of the same command found nothing to do, it prints
what that run printed and the process ends; otherwise the full pipeline runs as always. It
decides only "nothing to do" or "run the pipeline": there is no second install path.

What decides it (``fingerprint``), all read again on every re-run:

* the command: the words after ``install``, the working directory, which streams are terminals;
* the interpreter running backendpick and the one installed into (path, the file's identity);
* backendpick itself: its version, and the size and time of each of its files;
* the environment variables that backendpick, pip, uv, the GPU runtimes and the builds read
  (``counts``: an allow-list of names and prefixes), and those a requirements file names
  (``${NAME}``, which pip expands), by value;
* files, by content: pyproject.toml, the requirements files (nested ones included), every pip
  configuration file pip would read and its constraint files, the environment's pins, the last
  install's record, the build records, pyvenv.cfg, the installed torch's version file;
* the installed set: the ``*.dist-info``/``*.egg-info`` folders (name, inode, time) and the
  ``.pth`` files (content) of every folder on the target's path as its inspection saw it;
* the installer the plan names where it is a program of its own (uv): the file, and which one
  PATH finds;
* the machine: the kernel (``uname``) and what the hardware probe reads below
  ``BACKENDPICK_PROBE_ROOT`` (driver versions, the GPUs the driver lists, the PCI display
  devices, the AMD topology), and which vendor tools are on PATH.

The lists of files and folders come from the full run that wrote the record; each list follows
from what is fingerprinted (a new ``-r`` line changes the file that names it, a new ``.pth``
folder the ``.pth`` file). The record is written only by a full run that found nothing to do
and changed nothing (its fingerprint after planning equals the one at its end, and the installed
set equals its inspection), for inputs whose files can all be listed (no local path or editable
among the requirements), and on a machine whose vendor tools' answers can be re-read from files
(nvidia-smi: the driver's ``/proc/driver/nvidia/gpus``). Holding the environment's lock removes
it (edges/envlock.py), so an install or restore that stops half-way never looks finished.

``detect`` is answered the same way (issue 22, item 4): it asks the index, and once the pages
it read are fresh in the page cache (indexes/page_cache.py) and nothing else changed, asking
again must cost nothing. Its full run leaves a record when every page it read was a fresh kept
one (``IndexClient.kept_pages``: no page that a later run would ask for again, no pip
resolution) and the probe warned of nothing; the record holds the pages' files (by content, as
above) and the span of time in which all are fresh, and answers only within it. detect keeps
one record per question (target, words, folder, variables) in the user's cache (``detect/``), the
eight newest.

Standard library only, besides backendpick's foundation and ``edges/paths.py``: this runs
before anything else is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from backendpick import __version__, envvars, redaction
from backendpick.edges import paths

FORMAT = 1

# Words that ask for work or for something else than the answer: always the full pipeline.
# Single-dash words of more than two letters (``-qU``, ``-rfile``) are not read here either.
ASKS_FOR_WORK = frozenset({"--refresh", "-U", "--upgrade", "--upgrade-package", "--reinstall", "--dry-run",
                           "-e", "--editable", "-h", "--help"})

# The environment variables that count, by name or prefix (case as written; ``*_proxy`` in any
# case). Whatever backendpick, pip or uv read, the GPU runtimes and source builds look at, and
# what decides where files are and how output looks. tests/unit/test_noop.py checks that every
# variable named in backendpick's source and data is covered.
NAMES = frozenset({"PATH", "HOME", "LANG", "TERM", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "REQUESTS_CA_BUNDLE",
                   "CURL_CA_BUNDLE", "NETRC", "MAX_JOBS", "CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS",
                   "LD_LIBRARY_PATH", "LOCALAPPDATA", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT"})
PREFIXES = ("BACKENDPICK_", "PIP_", "UV_", "PYTHON", "XDG_", "LC_", "SSL_", "CONDA", "CUDA", "NVIDIA_", "NVCC",
            "HIP_", "ROCR_", "ROCM_", "HSA_", "GPU_", "TORCH_", "PYTORCH_", "FLASH_", "MAMBA_", "CAUSAL_CONV1D_",
            "BNB_", "KEYRING_")

_LIMIT = 1 << 20  # characters of output kept for the record; a longer run is no re-run answer
_TOOLS = (("nvidia-smi", ("usr/lib/wsl/lib", "usr/bin")), ("rocminfo", ("opt/rocm/bin",)),
          ("rocm_agent_enumerator", ("opt/rocm/bin",)))


def counts(name: str) -> bool:
    """Whether the environment variable ``name`` takes part in the answer."""
    return name in NAMES or name.startswith(PREFIXES) or name.lower().endswith("_proxy")


def eligible(args: list[str]) -> bool:
    """Whether ``install ARGS`` or ``detect ARGS`` may be answered from a record (no work asked
    for, words read plainly)."""
    for word in args:
        if word == "--" or word.split("=", 1)[0] in ASKS_FOR_WORK:
            return False
        if word.startswith("-") and not word.startswith("--") and len(word) > 2:
            return False
    return True


def chosen_python(flag: str | None, env) -> str | None:
    """The interpreter installed into, as target/inspection.py's ``choose_python`` chooses it
    (--python, else VIRTUAL_ENV, else this one), as an absolute path; None where that one would
    raise or where a file system check is needed that only the full run makes."""
    venv = flag is None and env.get("VIRTUAL_ENV")
    if venv:
        flag = venv
    elif flag is None:
        return os.path.abspath(sys.executable)
    if not flag.strip():
        return None
    if not os.path.isdir(flag):
        return None if venv else os.path.abspath(flag)
    for candidate in (os.path.join(flag, "bin", "python"), os.path.join(flag, "Scripts", "python.exe")):
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    return None


class _Where:
    """What ``paths.state_dir`` needs of a target."""

    def __init__(self, prefix: str, is_venv: bool):
        self.prefix, self.is_venv = Path(prefix), is_venv


def state_of(python: str, env) -> str | None:
    """The state folder of the environment of ``python`` without starting it: a venv is the
    folder with ``pyvenv.cfg`` next to its interpreter or one up; the interpreter running this is
    ``sys.prefix``; for any other, None (the full run's inspection alone can tell)."""
    bindir = os.path.dirname(python)
    for prefix in (os.path.dirname(bindir), bindir):
        if os.path.isfile(os.path.join(prefix, "pyvenv.cfg")):
            return str(paths.state_dir(_Where(prefix, True), env))
    if python == os.path.abspath(sys.executable):
        return str(paths.state_dir(_Where(sys.prefix, sys.prefix != sys.base_prefix), env))
    return None


# -- what is read again ---------------------------------------------------------------------------


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).hexdigest()


def _content(path: str):
    """A file's content digest, credentials in its URLs left out (``redaction.redact``: the
    record holds no digest a password could be guessed against; a password alone decides no
    re-run, which asks no index); None when there is none; "dir" for a folder."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
        return hashlib.sha256(redaction.redact(text).encode("utf-8", "surrogateescape")).hexdigest()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return "dir"
    except OSError as exc:
        return f"error {exc.errno}"


def _identity(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


def _listing(folder: str):
    """The distributions and ``.pth`` files in one folder of the target's path; a file on the
    path (a zip) by identity; None when there is nothing."""
    try:
        entries = os.scandir(folder or ".")
    except NotADirectoryError:
        return _identity(folder)
    except OSError:
        return None
    out = []
    with entries:
        for e in entries:
            low = e.name.lower()
            if low.endswith((".dist-info", ".egg-info", ".egg")) or e.name.startswith("~"):
                st = e.stat(follow_symlinks=False)
                out.append((e.name, st.st_ino, st.st_mtime_ns, st.st_size))
            elif low.endswith((".pth", ".egg-link")):
                out.append((e.name, _content(e.path)))
    return sorted(out)


def _code() -> list:
    """backendpick's own files (a changed checkout or data table answers anew)."""
    base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out, stack = [], [base]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    if e.name != "__pycache__":
                        stack.append(e.path)
                elif e.name.endswith((".py", ".toml")):
                    st = e.stat()
                    out.append((e.path[len(base):], st.st_size, st.st_mtime_ns))
    return sorted(out)


def _each(folder: str, name: str) -> list:
    """``folder/*/name`` by content (the GPUs the NVIDIA driver lists, the AMD topology nodes)."""
    try:
        subs = sorted(os.listdir(folder))
    except OSError:
        return []
    return [(s, _content(os.path.join(folder, s, name))) for s in subs]


def _pci(folder: str) -> list:
    """Each PCI device's class; vendor and device ids of the display controllers."""
    out = []
    try:
        slots = sorted(os.listdir(folder))
    except OSError:
        return out
    for slot in slots:
        row = [slot]
        for item in ("class", "vendor", "device"):
            try:
                with open(os.path.join(folder, slot, item), encoding="ascii", errors="replace") as f:
                    row.append(f.read().strip())
            except OSError:
                row.append(None)
            if item == "class" and not (row[1] or "").startswith("0x03"):
                break
        out.append(tuple(row))
    return out


def _which(name: str, env, root: str, extra: tuple) -> tuple | None:
    """The vendor tool the probe would run (PATH first, then its folders below the root), by identity."""
    dirs = env.get("PATH", os.defpath).split(os.pathsep) + [os.path.join(root, d) for d in extra]
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, _identity(path)
    return None


def machine(env) -> tuple[tuple, bool]:
    """What the hardware probe reads, as far as files tell it (machine/probe.py, below
    ``BACKENDPICK_PROBE_ROOT``), and whether that is all it learns: a vendor tool on PATH
    answers from the hardware, which only the driver's files can stand for (nvidia-smi: one
    ``/proc/driver/nvidia/gpus`` entry per GPU; rocminfo: the kfd topology nodes)."""
    root = str(envvars.probe_root(env))
    files = tuple(_content(os.path.join(root, p)) for p in (
        "sys/module/nvidia/version", "proc/driver/nvidia/version", "proc/sys/kernel/osrelease",
        "opt/rocm/.info/version"))
    gpus = _each(os.path.join(root, "proc/driver/nvidia/gpus"), "information")
    nodes = _each(os.path.join(root, "sys/class/kfd/kfd/topology/nodes"), "properties")
    tools = tuple(_which(name, env, root, extra) for name, extra in _TOOLS)
    knowable = (tools[0] is None or bool(gpus)) and (tools[1] is None and tools[2] is None or bool(nodes))
    seen = (tuple(os.uname()), files, os.path.isdir(os.path.join(root, "usr/lib/wsl/lib")), gpus, nodes,
            _pci(os.path.join(root, "sys/bus/pci/devices")), tools)
    return seen, knowable


def _tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def fingerprint(python: str, args: list[str], cwd: str, env, files: list[str], folders: list[str],
                programs: list[list[str]] = (), variables: list[str] = ()) -> dict:
    """One digest per kind of input (the module's docstring lists them). ``programs``: (name,
    path) of the programs the run found (uv): the one PATH finds now, and that path's file.
    ``variables``: more variables that count (``${NAME}`` in a requirements file)."""
    parts = {
        "backendpick": (__version__, _code()),
        **_asked(python, args, cwd, env, variables),
        "files": [(f, _content(f)) for f in files],
        "installed": [(d, _listing(d)) for d in folders],
        "programs": [(name, _which(name, env, "", ()), path, _identity(path)) for name, path in programs],
        "machine": machine(env)[0],
    }
    return {key: _digest(value) for key, value in parts.items()}


def _asked(python: str, args: list[str], cwd: str, env, variables=()) -> dict:
    """The parts of the fingerprint known before a record is read: what was asked, where, by
    which interpreter, under which variables."""
    values = {k: v for k, v in env.items() if counts(k)}
    values.update((k, env.get(k)) for k in variables)
    return {
        "command": ([redaction.redact(a) for a in args], cwd, _tty(sys.stdout), _tty(sys.stderr)),
        "interpreters": (sys.executable, sys.version, python, _identity(os.path.realpath(python))),
        "environment": sorted((k, v if v is None else redaction.redact_var(k, v)) for k, v in values.items()),
    }


def _record_path(command: str, state: str, python: str, args: list[str], cwd: str, env) -> str:
    """Where the record of ``command`` lives: install's one per environment, in its state folder
    (the environment's lock removes it); detect's one per question (target, words, folder,
    variables: ``detect`` and ``detect --json`` answer alike, each from its own) in the user's
    cache, named by a digest of what was asked with credentials hidden."""
    if command == "install":
        return str(paths.noop_record(Path(state)))
    return str(paths.detect_records(env) / f"{_digest(_asked(python, args, cwd, env))[:24]}.json")


# -- the fast path ----------------------------------------------------------------------------------


class _Run:
    """This process's ``install`` or ``detect``, after ``answer`` fell through: what a record
    needs of it, and what it printed (``listen``)."""

    def __init__(self, command: str, args: list[str], cwd: str, python: str, state: str, record: str):
        self.command, self.args, self.cwd = command, args, cwd
        self.python, self.state, self.record = python, state, record
        self.chunks: list[list[str]] = []
        self.size = 0
        self.off = False  # the output is not what a re-run would print, or is too long

    def add(self, stream: str, text: str) -> None:
        if self.off:
            return
        self.size += len(text)
        if self.size > _LIMIT:
            self.off, self.chunks = True, []
        elif self.chunks and self.chunks[-1][0] == stream:
            self.chunks[-1][1] += text
        else:
            self.chunks.append([stream, text])


_run: _Run | None = None


def _load(path: str) -> tuple[dict, tuple] | None:
    try:
        before = _identity(path)
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or before is None:
        return None
    output = data.get("output")
    if not isinstance(output, list) or not all(
            isinstance(c, list) and len(c) == 2 and c[0] in ("out", "err") and isinstance(c[1], str) for c in output):
        return None
    if not all(isinstance(data.get(k), list) and all(isinstance(x, str) for x in data[k]) for k in ("files", "folders")):
        return None
    programs = data.get("programs")
    if not isinstance(programs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in programs):
        return None
    if not isinstance(data.get("variables"), list) or not all(isinstance(x, str) for x in data["variables"]):
        return None
    fresh = data.get("fresh")
    if fresh is not None and not (isinstance(fresh, list) and len(fresh) == 2
                                  and all(isinstance(x, (int, float)) for x in fresh)):
        return None
    return data, before


def answer(args: list[str], python_flag: str | None, command: str = "install") -> bool:
    """``backendpick install ARGS`` (or ``detect ARGS``) answered from the record: True when it
    printed the recorded answer (the process is done, exit 0); False to run the full pipeline."""
    global _run
    _run = None
    if not eligible(args):
        return False
    env = os.environ
    python = chosen_python(python_flag, env)
    try:
        cwd = os.getcwd()
    except OSError:
        return False
    state = state_of(python, env) if python is not None else None
    if state is None:
        return False
    record = _record_path(command, state, python, args, cwd, env)
    _run = _Run(command, list(args), cwd, python, state, record)
    loaded = _load(record)
    if loaded is None:
        return False
    data, before = loaded
    now = fingerprint(python, args, cwd, env, data["files"], data["folders"], data["programs"], data["variables"])
    if data.get("python") != python or now != data.get("fingerprint"):
        return False
    # The index pages the answer was made from answer a full run alike only while all are fresh
    # (indexes/page_cache.py: a kept page is used without a request from when it was stored until
    # its lifetime ends); after that the full run asks the index again.
    fresh = data.get("fresh")
    if fresh is not None and not fresh[0] <= time.time() < fresh[1]:
        return False
    # An install or restore removes the record when it takes the environment's lock, before it
    # changes anything: still the same file now means the folders above were read before any change.
    if _identity(record) != before:
        return False
    for stream, text in data["output"]:
        target = sys.stdout if stream == "out" else sys.stderr
        target.write(text)
        target.flush()
    _run = None
    return True


# -- the record, written by the full run --------------------------------------------------------------


class _Tee:
    """A stream of ``output.Output`` that also keeps what is written, for the record."""

    def __init__(self, stream, name: str, run: _Run):
        self._stream, self._name, self._run = stream, name, run

    def write(self, text: str) -> int:
        self._run.add(self._name, text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def listen(out) -> None:
    """Keep what ``out`` prints (an ``output.Output``) when this run may leave a record."""
    if _run is not None and not _run.off:
        out.stdout = _Tee(out.stdout, "out", _run)
        out.stderr = _Tee(out.stderr, "err", _run)


def forgo() -> None:
    """This run's output is not what a re-run would print (it waited for another backendpick)."""
    if _run is not None:
        _run.off = True


class Watch:
    """A full run that found nothing to do: the fingerprint of its inputs after planning."""

    def __init__(self, run: _Run, files: list[str], folders: list[str], programs: list[list[str]],
                 variables: list[str], fresh: tuple[float, float] | None = None):
        self.run, self.files, self.folders, self.programs, self.variables = run, files, folders, programs, variables
        self.fresh = fresh
        self.before = self._now()

    def _now(self) -> dict:
        run = self.run
        return fingerprint(run.python, run.args, run.cwd, os.environ, self.files, self.folders, self.programs,
                           self.variables)

    def finish(self, *, unchanged: bool) -> bool:
        """Write the record when the run changed nothing (``unchanged``: the installed set is the
        one it planned with; the fingerprint is the one after planning). True when written."""
        run = self.run
        if run is not _run or run.off or not unchanged:
            return False
        now = self._now()
        if now != self.before:
            return False  # this run changed something (pins rewritten), or someone else did
        from backendpick.edges.durable import write_atomic

        # No words of the command line in it: they may hold a credential (the fingerprint has
        # them with credentials hidden, and the output is what backendpick prints: redacted).
        data = {"format": FORMAT, "python": run.python, "files": self.files, "folders": self.folders,
                "programs": self.programs, "variables": self.variables, "fingerprint": now, "output": run.chunks}
        if self.fresh is not None:
            data["fresh"] = list(self.fresh)
        record = Path(run.record)
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(record, json.dumps(data, indent=1))
        except OSError:
            return False  # only the next run's shortcut is lost
        if record.parent != Path(run.state):
            _prune(record.parent)
        return True


def _prune(folder: Path, keep: int = 8) -> None:
    """The ``keep`` newest records of a folder of them (detect's, one per question asked)."""
    try:
        found = sorted(((p.stat().st_mtime_ns, p) for p in folder.glob("*.json")), reverse=True)
        for _, old in found[keep:]:
            old.unlink()
    except OSError:
        pass  # another run pruned it first


def watch(python: str | None, state: str | None, files: list[str], folders: list[str],
          programs: dict[str, str] | None = None, variables: list[str] = (),
          fresh: tuple[float, float] | None = None, command: str = "install") -> Watch | None:
    """A ``Watch`` for this run, or None: the run did not come through ``answer`` (another
    entry, or words ``answer`` does not read), ``answer`` located another environment than the
    inspection found, or a vendor tool answers what no file tells. ``python`` and ``state``
    None: the run's own, as ``answer`` located them (detect --offline looks at no target)."""
    run = _run
    if run is None or run.off or run.command != command:
        return None
    if python is not None and (os.path.abspath(python) != run.python or os.path.abspath(state) != run.state):
        return None
    if not machine(os.environ)[1]:
        return None
    return Watch(run, [os.path.abspath(f) for f in files], [os.path.abspath(d) if d else d for d in folders],
                 [[name, os.path.abspath(path)] for name, path in sorted((programs or {}).items())], list(variables),
                 fresh)


def inputs_of(target, project_dir: Path, pip_config, env, listed=()) -> tuple[list[str], list[str]]:
    """The files a re-run of a command on ``target`` reads again to know that nothing changed,
    and the ``${NAME}`` variables its requirements files name (they count whatever their name):
    the project's pyproject.toml, the requirements files ``listed``, pip's configuration files
    and the constraint files they name, the environment's own files (pins, the last install's
    record, the build records, pyvenv.cfg) and the installed torch's version file and the like.
    The machinery is loaded: imported here, not at the top."""
    from backendpick.errors import ConfigError
    from backendpick.inputs import pip_config as pipconf, requirements
    from backendpick.state import environment_pins

    listed = list(listed)
    for raw in pip_config.list("constraint"):
        path = pipconf.value_path(raw)
        try:
            listed += requirements.read_file(path, constraints=True, env=env).files
        except ConfigError:
            listed.append(path)
    names = set()
    for path in listed:
        try:
            names |= requirements.variables(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            pass
    files = [Path(project_dir) / "pyproject.toml", *listed, *pipconf.config_files(env, target.prefix)]
    state = paths.state_dir(target, env)
    files += [environment_pins.pins_path(target.prefix), paths.last_install(state), paths.builds_record(state),
              target.prefix / "pyvenv.cfg"]
    for key in target.files:  # first on the path, as the inspection found it
        found = next((os.path.join(d, key) for d in target.path if os.path.isfile(os.path.join(d, key))), None)
        files += [found] if found else []
    return [str(f) for f in files], sorted(names)


def pending() -> bool:
    """Whether this run may leave a record (it came through ``answer``, which fell through)."""
    return _run is not None and not _run.off
