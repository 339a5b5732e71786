"""The client's version: the one in clients/python/pyproject.toml (a test keeps them equal)."""

__version__ = "0.1.0"
