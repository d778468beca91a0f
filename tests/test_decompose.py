"""Decomposed AllGather (one node solved, composed, replicated by node shifts)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from taccl_py.analysis.report import ring_plan
from taccl_py.analysis.simulate import simulate
from taccl_py.collectives import ALLGATHER, Collective
from taccl_py.ir.algorithm import Algorithm
from taccl_py.lowering.lower import lower
from taccl_py.plan.verify import verify
from taccl_py.synth.milp.decompose import bundle_sizes, decompose, fanouts, node_trees, relays
from taccl_py.synth.milp.ordering import order
from taccl_py.synth.milp.schedule import schedule
from taccl_py.synth.milp.search import decomposed_algorithm
from taccl_py.synth.milp.sketch import default_sketch
from taccl_py.topology.loader import load_topology

GIB = 1 << 30
CASES = [("dgx-h100", 2), ("ndv2", 2), ("dgx-a100", 4)]


def _decompositions(name: str, nodes: int, chunkup: int = 1):
    topo = load_topology(name, nodes)
    coll = Collective(ALLGATHER, topo.num_ranks, chunkup)
    trees, optimal = node_trees(topo, coll.chunk_bytes(GIB), time_limit=5)
    assert optimal
    carriers = relays(topo, default_sketch(topo), trees)
    return topo, [
        decompose(topo, coll, coll.chunk_bytes(GIB), trees, carriers, f) for f in fanouts(nodes)
    ]


@pytest.mark.parametrize("name,nodes", CASES)
def test_routes_are_out_trees_to_every_rank(name, nodes):
    topo, decs = _decompositions(name, nodes, chunkup=2)
    for dec in decs:
        routes = dec.full_routes()
        assert len(routes.edges) == dec.collective.num_chunks
        for c, edges in routes.edges.items():
            src = dec.collective.precondition(c)[0]
            into = [v for _, v in edges]
            assert sorted(into) == sorted(set(range(topo.num_ranks)) - {src})
            assert all(e in topo.connections for e in edges)
            reached, grew = {src}, True
            while grew:  # every edge leaves a rank the chunk already reached
                grew = False
                for u, v in edges:
                    if u in reached and v not in reached:
                        reached.add(v)
                        grew = True
            assert len(reached) == topo.num_ranks


@pytest.mark.parametrize("name,nodes", CASES)
def test_routes_are_node_shifts_of_node_zero(name, nodes):
    topo, decs = _decompositions(name, nodes)
    g = topo.gpus_per_node
    for dec in decs:
        edges = dec.full_routes().edges
        for k in range(1, nodes):
            for c in range(g):
                moved = sorted(
                    ((u + k * g) % topo.num_ranks, (v + k * g) % topo.num_ranks)
                    for u, v in edges[c]
                )
                assert edges[c + k * g] == moved


def test_quotient_sends_are_one_node_share():
    topo, decs = _decompositions("dgx-a100", 4, chunkup=2)
    for dec in decs:
        sends = dec.sends()
        assert len(sends) * topo.nodes == sum(map(len, dec.full_routes().edges.values()))
        assert all(s.src < topo.gpus_per_node for s in sends)
        assert all(s.pred is None or s.pred < i for i, s in enumerate(sends))


@pytest.mark.parametrize("name,nodes", CASES)
def test_decomposed_plan_verifies_and_beats_ring(name, nodes):
    topo = load_topology(name, nodes)
    sketch = replace(default_sketch(topo), chunkup=(2,))

    def judge(alg):
        return simulate(lower(alg, topology=topo), topo, GIB).time

    alg, scores = decomposed_algorithm(
        topo,
        Collective(ALLGATHER, topo.num_ranks),
        size=GIB,
        sketch=sketch,
        time_limit=10,
        judge=judge,
    )
    assert alg is not None and scores
    plan = lower(alg, topology=topo)
    verify(plan)
    ring = simulate(ring_plan(topo, ALLGATHER), topo, GIB).time
    assert simulate(plan, topo, GIB).time <= ring


def test_bundle_sizes_shrink_to_one_chunk_and_nest():
    topo = load_topology("dgx-h100", 8)
    coll = Collective(ALLGATHER, topo.num_ranks)
    trees, _ = node_trees(topo, coll.chunk_bytes(GIB), time_limit=5)
    carriers = relays(topo, default_sketch(topo), trees)
    for chunkup in range(1, 7):
        sizes = bundle_sizes(
            topo, chunkup, coll.with_chunkup(chunkup).chunk_bytes(GIB), trees, carriers
        )
        assert len(sizes) == topo.nodes - 1 and sizes[-1] == 1
        for a, b in zip(sizes, sizes[1:]):  # a route's later hops split its earlier ones
            assert a == chunkup or (a >= b and a % b == 0)
    assert sizes[0] == 6  # early hops carry a source's chunks at once


@pytest.mark.parametrize("fanout", [3, 1])
def test_bundled_schedule_is_the_simulated_time(fanout):
    """Bundled network hops expand to every chunk's hops, and the schedule's makespan
    (each of a rank's sends on a resource waiting for the previous one's arrival) is
    exactly the lowered plan's simulated time."""
    topo = load_topology("dgx-h100", 4)
    coll = Collective(ALLGATHER, topo.num_ranks, 4)
    trees, _ = node_trees(topo, coll.chunk_bytes(GIB), time_limit=5)
    carriers = relays(topo, default_sketch(topo), trees)
    dec = decompose(topo, coll, coll.chunk_bytes(GIB), trees, carriers, fanout, (4, 2, 1))
    sends = dec.sends()
    assert sorted({s.count for s in sends}) == [1, 2, 4]
    sched = schedule(topo, order(sends))
    transfers = dec.transfers(sched)
    assert sorted((t.chunk, t.src, t.dst) for t in transfers) == sorted(
        (c, u, v) for c, es in dec.full_routes().edges.items() for u, v in es
    )
    plan = lower(Algorithm("milp", coll, transfers, topo.label, GIB, {}), topology=topo)
    verify(plan)
    assert simulate(plan, topo, GIB).time == pytest.approx(sched.makespan, rel=1e-9)


def test_equal_fanouts_collapse_only_when_the_schedule_is_exact():
    from taccl_py.synth.milp.search import kept_fanouts

    best = {7: 1.0, 4: 1.0, 2: 1.005, 1: 1.2}
    assert kept_fanouts([7, 4, 2, 1], best, exact=True) == [7, 2]
    assert kept_fanouts([7, 4, 2, 1], best, exact=False) == [7, 4, 2]
    assert kept_fanouts([4, 2], {4: 2.0}, exact=False) == [4]  # untried fan-outs drop
