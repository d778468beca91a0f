"""Speed of the pipeline itself: ring synthesis, lowering, verification and simulation.

Usage: python benchmarks/tools.py [--topology dgx-h100] [--nodes 1,4,16,32]
"""

from __future__ import annotations

import argparse
import time

from taccl_py.analysis.simulate import simulate
from taccl_py.collectives import Collective
from taccl_py.lowering.lower import lower
from taccl_py.plan.verify import verify
from taccl_py.synth.baselines.ring import ring_algorithm
from taccl_py.topology.loader import load_topology


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="dgx-h100")
    ap.add_argument("--nodes", default="1,4,16,32")
    ap.add_argument("--collectives", default="allgather,allreduce")
    args = ap.parse_args()
    print(
        f"{'topology':<14} {'collective':<10} {'ranks':>5} {'steps':>7} {'ring(s)':>8} "
        f"{'lower(s)':>9} {'verify(s)':>10} {'simulate(s)':>12}"
    )
    for k in (int(n) for n in args.nodes.split(",")):
        topo = load_topology(args.topology, k)
        for kind in args.collectives.split(","):
            alg, t_ring = _timed(ring_algorithm, topo, Collective(kind, topo.num_ranks))
            plan, t_lower = _timed(lower, alg)
            _, t_verify = _timed(verify, plan)
            _, t_sim = _timed(simulate, plan, topo, 1 << 30)
            steps = sum(len(tb.steps) for g in plan.gpus for tb in g.tbs)
            print(
                f"{topo.label:<14} {kind:<10} {topo.num_ranks:>5} {steps:>7} {t_ring:>8.2f} "
                f"{t_lower:>9.2f} {t_verify:>10.2f} {t_sim:>12.2f}"
            )


if __name__ == "__main__":
    main()
