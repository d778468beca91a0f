"""Rooted collectives (Broadcast, Reduce, Gather, Scatter) in every synthesis method."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.collectives import BROADCAST, GATHER, REDUCE, ROOTED_KINDS, SCATTER, Collective
from taccl_py.errors import SketchError, TacclError, TopologyError
from taccl_py.ir.algorithm import Algorithm
from taccl_py.synth.baselines.direct import direct_algorithm
from taccl_py.synth.baselines.ring import find_rings, ring_algorithm
from taccl_py.synth.baselines.trees import tree_algorithm
from taccl_py.synth.methods import SynthOptions, synthesize
from taccl_py.synth.milp.combine import reverse_rooted, reversed_topology
from taccl_py.synth.milp.routing import candidates, floor_us, greedy_routes, relaxed_makespan
from taccl_py.synth.milp.search import staged_algorithm
from taccl_py.synth.milp.sketch import default_sketch
from taccl_py.synth.smt import least_rounds_per_chunk
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import Link, Topology

from .strategies import topologies

GB, US = 1e9, 1e-6
BASELINES = {"ring": ring_algorithm, "direct": direct_algorithm, "tree": tree_algorithm}


def valid(alg: Algorithm, topo: Topology, coll: Collective) -> None:
    """The data-level check passes, every hop is a connection, the collective is kept."""
    alg.check()
    assert alg.collective.kind == coll.kind and alg.collective.root == coll.root
    missing = {(t.src, t.dst) for t in alg.transfers} - set(topo.connections)
    assert not missing, f"transfers over missing connections {sorted(missing)[:4]}"


@pytest.mark.parametrize("method", sorted(BASELINES))
@pytest.mark.parametrize("name,nodes", [("dgx1", 1), ("ndv2", 2), ("dgx-h100", 2), ("mi300x", 1)])
@pytest.mark.parametrize("kind", ROOTED_KINDS)
def test_baselines_build_every_rooted_kind(method, name, nodes, kind):
    topo = load_topology(name, nodes)
    n = topo.num_ranks
    for root in sorted({0, n - 1, n // 2 + 1}):
        for chunkup in (1, 2):
            coll = Collective(kind, n, chunkup, root=root)
            valid(synthesize(topo, coll, method), topo, coll)


@settings(max_examples=40)
@given(topologies(), st.data(), st.sampled_from(sorted(BASELINES)), st.sampled_from(ROOTED_KINDS))
def test_baselines_on_random_topologies(topo, data, method, kind):
    n = topo.num_ranks
    root = data.draw(st.integers(0, n - 1), label="root")
    chunkup = data.draw(st.integers(1, 3), label="chunkup")
    coll = Collective(kind, n, chunkup, root=root)
    try:
        alg = BASELINES[method](topo, coll)
    except TopologyError:  # no Hamiltonian ring on this topology (ring, tree)
        assert method in ("ring", "tree")
        return
    valid(alg, topo, coll)


@pytest.mark.parametrize("name,nodes", [("dgx1", 1), ("dgx-a100", 2), ("ndv2", 2)])
@pytest.mark.parametrize("root", [0, 5, 11])
def test_ring_broadcast_is_nccls_chain(name, nodes, root):
    """Every channel is a chain from the root along its ring to the rank before the root:
    each other rank receives each chunk exactly once, from its ring predecessor, and the
    rank before the root sends nothing."""
    topo = load_topology(name, nodes)
    n = topo.num_ranks
    root %= n
    alg = ring_algorithm(topo, Collective(BROADCAST, n, 2, root=root))
    rings = find_rings(topo)
    assert alg.nchannels == len(rings)
    received = Counter((t.dst, t.chunk) for t in alg.transfers)
    assert set(received.values()) == {1}
    assert {r for r, _ in received} == set(range(n)) - {root}
    assert len(received) == (n - 1) * alg.collective.num_chunks
    for t in alg.transfers:
        ring = rings[t.channel]
        at = ring.index(t.src)
        assert ring[(at + 1) % n] == t.dst
        assert ring[(ring.index(root) - 1) % n] != t.src  # the chain ends there
    # pipelined: a chunk leaves a rank at the step after it arrived there
    arrived = {(t.dst, t.chunk): t.step for t in alg.transfers}
    for t in alg.transfers:
        if t.src != root:
            assert t.step == arrived[t.src, t.chunk] + 1


@pytest.mark.parametrize("root", [0, 3, 6])
def test_ring_reduce_is_nccls_chain(root):
    """From the rank after the root to the root, every hop reducing."""
    topo = load_topology("dgx1")
    alg = ring_algorithm(topo, Collective(REDUCE, 8, root=root))
    rings = find_rings(topo)
    sent = Counter((t.src, t.chunk) for t in alg.transfers)
    assert set(sent.values()) == {1} and {r for r, _ in sent} == set(range(8)) - {root}
    assert all(t.reduce for t in alg.transfers)
    for t in alg.transfers:
        ring = rings[t.channel]
        assert ring[(ring.index(root) + 1) % 8] != t.dst  # nobody sends to the chain's head


@pytest.mark.parametrize("kind", [GATHER, SCATTER])
def test_ring_gather_scatter_relay_along_the_ring(kind):
    topo = load_topology("dgx1")
    alg = ring_algorithm(topo, Collective(kind, 8, root=2))
    rings = find_rings(topo)
    for t in alg.transfers:
        ring = rings[t.channel]
        assert ring[(ring.index(t.src) + 1) % 8] == t.dst
    # the root's link carries the seven other blocks once each (per channel share)
    root_link = Counter(t.dst == 2 if kind == GATHER else t.src == 2 for t in alg.transfers)
    assert root_link[True] == 7 * alg.collective.chunkup


def test_rooted_tree_is_rooted_at_the_root():
    topo = load_topology("ndv2", 2)
    alg = tree_algorithm(topo, Collective(BROADCAST, 16, root=13))
    for parent in alg.meta["trees"]:
        assert parent[13] == -1 and parent.count(-1) == 1
        for r in range(16):  # every rank reaches the root
            seen = set()
            while r != 13:
                assert r not in seen
                seen.add(r)
                r = parent[r]


@pytest.mark.parametrize("kind", ROOTED_KINDS)
def test_milp_per_kind_on_a_small_builtin(kind):
    topo = load_topology("dgx1")
    coll = Collective(kind, 8, root=6)
    alg = staged_algorithm(topo, coll, size=1 << 30, time_limit=4)
    valid(alg, topo, coll)
    assert alg.name == "milp" and alg.meta["makespan"] > 0


def test_milp_broadcast_near_the_bound_at_1g():
    """At 1 GB a broadcast's trees must be pipelined over many chunks: the staged method
    reaches 90 % of the lower bound on DGX-1 (root 1, where every link is needed)."""
    from taccl_py.analysis.bounds import lower_bound
    from taccl_py.analysis.simulate import simulate
    from taccl_py.lowering.lower import LowerOptions, lower

    topo = load_topology("dgx1")
    coll = Collective(BROADCAST, 8, root=1)
    alg = staged_algorithm(topo, coll, size=1 << 30, time_limit=30)
    valid(alg, topo, coll)
    took = simulate(lower(alg, topo, LowerOptions()), topo, 1 << 30).time
    assert lower_bound(topo, BROADCAST, 1 << 30, root=1).time >= 0.9 * took


def test_milp_broadcast_two_nodes_beats_the_ring_model():
    """On two NDv2 nodes the ring crosses one NIC per node; the synthesized broadcast
    spreads the root's data over more connections (relaxed makespan against the
    root cut bound)."""
    topo = load_topology("ndv2", 2)
    coll = Collective(BROADCAST, 16, root=3)
    b = coll.chunk_bytes(1 << 30)
    routes = greedy_routes(topo, coll, b, candidates(topo, coll))
    assert routes and all(routes.values())
    assert relaxed_makespan(topo, coll, b, routes) * 1e6 >= floor_us(topo, coll, b) * (1 - 1e-9)
    alg = staged_algorithm(topo, coll, size=1 << 30, time_limit=8)
    valid(alg, topo, coll)


def test_greedy_spreads_a_broadcast_over_the_roots_links():
    """Every chunk leaves the root once in the best trees; the greedy routing keeps the
    root's busiest link far below one link per chunk."""
    topo = load_topology("dgx1")
    coll = Collective(BROADCAST, 8, 6, root=0)
    b = coll.chunk_bytes(1 << 30)
    routes = greedy_routes(topo, coll, b)
    on_root = Counter(e for es in routes.values() for e in es if e[0] == 0)
    assert len(on_root) == 4  # all of the root's links carry chunks
    assert relaxed_makespan(topo, coll, b, routes) < 1.3 * floor_us(topo, coll, b) / 1e6


def directed_ring(n: int) -> Topology:
    """One node, links i -> i+1 only (fast) and i+1 -> i (slow): not symmetric."""
    links = []
    for i in range(n):
        links.append(Link(i, (i + 1) % n, 50 * GB, 0.7 * US))
        links.append(Link((i + 1) % n, i, 10 * GB, 0.7 * US))
    return Topology("dring", n, 1, tuple(links))


@pytest.mark.parametrize("kind", [REDUCE, SCATTER])
def test_reverse_rooted_on_an_asymmetric_topology(kind):
    """The base collective is made on the reversed topology, so the reversed schedule
    uses only connections the real one has, and mostly its fast direction."""
    topo = directed_ring(5)
    mirror = reversed_topology(topo)
    assert mirror.resource_bandwidth["link:1->0"] == 50 * GB
    base_kind = BROADCAST if kind == REDUCE else GATHER
    base = staged_algorithm(mirror, Collective(base_kind, 5, root=2), size=1 << 24, time_limit=3)
    alg = reverse_rooted(base, topo, kind)
    valid(alg, topo, Collective(kind, 5, root=2))
    via_fast = sum(
        topo.resource_bandwidth[f"link:{t.src}->{t.dst}"] > 20 * GB for t in alg.transfers
    )
    assert via_fast > len(alg.transfers) / 2
    with pytest.raises(TacclError, match="from a"):
        reverse_rooted(base, topo, SCATTER if kind == REDUCE else REDUCE)


def test_milp_reduce_refuses_a_sketch():
    topo = load_topology("dgx1")
    with pytest.raises(SketchError, match="does not apply to reduce"):
        synthesize(
            topo,
            Collective(REDUCE, 8, root=1),
            "milp",
            SynthOptions(sketch=default_sketch(topo), time_limit=2),
        )


def switch3() -> Topology:
    from taccl_py.topology.model import Switch

    return Topology("sw3", 3, 1, switches=(Switch("sw", 0, (0, 1, 2), 50 * GB, 0.7 * US),))


@pytest.mark.parametrize("kind", ROOTED_KINDS)
def test_smt_rooted_on_a_tiny_topology(kind):
    topo = switch3()
    coll = Collective(kind, 3, root=1)
    alg = synthesize(topo, coll, "smt", SynthOptions(time_limit=20, chunks=2))
    valid(alg, topo, coll)
    # a round moves one chunk per port: every other rank's in-port takes all 3 blocks
    # (broadcast; reduce: the root's in-port), the root's port the 2 other blocks
    # (gather, scatter): R/C >= 3 or 2, which a finite number of steps cannot reach
    low = 3 if kind in (BROADCAST, REDUCE) else 2
    assert least_rounds_per_chunk(topo, kind, root=1) == pytest.approx(low)
    assert alg.meta["rounds"] / alg.meta["chunks"] >= low


def test_methods_accept_rooted_and_refuse_unsupported_in_one_line():
    topo = load_topology("dgx1")
    for method in ("ring", "direct", "tree"):
        valid(
            synthesize(topo, Collective(SCATTER, 8, root=7), method),
            topo,
            Collective(SCATTER, 8, root=7),
        )
    with pytest.raises(TacclError) as err:
        synthesize(topo, Collective("allgather", 8), "tree")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["allgather", "alltoall", "broadcast", "gather"])
def test_smt_on_one_rank_is_the_empty_algorithm(kind):
    from taccl_py.topology.model import FULL_BISECTION, Switch, Topology

    one = Topology("host1", 1, 1, (), (Switch("host", 0, (0,), 1e10, 1e-6),), (), FULL_BISECTION)
    alg = synthesize(one, Collective(kind, 1), "smt")
    alg.check()
    assert alg.transfers == [] and alg.num_ranks == 1
