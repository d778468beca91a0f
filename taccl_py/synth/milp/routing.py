"""Stage 1 of the staged synthesizer: route every chunk with a MILP.

Each chunk gets an out-tree from its source to every rank (AllGather, Broadcast: every
chunk from the root) or a path to its destination (AllToAll, Gather: to the root,
Scatter: from it), over candidate connections: those on fewest-hop routes plus one
extra hop. Bandwidth is relaxed: every resource (and every connection, whose sends are
serialised by one threadblock) must be busy for at most the makespan in total, but the
sends on it are not ordered. Arrival times follow causality (a relay forwards only what
it holds). The objective is the makespan. Times are in µs inside the model, seconds
outside.

An AllGather's makespan is bounded below by the cut bound (:mod:`.bounds`), a rooted
collective's by the max-flow between the root and the other ranks (:func:`floor_us`);
that often closes the gap at once (a warm start that meets it is taken without a solve, unless a
uc-min switch policy asks for fewer peers); a routing within ``GAP`` of the best possible
is good enough, as ordering loses more.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulp

from ...collectives import ALLGATHER, ALLTOALL, BROADCAST, GATHER, SCATTER, Collective
from ...errors import SketchError, TacclError
from ...topology.graph import bfs_parents, distances, route_tree, shortest_path
from ...topology.model import Topology
from ..highs import HiGHS
from ..solvers import live_report

if TYPE_CHECKING:
    from .sketch import Sketch

_US = 1e6
GAP = 2e-3  # relative MIP gap at which a routing is taken
Edge = tuple[int, int]
#: collectives whose chunks are routed as out-trees to every rank, and as paths
TREE_KINDS = (ALLGATHER, BROADCAST)
PATH_KINDS = (ALLTOALL, GATHER, SCATTER)


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


_FAR = 1 << 20
CONNECTIONS, RELAYS = "inter_node.connections", "inter_node.relays"


def _allowed(
    topology: Topology, sketch: Sketch | None, src: int, drop: frozenset[str] = frozenset()
) -> list[Edge]:
    """Connections that may carry ``src``'s data under ``sketch`` (rules in ``drop`` off).

    Inside a node every connection may; across nodes (u, v) must be in
    ``sketch.inter_node`` (rule inter_node.connections) and ``src`` in
    ``sketch.relays[u]`` (rule inter_node.relays; u == src needs src in relays[src]).
    """
    if sketch is None:
        return list(topology.connections)
    out = []
    for u, v in topology.connections:
        if topology.node_of(u) != topology.node_of(v):
            if CONNECTIONS not in drop and (u, v) not in sketch.inter_node:
                continue
            if RELAYS not in drop and src not in sketch.relays.get(u, ()):
                continue
        out.append((u, v))
    return out


def _carriers(topology: Topology, sketch: Sketch | None, src: int) -> tuple:
    """What decides which connections ``src``'s data may use (a cache key)."""
    if sketch is None:
        return ()
    return tuple(sorted(u for u, data in sketch.relays.items() if src in data))


def candidates(
    topology: Topology, collective: Collective, sketch: Sketch | None = None
) -> dict[int, list[Edge]]:
    """Chunk -> connections it may use: fewest-hop routes plus one extra hop (a Broadcast
    chunk: every connection its source reaches, as all chunks share one source), counted
    over the connections ``sketch`` allows the chunk's source data on (all without one)."""
    allowed: dict[tuple, list[Edge]] = {}
    dist: dict[tuple, dict[int, int]] = {}  # (carriers, root, reverse) -> hops

    def hops(s: int, root: int, reverse: bool) -> dict[int, int]:
        key = _carriers(topology, sketch, s)
        if key not in allowed:
            allowed[key] = _allowed(topology, sketch, s)
        if (key, root, reverse) not in dist:
            dist[key, root, reverse] = distances(allowed[key], root, reverse=reverse)
        return dist[key, root, reverse]

    out: dict[int, list[Edge]] = {}
    for c in range(collective.num_chunks):
        s = collective.precondition(c)[0]
        dests = [d for d in collective.postcondition(c) if d != s]
        if not dests:
            out[c] = []
            continue
        h = hops(s, s, False)
        ok = []
        if collective.kind == BROADCAST:  # one source: every chunk may take any tree
            ok = [(u, v) for u, v in allowed[_carriers(topology, sketch, s)] if v != s and u in h]
        elif collective.kind in TREE_KINDS:
            for u, v in allowed[_carriers(topology, sketch, s)]:
                if v != s and u in h and h[u] <= h.get(v, _FAR):
                    ok.append((u, v))
        else:
            d = dests[0]
            back = hops(s, d, True)
            for u, v in allowed[_carriers(topology, sketch, s)]:
                via = h.get(u, _FAR) + 1 + back.get(v, _FAR)
                if v != s and u != d and via <= h.get(d, _FAR) + 1 < _FAR:
                    ok.append((u, v))
        out[c] = ok
    return out


def check_sketch(topology: Topology, collective: Collective, sketch: Sketch) -> None:
    """Raise SketchError, naming the rule to blame, if ``sketch`` does not fit ``topology``
    or leaves some chunk without a route to one of its destinations."""
    where = f"sketch {sketch.name}"
    if sketch.topology != topology.label:
        raise SketchError(f"{where}: is for {sketch.topology}, not {topology.label}")
    n = topology.num_ranks
    for u, v in sorted(sketch.inter_node):
        conn = topology.connections.get((u, v))
        if conn is None or topology.node_of(u) == topology.node_of(v):
            raise SketchError(
                f"{where}: {CONNECTIONS}: rank {u} -> rank {v} is not an "
                f"inter-node connection of {topology.label}"
            )
    for perm in sketch.symmetry:
        if sorted(perm) != list(range(n)):
            raise SketchError(
                f"{where}: symmetry: {perm} is not a permutation of the "
                f"{n} ranks of {topology.label}"
            )
    dests: dict[int, set[int]] = defaultdict(set)
    for c in range(0, collective.num_chunks, collective.chunkup):
        s = collective.precondition(c)[0]
        dests[s].update(d for d in collective.postcondition(c) if d != s)
    for s, ds in sorted(dests.items()):
        hops = distances(_allowed(topology, sketch, s), s)
        for d in sorted(ds):
            if d in hops:
                continue
            blame = [
                rule
                for rule in (CONNECTIONS, RELAYS)
                if d in distances(_allowed(topology, sketch, s, frozenset([rule])), s)
            ]
            if not blame and d in distances(
                _allowed(topology, sketch, s, frozenset([CONNECTIONS, RELAYS])), s
            ):
                blame = [f"{CONNECTIONS} + {RELAYS}"]
            if not blame:
                raise TacclError(
                    f"{topology.label}: rank {d} cannot be reached from rank {s} at all"
                )
            carriers = [u for u, data in sketch.relays.items() if s in data]
            node = topology.node_of(d)
            why = {
                CONNECTIONS: "no allowed inter-node connection leads there",
                RELAYS: "the ranks that may carry it across nodes ("
                + (", ".join(map(str, carriers)) or "none")
                + ") have no allowed connection toward it",
            }
            raise SketchError(
                f"{where}: {' and '.join(blame)}: no route for rank {s}'s data to rank {d} "
                f"(node {node}): "
                + why.get(blame[0], "the two rules together block it")
                + (" (dropping either rule would open one)" if len(blame) > 1 else "")
            )


def _shortest_routes(topology: Topology, collective: Collective) -> dict[int, list[Edge]]:
    """Fewest-hop routes (the baselines' trees): an incumbent for the big-M bound."""
    trees = {s: route_tree(topology, s) for s in range(topology.num_ranks)}
    out = {}
    for c in range(collective.num_chunks):
        s = collective.precondition(c)[0]
        edges: set[Edge] = set()
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
        edges: set[Edge] = set()
        for node in range(topology.nodes):
            head = node * g + topology.local(s)
            if head != s:
                edges.update(zip(trees[s][head], trees[s][head][1:]))
            for d in range(node * g, node * g + g):
                route = trees[head][d]
                edges.update(zip(route, route[1:]))
        out[c] = sorted(edges)
    return out


def relaxed_makespan(
    topology: Topology, collective: Collective, chunk_bytes: float, edges: dict[int, list[Edge]]
) -> float:
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


def _rooted_floor(topology: Topology, collective: Collective) -> float:
    """Seconds per byte of one chunk that any routing of a rooted collective needs: a
    Broadcast's chunks all reach the rank with the least max-flow from the root; a
    Gather's (Scatter's) chunks of the other ranks all cross into (out of) the root."""
    import networkx as nx

    from ...analysis.bounds import flow_graph

    n, root = collective.num_ranks, collective.root
    if n == 1:
        return 0.0
    graph = flow_graph(topology)
    if collective.kind == BROADCAST:
        rate = min(nx.maximum_flow_value(graph, root, v) for v in range(n) if v != root)
        return collective.num_chunks / rate
    if collective.kind == SCATTER:  # out of the root = into it on the reversed graph
        graph = graph.reverse()
    graph.add_edges_from(("*", v) for v in range(n) if v != root)  # uncapacitated
    rate = nx.maximum_flow_value(graph, "*", root)
    return (n - 1) * collective.chunkup / rate


def greedy_routes(
    topology: Topology,
    collective: Collective,
    chunk_bytes: float,
    cand: dict[int, list[Edge]] | None = None,
    passes: int = 2,
) -> dict[int, list[Edge]]:
    """A routing chosen chunk by chunk, each on the least loaded connections: an incumbent
    that spreads chunks of one source (a rooted collective's) over many trees or paths.
    Then ``passes`` sweeps route every chunk again against the others' loads.

    Loads are the routing model's (every resource, and every connection with its α). A
    tree grows like Prim's algorithm, a path like Dijkstra's, each adding the connection
    whose key is least: the larger of the busiest resource it would leave and the time
    the chunk would arrive over it (then that arrival time).
    """
    conns = topology.connections
    cand = candidates(topology, collective) if cand is None else cand
    occ = {e: chunk_bytes / topology.bandwidth(conns[e]) for e in conns}
    cost = {e: occ[e] + conns[e].alpha for e in conns}
    res = {e: (*conns[e].resources, f"conn:{e[0]}->{e[1]}") for e in conns}
    load: dict[str, float] = defaultdict(float)

    def busiest(e: Edge) -> float:
        return max(load[r] + (cost[e] if r.startswith("conn:") else occ[e]) for r in res[e])

    def charge(edges: list[Edge], sign: int) -> None:
        for e in edges:
            for r in res[e]:
                load[r] += sign * (cost[e] if r.startswith("conn:") else occ[e])

    tree = collective.kind in TREE_KINDS
    out: dict[int, list[Edge]] = {}
    for sweep in range(1 + passes):
        for c, es in cand.items():
            s = collective.precondition(c)[0]
            dests = {d for d in collective.postcondition(c) if d != s}
            if not dests:
                out[c] = []
                continue
            if sweep:  # route it again, knowing every other chunk's load
                charge(out[c], -1)
            succ: dict[int, list[int]] = defaultdict(list)
            for u, v in es:
                succ[u].append(v)
            parent = _grow(s, dests, succ, tree, cost, busiest, charge)
            if parent is None:
                return {}
            if tree:
                edges = sorted((u, v) for v, u in parent.items())
            else:
                (d,) = dests
                path = [d]
                while path[-1] != s:
                    path.append(parent[path[-1]])
                edges = sorted(zip(path[:0:-1], path[-2::-1]))
                charge(edges, 1)
            out[c] = edges
    return out


def _grow(s, dests, succ, tree, cost, busiest, charge) -> dict[int, int] | None:
    """One chunk's tree (``tree``) or path from ``s`` for :func:`greedy_routes`: parents
    of the ranks reached, None if some of ``dests`` is not. A tree grows like Prim's
    algorithm, keyed by the larger of ``busiest(edge)`` (the busiest resource with the
    chunk on it) and the chunk's arrival, each connection taken charged at once
    (``charge([edge], 1)``); a path like Dijkstra's, keyed by its busiest resource."""
    import heapq

    best: dict[int, tuple[float, float]] = {s: (0.0, 0.0)}  # (key, arrival)
    parent: dict[int, int] = {}
    done = {s}
    heap: list[tuple[float, float, int, int]] = []
    u = s
    while True:
        for v in succ[u]:
            if v not in done:
                e = (u, v)
                at = best[u][1] + cost[e]
                key = max(busiest(e), at) if tree else max(best[u][0], busiest(e))
                heapq.heappush(heap, (key, at, u, v))
        while heap:
            key, at, u, v = heapq.heappop(heap)
            if v in done:
                continue
            if tree:
                fresh = max(busiest((u, v)), at)
                if fresh > key * (1 + 1e-12):  # a load rose since it was queued
                    heapq.heappush(heap, (fresh, at, u, v))
                    continue
                charge([(u, v)], 1)
            best[v], parent[v] = (key, at), u
            done.add(v)
            break
        else:
            return parent if dests <= done else None
        if dests <= done:
            return parent
        u = v


def _in_seconds(report):
    """``report(incumbent, gap)`` with the incumbent given in µs (the model's unit)."""

    def progress(value: float | None, gap: float | None) -> None:
        report(None if value is None else value / _US, gap)

    return progress


def _solver(time_limit: float, makespan: pulp.LpVariable | None = None):
    """HiGHS (CBC if it is missing), warm-started, stopping at gap ``GAP``; inside
    :func:`.solvers.live_progress`, reporting ``makespan`` (s) and the gap as it runs."""
    report = live_report()
    progress = None if report is None else _in_seconds(report)
    try:
        solver = HiGHS(
            warm=True, timeLimit=max(1.0, time_limit), progress=progress, watch=makespan, gapRel=GAP
        )
        if solver.available():
            return solver
    except pulp.PulpSolverError:
        pass
    return pulp.PULP_CBC_CMD(
        msg=False, timeLimit=max(1, int(time_limit)), warmStart=True, gapRel=GAP
    )


def floor_us(topology: Topology, collective: Collective, chunk_bytes: float) -> float:
    """A lower bound (µs) on the routing model's makespan: an AllGather's cut bound (every
    routing is a fluid flow, and the model charges each resource at least its share); a
    rooted collective's root cut (:func:`_rooted_floor`); 0 for AllToAll."""
    if collective.rooted:
        return _rooted_floor(topology, collective) * chunk_bytes * _US
    if collective.kind != ALLGATHER:
        return 0.0
    from ...analysis.bounds import allgather_bandwidth_bound

    return allgather_bandwidth_bound(topology, chunk_bytes * collective.nchunksperloop).time * _US


def _act_chunk(collective: Collective, perm, c: int) -> int:
    """The chunk that rank permutation ``perm`` maps chunk ``c`` to (sub-chunk kept)."""
    block, j = divmod(c, collective.chunkup)
    if collective.kind == ALLTOALL:
        s, d = divmod(block, collective.num_ranks)
        block = perm[s] * collective.num_ranks + perm[d]
    else:
        block = perm[block]
    return block * collective.chunkup + j


def _orbits(
    topology: Topology, collective: Collective, cand: dict[int, list[Edge]], sketch: Sketch | None
) -> dict | None:
    """Orbit representatives under ``sketch.symmetry`` of (chunk, edge) ("x"), chunks
    ("chunk") and (chunk, rank) ("t"); None when
    there is no symmetry to use: no generators, a generator that is not an automorphism
    of ``topology``, or candidate sets that the generators do not map onto each other."""
    from .symmetry import automorphism_error, orbit_representatives

    gens = [p for p in (sketch.symmetry if sketch is not None else ()) if p != tuple(range(len(p)))]
    if collective.rooted or not gens or any(automorphism_error(topology, p) for p in gens):
        return None
    items = [(c, e) for c, es in cand.items() for e in es]
    known = set(items)

    def act(p, item):
        c, (u, v) = item
        return _act_chunk(collective, p, c), (p[u], p[v])

    if any(act(p, item) not in known for p in gens for item in items):
        return None
    rep = orbit_representatives(gens, items, act)
    chunks = orbit_representatives(gens, list(cand), lambda p, c: _act_chunk(collective, p, c))
    arrivals = orbit_representatives(
        gens,
        [(c, v) for c in cand for v in range(topology.num_ranks)],
        lambda p, item: (_act_chunk(collective, p, item[0]), p[item[1]]),
    )
    return {"x": rep, "chunk": chunks, "t": arrivals, "gens": gens}


def _symmetrized(
    collective: Collective, rep: dict, routes: dict[int, list[Edge]]
) -> dict[int, list[Edge]]:
    """``routes`` of every chunk-orbit representative carried to the rest of its orbit
    (by one group element per chunk); symmetric when the stabilizers keep those routes."""
    out: dict[int, list[Edge]] = {}
    for r in sorted(set(rep["chunk"].values())):
        if r not in routes:
            return {}
        moved = {r: tuple(range(collective.num_ranks))}
        todo = [r]
        while todo:
            c = todo.pop()
            for g in rep["gens"]:
                d = _act_chunk(collective, g, c)
                if d not in moved:
                    moved[d] = tuple(g[y] for y in moved[c])
                    todo.append(d)
        for c, p in moved.items():
            out[c] = sorted((p[u], p[v]) for u, v in routes[r])
    return out


def _bfs_routes(collective: Collective, cand: dict[int, list[Edge]]) -> dict[int, list[Edge]]:
    """A fewest-hop tree (AllGather) or path (AllToAll) per chunk inside its candidates."""
    out = {}
    for c, es in cand.items():
        s = collective.precondition(c)[0]
        dests = [d for d in collective.postcondition(c) if d != s]
        if collective.kind in TREE_KINDS:
            parent = bfs_parents(es, s)
            if any(d not in parent for d in dests):
                return {}
            out[c] = sorted((u, v) for v, u in parent.items() if u is not None)
        else:
            path = shortest_path(es, s, dests[0] if dests else s)
            if path is None:
                return {}
            out[c] = sorted(zip(path, path[1:]))
    return out


def _symmetric(rep: dict, routes: dict[int, list[Edge]]) -> bool:
    """Whether ``routes`` give every (chunk, edge) of an orbit the same value."""
    chosen = {(c, e) for c, es in routes.items() for e in es}
    return all(((c, e) in chosen) == (r in chosen) for (c, e), r in rep.items())


def route(
    topology: Topology,
    collective: Collective,
    chunk_bytes: float,
    *,
    time_limit: float = 60.0,
    sketch: Sketch | None = None,
) -> Routes:
    """Solve the routing MILP; raise TacclError if no feasible routing is found in time.

    A ``sketch`` (see :mod:`taccl_py.synth.milp.sketch`) narrows the model:

    * ``inter_node``: a chunk crosses between nodes only on these (u, v) connections;
    * ``relays``: rank u sends source s's chunk to another node only if s is in
      ``relays[u]`` (so a source sends its own data across only if it relays itself);
      both rules restrict the candidate connections, and the fewest-hop distances that
      pick candidates are counted over the allowed connections only;
    * ``switch_policy``: uc-min adds a binary "rank u uses switch connection (u, v)" per
      switch connection (forced on by any chunk's send on it) with a small objective
      penalty (0.1 % of that connection's hop cost), so each rank prefers few distinct
      switch peers; uc-max (or none) adds no term: sends spread freely over peers;
    * ``symmetry``: the generators map chunk c (block b, sub-chunk j) to chunk
      (σ(b), j) and connection (u, v) to (σu, σv); every orbit of (chunk, connection)
      shares one binary, so chunk σ(c)'s route is the image of chunk c's. Used only when
      every generator is an automorphism of ``topology`` and maps the candidate sets
      onto each other; should the symmetric model be infeasible (a chunk fixed by a
      generator whose route cannot be invariant), it is solved again without it;
    * ``own_data_first`` is not a routing rule (see :func:`ordering.order`).

    A sketch that leaves some chunk no route raises SketchError naming the rule.
    """
    if collective.kind not in TREE_KINDS + PATH_KINDS:
        raise TacclError(
            "the routing MILP handles allgather, alltoall, broadcast, gather and scatter, "
            f"not {collective.kind}"
        )
    began = time.monotonic()
    if sketch is not None:
        check_sketch(topology, collective, sketch)
    cand = candidates(topology, collective, sketch)
    rep = _orbits(topology, collective, cand, sketch)
    result = _solve(topology, collective, chunk_bytes, cand, rep, sketch, began, time_limit)
    if result is None:  # the symmetric model is infeasible
        result = _solve(topology, collective, chunk_bytes, cand, None, sketch, began, time_limit)
        assert result is not None  # without a shared ``rep``, _solve raises instead
    return result


def _solve(
    topology: Topology,
    collective: Collective,
    chunk_bytes: float,
    cand: dict[int, list[Edge]],
    rep: dict | None,
    sketch: Sketch | None,
    began: float,
    time_limit: float,
) -> Routes | None:
    """Build and solve the routing MILP; None if it is infeasible with shared ``rep``."""
    conns = topology.connections
    occ = {e: chunk_bytes / topology.bandwidth(conns[e]) * _US for e in conns}
    cost = {e: occ[e] + conns[e].alpha * _US for e in conns}

    def fits(routes: dict[int, list[Edge]]) -> bool:
        return (
            bool(routes)
            and all(set(routes.get(c, ())) <= set(es) for c, es in cand.items())
            and (rep is None or _symmetric(rep["x"], routes))
        )

    starts = [_shortest_routes(topology, collective)]
    if collective.kind == ALLGATHER and topology.nodes > 1:
        hier = _hierarchical_routes(topology, collective)
        if all(len(es) == topology.num_ranks - 1 for es in hier.values()):
            starts.append(hier)
    if sketch is not None:
        starts.append(_bfs_routes(collective, cand))
    if collective.rooted:
        starts.append(greedy_routes(topology, collective, chunk_bytes, cand))
    if rep is not None:
        starts += [_symmetrized(collective, rep, r) for r in starts if r]
    starts = [r for r in starts if fits(r)]
    start: dict[int, list[Edge]] = {}
    if starts:
        start = min(starts, key=lambda r: relaxed_makespan(topology, collective, chunk_bytes, r))
        upper = relaxed_makespan(topology, collective, chunk_bytes, start) * _US
    else:  # any routing's arrival and load bounds
        busy: dict[str, float] = defaultdict(float)
        for es in cand.values():
            for e in es:
                for r in conns[e].resources:
                    busy[r] += occ[e]
                busy[f"conn:{e[0]}->{e[1]}"] += cost[e]
        upper = max(
            [*busy.values(), *(sum(cost[e] for e in es) for es in cand.values())], default=0.0
        )
    floor = min(floor_us(topology, collective, chunk_bytes), upper)
    uc_min = sketch is not None and sketch.switch_policy == "uc-min"
    if start and not uc_min and upper <= floor * (1 + GAP):  # good enough: no solve
        return Routes(
            collective,
            chunk_bytes,
            start,
            upper / _US,
            1 - floor / upper if upper else 0.0,
            True,
            time.monotonic() - began,
            0,
        )
    big_m = upper + max(cost.values(), default=0.0)

    prob = pulp.LpProblem("routing", pulp.LpMinimize)
    makespan = pulp.LpVariable("T", floor, upper * (1 + 1e-6) + 1e-6)
    x: dict[tuple[int, Edge], pulp.LpVariable] = {}
    shared: dict[tuple[int, Edge], pulp.LpVariable] = {}
    load: dict[str, list] = defaultdict(list)
    uses: dict[Edge, list] = defaultdict(list)  # switch connection -> its chunks' sends
    arrive: dict[tuple[int, int], pulp.LpVariable] = {}
    for c, es in cand.items():
        s = collective.precondition(c)[0]
        dests = [d for d in collective.postcondition(c) if d != s]
        if not dests:
            continue
        into, out = defaultdict(list), defaultdict(list)
        for e in es:
            key = (c, e) if rep is None else rep["x"][c, e]
            if key not in shared:
                shared[key] = pulp.LpVariable(f"x_{key[0]}_{key[1][0]}_{key[1][1]}", cat="Binary")
            x[c, e] = var = shared[key]
            into[e[1]].append(var)
            out[e[0]].append(var)
            for r in conns[e].resources:
                load[r].append(occ[e] * var)
            load[f"conn:{e[0]}->{e[1]}"].append(cost[e] * var)
            if conns[e].kind == "switch":
                uses[e].append(var)
        if rep is not None and rep["chunk"][c] != c:
            continue  # the constraints of its orbit's representative, renamed: the same
        ranks = {v for e in es for v in e} - {s}
        t = {}
        for v in ranks:
            key = (c, v) if rep is None else rep["t"][c, v]
            if key not in arrive:
                arrive[key] = pulp.LpVariable(f"t_{key[0]}_{key[1]}", 0, upper)
            t[v] = arrive[key]
        if collective.kind in TREE_KINDS:
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
        for v in ranks if collective.kind in TREE_KINDS else dests:
            prob += makespan >= t[v]
        if c in start:
            _warm(start[c], s, cost, {e: x[c, e] for e in es}, t)
    if start:
        makespan.setInitialValue(upper)
    for terms in load.values():
        prob += pulp.lpSum(terms) <= makespan
    # a tiny tie-break for fewer sends
    objective = makespan + 1e-7 * upper * pulp.lpSum(x.values())
    if uc_min and uses:
        peers = []
        for (u, v), terms in sorted(uses.items()):
            y = pulp.LpVariable(f"y_{u}_{v}", cat="Binary")
            prob += pulp.lpSum(terms) <= len(terms) * y
            if start:
                y.setInitialValue(int(any((u, v) in es for es in start.values())))
            peers.append(1e-3 * cost[u, v] * y)
        objective += pulp.lpSum(peers)
    prob += objective

    left = time_limit - (time.monotonic() - began)
    if left <= 0:
        raise TacclError(f"routing: time limit {time_limit:.1f}s spent building the model")
    solver = _solver(left, makespan)
    prob.solve(solver)
    found = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if not found and rep is not None and prob.status == pulp.LpStatusInfeasible:
        return None
    if not found:
        raise TacclError(
            f"routing MILP for {collective.kind} (chunk-up {collective.chunkup}) on "
            f"{topology.label}: no feasible routing within {time_limit:.1f}s "
            f"({pulp.LpStatus[prob.status]}); raise the time limit"
        )
    edges = {c: sorted(e for e in es if (x[c, e].value() or 0) > 0.5) for c, es in cand.items()}
    value = relaxed_makespan(topology, collective, chunk_bytes, edges)
    gap = _gap(prob)
    return Routes(
        collective,
        chunk_bytes,
        edges,
        value,
        gap,
        prob.sol_status == pulp.LpSolutionOptimal,
        time.monotonic() - began,
        len(shared),
    )


def _warm(
    route: list[Edge],
    src: int,
    cost: dict[Edge, float],
    x: dict[Edge, pulp.LpVariable],
    t: dict[int, pulp.LpVariable],
) -> None:
    """Set the initial values of one chunk's variables to ``route``."""
    for e, var in x.items():
        var.setInitialValue(1 if e in route else 0)
    arrive = {src: 0.0}
    for _ in route:
        for u, v in route:
            if u in arrive:
                arrive[v] = arrive[u] + cost[u, v]
    for v, var in t.items():  # clamped: the bound may round below the summed costs
        value = arrive.get(v, 0.0)
        var.setInitialValue(value if var.upBound is None else min(value, var.upBound))


def _gap(prob: pulp.LpProblem) -> float | None:
    """HiGHS's relative MIP gap where the solver reports one."""
    try:  # no solverModel (or None): not HiGHS
        return float(prob.solverModel.getInfo().mip_gap)
    except AttributeError:
        return None
