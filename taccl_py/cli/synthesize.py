"""``taccl synthesize``: one plan per method, the best candidate (auto), or a plan library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from ..errors import TacclError
from ..plan.runtimes import DEFAULT_RUNTIME, RUNTIMES
from ..util.fileio import display_path
from ..util.units import format_size, parse_size

if TYPE_CHECKING:
    from ..plan.model import Plan


from pathlib import Path

from .app import (
    _MAX_STEPS,
    _NODES,
    _OUTPUT,
    _RUNTIME,
    MAX_CHUNKUP,
    MAX_SMT,
    MAX_TIME_LIMIT,
    _Finite,
    _order,
    _size,
    _size_or_zero,
    fault_options,
    load_cluster,
    main,
)


# -- synthesize ------------------------------------------------------------------
def _progress(stage: str, elapsed: float, incumbent: float | None, gap: float | None) -> None:
    """Live solver progress on stderr: stage, elapsed, incumbent makespan, gap."""
    inc = f"  makespan {incumbent * 1e6:,.1f} us" if incumbent is not None else ""
    gp = f"  gap {gap:.1%}" if gap is not None else ""
    click.echo(f"  [{elapsed:6.1f}s] {stage}{inc}{gp}", err=True)


def _span(ctx, param, value):
    """--sizes LO-HI: the span of a plan library."""
    if value is None:
        return None
    lo, sep, hi = value.partition("-")
    if not sep:
        raise click.BadParameter("give the span as LOW-HIGH, e.g. 1K-1G")
    try:
        span = parse_size(lo), parse_size(hi)
    except TacclError as exc:
        raise click.BadParameter(str(exc)) from None
    if not 0 < span[0] < span[1]:
        raise click.BadParameter(f"{value}: need 0 < LOW < HIGH")
    return span


@main.command()
@click.option(
    "--topology",
    "-t",
    "topology_name",
    required=True,
    help="built-in name (see `taccl topology list`) or a YAML file",
)
@click.option("--nodes", "-n", default=1, show_default=True, type=_NODES)
@fault_options
@click.option(
    "--collective",
    "-c",
    required=True,
    type=click.Choice(
        [
            "allgather",
            "alltoall",
            "reducescatter",
            "allreduce",
            "broadcast",
            "reduce",
            "gather",
            "scatter",
        ],
        case_sensitive=False,
    ),
)
@click.option(
    "--root",
    "-r",
    type=click.IntRange(0),
    help="root rank of broadcast, reduce, gather, scatter  [default: 0]",
)
@click.option(
    "--method",
    "-m",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "ring", "direct", "tree", "milp", "smt"]),
    help="auto: build every candidate (milp, smt where small, NCCL's ring and "
    "tree, direct; each protocol) and keep the fastest; ring/tree: NCCL's "
    "multi-channel rings and double binary tree (tree: AllReduce only); "
    "direct: every chunk straight to its destination; milp: staged "
    "TACCL-style synthesis; smt: exact synthesis (AllGather, AllToAll)",
)
@click.option(
    "--time-limit",
    default=60.0,
    show_default=True,
    type=_Finite(1, MAX_TIME_LIMIT),
    help="seconds for the milp solver; for smt, the whole search",
)
@click.option(
    "--chunkup",
    default=1,
    show_default=True,
    type=click.IntRange(1, MAX_CHUNKUP),
    help="chunks per rank's block",
)
@click.option(
    "--instances",
    default=1,
    show_default=True,
    type=click.IntRange(1, 32),
    help="copies of the algorithm on separate channels",
)
@click.option(
    "--size",
    callback=_size,
    help="buffer size the plan targets (nccl-tests convention)  "
    "[default: the sketch's size, else 1M]",
)
@click.option(
    "--sizes",
    "span",
    callback=_span,
    help="write a plan library over this span instead, e.g. 1K-1G: per range "
    "of sizes the fastest plan, none where NCCL is as fast (-o: a directory)",
)
@click.option(
    "--runtime",
    type=_RUNTIME,
    default=DEFAULT_RUNTIME,
    show_default=True,
    help="the MSCCL runtime the plans are for (its loader's rules and spelling)",
)
@click.option(
    "--max-steps",
    type=_MAX_STEPS,
    help="steps per threadblock of a custom runtime build "
    "[default: the runtime's: msccl-executor 64, msccl 256]",
)
@click.option(
    "--sketch",
    "sketch_name",
    help="communication sketch for --method milp: a built-in name (see "
    "`taccl sketch init`), a YAML file, or 'default' (derived from the "
    "topology)",
)
@click.option("--inplace", is_flag=True, help="emit an in-place plan")
@click.option("--order", callback=_order, help="ring rank order, e.g. 0,1,3,2 (ring only)")
@click.option(
    "--proto",
    type=click.Choice(["Simple", "LL", "LL128"]),
    help="protocol [default: auto picks the fastest; other methods Simple]",
)
@click.option(
    "--min-bytes",
    callback=_size_or_zero,
    help="plan's minBytes [default: the sizes where the plan beats NCCL (auto), else every size]",
)
@click.option(
    "--max-bytes",
    callback=_size_or_zero,
    help="plan's maxBytes, as the runtime reads it (msccl-executor: inclusive, "
    "0 = unbounded; msccl: exclusive, never 0)",
)
@click.option(
    "--output",
    "-o",
    type=_OUTPUT,
    help="XML plan path [default: ./<topology>-<collective>-<method>.xml; with "
    "--sizes, the directory ./<topology>-<collective>-library]",
)
@click.option("--ir", "ir_path", type=_OUTPUT, help="also write the algorithm IR as JSON")
@click.option(
    "--steps",
    type=click.IntRange(1, MAX_SMT),
    help="smt: synchronous steps S [default: search the Pareto frontier]",
)
@click.option("--rounds", type=click.IntRange(1, MAX_SMT), help="smt: total rounds R")
@click.option(
    "--chunks",
    type=click.IntRange(1, MAX_CHUNKUP),
    help="smt: chunks per block C (with --steps/--rounds; else the most tried)",
)
def synthesize(**kw) -> None:
    """Synthesize a plan (or a plan library), verify it at the data level, write MSCCL XML
    and compare it with NCCL (a model of NCCL from its tuning code)."""
    from ..collectives import ROOTED_KINDS, Collective

    o = _SynthesizeArgs(**kw)
    if o.max_bytes and o.min_bytes and o.min_bytes > o.max_bytes:
        raise TacclError(f"--min-bytes {o.min_bytes} exceeds --max-bytes {o.max_bytes}")
    topo = load_cluster(o.topology_name, o.nodes, o.exclude, o.derate)
    sketch = None
    if o.sketch_name is not None:
        if o.method not in ("milp", "auto"):
            raise TacclError("--sketch only applies to --method milp (or auto)")
        sketch = _load_sketch(o.sketch_name, topo)
    size = o.size or (sketch.size if sketch is not None else 1 << 20)
    if o.root is not None and o.collective.lower() not in ROOTED_KINDS:
        raise TacclError(f"--root only applies to {', '.join(ROOTED_KINDS)}")
    coll = Collective(o.collective, topo.num_ranks, o.chunkup, o.inplace, o.root or 0)
    if o.method != "smt" and any(v is not None for v in (o.steps, o.rounds, o.chunks)):
        raise TacclError("--steps/--rounds/--chunks only apply to --method smt")
    if o.order is not None and o.method != "ring":
        raise TacclError("a rank order (--order) only applies to --method ring")
    if o.span is not None:
        if (
            o.method != "auto"
            or o.size is not None
            or o.ir_path
            or o.proto
            or o.min_bytes is not None
            or o.max_bytes is not None
        ):
            raise TacclError(
                "--sizes builds a library with every method and protocol: "
                "it takes no --method, --size, --proto, --min/max-bytes or --ir"
            )
        return _write_library(o, o.span, topo, coll, sketch)
    if o.method == "auto":
        return _synthesize_auto(o, topo, coll, size, sketch)
    return _synthesize_method(o, topo, coll, size, sketch)


@dataclass(frozen=True)
class _SynthesizeArgs:
    """The options of ``taccl synthesize``, as given."""

    topology_name: str
    nodes: int
    exclude: tuple[str, ...]
    derate: tuple[str, ...]
    collective: str
    root: int | None
    method: str
    time_limit: float
    chunkup: int
    instances: int
    size: int | None
    span: tuple[int, int] | None
    runtime: str
    max_steps: int | None
    sketch_name: str | None
    inplace: bool
    order: list[int] | None
    proto: str | None
    min_bytes: int | None
    max_bytes: int | None
    output: str | None
    ir_path: str | None
    steps: int | None
    rounds: int | None
    chunks: int | None


def _candidate_options(o: _SynthesizeArgs, sizes: tuple[int, ...], sketch):
    from ..build.candidates import CandidateOptions

    return CandidateOptions(
        sizes=sizes,
        time_limit=o.time_limit,
        runtime=o.runtime,
        max_steps=o.max_steps,
        instances=o.instances,
        sketch=sketch,
        progress=_progress,
    )


def _synthesize_auto(o: _SynthesizeArgs, topo, coll, size: int, sketch) -> None:
    """Every candidate, the fastest kept: its plan, selected where it beats NCCL."""
    import dataclasses

    from ..build.candidates import PROTOCOLS, build_candidates
    from ..build.library import pick_plan
    from ..plan.runtimes import selection_bytes
    from ..plan.xml import plan_to_xml
    from ..util.fileio import check_outputs, write_outputs

    output = o.output if o.output is not None else f"{topo.label}-{coll.label}.xml"
    check_outputs([output, o.ir_path])
    found = build_candidates(topo, coll, _candidate_options(o, (size,), sketch))
    pick = pick_plan(topo, coll, found, size, (o.proto,) if o.proto else PROTOCOLS)
    cand, proto = pick.served.candidate, pick.served.proto
    rules = RUNTIMES[o.runtime]
    own = coll.kind in rules.never_selected  # run by taccl's executors only: every size
    if o.min_bytes is not None or o.max_bytes is not None:
        lo_b, hi_b = o.min_bytes or 0, o.max_bytes or 0
    elif own:
        lo_b, hi_b = selection_bytes(rules, 1, None)
    elif pick.selected is not None:
        lo_b, hi_b = selection_bytes(rules, *pick.selected)
    else:  # NCCL is as fast at this size: the plan serves its own size's doubling only
        lo_b, hi_b = selection_bytes(rules, size, 2 * size)
    plan = dataclasses.replace(
        cand.with_proto(proto), name=f"{topo.label}-{coll.label}", min_bytes=lo_b, max_bytes=hi_b
    )
    notes = _deployable(plan, o)
    outputs = [(output, plan_to_xml(plan, runtime=o.runtime))]
    if o.ir_path:
        outputs.append((o.ir_path, cand.algorithm.to_json()))
    write_outputs(outputs)
    click.echo(
        f"{plan.name}: {topo.num_ranks} ranks, {coll.label}, target size "
        f"{format_size(size)}, for {o.runtime}"
    )
    for label, why in found.dropped:
        click.echo(f"  dropped {label}: {why}")
    click.echo(
        "  candidates at "
        + format_size(size)
        + " (simulated, us): "
        + ", ".join(
            f"{k} {v * 1e6:,.1f}" for k, v in sorted(pick.times.items(), key=lambda kv: kv[1])
        )
    )
    click.echo(
        f"  kept {pick.served.label}: {pick.time * 1e6:,.1f} us; NCCL (model: "
        f"{pick.nccl.algorithm}/{pick.nccl.protocol}) {pick.nccl.time * 1e6:,.1f} us: "
        f"{pick.speedup:.2f}x"
    )
    if own and o.min_bytes is None and o.max_bytes is None:
        click.echo(f"  serves every size (minBytes={plan.min_bytes} maxBytes={plan.max_bytes})")
    elif pick.selected is not None:
        lo, hi = pick.selected
        where = (
            f"size {format_size(lo)} only"
            if hi == lo + 1
            else f"{format_size(lo)} <= size < {format_size(hi)}"
        )
        click.echo(
            f"  selected for {where}, where it beats NCCL "
            f"(minBytes={plan.min_bytes} maxBytes={plan.max_bytes})"
        )
    elif o.min_bytes is None and o.max_bytes is None:
        click.echo(
            f"  NCCL is as fast at {format_size(size)}: deploying this plan gains "
            "nothing there; it is selected for its own size's doubling only "
            f"(minBytes={plan.min_bytes} maxBytes={plan.max_bytes})"
        )
    click.echo(f"  verified: {cand.report.summary()}")
    click.echo(f"  wrote {display_path(output)}")
    for note in notes:
        click.echo(f"  note: {note}")
    _print_evaluation(plan, topo, size, found.nccl)


def _synthesize_method(o: _SynthesizeArgs, topo, coll, size: int, sketch) -> None:
    """One named method's plan (Simple unless --proto), selected for every size unless
    --min-bytes/--max-bytes say otherwise."""
    from ..analysis.nccl_model import reusable_plans
    from ..build.pipeline import build_plan
    from ..lowering.lower import LowerOptions
    from ..plan.runtimes import selection_bytes
    from ..plan.xml import plan_to_xml
    from ..synth.methods import SynthOptions
    from ..util.fileio import check_outputs, write_outputs

    output = o.output if o.output is not None else f"{topo.label}-{coll.label}-{o.method}.xml"
    check_outputs([output, o.ir_path])
    if o.min_bytes is not None or o.max_bytes is not None:
        lo_b, hi_b = o.min_bytes or 0, o.max_bytes or 0
    else:
        lo_b, hi_b = selection_bytes(RUNTIMES[o.runtime], 1, None)
    lowering = LowerOptions(
        instances=o.instances,
        proto=o.proto or "Simple",
        min_bytes=lo_b,
        max_bytes=hi_b,
        runtime=o.runtime,
        max_steps=o.max_steps,
    )
    result = build_plan(
        topo,
        coll,
        o.method,
        synth=SynthOptions(
            size=size,
            time_limit=o.time_limit,
            progress=_progress,
            sketch=sketch,
            order=o.order,
            steps=o.steps,
            rounds=o.rounds,
            chunks=o.chunks,
        ),
        lower=lowering,
    )
    notes = _deployable(result.plan, o)
    outputs = [(output, plan_to_xml(result.plan, runtime=o.runtime))]
    if o.ir_path:
        outputs.append((o.ir_path, result.algorithm.to_json()))
    write_outputs(outputs)
    plan = result.plan
    ntbs = sum(len(g.tbs) for g in plan.gpus)
    click.echo(
        f"{plan.name}: {topo.num_ranks} ranks, {coll.label}, method {o.method}, "
        f"chunk-up {result.algorithm.collective.chunkup}, {o.instances} instance(s), "
        f"target size {format_size(size)}, for {o.runtime}"
    )
    click.echo(
        f"  {result.algorithm.num_steps} steps, {len(result.algorithm.transfers)} "
        f"transfers, {ntbs} threadblocks, {plan.nchannels} channel(s)"
    )
    if sketch is not None:
        click.echo(f"  sketch {sketch.name} ({sketch.source})")
    meta = result.algorithm.meta
    if "chosen" in meta:
        unsplit = meta.get("unsplit", [])
        others = ", ".join(
            f"{k} {v * 1e6:,.1f} us" + (" (its chunks do not split the size)" * (k in unsplit))
            for k, v in meta["candidates"].items()
        )
        click.echo(
            f"  kept {meta['chosen']}, the fastest at {format_size(size)} (simulated: {others})"
        )
    click.echo(f"  verified: {result.report.summary()}")
    click.echo(f"  wrote {display_path(output)}")
    for note in notes:
        click.echo(f"  note: {note}")
    # NCCL's model times its ring, tree and p2p plans: the baselines built here, if alike
    verified = o.method != "milp"  # the plan itself, else the baselines milp judged
    nccl = reusable_plans(topo, coll, result.baselines, lowering, verified=verified)
    _print_evaluation(plan, topo, size, nccl)


def _deployable(plan: Plan, o: _SynthesizeArgs) -> list[str]:
    """Raise if ``o.runtime`` would not load ``plan`` or would never select it for its
    sizes; return the notes the user must read before deploying it: a gather or scatter
    plan, which no NCCL call selects (for ``taccl run`` and the torch backend), and a rooted
    plan's root, which the runtime does not compare."""
    from ..plan.runtimes import check_runtime

    own_executors = plan.coll in RUNTIMES[o.runtime].never_selected
    problems = check_runtime(plan, o.runtime, max_steps=o.max_steps, selection=not own_executors)
    if problems:
        raise TacclError(f"{o.runtime} would not load the plan: {problems[0]}")
    return _notes(plan, o.runtime)


def _notes(plan: Plan, runtime: str) -> list[str]:
    """What to know before deploying ``plan`` on ``runtime``: that no NCCL call selects a
    gather or scatter plan, and that the runtime does not compare a rooted plan's root."""
    from ..plan.runtimes import root_caveat

    notes = []
    if plan.coll in RUNTIMES[runtime].never_selected:
        notes.append(
            f"{runtime} loads {plan.coll} plans but no NCCL call selects them: this plan "
            "is for `taccl run` (MPI) and the torch backend"
        )
    caveat = root_caveat(plan, runtime)
    if caveat is not None:
        notes.append(caveat)
    return notes


def _print_evaluation(plan, topo, size: int, nccl: dict[tuple[str, str], Plan]) -> None:
    """The plan against the lower bound and NCCL's model (``nccl``: its plans built
    already) at 1K, 1M, ``size`` and 1G."""
    from ..analysis.report import evaluate, format_table

    sizes = sorted({1 << 10, 1 << 20, size, 1 << 30})
    click.echo(format_table(evaluate(plan, topo, sizes, nccl)))


def _write_library(o: _SynthesizeArgs, span: tuple[int, int], topo, coll, sketch) -> None:
    """A plan library over the span: its summary table and the lines to deploy it."""
    from ..build.library import (
        LibraryOptions,
        build_library,
        format_library,
        write_library,
    )
    from ..plan.runtimes import deploy_lines

    if sketch is not None:
        raise TacclError("--sketch applies to one milp solve, not to a library")
    target = o.output if o.output is not None else f"{topo.label}-{coll.label}-library"
    if not target.strip():
        raise TacclError("an output path is empty")
    lib = build_library(
        topo,
        coll,
        LibraryOptions(
            lo=span[0],
            hi=span[1],
            time_limit=o.time_limit,
            runtime=o.runtime,
            max_steps=o.max_steps,
            instances=o.instances,
            progress=_progress,
        ),
    )
    files = write_library(lib, target)
    click.echo(
        f"{topo.label} {coll.label} library for {o.runtime}, "
        f"{format_size(span[0])}-{format_size(span[1])}: {len(files)} plan(s) in "
        f"{display_path(target)}"
    )
    for label, why in lib.dropped:
        click.echo(f"  dropped {label}: {why}")
    for e in lib.entries:
        click.echo(
            f"  {format_size(e.lo)} <= size < {format_size(e.hi)}: {e.served.label} ({e.filename})"
        )
    for note in lib.notes:
        click.echo(f"  {note}")
    click.echo(format_library(lib))
    if files:
        click.echo("deploy with:")
        for line in deploy_lines(o.runtime, target, [Path(f).name for f in files]):
            click.echo(f"  {line}")
        for note in _notes(lib.entries[0].plan, o.runtime):
            click.echo(f"note: {note}")
    else:
        click.echo("NCCL is as fast at every size of the span: no plan written")


def _load_sketch(name: str, topo):
    from ..synth.milp.sketch import default_sketch, load_sketch

    return default_sketch(topo) if name == "default" else load_sketch(name, topo)
