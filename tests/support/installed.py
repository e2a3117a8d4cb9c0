"""A distribution laid out as pip leaves it installed (files, then INSTALLER, REQUESTED,
direct_url.json, then RECORD with the installer's rows), for unit tests of what reads installed
distributions (distfiles, repack, keep, restore planning) without running pip."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from backendpick.model import environment as model_env
from backendpick.state import repack

TAG = "cp311-cp311-linux_x86_64"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class Installed:
    """A distribution installed into ``prefix`` as pip would leave it."""

    def __init__(self, prefix: Path, name: str = "demo", version: str = "1.0+local.7", *,
                 files: dict[str, bytes] | None = None, scripts: dict[str, bytes] | None = None,
                 data: dict[str, bytes] | None = None, entry_points: str = "", wheel: bool = True,
                 installer: str = "pip", direct_url: str | None = '{"url": "file:///w/demo.whl", "archive_info": {}}'):
        self.prefix = prefix
        self.name, self.version, self.installer, self.direct_url = name, version, installer, direct_url
        self.lib = prefix / "lib" / "python3.11" / "site-packages"
        self.dist_info = self.lib / f"{name}-{version}.dist-info"
        self.rows: list[str] = []
        files = dict(files if files is not None else {
            "demo/__init__.py": b"VALUE = 1\n", "demo/_ext.so": bytes(range(256)) * 40, "demo_top.py": b"x = 2\n"})
        files.setdefault(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode())
        if wheel:
            files[f"{name}-{version}.dist-info/WHEEL"] = f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {TAG}\n".encode()
        if entry_points:
            files[f"{name}-{version}.dist-info/entry_points.txt"] = entry_points.encode()
        for rel, body in files.items():
            self.put(rel, body)
        for rel, body in (scripts or {}).items():
            self.put(f"../../../bin/{rel}", body)
        for rel, body in (data or {}).items():
            self.put(f"../../../{rel}", body)
        # What pip adds: bytecode of the sources, its markers, RECORD listing itself unhashed.
        if "demo/__init__.py" in files:
            self.put("demo/__pycache__/__init__.cpython-311.pyc", b"\x00compiled")
        markers = {"INSTALLER": f"{installer}\n".encode(), "REQUESTED": b""}
        if direct_url is not None:
            markers["direct_url.json"] = direct_url.encode()
        for marker, body in markers.items():
            self.put(f"{name}-{version}.dist-info/{marker}", body)
        self.rows.append(f"{name}-{version}.dist-info/RECORD,,")
        (self.dist_info / "RECORD").write_text("\n".join(self.rows) + "\n", encoding="utf-8")

    def put(self, rel: str, body: bytes) -> None:
        path = (self.lib / rel).resolve() if rel.startswith("..") else self.lib / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        self.rows.append(f"{rel},{record_hash(body)},{len(body)}")

    def layout(self) -> repack.Layout:
        return repack.Layout(self.prefix, self.prefix / "bin", TAG)

    def entry(self, *requires: str) -> model_env.Installed:
        """The distribution as a target inspection reports it."""
        return model_env.Installed(self.name, self.version, tuple(requires), self.installer, self.direct_url,
                                   str(self.dist_info))


def environment(prefix: Path, *dists: model_env.Installed) -> model_env.Target:
    """A target (a venv at ``prefix``) holding ``dists``."""
    from backendpick.model.names import normalize

    lib = prefix / "lib" / "python3.11" / "site-packages"
    return model_env.Target(python=prefix / "bin" / "python", prefix=prefix, version=(3, 11, 7),
                            markers={"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"},
                            tags=(TAG, "py3-none-any"), pip_version="24.0", purelib=lib,
                            installed={normalize(d.name): d for d in dists}, is_venv=True, site_dirs=(str(lib),))
