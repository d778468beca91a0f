"""Lowering IR -> plan: hand-built algorithms with known structure, plus random IR."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.collectives import KINDS, Collective
from taccl_py.errors import AlgorithmError, PlanError
from taccl_py.ir.algorithm import Algorithm, Transfer
from taccl_py.lowering.lower import LowerOptions, _spread, lower
from taccl_py.plan.model import Plan
from taccl_py.plan.verify import WRITES_DST, verify
from taccl_py.plan.xml import parse_plan, plan_to_xml
from taccl_py.runtime.reference import check_reference

# -- helpers --------------------------------------------------------------------------------


def _steps(plan: Plan):
    for g in plan.gpus:
        for tb in g.tbs:
            for st_ in tb.steps:
                yield g, tb, st_


def _types(plan: Plan, rank: int | None = None) -> Counter:
    return Counter(s.type for g, _, s in _steps(plan) if rank is None or g.id == rank)


def _check_structure(plan: Plan) -> None:
    """Facts every lowered plan has, beyond what the verifier checks."""
    targets = set()
    for g in plan.gpus:
        for role in ("send", "recv"):
            used = [(tb.chan, getattr(tb, role)) for tb in g.tbs if getattr(tb, role) >= 0]
            assert len(used) == len(set(used)), f"rank {g.id}: two tbs {role} on one connection"
        scratch_end = 0
        for tb in g.tbs:
            for i, s in enumerate(tb.steps):
                assert s.s == i and 1 <= s.cnt <= 71
                if s.depid >= 0:
                    targets.add((g.id, s.depid, s.deps))
                if s.type == "nop":
                    assert s.depid >= 0
                if s.type in WRITES_DST:
                    assert plan.inplace or s.dstbuf != "i", "out-of-place plan writes its input"
                for buf, off in ((s.srcbuf, s.srcoff), (s.dstbuf, s.dstoff)):
                    if buf == "s":
                        scratch_end = max(scratch_end, off + s.cnt)
        assert g.s_chunks == scratch_end, f"rank {g.id}: s_chunks {g.s_chunks} != {scratch_end}"
    flagged = {(g.id, tb.id, s.s) for g, tb, s in _steps(plan) if s.hasdep}
    assert flagged == targets


def _lowered(alg: Algorithm, **kwargs) -> Plan:
    plan = lower(alg, options=LowerOptions(**kwargs))
    verify(plan)
    check_reference(plan)
    _check_structure(plan)
    assert parse_plan(plan_to_xml(plan)) == plan
    return plan


def _ring_allgather(n: int, chunkup: int = 1, inplace: bool = False) -> Algorithm:
    coll = Collective("allgather", n, chunkup, inplace)
    ts = [
        Transfer(s, float(s), (b + s) % n, (b + s + 1) % n, b * chunkup + j)
        for b in range(n)
        for s in range(n - 1)
        for j in range(chunkup)
    ]
    return Algorithm("ring-ag", coll, ts)


def _ring_allreduce(n: int, inplace: bool = False) -> Algorithm:
    """Reduce-scatter then allgather on the ring 0 -> 1 -> ... ; block x ends reduced on x."""
    coll = Collective("allreduce", n, 1, inplace)
    ts = []
    for x in range(n):
        for s in range(n - 1):  # x+1 starts, x finishes the reduction
            ts.append(Transfer(s, float(s), (x + 1 + s) % n, (x + 2 + s) % n, x, True))
        for s in range(n - 1):
            ts.append(Transfer(n - 1 + s, float(n - 1 + s), (x + s) % n, (x + s + 1) % n, x))
    return Algorithm("ring-ar", coll, ts)


# -- hand-built algorithms -------------------------------------------------------------------


def test_ring_allgather_chunkup2_fuses_and_merges():
    plan = _lowered(_ring_allgather(4, chunkup=2))
    assert plan.coll == "allgather" and plan.nchunksperloop == 8 and plan.redop == "nop"
    for g in plan.gpus:
        assert (g.i_chunks, g.o_chunks, g.s_chunks) == (2, 8, 0)
        (tb,) = g.tbs
        assert (tb.send, tb.recv) == ((g.id + 1) % 4, (g.id - 1) % 4)
        assert [(s.type, s.cnt) for s in tb.steps] == [
            ("cpy", 2),
            ("s", 2),
            ("rcs", 2),
            ("rcs", 2),
            ("r", 2),
        ]
        assert (tb.steps[0].srcbuf, tb.steps[0].dstbuf, tb.steps[0].dstoff) == ("i", "o", 2 * g.id)
        assert all(s.depid == -1 for s in tb.steps)


def test_relay_alltoall_uses_scratch_only_on_the_relay():
    # ranks 0..3; rank 0's data for 2 and 3 goes through relay 1, everything else is direct
    coll = Collective("alltoall", 4, 1)
    ts = [
        Transfer(0, 0.0, 0, 1, 0 * 4 + 2),
        Transfer(1, 1.0, 1, 2, 0 * 4 + 2),
        Transfer(0, 0.0, 0, 1, 0 * 4 + 3),
        Transfer(1, 1.0, 1, 3, 0 * 4 + 3),
    ]
    ts += [
        Transfer(0, 0.0, s, d, s * 4 + d)
        for s in range(4)
        for d in range(4)
        if s != d and not (s == 0 and d in (2, 3))
    ]
    plan = _lowered(Algorithm("relay-a2a", coll, ts))
    assert [g.s_chunks for g in plan.gpus] == [0, 2, 0, 0]
    relay = plan.gpus[1]
    fused = [(tb, s) for tb in relay.tbs for s in tb.steps if s.type == "rcs"]
    assert fused and all(s.dstbuf == "s" for _, s in fused)
    assert all(tb.recv == 0 for tb, _ in fused)
    # every rank copies its own block from input to output
    assert all(_types(plan, r)["cpy"] == 1 for r in range(4))


def test_ring_alltoall_relays_share_one_scratch_sink():
    # chunk s -> d hops around the ring; a relay's rcs copy is never read again, so every
    # relay of a rank stores into the same scratch chunk of its single threadblock
    n = 5
    coll = Collective("alltoall", n, 1)
    ts = [
        Transfer(h, float(h), (s + h) % n, (s + h + 1) % n, s * n + d)
        for s in range(n)
        for d in range(n)
        for h in range((d - s) % n)
    ]
    plan = _lowered(Algorithm("ring-a2a", coll, ts))
    assert all(g.s_chunks == 1 and len(g.tbs) == 1 for g in plan.gpus)
    assert _types(plan)["rcs"] == sum((d - s) % n - 1 for s in range(n) for d in range(n) if s != d)


def test_tree_reducescatter_reduces_two_children_and_sends_on():
    n = 4
    coll = Collective("reducescatter", n, 1)
    ts = []
    for b in range(n):  # leaves b+1, b+2 -> middle b+3 -> root b
        leaf1, leaf2, mid = (b + 1) % n, (b + 2) % n, (b + 3) % n
        ts += [
            Transfer(0, 0.0, leaf1, mid, b, True),
            Transfer(0, 0.5, leaf2, mid, b, True),
            Transfer(1, 1.0, mid, b, b, True),
        ]
    plan = _lowered(Algorithm("tree-rs", coll, ts))
    kinds = _types(plan)
    assert kinds["rrs"] == n  # the middle's second reduction is only sent on
    assert kinds["rrc"] == 2 * n  # first reduction into scratch, root into output
    assert all(g.s_chunks == 1 for g in plan.gpus)  # one partial per middle rank
    for g in plan.gpus:
        for tb in g.tbs:
            for s in tb.steps:
                if s.type == "rrs":  # reads the partial the other threadblock wrote
                    assert s.srcbuf == "s" and s.depid >= 0
                    target = next(t for t in g.tbs if t.id == s.depid).steps[s.deps]
                    assert target.type == "rrc" and target.dstbuf == "s" and target.hasdep == 1
                if s.type == "rrc" and s.dstbuf == "o":
                    assert s.srcbuf == "i"


@pytest.mark.parametrize("inplace", [False, True])
def test_ring_allreduce(inplace):
    plan = _lowered(_ring_allreduce(4, inplace), inplace=inplace)
    assert plan.redop == "sum" and plan.inplace == inplace and plan.outofplace != inplace
    kinds = _types(plan)
    assert kinds["rrs"] == 4 * 2 and kinds["rrcs"] == 4 and kinds["rcs"] == 4 * 2
    assert kinds["r"] == 4 and kinds["s"] == 4 and kinds["nop"] == 0
    assert all(g.s_chunks == 0 for g in plan.gpus)
    for g in plan.gpus:
        assert len(g.tbs) == 1
        assert (g.i_chunks, g.o_chunks) == ((4, 0) if inplace else (4, 4))
        if inplace:
            assert all(
                s.srcbuf in (None, "i") and s.dstbuf in (None, "i") for _, _, s in _steps(plan)
            )


def test_inplace_allgather_needs_no_copies():
    plan = _lowered(_ring_allgather(4, chunkup=2, inplace=True))
    assert all((g.i_chunks, g.o_chunks) == (0, 8) for g in plan.gpus)
    kinds = _types(plan)
    assert kinds["cpy"] == 0 and kinds["rcs"] == 8
    assert {s.srcbuf for _, _, s in _steps(plan)} <= {None, "o"}


def test_inplace_override_and_header():
    alg = _ring_allgather(3)
    plan = _lowered(alg, inplace=True, proto="LL", min_bytes=1, max_bytes=1 << 20, name="x")
    assert (plan.name, plan.proto, plan.inplace, plan.min_bytes, plan.max_bytes) == (
        "x",
        "LL",
        True,
        1,
        1 << 20,
    )
    assert lower(alg).name == "ring-ag"


def test_inplace_alltoall_keeps_unsent_inputs():
    # direct in-place AllToAll: rank d's slot s holds its own input for s until it is sent
    n = 3
    coll = Collective("alltoall", n, 1, True)
    ts = [Transfer(0, 0.0, s, d, s * n + d) for s in range(n) for d in range(n) if s != d]
    plan = _lowered(Algorithm("a2a", coll, ts))
    assert all(g.o_chunks == 0 for g in plan.gpus)
    assert sum(g.s_chunks for g in plan.gpus) > 0
    assert _types(plan)["cpy"] == sum(g.s_chunks for g in plan.gpus)


def test_replicate_two_instances_uses_two_channels():
    plan = _lowered(_ring_allgather(4), instances=2)
    assert plan.nchannels == 2 and plan.nchunksperloop == 8
    for g in plan.gpus:
        assert sorted((tb.chan, tb.send, tb.recv) for tb in g.tbs) == [
            (c, (g.id + 1) % 4, (g.id - 1) % 4) for c in (0, 1)
        ]
        assert (g.i_chunks, g.o_chunks) == (2, 8)


def test_extra_dependencies_become_nops():
    # rank 1 receives chunk 0 on channel 1, forwards it to 2 and 3 on channel 0 (two
    # threadblocks), then receives chunk 0 again from 3 (overwrite): that write must wait
    # for both sends, and neither send waits for the other
    n = 4
    coll = Collective("allgather", n, 1)
    ts = [
        Transfer(0, 0.0, 0, 1, 0, channel=1),
        Transfer(1, 1.0, 1, 2, 0),
        Transfer(1, 1.0, 1, 3, 0),
        Transfer(2, 2.0, 3, 1, 0),
    ]
    ts += [Transfer(0, 0.0, s, d, s) for s in (1, 2, 3) for d in range(n) if d != s]
    plan = _lowered(Algorithm("nops", coll, ts))
    g = plan.gpus[1]
    (tb,) = [tb for tb in g.tbs if tb.recv == 3]
    last = tb.steps[-1]
    assert last.type == "r" and last.dstoff == 0 and last.depid >= 0
    assert tb.steps[-2].type == "nop" and tb.steps[-2].depid not in (-1, last.depid)


def test_threadblocks_share_peers_when_over_the_limit():
    # direct AllToAll on 16 ranks x 8 channels: 240 one-way threadblocks > 216 per rank
    n = 16
    coll = Collective("alltoall", n, 1)
    ts = [Transfer(0, 0.0, s, d, s * n + d) for s in range(n) for d in range(n) if s != d]
    plan = _lowered(Algorithm("a2a", coll, ts), instances=8)
    for g in plan.gpus:
        assert len(g.tbs) == 15 * 8 and all(tb.send == tb.recv for tb in g.tbs)
    assert (
        max(
            len(g.tbs)
            for g in lower(Algorithm("a2a", coll, ts), options=LowerOptions(instances=7)).gpus
        )
        == 210
    )


def _unmergeable(k: int) -> list[Transfer]:
    """AllGather on 2 ranks, chunk-up k, one chunk per step in an order never contiguous."""
    return [
        Transfer(j, float(j), b, 1 - b, b * k + (j * 7) % k) for b in range(2) for j in range(k)
    ]


@pytest.mark.parametrize("runtime, limit, channels", [("msccl", 256, 2), ("msccl-executor", 64, 5)])
def test_long_threadblocks_spread_over_more_channels(runtime, limit, channels):
    plan = _lowered(
        Algorithm("long", Collective("allgather", 2, 300), _unmergeable(300)), runtime=runtime
    )
    # ``channels``: the fewest that could hold 300 sends and 300 copies per rank; the
    # spread cuts each connection into runs in time order, so it may take up to twice that
    assert channels <= plan.nchannels <= 2 * channels
    assert max(len(tb.steps) for g in plan.gpus for tb in g.tbs) <= limit
    for g in plan.gpus:
        assert sorted((tb.chan, tb.send, tb.recv) for tb in g.tbs) == [
            (c, *peers) for c in range(plan.nchannels) for peers in ((-1, 1 - g.id), (1 - g.id, -1))
        ]


def test_spread_keeps_each_connection_in_time_order():
    """A connection longer than a run (1/k of the busiest) is cut in start-time order:
    every transfer on a later copy of the channel starts no earlier than any on an earlier
    copy. A connection that fits one run stays whole on its channel."""
    long = [Transfer(j, float((j * 7) % 300), 0, 1, j) for j in range(300)]
    short = [Transfer(j, float(j), 0, 2, j) for j in range(3)]
    spread = _spread(Algorithm("a", Collective("allgather", 3, 100), long + short), 4)
    starts: dict[int, list[float]] = {}
    for t in spread.transfers:
        if t.dst == 1:
            starts.setdefault(t.channel, []).append(t.start)
    assert sorted(starts) == [0, 1, 2, 3] and all(len(v) == 75 for v in starts.values())
    assert all(max(starts[c]) < min(starts[c + 1]) for c in range(3))
    assert {t.channel for t in spread.transfers if t.dst == 2} == {0}


def test_counts_are_capped_at_71():
    coll = Collective("allgather", 2, 80)
    ts = [Transfer(0, 0.0, b, 1 - b, b * 80 + j) for b in range(2) for j in range(80)]
    plan = _lowered(Algorithm("big", coll, ts))
    for g in plan.gpus:
        assert sorted((s.type, s.cnt) for tb in g.tbs for s in tb.steps) == [
            ("cpy", 9),
            ("cpy", 71),
            ("r", 9),
            ("r", 71),
            ("s", 9),
            ("s", 71),
        ]


def test_same_algorithm_same_plan():
    alg = _ring_allreduce(5)
    assert plan_to_xml(lower(alg, options=LowerOptions(instances=2))) == plan_to_xml(
        lower(alg, options=LowerOptions(instances=2))
    )


def test_errors():
    alg = _ring_allgather(3)
    with pytest.raises(PlanError, match="protocol"):
        lower(alg, options=LowerOptions(proto="fast"))
    with pytest.raises(PlanError, match="min_bytes"):
        lower(alg, options=LowerOptions(min_bytes=10, max_bytes=5))
    with pytest.raises(PlanError, match="fewer instances"):
        lower(alg, options=LowerOptions(instances=34))
    bad = Algorithm("bad", alg.collective, [Transfer(0, 0.0, 1, 2, 0)])
    with pytest.raises(AlgorithmError):
        lower(bad)
    # too many steps per threadblock, and no channels left to spread them over
    ts = _unmergeable(300)
    ts[0] = replace(ts[0], channel=31)
    with pytest.raises(
        PlanError, match="msccl allows 256 per threadblock.*with 32 channel.*a smaller chunk-up"
    ):
        lower(
            Algorithm("long", Collective("allgather", 2, 300), ts),
            options=LowerOptions(runtime="msccl"),
        )
    ts[0] = replace(ts[0], channel=32)  # channels 0..31
    with pytest.raises(PlanError, match="33 channels"):
        lower(Algorithm("long", Collective("allgather", 2, 300), ts))


# -- random algorithms -------------------------------------------------------------------------


@st.composite
def algorithms(draw) -> Algorithm:
    """Random valid IR: broadcast trees, relay paths, reduction trees, redundant resends."""
    n = draw(st.integers(2, 5))
    kind = draw(st.sampled_from(KINDS))
    coll = Collective(kind, n, draw(st.integers(1, 2)), draw(st.booleans()))
    nch = draw(st.integers(1, 2))
    ts: list[Transfer] = []
    holders: list[tuple[int, int, int]] = []  # (rank, chunk, time) that may resend

    def send(t: int, src: int, dst: int, c: int, reduce: bool = False) -> None:
        ts.append(
            Transfer(
                t // 2, float(t), src, dst, c, reduce, float(t + 1), draw(st.integers(0, nch - 1))
            )
        )

    def spread(c: int, root: int, t0: int) -> None:
        have = {root: t0}
        for r in draw(st.permutations(range(n))):
            if r not in have:
                p = draw(st.sampled_from(sorted(have)))
                t = have[p] + draw(st.integers(0, 2))
                send(t, p, r, c)
                have[r] = t + 1
        holders.extend((r, c, t) for r, t in have.items())

    def gather(c: int, root: int) -> int:
        order = draw(st.permutations([r for r in range(n) if r != root]))
        parent = {r: draw(st.sampled_from([root, *order[:i]])) for i, r in enumerate(order)}
        ready = dict.fromkeys(range(n), 0)
        for r in reversed(order):
            t = ready[r] + draw(st.integers(0, 2))
            send(t, r, parent[r], c, True)
            ready[parent[r]] = max(ready[parent[r]], t + 1)
        return ready[root]

    for c in range(coll.num_chunks):
        block = c // coll.chunkup
        if kind == "allgather":
            spread(c, block, 0)
        elif kind == "alltoall" and block // n != block % n:
            others = [r for r in range(n) if r not in (block // n, block % n)]
            relays = (
                draw(st.lists(st.sampled_from(others), max_size=2, unique=True)) if others else []
            )
            path = [block // n, *relays, block % n]
            t = 0
            for a, b in zip(path, path[1:]):
                t += draw(st.integers(0, 2))
                send(t, a, b, c)
                holders.append((b, c, t + 1))
                t += 1
        elif kind == "reducescatter":
            gather(c, block)
        elif kind == "allreduce":
            root = draw(st.integers(0, n - 1))
            spread(c, root, gather(c, root))
    for _ in range(draw(st.integers(0, 3)) if holders else 0):
        r, c, t = draw(st.sampled_from(holders))
        send(
            t + draw(st.integers(0, 3)),
            r,
            draw(st.sampled_from([x for x in range(n) if x != r])),
            c,
        )
    return Algorithm("random", coll, ts)


@settings(max_examples=300)
@given(alg=algorithms(), instances=st.integers(1, 2))
def test_random_algorithms_lower_to_correct_plans(alg, instances):
    plan = _lowered(alg, instances=instances)
    assert plan.nchannels == alg.nchannels * instances


def test_too_many_peers_fail_before_building():
    n = 34  # rank 0 sends its chunk to 33 peers on one channel
    coll = Collective("allgather", n, 1)
    ts = [Transfer(0, 0.0, 0, d, 0) for d in range(1, n)]
    ts += [Transfer(1, 1.0, 1, d, c) for c in range(1, n) for d in range(n) if d not in (1, c)]
    ts += [Transfer(0, 0.0, c, 1, c) for c in range(2, n)]
    with pytest.raises(PlanError, match="rank 0 has 33 threadblocks that send on channel 0"):
        lower(Algorithm("wide", coll, ts))
    # 28 peers on each of 8 channels: fits per channel, 224 > 216 threadblocks per rank
    n = 29
    coll = Collective("allgather", n, 8)
    ts = [
        Transfer(0, 0.0, s, d, s * 8 + j, channel=j)
        for s in range(n)
        for d in range(n)
        if d != s
        for j in range(8)
    ]
    with pytest.raises(PlanError, match="rank 0 needs 224 threadblocks, MSCCL allows 216"):
        lower(Algorithm("wide", coll, ts))
