"""Verifier: runtime limits, symbolic execution, races, deadlocks, and mutated plans."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from taccl_py.errors import PlanError, VerificationError
from taccl_py.plan.model import Plan, Step, Threadblock
from taccl_py.plan.verify import check_limits, verify
from taccl_py.plan.xml import parse_plan

EXTERNAL = Path(__file__).parent / "fixtures" / "external"
FIXTURES = sorted(EXTERNAL.glob("*.xml"))


def load(name: str) -> Plan:
    return parse_plan(EXTERNAL / f"{name}.xml")


def make_external():
    spec = importlib.util.spec_from_file_location("make_external", EXTERNAL / "make_external.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tb(plan: Plan, rank: int, tid: int) -> Threadblock:
    return next(t for t in plan.gpus[rank].tbs if t.id == tid)


def ring_tb(plan: Plan, rank: int) -> Threadblock:
    return next(t for t in plan.gpus[rank].tbs if t.send >= 0)


def peer_tb(plan: Plan, rank: int, peer: int) -> Threadblock:
    return next(t for t in plan.gpus[rank].tbs if t.send == peer)


def renumber(t: Threadblock) -> None:
    for i, st in enumerate(t.steps):
        st.s = i


def first_nop(t: Threadblock) -> Step:
    return next(st for st in t.steps if st.type == "nop")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_external_fixtures_verify(path: Path):
    report = verify(parse_plan(path))
    assert report.ranks == 8 and report.steps > 0 and report.depth > 0


def test_report_counts_ring_allgather():
    report = verify(load("ring_allgather_8"))
    assert (
        report.threadblocks,
        report.steps,
        report.sends,
        report.receives,
        report.copies,
        report.reductions,
        report.chunks_sent,
        report.connections,
        report.depth,
    ) == (16, 72, 56, 56, 8, 0, 56, 8, 8)


def test_report_counts_hierarchical_allreduce():
    report = verify(load("hierarchical_allreduce_2x4"))
    assert report.nops == 8 and report.reductions == 40 and report.max_tbs_per_gpu == 3


# -- mutated plans ---------------------------------------------------------------------------


def wrong_offset(p: Plan) -> None:
    last = ring_tb(p, 3).steps[-1]  # receives chunk 4 on rank 3
    last.dstoff = 5


def dropped_step(p: Plan) -> None:
    t = ring_tb(p, 0)
    del t.steps[0]
    renumber(t)


def dropped_dependency_rd(p: Plan) -> None:
    st = next(st for t in p.gpus[0].tbs for st in t.steps if st.depid >= 0)
    st.depid = st.deps = -1


def dropped_dependency_hier_send(p: Plan) -> None:
    st = tb(p, 2, 1).steps[0]  # cross-node send of the scratch partial sum
    st.depid = st.deps = -1


def dropped_dependency_hier_nop(p: Plan) -> None:
    st = first_nop(tb(p, 2, 0))
    st.depid = st.deps = -1


def dropped_dependency_alltoall_nop(p: Plan) -> None:
    st = first_nop(peer_tb(p, 0, 4))  # relay 0's cross-node tb
    st.depid = st.deps = -1


def doubled_reduction(p: Plan) -> None:
    last = ring_tb(p, 0).steps[-1]  # receives the finished chunk 1 ...
    last.type, last.srcbuf, last.srcoff = "rrc", last.dstbuf, last.dstoff  # ... and re-adds (0,1)


def swapped_receives(p: Plan) -> None:
    t = ring_tb(p, 2)
    t.steps[1], t.steps[2] = t.steps[2], t.steps[1]
    renumber(t)


def receive_without_send(p: Plan) -> None:
    t = peer_tb(p, 5, 2)
    t.steps.append(Step(len(t.steps), "r", dstbuf="o", dstoff=2))


def send_without_receive(p: Plan) -> None:
    t = peer_tb(p, 5, 2)
    t.steps.append(Step(len(t.steps), "s", srcbuf="i", srcoff=2))


def dependency_cycle(p: Plan) -> None:
    a, b = peer_tb(p, 1, 0), peer_tb(p, 1, 2)
    a.steps[0].depid, a.steps[0].deps = b.id, 1
    b.steps[0].depid, b.steps[0].deps = a.id, 1
    a.steps[1].hasdep = b.steps[1].hasdep = 1


def uninitialised_read(p: Plan) -> None:
    cpy = tb(p, 1, 0).steps[0]
    cpy.srcbuf, cpy.srcoff = "o", 1  # its own destination, never written before


def count_mismatch(p: Plan) -> None:
    peer_tb(p, 0, 1).steps[0].cnt = 2


def write_write_race(p: Plan) -> None:
    peer_tb(p, 0, 2).steps[1].dstoff = 1


MUTATIONS = [
    ("ring_allgather_8", wrong_offset, ["rank 3", "chunk 4", "expected {(4,0)}"]),
    ("ring_allgather_8", dropped_step, ["deadlock", "rank 1", "waits for a send from rank 0"]),
    ("recursive_doubling_allgather_8_inplace", dropped_dependency_rd, ["race", "rank 0"]),
    (
        "hierarchical_allreduce_2x4",
        dropped_dependency_hier_send,
        ["race on rank 2 s[0]", "tb 1 step 0 (s)", "tb 0 step 3 (rrc)"],
    ),
    ("hierarchical_allreduce_2x4", dropped_dependency_hier_nop, ["race on rank 2 o[4]"]),
    ("two_step_alltoall_2x4", dropped_dependency_alltoall_nop, ["race on rank 0 s["]),
    ("ring_allreduce_8_inplace", doubled_reduction, ["rank 0", "(0,1) twice"]),
    (
        "ring_allgather_8",
        swapped_receives,
        ["rank 2 o[0] (chunk 0)", "expected {(0,0)}, got {(1,0)}"],
    ),
    (
        "allpairs_alltoall_8",
        receive_without_send,
        ["deadlock", "rank 5 tb", "(r) waits for a send from rank 2"],
    ),
    ("allpairs_alltoall_8", send_without_receive, ["unmatched send", "rank 5", "to rank 2"]),
    (
        "allpairs_alltoall_8",
        dependency_cycle,
        ["deadlock", "rank 1 tb 1 step 0", "rank 1 tb 2 step 0"],
    ),
    ("allpairs_allgather_8", uninitialised_read, ["uninitialised rank 1 o[1]"]),
    ("allpairs_alltoall_8", count_mismatch, ["cnt=1", "cnt=2"]),
    ("allpairs_allgather_8", write_write_race, ["race on rank 0 o[1]", "writes it"]),
]


@pytest.mark.parametrize(
    "fixture, mutate, fragments", MUTATIONS, ids=[m[1].__name__ for m in MUTATIONS]
)
def test_mutated_plan_is_rejected_by_name(fixture: str, mutate, fragments: list[str]):
    plan = load(fixture)
    verify(plan)
    mutate(plan)
    with pytest.raises(VerificationError) as info:
        verify(plan)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


# -- runtime limits --------------------------------------------------------------------------


def set_attr(path: str, value):
    """Mutation setting an attribute reached by a dotted path from the plan."""

    def mutate(p: Plan) -> None:
        *parts, last = path.split(".")
        obj = p
        for part in parts:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        setattr(obj, last, value)

    mutate.__name__ = f"{path}={value}"
    return mutate


def too_many_steps(p: Plan) -> None:
    t = tb(p, 0, 0)
    t.steps += [Step(i, "nop", cnt=0) for i in range(len(t.steps), 1025)]


def too_many_tbs(p: Plan) -> None:
    tbs = p.gpus[0].tbs
    tbs += [Threadblock(i) for i in range(len(tbs), 1025)]


def dependency_on_nop(p: Plan) -> None:
    ring = tb(p, 0, 0)
    target = first_nop(ring)
    st = tb(p, 0, 1).steps[1]
    st.depid, st.deps = ring.id, target.s


def nop_chain_without_final_dependency(p: Plan) -> None:
    ring = tb(p, 0, 0)
    after = ring.steps[first_nop(ring).s + 1]
    after.depid = after.deps = -1


LIMITS = [
    ("ring_allgather_8", set_attr("gpus.0.tbs.1.steps.2.cnt", 72), "cnt=72 outside 1..71"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.1.steps.2.cnt", 0), "cnt=0"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.1.steps.2.s", 5), "step #2 has s=5"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.1.id", 2), "threadblock ids [0, 2]"),
    ("ring_allgather_8", set_attr("gpus.3.tbs.1.send", 3), "gpu 3 tb 1: send peer 3"),
    ("ring_allgather_8", set_attr("gpus.3.tbs.1.recv", 8), "gpu 3 tb 1: recv peer 8"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.1.chan", 1), "chan 1 outside"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.1.steps.2.dstoff", 8), "outside buffer 'o'"),
    (
        "ring_allgather_8",
        set_attr("gpus.0.tbs.0.steps.0.type", "s"),
        "sends but its threadblock has no send peer",
    ),
    (
        "ring_allgather_8",
        set_attr("gpus.0.tbs.0.steps.0.type", "r"),
        "receives but its threadblock has no recv peer",
    ),
    ("ring_allgather_8", set_attr("gpus.0.tbs.0.steps.0.type", "put"), "unknown step type 'put'"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.0.steps.0.srcbuf", None), "needs a src buffer"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.0.steps.0.hasdep", 2), "hasdep=2"),
    ("ring_allgather_8", set_attr("gpus.0.tbs.0.steps.0.depid", 1), "both -1 or both set"),
    ("ring_allgather_8", set_attr("gpus.0.i_chunks", 3), "i_chunks=3 x 8 != nchunksperloop=8"),
    ("ring_allgather_8", set_attr("gpus.0.o_chunks", 0), "no room for the output"),
    ("ring_allgather_8", set_attr("gpus.1.id", 9), "gpu ids"),
    ("ring_allgather_8", set_attr("nchunksperloop", 12), "multiple of ngpus"),
    ("ring_allgather_8", set_attr("proto", "Fast"), "proto 'Fast'"),
    ("ring_allgather_8", set_attr("min_bytes", 10), None),  # max 0 = unbounded: fine
    ("ring_allgather_8", set_attr("max_bytes", -1), "maxBytes=-1"),
    ("ring_allgather_8", too_many_steps, "1025 steps"),  # no runtime loads more
    ("ring_allgather_8", too_many_tbs, "1025 threadblocks"),
    (
        "allpairs_allgather_8",
        set_attr("gpus.0.tbs.2.send", 1),
        "already sends to rank 1 on channel 0",
    ),
    ("allpairs_allgather_8", set_attr("gpus.0.tbs.2.recv", 1), "already receives from rank 1"),
    ("ring_allreduce_8_inplace", set_attr("redop", "nop"), "redop 'nop'"),
    ("hierarchical_allreduce_2x4", set_attr("gpus.0.tbs.0.steps.3.hasdep", 0), "whose hasdep=0"),
    ("hierarchical_allreduce_2x4", set_attr("gpus.0.tbs.1.steps.0.deps", 99), "does not exist"),
    ("hierarchical_allreduce_2x4", set_attr("gpus.0.tbs.1.steps.0.depid", 7), "lacks"),
    ("hierarchical_allreduce_2x4", dependency_on_nop, "a nop"),
    ("hierarchical_allreduce_2x4", nop_chain_without_final_dependency, "dependency chain ends"),
]


@pytest.mark.parametrize(
    "fixture, mutate, fragment", LIMITS, ids=[getattr(m[1], "__name__", "?") for m in LIMITS]
)
def test_runtime_limits(fixture: str, mutate, fragment: str | None):
    plan = load(fixture)
    mutate(plan)
    if fragment is None:
        check_limits(plan)
        return
    with pytest.raises(PlanError) as info:
        verify(plan)
    assert fragment in str(info.value)


def test_at_most_32_sending_threadblocks_per_channel():
    plan = parse_plan(make_external().allpairs_allgather(34))
    with pytest.raises(PlanError, match="more than 32 threadblocks send on channel 0"):
        check_limits(plan)


# -- scale -----------------------------------------------------------------------------------


def test_64_rank_ring_allgather_is_fast():
    plan = parse_plan(make_external().ring_allgather(64))
    start = time.perf_counter()
    report = verify(plan)
    elapsed = time.perf_counter() - start
    assert report.steps == 64 * 65 and report.depth == 64
    assert elapsed < 5.0  # about 0.1 s on a laptop-class core; target is 2 s


def test_report_summary_is_one_line():
    text = verify(load("ring_allgather_8")).summary()
    assert "72 steps (56 sends" in text and "critical path 8 steps" in text and "\n" not in text


def test_inplace_input_buffer_aliases_the_output():
    plan = load("recursive_doubling_allgather_8_inplace")
    for gpu in plan.gpus:
        gpu.i_chunks = 1  # the input buffer is output chunk [rank]
        first = next(t for t in gpu.tbs if t.send == gpu.id ^ 1).steps[0]
        first.srcbuf, first.srcoff = "i", 0
    verify(plan)
    next(t for t in plan.gpus[3].tbs if t.send == 2).steps[0].srcoff = 1
    with pytest.raises(PlanError, match="outside buffer 'i'"):
        verify(plan)


CROSS_RANK = """\
<algo name="x" nchunksperloop="2" nchannels="1" ngpus="2" proto="Simple" coll="allgather"
      inplace="0" outofplace="1" minBytes="0" maxBytes="0">
  <gpu id="0" i_chunks="1" o_chunks="2" s_chunks="0">
    <tb id="0" send="1" recv="-1" chan="0">
      <step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
      <step s="1" type="s" srcbuf="o" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
    </tb>
    <tb id="1" send="-1" recv="1" chan="0">
      <step s="0" type="r" srcbuf="i" srcoff="0" dstbuf="o" dstoff="1" cnt="1" depid="-1" deps="-1" hasdep="0"/>
      <step s="1" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
    </tb>
  </gpu>
  <gpu id="1" i_chunks="1" o_chunks="2" s_chunks="0">
    <tb id="0" send="0" recv="0" chan="0">
      <step s="0" type="r" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
      <step s="1" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="1" cnt="1" depid="-1" deps="-1" hasdep="0"/>
      <step s="2" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="1" cnt="1" depid="-1" deps="-1" hasdep="0"/>
    </tb>
  </gpu>
</algo>
"""


def test_rank_local_clocks_miss_only_orders_through_other_ranks():
    """Rank 0's tb 1 rewrites o[0] after tb 0 read it, with no dependency between them:
    only the path through rank 1 (tb 0's send, rank 1's receive and send, tb 1's receive)
    orders them. Rank-local clocks (a rank's own threadblocks' entries only, what keeps
    verification's memory linear at 1,024 ranks) see a race; the whole-cluster clocks
    that confirm every fault find none, so the plan verifies."""
    from taccl_py.plan.verify import Interpreter

    plan = parse_plan(CROSS_RANK)
    with pytest.raises(VerificationError, match=r"race on rank 0 o\[0\]"):
        Interpreter(plan, lambda r, j: {(r, j)}, lambda a, b: a | b).run(local=True)
    run = Interpreter(plan, lambda r, j: {(r, j)}, lambda a, b: a | b).run()
    assert [run.output(r, j) for r in (0, 1) for j in (0, 1)] == [{(0, 0)}, {(1, 0)}] * 2
    assert verify(plan).ranks == 2
    # a plan without such orders: local clocks, as wide as a rank's threadblocks, suffice
    ring = load("ring_allgather_8")
    local = Interpreter(ring, lambda r, j: {(r, j)}, lambda a, b: a | b).run(local=True)
    assert max(local.entry) + 1 == max(len(g.tbs) for g in ring.gpus) < len(local.tbs)
