"""Topology + collective -> algorithm -> verified plan: the path every emitted plan takes."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..analysis.simulate import simulate
from ..collectives import Collective
from ..errors import SketchError, TacclError
from ..ir.algorithm import Algorithm
from ..lowering.lower import LowerOptions
from ..lowering.lower import lower as lower_plan
from ..plan.model import Plan
from ..plan.runtimes import RESIDENT_TBS, RUNTIMES, RuntimeRules, runtime_rules, splits
from ..plan.verify import VerifyReport, verify
from ..synth.baselines.direct import direct_peers
from ..synth.baselines.ring import ring_transfer_count
from ..synth.baselines.trees import tree_transfer_count
from ..synth.methods import DEFAULT_SIZE, SynthOptions, synthesize
from ..topology import Topology

#: what method milp's result must beat at its target size to be kept
BASELINES = ("ring", "direct", "tree")
#: the baselines whose transfers can be counted before they are made
COUNTS = {"ring": ring_transfer_count, "tree": tree_transfer_count}
#: transfers from which lowering, simulating and verifying an algorithm report progress
LARGE = 100_000
#: a baseline whose steps per rank exceed the loader's room this many times is not lowered
UNFIT = 4


@dataclass
class Result:
    """What :func:`build_plan` made: the algorithm, its verified plan and the report.

    ``baselines``: by method, the plans of the :data:`BASELINES` made on the way, lowered
    like ``plan``: those method milp judged (only the one kept, ``plan``, is verified), or
    ``plan`` itself for method ring (without a rank order), direct or tree.
    """

    algorithm: Algorithm
    plan: Plan
    report: VerifyReport
    baselines: dict[str, Plan] = field(default_factory=dict)


def build_plan(
    topology: Topology,
    collective: Collective,
    method: str = "ring",
    *,
    synth: SynthOptions | None = None,
    lower: LowerOptions | None = None,
) -> Result:
    """Synthesize, lower and verify; raises on any fault, so a returned plan is correct.

    ``synth`` (default :class:`SynthOptions()`) says how the algorithm is made: its
    ``size`` is the buffer size the plan targets (0: the method's default), a ``sketch``
    (method milp only) narrows the synthesizer's search. ``lower`` (default
    :class:`LowerOptions()`) says how it is lowered; the plan is named
    ``<topology>-<collective>-<method>`` unless ``lower.name`` is set, and fits
    ``lower.runtime``'s loader (``lower.max_steps``: a custom build's step limit).

    Method milp judges its candidates by their lowered plans' simulated time at ``size``
    (unless ``synth.judge`` is set), and keeps the ring, direct and tree (AllReduce)
    baselines instead when one of them simulates faster at ``size``
    (``algorithm.meta["chosen"]`` says which; ``meta["candidates"]`` has every time). A
    candidate whose chunks do not split ``size`` (4-byte elements), so that the runtime
    would not select it there, is kept only when none does (``meta["unsplit"]``).

    >>> from taccl_py.topology.loader import load_topology
    >>> topo = load_topology("dgx1")
    >>> coll = Collective("allgather", 8)
    >>> result = build_plan(topo, coll, "ring", lower=LowerOptions(proto="LL"))
    >>> result.plan.name, result.plan.proto, list(result.baselines)
    ('dgx1-allgather-ring', 'LL', ['ring'])
    """
    options = synth if synth is not None else SynthOptions()
    lowering = lower if lower is not None else LowerOptions()
    note = _notes(options.progress, time.monotonic())
    if lowering.name is None:
        lowering = replace(lowering, name=f"{topology.label}-{collective.label}-{method}")
    if method != "milp":
        alg = synthesize(topology, collective, method, options)
        alg.size = options.size
        note(f"lowering {len(alg.transfers):,} transfers", len(alg.transfers))
        plan = lower_plan(alg, topology, lowering)
        note("verifying the plan", len(alg.transfers))
        report = verify(plan)
        baseline = method in BASELINES and options.order is None
        return Result(alg, plan, report, {method: plan} if baseline else {})
    size = options.size or DEFAULT_SIZE

    rules = RUNTIMES[lowering.runtime]
    kept: list = [None, float("inf"), None]  # the fastest judged: algorithm, time, plan

    def judge(a: Algorithm) -> float:
        n = len(a.transfers)
        note(f"judging {a.meta.get('variant', a.name)}: lowering {n:,} transfers", n)
        plan = lower_plan(a, topology, lowering)
        if not splits(rules, plan, size):  # the runtime would not select it at ``size``
            return float("inf")
        note(f"judging {a.meta.get('variant', a.name)}: simulating", n)
        took = simulate(plan, topology, size).time
        if took < kept[1]:  # milp keeps the fastest: its plan need not be lowered again
            kept[:] = [a, took, plan]
        return took

    judged = options.judge if options.judge is not None else judge
    options = replace(options, size=size, judge=judged, order=None)  # milp ignores an order
    synthesized = None
    try:
        alg = synthesize(topology, collective, method, options)
    except SketchError:
        raise
    except TacclError as exc:  # no routing in time: the baselines are the incumbents
        if options.progress is not None:
            line = f"no synthesized plan ({exc}); keeping the best baseline"
            options.progress(line, 0.0, None, None)
    else:
        plan = kept[2] if kept[0] is alg else lower_plan(alg, topology, lowering)
        synthesized = (alg, plan)
    many = collective.num_ranks * (collective.num_ranks - 1)
    note(f"baselines: {', '.join(BASELINES)}", many)
    baselines = _baselines(topology, collective, size, lowering, note)
    alg, plan = _fastest(topology, collective, size, synthesized, baselines, rules)
    note("verifying the plan", len(alg.transfers))
    return Result(alg, plan, verify(plan), {m: p for m, (_, p) in baselines.items()})


def _notes(progress: Callable | None, began: float) -> Callable[[str, int], None]:
    """A progress line for a stage of work on ``transfers`` transfers, if that is at least
    :data:`LARGE` (small plans take no time worth reporting)."""

    def note(stage: str, transfers: int) -> None:
        if progress is not None and transfers >= LARGE:
            progress(stage, time.monotonic() - began, None, None)

    return note


def _baselines(
    topology: Topology,
    collective: Collective,
    size: int,
    lower: LowerOptions,
    note: Callable[[str, int], None] = lambda stage, n: None,
) -> dict[str, tuple[Algorithm, Plan]]:
    """Each of :data:`BASELINES` that applies, made for ``size`` and lowered; one whose
    steps per rank (a send and a receive per transfer) exceed the runtime's node budget
    many times over is left out unlowered (NCCL's ring at 1,024 ranks: millions of
    transfers and 16,000 steps per rank, which no merging brings to 3,070), and so is one
    with more peers per rank than a rank has threadblocks (a threadblock sends to one peer
    and receives from one: NCCL's direct pattern at 1,024 ranks). The ring's transfer
    count and the direct pattern's peers are known before either is made, so neither is
    made then (at 1,024 ranks that took minutes and gigabytes)."""
    rules = runtime_rules(lower.runtime, lower.max_steps, lower.max_nodes)
    made = {}
    for baseline in BASELINES:
        try:
            count = COUNTS.get(baseline, lambda *a: None)(topology, collective)
            peers = direct_peers(topology) if baseline == "direct" else 0
            if why := _unfit(rules, collective.num_ranks, count or 0, peers):
                note(f"baseline {baseline} left out: {why}", LARGE)  # not even made
                continue
            alg = synthesize(topology, collective, baseline)
            alg.size = size
            count = len(alg.transfers)
            if why := _unfit(rules, collective.num_ranks, count, _most_peers(alg)):
                note(f"baseline {baseline} left out: {why}", count)
                continue
            made[baseline] = (alg, lower_plan(alg, topology, lower))
        except TacclError:  # e.g. no ring over the links, or too many peers for MSCCL
            continue
    return made


def _unfit(rules: RuntimeRules, ranks: int, transfers: int, peers: int) -> str | None:
    """Why a plan of ``transfers`` over ``ranks`` ranks, with ``peers`` peers on its
    busiest rank, cannot load (see :func:`_baselines`), or None."""
    room = rules.max_nodes - 1 - ranks
    steps = 2 * transfers // ranks
    if steps > UNFIT * max(room, 1):
        return f"{steps:,} steps per rank, the loader keeps {rules.max_nodes:,} elements per rank"
    tbs = min(rules.max_tbs, RESIDENT_TBS)
    if peers > tbs:
        return f"{peers:,} peers per rank, a rank runs at most {tbs} threadblocks"
    return None


def _most_peers(alg: Algorithm) -> int:
    """The most peers one rank sends to or receives from."""
    sends, recvs = defaultdict(set), defaultdict(set)
    for t in alg.transfers:
        sends[t.src].add(t.dst)
        recvs[t.dst].add(t.src)
    return max((len(p) for p in (*sends.values(), *recvs.values())), default=0)


def _fastest(
    topology: Topology,
    collective: Collective,
    size: int,
    synthesized: tuple[Algorithm, Plan] | None,
    baselines: dict[str, tuple[Algorithm, Plan]],
    rules: RuntimeRules,
) -> tuple[Algorithm, Plan]:
    """The synthesized plan or a baseline's, whichever simulates faster at ``size``; one
    that the runtime would not select at ``size`` (its chunks do not split it) only when
    none would (``meta["unsplit"]`` names those)."""
    best: tuple[bool, float, str, Algorithm, Plan] | None = None
    times: dict[str, float] = {}
    unsplit: list[str] = []
    made = dict(baselines)
    if synthesized is not None:
        made = {"milp": synthesized, **baselines}
    for method, (alg, plan) in made.items():
        times[method] = simulate(plan, topology, size).time
        worse = not splits(rules, plan, size)
        if worse:
            unsplit.append(method)
        if best is None or (worse, times[method]) < (best[0], best[1] * (1 - 1e-9)):
            best = (worse, times[method], method, alg, plan)
    if best is None:
        raise TacclError(
            f"no plan for {collective.kind} on {topology.label}: the "
            "synthesizer found none in time and no baseline applies"
        )
    _, _, chosen, alg_kept, plan_kept = best
    alg_kept.meta.update(chosen=chosen, candidates=times, unsplit=unsplit)
    return alg_kept, plan_kept
