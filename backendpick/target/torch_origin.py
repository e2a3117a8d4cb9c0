"""Where the installed torch came from (issue 18): a build of a backend index, which backendpick
may replace, or a torch no index serves, which it keeps whenever it satisfies the request.

GPU work mostly runs where torch was there before backendpick: NVIDIA's NGC images, AMD's and
Jetson images, a source build, a conda environment, a venv made with ``--system-site-packages``
over an image's torch. Nothing can install such a torch again, so it is never replaced unless
the request cannot be met with it (a pin it does not satisfy, an explicit backend that
differs). The signs are data (facts.toml ``[torch.foreign]``); this module only reads them.

``of`` looks at the inspected target (no import of torch: its ``torch/version.py`` gives the
CUDA or HIP version); the C++ ABI comes from torch itself where a build or verify imports it
(``installed_torch.torch_info``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from typing import Mapping

from packaging.version import InvalidVersion, Version

from backendpick.knowledge.facts import Facts
from backendpick.model.backend import Backend, local_tag_backend

INDEX = "index build"


@dataclass(frozen=True)
class TorchOrigin:
    """The installed torch, what it was built for, and why no index serves it (``signs``:
    empty for a backend index's or PyPI's build in this environment)."""

    version: str
    backend: Backend  # what it is built for: cu125 for NVIDIA's CUDA 12.5 build, even with no such index
    cuda: str | None = None
    hip: str | None = None
    label: str = INDEX  # "NVIDIA build", "source build", "conda package torch", ...
    note: str = ""  # where it comes from, when the environment says: "NGC 24.06"
    signs: tuple[str, ...] = ()  # each sign in words: "its version's local part f70bd71a48.nv24.6 ..."
    managed_by: str | None = None  # "conda": pip removes it only when the user says so
    outside: str | None = None  # the base environment's site-packages it is seen through (not a sign)
    cxx11abi: bool | None = None  # torch._C._GLIBCXX_USE_CXX11_ABI, once torch was imported

    @property
    def foreign(self) -> bool:
        """Whether no index can install this very torch again."""
        return bool(self.signs)

    @property
    def notable(self) -> bool:
        """Whether output names it: no index serves it, or it lives in a base environment."""
        return self.foreign or self.outside is not None

    def gpu_words(self) -> str:
        text = f"CUDA {self.cuda}" if self.cuda else f"HIP {self.hip}" if self.hip else "CPU"
        if self.cxx11abi is not None:
            text += f", C++11 ABI {'on' if self.cxx11abi else 'off'}"
        return text

    def tail(self) -> str:
        """What sets it apart, in a few words."""
        parts = []
        if self.foreign:
            parts.append(f"{self.managed_by} manages it" if self.managed_by else "no index serves it")
        if self.outside:
            parts.append(f"seen through the base environment's {self.outside}, where pip cannot remove it")
        return "; ".join(parts)

    def describe(self) -> str:
        """``NVIDIA build 2.4.0a0+f70bd71a48.nv24.6 (NGC 24.06), CUDA 12.5; no index serves it``."""
        note = f" ({self.note})" if self.note else ""
        head = f"{self.label} {self.version}{note}" if self.foreign else f"torch {self.version}"
        tail = self.tail()
        return f"{head}, {self.gpu_words()}" + (f"; {tail}" if tail else "")

    def with_abi(self, cxx11abi: bool | None) -> TorchOrigin:
        return replace(self, cxx11abi=cxx11abi)

    def to_json(self) -> dict:
        return {"version": self.version, "backend": self.backend.name, "cuda": self.cuda, "hip": self.hip,
                "cxx11abi": self.cxx11abi, "label": self.label, "note": self.note, "foreign": self.foreign,
                "signs": list(self.signs),
                "managed_by": self.managed_by, "outside": self.outside, "text": self.describe()}


def version_signs(version: str, facts: Facts,
                  env: Mapping[str, str] | None = None) -> tuple[str | None, str, list[str]]:
    """(label, note, signs) of a torch version no index publishes: a local part that is not a
    backend tag (``+f70bd71a48.nv24.6``, ``+git1a2b3c4``) or an alpha pre-release (``2.4.0a0``:
    PyTorch publishes release candidates, never alphas). (None, "", []) for a backend index's
    or PyPI's. ``note``: the image the environment names (``NGC 24.06``)."""
    env = os.environ if env is None else env
    public, _, local = version.partition("+")
    label, note, signs = None, "", []
    if local and local_tag_backend(version) is None:
        for row in facts.foreign_builds:
            if re.search(row.local, local):
                label = row.label
                if row.env and env.get(row.env):
                    note = f"{row.env_label or row.env} {env[row.env]}"
                break
        signs.append(f"its version's local part {local} is not a backend tag")
    try:
        pre = Version(public).pre
    except InvalidVersion:
        pre = None
    if pre is not None and pre[0] == "a":
        signs.append(f"{public} is an alpha version, which no index publishes")
        label = label or "pre-release build"
    return (label or ("local build" if signs else None)), note, signs


def _editable(direct_url: str | None) -> str | None:
    """The folder of an editable (``pip install -e``) install, from its direct_url.json."""
    if not direct_url:
        return None
    try:
        data = json.loads(direct_url)
    except ValueError:
        return None
    if isinstance(data, dict) and (data.get("dir_info") or {}).get("editable"):
        return str(data.get("url", "")).removeprefix("file://") or "a local folder"
    return None


def _inside(path: str, prefix: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(prefix)]) == os.path.realpath(prefix)
    except ValueError:  # another drive (Windows)
        return False


def location(dist) -> str:
    """The sys.path entry an installed distribution was found in: its metadata folder's parent."""
    return os.path.dirname(os.path.normpath(dist.dist_info)) if dist.dist_info else ""


def outside_environment(dist, target) -> bool:
    """Whether pip of ``target`` (a venv) sees ``dist`` from a base environment's site-packages
    (``--system-site-packages``): pip neither removes nor replaces it there."""
    where = location(dist)
    return bool(target.is_venv and where and where in target.site_dirs and not _inside(where, str(target.prefix)))


def of(target, facts: Facts, env: Mapping[str, str] | None = None, build=None) -> TorchOrigin | None:
    """The origin of ``target``'s torch; None when torch is not installed. ``build``: its
    ``installed_torch.TorchBuild``, where the caller read it already."""
    from backendpick.target.installed_torch import torch_build

    dist = target.get("torch")
    tb = build if build is not None else torch_build(target, facts)
    if dist is None or tb is None:
        return None
    label, note, signs = version_signs(dist.version, facts, env)
    managed = None
    installer = dist.installer.strip().lower()
    editable = _editable(dist.direct_url)
    if editable:
        signs.append(f"it is an editable install of {editable}")
        label = label or "editable install"
    elif location(dist) and target.site_dirs and location(dist) not in target.site_dirs:
        # Found on a folder of its own (setup.py develop): a checkout, not a site-packages.
        signs.append(f"it is found in {location(dist)}, outside the site-packages (setup.py develop)")
        label = label or "develop install"
    if installer in facts.managed_installers:
        managed = installer
        signs.append(f"{installer} installed it (INSTALLER)")
        label = label or f"{installer} package torch"
    elif installer not in facts.index_installers:
        signs.append(f"{installer} installed it (INSTALLER)" if installer else "nothing recorded who installed it "
                                                                                "(no INSTALLER)")
        label = label or (f"torch installed by {installer}" if installer else "torch installed without pip")
    # Seen from a base environment (--system-site-packages): pip can neither remove nor replace
    # it there, so it is never removed; an index build there still counts as one.
    outside = location(dist) if outside_environment(dist, target) else None
    return TorchOrigin(tb.version, tb.backend, tb.cuda, tb.hip, label if signs else INDEX, note, tuple(signs), managed,
                       outside)


__all__ = ["TorchOrigin", "of", "outside_environment", "version_signs"]
