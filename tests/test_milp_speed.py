"""Method milp's speed-ups (issue 17): bound-met warm starts, one relay per shared NIC,
and the time limit as a deadline for the whole search. Speed itself is measured in
BENCHMARKS.md ("Solve speed"), not here."""

from __future__ import annotations

import time

import pytest

from taccl_py.analysis.bounds import lower_bound
from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.lowering.lower import lower
from taccl_py.plan.verify import verify
from taccl_py.synth.methods import SynthOptions
from taccl_py.synth.milp.decompose import nic_relays, node_trees, relays
from taccl_py.synth.milp.ordering import TimeUp, make_sends, order
from taccl_py.synth.milp.routing import GAP, floor_us, route
from taccl_py.synth.milp.schedule import schedule
from taccl_py.synth.milp.search import _algorithm, staged_algorithm
from taccl_py.synth.milp.sketch import default_sketch, parse_sketch
from taccl_py.topology.loader import load_topology

GB = 1 << 30


def test_bound_met_warm_start_is_taken_without_a_solve_and_verifies():
    topo = load_topology("ndv2", 2)
    coll = Collective("allgather", topo.num_ranks, 2)
    b = coll.chunk_bytes(GB)
    routes = route(topo, coll, b, time_limit=30, sketch=default_sketch(topo))
    assert routes.num_binaries == 0 and routes.optimal  # no MILP was built
    assert routes.makespan * 1e6 <= floor_us(topo, coll, b) * (1 + GAP)
    sched = schedule(topo, order(make_sends(topo, routes)))
    plan = lower(_algorithm(topo, sched, routes, GB), topology=topo)
    assert verify(plan).sends == coll.num_chunks * (topo.num_ranks - 1)


def test_routing_stops_at_the_gap():
    topo = load_topology("dgx1")
    coll = Collective("allgather", 8, 6)
    routes = route(topo, coll, coll.chunk_bytes(GB), time_limit=60, sketch=default_sketch(topo))
    assert routes.optimal and routes.gap is not None and routes.gap <= GAP


def test_one_relay_per_shared_nic():
    topo = load_topology("ndv2", 2)
    sketch = default_sketch(topo)
    trees, _ = node_trees(topo, GB / 16, time_limit=10)
    carriers = relays(topo, sketch, trees)
    shared = nic_relays(topo, sketch, trees, carriers)
    assert len({r for r, _ in carriers.values()}) == 8  # every GPU its own relay
    assert shared is not None and len(set(shared.values())) == 1
    h100 = load_topology("dgx-h100", 2)  # a NIC per GPU: nothing to change
    trees, _ = node_trees(h100, GB / 16, time_limit=10)
    sketch = default_sketch(h100)
    assert nic_relays(h100, sketch, trees, relays(h100, sketch, trees)) is None


def test_ordering_raises_past_its_deadline():
    topo = load_topology("ndv2", 2)
    coll = Collective("allgather", topo.num_ranks, 2)
    routes = route(topo, coll, coll.chunk_bytes(GB), time_limit=10, sketch=default_sketch(topo))
    with pytest.raises(TimeUp):
        order(make_sends(topo, routes), deadline=time.monotonic() - 1)


def test_time_limit_bounds_a_search_that_would_run_long():
    """Chunk-up 64 on 2 x DGX-2 ordered for ~100 s before the deadline covered it."""
    topo = load_topology("dgx2", 2)
    sketch = parse_sketch("chunkup: [64]", topo)
    began = time.monotonic()
    result = build_plan(
        topo,
        Collective("allgather", topo.num_ranks),
        "milp",
        synth=SynthOptions(size=GB, time_limit=2, sketch=sketch),
    )
    assert time.monotonic() - began < 2 + 20  # + baselines, lowering, verification
    assert result.report.sends > 0  # a verified plan (the best baseline here)


def test_staged_search_keeps_its_deadline():
    topo = load_topology("dgx2", 2)
    sketch = parse_sketch("chunkup: [16]", topo)
    began = time.monotonic()
    try:
        staged_algorithm(
            topo, Collective("allgather", topo.num_ranks), size=GB, time_limit=3, sketch=sketch
        )
    except TacclError as exc:  # nothing found in time is allowed, overrunning is not
        assert "no routing" in str(exc)
    assert time.monotonic() - began < 3 + 5


def test_ndv2_2x8_allgather_reaches_98_percent_of_the_bound():
    topo = load_topology("ndv2", 2)
    result = build_plan(
        topo, Collective("allgather", topo.num_ranks), "milp", synth=SynthOptions(size=GB)
    )
    t = simulate(result.plan, topo, GB).time
    assert lower_bound(topo, "allgather", GB).time / t >= 0.98
