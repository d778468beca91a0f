"""Fabrics, mixed clusters and failures (issue 21): healthy vs degraded re-synthesis.

Each case loads a topology (a built-in or a cluster), applies ``--exclude``/``--derate``
parts as ``taccl synthesize`` does, and synthesizes with method milp at one size
(``build_plan(..., "milp", synth=SynthOptions(size, time_limit))``; that runs NCCL's
ring and the other baselines too and keeps the fastest), timing the solve and the
verification of the plan kept. Columns: the lower bound of the (degraded) topology,
the plan's simulated time and % of that bound, and NCCL's modelled best (ring, tree,
NVLS, ... from tuning.cc) on the same topology. Each case runs in a fresh process after
the healthy case of its topology has run once in the same process, so a degraded case
starts from the cached node routing, as a re-synthesis after a failure does.

Usage:
  python benchmarks/fabrics.py                        # 8 x DGX-H100: healthy, NIC and link faults
  python benchmarks/fabrics.py --clusters             # the built-in fabrics and mixed cluster
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shlex
import sys
import time

from taccl_py.analysis.nccl_model import reusable_plans
from taccl_py.analysis.report import evaluate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.lowering.lower import LowerOptions
from taccl_py.plan.verify import verify
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.failures import Faults, apply_faults
from taccl_py.topology.loader import cluster_names, load_topology
from taccl_py.util.units import format_size, parse_size

#: (label, exclude, derate) on 8 x DGX-H100
FAULTS = [
    ("healthy", (), ()),
    ("nic:nic0@node1 out", ("nic:nic0@node1",), ()),
    ("nic:nic0@node1, nic:nic5@node4 out", ("nic:nic0@node1", "nic:nic5@node4"), ()),
    ("nic:nic3@node2 at 50 %", (), ("nic:nic3@node2=0.5",)),
]


def run_case(name: str, nodes: int, kind: str, size: int, faults: Faults, limit: float) -> dict:
    """Solve and verify times, simulated time, bound and NCCL at ``size``, peak RSS."""
    healthy = load_topology(name, nodes)
    topo = apply_faults(healthy, faults)
    coll = Collective(kind, topo.num_ranks)
    if faults:  # the healthy solution first: its node routing is what a re-run reuses
        build_plan(healthy, coll, "milp", synth=SynthOptions(size=size, time_limit=limit))
    began = time.perf_counter()
    result = build_plan(topo, coll, "milp", synth=SynthOptions(size=size, time_limit=limit))
    solve = time.perf_counter() - began
    began = time.perf_counter()
    verify(result.plan)
    check = time.perf_counter() - began
    nccl = reusable_plans(topo, coll, result.baselines, LowerOptions())  # as the CLI does
    [row] = evaluate(result.plan, topo, [size], nccl)
    meta = result.algorithm.meta
    chosen = meta.get("chosen", result.algorithm.name)
    if chosen == "milp":
        chosen = meta.get("variant", f"chunk-up {meta['chunkup']}")
    return {
        "solve": solve,
        "verify": check,
        "time": row.time,
        "bound": row.bound_time,
        "pct": row.pct_of_bound,
        "nccl": row.nccl_time,
        "nccl_choice": row.nccl_choice,
        "vs": row.speedup_vs_nccl,
        "chosen": chosen,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", action="store_true", help="the built-in example clusters")
    ap.add_argument("--collectives", default="allgather")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--time-limit", type=float, default=10.0, help="milp's time limit (s)")
    args = ap.parse_args()
    size = parse_size(args.size)
    kinds = args.collectives.split(",")
    if args.clusters:
        cases = [(name, 1, kind, name, Faults()) for name in cluster_names() for kind in kinds]
    else:
        cases = [
            ("dgx-h100", 8, kind, label, Faults(exclude, derate))
            for label, exclude, derate in FAULTS
            for kind in kinds
        ]
    print("`" + " ".join(["python", *map(shlex.quote, sys.argv)]) + "`\n")
    head = [
        "topology",
        "collective",
        "solve (s)",
        "verify (s)",
        "peak RSS (MiB)",
        f"time {format_size(size)} (us)",
        "bound (us)",
        "% bound",
        "NCCL (us)",
        "vs NCCL",
        "chosen",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head), flush=True)
    spawn = multiprocessing.get_context("spawn")
    for name, nodes, kind, label, faults in cases:
        with spawn.Pool(1) as pool:
            r = pool.apply(run_case, (name, nodes, kind, size, faults, args.time_limit))
        cells = [
            label if nodes == 1 else f"{name} x{nodes}: {label}",
            kind,
            f"{r['solve']:.1f}",
            f"{r['verify']:.1f}",
            f"{r['rss'] / 2**20:,.0f}",
            f"{r['time'] * 1e6:,.1f}",
            f"{r['bound'] * 1e6:,.1f}",
            f"{r['pct']:.1f}%",
            f"{r['nccl'] * 1e6:,.1f} ({r['nccl_choice']})",
            f"{r['vs']:.2f}x",
            r["chosen"],
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
