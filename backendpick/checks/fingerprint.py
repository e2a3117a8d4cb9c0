"""What an installed recipe package was built for, compared with torch (``verify``).

Each recipe leaves a fingerprint (backend-facts.md section 7): the distribution name
(``cupy-cuda11x``, ``jax-cuda12-plugin``, ``pytorch-triton-rocm``), a local version tag
(PyG ``2.1.2+pt25cu124``, DGL/torchao ``+cu124``), or a file
(``onnxruntime/capi/build_and_package_info.py``: ``cuda_version``). Pure: installed metadata in,
problems out. Packages without a fingerprint (llama-cpp-python, bitsandbytes) are not judged.
"""

from __future__ import annotations

import re
import shlex
from typing import Mapping

from backendpick.errors import ConfigError
from backendpick.knowledge import recipes as rc
from backendpick.model.backend import CPU, CUDA, ROCM, Backend
from backendpick.model.environment import Target

ONNXRUNTIME_INFO = "onnxruntime/capi/build_and_package_info.py"


def _major_of(groups: Mapping[str, str], kind: str) -> int | None:
    """The CUDA major a variant's name says (cuda_major, cuda_nodot or backend placeholder)."""
    if kind != CUDA:
        return None
    if groups.get("cuda_major", "").isdigit():
        return int(groups["cuda_major"])
    if groups.get("cuda_nodot", "").isdigit() and len(groups["cuda_nodot"]) >= 2:
        return int(groups["cuda_nodot"][:-1])
    if groups.get("backend"):
        try:
            b = Backend.parse(groups["backend"])
        except ConfigError:
            return None
        return b.version[0] if b.kind == CUDA else None
    return None


def _kind_of(groups: Mapping[str, str]) -> str | None:
    """The kind a one-template name says (spconv-{backend}, nvidia-dali-cuda{cuda_major}0)."""
    if groups.get("backend"):
        try:
            return Backend.parse(groups["backend"]).kind
        except ConfigError:
            return None
    if any(k.startswith("cuda") for k in groups):
        return CUDA
    if any(k.startswith("rocm") for k in groups):
        return ROCM
    return None


def _tag_backend(version: str, style: str) -> tuple[str | None, Backend | None]:
    """(torch minor, backend) from ``+pt25cu124`` (style "pt") or ``+cu124`` (style "cu")."""
    if "+" not in version:
        return None, None
    local = version.split("+", 1)[1].lower()
    torch_minor = None
    if style == "pt":
        m = re.match(r"^pt(\d)(\d+)(.*)$", local)
        if not m:
            return None, None
        torch_minor, local = f"{m.group(1)}.{m.group(2)}", m.group(3)
    m = re.match(r"^(cpu|cu\d{2,3}|rocm\d+(?:\.\d+)+)", local)
    if not m:
        return torch_minor, None
    try:
        return torch_minor, Backend.parse(m.group(1))
    except ConfigError:
        return torch_minor, None


def _differs(built: Backend, torch: Backend) -> bool:
    if built.kind != torch.kind:
        return True
    return built.kind in (CUDA, ROCM) and built.version[0] != torch.version[0]


def _cuda_major_text(torch: Backend) -> str:
    if torch.kind == CUDA:
        return f"{torch} (CUDA {torch.version[0]})"
    return str(torch)


def problems(target: Target, torch_backend: Backend | None, torch_version: str | None,
             recipes: Mapping[str, tuple], python_flag: str = "", env: Mapping[str, str] | None = None):
    """Problems of installed recipe packages built for another backend or torch than torch's.

    ``env``: the environment the packages run in (bitsandbytes reads BNB_CUDA_VERSION)."""
    from backendpick.checks.stack import Problem
    from backendpick.planning.routing import variant_pattern, variants

    if torch_backend is None or torch_version is None:
        return []
    py = shlex.quote(str(target.python))
    installed = target.installed
    out = []
    torch_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    for name, rows in sorted(recipes.items()):
        found: dict[str, str] = {}
        for recipe in rows:
            found.update(variants(recipe, installed))
        # Two builds of one package at once: they overwrite each other's files.
        if len(found) > 1:
            names = sorted(installed[n].name for n in found)
            out.append(Problem(name, f"{len(names)} builds installed at once: {', '.join(names)}",
                               f"{py} -m pip uninstall -y {' '.join(names)} && backendpick install{python_flag} {name}"))
            continue
        for dist_name, kind in found.items():
            if not torch_backend.is_gpu:
                continue
            recipe = rows[-1]
            template = (recipe.fingerprint or recipe.name).get(kind, "")
            m = variant_pattern(template).match(dist_name)
            groups = m.groupdict() if m else {}
            if kind == rc.ANY:
                kind = _kind_of(groups)
                if kind is None:
                    continue
            major = _major_of(groups, kind)
            wrong_kind = kind != torch_backend.kind
            wrong_major = not wrong_kind and major is not None and torch_backend.kind == CUDA and major != torch_backend.version[0]
            if wrong_kind or wrong_major:
                built = f"CUDA {major}" if major is not None else kind
                out.append(Problem(installed[dist_name].name,
                                   f"built for {built}, but torch is {_cuda_major_text(torch_backend)}",
                                   f"{py} -m pip uninstall -y {installed[dist_name].name} && "
                                   f"backendpick install{python_flag} {name}"))
        # A local version tag naming the torch and backend it was built for.
        dist = installed.get(name)
        style = rows[-1].fingerprint_tag
        if dist is not None and style:
            minor, built = _tag_backend(dist.version, style)
            reasons = []
            if minor is not None and minor != torch_minor:
                reasons.append(f"torch {minor}")
            if built is not None and _differs(built, torch_backend):
                reasons.append(str(built))
            if reasons:
                out.append(Problem(dist.name, f"{dist.version} is built for {' and '.join(reasons)}, but torch is "
                                              f"{torch_version}",
                                   f"backendpick install{python_flag} --reinstall {dist.name} {dist.name}"))
    # bitsandbytes ships one library per CUDA version and loads the one torch.version.cuda names,
    # unless BNB_CUDA_VERSION overrides it: another major's library next to this torch.
    bnb = (env or {}).get("BNB_CUDA_VERSION", "")
    if installed.get("bitsandbytes") is not None and bnb.isdigit() and len(bnb) >= 2 and torch_backend.kind == CUDA \
            and int(bnb[:-1]) != torch_backend.version[0]:
        out.append(Problem("bitsandbytes", f"BNB_CUDA_VERSION={bnb} makes it load its CUDA {bnb[:-1]}.{bnb[-1]} library, "
                                           f"but torch is {_cuda_major_text(torch_backend)}",
                           "unset BNB_CUDA_VERSION (bitsandbytes then follows torch.version.cuda)"))
    ort = target.files.get(ONNXRUNTIME_INFO)
    if ort and torch_backend.kind in (CUDA, CPU):
        m = re.search(r"^cuda_version\s*=\s*['\"]([0-9.]+)['\"]", ort, flags=re.M)
        dist = installed.get("onnxruntime-gpu") or installed.get("onnxruntime")
        if m and dist is not None and torch_backend.kind == CUDA and int(m.group(1).split(".")[0]) != torch_backend.version[0]:
            out.append(Problem(dist.name, f"{dist.version} is built for CUDA {m.group(1)}, but torch is "
                                          f"{_cuda_major_text(torch_backend)}",
                               f"backendpick install{python_flag} --reinstall {dist.name} {dist.name}"
                               + (" (CUDA 12: pin onnxruntime-gpu<1.27)" if torch_backend.version[0] == 12 else "")))
    return out
