"""Numeric reference executor: plans computed on real arrays agree with NumPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taccl_py.collectives import Collective
from taccl_py.errors import VerificationError
from taccl_py.plan.model import Plan
from taccl_py.plan.xml import parse_plan
from taccl_py.runtime.reference import check_reference, numpy_result, run_reference

EXTERNAL = Path(__file__).parent / "fixtures" / "external"
FIXTURES = sorted(EXTERNAL.glob("*.xml"))


def load(name: str) -> Plan:
    return parse_plan(EXTERNAL / f"{name}.xml")


def ring_tb(plan: Plan, rank: int):
    return next(t for t in plan.gpus[rank].tbs if t.send >= 0)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_external_fixtures_match_numpy(path: Path):
    plan = parse_plan(path)
    outputs = check_reference(plan)
    coll = plan.collective()
    assert [o.shape for o in outputs] == [(coll.o_chunks * 4,)] * plan.ngpus


@pytest.mark.parametrize(
    "name",
    [
        "ring_allreduce_8_inplace",
        "hierarchical_allreduce_2x4",
        "ring_reducescatter_8",
        "two_step_alltoall_2x4",
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_other_dtypes(name: str, dtype):
    outputs = check_reference(load(name), chunk_elems=3, dtype=dtype, seed=7)
    assert all(o.dtype == np.dtype(dtype) for o in outputs)


def test_inplace_allgather_takes_one_chunk_per_rank():
    plan = load("recursive_doubling_allgather_8_inplace")
    inputs = [np.full(2, float(r)) for r in range(8)]
    outputs = run_reference(plan, inputs)
    assert all(np.array_equal(o, np.repeat(np.arange(8.0), 2)) for o in outputs)


def test_inplace_allreduce_sums_integers_exactly():
    plan = load("ring_allreduce_8_inplace")
    inputs = [np.arange(8, dtype=np.int64) * 10 + r for r in range(8)]
    outputs = run_reference(plan, inputs)
    assert all(np.array_equal(o, np.arange(8) * 80 + 28) for o in outputs)


def test_numpy_result_semantics():
    a, b = np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])
    ag = numpy_result(Collective("allgather", 2, 2), [a[:2], b[:2]])
    assert [x.tolist() for x in ag] == [[1, 2, 10, 20]] * 2
    a2a = numpy_result(Collective("alltoall", 2, 2), [a, b])
    assert [x.tolist() for x in a2a] == [[1, 2, 10, 20], [3, 4, 30, 40]]
    rs = numpy_result(Collective("reducescatter", 2, 2), [a, b])
    assert [x.tolist() for x in rs] == [[11, 22], [33, 44]]
    ar = numpy_result(Collective("allreduce", 2, 2), [a, b])
    assert [x.tolist() for x in ar] == [[11, 22, 33, 44]] * 2


def test_swapped_receives_name_rank_and_offset():
    plan = load("ring_allgather_8")
    t = ring_tb(plan, 2)
    t.steps[1], t.steps[2] = t.steps[2], t.steps[1]
    for i, st in enumerate(t.steps):
        st.s = i
    with pytest.raises(VerificationError, match=r"rank 2 output offset 0 \(element 0\)"):
        check_reference(plan)


def test_doubled_reduction_gives_wrong_sum():
    plan = load("ring_allreduce_8_inplace")
    last = ring_tb(plan, 0).steps[-1]
    last.type, last.srcbuf, last.srcoff = "rrc", last.dstbuf, last.dstoff
    with pytest.raises(VerificationError, match="rank 0 output offset 1"):
        check_reference(plan, dtype=np.int32)


def test_unwritten_output_is_reported():
    plan = load("ring_allgather_8")
    ring_tb(plan, 3).steps[-1].dstoff = 5
    with pytest.raises(VerificationError, match="rank 3 output chunk 4 is never written"):
        check_reference(plan)


def test_race_is_reported_by_the_shared_interpreter():
    plan = load("hierarchical_allreduce_2x4")
    st = plan.gpus[2].tbs[1].steps[0]
    st.depid = st.deps = -1
    with pytest.raises(VerificationError, match="race on rank 2 s"):
        check_reference(plan)


@pytest.mark.parametrize(
    "inputs",
    [
        [np.zeros(8)] * 7,
        [np.zeros(7)] * 8,
        [np.zeros(8)] * 7 + [np.zeros(16)],
    ],
)
def test_bad_inputs(inputs):
    with pytest.raises(ValueError):
        run_reference(load("allpairs_alltoall_8"), inputs)


# -- rooted collectives ------------------------------------------------------------------


def test_numpy_result_rooted_semantics():
    a, b, c = np.array([1, 2, 3]), np.array([10, 20, 30]), np.array([100, 200, 300])
    bc = numpy_result(Collective("broadcast", 3, root=1), [a, b, c])
    assert [x.tolist() for x in bc] == [[10, 20, 30]] * 3
    red = numpy_result(Collective("reduce", 3, root=2), [a, b, c])
    assert [x.tolist() for x in red] == [[], [], [111, 222, 333]]
    ga = numpy_result(Collective("gather", 3, root=1), [a[:1], b[:1], c[:1]])
    assert [x.tolist() for x in ga] == [[], [1, 10, 100], []]
    sc = numpy_result(Collective("scatter", 3, root=0), [a, b, c])
    assert [x.tolist() for x in sc] == [[1], [2], [3]]


def rooted_plan(kind: str, inplace: bool, root: int = 2) -> Plan:
    """A direct plan for ``kind`` on 4 ranks behind one switch (lowered, not verified: the
    reference run is the check here)."""
    from taccl_py.lowering.lower import LowerOptions
    from taccl_py.lowering.lower import lower as lower_plan
    from taccl_py.synth.methods import SynthOptions, synthesize
    from taccl_py.topology.model import FULL_BISECTION, Switch, Topology

    topo = Topology(
        "host4", 4, 1, (), (Switch("host", 0, (0, 1, 2, 3), 1e10, 1e-6),), (), FULL_BISECTION
    )
    coll = Collective(kind, 4, 1, inplace, root=root)
    alg = synthesize(topo, coll, "direct", SynthOptions())
    return lower_plan(alg, topo, LowerOptions(name=f"{kind}-{int(inplace)}"))


@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
@pytest.mark.parametrize("kind", ["broadcast", "reduce", "gather", "scatter"])
def test_rooted_plans_match_numpy(kind: str, inplace: bool):
    plan = rooted_plan(kind, inplace)
    outputs = check_reference(plan, chunk_elems=3, dtype=np.int64, seed=5)
    sizes = [o.size for o in outputs]
    if kind in ("reduce", "gather"):
        assert sizes == [0, 0, 12, 0]  # only the root gets an output
    else:
        assert sizes == [12 if kind == "broadcast" else 3] * 4


@pytest.mark.parametrize("kind", ["broadcast", "scatter"])
def test_rooted_plans_read_only_the_roots_input(kind: str):
    plan = rooted_plan(kind, False, root=1)
    inputs = [np.arange(8.0) + 100 * r for r in range(4)]
    first = run_reference(plan, inputs)
    inputs[0][:] = inputs[2][:] = inputs[3][:] = -1.0  # nobody reads these
    again = run_reference(plan, inputs)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    whole = np.concatenate(first) if kind == "scatter" else first[3]
    assert whole.tolist() == list(np.arange(8.0) + 100)


def test_reduce_to_nonzero_root_sums_integers_exactly():
    plan = rooted_plan("reduce", False, root=3)
    inputs = [np.arange(4, dtype=np.int32) * 10 + r for r in range(4)]
    outputs = run_reference(plan, inputs)
    assert outputs[3].tolist() == [6, 46, 86, 126] and all(o.size == 0 for o in outputs[:3])
