"""Issue 22: plans for many nodes fit msccl-executor's loader, shown on a small stand-in.

At 1,024 ranks the loader keeps at most 4,095 XML elements per rank: the ``<algo>``, the
1,024 ``<gpu>`` elements and the rank's own threadblocks and steps, which leaves about 3
per rank in the communicator. The stand-in is 40 nodes of 2 GPUs (one NIC each, behind a
switch): more nodes than the tree and ring fan-outs are searched for, more network peers
per rank than one channel holds, a 16-step threadblock limit so that the threadblocks are
cut into channel copies as DGX-H100's are at 64, and the node budget in proportion (1 +
80 + 3.0 per rank). Its plan must fit every loader rule of that build.
"""

from __future__ import annotations

import pytest

from taccl_py.analysis.bounds import lower_bound
from taccl_py.analysis.simulate import simulate
from taccl_py.collectives import Collective
from taccl_py.errors import PlanError, TacclError
from taccl_py.lowering.lower import LowerOptions, lower
from taccl_py.plan.runtimes import RUNTIMES, check_runtime, max_rank_nodes, rank_nodes
from taccl_py.plan.verify import verify
from taccl_py.synth.milp.decompose import DIRECT_ONLY_NODES, PEERS_PER_CHANNEL, BlockParts
from taccl_py.synth.milp.search import staged_algorithm
from taccl_py.topology.loader import load_topology

NODE = """\
name: duo
gpus_per_node: 2
switches:
  - {name: sw, gpus: all, bandwidth: 100, alpha: 0.5}
nics:
  - {name: nic0, gpus: [0], bandwidth: 25, alpha: 2.0}
  - {name: nic1, gpus: [1], bandwidth: 25, alpha: 2.0}
network: full-bisection
"""
NODES = 40
MAX_STEPS = 16
#: tbs + steps per rank the loader leaves at 1,024 ranks, per rank of the communicator
PER_RANK = (RUNTIMES["msccl-executor"].max_nodes - 1 - 1024) / 1024
BUDGET = 1 + 2 * NODES + int(PER_RANK * 2 * NODES)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """The stand-in, its synthesized AllGather (judged as ``build_plan`` judges: lowered
    under the stand-in's limits and simulated; a candidate that does not fit is refused)
    and its plan."""
    path = tmp_path_factory.mktemp("large") / "duo.yaml"
    path.write_text(NODE)
    topo = load_topology(str(path), NODES)
    size = NODES << 24  # 640 MiB: splits into 80 ranks' chunks (1 GiB does not)
    limits = LowerOptions(max_steps=MAX_STEPS, max_nodes=BUDGET)

    def judge(alg):
        return simulate(lower(alg, topo, limits), topo, size).time

    coll = Collective("allgather", topo.num_ranks)
    alg = staged_algorithm(topo, coll, size=size, time_limit=3, judge=judge)
    return topo, alg, lower(alg, topo, limits), size


def test_the_stand_in_exercises_the_large_paths(stand_in):
    topo, alg, plan, _ = stand_in
    assert topo.nodes > DIRECT_ONLY_NODES and NODES - 1 > PEERS_PER_CHANNEL
    assert alg.meta["node_fanout"] == NODES - 1  # direct: every node from every node
    network = {t.channel for t in alg.transfers if t.src // 2 != t.dst // 2}
    assert len(network) == 2  # 39 network peers: two channels of at most 32
    assert plan.nchannels > 1 + len(network)  # threadblocks were cut into channel copies


def test_a_many_node_plan_fits_the_loader(stand_in):
    topo, alg, plan, size = stand_in
    assert check_runtime(plan, max_steps=MAX_STEPS, selection=False, max_nodes=BUDGET) == []
    assert max(len(tb.steps) for g in plan.gpus for tb in g.tbs) <= MAX_STEPS
    assert max_rank_nodes(plan) <= BUDGET
    # candidates in finer parts need more steps: those over a limit were refused
    limits = (f"the loader keeps at most {BUDGET}", f"allows {MAX_STEPS} per threadblock")
    refused = alg.meta.get("refused", {})
    assert all(any(limit in why for limit in limits) for why in refused.values())
    assert max_rank_nodes(plan) == max(rank_nodes(plan, g) for g in plan.gpus)
    assert verify(plan)
    # cutting threadblocks keeps the schedule's order: the plan runs within 1 % of it
    sim = simulate(plan, topo, size).time
    assert sim <= alg.meta["makespan"] * 1.01
    assert lower_bound(topo, "allgather", size).time / sim >= 0.9


def test_candidates_whose_plans_do_not_fit_are_refused(stand_in):
    """The search keeps the best candidate the judge accepts, says which it refused and
    why, and names the reason when it refuses them all."""
    topo, _, _, size = stand_in
    coll = Collective("allgather", topo.num_ranks)

    def judge(alg):
        if alg.collective.chunkup > 1:
            raise PlanError(f"rank 0 needs {alg.collective.chunkup} x too many XML elements")
        return alg.meta["makespan"]

    alg = staged_algorithm(topo, coll, size=size, time_limit=3, judge=judge)
    assert alg.collective.chunkup == 1
    assert alg.meta["refused"] and all(
        "too many XML elements" in why for why in alg.meta["refused"].values()
    )

    def refuse(alg):
        raise PlanError("rank 0 needs 5000 XML elements")

    with pytest.raises(TacclError, match="no candidate's plan fits the runtime.*5000 XML"):
        staged_algorithm(topo, coll, size=size, time_limit=3, judge=refuse)


def test_baselines_that_cannot_load_are_left_out_before_lowering(monkeypatch):
    """NCCL's direct pattern at 256 ranks needs 255 threadblocks per rank (one peer each
    way per threadblock), over what a rank runs; NCCL's ring with a tiny node budget needs
    more steps than the loader keeps. Neither is lowered, and each says why."""
    from taccl_py.build import pipeline

    lines = []
    topo = load_topology("dgx-h100", 32)
    coll = Collective("allgather", topo.num_ranks)
    monkeypatch.setattr(pipeline, "BASELINES", ("direct",))
    monkeypatch.setattr(pipeline, "lower_plan", lambda *a: pytest.fail("lowered"))
    made = pipeline._baselines(topo, coll, 1 << 30, LowerOptions(), lambda s, n: lines.append(s))
    assert made == {}
    assert lines == [
        "baseline direct left out: 255 peers per rank, a rank runs at most 216 threadblocks"
    ]
    monkeypatch.setattr(pipeline, "BASELINES", ("ring",))
    small = LowerOptions(max_nodes=300)
    assert pipeline._baselines(topo, coll, 1 << 30, small, lambda s, n: lines.append(s)) == {}
    assert lines[-1].startswith("baseline ring left out: ") and "keeps 300 elements" in lines[-1]


@pytest.mark.parametrize("kind", ["allgather", "reducescatter", "allreduce"])
@pytest.mark.parametrize(
    ("spread", "parts", "rule", "blocks"),
    [
        (0, BlockParts(2), "rotation", (2, 2, 2, 2, 2)),
        (1, BlockParts(1), "rotation", (4, 4, 4, 4, 2)),
        (3, BlockParts(2), "arrival order", (2, 2, 2, 2, 2)),
        (4, BlockParts(4), "rotation", (1, 2, 2, 2, 2)),
        (1, BlockParts(1, (4, 2)), "arrival order", (2, 2, 1, 1, 2)),
    ],
)
def test_relays_by_offset_with_spread_offsets_are_correct(
    tmp_path, kind, spread, parts, rule, blocks
):
    """Relays by node offset, the last ``spread`` offsets over every NIC, blocks in
    ``parts`` (per round of offsets: 2 relays, so offsets 1-2 and 3-4): the AllGather (and
    the ReduceScatter and AllReduce made from it) lowers to a plan that verifies at the
    data level, and every hop off a node carries its block part (a spread offset: the
    sender's own chunks) as one step, the relay's own chunk included (the ReduceScatter,
    the AllGather reversed: received in one step)."""
    from taccl_py.ir.algorithm import Algorithm
    from taccl_py.synth.milp.combine import combine
    from taccl_py.synth.milp.decompose import decompose, node_trees, offset_relays, relays
    from taccl_py.synth.milp.ordering import order
    from taccl_py.synth.milp.schedule import schedule
    from taccl_py.synth.milp.search import offset_priorities
    from taccl_py.synth.milp.sketch import default_sketch

    path = tmp_path / "duo.yaml"
    path.write_text(NODE)
    topo = load_topology(str(path), 6)
    coll = Collective("allgather", topo.num_ranks, chunkup=2)
    size = 1 << 24
    sketch = default_sketch(topo)
    trees, _ = node_trees(topo, coll.chunk_bytes(size), time_limit=5)
    by_offset = offset_relays(topo, sketch, trees, spread)
    assert [o for o, by in by_offset.items() if by is None] == list(range(6 - spread, 6))
    dec = decompose(
        topo,
        coll,
        coll.chunk_bytes(size),
        trees,
        relays(topo, sketch, trees),
        5,
        (),
        by_offset,
        parts,
    )
    assert dec.blocks == blocks
    sends = dec.sends()
    _, prio, own = next(r for r in offset_priorities(topo, sends) if r[0] == rule)
    sched = schedule(topo, order(sends, own_data_first=own, prio=prio), False)
    alg = Algorithm(
        "milp", coll, dec.transfers(sched), topo.label, size, {"makespan": sched.makespan}
    )
    if kind != "allgather":
        alg = combine(alg, topo, kind, inplace=False)
    plan = lower(alg, topo)
    verify(plan)
    # every hop off a node is one step of its block's size, at both ends
    g, side = topo.gpus_per_node, {"allgather": "send", "reducescatter": "recv"}.get(kind)
    if side is not None:
        cnts = {
            (gpu.id, (peer // g - gpu.id // g) % 6, step.cnt)
            for gpu in plan.gpus
            for tb in gpu.tbs
            if (peer := tb.send if side == "send" else tb.recv) >= 0 and peer // g != gpu.id // g
            for step in tb.steps
            if step.type not in ("nop", "cpy")
            # (a spread offset's chunks are the receiver's own, reduced into its input or
            # output as earlier parts reached them: received in one step or two)
            and (side == "send" or by_offset[(peer // g - gpu.id // g) % 6] is not None)
        }
        assert {(r, o, blocks[o - 1]) for r, o, _ in cnts} == cnts
