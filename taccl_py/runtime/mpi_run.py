"""``taccl run``: run plans under mpiexec as nccl-tests runs NCCL's collectives, check them
against MPI's own collective and time both.

nccl-tests' conventions (read from its ``src/common.cu`` and one ``src/<collective>.cu``
per collective): sizes from ``-b`` to ``-e`` times ``-f`` (or plus ``-i``); a size names the
larger of the send and receive buffers, and the per-rank counts of AllGather,
ReduceScatter, AllToAll, Gather and Scatter are rounded down to whole elements per rank
(so a row may show a little less than asked); ``count`` is the collective
call's count; algbw = size / time; busbw = algbw x :func:`bus_factor`; the
"Avg bus bandwidth" is the mean busbw over every timed cell. One difference: nccl-tests
also rounds those per-rank counts down to 16 bytes' worth of elements (GPU alignment); the
CPU executor needs none, so a size that splits evenly over the ranks is kept as asked (the
sizes existing ``--size`` callers pass keep working).

PLAN is one MSCCL XML file or a directory of them (a plan library). For each size and
placement the plan is picked as msccl-executor picks it (same collective, rank count and
in-place flag, minBytes <= size <= maxBytes with maxBytes 0 open, element count of the
larger buffer divisible by nchunksperloop; it ignores the root); where several match,
msccl-executor takes the first its directory listing gives, this run the one for the
asked root, then the narrowest size range, then the first file name (as the torch
backend's plan library does). Gather and Scatter plans are matched on the nccl-tests size
too, although msccl-executor counts their bytes per rank (no NCCL call selects them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import lcm
from pathlib import Path
from typing import Any

import numpy as np

from ..collectives import (
    ALL_KINDS,
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    ROOTED_KINDS,
    SCATTER,
    canonical_kind,
)
from ..errors import TacclError
from ..plan.model import Plan
from ..util.fileio import display_path
from ..util.units import format_size, host_memory

# -- nccl-tests conventions -------------------------------------------------------------------

#: bus bandwidth factor per collective, as nccl-tests' ``<Coll>GetBw`` (n ranks)
BUS_FACTORS: dict[str, Callable[[int], float]] = {
    ALLREDUCE: lambda n: 2 * (n - 1) / n,
    ALLGATHER: lambda n: (n - 1) / n,
    REDUCESCATTER: lambda n: (n - 1) / n,
    ALLTOALL: lambda n: (n - 1) / n,
    BROADCAST: lambda n: 1.0,
    REDUCE: lambda n: 1.0,
    GATHER: lambda n: (n - 1) / n,
    SCATTER: lambda n: (n - 1) / n,
}
BUSBW = BUS_FACTORS  # the name older callers use

#: collectives whose size nccl-tests splits into a per-rank count
_PER_RANK = (ALLGATHER, REDUCESCATTER, ALLTOALL, GATHER, SCATTER)
#: reduction ops the executor and both MSCCL runtimes run (avg falls back to NCCL)
OPS = ("sum", "prod", "max", "min")
#: nccl-tests' type names (bfloat16 aside: NumPy has none) -> NumPy dtype, in its order
NCCL_TYPES = {
    "int8": "int8",
    "uint8": "uint8",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "half": "float16",
    "float": "float32",
    "double": "float64",
}
#: other spellings (NCCL's own and NumPy's)
_TYPE_ALIASES = {
    "char": "int8",
    "int": "int32",
    "float16": "half",
    "float32": "float",
    "float64": "double",
}
#: most rows one sweep may have
MAX_ROWS = 1024


def bus_factor(kind: str, nranks: int) -> float:
    """busbw / algbw for ``kind`` on ``nranks`` ranks, as nccl-tests reports it.

    >>> bus_factor("allreduce", 4), bus_factor("gather", 4), bus_factor("broadcast", 4)
    (1.5, 0.75, 1.0)
    """
    return BUS_FACTORS[canonical_kind(kind)](nranks)


def sweep_sizes(minbytes: int, maxbytes: int, stepbytes: int = 1 << 20, stepfactor: int = 1):
    """The sizes nccl-tests visits: from ``minbytes`` while <= ``maxbytes``, times
    ``stepfactor`` when it is above 1, else plus ``stepbytes``.

    >>> sweep_sizes(1024, 8192, stepfactor=2)
    [1024, 2048, 4096, 8192]
    >>> sweep_sizes(1000, 3000, stepbytes=1000)
    [1000, 2000, 3000]
    """
    if minbytes < 1 or maxbytes < 1:
        raise TacclError(f"sizes must be at least 1 byte, got {minbytes} and {maxbytes}")
    if minbytes > maxbytes:
        raise TacclError(f"min size {minbytes} B is above max size {maxbytes} B")
    if stepfactor < 1:
        raise TacclError(f"step factor must be >= 1, got {stepfactor}")
    if stepfactor == 1 and stepbytes < 1 and maxbytes > minbytes:
        raise TacclError("step bytes must be >= 1 when the step factor is 1")
    sizes = [minbytes]
    while len(sizes) <= MAX_ROWS:
        nxt = sizes[-1] * stepfactor if stepfactor > 1 else sizes[-1] + stepbytes
        if nxt > maxbytes or nxt == sizes[-1]:
            return sizes
        sizes.append(nxt)
    raise TacclError(
        f"{format_size(minbytes)} to {format_size(maxbytes)} in steps of "
        + (f"x{stepfactor}" if stepfactor > 1 else f"+{format_size(stepbytes)}")
        + f" is more than {MAX_ROWS} sizes; use a larger step (e.g. -f 2)"
    )


def parse_dtypes(text: str) -> list[tuple[str, np.dtype]]:
    """``-d``: one type (nccl-tests' name or NumPy's), a comma list, or ``all``; returns
    (nccl-tests name, NumPy dtype) pairs without repeats.

    >>> [name for name, _ in parse_dtypes("float,int32,float32")]
    ['float', 'int32']
    >>> len(parse_dtypes("all"))
    9
    """
    names = [t.strip().lower() for t in str(text).split(",")]
    if names == ["all"]:
        names = list(NCCL_TYPES)
    out: dict[str, np.dtype] = {}
    for raw in names:
        name = _TYPE_ALIASES.get(raw, raw)
        if name not in NCCL_TYPES:
            raise TacclError(
                f"unsupported dtype {raw[:40]!r}: use one of {', '.join(NCCL_TYPES)} "
                f"(or float16/32/64), a comma list, or all"
            )
        out.setdefault(name, np.dtype(NCCL_TYPES[name]))
    return list(out.items())


def parse_ops(text: str) -> list[str]:
    """``-o``: sum, prod, max, min, a comma list, or all.

    >>> parse_ops("all"), parse_ops("max,sum,max")
    (['sum', 'prod', 'max', 'min'], ['max', 'sum'])
    """
    names = [t.strip().lower() for t in str(text).split(",")]
    if names == ["all"]:
        return list(OPS)
    for name in names:
        if name not in OPS:
            why = " (MSCCL runtimes leave avg to NCCL)" if name == "avg" else ""
            raise TacclError(f"unsupported op {name[:40]!r}{why}: use {', '.join(OPS)} or all")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Counts:
    """One row's buffers as nccl-tests sizes them (elements per rank)."""

    size: int  #: bytes of the larger buffer: the row's size
    count: int  #: the collective call's count
    send: int
    recv: int

    @property
    def larger(self) -> int:
        return max(self.send, self.recv)


def nccl_counts(kind: str, nranks: int, nbytes: int, itemsize: int) -> Counts:
    """The buffers nccl-tests uses for a ``kind`` row of ``nbytes`` (its
    ``<Coll>GetCollByteCount``, without the 16-byte rounding of per-rank counts).

    >>> nccl_counts("allgather", 3, 1024, 4)
    Counts(size=1020, count=85, send=85, recv=255)
    >>> nccl_counts("broadcast", 3, 1024, 4)
    Counts(size=1024, count=256, send=256, recv=256)
    """
    kind = canonical_kind(kind)
    count = nbytes // itemsize
    if kind not in _PER_RANK:
        return Counts(count * itemsize, count, count, count)
    base = count // nranks
    send, recv = {
        ALLGATHER: (base, base * nranks),
        GATHER: (base, base * nranks),
        REDUCESCATTER: (base * nranks, base),
        SCATTER: (base * nranks, base),
        ALLTOALL: (base * nranks, base * nranks),
    }[kind]
    return Counts(max(send, recv) * itemsize, base, send, recv)


# -- plans and their selection ----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A plan of the run and the name its rows show (its file name)."""

    name: str
    plan: Plan

    @property
    def kind(self) -> str:
        return canonical_kind(self.plan.coll)


def load_plans(path: Path) -> list[Entry]:
    """Every plan in ``path`` (an XML file, or a directory's ``*.xml`` in name order),
    parsed and verified; a plan that fails either is an error naming its file."""
    from ..plan.verify import verify
    from ..plan.xml import parse_plan

    path = Path(path)
    try:
        directory = path.is_dir()
    except OSError:  # e.g. a name too long: parse_plan says so in its one line
        directory = False
    files = sorted(path.glob("*.xml")) if directory else [path]
    if not files:
        raise TacclError(f"{display_path(path)} holds no .xml plan")
    out = []
    for f in files:
        plan = parse_plan(f)
        try:
            verify(plan)
        except TacclError as exc:
            if not directory:
                raise
            raise type(exc)(f"{display_path(f)}: {exc}") from None
        out.append(Entry(f.name, plan))
    return out


def size_granule(plan: Plan, nranks: int, itemsize: int) -> int:
    """Bytes every size ``plan`` can run at is a multiple of (a whole count per rank
    included).

    >>> from taccl_py.plan.model import Plan
    >>> ar, ga = Plan("p", "allreduce", 4, 6), Plan("p", "gather", 4, 4)
    >>> size_granule(ar, 4, 4), size_granule(ga, 4, 4)
    (24, 16)
    """
    kind = canonical_kind(plan.coll)
    unit = max(1, plan.nchunksperloop)
    if kind in _PER_RANK:
        unit = lcm(unit, nranks)
    return unit * itemsize


def plan_serves(plan: Plan, counts: Counts, itemsize: int = 4) -> str | None:
    """Why ``plan`` is not selected for a row of ``counts`` (None: it is), by
    msccl-executor's size rule and the executor's divisibility."""
    from ..plan.runtimes import RUNTIMES, size_range

    lo, hi = size_range(RUNTIMES["msccl-executor"], plan)
    if counts.larger == 0:
        return "no elements at this size"
    if counts.size < lo or (hi is not None and counts.size >= hi):
        top = "" if hi is None else f"..{hi - 1}"
        return f"{counts.size} B is outside its minBytes..maxBytes {lo}{top}"
    if counts.larger % plan.nchunksperloop:
        g = size_granule(plan, plan.ngpus, itemsize)
        near = max(g, counts.size // g * g)
        return (
            f"{counts.size} B is not a multiple of {g} B ({plan.nchunksperloop} chunks per "
            f"loop of {itemsize}-byte elements); try --size {near} ({format_size(near)})"
        )
    return None


def choose(
    entries: Sequence[Entry],
    kind: str,
    nranks: int,
    inplace: bool,
    counts: Counts,
    root: int | None,
    itemsize: int = 4,
) -> tuple[Entry | None, list[str]]:
    """The plan selected for a row (None if none) and, if none, why each candidate was not."""
    fits, why = [], []
    for e in entries:
        p = e.plan
        if e.kind != kind or p.ngpus != nranks or p.inplace != inplace:
            continue
        reason = plan_serves(p, counts, itemsize)
        if reason is not None:
            why.append(f"{e.name}: {reason}")
            continue
        width = (p.max_bytes or 1 << 62) - p.min_bytes
        fits.append((root is not None and p.root != root, width, e.name, e))
    if not fits:
        return None, why
    best = min(fits, key=lambda f: f[:3])
    return best[3], []


# -- inputs and references --------------------------------------------------------------------


def _inputs(rank: int, nelems: int, dtype: np.dtype, op: str) -> np.ndarray:
    """Values whose sums, products, max and min come out the same in any order."""
    i = np.arange(nelems, dtype=np.int64)
    vals = (i * 7 + rank * 13 + 1) % 61
    if op == "prod":
        vals = vals % 2 + 1  # powers of two: exact in floats, wrap alike in integers
        return vals.astype(dtype)
    if dtype.kind == "f":
        return (vals / 4.0).astype(dtype)  # exact in float16 and up
    return vals.astype(dtype)


def _receives(kind: str, rank: int, root: int) -> bool:
    return kind not in (REDUCE, GATHER) or rank == root


def _mpi_call(MPI, comm, kind: str, root: int, send, recv, op) -> Callable[[], Any]:
    """MPI's own out-of-place collective on these buffers."""
    rank = comm.Get_rank()
    at_root = rank == root
    if kind == ALLGATHER:
        return lambda: comm.Allgather(send, recv)
    if kind == ALLTOALL:
        return lambda: comm.Alltoall(send, recv)
    if kind == ALLREDUCE:
        return lambda: comm.Allreduce(send, recv, op=op)
    if kind == REDUCESCATTER:
        return lambda: comm.Reduce_scatter_block(send, recv, op=op)
    if kind == BROADCAST:
        return lambda: comm.Bcast(recv, root=root)
    if kind == REDUCE:
        return lambda: comm.Reduce(send, recv if at_root else None, op=op, root=root)
    if kind == GATHER:
        return lambda: comm.Gather(send, recv if at_root else None, root=root)
    return lambda: comm.Scatter(send if at_root else None, recv, root=root)


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
    return comm.allreduce(total / max(1, iters), op=MPI.MAX)


def _fail_all(comm, message: str) -> None:
    """An error every rank sees alike: rank 0 prints it, every rank exits 2."""
    if comm.Get_rank() == 0:
        print(f"taccl: error: {message}", file=sys.stderr, flush=True)
    comm.Barrier()
    raise SystemExit(2)


def _launched() -> bool:
    return any(
        v in os.environ for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
    )


@dataclass(frozen=True)
class RunOptions:
    """What ``taccl run`` was asked for (validated by the command line)."""

    sizes: tuple[int, ...]
    dtypes: tuple[tuple[str, np.dtype], ...]
    ops: tuple[str, ...] = ("sum",)
    root: int | None = None
    check: int = 1
    iters: int = 20
    warmup: int = 1
    timeout: float = 60.0
    collective: str | None = None


@dataclass
class _Cell:
    """One placement of one row: the plan, its time and wrong elements."""

    entry: Entry | None
    seconds: float = 0.0
    wrong: int = 0


def _plan_table(entries, nprocs, opts, path) -> list[tuple[str, int | None]]:
    """(kind, root) of each table to print, or a one-line error for the whole run."""
    ours = [e for e in entries if e.plan.ngpus == nprocs]
    if not ours:
        counts = sorted({e.plan.ngpus for e in entries})
        if len(entries) == 1:
            raise TacclError(
                f"{display_path(path)} is a {counts[0]}-rank plan but mpiexec started "
                f"{nprocs} rank(s); use mpiexec -n {counts[0]}"
            )
        raise TacclError(
            f"no plan in {display_path(path)} is for {nprocs} ranks (mpiexec -n): its "
            f"plans are for {', '.join(map(str, counts))}"
        )
    kinds = [k for k in ALL_KINDS if any(e.kind == k for e in ours)]
    if opts.collective is not None:
        if opts.collective not in kinds:
            raise TacclError(
                f"no {opts.collective} plan for {nprocs} ranks in {display_path(path)}"
                f" (it has {', '.join(kinds)})"
            )
        kinds = [opts.collective]
    if opts.root is not None and not 0 <= opts.root < nprocs:
        raise TacclError(f"root {opts.root} is not a rank of {nprocs} (0..{nprocs - 1})")
    if opts.root is not None and len(entries) == 1 and entries[0].kind in ROOTED_KINDS:
        plan = entries[0].plan
        if plan.root != opts.root:
            raise TacclError(
                f"{display_path(path)} is a {entries[0].kind} plan for root {plan.root}, "
                f"not root {opts.root} (MSCCL runtimes would run it anyway: wrong data); "
                f"use -r {plan.root}"
            )
    return [(k, opts.root) for k in kinds]


def _check_memory(rows, nprocs: int) -> None:
    """Refuse buffers that the ranks on this host could not hold together (input, output
    and MPI's reference output per rank, for the largest row)."""
    need = max((c.send + 2 * c.recv) * dt.itemsize for c, dt in rows) * nprocs if rows else 0
    have = host_memory()
    if need > have:
        raise TacclError(
            f"buffers of {format_size(need)} for {nprocs} ranks exceed this "
            f"host's {format_size(have)} of memory; use a smaller size (-e)"
        )


def run_command(path, opts: RunOptions) -> None:
    """``taccl run``: every rank calls it under mpiexec."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise TacclError("taccl run needs mpi4py (pip install mpi4py mpich)") from None

    comm = MPI.COMM_WORLD.Dup()  # the plans' messages never meet anyone else's
    rank, nprocs = comm.Get_rank(), comm.Get_size()
    try:  # errors every rank hits alike: rank 0 reports, every rank exits 2
        entries = load_plans(path)
        if nprocs == 1 and not _launched() and all(e.plan.ngpus > 1 for e in entries):
            need = min(e.plan.ngpus for e in entries)
            raise TacclError(
                f"taccl run runs a plan's ranks as MPI processes: start it with "
                f"mpiexec -n {need} taccl run ..."
            )
        tables = _plan_table(entries, nprocs, opts, path)
        rows = _rows(entries, tables, nprocs, opts)
        served = [r for r in rows if r.served]
        if not served:
            raise TacclError(_unserved(rows[0]))
        _check_memory([(r.counts, r.dt) for r in served], nprocs)
    except TacclError as exc:
        _fail_all(comm, str(exc))
    _print_header(path, nprocs, opts)
    bws: list[float] = []
    wrong_total = 0
    try:
        for row in rows:
            wrong_total += _run_row(MPI, comm, row, opts, bws)
    except TacclError as exc:  # a peer died or hangs: every rank says why, then leaves
        print(f"taccl: error: {exc}", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(2)  # MPI_Finalize could hang on a dead peer
    if rank == 0:
        avg = sum(bws) / len(bws) if bws else 0.0
        print(f"# {'Out of bounds values':<20} : {wrong_total} {'FAILED' if wrong_total else 'OK'}")
        print(f"# {'Avg bus bandwidth':<20} : {avg:g}")
        print("#")
        if opts.check and not wrong_total:
            print(f"# check ok: every timed plan matches MPI's own collective ({nprocs} ranks)")
        sys.stdout.flush()
    comm.Barrier()
    comm.Free()
    if wrong_total:
        raise SystemExit(1)


@dataclass
class _Row:
    """One line of the table: a size of one collective, type and op, both placements."""

    kind: str
    dname: str
    dt: np.dtype
    counts: Counts
    op: str
    root: int | None
    cells: tuple[_Cell, ...]
    why: list[str]  #: why no plan serves it (when none does)

    @property
    def served(self) -> bool:
        return any(c.entry is not None for c in self.cells)


def _rows(entries, tables, nprocs, opts: RunOptions) -> list[_Row]:
    rows = []
    for kind, root in tables:
        reducing = kind in (ALLREDUCE, REDUCESCATTER, REDUCE)
        for dname, dt in opts.dtypes:
            for op in opts.ops if reducing else ("none",):
                for size in opts.sizes:
                    counts = nccl_counts(kind, nprocs, size, dt.itemsize)
                    cells, why = [], []
                    for inplace in (False, True):
                        e, reasons = choose(
                            entries, kind, nprocs, inplace, counts, root, dt.itemsize
                        )
                        if e is not None and root is not None and e.plan.root != root:
                            reasons = [
                                f"{e.name} is for root {e.plan.root}, not {root} "
                                f"(msccl-executor would run it anyway: wrong data)"
                            ]
                            e = None
                        cells.append(_Cell(e))
                        why += reasons
                    rows.append(_Row(kind, dname, dt, counts, op, root, tuple(cells), why))
    return rows


def _unserved(row: _Row) -> str:
    what = f"{row.kind} of {row.counts.size} B ({row.counts.count} x {row.dname})"
    why = row.why
    if not why:
        return f"no plan serves {what}"
    more = f" (and {len(why) - 1} more)" if len(why) > 1 else ""
    return f"no plan serves {what}: {why[0]}{more}"


_HEAD = (
    f"# {'size':>10} {'count':>12} {'type':>6} {'redop':>6} {'root':>5}"
    f" {'time':>9} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
    f" {'time':>9} {'algbw':>7} {'busbw':>7} {'#wrong':>6} {'mpi':>9}  plans"
)
_UNITS = (
    f"# {'(B)':>10} {'(elements)':>12} {'':>6} {'':>6} {'':>5}"
    f" {'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
    f" {'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6} {'(us)':>9}  (out-of-place,in-place)"
)


def _print_header(path, nprocs: int, opts: RunOptions) -> None:
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() != 0:
        return
    print(
        f"# taccl run {display_path(path)}: {nprocs} ranks, iters {opts.iters}, warmup "
        f"{opts.warmup}, check {opts.check}, timeout {opts.timeout:g} s"
    )
    print("#")
    pad = " " * 41
    print(f"#{pad}{'out-of-place':>24}{'in-place':>34}")
    print(_HEAD)
    print(_UNITS, flush=True)


def _run_row(MPI, comm, row: _Row, opts: RunOptions, bws: list[float]) -> int:
    """Check and time one row on every rank; rank 0 prints it. Returns its wrong elements."""
    from .mpi_exec import mpi_executor

    kind, dname, dt, counts, op, root_opt, cells = (
        row.kind,
        row.dname,
        row.dt,
        row.counts,
        row.op,
        row.root,
        row.cells,
    )
    rank, nprocs = comm.Get_rank(), comm.Get_size()
    plan_root = next((c.entry.plan.root for c in cells if c.entry is not None), 0)
    root = plan_root if root_opt is None else root_opt
    shown_root = root if kind in ROOTED_KINDS else -1
    redop = op if op != "none" else "sum"
    mpi_op = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}[redop]
    lead = (
        f"{counts.size:>12} {counts.count:>12} {dname:>6} {op:>6} {shown_root:>5}"
        if rank == 0
        else ""
    )
    if not row.served:
        if rank == 0:
            print(f"{lead}  {_unserved(row)}", flush=True)
        return 0
    send = _inputs(rank, counts.send, dt, redop)
    out = np.zeros(counts.recv, dtype=dt)
    ref = np.zeros(counts.recv, dtype=dt)
    if kind == BROADCAST and rank == root:
        ref[...] = send
    native = _mpi_call(MPI, comm, kind, root, send, ref, mpi_op)
    native()  # the reference result, once
    t_mpi = _time(MPI, comm, native, opts.iters, opts.warmup)
    if kind == BROADCAST and rank == root:
        ref[...] = send
    total_wrong = 0
    for cell in cells:
        if cell.entry is None:
            continue
        plan = cell.entry.plan
        ce = counts.larger // plan.nchunksperloop
        ex = mpi_executor(plan, comm, ce, dt, redop)
        for _ in range(opts.check):
            out.fill(0)
            ex.run(send, out, opts.timeout)
            bad = _compare(out, ref, dt, nprocs) if _receives(kind, rank, root) else np.empty(0)
            if bad.size:
                e = int(bad[0])
                print(
                    f"taccl: error: rank {rank}: {cell.entry.name} at {counts.size} B "
                    f"({dname}, {op}): output element {e} (chunk {e // ce}): expected "
                    f"{ref[e].item()!r}, got {out[e].item()!r}",
                    file=sys.stderr,
                    flush=True,
                )
            cell.wrong = max(cell.wrong, comm.allreduce(int(bad.size), op=MPI.SUM))
        total_wrong += cell.wrong
        cell.seconds = _time(
            MPI, comm, lambda ex=ex: ex.run(send, out, opts.timeout), opts.iters, opts.warmup
        )
    if rank == 0:
        parts = [lead]
        for cell in cells:
            if cell.entry is None:
                parts.append(f"{'n/a':>9} {'':>7} {'':>7} {'':>6}")
                continue
            algbw = counts.size / cell.seconds / 1e9 if cell.seconds > 0 else 0.0
            busbw = algbw * bus_factor(kind, nprocs)
            bws.append(busbw)
            wrong = str(cell.wrong) if opts.check else "N/A"
            parts.append(f"{cell.seconds * 1e6:>9.1f} {algbw:>7.3f} {busbw:>7.3f} {wrong:>6}")
        names = ",".join(c.entry.name if c.entry else "-" for c in cells)
        parts.append(f"{t_mpi * 1e6:>9.1f}  {names}")
        print(" ".join(parts), flush=True)
    return total_wrong


def _compare(out: np.ndarray, ref: np.ndarray, dt: np.dtype, nprocs: int) -> np.ndarray:
    """Indices where ``out`` differs from MPI's ``ref`` (floats: within rounding)."""
    if dt.kind == "f":
        scale = max(1.0, float(np.abs(ref.astype(np.float64)).max(initial=0.0)))
        tol = 8 * nprocs * float(np.finfo(dt).eps) * scale
        return np.flatnonzero(~(np.abs(out.astype(np.float64) - ref.astype(np.float64)) <= tol))
    return np.flatnonzero(out != ref)
