"""Lower bounds on the time of a collective on a topology.

Bandwidth terms are fluid (data divisible at will, no α):

* AllGather / ReduceScatter: the exact cut bound (ForestColl), computed with max-flow:
  T ≥ (size/N) · max over vertex sets S leaving a rank outside of |S ∩ ranks| / B_out(S).
* AllReduce (no in-network reduction): twice the AllGather bound.
* AllToAll: the exact fluid optimum, a max-concurrent multicommodity flow LP.
* Broadcast from root r: size / min over ranks v ≠ r of max-flow(r → v) (every byte must
  cross every cut between the root and each rank); Reduce to r: the same on the reversed
  graph (every byte position's partial sum must leave every set of ranks without r).
* Gather to r: the cut bound of AllGather checked at r alone, T ≥ (size/N) · max over
  vertex sets S without r of |S ∩ ranks| / B_out(S) (the root's ingress,
  (N−1)/N · size / B_in(r), and every rank's own egress among them); Scatter: the same on
  the reversed graph.

The latency term is the largest least-α path between two ranks that must exchange data
(for a rooted collective: from or to its root); :func:`lower_bound` takes the larger of
the two.

The size-independent part of every bound is cached per topology object, so bounds for
many sizes cost one solve.
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import networkx as nx
import numpy as np
import pulp
from networkx.algorithms.flow import dinitz

from ..collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    ROOTED_KINDS,
    SCATTER,
    Collective,
    canonical_kind,
)
from ..errors import CollectiveError
from ..topology.model import RAIL_ONLY, Topology

_INF = math.inf
_SOURCE = ("source",)  # the super-source of the max-flow checks; never a graph vertex
_GB = 1e9


@dataclass(frozen=True)
class Bound:
    """A lower bound: ``time`` in seconds, ``algbw = size / time`` in bytes/s."""

    time: float
    algbw: float
    kind: str  # "cut", "flow" or "latency": which term gives the bound
    detail: str


def _bound(time: float, size: float, kind: str, detail: str) -> Bound:
    return Bound(time, size / time if time > 0 else _INF, kind, detail)


# -- the capacity graph -------------------------------------------------------------


def flow_graph(topology: Topology) -> nx.DiGraph:
    """The capacity graph of ``topology``; edges carry ``capacity`` (bytes/s) and ``kind``.

    Vertices: the ranks; ``sw:<name>`` per switch; ``nicout:<nic>`` / ``nicin:<nic>`` per
    NIC; ``netout:<g>`` / ``netin:<g>`` per network group ``g``, which is a node on a
    full-bisection network and ``<node>:<rail>`` on a rail-only one. Edges: each link;
    rank → switch → rank through the rank's out- and in-port; rank → nicout → netout and
    netin → nicin → rank, with the NIC's bandwidth on the network side (PCIe is not a
    bottleneck: infinite); and an infinite netout:g → netin:h for groups of different
    nodes (and the same rail if rail-only). Splitting the network per group keeps it
    from carrying traffic between two GPUs of one node, which no connection does; NICs
    are left out when no other node can be reached.
    """
    g = nx.DiGraph()
    g.add_nodes_from(range(topology.num_ranks))
    bw = topology.resource_bandwidth
    for link in topology.links:
        g.add_edge(link.src, link.dst, capacity=bw[f"link:{link.src}->{link.dst}"], kind="link")
    for sw in topology.switches:
        port = f"sw:{sw.name}"
        for r in sw.ranks:
            g.add_edge(r, port, capacity=bw[f"swout:{r}"], kind="switch")
            g.add_edge(port, r, capacity=bw[f"swin:{r}"], kind="switch")

    rail_only = topology.network == RAIL_ONLY
    users: dict[str, list[int]] = defaultdict(list)
    nics = {}
    for r in range(topology.num_ranks):
        nic = topology.nic_of(r)
        if nic is not None:
            users[nic.name].append(r)
            nics[nic.name] = nic

    def group(nic) -> tuple[int, int | None]:
        return (nic.node, nic.rail if rail_only else None)

    groups = sorted({group(nic) for nic in nics.values()}, key=str)
    reach = {a: [b for b in groups if b[0] != a[0] and b[1] == a[1]] for a in groups}

    def name(a: tuple[int, int | None]) -> str:
        return f"{a[0]}" if a[1] is None else f"{a[0]}:{a[1]}"

    fab = topology.fabric
    if fab is not None:
        _add_fabric(g, topology, users)
        return g
    for nic_name, nic in nics.items():
        a = group(nic)
        if not reach[a]:
            continue
        for r in users[nic_name]:
            g.add_edge(r, f"nicout:{nic_name}", capacity=_INF, kind="pcie")
            g.add_edge(f"nicin:{nic_name}", r, capacity=_INF, kind="pcie")
        g.add_edge(
            f"nicout:{nic_name}", f"netout:{name(a)}", capacity=bw[f"nicout:{nic_name}"], kind="nic"
        )
        g.add_edge(
            f"netin:{name(a)}", f"nicin:{nic_name}", capacity=bw[f"nicin:{nic_name}"], kind="nic"
        )
    for a in groups:
        for b in reach[a]:
            g.add_edge(f"netout:{name(a)}", f"netin:{name(b)}", capacity=_INF, kind="network")
    return g


def _add_fabric(g: nx.DiGraph, topology: Topology, users: dict[str, list[int]]) -> None:
    """The network of a two-tier :class:`~taccl_py.topology.model.Fabric` in ``g``.

    Each NIC's capacity is one edge each way (``nicout:N → tx:N``, ``rx:N → nicin:N``),
    shared by both of its paths: inside its leaf, ``tx:N → netout:<node>:<leaf> →
    netin:<other node>:<leaf> → rx:M``; between leaves, through its uplink share
    ``tx:N → up:N → spineout:<leaf> → spinein:<other leaf> → down:M → rx:M``. Inside a
    leaf traffic never goes up. (On a rail-optimized fabric the spine could carry data
    between two rails of one node, which no connection does; that only weakens a bound.)
    """
    fab = topology.fabric
    assert fab is not None
    bw = topology.resource_bandwidth
    by_name = {nic.name: nic for nic in topology.nics}
    nics = [by_name[n] for n in sorted(users)]
    leaves = sorted({fab.leaf(nic) for nic in nics})
    members: dict[tuple[int, int], list] = defaultdict(list)  # (leaf, node) -> NICs
    for nic in nics:
        members[fab.leaf(nic), nic.node].append(nic)
    for nic in nics:
        n = nic.name
        for r in users[n]:
            g.add_edge(r, f"nicout:{n}", capacity=_INF, kind="pcie")
            g.add_edge(f"nicin:{n}", r, capacity=_INF, kind="pcie")
        g.add_edge(f"nicout:{n}", f"tx:{n}", capacity=bw[f"nicout:{n}"], kind="nic")
        g.add_edge(f"rx:{n}", f"nicin:{n}", capacity=bw[f"nicin:{n}"], kind="nic")
        here = f"{nic.node}:{fab.leaf(nic)}"
        g.add_edge(f"tx:{n}", f"netout:{here}", capacity=_INF, kind="leaf")
        g.add_edge(f"netin:{here}", f"rx:{n}", capacity=_INF, kind="leaf")
        if len(leaves) > 1:
            leaf = fab.leaf(nic)
            g.add_edge(f"tx:{n}", f"up:{n}", capacity=_INF, kind="leaf")
            g.add_edge(f"up:{n}", f"spineout:{leaf}", capacity=bw[f"up:{n}"], kind="uplink")
            g.add_edge(f"spinein:{leaf}", f"down:{n}", capacity=bw[f"down:{n}"], kind="uplink")
            g.add_edge(f"down:{n}", f"rx:{n}", capacity=_INF, kind="leaf")
    for leaf, a in members:
        for leaf_b, b in members:
            if leaf_b == leaf and b != a:
                g.add_edge(f"netout:{a}:{leaf}", f"netin:{b}:{leaf}", capacity=_INF, kind="leaf")
    for leaf in leaves:
        for other in leaves:
            if other != leaf:
                g.add_edge(f"spineout:{leaf}", f"spinein:{other}", capacity=_INF, kind="spine")


# -- AllGather: exact cut bound by max-flow ----------------------------------------


def allgather_rate(
    graph: nx.DiGraph, ranks: Iterable[Hashable], sinks: Iterable[Hashable] | None = None
) -> tuple[float, frozenset]:
    """The largest per-rank AllGather rate x on ``graph``, and the set S that limits it.

    x = min over vertex sets S with a rank inside and a rank outside of
    B_out(S) / |S ∩ ranks|. A rate x is feasible iff, for every rank v, the max-flow
    from a super-source (capacity x to every other rank) to v is x·(|ranks| − 1).
    Newton (Dinkelbach) steps from above every ratio: on a violated check, x becomes
    B_out(S) / |S ∩ ranks| of the most violated cut S, until every check passes; the
    first step lands on the best single-rank ingress bound. Arithmetic is exact:
    capacities are scaled to integers and x = p / q is checked on the graph scaled by q.
    ``sinks`` (default: all ranks) are the v checked; one rank per orbit of the graph's
    symmetries suffices. Returns (inf, ∅) for fewer than two ranks.
    """
    ranks = list(ranks)
    sinks = ranks if sinks is None else list(sinks)
    n = len(ranks)
    if n < 2:
        return _INF, frozenset()
    exact = {
        (u, v): Fraction(c) for u, v, c in graph.edges(data="capacity", default=_INF) if c != _INF
    }
    scale = math.lcm(*(f.denominator for f in exact.values())) if exact else 1
    ints = {e: int(f * scale) for e, f in exact.items()}
    p, q = sum(ints.values()) + 1, 1  # x = p / (q · scale), above every cut ratio
    tight: frozenset = frozenset()
    while True:
        h = nx.DiGraph()
        h.add_nodes_from(graph)
        h.add_edges_from(
            (u, v, {"capacity": ints[(u, v)] * q} if (u, v) in ints else {}) for u, v in graph.edges
        )
        h.add_edges_from((_SOURCE, u, {"capacity": p}) for u in ranks)
        worst, cut = 0, None
        for v in sinks:
            h[_SOURCE][v]["capacity"] = 0
            value, (side, _) = nx.minimum_cut(h, _SOURCE, v, flow_func=dinitz)
            h[_SOURCE][v]["capacity"] = p
            slack = value - p * (n - 1)  # = q·B_out(S) − p·|S ∩ ranks| for the best S
            if slack < worst:
                worst, cut = slack, side - {_SOURCE}
        if cut is None:
            return p / (q * scale), tight
        p = sum(ints[(u, v)] for u in cut for v in graph.successors(u) if v not in cut)
        q = sum(1 for r in ranks if r in cut)
        tight = frozenset(cut)


def node_shift(topology: Topology, graph: nx.DiGraph) -> dict | None:
    """The map moving every vertex of ``graph`` one node up (rank r → r + g mod N), if
    it is an automorphism of the capacity graph; else None.

    A non-rank vertex goes to the vertex of the same prefix ('sw', 'nicout', ...) whose
    nearby ranks (adjacent to it or to a non-rank neighbour) are the shifted ones. When
    it is an automorphism, its powers permute the nodes cyclically, and node 0's ranks
    represent every rank.
    """
    g, n = topology.gpus_per_node, topology.num_ranks
    if topology.nodes < 2:
        return None
    undirected = graph.to_undirected(as_view=True)

    def nearest(w: Hashable) -> set[int]:
        """The ranks fewest hops from ``w`` (through non-rank vertices only)."""
        seen, layer = {w}, [w]
        while layer:
            ranks = {x for y in layer for x in undirected[y] if isinstance(x, int)}
            if ranks:
                return ranks
            layer = [x for y in layer for x in undirected[y] if x not in seen]
            seen.update(layer)
        return set()

    def key(w: Hashable, shift: int) -> tuple:
        near = {x for x in undirected[w] if isinstance(x, int)}
        for y in undirected[w]:
            if not isinstance(y, int):
                near.update(x for x in undirected[y] if isinstance(x, int))
        near = near or nearest(w)  # a fabric's uplinks and spine: further from the ranks
        return str(w).split(":")[0], frozenset((x + shift) % n for x in near)

    others = [w for w in graph if not isinstance(w, int)]
    by_key = {key(w, 0): w for w in others}
    if len(by_key) != len(others):
        return None
    shift = {r: (r + g) % n for r in range(n)}
    for w in others:
        image = by_key.get(key(w, g))
        if image is None:
            return None
        shift[w] = image
    if len(set(shift.values())) != len(shift):
        return None
    for u, v, c in graph.edges(data="capacity", default=_INF):
        if (
            not graph.has_edge(shift[u], shift[v])
            or graph[shift[u]][shift[v]].get("capacity", _INF) != c
        ):
            return None
    return shift


def _who(topology: Topology, ranks: list[int]) -> str:
    """'rank 3', 'node 1', 'nodes 0, 1' or 'ranks 2, 5' for a sorted list of ranks."""
    g = topology.gpus_per_node
    nodes = sorted({topology.node_of(r) for r in ranks})
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if len(ranks) == g * len(nodes):
        return f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {', '.join(map(str, nodes))}"
    return f"ranks {', '.join(map(str, ranks))}"


def _crossing(graph: nx.DiGraph, side: frozenset) -> str:
    """'link 50 GB/s + switch 450 GB/s': the capacity of the edges leaving ``side``, by kind."""
    by_kind: dict[str, float] = defaultdict(float)
    for u in side:
        for v in graph.successors(u):
            if v not in side:
                by_kind[graph[u][v]["kind"]] += graph[u][v]["capacity"]
    return " + ".join(f"{k} {c / _GB:g} GB/s" for k, c in sorted(by_kind.items()))


def _describe_cut(topology: Topology, graph: nx.DiGraph, side: frozenset) -> str:
    """'ingress of node 1: nic 400 GB/s' for the ranks outside ``side``."""
    outside = [r for r in range(topology.num_ranks) if r not in side]
    return f"ingress of {_who(topology, outside)}: {_crossing(graph, side)}"


def _describe_rooted_cut(
    topology: Topology, graph: nx.DiGraph, side: frozenset, reversed_graph: bool
) -> str:
    """The cut leaving ``side`` in ``graph`` (the reverse of the capacity graph if
    ``reversed_graph``), named by its smaller side of ranks: 'ingress of rank 0: ...' or
    'egress of ranks 1, 2: ...'."""
    inside = [r for r in range(topology.num_ranks) if r in side]
    outside = [r for r in range(topology.num_ranks) if r not in side]
    senders, receivers = (outside, inside) if reversed_graph else (inside, outside)
    if len(receivers) <= len(senders):
        return f"ingress of {_who(topology, receivers)}: {_crossing(graph, side)}"
    return f"egress of {_who(topology, senders)}: {_crossing(graph, side)}"


# -- AllToAll: max-concurrent multicommodity flow ----------------------------------


def _lp_solver():
    from ..synth.highs import HiGHS

    highs = HiGHS()
    return highs if highs.available() else pulp.PULP_CBC_CMD(msg=False)


def alltoall_rate(
    graph: nx.DiGraph, ranks: Iterable[Hashable], shift: dict | None = None
) -> tuple[float, str]:
    """The largest λ such that every ordered rank pair can carry λ at once, and the edge
    kinds with a positive dual price (the bottleneck).

    Source-aggregated LP: one commodity per source s; every other rank consumes λ of it
    and may relay it; the commodities share each edge's capacity. With ``shift``, an
    automorphism σ of ``graph``, only one source per σ-orbit of ranks is modelled: the
    flow of σ^k(s) on edge e is that of s on σ^-k(e) (exact: averaging an optimum over
    the powers of σ gives such a symmetric optimum). Infinite for fewer than two ranks.
    """
    ranks = list(ranks)
    n = len(ranks)
    if n < 2:
        return _INF, ""
    rank_set = set(ranks)
    edges = [(u, v, c) for u, v, c in graph.edges(data="capacity", default=_INF) if c > 0]
    index = {(u, v): j for j, (u, v, _) in enumerate(edges)}
    unit = max((c for *_, c in edges if c != _INF), default=1.0)  # LP in units of this

    back = {w: w for w in graph} if shift is None else {b: a for a, b in shift.items()}
    sources: list[tuple[Hashable, int]] = []  # (representative, length of its orbit)
    covered: set = set()
    for r in ranks:
        if r not in covered:
            orbit = [r]
            while shift is not None and shift[orbit[-1]] != r:
                orbit.append(shift[orbit[-1]])
            covered.update(orbit)
            sources.append((r, len(orbit)))
    longest = max(m for _, m in sources)
    preimage = [list(range(len(edges)))]  # preimage[k][j]: index of σ^-k(edge j)
    for _ in range(1, longest):
        preimage.append([index[back[edges[j][0]], back[edges[j][1]]] for j in preimage[-1]])

    prob = pulp.LpProblem("alltoall", pulp.LpMaximize)
    lam = pulp.LpVariable("lam", lowBound=0)
    prob += lam
    flow = {
        (i, j): pulp.LpVariable(f"f_{i}_{j}", lowBound=0)
        for i in range(len(sources))
        for j in range(len(edges))
    }
    into: dict[Hashable, list[int]] = defaultdict(list)
    out: dict[Hashable, list[int]] = defaultdict(list)
    for j, (u, v, _) in enumerate(edges):
        out[u].append(j)
        into[v].append(j)
    for i, (s, _) in enumerate(sources):
        for w in graph:
            net = pulp.lpSum(flow[i, j] for j in into[w]) - pulp.lpSum(flow[i, j] for j in out[w])
            prob += net == (-(n - 1) * lam if w == s else lam if w in rank_set else 0)
    caps: dict[tuple, tuple[int, pulp.LpConstraint]] = {}
    for j, (_, _, c) in enumerate(edges):
        if c != _INF:
            terms = tuple(
                sorted((i, preimage[k][j]) for i, (_, m) in enumerate(sources) for k in range(m))
            )
            if terms not in caps:
                caps[terms] = (j, pulp.lpSum(flow[t] for t in terms) <= c / unit)
                prob += caps[terms][1]
    prob.solve(_lp_solver())
    if pulp.LpStatus[prob.status] != "Optimal":
        raise RuntimeError(f"AllToAll flow LP: {pulp.LpStatus[prob.status]}")
    priced = sorted(
        {
            graph[edges[j][0]][edges[j][1]]["kind"]
            for j, cons in caps.values()
            if abs(cons.pi or 0) > 1e-9
        }
    )
    return lam.value() * unit, " + ".join(priced)


# -- rooted collectives: cuts around the root ---------------------------------------


def _integer_capacities(graph: nx.DiGraph) -> tuple[nx.DiGraph, int]:
    """``graph`` with every finite capacity scaled by a common factor to an integer (an
    infinite one left without the attribute, which networkx reads as infinite), and the
    factor: max-flows on it are exact."""
    exact = {
        (u, v): Fraction(c) for u, v, c in graph.edges(data="capacity", default=_INF) if c != _INF
    }
    scale = math.lcm(*(f.denominator for f in exact.values())) if exact else 1
    h = nx.DiGraph()
    h.add_nodes_from(graph)
    h.add_edges_from(
        (u, v, {"capacity": int(exact[(u, v)] * scale)} if (u, v) in exact else {})
        for u, v in graph.edges
    )
    return h, scale


def broadcast_rate(
    graph: nx.DiGraph, ranks: Iterable[Hashable], root: Hashable
) -> tuple[float, frozenset]:
    """The largest rate at which ``root`` can send the same data to every other rank:
    min over ranks v ≠ root of max-flow(root → v), and the root's side of that minimum cut.

    A lower bound on every broadcast (each byte crosses every cut between the root and each
    rank; a switch that copied data would still send it through each receiver's port);
    exact without switches or NICs (Edmonds' arborescence packing). Reduce's rate is this
    on ``graph.reverse()``. Returns (inf, ∅) when the root is the only rank.

    >>> g = nx.DiGraph([(0, 1, {"capacity": 2}), (1, 2, {"capacity": 1}), (0, 2, {"capacity": 3})])
    >>> broadcast_rate(g, [0, 1, 2], 0)
    (2.0, frozenset({0, 2}))
    """
    h, scale = _integer_capacities(graph)
    best: tuple[int, frozenset] | None = None
    for v in ranks:
        if v == root:
            continue
        try:
            value, (side, _) = nx.minimum_cut(h, root, v, flow_func=dinitz)
        except nx.NetworkXUnbounded:  # pragma: no cover - every route crosses a finite edge
            continue
        if best is None or value < best[0]:
            best = (value, frozenset(side))
    if best is None:
        return _INF, frozenset()
    return best[0] / scale, best[1]


def _rooted_coefficient(topology: Topology, kind: str, root: int) -> tuple[float, str]:
    """(seconds per byte of ``kind``'s nccl-tests size, tight cut) for a rooted collective."""

    def compute() -> tuple[float, str]:
        n = topology.num_ranks
        if n < 2:
            return 0.0, "a single rank"
        reverse = kind in (REDUCE, SCATTER)  # data flows toward / away from the root
        graph = flow_graph(topology)
        if reverse:
            graph = graph.reverse(copy=True)
        if kind in (BROADCAST, REDUCE):
            rate, side = broadcast_rate(graph, range(n), root)
            per_byte = 1 / rate if rate > 0 else _INF  # the whole buffer crosses the cut
        else:
            rate, side = allgather_rate(graph, range(n), [root])
            per_byte = 1 / (n * rate) if rate > 0 else _INF  # size / N per rank
        detail = _describe_rooted_cut(topology, graph, side, reverse)
        return per_byte, detail + (" (unreachable)" if per_byte == _INF else "")

    return _cached(topology, f"{kind}:{root}", compute)


def rooted_bandwidth_bound(topology: Topology, kind: str, size: float, root: int = 0) -> Bound:
    """The cut bound of Broadcast, Reduce, Gather or Scatter of ``size`` bytes rooted at
    ``root`` (sizes as nccl-tests: the buffer for broadcast and reduce, the root's whole
    output for gather, its whole input for scatter).

    >>> from taccl_py.topology.loader import load_topology
    >>> b = rooted_bandwidth_bound(load_topology("dgx1"), "broadcast", 1e9, root=0)
    >>> round(b.algbw / 1e9), b.detail  # rank 1's NVLinks: 2 x 25 + 1 x 25 + ...
    (150, 'ingress of rank 1: link 150 GB/s')
    """
    kind = canonical_kind(kind)
    if kind not in ROOTED_KINDS:
        raise CollectiveError(f"{kind} has no root; use bandwidth_bound")
    _check_root(topology, kind, root)
    per_byte, detail = _rooted_coefficient(topology, kind, root)
    return _bound(per_byte * size, size, "cut", detail)


def _check_root(topology: Topology, kind: str, root: int) -> None:
    if root != 0 and kind not in ROOTED_KINDS:
        raise CollectiveError(f"{kind} has no root (got root {root})")
    if not 0 <= root < max(1, topology.num_ranks):
        raise CollectiveError(
            f"root {root} is not a rank of {topology.label} (0..{topology.num_ranks - 1})"
        )


# -- latency -------------------------------------------------------------------------


def _alpha_distances(topology: Topology) -> np.ndarray:
    """Least total α from every rank to every rank over the connections (Floyd–Warshall)."""
    n = topology.num_ranks
    d = np.full((n, n), _INF)
    np.fill_diagonal(d, 0.0)
    for (s, t), c in topology.connections.items():
        d[s, t] = min(d[s, t], c.alpha)
    for k in range(n):
        np.minimum(d, d[:, k : k + 1] + d[k : k + 1, :], out=d)
    return d


def _distances(topology: Topology) -> np.ndarray:
    """:func:`_alpha_distances`, computed once per topology object."""
    return _cached(topology, "alpha", lambda: (_alpha_distances(topology),))[0]


def _latency(topology: Topology, kind: str = ALLGATHER, root: int = 0) -> tuple[float, str]:
    def compute() -> tuple[float, str]:
        if topology.num_ranks < 2:
            return 0.0, "a single rank"
        d = _distances(topology)
        if kind in (BROADCAST, SCATTER):  # from the root to every rank
            s, t = root, int(np.argmax(d[root, :]))
        elif kind in (REDUCE, GATHER):  # from every rank to the root
            s, t = int(np.argmax(d[:, root])), root
        else:
            s, t = (int(i) for i in np.unravel_index(int(np.argmax(d)), d.shape))
        if d[s, t] == _INF:
            return _INF, f"no path from rank {s} to rank {t}"
        return float(d[s, t]), f"least-α path from rank {s} to rank {t}"

    if kind not in ROOTED_KINDS:
        return _cached(topology, "latency", compute)
    return _cached(topology, f"latency:{kind}:{root}", compute)


def latency_bound(topology: Topology, collective: Collective | str, root: int = 0) -> float:
    """The largest least-α path (seconds) between two ranks that must exchange data.

    The unrooted collectives need every ordered pair: rank s's input (or contribution)
    must reach rank d, over some chain of connections costing at least their α sum.
    AllReduce is *not* doubled: reduce-then-broadcast is one algorithm, not a law —
    with two ranks, both can send their input at once and reduce locally in a single α,
    and in general exchanging inputs along shortest paths meets the diameter exactly.
    Broadcast and Scatter need the paths from the root (its α-eccentricity), Reduce and
    Gather those to it; ``root`` is the root (a :class:`Collective`'s own when given one).

    >>> from taccl_py.topology.loader import load_topology
    >>> latency_bound(load_topology("dgx1"), Collective("broadcast", 8, root=3)) * 1e6
    1.4
    """
    if isinstance(collective, Collective):
        kind, root = collective.kind, collective.root
    else:
        kind = canonical_kind(collective)
    _check_root(topology, kind, root)
    return _latency(topology, kind, root)[0]


# -- bandwidth bounds and the combined bound -----------------------------------------

_CACHE: dict[int, dict[str, tuple]] = {}


def _cached(topology: Topology, key: str, compute: Callable[[], tuple]) -> tuple:
    """``compute()`` once per (topology object, key); dropped when the topology is."""
    entry = _CACHE.get(id(topology))
    if entry is None:
        entry = _CACHE[id(topology)] = {}
        weakref.finalize(topology, _CACHE.pop, id(topology), None)
    if key not in entry:
        entry[key] = compute()
    return entry[key]


def _allgather_coefficient(topology: Topology) -> tuple[float, str]:
    """(seconds per byte of AllGather size, tight cut)."""

    def compute() -> tuple[float, str]:
        n = topology.num_ranks
        if n < 2:
            return 0.0, "a single rank"
        graph = flow_graph(topology)
        sinks = range(topology.gpus_per_node) if node_shift(topology, graph) else None
        x, side = allgather_rate(graph, range(n), sinks)
        if x == 0:
            return _INF, _describe_cut(topology, graph, side) + " (unreachable)"
        return 1 / (n * x), _describe_cut(topology, graph, side)

    return _cached(topology, ALLGATHER, compute)


def allgather_bandwidth_bound(topology: Topology, size: float) -> Bound:
    """The exact cut bound of AllGather (and ReduceScatter) of ``size`` bytes."""
    per_byte, detail = _allgather_coefficient(topology)
    return _bound(per_byte * size, size, "cut", detail)


def allreduce_bandwidth_bound(topology: Topology, size: float) -> Bound:
    """Twice the AllGather cut bound: ReduceScatter then AllGather, no in-network reduction."""
    per_byte, detail = _allgather_coefficient(topology)
    return _bound(2 * per_byte * size, size, "cut", f"2 x AllGather, {detail}")


def alltoall_bandwidth_bound(topology: Topology, size: float) -> Bound:
    """The fluid optimum of AllToAll with ``size`` bytes per rank (size/N per pair)."""

    def compute() -> tuple[float, str]:
        n = topology.num_ranks
        if n < 2:
            return 0.0, "a single rank"
        graph = flow_graph(topology)
        lam, priced = alltoall_rate(graph, range(n), node_shift(topology, graph))
        if lam <= 0:
            return _INF, "some pair is unreachable"
        return 1 / (n * lam), (
            f"multicommodity flow, {lam / _GB:.4g} GB/s per pair"
            + (f"; bottleneck: {priced}" if priced else "")
        )

    per_byte, detail = _cached(topology, ALLTOALL, compute)
    return _bound(per_byte * size, size, "flow", detail)


def bandwidth_bound(topology: Topology, collective_kind: str, size: float, root: int = 0) -> Bound:
    """The bandwidth bound of any collective (ReduceScatter is AllGather's); ``root`` is a
    rooted collective's root."""
    kind = canonical_kind(collective_kind)
    _check_root(topology, kind, root)
    if kind in ROOTED_KINDS:
        return rooted_bandwidth_bound(topology, kind, size, root)
    if kind == ALLTOALL:
        return alltoall_bandwidth_bound(topology, size)
    if kind == ALLREDUCE:
        return allreduce_bandwidth_bound(topology, size)
    return allgather_bandwidth_bound(topology, size)


def lower_bound(topology: Topology, collective_kind: str, size: float, root: int = 0) -> Bound:
    """max(bandwidth bound, latency bound); ``kind`` names the term that dominates.

    >>> from taccl_py.topology.loader import load_topology
    >>> topo = load_topology("ndv2", 2)
    >>> lower_bound(topo, "gather", 1 << 10, root=0).kind, lower_bound(topo, "gather", 1 << 30).kind
    ('latency', 'cut')
    """
    kind = canonical_kind(collective_kind)
    band = bandwidth_bound(topology, kind, size, root)
    latency, where = _latency(topology, kind, root)
    if latency > band.time:
        return _bound(latency, size, "latency", where)
    return band
