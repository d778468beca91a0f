"""Shared helpers of the baselines: rank-count checks and best shortest-hop routes."""

from __future__ import annotations

import math

from ..collectives import Collective
from ..errors import CollectiveError, TopologyError
from ..topology.model import Topology


def require_ranks(topology: Topology, collective: Collective) -> None:
    """Raise CollectiveError unless ``collective`` has one rank per GPU of ``topology``."""
    if collective.num_ranks != topology.num_ranks:
        raise CollectiveError(
            f"{collective.kind} on {collective.num_ranks} ranks does not fit "
            f"{topology.label}, which has {topology.num_ranks} ranks"
        )


def route_tree(topology: Topology, root: int, toward: bool = False) -> dict[int, tuple[int, ...]]:
    """The route from ``root`` to every rank (or, with ``toward``, from every rank to ``root``).

    Routes take the fewest hops; among those the highest bottleneck bandwidth, then the
    lowest total α, then the lexicographically smallest rank sequence. Each route extends a
    one-hop-shorter route of the same tree, so the routes form an out-tree (an in-tree with
    ``toward``). Raises TopologyError if some rank cannot be reached.
    """
    conns = topology.connections
    adjacent: dict[int, list[int]] = {r: [] for r in range(topology.num_ranks)}
    for src, dst in conns:
        if toward:
            adjacent[dst].append(src)
        else:
            adjacent[src].append(dst)
    # key: (-bottleneck bandwidth, total alpha, route)
    best: dict[int, tuple[float, float, tuple[int, ...]]] = {root: (-math.inf, 0.0, (root,))}
    frontier = [root]
    while frontier:
        layer: dict[int, tuple[float, float, tuple[int, ...]]] = {}
        for u in frontier:
            neg_bw, alpha, route = best[u]
            for v in adjacent[u]:
                if v in best:
                    continue
                conn = conns[(v, u)] if toward else conns[(u, v)]
                key = (
                    max(neg_bw, -topology.bandwidth(conn)),
                    alpha + conn.alpha,
                    (v, *route) if toward else (*route, v),
                )
                if v not in layer or key < layer[v]:
                    layer[v] = key
        best.update(layer)
        frontier = sorted(layer)
    for rank in range(topology.num_ranks):
        if rank not in best:
            src, dst = (rank, root) if toward else (root, rank)
            raise TopologyError(f"{topology.label}: rank {src} cannot reach rank {dst}")
    return {rank: key[2] for rank, key in best.items()}
