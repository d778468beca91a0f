"""The staged (TACCL-style) synthesizer: route (MILP), order (heuristic), schedule (exact).

For a few chunk-ups the driver routes, orders and schedules, and keeps the plan whose
simulated time (lowered to a plan, run in the α-β simulator) is lowest. Besides solving the routing MILP again for a finer chunk-up
(when the model stays small enough and time is left), it also tries the coarser routes
with every block's sub-chunks on their block's route, which only adds pipelining.
"""

from __future__ import annotations

import time
from typing import Callable

from ..collectives import ALLGATHER, ALLTOALL, Collective
from ..errors import SketchError, TacclError
from ..topology.model import Topology
from .ir import Algorithm
from .ordering import make_sends, order
from .routes import require_ranks
from .routing import Routes, candidates, relaxed_makespan, route
from .schedule import Schedule, schedule

CHUNKUPS = (1, 2, 4)
MAX_BINARIES = 20000  # skip the routing MILP of a chunk-up with more route variables
MAX_SENDS = 6000  # skip chunk-ups whose ordering heuristic would be slow

Progress = Callable[[str, float, "float | None", "float | None"], None]


def _refined(topology: Topology, routes: Routes, times: int, size: int) -> Routes:
    """``routes`` with every chunk cut into ``times`` sub-chunks that share its route."""
    coarse = routes.collective
    coll = coarse.with_chunkup(coarse.chunkup * times)
    edges = {coarse.refine(c, times, i): es for c, es in routes.edges.items()
             for i in range(times)}
    b = coll.chunk_bytes(size)
    return Routes(coll, b, edges, relaxed_makespan(topology, coll, b, edges), routes.gap,
                  routes.optimal, 0.0, 0)


def staged_algorithm(topology: Topology, collective: Collective, *, size: int,
                     time_limit: float = 60.0, sketch=None,
                     progress: Progress | None = None) -> Algorithm:
    """Synthesize ``collective`` on ``topology`` for ``size`` bytes (nccl-tests convention).

    ``sketch`` (a :class:`~taccl_py.synth.sketch.Sketch`) optionally narrows routing
    (see :func:`route`), sets the chunk-ups tried (its ``chunkup`` factors, multiplied
    onto ``collective.chunkup``, instead of :data:`CHUNKUPS`) and ``own_data_first``
    of the ordering; a sketch that leaves a chunk no route raises SketchError. ``progress``
    is called as ``progress(stage, elapsed_s, incumbent_makespan_s, gap)``. Raises
    TacclError if no routing is found within ``time_limit`` seconds.
    """
    require_ranks(topology, collective)
    if collective.kind not in (ALLGATHER, ALLTOALL):
        raise TacclError(f"method milp synthesizes allgather and alltoall, not "
                         f"{collective.kind}")
    if size <= 0:
        raise TacclError(f"method milp needs the target buffer size, got {size}")
    chunkups = CHUNKUPS if sketch is None else tuple(sorted(sketch.chunkup))
    own_first = sketch is not None and sketch.own_data_first
    began = time.monotonic()

    def report(stage: str, value: float | None = None, gap: float | None = None) -> None:
        if progress is not None:
            progress(stage, time.monotonic() - began, value, gap)

    best: Algorithm | None = None
    tried: dict[str, float] = {}
    solved: Routes | None = None  # the last MILP routing, for the refined variants
    failure: TacclError | None = None

    def consider(label: str, routes: Routes) -> None:
        nonlocal best
        report(f"ordering ({label})", routes.makespan, routes.gap)
        sched = schedule(topology, order(make_sends(topology, routes),
                                         own_data_first=own_first))
        report(f"schedule ({label})", sched.makespan, routes.gap)
        alg = _algorithm(topology, sched, routes, size)
        tried[label] = alg.meta["simulated"] = _simulated(topology, alg, size)
        if best is None or tried[label] < best.meta["simulated"]:
            best = alg

    for i, factor in enumerate(chunkups):
        coll = collective.with_chunkup(collective.chunkup * factor)
        sends_per_chunk = coll.num_ranks - 1 if coll.kind == ALLGATHER else 2
        if coll.num_chunks * sends_per_chunk > MAX_SENDS and best is not None:
            break
        if solved is not None and coll.chunkup % solved.collective.chunkup == 0:
            times = coll.chunkup // solved.collective.chunkup
            consider(f"chunk-up {coll.chunkup}, routes of chunk-up "
                     f"{solved.collective.chunkup}", _refined(topology, solved, times, size))
        left = time_limit - (time.monotonic() - began)
        share = left / (len(chunkups) - i)
        if left <= 0.5 or (i > 0 and (share < 2.0 or sum(
                map(len, candidates(topology, coll, sketch).values())) > MAX_BINARIES)):
            continue
        report(f"routing (chunk-up {coll.chunkup})")
        try:
            routes = route(topology, coll, coll.chunk_bytes(size),
                           time_limit=left * 0.6 if i == 0 else share, sketch=sketch)
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
            f"within {time_limit:.1f}s")
    best.meta.update(solve_time=time.monotonic() - began, tried=tried)
    return best


def _algorithm(topology: Topology, sched: Schedule, routes: Routes, size: int) -> Algorithm:
    meta = {"method": "milp", "size": size, "chunkup": routes.collective.chunkup,
            "makespan": sched.makespan, "routing_makespan": routes.makespan,
            "routing_optimal": routes.optimal, "gap": routes.gap,
            "merged": sum(len(g) > 1 for g in sched.groups)}
    return Algorithm("milp", routes.collective, sched.transfers(), topology.label, size, meta)


def _simulated(topology: Topology, alg: Algorithm, size: int) -> float:
    """The α-β simulator's time of ``alg`` lowered to a plan (imported here: no cycle)."""
    from ..lowering.lower import lower
    from ..runtime.simulate import simulate

    return simulate(lower(alg, topology=topology), topology, size).time
