"""The shell export's build phase: what install's build phase does, as POSIX shell lines.

Install keeps the build requirements out of the environment (``pip install --target`` into a
folder only the source builds see, on their ``PYTHONPATH`` and ``PATH``), takes each build
package's wheel from backendpick's wheel cache, else the prebuilt wheel it chose for the torch
the backend phase installs, else builds it from source with ``pip wheel`` (``uv build``) under limits and
stores it in the cache (build/wheel_choice.py, execute/build_phase.py). The script does the same
with the versions the plan chose:

* after the backend phase it imports the torch there once (``torch_info``, what install reads);
* ``bp_wheel lookup``: the wheel cache entry for that torch, when the script's machine has a
  backendpick cache folder (one that ran backendpick, or a mounted cache) or
  ``BACKENDPICK_CACHE_DIR`` names one; else the prebuilt URL the plan chose, when the torch is
  the one the plan chose it for; else a source build: the build requirements into the script's
  private folder (once), ``pip wheel`` with the plan's limits (with uv: ``bp_wheel fetch``
  downloads the sdist the plan found, reading ``.netrc`` as pip and uv do, then ``uv build``;
  no pip process, as install), then ``bp_wheel store`` puts the wheel into that cache (proven
  by the torch it saw) and names it;
* one install of the wheels, never built in pip's isolation.

The helper program run in the target is the wheel cache's own code (state/wheel_cache.py: the
key, the lookup, the store), embedded so the two cannot drift; standard library only.
"""

from __future__ import annotations

import inspect
import shlex
from typing import Callable

from backendpick.model.names import normalize
from backendpick.model.plan import AS_IS, PREBUILT, BuildStep, Phase
from backendpick.redaction import strip
from backendpick.state import wheel_cache
from backendpick.target import installed_torch
from backendpick.target.probes_in_target import torch_info

BUILD_ENV = '"$BP_TMP/build-env"'
BUILD_CONSTRAINTS = '"$BP_TMP/build-constraints.txt"'

_HELPER_MAIN = '''
def _torch(text):
    data = json.loads(text)
    return TorchInfo(str(data["version"]), data.get("cuda"), data.get("hip"), bool(data.get("cxx11abi", True)))


def _key(torch, name, version, arch):
    machine = ("linux_" + platform.machine()) if sys.platform.startswith("linux") else "unknown"
    return Key(name=name, version=version, torch=torch.version, backend=torch.backend, cxx11abi=torch.cxx11abi,
               python="cp%d%d" % sys.version_info[:2], platform=machine, arch=arch)


def _built(folder, name):
    """The wheel pip wheel wrote for ``name`` into ``folder``, and its version."""
    found = sorted(p for p in Path(folder).glob("*.whl")
                   if p.name.split("-")[0].lower().replace("_", "-") == name)
    if not found:
        raise SystemExit("backendpick script: pip wheel wrote no wheel of %s into %s" % (name, folder))
    return found[-1], found[-1].name.split("-")[1]


def fetch(url, dest):
    """The sdist a uv build compiles, with the credentials of .netrc (NETRC) for its host, its
    sha256 checked where the link names one."""
    import base64, hashlib, netrc, urllib.parse, urllib.request

    request = urllib.request.Request(url.split("#", 1)[0])
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(urllib.parse.urlsplit(url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        auth = None
    if auth:
        token = base64.b64encode(("%s:%s" % (auth[0], auth[2])).encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    with urllib.request.urlopen(request, timeout=300) as resp:
        data = resp.read()
    want = urllib.parse.urlsplit(url).fragment
    if want.startswith("sha256=") and hashlib.sha256(data).hexdigest() != want[len("sha256="):]:
        raise SystemExit("backendpick script: %s does not have the sha256 its index names" % url.split("#")[0])
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_bytes(data)


def main(argv):
    command = argv[0]
    if command == "fetch":
        fetch(argv[1], argv[2])
        return
    if command == "torch":
        import torch

        print(json.dumps(describe(torch)))
        return
    torch, cache, name, version, arch = _torch(argv[1]), argv[2], argv[3], argv[4], argv[5]
    if command == "lookup":
        # The cache entry for this torch, else the prebuilt URL chosen for the torch the plan
        # expected, when that is the torch here; nothing: build from source.
        entry = lookup(Path(cache), _key(torch, name, version, arch)) if cache and version else None
        if entry is not None:
            print(entry.wheel.resolve().as_uri())
        elif len(argv) > 7 and argv[7] and _torch(argv[6]).same_build(torch):
            print(argv[7])
        return
    wheel, built = _built(argv[6], name)
    stored = wheel
    if cache:
        try:
            stored = store(Path(cache), _key(torch, name, version or built, arch), wheel, torch.built_with()).wheel
            print("%s %s: stored in the wheel cache: %s" % (name, version or built, stored), file=sys.stderr)
        except OSError as exc:  # the build is good; only reuse is lost
            print("warning: cannot write the wheel cache %s (%s)" % (cache, exc), file=sys.stderr)
    print(Path(stored).resolve().as_uri())


main(sys.argv[1:])
'''


def helper_script() -> str:
    """``bp_wheel`` for the target Python: the wheel cache's key, lookup and store, torch's build."""
    parts = ["from __future__ import annotations", "import hashlib, json, os, platform, re, shutil, sys, time",
             "from dataclasses import asdict, dataclass", "from pathlib import Path",
             f"KEY_FILE = {wheel_cache.KEY_FILE!r}", f"DEFAULT_ARCH = {wheel_cache.DEFAULT_ARCH!r}",
             # The plan passes versions already normalized (packaging is not in the target).
             "def normalize_version(text):\n    return text\n"]
    for fn in (installed_torch.TorchInfo, installed_torch._major_minor, torch_info.describe, wheel_cache.Key,
               wheel_cache.arch_covers, wheel_cache.built_with, wheel_cache.Entry, wheel_cache.entry_dir,
               wheel_cache._read, wheel_cache.lookup, wheel_cache.NotProven, wheel_cache.store):
        parts.append(inspect.getsource(fn))
    parts.append(_HELPER_MAIN)
    return "\n".join(parts)


def cache_lines() -> list[str]:
    """Where the script's wheel cache is: BACKENDPICK_CACHE_DIR, else backendpick's cache folder
    when it exists on the machine running the script (paths.cache_home's rule); none otherwise."""
    return [
        "# backendpick's wheel cache, where it exists: BACKENDPICK_CACHE_DIR, else the wheels of backendpick's",
        "# cache folder when the machine has one (it ran backendpick, or a build mounts it).",
        'case "$(uname -s)" in',
        '  Darwin) BP_CACHE_HOME="${HOME:-}/Library/Caches/backendpick" ;;',
        '  *) BP_CACHE_HOME="${XDG_CACHE_HOME:-${HOME:-}/.cache}/backendpick" ;;',
        "esac",
        'WHEEL_CACHE="${BACKENDPICK_CACHE_DIR:-}"',
        'if [ -z "$WHEEL_CACHE" ] && [ -d "$BP_CACHE_HOME" ]; then WHEEL_CACHE="$BP_CACHE_HOME/wheels"; fi',
    ]


def requirements_lines(phase: Phase, words: list[str]) -> list[str]:
    """The build requirements into the script's private folder, as a function the first source
    build calls (install skips them when nothing is built from source)."""
    return [
        "# Only a source build needs them: into a folder of their own, on the builds' PYTHONPATH and PATH,",
        "# never into the environment (install keeps them apart the same way).",
        f"cat > {BUILD_CONSTRAINTS} <<'BACKENDPICK_EOF'", *(strip(c) for c in phase.constraints), "BACKENDPICK_EOF",
        "build_requirements() {",
        f"  if [ ! -d {BUILD_ENV} ]; then",
        "    " + " ".join(words),
        "  fi",
        "}",
    ]


def _var(step: BuildStep) -> str:
    return "WHEEL_" + "".join(c if c.isalnum() else "_" for c in step.name).upper()


def placeholder(step: BuildStep) -> str:
    """The requirement word the build phase's install gets for a chosen step (``_words`` turns it
    into ``"name @ $WHEEL_NAME"``)."""
    return f"\0wheel:{step.name}"


def install_word(word: str, steps: tuple[BuildStep, ...]) -> str | None:
    """The shell word for a placeholder requirement, None for any other word."""
    for step in steps:
        if word == placeholder(step):
            from packaging.requirements import Requirement

            req = Requirement(step.requirement)
            head = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
            return f'"{head} @ ${_var(step)}"'
    return None


def build_lines(phase: Phase, torch, separated: bool, build_argv: Callable[[BuildStep], list[str]],
                uv_unset: tuple[str, ...] | None = None) -> list[str]:
    """For each chosen step of the build phase: its wheel from the cache, the prebuilt URL, or a
    source build (``build_argv``: the step's ``pip wheel``, or ``uv build`` of its sdist, as shell
    words). ``torch``: the torch the plan chose for (a TorchInfo), None when it chose nothing
    yet. ``uv_unset``: the uv engine, with the variables its runs go without."""
    import json

    out = [f"bp_wheel() {{ \"$PY\" -c {shlex.quote(helper_script())} \"$@\"; }}",
           "# The torch the backend phase installed (imported once, as install reads it).",
           'TORCH_INFO="$(bp_wheel torch)"']
    expected = json.dumps(torch.to_json()) if torch is not None else ""
    for step in phase.steps:
        if step.how == AS_IS:
            continue  # pip builds it as it is, in the build phase's install
        var, name = _var(step), normalize(step.name)
        version = wheel_cache.normalize_version(step.version) if step.version else ""
        prebuilt = strip(step.wheel) if step.how == PREBUILT and step.wheel else ""
        arch = step.arch_key or wheel_cache.DEFAULT_ARCH
        out.append(f"# {strip(step.note)}" if step.note else f"# {step.requirement}")
        out.append(f'{var}="$(bp_wheel lookup "$TORCH_INFO" "$WHEEL_CACHE" {name} {shlex.quote(version)} '
                   f'{shlex.quote(arch)} {shlex.quote(expected)} {shlex.quote(prebuilt)})"')
        out.append(f'if [ -z "${var}" ]; then')
        if separated:
            out.append("  build_requirements")
        folder = f'"$BP_TMP/build/{name}"'
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(step.build_env.items()) if k != "PYTHONPATH"]
        if separated:
            env = [f"PYTHONPATH={BUILD_ENV}", f'PATH="$BP_TMP/build-env/bin:$PATH"', *env]
        out.append(f"  rm -rf {folder}")
        if uv_unset is not None:
            if not step.sdist:
                said = f"backendpick script: no sdist of {name} was found for uv build when the script was made"
                out.append(f"  echo {shlex.quote(said)} >&2")
                out.append("  exit 1")
                out.append("fi")
                continue
            env = [f"-u {k}" for k in uv_unset] + env
            if "://" in step.sdist:
                out.append(f"  bp_wheel fetch {shlex.quote(strip(step.sdist))} {sdist_word(step.sdist)}")
        out.append("  " + " ".join((["env", *env] if env else []) + build_argv(step)))
        out.append(f'  {var}="$(bp_wheel store "$TORCH_INFO" "$WHEEL_CACHE" {name} {shlex.quote(version)} '
                   f'{shlex.quote(arch)} {folder})"')
        out.append("fi")
    return out


def sdist_word(sdist: str) -> str:
    """Where the script keeps a downloaded sdist: its private folder."""
    return '"$BP_TMP/sdist/"' + shlex.quote(sdist.split("#", 1)[0].rsplit("/", 1)[-1])


def chosen(step: BuildStep) -> bool:
    """Whether the script chooses this step's wheel itself (all but what pip builds as it is)."""
    return step.how != AS_IS


__all__ = ["BUILD_CONSTRAINTS", "BUILD_ENV", "build_lines", "cache_lines", "chosen", "helper_script", "install_word",
           "placeholder", "requirements_lines", "sdist_word"]
