"""Plan libraries vs NCCL's model: every built-in x nodes x collective, 1K..1G.

For each case a library is built over the span (``taccl synthesize --sizes 1K-1G``: milp
at the span's ends and middle, smt where small, the NCCL baselines, each protocol), and
the table lists, at every power of 4, NCCL's best (algorithm/protocol and time, from
:mod:`taccl_py.analysis.nccl_model`), what the library serves there and the ratio
(NCCL time / served time; 1.00 where NCCL serves). The build time is per case.

Usage:
  python benchmarks/library.py                                  # every case
  python benchmarks/library.py --topologies dgx1,ndv2 --nodes 1 --collectives allgather
"""

from __future__ import annotations

import argparse
import time

from taccl_py.build.library import LibraryOptions, build_library
from taccl_py.collectives import KINDS, Collective
from taccl_py.errors import TacclError
from taccl_py.topology.loader import builtin_names, load_topology
from taccl_py.util.units import format_size, parse_size


def run_case(name: str, nodes: int, kind: str, lo: int, hi: int, time_limit: float) -> bool:
    """Print one case's rows; False if some size is slower than NCCL."""
    topo = load_topology(name, nodes)
    start = time.perf_counter()
    try:
        lib = build_library(
            topo,
            Collective(kind, topo.num_ranks),
            LibraryOptions(lo=lo, hi=hi, time_limit=time_limit),
        )
    except TacclError as exc:
        print(f"{topo.label:<14} {kind:<13} error: {exc}", flush=True)
        return True
    took = time.perf_counter() - start
    ok = True
    for row in lib.rows:
        if row.size & (row.size - 1) or (row.size.bit_length() - lo.bit_length()) % 2:
            continue  # powers of 4 from lo only
        served = row.served.label if row.served else "NCCL"
        ok &= row.served_time <= row.nccl.time * (1 + 1e-9)
        print(
            f"{topo.label:<14} {kind:<13} {format_size(row.size):>5}  "
            f"{row.nccl.algorithm + '/' + row.nccl.protocol:<14} "
            f"{row.nccl.time * 1e6:>11,.1f}  {served:<22} {row.served_time * 1e6:>11,.1f}  "
            f"{row.speedup:>5.2f}x",
            flush=True,
        )
    print(
        f"{topo.label:<14} {kind:<13} built in {took:.1f} s, {len(lib.entries)} plan(s); "
        f"dropped: {'; '.join(m for m, _ in lib.dropped) or 'none'}",
        flush=True,
    )
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", default=",".join(builtin_names()))
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--collectives", default=",".join(KINDS))
    ap.add_argument("--span", default="1K-1G")
    ap.add_argument("--time-limit", type=float, default=20.0)
    args = ap.parse_args()
    lo, hi = (parse_size(s) for s in args.span.split("-"))
    print(
        f"{'case':<14} {'collective':<13} {'size':>5}  {'NCCL best':<14} "
        f"{'NCCL (us)':>11}  {'served by':<22} {'served (us)':>11}  {'ratio':>6}"
    )
    ok = True
    for name in args.topologies.split(","):
        for nodes in (int(n) for n in args.nodes.split(",")):
            for kind in args.collectives.split(","):
                ok &= run_case(name, nodes, kind, lo, hi, args.time_limit)
    print("no size slower than NCCL" if ok else "SOME SIZE IS SLOWER THAN NCCL")


if __name__ == "__main__":
    main()
