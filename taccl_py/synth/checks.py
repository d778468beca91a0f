"""Checks shared by the synthesizers: does a collective fit a topology."""

from __future__ import annotations

from ..collectives import Collective
from ..errors import CollectiveError
from ..topology.model import Topology


def require_ranks(topology: Topology, collective: Collective) -> None:
    """Raise CollectiveError unless ``collective`` has one rank per GPU of ``topology``."""
    if collective.num_ranks != topology.num_ranks:
        raise CollectiveError(
            f"{collective.kind} on {collective.num_ranks} ranks does not fit "
            f"{topology.label}, which has {topology.num_ranks} ranks"
        )
