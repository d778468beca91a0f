"""AllGather by a taccl plan over MPI: ``mpiexec -n 4 python examples/mpi_allgather.py``.

Rank 0 synthesizes a plan for this job's rank count and size (``--method milp`` on n ranks
behind one switch; milp keeps the ring or direct plan when that simulates faster) or loads
``--plan FILE``, and broadcasts it as XML. Every rank runs its part with ``mpi_executor``,
checks the output against ``MPI_Allgather`` and times both.
"""

from __future__ import annotations

import argparse

import numpy as np
from mpi4py import MPI

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.plan.xml import parse_plan, plan_to_xml
from taccl_py.runtime.mpi_exec import mpi_executor
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.model import FULL_BISECTION, Switch, Topology
from taccl_py.util.units import format_size, parse_size


def synthesize(n: int, size: int) -> str:
    """The XML of an AllGather plan for n CPU ranks behind one switch, made for ``size``."""
    host = Topology(
        f"host{n}", n, 1, (), (Switch("host", 0, tuple(range(n)), 1e10, 1e-6),), (), FULL_BISECTION
    )
    return plan_to_xml(
        build_plan(
            host, Collective("allgather", n), "milp", synth=SynthOptions(size=size, time_limit=10)
        ).plan
    )


def timed(comm, fn, iters: int = 5) -> float:
    """Mean seconds per call after one warm-up call, the slowest rank's."""
    fn()
    comm.Barrier()
    t0 = MPI.Wtime()
    for _ in range(iters):
        fn()
    return comm.allreduce((MPI.Wtime() - t0) / iters, op=MPI.MAX)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="16M", help="output buffer in bytes of float32")
    ap.add_argument("--plan", help="an AllGather XML plan to run instead of synthesizing one")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD.Dup()  # the plan's messages meet no other traffic
    rank, n = comm.Get_rank(), comm.Get_size()
    size = parse_size(args.size)
    xml = None
    if rank == 0:
        xml = open(args.plan, encoding="utf-8").read() if args.plan else synthesize(n, size)
    plan = parse_plan(comm.bcast(xml))
    coll = plan.collective()
    if coll.kind != "allgather" or plan.ngpus != n or size % (4 * coll.o_chunks):
        raise SystemExit(
            f"{plan.name}: needs an AllGather plan for {n} ranks whose "
            f"{coll.o_chunks} output chunks divide {size} B of float32"
            if rank == 0
            else 1
        )  # every rank exits, rank 0 says why
    chunk = size // 4 // coll.o_chunks
    send = (np.arange(chunk * coll.i_chunks) % 997 + 1000 * rank).astype(np.float32)
    out, ref = np.empty(size // 4, np.float32), np.empty(size // 4, np.float32)
    ex = mpi_executor(plan, comm, chunk, np.float32)
    ex.run(send, out, 60.0)
    comm.Allgather(send, ref)
    if not comm.allreduce(bool(np.array_equal(out, ref)), op=MPI.LAND):
        raise SystemExit(f"rank {rank}: plan output differs from MPI_Allgather")
    t_plan = timed(comm, lambda: ex.run(send, out, 60.0))
    t_mpi = timed(comm, lambda: comm.Allgather(send, ref))
    if rank == 0:
        print(
            f"allgather ok: {plan.name} on {n} ranks, {format_size(size)}: plan "
            f"{t_plan * 1e3:.2f} ms, MPI_Allgather {t_mpi * 1e3:.2f} ms "
            f"({t_plan / t_mpi:.2f}x)",
            flush=True,
        )
    comm.Free()


if __name__ == "__main__":
    main()
