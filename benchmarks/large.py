"""Method milp from 8 to 128 nodes (issue 22): where the time and memory go, and whether
the plan fits msccl-executor's loader.

For every node count x collective, in a fresh process (so that its peak RSS is its own):
:func:`~taccl_py.build.pipeline.build_plan` with method milp at the target size, as
``taccl synthesize`` runs it (build: routing, ordering, scheduling, each judged
candidate lowered and simulated, the ring/direct/tree baselines, and the kept plan
verified); then, each timed on its own, the kept algorithm's
:func:`~taccl_py.lowering.lower.lower` for msccl-executor (lower),
:func:`~taccl_py.plan.verify.verify` (verify, data level) and :func:`simulate` at the size
(simulate), against :func:`lower_bound`. "nodes/rank" is the most XML elements the loader
keeps for one rank (1 ``<algo>``, every ``<gpu>``, the rank's ``<tb>`` and ``<step>``; at
most 4,095), "loader" the number of msccl-executor's rules the plan breaks (0: it loads).
With ``--build-only`` the kept plan from the build is simulated and checked as it is,
and lower and verify are not run again (they are part of the build; "—"): what fits
AllReduce at 1,024 ranks in a reasonable time, whose lowering alone takes minutes.

Usage:
  python benchmarks/large.py --nodes 8,16,32,64,128 --collectives allgather,allreduce
  python benchmarks/large.py --nodes 128 --collectives reducescatter,allreduce --build-only
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shlex
import sys
import time

from taccl_py.analysis.bounds import lower_bound
from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.lowering.lower import lower
from taccl_py.plan.runtimes import check_runtime, max_rank_nodes
from taccl_py.plan.verify import verify
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.loader import load_topology
from taccl_py.util.units import parse_size


def run_case(
    name: str, nodes: int, kind: str, size: int, time_limit: float, build_only: bool = False
) -> dict:
    """Stage times (s), % of the bound, the loader's view and the peak RSS (bytes)."""
    topo = load_topology(name, nodes)
    out: dict = {}
    began = time.perf_counter()
    try:
        result = build_plan(
            topo,
            Collective(kind, topo.num_ranks),
            "milp",
            synth=SynthOptions(size=size, time_limit=time_limit),
        )
        out["solve"] = time.perf_counter() - began
        alg = result.algorithm
        chosen = alg.meta.get("chosen", "milp")
        out["chosen"] = alg.meta.get("variant", chosen) if chosen == "milp" else chosen
        plan = result.plan
        del result
        if not build_only:
            del plan
            t = time.perf_counter()
            plan = lower(alg, topo)
            out["lower"] = time.perf_counter() - t
            del alg
            t = time.perf_counter()
            verify(plan)
            out["verify"] = time.perf_counter() - t
        t = time.perf_counter()
        sim = simulate(plan, topo, size).time
        out["simulate"] = time.perf_counter() - t
        out["pct"] = 100 * lower_bound(topo, kind, size).time / sim
        out["nodes"] = max_rank_nodes(plan)
        out["loader"] = len(check_runtime(plan, selection=False))
    except TacclError as exc:
        out["error"] = str(exc)
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="dgx-h100")
    ap.add_argument("--nodes", default="8,16,32,64,128")
    ap.add_argument("--collectives", default="allgather,allreduce")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--time-limit", type=float, default=60.0, help="milp's time limit (s)")
    ap.add_argument(
        "--build-only", action="store_true", help="simulate and check the build's own plan"
    )
    args = ap.parse_args()
    size = parse_size(args.size)
    print("`" + " ".join(["python", *map(shlex.quote, sys.argv)]) + "`\n")
    head = [
        "nodes",
        "GPUs",
        "collective",
        "build (s)",
        "lower (s)",
        "verify (s)",
        "simulate (s)",
        "peak RSS (MiB)",
        "% bound",
        "nodes/rank",
        "loader",
        "chosen",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head), flush=True)
    spawn = multiprocessing.get_context("spawn")
    gpus = load_topology(args.topology).gpus_per_node
    for nodes in map(int, args.nodes.split(",")):
        for kind in args.collectives.split(","):
            with spawn.Pool(1) as pool:
                r = pool.apply(
                    run_case,
                    (args.topology, nodes, kind, size, args.time_limit, args.build_only),
                )
            cells = [str(nodes), str(nodes * gpus), kind]
            if "error" in r:
                cells += ["error"] * 4 + [f"{r['rss'] / 2**20:,.0f}", "", "", "", r["error"]]
            else:
                cells += [
                    f"{r[k]:.1f}" if k in r else "—"
                    for k in ("solve", "lower", "verify", "simulate")
                ]
                cells += [
                    f"{r['rss'] / 2**20:,.0f}",
                    f"{r['pct']:.1f}%",
                    f"{r['nodes']:,}",
                    str(r["loader"]),
                    r["chosen"],
                ]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
