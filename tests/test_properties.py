"""Property tests: random topologies x collectives x chunk-up -> every plan verifies,
and mutated plans are caught."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import KINDS, Collective
from taccl_py.errors import PlanError, TopologyError, VerificationError
from taccl_py.plan.model import LOCAL_TYPES, Plan
from taccl_py.plan.verify import verify
from taccl_py.runtime.reference import check_reference

from .strategies import topologies

SETTINGS = settings(max_examples=40)


def _plan_or_none(topo, kind, chunkup, method, inplace=False):
    coll = Collective(kind, topo.num_ranks, chunkup, inplace)
    try:
        return build_plan(topo, coll, method).plan
    except TopologyError:
        assert method == "ring"  # only a ring can be impossible (no Hamiltonian cycle)
        return None


@SETTINGS
@given(
    topo=topologies(),
    kind=st.sampled_from(KINDS),
    chunkup=st.integers(1, 3),
    method=st.sampled_from(("ring", "direct")),
    inplace=st.booleans(),
)
def test_generated_plans_verify_and_match_numpy(topo, kind, chunkup, method, inplace):
    plan = _plan_or_none(topo, kind, chunkup, method, inplace)
    if plan is None:
        return
    report = verify(plan)
    assert report.sends > 0
    check_reference(plan)


def _data_steps(plan: Plan):
    return [
        (gi, ti, si)
        for gi, g in enumerate(plan.gpus)
        for ti, tb in enumerate(g.tbs)
        for si, step in enumerate(tb.steps)
        if step.type not in LOCAL_TYPES or step.type == "cpy"
    ]


def _dead_store(plan: Plan, gpu: int, buf: str, off: int) -> bool:
    """True if no step of ``gpu`` reads ``buf[off]`` (only scratch can hold such stores)."""
    return buf == "s" and not any(
        st.srcbuf == buf and st.srcoff <= off < st.srcoff + st.cnt
        for tb in plan.gpus[gpu].tbs
        for st in tb.steps
    )


@SETTINGS
@given(
    topo=topologies(),
    kind=st.sampled_from(KINDS),
    method=st.sampled_from(("ring", "direct")),
    data=st.data(),
)
def test_mutated_offsets_are_caught(topo, kind, method, data):
    plan = _plan_or_none(topo, kind, 1, method)
    if plan is None:
        return
    gi, ti, si = data.draw(st.sampled_from(_data_steps(plan)))
    bad = copy.deepcopy(plan)
    step = bad.gpus[gi].tbs[ti].steps[si]
    field = (
        "dstoff"
        if step.dstbuf is not None and (step.srcbuf is None or data.draw(st.booleans()))
        else "srcoff"
    )
    delta = data.draw(st.sampled_from((-1, 1)))
    if field == "dstoff" and _dead_store(plan, gi, step.dstbuf, step.dstoff):
        return  # a relay's rcs store that nothing reads: moving it changes nothing
    setattr(step, field, getattr(step, field) + delta)
    try:
        verify(bad)
    except (VerificationError, PlanError):
        return
    raise AssertionError(f"mutation of rank {gi} tb {ti} step {si} {field} went unnoticed")


@SETTINGS
@given(
    topo=topologies(),
    kind=st.sampled_from(KINDS),
    method=st.sampled_from(("ring", "direct")),
    data=st.data(),
)
def test_dropped_steps_are_caught(topo, kind, method, data):
    plan = _plan_or_none(topo, kind, 1, method)
    if plan is None:
        return
    gi, ti, si = data.draw(st.sampled_from(_data_steps(plan)))
    bad = copy.deepcopy(plan)
    tb = bad.gpus[gi].tbs[ti]
    del tb.steps[si]
    for step in tb.steps[si:]:
        step.s -= 1
    for g in bad.gpus:  # keep dependencies pointing at the same steps
        for t in g.tbs:
            for step in t.steps:
                if g is bad.gpus[gi] and step.depid == ti and step.deps >= si:
                    step.deps = step.deps - 1 if step.deps > si else -1
                    if step.deps == -1:
                        step.depid = -1
    try:
        verify(bad)
    except (VerificationError, PlanError):
        return
    raise AssertionError(f"dropping rank {gi} tb {ti} step {si} went unnoticed")
