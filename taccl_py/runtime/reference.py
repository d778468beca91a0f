"""Numeric reference executor: run a plan on real arrays and compare with NumPy's answer.

Uses the verifier's :class:`~taccl_py.plan.verify.Interpreter` (same scheduling, FIFO
matching, race and deadlock checks); a chunk's value is an array of ``chunk_elems``
elements and a reduction is a sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..collectives import (
    ALLGATHER,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    SCATTER,
    Collective,
)
from ..errors import VerificationError
from ..plan.model import Plan
from ..plan.verify import Interpreter, check_limits
from ..util.nogc import gc_paused


@gc_paused()
def run_reference(plan: Plan, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Execute ``plan`` on each rank's 1-D input buffer; return each rank's output buffer.

    A rank's input holds the collective's ``i_chunks`` chunks (for in-place plans too: it is
    placed where the plan aliases it); the output holds ``o_chunks`` chunks. A rank that
    gets no output (not the root of a Reduce or Gather) gets an empty array; the inputs of
    a Broadcast's or Scatter's other ranks are read by nobody (any values will do).

    >>> from taccl_py.testing.plans import direct_allgather
    >>> outputs = run_reference(direct_allgather(2), [np.array([1, 2]), np.array([3, 4])])
    >>> [out.tolist() for out in outputs]
    [[1, 2, 3, 4], [1, 2, 3, 4]]
    """
    check_limits(plan)
    coll = plan.collective()
    arrays = [np.asarray(a).reshape(-1) for a in inputs]
    if len(arrays) != plan.ngpus:
        raise ValueError(f"{len(arrays)} input buffers for a {plan.ngpus}-rank plan")
    size = arrays[0].size
    if size == 0 or size % coll.i_chunks or any(a.size != size for a in arrays):
        raise ValueError(
            f"every input buffer needs the same multiple of {coll.i_chunks} "
            f"elements, got sizes {sorted({a.size for a in arrays})}"
        )
    ce = size // coll.i_chunks
    run = Interpreter(
        plan, lambda rank, j: arrays[rank][j * ce : (j + 1) * ce].copy(), np.add
    ).run()
    outputs = []
    for rank in range(plan.ngpus):
        if not receives_output(coll, rank):
            outputs.append(np.empty(0, dtype=arrays[rank].dtype))
            continue
        out = np.empty(coll.o_chunks * ce, dtype=arrays[rank].dtype)
        for index in range(coll.o_chunks):
            value = run.output(rank, index)
            if value is None:
                raise VerificationError(f"rank {rank} output chunk {index} is never written")
            out[index * ce : (index + 1) * ce] = value
        outputs.append(out)
    return outputs


def receives_output(coll: Collective, rank: int) -> bool:
    """Whether ``rank`` ends with output chunks (every rank, but for a Reduce or Gather
    only the root).

    >>> receives_output(Collective("gather", 4, root=1), 1), receives_output(
    ...     Collective("reduce", 4, root=1), 2)
    (True, False)
    """
    return coll.kind not in (REDUCE, GATHER) or rank == coll.root


def numpy_result(coll: Collective, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What the collective computes on ``inputs``, by NumPy (reduction = sum).

    Each rank's input is its whole send buffer (``i_chunks`` chunks); a rank that gets no
    output (see :func:`receives_output`) gets an empty array.

    >>> [out.tolist() for out in numpy_result(Collective("rs", 2), [np.arange(2)] * 2)]
    [[0], [2]]
    >>> scatter = Collective("scatter", 2, root=1)
    >>> [out.tolist() for out in numpy_result(scatter, [np.array([1, 2]), np.array([3, 4])])]
    [[3], [4]]
    """
    stacked = np.stack([np.asarray(a).reshape(-1) for a in inputs])
    n, root = coll.num_ranks, coll.root
    none = np.empty(0, dtype=stacked.dtype)
    if coll.kind == ALLGATHER:
        return [stacked.reshape(-1).copy() for _ in range(n)]
    if coll.kind == GATHER:
        return [stacked.reshape(-1).copy() if r == root else none.copy() for r in range(n)]
    if coll.kind == ALLTOALL:
        blocks = stacked.reshape(n, n, -1).transpose(1, 0, 2).reshape(n, -1)
        return [blocks[d].copy() for d in range(n)]
    if coll.kind == BROADCAST:
        return [stacked[root].copy() for _ in range(n)]
    if coll.kind == SCATTER:
        return [part.copy() for part in stacked[root].reshape(n, -1)]
    total = stacked.sum(axis=0, dtype=stacked.dtype)
    if coll.kind == REDUCESCATTER:
        return [part.copy() for part in total.reshape(n, -1)]
    if coll.kind == REDUCE:
        return [total.copy() if r == root else none.copy() for r in range(n)]
    return [total.copy() for _ in range(n)]


def check_reference(
    plan: Plan, chunk_elems: int = 4, dtype=np.float64, seed: int = 0
) -> list[np.ndarray]:
    """Run ``plan`` on random inputs and compare with :func:`numpy_result`.

    Raises :class:`VerificationError` naming the first wrong rank and output offset;
    returns the outputs otherwise.

    >>> from taccl_py.testing.plans import direct_allgather
    >>> [out.shape for out in check_reference(direct_allgather(3), chunk_elems=2)]
    [(6,), (6,), (6,)]
    """
    coll = plan.collective()
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    shape = coll.i_chunks * chunk_elems
    if dt.kind == "f":
        inputs = [rng.standard_normal(shape).astype(dt) for _ in range(plan.ngpus)]
        tol = 8 * plan.ngpus * float(np.finfo(dt).eps) * max(1.0, max(abs(a).max() for a in inputs))
    else:
        inputs = [rng.integers(0, 100, shape).astype(dt) for _ in range(plan.ngpus)]
        tol = 0.0
    outputs = run_reference(plan, inputs)
    for rank, (got, want) in enumerate(zip(outputs, numpy_result(coll, inputs))):
        bad = np.flatnonzero(np.abs(got.astype(np.float64) - want.astype(np.float64)) > tol)
        if bad.size:
            chunk, elem = divmod(int(bad[0]), chunk_elems)
            raise VerificationError(
                f"reference run of {plan.name}: rank {rank} output offset {chunk} (element "
                f"{elem}): expected {want[bad[0]].item()!r}, got {got[bad[0]].item()!r}"
            )
    return outputs
