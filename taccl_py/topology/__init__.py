"""Topologies: the cluster model, YAML loading/validation, and the built-in library."""

from .model import Connection, Link, Nic, Switch, Topology

__all__ = ["Connection", "Link", "Nic", "Switch", "Topology"]
