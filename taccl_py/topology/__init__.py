"""Topologies: the cluster model, YAML loading/validation, and the built-in library."""

from .model import Connection, Link, Nic, Switch, Topology

_LOADER_API = ("builtin_names", "describe", "load_topology", "validate_file")

__all__ = ["Connection", "Link", "Nic", "Switch", "Topology", *_LOADER_API]


def __getattr__(name: str):
    """The loader API, imported on first use (it pulls in yaml and jsonschema)."""
    if name in _LOADER_API:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
