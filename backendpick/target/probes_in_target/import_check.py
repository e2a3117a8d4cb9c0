"""Runs inside the target interpreter: imports torch, then each module named on the command
line, and prints one JSON line: module -> None or the error (``{"torch": error}`` alone when
torch itself does not import)."""

from __future__ import annotations

import json
import sys


def check(modules: list, load=__import__) -> dict:
    try:
        load("torch")  # extensions need torch's libraries loaded first
    except Exception as e:
        return {"torch": "%s: %s" % (type(e).__name__, e)}
    out = {}
    for mod in modules:
        try:
            load(mod)
            out[mod] = None
        except Exception as e:
            out[mod] = "%s: %s" % (type(e).__name__, e)
    return out


if __name__ == "__main__":
    sys.stdout.write(json.dumps(check(sys.argv[1:])) + "\n")
