"""Exact (z3) synthesis: the DGX-1 AllGather frontier, and SMT vs the staged MILP.

Usage: python benchmarks/smt.py [--max-chunks 6] [--time-limit 60]

Part 1 prints the Pareto frontier of DGX-1 AllGather (steps, rounds, chunks) with solve
times and simulated times. Part 2 compares, on 4-8 rank topologies, the SMT
bandwidth-optimal plan with the staged MILP's own plan (its best candidate, baselines
not included), both lowered and simulated at 1 GB.
"""

from __future__ import annotations

import argparse
import time

from taccl_py.analysis.simulate import simulate
from taccl_py.collectives import Collective
from taccl_py.lowering.lower import lower
from taccl_py.plan.verify import verify
from taccl_py.synth.milp.search import staged_algorithm
from taccl_py.synth.smt import pareto
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import FULL_BISECTION, Link, Nic, Switch, Topology

GB, US, SIZE = 1e9, 1e-6, 1 << 30


def ring4() -> Topology:
    links = [Link(a, b, 25 * GB, 0.7 * US) for a in range(4) for b in ((a + 1) % 4, (a - 1) % 4)]
    return Topology("ring4", 4, 1, tuple(links), (), (), FULL_BISECTION)


def switch4() -> Topology:
    return Topology(
        "switch4", 4, 1, (), (Switch("sw", 0, (0, 1, 2, 3), 25 * GB, 1 * US),), (), FULL_BISECTION
    )


def two_by_two() -> Topology:
    links = [Link(2 * n + a, 2 * n + 1 - a, 25 * GB, 0.7 * US) for n in range(2) for a in range(2)]
    nics = tuple(Nic(f"nic{n}", n, 0, (2 * n, 2 * n + 1), 12.5 * GB, 2 * US) for n in range(2))
    return Topology("twobytwo", 2, 2, tuple(links), (), nics, FULL_BISECTION)


def simulated(alg, topo: Topology, size: int) -> float:
    plan = lower(alg, topology=topo)
    verify(plan)
    return simulate(plan, topo, size).time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chunks", type=int, default=6)
    ap.add_argument("--time-limit", type=float, default=60.0)
    args = ap.parse_args()
    dgx1 = load_topology("dgx1")
    began = time.perf_counter()
    front = pareto(dgx1, "allgather", max_chunks=args.max_chunks, time_limit=args.time_limit)
    total = time.perf_counter() - began
    print(f"DGX-1 AllGather frontier ({total:.1f} s in all, {len(front.log)} solves)")
    print(
        f"{'S':>3} {'R':>3} {'C':>3} {'R/C':>6} {'solve(s)':>9} "
        + " ".join(f"{s:>12}" for s in ("1K (us)", "1M (us)", "1G (us)"))
    )
    for p in front.points:
        times = [simulated(p.algorithm, dgx1, s) * 1e6 for s in (1 << 10, 1 << 20, SIZE)]
        print(
            f"{p.steps:>3} {p.rounds:>3} {p.chunks:>3} {p.rounds / p.chunks:>6.3f} "
            f"{p.solve_time:>9.2f} " + " ".join(f"{t:>12,.1f}" for t in times)
        )
    print("\nSMT bandwidth-optimal vs staged MILP, simulated at 1G")
    print(
        f"{'topology':<10} {'collective':<10} {'SMT (S,R,C)':>12} {'SMT(us)':>11} "
        f"{'MILP(us)':>11} {'SMT/MILP':>9}"
    )
    for topo in (dgx1, ring4(), switch4(), two_by_two()):
        for kind in ("allgather", "alltoall"):
            front = pareto(topo, kind, max_chunks=args.max_chunks, time_limit=args.time_limit)
            if not front.points:
                print(f"{topo.label:<10} {kind:<10} no SMT point within the limits")
                continue
            best = min(front.points, key=lambda p: (p.rounds / p.chunks, p.steps))
            t_smt = simulated(best.algorithm, topo, SIZE)
            coll = Collective(kind, topo.num_ranks)
            alg = staged_algorithm(
                topo,
                coll,
                size=SIZE,
                time_limit=args.time_limit,
                judge=lambda a: simulated(a, topo, SIZE),
            )
            t_milp = simulated(alg, topo, SIZE)
            print(
                f"{topo.label:<10} {kind:<10} {str((best.steps, best.rounds, best.chunks)):>12} "
                f"{t_smt * 1e6:>11,.1f} {t_milp * 1e6:>11,.1f} {t_smt / t_milp:>9.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
