"""Timing simulator: closed-form ring times, contention on shared ports and NICs, errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taccl_py.analysis.simulate import simulate
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.plan.model import GpuPlan, Plan, Step, Threadblock
from taccl_py.plan.verify import verify
from taccl_py.plan.xml import parse_plan
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import Link, Nic, Switch, Topology

EXTERNAL = Path(__file__).parent / "fixtures" / "external"
GB = 1e9
US = 1e-6


# -- builders --------------------------------------------------------------------------------


def switch_topology(n: int, bandwidth: float = 100 * GB, alpha: float = 1 * US) -> Topology:
    return Topology(
        "sw",
        gpus_per_node=n,
        nodes=1,
        switches=(Switch("n0.sw", 0, tuple(range(n)), bandwidth, alpha),),
    )


def step(i: int, typ: str, **kw) -> Step:
    return Step(s=i, type=typ, **kw)


def ring_plan(n: int, kind: str) -> Plan:
    """Ring on ranks 0..n-1 (rank r sends to r+1), one chunk per rank, one tb per rank.

    AllGather and AllReduce run in place, ReduceScatter out of place.
    """
    inplace = kind != "reducescatter"
    buf = "o" if kind == "allgather" else "i"
    gpus = []
    for r in range(n):
        if kind == "allgather":  # send own chunk, then forward chunk r-j
            plan = (
                [("s", r)] + [("rcs", (r - j) % n) for j in range(1, n - 1)] + [("r", (r + 1) % n)]
            )
        else:  # reduce chunk r-1-j on its way round; rank r finishes chunk r
            plan = [("s", (r - 1) % n)] + [("rrs", (r - 1 - j) % n) for j in range(1, n - 1)]
            if kind == "reducescatter":
                plan.append(("rrc", r))
            else:
                plan += (
                    [("rrcs", r)]
                    + [("rcs", (r - j) % n) for j in range(1, n - 1)]
                    + [("r", (r + 1) % n)]
                )
        steps = [
            step(i, t, srcbuf=buf, srcoff=c, dstbuf=buf, dstoff=c) for i, (t, c) in enumerate(plan)
        ]
        if kind == "reducescatter":
            steps[-1].dstbuf, steps[-1].dstoff = "o", 0
        i_chunks, o_chunks = {"allgather": (0, n), "reducescatter": (n, 1), "allreduce": (n, 0)}[
            kind
        ]
        gpus.append(
            GpuPlan(
                r,
                i_chunks,
                o_chunks,
                tbs=[Threadblock(0, send=(r + 1) % n, recv=(r - 1) % n, steps=steps)],
            )
        )
    return Plan(
        f"ring-{kind}-{n}",
        kind,
        n,
        n,
        inplace=inplace,
        outofplace=not inplace,
        redop="nop" if kind == "allgather" else "sum",
        gpus=gpus,
    )


def plan_of(n: int, tbs: dict[int, list[Threadblock]], nchunks: int = 1) -> Plan:
    return Plan(
        "hand",
        "alltoall",
        n,
        nchunks,
        gpus=[GpuPlan(r, nchunks, nchunks, tbs=tbs.get(r, [])) for r in range(n)],
    )


def sender(peer: int, cnt: int = 1, chan: int = 0, tid: int = 0) -> Threadblock:
    return Threadblock(tid, send=peer, chan=chan, steps=[step(0, "s", cnt=cnt)])


def receiver(peer: int, cnt: int = 1, chan: int = 0, tid: int = 0) -> Threadblock:
    return Threadblock(tid, recv=peer, chan=chan, steps=[step(0, "r", cnt=cnt)])


# -- closed forms ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("size", [1024, 1 << 20, 1 << 30])
@pytest.mark.parametrize("alpha", [0.0, 0.7 * US, 5 * US])
@pytest.mark.parametrize("kind", ["allgather", "reducescatter"])
def test_ring_allgather_and_reducescatter(n, size, alpha, kind):
    bw = 50 * GB
    res = simulate(ring_plan(n, kind), switch_topology(n, bw, alpha), size)
    expect = (n - 1) * alpha + (n - 1) / n * size / bw
    assert res.time == pytest.approx(expect, rel=1e-12)
    assert res.rank_finish == pytest.approx([expect] * n, rel=1e-12)
    assert res.algbw == pytest.approx(size / expect, rel=1e-12)


@pytest.mark.parametrize("n", [2, 5, 8, 32])
@pytest.mark.parametrize("alpha", [0.0, 2 * US])
def test_ring_allreduce(n, alpha):
    size, bw = 1 << 28, 125 * GB
    res = simulate(ring_plan(n, "allreduce"), switch_topology(n, bw, alpha), size)
    assert res.time == pytest.approx(2 * (n - 1) * alpha + 2 * (n - 1) / n * size / bw, rel=1e-12)


def test_chunk_bytes_follow_nchunksperloop():
    plan = plan_of(2, {0: [sender(1, cnt=3)], 1: [receiver(0, cnt=3)]}, nchunks=8)
    res = simulate(plan, switch_topology(2, 10 * GB, 1 * US), 8000, trace=True)
    assert res.time == pytest.approx(1 * US + 3000 / (10 * GB))
    assert [e.bytes for e in res.trace] == [3000, 3000]


def test_resource_busy_sums_bytes_over_bandwidth():
    n, size, bw = 6, 6 << 20, 40 * GB
    res = simulate(ring_plan(n, "allreduce"), switch_topology(n, bw), size)
    per_port = 2 * (n - 1) * (size / n) / bw
    assert set(res.resource_busy) == {f"sw{d}:{r}" for d in ("out", "in") for r in range(n)}
    assert all(b == pytest.approx(per_port) for b in res.resource_busy.values())
    assert sum(e - s for iv in res.intervals.values() for s, e in iv) == pytest.approx(
        sum(res.resource_busy.values())
    )


# -- contention ------------------------------------------------------------------------------


def test_two_senders_serialize_on_switch_in_port():
    alpha, bw, size = 2 * US, 10 * GB, 1 << 20
    plan = plan_of(3, {0: [sender(2)], 1: [sender(2)], 2: [receiver(0, tid=0), receiver(1, tid=1)]})
    res = simulate(plan, switch_topology(3, bw, alpha), size)
    assert res.time == pytest.approx(alpha + 2 * size / bw)
    b = size / bw
    assert [t for iv in res.intervals["swin:2"] for t in iv] == pytest.approx([0, b, b, 2 * b])


def test_sends_on_different_links_run_in_parallel():
    alpha, bw, size = 2 * US, 10 * GB, 1 << 20
    topo = Topology(
        "pairs", gpus_per_node=4, nodes=1, links=(Link(0, 1, bw, alpha), Link(2, 3, bw, alpha))
    )
    plan = plan_of(4, {0: [sender(1)], 1: [receiver(0)], 2: [sender(3)], 3: [receiver(2)]})
    assert simulate(plan, topo, size).time == pytest.approx(alpha + size / bw)


def test_alpha_is_latency_not_occupancy():
    """Two channels on one link: α once each, bandwidth back to back."""
    alpha, bw, size = 3 * US, 10 * GB, 1 << 20
    topo = Topology("one", gpus_per_node=2, nodes=1, links=(Link(0, 1, bw, alpha),))
    plan = plan_of(
        2,
        {
            0: [sender(1, chan=0, tid=0), sender(1, chan=1, tid=1)],
            1: [receiver(0, chan=0, tid=0), receiver(0, chan=1, tid=1)],
        },
    )
    assert simulate(plan, topo, size).time == pytest.approx(alpha + 2 * size / bw)


def test_shared_nic_serializes_inter_node_sends():
    alpha, bw, size = 5 * US, 12.5 * GB, 1 << 22
    topo = Topology(
        "nic",
        gpus_per_node=2,
        nodes=2,
        nics=(Nic("n0.nic0", 0, 0, (0, 1), bw, alpha), Nic("n1.nic0", 1, 0, (2, 3), bw, alpha)),
    )
    plan = plan_of(4, {0: [sender(2)], 1: [sender(3)], 2: [receiver(0)], 3: [receiver(1)]})
    res = simulate(plan, topo, size)
    assert res.time == pytest.approx(alpha + 2 * size / bw)
    assert res.resource_busy["nicout:n0.nic0"] == pytest.approx(2 * size / bw)
    assert res.rank_finish == pytest.approx([alpha + size / bw, alpha + 2 * size / bw] * 2)


def test_rank_finish_asymmetric_with_dependency():
    alpha, bw, size = 1 * US, 10 * GB, 1 << 20
    b = size / bw
    forward = Threadblock(1, send=2, steps=[step(0, "s", cnt=2, depid=0, deps=0)])
    plan = plan_of(4, {0: [sender(1)], 1: [receiver(0), forward], 2: [receiver(1, cnt=2)]})
    res = simulate(plan, switch_topology(4, bw, alpha), size, trace=True)
    assert res.rank_finish == pytest.approx([alpha + b, 2 * alpha + 3 * b, 2 * alpha + 3 * b, 0.0])
    assert res.time == pytest.approx(2 * alpha + 3 * b)
    fwd = next(e for e in res.trace if e.rank == 1 and e.tb == 1)
    assert (fwd.type, fwd.peer, fwd.resources) == ("s", 2, ("swout:1", "swin:2"))
    assert (fwd.start, fwd.end) == pytest.approx((alpha + b, 2 * alpha + 3 * b))


# -- errors ----------------------------------------------------------------------------------


def test_missing_connection_is_one_line_error():
    topo = Topology("oneway", gpus_per_node=2, nodes=1, links=(Link(0, 1, GB, US),))
    plan = plan_of(2, {1: [sender(0)], 0: [receiver(1)]})
    with pytest.raises(TacclError, match=r"plan sends 1 -> 0 but oneway has no direct") as exc:
        simulate(plan, topo, 1024)
    assert "\n" not in str(exc.value)


def test_rank_count_mismatch():
    with pytest.raises(TacclError, match=r"4 ranks.*sw has 3"):
        simulate(ring_plan(4, "allgather"), switch_topology(3), 1024)


def test_deadlock_names_stuck_step():
    both_wait = [
        Threadblock(0, send=1 - r, recv=1 - r, steps=[step(0, "r"), step(1, "s")]) for r in range(2)
    ]
    plan = plan_of(2, {0: [both_wait[0]], 1: [both_wait[1]]})
    with pytest.raises(
        TacclError,
        match=r"deadlock: rank 0 tb 0 step 0 \(r\) waits for "
        r"receive #0 from rank 1",
    ):
        simulate(plan, switch_topology(2), 1024)


def test_deadlock_on_dependency_cycle():
    cycle = [Threadblock(t, steps=[step(0, "nop", depid=1 - t, deps=0)]) for t in range(2)]
    with pytest.raises(
        TacclError,
        match=r"rank 0 tb 0 step 0 \(nop\) waits for its "
        r"dependency tb 1 step 0",
    ):
        simulate(plan_of(2, {0: cycle}), switch_topology(2), 1024)


# -- plans from the pipeline and from other tools ---------------------------------------------


def test_pipeline_ring_allgather_on_dgx2():
    from taccl_py.build.pipeline import build_plan

    topo = load_topology("dgx2")
    plan = build_plan(topo, Collective("allgather", 16), "ring").plan
    conn = topo.connection(0, 1)
    size = 1 << 30
    res = simulate(plan, topo, size)
    assert res.time == pytest.approx(
        15 * conn.alpha + 15 / 16 * size / topo.bandwidth(conn), rel=1e-12
    )


@pytest.mark.parametrize("path", sorted(EXTERNAL.glob("*.xml")), ids=lambda p: p.stem)
def test_external_fixtures_simulate(path: Path):
    plan = parse_plan(path)
    res = simulate(plan, switch_topology(plan.ngpus), 1 << 24, trace=True)
    steps = sum(len(tb.steps) for g in plan.gpus for tb in g.tbs)
    assert res.time > 0 and len(res.trace) == steps


def test_hand_ring_plans_verify():
    for kind in ("allgather", "reducescatter", "allreduce"):
        verify(ring_plan(5, kind))


@pytest.mark.parametrize("n, kind, limit", [(32, "allreduce", 0.5), (256, "allgather", 5.0)])
def test_speed(n, kind, limit):
    plan, topo = ring_plan(n, kind), switch_topology(n)
    assert topo.connections  # built once per topology; not simulation time
    t0 = time.perf_counter()
    res = simulate(plan, topo, 1 << 30)
    assert time.perf_counter() - t0 < limit
    rounds = (2 if kind == "allreduce" else 1) * (n - 1)
    assert res.time == pytest.approx(rounds * (US + (1 << 30) / n / (100 * GB)), rel=1e-9)


# -- rooted collectives ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("kind", ["broadcast", "reduce", "gather", "scatter"])
def test_direct_rooted_plans_on_a_switch(n, kind):
    """Every transfer goes through the root's one switch port, back to back: the call takes
    the root port's load plus one α (gather/scatter: N−1 blocks of size/N; broadcast and
    reduce: the whole buffer to or from each of the N−1 others)."""
    from taccl_py.analysis.simulate import bus_factor
    from taccl_py.build.pipeline import build_plan

    bw, alpha, size, root = 50 * GB, 0.7 * US, 1 << 24, n - 1
    plan = build_plan(switch_topology(n, bw, alpha), Collective(kind, n, root=root), "direct").plan
    res = simulate(plan, switch_topology(n, bw, alpha), size)
    load = (n - 1) * size / bw * (1 / n if kind in ("gather", "scatter") else 1)
    assert res.time == pytest.approx(load + alpha, rel=1e-12)
    port = f"sw{'in' if kind in ('gather', 'reduce') else 'out'}:{root}"
    assert res.resource_busy[port] == pytest.approx(load, rel=1e-12)
    if kind in ("gather", "reduce"):  # the root finishes last; the first sender after one hop
        assert res.rank_finish[root] == res.time
        others = [t for r, t in enumerate(res.rank_finish) if r != root]
        assert min(others) == pytest.approx(load / (n - 1) + alpha, rel=1e-12)
    factor = (n - 1) / n if kind in ("gather", "scatter") else 1.0
    assert bus_factor(kind, n) == pytest.approx(factor)
    assert res.busbw == pytest.approx(size / res.time * factor, rel=1e-12)


def test_bus_factors_follow_nccl_tests():
    from taccl_py.analysis.simulate import bus_factor

    assert bus_factor("allreduce", 4) == 1.5
    assert [bus_factor(k, 4) for k in ("allgather", "reducescatter", "alltoall")] == [0.75] * 3
    assert bus_factor("bcast", 1) == 1.0 and bus_factor("gather", 1) == 0.0
    res = simulate(ring_plan(4, "allreduce"), switch_topology(4), 1 << 20)
    assert res.busbw == pytest.approx(1.5 * res.algbw)
