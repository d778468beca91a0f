"""``taccl run``: run a plan under mpiexec, check it against MPI's collective, time both."""

from __future__ import annotations

import os
import sys

import numpy as np

from ..collectives import ALLGATHER, ALLREDUCE, ALLTOALL, REDUCESCATTER
from ..errors import TacclError
from ..util.fileio import display_path
from ..util.units import format_size, host_memory

BUSBW = {
    ALLGATHER: lambda n: (n - 1) / n,
    ALLTOALL: lambda n: (n - 1) / n,
    REDUCESCATTER: lambda n: (n - 1) / n,
    ALLREDUCE: lambda n: 2 * (n - 1) / n,
}


def _fail_all(comm, message: str) -> None:
    """An error every rank sees alike: rank 0 prints it, every rank exits 2."""
    if comm.Get_rank() == 0:
        print(f"taccl: error: {message}", file=sys.stderr, flush=True)
    comm.Barrier()
    raise SystemExit(2)


def _dtype(name: str) -> np.dtype:
    """A numeric NumPy dtype MPI can reduce, or a one-line error."""
    try:
        dt = np.dtype(name)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.kind not in "biuf" or dt.itemsize > 8:
        raise TacclError(
            f"unsupported dtype {name!r}: use a numeric type such as float32, "
            f"float64, int32 or uint8"
        )
    return dt


def _check_memory(coll, ce: int, dt: np.dtype, nprocs: int) -> None:
    """Refuse buffers that the ranks on this host could not hold together (input, output and
    MPI's reference output per rank)."""
    need = (coll.i_chunks + 2 * coll.o_chunks) * ce * dt.itemsize * nprocs
    have = host_memory()
    if need > have:
        raise TacclError(
            f"buffers of {format_size(need)} for {nprocs} ranks exceed this "
            f"host's {format_size(have)} of memory; use a smaller --size"
        )


def _inputs(coll, rank: int, nelems: int, dtype: np.dtype) -> np.ndarray:
    i = np.arange(nelems, dtype=np.int64)
    vals = (i * 7 + rank * 13 + 1) % 61
    if dtype.kind == "f":
        return (vals / 4.0).astype(dtype)  # exact in float16 and up
    if dtype.kind == "b":
        return (vals % 2).astype(dtype)
    return vals.astype(dtype)


def _native(MPI, comm, kind, send, recv, op):
    if kind == ALLGATHER:
        comm.Allgather(send, recv)
    elif kind == ALLTOALL:
        comm.Alltoall(send, recv)
    elif kind == ALLREDUCE:
        comm.Allreduce(send, recv, op=op)
    else:
        comm.Reduce_scatter_block(send, recv, op=op)


def run_command(
    plan_path, size: int, dtype: str, check: bool, iters: int, warmup: int, timeout: float
) -> None:
    try:
        from mpi4py import MPI
    except ImportError:
        raise TacclError("taccl run needs mpi4py (pip install mpi4py mpich)") from None
    from ..plan.verify import verify
    from ..plan.xml import parse_plan
    from .mpi_exec import mpi_executor

    comm = MPI.COMM_WORLD.Dup()  # the plan's messages never meet anyone else's
    rank, nprocs = comm.Get_rank(), comm.Get_size()
    # errors every rank hits alike: report once on rank 0, exit 2 everywhere
    try:
        plan = parse_plan(plan_path)
        verify(plan)
        if nprocs != plan.ngpus:
            raise TacclError(
                f"{display_path(plan_path)} is a {plan.ngpus}-rank plan but "
                f"mpiexec started "
                f"{nprocs} rank(s); use mpiexec -n {plan.ngpus}"
            )
        dt = _dtype(dtype)
        coll = plan.collective()
        unit = dt.itemsize * plan.nchunksperloop
        if size % unit:
            near = max(unit, size // unit * unit)
            raise TacclError(
                f"size {size} B is not a multiple of {unit} B ({plan.nchunksperloop} "
                f"chunks of {dt.itemsize}-byte {dt.name}); try --size {near} "
                f"({format_size(near)})"
            )
        nelems = size // dt.itemsize  # the nccl-tests buffer the size names
        ce = nelems // plan.nchunksperloop
        _check_memory(coll, ce, dt, nprocs)
        op = {"sum": MPI.SUM, "nop": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}.get(
            plan.redop, MPI.SUM
        )
        ex = mpi_executor(plan, comm, ce, dt)
    except TacclError as exc:
        _fail_all(comm, str(exc))
    send = _inputs(coll, rank, coll.i_chunks * ce, dt)
    out = np.zeros(coll.o_chunks * ce, dtype=dt)
    ref = np.zeros_like(out)
    try:
        ex.run(send, out, timeout)
        status = "unchecked"
        if check:
            _native(MPI, comm, coll.kind, send, ref, op)
            if dt.kind == "f":
                tol = 8 * nprocs * float(np.finfo(dt).eps) * max(1.0, float(np.abs(ref).max()))
                bad = np.flatnonzero(np.abs(out.astype(np.float64) - ref) > tol)
            else:
                bad = np.flatnonzero(out != ref)
            nbad = comm.allreduce(int(bad.size), op=MPI.SUM)
            if bad.size:
                e = int(bad[0])
                print(
                    f"taccl: error: rank {rank} output element {e} (chunk {e // ce}): "
                    f"expected {ref[e].item()!r}, got {out[e].item()!r}",
                    file=sys.stderr,
                    flush=True,
                )
            if nbad:
                comm.Barrier()
                raise SystemExit(1)
            status = "check ok"
        t_plan = _time(MPI, comm, lambda: ex.run(send, out, timeout), iters, warmup)
        t_mpi = _time(
            MPI, comm, lambda: _native(MPI, comm, coll.kind, send, ref, op), iters, warmup
        )
    except TacclError as exc:  # a peer died or hangs: every rank says why, then leaves
        print(f"taccl: error: {exc}", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(2)  # MPI_Finalize could hang on a dead peer
    if rank == 0:
        if check:
            print(f"{plan.name}: {status} against MPI {coll.kind} ({nprocs} ranks, {dt.name})")
        algbw = size / t_plan / 1e9 if t_plan else float("nan")
        busbw = algbw * BUSBW[coll.kind](nprocs)
        ratio = t_plan / t_mpi if t_mpi else float("nan")
        print(
            f"{'size':>10} {'count':>12} {'type':>8} {'time(us)':>10} {'algbw(GB/s)':>12} "
            f"{'busbw(GB/s)':>12} {'mpi(us)':>10} {'ratio':>7}"
        )
        print(
            f"{size:>10} {nelems:>12} {dt.name:>8} {t_plan * 1e6:>10.1f} {algbw:>12.3f} "
            f"{busbw:>12.3f} {t_mpi * 1e6:>10.1f} {ratio:>7.2f}",
            flush=True,
        )
    comm.Free()


def _time(MPI, comm, fn, iters: int, warmup: int) -> float:
    """Mean seconds per iteration (barrier before each), the slowest rank's."""
    for _ in range(warmup):
        fn()
    total = 0.0
    for _ in range(iters):
        comm.Barrier()
        t0 = MPI.Wtime()
        fn()
        total += MPI.Wtime() - t0
    mean = total / iters if iters else 0.0
    return comm.allreduce(mean, op=MPI.MAX)
