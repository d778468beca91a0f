"""Lowering keeps a schedule's timing: the lowered plan simulates at the schedule's makespan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from taccl_py.analysis.simulate import simulate
from taccl_py.collectives import Collective
from taccl_py.lowering.lower import lower
from taccl_py.plan.verify import verify
from taccl_py.synth.milp.ordering import descendants, make_sends, order
from taccl_py.synth.milp.routing import route
from taccl_py.synth.milp.schedule import schedule
from taccl_py.synth.milp.search import _algorithm
from taccl_py.synth.milp.sketch import default_sketch
from taccl_py.topology.loader import load_topology

from .test_staged import two_by_four

SIZE = 1 << 30


def scheduled(topo, kind: str, chunkup: int, by_descendants: bool):
    coll = Collective(kind, topo.num_ranks, chunkup)
    routes = route(topo, coll, coll.chunk_bytes(SIZE), time_limit=5)
    sends = make_sends(topo, routes)
    sched = schedule(topo, order(sends, prio=descendants(sends) if by_descendants else None))
    return _algorithm(topo, sched, routes, SIZE)


@pytest.mark.parametrize(
    "name,kind,chunkup,by_desc",
    [
        ("dgx1", "allgather", 2, False),
        ("dgx1", "allgather", 2, True),
        ("dgx1", "alltoall", 1, False),
        ("2x4", "allgather", 2, False),
        ("2x4", "alltoall", 2, True),
    ],
)
def test_plan_simulates_at_schedule_makespan(name, kind, chunkup, by_desc):
    topo = two_by_four() if name == "2x4" else load_topology(name)
    alg = scheduled(topo, kind, chunkup, by_desc)
    plan = lower(alg, topology=topo)
    verify(plan)
    got = simulate(plan, topo, SIZE).time
    assert got == pytest.approx(alg.meta["makespan"], rel=1e-9)


def test_without_topology_pairing_can_delay_the_schedule():
    """The check has teeth: pairing by forwards alone is slower on this schedule."""
    topo = load_topology("dgx1")
    alg = scheduled(topo, "allgather", 2, False)
    paired = simulate(lower(alg), topo, SIZE).time
    assert paired > alg.meta["makespan"] * (1 + 1e-6)


def test_merging_on_network_links_pays_alpha_once():
    topo = two_by_four()
    size = 64 << 10  # α-dominated: merging must help
    coll = Collective("allgather", topo.num_ranks, 4)
    # each rank sends its own 4 consecutive chunks across, all to its peer on the other
    # node, so every network connection carries chunks that can merge. Without the sketch
    # the routing depends on how far HiGHS gets in its time limit: the bound-tightened
    # MILP can find (on a fast machine, within 5 s) a routing that spreads a rank's
    # chunks over several peers, where no two consecutive chunks share a connection.
    sketch = replace(
        default_sketch(topo),
        relays={u: (u,) for u in range(8)},
        inter_node=frozenset((u, (u + 4) % 8) for u in range(8)),
    )
    routes = route(topo, coll, coll.chunk_bytes(size), time_limit=5, sketch=sketch)
    assert routes.optimal  # solved, not cut off: the same routing on any machine
    o = order(make_sends(topo, routes))
    merged, plain = schedule(topo, o), schedule(topo, o, merge=False)
    assert any(len(g) > 1 for g in merged.groups)
    assert merged.makespan < plain.makespan
    for g in merged.groups:  # a group is consecutive chunks on one network connection
        first = o.sends[g[0]]
        assert all(o.sends[i].conn == first.conn for i in g)
        assert [o.sends[i].chunk for i in g] == list(range(first.chunk, first.chunk + len(g)))
    alg = _algorithm(topo, merged, routes, size)
    plan = lower(alg, topology=topo)
    verify(plan)
    assert any(st.cnt > 1 for g in plan.gpus for tb in g.tbs for st in tb.steps)
    assert simulate(plan, topo, size).time == pytest.approx(merged.makespan, rel=1e-9)


def test_milp_plan_is_byte_identical_when_the_solver_finishes():
    from dataclasses import replace

    from taccl_py.build.pipeline import build_plan
    from taccl_py.plan.xml import plan_to_xml
    from taccl_py.synth.methods import SynthOptions
    from taccl_py.synth.milp.sketch import default_sketch

    topo = two_by_four()
    sketch = replace(default_sketch(topo), chunkup=(1, 2))
    coll = Collective("allgather", topo.num_ranks)
    plans = [
        build_plan(
            topo, coll, "milp", synth=SynthOptions(size=1 << 20, time_limit=20, sketch=sketch)
        )
        for _ in range(2)
    ]
    assert all(p.algorithm.meta["routing_optimal"] for p in plans)
    assert plan_to_xml(plans[0].plan) == plan_to_xml(plans[1].plan)
