"""The backend choice as a value: the backend the user named (``Explicit``) and the one chosen,
with who chose it and why (``Decision``). ``selection.backend_choice`` makes them."""

from __future__ import annotations

from dataclasses import dataclass, field

from backendpick.model.backend import Backend


@dataclass(frozen=True)
class Explicit:
    backend: Backend
    source: str  # "--backend", "BACKENDPICK_BACKEND", "pyproject.toml"


@dataclass(frozen=True)
class Decision:
    backend: Backend
    source: str  # who decided: an explicit source, "container" or "detected"
    reason: str
    # torch releases of this backend that serve every GPU; None when all on offer do.
    torch_releases: tuple[tuple, ...] | None = None
    # GPUs that the chosen backend leaves without acceleration, with why better backends lost.
    unserved: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {
            "backend": self.backend.name,
            "source": self.source,
            "reason": self.reason,
            "torch_releases": [".".join(str(p) for p in r) for r in self.torch_releases] if self.torch_releases else None,
            "unserved": list(self.unserved),
            "rejected": list(self.rejected),
        }
