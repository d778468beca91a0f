"""GPU smoke test: every collective on all visible GPUs, checked against NCCL's own.

Two parts, one command, under ten minutes on a machine with >= 2 GPUs:

1. **executor**: one thread per GPU runs each collective's plan with
   :class:`~taccl_py.runtime.cuda_exec.NcclPlanExecutor` (CuPy + NCCL point-to-point) and
   NCCL's own collective (``allGather``, ``reduceScatter``, ``allReduce``; AllToAll as
   NCCL's grouped send/recv) on the same input; the outputs must be equal (integer-valued
   float32, so sums are exact) and both are timed with CUDA events, nccl-tests style
   (algbw = bytes / time, busbw = algbw x the collective's factor).
2. **torch**: ``torchrun --nproc_per_node N`` runs this script with ``--torch-worker``:
   every rank makes an ``nccl`` and a ``taccl`` group and compares all_reduce,
   all_gather_into_tensor, reduce_scatter_tensor, all_to_all_single, broadcast and reduce
   between them (every rank's results must be equal), then times the first four. (The
   remaining calls — gather, scatter, send/recv, list and uneven all-to-all — are covered
   on the stand-in by ``tests/test_cuda_route.py``.)

The plans come from the synthesizer (milp, else NCCL's ring) for the GPUs' topology
(``nvidia-smi topo -m`` when available); the torch part's broadcast and reduce run
Broadcast and Reduce plans made for their roots the same way. ``--dry-run`` runs both
parts on the CPU stand-in (:mod:`taccl_py.testing.fake_cuda`, 4 fake GPUs, ranks as
threads) with small sizes: every check, no timings.

Usage:
  python benchmarks/gpu_smoke.py                     # all visible GPUs
  python benchmarks/gpu_smoke.py --sizes 1K-256M --iters 20
  python benchmarks/gpu_smoke.py --dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from functools import partial
from pathlib import Path

import numpy as np

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    KINDS,
    REDUCE,
    REDUCESCATTER,
    Collective,
)
from taccl_py.errors import TacclError
from taccl_py.plan.xml import write_plan
from taccl_py.runtime.cuda_exec import NcclPlanExecutor
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.model import FULL_BISECTION, Link, Topology
from taccl_py.util.units import format_size, parse_size

#: nccl-tests' bus bandwidth factor of each collective on n ranks
BUS = {
    ALLREDUCE: lambda n: 2 * (n - 1) / n,
    ALLGATHER: lambda n: (n - 1) / n,
    REDUCESCATTER: lambda n: (n - 1) / n,
    ALLTOALL: lambda n: (n - 1) / n,
}
DRY_SIZES = (4096, 65536)
#: the torch part's names of the collectives that have a bus bandwidth
TORCH_KINDS = {
    "all_reduce": ALLREDUCE,
    "all_gather": ALLGATHER,
    "reduce_scatter": REDUCESCATTER,
    "all_to_all": ALLTOALL,
}


# -- plans --------------------------------------------------------------------------------
def local_topology(n: int, dry: bool) -> Topology:
    """The GPUs' topology from ``nvidia-smi topo -m``, else a full NVLink-class mesh."""
    if not dry and shutil.which("nvidia-smi"):
        from taccl_py.topology.nvsmi import import_nvidia_smi

        try:
            text = subprocess.run(
                ["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
            topo = import_nvidia_smi(text, "nvidia-smi-topo.txt", name="local")[1]
            if topo.num_ranks == n:
                return topo
        except (subprocess.SubprocessError, OSError, TacclError) as exc:
            print(f"nvidia-smi topo -m not usable ({exc}); assuming a full mesh", file=sys.stderr)
    links = [Link(a, b, 100e9, 1e-6) for a in range(n) for b in range(n) if a != b]
    return Topology(f"mesh{n}", n, 1, tuple(links), (), (), FULL_BISECTION)


def make_plans(topo: Topology, n: int) -> dict:
    """kind -> verified plan (milp; NCCL's ring if milp fails)."""
    plans = {}
    for kind in KINDS:
        try:
            plans[kind] = build_plan(
                topo, Collective(kind, n), "milp", synth=SynthOptions(size=1 << 26, time_limit=30)
            ).plan
        except TacclError as exc:
            print(f"{kind}: milp failed ({exc}); using the ring", file=sys.stderr)
            plans[kind] = build_plan(topo, Collective(kind, n), "ring").plan
    return plans


#: the roots of the torch part's rooted calls (see :func:`torch_checks`), by kind
TORCH_ROOTS = {BROADCAST: lambda n: n - 1, REDUCE: lambda n: 0}


def make_rooted_plans(topo: Topology, n: int) -> dict:
    """kind -> the torch part's Broadcast and Reduce plans for its roots (milp; NCCL's
    ring if milp fails), so that the group's library need not build them."""
    plans = {}
    for kind, root in TORCH_ROOTS.items():
        coll = Collective(kind, n, root=root(n))
        try:
            plans[kind] = build_plan(
                topo, coll, "milp", synth=SynthOptions(size=1 << 26, time_limit=30)
            ).plan
        except TacclError as exc:
            print(f"{kind}: milp failed ({exc}); using the ring", file=sys.stderr)
            plans[kind] = build_plan(topo, coll, "ring").plan
    return plans


# -- part 1: the executor vs NCCL ---------------------------------------------------------------
def nccl_reference(cp, nccl, comm, kind: str, send, recv, n: int, stream) -> None:
    """NCCL's own collective of ``send`` into ``recv`` (float32)."""
    f32, ptr = nccl.NCCL_FLOAT32, stream.ptr
    if kind == ALLREDUCE:
        comm.allReduce(send.data.ptr, recv.data.ptr, send.size, f32, nccl.NCCL_SUM, ptr)
    elif kind == ALLGATHER:
        comm.allGather(send.data.ptr, recv.data.ptr, send.size, f32, ptr)
    elif kind == REDUCESCATTER:
        comm.reduceScatter(send.data.ptr, recv.data.ptr, recv.size, f32, nccl.NCCL_SUM, ptr)
    else:
        block = send.size // n
        nccl.groupStart()
        for q in range(n):
            comm.recv(recv.data.ptr + q * block * 4, block, f32, q, ptr)
            comm.send(send.data.ptr + q * block * 4, block, f32, q, ptr)
        nccl.groupEnd()


def executor_part(cp, plans: dict, n: int, sizes, iters: int, warmup: int, timed: bool):
    """Rows (kind, bytes, ours s, nccl s, equal) over all sizes; one thread per GPU."""
    nccl = cp.cuda.nccl
    uid = nccl.get_unique_id()
    rows: dict = {}
    errors: list = []
    barrier = threading.Barrier(n)

    def rank(r: int) -> None:
        try:
            with cp.cuda.Device(r):
                comm = nccl.NcclCommunicator(n, uid, r)
                stream = cp.cuda.Stream(non_blocking=True)
                for kind, plan in plans.items():
                    coll = plan.collective()
                    for size in sizes:
                        elems = size // 4 // (coll.i_chunks * n) * coll.i_chunks * n
                        if elems == 0:
                            continue
                        ce = elems // coll.i_chunks
                        rng = np.random.default_rng(r)
                        send = cp.asarray(rng.integers(-8, 8, elems).astype(np.float32))
                        ours = cp.empty(coll.o_chunks * ce, np.float32)
                        ref = cp.empty(coll.o_chunks * ce, np.float32)
                        ex = NcclPlanExecutor(plan, comm, r, ce, np.float32)
                        barrier.wait()
                        with stream:
                            ex.run(send, ours, stream)
                            nccl_reference(cp, nccl, comm, kind, send, ref, n, stream)
                        stream.synchronize()
                        equal = bool((cp.asnumpy(ours) == cp.asnumpy(ref)).all())
                        t_ours = t_nccl = None
                        if timed:
                            t_ours = _time(
                                cp,
                                stream,
                                partial(ex.run, send, ours, stream),
                                iters,
                                warmup,
                                barrier,
                            )
                            t_nccl = _time(
                                cp,
                                stream,
                                partial(nccl_reference, cp, nccl, comm, kind, send, ref, n, stream),
                                iters,
                                warmup,
                                barrier,
                            )
                        if r == 0:
                            rows[(kind, elems * 4)] = (t_ours, t_nccl, equal)
                        elif not equal:
                            rows[(kind, elems * 4)] = (t_ours, t_nccl, False)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(f"rank {r}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors or any(t.is_alive() for t in threads):
        raise SystemExit("executor part failed: " + "; ".join(errors or ["a rank hung"]))
    return [(k, b, *v) for (k, b), v in sorted(rows.items())]


def _time(cp, stream, fn, iters: int, warmup: int, barrier) -> float:
    """Seconds per call of ``fn`` enqueued on ``stream`` (median-free nccl-tests style)."""
    for _ in range(warmup):
        with stream:
            fn()
    stream.synchronize()
    barrier.wait()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(stream)
    for _ in range(iters):
        with stream:
            fn()
    end.record(stream)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / 1e3 / iters


def print_table(title: str, rows, n: int) -> bool:
    """An nccl-tests-style table; False if some result differs from NCCL's."""
    print(f"\n# {title} ({n} GPUs, float32)")
    print(
        f"{'collective':<14}{'size':>9}{'count':>12}  {'ours us':>9} {'busbw':>7}  "
        f"{'nccl us':>9} {'busbw':>7}  {'speedup':>7}  check"
    )
    ok = True
    for kind, nbytes, t_ours, t_nccl, equal in rows:
        ok &= equal
        cells = []
        for t in (t_ours, t_nccl):
            if t is None:
                cells.append(f"{'-':>9} {'-':>7}")
            else:
                busbw = nbytes / t * BUS[TORCH_KINDS.get(kind, kind)](n) / 1e9
                cells.append(f"{t * 1e6:>9.1f} {busbw:>7.2f}")
        speed = f"{t_nccl / t_ours:>6.2f}x" if t_ours and t_nccl else f"{'-':>7}"
        print(
            f"{kind:<14}{format_size(nbytes):>9}{nbytes // 4:>12}  {cells[0]}  {cells[1]}  "
            f"{speed}  {'ok' if equal else 'WRONG'}"
        )
    return ok


# -- part 2: torchrun + the taccl backend vs torch's nccl backend ------------------------------
def torch_checks(pg, ref, n: int, r: int, size: int, make, host, timed: bool, iters: int):
    """(name, bytes, taccl s, nccl s, equal) for each torch collective on ``pg`` vs ``ref``
    (``ref`` None: the expected values computed here). ``make(t)`` puts a CPU tensor on the
    rank's GPU; ``host(t)`` reads one back."""
    import torch
    import torch.distributed as dist

    elems = max(size // 4 // n * n, n)

    def data(rank: int, count: int):
        gen = torch.Generator().manual_seed(rank)
        return torch.randint(-8, 8, (count,), generator=gen).float()

    cases = {
        "all_reduce": lambda g, x: _fill(lambda out, _: g.allreduce([out]), x, None),
        "all_gather": lambda g, x: _fill(g._allgather_base, make(torch.zeros(elems * n)), x),
        "reduce_scatter": lambda g, x: _fill(
            g._reduce_scatter_base, make(torch.zeros(elems // n)), x
        ),
        "all_to_all": lambda g, x: _a2a(g, make(torch.zeros(elems)), x),
        "broadcast": lambda g, x: (
            _rooted(g.broadcast, [x], dist.BroadcastOptions(), TORCH_ROOTS[BROADCAST](n)) or x
        ),
        "reduce": lambda g, x: (
            _rooted(g.reduce, [x], dist.ReduceOptions(), TORCH_ROOTS[REDUCE](n)) or x
        ),
    }
    rows = []
    for name, call in cases.items():
        got = host(call(pg, make(data(r, elems))))
        if ref is not None:
            want = host(call(ref, make(data(r, elems))))
        else:
            want = _expected(name, [data(q, elems) for q in range(n)], r, n)
        if name == "reduce" and r != 0:
            want = data(r, elems)
        equal = bool(torch.equal(got, want))
        t_taccl = t_nccl = None
        if timed and name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
            x = make(data(r, elems))
            t_taccl = _torch_time(partial(call, pg, x), iters)
            t_nccl = _torch_time(partial(call, ref, x), iters)
        rows.append((name, elems * 4, t_taccl, t_nccl, equal))
    return rows


def _fill(fn, out, x):
    fn(out, x).wait()
    return out


def _a2a(g, out, x):
    g.alltoall_base(out, x, [], []).wait()
    return out


def _rooted(fn, tensors, opts, root):
    opts.rootRank = root
    fn(tensors, opts).wait()


def _expected(name: str, xs, r: int, n: int):
    import torch

    total = sum(xs)
    block = xs[0].numel() // n
    return {
        "all_reduce": total,
        "all_gather": torch.cat(xs),
        "reduce_scatter": total[r * block : (r + 1) * block],
        "all_to_all": torch.cat([x[r * block : (r + 1) * block] for x in xs]),
        "broadcast": xs[n - 1],
        "reduce": total,
    }[name]


def _torch_time(fn, iters: int) -> float:
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def torch_worker(args) -> None:
    """One torchrun rank: the nccl group is the reference; rank 0 prints the table."""
    import torch
    import torch.distributed as dist

    import taccl_py.torch  # noqa: F401 - registers the backend

    r = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(r)
    dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=120))
    n = dist.get_world_size()
    taccl = dist.new_group(backend="taccl")
    pg = taccl._get_backend(torch.device("cuda"))
    ref = dist.group.WORLD._get_backend(torch.device("cuda"))
    rows = []
    for size in args.sizes:
        rows += torch_checks(
            pg, ref, n, r, size, lambda t: t.cuda(), lambda t: t.cpu(), True, args.iters
        )
    flags = torch.tensor([float(row[4]) for row in rows], device="cuda")
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # equal on every rank
    rows = [(*row[:4], bool(f)) for row, f in zip(rows, flags.tolist())]
    if r == 0:
        ok = print_table("torch: taccl backend vs torch's nccl backend", rows, n)
        print("torch part:", "all equal" if ok else "SOME RESULTS DIFFER")
    dist.destroy_process_group()


def torch_part_real(args, n: int, plan_dir: Path) -> int:
    env = {**os.environ, "TACCL_PLAN_DIR": str(plan_dir)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        __file__,
        "--torch-worker",
        "--iters",
        str(args.iters),
        "--sizes",
        args.sizes_text,
    ]
    return subprocess.run(cmd, env=env, timeout=540).returncode


# -- dry run on the CPU stand-in -----------------------------------------------------------------
def torch_part_dry(ft, n: int, plan_dir: Path, sizes) -> list:
    """The torch part with ranks as threads on the stand-in (expected values computed)."""
    import torch
    import torch.distributed as dist

    import taccl_py.torch as tt

    store = dist.HashStore()
    out: list = [None] * n
    errors: list = []

    def rank(r: int) -> None:
        try:
            torch.cuda.set_device(r)
            pg = tt.TacclProcessGroup(
                dist.PrefixStore("smoke", store),
                r,
                n,
                datetime.timedelta(seconds=60),
                plan_dir=plan_dir,
                cache_dir=plan_dir / "cache",
            )
            rows = []
            for size in sizes:
                rows += torch_checks(
                    pg, None, n, r, size, lambda t: ft.tensor(t, r), ft.host, False, 0
                )
            out[r] = rows
            pg.shutdown()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"rank {r}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors or any(t.is_alive() for t in threads):
        raise SystemExit("torch part failed: " + "; ".join(errors or ["a rank hung"]))
    # a row is equal only if it is on every rank
    return [
        (name, b, None, None, all(rows[i][4] for rows in out))
        for i, (name, b, *_) in enumerate(out[0])
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check on the CPU stand-in (4 fake GPUs), no timings",
    )
    ap.add_argument("--sizes", default="1K-64M", help="LO-HI (powers of 4) or a list")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--part", choices=["all", "executor", "torch"], default="all")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.sizes_text = args.sizes
    args.sizes = _sizes(args.sizes) if not args.dry_run else DRY_SIZES
    if args.torch_worker:
        torch_worker(args)
        return 0
    with contextlib.ExitStack() as stack:
        if args.dry_run:
            from taccl_py.testing.fake_cuda import FakeCuda
            from taccl_py.testing.fake_torch import FakeTorch

            fake = FakeCuda(devices=4, hang_timeout=30)
            ft = FakeTorch(fake)
            stack.enter_context(fake.installed())
            stack.enter_context(ft.installed())
            print("dry run: the CPU stand-in with 4 fake GPUs; checks only, no timings")
        from taccl_py.runtime.cuda_exec import require_cuda

        try:
            cp = require_cuda()
        except TacclError as exc:
            print(f"gpu_smoke: {exc}", file=sys.stderr)
            return 1
        n = cp.cuda.runtime.getDeviceCount()
        if n < 2:
            print(f"gpu_smoke: {n} GPU visible; NCCL collectives need at least 2", file=sys.stderr)
            return 1
        topo = local_topology(n, args.dry_run)
        print(f"topology {topo.label}: {n} GPUs; synthesizing plans ...", flush=True)
        plans = make_plans(topo, n)
        ok = True
        with tempfile.TemporaryDirectory() as tmp:
            plan_dir = Path(tmp)
            for kind, plan in (*plans.items(), *make_rooted_plans(topo, n).items()):
                write_plan(plan, plan_dir / f"{kind}.xml")
            if args.part in ("all", "executor"):
                rows = executor_part(
                    cp, plans, n, args.sizes, args.iters, args.warmup, not args.dry_run
                )
                ok &= print_table("executor: taccl plans vs NCCL", rows, n)
            if args.part in ("all", "torch"):
                if args.dry_run:
                    ok &= print_table(
                        "torch: taccl backend vs expected values",
                        torch_part_dry(ft, n, plan_dir, args.sizes),
                        n,
                    )
                else:
                    ok &= torch_part_real(args, n, plan_dir) == 0
        print("\nsmoke:", "PASSED" if ok else "FAILED")
        return 0 if ok else 1


def _sizes(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (parse_size(x) for x in text.split("-", 1))
        out = []
        size = lo
        while size <= hi:
            out.append(size)
            size *= 4
        return out
    return [parse_size(x) for x in text.split(",")]


if __name__ == "__main__":
    sys.exit(main())
