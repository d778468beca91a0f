"""Exact synthesis of k-synchronous algorithms with SMT (z3), after SCCL (PPoPP'21).

An (S, R, C) algorithm cuts every block into C chunks and runs in S synchronous steps;
step s lasts r_s >= 1 *rounds* with r_0 + ... + r_{S-1} = R. A round is the time one
chunk takes over one unit of bandwidth, so latency ~ S·α and bandwidth ~ (R/C)·size·β.

Encoding (pure Boolean + cardinality, solved by z3's SAT core, ``QF_FD``):

* ``has[c, n, t]``: rank n holds chunk c after t steps (t = 0..S); true at t = 0 exactly
  on the precondition, monotone in t, and true at t = S on the postcondition. Literals
  before the hop distance from the chunk's source are fixed false.
* ``snd[c, u, v, s]``: u sends c to v in step s over the connection (u, v); it needs
  ``has[c, u, s]``, and ``has[c, v, s+1]`` needs ``has[c, v, s]`` or some such send.
* rounds: each composition r_0 + ... + r_{S-1} = R (r_s >= 1) is tried in turn on the
  same solver (push/pop), so every capacity below is a plain cardinality constraint
  (``AtMost``) with a constant bound. (A unary encoding of r_s inside pseudo-Boolean
  constraints was tried: with z3 4.x/5.4's ``pb.solver=sorting`` it returned models
  that break the capacities, and it was no faster otherwise.)
* bandwidth: the *unit* is the fastest link's per-link bandwidth (a link bundle's
  bandwidth / its count; the fastest resource when there are no links). A resource
  (``link:a->b``, a switch port ``swout:a`` / ``swin:b``, a NIC ``nicout:N`` / ``nicin:N``)
  of bandwidth B carries at most floor((B / unit) · r_s) chunks in step s, summed over
  every connection that uses it; for B a multiple of the unit that is floor(B/unit)·r_s,
  e.g. a double NVLink carries 2·r_s chunks and a single one r_s. B / unit is taken as a
  fraction p/q (denominator <= 64; a resource slower than 1/64 of the unit counts as
  1/64).

Static bounds start the search where solutions can exist: at least as many steps as
the largest hop distance from a chunk's source to one of its destinations (the diameter
for AllGather), and R/C at least the cut (or flow) bandwidth bound of
:func:`~taccl_py.analysis.bounds.bandwidth_bound` measured in rounds per chunk.

:func:`smt_algorithm` solves one (S, R, C); :func:`pareto` walks the latency/bandwidth
Pareto frontier. Supports AllGather, AllToAll and the rooted collectives (Broadcast,
Gather, Scatter as they are; Reduce as the Broadcast on the reversed topology, run
backwards: every send becomes a reducing send the other way, step s becoming S-1-s).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction

from ..collectives import (
    ALLGATHER,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    SCATTER,
    Collective,
    canonical_kind,
)
from ..errors import TacclError
from ..ir.algorithm import Algorithm, Transfer
from ..topology.graph import hop_matrix
from ..topology.model import Topology
from .solvers import interruptible

SUPPORTED = (ALLGATHER, ALLTOALL, BROADCAST, REDUCE, GATHER, SCATTER)


# -- static quantities -------------------------------------------------------------


def unit_bandwidth(topology: Topology) -> float:
    """Bytes/s of one round's chunk: the fastest link's per-link bandwidth."""
    if topology.links:
        return max(link.bandwidth / max(1, link.count) for link in topology.links)
    if topology.resource_bandwidth:
        return max(topology.resource_bandwidth.values())
    raise TacclError(f"{topology.label} has no links, switches or NICs")


def resource_capacity(topology: Topology) -> dict[str, Fraction]:
    """Chunks per round each resource carries: its bandwidth / the unit, as a fraction."""
    unit = unit_bandwidth(topology)
    out = {}
    for name, bw in topology.resource_bandwidth.items():
        ratio = Fraction(bw / unit).limit_denominator(64)
        if ratio == 0:
            ratio = Fraction(1, 64)
        out[name] = ratio
    return out


def _check_kind(kind: str) -> str:
    kind = canonical_kind(kind)
    if kind not in SUPPORTED:
        raise TacclError(f"the smt method supports {', '.join(SUPPORTED)}, not {kind}")
    return kind


def _reduce_as_broadcast(topology: Topology, kind: str) -> tuple[Topology, str]:
    """Where a ``kind`` is solved: a Reduce as a Broadcast on the reversed topology."""
    if kind != REDUCE:
        return topology, kind
    from .milp.combine import reversed_topology

    return reversed_topology(topology), BROADCAST


def least_steps(topology: Topology, collective_kind: str, root: int = 0) -> int:
    """The fewest steps any algorithm needs: the largest source-to-destination hop count."""
    topology, kind = _reduce_as_broadcast(topology, _check_kind(collective_kind))
    coll = Collective(kind, topology.num_ranks, root=root)
    dist = hop_matrix(topology)
    worst = 0
    for c in range(coll.num_chunks):
        for d in coll.postcondition(c):
            hops = min(dist[s][d] for s in coll.precondition(c))
            if hops == math.inf:
                raise TacclError(
                    f"{topology.label}: rank {d} cannot be reached from rank "
                    f"{coll.precondition(c)[0]}"
                )
            worst = max(worst, int(hops))
    return worst


def least_rounds_per_chunk(topology: Topology, collective_kind: str, root: int = 0) -> float:
    """The bandwidth lower bound in rounds per chunk (R/C can be no smaller)."""
    from ..analysis.bounds import bandwidth_bound

    topology, kind = _reduce_as_broadcast(topology, _check_kind(collective_kind))
    n = topology.num_ranks
    if kind in (BROADCAST, GATHER, SCATTER):  # the root's cut, per chunk of chunk-up 1
        from .milp.routing import _rooted_floor

        return _rooted_floor(topology, Collective(kind, n, root=root)) * unit_bandwidth(topology)
    size = float(1 << 30)
    t = bandwidth_bound(topology, kind, size).time
    # a round moves one chunk of size / (n * C) bytes at the unit bandwidth
    return t * n * unit_bandwidth(topology) / size


# -- the encoding ------------------------------------------------------------------


def _solve(topology: Topology, coll: Collective, steps: int, rounds: int, time_limit: float):
    """('sat', schedule) / ('unsat', None) / ('unknown', None) for one (S, R, C).

    The encoding is built and solved in a worker thread (see
    :func:`~.solvers.interruptible`): a Ctrl-C then never lands inside z3's Python
    bindings, where ctypes would turn it into an ``ArgumentError``."""
    run: dict = {"cancelled": False}

    def cancel() -> None:
        run["cancelled"] = True
        if "ctx" in run:
            run["ctx"].interrupt()

    return interruptible(
        lambda: _encode_and_check(topology, coll, steps, rounds, time_limit, run), cancel
    )


def _encode_and_check(
    topology: Topology, coll: Collective, steps: int, rounds: int, time_limit: float, run: dict
):
    """The body of :func:`_solve`; ``run["ctx"]`` is set to the z3 context, and a true
    ``run["cancelled"]`` stops the search at the next composition."""
    import z3

    n, S, R = topology.num_ranks, steps, rounds
    if R < S:
        return "unsat", None
    dist = hop_matrix(topology)
    conns = list(topology.connections)
    into: dict[int, list[int]] = {v: [] for v in range(n)}
    for u, v in conns:
        into[v].append(u)
    cap = resource_capacity(topology)
    users: dict[str, list[tuple[int, int]]] = {}
    for (u, v), conn in topology.connections.items():
        for res in conn.resources:
            users.setdefault(res, []).append((u, v))

    # a fresh context per solve: the same instance then always gets the same variable
    # ids and search (in the shared main context, later solves were seen to take 100 s+)
    ctx = run["ctx"] = z3.Context()
    solver = z3.SolverFor("QF_FD", ctx=ctx)
    solver.set("timeout", max(1, int(time_limit * 1000)))
    solver.set("ctrl_c", False)  # interrupts are ours (see .solvers), not z3's SIGINT handler
    false = z3.BoolVal(False, ctx)

    nchunks = coll.num_chunks
    first = [
        [min(dist[s][r] for s in coll.precondition(c)) for r in range(n)] for c in range(nchunks)
    ]
    has: dict[tuple[int, int, int], object] = {}
    for c in range(nchunks):
        for r in range(n):
            for t in range(S + 1):
                if t < first[c][r]:
                    has[c, r, t] = false
                elif first[c][r] == 0:
                    has[c, r, t] = z3.BoolVal(True, ctx)
                else:
                    has[c, r, t] = z3.Bool(f"h{c}_{r}_{t}", ctx)
    # a send is useful only after the sender can hold the chunk, and only to a rank
    # that does not start with it
    snd: dict[tuple[int, int, int, int], object] = {}
    for c in range(nchunks):
        for u, v in conns:
            if first[c][v] == 0:
                continue
            for s in range(S):
                if s >= first[c][u] and s + 1 >= first[c][v]:
                    snd[c, u, v, s] = z3.Bool(f"x{c}_{u}_{v}_{s}", ctx)
    for c in range(nchunks):
        for r in range(n):
            if first[c][r] == 0:
                continue
            for t in range(S):
                h0, h1 = has[c, r, t], has[c, r, t + 1]
                if z3.is_false(h1):
                    continue
                if not z3.is_false(h0):
                    solver.add(z3.Implies(h0, h1))
                arrivals = [snd[c, u, r, t] for u in into[r] if (c, u, r, t) in snd]
                solver.add(z3.Implies(h1, z3.Or(h0, *arrivals)))
        for r in coll.postcondition(c):
            h = has[c, r, S]
            if z3.is_false(h):
                return "unsat", None
            if not z3.is_true(h):
                solver.add(h)
    for (c, u, _v, s), x in snd.items():
        solver.add(z3.Implies(x, has[c, u, s]))
    _break_chunk_symmetry(solver, coll, has, n, S)

    by_step: dict[tuple[int, int, int], list] = {}
    for (_c, u, v, s), x in snd.items():
        by_step.setdefault((u, v, s), []).append(x)
    per_step = [
        [
            ([x for (u, v) in pairs for x in by_step.get((u, v, s), [])], cap[res])
            for res, pairs in users.items()
        ]
        for s in range(S)
    ]

    # the rounds per step: one solve per composition r_0 + ... + r_{S-1} = R (push/pop
    # on the shared constraints), so every capacity is a cardinality constraint with a
    # constant bound
    deadline = time.perf_counter() + time_limit
    result, r_s, unknown = None, None, False
    for comp in _compositions(R, S):
        left = deadline - time.perf_counter()
        if left <= 0 or run["cancelled"]:
            unknown = True
            break
        solver.set("timeout", max(1, int(left * 1000)))
        solver.push()
        for s in range(S):
            for sends, ratio in per_step[s]:
                most = math.floor(ratio * comp[s])
                if len(sends) > most:
                    solver.add(z3.AtMost(*sends, most) if most else z3.Not(z3.Or(*sends)))
        result = solver.check()
        if result == z3.sat:
            r_s = list(comp)
            break
        solver.pop()
        if result != z3.unsat:
            unknown = True
    if r_s is None:
        return ("unknown" if unknown else "unsat"), None
    model = solver.model()

    def val(b) -> bool:
        return z3.is_true(b) or (
            not z3.is_false(b) and z3.is_true(model.eval(b, model_completion=True))
        )

    sends = []  # (step, src, dst, chunk): one arrival per (chunk, rank)
    for c in range(nchunks):
        for r in range(n):
            if first[c][r] == 0:
                continue
            for t in range(S):
                if val(has[c, r, t + 1]) and not val(has[c, r, t]):
                    src = next(u for u in into[r] if (c, u, r, t) in snd and val(snd[c, u, r, t]))
                    sends.append((t, src, r, c))
                    break
    _check_capacity(topology, r_s, sends)
    return "sat", (r_s, sends)


def _check_capacity(
    topology: Topology, r_s: list[int], sends: list[tuple[int, int, int, int]]
) -> None:
    """Guard against a model that breaks the encoding (e.g. a solver bug)."""
    cap = resource_capacity(topology)
    use: dict[tuple[str, int], int] = {}
    for s, u, v, _ in sends:
        for res in topology.connections[(u, v)].resources:
            use[res, s] = use.get((res, s), 0) + 1
    for (res, s), count in use.items():
        if count > cap[res] * r_s[s]:
            raise TacclError(
                f"smt: internal error: {res} carries {count} chunks in step "
                f"{s} of {r_s[s]} round(s)"
            )


def _compositions(total: int, parts: int):
    """Every (r_0, ..., r_{parts-1}) with r_i >= 1 summing to ``total``."""
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _compositions(total - first, parts - 1):
            yield (first,) + rest


def _break_chunk_symmetry(solver, coll: Collective, has: dict, n: int, S: int) -> None:
    """The C chunks of a block are interchangeable: order them by their arrival times.

    Chunk j's vector of arrival steps (rank 0, 1, ..., n-1) must be lexicographically
    <= chunk j+1's. Arrival a at rank r is the thermometer code has[c, r, t] = (a <= t),
    so a smaller arrival is a lexicographically *larger* Boolean string (True > False):
    the constraint is "string(j) >=lex string(j+1)" over the concatenated codes, with
    e_i = "the strings agree before position i". Sound: sorting the chunks of a block
    by their arrival vectors maps any solution to one that satisfies it.
    """
    import z3

    k = coll.chunkup
    # a Broadcast's chunks all start on the root: all of them are interchangeable
    groups = [range(coll.num_chunks)] if coll.kind == BROADCAST else None
    if groups is None:
        if k < 2:
            return
        groups = [range(block * k, block * k + k) for block in range(coll.num_blocks)]
    for group in groups:
        for a, b in zip(group, group[1:]):
            fixed = (z3.is_true, z3.is_false)  # same source: same fixed literals
            pairs = [
                (has[a, r, t], has[b, r, t])
                for r in range(n)
                for t in range(1, S + 1)
                if not any(f(has[a, r, t]) and f(has[b, r, t]) for f in fixed)
            ]
            eq = z3.BoolVal(True, solver.ctx)
            for i, (x, y) in enumerate(pairs):
                solver.add(z3.Implies(z3.And(eq, y), x))
                if i + 1 < len(pairs):
                    nxt = z3.Bool(f"lex{a}_{i}", solver.ctx)
                    solver.add(z3.Implies(z3.And(eq, x == y), nxt))
                    eq = nxt


def _to_algorithm(
    topology: Topology,
    coll: Collective,
    steps: int,
    rounds: int,
    r_s: list[int],
    sends: list[tuple[int, int, int, int]],
    meta: dict,
) -> Algorithm:
    """Transfers with start/end on a cumulative round clock (unit: one round)."""
    clock = [0] * (steps + 1)
    for s in range(steps):
        clock[s + 1] = clock[s] + r_s[s]
    cap = resource_capacity(topology)
    transfers = []
    # (resource, round) -> fraction of it used (exact while only fractions are added)
    use: dict[tuple[str, int], Fraction | float] = {}

    def claims(res: str, t: int) -> list[tuple[tuple[str, int], Fraction | float]]:
        if cap[res] >= 1:
            return [((res, t), 1 / cap[res])]
        return [((res, t + k), 1.0) for k in range(math.ceil(1 / cap[res]))]

    for s, u, v, c in sorted(sends):
        # the first round of its step in which all its resources have room (a greedy
        # edge colouring); the runtime then keeps every shared port's sends apart
        conn = topology.connections[(u, v)]
        first, last = clock[s], clock[s + 1]
        slot = None
        for t in range(first, last):
            want = [cl for res in conn.resources for cl in claims(res, t)]
            if all(
                key[1] < last and use.get(key, 0.0) + amount <= 1 + 1e-9 for key, amount in want
            ):
                slot = t
                break
        if slot is None:  # no free round: the least used one
            slot = min(
                range(first, last),
                key=lambda t: max(
                    use.get(key, 0.0) for res in conn.resources for key, _ in claims(res, t)
                ),
            )
        for res in conn.resources:
            for key, amount in claims(res, slot):
                use[key] = use.get(key, 0.0) + amount
        start = float(slot)
        transfers.append(Transfer(s, start, u, v, c, False, start + 1.0))
    name = f"smt-{coll.kind}-s{steps}-r{rounds}-c{coll.chunkup}"
    alg = Algorithm(
        name,
        coll,
        transfers,
        topology.label,
        0,
        dict(
            meta, method="smt", steps=steps, rounds=rounds, chunks=coll.chunkup, rounds_per_step=r_s
        ),
    )
    alg.check()
    return alg


def _timed_solve(
    topology: Topology,
    coll: Collective,
    steps: int,
    rounds: int,
    time_limit: float,
    progress,
    began: float,
):
    """:func:`_solve` with a line to ``progress`` before and after it; also its seconds."""
    what = f"smt (S {steps}, R {rounds}, C {coll.chunkup})"
    if progress is not None:
        progress(what, time.perf_counter() - began, None, None)
    t0 = time.perf_counter()
    status, sol = _solve(topology, coll, steps, rounds, time_limit)
    dt = time.perf_counter() - t0
    if progress is not None:
        progress(f"{what}: {status} in {dt:.2f} s", time.perf_counter() - began, None, None)
    return status, sol, dt


def smt_algorithm(
    topology: Topology,
    collective: Collective | str,
    steps: int,
    rounds: int,
    chunks: int | None = None,
    time_limit: float = 60.0,
    progress=None,
) -> Algorithm:
    """The (steps, rounds, chunks) synchronous algorithm, or TacclError if unsat/timeout.

    ``collective`` may be a Collective (its chunk-up is replaced by ``chunks`` when given)
    or a kind name. ``progress(stage, elapsed_s, None, None)`` is told of the solve.
    """
    if isinstance(collective, str):
        collective = Collective(collective, topology.num_ranks, chunks or 1)
    kind = _check_kind(collective.kind)
    if collective.num_ranks != topology.num_ranks:
        raise TacclError(
            f"collective has {collective.num_ranks} ranks but topology "
            f"{topology.label} has {topology.num_ranks}"
        )
    if chunks is not None:
        collective = Collective(
            kind, collective.num_ranks, chunks, collective.inplace, collective.root
        )
    if kind == REDUCE:
        mirror, _ = _reduce_as_broadcast(topology, kind)
        bcast = Collective(
            BROADCAST, collective.num_ranks, collective.chunkup, False, collective.root
        )
        alg = smt_algorithm(mirror, bcast, steps, rounds, None, time_limit, progress)
        return reversed_sync(alg, collective.inplace)
    chunks = collective.chunkup
    if steps < 1 or rounds < 1 or chunks < 1:
        raise TacclError(f"steps, rounds and chunks must be >= 1 (got {steps}, {rounds}, {chunks})")
    status, sol, elapsed = _timed_solve(
        topology, collective, steps, rounds, time_limit, progress, time.perf_counter()
    )
    what = f"{steps} steps, {rounds} rounds, {chunks} chunks"
    if status == "unsat":
        raise TacclError(f"unsat: no algorithm with {what} on {topology.label}")
    if status != "sat":
        raise TacclError(f"smt: no answer for {what} on {topology.label} within {time_limit:g} s")
    r_s, sends = sol
    return _to_algorithm(topology, collective, steps, rounds, r_s, sends, {"solve_time": elapsed})


def reversed_sync(broadcast: Algorithm, inplace: bool = False) -> Algorithm:
    """The Reduce that is a synchronous ``broadcast`` (made on the reversed topology) run
    backwards: send u->v of step s in rounds [a, b] becomes v->u, reducing, in step
    S-1-s and rounds [R-b, R-a]; a rank sends its partial sum once, after its children.

    >>> from taccl_py.topology.loader import load_topology
    >>> t = load_topology("dgx1")
    >>> bc = smt_algorithm(t, Collective("broadcast", 8, root=3), 2, 8, 1)
    >>> red = reversed_sync(bc)
    >>> red.collective.label, all(x.reduce for x in red.transfers)
    ('reduce-root3', True)
    """
    coll = broadcast.collective
    steps, rounds = broadcast.meta["steps"], broadcast.meta["rounds"]
    transfers = [
        Transfer(steps - 1 - t.step, rounds - t.end, t.dst, t.src, t.chunk, True, rounds - t.start)
        for t in broadcast.transfers
    ]
    out = Collective(REDUCE, coll.num_ranks, coll.chunkup, inplace, coll.root)
    name = broadcast.name.replace(f"smt-{BROADCAST}-", f"smt-{REDUCE}-", 1)
    alg = Algorithm(name, out, transfers, broadcast.topology, 0, dict(broadcast.meta))
    alg.check()
    return alg


# -- the Pareto frontier ----------------------------------------------------------


@dataclass
class ParetoPoint:
    steps: int
    rounds: int
    chunks: int
    solve_time: float  # seconds, of this point's sat solve
    algorithm: Algorithm
    tried: list[tuple[int, int, int, str, float]] = field(default_factory=list)

    @property
    def proven(self) -> bool:
        """Whether every smaller R/C tried at these steps was proven unsat (no timeout)."""
        return all(status in ("unsat", "sat") for *_, status, _ in self.tried)

    @property
    def ratio(self) -> Fraction:
        return Fraction(self.rounds, self.chunks)


@dataclass
class Frontier:
    points: list[ParetoPoint]
    #: every (S, R, C, status, seconds) solved, in order
    log: list[tuple[int, int, int, str, float]]
    least_steps: int
    bandwidth_bound: float  # rounds per chunk
    total_time: float
    complete: bool = True  # False: the deadline cut the search short


def _candidates(steps: int, max_chunks: int, low: float, below: Fraction | None):
    """(R, C) with R >= steps, C <= max_chunks, low <= R/C < below, by (R/C, C)."""
    out = []
    for c in range(1, max_chunks + 1):
        r = max(steps, math.ceil(low * c - 1e-9))
        while True:
            ratio = Fraction(r, c)
            if below is not None and ratio >= below:
                break
            out.append((ratio, c, r))
            r += 1
            if below is None and ratio > 2 * low + 2 * steps:
                break
    out.sort()
    return [(r, c) for _, c, r in out]


def pareto(
    topology: Topology,
    collective_kind: str,
    max_steps: int | None = None,
    max_chunks: int = 8,
    time_limit: float = 60.0,
    progress=None,
    deadline: float | None = None,
    root: int = 0,
) -> Frontier:
    """The latency/bandwidth Pareto frontier of synchronous (S, R, C) algorithms.

    For S from the least steps up to ``max_steps`` (default: least + 2), tries (R, C)
    pairs (C <= ``max_chunks``) in increasing R/C from the bandwidth bound, keeping the
    first sat one when its R/C beats every point with fewer steps; stops once R/C meets
    the bound. ``time_limit`` bounds each solve (an unknown answer counts as unsat and
    is logged as 'unknown', and a later point's ``proven`` is then False).
    ``deadline`` (a ``time.perf_counter()`` value) bounds the whole search: each solve
    gets at most the time left, and at the deadline the search stops with the points
    found so far and ``complete`` False. ``progress(stage, elapsed_s, None, None)`` is
    told of each solve. While no point is known, R/C goes up to 2·bound + 2·S for each S.
    """
    kind = _check_kind(collective_kind)
    if kind == REDUCE:
        mirror, _ = _reduce_as_broadcast(topology, kind)
        front = pareto(
            mirror, BROADCAST, max_steps, max_chunks, time_limit, progress, deadline, root
        )
        for point in front.points:
            point.algorithm = reversed_sync(point.algorithm)
        return front
    t_all = time.perf_counter()
    s_min = least_steps(topology, kind, root)
    low = least_rounds_per_chunk(topology, kind, root)
    max_steps = s_min + 2 if max_steps is None else max_steps
    points: list[ParetoPoint] = []
    log: list[tuple[int, int, int, str, float]] = []
    best: Fraction | None = None
    complete = True
    for steps in range(s_min, max_steps + 1):
        tried = []
        for rounds, chunks in _candidates(steps, max_chunks, low, best):
            left = (
                time_limit if deadline is None else min(time_limit, deadline - time.perf_counter())
            )
            if left <= 0:
                complete = False
                break
            coll = Collective(kind, topology.num_ranks, chunks, root=root)
            status, sol, dt = _timed_solve(topology, coll, steps, rounds, left, progress, t_all)
            entry = (steps, rounds, chunks, status, dt)
            log.append(entry)
            tried.append(entry)
            if status == "unknown" and left < time_limit:  # cut by the deadline
                complete = False
                break
            if status == "sat":
                r_s, sends = sol
                alg = _to_algorithm(topology, coll, steps, rounds, r_s, sends, {"solve_time": dt})
                points.append(ParetoPoint(steps, rounds, chunks, dt, alg, tried))
                best = Fraction(rounds, chunks)
                break
        if not complete or best is not None and float(best) <= low + 1e-9:
            break
    return Frontier(points, log, s_min, low, time.perf_counter() - t_all, complete)


def bandwidth_optimal(
    topology: Topology,
    collective_kind: str,
    max_steps: int | None = None,
    max_chunks: int = 8,
    time_limit: float = 60.0,
    progress=None,
    root: int = 0,
) -> Algorithm:
    """The frontier's point with the least R/C (fewest steps among those), the search
    bounded by ``time_limit`` s in all; cut short, the best point found so far (with a
    note to ``progress``), or TacclError if there is none. ``root``: a rooted
    collective's root."""
    front = pareto(
        topology,
        collective_kind,
        max_steps=max_steps,
        max_chunks=max_chunks,
        time_limit=time_limit,
        progress=progress,
        deadline=time.perf_counter() + time_limit,
        root=root,
    )
    if not front.points:
        within = (
            f"within the time limit of {time_limit:g} s"
            if not front.complete
            else f"within {max_steps or 'least + 2'} steps and {max_chunks} chunks"
        )
        raise TacclError(
            f"smt: no synchronous {collective_kind} algorithm on {topology.label} {within}"
        )
    best = min(front.points, key=lambda p: (p.ratio, p.steps))
    if not front.complete and progress is not None:
        progress(
            f"time limit of {time_limit:g} s reached: keeping the best point found "
            f"so far, S {best.steps}, R {best.rounds}, C {best.chunks} (the frontier "
            "search was cut short)",
            front.total_time,
            None,
            None,
        )
    return best.algorithm
