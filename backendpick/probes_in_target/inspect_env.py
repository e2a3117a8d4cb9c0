"""Runs inside the target interpreter: which Python, which tags, what is installed, as JSON.

No imports of installed packages (importing torch takes seconds): a few package files are read
instead. Only the standard library, plus pip's vendored packaging for the wheel tags when pip
is there. ``--no-tags`` skips the tags (only index queries need them).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
import sysconfig
from importlib import metadata


def distributions() -> dict:
    """Normalized-lower name -> what backendpick needs of each installed distribution."""
    dists = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if not name or name.lower() in dists:
            continue
        try:
            direct = d.read_text("direct_url.json")
        except Exception:
            direct = None
        dists[name.lower()] = {"name": name, "version": d.version, "requires": d.requires or [],
                               "installer": (d.read_text("INSTALLER") or "").strip(), "direct_url": direct}
    return dists


def pip_version():
    try:
        import pip
    except Exception:
        return None
    return pip.__version__


def wheel_tags() -> list:
    for mod in ("pip._vendor.packaging.tags", "packaging.tags"):
        try:
            return [str(x) for x in importlib.import_module(mod).sys_tags()]
        except Exception:
            continue
    return []


def package_file(pkg: str, name: str):
    """The text of ``name`` inside package ``pkg``, or None; find_spec locates a package
    without importing it (importing torch takes seconds)."""
    try:
        spec = importlib.util.find_spec(pkg)
    except Exception:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = os.path.join(loc, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    return f.read(200000)
            except OSError:
                return None
    return None


def package_files(dists: dict) -> dict:
    files = {}
    if "torch" in dists:
        files["torch/version.py"] = package_file("torch", "version.py")
    if "xformers" in dists:
        files["xformers/cpp_lib.json"] = package_file("xformers", "cpp_lib.json")
    if "onnxruntime-gpu" in dists or "onnxruntime" in dists:
        # The CUDA the build was made with (read, not imported: importing loads CUDA libraries).
        files["onnxruntime/capi/build_and_package_info.py"] = package_file(
            "onnxruntime", os.path.join("capi", "build_and_package_info.py"))
    return files


def markers() -> dict:
    """The PEP 508 environment markers of this interpreter."""
    iver = sys.implementation.version
    return {
        "implementation_name": sys.implementation.name,
        "implementation_version": "%d.%d.%d" % (iver.major, iver.minor, iver.micro),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def collect(argv: list) -> dict:
    """Everything backendpick asks of the target, from this process's own ``sys``."""
    dists = distributions()
    return {"executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
            "version": list(sys.version_info[:3]), "markers": markers(),
            "tags": [] if "--no-tags" in argv else wheel_tags(),
            "pip": pip_version(), "purelib": sysconfig.get_paths()["purelib"], "dists": dists,
            "files": package_files(dists)}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(collect(sys.argv[1:])) + "\n")
