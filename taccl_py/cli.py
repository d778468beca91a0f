"""The ``taccl`` command line (click). Every user error is one line on stderr, exit 2."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import TacclError
from .plan.runtimes import DEFAULT_RUNTIME, RUNTIMES
from .topology.loader import MAX_RANKS
from .util.fileio import display_path
from .util.units import format_size, parse_size

if TYPE_CHECKING:
    from .plan.model import Plan


def _in_finalizer(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _raise_interrupt(signum, frame):
    """Raise KeyboardInterrupt, except inside a finalizer (z3's ``AstRef.__del__``, say),
    where Python would print and drop it: there the signal is sent again 10 ms later."""
    if _in_finalizer(frame):
        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt


def _interrupts() -> dict:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt (main thread only); the previous
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def _exit_if_solving(code: int) -> None:
    """Exit at once if a solver ignored its cancel (see :func:`.synth.solvers.solving`)."""
    from .synth.solvers import solving

    if solving():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _launcher_rank() -> str | None:
    """This process's rank when started by mpiexec (MPICH or Open MPI), else None."""
    return os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")


class _Group(click.Group):
    """A click group that turns :class:`TacclError` into a one-line message."""

    def main(self, *args, **kwargs):
        """Usage errors, too, are one line on stderr: ``taccl: error: ...``, exit 2.
        SIGTERM interrupts like Ctrl-C: ``taccl: interrupted``, exit 130."""
        kwargs.pop("standalone_mode", None)
        previous = _interrupts()
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
            message = display_path(" ".join(exc.format_message().split()))  # one line,
            # control characters from argv escaped
            if _launcher_rank() in (None, "0"):  # under mpiexec, rank 0 alone says it
                click.echo(f"taccl: error: {message}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("taccl: interrupted", err=True)
            sys.exit(130)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TacclError as exc:
            click.echo(f"taccl: error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("taccl: interrupted", err=True)
            _exit_if_solving(130)
            ctx.exit(130)


class _Finite(click.FloatRange):
    """A float range that also refuses NaN and ±inf."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


#: an output file: kept a string, so that a trailing "/" still says "directory" to fileio
_OUTPUT = click.Path()
#: most seconds a solver may be given (a week)
MAX_TIME_LIMIT = 7 * 24 * 3600.0
#: --nodes: one node per rank at most (see :data:`~taccl_py.topology.loader.MAX_RANKS`)
_NODES = click.IntRange(1, MAX_RANKS)
#: most chunks per block (the MSCCL runtime counts at most 72 chunks per step)
MAX_CHUNKUP = 64
#: most SMT steps or rounds tried (z3 is practical far below this)
MAX_SMT = 256
#: most timed or warm-up iterations
MAX_REPEATS = 1_000_000
_REPEATS = click.IntRange(0, MAX_REPEATS)
#: most sizes one --sizes list may hold
MAX_SIZES = 64
#: least GB/s for import's bandwidth options: twice the topology schema's 1 MB/s, as
#: PCIe pairs across sockets get half of --pcie-bw
MIN_IMPORT_GBS = 2e-3
#: most GB/s a link or NIC may be said to carry
MAX_BANDWIDTH_GBS = 1e6
#: --runtime: the MSCCL runtime plans are for (lowering/runtimes.py)
_RUNTIME = click.Choice(list(RUNTIMES))
#: --max-steps: steps per threadblock of a custom runtime build (the XML reader keeps at
#: most this many children per element)
_MAX_STEPS = click.IntRange(1, RUNTIMES[DEFAULT_RUNTIME].max_children)


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_size(value)
    except TacclError as exc:
        raise click.BadParameter(str(exc)) from None


def _sizes(ctx, param, value):
    try:
        sizes = sorted({parse_size(v) for v in value.split(",") if v.strip()})
    except TacclError as exc:
        raise click.BadParameter(str(exc)) from None
    if not sizes:
        raise click.BadParameter("give at least one size, e.g. 1K,1M,1G")
    if len(sizes) > MAX_SIZES:
        raise click.BadParameter(f"at most {MAX_SIZES} sizes")
    return sizes


def _size_or_zero(ctx, param, value):
    return 0 if str(value).strip() == "0" else _size(ctx, param, value)


def _order(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("use comma-separated rank numbers, e.g. 0,1,3,2") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taccl_py")
@click.option("--verbose", is_flag=True, help="show solver banners and logs (HiGHS) on stderr")
def main(verbose: bool) -> None:
    """Synthesize, verify and run collective-communication algorithms."""
    from .synth.solvers import set_verbose

    set_verbose(verbose)


# -- topology -----------------------------------------------------------------
@main.group(cls=_Group)
def topology() -> None:
    """List, show and validate topologies."""


@topology.command("list")
def topology_list() -> None:
    """List the built-in topologies."""
    from .topology.loader import builtin_names, load_topology

    for name in builtin_names():
        topo = load_topology(name)
        click.echo(f"{name:<10} {topo.gpus_per_node:>3} GPUs/node  {topo.description}")


@topology.command("show")
@click.argument("name")
@click.option("--nodes", "-n", default=1, show_default=True, type=_NODES)
@click.option("--png", "png", type=_OUTPUT, help="Also draw the topology to this PNG file.")
def topology_show(name: str, nodes: int, png: Path | None) -> None:
    """Describe a built-in topology or a YAML file."""
    from .topology.loader import describe, load_topology
    from .util.fileio import check_outputs, write_outputs

    check_outputs([png])
    topo = load_topology(name, nodes)
    if png:  # drawn and written first: a failure prints nothing on stdout
        from .viz.topology import topology_png

        write_outputs([(png, topology_png(topo))])
    click.echo(describe(topo))
    if png:
        click.echo(f"wrote {display_path(png)}")


@topology.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def topology_validate(files: tuple[Path, ...]) -> None:
    """Check topology YAML files; print one line per file."""
    from .topology.loader import validate_file

    bad = 0
    for path in files:
        try:
            validate_file(path)
            click.echo(f"{display_path(path)}: ok")
        except TacclError as exc:
            bad += 1
            click.echo(str(exc), err=True)
    if bad:
        sys.exit(1)


@topology.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["nvidia-smi"]))
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--nics",
    "nics_spec",
    metavar="SPEC",
    help="compute NICs: comma-separated names from the NIC Legend (mlx5_0) or "
    "columns (NIC0), or 'none'  [default: NICs with a GPU at PIX/PXB]",
)
@click.option("--name", help="topology name  [default: the input file's stem]")
@click.option(
    "--nvlink-bw",
    type=_Finite(MIN_IMPORT_GBS, MAX_BANDWIDTH_GBS),
    metavar="GB/S",
    help="per-NVLink bandwidth  [default: guessed generation's, 20 or 25]",
)
@click.option(
    "--pcie-bw",
    type=_Finite(MIN_IMPORT_GBS, MAX_BANDWIDTH_GBS),
    metavar="GB/S",
    help="PCIe x16 bandwidth for PIX/PXB pairs  [default: 16 (Gen3) with "
    "P100/V100, 32 (Gen4) with A100 or no NVLink, 64 (Gen5) with H100]",
)
@click.option(
    "--nic-bw",
    metavar="GB/S",
    type=_Finite(MIN_IMPORT_GBS, MAX_BANDWIDTH_GBS),
    help="bandwidth of each NIC  [default: 12.5 with P100/V100, 25 with A100 or "
    "no NVLink, 50 with H100]",
)
@click.option(
    "--pcie/--no-pcie",
    default=True,
    show_default=True,
    help="link GPU pairs without NVLink over PCIe",
)
@click.option("--output", "-o", type=_OUTPUT, help="write the YAML here instead of printing it")
def topology_import(fmt, file, nics_spec, name, nvlink_bw, pcie_bw, nic_bw, pcie, output) -> None:
    """Convert `nvidia-smi topo -m` output (FILE, or - for stdin) to a topology YAML.

    \b
    Mapping (per direction; the YAML's header lists every assumption):
    - NV# pair: NVLink link, count #, per-link bandwidth of the generation guessed
      from the NVLinks per GPU (<=4 P100 20 GB/s; <=6 V100, <=12 A100 25 GB/s;
      more H100 25 GB/s, alpha 0.5 us, else 0.7 us)
    - every pair the same NV#, 3+ GPUs, # x (GPUs-1) > 18 (e.g. NV12 or NV18 with
      8 GPUs): one NVSwitch, # x per-link bandwidth per GPU port
    - pairs without NVLink: PCIe links; PIX/PXB 1x --pcie-bw, alpha 1 us;
      PHB/NODE 0.75x, alpha 1.5 us; SYS/SOC 0.5x, alpha 2.5 us
    - NICs serve their nearest GPUs (PIX, PXB, PHB, NODE, SYS); NICs sharing
      the same nearest GPUs split them; --nic-bw each, alpha 2 us, full-bisection
      network
    """
    from .topology.nvsmi import import_nvidia_smi, read_matrix
    from .util.fileio import atomic_write_text

    data, source = read_matrix(file)
    nics = None if nics_spec is None else [n.strip() for n in nics_spec.split(",") if n.strip()]
    text, topo = import_nvidia_smi(
        data.decode("utf-8", errors="replace"),
        source,
        name=name,
        nics=nics,
        nvlink_bw=nvlink_bw,
        pcie_bw=pcie_bw,
        nic_bw=nic_bw,
        pcie=pcie,
    )
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        click.echo(f"wrote {display_path(output)}: {topo.description}")


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
@click.option(
    "--collective",
    "-c",
    required=True,
    type=click.Choice(
        ["allgather", "alltoall", "reducescatter", "allreduce"], case_sensitive=False
    ),
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
    from .collectives import Collective
    from .topology.loader import load_topology

    o = _SynthesizeArgs(**kw)
    if o.max_bytes and o.min_bytes and o.min_bytes > o.max_bytes:
        raise TacclError(f"--min-bytes {o.min_bytes} exceeds --max-bytes {o.max_bytes}")
    topo = load_topology(o.topology_name, o.nodes)
    sketch = None
    if o.sketch_name is not None:
        if o.method not in ("milp", "auto"):
            raise TacclError("--sketch only applies to --method milp (or auto)")
        sketch = _load_sketch(o.sketch_name, topo)
    size = o.size or (sketch.size if sketch is not None else 1 << 20)
    coll = Collective(o.collective, topo.num_ranks, o.chunkup, o.inplace)
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
    collective: str
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
    from .build.candidates import CandidateOptions

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

    from .build.candidates import PROTOCOLS, build_candidates
    from .build.library import pick_plan
    from .plan.runtimes import RUNTIMES, check_runtime, selection_bytes
    from .plan.xml import plan_to_xml
    from .util.fileio import check_outputs, write_outputs

    output = o.output if o.output is not None else f"{topo.label}-{coll.kind}.xml"
    check_outputs([output, o.ir_path])
    found = build_candidates(topo, coll, _candidate_options(o, (size,), sketch))
    pick = pick_plan(topo, coll, found, size, (o.proto,) if o.proto else PROTOCOLS)
    cand, proto = pick.served.candidate, pick.served.proto
    rules = RUNTIMES[o.runtime]
    if o.min_bytes is not None or o.max_bytes is not None:
        lo_b, hi_b = o.min_bytes or 0, o.max_bytes or 0
    elif pick.selected is not None:
        lo_b, hi_b = selection_bytes(rules, *pick.selected)
    else:  # NCCL is as fast at this size: the plan serves its own size's doubling only
        lo_b, hi_b = selection_bytes(rules, size, 2 * size)
    plan = dataclasses.replace(
        cand.with_proto(proto), name=f"{topo.label}-{coll.kind}", min_bytes=lo_b, max_bytes=hi_b
    )
    problems = check_runtime(plan, o.runtime, max_steps=o.max_steps)
    if problems:
        raise TacclError(f"{o.runtime} would not load the plan: {problems[0]}")
    outputs = [(output, plan_to_xml(plan, runtime=o.runtime))]
    if o.ir_path:
        outputs.append((o.ir_path, cand.algorithm.to_json()))
    write_outputs(outputs)
    click.echo(
        f"{plan.name}: {topo.num_ranks} ranks, {coll.kind}, target size "
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
    if pick.selected is not None:
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
    _print_evaluation(plan, topo, size, found.nccl)


def _synthesize_method(o: _SynthesizeArgs, topo, coll, size: int, sketch) -> None:
    """One named method's plan (Simple unless --proto), selected for every size unless
    --min-bytes/--max-bytes say otherwise."""
    from .analysis.nccl_model import reusable_plans
    from .build.pipeline import build_plan
    from .lowering.lower import LowerOptions
    from .plan.runtimes import RUNTIMES, check_runtime, selection_bytes
    from .plan.xml import plan_to_xml
    from .synth.methods import SynthOptions
    from .util.fileio import check_outputs, write_outputs

    output = o.output if o.output is not None else f"{topo.label}-{coll.kind}-{o.method}.xml"
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
    problems = check_runtime(result.plan, o.runtime, max_steps=o.max_steps)
    if problems:
        raise TacclError(f"{o.runtime} would not load the plan: {problems[0]}")
    outputs = [(output, plan_to_xml(result.plan, runtime=o.runtime))]
    if o.ir_path:
        outputs.append((o.ir_path, result.algorithm.to_json()))
    write_outputs(outputs)
    plan = result.plan
    ntbs = sum(len(g.tbs) for g in plan.gpus)
    click.echo(
        f"{plan.name}: {topo.num_ranks} ranks, {coll.kind}, method {o.method}, "
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
        others = ", ".join(f"{k} {v * 1e6:,.1f} us" for k, v in meta["candidates"].items())
        click.echo(
            f"  kept {meta['chosen']}, the fastest at {format_size(size)} (simulated: {others})"
        )
    click.echo(f"  verified: {result.report.summary()}")
    click.echo(f"  wrote {display_path(output)}")
    # NCCL's model times its ring, tree and p2p plans: the baselines built here, if alike
    verified = o.method != "milp"  # the plan itself, else the baselines milp judged
    nccl = reusable_plans(topo, coll, result.baselines, lowering, verified=verified)
    _print_evaluation(plan, topo, size, nccl)


def _print_evaluation(plan, topo, size: int, nccl: dict[tuple[str, str], Plan]) -> None:
    """The plan against the lower bound and NCCL's model (``nccl``: its plans built
    already) at 1K, 1M, ``size`` and 1G."""
    from .analysis.report import evaluate, format_table

    sizes = sorted({1 << 10, 1 << 20, size, 1 << 30})
    click.echo(format_table(evaluate(plan, topo, sizes, nccl)))


def _write_library(o: _SynthesizeArgs, span: tuple[int, int], topo, coll, sketch) -> None:
    """A plan library over the span: its summary table and the lines to deploy it."""
    from .build.library import (
        LibraryOptions,
        build_library,
        format_library,
        write_library,
    )
    from .plan.runtimes import deploy_lines

    if sketch is not None:
        raise TacclError("--sketch applies to one milp solve, not to a library")
    target = o.output if o.output is not None else f"{topo.label}-{coll.kind}-library"
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
        f"{topo.label} {coll.kind} library for {o.runtime}, "
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
        for line in deploy_lines(o.runtime, target, [str(f) for f in files]):
            click.echo(f"  {line}")
    else:
        click.echo("NCCL is as fast at every size of the span: no plan written")


def _load_sketch(name: str, topo):
    from .synth.milp.sketch import default_sketch, load_sketch

    return default_sketch(topo) if name == "default" else load_sketch(name, topo)


# -- sketch ------------------------------------------------------------------------
@main.group(cls=_Group)
def sketch() -> None:
    """Write and check communication sketches (hints for --method milp)."""


_SKETCH_TOPOLOGY = [
    click.option(
        "--topology",
        "-t",
        "topology_name",
        required=True,
        help="built-in name or YAML file the sketch is for",
    ),
    click.option("--nodes", "-n", default=1, show_default=True, type=_NODES),
]


def _sketch_topology(fn):
    for opt in reversed(_SKETCH_TOPOLOGY):
        fn = opt(fn)
    return fn


@sketch.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@_sketch_topology
def sketch_validate(file: Path, topology_name: str, nodes: int) -> None:
    """Check a sketch file (or built-in sketch name) against a topology; list every problem."""
    from .errors import SketchError
    from .synth.milp.sketch import default_sketch, load_sketch
    from .topology.loader import load_topology

    topo = load_topology(topology_name, nodes)
    try:
        s = default_sketch(topo) if str(file) == "default" else load_sketch(file, topo, every=True)
    except SketchError as exc:
        for line in str(exc).splitlines():
            click.echo(f"taccl: error: {line}", err=True)
        sys.exit(2)
    gens = len(s.symmetry)
    click.echo(
        f"{display_path(file)}: ok: sketch {s.name} for {topo.label}: "
        f"{len(s.connections)} inter-node connection(s) per node pair, "
        f"{len(s.relays)} relay rank(s), {gens} symmetry generator(s), "
        f"switch policy {s.switch_policy or 'none'}, "
        f"own data first {'yes' if s.own_data_first else 'no'}, "
        f"chunk-up {','.join(map(str, s.chunkup))}, size {format_size(s.size)}"
    )


@sketch.command("init")
@_sketch_topology
@click.option("--output", "-o", type=_OUTPUT, help="write the template here instead of printing it")
def sketch_init(topology_name: str, nodes: int, output: Path | None) -> None:
    """Write a commented sketch template holding the topology's default hints."""
    from .synth.milp.sketch import sketch_template
    from .topology.loader import load_topology
    from .util.fileio import atomic_write_text

    text = sketch_template(load_topology(topology_name, nodes))
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        click.echo(f"wrote {display_path(output)}")


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
    from .plan.runtimes import (
        check_library,
        check_runtime,
        runtime_rules,
        size_range,
    )
    from .plan.verify import verify
    from .plan.xml import parse_plan
    from .runtime.reference import check_reference

    if max_steps is not None and runtime is None:
        raise TacclError("--max-steps applies with --runtime only")
    named, broken = [], []
    for path in plan_paths:
        plan = parse_plan(path)
        report = verify(plan)
        if reference:
            check_reference(plan)
        shown = display_path(path)
        line = f"{shown}: ok: {plan.coll} on {plan.ngpus} ranks; {report.summary()}" + (
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
    for opt in reversed(_SIM_OPTIONS):
        fn = opt(fn)
    return fn


def _load_plan_and_topology(plan_path: Path, topology_name: str, nodes: int):
    """The plan (verified: an invalid plan is refused with the verifier's reason) and topology."""
    from .plan.verify import verify
    from .plan.xml import parse_plan
    from .topology.loader import load_topology

    plan = parse_plan(plan_path)
    verify(plan)
    topo = load_topology(topology_name, nodes)
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
def simulate(plan_path, topology_name, nodes, sizes, as_json) -> None:
    """Simulate a plan: time, algbw, lower bound, % of bound, NCCL ring, speed-up."""
    from .analysis.report import evaluate, format_table, to_json

    plan, topo = _load_plan_and_topology(plan_path, topology_name, nodes)
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
def plot(plan_path, topology_name, nodes, sizes, algbw_png, timeline_png, size) -> None:
    """Draw PNG plots of a plan's simulated performance."""
    from .analysis.report import evaluate
    from .analysis.simulate import simulate as run_sim
    from .util.fileio import check_outputs, write_outputs
    from .viz.plot import algbw_png as draw_algbw
    from .viz.plot import timeline_png as draw_timeline

    if not (algbw_png or timeline_png):
        raise TacclError("nothing to draw: give --algbw FILE and/or --timeline FILE")
    check_outputs([algbw_png, timeline_png])
    plan, topo = _load_plan_and_topology(plan_path, topology_name, nodes)
    outputs = []
    if algbw_png:
        outputs.append((algbw_png, draw_algbw(evaluate(plan, topo, sizes), plan)))
    if timeline_png:
        title = f"{plan.name}, {size} B"
        outputs.append((timeline_png, draw_timeline(run_sim(plan, topo, size), title)))
    for path in write_outputs(outputs):
        click.echo(f"wrote {display_path(path)}")


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
    from .analysis.simulate import simulate as run_sim
    from .lowering.lower import lower
    from .plan.verify import verify
    from .synth.smt import pareto as smt_pareto
    from .topology.loader import load_topology

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


# -- run over MPI ----------------------------------------------------------------------
@main.command("run")
@click.argument("plan_path", type=click.Path(path_type=Path))
@click.option(
    "--size",
    default="64M",
    show_default=True,
    callback=_size,
    help="buffer size (nccl-tests convention: AllGather output, AllToAll/AllReduce "
    "per-rank buffer, ReduceScatter input)",
)
@click.option(
    "--dtype",
    default="float32",
    show_default=True,
    help="NumPy dtype of the buffers (e.g. float32, float64, int32)",
)
@click.option("--check", is_flag=True, help="compare the result with MPI's own collective")
@click.option("--iters", default=20, show_default=True, type=_REPEATS)
@click.option("--warmup", default=3, show_default=True, type=_REPEATS)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=_Finite(0.01, MAX_TIME_LIMIT),
    help="seconds without progress before a rank gives up",
)
def run_cmd(plan_path, size, dtype, check, iters, warmup, timeout) -> None:
    """Run an MSCCL XML plan over MPI (launch with mpiexec -n NGPUS) and time it."""
    from .runtime.mpi_run import run_command

    run_command(plan_path, size, dtype, check, iters, warmup, timeout)


# -- profile (measure a topology) ----------------------------------------------------------
@main.command("profile")
@click.option("--output", "-o", type=_OUTPUT, help="write a topology YAML of the measured numbers")
@click.option(
    "--update",
    "update_path",
    type=click.Path(path_type=Path),
    help="update this topology YAML's measured links (in place unless -o; "
    "its comments are not kept)",
)
@click.option(
    "--sizes",
    default="8,64,512,4K,32K,256K,2M,16M",
    show_default=True,
    callback=_sizes,
    help="ping-pong message sizes",
)
@click.option(
    "--iters",
    default=10,
    show_default=True,
    type=click.IntRange(1, MAX_REPEATS),
    help="round trips per size (the median counts)",
)
@click.option("--warmup", default=2, show_default=True, type=_REPEATS)
@click.option(
    "--transport",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "mpi", "torch"]),
    help="auto: torch under torchrun, mpi under mpiexec",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    type=click.Choice(["cpu", "cuda"]),
    help="buffers' device (cuda: torchrun with NCCL)",
)
@click.option(
    "--gpus-per-node", type=_NODES, help="ranks per topology node [default: the ranks on one host]"
)
def profile_cmd(
    output, update_path, sizes, iters, warmup, transport, device, gpus_per_node
) -> None:
    """Measure alpha and bandwidth of every rank pair (under mpiexec or torchrun)."""
    from .topology.profile import profile_command

    profile_command(output, update_path, sizes, iters, warmup, transport, device, gpus_per_node)


# -- cuda-check (is the GPU route usable here?) ---------------------------------------------
@main.command("cuda-check")
def cuda_check_cmd() -> None:
    """Say whether the CUDA route (CuPy, NVRTC, NCCL, a GPU) is usable here, in one line."""
    from .runtime.cuda_exec import require_cuda

    cp = require_cuda()
    from cupy.cuda import nccl

    version = nccl.get_version()
    count = cp.cuda.runtime.getDeviceCount()
    click.echo(
        f"CUDA route ready: {count} GPU(s), CuPy {cp.__version__}, NCCL "
        f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    )
