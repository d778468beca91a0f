"""``taccl pareto``: the steps/rounds/chunks frontier of exact (SMT) synthesis."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from ..errors import TacclError
from ..util.units import format_size

if TYPE_CHECKING:
    pass


from .app import _NODES, MAX_SMT, MAX_TIME_LIMIT, _Finite, main
from .synthesize import _progress


# -- pareto (SMT) --------------------------------------------------------------------
@main.command()
@click.option("--topology", "-t", "topology_name", required=True, help="built-in name or YAML file")
@click.option("--nodes", "-n", default=1, show_default=True, type=_NODES)
@click.option(
    "--collective",
    "-c",
    required=True,
    type=click.Choice(["allgather", "alltoall"], case_sensitive=False),
)
@click.option(
    "--max-chunks",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="most chunks per block C tried",
)
@click.option(
    "--max-steps",
    type=click.IntRange(1, MAX_SMT),
    help="most steps S tried [default: least steps + 2]",
)
@click.option(
    "--time-limit",
    default=60.0,
    show_default=True,
    type=_Finite(1, MAX_TIME_LIMIT),
    help="seconds for the whole search (cut short: the points found so far)",
)
def pareto(topology_name, nodes, collective, max_chunks, max_steps, time_limit) -> None:
    """Exact (SMT) latency/bandwidth Pareto frontier of synchronous algorithms."""
    deadline = time.perf_counter() + time_limit
    from ..analysis.simulate import simulate as run_sim
    from ..lowering.lower import lower
    from ..plan.verify import verify
    from ..synth.smt import pareto as smt_pareto
    from ..topology.loader import load_topology

    topo = load_topology(topology_name, nodes)
    front = smt_pareto(
        topo,
        collective,
        max_steps=max_steps,
        max_chunks=max_chunks,
        time_limit=time_limit,
        progress=_progress,
        deadline=deadline,
    )
    if not front.complete and not front.points:
        raise TacclError(
            f"no synchronous {collective} algorithm on {topo.label} found "
            f"within the time limit of {time_limit:g} s"
        )
    if not front.complete:
        click.echo(
            f"taccl: note: time limit of {time_limit:g} s reached; the frontier "
            "below is only the points found so far",
            err=True,
        )
    sizes = (1 << 10, 1 << 20, 1 << 30)
    click.echo(
        f"{topo.label} {collective}: least steps {front.least_steps}, bandwidth "
        f"bound R/C >= {front.bandwidth_bound:.4g}; {len(front.log)} solves in "
        f"{front.total_time:.1f} s"
    )
    click.echo(
        f"{'S':>3} {'R':>4} {'C':>4} {'R/C':>7} {'solve s':>8} "
        + " ".join(f"{format_size(z) + ' us':>12}" for z in sizes)
    )
    for p in front.points:
        plan = lower(p.algorithm, topology=topo)
        verify(plan)
        times = [run_sim(plan, topo, z).time * 1e6 for z in sizes]
        click.echo(
            f"{p.steps:>3} {p.rounds:>4} {p.chunks:>4} {p.rounds / p.chunks:>7.4g} "
            f"{p.solve_time:>8.2f} " + " ".join(f"{t:>12,.1f}" for t in times)
        )
    if not front.points:
        raise TacclError(
            f"no synchronous {collective} algorithm on {topo.label} within "
            f"the steps and {max_chunks} chunks tried"
        )
