"""The staged synthesizer vs the lower bound and the ring: issue-4 targets and a sweep.

For every case and target size a plan is synthesized for that size (``--method milp``),
lowered, verified and simulated at that size; the table gives the solve time, simulated
algbw, % of the lower bound and the speed-up over the ring baseline.

Usage:
  python benchmarks/synth.py                        # the target cases
  python benchmarks/synth.py --sweep --nodes 1,2,4  # every built-in x nodes x AG/A2A
  python benchmarks/synth.py --case ndv2:2:allgather --sizes 1G --time-limit 10
"""

from __future__ import annotations

import argparse
import time

from taccl_py.analysis.report import evaluate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.synth.methods import SynthOptions
from taccl_py.synth.milp.sketch import load_sketch
from taccl_py.topology.loader import builtin_names, load_topology
from taccl_py.util.units import format_size, parse_size

#: (topology, nodes, collective, time limit s, sketch or None for the default, target)
TARGETS = [
    ("ndv2", 2, "allgather", 10, "ndv2", ">=97% at 1G, solve <=10 s; 1K >=2x ring"),
    ("dgx2", 2, "allgather", 60, "dgx2", ">=98% at 1G, solve <=60 s; 1K >=2x ring"),
    ("ndv2", 2, "alltoall", 60, None, ">=97% at 1G, solve <=60 s"),
    ("dgx2", 2, "alltoall", 60, None, ">=90% at 1G"),
    ("dgx1", 1, "allgather", 60, None, ">= SCCL 7/6 plan at 1G"),
    ("ndv2", 4, "allgather", 60, "ndv2", ">=95% at 1G, solve <=60 s"),
]


def run_case(
    name: str,
    nodes: int,
    kind: str,
    sizes: list[int],
    time_limit: float,
    sketch_name: str | None = None,
    note: str = "",
) -> None:
    topo = load_topology(name, nodes)
    sketch = load_sketch(sketch_name, topo) if sketch_name else None
    for size in sizes:
        began = time.perf_counter()
        try:
            result = build_plan(
                topo,
                Collective(kind, topo.num_ranks),
                "milp",
                synth=SynthOptions(size=size, time_limit=time_limit, sketch=sketch),
            )
        except TacclError as exc:
            print(
                f"{topo.label:<10} {kind:<10} {sketch_name or 'default':<8} "
                f"{format_size(size):>5}  error: {exc}"
            )
            continue
        solve = time.perf_counter() - began
        [row] = evaluate(result.plan, topo, [size])
        meta = result.algorithm.meta
        chosen = meta.get("chosen", result.algorithm.name)
        if chosen == "milp":
            chosen += f" (chunk-up {meta['chunkup']}, {meta['rule']})"
        print(
            f"{topo.label:<10} {kind:<10} {sketch_name or 'default':<8} "
            f"{format_size(size):>5} {solve:>8.1f} "
            f"{row.time * 1e6:>12,.1f} {row.algbw / 1e9:>9.2f} {row.pct_of_bound:>7.1f}% "
            f"{row.ring_time * 1e6 if row.ring_time else float('nan'):>12,.1f} "
            f"{row.speedup_vs_ring or float('nan'):>7.2f}x  {chosen}"
            + (f"  [{note}]" if note and size == sizes[-1] else ""),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1K,1M,64M,1G")
    ap.add_argument(
        "--sweep", action="store_true", help="every built-in cluster x --nodes x allgather/alltoall"
    )
    ap.add_argument("--nodes", default="1,2,4")
    ap.add_argument(
        "--case",
        action="append",
        default=[],
        help="topology:nodes:collective[:sketch] (repeatable)",
    )
    ap.add_argument(
        "--time-limit", type=float, default=None, help="override every case's time limit (s)"
    )
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.case:
        cases = [
            (p[0], int(p[1]), p[2], 60, p[3] if len(p) > 3 else None, "")
            for p in (c.split(":") for c in args.case)
        ]
    elif args.sweep:
        cases = [
            (name, int(k), kind, 10, None, "")
            for name in builtin_names()
            for k in args.nodes.split(",")
            for kind in ("allgather", "alltoall")
        ]
    else:
        cases = TARGETS
    print(
        f"{'topology':<10} {'collective':<10} {'sketch':<8} {'size':>5} {'solve(s)':>8} "
        f"{'time(us)':>12} {'algbw':>9} {'%bound':>8} {'ring(us)':>12} {'vs ring':>8}"
        "  chosen"
    )
    start = time.perf_counter()
    for name, nodes, kind, limit, sketch_name, note in cases:
        run_case(
            name,
            nodes,
            kind,
            sizes,
            args.time_limit if args.time_limit is not None else limit,
            sketch_name,
            note,
        )
    print(f"# total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
