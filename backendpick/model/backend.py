"""The backend value: cpu, cuXY, rocmX.Y[.Z] or xpu, parsed from its index name.

A backend compares only with a backend of the same kind: asking whether cu124 is newer than
rocm6.2 is a bug, so it raises instead of guessing (light-the-torch does the same).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from backendpick.errors import ConfigError

CPU, CUDA, ROCM, XPU = "cpu", "cuda", "rocm", "xpu"

_CUDA_RE = re.compile(r"^cu(\d{2,3})$")
_ROCM_RE = re.compile(r"^rocm(\d+)\.(\d+)(?:\.(\d+))?$")


@total_ordering
@dataclass(frozen=True)
class Backend:
    kind: str
    version: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Backend:
        """Parse an index name such as ``cu124``, ``rocm6.2.4``, ``cpu`` or ``xpu``."""
        name = text.strip().lower()
        if name in (CPU, XPU):
            return cls(name)
        m = _CUDA_RE.match(name)
        if m:
            digits = m.group(1)
            # PyTorch's names put the minor in the last digit: cu118 = 11.8, cu130 = 13.0.
            return cls(CUDA, (int(digits[:-1]), int(digits[-1])))
        m = _ROCM_RE.match(name)
        if m:
            return cls(ROCM, tuple(int(g) for g in m.groups() if g is not None))
        raise ConfigError(
            f"'{text}' is not a backend name",
            hint="use cpu, xpu, cuXY (e.g. cu124) or rocmX.Y (e.g. rocm6.2.4), or auto",
        )

    @classmethod
    def cuda(cls, major: int, minor: int) -> Backend:
        return cls(CUDA, (major, minor))

    @property
    def name(self) -> str:
        if self.kind == CUDA:
            return f"cu{self.version[0]}{self.version[1]}"
        if self.kind == ROCM:
            return "rocm" + ".".join(str(p) for p in self.version)
        return self.kind

    @property
    def is_gpu(self) -> bool:
        return self.kind != CPU

    @property
    def version_text(self) -> str:
        """``12.4`` for cu124, ``6.2.4`` for rocm6.2.4, empty for cpu/xpu."""
        return ".".join(str(p) for p in self.version)

    def __str__(self) -> str:
        return self.name

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Backend):
            return NotImplemented
        if self.kind != other.kind:
            raise TypeError(f"cannot order {self.name} against {other.name}: different vendors")
        return self.version < other.version


def suggest(text: str, known: list[Backend]) -> str | None:
    """``did you mean cu124?`` for ``cu12.4``, ``cuda12.4``, ``AUTO``; for a bare ``cuda`` or
    ``rocm``, the newest known backend of that kind and ``auto``. None: no good guess."""
    raw = text.strip().lower()
    if raw == "auto":
        return "did you mean auto?"
    squeezed = re.sub(r"[\s_-]+", "", raw)
    if squeezed in (CUDA, "cu", ROCM):
        kind = CUDA if squeezed != ROCM else ROCM
        newest = [b for b in known if b.kind == kind]
        if newest:
            form = "cuXY" if kind == CUDA else "rocmX.Y"
            return f"did you mean {max(newest).name} (the newest known {form}) or auto (detect it)?"
        return "name a version, or use auto to detect it"
    m = re.match(r"^(?:cuda|cu)(\d{2})\.?(\d)$", squeezed)
    if m:
        return f"did you mean cu{m.group(1)}{m.group(2)}?"
    m = re.match(r"^(?:cuda|cu)(\d{2})$", squeezed)
    if m:  # a major version only: CUDA 12 -> the newest known cu12X
        same = [b for b in known if b.kind == CUDA and b.version[0] == int(m.group(1))]
        if same:
            return f"did you mean {max(same).name} (the newest known CUDA {m.group(1)}, e.g. cu124 for 12.4)?"
    m = re.match(r"^rocm(\d+(?:\.\d+){1,2})$", squeezed.replace("rocm.", "rocm"))
    if m:
        return f"did you mean rocm{m.group(1)}?"
    names = [b.name for b in known] + ["auto"]
    import difflib

    close = difflib.get_close_matches(squeezed, names, n=1)
    return f"did you mean {close[0]}?" if close else None


def local_tag_backend(version: str) -> Backend | None:
    """The backend named by a version's local tag: ``2.5.1+cu124`` gives cu124, untagged None."""
    if "+" not in version:
        return None
    try:
        return Backend.parse(version.split("+", 1)[1])
    except ConfigError:
        return None


_NIGHTLY = re.compile(r"\.dev(\d{8})")


def nightly_date(version: str) -> str | None:
    """``2.10.0.dev20251120+cu128`` -> ``20251120``: the night a nightly build comes from."""
    m = _NIGHTLY.search(version)
    return m.group(1) if m else None
