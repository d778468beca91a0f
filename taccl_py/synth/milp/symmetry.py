"""Automorphisms of a topology: rank permutations that keep every connection's α and bandwidth.

A permutation is a tuple ``p`` with ``p[rank]`` the image of ``rank``. The synthesizer uses a
few *generators*; :func:`orbit_representatives` splits its items into their orbits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

import networkx as nx
from networkx.algorithms.isomorphism import DiGraphMatcher

from ...topology.model import Topology

Perm = tuple[int, ...]
Item = TypeVar("Item", bound=Hashable)  # what orbit_representatives sorts into orbits

MAX_LOCAL_GENERATORS = 6


def extend(topology: Topology, local: Sequence[int]) -> Perm:
    """A permutation of local GPU ids applied to every node, as a rank permutation."""
    n = topology.gpus_per_node
    return tuple(r - r % n + local[r % n] for r in range(topology.num_ranks))


def node_rotation(topology: Topology) -> Perm:
    """Every rank moved to the same local GPU of the next node (the last to the first)."""
    return tuple(
        (r + topology.gpus_per_node) % topology.num_ranks for r in range(topology.num_ranks)
    )


def automorphism_error(topology: Topology, perm: Perm, senders: int | None = None) -> str | None:
    """Why ``perm`` is not an automorphism of ``topology`` (None if it is), checked on the
    connections from ranks below ``senders`` (default: all)."""
    conns = topology.connections
    for (s, d), c in conns.items():
        if senders is not None and s >= senders:
            break  # (connections are sorted by sender)
        image = conns.get((perm[s], perm[d]))
        where = f"maps connection {s}->{d} to {perm[s]}->{perm[d]}"
        if image is None:
            return f"{where}, which does not exist"
        if topology.bandwidth(image) != topology.bandwidth(c):
            return (
                f"{where}, whose bandwidth differs ({topology.bandwidth(c) / 1e9:g} vs "
                f"{topology.bandwidth(image) / 1e9:g} GB/s)"
            )
        if image.alpha != c.alpha:
            return f"{where}, whose alpha differs ({c.alpha * 1e6:g} vs {image.alpha * 1e6:g} us)"
    return None


def _local_graph(topology: Topology) -> nx.DiGraph:
    """Node 0's GPUs; edges carry the connection's cost and whether both share a NIC."""
    n = topology.gpus_per_node
    g = nx.DiGraph()
    for r in range(n):
        nic = topology.nic_of(r)
        g.add_node(r, label=None if nic is None else (nic.bandwidth, nic.alpha))
    for (s, d), c in topology.connections.items():
        if s < n and d < n:
            g.add_edge(s, d, key=(c.kind, topology.bandwidth(c), c.alpha), nic=False)
    for nic in topology.nics:
        if nic.node == 0:
            for a in nic.ranks:
                for b in nic.ranks:
                    if a != b:
                        g.add_edge(a, b, key=g.edges[a, b]["key"] if g.has_edge(a, b) else None)
                        g.edges[a, b]["nic"] = True
    return g


def _refine(g: nx.DiGraph, fixed: Sequence[int]) -> dict[int, int]:
    """Colour refinement with ``fixed`` individualized: equal colours are necessary for
    two GPUs to share an orbit of the automorphisms fixing ``fixed``."""

    def canon(sig: Mapping[int, object]) -> dict[int, int]:
        ids = {s: i for i, s in enumerate(sorted(set(map(repr, sig.values()))))}
        return {v: ids[repr(s)] for v, s in sig.items()}

    colors = canon({v: (fixed.index(v) if v in fixed else -1, g.nodes[v]["label"]) for v in g})
    while True:
        sig = {
            v: (
                colors[v],
                sorted(
                    repr((e["key"], e["nic"], colors[w])) for _, w, e in g.out_edges(v, data=True)
                ),
                sorted(
                    repr((e["key"], e["nic"], colors[u])) for u, _, e in g.in_edges(v, data=True)
                ),
            )
            for v in g
        }
        new = canon(sig)
        if len(set(new.values())) == len(set(colors.values())):
            return new
        colors = new


def _find(g: nx.DiGraph, fixed: Sequence[int], u: int, t: int) -> Perm | None:
    """An automorphism fixing ``fixed`` and mapping ``u`` to ``t``, or None."""
    c1, c2 = _refine(g, [*fixed, u]), _refine(g, [*fixed, t])
    if Counter(c1.values()) != Counter(c2.values()):
        return None
    g1, g2 = g.copy(), g.copy()
    nx.set_node_attributes(g1, c1, "color")
    nx.set_node_attributes(g2, c2, "color")
    matcher = DiGraphMatcher(
        g1,
        g2,
        node_match=lambda a, b: a["color"] == b["color"],
        edge_match=lambda a, b: (a["key"], a["nic"]) == (b["key"], b["nic"]),
    )
    mapping = next(matcher.isomorphisms_iter(), None)
    return None if mapping is None else tuple(mapping[v] for v in range(len(g)))


def _orbit(gens: Iterable[Perm], point: int) -> set[int]:
    gens = list(gens)
    seen, todo = {point}, [point]
    while todo:
        p = todo.pop()
        for g in gens:
            if g[p] not in seen:
                seen.add(g[p])
                todo.append(g[p])
    return seen


def _local_generators(topology: Topology) -> list[Perm]:
    """Generators of node 0's automorphisms along a base 0, 1, 2, ...: shifts and XOR
    patterns first (cheap, readable), then the matcher completes each basic orbit;
    stops after :data:`MAX_LOCAL_GENERATORS`."""
    n = topology.gpus_per_node
    g = _local_graph(topology)
    edges = {(a, b): (e["key"], e["nic"]) for a, b, e in g.edges(data=True)}
    labels = [g.nodes[v]["label"] for v in range(n)]

    def preserves(p: Perm) -> bool:
        return all(labels[p[v]] == labels[v] for v in range(n)) and all(
            edges.get((p[a], p[b])) == e for (a, b), e in edges.items()
        )

    easy = [tuple((v + s) % n for v in range(n)) for s in range(1, n)]
    if n & (n - 1) == 0:
        easy += [
            tuple(v ^ m for v in range(n)) for m in (1 << k for k in range(n.bit_length() - 1))
        ]
    gens: list[Perm] = []
    for level in range(n):
        fixed = list(range(level))
        colors = _refine(g, fixed)
        cell = {v for v, c in colors.items() if c == colors[level]}
        if len(cell) == 1:
            continue
        stab = [p for p in gens if all(p[b] == b for b in fixed)]
        orbit = _orbit(stab, level)
        for p in easy if level == 0 else ():
            if (
                len(gens) < MAX_LOCAL_GENERATORS
                and not orbit >= cell
                and p[0] not in orbit
                and preserves(p)
            ):
                gens.append(p)
                stab.append(p)
                orbit = _orbit(stab, level)
        rejected: set[int] = set()
        for t in sorted(cell):
            if len(gens) >= MAX_LOCAL_GENERATORS:
                return gens
            if t in orbit or t in rejected:
                continue
            found = _find(g, fixed, level, t)
            if found is None:
                rejected |= _orbit(stab, t)
            else:
                gens.append(found)
                stab.append(found)
                orbit = _orbit(stab, level)
    return gens


def detect_symmetry(topology: Topology) -> list[Perm]:
    """A few generators of the topology's automorphisms, as rank permutations: the node
    rotation (more than one node) and automorphisms of one node applied to every node."""
    out = [node_rotation(topology)] if topology.nodes > 1 else []
    # a local map on every node commutes with the node rotation: where that is an
    # automorphism, node 0's connections decide (every other is a rotation of one)
    senders = topology.gpus_per_node if topology.node_symmetric else None
    for local in _local_generators(topology):
        perm = extend(topology, local)
        if automorphism_error(topology, perm, senders) is None:
            out.append(perm)
    return out


def orbit_representatives(
    perms: Sequence[Perm],
    items: Iterable[Item],
    act: Callable[[Perm, Item], Item] | None = None,
) -> dict[Item, Item]:
    """Each item -> the first item (in the given order) of its orbit under ``perms``.

    ``act(perm, item)`` moves an item; by default an int is a rank and a tuple a tuple of
    ranks. Images that are not among ``items`` are ignored.
    """

    def default(perm: Perm, item):
        return perm[item] if isinstance(item, int) else tuple(perm[x] for x in item)

    act = act or default
    order = list(dict.fromkeys(items))
    known = set(order)
    rep: dict[Item, Item] = {}
    for item in order:
        if item in rep:
            continue
        rep[item] = item
        todo = [item]
        while todo:
            x = todo.pop()
            for p in perms:
                y = act(p, x)
                if y in known and y not in rep:
                    rep[y] = item
                    todo.append(y)
    return rep
