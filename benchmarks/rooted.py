"""Rooted collectives end to end on every built-in cluster: synthesize, verify, run under MPI.

For every built-in topology at 1 and 2 nodes and each of Broadcast, Reduce, Gather and
Scatter (root ``1 + (2 + 5 i) mod (N - 1)``, a different non-zero root per collective),
this runs (S: SIZE rounded up to a multiple of the plan's chunks)

    taccl synthesize -t T -n K -c KIND --root R [-m METHOD] --size SIZE -o PLAN
    mpiexec -n N taccl run PLAN -b S -e S -r R -c 1 -n ITERS -w 1

and prints one row per case: the synthesis wall time, the candidate kept (``auto``) or
the method, the simulated time against the lower bound and NCCL's model at SIZE (from the
synthesize report), and the MPI run's data check (#wrong, out of place) with its time
and MPICH's on this machine. A failed step is a row that says which, with its first
error line.

Usage:
  python benchmarks/rooted.py                              # auto, 1M, every built-in
  python benchmarks/rooted.py --method ring --size 64K --topologies dgx1,ndv2
  python benchmarks/rooted.py --nodes 1 --collectives broadcast --size 1G --no-run
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from taccl_py.collectives import ROOTED_KINDS
from taccl_py.plan.xml import parse_plan
from taccl_py.topology.loader import builtin_names, load_topology
from taccl_py.util.units import parse_size

BIN = Path(sys.executable).parent
ROW = "{:<12} {:<9} {:>4} {:>6} {:<18} {:>11} {:>7} {:>8} {:>7} {:>10} {:>10}"


def _first_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    return (lines or text.strip().splitlines() or ["?"])[0][:110]


def synthesize(topo: str, nodes: int, kind: str, root: int, args, out: Path):
    cmd = [str(BIN / "taccl"), "synthesize", "-t", topo, "-n", str(nodes), "-c", kind]
    cmd += ["--root", str(root), "--size", args.size, "-o", str(out)]
    cmd += ["--time-limit", str(args.time_limit)]
    if args.method != "auto":
        cmd += ["-m", args.method]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    return proc, time.perf_counter() - t0


def evaluation(report: str, size_label: str) -> tuple[str, str, str]:
    """(kept, % of bound, vs NCCL) at the target size from synthesize's report."""
    kept = re.search(r"kept (\S+):", report)
    method = re.search(r"method (\w+),", report)
    label = kept.group(1) if kept else method.group(1) if method else "?"
    for line in report.splitlines():
        cells = line.split()
        if cells and cells[0] == size_label and "%" in line:
            pct = next((c for c in cells if c.endswith("%")), "?")
            return label, pct, cells[-1]
    return label, "?", "?"


def run_mpi(plan: Path, ranks: int, root: int, args) -> tuple[str, str, str]:
    """(#wrong, plan time us, MPI time us) of the out-of-place column, or an error. A size
    the plan's chunks do not divide is rounded up to the next one that does (float)."""
    granule = parse_plan(plan).nchunksperloop * 4
    size = str(-(-parse_size(args.size) // granule) * granule)
    cmd = [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "taccl"), "run", str(plan)]
    cmd += ["-b", size, "-e", size, "-r", str(root), "-c", "1"]
    cmd += ["-n", str(args.iters), "-w", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return "FAIL", _first_error(proc.stderr + proc.stdout), ""
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.strip() and ln[0] != "#"]
    if not rows:
        return "FAIL", "no row", ""
    cells = rows[-1]
    # size count type redop root | time algbw busbw #wrong | in place | MPI's time, plans
    return cells[8], cells[5], cells[-2]  # the row ends: MPI's time, the plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="auto")
    ap.add_argument("--size", default="1M")
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--topologies", default=",".join(builtin_names()))
    ap.add_argument("--collectives", default=",".join(ROOTED_KINDS))
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-run", action="store_true", help="synthesize only")
    args = ap.parse_args()
    print(
        ROW.format(
            "topology",
            "coll",
            "N",
            "root",
            "kept",
            "synth (s)",
            "%bound",
            "vs NCCL",
            "#wrong",
            "plan (us)",
            "MPI (us)",
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in [int(x) for x in args.nodes.split(",")]:
            for topo in args.topologies.split(","):
                n = load_topology(topo, nodes).num_ranks
                for i, kind in enumerate(args.collectives.split(",")):
                    root = 1 + (2 + 5 * i) % (n - 1)
                    plan = Path(tmp) / f"{topo}-{nodes}-{kind}.xml"
                    proc, secs = synthesize(topo, nodes, kind, root, args, plan)
                    name = f"{topo}x{nodes}" if nodes > 1 else topo
                    if proc.returncode != 0:
                        print(
                            f"{name:<12} {kind:<9} synthesize failed: {_first_error(proc.stderr)}"
                        )
                        continue
                    kept, pct, vs = evaluation(proc.stdout, args.size)
                    wrong, t_plan, t_mpi = ("-", "-", "-")
                    if not args.no_run:
                        wrong, t_plan, t_mpi = run_mpi(plan, n, root, args)
                    print(
                        ROW.format(
                            name, kind, n, root, kept, f"{secs:.1f}", pct, vs, wrong, t_plan, t_mpi
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
