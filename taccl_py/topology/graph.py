"""Graph questions on a topology: breadth-first search, hop counts, shortest routes.

Graphs are given as directed edges ``(u, v)``, e.g. ``topology.connections`` (its keys)
or a subset of them. One breadth-first search (:func:`bfs_parents`) answers every
question; it visits a node's successors in the order the edges list them and keeps the
first parent found, so results (and the plans built from them) are deterministic.

>>> edges = [(0, 1), (0, 2), (1, 3), (2, 3)]
>>> bfs_parents(edges, 0)
{0: None, 1: 0, 2: 0, 3: 1}
>>> distances(edges, 3, reverse=True)
{3: 0, 1: 1, 2: 1, 0: 2}
>>> shortest_path(edges, 0, 3)
(0, 1, 3)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from ..errors import TopologyError
from .model import Topology

Edge = tuple[int, int]


def bfs_parents(
    edges: Iterable[Edge], root: int, *, reverse: bool = False
) -> dict[int, int | None]:
    """The breadth-first search tree from ``root`` over ``edges`` (against their direction
    with ``reverse``): every reached node's parent, ``root``'s None, in visiting order.

    >>> bfs_parents([(2, 1), (1, 0), (2, 0)], 0, reverse=True)
    {0: None, 1: 0, 2: 0}
    """
    adjacent: dict[int, list[int]] = {}
    for u, v in edges:
        if reverse:
            u, v = v, u
        adjacent.setdefault(u, []).append(v)
    parent: dict[int, int | None] = {root: None}
    todo = deque([root])
    while todo:
        u = todo.popleft()
        for v in adjacent.get(u, ()):
            if v not in parent:
                parent[v] = u
                todo.append(v)
    return parent


def bfs_order(edges: Iterable[Edge], root: int, *, reverse: bool = False) -> list[int]:
    """The nodes reached from ``root`` in breadth-first order (see :func:`bfs_parents`).

    >>> bfs_order([(0, 2), (0, 1), (1, 3)], 0)
    [0, 2, 1, 3]
    """
    return list(bfs_parents(edges, root, reverse=reverse))


def distances(edges: Iterable[Edge], root: int, *, reverse: bool = False) -> dict[int, int]:
    """Fewest hops from ``root`` to every node it reaches over ``edges`` (from every node
    that reaches ``root`` with ``reverse``), in breadth-first order; others are absent.

    >>> distances([(0, 1), (1, 2), (3, 0)], 0)
    {0: 0, 1: 1, 2: 2}
    """
    hops: dict[int, int] = {}
    for v, u in bfs_parents(edges, root, reverse=reverse).items():
        hops[v] = 0 if u is None else hops[u] + 1
    return hops


def shortest_path(edges: Iterable[Edge], src: int, dst: int) -> tuple[int, ...] | None:
    """The fewest-hop path ``src`` -> ``dst`` over ``edges`` that breadth-first search
    finds first (None if there is none).

    >>> shortest_path([(0, 1), (1, 2), (0, 3), (3, 2)], 0, 2)
    (0, 1, 2)
    >>> shortest_path([(0, 1)], 1, 0) is None
    True
    """
    parent = bfs_parents(edges, src)
    if dst not in parent:
        return None
    path = [dst]
    while (up := parent[path[-1]]) is not None:
        path.append(up)
    return tuple(reversed(path))


def hop_matrix(topology: Topology) -> list[list[float]]:
    """Fewest connections from every rank to every rank of ``topology`` (inf where
    unreachable).

    >>> from taccl_py.topology.model import Link
    >>> t = Topology("line", 3, 1, links=(Link(0, 1, 1e9, 1e-6), Link(1, 2, 1e9, 1e-6)))
    >>> hop_matrix(t)
    [[0, 1, 2], [inf, 0, 1], [inf, inf, 0]]
    """
    n = topology.num_ranks
    out: list[list[float]] = []
    for src in range(n):
        row: list[float] = [math.inf] * n
        for v, hops in distances(topology.connections, src).items():
            row[v] = hops
        out.append(row)
    return out


def route_tree(topology: Topology, root: int, toward: bool = False) -> dict[int, tuple[int, ...]]:
    """The route from ``root`` to every rank (or, with ``toward``, from every rank to ``root``).

    Routes take the fewest hops; among those the highest bottleneck bandwidth, then the
    lowest total α, then the lexicographically smallest rank sequence. Each route extends a
    one-hop-shorter route of the same tree, so the routes form an out-tree (an in-tree with
    ``toward``). Raises TopologyError if some rank cannot be reached.

    >>> from taccl_py.topology.model import Link
    >>> t = Topology("line", 3, 1, links=(Link(0, 1, 1e9, 1e-6), Link(1, 2, 1e9, 1e-6),
    ...     Link(1, 0, 1e9, 1e-6), Link(2, 1, 1e9, 1e-6)))
    >>> route_tree(t, 0)
    {0: (0,), 1: (0, 1), 2: (0, 1, 2)}
    >>> route_tree(t, 0, toward=True)[2]
    (2, 1, 0)
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
