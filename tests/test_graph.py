"""taccl_py.topology.graph: breadth-first search, hop counts and routes against networkx."""

from __future__ import annotations

import doctest
import math
from collections import deque

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.topology import graph as graph_module
from taccl_py.topology.graph import (
    adjacency,
    bfs_order,
    bfs_parents,
    distances,
    distances_from,
    hop_matrix,
    route_tree,
    shortest_path,
)

from .strategies import topologies

edge_lists = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=24)


def test_doctests():
    assert doctest.testmod(graph_module).failed == 0


def _digraph(edges, root, reverse=False):
    g = nx.DiGraph()
    g.add_node(root)
    g.add_edges_from((v, u) if reverse else (u, v) for u, v in edges)
    return g


@settings(max_examples=200)
@given(edge_lists, st.integers(0, 7), st.booleans())
def test_bfs_matches_networkx(edges, root, reverse):
    g = _digraph(edges, root, reverse)
    parents = bfs_parents(edges, root, reverse=reverse)
    # same visiting order and the same (first-found) parents as networkx's BFS
    assert list(parents.items())[1:] == list(nx.bfs_predecessors(g, root))
    assert bfs_order(edges, root, reverse=reverse) == list(parents)
    assert distances(edges, root, reverse=reverse) == dict(
        nx.single_source_shortest_path_length(g, root)
    )
    # an adjacency built once answers the same
    succ = adjacency(edges, reverse=reverse)
    assert bfs_parents(succ, root) == parents
    assert distances_from(succ, [root, 0])[root] == distances(edges, root, reverse=reverse)


def test_adjacency_has_its_direction():
    with pytest.raises(ValueError, match="reverse"):
        distances(adjacency([(0, 1)]), 0, reverse=True)


@settings(max_examples=200)
@given(edge_lists, st.integers(0, 7), st.integers(0, 7))
def test_shortest_path(edges, src, dst):
    g = _digraph(edges, src)
    path = shortest_path(edges, src, dst)
    if dst not in g or not nx.has_path(g, src, dst):
        assert path is None
        return
    assert path is not None
    assert path[0] == src and path[-1] == dst
    assert len(path) - 1 == nx.shortest_path_length(g, src, dst)
    assert all(e in set(edges) for e in zip(path, path[1:]))


@settings(max_examples=30)
@given(topologies())
def test_hop_matrix_and_route_tree(topo):
    g = topo.graph()
    lengths = dict(nx.all_pairs_shortest_path_length(g))
    hops = hop_matrix(topo)
    n = topo.num_ranks
    for s in range(n):
        assert hops[s] == [lengths[s].get(d, math.inf) for d in range(n)]
        for d, route in route_tree(topo, s).items():
            assert len(route) - 1 == hops[s][d]
            assert (route[0], route[-1]) == (s, d)


def _old_shortest(topology, src, dst, allowed):
    """The hand-written search that the tree baseline used (kept to pin its tie-breaks)."""
    prev = {src: src}
    todo = deque([src])
    while todo:
        u = todo.popleft()
        if u == dst:
            route = [dst]
            while route[-1] != src:
                route.append(prev[route[-1]])
            return tuple(reversed(route))
        for v in range(topology.num_ranks):
            if v not in prev and (u, v) in topology.connections and (v == dst or allowed(v)):
                prev[v] = u
                todo.append(v)
    return None


@settings(max_examples=50)
@given(topologies(), st.data())
def test_tree_relay_routes_unchanged(topo, data):
    n = topo.num_ranks
    src = data.draw(st.integers(0, n - 1))
    dst = data.draw(st.integers(0, n - 1))
    banned = data.draw(st.sets(st.integers(0, n - 1)))
    succ = adjacency(topo.connections)
    assert shortest_path(succ, src, dst, through=lambda x: x not in banned) == _old_shortest(
        topo, src, dst, lambda x: x not in banned
    )
    assert shortest_path(topo.connections, src, dst) == _old_shortest(
        topo, src, dst, lambda x: True
    )
