"""Method milp at scale (issue 9): solve time, peak memory, % of bound and ring, per size.

For every topology x nodes x collective a plan is synthesized for each target size
(``build_plan(..., "milp", synth=SynthOptions(size=...))``), lowered, verified and
simulated at that size.
Each case runs in a fresh process, so its peak memory (max RSS) is its own. Prints a
markdown table headed by the command line.

Usage:
  python benchmarks/scale.py                                    # the issue's grid
  python benchmarks/scale.py --topologies dgx-h100 --nodes 4,8 --collectives allgather
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shlex
import sys
import time

from taccl_py.analysis.report import evaluate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.loader import load_topology
from taccl_py.util.units import format_size, parse_size

#: topology -> node counts of the issue's grid
GRID = {"dgx-a100": (4, 8, 16, 32), "dgx-h100": (4, 8, 16, 32), "ndv2": (4, 8)}


def run_case(name: str, nodes: int, kind: str, sizes: list[int], time_limit: float) -> dict:
    """Solve time, % of bound and speed-up vs ring per size, and the peak RSS (bytes)."""
    topo = load_topology(name, nodes)
    out: dict = {"sizes": {}}
    for size in sizes:
        began = time.perf_counter()
        try:
            result = build_plan(
                topo,
                Collective(kind, topo.num_ranks),
                "milp",
                synth=SynthOptions(size=size, time_limit=time_limit),
            )
        except TacclError as exc:
            out["sizes"][size] = {"error": str(exc)}
            continue
        solve = time.perf_counter() - began
        [row] = evaluate(result.plan, topo, [size])
        meta = result.algorithm.meta
        chosen = meta.get("chosen", result.algorithm.name)
        if chosen == "milp":
            chosen = meta.get("variant", f"chunk-up {meta['chunkup']}")
        out["sizes"][size] = {
            "solve": solve,
            "pct": row.pct_of_bound,
            "ring": row.speedup_vs_ring,
            "chosen": chosen,
        }
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def _cell(entry: dict, key: str, fmt: str) -> str:
    value = entry.get(key)
    return "error" if "error" in entry else ("n/a" if value is None else fmt.format(value))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", default=",".join(GRID))
    ap.add_argument(
        "--nodes", default=None, help="node counts for every topology (default: the issue's grid)"
    )
    ap.add_argument("--collectives", default="allgather,allreduce")
    ap.add_argument("--sizes", default="1M,1G")
    ap.add_argument(
        "--time-limit", type=float, default=600.0, help="build_plan's time limit per plan (s)"
    )
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    cases = [
        (name, int(k), kind)
        for name in args.topologies.split(",")
        for k in (args.nodes.split(",") if args.nodes else GRID.get(name, (4, 8)))
        for kind in args.collectives.split(",")
    ]
    print("`" + " ".join(["python", *map(shlex.quote, sys.argv)]) + "`\n")
    labels = [format_size(s) for s in sizes]
    head = [
        "topology",
        "nodes",
        "GPUs",
        "collective",
        *(f"solve {x} (s)" for x in labels),
        "peak RSS (MiB)",
        *(f"% bound {x}" for x in labels),
        *(f"vs ring {x}" for x in labels),
        f"chosen at {labels[-1]}",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head), flush=True)
    spawn = multiprocessing.get_context("spawn")
    for name, nodes, kind in cases:
        with spawn.Pool(1) as pool:
            res = pool.apply(run_case, (name, nodes, kind, sizes, args.time_limit))
        per = [res["sizes"][s] for s in sizes]
        last = per[-1]
        cells = [
            name,
            str(nodes),
            str(nodes * load_topology(name).gpus_per_node),
            kind,
            *(_cell(e, "solve", "{:.1f}") for e in per),
            f"{res['rss'] / 2**20:,.0f}",
            *(_cell(e, "pct", "{:.1f}%") for e in per),
            *(_cell(e, "ring", "{:.2f}x") for e in per),
            last.get("error", last.get("chosen", "")),
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
