"""Runs inside the target interpreter: imports torch and prints, as the last stdout line (torch
may print warnings first), the build an extension compiles against."""

from __future__ import annotations

import json
import sys


def describe(torch) -> dict:
    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "cxx11abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))}


if __name__ == "__main__":
    import torch

    sys.stdout.write(json.dumps(describe(torch)) + "\n")
