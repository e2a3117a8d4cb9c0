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


def _headers(path: str) -> dict | None:
    """Name, Version and every Requires-Dist of a METADATA file, read up to its first blank
    line (the description after it can be large). None when unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = []
            for line in f:
                if not line.strip():
                    break
                head.append(line.rstrip("\r\n"))
    except OSError:
        return None
    fields: dict = {}
    last = None
    for line in head:
        if line[:1] in (" ", "\t") and last is not None:
            fields[last][-1] += "\n" + line  # a folded header continues the previous one
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        last = key.strip().lower()
        fields.setdefault(last, []).append(value.strip())
    return fields


def _read(path: str, name: str):
    try:
        with open(os.path.join(path, name), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _record(dist_info: str):
    """What backendpick needs of one ``*.dist-info`` folder, or None when it has no name."""
    fields = _headers(os.path.join(dist_info, "METADATA"))
    if not fields or not fields.get("name") or not fields["name"][0]:
        return None
    name = fields["name"][0]
    return {"name": name, "version": (fields.get("version") or [""])[0], "requires": fields.get("requires-dist", []),
            "installer": (_read(dist_info, "INSTALLER") or "").strip(), "direct_url": _read(dist_info, "direct_url.json"),
            "path": dist_info}


def _from_importlib(entry: str) -> list:
    """Records of the unusual entries (egg-info, eggs, zips) as importlib.metadata reads them."""
    from importlib import metadata

    out = []
    for d in metadata.distributions(path=[entry]):
        name = d.metadata["Name"]
        if not name:
            continue
        try:
            direct = d.read_text("direct_url.json")
        except Exception:
            direct = None
        where = getattr(d, "_path", None)  # the egg-info folder or the egg (PathDistribution)
        if where is not None and os.path.basename(str(where)).startswith("~"):
            continue  # pip's stash of an interrupted uninstall (see scan)
        out.append({"name": name, "version": d.version, "requires": d.requires or [],
                    "installer": (d.read_text("INSTALLER") or "").strip(), "direct_url": direct,
                    "path": str(where) if where is not None else None})
    return out


def scan(paths) -> dict:
    """Normalized-lower name -> record of every distribution importlib.metadata would find on
    ``paths`` (the first of a name wins, as there). Plain ``*.dist-info`` folders, nearly all
    of them, are read directly: importing importlib.metadata and its email parser costs a
    target twice the time of reading them. Used in the target, and by backendpick itself to
    look again at a target it has inspected (``target.rescan``)."""
    dists: dict = {}
    for entry in paths:
        entry = entry or "."
        try:
            names = os.listdir(entry)
        except OSError:
            if os.path.isfile(entry):  # a zip or egg on the path
                for rec in _from_importlib(entry):
                    dists.setdefault(rec["name"].lower(), rec)
            continue
        unusual = False
        for n in names:
            low = n.lower()
            if n.startswith("~"):
                # pip's stash of a distribution it was uninstalling (``~orch-2.5.1.dist-info``),
                # left behind when it was killed: pip ignores it, and so do we.
                continue
            if low.endswith(".dist-info") and os.path.isdir(os.path.join(entry, n)):
                rec = _record(os.path.join(entry, n))
                if rec is not None:
                    dists.setdefault(rec["name"].lower(), rec)
            elif low.endswith((".egg-info", ".egg")):
                unusual = True
        if unusual:
            for rec in _from_importlib(entry):
                dists.setdefault(rec["name"].lower(), rec)
    return dists


def pth_paths(site_dirs) -> list:
    """The folders the ``.pth`` files of ``site_dirs`` put on sys.path, as site.addpackage reads
    them: a line that exists as a folder, relative to its site dir; comments and ``import``
    lines (code, such as an editable install's finder) add none."""
    out = []
    for site_dir in site_dirs:
        try:
            names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth") and not n.startswith("."))
        except OSError:
            continue
        for n in names:
            try:
                with open(os.path.join(site_dir, n), encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines:
                if not line.strip() or line.startswith("#") or line.startswith(("import ", "import\t")):
                    continue
                folder = os.path.normpath(os.path.join(site_dir, line.rstrip()))
                if folder not in out and os.path.isdir(folder):
                    out.append(folder)
    return out


def site_dirs() -> list:
    import site

    try:
        return [d for d in site.getsitepackages() if d in sys.path]
    except AttributeError:  # an old virtualenv's site.py
        return [p for p in sys.path if p.endswith("-packages")]


def distributions() -> dict:
    return scan(sys.path)


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
            return read_file(path)
    return None


def read_file(path: str):
    """The text of a package file (the first 200 kB), or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(200000)
    except OSError:
        return None


def wanted_files(dists: dict) -> dict:
    """"package/file" -> (package, file inside it) of the files backendpick reads for ``dists``."""
    files = {}
    if "torch" in dists:
        files["torch/version.py"] = ("torch", "version.py")
    if "xformers" in dists:
        files["xformers/cpp_lib.json"] = ("xformers", "cpp_lib.json")
    if "onnxruntime-gpu" in dists or "onnxruntime" in dists:
        # The CUDA the build was made with (read, not imported: importing loads CUDA libraries).
        files["onnxruntime/capi/build_and_package_info.py"] = ("onnxruntime", os.path.join("capi", "build_and_package_info.py"))
    return files


def package_files(dists: dict) -> dict:
    return {key: package_file(pkg, name) for key, (pkg, name) in wanted_files(dists).items()}


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
    """Everything backendpick asks of the target, from this process's own ``sys``; ``path``,
    ``site_dirs`` and ``pth_paths`` let backendpick scan the same folders again itself."""
    dists = distributions()
    sites = site_dirs()
    return {"path": list(sys.path), "site_dirs": sites, "pth_paths": pth_paths(sites),"executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
            "version": list(sys.version_info[:3]), "markers": markers(),
            "tags": [] if "--no-tags" in argv else wheel_tags(),
            "pip": pip_version(), "purelib": sysconfig.get_paths()["purelib"], "dists": dists,
            "files": package_files(dists)}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(collect(sys.argv[1:])) + "\n")
