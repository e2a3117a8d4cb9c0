"""A password-protected company mirror end to end (issue 19).

Every index of the mirror is a copy of the session world's behind HTTP Basic auth
(tests/support/mirror.py): the backend indexes (``sec-cpu``, ``sec-cu124``), the user's
default index (``sec-pypi``), PyG's pages (``sec-pyg``) and the GitHub releases of flash-attn
(``sec-rel``). The credentials come, as pip takes them, from the URLs (pip.conf, the backend
index template, the mirrors and prebuilt settings), from ``.netrc`` (``NETRC``), or from keyring
(a fake ``keyring`` executable). Every child's command line is recorded (a ``.pth`` pip shim
in the venv, a uv wrapper named by ``BACKENDPICK_UV``).

After each case: the install went through the authenticated mirror, and the password is in no
command line, no output (``-v``, ``--json``), and no file under the venv (state folder, logs,
``builds.json``, snapshots, ``last-install.json``, ``pip.conf``, the pins), the cache folder or
the shell export. Installs are few (one per engine, one from the export); the first venv's
path holds a space, a quote and a non-ASCII letter, and a plain pip keeps working there.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dists import make_wheel
from tests.support.engines import has_uv
from tests.support.lab import Lab, Result, ok, py
from tests.support.mirror import ARGV_LOG, SECRET, USER, fake_keyring, leaks, record_python, secure_copy, uv_wrapper
from tests.support.mirror import with_password
from tests.support.recipe_world import add_recipe_world
from tests.support.venvs import clone_venv, write_pip_conf

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(sys.platform != "linux", reason="the pip shim reads /proc/self/cmdline")]

PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
PREBUILT = f"flash_attn-2.7.4+cu12torch2.5cxx11abiFALSE-{PY_TAG}-{PY_TAG}-linux_{platform.machine()}.whl"
REQUEST = ("--backend", "cu124", "torch==2.5.1", "flash-attn", "torch-scatter", "tqdm")


@dataclass
class Mirror:
    lab: Lab
    base: Path
    host: str  # http://127.0.0.1:PORT

    def url(self, index: str) -> str:
        return f"{self.host}/{index}"

    def project(self, name: str, password: bool) -> Path:
        """A project whose PyG pages and flash-attn releases come from the mirror."""
        wrap = with_password if password else (lambda u: u)
        proj = self.base / name
        proj.mkdir(exist_ok=True)
        (proj / "pyproject.toml").write_text(
            "[tool.backendpick.prebuilt]\n"
            f'flash-attn = ["{wrap(self.url("sec-rel/files/{filename}"))}"]\n'
            "[tool.backendpick.mirrors]\n"
            f'"https://data.pyg.org/whl/" = "{wrap(self.url("sec-pyg/"))}"\n')
        return proj

    def env(self, name: str, *, password: bool, **extra: str) -> dict[str, str]:
        """The user's side: pip.conf with the mirror as the default index, the backend index
        template, a cache folder and an argv log of this case."""
        wrap = with_password if password else (lambda u: u)
        conf = write_pip_conf(self.base / f"{name}-pip.conf", index_url=wrap(self.url("sec-pypi/simple")))
        log = self.base / f"{name}-argv.log"
        return self.lab.env(pip_conf=conf, **{
            "BACKENDPICK_INDEX_URL": wrap(self.url("sec-{backend}/simple")),
            "XDG_CACHE_HOME": str(self.base / f"{name}-cache"), ARGV_LOG: str(log),
            "BACKENDPICK_UV": str(uv_wrapper(self.base / f"{name}-bin", log)) if has_uv() else "", **extra})

    def venv(self, name: str) -> Path:
        venv = clone_venv(self.lab.world.template_venv, self.base / name)
        record_python(venv)
        return venv


@pytest.fixture(scope="module")
def mirror(lab: Lab, tmp_path_factory) -> Mirror:
    server = lab.server
    add_recipe_world(server)
    make_wheel(server.index_dir("rel"), "flash-attn", "2.7.4+cu12torch2.5cxx11abiFALSE",
               tag=f"{PY_TAG}-{PY_TAG}-linux_{platform.machine()}", requires=["torch", "einops"],
               files={"flash_attn/__init__.py": "prebuilt = True\n", "flash_attn_2_cuda.py": ""})
    for name in ("cpu", "cu124", "pypi", "pyg", "rel"):
        secure_copy(server, name)
    return Mirror(lab, tmp_path_factory.mktemp("mirror"), server.base_url)


def no_secret_anywhere(env: dict, *results: Result, roots=(), texts=None) -> None:
    """The password is in no command line of a child, no output and no file under ``roots``
    (the venvs), the cache folder or ``texts``."""
    log = Path(env[ARGV_LOG])
    argv = log.read_text() if log.exists() else ""
    found = leaks([*roots, Path(env["XDG_CACHE_HOME"])],
                  {"argv": argv, **{f"{' '.join(r.args)}": r.stdout + r.stderr for r in results}, **(texts or {})})
    assert not found, found


def check_installed(mirror: Mirror, venv: Path) -> None:
    versions = mirror.lab.versions(venv)
    assert versions["torch"] == "2.5.1+cu124"
    assert versions["flash-attn"] == "2.7.4+cu12torch2.5cxx11abiFALSE"  # the prebuilt wheel, nothing built
    assert versions["torch-scatter"] == "2.1.2+pt25cu124" and "tqdm" in versions


def authorized(mirror: Mirror, index: str, kind: str) -> list[str]:
    return [r.name for r in mirror.lab.server.log if r.index == index and r.kind == kind and r.status == 200
            and r.user == USER]


# -- credentials in the URLs ----------------------------------------------------------------------


def test_install_through_the_mirror_with_pip_in_a_path_with_a_space_a_quote_and_an_accent(mirror: Mirror) -> None:
    env = mirror.env("pip", password=True)
    proj = mirror.project("proj-pw", password=True)
    venv = mirror.venv("my venv 'q' é")
    where = ("--python", py(venv), "--project", str(proj))
    plan = ok(mirror.lab.run("plan", "--json", *where, *REQUEST, env=env))
    assert plan.json()["offers_source"] == "index"  # read from the mirror, not the packaged table
    mirror.lab.server.clear_log()
    res = ok(mirror.lab.run("install", "-v", *where, *REQUEST, env=env))
    check_installed(mirror, venv)
    assert PREBUILT in authorized(mirror, "sec-rel", "file")  # downloaded by backendpick, with the password
    assert any(n.startswith("torch-2.5.1") for n in authorized(mirror, "sec-cu124", "file"))  # by pip, with it
    # pip would not find the password of the prebuilt and PyG URLs: backendpick fetched both first.
    for index in ("sec-rel", "sec-pyg"):
        assert f"downloading {mirror.url(index)}/files/" in res.output, res
    verify = ok(mirror.lab.run("verify", "--json", *where, env=env))
    assert verify.json()["pins"]["readable_by_pip"] is True
    no_secret_anywhere(env, plan, res, verify, roots=[venv])
    # A plain pip in that venv: the pins file is read as one value (not split at the space).
    plain = mirror.lab.pip(venv, "install", "einops", env=env)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    refused = mirror.lab.pip(venv, "install", "torch==2.7.1", env=env)
    assert refused.returncode != 0 and "2.5.1+cu124" in refused.stdout + refused.stderr
    assert mirror.lab.versions(venv)["torch"] == "2.5.1+cu124"


@pytest.mark.skipif(not has_uv(), reason="uv is not installed (pip install uv)")
def test_install_through_the_mirror_with_uv(mirror: Mirror) -> None:
    env = mirror.env("uv", password=True)
    proj = mirror.project("proj-pw", password=True)
    venv = mirror.venv("uv-venv")
    res = ok(mirror.lab.run("install", "--installer", "uv", "-v", "--python", py(venv), "--project", str(proj),
                            *REQUEST, env=env))
    check_installed(mirror, venv)
    no_secret_anywhere(env, res, roots=[venv])
    argv = Path(env[ARGV_LOG]).read_text()
    assert "--default-index backendpick-1=http://127.0.0.1" in argv  # a named index, its password elsewhere


# -- .netrc ------------------------------------------------------------------------------------------


def test_netrc_serves_detect_plan_and_the_shell_export(mirror: Mirror) -> None:
    netrc = mirror.base / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {SECRET}\n")
    env = mirror.env("netrc", password=False, NETRC=str(netrc))
    proj = mirror.project("proj-netrc", password=False)
    venv = mirror.venv("netrc-venv")
    detect = ok(mirror.lab.run("detect", "--json", env=env))
    assert detect.json()["offers_source"] == "index"
    request = ("--backend", "cu124", "torch==2.5.1", "torch-scatter", "tqdm")
    plan = ok(mirror.lab.run("plan", "--format", "sh", "--python", py(venv), "--project", str(proj), *request, env=env))
    script = mirror.base / "install.sh"
    script.write_text(plan.stdout)
    assert "want them: put them in ~/.netrc" in plan.stdout
    # The script, where backendpick is not installed: plain pip reads .netrc.
    ran = subprocess.run(["sh", str(script)], env={**env, "PYTHON": py(venv)}, cwd=mirror.base, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    versions = mirror.lab.versions(venv)
    assert versions["torch"] == "2.5.1+cu124" and versions["torch-scatter"] == "2.1.2+pt25cu124"
    no_secret_anywhere(env, detect, plan, roots=[venv], texts={"script run": ran.stdout + ran.stderr})


# -- keyring -----------------------------------------------------------------------------------------


def test_keyring_named_by_pip_config_serves_the_look_ups(mirror: Mirror) -> None:
    keyring_log = mirror.base / "keyring.log"
    bin_dir = mirror.base / "keyring-bin"
    fake_keyring(bin_dir, keyring_log)
    user_url = mirror.host.replace("://", f"://{USER}@")
    env = mirror.env("keyring", password=False)
    conf = mirror.base / "keyring-provider-pip.conf"
    conf.write_text(f"[global]\nindex-url = {user_url}/sec-pypi/simple\nkeyring-provider = subprocess\n")
    env.update(PIP_CONFIG_FILE=str(conf), BACKENDPICK_INDEX_URL=f"{user_url}/sec-{{backend}}/simple",
               PATH=f"{bin_dir}:{env['PATH']}")
    detect = ok(mirror.lab.run("detect", "--json", env=env))
    assert detect.json()["offers_source"] == "index"
    venv = mirror.venv("keyring-venv")
    plan = ok(mirror.lab.run("plan", "--json", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "tqdm",
                             env=env))
    assert plan.json()["torch"]["version"] == "2.5.1+cu124" and plan.json()["offers_source"] == "index"
    # pip asks the same keyring itself: the user name reaches it in PIP_INDEX_URL, not in argv.
    res = ok(mirror.lab.run("install", "--python", py(venv), "--backend", "cu124", "torch==2.5.1", "tqdm", env=env))
    versions = mirror.lab.versions(venv)
    assert versions["torch"] == "2.5.1+cu124" and "tqdm" in versions
    asked = keyring_log.read_text().splitlines()
    assert asked and all(line.startswith("keyring get http") and line.endswith(f" {USER}") for line in asked)
    no_secret_anywhere(env, detect, plan, res, roots=[venv], texts={"keyring argv": "\n".join(asked)})

