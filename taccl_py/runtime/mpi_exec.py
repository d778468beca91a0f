"""Run one rank's part of a plan over MPI (mpi4py): the executor with an MPI transport.

Messages are byte ``Irecv``/``Isend`` on a communicator no other traffic uses; completion
is polled with ``Testsome`` plus ``sched_yield`` (a blocking ``Waitsome`` makes MPICH spin
and starve co-located ranks when ranks outnumber cores).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import TacclError
from ..plan.model import Plan
from . import executor


class MpiTransport:
    """:class:`~taccl_py.runtime.executor.Transport` over an mpi4py communicator."""

    def __init__(self, comm) -> None:
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.tag_ub = comm.Get_attr(MPI.TAG_UB) or 32767

    def irecv(self, target, peer, tag):
        return self.comm.Irecv([target, self.MPI.BYTE], source=peer, tag=tag)

    def isend(self, data, peer, tag):
        return self.comm.Isend([data, self.MPI.BYTE], dest=peer, tag=tag)

    def progress(self, reqs, block):
        done = self.MPI.Request.Testsome(reqs)
        if not done and block > 0:
            os.sched_yield()
        return done or []

    def cancel(self, reqs):
        for r in reqs:
            try:
                r.Cancel()
            except Exception:  # pragma: no cover - best effort
                pass


def mpi_executor(
    plan: Plan, comm, chunk_elems: int, dtype, redop: str | None = None
) -> executor.PlanExecutor:
    """This rank's compiled part of ``plan`` over ``comm`` (give it a ``Dup`` made up front:
    a collective ``Dup`` later would block without a timeout if a peer is gone); ``redop``
    (sum, prod, max, min) overrides the plan's, as the NCCL call's op does on a GPU."""
    return executor.PlanExecutor(
        plan, MpiTransport(comm), comm.Get_rank(), comm.Get_size(), chunk_elems, dtype, redop
    )


def run_plan(
    plan: Plan,
    comm,
    sendbuf: np.ndarray,
    recvbuf: np.ndarray,
    *,
    timeout: float = 60.0,
    redop: str | None = None,
) -> np.ndarray:
    """Run this rank's part of ``plan``: ``sendbuf`` holds the collective's input chunks,
    ``recvbuf`` receives its output chunks (both 1-D-able, same dtype). Returns ``recvbuf``.
    For a rooted plan every rank passes both buffers at full size: a Broadcast's or
    Scatter's other ranks' input is not read, a Reduce's or Gather's other ranks' output
    holds nothing meaningful.

    Every rank of ``comm`` (``plan.ngpus`` of them) must call it; ``comm`` should carry no
    other point-to-point traffic meanwhile (pass ``comm.Dup()`` made once, up front).

    Under ``mpirun -n 4``, each rank:

    >>> from mpi4py import MPI  # doctest: +SKIP
    >>> from taccl_py.testing.plans import direct_allgather  # doctest: +SKIP
    >>> comm = MPI.COMM_WORLD.Dup()  # doctest: +SKIP
    >>> send = np.full(2, comm.Get_rank(), dtype=np.int32)  # doctest: +SKIP
    >>> run_plan(direct_allgather(4), comm, send, np.empty(8, dtype=np.int32))  # doctest: +SKIP
    array([0, 0, 1, 1, 2, 2, 3, 3], dtype=int32)
    """
    coll = plan.collective()
    size = np.asarray(sendbuf).size
    if size == 0 or size % coll.i_chunks:
        raise TacclError(
            f"send buffer of {size} elements is not a positive multiple of the "
            f"plan's {coll.i_chunks} input chunks"
        )
    ex = mpi_executor(plan, comm, size // coll.i_chunks, np.asarray(sendbuf).dtype, redop)
    return ex.run(sendbuf, recvbuf, timeout)
