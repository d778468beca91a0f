"""The staged (TACCL-style) synthesizer: route (MILP), order (heuristic), schedule (exact).

For a few chunk-ups the driver routes, orders and schedules, and keeps the schedule with
the lowest makespan (lowering keeps a schedule's timing, so that is also the plan's
simulated time). Stage 2 list-schedules under a few priority rules and keeps the best.
Besides solving the routing MILP again for a finer chunk-up (when the model stays small
enough and time is left), it also tries the coarser routes with every block's sub-chunks
on their block's route, which only adds pipelining.

A multi-node AllGather is also decomposed (:mod:`.decompose`: one node's MILP, a
node-level pattern, replicated by node shifts); where the cluster-wide model would be too
big (``MAX_SENDS`` / ``MAX_BINARIES``) the decomposition is the only candidate.

A rooted collective first tries its greedy routing at the sketch's and finer chunk-ups
(:data:`ROOTED_CHUNKUPS`): its chunks all leave one root, so at a large size the trees
only pipeline over many chunks (store-and-forward per chunk). The MILP then gets a short
share where the greedy routing or the best plan so far is already near the floor.

``time_limit`` is a deadline for the whole search: ordering and merging stop at it
(:class:`.ordering.TimeUp`), and the best candidate found by then is kept.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

from ...collectives import ALLGATHER, ALLREDUCE, REDUCE, REDUCESCATTER, SCATTER, Collective
from ...errors import SketchError, TacclError
from ...ir.algorithm import Algorithm
from ...topology.core import symmetric_core
from ...topology.model import Topology
from ..checks import require_ranks
from ..solvers import live_progress
from .decompose import (
    DIRECT_ONLY_NODES,
    BlockParts,
    Decomposition,
    bundle_sizes,
    decompose,
    fanouts,
    nic_relays,
    node_trees,
    offset_relays,
    relays,
    spread_offsets,
    spread_relays,
)
from .decompose import (
    network_channel as decompose_channel,
)
from .hetero import hetero_routes, hetero_rules, node_patterns
from .node_routes import Memo, node_trees_for
from .ordering import Send, TimeUp, descendants, make_sends, order, remaining
from .routing import (
    TREE_KINDS,
    Routes,
    candidates,
    check_sketch,
    floor_us,
    greedy_routes,
    relaxed_makespan,
    route,
)
from .schedule import Schedule, schedule
from .sketch import default_sketch

MAX_BINARIES = 20000  # skip the routing MILP of a chunk-up with more route variables
MAX_SENDS = 6000  # skip chunk-ups whose ordering heuristic would be slow
#: chunk-ups of the decomposition where nodes differ, and the most sends it orders (a
#: whole cluster's: ~1 s per 16,000 sends and rule)
HETERO_CHUNKUPS = (2, 4, 6)
CORE_SHARE = 0.3  # of the time, for the decomposition of what every node has
CORE_ENOUGH = 0.94  # a core plan at this share of the bound leaves out the whole-cluster one
SPREAD = ", a NIC-less GPU's data over every relay"
OFFSETS = ", relays by node offset"
#: with relays by offset, the parts a node's block is sent in (see
#: :func:`.decompose.block_sizes`): with no offset spread over every NIC, and with some;
#: the tapers (finer parts in the last rounds) end with little left to forward
TAPERS = (BlockParts(1, (4, 4, 2, 2)), BlockParts(1, (8, 4, 4, 2, 2)))
BLOCK_PARTS = (*(BlockParts(k) for k in (1, 2, 4, 8)), TAPERS[0])
SPREAD_PARTS = (BlockParts(1), BlockParts(2), *TAPERS)
MAX_HETERO_SENDS = 40_000
MAX_MERGED = 64  # network connections above which decomposed schedules merge no sends
MAX_TRANSFERS = 150_000  # skip finer decomposed chunk-ups: lowering and judging cost
JUDGED = 3  # decomposed candidates judged (the best by schedule makespan)
#: a judged plan of relays by offset that simulates this many times its schedule's
#: makespan lost the schedule in lowering: the search goes on to one of fewer steps
LOST = 1.15
#: chunk-ups a rooted collective's greedy routing also tries, beyond the sketch's
ROOTED_CHUNKUPS = (4, 8, 12, 16, 24, 32, 48)
ROOTED_JUDGED = 2  # a rooted collective's priority rules judged per routing
NEAR = 0.15  # a rooted routing or plan this close to the routing floor leaves the MILP ...
NEAR_SHARE = 0.04  # ... at most this share of the time limit per chunk-up

Progress = Callable[[str, float, "float | None", "float | None"], None]


def _refined(topology: Topology, routes: Routes, times: int, size: int) -> Routes:
    """``routes`` with every chunk cut into ``times`` sub-chunks that share its route."""
    coarse = routes.collective
    coll = coarse.with_chunkup(coarse.chunkup * times)
    edges = {coarse.refine(c, times, i): es for c, es in routes.edges.items() for i in range(times)}
    b = coll.chunk_bytes(size)
    return Routes(
        coll,
        b,
        edges,
        relaxed_makespan(topology, coll, b, edges),
        routes.gap,
        routes.optimal,
        0.0,
        0,
    )


def staged_algorithm(
    topology: Topology,
    collective: Collective,
    *,
    size: int,
    time_limit: float = 60.0,
    sketch=None,
    progress: Progress | None = None,
    judge: Callable[[Algorithm], float] | None = None,
) -> Algorithm:
    """Synthesize ``collective`` on ``topology`` for ``size`` bytes (nccl-tests convention).

    ReduceScatter and AllReduce are made from a synthesized AllGather (see
    :mod:`.combine`), whose candidates are ranked by the combined algorithm.

    ``sketch`` (a :class:`~taccl_py.synth.milp.sketch.Sketch`; default: the topology's
    :func:`~taccl_py.synth.milp.sketch.default_sketch`) narrows routing (see
    :func:`route`), sets the chunk-ups tried (its ``chunkup`` factors, multiplied onto
    ``collective.chunkup``) and ``own_data_first`` of the ordering; a sketch that leaves a
    chunk no route raises SketchError. ``progress`` is called as
    ``progress(stage, elapsed_s, incumbent_makespan_s, gap)``. ``judge`` scores a
    candidate algorithm (lower is better; e.g. its simulated time), else the
    schedule's makespan does. A multi-node AllGather also gets the decomposed candidates
    (:func:`decomposed_algorithm`; 30 % of the time when the cluster-wide model fits, else
    all of it). Raises TacclError if no routing is found within ``time_limit`` seconds.
    """
    require_ranks(topology, collective)
    if collective.kind in (REDUCE, SCATTER):
        return _reversed(
            topology,
            collective,
            size=size,
            time_limit=time_limit,
            sketch=sketch,
            progress=progress,
            judge=judge,
        )
    if collective.kind in (REDUCESCATTER, ALLREDUCE):
        return _combined(
            topology,
            collective,
            size=size,
            time_limit=time_limit,
            sketch=sketch,
            progress=progress,
            judge=judge,
        )
    if size <= 0:
        raise TacclError(f"method milp needs the target buffer size, got {size}")
    dense = sketch is None  # the default sketch: the decomposition tries every chunk-up
    if sketch is None:
        sketch = default_sketch(topology)
        # the default relays carry a GPU's data across nodes on its own NIC only: one
        # root's data needs them all, so rooted collectives route without the sketch
        rules = None if collective.rooted else sketch
    else:
        check_sketch(topology, collective, sketch)
        rules = sketch
    chunkups = tuple(sorted(sketch.chunkup))
    if dense:  # chunk-ups whose chunks split the target size (else no runtime selects it)
        chunkups = collective.fitting_chunkups(size, chunkups)
    own_first = sketch is not None and sketch.own_data_first
    began = time.monotonic()
    deadline = began + time_limit

    def report(stage: str, value: float | None = None, gap: float | None = None) -> None:
        if progress is not None:
            progress(stage, time.monotonic() - began, value, gap)

    best: Algorithm | None = None
    tried: dict[str, float] = {}
    solved: Routes | None = None  # the last MILP routing, for the refined variants
    failure: TacclError | None = None

    def consider(label: str, routes: Routes, rules: Callable | None = None) -> None:
        """Order, schedule and judge ``routes`` under every priority rule (``rules``:
        a function of the sends giving them, default :func:`priorities`)."""
        nonlocal best
        report(f"ordering ({label})", routes.makespan, routes.gap)
        sends = make_sends(topology, routes)
        scheds = []
        merge = rules is None  # rules of their own: sends of whole clusters, unmerged
        for rule, prio, own, *senders_only in (rules or priorities_of)(sends):
            try:
                sched = schedule(
                    topology,
                    order(
                        sends,
                        own_data_first=own,
                        prio=prio,
                        deadline=deadline,
                        senders_only=bool(senders_only and senders_only[0]),
                    ),
                    merge,
                    deadline=deadline,
                )
            except TimeUp:
                break
            scheds.append((rule, sched))
        if collective.rooted:  # judge the rules with the lowest makespans only
            ranked = sorted(range(len(scheds)), key=lambda k: (scheds[k][1].makespan, k))
            scheds = [scheds[k] for k in sorted(ranked[:ROOTED_JUDGED])]
        for rule, sched in scheds:
            alg = _algorithm(topology, sched, routes, size, network_channel=not merge)
            alg.meta.update(variant=label, rule=rule)
            try:
                score = judge(alg) if judge is not None else sched.makespan
            except TacclError:  # e.g. a plan the runtime's limits reject
                continue
            alg.meta["score"] = score
            tried[f"{label}, {rule}"] = score
            if best is None or score < best.meta["score"] * (1 - 1e-12):
                best = alg
            if time.monotonic() > deadline:
                break
        report(f"schedule ({label})", best.meta["score"] if best else None, routes.gap)

    def priorities_of(sends: list) -> list:
        return priorities(topology, sends, own_first)

    split = collective.kind == ALLGATHER and topology.nodes > 1
    whole = not split or _whole_model_fits(topology, collective, sketch)
    if split and not topology.node_symmetric:  # nodes differ: no node-shift quotient
        if dense:  # (a sketch of the user's binds the whole-cluster MILP below only)
            core = symmetric_core(topology)
            if core is not None:  # what every node has: the quotient decomposition applies
                try:
                    best, scores = _core_decomposition(
                        topology,
                        core,
                        collective,
                        size,
                        judge,
                        report,
                        began + time_limit * CORE_SHARE,
                    )
                    tried.update(scores)
                except TacclError as exc:
                    failure = exc
            floor = floor_us(topology, collective, collective.chunk_bytes(size)) / 1e6
            if best is None or best.meta["score"] * CORE_ENOUGH > floor:
                try:  # the whole cluster without symmetry (candidates go to ``consider``)
                    _hetero_candidates(topology, collective, size, consider, report, deadline)
                except TacclError as exc:
                    failure = failure or exc
        split = False
    if split:
        try:
            best, scores = decomposed_algorithm(
                topology,
                collective,
                size=size,
                sketch=sketch,
                time_limit=time_limit * (0.3 if whole else 1.0),
                own_first=own_first,
                judge=judge,
                report=report,
                dense=dense,
                deadline=deadline,
            )
            tried.update(scores)
        except SketchError:
            raise
        except TacclError as exc:  # e.g. no single-node routing in time
            failure = exc
    near: dict[int, bool] = {}  # chunk-up -> its greedy routing is near the routing floor
    if collective.rooted:  # one source: the greedy spread, the MILP's incumbent, on its own
        near = _greedy_candidates(topology, collective, size, chunkups, rules, consider, deadline)
    for i, factor in enumerate(chunkups if whole or best is None else ()):
        coll = collective.with_chunkup(collective.chunkup * factor)
        sends_per_chunk = coll.num_ranks - 1 if coll.kind in TREE_KINDS else 2
        if coll.num_chunks * sends_per_chunk > MAX_SENDS and best is not None:
            break
        if time.monotonic() > deadline:
            break
        if solved is not None and coll.chunkup % solved.collective.chunkup == 0:
            times = coll.chunkup // solved.collective.chunkup
            consider(
                f"chunk-up {coll.chunkup}, routes of chunk-up {solved.collective.chunkup}",
                _refined(topology, solved, times, size),
            )
        left = time_limit - (time.monotonic() - began)
        share = left / (len(chunkups) - i)
        if left <= 0.5 or (
            i > 0
            and (
                share < 2.0
                or sum(map(len, candidates(topology, coll, rules).values())) > MAX_BINARIES
            )
        ):
            continue
        stage = f"routing (chunk-up {coll.chunkup})"
        report(stage)
        try:
            with _live(report, stage):
                routes = route(
                    topology,
                    coll,
                    coll.chunk_bytes(size),
                    sketch=rules,
                    time_limit=min(
                        left * 0.6 if i == 0 else share * 0.8,
                        time_limit * NEAR_SHARE
                        if near.get(coll.chunkup) or _near(topology, coll, size, best)
                        else time_limit,
                    ),
                )
        except SketchError:
            raise
        except TacclError as exc:
            failure = failure or exc
            continue
        report(f"routing (chunk-up {coll.chunkup})", routes.makespan, routes.gap)
        solved = routes
        consider(f"chunk-up {coll.chunkup}", routes)
    if best is None:
        raise failure or TacclError(
            f"method milp found no routing for {collective.kind} on {topology.label} "
            f"within {time_limit:.1f}s"
        )
    best.meta.update(solve_time=time.monotonic() - began, tried=tried)
    return best


def _core_decomposition(
    topology: Topology,
    core: Topology,
    collective: Collective,
    size: int,
    judge: Callable[[Algorithm], float] | None,
    report: Callable[..., None],
    deadline: float,
) -> tuple[Algorithm | None, dict[str, float]]:
    """The node-shift decomposition of ``topology``'s symmetric core (every connection of
    which ``topology`` has, at least as fast), its candidates judged on ``topology``."""

    def mine(alg: Algorithm) -> Algorithm:
        if alg.topology != topology.label:
            alg.topology = topology.label
            alg.meta["variant"] = f"{alg.meta.get('variant')}, on what every node has"
        return alg

    sketch = default_sketch(core)
    chunk = collective.chunk_bytes(size)
    report("routing (one node)")
    trees, _ = node_trees(core, chunk, time_limit=max(1.0, (deadline - time.monotonic()) * 0.2))
    spread = spread_relays(core, sketch, trees, relays(core, sketch, trees))
    if spread is not None:  # a GPU without a NIC: its data over every NIC, evenly
        best, scores = _spread_direct(core, collective, size, trees, spread, judge, mine)
    else:
        best, scores = decomposed_algorithm(
            core,
            collective,
            size=size,
            sketch=sketch,
            time_limit=max(1.0, deadline - time.monotonic()),
            judge=None if judge is None else (lambda a: judge(mine(a))),
            report=report,
            deadline=deadline,
        )
    return (None if best is None else mine(best)), {
        f"{label}, on what every node has": v for label, v in scores.items()
    }


def _spread_direct(
    core: Topology,
    collective: Collective,
    size: int,
    trees: dict,
    spread: dict,
    judge: Callable[[Algorithm], float] | None,
    mine: Callable[[Algorithm], Algorithm],
) -> tuple[Algorithm | None, dict[str, float]]:
    """The core's decomposition with a NIC-less GPU's data spread over every relay: the
    chunk-up that splits it evenly, every node directly, ordered by rotation (a
    round-robin over peers, own data first); one candidate, as the others of
    :func:`decomposed_algorithm` simulate far from their schedules here."""
    ways = max(len(v) for v in spread.values())
    coll = collective.with_chunkup(collective.chunkup * ways)
    fanout = core.nodes - 1
    dec = decompose(core, coll, coll.chunk_bytes(size), trees, spread, fanout, ())
    sends = dec.sends()
    rule, prio, own = next(r for r in priorities(core, sends, False) if r[0] == "rotation")
    sched = schedule(core, order(sends, own_data_first=own, prio=prio), False)
    label = f"decomposed, chunk-up {coll.chunkup}, node fan-out {fanout}{SPREAD}"
    alg = Algorithm(
        "milp",
        coll,
        dec.transfers(sched),
        core.label,
        size,
        {
            "method": "milp",
            "size": size,
            "chunkup": coll.chunkup,
            "makespan": sched.makespan,
            "decomposed": True,
            "node_fanout": fanout,
            "variant": label,
            "rule": rule,
        },
    )
    try:
        score = judge(mine(alg)) if judge is not None else sched.makespan
    except TacclError:  # e.g. more than the runtime's steps per threadblock
        return None, {}
    alg.meta["score"] = score
    return alg, {f"{label}, {rule}": score}


def _hetero_candidates(
    topology: Topology,
    collective: Collective,
    size: int,
    consider: Callable[..., None],
    report: Callable[..., None],
    deadline: float,
) -> None:
    """:mod:`.hetero`'s AllGathers for every node-level pattern, at the chunk-ups
    ``HETERO_CHUNKUPS`` (while the whole cluster's sends stay within
    ``MAX_HETERO_SENDS`` and 60 % of the time is left), each ordered under
    :func:`.hetero.hetero_rules`, scheduled and judged by ``consider``."""
    began = time.monotonic()
    report("routing (each kind of node)")
    trees: dict[int, dict[int, list]] = {}
    memo: Memo = {}  # one solve per kind of node
    with _live(report, "routing (each kind of node)"):
        for node in range(topology.nodes):
            trees[node], _ = node_trees_for(
                topology,
                node,
                collective.chunk_bytes(size),
                time_limit=max(1.0, (deadline - time.monotonic()) * 0.2),
                memo=memo,
            )
    patterns = node_patterns(topology)
    factors = collective.fitting_chunkups(size, HETERO_CHUNKUPS)
    for factor in factors:
        coll = collective.with_chunkup(collective.chunkup * factor)
        if factor > factors[0] and (
            coll.num_chunks * (coll.num_ranks - 1) > MAX_HETERO_SENDS
            or time.monotonic() - began > (deadline - began) * 0.4
        ):
            break
        for name, pattern in patterns.items():
            routes = hetero_routes(topology, coll, coll.chunk_bytes(size), trees, pattern)
            consider(
                f"nodes differ, chunk-up {coll.chunkup}, node pattern {name}",
                routes,
                lambda sends, coll=coll: hetero_rules(topology, coll, sends),
            )
            if time.monotonic() > deadline:
                return


def _greedy_candidates(
    topology: Topology,
    collective: Collective,
    size: int,
    chunkups: tuple[int, ...],
    rules,
    consider: Callable[..., None],
    deadline: float,
) -> dict[int, bool]:
    """Consider a rooted collective's greedy routings (:func:`.routing.greedy_routes`) at
    the sketch's chunk-ups and the finer :data:`ROOTED_CHUNKUPS` (a chunk's tree or path
    is pipelined only across chunks, so a large buffer wants many), ascending, while the
    ordering stays within ``MAX_SENDS`` sends and the deadline is not passed. Returns,
    per chunk-up, whether the greedy routing is within ``NEAR`` of the routing floor."""
    near: dict[int, bool] = {}
    hops = collective.num_ranks - 1 if collective.kind in TREE_KINDS else 2
    for factor in collective.fitting_chunkups(size, tuple(set(chunkups) | set(ROOTED_CHUNKUPS))):
        coll = collective.with_chunkup(collective.chunkup * factor)
        if time.monotonic() > deadline or (
            factor not in chunkups and coll.num_chunks * hops > MAX_SENDS
        ):
            break
        b = coll.chunk_bytes(size)
        greedy = greedy_routes(topology, coll, b, candidates(topology, coll, rules))
        if not greedy:
            continue
        value = relaxed_makespan(topology, coll, b, greedy)
        near[coll.chunkup] = value <= (1 + NEAR) * floor_us(topology, coll, b) / 1e6
        consider(
            f"chunk-up {coll.chunkup}, greedy", Routes(coll, b, greedy, value, None, False, 0.0, 0)
        )
    return near


def _near(topology: Topology, coll: Collective, size: int, best: Algorithm | None) -> bool:
    """Whether ``best`` (a rooted collective's) scores within ``NEAR`` of the routing
    floor of ``coll``, the most any routing of it could gain."""
    if best is None or not coll.rooted:
        return False
    return best.meta["score"] <= (1 + NEAR) * floor_us(topology, coll, coll.chunk_bytes(size)) / 1e6


def _live(report: Callable[..., None], stage: str):
    """Live progress of the routing MILP solved inside, as ``stage: solving`` lines."""
    return live_progress(lambda value, gap: report(f"{stage}: solving", value, gap))


def _whole_model_fits(topology: Topology, collective: Collective, sketch) -> bool:
    """Whether the cluster-wide routing MILP and ordering stay within the size limits."""
    if collective.num_chunks * max(collective.num_ranks - 1, 2) > MAX_SENDS:
        return False
    return sum(map(len, candidates(topology, collective, sketch).values())) <= MAX_BINARIES


def decomposed_algorithm(
    topology: Topology,
    collective: Collective,
    *,
    size: int,
    sketch,
    time_limit: float,
    own_first: bool = False,
    judge: Callable[[Algorithm], float] | None = None,
    report: Callable[..., None] = lambda *a: None,
    dense: bool = True,
    deadline: float | None = None,
) -> tuple:
    """The best decomposed AllGather (:mod:`.decompose`; None if the judge rejects every
    candidate or none is found by ``deadline``) and every judged candidate's score.

    Relays: the sketch's (:func:`.decompose.relays`) and, where a NIC is shared by
    several of them, one relay per NIC (:func:`.decompose.nic_relays`). Chunk-ups: the
    sketch's factors (``dense``: every factor up to its largest, then twice the largest
    while the plan has at most ``MAX_SENDS`` transfers), ascending, while 60 % of the time
    is left and the plan has at most ``MAX_TRANSFERS`` transfers. Node-level fan-outs
    (per relay choice): all at first, then those within 1 % of the best makespan (with a
    NIC per GPU, only the largest of those with equal makespans: most likely the same
    plan). Network transfers carry :func:`.decompose.bundle_sizes` chunks. Every chunk-up
    x relays x fan-out x priority rule is ordered and scheduled on the quotient by node
    shifts; per relay choice the lowest makespans are judged (``JUDGED`` that the judge
    accepts, time allowing; one per makespan and variant, as rules often agree). Ordering
    stops at ``deadline`` (``time.monotonic()``), and no judgement starts after it.
    Above ``DIRECT_ONLY_NODES`` nodes the variants are relays by node offset
    (:func:`.decompose.offset_relays`), blocks in ``BLOCK_PARTS`` parts, and with the
    last offsets spread over every NIC (:func:`.decompose.spread_offsets`) in
    ``SPREAD_PARTS``, each ordered by :func:`offset_priorities`.
    """
    began = time.monotonic()
    deadline = began + time_limit if deadline is None else deadline
    report("routing (one node)")
    with _live(report, "routing (one node)"):
        trees, optimal = node_trees(
            topology, collective.chunk_bytes(size), time_limit=max(1.0, time_limit * 0.2)
        )
    carriers = relays(topology, sketch, trees)
    shared = nic_relays(topology, sketch, trees, carriers)
    spread = spread_relays(topology, sketch, trees, carriers)
    variants: list[tuple[str, dict]] = [("", carriers)]
    variants += [(", one relay per NIC", shared)] if shared else []
    variants += [(SPREAD, spread)] if spread else []
    # relays by offset: variant label -> (offset -> relay and receiver, parts of a block)
    by_offset: dict[str, tuple[dict, BlockParts]] = {}
    if dense and topology.nodes > DIRECT_ONLY_NODES:
        # a rank's direct peers (nodes - 1 each way, each a threadblock other steps wait
        # for) outgrow MSCCL's 128 such threadblocks and its node budget: relays by offset
        plain = offset_relays(topology, sketch, trees)
        if plain is not None:
            ways = len({r for r, _ in filter(None, plain.values())})
            by_offset = {_blocks_label(k, 0): (plain, k) for k in BLOCK_PARTS}
            for last in spread_offsets(topology, ways):
                spread_map = offset_relays(topology, sketch, trees, last)
                if spread_map is not None:  # (it is whenever ``plain`` is)
                    by_offset |= {_blocks_label(k, last): (spread_map, k) for k in SPREAD_PARTS}
            variants = [(name, carriers) for name in by_offset]
    # with a NIC per GPU the schedule is the simulated time, so fan-outs of equal makespan
    # are most likely the same plan; a shared NIC is shared first-ready by the runtime
    exact = all(len(nic.ranks) == 1 for nic in topology.nics)
    # (makespan, index, label, rule, decomposition, schedule, relay variant)
    ranked: list[tuple[float, int, str, str, Decomposition, Schedule, str]] = []
    factors = sorted(sketch.chunkup)
    if dense:
        factors = [*range(1, factors[-1] + 1), 2 * factors[-1]]
    spread_ways = {len(v) for v in (spread or {}).values() if len(v) > 1}
    factors = sorted({*factors, *spread_ways})  # chunk-ups that split such data evenly
    if dense:  # ... and the target size, or no runtime selects the plan at that size
        factors = list(collective.fitting_chunkups(size, tuple(factors)))
    patterns = {name: fanouts(topology.nodes) for name, _ in variants}
    for name in by_offset:
        patterns[name] = [topology.nodes - 1]

    def busy() -> bool:
        now = time.monotonic()
        return now > deadline or bool(ranked) and now - began > time_limit * 0.6

    for factor in factors:
        coll = collective.with_chunkup(collective.chunkup * factor)
        transfers = coll.num_chunks * (coll.num_ranks - 1)
        if ranked and (
            transfers > MAX_TRANSFERS
            or dense
            and factor > max(sketch.chunkup)
            and factor not in spread_ways
            and transfers > MAX_SENDS
        ):
            continue
        for name, carry in variants:
            if ranked:
                first: dict[int, float] = {}
                for makespan, _, _, _, dec, _, kind in ranked:
                    if kind == name:
                        first[dec.fanout] = min(first.get(dec.fanout, makespan), makespan)
                patterns[name] = (
                    kept_fanouts(patterns[name], first, exact) if first else patterns[name]
                )
            for fanout in patterns[name]:
                if busy():
                    break
                dec = decompose(
                    topology,
                    coll,
                    coll.chunk_bytes(size),
                    trees,
                    carry,
                    fanout,
                    ()
                    if name == SPREAD or name in by_offset
                    else bundle_sizes(topology, coll.chunkup, coll.chunk_bytes(size), trees, carry),
                    *by_offset.get(name, (None, BlockParts())),
                )
                label = f"decomposed, chunk-up {coll.chunkup}, node fan-out {fanout}{name}"
                report(f"ordering ({label})")
                sends = dec.sends()
                merge = (
                    len(
                        {
                            s.conn
                            for s in sends
                            if topology.connections[s.src, s.dst].kind == "network"
                        }
                    )
                    <= MAX_MERGED
                )
                if name in by_offset:  # the others' schedules do not survive the runtime
                    rules = offset_priorities(topology, sends)
                else:
                    rules = priorities(topology, sends, own_first)
                for rule, prio, own in rules:
                    if busy():
                        break
                    try:
                        sched = schedule(
                            topology,
                            order(sends, own_data_first=own, prio=prio, deadline=deadline),
                            merge,
                            deadline,
                        )
                    except TimeUp:
                        break
                    ranked.append((sched.makespan, len(ranked), label, rule, dec, sched, name))
    ranked.sort(key=lambda x: x[:2])
    best, scores, seen, cost = None, {}, set(), 0.0
    rejected: TacclError | None = None  # why the last judged candidate was refused
    refused: dict[str, str] = {}  # label -> why the judge refused its plan
    judged: dict[str, int] = defaultdict(int)  # per relay choice
    finest = float("inf")  # the fewest steps (chunk-up x parts) of a refused candidate
    accepted = False  # a judged plan fits and keeps its schedule
    for makespan, _, label, rule, dec, sched, name in ranked:
        now = time.monotonic()
        if accepted and (now > deadline or now - began + cost > time_limit):
            break  # the last judgement's time predicts the next one's; none accepted
            # yet: judging goes on past the deadline to the first candidate that fits
        if judged[name] >= JUDGED or (label, makespan) in seen:
            continue  # the latter: most likely the same schedule again
        steps = dec.collective.chunkup * by_offset.get(name, (None, BlockParts()))[1].most
        if steps >= finest:
            continue  # as many steps as a refused candidate's, or more: refused too
        seen.add((label, makespan))
        coll = dec.collective
        alg = Algorithm(
            "milp",
            coll,
            dec.transfers(sched),
            topology.label,
            size,
            {
                "method": "milp",
                "size": size,
                "chunkup": coll.chunkup,
                "makespan": makespan,
                "decomposed": True,
                "node_fanout": dec.fanout,
                "variant": label,
                "rule": rule,
                "routing_optimal": optimal,
                "merged": sum(len(g) > 1 for g in sched.groups),
            },
        )
        try:
            score = judge(alg) if judge is not None else makespan
        except TacclError as exc:  # e.g. more peers per rank than the runtime allows
            rejected = TacclError(f"no candidate's plan fits the runtime ({label}: {exc})")
            refused[label] = str(exc)
            finest = min(finest, steps)
            continue
        finally:
            cost = time.monotonic() - now
        judged[name] += 1
        alg.meta["score"] = scores[f"{label}, {rule}"] = score
        if best is None or score < best.meta["score"] * (1 - 1e-12):
            best = alg
        planned = alg.meta.get("judged_makespan", makespan)
        if name in by_offset and judge is not None and score > LOST * planned:
            # e.g. an AllReduce whose steps the lowering cut over channel copies; kept
            # unless a candidate of fewer steps does better
            finest = min(finest, steps)
            report(f"{label}: simulated {score / planned:.2f}x its schedule; trying fewer steps")
        else:
            accepted = True
        report(f"schedule ({label})", best.meta["score"])
    if best is None and rejected is not None:
        raise rejected
    if best is not None and refused:
        best.meta["refused"] = refused
    return best, scores


def _blocks_label(parts: BlockParts, spread: int) -> str:
    """The variant label of relays by offset with blocks in ``parts`` and the last
    ``spread`` offsets over every NIC.

    >>> _blocks_label(BlockParts(2), 7)
    ', relays by node offset, blocks in 2, the last 7 offsets over every NIC'
    >>> _blocks_label(BlockParts(1, (4, 2)), 0)
    ', relays by node offset, whole blocks, in 2 then 4 parts in the last 2 rounds'
    """
    blocks = f"{OFFSETS}, " + ("whole blocks" if parts.rest == 1 else f"blocks in {parts.rest}")
    if parts.last:
        taper = " then ".join(map(str, reversed(parts.last)))
        blocks += f", in {taper} parts in the last {len(parts.last)} rounds"
    return blocks + (f", the last {spread} offsets over every NIC" if spread else "")


def kept_fanouts(patterns: list[int], best: dict[int, float], exact: bool) -> list[int]:
    """The fan-outs (of ``patterns``, largest first) whose ``best`` makespan so far is
    within 1 % of the lowest; if ``exact`` (schedule = simulated time), only the largest
    of those with equal makespans."""
    low = min(best.values())
    kept: dict = {}
    for f in patterns:
        if best.get(f, float("inf")) <= 1.01 * low:
            kept.setdefault(round(best[f] / low, 9) if exact else f, f)
    return sorted(kept.values(), reverse=True)


def _combined(
    topology: Topology,
    collective: Collective,
    *,
    size: int,
    time_limit: float,
    sketch,
    progress: Progress | None,
    judge: Callable[[Algorithm], float] | None,
) -> Algorithm:
    """ReduceScatter / AllReduce from a synthesized AllGather (:mod:`.combine`).

    The AllGather candidates are ranked by the combined algorithm's score (``judge`` of
    it, else its makespan); the result keeps ``collective``'s in-place flag.
    """
    from .combine import combine

    make = _remembered(
        lambda ag: combine(ag, topology, collective.kind, inplace=collective.inplace)
    )

    ag_coll = Collective(ALLGATHER, collective.num_ranks, collective.chunkup, False)
    ag = staged_algorithm(
        topology,
        ag_coll,
        size=size,
        time_limit=time_limit,
        sketch=sketch,
        progress=progress,
        judge=_judge_made(make, judge),
    )
    alg = make(ag)
    alg.meta["score"] = ag.meta["score"]
    alg.meta["tried"] = ag.meta.get("tried", {})
    return alg


def _judge_made(
    make: Callable[[Algorithm], Algorithm], judge: Callable[[Algorithm], float] | None
) -> Callable[[Algorithm], float]:
    """A judge of a candidate by what ``make`` makes of it (``judge``'s score, else the
    made algorithm's makespan), noting that makespan as the candidate's
    ``judged_makespan`` (what its score is compared with, see :data:`LOST`)."""

    def judged(alg: Algorithm) -> float:
        made = make(alg)
        alg.meta["judged_makespan"] = made.meta.get("makespan", alg.meta.get("makespan"))
        return judge(made) if judge is not None else made.meta["makespan"]

    return judged


def _remembered(make: Callable[[Algorithm], Algorithm]) -> Callable[[Algorithm], Algorithm]:
    """``make`` that returns the same result object for the algorithm it was last given:
    the judge's plan of the kept candidate (``build_plan`` keeps the fastest judged
    plan by identity) is then not lowered again, which costs minutes at 1,024 ranks."""
    last: list = [None, None]

    def remembered(alg: Algorithm) -> Algorithm:
        if last[0] is not alg:
            last[:] = [alg, make(alg)]
        return last[1]

    return remembered


def _reversed(
    topology: Topology,
    collective: Collective,
    *,
    size: int,
    time_limit: float,
    sketch,
    progress: Progress | None,
    judge: Callable[[Algorithm], float] | None,
) -> Algorithm:
    """Reduce / Scatter: a Broadcast / Gather synthesized on the reversed topology, then
    reversed (:func:`.combine.reverse_rooted`), its candidates ranked by the result."""
    from .combine import REVERSED, reverse_rooted, reversed_topology

    if sketch is not None:
        raise SketchError(
            f"a sketch does not apply to {collective.kind}: method milp makes it from a "
            f"{REVERSED[collective.kind]} on the reversed topology"
        )

    make = _remembered(
        lambda base: reverse_rooted(base, topology, collective.kind, inplace=collective.inplace)
    )

    base = staged_algorithm(
        reversed_topology(topology),
        Collective(
            REVERSED[collective.kind],
            collective.num_ranks,
            collective.chunkup,
            False,
            collective.root,
        ),
        size=size,
        time_limit=time_limit,
        progress=progress,
        judge=_judge_made(make, judge),
    )
    alg = make(base)
    for key in ("score", "tried", "solve_time"):
        if key in base.meta:
            alg.meta[key] = base.meta[key]
    return alg


def _algorithm(
    topology: Topology, sched: Schedule, routes: Routes, size: int, network_channel: bool = False
) -> Algorithm:
    """The algorithm of a schedule; with ``network_channel``, network transfers on
    channels of their own (:func:`.decompose.network_channel`, as the decomposition does:
    threadblocks then pair network peers with network peers only, and more of them fit a
    rank)."""
    transfers = sched.transfers()
    if network_channel:
        conns = topology.connections
        transfers = [
            replace(t, channel=decompose_channel(topology, t.src, t.dst))
            if conns[t.src, t.dst].kind == "network"
            else t
            for t in transfers
        ]
    meta = {
        "method": "milp",
        "size": size,
        "chunkup": routes.collective.chunkup,
        "makespan": sched.makespan,
        "routing_makespan": routes.makespan,
        "routing_optimal": routes.optimal,
        "gap": routes.gap,
        "merged": sum(len(g) > 1 for g in sched.groups),
    }
    return Algorithm("milp", routes.collective, transfers, topology.label, size, meta)


def offset_priorities(topology: Topology, sends: list[Send]) -> list[tuple[str, list[float], bool]]:
    """Stage 2's rules for relays by offset, both keeping every GPU on the same step of a
    round-robin over its node's peers (other orders do not survive the runtime's
    first-ready sharing of a switch port):

    - rotation (see :func:`priorities`);
    - arrival order: a GPU sends its network offsets in turn, each block's parts in
      order, and forwards what it receives into its node in the order it arrived (as a
      first ordering by rotation has it), each to its peers by rotation. Rotation alone
      may leave the forwards to the last peer until the end.
    """
    g = topology.gpus_per_node
    network = [topology.connections[s.src, s.dst].kind == "network" for s in sends]
    rotation = [-float((s.dst % g - s.src % g) % g) for s in sends]
    turns = sorted(
        (i for i in range(len(sends)) if network[i]),
        key=lambda i: ((sends[i].dst // g - sends[i].src // g) % topology.nodes, sends[i].chunk),
    )
    first = list(rotation)  # network sends in (-1, 0]: before any forward, as rotation has it
    for n, i in enumerate(turns):
        first[i] = -n / len(turns)
    firsts = order(sends, own_data_first=True, prio=first)
    end = [t + s.dur + s.alpha for t, s in zip(firsts.start, sends)]
    arrival = [round(max((end[p] for p in s.preds), default=0.0) * 1e9) for s in sends]
    rank = {t: n for n, t in enumerate(sorted(set(arrival)))}
    fifo = [
        first[i] if network[i] else rotation[i] - g * rank[arrival[i]] for i in range(len(sends))
    ]
    return [("rotation", rotation, True), ("arrival order", fifo, True)]


def priorities(
    topology: Topology, sends: list[Send], own_data_first: bool
) -> list[tuple[str, list[float], bool]]:
    """Stage 2's rules: (name, priority per send, own data first).

    Critical path, descendants, rotation (a rank sends to the peer ``k`` GPUs after it
    in its node before ``k + 1``, own data first: a round-robin that keeps shared switch
    ports evenly loaded) and first-ready (all equal: how a runtime shares a resource).
    """
    g = topology.gpus_per_node
    rotation = [-float((s.dst % g - s.src % g) % g) for s in sends]
    return [
        ("critical path", remaining(sends), own_data_first),
        ("descendants", descendants(sends), own_data_first),
        ("rotation", rotation, True),
        ("first ready", [0.0] * len(sends), own_data_first),
    ]
