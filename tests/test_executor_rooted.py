"""runtime.executor.PlanExecutor on every rank at once (one thread per rank, an in-memory
transport): rooted collectives with ``None`` buffers on the ranks that have no input or no
output, random plans in segments, buffer reuse across calls, interleaved plans, stalls."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import KINDS, ROOTED_KINDS, Collective
from taccl_py.errors import TacclError
from taccl_py.plan.model import Plan
from taccl_py.plan.verify import Interpreter
from taccl_py.runtime.executor import NO_INPUT, NO_OUTPUT, PlanExecutor
from taccl_py.runtime.reference import numpy_result
from taccl_py.testing.plans import direct_allgather
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import FULL_BISECTION, Switch, Topology

from .strategies import topologies
from .test_mpi_exec import ring4


class _Req:
    __slots__ = ("target", "done", "peer")

    def __init__(self, target=None, peer=-1) -> None:
        self.target, self.done, self.peer = target, target is None, peer


class Wire:
    """Messages between the ranks of one process: FIFO per (sender, receiver, tag), sends
    buffered (complete at once), receives filled in posting order."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.sent: dict[tuple, deque] = {}
        self.posted: dict[tuple, deque] = {}
        self.messages = 0

    def transport(self, rank: int, polled: bool = False):
        return (PolledEnd if polled else End)(self, rank)


class End:
    """One rank's end of a :class:`Wire` (a Transport with a blocking ``wait``)."""

    tag_ub = 2**31 - 1

    def __init__(self, wire: Wire, rank: int) -> None:
        self.wire, self.rank = wire, rank

    def irecv(self, target, peer, tag):
        req = _Req(target, peer)
        w = self.wire
        with w.cond:
            queue = w.sent.get((peer, self.rank, tag))
            if queue:
                _fill(req, queue.popleft())
            else:
                w.posted.setdefault((peer, self.rank, tag), deque()).append(req)
        return req

    def isend(self, data, peer, tag):
        w = self.wire
        with w.cond:
            w.messages += 1
            posted = w.posted.get((self.rank, peer, tag))
            if posted:
                _fill(posted.popleft(), data)
                w.cond.notify_all()
            else:
                w.sent.setdefault((self.rank, peer, tag), deque()).append(data.copy())
        return _Req()

    def wait(self, req, timeout):
        with self.wire.cond:
            return self.wire.cond.wait_for(lambda: req.done, timeout)

    def cancel(self, reqs):
        pass


class PolledEnd(End):
    """The same without ``wait``: the executor polls ``progress``."""

    wait = None  # type: ignore[assignment]

    def progress(self, reqs, block):
        with self.wire.cond:
            self.wire.cond.wait_for(lambda: any(r.done for r in reqs), block)
            return [i for i, r in enumerate(reqs) if r.done]


def _fill(req: _Req, data) -> None:
    assert req.target.nbytes == data.nbytes, "message sizes differ"
    req.target[...] = data.view(req.target.dtype)
    req.done = True


def run_all(executors, sends, recvs, timeout: float = 20.0) -> list:
    """Run every rank's executor in its own thread; results (or errors) per rank."""
    out: list = [None] * len(executors)

    def one(r: int) -> None:
        try:
            out[r] = executors[r].run(sends[r], recvs[r], timeout)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[r] = exc

    threads = [threading.Thread(target=one, args=(r,)) for r in range(len(executors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    for res in out:
        if isinstance(res, Exception):
            raise res
    return out


def executors(plan: Plan, ce: int, dtype=np.int64, polled=False, **kw) -> list[PlanExecutor]:
    wire = Wire()
    n = plan.ngpus
    return [PlanExecutor(plan, wire.transport(r, polled), r, n, ce, dtype, **kw) for r in range(n)]


def host(n: int) -> Topology:
    ranks = tuple(range(n))
    return Topology(f"host{n}", n, 1, (), (Switch("sw", 0, ranks, 1e10, 1e-6),), (), FULL_BISECTION)


# -- expected results, by NumPy and by the verifier's interpreter -------------------------


def expected(coll: Collective, inputs: list[np.ndarray]) -> dict[int, np.ndarray]:
    """What each rank that has an output ends with (rank -> output), by NumPy."""
    n, root = coll.num_ranks, coll.root
    if coll.kind in KINDS:
        return dict(enumerate(numpy_result(coll, inputs)))
    if coll.kind == "broadcast":
        return {r: inputs[root].copy() for r in range(n)}
    if coll.kind == "reduce":
        return {root: np.sum(inputs, axis=0, dtype=inputs[0].dtype)}
    if coll.kind == "gather":
        return {root: np.concatenate(inputs)}
    return dict(enumerate(np.split(inputs[root], n)))  # scatter


def interpreted(plan: Plan, inputs: list[np.ndarray], ce: int) -> dict[int, np.ndarray]:
    """The verifier's interpreter run on the same values (rank -> output, where required)."""
    coll = plan.collective()
    run = Interpreter(plan, lambda r, j: inputs[r][j * ce : (j + 1) * ce].copy(), np.add).run()
    outs: dict[int, np.ndarray] = {}
    for r in range(coll.num_ranks):
        chunks = [run.output(r, j) for j in range(coll.o_chunks)]
        if all(c is not None for c in chunks):
            outs[r] = np.concatenate([c for c in chunks if c is not None])
    return outs


def inputs_for(coll: Collective, ce: int, seed: int, dtype=np.int64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(-1000, 1000, coll.i_chunks * ce).astype(dtype) for _ in range(coll.num_ranks)
    ]


def buffers(coll: Collective, inputs, ce: int, none: bool):
    """Per rank (send, recv) buffers; ``none``: None where the rank has no input/output."""
    sends, recvs = [], []
    for r, x in enumerate(inputs):
        outside = r != coll.root
        no_in = none and coll.kind in NO_INPUT and outside
        no_out = none and coll.kind in NO_OUTPUT and outside
        if coll.inplace:
            buf = np.full(max(coll.i_chunks, coll.o_chunks) * ce, -7, dtype=x.dtype)
            in_off = coll.inplace_input(r, 0)[1] * ce if coll.i_chunks < coll.o_chunks else 0
            out_off = coll.inplace_output(r, 0)[1] * ce if coll.o_chunks < coll.i_chunks else 0
            buf[in_off : in_off + x.size] = x
            sends.append(None if no_in else buf[in_off : in_off + x.size])
            recvs.append(None if no_out else buf[out_off : out_off + coll.o_chunks * ce])
        else:
            sends.append(None if no_in else x.copy())
            recvs.append(None if no_out else np.full(coll.o_chunks * ce, -7, dtype=x.dtype))
    return sends, recvs


def check(plan: Plan, ce: int, seed: int = 0, none: bool = True, **kw) -> None:
    coll = plan.collective()
    inputs = inputs_for(coll, ce, seed)
    sends, recvs = buffers(coll, inputs, ce, none)
    outs = run_all(executors(plan, ce, **kw), sends, recvs)
    want, ref = expected(coll, inputs), interpreted(plan, inputs, ce)
    assert set(want) <= set(ref)
    for r, w in want.items():
        assert np.array_equal(ref[r], w), f"interpreter, rank {r}"
        assert outs[r] is not None and np.array_equal(outs[r], w), f"executor, rank {r}"
        assert outs[r] is recvs[r]
    for r in set(range(coll.num_ranks)) - set(want):
        assert outs[r] is recvs[r]  # None stays None


# -- rooted collectives ---------------------------------------------------------------------

TOPOS = {"ring4": ring4, "host3": lambda: host(3), "dgx1": lambda: load_topology("dgx1")}
ROOTED_CASES = [
    (kind, topo, root, inplace)
    for kind in ROOTED_KINDS
    for topo, root in (("ring4", 2), ("host3", 0), ("dgx1", 5))
    for inplace in (False, True)
]


@pytest.fixture(scope="module")
def rooted_plans() -> dict:
    made: dict = {}
    for kind, topo, root, inplace in ROOTED_CASES:
        t = TOPOS[topo]()
        try:
            coll = Collective(kind, t.num_ranks, 1, inplace, root)
            made[(kind, topo, root, inplace)] = build_plan(t, coll, "direct").plan
        except TacclError as exc:
            made[(kind, topo, root, inplace)] = exc
    return made


@pytest.mark.parametrize("case", ROOTED_CASES, ids=lambda c: "-".join(map(str, c)))
def test_rooted_plans_with_none_buffers(rooted_plans, case):
    plan = rooted_plans[case]
    if isinstance(plan, TacclError):
        pytest.skip(f"direct does not build {case[0]} yet: {plan}")
    assert plan.collective().root == case[2]
    check(plan, ce=3, none=True)
    check(plan, ce=2, seed=1, none=False)  # full buffers on every rank work too


def test_rooted_buffer_rules(rooted_plans):
    """None only where the rank has no input / no output; the root must pass both."""
    plan = next(
        p for k, p in rooted_plans.items() if k[0] == "reduce" and not isinstance(p, TacclError)
    )
    coll = plan.collective()
    ex = executors(plan, 2)
    buf = np.zeros(coll.i_chunks * 2, dtype=np.int64)
    with pytest.raises(TacclError, match="needs this rank's receive buffer"):
        ex[coll.root].run(buf, None)
    with pytest.raises(TacclError, match="needs this rank's send buffer"):
        ex[(coll.root + 1) % coll.num_ranks].run(None, buf.copy())


def test_unrooted_plans_need_both_buffers():
    ex = executors(direct_allgather(2), 2)
    with pytest.raises(TacclError, match="allgather needs this rank's send buffer"):
        ex[0].run(None, np.zeros(4, dtype=np.int64))
    with pytest.raises(TacclError, match="needs this rank's receive buffer"):
        ex[0].run(np.zeros(2, dtype=np.int64), None)


# -- random plans, segments, reuse ------------------------------------------------------------


@settings(max_examples=12)
@given(
    topo=topologies(max_gpus=3, max_nodes=2),
    kind=st.sampled_from(KINDS),
    method=st.sampled_from(("ring", "direct")),
    chunkup=st.integers(1, 2),
    inplace=st.booleans(),
    ce=st.integers(1, 7),
    seg=st.integers(1, 3),
    polled=st.booleans(),
)
def test_random_plans_match_numpy(topo, kind, method, chunkup, inplace, ce, seg, polled):
    """Any plan, any chunk size, messages cut in segments of ``seg`` elements (and so
    relayed segment by segment): every rank's output is NumPy's."""
    coll = Collective(kind, topo.num_ranks, chunkup, inplace)
    try:
        plan = build_plan(topo, coll, method).plan
    except TacclError:
        return  # e.g. no ring over these links
    check(plan, ce, seed=ce, none=False, polled=polled, segment_bytes=seg * 8)


@pytest.mark.parametrize("kind", ["allreduce", "reducescatter", "allgather"])
def test_ring_in_segments_reused_with_new_data(kind):
    """One executor per rank, called again with different data (and fresh buffers): every
    call right, no state carried over; messages cut into uneven segments."""
    plan = build_plan(host(4), Collective(kind, 4, 2, kind == "allreduce"), "ring").plan
    coll = plan.collective()
    ce = 11
    exs = executors(plan, ce, segment_bytes=3 * 8)
    for seed in range(3):
        inputs = inputs_for(coll, ce, seed)
        sends, recvs = buffers(coll, inputs, ce, none=False)
        outs = run_all(exs, sends, recvs)
        for r, w in expected(coll, inputs).items():
            assert np.array_equal(outs[r], w), (seed, r)


def test_two_plans_interleaved_on_one_transport():
    """Two executors share each rank's transport and run alternately; ranks drift apart
    (no barrier between calls), so one plan's messages may arrive during the other's."""
    wire = Wire()
    a = build_plan(host(3), Collective("allreduce", 3, 2), "ring").plan
    b = build_plan(host(3), Collective("alltoall", 3, 1), "direct").plan
    ends = [wire.transport(r) for r in range(3)]
    ex_a = [PlanExecutor(a, ends[r], r, 3, 5, np.int64, segment_bytes=16) for r in range(3)]
    ex_b = [PlanExecutor(b, ends[r], r, 3, 4, np.int64) for r in range(3)]
    rounds = 4
    plans = {"a": (a, ex_a, 5), "b": (b, ex_b, 4)}
    data = {
        (k, name): inputs_for(p.collective(), ce, seed=10 * k + ce)
        for k in range(rounds)
        for name, (p, _, ce) in plans.items()
    }
    got: dict = {}

    def rank(r: int) -> None:
        for k in range(rounds):
            for name, (p, exs, ce) in plans.items():
                out = np.empty(p.collective().o_chunks * ce, dtype=np.int64)
                got[(k, name, r)] = exs[r].run(data[(k, name)][r].copy(), out, 20.0)
            if r == 0:
                time.sleep(0.01)  # rank 0 lags behind

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in range(rounds):
        for name, (p, _, _) in plans.items():
            want = expected(p.collective(), data[(k, name)])
            for r in range(3):
                assert np.array_equal(got[(k, name, r)], want[r]), (k, name, r)


# -- stalls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("polled", [False, True])
def test_silent_peer_names_the_stuck_step(polled):
    """Rank 1 never runs: rank 0 fails after the timeout, naming its step and peer."""
    plan = build_plan(host(2), Collective("allgather", 2, 1), "ring").plan
    ex = executors(plan, 2, polled=polled)
    began = time.monotonic()
    with pytest.raises(TacclError) as err:
        ex[0].run(np.ones(2, dtype=np.int64), np.zeros(4, dtype=np.int64), timeout=0.3)
    assert time.monotonic() - began < 5
    msg = str(err.value)
    assert msg.startswith("rank 0: no progress for 0.3 s: tb ")
    assert "waits to receive from rank 1" in msg and "\n" not in msg


def test_transport_failure_names_rank_and_step():
    class Broken(End):
        def irecv(self, target, peer, tag):
            raise TacclError(f"receive from rank {peer} failed: connection reset")

    plan = build_plan(host(2), Collective("allgather", 2, 1), "ring").plan
    ex = PlanExecutor(plan, Broken(Wire(), 0), 0, 2, 2, np.int64)
    with pytest.raises(TacclError, match=r"^rank 0: receive from rank 1 failed: connection "):
        ex.run(np.ones(2, dtype=np.int64), np.zeros(4, dtype=np.int64))


# -- receives straight into place ----------------------------------------------------------


def test_ring_allreduce_lands_every_receive_in_place():
    """The in-place ring's allgather half receives into chunks its reduce-scatter half sent
    from: posted at the start of their round, they need no temporary and no copy."""
    from taccl_py.runtime import executor as mod

    plan = build_plan(host(4), Collective("allreduce", 4, 1, True), "ring").plan
    exs = executors(plan, 6, segment_bytes=2 * 8)
    for ex in exs:
        codes = [ins[0] for ins in ex.program]
        assert codes.count(mod._POST) == 3 * 3  # r, rcs, rcs: 3 segments each
        assert mod._COPY not in codes
    coll = plan.collective()
    for seed in (0, 1):
        inputs = inputs_for(coll, 6, seed)
        sends, recvs = buffers(coll, inputs, 6, none=False)
        outs = run_all(exs, sends, recvs)
        for r, w in expected(coll, inputs).items():
            assert np.array_equal(outs[r], w)


def test_send_raced_by_a_write_posts_every_receive_up_front():
    """Rank 1 forwards what it receives from its output chunk (rcs) while another of its
    threadblocks overwrites that chunk in the same round: the send must not be waited on
    before its round, so the executor posts every receive before the first step; rank 2
    still gets rank 0's value."""
    from taccl_py.plan.model import GpuPlan, Step, Threadblock

    gpus = [
        GpuPlan(0, 1, 3, tbs=[Threadblock(0, send=1, steps=[Step(0, "s", "i", 0)])]),
        GpuPlan(
            1,
            1,
            3,
            tbs=[
                Threadblock(0, send=2, recv=0, steps=[Step(0, "rcs", None, -1, "o", 0)]),
                Threadblock(1, steps=[Step(0, "r", None, -1, "o", 1)], recv=2),
                Threadblock(2, steps=[Step(0, "cpy", "i", 0, "o", 0)]),
            ],
        ),
        GpuPlan(
            2,
            1,
            3,
            tbs=[Threadblock(0, recv=1, send=1, steps=[Step(0, "r", None, -1, "o", 0)])],
        ),
    ]
    gpus[2].tbs[0].steps.append(Step(1, "s", "i", 0))
    plan = Plan("raced", "allgather", 3, 3, gpus=gpus)
    exs = executors(plan, 2)
    from taccl_py.runtime import executor as mod

    assert mod._POST not in [ins[0] for ins in exs[1].program]
    inputs = [np.full(2, 10 * (r + 1), dtype=np.int64) for r in range(3)]
    outs = run_all(exs, [x.copy() for x in inputs], [np.zeros(6, np.int64) for _ in range(3)])
    assert outs[2][:2].tolist() == [10, 10]  # rank 0's input, relayed by rank 1
    assert outs[1][2:4].tolist() == [30, 30]  # rank 2's input
