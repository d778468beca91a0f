"""Ring baseline quality: % of the lower bound for every built-in cluster and collective.

Usage: python benchmarks/baselines.py [--nodes 1,2] [--sizes 1K,1M,1G]
"""

from __future__ import annotations

import argparse
import time

from taccl_py.analysis.report import evaluate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import KINDS, Collective
from taccl_py.topology.loader import builtin_names, load_topology
from taccl_py.util.units import format_size, parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--sizes", default="1K,1M,1G")
    args = ap.parse_args()
    nodes = [int(n) for n in args.nodes.split(",")]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    cols = " ".join(f"{format_size(s) + ' %bnd':>10}" for s in sizes)
    print(
        f"{'topology':<12} {'collective':<14} {'ranks':>5} {cols} {'1G algbw':>10} "
        f"{'bound algbw':>12}  tight at 1G"
    )
    start = time.perf_counter()
    for name in builtin_names():
        for k in nodes:
            topo = load_topology(name, k)
            for kind in KINDS:
                plan = build_plan(topo, Collective(kind, topo.num_ranks), "ring").plan
                rows = evaluate(plan, topo, sizes, baseline=plan)
                pcts = " ".join(f"{r.pct_of_bound:>9.1f}%" for r in rows)
                last = rows[-1]
                print(
                    f"{topo.label:<12} {kind:<14} {topo.num_ranks:>5} {pcts} "
                    f"{last.algbw / 1e9:>9.1f}G {last.size / last.bound_time / 1e9:>11.1f}G "
                    f"{last.bound_kind}: {last.bound_detail}"
                )
    print(f"# total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
