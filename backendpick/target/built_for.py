"""What each build package of an environment says it was built for: ``builds.json`` in the
environment's state folder, as install wrote it (``state/build_records.py`` writes it).

A flash-attn wheel works only next to the torch it was compiled against (version, CUDA or ROCm,
C++ ABI), and nothing installed says which one that was: a source build's metadata is plain
``2.7.4``, and the prebuilt wheels' METADATA drops the ``+cu12torch2.5cxx11abiFALSE`` of their
file name. Reading the file is part of a look at the target (``installed_stack.read``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

FORMAT = 1


@dataclass(frozen=True)
class Record:
    name: str  # normalized
    version: str  # as installed
    torch: str  # torch.__version__ it was built or chosen for
    cuda: str | None
    hip: str | None
    cxx11abi: bool
    how: str  # cache, prebuilt, source, as-is, pip
    wheel: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def matches(self, version: str) -> bool:
        """Whether the record is about the installed ``version`` (local tags aside)."""
        return _public(self.version) == _public(version)

    def torch_words(self) -> str:
        gpu = f"CUDA {self.cuda}" if self.cuda else f"HIP {self.hip}" if self.hip else "CPU"
        return f"torch {self.torch} ({gpu}, C++11 ABI {'on' if self.cxx11abi else 'off'})"


def _public(version: str) -> str:
    try:
        return Version(version).public
    except InvalidVersion:
        return version


def path(state: Path) -> Path:
    from backendpick.edges import paths

    return paths.builds_record(state)


def read(state: Path) -> dict[str, Record]:
    """The records by normalized name; empty when there is no readable file."""
    try:
        data = json.loads(path(state).read_text(encoding="utf-8"))
        rows = data["packages"]
        return {name: Record(**{k: row.get(k) for k in Record.__dataclass_fields__}) for name, row in rows.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


__all__ = ["FORMAT", "Record", "path", "read"]
