"""backendpick: a pip wrapper that installs PyTorch and its GPU companions on one backend."""

__version__ = "0.1.0"
