"""A fake machine for the hardware probe: files under a probe root plus fake vendor tools.

``FakeMachine`` builds, under a temporary directory:

* ``root/``: what ``BACKENDPICK_PROBE_ROOT`` points at: ``sys/module/nvidia/version``,
  ``proc/driver/nvidia/version``, ``opt/rocm/.info/version``, ``sys/bus/pci/devices/<slot>/...``
  and, for WSL, ``usr/lib/wsl/lib/nvidia-smi`` plus a ``microsoft`` kernel release;
* ``bin/``: fake ``nvidia-smi``, ``rocminfo`` and ``rocm_agent_enumerator`` (``/bin/sh``
  scripts that print fixture text and log their arguments);
* ``sysbin/``: the only "system" directory on ``PATH``, holding links to ``sh``, ``cat`` and
  ``sleep``. The real ``/usr/bin`` is left out on purpose: on a GPU host it holds the real
  ``nvidia-smi``, which would leak the host's hardware into every scenario.

It is filled either from a scenario directory under ``tests/data/hardware`` (see that folder's
file names) or programmatically. ``env`` is what the machine contributes to an environment
(nothing read from the real machine); a subprocess gets it through the one recipe,
``tests.support.hermetic.subprocess_env(machine=...)``, and an in-process probe through
``settings()``.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

HARDWARE = Path(__file__).resolve().parent.parent / "data" / "hardware"

SCENARIOS = sorted(p.name for p in HARDWARE.iterdir() if p.is_dir()) if HARDWARE.is_dir() else []

DEFAULT_TIMEOUT = 5.0  # generous: the fake tools answer in milliseconds, CI machines are slow
HANG_TIMEOUT = 1.0
WSL_OSRELEASE = "5.15.167.4-microsoft-standard-WSL2\n"


def _tool(name: str) -> str:
    found = shutil.which(name, path="/usr/bin:/bin")
    if not found:  # pragma: no cover - every POSIX box has these
        raise RuntimeError(f"the fake machine needs {name} in /usr/bin or /bin")
    return found


def scenario_dir(name: str) -> Path:
    return HARDWARE / name


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (blank lines and ``#`` comments skipped)."""
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value
    return env


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _script(path: Path, body: str) -> Path:
    _write(path, "#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _q(path: Path) -> str:
    """Single-quote a path for /bin/sh."""
    return "'" + str(path).replace("'", "'\"'\"'") + "'"


class FakeMachine:
    """Builder of a fake machine under ``base`` (a pytest ``tmp_path``)."""

    def __init__(self, base: Path, *, timeout: float = DEFAULT_TIMEOUT, name: str | None = None):
        self.name = name or Path(base).name  # what tests call it (``Lab.machines`` keys)
        self.base = Path(base) / "fakehw"
        self.root = self.base / "root"
        self.bin = self.base / "bin"
        self.sysbin = self.base / "sysbin"
        self.home = self.base / "home"
        self.data = self.base / "data"  # what the fake tools print, and their call logs
        for d in (self.root, self.bin, self.sysbin, self.home, self.data):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("sh", "cat", "sleep"):
            link = self.sysbin / name
            if not link.exists():
                link.symlink_to(_tool(name))
        self.timeout = timeout
        self.extra_env: dict[str, str] = {}
        self.scenario: str | None = None
        self.is_wsl = False

    # -- from a fixture directory -----------------------------------------------------------------
    @classmethod
    def from_scenario(
        cls,
        base: Path,
        scenario: str | Path,
        *,
        timeout: float | None = None,
        rocm_on_path: bool = True,
    ) -> FakeMachine:
        src = Path(scenario) if isinstance(scenario, Path) else scenario_dir(scenario)
        if not src.is_dir():
            raise FileNotFoundError(f"no hardware scenario {src}")
        hang = (src / "nvidia-smi.hang").exists()
        if timeout is None:
            timeout = HANG_TIMEOUT if hang else DEFAULT_TIMEOUT
        m = cls(base, timeout=timeout)
        m.scenario = src.name

        def text(name: str) -> str | None:
            p = src / name
            return p.read_text(encoding="utf-8") if p.is_file() else None

        if (src / "wsl").exists():
            m.wsl()
        if text("sys-module-nvidia-version") is not None:
            m.sys_driver(text("sys-module-nvidia-version"))
        if text("proc-driver-nvidia-version") is not None:
            m.proc_driver(text("proc-driver-nvidia-version"))
        smi_files = ("nvidia-smi-query.csv", "nvidia-smi.txt", "nvidia-smi.hang")
        if any((src / f).exists() for f in smi_files):
            exit_text = text("nvidia-smi.exit")
            m.nvidia_smi(
                query=text("nvidia-smi-query.csv"),
                banner=text("nvidia-smi.txt"),
                nocap=text("nvidia-smi-query-nocap.csv"),
                exit_code=int(exit_text.strip()) if exit_text and exit_text.strip() else None,
                hang=hang,
            )
        if text("rocminfo.txt") is not None:
            m.rocminfo(text("rocminfo.txt"), on_path=rocm_on_path)
        if text("rocm_agent_enumerator.txt") is not None:
            m.agent_enumerator(text("rocm_agent_enumerator.txt"), on_path=rocm_on_path)
        if text("opt-rocm-info-version") is not None:
            m.rocm_version(text("opt-rocm-info-version"))
        if text("pci-devices.txt") is not None:
            m.pci_devices(text("pci-devices.txt").splitlines())
        if (src / "env").is_file():
            m.set_env(read_env_file(src / "env"))
        return m

    # -- programmatic ---------------------------------------------------------------------------
    def sys_driver(self, text: str) -> FakeMachine:
        _write(self.root / "sys/module/nvidia/version", text)
        return self

    def proc_driver(self, text: str) -> FakeMachine:
        _write(self.root / "proc/driver/nvidia/version", text)
        return self

    def driver(self, version: str) -> FakeMachine:
        """Both kernel-module files for a loaded proprietary driver ``version``."""
        self.sys_driver(version + "\n")
        return self.proc_driver(
            f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Thu Feb 22 01:44:30 UTC 2024\n"
            "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n"
        )

    def driver_gpus(self, models: Iterable[str]) -> FakeMachine:
        """The driver's own list of its GPUs, ``/proc/driver/nvidia/gpus/<bus id>/information``
        (what the no-op check of a re-run reads instead of running nvidia-smi, state/noop.py)."""
        gpus = self.root / "proc/driver/nvidia/gpus"
        shutil.rmtree(gpus, ignore_errors=True)
        for i, model in enumerate(models):
            _write(gpus / f"0000:{i + 1:02x}:00.0" / "information",
                   f"Model: \t\t {model}\nIRQ:   \t\t 0\nGPU UUID: \t GPU-{i:08d}-0000-0000-0000-000000000000\n"
                   f"Bus Location: \t 0000:{i + 1:02x}:00.0\n")
        return self

    def wsl(self) -> FakeMachine:
        """WSL2: nvidia-smi lives in /usr/lib/wsl/lib (below the root), never on PATH."""
        self.is_wsl = True
        (self.root / "usr/lib/wsl/lib").mkdir(parents=True, exist_ok=True)
        _write(self.root / "proc/sys/kernel/osrelease", WSL_OSRELEASE)
        existing = self.bin / "nvidia-smi"
        if existing.exists():
            existing.replace(self.root / "usr/lib/wsl/lib/nvidia-smi")
        return self

    def nvidia_smi(
        self,
        *,
        query: str | bytes | None = None,
        banner: str | bytes | None = None,
        nocap: str | bytes | None = None,
        exit_code: int | None = None,
        banner_exit_code: int | None = None,
        hang: bool = False,
    ) -> FakeMachine:
        """A fake ``nvidia-smi``.

        ``--query-gpu=...`` prints ``query`` and exits ``exit_code``; a query without
        ``compute_cap`` prints ``nocap`` (exit 0) when given. Without ``--query-gpu`` it prints
        ``banner`` and exits ``banner_exit_code``, which defaults to ``exit_code`` when the banner
        is an error message (no ``Driver Version``) and to 0 otherwise: the 470 fixtures' exit
        code belongs to the failing compute_cap query only. ``hang`` makes every call sleep 60 s
        after starting a background ``sleep 60`` child (its pid goes to ``hang_children``).
        """
        d = self.data / "nvidia-smi"
        d.mkdir(parents=True, exist_ok=True)
        for name, value in (
            ("query.csv", query),
            ("banner.txt", banner),
            ("query-nocap.csv", nocap),
        ):
            if value is not None:
                _write(d / name, value)
        if banner_exit_code is None and exit_code:
            banner_text = (
                banner.decode("utf-8", "replace") if isinstance(banner, bytes) else (banner or "")
            )
            banner_exit_code = 0 if "Driver Version" in banner_text else exit_code
        if exit_code:
            _write(d / "exit", f"{exit_code}\n")
        if banner_exit_code:
            _write(d / "banner.exit", f"{banner_exit_code}\n")
        if hang:
            _write(d / "hang", "")
        body = f"""D={_q(d)}
S={_q(self.sysbin)}
printf '%s\\n' "$*" >> "$D/calls"
if [ -f "$D/hang" ]; then
  "$S/sleep" 60 &
  echo $! >> "$D/child.pid"
  exec "$S/sleep" 60
fi
query=0
nocap=0
for a in "$@"; do
  case "$a" in
    --query-gpu*)
      query=1
      case "$a" in *compute_cap*) ;; *) nocap=1 ;; esac ;;
  esac
done
if [ $query = 1 ]; then
  if [ $nocap = 1 ] && [ -f "$D/query-nocap.csv" ]; then
    "$S/cat" "$D/query-nocap.csv"
    exit 0
  fi
  [ -f "$D/query.csv" ] && "$S/cat" "$D/query.csv"
  [ -f "$D/exit" ] && exit "$("$S/cat" "$D/exit")"
  exit 0
fi
[ -f "$D/banner.txt" ] && "$S/cat" "$D/banner.txt"
[ -f "$D/banner.exit" ] && exit "$("$S/cat" "$D/banner.exit")"
exit 0
"""
        target = (self.root / "usr/lib/wsl/lib" if self.is_wsl else self.bin) / "nvidia-smi"
        _script(target, body)
        return self

    def _printer(self, name: str, text: str | bytes, exit_code: int, on_path: bool) -> Path:
        d = self.data / name
        _write(d / "out.txt", text)
        body = f"""D={_q(d)}
printf '%s\\n' "$*" >> "$D/calls"
{_q(self.sysbin / "cat")} "$D/out.txt"
exit {int(exit_code)}
"""
        where = self.bin if on_path else self.root / "opt/rocm/bin"
        return _script(where / name, body)

    def rocminfo(
        self, text: str | bytes, *, exit_code: int = 0, on_path: bool = True
    ) -> FakeMachine:
        self._printer("rocminfo", text, exit_code, on_path)
        return self

    def agent_enumerator(
        self, text: str | bytes, *, exit_code: int = 0, on_path: bool = True
    ) -> FakeMachine:
        self._printer("rocm_agent_enumerator", text, exit_code, on_path)
        return self

    def rocm_version(self, text: str) -> FakeMachine:
        _write(self.root / "opt/rocm/.info/version", text)
        return self

    def pci_devices(self, lines: Iterable[str]) -> FakeMachine:
        """``<slot> <class> <vendor> <device>`` lines -> /sys/bus/pci/devices/<slot>/{class,vendor,device}."""
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            slot, cls, vendor, device = parts
            d = self.root / "sys/bus/pci/devices" / slot
            _write(d / "class", cls + "\n")
            _write(d / "vendor", vendor + "\n")
            _write(d / "device", device + "\n")
        return self

    def pci_device(self, slot: str, cls: str, vendor: str, device: str) -> FakeMachine:
        return self.pci_devices([f"{slot} {cls} {vendor} {device}"])

    def nvcc(self, release: str) -> FakeMachine:
        """A CUDA toolkit's ``nvcc`` of ``release`` (``12.4``) on PATH, as in a -devel image.
        The test environment points CUDA_HOME at it (``tests.support.hermetic``)."""
        _script(self.bin / "nvcc", "echo 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                                   f"echo 'Cuda compilation tools, release {release}, V{release}.131'\n")
        return self

    def tool(self, name: str, body: str) -> FakeMachine:
        """Any other executable on the machine's PATH (a fake ``c++`` or ``ninja``): ``body``
        is its /bin/sh script."""
        _script(self.bin / name, body)
        return self

    def meminfo(self, total_kb: int, available_kb: int) -> FakeMachine:
        """``/proc/meminfo`` below the probe root (what source builds size MAX_JOBS by)."""
        _write(self.root / "proc/meminfo", f"MemTotal:       {total_kb} kB\nMemAvailable:   {available_kb} kB\n")
        return self

    def set_env(self, values: Mapping[str, str]) -> FakeMachine:
        self.extra_env.update(values)
        return self

    # -- results --------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return os.pathsep.join([str(self.bin), str(self.sysbin)])

    @property
    def env(self) -> dict[str, str]:
        """The machine's variables, nothing from os.environ: the whole environment of an
        in-process probe (``settings``); a subprocess gets them through the one recipe,
        ``tests.support.hermetic.subprocess_env(machine=...)``.

        The scenario's own variables are kept (``CUDA_VERSION`` of a container image, say),
        except ``PATH`` and ``HOME``, which must not point at the real machine.
        """
        env = {k: v for k, v in self.extra_env.items() if k not in ("PATH", "HOME")}
        env.update(
            {
                "PATH": self.path,
                "HOME": str(self.home),
                "LC_ALL": "C.UTF-8",
                "BACKENDPICK_PROBE_ROOT": str(self.root),
                "BACKENDPICK_PROBE_TIMEOUT": f"{self.timeout:g}",
            }
        )
        return env

    def settings(self, **overrides):
        """``ProbeSettings`` for this machine (Linux x86_64 unless overridden)."""
        from backendpick.machine.probe import ProbeSettings

        kw = dict(
            root=self.root, timeout=self.timeout, env=self.env, platform="linux", machine="x86_64"
        )
        kw.update(overrides)
        return ProbeSettings(**kw)

    def calls(self, tool: str) -> list[str]:
        """Argument strings of each run of a fake tool, in order."""
        log = self.data / tool / "calls"
        return log.read_text(encoding="utf-8").splitlines() if log.is_file() else []

    def hang_children(self) -> list[int]:
        f = self.data / "nvidia-smi" / "child.pid"
        return [int(x) for x in f.read_text().split()] if f.is_file() else []


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def wait_gone(pids: Iterable[int], timeout: float = 3.0) -> list[int]:
    """Pids still alive after waiting up to ``timeout`` seconds."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)
