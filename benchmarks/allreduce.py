"""AllReduce: milp (the staged synthesizer, keeping the best baseline) vs ring and tree.

For every topology, node count and size a plan is built with ``--method milp`` for that
size (which compares its synthesized plan with the ring, direct and tree baselines and
keeps the fastest), lowered, verified and simulated at that size. The table gives the
solve time, simulated time and algbw, % of the AllReduce lower bound, the ring and
double-binary-tree AllReduce times with the kept plan's speed-up over each, and which
candidate milp kept.

Usage:
  python benchmarks/allreduce.py                       # ndv2, dgx2, dgx-a100, dgx-h100; 2 nodes
  python benchmarks/allreduce.py --topologies ndv2 --nodes 1,2 --sizes 1K,1G --time-limit 10
"""

from __future__ import annotations

import argparse
import time

from taccl_py.analysis.report import evaluate
from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.loader import load_topology
from taccl_py.util.units import format_size, parse_size

TOPOLOGIES = ("ndv2", "dgx2", "dgx-a100", "dgx-h100")


def _us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:,.1f}"


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def run_case(name: str, nodes: int, sizes: list[int], time_limit: float) -> None:
    topo = load_topology(name, nodes)
    coll = Collective("allreduce", topo.num_ranks)
    try:
        tree_plan = build_plan(topo, coll, "tree").plan
    except TacclError:
        tree_plan = None
    for size in sizes:
        began = time.perf_counter()
        try:
            result = build_plan(
                topo, coll, "milp", synth=SynthOptions(size=size, time_limit=time_limit)
            )
        except TacclError as exc:
            print(f"{topo.label:<12} {format_size(size):>5}  error: {exc}", flush=True)
            continue
        solve = time.perf_counter() - began
        [row] = evaluate(result.plan, topo, [size])
        tree_t = simulate(tree_plan, topo, size).time if tree_plan is not None else None
        meta = result.algorithm.meta
        chosen = meta.get("chosen", result.algorithm.name)
        if chosen == "milp" and "chunkup" in meta:
            chosen += f" (chunk-up {meta['chunkup']}, {meta.get('rule', '?')})"
        print(
            f"{topo.label:<12} {format_size(size):>5} {solve:>8.1f} {_us(row.time):>12} "
            f"{row.algbw / 1e9:>9.2f} {row.pct_of_bound:>7.1f}% {_us(row.ring_time):>12} "
            f"{_x(row.speedup_vs_ring):>8} {_us(tree_t):>12} "
            f"{_x(tree_t / row.time if tree_t and row.time else None):>8}  {chosen}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--topologies", default=",".join(TOPOLOGIES), help="comma-separated built-in topology names"
    )
    ap.add_argument("--nodes", default="2", help="comma-separated node counts")
    ap.add_argument("--sizes", default="1K,1M,1G")
    ap.add_argument(
        "--time-limit",
        type=float,
        default=20.0,
        help="seconds for the milp method's solver per case",
    )
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    print(
        f"{'topology':<12} {'size':>5} {'solve(s)':>8} {'time(us)':>12} {'algbw':>9} "
        f"{'%bound':>8} {'ring(us)':>12} {'vs ring':>8} {'tree(us)':>12} {'vs tree':>8}"
        "  chosen"
    )
    start = time.perf_counter()
    for name in args.topologies.split(","):
        for nodes in args.nodes.split(","):
            run_case(name.strip(), int(nodes), sizes, args.time_limit)
    print(f"# total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
