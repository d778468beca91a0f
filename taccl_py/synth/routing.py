"""Stage 1 of the staged synthesizer: route every chunk with a MILP.

Each chunk gets an out-tree from its source to every rank (AllGather) or a path to its
destination (AllToAll), over candidate connections: those on fewest-hop routes plus one
extra hop. Bandwidth is relaxed: every resource (and every connection, whose sends are
serialised by one threadblock) must be busy for at most the makespan in total, but the
sends on it are not ordered. Arrival times follow causality (a relay forwards only what
it holds). The objective is the makespan. Times are in µs inside the model, seconds
outside.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

import pulp

from ..collectives import ALLGATHER, ALLTOALL, Collective
from ..errors import TacclError
from ..topology.model import Topology
from .routes import route_tree

_US = 1e6
Edge = tuple[int, int]


@dataclass
class Routes:
    """The routes of every chunk; ``makespan`` (s) is the relaxed MILP objective."""

    collective: Collective
    chunk_bytes: float
    edges: dict[int, list[Edge]]  # chunk -> connections it crosses (a tree or a path)
    makespan: float
    gap: float | None
    optimal: bool
    solve_time: float
    num_binaries: int


def hop_distances(topology: Topology) -> list[list[int]]:
    """Fewest hops between every ordered rank pair (a large number where unreachable)."""
    n = topology.num_ranks
    adjacent = defaultdict(list)
    for s, d in topology.connections:
        adjacent[s].append(d)
    far = 1 << 20
    dist = []
    for root in range(n):
        row = [far] * n
        row[root] = 0
        todo = deque([root])
        while todo:
            u = todo.popleft()
            for v in adjacent[u]:
                if row[v] == far:
                    row[v] = row[u] + 1
                    todo.append(v)
        dist.append(row)
    return dist


def candidates(topology: Topology, collective: Collective,
               relays: set[int] | None = None) -> dict[int, list[Edge]]:
    """Chunk -> connections it may use: fewest-hop routes plus one extra hop."""
    h = hop_distances(topology)
    out: dict[int, list[Edge]] = {}
    for c in range(collective.num_chunks):
        s = collective.precondition(c)[0]
        dests = [d for d in collective.postcondition(c) if d != s]
        if not dests:
            out[c] = []
            continue
        ok = []
        for u, v in topology.connections:
            if v == s or (u != s and relays is not None and u not in relays):
                continue
            if collective.kind == ALLGATHER:
                keep = h[s][u] <= h[s][v]
            else:
                d = dests[0]
                keep = u != d and h[s][u] + 1 + h[v][d] <= h[s][d] + 1
            if keep:
                ok.append((u, v))
        out[c] = ok
    return out


def _shortest_routes(topology: Topology, collective: Collective) -> dict[int, list[Edge]]:
    """Fewest-hop routes (the baselines' trees): an incumbent for the big-M bound."""
    trees = {s: route_tree(topology, s) for s in range(topology.num_ranks)}
    out = {}
    for c in range(collective.num_chunks):
        s = collective.precondition(c)[0]
        edges = set()
        for d in collective.postcondition(c):
            route = trees[s][d]
            edges.update(zip(route, route[1:]))
        out[c] = sorted(edges)
    return out


def _hierarchical_routes(topology: Topology, collective: Collective) -> dict[int, list[Edge]]:
    """AllGather trees crossing the network once per node: to the source's counterpart
    GPU on every other node, then down that GPU's fewest-hop tree inside its node."""
    g = topology.gpus_per_node
    trees = {s: route_tree(topology, s) for s in range(topology.num_ranks)}
    out = {}
    for c in range(collective.num_chunks):
        s = collective.precondition(c)[0]
        edges = set()
        for node in range(topology.nodes):
            head = node * g + topology.local(s)
            if head != s:
                edges.update(zip(trees[s][head], trees[s][head][1:]))
            for d in range(node * g, node * g + g):
                route = trees[head][d]
                edges.update(zip(route, route[1:]))
        out[c] = sorted(edges)
    return out


def relaxed_makespan(topology: Topology, collective: Collective, chunk_bytes: float,
                     edges: dict[int, list[Edge]]) -> float:
    """The routing model's objective (s) for given routes: arrival and load bounds."""
    load: dict[str, float] = defaultdict(float)
    worst = 0.0
    for c, es in edges.items():
        s = collective.precondition(c)[0]
        arrive = {s: 0.0}
        child = defaultdict(list)
        for u, v in es:
            child[u].append(v)
        todo = [s]
        while todo:
            u = todo.pop()
            for v in child[u]:
                conn = topology.connections[(u, v)]
                arrive[v] = arrive[u] + topology.cost(conn, chunk_bytes)
                worst = max(worst, arrive[v])
                todo.append(v)
                dur = chunk_bytes / topology.bandwidth(conn)
                for r in conn.resources:
                    load[r] += dur
                load[f"conn:{u}->{v}"] += dur + conn.alpha
    return max(worst, max(load.values(), default=0.0))


class _WarmHiGHS(pulp.HiGHS):
    """pulp's HiGHS, handed the variables' initial values as a starting incumbent."""

    def callSolver(self, lp):
        import highspy

        start = highspy.HighsSolution()
        start.col_value = [v.varValue or 0.0 for v in lp.variables()]
        start.value_valid = True
        lp.solverModel.setSolution(start)
        lp.solverModel.run()


def _solver(time_limit: float):
    try:
        solver = _WarmHiGHS(msg=False, timeLimit=max(1.0, time_limit))
        if solver.available():
            return solver
    except pulp.PulpSolverError:
        pass
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(time_limit)), warmStart=True)


def route(topology: Topology, collective: Collective, chunk_bytes: float, *,
          time_limit: float = 60.0, relays: set[int] | None = None) -> Routes:
    """Solve the routing MILP; raise TacclError if no feasible routing is found in time."""
    if collective.kind not in (ALLGATHER, ALLTOALL):
        raise TacclError(f"the staged synthesizer handles allgather and alltoall, "
                         f"not {collective.kind}")
    began = time.monotonic()
    cand = candidates(topology, collective, relays)
    conns = topology.connections
    occ = {e: chunk_bytes / topology.bandwidth(conns[e]) * _US for e in conns}
    cost = {e: occ[e] + conns[e].alpha * _US for e in conns}
    start: dict[int, list[Edge]] = {}
    if relays is None:
        starts = [_shortest_routes(topology, collective)]
        if collective.kind == ALLGATHER and topology.nodes > 1:
            hier = _hierarchical_routes(topology, collective)
            if all(set(es) <= set(cand[c]) and len(es) == topology.num_ranks - 1
                   for c, es in hier.items()):
                starts.append(hier)
        start = min(starts, key=lambda r: relaxed_makespan(topology, collective, chunk_bytes, r))
        upper = relaxed_makespan(topology, collective, chunk_bytes, start) * _US
    else:
        upper = sum(cost[e] for es in cand.values() for e in es)
    big_m = upper + max(cost.values(), default=0.0)

    prob = pulp.LpProblem("routing", pulp.LpMinimize)
    makespan = pulp.LpVariable("T", 0, upper * (1 + 1e-6) + 1e-6)
    x: dict[tuple[int, Edge], pulp.LpVariable] = {}
    load: dict[str, list] = defaultdict(list)
    for c, es in cand.items():
        s = collective.precondition(c)[0]
        dests = [d for d in collective.postcondition(c) if d != s]
        if not dests:
            continue
        into, out = defaultdict(list), defaultdict(list)
        for e in es:
            x[c, e] = var = pulp.LpVariable(f"x_{c}_{e[0]}_{e[1]}", cat="Binary")
            into[e[1]].append(var)
            out[e[0]].append(var)
            for r in conns[e].resources:
                load[r].append(occ[e] * var)
            load[f"conn:{e[0]}->{e[1]}"].append(cost[e] * var)
        ranks = {v for e in es for v in e} - {s}
        t = {v: pulp.LpVariable(f"t_{c}_{v}", 0, upper) for v in ranks}
        if collective.kind == ALLGATHER:
            for v in ranks:
                prob += pulp.lpSum(into[v]) == 1
        else:
            d = dests[0]
            prob += pulp.lpSum(out[s]) == 1
            prob += pulp.lpSum(into[d]) == 1
            for v in ranks - {d}:
                prob += pulp.lpSum(into[v]) == pulp.lpSum(out[v])
                prob += pulp.lpSum(into[v]) <= 1
        for u, v in es:
            var = x[c, (u, v)]
            if u == s:
                prob += t[v] >= cost[u, v] * var
            else:
                prob += t[v] >= t[u] + cost[u, v] - big_m * (1 - var)
        for v in (ranks if collective.kind == ALLGATHER else dests):
            prob += makespan >= t[v]
        if c in start:
            _warm(start[c], s, cost, {e: x[c, e] for e in es}, t)
    if start:
        makespan.setInitialValue(upper)
    for terms in load.values():
        prob += pulp.lpSum(terms) <= makespan
    # a tiny tie-break for fewer sends
    prob += makespan + 1e-7 * upper * pulp.lpSum(x.values())

    left = time_limit - (time.monotonic() - began)
    if left <= 0:
        raise TacclError(f"routing: time limit {time_limit:.1f}s spent building the model")
    solver = _solver(left)
    prob.solve(solver)
    found = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if not found:
        raise TacclError(
            f"routing MILP for {collective.kind} (chunk-up {collective.chunkup}) on "
            f"{topology.label}: no feasible routing within {time_limit:.1f}s "
            f"({pulp.LpStatus[prob.status]}); raise the time limit")
    edges = {c: sorted(e for e in es if (x[c, e].value() or 0) > 0.5)
             for c, es in cand.items()}
    value = relaxed_makespan(topology, collective, chunk_bytes, edges)
    gap = _gap(prob)
    return Routes(collective, chunk_bytes, edges, value, gap,
                  prob.sol_status == pulp.LpSolutionOptimal, time.monotonic() - began, len(x))


def _warm(route: list[Edge], src: int, cost: dict[Edge, float],
          x: dict[Edge, pulp.LpVariable], t: dict[int, pulp.LpVariable]) -> None:
    """Set the initial values of one chunk's variables to ``route``."""
    for e, var in x.items():
        var.setInitialValue(1 if e in route else 0)
    arrive = {src: 0.0}
    for _ in route:
        for u, v in route:
            if u in arrive:
                arrive[v] = arrive[u] + cost[u, v]
    for v, var in t.items():
        var.setInitialValue(arrive.get(v, 0.0))


def _gap(prob: pulp.LpProblem) -> float | None:
    """HiGHS's relative MIP gap where the solver reports one."""
    model = getattr(prob, "solverModel", None)
    try:
        return float(model.getInfo().mip_gap)
    except AttributeError:
        return None
