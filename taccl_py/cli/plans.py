"""``taccl verify``, ``simulate`` and ``plot``: check a plan, time it against NCCL, draw it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import TacclError
from ..plan.runtimes import RUNTIMES
from ..util.fileio import display_path
from ..util.units import format_size

if TYPE_CHECKING:
    pass


from .app import (
    _MAX_STEPS,
    _NODES,
    _OUTPUT,
    _RUNTIME,
    _size,
    _sizes,
    fault_options,
    load_cluster,
    main,
)


# -- verify ----------------------------------------------------------------------
@main.command("verify")
@click.argument(
    "plan_paths", metavar="PLAN...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option(
    "--reference/--no-reference",
    default=True,
    show_default=True,
    help="also run the plan on real NumPy arrays against numpy's result",
)
@click.option(
    "--runtime",
    type=_RUNTIME,
    help="also check that this runtime loads and selects the plans (given "
    "together: one MSCCL_XML_FILES list, or one MSCCL_ALGO_DIR)",
)
@click.option(
    "--max-steps",
    type=_MAX_STEPS,
    help="steps per threadblock of a custom runtime build  [default: the "
    "runtime's: " + ", ".join(f"{r.name} {r.max_steps}" for r in RUNTIMES.values()) + "]",
)
def verify_cmd(
    plan_paths: tuple[Path, ...], reference: bool, runtime: str | None, max_steps: int | None
) -> None:
    """Check that MSCCL XML plans implement their collective (and, with --runtime, that the
    runtime loads and selects them: each broken rule one line on stderr, exit 1)."""
    from ..plan.runtimes import (
        check_library,
        check_runtime,
        root_caveat,
        runtime_rules,
        size_range,
    )
    from ..plan.verify import verify
    from ..plan.xml import parse_plan
    from ..runtime.reference import check_reference

    if max_steps is not None and runtime is None:
        raise TacclError("--max-steps applies with --runtime only")
    named, broken = [], []
    for path in plan_paths:
        plan = parse_plan(path)
        report = verify(plan)
        if reference:
            check_reference(plan)
        shown = display_path(path)
        line = f"{shown}: ok: {plan.label} on {plan.ngpus} ranks; {report.summary()}" + (
            "; reference executor matches numpy" if reference else ""
        )
        if runtime is not None:
            named.append((shown, plan))
            problems = check_runtime(plan, runtime, max_steps)
            broken += [f"{shown}: {p}" for p in problems]
            if problems:
                continue
            lo, hi = size_range(runtime_rules(runtime), plan)
            line += f"; {runtime} loads it, for sizes from {format_size(lo)}" + (
                f" below {format_size(hi)}" if hi is not None else " up"
            )
            caveat = root_caveat(plan, runtime)
            if caveat is not None:
                line += f"; note: {caveat}"
        click.echo(line)
    if runtime is not None:
        broken += check_library(named, runtime)
    for problem in broken:
        click.echo(f"taccl: error: {problem}", err=True)
    if broken:
        sys.exit(1)


# -- simulate / plot -----------------------------------------------------------------
_SIM_OPTIONS = [
    click.argument("plan_path", type=click.Path(path_type=Path)),
    click.option(
        "--topology",
        "-t",
        "topology_name",
        required=True,
        help="built-in name or YAML file the plan runs on",
    ),
    click.option("--nodes", "-n", default=1, show_default=True, type=_NODES),
]


def _sim_options(fn):
    fn = fault_options(fn)
    for opt in reversed(_SIM_OPTIONS):
        fn = opt(fn)
    return fn


def _load_plan_and_topology(plan_path: Path, topology_name: str, nodes: int, exclude=(), derate=()):
    """The plan (verified: an invalid plan is refused with the verifier's reason) and
    topology (with its ``--exclude``/``--derate`` parts)."""
    from ..plan.verify import verify
    from ..plan.xml import parse_plan

    plan = parse_plan(plan_path)
    verify(plan)
    topo = load_cluster(topology_name, nodes, exclude, derate)
    if plan.ngpus != topo.num_ranks:
        raise TacclError(
            f"{plan_path} is for {plan.ngpus} ranks but {topo.label} has "
            f"{topo.num_ranks}; check --nodes"
        )
    return plan, topo


@main.command()
@_sim_options
@click.option("--sizes", default="1K,1M,64M,1G", show_default=True, callback=_sizes)
@click.option("--json", "as_json", is_flag=True, help="print JSON rows instead of a table")
def simulate(plan_path, topology_name, nodes, exclude, derate, sizes, as_json) -> None:
    """Simulate a plan: time, algbw, lower bound, % of bound, NCCL ring, speed-up."""
    from ..analysis.report import evaluate, format_table, to_json

    plan, topo = _load_plan_and_topology(plan_path, topology_name, nodes, exclude, derate)
    rows = evaluate(plan, topo, sizes)
    click.echo(to_json(rows) if as_json else format_table(rows))


@main.command()
@_sim_options
@click.option("--sizes", default="1K,32K,1M,32M,1G", show_default=True, callback=_sizes)
@click.option("--algbw", "algbw_png", type=_OUTPUT, help="PNG of algbw vs size (plan, ring, bound)")
@click.option(
    "--timeline", "timeline_png", type=_OUTPUT, help="PNG of each link's and port's busy intervals"
)
@click.option(
    "--size", default="1M", show_default=True, callback=_size, help="buffer size for the timeline"
)
def plot(
    plan_path, topology_name, nodes, exclude, derate, sizes, algbw_png, timeline_png, size
) -> None:
    """Draw PNG plots of a plan's simulated performance."""
    from ..analysis.report import evaluate
    from ..analysis.simulate import simulate as run_sim
    from ..util.fileio import check_outputs, write_outputs
    from ..viz.plot import algbw_png as draw_algbw
    from ..viz.plot import timeline_png as draw_timeline

    if not (algbw_png or timeline_png):
        raise TacclError("nothing to draw: give --algbw FILE and/or --timeline FILE")
    check_outputs([algbw_png, timeline_png])
    plan, topo = _load_plan_and_topology(plan_path, topology_name, nodes, exclude, derate)
    outputs = []
    if algbw_png:
        outputs.append((algbw_png, draw_algbw(evaluate(plan, topo, sizes), plan)))
    if timeline_png:
        title = f"{plan.name}, {size} B"
        outputs.append((timeline_png, draw_timeline(run_sim(plan, topo, size), title)))
    for path in write_outputs(outputs):
        click.echo(f"wrote {display_path(path)}")
