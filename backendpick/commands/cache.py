"""``backendpick cache list|clear``: the wheels backendpick built from source and keeps for reuse."""

from __future__ import annotations

from typing import Mapping, Sequence

from backendpick.edges import paths
from backendpick.errors import EXIT_OK
from backendpick.output import Output, size_text
from backendpick.state import wheel_cache


def list_entries(out: Output, names: Sequence[str] = (), env: Mapping[str, str] | None = None) -> int:
    root = paths.wheel_cache(env)
    entries = wheel_cache.entries(root, names)
    if out.json_mode:
        out.emit_json({"cache_dir": str(root), "entries": [e.to_json() for e in entries],
                       "size": sum(e.size for e in entries)})
        return EXIT_OK
    out.line(f"cache-dir: {root}")
    if not entries:
        out.line("no cached wheels" + (f" for {', '.join(names)}" if names else ""))
        return EXIT_OK
    rows = [
        (e.key.name, e.key.version, e.key.torch, e.key.backend, e.key.python, e.key.platform,
         e.key.arch, size_text(e.size), e.to_json()["created"], e.wheel.name)
        for e in entries
    ]
    out.table("Cached wheels", ["Package", "Version", "Torch", "Backend", "Python", "Platform", "Arch", "Size",
                                "Built", "Wheel"], rows)
    out.line(f"total: {len(entries)} wheels, {size_text(sum(e.size for e in entries))}")
    return EXIT_OK


def clear(out: Output, names: Sequence[str] = (), env: Mapping[str, str] | None = None) -> int:
    """The named packages' wheels; without names every wheel and the kept index pages too (a
    way to start from nothing, beside --refresh, which asks the indexes again)."""
    from backendpick.indexes.page_cache import PageCache

    root = paths.wheel_cache(env)
    removed = wheel_cache.clear(root, names)
    freed = sum(e.size for e in removed)
    pages_dir = paths.page_cache(env)
    pages = PageCache(pages_dir).clear() if not names else 0
    if out.json_mode:
        out.emit_json({"cache_dir": str(root), "removed": [e.to_json() for e in removed], "freed": freed,
                       "pages_dir": str(pages_dir), "pages_removed": pages})
        return EXIT_OK
    what = f" of {', '.join(names)}" if names else ""
    out.line(f"removed {len(removed)} cached wheels{what} ({size_text(freed)}) from {root}")
    if not names:
        out.line(f"removed {pages} kept index pages from {pages_dir}")
    return EXIT_OK
