"""Package names as pip compares them (PEP 503)."""

from __future__ import annotations

from packaging.utils import canonicalize_name


def normalize(name: str) -> str:
    """PEP 503 name normalization: ``packaging.utils.canonicalize_name``, under the one short
    name that about 160 call sites (and dict keys across the modules) already use."""
    return canonicalize_name(name)
