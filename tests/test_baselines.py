"""Ring and direct baselines: correctness (check()), ring choice, closed-form sizes."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.collectives import ALLGATHER, ALLREDUCE, ALLTOALL, KINDS, REDUCESCATTER, Collective
from taccl_py.errors import CollectiveError, TopologyError
from taccl_py.synth.baselines.direct import direct_algorithm
from taccl_py.synth.baselines.ring import check_ring, find_ring, ring_algorithm, ring_bottleneck
from taccl_py.topology.graph import route_tree
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import FULL_BISECTION, RAIL_ONLY, Link, Nic, Switch, Topology

GB, US = 1e9, 1e-6
DGX1_50 = [(0, 1), (0, 4), (1, 3), (2, 3), (2, 6), (4, 5), (5, 7), (6, 7)]
DGX1_25 = [(0, 2), (0, 3), (1, 2), (1, 5), (3, 7), (4, 6), (4, 7), (5, 6)]


def build(name, g, nodes=1, pairs=(), switch=None, nics=(), network=FULL_BISECTION, nic_bw=12.5):
    """K identical nodes: undirected ``pairs`` (a, b, GB/s), an optional switch (GB/s) over
    all GPUs of a node, and ``nics`` as tuples of the local GPUs sharing each NIC."""
    links, switches, nic_objs = [], [], []
    for n in range(nodes):
        base = n * g
        for a, b, bw in pairs:
            links += [
                Link(base + a, base + b, bw * GB, 0.7 * US),
                Link(base + b, base + a, bw * GB, 0.7 * US),
            ]
        if switch is not None:
            switches.append(
                Switch(f"sw{n}", n, tuple(range(base, base + g)), switch * GB, 0.35 * US)
            )
        for rail, local in enumerate(nics):
            nic_objs.append(
                Nic(f"nic{n}.{rail}", n, rail, tuple(base + r for r in local), nic_bw * GB, 2 * US)
            )
    return Topology(name, g, nodes, tuple(links), tuple(switches), tuple(nic_objs), network)


def dgx1_pairs():
    return [(a, b, 50) for a, b in DGX1_50] + [(a, b, 25) for a, b in DGX1_25]


TOPOLOGIES = {
    "switch4": lambda: build("switch4", 4, switch=100),
    "dgx1": lambda: build("dgx1", 8, pairs=dgx1_pairs()),
    "pairnic2x4": lambda: build("pairnic", 4, 2, switch=100, nics=[(0, 1), (2, 3)]),
    "sharednic2x2": lambda: build("sharednic", 2, 2, pairs=[(0, 1, 50)], nics=[(0, 1)]),
    "rail2x2": lambda: build(
        "rail", 2, 2, pairs=[(0, 1, 50)], nics=[(0,), (1,)], network=RAIL_ONLY
    ),
}


def hamiltonian_cycles(topology):
    """Every Hamiltonian cycle (starting at rank 0) that visits each node in one stretch."""
    n, conns = topology.num_ranks, topology.connections
    for rest in itertools.permutations(range(1, n)):
        order = [0, *rest]
        hops = list(zip(order, order[1:] + order[:1]))
        if all(h in conns for h in hops):
            changes = sum(topology.node_of(a) != topology.node_of(b) for a, b in hops)
            if changes == (topology.nodes if topology.nodes > 1 else 0):
                yield order


def closed_form(kind, n, k, distance_sum):
    """Ring transfer counts; ``distance_sum`` is the sum of ring distances over all pairs."""
    return {
        ALLGATHER: n * k * (n - 1),
        REDUCESCATTER: n * k * (n - 1),
        ALLREDUCE: 2 * n * k * (n - 1),
        ALLTOALL: k * distance_sum,
    }[kind]


def assert_uses_connections(topology, alg):
    for t in alg.transfers:
        assert (t.src, t.dst) in topology.connections, t


def assert_causal(alg):
    """Every transfer sends a value whose last update happened at an earlier step."""
    updated = {}
    for t in alg.transfers:
        assert updated.get((t.src, t.chunk), -1) < t.step, t
        updated[(t.dst, t.chunk)] = t.step


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunkup", [1, 2])
@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_ring_and_direct_are_correct(name, kind, chunkup):
    topo = TOPOLOGIES[name]()
    n = topo.num_ranks
    coll = Collective(kind, n, chunkup)
    ring_alg = ring_algorithm(topo, coll)
    ring_alg.check()
    assert_uses_connections(topo, ring_alg)
    rings = ring_alg.meta["rings"]  # one per channel; AllToAll splits blocks over them
    for i, ring in enumerate(rings):
        pos = {r: i for i, r in enumerate(ring)}
        mine = [
            (s, d)
            for s in range(n)
            for d in range(n)
            if kind != ALLTOALL or (s * n + d) % len(rings) == i
        ]
        dist = sum((pos[d] - pos[s]) % n for s, d in mine)
        on_ring = sum(t.channel == i for t in ring_alg.transfers)
        assert on_ring == closed_form(kind, n, chunkup, dist)
    assert ring_alg.nchannels == len(rings)
    assert_causal(ring_alg)
    assert ring_alg.num_steps == {ALLREDUCE: 2 * (n - 1)}.get(kind, n - 1) * chunkup

    direct = direct_algorithm(topo, coll)
    direct.check()
    assert_causal(direct)
    assert_uses_connections(topo, direct)
    hops = sum(len(route_tree(topo, s)[d]) - 1 for s in range(n) for d in range(n))
    assert len(direct.transfers) == closed_form(kind, n, chunkup, hops)


@pytest.mark.parametrize(
    "name, ring",
    [
        ("switch4", [0, 1, 2, 3]),
        ("dgx1", [0, 1, 3, 2, 6, 7, 5, 4]),
        ("pairnic2x4", [0, 1, 2, 3, 4, 5, 6, 7]),  # enters on NIC 0, leaves on NIC 1
        ("sharednic2x2", [0, 1, 2, 3]),
        ("rail2x2", [0, 1, 3, 2]),  # rail-only: each node is crossed the other way round
    ],
)
def test_found_rings(name, ring):
    assert find_ring(TOPOLOGIES[name]()) == ring


def test_dgx1_ring_is_best_nvlink_ring():
    topo = TOPOLOGIES["dgx1"]()
    ring = find_ring(topo)
    assert {topo.connection(a, b).kind for a, b in zip(ring, ring[1:] + ring[:1])} == {"link"}
    best = max(ring_bottleneck(topo, c) for c in hamiltonian_cycles(topo))
    assert ring_bottleneck(topo, ring) == best == 50 * GB


def test_multinode_ring_keeps_fast_links_inside_nodes():
    topo = build("ndv2", 8, 2, pairs=dgx1_pairs(), nics=[tuple(range(8))])
    ring = find_ring(topo)
    assert ring_bottleneck(topo, ring) == 12.5 * GB
    hops = list(zip(ring, ring[1:] + ring[:1]))
    inside = [
        topo.bandwidth(topo.connection(a, b)) for a, b in hops if topo.node_of(a) == topo.node_of(b)
    ]
    assert len(inside) == 14 and min(inside) == 50 * GB


def test_rail_only_three_nodes():
    topo = build("rail", 4, 3, switch=100, nics=[(0,), (1,), (2,), (3,)], network=RAIL_ONLY)
    ring = find_ring(topo)
    check_ring(topo, ring)
    ring_algorithm(topo, Collective(ALLREDUCE, 12)).check()


def test_check_ring_names_missing_link():
    topo = TOPOLOGIES["dgx1"]()
    with pytest.raises(TopologyError, match=r"rank 0 -> rank 5, which dgx1 has no link"):
        check_ring(topo, [0, 5, 1, 2, 3, 4, 6, 7])
    with pytest.raises(TopologyError, match="permutation"):
        check_ring(topo, [0, 1, 3, 2, 6, 7, 5])
    with pytest.raises(TopologyError, match="rank 0 -> rank 5"):
        ring_algorithm(topo, Collective(ALLGATHER, 8), order=[0, 5, 1, 2, 3, 4, 6, 7])


def test_user_ring_order_is_used():
    topo = TOPOLOGIES["switch4"]()
    alg = ring_algorithm(topo, Collective(ALLGATHER, 4), order=[3, 1, 2, 0])
    alg.check()
    assert {(t.src, t.dst) for t in alg.transfers} == {(3, 1), (1, 2), (2, 0), (0, 3)}


def test_no_ring_errors():
    star = [(0, 1, 50), (0, 2, 50), (0, 3, 50)]
    with pytest.raises(TopologyError, match="no Hamiltonian ring: no cycle"):
        find_ring(build("star", 4, pairs=star))
    with pytest.raises(TopologyError, match="starx2: no Hamiltonian ring: no path through all"):
        find_ring(build("star", 4, 2, pairs=star, nics=[(0, 1, 2, 3)]))
    with pytest.raises(TopologyError, match="dgx1x2: no Hamiltonian ring: node has no NIC"):
        find_ring(build("dgx1", 8, 2, pairs=dgx1_pairs()))
    with pytest.raises(TopologyError, match="network"):
        find_ring(build("half", 2, 3, pairs=[(0, 1, 50)], nics=[(0,)]))


def test_rank_count_mismatch():
    with pytest.raises(CollectiveError):
        ring_algorithm(TOPOLOGIES["switch4"](), Collective(ALLGATHER, 8))
    with pytest.raises(CollectiveError):
        direct_algorithm(TOPOLOGIES["switch4"](), Collective(ALLGATHER, 8))


def test_single_rank():
    topo = build("one", 1)
    assert find_ring(topo) == [0]
    for kind in KINDS:
        ring_algorithm(topo, Collective(kind, 1)).check()
        direct_algorithm(topo, Collective(kind, 1)).check()


def test_routes_are_best_shortest_paths():
    topo = TOPOLOGIES["dgx1"]()
    g = topo.graph()
    for s in range(8):
        routes = route_tree(topo, s)
        for d in range(8):
            if s == d:
                continue
            paths = list(nx.all_shortest_paths(g, s, d))
            best = max(min(g.edges[e]["bandwidth"] for e in zip(p, p[1:])) for p in paths)
            route = routes[d]
            assert len(route) == len(paths[0])
            assert min(g.edges[e]["bandwidth"] for e in zip(route, route[1:])) == best
            assert route_tree(topo, d, toward=True)[s][0] == s


def test_unreachable_rank():
    topo = build("split", 4, pairs=[(0, 1, 50), (2, 3, 50)])
    with pytest.raises(TopologyError, match="cannot reach"):
        direct_algorithm(topo, Collective(ALLGATHER, 4))


BUILTINS = ["dgx1", "ndv2", "dgx2", "dgx-a100", "dgx-h100", "mi300x"]


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_topologies(name, nodes):
    try:
        topo = load_topology(name, nodes)
    except TopologyError as exc:
        if nodes == 1:
            raise
        pytest.skip(f"{name} cannot be replicated: {exc}")
    ring = find_ring(topo)
    if name in ("dgx1", "ndv2"):
        assert ring[:8] == [0, 1, 3, 2, 6, 7, 5, 4]  # the all-double-NVLink cycle
    for kind in KINDS:
        coll = Collective(kind, topo.num_ranks)
        alg = ring_algorithm(topo, coll, order=ring)
        alg.check()
        assert_uses_connections(topo, alg)
        direct_algorithm(topo, coll).check()


# -- random topologies ------------------------------------------------------------------

BANDWIDTHS = st.sampled_from([10, 25, 50])


@st.composite
def random_topologies(draw):
    nodes = draw(st.sampled_from([1, 2]))
    g = draw(st.integers(2 if nodes == 1 else 1, 8 // nodes))
    order = draw(st.permutations(range(g)))
    pairs = {}
    for i in range(1, g):  # a random spanning tree keeps each node connected
        parent = order[draw(st.integers(0, i - 1))]
        pairs[frozenset((parent, order[i]))] = draw(BANDWIDTHS)
    for a, b in itertools.combinations(range(g), 2):
        if frozenset((a, b)) not in pairs and draw(st.booleans()):
            pairs[frozenset((a, b))] = draw(BANDWIDTHS)
    switch = draw(st.none() | BANDWIDTHS)
    nics, network = (), FULL_BISECTION
    if nodes == 2:
        layout = draw(st.sampled_from(["shared", "per-gpu", "per-pair", "first-only"]))
        nics = {
            "shared": [tuple(range(g))],
            "per-gpu": [(r,) for r in range(g)],
            "per-pair": [tuple(range(r, min(r + 2, g))) for r in range(0, g, 2)],
            "first-only": [(0,)],
        }[layout]
        network = draw(st.sampled_from([FULL_BISECTION, RAIL_ONLY]))
    return build(
        "rand",
        g,
        nodes,
        [(*sorted(p), bw) for p, bw in pairs.items()],
        switch,
        nics,
        network,
        nic_bw=draw(BANDWIDTHS),
    )


@settings(max_examples=120)
@given(topo=random_topologies(), kind=st.sampled_from(KINDS), chunkup=st.integers(1, 3))
def test_random_topologies(topo, kind, chunkup):
    coll = Collective(kind, topo.num_ranks, chunkup)
    direct_algorithm(topo, coll).check()
    small = topo.num_ranks <= 6
    best = (
        max((ring_bottleneck(topo, c) for c in hamiltonian_cycles(topo)), default=None)
        if small
        else None
    )
    try:
        ring = find_ring(topo)
    except TopologyError:
        if small:
            assert best is None
        return
    if small:
        assert ring_bottleneck(topo, ring) == best
    alg = ring_algorithm(topo, coll, order=ring)
    alg.check()
    assert_uses_connections(topo, alg)
