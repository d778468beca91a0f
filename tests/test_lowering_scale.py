"""The incremental threadblock builder: caching across passes changes nothing."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from taccl_py.collectives import Collective
from taccl_py.lowering.buffers import value_flow
from taccl_py.lowering.threadblocks import Threadblocks, _star_matching
from taccl_py.synth.methods import synthesize
from taccl_py.topology.loader import load_topology

from .test_lower_schedule import scheduled


def _incremental(alg, scheduled_ir: bool):
    flow = value_flow(alg)
    blocks = Threadblocks(alg, flow)
    apart: frozenset = frozenset()
    while True:
        tbs = blocks.assign(apart)
        late = blocks.late(tbs) - apart if scheduled_ir else set()
        if not late:
            break
        apart |= late
    send_ops, recv_ops = blocks.finish(tbs)
    return flow, tbs, send_ops, recv_ops, apart


def _fresh(alg, apart):
    """The threadblocks for the final ``apart`` pairs, built in one pass."""
    flow = value_flow(alg)
    blocks = Threadblocks(alg, flow)
    tbs = blocks.assign(apart)
    return (flow, tbs, *blocks.finish(tbs))


def _signature(flow, tbs, send_ops, recv_ops):
    return (
        [
            [
                (
                    tb.id,
                    tb.rank,
                    tb.chan,
                    tb.send,
                    tb.recv,
                    [[(op.kind, op.transfer, op.key) for op in unit] for unit in tb.units],
                )
                for tb in rank_tbs
            ]
            for rank_tbs in tbs
        ],
        [(op.tb.rank, op.tb.id, op.key) for op in send_ops],
        [(op.tb.rank, op.tb.id, op.key) for op in recv_ops],
        [(v.stored, v.sink) for v in flow.made],
    )


def _cases():
    dgx1 = load_topology("dgx1")
    for kind in ("allgather", "allreduce", "reducescatter", "alltoall"):
        for method in ("ring", "direct"):
            yield f"dgx1-{kind}-{method}", synthesize(dgx1, Collective(kind, 8, 2), method), False
    for kind, chunkup, by_desc in (
        ("allgather", 2, False),
        ("allgather", 2, True),
        ("alltoall", 1, False),
    ):
        yield f"dgx1-{kind}-scheduled", scheduled(dgx1, kind, chunkup, by_desc), True


@pytest.mark.parametrize(
    "label,alg,sched", list(_cases()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_incremental_passes_match_one_fresh_pass(label, alg, sched):
    *got, apart = _incremental(alg, sched)
    assert bool(apart) == sched  # the scheduled cases do split pairs
    assert _signature(*got) == _signature(*_fresh(alg, apart))
    flow, tbs, send_ops, recv_ops = got
    assert all(op is not None and op.tb.rank == t.src for op, t in zip(send_ops, alg.transfers))
    assert all(op is not None and op.tb.rank == t.dst for op, t in zip(recv_ops, alg.transfers))


def test_finish_breaks_cycles_of_discarded_threadblocks():
    alg = scheduled(load_topology("dgx1"), "allgather", 2, False)
    flow = value_flow(alg)
    blocks = Threadblocks(alg, flow)
    first = blocks.assign()
    late = blocks.late(first)
    second = blocks.assign(frozenset(late))
    kept = {id(tb) for rank_tbs in second for tb in rank_tbs}
    dropped = [tb for rank_tbs in first for tb in rank_tbs if id(tb) not in kept]
    blocks.finish(second)
    assert all(not tb.units for tb in dropped)
    assert all(tb.units or tb.send < 0 and tb.recv < 0 for rank_tbs in second for tb in rank_tbs)


@pytest.mark.parametrize("seed", range(20))
def test_star_matching_is_a_maximum_weight_matching(seed):
    rng = random.Random(seed)
    n = 1000
    for _ in range(50):
        k = rng.randint(2, 30)
        recv_center = rng.random() < 0.5
        center, *leaves = rng.sample(range(300), k + 1)
        leaves.sort()
        weights = [rng.choice([1, 2, 2, 3, 3, 3]) for _ in range(k)]
        edges = (
            [(center, b, w) for b, w in zip(leaves, weights)]
            if recv_center
            else [(a, center, w) for a, w in zip(leaves, weights)]
        )
        graph = nx.Graph()
        graph.add_weighted_edges_from((a, n + b, w) for a, b, w in edges)
        best = sum(graph[u][v]["weight"] for u, v in nx.max_weight_matching(graph))
        got = _star_matching(edges, recv_center)
        assert len(got) == 1
        [(a, b)] = got.items()
        assert (a, b, max(weights)) in edges and max(weights) == best
