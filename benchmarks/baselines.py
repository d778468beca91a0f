"""Ring baseline quality and the numbers to beat, for every built-in cluster and collective.

Per (topology, collective, size): the lower bound, NCCL's modelled best (the simulator's
time of NCCL's ring/tree/p2p plans, tuning.cc's formula for NVLS; for Gather and Scatter,
torch's grouped send/recv) and the ring plan's % of the bound. Rooted collectives are rooted
at ``--root`` (default 0).

Usage: python benchmarks/baselines.py [--nodes 1,2] [--sizes 1K,1M,1G]
                                      [--collectives broadcast,gather] [--root 0]
"""

from __future__ import annotations

import argparse
import time

from taccl_py.analysis.report import evaluate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import ALL_KINDS, ROOTED_KINDS, Collective, canonical_kind
from taccl_py.topology.loader import builtin_names, load_topology
from taccl_py.util.units import format_size, parse_size


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--sizes", default="1K,1M,1G")
    ap.add_argument("--collectives", default=",".join(ALL_KINDS))
    ap.add_argument("--root", type=int, default=0)
    args = ap.parse_args()
    nodes = [int(n) for n in args.nodes.split(",")]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    kinds = [canonical_kind(k) for k in args.collectives.split(",")]
    cols = " ".join(
        f"{format_size(s) + ' bound':>12} {'NCCL(us)':>10} {'algo':<12} {'%bnd':>6}" for s in sizes
    )
    tight = f"tight at {format_size(sizes[-1])}"
    print(f"{'topology':<12} {'collective':<16} {'ranks':>5} {cols}  {tight}")
    start = time.perf_counter()
    for name in builtin_names():
        for k in nodes:
            topo = load_topology(name, k)
            for kind in kinds:
                root = args.root if kind in ROOTED_KINDS else 0
                coll = Collective(kind, topo.num_ranks, root=root)
                plan = build_plan(topo, coll, "ring").plan
                rows = evaluate(plan, topo, sizes)
                cells = " ".join(
                    f"{_us(r.bound_time):>12} {_us(r.nccl_time):>10} {r.nccl_choice:<12} "
                    f"{r.pct_of_bound:>5.1f}%"
                    for r in rows
                )
                last = rows[-1]
                print(
                    f"{topo.label:<12} {coll.label:<16} {topo.num_ranks:>5} {cells}  "
                    f"{last.bound_kind}: {last.bound_detail}"
                )
    print(f"# total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
