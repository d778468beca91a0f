"""The synthesis methods by name: each maps (topology, collective, options) -> Algorithm."""

from __future__ import annotations

from ..collectives import Collective
from ..errors import TacclError
from ..topology import Topology
from .direct import direct_algorithm
from .ir import Algorithm
from .ring import ring_algorithm

METHODS = ("ring", "direct")


def synthesize(topology: Topology, collective: Collective, method: str = "ring", *,
               order: list[int] | None = None) -> Algorithm:
    """Make an algorithm for ``collective`` on ``topology`` with the named method."""
    if collective.num_ranks != topology.num_ranks:
        raise TacclError(f"collective has {collective.num_ranks} ranks but topology "
                         f"{topology.label} has {topology.num_ranks}")
    if order is not None and method != "ring":
        raise TacclError("a rank order (--order) only applies to --method ring")
    if method == "ring":
        return ring_algorithm(topology, collective, order=order)
    if method == "direct":
        return direct_algorithm(topology, collective)
    raise TacclError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
