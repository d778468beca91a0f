"""runtime.rounds (round schedule + NumPy executor) and cuda_exec's single-device engine
run on CPU with NumPy and host streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import KINDS, Collective
from taccl_py.errors import TacclError, TopologyError, VerificationError
from taccl_py.plan.model import SEND_TYPES, GpuPlan, Plan, Step, Threadblock
from taccl_py.plan.verify import verify
from taccl_py.runtime.cuda_exec import HostDevice, run_single_device
from taccl_py.runtime.reference import numpy_result
from taccl_py.runtime.rounds import plan_rounds, run_rounds
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.loader import load_topology

from .strategies import topologies
from .test_mpi_exec import ring4

CASES = [
    (kind, method, inplace)
    for kind in KINDS
    for method in ("ring", "direct")
    for inplace in (False, True)
] + [("allreduce", "tree", False), ("allreduce", "tree", True)]


def _inputs(plan: Plan, ce: int = 3, dtype=np.int64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(-1000, 1000, plan.collective().i_chunks * ce).astype(dtype)
        for _ in range(plan.ngpus)
    ]


def _assert_exact(plan: Plan, outputs, inputs) -> None:
    for rank, (got, want) in enumerate(zip(outputs, numpy_result(plan.collective(), inputs))):
        assert got.dtype == want.dtype and np.array_equal(got, want), f"rank {rank}"


@pytest.fixture(scope="module")
def plans() -> dict:
    topo = load_topology("dgx1")
    made = {(k, m, ip): build_plan(ring4(), Collective(k, 4, 2, ip), m).plan for k, m, ip in CASES}
    made["dgx1"] = build_plan(topo, Collective("allreduce", 8, 1), "ring").plan
    made["milp"] = build_plan(
        topo, Collective("allgather", 8, 1), "milp", synth=SynthOptions(time_limit=2)
    ).plan
    return made


@pytest.mark.parametrize("key", CASES + ["dgx1", "milp"], ids=str)
def test_rounds_compute_the_collective(plans, key):
    plan = plans[key]
    sched = plan_rounds(plan)
    inputs = _inputs(plan)
    _assert_exact(plan, run_rounds(plan, inputs, sched), inputs)
    _check_structure(plan, sched)
    for seed in (None, 1):
        _assert_exact(plan, run_single_device(plan, inputs, HostDevice(seed), sched), inputs)


def _check_structure(plan: Plan, sched) -> None:
    steps = {(g.id, tb.id, st.s): st for g in plan.gpus for tb in g.tbs for st in tb.steps}
    assert set(sched.timing) == set(steps) and len(sched.order) == len(steps)
    for sid, t in sched.timing.items():
        rank, tbid, s = sid
        preds = [p for p in ((rank, tbid, s - 1) if s else None, sched.deps.get(sid)) if p]
        for p in preds:  # same time only when the predecessor is a send of the same group
            done = sched.timing[p].done
            assert done < t.start or (done == t.start and t.start[1] == 0), (sid, p)
        kind = steps[sid].type
        if sid in sched.senders:  # a receiving step runs once its message has moved
            assert t.received == sched.timing[sched.senders[sid]].sent <= t.start[0]
        if kind in SEND_TYPES and kind != "s":  # fused: forwards strictly after receipt
            assert t.start[0] < t.sent == t.done[0]
    for k in range(sched.nrounds):  # a group's sends and receives match pair by pair
        sends = sorted(
            (p.rank, m.peer, m.chan, m.seq, m.cnt) for p in sched.ranks for m in p.rounds[k].sends
        )
        recvs = sorted(
            (m.peer, p.rank, m.chan, m.seq, m.cnt) for p in sched.ranks for m in p.rounds[k].recvs
        )
        assert sends == recvs


def test_schedule_is_deterministic(plans):
    plan = plans[("allreduce", "ring", False)]
    a, b = plan_rounds(plan), plan_rounds(plan)
    assert a.nrounds == b.nrounds > 1
    assert [p.rounds for p in a.ranks] == [p.rounds for p in b.ranks]


@pytest.mark.parametrize(
    "redop,fold", [("max", np.maximum), ("min", np.minimum), ("prod", np.multiply)]
)
def test_other_redops(plans, redop, fold):
    plan = plans[("allreduce", "ring", False)]
    plan = Plan(**{**plan.__dict__, "redop": redop})
    inputs = _inputs(plan, dtype=np.int32)
    want = fold.reduce(np.stack(inputs), axis=0, dtype=np.int32)
    for out in (run_rounds(plan, inputs), run_single_device(plan, inputs, HostDevice(3))):
        assert all(np.array_equal(o, want) for o in out)


def _two_rank_plan(first: str) -> Plan:
    """Allgather on 2 ranks; each rank's threadblock starts with ``first`` ('r' or 's')."""
    gpus = []
    for rank in range(2):
        peer = 1 - rank
        send = Step(0, "s", "i", 0, None, -1)
        recv = Step(0, "r", None, -1, "o", peer)
        order = [recv, send] if first == "r" else [send, recv]
        for s, step in enumerate(order):
            step.s = s
        cpy = Threadblock(1, steps=[Step(0, "cpy", "i", 0, "o", rank, hasdep=0)])
        gpus.append(GpuPlan(rank, 1, 2, 0, [Threadblock(0, peer, peer, 0, order), cpy]))
    return Plan("hand", "allgather", 2, 2, gpus=gpus)


def test_deadlock_is_reported():
    with pytest.raises(VerificationError, match="deadlock.*waits for a message from rank"):
        plan_rounds(_two_rank_plan("r"))


def test_send_first_exchange_needs_no_buffering():
    """Both ranks send before they receive: fine (receives are posted with the sends)."""
    plan = _two_rank_plan("s")
    verify(plan)
    sched = plan_rounds(plan)
    inputs = [np.array([1, 2]), np.array([3, 4])]
    assert all(np.array_equal(o, [1, 2, 3, 4]) for o in run_rounds(plan, inputs, sched))


def test_unmatched_send_is_reported():
    plan = _two_rank_plan("s")
    plan.gpus[1].tbs[0].steps.pop()  # rank 1 never receives
    with pytest.raises(VerificationError, match="unmatched send"):
        plan_rounds(plan)


def test_bad_inputs_and_dtypes(plans):
    plan = plans[("allgather", "ring", False)]
    with pytest.raises(ValueError, match="input buffers"):
        run_rounds(plan, _inputs(plan)[:2])
    with pytest.raises(TacclError, match="redop"):
        run_rounds(Plan(**{**plan.__dict__, "redop": "avg"}), _inputs(plan))


class _NoWaitDevice(HostDevice):
    def wait(self, stream, event) -> None:  # drops every event wait
        pass


def test_host_device_catches_missing_synchronisation(plans):
    plan = plans[("allreduce", "ring", False)]
    inputs = _inputs(plan)
    want = numpy_result(plan.collective(), inputs)
    wrong = 0
    for seed in range(5):
        out = run_single_device(plan, inputs, _NoWaitDevice(seed))
        wrong += not all(np.array_equal(o, w) for o, w in zip(out, want))
    assert wrong > 0


@settings(max_examples=25)
@given(
    topo=topologies(),
    kind=st.sampled_from(KINDS),
    chunkup=st.integers(1, 2),
    method=st.sampled_from(("ring", "direct")),
    inplace=st.booleans(),
    seed=st.integers(0, 3),
)
def test_random_plans(topo, kind, chunkup, method, inplace, seed):
    try:
        plan = build_plan(topo, Collective(kind, topo.num_ranks, chunkup, inplace), method).plan
    except TopologyError:
        return
    inputs = _inputs(plan, ce=2, dtype=np.int32, seed=seed)
    sched = plan_rounds(plan)
    _assert_exact(plan, run_rounds(plan, inputs, sched), inputs)
    _assert_exact(plan, run_single_device(plan, inputs, HostDevice(seed), sched), inputs)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("kind", ["broadcast", "reduce", "gather", "scatter"])
def test_rooted_plans_run_as_the_collective_defines(kind, inplace):
    from taccl_py.build.pipeline import build_plan
    from taccl_py.runtime.reference import numpy_result
    from taccl_py.topology.loader import load_topology

    topo = load_topology("dgx1")
    for method in ("direct", "ring"):
        plan = build_plan(topo, Collective(kind, 8, root=3, inplace=inplace), method).plan
        coll = plan.collective()
        rng = np.random.default_rng(7)
        inputs = [rng.integers(-50, 50, coll.i_chunks * 3).astype(np.float64) for _ in range(8)]
        got = run_rounds(plan, inputs)
        want = numpy_result(coll, inputs)
        assert [g.tolist() for g in got] == [w.tolist() for w in want], method
