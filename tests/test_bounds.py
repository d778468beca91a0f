"""Lower bounds: worked values of specs/bounds.md, closed forms, brute force, symmetry."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from fractions import Fraction

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.analysis import bounds
from taccl_py.analysis.bounds import (
    allgather_bandwidth_bound,
    allgather_rate,
    allreduce_bandwidth_bound,
    alltoall_bandwidth_bound,
    alltoall_rate,
    bandwidth_bound,
    flow_graph,
    latency_bound,
    lower_bound,
    node_shift,
)
from taccl_py.collectives import Collective
from taccl_py.topology import Link, Nic, Switch, Topology, load_topology

from .strategies import topologies

GB = 1e9
SIZE = 1 << 30


def switch_topology(n: int, bw: float, alpha: float = 1e-6) -> Topology:
    return Topology("switch", n, 1, switches=(Switch("sw", 0, tuple(range(n)), bw, alpha),))


def shared_nic_topology(nodes: int, g: int, intra: float, nic_bw: float) -> Topology:
    """``nodes`` nodes of ``g`` GPUs on a switch, one NIC per node shared by all its GPUs."""
    switches = tuple(
        Switch(f"n{k}.sw", k, tuple(range(k * g, k * g + g)), intra, 1e-6) for k in range(nodes)
    )
    nics = tuple(
        Nic(f"n{k}.nic", k, 0, tuple(range(k * g, k * g + g)), nic_bw, 2e-6) for k in range(nodes)
    )
    return Topology("shared", g, nodes, switches=switches, nics=nics)


# -- worked values (specs/bounds.md) ---------------------------------------------------


@pytest.mark.parametrize(
    "name,nodes,kind,algbw_gbs",
    [
        ("dgx1", 1, "allgather", 171.4),  # 8/7 · 150 (6 NVLinks of ingress)
        ("ndv2", 2, "allgather", 25.0),  # node cut: 2 · 12.5
        ("ndv2", 2, "alltoall", 3.125),  # node cut: 320 ms per GB per rank
        ("dgx-a100", 2, "allgather", 346.7),  # 16/15 · (300 + 25), one GPU's ingress
        ("dgx-a100", 4, "allgather", 266.7),  # node cut: 4/3 · 8 · 25
        ("dgx-h100", 1, "allgather", 514.3),  # 8/7 · 450
        ("dgx-h100", 2, "allgather", 533.3),  # 16/15 · (450 + 50)
        ("dgx-h100", 8, "allgather", 457.1),  # node cut: 8/7 · 8 · 50
        # specs/bounds.md says 129 = 32/31 · 125: a GPU's ingress without its NIC. In our model
        # the NIC (shared by 2 GPUs) delivers over PCIe next to the NVSwitch port, so one GPU
        # can take in 125 + 12.5 GB/s: 32/31 · 137.5 = 141.9.
        ("dgx2", 2, "allgather", 141.94),
    ],
)
def test_worked_values(name, nodes, kind, algbw_gbs):
    bound = bandwidth_bound(load_topology(name, nodes), kind, SIZE)
    assert bound.algbw / GB == pytest.approx(algbw_gbs, rel=0.01)


def test_tight_cuts_are_described():
    assert (
        allgather_bandwidth_bound(load_topology("dgx-h100", 8), SIZE).detail
        == "ingress of node 0: nic 400 GB/s"
    )
    assert (
        allgather_bandwidth_bound(load_topology("dgx-h100", 2), SIZE).detail
        == "ingress of rank 0: nic 50 GB/s + switch 450 GB/s"
    )
    assert "bottleneck: nic" in alltoall_bandwidth_bound(load_topology("ndv2", 2), SIZE).detail


def test_dgx_h100_8_nodes_is_fast():
    start = time.perf_counter()
    allgather_bandwidth_bound(load_topology("dgx-h100", 8), SIZE)
    assert time.perf_counter() - start < 10


# -- closed forms ------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_single_switch(n):
    bw = 100 * GB
    topo = switch_topology(n, bw)
    t_ag = (n - 1) / n * SIZE / bw
    assert allgather_bandwidth_bound(topo, SIZE).time == pytest.approx(t_ag, rel=1e-9)
    assert bandwidth_bound(topo, "reducescatter", SIZE).time == pytest.approx(t_ag, rel=1e-9)
    assert allreduce_bandwidth_bound(topo, SIZE).time == pytest.approx(2 * t_ag, rel=1e-9)
    assert alltoall_bandwidth_bound(topo, SIZE).time == pytest.approx(t_ag, rel=1e-6)


@pytest.mark.parametrize("nodes,g", [(2, 4), (3, 2), (2, 8)])
def test_shared_nic_node_cut(nodes, g):
    nic_bw = 12.5 * GB
    topo = shared_nic_topology(nodes, g, 500 * GB, nic_bw)
    expected = (nodes - 1) / nodes * SIZE / nic_bw
    bound = allgather_bandwidth_bound(topo, SIZE)
    assert bound.time == pytest.approx(expected, rel=1e-9)
    assert bound.detail.startswith("ingress of node")
    a2a = alltoall_bandwidth_bound(topo, SIZE)  # node cut: (k−1)/k · size · g / B_nic
    assert a2a.time == pytest.approx((nodes - 1) / nodes * SIZE * g / nic_bw, rel=1e-6)


def test_single_rank_and_unreachable():
    one = switch_topology(1, GB)
    assert allgather_bandwidth_bound(one, SIZE).time == 0
    assert alltoall_bandwidth_bound(one, SIZE).time == 0
    assert latency_bound(one, "allgather") == 0
    cut_off = Topology("pair", 2, 1, links=(Link(0, 1, GB, 1e-6),))  # nothing back to 0
    assert allgather_bandwidth_bound(cut_off, SIZE).time == float("inf")
    assert alltoall_bandwidth_bound(cut_off, SIZE).time == float("inf")
    assert latency_bound(cut_off, "alltoall") == float("inf")


# -- the capacity graph agrees with the connections --------------------------------


@settings(max_examples=40)
@given(topologies(max_gpus=4, max_nodes=3))
def test_flow_graph_matches_connections(topo):
    graph = flow_graph(topo)
    ranks = set(range(topo.num_ranks))
    for a in ranks:
        for b in ranks - {a}:
            direct = graph.subgraph(set(graph) - (ranks - {a, b}))
            if (a, b) in topo.connections:
                flow = nx.maximum_flow_value(direct, a, b)
                assert flow == pytest.approx(topo.bandwidth(topo.connections[(a, b)]))
            else:
                assert not nx.has_path(direct, a, b)


def test_rail_only_network_stays_on_rail():
    graph = flow_graph(replace(load_topology("dgx-h100", 2), network="rail-only"))
    assert nx.has_path(graph, 0, 8) and not nx.has_path(
        graph.subgraph(set(graph) - set(range(16)) | {0, 9}), 0, 9
    )


def test_no_intra_node_path_through_the_network():
    """One node's NICs are left out; in two nodes, no NIC path joins two GPUs of one node."""
    assert not any(
        isinstance(v, str) and v.startswith("nic") for v in flow_graph(load_topology("dgx-h100", 1))
    )
    graph = flow_graph(load_topology("dgx-h100", 2))
    no_switch = graph.subgraph(v for v in graph if not (isinstance(v, str) and v.startswith("sw:")))
    assert not nx.has_path(no_switch.subgraph(set(no_switch) - set(range(8, 16))), 0, 1)


# -- the max-flow answer equals brute force ----------------------------------------


@st.composite
def capacity_graphs(draw):
    n = draw(st.integers(2, 6))
    ranks = draw(st.sets(st.integers(0, n - 1), min_size=2, max_size=n))
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for u, v in itertools.permutations(range(n), 2):
        cap = draw(st.sampled_from([0, 0, 1, 2, 3, 5, 8, 12]))
        if cap:
            graph.add_edge(u, v, capacity=cap)
    return graph, sorted(ranks)


def brute_force_rate(graph, ranks) -> Fraction:
    best = None
    vertices = list(graph)
    for size in range(1, len(vertices)):
        for side in itertools.combinations(vertices, size):
            side = set(side)
            inside = sum(1 for r in ranks if r in side)
            if inside == 0 or inside == len(ranks):
                continue
            out = sum(graph[u][v]["capacity"] for u in side for v in graph[u] if v not in side)
            ratio = Fraction(out, inside)
            best = ratio if best is None else min(best, ratio)
    return best


@settings(max_examples=150)
@given(capacity_graphs())
def test_allgather_rate_equals_brute_force(case):
    graph, ranks = case
    rate, side = allgather_rate(graph, ranks)
    expected = brute_force_rate(graph, ranks)
    assert rate == pytest.approx(float(expected), rel=1e-12, abs=1e-12)
    inside = sum(1 for r in ranks if r in side)
    out = sum(graph[u][v]["capacity"] for u in side for v in graph[u] if v not in side)
    assert 0 < inside < len(ranks) and Fraction(out, inside) == expected


# -- node symmetry gives the same answers --------------------------------------------


@settings(max_examples=25)
@given(topologies(max_gpus=3, max_nodes=3))
def test_symmetry_reductions_are_exact(topo):
    graph = flow_graph(topo)
    shift = node_shift(topo, graph)
    assert (shift is None) == (topo.nodes == 1)
    if shift is None:
        return
    ranks = range(topo.num_ranks)
    full = allgather_rate(graph, ranks)[0]
    assert allgather_rate(graph, ranks, range(topo.gpus_per_node))[0] == full
    assert alltoall_rate(graph, ranks, shift)[0] == pytest.approx(
        alltoall_rate(graph, ranks)[0], rel=1e-6
    )


def test_asymmetric_nodes_have_no_shift():
    topo = shared_nic_topology(2, 2, 100 * GB, 12.5 * GB)
    nics = (topo.nics[0], Nic("n1.nic", 1, 0, (2, 3), 25 * GB, 2e-6))
    uneven = Topology("uneven", 2, 2, switches=topo.switches, nics=nics)
    assert node_shift(uneven, flow_graph(uneven)) is None
    assert node_shift(topo, flow_graph(topo)) is not None


# -- latency and the combined bound ------------------------------------------------


def test_latency_is_the_alpha_diameter():
    assert latency_bound(switch_topology(4, GB, alpha=0.5e-6), "allgather") == pytest.approx(0.5e-6)
    # DGX-1: pairs without NVLink need two hops of 0.7 µs
    assert latency_bound(load_topology("dgx1"), Collective("allgather", 8)) == pytest.approx(1.4e-6)
    # two ranks exchange inputs at once and reduce locally: AllReduce is not doubled
    assert latency_bound(switch_topology(2, GB, alpha=1e-6), "allreduce") == pytest.approx(1e-6)


def test_lower_bound_names_the_dominating_term():
    topo = load_topology("ndv2", 2)
    small = lower_bound(topo, "allgather", 1024)
    assert small.kind == "latency" and small.time == pytest.approx(1.7e-6)
    big = lower_bound(topo, "ag", SIZE)
    assert big.kind == "cut" and big.algbw / GB == pytest.approx(25.0)
    assert lower_bound(topo, "alltoall", SIZE).kind == "flow"
    assert lower_bound(topo, "allreduce", SIZE).time == pytest.approx(2 * big.time)


def test_one_solve_for_many_sizes(monkeypatch):
    calls = []
    real = bounds.allgather_rate
    monkeypatch.setattr(bounds, "allgather_rate", lambda *a: calls.append(1) or real(*a))
    topo = load_topology("dgx-a100", 2)
    for p in range(10, 31, 4):
        for kind in ("allgather", "reducescatter", "allreduce"):
            lower_bound(topo, kind, 1 << p)
    assert len(calls) == 1
    assert allgather_bandwidth_bound(topo, 2 * SIZE).time == pytest.approx(
        2 * allgather_bandwidth_bound(topo, SIZE).time
    )
    allgather_bandwidth_bound(load_topology("dgx-a100", 2), SIZE)  # another object
    assert len(calls) == 2


# -- rooted collectives: hand-computed cuts on tiny topologies -------------------------


def line_topology(bws: list[float], alpha: float = 1e-6) -> Topology:
    """Ranks 0 - 1 - ... - len(bws), link i joining i and i+1 with bandwidth bws[i] both ways."""
    links = []
    for i, bw in enumerate(bws):
        links += [Link(i, i + 1, bw, alpha), Link(i + 1, i, bw, alpha)]
    return Topology("line", len(bws) + 1, 1, links=tuple(links))


def test_rooted_bounds_on_a_line():
    # 0 =2= 1 -1- 2 =3= 3 (GB/s): rank 2's side hangs on the 1 GB/s link
    topo = line_topology([2 * GB, GB, 3 * GB])
    for kind in ("broadcast", "reduce"):  # the whole buffer crosses the 1 GB/s link
        b = bandwidth_bound(topo, kind, SIZE, root=0)
        assert b.time == pytest.approx(SIZE / GB, rel=1e-12) and b.kind == "cut"
    assert bandwidth_bound(topo, "broadcast", SIZE).detail == "ingress of ranks 2, 3: link 1 GB/s"
    # a cut is named by its smaller side, the receivers' ingress on a tie
    assert bandwidth_bound(topo, "reduce", SIZE).detail == "ingress of ranks 0, 1: link 1 GB/s"
    # Gather to 0: ranks {2, 3} send 2 blocks of size/4 over 1 GB/s, which beats the root's
    # own ingress (3 blocks over 2 GB/s) and every single rank's egress
    for kind in ("gather", "scatter"):
        b = bandwidth_bound(topo, kind, SIZE, root=0)
        assert b.time == pytest.approx(2 * (SIZE / 4) / GB, rel=1e-12)
        assert b.time > 3 * (SIZE / 4) / (2 * GB)
    assert bandwidth_bound(topo, "gather", SIZE, root=0).detail.startswith("ingress of ranks 0, 1")
    assert bandwidth_bound(topo, "scatter", SIZE, root=0).detail.startswith("ingress of ranks 2, 3")
    # rooted at 3: the root's ingress (3 GB/s for 3 blocks) vs {0, 1} behind 1 GB/s
    assert bandwidth_bound(topo, "gather", SIZE, root=3).time == pytest.approx(
        2 * (SIZE / 4) / GB, rel=1e-12
    )
    # latency: hops from / to the root
    assert latency_bound(topo, "broadcast", root=0) == pytest.approx(3e-6)
    assert latency_bound(topo, Collective("gather", 4, root=1)) == pytest.approx(2e-6)
    assert latency_bound(topo, "allgather") == pytest.approx(3e-6)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("root", [0, 1])
def test_rooted_bounds_on_a_star(n, root):
    bw = 100 * GB
    topo = switch_topology(n, bw, alpha=0.5e-6)
    for kind in ("broadcast", "reduce"):
        assert bandwidth_bound(topo, kind, SIZE, root).time == pytest.approx(SIZE / bw, rel=1e-12)
    for kind in ("gather", "scatter"):  # the root's port carries the N - 1 other blocks
        b = bandwidth_bound(topo, kind, SIZE, root)
        assert b.time == pytest.approx((n - 1) / n * SIZE / bw, rel=1e-12)
        if n > 2:  # (with two ranks, the other rank's cut is as tight)
            word = "ingress" if kind == "gather" else "egress"
            assert b.detail == f"{word} of rank {root}: switch 100 GB/s"
    for kind in ("broadcast", "reduce", "gather", "scatter"):
        assert lower_bound(topo, kind, 1024, root).time == pytest.approx(0.5e-6)
        assert lower_bound(topo, kind, 1024, root).kind == "latency"


@pytest.mark.parametrize("g", [1, 2, 4])
def test_rooted_bounds_two_nodes_one_nic(g):
    nic = 12.5 * GB
    topo = shared_nic_topology(2, g, 500 * GB, nic)
    for kind in ("broadcast", "reduce"):  # the whole buffer crosses the one NIC
        b = bandwidth_bound(topo, kind, SIZE, root=g - 1)
        assert b.time == pytest.approx(SIZE / nic, rel=1e-12)
    for kind in ("gather", "scatter"):  # the other node's half crosses it
        b = bandwidth_bound(topo, kind, SIZE, root=g - 1)
        assert b.time == pytest.approx(SIZE / 2 / nic, rel=1e-12)
        if g > 1:
            assert b.detail.endswith("of node 1: nic 12.5 GB/s") or b.detail.endswith(
                "of node 0: nic 12.5 GB/s"
            )


def test_rooted_bound_errors_and_edge_cases():
    from taccl_py.errors import CollectiveError

    topo = switch_topology(4, GB)
    with pytest.raises(CollectiveError, match="root 4 is not a rank"):
        bandwidth_bound(topo, "broadcast", SIZE, root=4)
    with pytest.raises(CollectiveError, match="allgather has no root"):
        lower_bound(topo, "allgather", SIZE, root=2)
    with pytest.raises(CollectiveError, match="has no root"):
        bounds.rooted_bandwidth_bound(topo, "alltoall", SIZE)
    one = switch_topology(1, GB)
    for kind in ("broadcast", "reduce", "gather", "scatter"):
        assert lower_bound(one, kind, SIZE).time == 0
    cut_off = Topology("pair", 2, 1, links=(Link(0, 1, GB, 1e-6),))  # nothing back to 0
    assert bandwidth_bound(cut_off, "broadcast", SIZE, root=0).time == pytest.approx(SIZE / GB)
    assert bandwidth_bound(cut_off, "scatter", SIZE, root=0).time == pytest.approx(SIZE / 2 / GB)
    for kind in ("broadcast", "scatter", "reduce", "gather"):
        b = bandwidth_bound(cut_off, kind, SIZE, root=1)
        if kind in ("broadcast", "scatter"):  # 1 cannot reach 0
            assert b.time == float("inf") and b.detail.endswith("(unreachable)")
            assert latency_bound(cut_off, kind, root=1) == float("inf")
        else:
            assert b.time < float("inf")


def brute_force_rooted(graph, ranks, root, per_rank: bool) -> Fraction:
    """min over vertex sets S with a rank but not ``root`` of B_out(S) / (|S ∩ ranks| or 1)."""
    best = None
    vertices = [v for v in graph if v != root]
    for size in range(1, len(vertices) + 1):
        for side in itertools.combinations(vertices, size):
            inside = sum(1 for r in ranks if r in side)
            if inside == 0:
                continue
            out = sum(graph[u][v]["capacity"] for u in side for v in graph[u] if v not in side)
            ratio = Fraction(out, inside if per_rank else 1)
            best = ratio if best is None else min(best, ratio)
    return best


@settings(max_examples=120)
@given(capacity_graphs(), st.data())
def test_rooted_rates_equal_brute_force(case, data):
    graph, ranks = case
    root = data.draw(st.sampled_from(ranks))
    # Broadcast: min over sets S holding the root and missing a rank of B_out(S); the same
    # as the brute force above on the reversed graph (sets holding a rank, missing the root)
    rate, side = bounds.broadcast_rate(graph, ranks, root)
    assert rate == pytest.approx(float(brute_force_rooted(graph.reverse(), ranks, root, False)))
    assert root in side and any(r not in side for r in ranks)
    # Gather: the per-rank cut checked at the root alone
    rate, _ = allgather_rate(graph, ranks, [root])
    assert rate == pytest.approx(float(brute_force_rooted(graph, ranks, root, True)))


@settings(max_examples=30)
@given(topologies(max_gpus=4, max_nodes=2), st.data())
def test_rooted_bounds_are_consistent(topo, data):
    """Reduce is Broadcast reversed; a rooted bound never exceeds what every rank's own
    in/egress allows, and Gather's bound is at most AllGather's."""
    n = topo.num_ranks
    root = data.draw(st.integers(0, n - 1))
    graph = flow_graph(topo)
    bcast = bandwidth_bound(topo, "broadcast", SIZE, root).time
    assert bandwidth_bound(topo, "reduce", SIZE, root).time == pytest.approx(
        SIZE / bounds.broadcast_rate(graph.reverse(), range(n), root)[0]
    )
    ingress = min(graph.in_degree(v, weight="capacity") for v in range(n) if v != root)
    assert bcast >= SIZE / ingress * (1 - 1e-12)
    gather = bandwidth_bound(topo, "gather", SIZE, root).time
    assert gather >= (n - 1) / n * SIZE / graph.in_degree(root, weight="capacity") * (1 - 1e-12)
    assert gather <= allgather_bandwidth_bound(topo, SIZE).time * (1 + 1e-12)
    assert bandwidth_bound(topo, "scatter", SIZE, root).time <= bcast * (1 + 1e-12)


@settings(max_examples=25)
@given(
    topologies(max_gpus=4, max_nodes=2),
    st.sampled_from(["broadcast", "reduce", "gather", "scatter"]),
    st.data(),
)
def test_rooted_bound_never_beats_the_direct_plan(topo, kind, data):
    from taccl_py.analysis.simulate import simulate
    from taccl_py.build.pipeline import build_plan

    root = data.draw(st.integers(0, topo.num_ranks - 1))
    plan = build_plan(topo, Collective(kind, topo.num_ranks, root=root), "direct").plan
    for size in (1 << 10, 1 << 30):
        bound = lower_bound(topo, kind, size, root)
        assert 0 < bound.time <= simulate(plan, topo, size).time * (1 + 1e-9), (size, bound)
