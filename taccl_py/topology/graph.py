"""Graph questions on a topology: breadth-first search, hop counts, shortest routes.

A graph is given as directed edges ``(u, v)``, e.g. ``topology.connections`` (its keys)
or a subset of them, or as their :func:`adjacency` (to search one graph many times).
One breadth-first search answers every question; it visits a node's successors in the
order the edges list them and keeps the first parent found, so results (and the plans
built from them) are deterministic.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import TopologyError
from .model import Topology

Edge = tuple[int, int]


@dataclass(frozen=True)
class Adjacency:
    """A graph's successor lists, in the order searches visit them: built once by
    :func:`adjacency` to search one graph many times."""

    succ: dict[int, list[int]]


#: a graph: its edges, or their adjacency
Graph = Iterable[Edge] | Adjacency


def adjacency(edges: Iterable[Edge], *, reverse: bool = False) -> Adjacency:
    """Each node's successors (its predecessors with ``reverse``) in the order of ``edges``.

    >>> adjacency([(0, 2), (0, 1), (1, 2)], reverse=True)
    Adjacency(succ={2: [0, 1], 1: [0]})
    """
    out: dict[int, list[int]] = {}
    for u, v in edges:
        if reverse:
            u, v = v, u
        out.setdefault(u, []).append(v)
    return Adjacency(out)


def _successors(graph: Graph, reverse: bool) -> dict[int, list[int]]:
    if not isinstance(graph, Adjacency):
        return adjacency(graph, reverse=reverse).succ
    if reverse:
        raise ValueError("reverse needs edges, not an adjacency")
    return graph.succ


def _search(
    succ: dict[int, list[int]],
    root: int,
    through: Callable[[int], bool] | None = None,
    until: int | None = None,
) -> dict[int, int | None]:
    """The breadth-first search: first-found parents in visiting order, entering only
    nodes that pass ``through`` (``until`` always), stopping once ``until`` is found."""
    parent: dict[int, int | None] = {root: None}
    todo = deque([root])
    while todo:
        u = todo.popleft()
        for v in succ.get(u, ()):
            if v not in parent and (through is None or v == until or through(v)):
                parent[v] = u
                if v == until:
                    return parent
                todo.append(v)
    return parent


def _hops(parent: dict[int, int | None]) -> dict[int, int]:
    """Depths in a search tree given as parents in visiting order."""
    hops: dict[int, int] = {}
    for v, u in parent.items():
        hops[v] = 0 if u is None else hops[u] + 1
    return hops


def bfs_parents(graph: Graph, root: int, *, reverse: bool = False) -> dict[int, int | None]:
    """The breadth-first search tree from ``root`` over ``graph`` (against its edges with
    ``reverse``): every reached node's parent, ``root``'s None, in visiting order.

    >>> bfs_parents([(2, 1), (1, 0), (2, 0)], 0, reverse=True)
    {0: None, 1: 0, 2: 0}
    """
    return _search(_successors(graph, reverse), root)


def bfs_order(graph: Graph, root: int, *, reverse: bool = False) -> list[int]:
    """The nodes reached from ``root`` in breadth-first order (see :func:`bfs_parents`).

    >>> bfs_order([(0, 2), (0, 1), (1, 3)], 0)
    [0, 2, 1, 3]
    """
    return list(bfs_parents(graph, root, reverse=reverse))


def distances(graph: Graph, root: int, *, reverse: bool = False) -> dict[int, int]:
    """Fewest hops from ``root`` to every node it reaches over ``graph`` (from every node
    that reaches ``root`` with ``reverse``), in breadth-first order; others are absent.

    >>> distances([(0, 1), (1, 2), (3, 0)], 0)
    {0: 0, 1: 1, 2: 2}
    """
    return _hops(bfs_parents(graph, root, reverse=reverse))


def distances_from(
    graph: Graph, roots: Iterable[int], *, reverse: bool = False
) -> dict[int, dict[int, int]]:
    """:func:`distances` from each of ``roots``.

    >>> distances_from([(0, 1), (1, 2)], [0, 2])
    {0: {0: 0, 1: 1, 2: 2}, 2: {2: 0}}
    """
    succ = _successors(graph, reverse)
    return {root: _hops(_search(succ, root)) for root in roots}


def shortest_path(
    graph: Graph, src: int, dst: int, *, through: Callable[[int], bool] | None = None
) -> tuple[int, ...] | None:
    """The fewest-hop path ``src`` -> ``dst`` over ``graph`` that breadth-first search
    finds first, its intermediate nodes all passing ``through`` (None if there is none).

    >>> shortest_path([(0, 1), (1, 2), (0, 3), (3, 2)], 0, 2)
    (0, 1, 2)
    >>> shortest_path([(0, 1), (1, 2), (0, 3), (3, 2)], 0, 2, through=lambda v: v != 1)
    (0, 3, 2)
    >>> shortest_path([(0, 1)], 1, 0) is None
    True
    """
    parent = _search(_successors(graph, False), src, through, dst)
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
    for reached in distances_from(topology.connections, range(n)).values():
        row: list[float] = [math.inf] * n
        for v, hops in reached.items():
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
