"""runtime.cuda_exec on real GPUs: single-device mode, and NCCL when there are >= 2 GPUs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import KINDS, ROOTED_KINDS, Collective
from taccl_py.plan.model import has_input, has_output
from taccl_py.runtime.cuda_exec import NcclPlanExecutor, run_single_device
from taccl_py.runtime.reference import numpy_result
from taccl_py.topology.model import FULL_BISECTION, Link, Topology

cupy = pytest.importorskip("cupy")
pytestmark = pytest.mark.skipif(not cupy.cuda.is_available(), reason="needs a CUDA GPU")
GB, US = 1e9, 1e-6


def ring(n: int) -> Topology:
    links = [Link(a, b, 25 * GB, 0.7 * US) for a in range(n) for b in {(a + 1) % n, (a - 1) % n}]
    return Topology(f"ring{n}", n, 1, tuple(links), (), (), FULL_BISECTION)


def _inputs(coll: Collective, ce: int, dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.integers(-1000, 1000, coll.i_chunks * ce).astype(dtype) for _ in range(coll.num_ranks)
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("inplace", [False, True])
def test_single_device_matches_numpy(kind, inplace):
    coll = Collective(kind, 4, 2, inplace)
    plan = build_plan(ring(4), coll, "ring").plan
    inputs = _inputs(coll, 1000, np.int32)
    outputs = run_single_device(plan, [cupy.asarray(a) for a in inputs])
    for got, want in zip(outputs, numpy_result(coll, inputs)):
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(got), want)


@pytest.mark.parametrize("kind", ROOTED_KINDS)
def test_single_device_rooted_matches_numpy(kind):
    """Rooted plans, whose non-roots have 0-chunk buffers (no output: an empty array)."""
    plan = build_plan(ring(4), Collective(kind, 4, 2, root=1), "ring").plan
    coll = plan.collective()
    inputs = _inputs(coll, 1000, np.int32)
    outputs = run_single_device(plan, [cupy.asarray(a) for a in inputs])
    for got, want in zip(outputs, numpy_result(coll, inputs)):
        np.testing.assert_array_equal(cupy.asnumpy(got), want)


def _nccl_run(plan, inputs: list[np.ndarray], ce: int) -> list[np.ndarray]:
    """Each rank's output (empty where a rooted plan gives the rank none, which passes
    ``None`` buffers where it has no input or output)."""
    from cupy.cuda import nccl

    n = plan.ngpus
    coll = plan.collective()
    uid = nccl.get_unique_id()
    results: list = [None] * n
    errors: list = []

    def worker(rank: int) -> None:
        try:
            with cupy.cuda.Device(rank):
                comm = nccl.NcclCommunicator(n, uid, rank)
                ex = NcclPlanExecutor(plan, comm, rank, ce, inputs[rank].dtype)
                send = cupy.asarray(inputs[rank]) if has_input(coll, rank) else None
                out = has_output(coll, rank)
                recv = cupy.empty(coll.o_chunks * ce if out else 0, dtype=inputs[rank].dtype)
                for _ in range(2):  # reusable
                    recv.fill(0)
                    ex.run(send, recv if out else None)
                cupy.cuda.get_current_stream().synchronize()
                results[rank] = cupy.asnumpy(recv)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "NCCL run hung"
    return results


@pytest.mark.skipif(
    not cupy.cuda.is_available() or cupy.cuda.runtime.getDeviceCount() < 2, reason="needs >= 2 GPUs"
)
@pytest.mark.parametrize("kind", KINDS)
def test_nccl_matches_numpy(kind):
    n = min(cupy.cuda.runtime.getDeviceCount(), 4)
    plan = build_plan(ring(n), Collective(kind, n, 2), "ring").plan
    coll = plan.collective()
    inputs = _inputs(coll, 257, np.int64)
    for got, want in zip(_nccl_run(plan, inputs, 257), numpy_result(coll, inputs)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(
    not cupy.cuda.is_available() or cupy.cuda.runtime.getDeviceCount() < 2, reason="needs >= 2 GPUs"
)
@pytest.mark.parametrize("kind", ROOTED_KINDS)
def test_nccl_rooted_matches_numpy(kind):
    n = min(cupy.cuda.runtime.getDeviceCount(), 4)
    plan = build_plan(ring(n), Collective(kind, n, 2, root=n - 1), "ring").plan
    coll = plan.collective()
    inputs = _inputs(coll, 257, np.int64)
    for got, want in zip(_nccl_run(plan, inputs, 257), numpy_result(coll, inputs)):
        np.testing.assert_array_equal(got, want)
