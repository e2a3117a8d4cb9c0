"""The recipe mechanisms on the test server (issue 12), added next to the session's world.

* ``pyg``: find-links pages ``torch-{X.Y}.0+{backend}.html`` (as data.pyg.org) linking wheels
  tagged ``+pt{XY}{backend}``;
* ``llama-<backend>``: an index per backend (as abetlen.github.io/llama-cpp-python/whl/...);
* ``pypi``: per-CUDA names (cupy-cuda11x, cupy-cuda12x), jax with its ``cuda12`` extra, and trap
  sdists (torch-scatter, cupy, llama-cpp-python) whose setup.py fails loudly: a test that sees
  ``TRAP`` built something backendpick must never build.

Nothing here changes what the other tests see: new index folders, and new names on pypi.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from tests.support.dists import make_sdist, make_wheel
from tests.support.index import IndexServer

PYG = {"torch-scatter": "2.1.2", "torch-sparse": "0.6.18", "pyg-lib": "0.4.0"}
PYG_PAGES = (("2.5", "cu124"), ("2.6", "cu124"), ("2.6", "cu126"), ("2.7", "cu126"), ("2.7", "cu128"),
             ("2.5", "cpu"), ("2.6", "cpu"), ("2.7", "cpu"))
LLAMA_VERSION = "0.3.2"
LLAMA_BACKENDS = ("cpu", "cu122", "cu124", "cu125")
CUPY_VERSION = "13.3.0"
JAX_VERSION = "0.4.35"
# Trap sdists on the default index, newer than any wheel backendpick should choose.
TRAPS = {"torch-scatter": "2.1.3", "cupy": "13.3.0", "llama-cpp-python": "0.3.9"}


def trap_setup_py(name: str, version: str) -> str:
    return f'raise SystemExit("TRAP: pip tried to build {name} {version} from source")\n'


def add_recipe_world(server: IndexServer) -> None:
    """Idempotent: the session's server keeps these for every later test."""
    pyg = server.index_dir("pyg")
    if not (pyg / "torch-2.6.0+cu124.html").exists():
        for minor, backend in PYG_PAGES:
            tag = f"pt{minor.replace('.', '')}{backend}"
            links = []
            for name, version in PYG.items():
                wheel = make_wheel(pyg, name, f"{version}+{tag}", attrs={"__index__": "pyg", "__built_for__": tag})
                links.append(f'<a href="files/{quote(wheel.name)}">{html.escape(wheel.name)}</a><br/>')
            (pyg / f"torch-{minor}.0+{backend}.html").write_text(
                f"<!DOCTYPE html><html><body>\n{chr(10).join(links)}\n</body></html>\n")
    for backend in LLAMA_BACKENDS:
        d = server.index_dir(f"llama-{backend}")
        if not list(d.glob("*.whl")):
            make_wheel(d, "llama-cpp-python", LLAMA_VERSION, requires=["numpy"], attrs={"__index__": f"llama-{backend}"})
    pypi = server.index_dir("pypi")
    if not list(pypi.glob("cupy_cuda12x-*.whl")):
        attrs = {"__index__": "pypi"}
        for name, version in TRAPS.items():
            make_sdist(pypi, name, version, trap_setup_py(name, version))
        make_wheel(pypi, "cupy-cuda12x", CUPY_VERSION, requires=["numpy"], attrs=attrs)
        make_wheel(pypi, "cupy-cuda11x", CUPY_VERSION, requires=["numpy"], attrs=attrs)
        make_wheel(pypi, "jax", JAX_VERSION, attrs=attrs,
                   requires=[f'jax-cuda12-plugin=={JAX_VERSION}; extra == "cuda12"',
                             f'jax-cuda13-plugin=={JAX_VERSION}; extra == "cuda13"'])
        make_wheel(pypi, "jax-cuda12-plugin", JAX_VERSION, attrs=attrs)
        make_wheel(pypi, "jax-cuda13-plugin", JAX_VERSION, attrs=attrs)
        # Ordinary packages that pull a recipe package in.
        make_wheel(pypi, "needs-scatter", "1.0", requires=["torch-scatter"], attrs=attrs)
        make_wheel(pypi, "needs-cupy", "1.0", requires=["cupy"], attrs=attrs)
        make_wheel(pypi, "onnxruntime-gpu", "1.20.0", attrs=attrs, files={
            "onnxruntime/__init__.py": "",
            "onnxruntime/capi/__init__.py": "",
            "onnxruntime/capi/build_and_package_info.py": 'package_name = "onnxruntime-gpu"\ncuda_version = "13.0"\n',
        })


def mirrors_toml(server: IndexServer) -> str:
    """``[tool.backendpick.mirrors]`` pointing every shipped recipe URL at the test server."""
    from backendpick.knowledge import recipes

    base = server.base_url
    lines = ["[tool.backendpick.mirrors]"]
    seen = set()
    for rows in recipes.shipped().values():
        for r in rows:
            for table in (r.index_url, r.find_links):
                for template in table.values():
                    prefix = template.split("{", 1)[0].rsplit("/", 1)[0] + "/"
                    if prefix and prefix not in seen and "://" in prefix:
                        seen.add(prefix)
                        local = f"{base}/pyg/" if "data.pyg.org" in prefix else f"{base}/unmirrored-{len(seen)}/"
                        lines.append(f'"{prefix}" = "{local}"')
    for backend in LLAMA_BACKENDS:
        lines.append(f'"https://abetlen.github.io/llama-cpp-python/whl/{backend}" = "{base}/llama-{backend}/simple"')
    return "\n".join(lines) + "\n"


def project(dir_: Path, server: IndexServer, extra: str = "") -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "pyproject.toml").write_text(mirrors_toml(server) + extra)
    return dir_
