"""Measured speed of taccl plans on CPU ranks: vs MPICH under mpiexec, and the "taccl" torch
backend vs Gloo.

MPI part: for every rank count n, collective and size, a plan is built for that size with
``--method milp`` (or another ``--method``) on ``host<n>``, one switch joining the n ranks
(10 GB/s ports, 1 us; the model the torch backend's ring fallback uses). milp solves in
seconds here and keeps the ring, direct or tree baseline instead when that simulates faster
(column ``chosen``). The plan then runs ``--repeats`` times as
``mpiexec -n N taccl run PLAN --size S -n I -w W -c 0``; the table has the medians of the
plan's and MPICH's times (slowest rank's mean per iteration) and of their ratio, and the
ratio's min and max over the repeats. Rooted collectives (broadcast, reduce, gather,
scatter) get root ``--root`` and are compared with MPI_Bcast, MPI_Reduce, MPI_Gather and
MPI_Scatter.

Torch part (``--torch``): 4 spawned CPU processes time all_gather_into_tensor, all_reduce,
all_to_all_single and reduce_scatter_tensor (float32; the size is the larger buffer), once on
backend "taccl" (plans from ``$TACCL_PLAN_DIR``, else cached ring plans) and once on "gloo",
each op barrier-separated, the slowest rank's mean.

Targets (issue): AllGather at 64M on 4 ranks <= 1.3x MPICH, AllReduce <= 1.5x;
all_gather_into_tensor at 16M on 4 ranks <= 1.5x Gloo.

Usage:
  python benchmarks/runtime.py                              # MPI table, 4 and 8 ranks
  python benchmarks/runtime.py --ranks 4 --sizes 64M --repeats 5
  python benchmarks/runtime.py --torch --collectives ''     # torch table only
  python benchmarks/runtime.py --ranks 4 --collectives broadcast,reduce,gather,scatter \
      --method direct --root 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.plan.xml import write_plan
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.model import FULL_BISECTION, Switch, Topology
from taccl_py.util.units import format_size, parse_size

BIN = Path(sys.executable).parent
#: (ranks, collective, size, max ratio): the MPI targets
MPI_TARGETS = [(4, "allgather", 64 << 20, 1.3), (4, "allreduce", 64 << 20, 1.5)]
#: (op, size, max ratio): the torch target, on TORCH_RANKS ranks
TORCH_TARGETS = [("all_gather_into_tensor", 16 << 20, 1.5)]
TORCH_RANKS = 4
TORCH_OPS = ("all_gather_into_tensor", "all_reduce", "all_to_all_single", "reduce_scatter_tensor")


def host(n: int) -> Topology:
    """n CPU ranks behind one switch."""
    return Topology(
        f"host{n}", n, 1, (), (Switch("host", 0, tuple(range(n)), 1e10, 1e-6),), (), FULL_BISECTION
    )


def auto_iters(size: int) -> int:
    """About 256 MB moved per timing, 5 to 100 iterations."""
    return max(5, min(100, (256 << 20) // size))


def _tool(name: str) -> str:
    path = shutil.which(str(BIN / name)) or shutil.which(name)
    if path is None:
        raise SystemExit(f"runtime.py: {name} not found next to {sys.executable} or on PATH")
    return path


def _ratio_cell(ratio: float, limit: float) -> str:
    return f"{ratio:.2f}x <= {limit}x: {'met' if ratio <= limit else 'NOT met'}"


def mpi_table(
    ranks: list[int],
    kinds: list[str],
    sizes: list[int],
    repeats: int,
    iters: int,
    warmup: int,
    workdir: Path,
    method: str = "milp",
    root: int = 0,
) -> dict:
    """Print the MPI table; returns {(n, kind, size): median ratio}."""
    mpiexec, taccl = _tool("mpiexec"), _tool("taccl")
    print(
        "| ranks | collective | size | chosen | solve(s) | plan(us) | mpich(us) | ratio "
        "| min | max |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for n in ranks:
        for kind in kinds:
            for size in sizes:
                cells = f"| {n} | {kind} | {format_size(size)} |"
                began = time.perf_counter()
                try:
                    coll = Collective(kind, n)
                    if coll.rooted:
                        coll = coll.with_root(root)
                    result = build_plan(
                        host(n), coll, method, synth=SynthOptions(size=size, time_limit=10)
                    )
                except TacclError as exc:
                    print(f"{cells} error: {exc} |", flush=True)
                    continue
                solve = time.perf_counter() - began
                chosen = result.algorithm.meta.get("chosen", result.algorithm.name)
                path = write_plan(result.plan, workdir / f"{kind}-{n}-{size}.xml")
                its = iters or auto_iters(size)
                cmd = [
                    mpiexec,
                    "-n",
                    str(n),
                    taccl,
                    "run",
                    str(path),
                    "--size",
                    str(size),
                    "-n",
                    str(its),
                    "-w",
                    str(warmup or max(2, its // 10)),
                    "-c",
                    "0",
                ]
                runs = []
                for _ in range(repeats):
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                    if done.returncode:
                        err = (done.stderr.strip().splitlines() or ["?"])[-1]
                        print(
                            f"{cells} {chosen} | {solve:.1f} | error (exit "
                            f"{done.returncode}): {err} |",
                            flush=True,
                        )
                        break
                    plan_us, mpi_us = row_times(done.stdout)
                    runs.append((plan_us, mpi_us, plan_us / mpi_us))
                else:
                    plan_us, mpi_us, ratio = (
                        statistics.median(r[i] for r in runs) for i in range(3)
                    )
                    ratios[n, kind, size] = ratio
                    print(
                        f"{cells} {chosen} | {solve:.1f} | {plan_us:,.1f} | {mpi_us:,.1f} | "
                        f"{ratio:.2f} | {min(r[2] for r in runs):.2f} | "
                        f"{max(r[2] for r in runs):.2f} |",
                        flush=True,
                    )
    return ratios


def row_times(stdout: str) -> tuple[float, float]:
    """(plan us, MPI us) of the one table row ``taccl run`` printed for an out-of-place plan:
    ``size count type redop root time algbw busbw #wrong <in-place: n/a> mpi plans``."""
    row = next(ln.split() for ln in stdout.splitlines() if ln.strip() and ln[0] != "#")
    return float(row[5]), float(row[-2])


def _torch_rank(
    rank: int,
    world: int,
    backend: str,
    init_file: str,
    sizes: list[int],
    iters: int,
    warmup: int,
    out: str,
) -> None:
    """One spawned rank: time every TORCH_OPS op at every size; rank 0 writes the JSON."""
    import warnings

    import torch
    import torch.distributed as dist

    import taccl_py.torch  # noqa: F401 - registers "taccl"

    warnings.filterwarnings("ignore", category=FutureWarning)  # *_tensor renamed in torch 2.13
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    times = {}
    for op in TORCH_OPS:
        for size in sizes:
            n = size // 4
            big, small = torch.zeros(n), torch.zeros(n // world)  # repeated sums stay finite
            call = {
                "all_gather_into_tensor": lambda: dist.all_gather_into_tensor(big, small),
                "all_reduce": lambda: dist.all_reduce(big),
                "all_to_all_single": lambda: dist.all_to_all_single(small.new_empty(n), big),
                "reduce_scatter_tensor": lambda: dist.reduce_scatter_tensor(small, big),
            }[op]
            its = iters or auto_iters(size)
            for _ in range(warmup or max(2, its // 10)):
                call()
            total = 0.0
            for _ in range(its):
                dist.barrier()
                t0 = time.perf_counter()
                call()
                total += time.perf_counter() - t0
            slowest = torch.tensor([total / its], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            times[f"{op}:{size}"] = slowest.item()
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def torch_table(sizes: list[int], iters: int, warmup: int, workdir: Path) -> dict:
    """Print the torch table; returns {(op, size): taccl/gloo ratio}."""
    import torch.multiprocessing as mp

    times = {}
    for backend in ("taccl", "gloo"):
        out = workdir / f"torch-{backend}.json"
        mp.spawn(
            _torch_rank,
            nprocs=TORCH_RANKS,
            args=(
                TORCH_RANKS,
                backend,
                str(workdir / f"store-{backend}"),
                sizes,
                iters,
                warmup,
                str(out),
            ),
        )
        times[backend] = json.loads(out.read_text())
    print("| ranks | op | size | taccl(us) | gloo(us) | taccl/gloo |")
    print("|---:|---|---:|---:|---:|---:|")
    ratios = {}
    for op in TORCH_OPS:
        for size in sizes:
            t, g = (times[b][f"{op}:{size}"] for b in ("taccl", "gloo"))
            ratios[op, size] = t / g
            print(
                f"| {TORCH_RANKS} | {op} | {format_size(size)} | {t * 1e6:,.1f} | "
                f"{g * 1e6:,.1f} | {t / g:.2f} |",
                flush=True,
            )
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="4,8", help="MPI rank counts")
    ap.add_argument(
        "--collectives",
        default="allgather,alltoall,allreduce",
        help="MPI collectives ('' skips the MPI part)",
    )
    ap.add_argument("--sizes", default="1K,64K,1M,16M,64M", help="MPI sizes")
    ap.add_argument("--repeats", type=int, default=3, help="mpiexec runs per cell")
    ap.add_argument("--iters", type=int, default=0, help="0: 256 MB worth, 5 to 100")
    ap.add_argument("--warmup", type=int, default=0, help="0: iters/10, at least 2")
    ap.add_argument("--method", default="milp", help="synthesis method of the MPI plans")
    ap.add_argument("--root", type=int, default=0, help="root of rooted collectives")
    ap.add_argument("--torch", action="store_true", help="also the torch backend vs gloo")
    ap.add_argument("--torch-sizes", default="1M,16M")
    args = ap.parse_args()
    print(f"# python benchmarks/runtime.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {os.cpu_count()} cores, python {sys.version.split()[0]}")
    start = time.perf_counter()
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="taccl-runtime-") as tmp:
        if args.collectives:
            ratios = mpi_table(
                [int(n) for n in args.ranks.split(",")],
                args.collectives.split(","),
                [parse_size(s) for s in args.sizes.split(",")],
                args.repeats,
                args.iters,
                args.warmup,
                Path(tmp),
                args.method,
                args.root,
            )
            verdicts += [
                f"MPI {kind} {format_size(size)} on {n} ranks vs MPICH: "
                + _ratio_cell(ratios[n, kind, size], limit)
                for n, kind, size, limit in MPI_TARGETS
                if (n, kind, size) in ratios
            ]
        if args.torch:
            print()
            ratios = torch_table(
                [parse_size(s) for s in args.torch_sizes.split(",")],
                args.iters,
                args.warmup,
                Path(tmp),
            )
            verdicts += [
                f"torch {op} {format_size(size)} on {TORCH_RANKS} ranks vs gloo: "
                + _ratio_cell(ratios[op, size], limit)
                for op, size, limit in TORCH_TARGETS
                if (op, size) in ratios
            ]
    if verdicts:
        print()
    for line in verdicts:
        print(f"- target {line}")
    print(f"# total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
