"""All-pairs (direct) baseline: every chunk goes straight to where it is needed.

Pairs without a connection are relayed over the best shortest-hop route
(:func:`~taccl_py.topology.graph.route_tree`). Steps follow the hop counts of the routes, so
a relay always forwards at a later step than it received.
"""

from __future__ import annotations

from ...collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    SCATTER,
    Collective,
)
from ...ir.algorithm import Algorithm, Transfer
from ...topology.graph import route_tree
from ...topology.model import Topology
from ..checks import require_ranks


def direct_peers(topology: Topology, rank: int = 0) -> int:
    """The peers ``rank`` sends its own block to in :func:`direct_algorithm` (the first
    hops of its out-tree): a lower bound of a direct plan's peers on its busiest rank,
    known without making its transfers (millions at 1,024 ranks).

    >>> from taccl_py.topology.loader import load_topology
    >>> direct_peers(load_topology("dgx-h100", 2)), direct_peers(load_topology("dgx1"))
    (15, 4)
    """
    return len({route[1] for route in route_tree(topology, rank).values() if len(route) > 1})


def direct_algorithm(topology: Topology, collective: Collective) -> Algorithm:
    """The all-pairs algorithm of ``collective`` on ``topology``.

    * AllGather: each block is broadcast from its owner over a shortest-route out-tree.
    * AllToAll: chunk (s, d) follows the route from s to d.
    * ReduceScatter: each rank's contribution to block b flows up an in-tree to b; a relay
      reduces what it receives into its own contribution and forwards the partial sum once,
      after all its subtree has arrived, so every contribution is counted exactly once.
    * AllReduce: that ReduceScatter, then that AllGather of the reduced blocks.
    * Broadcast / Reduce: every chunk down the root's out-tree / up its in-tree (reducing).
    * Gather / Scatter: each rank's block along its route to / from the root.
    """
    require_ranks(topology, collective)
    n, k, kind = collective.num_ranks, collective.chunkup, collective.kind
    if collective.rooted:
        return Algorithm("direct", collective, _rooted(topology, collective), topology.label)
    transfers: list[Transfer] = []
    offset = 0
    if kind in (REDUCESCATTER, ALLREDUCE):
        trees = {b: route_tree(topology, b, toward=True) for b in range(n)}
        offset = max(len(route) - 1 for tree in trees.values() for route in tree.values())
        for b, tree in trees.items():
            for route in tree.values():
                if len(route) > 1:
                    step = offset - (len(route) - 1)
                    transfers += [
                        Transfer(step, 0.0, route[0], route[1], b * k + j, True) for j in range(k)
                    ]
    if kind in (ALLGATHER, ALLREDUCE):
        for b in range(n):
            for route in route_tree(topology, b).values():
                if len(route) > 1:
                    step = offset + len(route) - 2
                    transfers += [
                        Transfer(step, 0.0, route[-2], route[-1], b * k + j) for j in range(k)
                    ]
    if kind == ALLTOALL:  # in NCCL's point-to-point order: round i, rank s sends to s + i
        for s in range(n):
            for d, route in route_tree(topology, s).items():
                rnd = float((d - s) % n)
                for hop in range(len(route) - 1):
                    transfers += [
                        Transfer(hop, rnd, route[hop], route[hop + 1], (s * n + d) * k + j)
                        for j in range(k)
                    ]
    return Algorithm("direct", collective, transfers, topology.label)


def _rooted(topology: Topology, collective: Collective) -> list[Transfer]:
    """The direct transfers of a rooted collective (see :func:`direct_algorithm`)."""
    kind, root, k, nchunks = (
        collective.kind,
        collective.root,
        collective.chunkup,
        collective.num_chunks,
    )
    transfers: list[Transfer] = []
    if kind in (BROADCAST, SCATTER):
        for d, route in route_tree(topology, root).items():
            chunks = range(nchunks) if kind == BROADCAST else range(d * k, (d + 1) * k)
            hops = [len(route) - 2] if kind == BROADCAST else range(len(route) - 1)
            for hop in hops if len(route) > 1 else ():
                transfers += [Transfer(hop, 0.0, route[hop], route[hop + 1], c) for c in chunks]
    else:
        tree = route_tree(topology, root, toward=True)
        depth = max(len(route) - 1 for route in tree.values())
        for s, route in tree.items():
            if len(route) < 2:
                continue
            if kind == REDUCE:  # once all of s's subtree has reduced into it
                step = depth - (len(route) - 1)
                transfers += [
                    Transfer(step, 0.0, route[0], route[1], c, True) for c in range(nchunks)
                ]
            else:
                assert kind == GATHER
                for hop in range(len(route) - 1):
                    transfers += [
                        Transfer(hop, 0.0, route[hop], route[hop + 1], c)
                        for c in range(s * k, (s + 1) * k)
                    ]
    return transfers
